//! The end-to-end load benchmark: a real Keyhold process over HTTPS on loopback, measured
//! against the limit of the machine. See BENCHMARKS.md. Run:
//!
//! ```text
//! cargo bench --bench load                                    # 100,000 users, 16 clients, 10 s
//! cargo bench --bench load -- --users 1000 --seconds 3        # a quick look
//! cargo bench --bench load -- --seed-only --storage DIR       # seed DIR for a server of your own,
//! cargo bench --bench load -- --storage DIR --url https://localhost:8443 --pid PID   # then load it
//! cargo bench --bench load -- --keyhold /tmp/keyhold-a --only floor,newToken   # another build
//! cargo bench --bench load -- --ab /tmp/keyhold-old --only floor,newToken,userProfile,login   # A/B in one run
//! cargo bench --bench load -- --backend postgres --instances 2 --users 10000   # (B) rows on PostgreSQL
//! ```
//!
//! It seeds users and one device session each straight into the store and closes it as a
//! clean stop of the server does, with a checkpoint. Start-up is measured twice: on a copy
//! made just before that close (what a crash would leave: the whole log to read again),
//! and on the store itself. It starts `keyhold serve` as its own process (so the server's
//! CPU time and memory are read from `/proc/<pid>` apart from the load generator's),
//! measures the raw argon2id capacity of the machine, then drives keep-alive HTTPS load
//! from concurrent clients, one connection each.
//! `floor`, `newToken` and `userProfile` take turns, a second each, so that changes in the
//! machine's speed reach them alike and their ratios to the floor hold. The last column,
//! writes per fsync, is read from the server's `/metrics` between measurements: how many
//! durable writes shared one flush of the log (group commit).
//!
//! Every scenario runs twice: over HTTP/1.1 (one connection per client) and over HTTP/2
//! (one connection carrying every client's streams, as a browser or an HTTP/2 proxy sends
//! them); the HTTP/2 rows take their turns beside the HTTP/1.1 ones.

#![expect(clippy::disallowed_methods, reason = "a benchmark measures real time")]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use keyhold::Config;
use keyhold::auth::sessions::issue_refresh_token;
use keyhold::auth::{PasswordHasher, Secrets};
use keyhold::domain::records::{SessionRecord, UserRecord};
use keyhold::store::UserStore;
use keyhold::store::sled::Store;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use uuid::Uuid;

/// The password of every seeded user.
const PASSWORD: &str = "load-benchmark passphrase 7";
/// How many seeded refresh tokens are kept for the clients.
const KEPT_TOKENS: usize = 1024;
const LOGIN: &str = "mutation($email: EmailAddress!, $password: String!) { login(credentials: { email: $email, password: $password, deviceInfo: { deviceId: \"bench\" } }) { token } }";
const NEW_TOKEN: &str =
    "mutation($t: String!) { newToken(refreshToken: $t) { token refreshToken } }";
const PROFILE: &str = "{ userProfile { id email username } }";
/// Clients that refresh tokens (and are timed) during the sign-in storm.
const STORM_REFRESHERS: usize = 4;

