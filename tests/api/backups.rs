use std::time::Duration;

use keyhold::Application;
use serde_json::json;

use crate::helpers::{PASSWORD, TestApp, graphql_on, test_config};

#[tokio::test]
async fn a_backup_taken_while_serving_restores_the_state_it_saw() {
    let app = TestApp::spawn().await;
    app.verified_user("ada@example.com", PASSWORD).await;
    let login = app.signed_in("ada@example.com", PASSWORD, None).await;
    let file = app.dir.path().join("manual.backup");
    let answer = keyhold::admin::call(
        &app.app.config().admin_socket(),
        &json!({ "command": "backup", "file": file }),
    )
    .await
    .unwrap()
    .expect("the running server answers");
    assert_eq!(answer["ok"], true, "{answer}");
    assert!(answer["entries"].as_u64().unwrap() > 5);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // Changes after the backup.
    app.register(json!({ "email": "late@example.com", "password": PASSWORD }))
        .await;
    let smtp_port = app.app.config().mail.smtp.port;
    let kept = app.stop_keeping_storage().await;

    let config = test_config(kept.path().join("data"), smtp_port);
    keyhold::backup::restore(&config, &file, 0).unwrap();
    let app = Application::build(config).await.unwrap();
    use keyhold::store::UserStore;
    assert!(
        app.store()
            .user_by_email("late@example.com")
            .unwrap()
            .is_none(),
        "the later account is gone"
    );
    assert!(
        app.store()
            .user_by_email("ada@example.com")
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
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn restore_refuses_a_running_server_and_a_cut_short_file() {
    let app = TestApp::spawn().await;
    let file = app.dir.path().join("b.backup");
    keyhold::admin::call(
        &app.app.config().admin_socket(),
        &json!({ "command": "backup", "file": file }),
    )
    .await
    .unwrap();
    let config = test_config(app.dir.path().join("data"), 1);
    let err = keyhold::backup::restore(&config, &file, 0).unwrap_err();
    assert!(format!("{err:#}").contains("in use"), "{err:#}");
    let kept = app.stop_keeping_storage().await;

    let text = std::fs::read_to_string(&file).unwrap();
    let cut = kept.path().join("cut.backup");
    std::fs::write(&cut, &text[..text.len() / 2]).unwrap();
    let config = test_config(kept.path().join("data"), 1);
    let err = keyhold::backup::restore(&config, &cut, 0).unwrap_err();
    assert!(
        format!("{err:#}").contains("cut short")
            || format!("{err:#}").contains("not a Keyhold backup"),
        "{err:#}"
    );
    // The database was left as it was.
    keyhold::store::Store::open(&config.db_path()).unwrap();
}

#[tokio::test]
async fn scheduled_backups_are_made_and_pruned() {
    let app = TestApp::spawn_with(|c| {
        c.storage.backup_interval = Duration::from_millis(50);
        c.storage.backup_keep = 2;
    })
    .await;
    let dir = app.app.config().backups_dir();
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
