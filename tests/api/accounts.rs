use std::time::Duration;

use keyhold::store::UserStore;
use keyhold::store::sled::Store;
use serde_json::{Value, json};

use crate::helpers::{PASSWORD, TestApp, error_code};

#[tokio::test]
async fn register_answers_201_and_mails_a_link_and_a_long_code() {
    let app = TestApp::spawn().await;
    let body = app
        .register(json!({ "email": "Ada@Example.com", "password": PASSWORD, "firstName": "Ada" }))
        .await;
    let result = &body["data"]["register"];
    assert_eq!(result["status"], 201, "{body}");
    // No id: a new address and a taken one get the same answer.
    assert!(result["userId"].is_null(), "{body}");
    assert!(result["accountId"].is_null(), "{body}");
    assert!(
        result["verificationCode"].is_null(),
        "codes are not exposed by default"
    );

    let mail = app.mailbox.wait_for("ada@example.com").await;
    assert_eq!(mail.subject(), "Confirm your e-mail address");
    let code = mail.link_code();
    // 16 random bytes in base64url: 22 characters, 128 bits.
    assert_eq!(code.len(), 22, "{code}");
    assert!(
        mail.text()
            .contains(&format!("https://localhost:8443/verify-email?code={code}"))
    );
    assert!(
        mail.text().lines().any(|l| l.trim() == code),
        "the code alone, as text"
    );
    assert!(mail.html().contains(&code));
    app.stop().await;
}

#[tokio::test]
async fn a_bad_registration_document_is_refused_naming_the_field() {
    let app = TestApp::spawn().await;
    let cases = [
        (json!({ "password": PASSWORD }).to_string(), "email"),
        (json!({ "email": "a@example.com" }).to_string(), "password"),
        (json!({ "email": "not-an-address", "password": PASSWORD }).to_string(), "email"),
        (json!({ "email": 42, "password": PASSWORD }).to_string(), "email"),
        (json!({ "email": "a@example.com", "password": PASSWORD, "isAdmin": true }).to_string(), "isAdmin"),
        (json!({ "email": "a@example.com", "password": PASSWORD, "lastName": ["x"] }).to_string(), "lastName"),
        (json!({ "email": "a@example.com", "password": PASSWORD, "optInMarketing": "yes" }).to_string(), "optInMarketing"),
        (json!({ "email": "a@example.com", "password": PASSWORD, "username": "no spaces" }).to_string(), "username"),
        ("[1, 2, 3]".to_string(), "data"),
        ("{\"email\": ".to_string(), "data"),
        (json!({ "email": "a@example.com", "password": PASSWORD, "city": "x".repeat(17 * 1024) }).to_string(), "data"),
    ];
    for (document, field) in cases {
        let body = app
            .graphql(
                "mutation($data: String!) { register(input: { data: $data }) { status userId } }",
                json!({ "data": document }),
            )
            .await;
        assert_eq!(error_code(&body), "BAD_USER_INPUT", "{document}: {body}");
        assert_eq!(
            body["errors"][0]["extensions"]["field"], field,
            "{document}: {body}"
        );
        assert!(body["data"]["register"].is_null());
    }
    // Nothing was created along the way: the address is still free.
    assert!(
        app.app()
            .store()
            .user_by_email("a@example.com")
            .await
            .unwrap()
            .is_none()
    );
    app.stop().await;
}

#[tokio::test]
async fn a_username_is_made_unique_when_none_is_given() {
    let app = TestApp::spawn().await;
    app.verified_user("sam@one.example", PASSWORD).await;
    app.verified_user("sam@two.example", PASSWORD).await;
    let a = app.signed_in("sam@one.example", PASSWORD, None).await;
    let b = app.signed_in("sam@two.example", PASSWORD, None).await;
    let (a, b) = (&a["userProfile"]["username"], &b["userProfile"]["username"]);
    assert_eq!(a, "sam");
    assert!(b.as_str().unwrap().starts_with("sam-"), "{b}");

    let body = app
        .register(json!({ "email": "other@example.com", "password": PASSWORD, "username": "SAM" }))
        .await;
    assert_eq!(error_code(&body), "BAD_USER_INPUT");
    assert_eq!(body["errors"][0]["extensions"]["field"], "username");
    app.stop().await;
}

