//! Several Keyhold instances on one PostgreSQL database, each with its own folder, port
//! and certificate and the same `hmac.key`: every step of an account may land on another
//! instance, and what they share (sessions, rotation, limits, mail) holds across them.
//! Without PostgreSQL these tests say so and pass as skipped (CI requires them).

use std::collections::HashMap;
use std::time::Duration;

use keyhold::store::postgres::test_cluster;
use keyhold::testing::{Message, TestServer};
use serde_json::{Value, json};

const PASSWORD: &str = "correct horse battery staple";

/// `c` on the PostgreSQL store `postgres`, with the key file `key` (the default's when none).
fn on_postgres(
    c: &mut keyhold::Config,
    postgres: keyhold::config::PostgresConfig,
    key: Option<std::path::PathBuf>,
) {
    c.storage.backend = keyhold::config::StorageBackend::Postgres;
    c.storage.postgres = postgres;
    if key.is_some() {
        c.storage.hmac_key_file = key;
    }
}

/// A test server on the PostgreSQL store `postgres` with the key file `key`.
fn on_database(
    postgres: keyhold::config::PostgresConfig,
    key: Option<std::path::PathBuf>,
) -> keyhold::testing::Builder {
    TestServer::builder().config(move |c| on_postgres(c, postgres, key))
}

/// Three instances on a fresh database, or `None` without PostgreSQL.
async fn instances(change: impl Fn(&mut keyhold::Config) + Copy) -> Option<Instances> {
    let url = test_cluster::fresh_database().await?;
    let keys = tempfile::tempdir().unwrap();
    let key_file = keys.path().join("hmac.key");
    let mut servers = Vec::new();
    for _ in 0..3 {
        let server = on_database(test_cluster::config_for(&url), Some(key_file.clone()))
            .config(change)
            .start()
            .await
            .unwrap();
        servers.push(server);
    }
    Some(Instances {
        servers,
        _keys: keys,
    })
}

struct Instances {
    servers: Vec<TestServer>,
    _keys: tempfile::TempDir,
}

impl Instances {
    /// Instance `n` (round robin).
    fn at(&self, n: usize) -> &TestServer {
        &self.servers[n % self.servers.len()]
    }

    async fn call(&self, n: usize, token: Option<&str>, query: &str, variables: Value) -> Value {
        self.at(n).graphql(token, query, variables).await.unwrap()
    }

    /// Every message any instance sent.
    fn mail(&self) -> Vec<Message> {
        self.servers
            .iter()
            .flat_map(|s| s.mailbox().all())
            .collect()
    }

    /// Registers `email` at one instance and verifies it at another with the mailed code,
    /// whichever instance's mail worker sent it.
    async fn verified_user(&self, email: &str) {
        let document = json!({ "email": email, "password": PASSWORD }).to_string();
        let registered = self
            .call(
                0,
                None,
                "mutation($d: String!) { register(input: { data: $d }) { status } }",
                json!({ "d": document }),
            )
            .await;
        assert!(registered["errors"].is_null(), "{registered}");
        let link = self
            .wait_for(email, "Confirm your e-mail", &mut Vec::new())
            .await;
        let verified = self
            .call(
                1,
                None,
                "mutation($c: String!) { verifyEmail(code: $c) { verified } }",
                json!({ "c": link.link_code().unwrap() }),
            )
            .await;
        assert_eq!(
            verified["data"]["verifyEmail"]["verified"], true,
            "{verified}"
        );
    }

