//! The whole identity flow on PostgreSQL and Redis, as production runs it.

mod common;

use common::spawn_app_with;
use kit::testing::assert_problem;

#[tokio::test]
async fn register_login_refresh_reuse_logout_on_postgres_and_redis() {
    let (Some(pg), Some(redis)) = (
        kit::testing::backend_url("TESSERA_TEST_POSTGRES_URL"),
        kit::testing::backend_url("TESSERA_TEST_REDIS_URL"),
    ) else {
        return;
    };
    let database_url = kit::testing::fresh_postgres_database(&pg).await;
    let app = spawn_app_with(&format!(
        "[identity]\ndatabase_url = {database_url:?}\nkv_url = {redis:?}\n"
    ))
    .await;
    let (email, first) = app.logged_in().await;
    assert_problem(app.register(&email).await, 409, "email_taken").await;
    let second: serde_json::Value = app
        .refresh(&first["refresh_token"])
        .await
        .json()
        .await
        .unwrap();
    assert_problem(
        app.refresh(&first["refresh_token"]).await,
        401,
        "invalid_token",
    )
    .await;
    assert_problem(
        app.refresh(&second["refresh_token"]).await,
        401,
        "invalid_token",
    )
    .await;
    let ready: serde_json::Value = app
        .http
        .get(app.url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["status"], "ready");
}
