//! Changes racing sign-ins: each test runs both sides concurrently, round after round, and
//! checks the invariant after every round. A lost update (a sign-in writing back the account
//! it read before its password hash) shows here as a broken invariant in some round.

use futures_util::future::join_all;
use keyhold::domain::records::AccountState;
use serde_json::{Value, json};

use crate::helpers::{PASSWORD, TestApp, error_code};

/// Rounds per race: each one a fresh account and a fresh interleaving.
const ROUNDS: usize = 16;
/// Sign-ins racing the change in each round.
const SIGN_INS: usize = 6;

const CHANGE: &str = "mutation($old: String!, $new: String!) { changePassword(oldPassword: $old, newPassword: $new) { status token } }";
const ENABLE: &str =
    "mutation($password: String) { enable2Fa(password: $password) { status recoveryCodes } }";
const DISABLE: &str = "mutation($password: String, $code: String) { disable2Fa(password: $password, code: $code) { status } }";
const CONFIRM: &str = "mutation($code: String!, $id: String!, $email: EmailAddress!) { confirm2Fa(code: $code, sessionId: $id, email: $email) { status token } }";
const PROFILE: &str = "{ userProfile { email } }";

async fn admin(app: &TestApp, action: &str, email: &str) -> Value {
    keyhold::admin::call(
        &app.app().config().admin_socket(),
        &json!({ "command": "user", "action": action, "email": email }),
    )
    .await
    .unwrap()
    .expect("the server answers")
}

/// `SIGN_INS` logins of `email` with `password`, each on its own device, all at once.
async fn sign_ins(app: &TestApp, email: &str, password: &str) -> Vec<Value> {
    join_all((0..SIGN_INS).map(|i| {
        let device = format!("racer-{i}");
        async move { app.login(email, password, Some(&device)).await }
    }))
    .await
}

/// The access tokens that the logins handed out.
fn tokens(logins: &[Value]) -> Vec<String> {
    logins
        .iter()
        .filter_map(|b| b["data"]["login"]["token"].as_str().map(str::to_string))
        .collect()
}