#[tokio::test]
async fn an_existing_address_gets_the_same_answer_and_its_owner_a_notice() {
    let app = TestApp::spawn().await;
    let first = app
        .register(json!({ "email": "bea@example.com", "password": PASSWORD }))
        .await;
    app.mailbox
        .wait_for_subject("bea@example.com", "Confirm")
        .await;
    let again = app
        .register(json!({ "email": "BEA@example.com", "password": "another fine passphrase" }))
        .await;
    let (first, again) = (&first["data"]["register"], &again["data"]["register"]);
    // The whole answer, field by field.
    assert_eq!(again, first);
    assert_eq!(again["status"], 201);
    let notice = app
        .mailbox
        .wait_for_subject("bea@example.com", "Someone tried to register")
        .await;
    assert!(
        notice
            .text()
            .contains("https://localhost:8443/forgot-password")
    );
    // The original password still works: nothing was overwritten.
    let code = app
        .mailbox
        .wait_for_subject("bea@example.com", "Confirm")
        .await
        .link_code();
    app.verify_email(&code).await;
    app.signed_in("bea@example.com", PASSWORD, None).await;
    app.stop().await;
}

#[tokio::test]
async fn registration_can_be_closed() {
    let app = TestApp::spawn_with(|c| c.registration.open = false).await;
    let body = app
        .register(json!({ "email": "cy@example.com", "password": PASSWORD }))
        .await;
    assert_eq!(error_code(&body), "REGISTRATION_CLOSED");
    app.stop().await;
}

#[tokio::test]
async fn weak_passwords_are_refused_with_the_reason() {
    let app = TestApp::spawn().await;
    let cases = [
        ("short", "at least 10"),
        ("password123", "common"),
        ("qwertyuiop", "common"),
        ("dee@example.com", "e-mail address or username"),
        ("deeusername", "e-mail address or username"),
    ];
    for (password, reason) in cases {
        let body = app
            .register(json!({ "email": "dee@example.com", "password": password, "username": "deeusername" }))
            .await;
        assert_eq!(error_code(&body), "WEAK_PASSWORD", "{password}: {body}");
        let message = body["errors"][0]["message"].as_str().unwrap();
        assert!(message.contains(reason), "{password}: {message}");
    }
    let body = app
        .register(json!({ "email": "dee@example.com", "password": "x".repeat(257) }))
        .await;
    assert_eq!(error_code(&body), "WEAK_PASSWORD");
    assert!(
        app.mailbox.to("dee@example.com").is_empty(),
        "nothing was created"
    );
    app.stop().await;
}

#[tokio::test]
async fn sign_in_waits_for_the_address_to_be_verified_and_a_code_works_once() {
    let app = TestApp::spawn().await;
    app.register(json!({ "email": "eve@example.com", "password": PASSWORD }))
        .await;
    let body = app.login("eve@example.com", PASSWORD, None).await;
    assert_eq!(error_code(&body), "EMAIL_NOT_VERIFIED", "{body}");

    let code = app.mailbox.wait_for("eve@example.com").await.link_code();
    let body = app.verify_email(&code).await;
    assert_eq!(body["data"]["verifyEmail"]["verified"], true);
    let signed_in = app.signed_in("eve@example.com", PASSWORD, None).await;
    assert_eq!(signed_in["userStatus"], "ACTIVE");
    assert_eq!(signed_in["userProfile"]["emailVerified"], true);

    let body = app.verify_email(&code).await;
    assert_eq!(error_code(&body), "INVALID_CODE", "used twice");
    let body = app.verify_email("AAAAAAAAAAAAAAAAAAAAAA").await;
    assert_eq!(error_code(&body), "INVALID_CODE", "made up");
    app.stop().await;
}

#[tokio::test]
async fn a_verification_code_expires() {
    let app = TestApp::spawn().await;
    app.register(json!({ "email": "fay@example.com", "password": PASSWORD }))
        .await;
    let code = app.mailbox.wait_for("fay@example.com").await.link_code();
    app.clock.advance(Duration::from_secs(24 * 3600 + 1));
    let body = app.verify_email(&code).await;
    assert_eq!(error_code(&body), "CODE_EXPIRED", "{body}");
    let body = app.login("fay@example.com", PASSWORD, None).await;
    assert_eq!(error_code(&body), "EMAIL_NOT_VERIFIED");
    app.stop().await;
}

