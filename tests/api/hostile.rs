//! Hostile input: each bad request gets its stable error code, and nothing changes.

use serde_json::{Value, json};

use crate::helpers::{LOGIN, PASSWORD, TestApp};

const REGISTER: &str =
    "mutation($data: String!) { register(input: { data: $data }) { status userId } }";
const VERIFY: &str = "mutation($code: String!) { verifyEmail(code: $code) { verified } }";
const NEW_TOKEN: &str = "mutation($r: String!) { newToken(refreshToken: $r) { status } }";
const FORGOT: &str = "mutation($e: EmailAddress!) { forgotPassword(email: $e) { header } }";
const CONFIRM: &str = "mutation($c: String!, $id: String!, $e: EmailAddress!) { confirm2Fa(code: $c, sessionId: $id, email: $e) { status } }";
const PROFILE: &str = "{ userProfile { email } }";
const UPDATE: &str =
    "mutation($data: String!) { updateProfile(input: { data: $data }) { status } }";
const LOGOUT_DEVICE: &str =
    "mutation($d: String) { logout(deviceInfo: { deviceId: $d }) { status } }";

struct Case {
    name: String,
    query: &'static str,
    variables: Value,
    token: Option<String>,
    code: &'static str,
}

fn case(
    name: impl Into<String>,
    query: &'static str,
    variables: Value,
    code: &'static str,
) -> Case {
    Case {
        name: name.into(),
        query,
        variables,
        token: None,
        code,
    }
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[tokio::test]
async fn sixty_and_more_bad_inputs_each_get_their_code_and_change_nothing() {
    let app = TestApp::spawn().await;
    app.verified_user("ada@example.com", PASSWORD).await;
    let login = app
        .signed_in("ada@example.com", PASSWORD, Some("laptop"))
        .await;
    let token = login["token"].as_str().unwrap().to_string();
    app.verified_user("bob@example.com", PASSWORD).await;
    let bob = app
        .signed_in("bob@example.com", PASSWORD, Some("bobs-phone"))
        .await;

    let mut cases = Vec::new();
    // Malformed e-mail addresses, as the login scalar.
    for email in [
        "",
        "plain",
        "a@b",
        "a b@example.com",
        "ada@example.com\n",
        "<script>@x.com",
        "a@[127.0.0.1]",
        "ada@example..com",
        "@example.com",
        "ada@",
        "ada@@example.com",
        "ada@exam ple.com",
        "\u{0}@example.com",
        "ada@example.com; DROP TABLE users",
        "Ada <ada@example.com>",
    ] {
        cases.push(case(
            format!("login email {email:?}"),
            LOGIN,
            json!({ "email": email, "password": PASSWORD }),
            "BAD_USER_INPUT",
        ));
    }
    let long = format!("{}@example.com", "a".repeat(300));
    cases.push(case(
        "login email 300 characters",
        LOGIN,
        json!({ "email": long, "password": PASSWORD }),
        "BAD_USER_INPUT",
    ));
    cases.push(case(
        "forgotPassword bad address",
        FORGOT,
        json!({ "e": "not an address" }),
        "BAD_USER_INPUT",
    ));
    cases.push(case(
        "forgotPassword control character",
        FORGOT,
        json!({ "e": "a\u{7}@example.com" }),
        "BAD_USER_INPUT",
    ));
    // Registration documents.
    let nested = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    let nested_object = format!(
        "{{\"email\":\"n@example.com\",\"password\":\"{PASSWORD}\",\"city\":{}{}}}",
        "[".repeat(2000),
        "]".repeat(2000)
    );
    for (name, data) in [
        ("huge document", format!("{{\"email\":\"h@example.com\",\"password\":\"{PASSWORD}\",\"city\":\"{}\"}}", "x".repeat(20_000))),
        ("deeply nested array", nested),
        ("deeply nested value", nested_object),
        ("not an object", "\"just a string\"".to_string()),
        ("an array", "[{\"email\":\"a@example.com\"}]".to_string()),
        ("a number", "42".to_string()),
        ("null", "null".to_string()),
        ("empty", "".to_string()),
        ("truncated", "{\"email\":\"t@example.com\",\"pass".to_string()),
        ("unknown key", json!({ "email": "u@example.com", "password": PASSWORD, "role": "admin" }).to_string()),
        ("email of the wrong type", json!({ "email": ["a@example.com"], "password": PASSWORD }).to_string()),
        ("password null", json!({ "email": "p@example.com", "password": null }).to_string()),
        ("control character in a name", json!({ "email": "c@example.com", "password": PASSWORD, "firstName": "A\u{1b}[31m" }).to_string()),
        ("NUL in a name", json!({ "email": "z@example.com", "password": PASSWORD, "lastName": "x\u{0}y" }).to_string()),
        ("bad date", json!({ "email": "d@example.com", "password": PASSWORD, "dateOfBirth": "1815-13-45" }).to_string()),
        ("bad phone", json!({ "email": "f@example.com", "password": PASSWORD, "phoneNumber": "call me<script>" }).to_string()),
        ("bad username", json!({ "email": "g@example.com", "password": PASSWORD, "username": "../../etc/passwd" }).to_string()),
        ("duplicate key trick", "{\"email\":\"dup@example.com\",\"password\":1,\"password\":2}".to_string()),
    ] {
        cases.push(case(format!("register: {name}"), REGISTER, json!({ "data": data }), "BAD_USER_INPUT"));
    }
    cases.push(case("register: over-long password", REGISTER, json!({ "data": json!({ "email": "l@example.com", "password": "x".repeat(300) }).to_string() }), "WEAK_PASSWORD"));
    cases.push(case("register: password that is the address", REGISTER, json!({ "data": json!({ "email": "same@example.com", "password": "same@example.com" }).to_string() }), "WEAK_PASSWORD"));
    // Control characters and junk in string arguments.
    for code in [
        "\u{0}",
        "\u{7}\u{8}",
        "A".repeat(10_000).as_str(),
        "' OR 1=1 --",
        "../../../../etc/passwd",
        "%00",
        "\u{202e}evil",
    ] {
        cases.push(case(
            format!("verifyEmail {:.20?}", code),
            VERIFY,
            json!({ "code": code }),
            "INVALID_CODE",
        ));
        cases.push(case(
            format!("newToken {:.20?}", code),
            NEW_TOKEN,
            json!({ "r": code }),
            "INVALID_TOKEN",
        ));
    }
    cases.push(case(
        "confirm2Fa junk challenge",
        CONFIRM,
        json!({ "c": "123456", "id": "\u{0}", "e": "ada@example.com" }),
        "INVALID_CODE",
    ));
    cases.push(case(
        "confirm2Fa unknown challenge",
        CONFIRM,
        json!({ "c": "123456", "id": uuid::Uuid::new_v4().to_string(), "e": "ada@example.com" }),
        "INVALID_CODE",
    ));
    cases.push(case(
        "login with a 10,000-character password",
        LOGIN,
        json!({ "email": "ada@example.com", "password": "p".repeat(10_000) }),
        "INVALID_CREDENTIALS",
    ));
    cases.push(case(
        "login with a NUL in the password",
        LOGIN,
        json!({ "email": "ada@example.com", "password": format!("{PASSWORD}\u{0}") }),
        "INVALID_CREDENTIALS",
    ));
    cases.push(case("login with a control-character device id", LOGIN, json!({ "email": "ada@example.com", "password": PASSWORD, "device": { "deviceId": "a\u{1}b" } }), "BAD_USER_INPUT"));
    cases.push(case("login with a 1,000-character device id", LOGIN, json!({ "email": "ada@example.com", "password": PASSWORD, "device": { "deviceId": "d".repeat(1000) } }), "BAD_USER_INPUT"));
    // Wrong-typed variables.
    for (name, vars) in [
        (
            "email as a number",
            json!({ "email": 5, "password": PASSWORD }),
        ),
        (
            "password as a boolean",
            json!({ "email": "ada@example.com", "password": true }),
        ),
        (
            "password as an object",
            json!({ "email": "ada@example.com", "password": {} }),
        ),
        ("password missing", json!({ "email": "ada@example.com" })),
        (
            "device as a string",
            json!({ "email": "ada@example.com", "password": PASSWORD, "device": "laptop" }),
        ),
    ] {
        cases.push(case(
            format!("login: {name}"),
            LOGIN,
            vars,
            "BAD_USER_INPUT",
        ));
    }
    cases.push(case(
        "send2Fa with an unknown reason",
        "mutation($r: TwoFactorReason) { send2Fa(reason: $r) { status } }",
        json!({ "r": "NOPE" }),
        "BAD_USER_INPUT",
    ));
    cases.push(case(
        "enable2Fa with an unknown method",
        "mutation($m: TwoFactorMethod) { enable2Fa(password: \"x\", method: $m) { status } }",
        json!({ "m": "SMS" }),
        "BAD_USER_INPUT",
    ));
    cases.push(case(
        "logout allDevices as a string",
        "mutation($a: Boolean) { logout(allDevices: $a) { status } }",
        json!({ "a": "yes" }),
        "BAD_USER_INPUT",
    ));
    // Tokens.
    let parts: Vec<&str> = token.split('.').collect();
    let claims: Value = {
        use base64::Engine;
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(parts[1])
                .unwrap(),
        )
        .unwrap()
    };
    let none = format!("{}.{}.", b64(br#"{"alg":"none","typ":"JWT"}"#), parts[1]);
    let hs256 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(b"secret"),
    )
    .unwrap();
    let mut elevated = claims.clone();
    elevated["sub"] = bob["userId"].clone();
    let resigned_claims = format!(
        "{}.{}.{}",
        parts[0],
        b64(elevated.to_string().as_bytes()),
        parts[2]
    );
    let other_dir = tempfile::tempdir().unwrap();
    let other_store = keyhold::store::sled::Store::open(&other_dir.path().join("db")).unwrap();
    let foreign = keyhold::auth::Tokens::load_or_create(
        &other_store,
        &keyhold::config::TokensConfig {
            issuer: "someone-else".into(),
            ..Default::default()
        },
        &keyhold::auth::Secrets::load_or_create(&other_dir.path().join("keys")).unwrap(),
        app.clock.unix_seconds(),
    )
    .await
    .unwrap()
    .issue(
        uuid::Uuid::parse_str(login["userId"].as_str().unwrap()).unwrap(),
        uuid::Uuid::parse_str(login["sessionId"].as_str().unwrap()).unwrap(),
        app.clock.unix_seconds(),
    )
    .unwrap()
    .0;
    for (name, bad) in [
        (
            "forged",
            "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl".to_string(),
        ),
        ("truncated", token[..token.len() - 10].to_string()),
        ("two parts", format!("{}.{}", parts[0], parts[1])),
        ("alg none", none),
        ("re-signed HS256", hs256),
        ("claims swapped under the old signature", resigned_claims),
        ("another issuer's key", foreign),
        ("empty", String::new()),
        ("garbage", "!#$%&*()".repeat(20)),
    ] {
        cases.push(Case {
            name: format!("token: {name}"),
            query: PROFILE,
            variables: Value::Null,
            token: Some(bad),
            code: "INVALID_TOKEN",
        });
    }
    // Someone else's device; bad profile documents.
    cases.push(Case {
        name: "logout another user's device".into(),
        query: LOGOUT_DEVICE,
        variables: json!({ "d": "bobs-phone" }),
        token: Some(token.clone()),
        code: "BAD_USER_INPUT",
    });
    for (name, data) in [
        (
            "profile: control characters",
            json!({ "city": "x\u{0}" }).to_string(),
        ),
        (
            "profile: unknown key",
            json!({ "isAdmin": true }).to_string(),
        ),
        (
            "profile: password",
            json!({ "password": "new one" }).to_string(),
        ),
        ("profile: not JSON", "{{{".to_string()),
    ] {
        cases.push(Case {
            name: name.into(),
            query: UPDATE,
            variables: json!({ "data": data }),
            token: Some(token.clone()),
            code: "BAD_USER_INPUT",
        });
    }

    // A new address, even another user's, needs the password first.
    cases.push(Case {
        name: "profile: another user's address without the password".into(),
        query: UPDATE,
        variables: json!({ "data": json!({ "email": "bob@example.com" }).to_string() }),
        token: Some(token.clone()),
        code: "INVALID_CREDENTIALS",
    });

    assert!(cases.len() >= 60, "{} cases", cases.len());
    for c in &cases {
        let mut request = app
            .client
            .post(app.url("/graphql"))
            .json(&json!({ "query": c.query, "variables": c.variables }));
        if let Some(t) = &c.token {
            request = request.bearer_auth(t);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let code = body["errors"][0]["extensions"]["code"].as_str();
        assert_eq!(code, Some(c.code), "{}: HTTP {status} {body}", c.name);
        assert!(
            body["data"].is_null()
                || body["data"]
                    .as_object()
                    .is_some_and(|d| d.values().all(Value::is_null)),
            "{}: {body}",
            c.name
        );
    }

    // Raw bodies.
    for (name, body, status) in [
        (
            "invalid UTF-8",
            b"{\"query\": \"{ __typename \xff\xfe }\"}".to_vec(),
            400,
        ),
        ("a 100 KiB body", vec![b' '; 100 * 1024], 413),
        (
            "a batch flood",
            serde_json::to_vec(&vec![json!({ "query": "{ __typename }" }); 1000]).unwrap(),
            400,
        ),
    ] {
        let response = app.post_raw_json(body).await.unwrap();
        assert_eq!(response.status().as_u16(), status, "{name}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(
            body["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
            "{name}"
        );
    }
    let aliases: String = (0..400)
        .map(|i| format!("a{i}: userProfile {{ id }} "))
        .collect();
    let body = app.graphql(&format!("{{ {aliases} }}"), Value::Null).await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
        "an alias flood"
    );

    // Nothing changed.
    let store = app.app().store();
    for email in [
        "h@example.com",
        "u@example.com",
        "l@example.com",
        "same@example.com",
        "c@example.com",
        "dup@example.com",
    ] {
        assert!(
            store.user_by_email(email).await.unwrap().is_none(),
            "{email} was created"
        );
    }
    let ada = store
        .user_by_email("ada@example.com")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ada.profile.city, None);
    assert_eq!(store.sessions_of(ada.id).await.unwrap().len(), 1);
    let bob_id = uuid::Uuid::parse_str(bob["userId"].as_str().unwrap()).unwrap();
    assert_eq!(
        store.sessions_of(bob_id).await.unwrap().len(),
        1,
        "bob's device survived"
    );
    let body = app.graphql_as(&token, PROFILE, Value::Null).await;
    assert_eq!(
        body["data"]["userProfile"]["email"], "ada@example.com",
        "{body}"
    );
    app.signed_in("ada@example.com", PASSWORD, Some("laptop"))
        .await;
    app.stop().await;
}
