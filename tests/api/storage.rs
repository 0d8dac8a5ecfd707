//! The store across a stop and the next start.

use keyhold::store::sled::Store;
use keyhold::{Application, Clock};
use serde_json::json;

use crate::helpers::{NEW_TOKEN, PASSWORD, TestApp, graphql_on, test_config};

#[tokio::test]
async fn a_clean_stop_leaves_a_checkpoint_past_the_run_and_the_next_start_loses_nothing() {
    let app = TestApp::spawn().await;
    let db = app.dir().join("data/db");
    let at_start = Store::checkpointed_lsn(&db);
    for i in 0..5 {
        app.verified_user(&format!("user{i}@example.com"), PASSWORD)
            .await;
    }
    let signed_in = app.signed_in("user4@example.com", PASSWORD, None).await;
    let kept = app.stop_keeping_storage().await;

    // Everything the run wrote lies before the checkpoint: the next start reads none of it.
    assert!(
        Store::checkpointed_lsn(&db) > at_start,
        "the stop moved the checkpoint past the run's writes"
    );
    let again =
        Application::build_with_clock(test_config(kept.path().join("data"), 1), Clock::shifted())
            .await
            .unwrap();
    let body = graphql_on(
        &again,
        None,
        NEW_TOKEN,
        json!({ "refresh": signed_in["refreshToken"] }),
    )
    .await;
    assert!(
        body["errors"].is_null(),
        "the session outlived the stop: {body}"
    );
    again.shutdown().await.unwrap();
}