#[tokio::test]
async fn without_required_verification_an_unverified_account_signs_in() {
    let app = TestApp::spawn_with(|c| c.registration.require_email_verification = false).await;
    app.register(json!({ "email": "gus@example.com", "password": PASSWORD }))
        .await;
    let signed_in = app.signed_in("gus@example.com", PASSWORD, None).await;
    assert_eq!(signed_in["userStatus"], "ACTIVE");
    assert_eq!(signed_in["userProfile"]["emailVerified"], false);
    app.stop().await;
}

#[tokio::test]
async fn expose_codes_returns_the_verification_code_for_load_tests() {
    let app = TestApp::spawn_with(|c| c.testing.expose_codes = true).await;
    let body = app
        .register(json!({ "email": "hal@example.com", "password": PASSWORD }))
        .await;
    let code = body["data"]["register"]["verificationCode"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        app.mailbox.wait_for("hal@example.com").await.link_code(),
        code
    );
    let body = app.verify_email(&code).await;
    assert_eq!(body["data"]["verifyEmail"]["verified"], true);
    app.stop().await;
}

#[tokio::test]
async fn a_hash_made_with_old_parameters_is_replaced_at_the_next_sign_in() {
    let app = TestApp::spawn().await;
    app.verified_user("ida@example.com", PASSWORD).await;
    let smtp_port = app.app().config().mail.smtp.port;
    let kept = app.stop_keeping_storage().await;
    let dir = kept.path().to_path_buf();

    let stored = async |dir: &std::path::Path| {
        let store = Store::open(&dir.join("data/db")).unwrap();
        store
            .user_by_email("ida@example.com")
            .await
            .unwrap()
            .unwrap()
            .password_hash
    };
    let hash = stored(&dir).await;
    assert!(hash.contains("m=64,t=1,p=1"), "{hash}");

    let mut config = crate::helpers::test_config(dir.join("data"), smtp_port);
    config.passwords.argon2_memory_kib = 128;
    config.passwords.argon2_iterations = 2;
    let app = keyhold::Application::build(config).await.unwrap();
    let body = crate::helpers::graphql_on(
        &app,
        None,
        crate::helpers::LOGIN,
        json!({ "email": "ida@example.com", "password": PASSWORD }),
    )
    .await;
    assert_eq!(body["data"]["login"]["status"], 200, "{body}");
    app.shutdown().await.unwrap();
    let hash = stored(&dir).await;
    assert!(hash.contains("m=128,t=2,p=1"), "{hash}");
}

#[tokio::test]
async fn a_flood_of_hashes_beyond_the_queue_is_told_to_retry() {
    let app = TestApp::spawn_with(|c| {
        c.passwords.max_concurrent_hashes = Some(1);
        c.passwords.max_queued_hashes = 0;
        // Slow enough that the flood arrives while the first hash runs.
        c.passwords.argon2_memory_kib = 32 * 1024;
        c.passwords.argon2_iterations = 3;
    })
    .await;
    let requests = (0..8).map(|i| {
        app.register(json!({ "email": format!("flood{i}@example.com"), "password": PASSWORD }))
    });
    let answers = futures_util::future::join_all(requests).await;
    let limited: Vec<&Value> = answers
        .iter()
        .filter(|b| b["errors"][0]["extensions"]["code"] == "RATE_LIMITED")
        .collect();
    let created = answers
        .iter()
        .filter(|b| b["data"]["register"]["status"] == 201)
        .count();
    assert!(created >= 1, "{answers:?}");
    assert!(!limited.is_empty(), "{answers:?}");
    assert_eq!(limited[0]["errors"][0]["extensions"]["retryAfter"], 1);
    app.stop().await;
}