#[derive(Parser, Debug)]
#[command(about = "Keyhold's end-to-end load benchmark (see BENCHMARKS.md)")]
struct Args {
    /// Users to seed, each with one device session.
    #[arg(long, default_value_t = 100_000)]
    users: usize,
    /// Concurrent clients (one keep-alive HTTPS connection each).
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Seconds per scenario.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Concurrent sign-ins in the `storm` scenario.
    #[arg(long, default_value_t = 64)]
    storm: usize,
    /// Scenarios to run (comma separated): floor,login,newToken,userProfile,storm,backup.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Keep the storage here (and reuse it when already seeded) instead of a temporary folder.
    #[arg(long)]
    storage: Option<PathBuf>,
    /// Seed `--storage` and stop.
    #[arg(long, requires = "storage")]
    seed_only: bool,
    /// Load a running Keyhold whose storage is `--storage` (seeded by `--seed-only`),
    /// instead of starting one; its certificate is read from `--storage`/data/tls/cert.pem.
    #[arg(long, requires = "storage")]
    url: Option<String>,
    /// The process id of the server given by `--url`, to read its CPU time and memory.
    #[arg(long, requires = "url")]
    pid: Option<u32>,
    /// Start this `keyhold` binary instead of the one built with the benchmark. The VM's
    /// speed drifts, so two builds are compared by alternating runs of each (BENCHMARKS.md,
    /// "Running them").
    #[arg(long, conflicts_with = "url")]
    keyhold: Option<PathBuf>,
    /// A second build, started beside the first on a copy of the same store: its `floor`,
    /// `newToken` (HTTP/1.1 and HTTP/2) and `userProfile` each run right beside the same
    /// scenario of this build, second by second (rows with "(B)"), so the two builds meet
    /// the same moments of the machine, and each pair of seconds gives one ratio ("A/B …"
    /// lines, with a 95 % interval: use `--seconds 30` or more for a narrow one).
    #[arg(long, conflicts_with = "url")]
    ab: Option<PathBuf>,
    /// `postgres`: the other build ("(B)" rows) is this one on PostgreSQL, the seeded store
    /// copied into a cluster the benchmark starts (`keyhold migrate`'s copy), run as
    /// `--instances` instances behind a round-robin client; its CPU counts every instance's
    /// and every PostgreSQL process's.
    #[arg(long, conflicts_with_all = ["url", "ab"])]
    backend: Option<String>,
    /// Instances on PostgreSQL, with `--backend postgres`.
    #[arg(long, default_value_t = 1, requires = "backend")]
    instances: usize,
    /// The per-address connection cap to give a build that is not this one (`--keyhold`,
    /// `--ab`); this build always gets 1024. Another build keeps its default (64) unless this
    /// is given: a `--keyhold` build as the A side then needs it for 16 clients.
    #[arg(long)]
    max_connections_per_ip: Option<usize>,
    /// Passed by `cargo bench` to every benchmark target.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let temp = tempfile::tempdir()?;
    let root = args
        .storage
        .clone()
        .unwrap_or_else(|| temp.path().to_path_buf());
    let config = bench_config(&root);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "Keyhold load benchmark: {} users, {} clients, {} s per scenario, {cores} cores",
        args.users, args.clients, args.seconds
    );

    let seeded = if args.url.is_some() {
        Seeded {
            password_hash: PasswordHasher::new(&config.passwords)?.hash_now(PASSWORD)?,
            tokens: Vec::new(),
            crash_image: None,
        }
    } else {
        seed(&config, args.users).await?
    };
    if args.seed_only {
        println!("seeded {} users in {}", args.users, root.display());
        return Ok(());
    }
    let binary = args
        .keyhold
        .clone()
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_keyhold")));
    // This build, or another one with the cap the arguments give it.
    let own = |own_build| Build {
        own: own_build,
        per_ip: if own_build {
            Some(1024)
        } else {
            args.max_connections_per_ip
        },
    };
    // Start-up after a crash: a copy of the store as the seeding left it before its clean
    // close, so the server reads the whole log again.
    let mut ready_after_crash = None;
    if let Some(image) = &seeded.crash_image {
        let server = Server::start(&binary, image, own(args.keyhold.is_none()), false).await?;
        ready_after_crash = server.ready_after;
        server.kill().await;
        std::fs::remove_dir_all(image)?;
        if let Some(ready) = ready_after_crash {
            println!(
                "start-up to ready after a crash (the whole log read): {} ms",
                ready.as_millis()
            );
        }
    }

    // The limit: raw argon2id, same crate and parameters, every core, nothing else running.
    let capacity = argon2_capacity(&config, &seeded.password_hash, cores).await?;
    println!(
        "raw argon2id capacity: {capacity:.1} hashes/s on {cores} cores (m={} KiB, t={}, p={})",
        config.passwords.argon2_memory_kib,
        config.passwords.argon2_iterations,
        config.passwords.argon2_parallelism
    );

    let wanted = |name: &str| args.only.is_empty() || args.only.iter().any(|o| o == name);
    // The other build's store: a copy made while no server holds the first.
    let ab_root = root.join("ab");
    if args.ab.is_some() {
        let _ = std::fs::remove_dir_all(&ab_root);
        copy_folder(&config.storage.path, &ab_root.join("data"))?;
    }
    // The copy into PostgreSQL, made while no server holds the sled store.
    let postgres = match args.backend.as_deref() {
        None => None,
        Some("postgres") => Some(copy_to_postgres(&config, &root).await?),
        Some(other) => bail!("--backend takes postgres, not {other}"),
    };
    let server = match &args.url {
        Some(url) => Server::external(url, &root, args.pid)?,
        None => {
            Server::start(
                &binary,
                &root,
                own(args.keyhold.is_none()),
                wanted("backup"),
            )
            .await?
        }
    };
    let mut other = match &args.ab {
        Some(other) => Some(Server::start(other, &ab_root, own(false), false).await?),
        None => None,
    };
    if let Some((url, key)) = &postgres {
        other = Some(on_postgres(&binary, &root, url, key, args.instances).await?);
        println!(
            "(B): this build on PostgreSQL, {} instance(s), round robin; its CPU counts every instance and PostgreSQL",
            args.instances
        );
    }
    if let Some(ready) = server.ready_after {
        println!(
            "start-up to ready after a clean stop: {} ms",
            ready.as_millis()
        );
    }
    let store_bytes = folder_size(&config.db_path());
    println!(
        "store on disk: {:.1} MiB, {:.0} bytes per user",
        store_bytes as f64 / 1048576.0,
        store_bytes as f64 / args.users.max(1) as f64
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = server.rss();
    if let Some(rss) = idle {
        println!("idle RSS: {:.1} MiB", rss.current as f64 / 1048576.0);
    }

    let pool = args.clients.max(args.storm + STORM_REFRESHERS);
    let clients = connect(&server, pool).await?;
    let tokens = if args.url.is_some() {
        sign_in_sessions(&server, 2 * args.clients + STORM_REFRESHERS).await?
    } else {
        seeded.tokens
    };
    let mut tokens = tokens.into_iter();
    let mut take_tokens = |n: usize| -> anyhow::Result<Vec<String>> {
        let taken: Vec<String> = tokens.by_ref().take(n).collect();
        if taken.len() < n {
            bail!("not enough seeded sessions: seed more users");
        }
        Ok(taken)
    };
    let duration = Duration::from_secs(args.seconds);
    let mut rows = Vec::new();
    let users = args.users;
    let c = args.clients;

    // The floor and the two token scenarios are compared: they take turns (see
    // `measure_in_turns`). Sign-ins are compared with the argon2 capacity instead.
    let h2 = connect_http2(&server, pool).await?;
    let protocols = [("", &clients), (HTTP2, &h2)];
    let mut turns = Vec::new();
    if let Some(other) = &other {
        if wanted("floor") {
            let plans = (0..c).map(|_| Plan::Floor).collect();
            turns.push((
                "floor (B)".to_string(),
                other,
                connect(other, c).await?,
                plans,
            ));
        }
        if wanted("newToken") {
            // Its store is a copy of the same seeding: the seeded tokens work there too.
            let plans = take_tokens(c)?.into_iter().map(Plan::Refresh).collect();
            turns.push((
                "newToken (B)".to_string(),
                other,
                connect(other, c).await?,
                plans,
            ));
            let plans = take_tokens(c)?.into_iter().map(Plan::Refresh).collect();
            turns.push((
                format!("newToken (B){HTTP2}"),
                other,
                connect_http2(other, c).await?,
                plans,
            ));
        }
        if wanted("userProfile") {
            let other_clients = connect(other, c).await?;
            let mut plans = Vec::new();
            for (client, refresh) in other_clients.iter().zip(take_tokens(c)?) {
                let body = client
                    .call(None, NEW_TOKEN, json!({ "t": refresh }))
                    .await?;
                let token = body["data"]["newToken"]["token"]
                    .as_str()
                    .context("newToken for userProfile (B)")?;
                plans.push(Plan::Profile(token.to_string()));
            }
            turns.push(("userProfile (B)".to_string(), other, other_clients, plans));
        }
    }
    for (suffix, clients) in protocols {
        let name = |scenario: &str| format!("{scenario}{suffix}");
        if wanted("floor") {
            let plans = (0..c).map(|_| Plan::Floor).collect();
            turns.push((name("floor"), &server, clients[..c].to_vec(), plans));
        }
        if wanted("newToken") {
            let plans = take_tokens(c)?.into_iter().map(Plan::Refresh).collect();
            turns.push((name("newToken"), &server, clients[..c].to_vec(), plans));
        }
        if wanted("userProfile") {
            let mut plans = Vec::new();
            for (client, refresh) in clients[..c].iter().zip(take_tokens(c)?) {
                let body = client
                    .call(None, NEW_TOKEN, json!({ "t": refresh }))
                    .await?;
                let token = body["data"]["newToken"]["token"]
                    .as_str()
                    .context("newToken for userProfile")?;
                plans.push(Plan::Profile(token.to_string()));
            }
            turns.push((name("userProfile"), &server, clients[..c].to_vec(), plans));
        }
    }
    if !turns.is_empty() {
        rows.extend(measure_in_turns(turns, args.seconds).await?);
    }
    if let (Some(other), true) = (&other, wanted("login")) {
        // Sign-ins of the other build right after this build's, on users of its own copy.
        let login = |n: usize| -> Vec<Plan> {
            (0..c)
                .map(|k| Plan::Login {
                    next: n * users / 4 + k,
                    step: c,
                    users,
                })
                .collect()
        };
        rows.push(measure(&server, "login", &clients[..c], login(3), duration).await?);
        let other_clients = connect(other, c).await?;
        rows.push(measure(other, "login (B)", &other_clients, login(0), duration).await?);
    }
    if let Some(other) = &other {
        other.stop().await;
    }
    let mut storm_logins = None;
    for (n, (suffix, clients)) in protocols.into_iter().enumerate() {
        if wanted("login") {
            // Each protocol signs in users of its own, so no session is replaced mid-run.
            let plans = (0..c)
                .map(|k| Plan::Login {
                    next: n * users / 4 + k,
                    step: c,
                    users,
                })
                .collect();
            let name = format!("login{suffix}");
            rows.push(measure(&server, &name, &clients[..c], plans, duration).await?);
        }
        if wanted("storm") {
            let refreshers = take_tokens(STORM_REFRESHERS)?;
            let mut plans: Vec<Plan> = refreshers.into_iter().map(Plan::Refresh).collect();
            plans.extend((0..args.storm).map(|k| Plan::Login {
                next: users / 2 + n * users / 4 + k,
                step: args.storm,
                users,
            }));
            let storm_clients = &clients[..STORM_REFRESHERS + args.storm];
            let (mut row, logins) = measure_storm(&server, storm_clients, plans, duration).await?;
            row.name.push_str(suffix);
            if n == 0 {
                storm_logins = Some(logins);
            }
            rows.push(row);
        }
    }
    if wanted("backup") {
        let tokens = take_tokens(c - c / 2)?;
        let file = root.join("bench-backup.age");
        rows.extend(
            measure_backup(&server, &binary, &clients[..c], tokens, duration, &file).await?,
        );
        let _ = std::fs::remove_file(&file);
    }
    server.stop().await;

    print_report(&Report {
        rows: &rows,
        capacity,
        cores,
        idle_rss: idle.map(|r| r.current),
        ready_after: server.ready_after,
        ready_after_crash,
        store_bytes,
        users: args.users,
        storm_logins,
    });
    Ok(())
}