/// Whether the access token still works.
async fn works(app: &TestApp, token: &str) -> bool {
    let body = app.graphql_as(token, PROFILE, Value::Null).await;
    body["data"]["userProfile"]["email"].is_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_disable_during_sign_ins_leaves_the_account_disabled_with_no_session() {
    let app = TestApp::spawn().await;
    for round in 0..ROUNDS {
        let email = format!("dis{round}@example.com");
        app.verified_user(&email, PASSWORD).await;
        let (logins, disabled) = tokio::join!(
            sign_ins(&app, &email, PASSWORD),
            admin(&app, "disable", &email)
        );
        assert_eq!(disabled["ok"], true, "{disabled}");
        let store = app.app().store();
        let user = store.user_by_email(&email).await.unwrap().unwrap();
        assert_eq!(user.state, AccountState::Disabled, "round {round}");
        assert!(
            store.sessions_of(user.id).await.unwrap().is_empty(),
            "round {round}: a session survived the disable"
        );
        for token in tokens(&logins) {
            assert!(!works(&app, &token).await, "round {round}");
        }
        for body in &logins {
            let answer = &body["data"]["login"];
            assert!(
                answer["token"].is_string() || error_code(body) == "ACCOUNT_DISABLED",
                "round {round}: {body}"
            );
        }
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_password_change_during_sign_ins_keeps_the_new_hash_and_ends_every_other_session() {
    let app = TestApp::spawn().await;
    const NEW: &str = "a brand new passphrase 42";
    for round in 0..ROUNDS {
        let email = format!("chg{round}@example.com");
        app.verified_user(&email, PASSWORD).await;
        let changer = app.signed_in(&email, PASSWORD, Some("changer")).await;
        let token = changer["token"].as_str().unwrap().to_string();
        let change = app.graphql_as(&token, CHANGE, json!({ "old": PASSWORD, "new": NEW }));
        let (logins, changed) = tokio::join!(sign_ins(&app, &email, PASSWORD), change);
        let fresh = changed["data"]["changePassword"]["token"]
            .as_str()
            .unwrap_or_else(|| panic!("round {round}: {changed}"))
            .to_string();
        // The new hash is the one stored: the new password signs in, the old one does not.
        let body = app.login(&email, PASSWORD, Some("after")).await;
        assert_eq!(error_code(&body), "INVALID_CREDENTIALS", "round {round}");
        let store = app.app().store();
        let user = store.user_by_email(&email).await.unwrap().unwrap();
        // Only the changer's device is left: no sign-in with the old password survived.
        let left: Vec<String> = store
            .sessions_of(user.id)
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.device_id)
            .collect();
        assert_eq!(left, ["changer"], "round {round}");
        for token in tokens(&logins) {
            assert!(!works(&app, &token).await, "round {round}");
        }
        assert!(works(&app, &fresh).await);
        app.signed_in(&email, NEW, Some("after")).await;
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_password_reset_during_sign_ins_keeps_the_new_hash_and_ends_every_session() {
    let app = TestApp::spawn().await;
    const NEW: &str = "a brand new passphrase 42";
    const FORGOT: &str =
        "mutation($email: EmailAddress!) { forgotPassword(email: $email) { message } }";
    const RESET: &str = "mutation($code: String!, $new: String!) { confirmPasswordReset(passwordResetParams: { code: $code, newPassword: $new }) { reset } }";
    for round in 0..ROUNDS / 2 {
        let email = format!("rst{round}@example.com");
        app.verified_user(&email, PASSWORD).await;
        app.graphql(FORGOT, json!({ "email": email })).await;
        let code = app
            .mailbox
            .wait_for_subject(&email, "Reset")
            .await
            .link_code();
        let reset = app.graphql(RESET, json!({ "code": code, "new": NEW }));
        let (logins, reset) = tokio::join!(sign_ins(&app, &email, PASSWORD), reset);
        assert_eq!(
            reset["data"]["confirmPasswordReset"]["reset"], true,
            "{reset}"
        );
        let body = app.login(&email, PASSWORD, Some("after")).await;
        assert_eq!(error_code(&body), "INVALID_CREDENTIALS", "round {round}");
        let store = app.app().store();
        let user = store.user_by_email(&email).await.unwrap().unwrap();
        assert!(
            store.sessions_of(user.id).await.unwrap().is_empty(),
            "round {round}: a session survived the reset"
        );
        for token in tokens(&logins) {
            assert!(!works(&app, &token).await, "round {round}");
        }
        app.signed_in(&email, NEW, Some("after")).await;
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_delete_during_sign_ins_leaves_no_ghost_user() {
    let app = TestApp::spawn().await;
    for round in 0..ROUNDS {
        let email = format!("del{round}@example.com");
        app.verified_user(&email, PASSWORD).await;
        let id = app
            .app()
            .store()
            .user_by_email(&email)
            .await
            .unwrap()
            .unwrap()
            .id;
        let (logins, deleted) = tokio::join!(
            sign_ins(&app, &email, PASSWORD),
            admin(&app, "delete", &email)
        );
        assert_eq!(deleted["ok"], true, "{deleted}");
        let store = app.app().store();
        assert!(
            store.user(id).await.unwrap().is_none(),
            "round {round}: a ghost"
        );
        assert!(store.user_by_email(&email).await.unwrap().is_none());
        assert!(
            store.sessions_of(id).await.unwrap().is_empty(),
            "round {round}"
        );
        for token in tokens(&logins) {
            assert!(!works(&app, &token).await, "round {round}");
        }
    }
    // Nothing of the deleted accounts is left in the account list either.
    assert!(app.app().store().all_users().await.unwrap().is_empty());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn turning_2fa_on_or_off_during_sign_ins_is_never_undone() {
    let app = TestApp::spawn().await;
    for round in 0..ROUNDS / 2 {
        let email = format!("tfa{round}@example.com");
        app.verified_user(&email, PASSWORD).await;
        let owner = app.signed_in(&email, PASSWORD, Some("owner")).await;
        let token = owner["token"].as_str().unwrap().to_string();
        // On, while password-only sign-ins run.
        let enable = app.graphql_as(&token, ENABLE, json!({ "password": PASSWORD }));
        let (logins, enabled) = tokio::join!(sign_ins(&app, &email, PASSWORD), enable);
        assert_eq!(
            enabled["data"]["enable2Fa"]["status"], "ENABLED",
            "{enabled}"
        );
        let recovery = enabled["data"]["enable2Fa"]["recoveryCodes"][0]
            .as_str()
            .unwrap()
            .to_string();
        let store = app.app().store();
        let user = store.user_by_email(&email).await.unwrap().unwrap();
        assert!(user.two_factor.is_some(), "round {round}: 2FA was undone");
        let devices: Vec<String> = store
            .sessions_of(user.id)
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.device_id)
            .collect();
        assert_eq!(
            devices,
            ["owner"],
            "round {round}: a password-only session survived"
        );
        for token in tokens(&logins) {
            assert!(!works(&app, &token).await, "round {round}");
        }
        // Off, while sign-ins wait for their second factor.
        let disable = app.graphql_as(
            &token,
            DISABLE,
            json!({ "password": PASSWORD, "code": recovery }),
        );
        let (logins, disabled) = tokio::join!(sign_ins(&app, &email, PASSWORD), disable);
        assert_eq!(
            disabled["data"]["disable2Fa"]["status"], "DISABLED",
            "{disabled}"
        );
        let user = store.user_by_email(&email).await.unwrap().unwrap();
        assert!(user.two_factor.is_none(), "round {round}: 2FA came back");
        // A challenge made before the change signs nobody in after it.
        for body in &logins {
            let Some(id) = body["data"]["login"]["sessionId"].as_str() else {
                continue;
            };
            if body["data"]["login"]["status"] != 202 {
                continue;
            }
            let answer = app
                .graphql(
                    CONFIRM,
                    json!({ "code": "000000", "id": id, "email": email }),
                )
                .await;
            assert!(answer["data"]["confirm2Fa"]["token"].is_null(), "{answer}");
        }
    }
    app.stop().await;
}

/// A verified user with mailed 2FA on, and its recovery codes.
async fn with_2fa(app: &TestApp, email: &str) -> Vec<String> {
    app.verified_user(email, PASSWORD).await;
    let login = app.signed_in(email, PASSWORD, Some("owner")).await;
    let token = login["token"].as_str().unwrap();
    let body = app
        .graphql_as(token, ENABLE, json!({ "password": PASSWORD }))
        .await;
    body["data"]["enable2Fa"]["recoveryCodes"]
        .as_array()
        .unwrap_or_else(|| panic!("{body}"))
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect()
}

/// A sign-in waiting for its second factor: its challenge id.
async fn challenge(app: &TestApp, email: &str, device: &str) -> String {
    let body = app.login(email, PASSWORD, Some(device)).await;
    assert_eq!(body["data"]["login"]["status"], 202, "{body}");
    body["data"]["login"]["sessionId"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The device sessions of `email` on devices other than the owner's.
async fn racer_sessions(app: &TestApp, email: &str) -> usize {
    let store = app.app().store();
    let user = store.user_by_email(email).await.unwrap().unwrap();
    store
        .sessions_of(user.id)
        .await
        .unwrap()
        .iter()
        .filter(|s| s.device_id != "owner")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_concurrent_confirmations_of_one_mailed_code_make_one_session() {
    let app = TestApp::spawn().await;
    for round in 0..ROUNDS / 2 {
        let email = format!("one{round}@example.com");
        with_2fa(&app, &email).await;
        let id = challenge(&app, &email, "racer").await;
        let code = app
            .mailbox
            .wait_for_subject(&email, "security code")
            .await
            .six_digit_code();
        let answers = join_all(
            (0..8).map(|_| app.graphql(CONFIRM, json!({ "code": code, "id": id, "email": email }))),
        )
        .await;
        let signed_in = tokens_of_confirm(&answers);
        assert_eq!(signed_in, 1, "round {round}: {answers:?}");
        assert_eq!(racer_sessions(&app, &email).await, 1, "round {round}");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_recovery_code_on_four_concurrent_challenges_makes_one_session() {
    let app = TestApp::spawn().await;
    for round in 0..ROUNDS / 2 {
        let email = format!("rec{round}@example.com");
        let recovery = with_2fa(&app, &email).await;
        let mut ids = Vec::new();
        for device in 0..4 {
            ids.push(challenge(&app, &email, &format!("racer-{device}")).await);
        }
        let code = &recovery[round % recovery.len()];
        let answers = join_all(
            ids.iter()
                .map(|id| app.graphql(CONFIRM, json!({ "code": code, "id": id, "email": email }))),
        )
        .await;
        assert_eq!(tokens_of_confirm(&answers), 1, "round {round}: {answers:?}");
        assert_eq!(racer_sessions(&app, &email).await, 1, "round {round}");
        let user = app
            .app()
            .store()
            .user_by_email(&email)
            .await
            .unwrap()
            .unwrap();
        let left = user.two_factor.unwrap().recovery_codes.len();
        assert_eq!(left, recovery.len() - 1, "the code is spent exactly once");
    }
    app.stop().await;
}

/// How many `confirm2Fa` answers carry a token.
fn tokens_of_confirm(answers: &[Value]) -> usize {
    answers
        .iter()
        .filter(|b| b["data"]["confirm2Fa"]["token"].is_string())
        .count()
}