#[tokio::test]
async fn no_code_token_or_password_is_stored_in_clear() {
    let app = TestApp::spawn_with(|c| c.testing.expose_codes = true).await;
    let body = app
        .register(json!({ "email": "jo@example.com", "password": PASSWORD }))
        .await;
    let code = body["data"]["register"]["verificationCode"]
        .as_str()
        .unwrap()
        .to_string();
    let second = app
        .register(json!({ "email": "kim@example.com", "password": PASSWORD }))
        .await;
    let pending = second["data"]["register"]["verificationCode"]
        .as_str()
        .unwrap()
        .to_string();
    app.verify_email(&code).await;
    let signed_in = app.signed_in("jo@example.com", PASSWORD, None).await;
    let refresh = signed_in["refreshToken"].as_str().unwrap().to_string();
    // A TOTP secret handed out (pending), and the signing key's private half.
    let token = signed_in["token"].as_str().unwrap();
    let body = app
        .graphql_as(
            token,
            "mutation($p: String) { enable2Fa(password: $p, method: TOTP) { totpUri } }",
            json!({ "p": PASSWORD }),
        )
        .await;
    let uri = body["data"]["enable2Fa"]["totpUri"].as_str().unwrap();
    let totp_secret = uri
        .split("secret=")
        .nth(1)
        .and_then(|rest| rest.split('&').next())
        .unwrap()
        .to_string();
    let kept = app.stop_keeping_storage().await;
    let dir = kept.path().join("data/db");

    let mut everything = Vec::new();
    for entry in walk(&dir) {
        everything.extend(std::fs::read(entry).unwrap());
    }
    // The scan does see what is stored in clear: the address is an index key.
    assert!(everything.windows(14).any(|w| w == b"jo@example.com"));
    for secret in [PASSWORD, &pending, &refresh, &totp_secret] {
        assert!(
            !everything
                .windows(secret.len())
                .any(|w| w == secret.as_bytes()),
            "found in the database files"
        );
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

const CHANGE_ADDRESS: &str = "mutation($data: String!, $password: String) { updateProfile(input: { data: $data }, password: $password) { status userProfile { id email emailVerified pendingEmail username twoFactorAuth } } }";

#[tokio::test]
async fn an_address_change_answers_the_same_for_a_taken_address_whose_holder_is_told() {
    let app = TestApp::spawn().await;
    app.verified_user("holder@example.com", PASSWORD).await;
    app.verified_user("una@example.com", PASSWORD).await;
    let token = app.signed_in("una@example.com", PASSWORD, None).await["token"]
        .as_str()
        .unwrap()
        .to_string();
    let mut answers = Vec::new();
    for address in ["holder@example.com", "free@example.com"] {
        let data = json!({ "email": address }).to_string();
        let mut body = app
            .graphql_as(
                &token,
                CHANGE_ADDRESS,
                json!({ "data": data, "password": PASSWORD }),
            )
            .await;
        let pending = &body["data"]["updateProfile"]["userProfile"]["pendingEmail"];
        assert_eq!(pending, address, "{body}");
        body["data"]["updateProfile"]["userProfile"]["pendingEmail"] = json!("the new address");
        answers.push(body);
    }
    assert_eq!(answers[0], answers[1], "the whole answer is the same");
    // The holder is told; only the free address gets a code.
    let told = app
        .mailbox
        .wait_for_subject("holder@example.com", "move an account to your address")
        .await;
    assert!(!told.text().contains("una@example.com"), "{}", told.text());
    app.mailbox
        .wait_for_subject("free@example.com", "Confirm")
        .await;
    for asked in 1..=2 {
        app.mailbox
            .wait_for_nth("una@example.com", "change of your e-mail address", asked)
            .await;
    }
    let confirms = app
        .mailbox
        .to("holder@example.com")
        .iter()
        .filter(|m| m.subject().contains("Confirm"))
        .count();
    assert_eq!(confirms, 1, "only the holder's own registration");
    // The holder's account is untouched.
    app.signed_in("holder@example.com", PASSWORD, None).await;
    app.stop().await;
}

#[tokio::test]
async fn no_reset_or_second_factor_code_goes_to_a_pending_address() {
    const FORGOT: &str =
        "mutation($email: EmailAddress!) { forgotPassword(email: $email) { message } }";
    const ENABLE: &str = "mutation($password: String, $method: TwoFactorMethod) { enable2Fa(password: $password, method: $method) { status } }";
    let app = TestApp::spawn().await;
    app.verified_user("ola@example.com", PASSWORD).await;
    let token = app.signed_in("ola@example.com", PASSWORD, None).await["token"]
        .as_str()
        .unwrap()
        .to_string();
    let data = json!({ "email": "ola@new.example" }).to_string();
    let body = app
        .graphql_as(
            &token,
            CHANGE_ADDRESS,
            json!({ "data": data, "password": PASSWORD }),
        )
        .await;
    assert_eq!(body["data"]["updateProfile"]["status"], 200, "{body}");
    app.mailbox
        .wait_for_subject("ola@new.example", "Confirm")
        .await;
    // A reset asked for the pending address mails nothing; for the account's address, it
    // goes there.
    app.graphql(FORGOT, json!({ "email": "ola@new.example" }))
        .await;
    app.graphql(FORGOT, json!({ "email": "ola@example.com" }))
        .await;
    app.mailbox
        .wait_for_subject("ola@example.com", "Reset")
        .await;
    // Two-factor codes go to the verified address too.
    let body = app
        .graphql_as(
            &token,
            ENABLE,
            json!({ "password": PASSWORD, "method": "EMAIL" }),
        )
        .await;
    assert_eq!(body["data"]["enable2Fa"]["status"], "ENABLED", "{body}");
    app.login("ola@example.com", PASSWORD, Some("tablet")).await;
    app.mailbox
        .wait_for_subject("ola@example.com", "security code")
        .await;
    let to_pending: Vec<String> = app
        .mailbox
        .to("ola@new.example")
        .iter()
        .map(|m| m.subject())
        .collect();
    assert_eq!(
        to_pending.len(),
        1,
        "only the verification code: {to_pending:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn totp_is_turned_on_only_for_a_verified_address() {
    const ENABLE: &str = "mutation($password: String, $method: TwoFactorMethod) { enable2Fa(password: $password, method: $method) { status totpUri } }";
    let app = TestApp::spawn_with(|c| c.registration.require_email_verification = false).await;
    app.register(json!({ "email": "pia@example.com", "password": PASSWORD }))
        .await;
    let token = app.signed_in("pia@example.com", PASSWORD, None).await["token"]
        .as_str()
        .unwrap()
        .to_string();
    let body = app
        .graphql_as(
            &token,
            ENABLE,
            json!({ "password": PASSWORD, "method": "TOTP" }),
        )
        .await;
    assert_eq!(error_code(&body), "EMAIL_NOT_VERIFIED", "{body}");
    app.stop().await;
}

#[tokio::test]
async fn a_totp_secret_stored_in_clear_is_sealed_at_the_first_start_only() {
    use keyhold::domain::records::{SecondFactor, TwoFactorRecord};
    let dir = tempfile::tempdir().unwrap();
    let config = crate::helpers::test_config(dir.path().join("data"), 1);
    let clear = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP";
    let id = {
        std::fs::create_dir_all(&config.storage.path).unwrap();
        let store = Store::open(&config.db_path()).unwrap();
        let mut user = keyhold::domain::records::UserRecord::new(
            "old@example.com",
            "old",
            "$argon2id$stub".into(),
            1,
        );
        user.two_factor = Some(TwoFactorRecord {
            method: SecondFactor::Totp,
            totp_secret: Some(clear.into()),
            totp_last_step: None,
            recovery_codes: Vec::new(),
            enabled_at: 1,
        });
        store.insert_user(&user).await.unwrap();
        assert!(!store.secrets_sealed().await.unwrap());
        user.id
    };
    let app = keyhold::Application::build(config.clone()).await.unwrap();
    let user = app.store().user(id).await.unwrap().unwrap();
    let stored = user.two_factor.unwrap().totp_secret.unwrap();
    assert!(
        stored.starts_with("sealed:") && !stored.contains(clear),
        "{stored}"
    );
    assert!(
        app.store().secrets_sealed().await.unwrap(),
        "marked: later starts skip the scan"
    );
    app.shutdown().await.unwrap();
}