/// The seeded store copied into a PostgreSQL cluster of this process's own (which lives as
/// long as this process): its URL and key file.
async fn copy_to_postgres(config: &Config, root: &Path) -> anyhow::Result<(String, PathBuf)> {
    let url = keyhold::store::postgres::test_cluster::fresh_database()
        .await
        .context("no PostgreSQL here (apt-get install postgresql)")?;
    let key = root.join("pg-hmac.key");
    let mut pg = config.clone();
    pg.storage.backend = keyhold::config::StorageBackend::Postgres;
    pg.storage.postgres = keyhold::store::postgres::test_cluster::config_for(&url);
    pg.storage.hmac_key_file = Some(key.clone());
    let copied = {
        let source = keyhold::store::open(config).await?;
        let target = keyhold::store::open(&pg).await?;
        keyhold::migrate::same_key(config, &*source, &pg, &*target).await?;
        let copied = keyhold::migrate::copy(&*source, &*target).await?;
        tokio::task::spawn_blocking(move || {
            let _ = source.close();
            let _ = target.close();
        })
        .await?;
        copied
    };
    println!(
        "copied {} users and {} sessions into PostgreSQL",
        copied.users, copied.sessions
    );
    Ok((url, key))
}

/// `instances` of `binary` serving the PostgreSQL store at `url` with the key file `key`: the
/// first, with the others as its peers.
async fn on_postgres(
    binary: &Path,
    root: &Path,
    url: &str,
    key: &Path,
    instances: usize,
) -> anyhow::Result<Server> {
    let mut servers = Vec::new();
    for n in 0..instances.max(1) {
        let dir = root.join(format!("pg{n}"));
        std::fs::create_dir_all(&dir)?;
        let toml = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nmax_connections_per_ip = 1024\n[storage]\nbackend = \"postgres\"\npath = \"{}\"\nhmac_key_file = \"{}\"\nbackup_interval = \"0s\"\n[storage.postgres]\nurl = \"{url}\"\nsslmode = \"disable\"\npool_size = 16\n[limits]\nenabled = false\n",
            dir.join("data").display(),
            key.display()
        );
        servers.push(Server::start_with(binary, &dir, toml).await?);
    }
    let mut first = servers.remove(0);
    first.peers = servers;
    first.with_postgres = true;
    Ok(first)
}

/// The server's configuration: defaults (argon2 included), but no rate limits, since every
/// request comes from one address, and mail to the outbox.
fn bench_config(root: &Path) -> Config {
    let mut config = Config::default();
    config.storage.path = root.join("data");
    config.limits.enabled = false;
    config
}

/// The server's `config.toml`. Every client connects from 127.0.0.1, so the bench's own
/// build lifts the per-address connection cap; another build (`--keyhold`, `--ab`) gets only
/// the keys that every build since the first knows, and the backup key (a key made for this
/// run) only when the `backup` scenario runs.
/// Which build a server runs: this one (which knows every setting), or another.
#[derive(Clone, Copy)]
struct Build {
    own: bool,
    /// `server.max_connections_per_ip`, when it is set.
    per_ip: Option<usize>,
}

fn config_toml(root: &Path, build: Build, backup: bool) -> String {
    let per_ip = build
        .per_ip
        .map(|n| format!("max_connections_per_ip = {n}\n"))
        .unwrap_or_default();
    let recipient = if backup || build.own {
        let key = age::x25519::Identity::generate().to_public();
        format!("backup_recipient = \"{key}\"\n")
    } else {
        String::new()
    };
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n{per_ip}[storage]\npath = \"{}\"\n{recipient}[limits]\nenabled = false\n",
        root.join("data").display()
    )
}

struct Seeded {
    password_hash: String,
    tokens: Vec<String>,
    /// A root folder whose `data` is the store as a crash right after seeding leaves it.
    crash_image: Option<PathBuf>,
}

