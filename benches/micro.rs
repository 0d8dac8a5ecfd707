//! Micro-benchmarks of the pieces a request is made of. Run: `cargo bench --bench micro`
//! (one group: `cargo bench --bench micro -- jwt`). Figures are in BENCHMARKS.md.

#![expect(clippy::disallowed_methods, reason = "a benchmark measures real time")]

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use keyhold::auth::sessions::issue_refresh_token;
use keyhold::auth::two_factor::six_digits;
use keyhold::auth::{Auth, PasswordHasher, Secrets, Tokens};
use keyhold::config::PasswordsConfig;
use keyhold::domain::records::{
    ChallengePurpose, ChallengeRecord, SecondFactor, SessionRecord, UserRecord,
};
use keyhold::graphql::RequestMeta;
use keyhold::mail::{LogTransport, Mailer, Templates};
use keyhold::store::sled::Store;
use keyhold::store::{ChallengeStore, RotateOutcome, SessionStore};
use keyhold::{Clock, Config};
use serde_json::json;
use uuid::Uuid;

const PASSWORD: &str = "micro-benchmark passphrase";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// A store, its secrets and a full `Auth` over a temporary folder.
struct Fixture {
    _dir: tempfile::TempDir,
    config: Config,
    auth: Arc<Auth>,
}

fn fixture(passwords: PasswordsConfig) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.storage.path = dir.path().to_path_buf();
    config.passwords = passwords;
    config.limits.enabled = false;
    let clock = Clock::system();
    let mailer = Mailer::new(
        &config.mail.from,
        Arc::new(LogTransport::new(
            config.outbox_dir(),
            config.mail.max_queued,
        )),
        Templates::load(None).unwrap(),
        clock.clone(),
    );
    let store = Arc::new(Store::open(&config.db_path()).unwrap());
    let auth = Arc::new(
        runtime()
            .block_on(Auth::new(Arc::new(config.clone()), store, clock, mailer))
            .unwrap(),
    );
    Fixture {
        _dir: dir,
        config,
        auth,
    }
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// A verified user with `hash` as password hash.
fn user(store: &Store, hash: String) -> UserRecord {
    let user = UserRecord {
        email_verified: true,
        ..UserRecord::new("ada@example.com", "ada", hash, now())
    };
    store.insert_user_now(&user).unwrap();
    user
}

/// argon2id verification at the default parameters, on one of Keyhold's hashing threads.
fn argon2(c: &mut Criterion) {
    let rt = runtime();
    let hasher = PasswordHasher::new(&PasswordsConfig::default()).unwrap();
    let phc = hasher.hash_now(PASSWORD).unwrap();
    let mut group = c.benchmark_group("argon2id");
    group.sample_size(20);
    group.bench_function("verify_default_parameters", |b| {
        b.to_async(&rt).iter(|| async {
            let verified = hasher
                .verify(PASSWORD.into(), Some(phc.clone()))
                .await
                .unwrap();
            assert!(black_box(verified).matches);
        })
    });
    group.finish();
}

/// Access tokens: Ed25519 signing, a first check, and the check of a token seen before.
fn jwt(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("db")).unwrap();
    let secrets = Secrets::load_or_create(&dir.path().join("keys")).unwrap();
    let tokens = runtime()
        .block_on(Tokens::load_or_create(
            &store,
            &Config::default().tokens,
            &secrets,
            now(),
        ))
        .unwrap();
    let (user, session) = (Uuid::new_v4(), Uuid::new_v4());
    let mut group = c.benchmark_group("jwt");
    group.bench_function("sign", |b| {
        b.iter(|| black_box(tokens.issue(user, session, now()).unwrap()))
    });
    group.bench_function("verify_first_use", |b| {
        b.iter_batched(
            || tokens.issue(user, session, now()).unwrap().0,
            |token| black_box(tokens.verify(&token, now()).unwrap()),
            criterion::BatchSize::SmallInput,
        )
    });
    let (token, _) = tokens.issue(user, session, now()).unwrap();
    group.bench_function("verify_seen_before", |b| {
        b.iter(|| black_box(tokens.verify(&token, now()).unwrap()))
    });
    group.finish();
}

