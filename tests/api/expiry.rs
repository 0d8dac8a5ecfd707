use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::json;

use crate::helpers::{NEW_TOKEN, PASSWORD, TestApp, error_code};

#[tokio::test]
async fn expiry_is_enforced_at_use_before_any_sweep() {
    let app = TestApp::spawn().await;
    app.verified_user("ada@example.com", PASSWORD).await;
    let login = app.signed_in("ada@example.com", PASSWORD, None).await;
    app.register(json!({ "email": "bob@example.com", "password": PASSWORD }))
        .await;
    let code = app.mailbox.wait_for("bob@example.com").await.link_code();
    app.clock.advance(Duration::from_secs(31 * 86400));
    let removed_before = app.app().sweep_stats().removed.load(Ordering::Relaxed);
    let body = app
        .graphql(NEW_TOKEN, json!({ "refresh": login["refreshToken"] }))
        .await;
    assert_eq!(error_code(&body), "INVALID_TOKEN");
    assert_eq!(error_code(&app.verify_email(&code).await), "CODE_EXPIRED");
    assert_eq!(
        app.app().sweep_stats().removed.load(Ordering::Relaxed),
        removed_before,
        "the sweeper had not run"
    );
    app.stop().await;
}

#[tokio::test]
async fn the_background_sweeper_reclaims_what_has_expired() {
    let app = TestApp::spawn_with(|c| c.storage.sweep_interval = Duration::from_millis(50)).await;
    app.verified_user("cy@example.com", PASSWORD).await;
    let login = app.signed_in("cy@example.com", PASSWORD, None).await;
    app.register(json!({ "email": "dee@example.com", "password": PASSWORD }))
        .await;
    let code = app.mailbox.wait_for("dee@example.com").await.link_code();
    // Dee's verification code and Cy's device session (its refresh token lives in it).
    assert!(crate::helpers::sled(app.app()).expiry_entries() >= 2);

    app.clock.advance(Duration::from_secs(31 * 86400));
    // Poll the sweeper's own count (real time, bounded): it runs every 50 ms, and counts a
    // pass once the pass has ended, a moment after the index is empty.
    let swept = tokio::time::timeout(Duration::from_secs(10), async {
        while crate::helpers::sled(app.app()).expiry_entries() > 0
            || app.app().sweep_stats().removed.load(Ordering::Relaxed) < 2
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        swept.is_ok(),
        "the sweeper emptied the expiry index and counted at least the code and the session"
    );
    let body = app
        .graphql(NEW_TOKEN, json!({ "refresh": login["refreshToken"] }))
        .await;
    assert_eq!(error_code(&body), "INVALID_TOKEN");
    assert_eq!(
        error_code(&app.verify_email(&code).await),
        "INVALID_CODE",
        "reclaimed"
    );
    app.stop().await;
}