/// Writes `users` verified accounts with one device session each straight into the store.
/// Every account shares one password hash. A store seeded before keeps its accounts and
/// gets fresh sessions for the first users, whose refresh tokens the clients use.
async fn seed(config: &Config, users: usize) -> anyhow::Result<Seeded> {
    let marker = config.storage.path.join(format!("bench-seeded-{users}"));
    let store = Store::open(&config.db_path())?;
    let secrets = Arc::new(Secrets::load_or_create(&config.keys_dir())?);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let refresh_ttl = i64::try_from(config.tokens.refresh_ttl.as_secs())?;
    let session_for = |user: &UserRecord| -> anyhow::Result<String> {
        let id = Uuid::new_v4();
        let (token, refresh_hash) = issue_refresh_token(&secrets, id, 0);
        let session = SessionRecord {
            id,
            user_id: user.id,
            device_id: "seed".into(),
            name: Some("seeded".into()),
            ip_address: Some("127.0.0.1".into()),
            user_agent: Some("keyhold-bench".into()),
            created_at: now,
            last_seen_at: now,
            refresh_hash,
            refresh_expires_at: now + refresh_ttl,
            refresh_generation: 0,
        };
        store.start_session_unchecked(&session)?;
        Ok(token)
    };
    if marker.exists() {
        let mut tokens = Vec::new();
        let mut password_hash = String::new();
        for i in 0..KEPT_TOKENS.min(users) {
            let user = store
                .user_by_email(&email(i))
                .await?
                .context("a seeded user is gone")?;
            tokens.push(session_for(&user)?);
            password_hash = user.password_hash;
        }
        close(store)?;
        return Ok(Seeded {
            password_hash,
            tokens,
            crash_image: None,
        });
    }
    let started = Instant::now();
    let password_hash = PasswordHasher::new(&config.passwords)?.hash_now(PASSWORD)?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let kept: Vec<(usize, String)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let (store, hash, session_for) = (&store, &password_hash, &session_for);
                scope.spawn(move || -> anyhow::Result<Vec<(usize, String)>> {
                    let mut kept = Vec::new();
                    for i in (t..users).step_by(threads) {
                        let user = UserRecord {
                            email_verified: true,
                            ..UserRecord::new(&email(i), &format!("user{i}"), hash.clone(), now)
                        };
                        store.insert_user_now(&user)?;
                        let token = session_for(&user)?;
                        if i < KEPT_TOKENS {
                            kept.push((i, token));
                        }
                    }
                    Ok(kept)
                })
            })
            .collect();
        let mut kept = Vec::new();
        for worker in workers {
            kept.extend(
                worker
                    .join()
                    .map_err(|_| anyhow::anyhow!("a seeding thread panicked"))??,
            );
        }
        Ok::<_, anyhow::Error>(kept)
    })?;
    // The seeded accounts have no TOTP secret, let alone one in clear: the store is what a
    // server of this version writes, whose first start has no sealing pass to make (the
    // pass of an upgrade from before sealing reads every account once).
    store.mark_secrets_sealed().await?;
    store.flush_blocking()?;
    println!(
        "seeded {users} users and sessions in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // Flushed but not closed: what a crash would leave.
    let root = config
        .storage
        .path
        .parent()
        .context("a storage folder's parent")?;
    let crash_image = root.join("crash-image");
    copy_folder(&config.storage.path, &crash_image.join("data"))?;
    close(store)?;
    // Both starts then find the files on disk, not a gigabyte still being written back.
    std::process::Command::new("sync").status()?;
    let mut kept = kept;
    kept.sort();
    std::fs::write(&marker, "")?;
    Ok(Seeded {
        password_hash,
        tokens: kept.into_iter().map(|(_, t)| t).collect(),
        crash_image: Some(crash_image),
    })
}

/// Closes the store as a clean stop of the server does (with its recovery checkpoint).
fn close(store: Store) -> anyhow::Result<()> {
    let started = Instant::now();
    let checkpointed = store.close()?;
    println!(
        "store closed in {} ms (checkpoint: {checkpointed})",
        started.elapsed().as_millis()
    );
    Ok(())
}

fn copy_folder(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        let kind = entry.file_type()?;
        if kind.is_dir() {
            copy_folder(&entry.path(), &target)?;
        } else if kind.is_file() {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// For a server of its own (`--url`): the store is its; device sessions come from signing in.
async fn sign_in_sessions(server: &Server, n: usize) -> anyhow::Result<Vec<String>> {
    let client = Client {
        http: http_client(&server.certificate, server.addr)?,
        url: server.url.clone(),
    };
    let mut tokens = Vec::new();
    for i in 0..n {
        let body = client
            .call(
                None,
                "mutation($email: EmailAddress!, $password: String!, $device: String) { login(credentials: { email: $email, password: $password, deviceInfo: { deviceId: $device } }) { refreshToken } }",
                json!({ "email": email(i), "password": PASSWORD, "device": format!("bench-{i}") }),
            )
            .await?;
        let token = body["data"]["login"]["refreshToken"]
            .as_str()
            .context("a refresh token from login")?;
        tokens.push(token.to_string());
    }
    Ok(tokens)
}

fn email(i: usize) -> String {
    format!("user{i}@bench.keyhold.invalid")
}

/// argon2id verifications per second with one thread per core, as the server verifies.
async fn argon2_capacity(config: &Config, phc: &str, cores: usize) -> anyhow::Result<f64> {
    let params = config.passwords.clone();
    let phc = phc.to_string();
    tokio::task::spawn_blocking(move || {
        use argon2::{Argon2, PasswordHash, PasswordVerifier};
        let parsed = PasswordHash::new(&phc).map_err(|e| anyhow::anyhow!("{e}"))?;
        let _ = params;
        let until = Instant::now() + Duration::from_secs(5);
        let started = Instant::now();
        let counts: Vec<usize> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..cores)
                .map(|_| {
                    let parsed = parsed.clone();
                    scope.spawn(move || {
                        let mut n = 0;
                        while Instant::now() < until {
                            let ok = Argon2::default()
                                .verify_password(PASSWORD.as_bytes(), &parsed)
                                .is_ok();
                            assert!(ok, "the seeded hash verifies");
                            n += 1;
                        }
                        n
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or(0)).collect()
        });
        let total: usize = counts.iter().sum();
        Ok(total as f64 / started.elapsed().as_secs_f64())
    })
    .await?
}

/// The server under load: a child process this benchmark started, or one given by URL.
struct Server {
    url: String,
    /// The configuration file of a server this benchmark started.
    config_file: Option<PathBuf>,
    certificate: String,
    addr: std::net::SocketAddr,
    pid: Option<u32>,
    child: Option<tokio::process::Child>,
    ready_after: Option<Duration>,
    /// Further instances behind the same round-robin client, on the same database.
    peers: Vec<Server>,
    /// Count the CPU of every PostgreSQL process with this server's.
    with_postgres: bool,
}

#[derive(Clone, Copy)]
struct Rss {
    current: u64,
    peak: u64,
}

impl Server {
    async fn start(
        binary: &Path,
        root: &Path,
        build: Build,
        backup: bool,
    ) -> anyhow::Result<Server> {
        Server::start_with(binary, root, config_toml(root, build, backup)).await
    }

    /// Starts `binary` in `root` with the configuration `toml`.
    async fn start_with(binary: &Path, root: &Path, toml: String) -> anyhow::Result<Server> {
        let config_file = root.join("bench-config.toml");
        std::fs::write(&config_file, toml)?;
        let started = Instant::now();
        let mut child = tokio::process::Command::new(binary)
            .arg("serve")
            .arg("--config")
            .arg(&config_file)
            .env("RUST_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("start keyhold serve")?;
        let mut lines = BufReader::new(child.stderr.take().context("stderr")?).lines();
        let mut seen = Vec::new();
        let addr = loop {
            let Some(line) = lines.next_line().await? else {
                bail!("the server stopped before listening:\n{}", seen.join("\n"));
            };
            if let Some(at) = line.find("address=") {
                let rest = &line[at + "address=".len()..];
                let end = rest.find(' ').unwrap_or(rest.len());
                if line.contains("Keyhold listening") {
                    break rest[..end].parse::<std::net::SocketAddr>()?;
                }
            }
            seen.push(line);
        };
        // Keep reading the log so the server never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let certificate = std::fs::read_to_string(root.join("data/tls/cert.pem"))?;
        let url = format!("https://localhost:{}", addr.port());
        let probe = http_client(&certificate, addr)?;
        loop {
            let ready = probe.get(format!("{url}/readyz")).send().await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!("the server was not ready within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let ready_after = started.elapsed();
        Ok(Server {
            url,
            config_file: Some(config_file),
            certificate,
            addr,
            pid: child.id(),
            child: Some(child),
            ready_after: Some(ready_after),
            peers: Vec::new(),
            with_postgres: false,
        })
    }

    fn external(url: &str, root: &Path, pid: Option<u32>) -> anyhow::Result<Server> {
        let parsed = url::Url::parse(url)?;
        let host = parsed.host_str().context("a host in --url")?;
        let port = parsed.port_or_known_default().context("a port in --url")?;
        let addr = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))?
            .next()
            .context("resolve --url")?;
        Ok(Server {
            url: format!("https://localhost:{port}"),
            config_file: None,
            certificate: std::fs::read_to_string(root.join("data/tls/cert.pem"))?,
            addr,
            pid,
            child: None,
            ready_after: None,
            peers: Vec::new(),
            with_postgres: false,
        })
    }

    /// User plus system CPU time of the server so far, with its peers' and, on PostgreSQL,
    /// every PostgreSQL process's.
    fn cpu(&self) -> Option<Duration> {
        let mut total = process_cpu(self.pid?)?;
        for peer in &self.peers {
            total += peer.cpu()?;
        }
        if self.with_postgres {
            total += postgres_cpu();
        }
        Some(total)
    }

    fn rss(&self) -> Option<Rss> {
        self.own_rss()
    }
}

/// The CPU time of every process named `postgres` (the cluster's postmaster and backends).
fn postgres_cpu() -> Duration {
    let mut total = Duration::ZERO;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() == "postgres" {
            total += process_cpu(pid).unwrap_or_default();
        }
    }
    total
}

/// User plus system CPU time of process `pid` so far.
fn process_cpu(pid: u32) -> Option<Duration> {
    {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command name, which is in parentheses: state is field 3, utime 14.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 =
            fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        // USER_HZ is 100 on Linux.
        Some(Duration::from_millis(ticks * 10))
    }
}

impl Server {
    fn own_rss(&self) -> Option<Rss> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid?)).ok()?;
        let kib = |key: &str| -> Option<u64> {
            let line = status.lines().find(|l| l.starts_with(key))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        };
        Some(Rss {
            current: kib("VmRSS:")? * 1024,
            peak: kib("VmHWM:")? * 1024,
        })
    }

    /// Starts a new peak-RSS measurement (Linux: writing 5 to clear_refs resets VmHWM).
    fn reset_peak(&self) {
        if let Some(pid) = self.pid {
            let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
        }
    }

    /// Ends the server at once, as a crash would, and waits until it has.
    async fn kill(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    async fn stop(&self) {
        if let Some(pid) = self.child.as_ref().and_then(|c| c.id()) {
            let _ = tokio::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
    }
}

fn http_client(certificate: &str, addr: std::net::SocketAddr) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(certificate.as_bytes())?])
        .resolve("localhost", addr)
        .http1_only()
        .pool_max_idle_per_host(1)
        .timeout(Duration::from_secs(60))
        .build()?)
}

