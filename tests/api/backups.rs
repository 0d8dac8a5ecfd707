use std::time::Duration;

use keyhold::Application;
use serde_json::json;

use crate::helpers::{PASSWORD, TestApp, graphql_on, test_config};

/// A backup key pair made away from the server: the identity's folder and path, and the
/// recipient to configure.
fn backup_key() -> (tempfile::TempDir, std::path::PathBuf, String) {
    let dir = tempfile::tempdir().unwrap();
    let identity = dir.path().join("backup.key");
    let recipient = keyhold::backup::make_identity(&identity).unwrap();
    (dir, identity, recipient)
}

/// Asks the running server for a backup to `file`: its answer.
async fn backup_through(app: &TestApp, file: &std::path::Path) -> serde_json::Value {
    keyhold::admin::call(
        &app.app().config().admin_socket(),
        &json!({ "command": "backup", "file": file }),
    )
    .await
    .unwrap()
    .expect("the running server answers")
}

async fn with_backups(recipient: &str) -> TestApp {
    let recipient = recipient.to_string();
    TestApp::spawn_with(move |c| c.storage.backup_recipient = Some(recipient)).await
}

#[tokio::test]
async fn a_backup_taken_while_serving_restores_the_state_it_saw() {
    let (_away, identity, recipient) = backup_key();
    let app = with_backups(&recipient).await;
    app.verified_user("ada@example.com", PASSWORD).await;
    let login = app.signed_in("ada@example.com", PASSWORD, None).await;
    // Ada has a passkey.
    let token = login["token"].as_str().unwrap();
    let mut authenticator = webauthn_authenticator_rs::softpasskey::SoftPasskey::new(true);
    let body = crate::passkeys::register(&app, token, &mut authenticator).await;
    let passkey = body["data"]["finishPasskeyRegistration"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{body}"))
        .to_string();
    let file = app.dir().join("manual.backup");
    let answer = backup_through(&app, &file).await;
    assert_eq!(answer["ok"], true, "{answer}");
    assert!(answer["entries"].as_u64().unwrap() > 5);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // On its own the file yields nothing: not the key file, not a record, not an address.
    let bytes = std::fs::read(&file).unwrap();
    let key = std::fs::read(app.app().config().keys_dir().join("hmac.key")).unwrap();
    for clear in [&key[..], b"keyhold_backup", b"ada@example.com"] {
        assert!(!bytes.windows(clear.len()).any(|w| w == clear));
    }
    assert!(bytes.starts_with(b"age-encryption.org/v1"));

    // Changes after the backup.
    app.register(json!({ "email": "late@example.com", "password": PASSWORD }))
        .await;
    let smtp_port = app.app().config().mail.smtp.port;
    let kept = app.stop_keeping_storage().await;

    let config = test_config(kept.path().join("data"), smtp_port);
    // A new machine: the storage is gone; the backup and the identity are all there is.
    std::fs::remove_dir_all(&config.storage.path).unwrap();
    keyhold::backup::restore(&config, &file, &identity, 0)
        .await
        .unwrap();
    let app = Application::build(config).await.unwrap();
    assert!(
        app.store()
            .user_by_email("late@example.com")
            .await
            .unwrap()
            .is_none(),
        "the later account is gone"
    );
    assert!(
        app.store()
            .user_by_email("ada@example.com")
            .await
            .unwrap()
            .is_some(),
        "the earlier one is back"
    );
    // The key file came back too: the session's access token still verifies and its
    // refresh token (stored only as a keyed hash) still works.
    let body = graphql_on(
        &app,
        None,
        "mutation($r: String!) { newToken(refreshToken: $r) { status } }",
        json!({ "r": login["refreshToken"] }),
    )
    .await;
    assert_eq!(body["data"]["newToken"]["status"], 200, "{body}");
    // And her passkey still signs her in.
    let body = graphql_on(
        &app,
        None,
        crate::passkeys::START_LOGIN,
        json!({ "email": "ada@example.com" }),
    )
    .await;
    let started = &body["data"]["startPasskeyLogin"];
    let options = serde_json::from_str(started["options"].as_str().unwrap()).unwrap();
    let credential = crate::passkeys::assert_with(
        &mut authenticator,
        "https://localhost:8443",
        options,
        &passkey,
        None,
    );
    let body = graphql_on(
        &app,
        None,
        crate::passkeys::FINISH_LOGIN,
        json!({ "id": started["challengeId"], "credential": credential }),
    )
    .await;
    assert_eq!(body["data"]["finishPasskeyLogin"]["status"], 200, "{body}");
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn restore_refuses_a_running_server_a_cut_or_altered_file_and_a_wrong_identity() {
    let (_away, identity, recipient) = backup_key();
    let app = with_backups(&recipient).await;
    app.verified_user("bo@example.com", PASSWORD).await;
    let file = app.dir().join("b.backup");
    let answer = backup_through(&app, &file).await;
    assert_eq!(answer["ok"], true, "{answer}");
    let config = test_config(app.dir().join("data"), 1);
    let err = keyhold::backup::restore(&config, &file, &identity, 0)
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("in use"), "{err:#}");
    let kept = app.stop_keeping_storage().await;
    let config = test_config(kept.path().join("data"), 1);

    let bytes = std::fs::read(&file).unwrap();
    let cut = kept.path().join("cut.backup");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let mut flipped = bytes.clone();
    let at = flipped.len() - 40;
    flipped[at] ^= 1;
    let altered = kept.path().join("altered.backup");
    std::fs::write(&altered, &flipped).unwrap();
    let (_elsewhere, stranger, _) = backup_key();
    for (file, identity) in [(&cut, &identity), (&altered, &identity), (&file, &stranger)] {
        let err = keyhold::backup::restore(&config, file, identity, 0)
            .await
            .unwrap_err();
        assert!(!format!("{err:#}").is_empty());
        // The live storage was left as it was, and nothing was left beside it.
        use keyhold::store::UserStore;
        let store = keyhold::store::sled::Store::open(&config.db_path()).unwrap();
        assert!(
            store
                .user_by_email("bo@example.com")
                .await
                .unwrap()
                .is_some()
        );
        drop(store);
        let beside: Vec<String> = std::fs::read_dir(&config.storage.path)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("db."))
            .collect();
        assert!(beside.is_empty(), "{beside:?}");
    }
}

#[tokio::test]
async fn no_backup_is_written_without_a_recipient() {
    let app = TestApp::spawn().await;
    let file = app.dir().join("plain.backup");
    let answer = backup_through(&app, &file).await;
    assert_eq!(answer["ok"], false, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("storage.backup_recipient"),
        "{answer}"
    );
    assert!(!file.exists());
    app.stop().await;
}

#[tokio::test]
async fn scheduled_backups_are_made_and_pruned() {
    let (_away, _identity, recipient) = backup_key();
    let app = TestApp::spawn_with(move |c| {
        c.storage.backup_interval = Duration::from_millis(50);
        c.storage.backup_keep = 2;
        c.storage.backup_recipient = Some(recipient);
    })
    .await;
    let dir = app.app().config().backups_dir();
    let made = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            // Keyhold names backups by its clock, which the test moves on.
            app.clock.advance(Duration::from_secs(1));
            let count = std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0);
            if count >= 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(made.is_ok(), "two backups were made");
    // Shutdown lets a backup under way finish, pruning included.
    let _kept = app.stop_keeping_storage().await;
    let count = std::fs::read_dir(&dir).unwrap().count();
    assert_eq!(count, 2, "only backup_keep are kept");
}
