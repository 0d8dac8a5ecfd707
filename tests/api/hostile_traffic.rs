//! What an attacker sends to take the server down or to use it against others: documents
//! nested past any bound, and cross-site "simple" POSTs.

use serde_json::{Value, json};

use crate::helpers::{PASSWORD, TestApp};

/// Every recursive construct of a request, `n` levels deep: (name, query, variables as raw
/// JSON). Built as text: serialising a value this deep would overflow the test's own stack.
fn deep_documents(n: usize) -> Vec<(&'static str, String, String)> {
    let open_close = |open: &str, inner: &str, close: &str| {
        format!("{}{inner}{}", open.repeat(n), close.repeat(n))
    };
    let mut fragments = String::from("query { ...F0 } ");
    for i in 0..n {
        fragments.push_str(&format!(
            "fragment F{i} on RootQueryType {{ ...F{} }} ",
            i + 1
        ));
    }
    fragments.push_str(&format!("fragment F{n} on RootQueryType {{ __typename }}"));
    vec![
        (
            "a list value",
            format!("{{ __typename(a: {}) }}", open_close("[", "1", "]")),
            "{}".into(),
        ),
        (
            "an object value",
            format!("{{ __typename(a: {}) }}", open_close("{a: ", "1", "}")),
            "{}".into(),
        ),
        ("selection sets", open_close("{ a ", "", "}"), "{}".into()),
        (
            "a list type of a variable",
            format!(
                "query($v: {}) {{ __typename }}",
                open_close("[", "Int", "]")
            ),
            "{}".into(),
        ),
        (
            "a directive argument",
            format!(
                "{{ __typename @include(if: {}) }}",
                open_close("[", "true", "]")
            ),
            "{}".into(),
        ),
        ("a fragment chain", fragments, "{}".into()),
        (
            "nested JSON variables",
            "query($v: String) { __typename }".into(),
            format!("{{\"v\": {}}}", open_close("[", "1", "]")),
        ),
    ]
}

fn raw_request(query: &str, variables: &str) -> String {
    format!(
        "{{\"query\": {}, \"variables\": {variables}}}",
        serde_json::to_string(query).unwrap()
    )
}

/// The code of the first error, wherever the refusal came from (the body or the schema).
fn first_code(body: &Value) -> &str {
    let errors = if body.is_array() {
        &body[0]["errors"]
    } else {
        &body["errors"]
    };
    errors[0]["extensions"]["code"].as_str().unwrap_or("")
}

async fn still_serving(app: &TestApp) {
    let body = app.graphql("{ __typename }", Value::Null).await;
    assert_eq!(body["data"]["__typename"], "RootQueryType");
}

#[tokio::test]
async fn no_document_nested_2500_or_20000_deep_crashes_the_server() {
    // Limits large enough for every document to reach the guard rather than the body or
    // header limit.
    let app = TestApp::spawn_with(|c| {
        c.graphql.max_body_bytes = 8 << 20;
        c.server.max_header_bytes = 1 << 20;
    })
    .await;
    for n in [2_500, 20_000] {
        for (name, query, variables) in deep_documents(n) {
            let single = raw_request(&query, &variables);
            for (how, body) in [("POST", single.clone()), ("batch", format!("[{single}]"))] {
                let response = app
                    .post_raw_json(body)
                    .await
                    .unwrap_or_else(|e| panic!("{how} {name} at {n}: {e}"));
                let status = response.status().as_u16();
                let body: Value = response.json().await.unwrap();
                assert!(matches!(status, 200 | 400), "{how} {name} at {n}: {status}");
                assert_eq!(
                    first_code(&body),
                    "BAD_USER_INPUT",
                    "{how} {name} at {n}: {body}"
                );
                still_serving(&app).await;
            }
            // Brackets go into the URL as they are; only what a query string cannot hold
            // is escaped.
            let escape = |s: &str| {
                s.replace('%', "%25")
                    .replace(' ', "%20")
                    .replace('"', "%22")
                    .replace('#', "%23")
                    .replace('&', "%26")
                    .replace('+', "%2B")
            };
            let url = format!(
                "{}?query={}&variables={}",
                app.url("/graphql"),
                escape(&query),
                escape(&variables)
            );
            if url.len() > usize::from(u16::MAX) - 1 {
                // Past the longest URI that HTTP clients and servers here carry at all.
                continue;
            }
            let response = app
                .client
                .get(&url)
                .send()
                .await
                .unwrap_or_else(|e| panic!("GET {name} at {n}: {:?}", e.status()));
            let status = response.status().as_u16();
            let text = response.text().await.unwrap();
            let body: Value = serde_json::from_str(&text)
                .unwrap_or_else(|_| panic!("GET {name} at {n}: {status} {text:.200}"));
            assert!(matches!(status, 200 | 400), "GET {name} at {n}: {status}");
            assert_eq!(
                first_code(&body),
                "BAD_USER_INPUT",
                "GET {name} at {n}: {body}"
            );
            still_serving(&app).await;
        }
    }
    // Over GET each construct also at a depth whose URL fits the default header limit.
    for (name, query, variables) in deep_documents(200) {
        let response = app
            .client
            .get(app.url("/graphql"))
            .query(&[("query", query.as_str()), ("variables", variables.as_str())])
            .send()
            .await
            .unwrap();
        let body: Value = response.json().await.unwrap();
        assert_eq!(
            first_code(&body),
            "BAD_USER_INPUT",
            "GET {name} at 200: {body}"
        );
        still_serving(&app).await;
    }
    app.stop().await;
}