/// One client: its own keep-alive connection.
#[derive(Clone)]
struct Client {
    http: reqwest::Client,
    url: String,
}

impl Client {
    async fn call(
        &self,
        bearer: Option<&str>,
        query: &str,
        variables: Value,
    ) -> anyhow::Result<Value> {
        let mut request = self
            .http
            .post(format!("{}/graphql", self.url))
            .json(&json!({ "query": query, "variables": variables }));
        if let Some(token) = bearer {
            request = request.bearer_auth(token);
        }
        let body: Value = request.send().await?.json().await?;
        if let Some(errors) = body.get("errors") {
            bail!("{errors}");
        }
        Ok(body)
    }

    /// The server's durable writes and log flushes so far, from `GET /metrics`.
    async fn flush_stats(&self) -> anyhow::Result<Flushes> {
        let text = self
            .http
            .get(format!("{}/metrics", self.url))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        let counter = |name: &str| -> anyhow::Result<u64> {
            text.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
                .with_context(|| format!("{name} in /metrics"))?
                .trim()
                .parse::<f64>()
                .map(|v| v as u64)
                .with_context(|| format!("{name} in /metrics"))
        };
        Ok(Flushes {
            writes: counter("keyhold_store_flush_requests_total")?,
            flushes: counter("keyhold_store_flushes_total")?,
        })
    }
}

/// Writes that waited for the disk, and the log flushes (fsyncs) that covered them.
#[derive(Clone, Copy, Default)]
struct Flushes {
    writes: u64,
    flushes: u64,
}

impl Flushes {
    /// Adds what happened between two readings. A server given by `--url` may not let the
    /// benchmark read its metrics (`metrics.token`): then nothing is added.
    fn add(&mut self, before: Option<Flushes>, after: Option<Flushes>) {
        if let (Some(b), Some(a)) = (before, after) {
            self.writes += a.writes.saturating_sub(b.writes);
            self.flushes += a.flushes.saturating_sub(b.flushes);
        }
    }
}

/// The name suffix of the rows measured over HTTP/2.
const HTTP2: &str = " (HTTP/2)";

/// `n` clients sharing one HTTP/2 connection, opened before the measurements start.
async fn connect_http2(server: &Server, n: usize) -> anyhow::Result<Vec<Client>> {
    let http = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(
            server.certificate.as_bytes(),
        )?])
        .resolve("localhost", server.addr)
        .http2_prior_knowledge()
        .pool_max_idle_per_host(1)
        .timeout(Duration::from_secs(60))
        .build()?;
    let client = Client {
        http,
        url: server.url.clone(),
    };
    let answer = client
        .http
        .get(format!("{}/healthz", client.url))
        .send()
        .await?;
    if answer.version() != reqwest::Version::HTTP_2 {
        bail!(
            "the server answered over {:?}, not HTTP/2",
            answer.version()
        );
    }
    Ok(vec![client; n])
}

/// Opens `n` connections (one request each, so the TLS handshakes are not measured).
async fn connect(server: &Server, n: usize) -> anyhow::Result<Vec<Client>> {
    let mut clients = Vec::new();
    // Round robin over the server and its peers.
    let all: Vec<&Server> = std::iter::once(server).chain(&server.peers).collect();
    for k in 0..n {
        let to = all[k % all.len()];
        let client = Client {
            http: http_client(&to.certificate, to.addr)?,
            url: to.url.clone(),
        };
        client.call(None, "{ __typename }", Value::Null).await?;
        clients.push(client);
    }
    Ok(clients)
}