/// One refresh-token rotation in the store, durable (with its flush to disk, which one
/// caller at a time does not share).
fn refresh_rotation(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("db")).unwrap();
    let secrets = Secrets::load_or_create(&dir.path().join("keys")).unwrap();
    let user = user(&store, "$argon2id$stub".into());
    let id = Uuid::new_v4();
    let (_, first) = issue_refresh_token(&secrets, id, 0);
    let session = SessionRecord {
        id,
        user_id: user.id,
        device_id: "bench".into(),
        name: None,
        ip_address: None,
        user_agent: None,
        created_at: now(),
        last_seen_at: now(),
        refresh_hash: first,
        refresh_expires_at: now() + 3600,
        refresh_generation: 0,
    };
    store.start_session_unchecked(&session).unwrap();
    let (mut generation, mut current) = (0, first);
    c.bench_function("store/refresh_rotation", |b| {
        b.iter(|| {
            let (_, next) = issue_refresh_token(&secrets, id, generation + 1);
            let outcome = rt
                .block_on(store.rotate_refresh(
                    id,
                    generation,
                    &current,
                    &next,
                    now() + 3600,
                    i64::MAX,
                    now(),
                ))
                .unwrap();
            assert!(matches!(outcome, RotateOutcome::Rotated { .. }));
            (generation, current) = (generation + 1, next);
        })
    });
}

/// A mailed 6-digit code: made, hashed and stored; then read back, checked and used up.
/// Durable: the store and the use each wait for their flush.
fn code_issue_and_check(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("db")).unwrap();
    let secrets = Secrets::load_or_create(&dir.path().join("keys")).unwrap();
    let user = user(&store, "$argon2id$stub".into());
    c.bench_function("store/code_issue_and_check", |b| {
        b.iter(|| {
            let code = six_digits();
            let challenge = ChallengeRecord {
                id: Uuid::new_v4(),
                user_id: user.id,
                purpose: ChallengePurpose::StepUp {
                    reason: "GENERIC".into(),
                },
                method: SecondFactor::Email,
                code_hash: Some(secrets.keyed_hash("two-factor-code", &code)),
                attempts: 0,
                resends: 0,
                last_sent_at: now(),
                expires_at: now() + 600,
                stamp: 0,
            };
            rt.block_on(async {
                store
                    .put_challenge(&challenge, usize::MAX, &[])
                    .await
                    .unwrap();
                let current = store.challenge(challenge.id).await.unwrap().unwrap();
                let typed = secrets.keyed_hash("two-factor-code", &code);
                assert_eq!(current.record.code_hash, Some(typed));
                assert!(store.swap_challenge(&current, None, &[]).await.unwrap());
            })
        })
    });
}