#[tokio::test]
async fn fragments_that_multiply_are_refused_before_they_are_walked() {
    let app = TestApp::spawn().await;
    // Each fragment spreads the next four times: 4^24 selections from 2 KB.
    let mut bomb = String::from("query { ...F0 } ");
    for i in 0..24 {
        let n = i + 1;
        bomb.push_str(&format!(
            "fragment F{i} on RootQueryType {{ ...F{n} ...F{n} ...F{n} ...F{n} }} "
        ));
    }
    bomb.push_str("fragment F24 on RootQueryType { __typename }");
    let body = app.graphql(&bomb, Value::Null).await;
    assert_eq!(first_code(&body), "BAD_USER_INPUT", "{body}");
    let cycle =
        "query { ...A } fragment A on RootQueryType { ...B } fragment B on RootQueryType { ...A }";
    let body = app.graphql(cycle, Value::Null).await;
    assert_eq!(first_code(&body), "BAD_USER_INPUT", "{body}");
    // What tools send still works: a fragment used several times.
    let body = app
        .graphql(
            "query { a: __schema { ...T } b: __schema { ...T } } fragment T on __Schema { queryType { name } }",
            Value::Null,
        )
        .await;
    assert_eq!(
        body["data"]["a"]["queryType"]["name"], "RootQueryType",
        "{body}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_cross_site_simple_post_runs_nothing() {
    let app = TestApp::spawn().await;
    let document = json!({ "email": "victim@example.com", "password": PASSWORD }).to_string();
    let query = "mutation($d: String!) { register(input: { data: $d }) { status } }";
    let as_json = json!({ "query": query, "variables": { "d": document } }).to_string();
    let form = format!(
        "query={}&variables={}",
        url_encode(query),
        url_encode(&json!({ "d": document }).to_string())
    );
    let multipart = format!(
        "--XyZ\r\nContent-Disposition: form-data; name=\"operations\"\r\n\r\n{as_json}\r\n--XyZ--\r\n"
    );
    for (content_type, body) in [
        ("text/plain", as_json.clone()),
        ("text/plain;charset=UTF-8", as_json.clone()),
        ("application/x-www-form-urlencoded", form),
        ("multipart/form-data; boundary=XyZ", multipart),
        ("", as_json.clone()),
    ] {
        let mut request = app.client.post(app.url("/api/graphql")).body(body);
        if !content_type.is_empty() {
            request = request.header("content-type", content_type);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), 415, "{content_type:?}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(
            first_code(&body),
            "BAD_USER_INPUT",
            "{content_type:?}: {body}"
        );
    }
    // The same document as JSON runs, and its mail is the first and only one.
    let response = app
        .client
        .post(app.url("/graphql"))
        .header("content-type", "application/json; charset=utf-8")
        .body(json!({ "query": query, "variables": { "d": json!({ "email": "real@example.com", "password": PASSWORD }).to_string() } }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    app.mailbox.wait_for("real@example.com").await;
    let store = app.app().store();
    assert!(
        store
            .user_by_email("victim@example.com")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .user_by_email("real@example.com")
            .await
            .unwrap()
            .is_some()
    );
    assert!(app.mailbox.to("victim@example.com").is_empty());
    app.stop().await;
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn registering_a_taken_address_again_and_again_mails_its_owner_a_few_notices() {
    let app = TestApp::spawn_with(|c| {
        c.limits.enabled = true;
        c.limits.register_per_ip_per_hour = 1000;
        c.limits.notices_per_address_per_hour = 3;
    })
    .await;
    app.verified_user("owner@example.com", PASSWORD).await;
    let notices = |app: &TestApp| {
        app.mailbox
            .to("owner@example.com")
            .iter()
            .filter(|m| m.subject().contains("Someone tried to register"))
            .count()
    };
    for _ in 0..20 {
        let body = app
            .register(json!({ "email": "owner@example.com", "password": PASSWORD }))
            .await;
        assert_eq!(
            body["data"]["register"]["status"], 201,
            "the same answer: {body}"
        );
    }
    app.mailbox
        .wait_for_nth("owner@example.com", "Someone tried to register", 3)
        .await;
    // Mail leaves in queue order: once a later message is delivered, no fourth notice waits.
    app.register(json!({ "email": "later@example.com", "password": PASSWORD }))
        .await;
    app.mailbox.wait_for("later@example.com").await;
    assert_eq!(notices(&app), 3);
    // An hour on, the owner hears of the next attempt again.
    app.clock.advance(std::time::Duration::from_secs(3600));
    app.register(json!({ "email": "owner@example.com", "password": PASSWORD }))
        .await;
    app.mailbox
        .wait_for_nth("owner@example.com", "Someone tried to register", 4)
        .await;
    app.stop().await;
}

#[tokio::test]
async fn a_full_mail_queue_drops_new_mail_and_the_request_still_succeeds() {
    // A relay that is down: every message stays queued, waiting for its retry.
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let app = TestApp::spawn_with(|c| {
        c.mail.max_queued = 3;
        c.mail.smtp.port = closed_port;
    })
    .await;
    for i in 0..5 {
        let body = app
            .register(json!({ "email": format!("q{i}@example.com"), "password": PASSWORD }))
            .await;
        assert_eq!(body["data"]["register"]["status"], 201, "{body}");
    }
    let store = app.app().store();
    assert_eq!(store.mail_queue_len().await.unwrap(), 3);
    for i in 0..5 {
        let email = format!("q{i}@example.com");
        assert!(
            store.user_by_email(&email).await.unwrap().is_some(),
            "{email}"
        );
    }
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("keyhold_mail_refused_total{reason=\"queue_full\"} 2"),
        "{metrics}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_flood_of_refusals_writes_one_audit_record_and_counts_every_one() {
    let app = TestApp::spawn_with(|c| {
        c.limits.enabled = true;
        c.limits.register_per_ip_per_hour = 2;
    })
    .await;
    for i in 0..12 {
        let body = app
            .register(json!({ "email": format!("f{i}@example.com"), "password": PASSWORD }))
            .await;
        let expected = if i < 2 { None } else { Some("RATE_LIMITED") };
        assert_eq!(
            body["errors"][0]["extensions"]["code"].as_str(),
            expected,
            "{i}: {body}"
        );
    }
    let refusals = || async {
        app.app()
            .store()
            .audit_since(0, None, 10_000)
            .await
            .unwrap()
            .into_iter()
            .filter(|r| r.event == "rate_limited")
            .count()
    };
    assert_eq!(refusals().await, 1, "one record for the key and window");
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("keyhold_rate_limited_total{limit=\"RegisterPerIp\"} 10"),
        "{metrics}"
    );
    // The next window has its own record.
    app.clock.advance(std::time::Duration::from_secs(3600));
    for i in 0..3 {
        app.register(json!({ "email": format!("g{i}@example.com"), "password": PASSWORD }))
            .await;
    }
    assert_eq!(refusals().await, 2);
    app.stop().await;
}