/// What one client does, request after request.
enum Plan {
    Floor,
    /// `GET /healthz`.
    Health,
    /// Signs in as user `next`, then `next + step`, … (wrapping at `users`).
    Login {
        next: usize,
        step: usize,
        users: usize,
    },
    /// Exchanges its refresh token for a new pair, again and again.
    Refresh(String),
    /// Reads the profile with this access token.
    Profile(String),
}

impl Plan {
    fn is_login(&self) -> bool {
        matches!(self, Plan::Login { .. })
    }

    async fn step(&mut self, client: &Client) -> anyhow::Result<()> {
        match self {
            Plan::Floor => {
                client.call(None, "{ __typename }", Value::Null).await?;
            }
            Plan::Health => {
                client
                    .http
                    .get(format!("{}/healthz", client.url))
                    .send()
                    .await?
                    .error_for_status()?;
            }
            Plan::Login { next, step, users } => {
                let vars = json!({ "email": email(*next % *users), "password": PASSWORD });
                *next += *step;
                let body = client.call(None, LOGIN, vars).await?;
                body["data"]["login"]["token"].as_str().context("a token")?;
            }
            Plan::Refresh(token) => {
                let body = client.call(None, NEW_TOKEN, json!({ "t": token })).await?;
                *token = body["data"]["newToken"]["refreshToken"]
                    .as_str()
                    .context("a refresh token")?
                    .to_string();
            }
            Plan::Profile(token) => {
                let body = client.call(Some(token), PROFILE, Value::Null).await?;
                body["data"]["userProfile"]["id"]
                    .as_str()
                    .context("a profile")?;
            }
        }
        Ok(())
    }
}

#[derive(Default)]
struct Sample {
    latencies: Vec<Duration>,
    errors: usize,
    first_error: Option<String>,
}

impl Sample {
    fn merge(&mut self, other: Sample) {
        self.latencies.extend(other.latencies);
        self.errors += other.errors;
        self.first_error = self.first_error.take().or(other.first_error);
    }
}

async fn drive(client: Client, mut plan: Plan, done: Arc<AtomicBool>) -> (Plan, Sample) {
    let mut sample = Sample::default();
    while !done.load(Ordering::Relaxed) {
        let started = Instant::now();
        match plan.step(&client).await {
            Ok(()) => sample.latencies.push(started.elapsed()),
            Err(e) => {
                sample.errors += 1;
                sample.first_error.get_or_insert_with(|| e.to_string());
                if matches!(plan, Plan::Refresh(_)) {
                    // The chain is broken; nothing more to measure on this client.
                    break;
                }
            }
        }
    }
    (plan, sample)
}

/// Runs every client's plan for `duration`; returns the plans (to go on with) and the
/// samples of logins and of the rest.
async fn load(
    clients: &[Client],
    plans: Vec<Plan>,
    duration: Duration,
) -> anyhow::Result<(Vec<Plan>, Sample, Sample)> {
    let done = Arc::new(AtomicBool::new(false));
    let timer = done.clone();
    tokio::spawn(async move {
        tokio::time::sleep(duration).await;
        timer.store(true, Ordering::Relaxed);
    });
    load_until(clients, plans, done).await
}

/// Runs every client's plan until `done` is set; returns what [`load`] does.
async fn load_until(
    clients: &[Client],
    plans: Vec<Plan>,
    done: Arc<AtomicBool>,
) -> anyhow::Result<(Vec<Plan>, Sample, Sample)> {
    let tasks: Vec<_> = clients
        .iter()
        .cloned()
        .zip(plans)
        .map(|(client, plan)| tokio::spawn(drive(client, plan, done.clone())))
        .collect();
    let (mut plans, mut logins, mut others) = (Vec::new(), Sample::default(), Sample::default());
    for task in tasks {
        let (plan, sample) = task.await?;
        if plan.is_login() {
            logins.merge(sample);
        } else {
            others.merge(sample);
        }
        plans.push(plan);
    }
    Ok((plans, logins, others))
}

struct Row {
    name: String,
    clients: usize,
    seconds: f64,
    sample: Sample,
    cpu: Option<Duration>,
    peak_rss: Option<u64>,
    /// What the server flushed while this row was measured.
    flushed: Flushes,
    /// Server CPU µs per request of each slice `measure_in_turns` ran, in order.
    slices: Vec<f64>,
}

impl Row {
    fn new(name: &str, clients: usize) -> Row {
        Row {
            name: name.to_string(),
            clients,
            seconds: 0.0,
            sample: Sample::default(),
            cpu: None,
            peak_rss: None,
            flushed: Flushes::default(),
            slices: Vec::new(),
        }
    }

    /// How many durable writes shared one fsync; `None` when nothing was flushed.
    fn writes_per_flush(&self) -> Option<f64> {
        let f = self.flushed;
        (f.flushes > 0).then(|| f.writes as f64 / f.flushes as f64)
    }

    fn print(&self) {
        if let Some(e) = &self.sample.first_error {
            eprintln!(
                "{}: {} errors, the first: {e}",
                self.name, self.sample.errors
            );
        }
        println!("  {}: {:.1} requests/s", self.name, self.throughput());
    }

    fn requests(&self) -> usize {
        self.sample.latencies.len()
    }

    fn throughput(&self) -> f64 {
        self.requests() as f64 / self.seconds
    }

    fn cpu_per_request_us(&self) -> Option<f64> {
        let n = self.requests() + self.sample.errors;
        self.cpu
            .filter(|_| n > 0)
            .map(|cpu| cpu.as_secs_f64() * 1e6 / n as f64)
    }

    fn percentile(&self, p: f64) -> f64 {
        let mut sorted = self.sample.latencies.clone();
        sorted.sort();
        if sorted.is_empty() {
            return f64::NAN;
        }
        let at = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
        sorted[at].as_secs_f64() * 1e3
    }
}

async fn measure(
    server: &Server,
    name: &str,
    clients: &[Client],
    plans: Vec<Plan>,
    duration: Duration,
) -> anyhow::Result<Row> {
    let mut row = Row::new(name, clients.len());
    measure_slice(server, &mut row, clients, plans, duration).await?;
    row.print();
    Ok(row)
}

/// Runs the plans for `duration` and adds what it measured to `row`; returns the plans.
async fn measure_slice(
    server: &Server,
    row: &mut Row,
    clients: &[Client],
    plans: Vec<Plan>,
    duration: Duration,
) -> anyhow::Result<Vec<Plan>> {
    let first = row.seconds == 0.0;
    // Read outside the CPU window: a scrape costs the server CPU too.
    let flushed_before = clients[0].flush_stats().await.ok();
    server.reset_peak();
    let cpu_before = server.cpu();
    let started = Instant::now();
    let (plans, logins, others) = load(clients, plans, duration).await?;
    row.seconds += started.elapsed().as_secs_f64();
    let cpu = server
        .cpu()
        .zip(cpu_before)
        .map(|(after, before)| after - before);
    let n = logins.latencies.len() + logins.errors + others.latencies.len() + others.errors;
    if let Some(cpu) = cpu.filter(|_| n > 0) {
        row.slices.push(cpu.as_secs_f64() * 1e6 / n as f64);
    }
    let flushed_after = clients[0].flush_stats().await.ok();
    row.flushed.add(flushed_before, flushed_after);
    row.cpu = if first {
        cpu
    } else {
        row.cpu.zip(cpu).map(|(sum, cpu)| sum + cpu)
    };
    row.sample.merge(others);
    row.sample.merge(logins);
    row.peak_rss = row.peak_rss.max(server.rss().map(|r| r.peak));
    Ok(plans)
}