/// GraphQL through the schema alone (no TLS, no HTTP): the floor, a sign-in with hashing
/// made negligible (argon2 at 8 KiB, one pass), a refresh (with its durable flush) and a
/// profile read.
fn graphql(c: &mut Criterion) {
    let rt = runtime();
    let cheap = PasswordsConfig {
        argon2_memory_kib: 8,
        argon2_iterations: 1,
        ..PasswordsConfig::default()
    };
    let f = fixture(cheap.clone());
    let hash = PasswordHasher::new(&cheap)
        .unwrap()
        .hash_now(PASSWORD)
        .unwrap();
    let store = f.auth.store.as_any().downcast_ref::<Store>().unwrap();
    user(store, hash);
    let schema = keyhold::graphql::build_schema(&f.config.graphql, f.auth.clone());
    let login = || {
        async_graphql::Request::new(
            "mutation($e: EmailAddress!, $p: String!) { login(credentials: { email: $e, password: $p, deviceInfo: { deviceId: \"bench\" } }) { token refreshToken } }",
        )
        .variables(async_graphql::Variables::from_json(
            json!({ "e": "ada@example.com", "p": PASSWORD }),
        ))
    };
    let mut group = c.benchmark_group("graphql");
    group.bench_function("typename", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(schema.execute("{ __typename }").await) })
    });
    group.bench_function("login_hashing_excluded", |b| {
        b.to_async(&rt).iter(|| async {
            let response = schema.execute(login()).await;
            assert!(response.errors.is_empty(), "{:?}", response.errors);
        })
    });
    // One client's refreshes, one after another: each waits for its rotation to be durable.
    let signed_in = rt
        .block_on(schema.execute(login()))
        .data
        .into_json()
        .unwrap();
    let refresh = std::sync::Mutex::new(
        signed_in["login"]["refreshToken"]
            .as_str()
            .unwrap()
            .to_string(),
    );
    group.bench_function("new_token", |b| {
        b.to_async(&rt).iter(|| async {
            let current = refresh.lock().unwrap().clone();
            let response = schema
                .execute(
                    async_graphql::Request::new(
                        "mutation($t: String!) { newToken(refreshToken: $t) { token refreshToken } }",
                    )
                    .variables(async_graphql::Variables::from_json(json!({ "t": current }))),
                )
                .await;
            assert!(response.errors.is_empty(), "{:?}", response.errors);
            let data = response.data.into_json().unwrap();
            *refresh.lock().unwrap() = data["newToken"]["refreshToken"]
                .as_str()
                .unwrap()
                .to_string();
        })
    });
    let signed_in = rt
        .block_on(schema.execute(login()))
        .data
        .into_json()
        .unwrap();
    let bearer = format!("Bearer {}", signed_in["login"]["token"].as_str().unwrap());
    group.bench_function("user_profile", |b| {
        b.to_async(&rt).iter(|| async {
            let response = schema
                .execute(
                    async_graphql::Request::new("{ userProfile { id email username } }")
                        .data(RequestMeta::new(None, None, Some(&bearer))),
                )
                .await;
            assert!(response.errors.is_empty(), "{:?}", response.errors);
        })
    });
    group.finish();
}

/// `keyhold::testing`: one in-process server started (port 0, temporary folder, certificate,
/// keys) and stopped, as a test suite would for each test.
fn test_server(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("testing");
    group.sample_size(30);
    group.bench_function("start_and_stop", |b| {
        b.to_async(&rt).iter(|| async {
            let server = keyhold::testing::TestServer::start().await.unwrap();
            server.shutdown().await.unwrap();
        })
    });
    group.finish();
}

/// PostgreSQL (the tests' throwaway cluster): one event on an abuse-limit window, alone, and
/// per event while 16 requests hit the same key at once (a flood from one address).
fn postgres_limits(c: &mut Criterion) {
    use keyhold::limits::Limit;
    use keyhold::store::LimitStore;
    use keyhold::store::postgres::test_cluster;
    let rt = runtime();
    let store = rt.block_on(async {
        let url = test_cluster::fresh_database().await?;
        let limits = keyhold::config::LimitsConfig {
            enabled: true,
            login_per_ip_per_minute: u32::MAX,
            ..Default::default()
        };
        let store = keyhold::store::postgres::open(&test_cluster::config_for(&url), &limits)
            .await
            .unwrap();
        Some(Arc::new(store))
    });
    let Some(store) = store else {
        eprintln!("postgres/hit_limit: no PostgreSQL here, not run");
        return;
    };
    let mut group = c.benchmark_group("postgres");
    group.bench_function("hit_limit", |b| {
        b.to_async(&rt).iter(|| async {
            let hit = store.hit_limit(Limit::LoginPerIp, "192.0.2.1", now()).await;
            black_box(hit.unwrap().is_ok())
        })
    });
    group.bench_function("hit_limit_16_at_once_on_one_key", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let store = store.clone();
            async move {
                let start = std::time::Instant::now();
                let racers: Vec<_> = (0..16)
                    .map(|_| {
                        let store = store.clone();
                        tokio::spawn(async move {
                            for _ in 0..iters {
                                let hit = store.hit_limit(Limit::LoginPerIp, "192.0.2.2", now());
                                black_box(hit.await.unwrap().is_ok());
                            }
                        })
                    })
                    .collect();
                for racer in racers {
                    racer.await.unwrap();
                }
                // Per event, with 16 in flight.
                start.elapsed() / 16
            }
        })
    });
    group.finish();
}

criterion_group!(
    benches,
    postgres_limits,
    test_server,
    argon2,
    jwt,
    refresh_rotation,
    code_issue_and_check,
    graphql
);
criterion_main!(benches);
