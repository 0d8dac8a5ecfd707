//! The GraphiQL page in a real headless Chromium, driven over the DevTools protocol, with no
//! network but loopback: the page loads, the docs explorer reads the schema, and a query
//! typed into the editor runs.
//!
//! Chromium is `chromium` on the PATH, or `KEYHOLD_TEST_CHROMIUM`. Without it the test says
//! so and passes, unless `KEYHOLD_TEST_REQUIRE_BROWSER` is set, as `.ci/run` sets it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::TestApp;

fn chromium() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("KEYHOLD_TEST_CHROMIUM") {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| ["chromium", "chromium-browser"].map(|name| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

/// A DevTools protocol connection to one page: commands, and every event seen so far.
struct Page {
    outgoing: mpsc::UnboundedSender<Message>,
    pending: Pending,
    events: Arc<Mutex<Vec<Value>>>,
    session: String,
    next_id: std::sync::atomic::AtomicU64,
    _browser: tokio::process::Child,
    _profile: tempfile::TempDir,
}

impl Page {
    /// Starts a headless Chromium that can reach only loopback, and opens one blank page.
    async fn open(chromium: &std::path::Path) -> Page {
        let profile = tempfile::tempdir().unwrap();
        let mut browser = tokio::process::Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-default-apps",
                "--disable-extensions",
                "--metrics-recording-only",
                // Keyhold's certificate is its own, made for this test.
                "--ignore-certificate-errors",
                // No name resolves but localhost: nothing can reach another host.
                "--host-resolver-rules=MAP localhost 127.0.0.1, MAP * ~NOTFOUND",
                "--remote-debugging-port=0",
                "about:blank",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("chromium starts");
        let mut stderr = BufReader::new(browser.stderr.take().unwrap()).lines();
        let url = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = stderr.next_line().await.unwrap() {
                if let Some(at) = line.find("ws://") {
                    return line[at..].trim().to_string();
                }
            }
            panic!("chromium exited before it listened");
        })
        .await
        .expect("chromium listens within 60 s");
        // Chromium's later output is drained so that it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = stderr.next_line().await {} });

        let (socket, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .unwrap();
        let (mut sink, mut stream) = socket.split();
        let (outgoing, mut queue) = mpsc::unbounded_channel::<Message>();
        tokio::spawn(async move {
            while let Some(message) = queue.recv().await {
                if sink.send(message).await.is_err() {
                    break;
                }
            }
        });
        let pending: Pending = Arc::default();
        let events: Arc<Mutex<Vec<Value>>> = Arc::default();
        let (replies, seen) = (pending.clone(), events.clone());
        tokio::spawn(async move {
            while let Some(Ok(message)) = stream.next().await {
                let Message::Text(text) = message else {
                    continue;
                };
                let value: Value = serde_json::from_str(&text).unwrap();
                match value["id"].as_u64() {
                    Some(id) => {
                        if let Some(reply) = replies.lock().unwrap().remove(&id) {
                            let _ = reply.send(value);
                        }
                    }
                    None => seen.lock().unwrap().push(value),
                }
            }
        });
        let mut page = Page {
            outgoing,
            pending,
            events,
            session: String::new(),
            next_id: 1.into(),
            _browser: browser,
            _profile: profile,
        };
        let target = page
            .send("Target.createTarget", json!({ "url": "about:blank" }))
            .await;
        let attached = page
            .send(
                "Target.attachToTarget",
                json!({ "targetId": target["targetId"], "flatten": true }),
            )
            .await;
        page.session = attached["sessionId"].as_str().unwrap().to_string();
        for domain in [
            "Network.enable",
            "Page.enable",
            "Runtime.enable",
            "Log.enable",
        ] {
            page.send(domain, json!({})).await;
        }
        // A policy violation would not stop the page, only part of it: count each one.
        page.send(
            "Page.addScriptToEvaluateOnNewDocument",
            json!({ "source": "window.__violations = []; document.addEventListener('securitypolicyviolation', e => window.__violations.push(e.violatedDirective + ' ' + e.blockedURI));" }),
        )
        .await;
        page
    }

    /// Sends one command (to the page once attached) and returns its result.
    async fn send(&self, method: &str, params: Value) -> Value {
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut message = json!({ "id": id, "method": method, "params": params });
        if !self.session.is_empty() {
            message["sessionId"] = json!(self.session);
        }
        let (reply, answer) = oneshot::channel();
        self.pending.lock().unwrap().insert(id, reply);
        self.outgoing
            .send(Message::Text(message.to_string().into()))
            .unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(30), answer)
            .await
            .unwrap_or_else(|_| panic!("{method} answered within 30 s"))
            .unwrap();
        assert!(answer["error"].is_null(), "{method}: {answer}");
        answer["result"].clone()
    }

    /// The value of a JavaScript expression in the page.
    async fn eval(&self, expression: &str) -> Value {
        let result = self
            .send(
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
            )
            .await;
        assert!(
            result["exceptionDetails"].is_null(),
            "{expression}: {result}"
        );
        result["result"]["value"].clone()
    }

    /// Waits until `expression` is true in the page (polling: the page renders on its own
    /// time, not the test's clock).
    async fn until(&self, what: &str, expression: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if self.eval(expression).await == json!(true) {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                let body = self
                    .eval("document.body ? document.body.innerText.slice(0, 2000) : ''")
                    .await;
                panic!("{what}: not within 30 s; the page shows {body}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn events(&self, method: &str) -> Vec<Value> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e["method"] == method)
            .map(|e| e["params"].clone())
            .collect()
    }
}

#[tokio::test]
async fn graphiql_works_in_a_real_browser_with_no_network_but_keyhold() {
    let Some(chromium) = chromium() else {
        assert!(
            std::env::var_os("KEYHOLD_TEST_REQUIRE_BROWSER").is_none(),
            "KEYHOLD_TEST_REQUIRE_BROWSER is set, and there is no chromium on the PATH"
        );
        eprintln!(
            "SKIPPED graphiql_works_in_a_real_browser_with_no_network_but_keyhold: no chromium on the PATH (apt-get install chromium)"
        );
        return;
    };
    let app = TestApp::spawn().await;
    let page = Page::open(&chromium).await;
    let url = app.url("/graphql");
    page.send("Page.navigate", json!({ "url": url })).await;

    page.until(
        "the page loads GraphiQL",
        "document.querySelector('.graphiql-container .graphiql-query-editor .CodeMirror') !== null",
    )
    .await;

    // The docs explorer reads the schema by introspection, and lists the mutations.
    page.eval(
        "document.querySelector('button[aria-label=\"Show Documentation Explorer\"]').click()",
    )
    .await;
    page.until(
        "the docs explorer names the root types",
        "[...document.querySelectorAll('.graphiql-doc-explorer a')].some(a => a.textContent === 'RootMutationType')",
    )
    .await;
    page.eval("[...document.querySelectorAll('.graphiql-doc-explorer a')].find(a => a.textContent === 'RootMutationType').click()")
        .await;
    page.until(
        "the docs explorer lists RootMutationType's fields",
        "document.querySelector('.graphiql-doc-explorer-title')?.textContent === 'RootMutationType' && document.querySelectorAll('.graphiql-doc-explorer-field-name').length > 0",
    )
    .await;
    let fields = page
        .eval("[...document.querySelectorAll('.graphiql-doc-explorer-field-name')].map(f => f.textContent)")
        .await;
    let fields: Vec<&str> = fields
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    let served = app
        .graphql(
            "{ __type(name: \"RootMutationType\") { fields { name } } }",
            Value::Null,
        )
        .await;
    let mut expected: Vec<&str> = served["data"]["__type"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    for name in ["register", "login", "newToken", "logout", "updateProfile"] {
        assert!(fields.contains(&name), "{name} in {fields:?}");
    }
    let mut listed = fields.clone();
    listed.sort_unstable();
    expected.sort_unstable();
    assert_eq!(listed, expected, "every mutation is listed");

    // A query typed into the editor, and run.
    page.eval("(() => { const cm = document.querySelector('.graphiql-query-editor .CodeMirror').CodeMirror; cm.setValue(''); cm.focus(); })()")
        .await;
    page.send("Input.insertText", json!({ "text": "{ __typename }" }))
        .await;
    assert_eq!(
        page.eval(
            "document.querySelector('.graphiql-query-editor .CodeMirror').CodeMirror.getValue()"
        )
        .await,
        "{ __typename }",
        "typed into the editor"
    );
    page.eval("document.querySelector('.graphiql-execute-button').click()")
        .await;
    page.until(
        "the result shows RootQueryType",
        "(document.querySelector('.result-window .CodeMirror')?.CodeMirror.getValue() ?? '').includes('\"__typename\": \"RootQueryType\"')",
    )
    .await;

    // Nothing was refused by the policy, nothing threw, and nothing left 127.0.0.1.
    assert_eq!(page.eval("window.__violations").await, json!([]));
    let thrown = page.events("Runtime.exceptionThrown");
    assert!(thrown.is_empty(), "{thrown:#?}");
    let origin = app.url("");
    let requests: Vec<String> = page
        .events("Network.requestWillBeSent")
        .iter()
        .map(|e| e["request"]["url"].as_str().unwrap().to_string())
        .collect();
    assert!(
        requests.iter().any(|u| u.ends_with("/graphiql.min.js")),
        "{requests:#?}"
    );
    assert!(
        requests.iter().filter(|u| u.ends_with("/graphql")).count() >= 2,
        "the page, then its queries: {requests:#?}"
    );
    for request in &requests {
        assert!(
            request.starts_with(&format!("{origin}/")) || request.starts_with("data:"),
            "a request left Keyhold: {request}"
        );
    }
    let failed = page.events("Network.loadingFailed");
    assert!(failed.is_empty(), "{failed:#?}");
    app.stop().await;
}

/// A port free at the moment: the passkey page's origin names its port, and the relying
/// party's origins are configured before the server binds.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn a_passkey_is_registered_and_signs_in_usernameless_in_a_real_browser() {
    let Some(chromium) = chromium() else {
        assert!(
            std::env::var_os("KEYHOLD_TEST_REQUIRE_BROWSER").is_none(),
            "KEYHOLD_TEST_REQUIRE_BROWSER is set, and there is no chromium on the PATH"
        );
        eprintln!(
            "SKIPPED a_passkey_is_registered_and_signs_in_usernameless_in_a_real_browser: no chromium on the PATH (apt-get install chromium)"
        );
        return;
    };
    let port = free_port();
    let app = TestApp::spawn_with(|c| {
        c.server.listen = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        c.webauthn.origins = vec![format!("https://localhost:{port}")];
    })
    .await;
    let email = "pat@example.com";
    app.verified_user(email, crate::helpers::PASSWORD).await;

    let page = Page::open(&chromium).await;
    // The DevTools protocol's virtual authenticator: a platform authenticator (CTAP2,
    // internal) that keeps passkeys (resident keys) and verifies its user.
    page.send("WebAuthn.enable", json!({})).await;
    let authenticator = page
        .send(
            "WebAuthn.addVirtualAuthenticator",
            json!({ "options": {
                "protocol": "ctap2",
                "transport": "internal",
                "hasResidentKey": true,
                "hasUserVerification": true,
                "isUserVerified": true,
                "automaticPresenceSimulation": true
            } }),
        )
        .await;
    page.send(
        "Page.navigate",
        json!({ "url": app.url("/examples/passkey") }),
    )
    .await;
    page.until(
        "the example page and its script load",
        "document.readyState === 'complete' && typeof signInWithPasskey === 'function'",
    )
    .await;

    let added = page
        .eval(&format!(
            "addPasskey('{email}', '{}', 'Chromium').then(p => p.name, e => 'failed: ' + e.message)",
            crate::helpers::PASSWORD
        ))
        .await;
    assert_eq!(added, "Chromium");
    let kept = page
        .send(
            "WebAuthn.getCredentials",
            json!({ "authenticatorId": authenticator["authenticatorId"] }),
        )
        .await;
    assert_eq!(kept["credentials"].as_array().unwrap().len(), 1, "{kept}");
    assert_eq!(kept["credentials"][0]["isResidentCredential"], true);

    let signed_in = page
        .eval("signInWithPasskey().then(s => s.userProfile.email, e => 'failed: ' + e.message)")
        .await;
    assert_eq!(signed_in, email);

    // The account shows the passkey, used once.
    let login = app.signed_in(email, crate::helpers::PASSWORD, None).await;
    let body = app
        .graphql_as(
            login["token"].as_str().unwrap(),
            "{ passkeys { name lastUsedAt } }",
            Value::Null,
        )
        .await;
    let passkeys = body["data"]["passkeys"].as_array().unwrap();
    assert_eq!(passkeys.len(), 1, "{body}");
    assert_eq!(passkeys[0]["name"], "Chromium");
    assert!(passkeys[0]["lastUsedAt"].is_string(), "{body}");
    assert_eq!(page.eval("window.__violations").await, json!([]));
    let thrown = page.events("Runtime.exceptionThrown");
    assert!(thrown.is_empty(), "{thrown:#?}");
    app.stop().await;
}