/// Measures several scenarios taking turns, a second each, `rounds` times over. The speed
/// of this virtual machine changes from one minute to the next; taking turns exposes every
/// scenario to the same changes, so their ratios to the floor hold.
///
/// A scenario of the other build ("… (B)…") runs right beside the same scenario of this
/// one, first on every other round, and the two are compared second by second: see
/// [`paired`].
async fn measure_in_turns(
    scenarios: Vec<(String, &Server, Vec<Client>, Vec<Plan>)>,
    rounds: u64,
) -> anyhow::Result<Vec<Row>> {
    let mut turns: Vec<(Row, &Server, Vec<Client>, Vec<Plan>)> = scenarios
        .into_iter()
        .map(|(name, server, clients, plans)| {
            (Row::new(&name, plans.len()), server, clients, plans)
        })
        .collect();
    // Each scenario of the other build next to its counterpart of this one.
    let counterpart = |name: &str| name.replacen(" (B)", "", 1);
    let mut order: Vec<Vec<usize>> = Vec::new();
    for (i, (row, ..)) in turns.iter().enumerate() {
        if row.name.contains(" (B)") {
            continue;
        }
        let mut group = vec![i];
        group.extend(
            turns
                .iter()
                .position(|(b, ..)| b.name.contains(" (B)") && counterpart(&b.name) == row.name),
        );
        order.push(group);
    }
    for (i, (row, ..)) in turns.iter().enumerate() {
        if row.name.contains(" (B)") && !order.iter().flatten().any(|&k| k == i) {
            order.push(vec![i]);
        }
    }
    for round in 0..rounds.max(1) {
        for group in &order {
            let mut group = group.clone();
            if round % 2 == 1 {
                group.reverse();
            }
            for i in group {
                let (row, server, clients, plans) = &mut turns[i];
                let taken = std::mem::take(plans);
                *plans = measure_slice(server, row, clients, taken, Duration::from_secs(1)).await?;
            }
        }
    }
    let rows: Vec<Row> = turns.into_iter().map(|(row, _, _, _)| row).collect();
    for row in &rows {
        row.print();
    }
    for b in rows.iter().filter(|r| r.name.contains(" (B)")) {
        let Some(a) = rows.iter().find(|a| a.name == counterpart(&b.name)) else {
            continue;
        };
        if let Some(p) = paired(&a.slices, &b.slices) {
            println!(
                "  A/B {}: A costs {:+.1} % CPU per request against B (95 % interval {:+.1} to {:+.1} %, {} paired seconds)",
                a.name,
                p.change * 100.0,
                p.low * 100.0,
                p.high * 100.0,
                p.pairs
            );
        }
    }
    Ok(rows)
}

/// How much more CPU per request A costs than B, from seconds measured in pairs.
struct Paired {
    /// The estimate: the geometric mean of the per-second ratios, less one.
    change: f64,
    /// A 95 % interval of it.
    low: f64,
    high: f64,
    pairs: usize,
}

/// Compares two builds second by second: each pair of seconds ran back to back, so a drift
/// of the machine touches both sides of a pair alike and falls out of their ratio. The
/// interval is the mean of the log ratios ± 1.96 standard errors; it is honest only with
/// many pairs (a run of `--seconds 30` gives 30).
fn paired(a: &[f64], b: &[f64]) -> Option<Paired> {
    let logs: Vec<f64> = a
        .iter()
        .zip(b)
        .filter(|(a, b)| **a > 0.0 && **b > 0.0)
        .map(|(a, b)| (a / b).ln())
        .collect();
    let n = logs.len();
    if n < 2 {
        return None;
    }
    let mean = logs.iter().sum::<f64>() / n as f64;
    let variance = logs.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    let half = 1.96 * (variance / n as f64).sqrt();
    Some(Paired {
        change: mean.exp() - 1.0,
        low: (mean - half).exp() - 1.0,
        high: (mean + half).exp() - 1.0,
        pairs: n,
    })
}

/// The storm: sign-ins and refreshes at once; the row is the refreshes, and the sign-in
/// rate is returned beside it.
async fn measure_storm(
    server: &Server,
    clients: &[Client],
    plans: Vec<Plan>,
    duration: Duration,
) -> anyhow::Result<(Row, f64)> {
    let flushed_before = clients[0].flush_stats().await.ok();
    server.reset_peak();
    let started = Instant::now();
    let (_, logins, refreshes) = load(clients, plans, duration).await?;
    let seconds = started.elapsed().as_secs_f64();
    let flushed_after = clients[0].flush_stats().await.ok();
    let mut flushed = Flushes::default();
    flushed.add(flushed_before, flushed_after);
    for (what, s) in [("storm sign-ins", &logins), ("storm newToken", &refreshes)] {
        if let Some(e) = &s.first_error {
            eprintln!("{what}: {} errors, the first: {e}", s.errors);
        }
    }
    let login_rate = logins.latencies.len() as f64 / seconds;
    let row = Row {
        name: format!(
            "storm: newToken during {} sign-ins",
            clients.len() - STORM_REFRESHERS
        ),
        clients: STORM_REFRESHERS,
        seconds,
        sample: refreshes,
        cpu: None,
        peak_rss: server.rss().map(|r| r.peak),
        // The sign-ins' writes and the refreshes' together.
        flushed,
        slices: Vec::new(),
    };
    println!(
        "  storm: {login_rate:.1} sign-ins/s, newToken {:.1}/s",
        row.throughput()
    );
    Ok((row, login_rate))
}