    /// A sign-in with e-mailed 2FA asked for at instance `asked` and confirmed at
    /// `confirmed`: the access and refresh tokens. `known` are the messages seen before.
    async fn sign_in_with_2fa(
        &self,
        asked: usize,
        confirmed: usize,
        email: &str,
        known: &mut Vec<String>,
    ) -> (String, String) {
        let pending = self
            .call(asked, None, LOGIN, json!({ "e": email, "p": PASSWORD }))
            .await;
        let challenge = pending["data"]["login"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("{pending}"))
            .to_string();
        let code = self.wait_for(email, "security code", known).await;
        let body = self
            .call(
                confirmed,
                None,
                "mutation($c: String!, $s: String!, $e: EmailAddress!) { confirm2Fa(code: $c, sessionId: $s, email: $e) { token refreshToken } }",
                json!({ "c": code.six_digit_code().unwrap(), "s": challenge, "e": email }),
            )
            .await;
        let token = |name: &str| {
            body["data"]["confirm2Fa"][name]
                .as_str()
                .unwrap_or_else(|| panic!("{body}"))
                .to_string()
        };
        (token("token"), token("refreshToken"))
    }

    /// A message to `to` whose subject has `subject`, sent by any instance, and not one of
    /// `known` (each instance's mailbox keeps its own order, so "the newest" is not defined
    /// across them); it is added to `known`.
    async fn wait_for(&self, to: &str, subject: &str, known: &mut Vec<String>) -> Message {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let new = self
                .mail()
                .into_iter()
                .find(|m| m.to == to && m.subject.contains(subject) && !known.contains(&m.text));
            if let Some(message) = new {
                known.push(message.text.clone());
                return message;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no new mail {subject:?} to {to} within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

const LOGIN: &str = "mutation($e: EmailAddress!, $p: String!) { login(credentials: { email: $e, password: $p }) { token refreshToken sessionId } }";
const NEW_TOKEN: &str =
    "mutation($t: String!) { newToken(refreshToken: $t) { token refreshToken } }";

fn code_of(body: &Value) -> &str {
    body["errors"][0]["extensions"]["code"]
        .as_str()
        .unwrap_or("none")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_step_of_an_account_works_on_another_instance() {
    let Some(k) = instances(|_| {}).await else {
        return;
    };
    let email = "ada@example.com";
    // Registered at one instance, verified at another.
    k.verified_user(email).await;
    let mut known = Vec::new();

    // Two-factor sign-in turned on at one instance, asked for by another, confirmed at a third.
    let first = k
        .call(2, None, LOGIN, json!({ "e": email, "p": PASSWORD }))
        .await;
    let token = first["data"]["login"]["token"]
        .as_str()
        .unwrap()
        .to_string();
    let enabled = k
        .call(
            0,
            Some(&token),
            "mutation($p: String) { enable2Fa(password: $p) { status } }",
            json!({ "p": PASSWORD }),
        )
        .await;
    assert!(enabled["errors"].is_null(), "{enabled}");
    let (_, refresh) = k.sign_in_with_2fa(1, 2, email, &mut known).await;

    let rotated = k.call(0, None, NEW_TOKEN, json!({ "t": refresh })).await;
    let access = rotated["data"]["newToken"]["token"]
        .as_str()
        .unwrap_or_else(|| panic!("{rotated}"))
        .to_string();
    let next_refresh = rotated["data"]["newToken"]["refreshToken"]
        .as_str()
        .unwrap()
        .to_string();
    let profile = "{ userProfile { email } }";
    let seen = k.call(2, Some(&access), profile, Value::Null).await;
    assert_eq!(seen["data"]["userProfile"]["email"], email, "{seen}");
    let again = k.call(1, None, NEW_TOKEN, json!({ "t": refresh })).await;
    assert_ne!(
        code_of(&again),
        "none",
        "a token rotated on A fails on B: {again}"
    );
    // The old token came back: the session is ended everywhere, at the next request.
    let after_reuse = k.call(0, Some(&access), profile, Value::Null).await;
    assert_eq!(code_of(&after_reuse), "INVALID_TOKEN", "{after_reuse}");
    let dead = k
        .call(1, None, NEW_TOKEN, json!({ "t": next_refresh }))
        .await;
    assert_ne!(code_of(&dead), "none", "{dead}");

    // A new sign-in, signed out at one instance: refused at the others at once.
    let (access, refresh) = k.sign_in_with_2fa(0, 1, email, &mut known).await;
    let (access, refresh) = (access.as_str(), refresh.as_str());
    let out = k
        .call(
            2,
            Some(access),
            "mutation { logout { status } }",
            Value::Null,
        )
        .await;
    assert!(out["errors"].is_null(), "{out}");
    let refused = k.call(0, Some(access), profile, Value::Null).await;
    assert_eq!(code_of(&refused), "INVALID_TOKEN", "{refused}");
    let refused = k.call(1, None, NEW_TOKEN, json!({ "t": refresh })).await;
    assert_ne!(code_of(&refused), "none", "{refused}");

    // A forgotten password, reset at another instance, signs in at a third.
    let asked = k
        .call(
            2,
            None,
            "mutation($e: EmailAddress!) { forgotPassword(email: $e) { header } }",
            json!({ "e": email }),
        )
        .await;
    assert!(asked["errors"].is_null(), "{asked}");
    let reset = k.wait_for(email, "Reset your password", &mut known).await;
    let new_password = "another horse battery staple";
    let done = k
        .call(
            0,
            None,
            "mutation($c: String!, $p: String!) { confirmPasswordReset(passwordResetParams: { code: $c, newPassword: $p }) { reset } }",
            json!({ "c": reset.link_code().unwrap(), "p": new_password }),
        )
        .await;
    assert_eq!(
        done["data"]["confirmPasswordReset"]["reset"], true,
        "{done}"
    );
    let old = k
        .call(1, None, LOGIN, json!({ "e": email, "p": PASSWORD }))
        .await;
    assert_eq!(code_of(&old), "INVALID_CREDENTIALS", "{old}");
    let new = k
        .call(1, None, LOGIN, json!({ "e": email, "p": new_password }))
        .await;
    assert!(new["data"]["login"]["sessionId"].is_string(), "{new}");
}

/// One instance's sign-in for `email`, with 2FA off: the pair.
async fn signed_in(k: &Instances, n: usize, email: &str) -> (String, String) {
    let body = k
        .call(n, None, LOGIN, json!({ "e": email, "p": PASSWORD }))
        .await;
    (
        body["data"]["login"]["token"]
            .as_str()
            .unwrap_or_else(|| panic!("{body}"))
            .to_string(),
        body["data"]["login"]["refreshToken"]
            .as_str()
            .unwrap()
            .to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refresh_token_sent_to_three_instances_at_once_rotates_exactly_once() {
    let Some(k) = instances(|_| {}).await else {
        return;
    };
    let email = "ada@example.com";
    k.verified_user(email).await;
    for round in 0..20 {
        let (_, refresh) = signed_in(&k, round, email).await;
        let racers = (0..3).map(|n| {
            let refresh = refresh.clone();
            let k = &k;
            async move { k.call(n, None, NEW_TOKEN, json!({ "t": refresh })).await }
        });
        let answers = futures_util::future::join_all(racers).await;
        let won: Vec<&Value> = answers
            .iter()
            .filter(|a| a["data"]["newToken"]["refreshToken"].is_string())
            .collect();
        assert_eq!(
            won.len(),
            1,
            "round {round}: exactly one rotates: {answers:?}"
        );
        for lost in answers.iter().filter(|a| !a["errors"].is_null()) {
            assert!(
                matches!(code_of(lost), "INVALID_TOKEN" | "UNAUTHENTICATED"),
                "round {round}: {lost}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failed_sign_ins_spread_over_three_instances_lock_the_account_as_on_one() {
    let Some(k) = instances(|c| c.limits.enabled = true).await else {
        return;
    };
    let email = "ada@example.com";
    k.verified_user(email).await;
    let threshold = keyhold::config::LimitsConfig::default().login_failures_per_account as usize;
    for n in 0..threshold {
        let body = k
            .call(
                n,
                None,
                LOGIN,
                json!({ "e": email, "p": "wrong password!" }),
            )
            .await;
        assert_eq!(code_of(&body), "INVALID_CREDENTIALS", "attempt {n}: {body}");
    }
    for n in 0..3 {
        let body = k
            .call(n, None, LOGIN, json!({ "e": email, "p": PASSWORD }))
            .await;
        assert_eq!(
            code_of(&body),
            "RATE_LIMITED",
            "instance {n} after {threshold} failures spread over three: {body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_message_is_sent_once_whichever_instance_queued_it() {
    let Some(k) = instances(|_| {}).await else {
        return;
    };
    let addresses: Vec<String> = (0..12).map(|i| format!("user{i}@example.com")).collect();
    let registrations = addresses.iter().enumerate().map(|(i, email)| {
        let document = json!({ "email": email, "password": PASSWORD }).to_string();
        let k = &k;
        async move {
            k.call(
                i,
                None,
                "mutation($d: String!) { register(input: { data: $d }) { status } }",
                json!({ "d": document }),
            )
            .await
        }
    });
    for answer in futures_util::future::join_all(registrations).await {
        assert!(answer["errors"].is_null(), "{answer}");
    }
    for server in &k.servers {
        server.mail_delivered().await.unwrap();
    }
    let mut sent: HashMap<String, usize> = HashMap::new();
    for message in k.mail() {
        *sent.entry(message.to).or_default() += 1;
    }
    for email in &addresses {
        assert_eq!(sent.get(email), Some(&1), "{email}: {sent:?}");
    }
}

#[tokio::test]
async fn an_instance_with_another_key_file_is_refused_with_a_clear_message() {
    let Some(url) = test_cluster::fresh_database().await else {
        return;
    };
    let start =
        |key: std::path::PathBuf| on_database(test_cluster::config_for(&url), Some(key)).start();
    let keys = tempfile::tempdir().unwrap();
    let first = start(keys.path().join("first.key")).await.unwrap();
    let err = match start(keys.path().join("other.key")).await {
        Ok(_) => panic!("an instance with another hmac.key started"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains("other.key") && err.contains("same key file"),
        "{err}"
    );
    let second = start(keys.path().join("first.key")).await;
    assert!(second.is_ok(), "the same key starts");
    drop(first);
}

fn kid_of(token: &str) -> String {
    jsonwebtoken::decode_header(token).unwrap().kid.unwrap()
}

async fn jwks_kids(server: &TestServer) -> Vec<String> {
    let jwks: Value = server
        .client()
        .get(server.jwks_url())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_rotated_on_one_instance_is_served_by_all_before_any_signs_with_it() {
    let Some(k) = instances(|_| {}).await else {
        return;
    };
    let email = "ada@example.com";
    k.verified_user(email).await;
    let (token, _) = signed_in(&k, 1, email).await;
    let old_kid = kid_of(&token);
    for server in &k.servers {
        assert_eq!(jwks_kids(server).await, vec![old_kid.clone()]);
    }

    // `keyhold keys rotate`, through instance 0's admin socket.
    let answer = keyhold::admin::call(
        &k.at(0).app().config().admin_socket(),
        &json!({ "command": "rotate-keys" }),
    )
    .await
    .unwrap()
    .expect("the server answers");
    let new_kid = answer["kid"].as_str().unwrap().to_string();
    // Each instance's key refresher's pass, as it runs twice every tokens.jwks_refresh.
    for server in &k.servers {
        keyhold::jobs::refresh_keys_once(server.app().auth()).await;
        assert_eq!(
            jwks_kids(server).await,
            vec![new_kid.clone(), old_kid.clone()],
            "every instance publishes the new key"
        );
    }
    for n in 0..3 {
        let (token, _) = signed_in(&k, n, email).await;
        assert_eq!(
            kid_of(&token),
            old_kid,
            "instance {n}: not signing with it yet"
        );
    }
    let refresh = k.at(0).app().config().tokens.jwks_refresh;
    for server in &k.servers {
        server.advance_clock(refresh);
    }
    for n in 0..3 {
        let (token, _) = signed_in(&k, n, email).await;
        assert_eq!(kid_of(&token), new_kid, "instance {n}: the new key signs");
        for m in 0..3 {
            let body = k
                .call(m, Some(&token), "{ userProfile { email } }", Value::Null)
                .await;
            assert_eq!(body["data"]["userProfile"]["email"], email, "{body}");
        }
    }
}

/// A TCP relay to the database that the test can cut (every connection closed, new ones
/// refused, as when the database goes down) and restore.
struct Relay {
    addr: std::net::SocketAddr,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    connections: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Relay {
    async fn to(target: std::net::SocketAddr) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let relay = Relay {
            addr: listener.local_addr().unwrap(),
            up: Default::default(),
            connections: Default::default(),
        };
        relay.up.store(true, std::sync::atomic::Ordering::SeqCst);
        let (up, connections) = (relay.up.clone(), relay.connections.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !up.load(std::sync::atomic::Ordering::SeqCst) {
                    continue; // dropped: refused
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                connections.lock().unwrap().push(task.abort_handle());
            }
        });
        relay
    }

    fn cut(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        for connection in self.connections.lock().unwrap().drain(..) {
            connection.abort();
        }
    }

    fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

async fn get_status(server: &TestServer, path: &str) -> u16 {
    server
        .client()
        .get(format!("{}{path}", server.base_url()))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn while_the_database_is_down_readiness_fails_requests_fail_fast_and_both_recover() {
    let Some(url) = test_cluster::fresh_database().await else {
        return;
    };
    let mut parsed = url::Url::parse(&url).unwrap();
    let target = std::net::SocketAddr::new(
        parsed.host_str().unwrap().parse().unwrap(),
        parsed.port().unwrap(),
    );
    let relay = Relay::to(target).await;
    parsed.set_port(Some(relay.addr.port())).unwrap();
    let mut postgres = test_cluster::config_for(parsed.as_str());
    postgres.connect_timeout = Duration::from_secs(2);
    let server = on_database(postgres, None).start().await.unwrap();
    let email = "ada@example.com";
    server.create_verified_user(email, PASSWORD).await.unwrap();
    let pair = server.sign_in(email, PASSWORD).await.unwrap();
    let profile = "{ userProfile { email } }";
    assert_eq!(get_status(&server, "/readyz").await, 200);

    relay.cut();
    // A bound on waiting, not a measurement: a request that hung would never answer.
    let bound = Duration::from_secs(20);
    let answers = tokio::time::timeout(bound, async {
        let health = get_status(&server, "/healthz").await;
        let ready = get_status(&server, "/readyz").await;
        let body = server
            .graphql(Some(&pair.access_token), profile, Value::Null)
            .await
            .unwrap();
        (health, ready, body)
    })
    .await
    .expect("every request answers while the database is down");
    assert_eq!(answers.0, 200, "/healthz keeps answering");
    assert_eq!(answers.1, 503, "/readyz fails");
    assert_eq!(code_of(&answers.2), "INTERNAL", "{}", answers.2);

    relay.restore();
    let deadline = tokio::time::Instant::now() + bound;
    while get_status(&server, "/readyz").await != 200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz recovers by itself"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let body = server
        .graphql(Some(&pair.access_token), profile, Value::Null)
        .await
        .unwrap();
    assert_eq!(body["data"]["userProfile"]["email"], email, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn migrate_copies_a_populated_sled_store_into_postgres_and_back() {
    let Some(url) = test_cluster::fresh_database().await else {
        return;
    };
    // A sled install in use: an account with e-mailed 2FA and one without, both signed in.
    let sled = TestServer::start().await.unwrap();
    sled.create_verified_user("ada@example.com", PASSWORD)
        .await
        .unwrap();
    let ada = sled.sign_in("ada@example.com", PASSWORD).await.unwrap();
    sled.enable_2fa(&ada.access_token, PASSWORD).await.unwrap();
    let ada = sled
        .sign_in_with_2fa("ada@example.com", PASSWORD)
        .await
        .unwrap();
    sled.create_verified_user("bo@example.com", PASSWORD)
        .await
        .unwrap();
    let bo = sled.sign_in("bo@example.com", PASSWORD).await.unwrap();
    // bo has a passkey.
    let mut bo_key = webauthn_authenticator_rs::softpasskey::SoftPasskey::new(true);
    let passkey = add_passkey(&sled, &bo.access_token, &mut bo_key).await;
    sled.mail_delivered().await.unwrap();
    let sled_dir = sled.shutdown_keeping_storage().await.unwrap();

    let mut from = keyhold::testing::test_config();
    from.storage.path = sled_dir.path().join("data");
    let keys = tempfile::tempdir().unwrap();
    let pg_key = keys.path().join("hmac.key");
    let mut to = keyhold::testing::test_config();
    to.storage.path = keys.path().join("pg-data");
    on_postgres(
        &mut to,
        test_cluster::config_for(&url),
        Some(pg_key.clone()),
    );
    let source = keyhold::store::open(&from).await.unwrap();
    // A message still queued when the server stopped.
    let pending = keyhold::domain::records::MailQueueRecord {
        attempts: 2,
        next_attempt_at: 5,
        created_at: 1,
        sealed: "sealed:queued".into(),
    };
    source
        .enqueue(std::slice::from_ref(&pending))
        .await
        .unwrap();
    let target = keyhold::store::open(&to).await.unwrap();
    keyhold::migrate::same_key(&from, &*source, &to, &*target)
        .await
        .unwrap();
    let sessions = source.stats().await.unwrap().device_sessions as usize;
    assert!(sessions >= 2, "both accounts are signed in");
    let copied = keyhold::migrate::copy(&*source, &*target).await.unwrap();
    assert_eq!(
        (
            copied.users,
            copied.sessions,
            copied.signing_keys,
            copied.mail
        ),
        (2, sessions, 1, 1),
        "{copied:?}"
    );
    assert_eq!(
        target.stats().await.unwrap().device_sessions as usize,
        sessions
    );
    assert!(copied.audit > 0, "{copied:?}");
    assert_eq!(
        std::fs::read(&pg_key).unwrap(),
        std::fs::read(from.hmac_key_path()).unwrap(),
        "the target got the source's key"
    );
    let queued = target.queued_mail().await.unwrap();
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].record, pending);
    target.remove_mail(queued[0].id).await.unwrap();
    let again = keyhold::migrate::copy(&*source, &*target).await;
    assert!(again.is_err(), "a target that is not empty is refused");
    drop((source, target));

    // On PostgreSQL: the refresh tokens work, the passwords and 2FA sign in.
    let pg = on_database(test_cluster::config_for(&url), Some(pg_key.clone()))
        .start()
        .await
        .unwrap();
    let ada = pg.refresh(&ada.refresh_token).await.unwrap();
    let bo = pg.refresh(&bo.refresh_token).await.unwrap();
    pg.sign_in_with_2fa("ada@example.com", PASSWORD)
        .await
        .unwrap();
    pg.sign_in("bo@example.com", PASSWORD).await.unwrap();
    passkey_signs_in(&pg, &mut bo_key, &passkey, "bo@example.com").await;
    pg.shutdown().await.unwrap();

    // And back into a new sled store.
    let back_dir = tempfile::tempdir().unwrap();
    let mut back = keyhold::testing::test_config();
    back.storage.path = back_dir.path().join("data");
    back.storage.hmac_key_file = Some(back_dir.path().join("hmac.key"));
    let source = keyhold::store::open(&to).await.unwrap();
    let target = keyhold::store::open(&back).await.unwrap();
    keyhold::migrate::same_key(&to, &*source, &back, &*target)
        .await
        .unwrap();
    let sessions = source.stats().await.unwrap().device_sessions as usize;
    let copied = keyhold::migrate::copy(&*source, &*target).await.unwrap();
    assert_eq!((copied.users, copied.sessions), (2, sessions), "{copied:?}");
    drop(source);
    tokio::task::spawn_blocking(move || target.close().unwrap())
        .await
        .unwrap();
    let path = back.storage.path.clone();
    let key = back_dir.path().join("hmac.key");
    let sled = TestServer::builder()
        .config(move |c| {
            c.storage.path = path;
            c.storage.hmac_key_file = Some(key);
        })
        .start()
        .await
        .unwrap();
    sled.refresh(&ada.refresh_token).await.unwrap();
    sled.refresh(&bo.refresh_token).await.unwrap();
    sled.sign_in("bo@example.com", PASSWORD).await.unwrap();
    passkey_signs_in(&sled, &mut bo_key, &passkey, "bo@example.com").await;
    sled.shutdown().await.unwrap();
}

/// Adds a passkey on `key` to the account of `token`: its credential ID.
async fn add_passkey(
    server: &TestServer,
    token: &str,
    key: &mut webauthn_authenticator_rs::softpasskey::SoftPasskey,
) -> String {
    use crate::passkeys::{FINISH, START, answer, origin};
    let body = server
        .graphql(Some(token), START, json!({ "password": PASSWORD }))
        .await
        .unwrap();
    let started = &body["data"]["startPasskeyRegistration"];
    let options: Value = serde_json::from_str(started["options"].as_str().unwrap()).unwrap();
    let options = serde_json::from_value(json!({ "publicKey": options })).unwrap();
    let credential = answer(key, origin(), options);
    let body = server
        .graphql(
            Some(token),
            FINISH,
            json!({ "id": started["challengeId"], "credential": credential }),
        )
        .await
        .unwrap();
    body["data"]["finishPasskeyRegistration"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{body}"))
        .to_string()
}

/// Signs in to `email`'s account with `passkey` on `key`, by address.
async fn passkey_signs_in(
    server: &TestServer,
    key: &mut webauthn_authenticator_rs::softpasskey::SoftPasskey,
    passkey: &str,
    email: &str,
) {
    use crate::passkeys::{FINISH_LOGIN, START_LOGIN, assert_with};
    let body = server
        .graphql(None, START_LOGIN, json!({ "email": email }))
        .await
        .unwrap();
    let started = &body["data"]["startPasskeyLogin"];
    let options = serde_json::from_str(started["options"].as_str().unwrap()).unwrap();
    let credential = assert_with(key, "https://localhost:8443", options, passkey, None);
    let body = server
        .graphql(
            None,
            FINISH_LOGIN,
            json!({ "id": started["challengeId"], "credential": credential }),
        )
        .await
        .unwrap();
    assert_eq!(body["data"]["finishPasskeyLogin"]["status"], 200, "{body}");
}

#[tokio::test]
async fn sslmode_require_and_verify_full_connect_over_tls_and_verify_full_checks_the_server() {
    let Some(url) = test_cluster::fresh_database().await else {
        return;
    };
    let Some(certificate) = test_cluster::certificate() else {
        eprintln!("KEYHOLD_TEST_POSTGRES_URL names the server: its certificate is unknown here");
        return;
    };
    let limits = keyhold::config::LimitsConfig::default();
    let open = |sslmode, ca_file: Option<std::path::PathBuf>| {
        let mut config = test_cluster::config_for(&url);
        config.sslmode = sslmode;
        config.ca_file = ca_file;
        let limits = limits.clone();
        async move { keyhold::store::postgres::open(&config, &limits).await }
    };
    use keyhold::config::PostgresSslMode::{Disable, Require, VerifyFull};
    let plain = open(Disable, None).await.unwrap();
    assert!(!plain.uses_tls().await.unwrap());
    let encrypted = open(Require, None).await.unwrap();
    assert!(encrypted.uses_tls().await.unwrap());

    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, certificate).unwrap();
    let verified = open(VerifyFull, Some(ca)).await.unwrap();
    assert!(verified.uses_tls().await.unwrap());

    // The system's roots do not know the cluster's certificate: no connection.
    let err = open(VerifyFull, None).await.unwrap_err().to_string();
    assert!(
        err.contains("cannot reach PostgreSQL") && err.contains("TLS"),
        "{err}"
    );
    let other = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    let wrong = dir.path().join("other.pem");
    std::fs::write(&wrong, other.cert.pem()).unwrap();
    assert!(open(VerifyFull, Some(wrong)).await.is_err(), "another CA");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mail_claimed_by_an_instance_that_died_is_sent_by_another_when_the_lease_ends() {
    let Some(url) = test_cluster::fresh_database().await else {
        return;
    };
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("hmac.key");
    // An SMTP server that takes the connection and never answers: the instance sending
    // through it holds its claim until it dies.
    let blackhole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = blackhole.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = blackhole.accept().await {
            open.push(socket);
        }
    });
    let dying = on_database(test_cluster::config_for(&url), Some(key.clone()))
        .config(move |c| {
            c.mail.transport = keyhold::config::MailTransportKind::Smtp;
            c.mail.smtp.host = Some("127.0.0.1".into());
            c.mail.smtp.port = port;
            c.mail.smtp.security = keyhold::config::SmtpSecurity::None;
            c.mail.smtp.timeout = Duration::from_secs(3600);
        })
        .deliver_mail_as_configured()
        .start()
        .await
        .unwrap();
    let email = "ada@example.com";
    let document = json!({ "email": email, "password": PASSWORD }).to_string();
    let body = dying
        .graphql(
            None,
            "mutation($d: String!) { register(input: { data: $d }) { status } }",
            json!({ "d": document }),
        )
        .await
        .unwrap();
    assert!(body["errors"].is_null(), "{body}");
    // Its worker has claimed the message: leased past the instance's now.
    let store = dying.app().store().clone();
    let now = dying.clock().unix_seconds();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let queued = store.queued_mail().await.unwrap();
        assert_eq!(queued.len(), 1);
        if queued[0].record.next_attempt_at > now {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never claimed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(store);
    drop(dying); // gone, its claim held

    let other = on_database(test_cluster::config_for(&url), Some(key.clone()))
        .start()
        .await
        .unwrap();
    assert!(other.mailbox().to(email).is_empty());
    assert_eq!(other.app().store().mail_queue_len().await.unwrap(), 1);
    other.advance_clock(Duration::from_secs(61));
    let sent = other.mailbox().wait_for(email).await.unwrap();
    assert!(
        sent.subject.contains("Confirm your e-mail"),
        "{}",
        sent.subject
    );
    other.mail_delivered().await.unwrap();
    assert_eq!(other.mailbox().to(email).len(), 1, "sent once");
    held.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_row_held_locked_elsewhere_fails_the_request_after_the_timeout_instead_of_hanging() {
    let Some(url) = test_cluster::fresh_database().await else {
        return;
    };
    let mut postgres = test_cluster::config_for(&url);
    postgres.connect_timeout = Duration::from_secs(1);
    let server = on_database(postgres, None).start().await.unwrap();
    let email = "ada@example.com";
    server.create_verified_user(email, PASSWORD).await.unwrap();

    // Another client holds the account's row locked and never commits.
    let (mut other, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let stuck = other.transaction().await.unwrap();
    stuck
        .execute("SELECT 1 FROM users WHERE email = $1 FOR UPDATE", &[&email])
        .await
        .unwrap();

    // A bound on waiting, not a measurement: a request that hung would never answer.
    let body = tokio::time::timeout(
        Duration::from_secs(20),
        server.graphql(None, LOGIN, json!({ "e": email, "p": PASSWORD })),
    )
    .await
    .expect("the sign-in answers while the row is locked")
    .unwrap();
    assert_eq!(code_of(&body), "INTERNAL", "{body}");
    stuck.rollback().await.unwrap();
    let body = server
        .graphql(None, LOGIN, json!({ "e": email, "p": PASSWORD }))
        .await
        .unwrap();
    assert!(body["data"]["login"]["token"].is_string(), "{body}");
}
