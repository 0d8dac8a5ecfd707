use serde_json::json;

use crate::helpers::{PASSWORD, TestApp};

#[tokio::test]
async fn security_events_are_kept_in_time_order_without_secrets() {
    let app = TestApp::spawn_with(|c| c.testing.expose_codes = true).await;
    app.verified_user("ada@example.com", PASSWORD).await;
    app.login("ada@example.com", "not the password", Some("phone"))
        .await;
    let login = app
        .signed_in("ada@example.com", PASSWORD, Some("phone"))
        .await;
    let token = login["token"].as_str().unwrap();
    app.enable_2fa(token, PASSWORD).await;
    app.graphql_as(token, "mutation { logout { status } }", json!(null))
        .await;

    let events = app
        .app()
        .store()
        .audit_since(0, Some("ada@example.com"), 100)
        .await
        .unwrap();
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(
        names,
        [
            "registered",
            "verified",
            "sign_in_failed",
            "signed_in",
            "two_factor_enabled",
            "logged_out"
        ],
        "{events:#?}"
    );
    let failed = &events[2];
    assert_eq!(failed.outcome, "INVALID_CREDENTIALS");
    assert_eq!(failed.ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(failed.device.as_deref(), Some("phone"));
    let all = serde_json::to_string(&events).unwrap();
    assert!(!all.contains(PASSWORD) && !all.contains(token) && !all.contains("not the password"));

    // Old events go after audit.retention.
    app.clock
        .advance(std::time::Duration::from_secs(91 * 86400));
    let now = app.clock.now().unix_timestamp();
    let removed = app
        .app()
        .store()
        .prune_audit(now - 90 * 86400)
        .await
        .unwrap();
    assert_eq!(removed, events.len());
    app.stop().await;
}