/// `GET /healthz` (half the clients) and `newToken` (the other half) while `keyhold backup`
/// writes a backup of the whole store through the running server, beside the same load
/// for `duration` without one. The rows during the backup last as long as it does.
async fn measure_backup(
    server: &Server,
    binary: &Path,
    clients: &[Client],
    tokens: Vec<String>,
    duration: Duration,
    file: &Path,
) -> anyhow::Result<Vec<Row>> {
    let config_file = server
        .config_file
        .as_ref()
        .context("the backup scenario needs a server this benchmark started")?;
    if clients.len() < 2 {
        bail!("the backup scenario needs two clients or more");
    }
    let (health_clients, refresh_clients) = clients.split_at(clients.len() / 2);
    let mut refresh_plans: Vec<Plan> = tokens.into_iter().map(Plan::Refresh).collect();
    let mut rows = Vec::new();
    for during in [false, true] {
        let done = Arc::new(AtomicBool::new(false));
        server.reset_peak();
        let started = Instant::now();
        let backup = async {
            let result = if during {
                tokio::process::Command::new(binary)
                    .arg("backup")
                    .arg("--config")
                    .arg(config_file)
                    .arg(file)
                    .output()
                    .await
                    .map_err(anyhow::Error::from)
                    .and_then(|out| {
                        if out.status.success() {
                            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
                        } else {
                            bail!("keyhold backup: {}", String::from_utf8_lossy(&out.stderr))
                        }
                    })
            } else {
                tokio::time::sleep(duration).await;
                Ok(String::new())
            };
            done.store(true, Ordering::Relaxed);
            result.map(|said| (said, started.elapsed()))
        };
        let health_plans = health_clients.iter().map(|_| Plan::Health).collect();
        let (backup, health, refresh) = tokio::join!(
            backup,
            load_until(health_clients, health_plans, done.clone()),
            load_until(
                refresh_clients,
                std::mem::take(&mut refresh_plans),
                done.clone()
            ),
        );
        let (said, took) = backup?;
        let (_, _, health) = health?;
        let (plans, _, refresh) = refresh?;
        refresh_plans = plans;
        let when = if during {
            let bytes = std::fs::metadata(file).map_or(0, |m| m.len());
            println!(
                "  {said}: {:.2} s, {:.1} MiB",
                took.as_secs_f64(),
                bytes as f64 / 1048576.0
            );
            "during a backup"
        } else {
            "no backup"
        };
        for (what, n, sample) in [
            ("healthz", health_clients.len(), health),
            ("newToken", refresh_clients.len(), refresh),
        ] {
            let row = Row {
                name: format!("{what}, {when}"),
                clients: n,
                seconds: took.as_secs_f64(),
                sample,
                cpu: None,
                peak_rss: server.rss().map(|r| r.peak),
                flushed: Flushes::default(),
                slices: Vec::new(),
            };
            row.print();
            rows.push(row);
        }
    }
    Ok(rows)
}

struct Report<'a> {
    rows: &'a [Row],
    capacity: f64,
    cores: usize,
    idle_rss: Option<u64>,
    ready_after: Option<Duration>,
    ready_after_crash: Option<Duration>,
    store_bytes: u64,
    users: usize,
    storm_logins: Option<f64>,
}

fn print_report(report: &Report<'_>) {
    let floor = report
        .rows
        .iter()
        .find(|r| r.name == "floor")
        .and_then(Row::cpu_per_request_us);
    let mib = |b: u64| format!("{:.1}", b as f64 / 1048576.0);
    println!();
    println!(
        "| scenario | clients | requests/s | p50 ms | p99 ms | max ms | errors | server CPU µs/request | × floor | peak RSS MiB | writes per fsync |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for row in report.rows {
        let cpu = row.cpu_per_request_us();
        let ratio = cpu.zip(floor).map(|(c, f)| c / f);
        println!(
            "| {} | {} | {:.1} | {:.2} | {:.2} | {:.2} | {} | {} | {} | {} | {} |",
            row.name,
            row.clients,
            row.throughput(),
            row.percentile(0.50),
            row.percentile(0.99),
            row.percentile(1.0),
            row.sample.errors,
            cpu.map_or("-".into(), |c| format!("{c:.0}")),
            ratio.map_or("-".into(), |r| format!("{r:.2}")),
            row.peak_rss.map_or("-".into(), mib),
            row.writes_per_flush()
                .map_or("-".into(), |w| format!("{w:.1}")),
        );
    }
    println!();
    let find = |name: &str| report.rows.iter().find(|r| r.name == name);
    let mut targets: Vec<(String, Option<bool>)> = Vec::new();
    if let Some(login) = find("login") {
        let ratio = login.throughput() / report.capacity;
        targets.push((
            format!(
                "sign-ins {:.1}/s = {ratio:.3} × raw argon2id capacity {:.1}/s (≥ 0.9)",
                login.throughput(),
                report.capacity
            ),
            Some(ratio >= 0.9),
        ));
    }
    for (name, limit) in [("userProfile", 2.0), ("newToken", 3.0)] {
        if let Some(row) = find(name) {
            let ratio = row.cpu_per_request_us().zip(floor).map(|(c, f)| c / f);
            targets.push((
                format!(
                    "{name} CPU = {} × floor (≤ {limit})",
                    ratio.map_or("?".into(), |r| format!("{r:.2}"))
                ),
                ratio.map(|r| r <= limit),
            ));
        }
    }
    if let Some((h1, h2)) = find("newToken").zip(find(&format!("newToken{HTTP2}"))) {
        let (p99, p99_h2) = (h1.percentile(0.99), h2.percentile(0.99));
        targets.push((
            format!(
                "newToken p99 over HTTP/2 {p99_h2:.2} ms = {:.2} × over HTTP/1.1 {p99:.2} ms (≤ 2)",
                p99_h2 / p99
            ),
            Some(p99_h2 <= 2.0 * p99),
        ));
    }
    if let Some(storm) = report.rows.iter().find(|r| r.name.starts_with("storm")) {
        let p99 = storm.percentile(0.99);
        targets.push((
            format!(
                "newToken p99 during the storm {p99:.2} ms (≤ 25 ms), sign-ins meanwhile {:.1}/s",
                report.storm_logins.unwrap_or(0.0)
            ),
            Some(p99 <= 25.0),
        ));
    }
    if let Some(rss) = report.idle_rss {
        targets.push((
            format!(
                "idle RSS with {} users {} MiB (≤ 64)",
                report.users,
                mib(rss)
            ),
            Some(rss <= 64 * 1048576),
        ));
    }
    if let Some(ready) = report.ready_after {
        targets.push((
            format!(
                "start-up to ready after a clean stop {} ms (≤ 500)",
                ready.as_millis()
            ),
            Some(ready <= Duration::from_millis(500)),
        ));
    }
    if let Some(ready) = report.ready_after_crash {
        targets.push((
            format!(
                "start-up to ready after a crash, the whole log read again: {} ms",
                ready.as_millis()
            ),
            None,
        ));
    }
    targets.push((
        format!(
            "store on disk {} MiB, {:.0} bytes per user",
            mib(report.store_bytes),
            report.store_bytes as f64 / report.users.max(1) as f64
        ),
        None,
    ));
    println!("targets ({} cores):", report.cores);
    for (text, met) in targets {
        let mark = match met {
            Some(true) => "met   ",
            Some(false) => "MISSED",
            None => "      ",
        };
        println!("  {mark} {text}");
    }
}

/// Bytes in the files under `path`.
fn folder_size(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return std::fs::metadata(path).map_or(0, |m| m.len());
    };
    entries
        .flatten()
        .map(|e| {
            let p = e.path();
            if p.is_dir() {
                folder_size(&p)
            } else {
                e.metadata().map_or(0, |m| m.len())
            }
        })
        .sum()
}
