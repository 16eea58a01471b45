//! Identity through HTTP, as a client sees it: every status of every route.

mod common;

use std::time::{Duration, Instant};

use common::{PASSWORD, spawn_app, spawn_app_with, unique_email};
use kit::auth::{JwksClient, TokenVerifier};
use kit::config::AuthSettings;
use kit::testing::assert_problem;
use serde_json::{Value, json};

#[tokio::test]
async fn register_creates_an_account() {
    let app = spawn_app().await;
    let response = app.register("  Ada@Example.com ").await;
    assert_eq!(response.status(), 201);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["email"], "ada@example.com");
    assert_eq!(body["display_name"], "Ada");
    assert_eq!(
        location,
        format!("/api/v1/users/{}", body["id"].as_str().unwrap())
    );
}

#[tokio::test]
async fn duplicate_email_is_409_whatever_its_case() {
    let app = spawn_app().await;
    assert_eq!(app.register("bob@example.com").await.status(), 201);
    assert_problem(app.register("BOB@example.com").await, 409, "email_taken").await;
}

#[tokio::test]
async fn invalid_registrations_are_422_with_the_failing_fields() {
    let app = spawn_app().await;
    let cases = [
        (
            json!({"email": "not-an-email", "password": PASSWORD, "display_name": "A"}),
            vec!["/email"],
        ),
        (
            json!({"email": unique_email(), "password": "short", "display_name": "A"}),
            vec!["/password"],
        ),
        (
            json!({"email": unique_email(), "password": "Password1234", "display_name": "A"}),
            vec!["/password"],
        ),
        (
            json!({"email": unique_email(), "password": "123456789012", "display_name": "A"}),
            vec!["/password"],
        ),
        (
            json!({"email": "x", "password": "y", "display_name": " "}),
            vec!["/email", "/password", "/display_name"],
        ),
    ];
    for (body, pointers) in cases {
        let problem = assert_problem(
            app.post("/api/v1/auth/register", body).await,
            422,
            "validation_failed",
        )
        .await;
        let got: Vec<&str> = problem["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["pointer"].as_str().unwrap())
            .collect();
        assert_eq!(got, pointers);
    }
}

#[tokio::test]
async fn malformed_bodies_are_refused_with_problems() {
    let app = spawn_app().await;
    let url = app.url("/api/v1/auth/register");
    let no_type = app.http.post(&url).body("{}").send().await.unwrap();
    assert_problem(no_type, 415, "unsupported_media_type").await;
    let bad_json = app
        .http
        .post(&url)
        .header("content-type", "application/json")
        .body("{\"email\":")
        .send()
        .await
        .unwrap();
    assert_problem(bad_json, 400, "malformed_request").await;
    let wrong_shape = app.post("/api/v1/auth/register", json!({"email": 5})).await;
    assert_problem(wrong_shape, 422, "validation_failed").await;
    let huge = json!({"email": "a@b.co", "password": "x".repeat(70 * 1024), "display_name": "A"});
    assert_problem(
        app.post("/api/v1/auth/register", huge).await,
        413,
        "payload_too_large",
    )
    .await;
}

#[tokio::test]
async fn login_returns_tokens_that_verify_against_the_jwks() {
    let app = spawn_app().await;
    let email = unique_email();
    app.register(&email).await;
    let response = app.login(&email.to_uppercase(), PASSWORD).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 900);
    assert_eq!(
        body["refresh_token"].as_str().unwrap().len(),
        43,
        "256 bits, base64url"
    );

    let jwks: Value = app
        .http
        .get(app.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(jwks["keys"][0]["kty"], "OKP");
    assert_eq!(jwks["keys"][0]["crv"], "Ed25519");
    let auth = AuthSettings {
        jwks_url: app.url("/.well-known/jwks.json"),
        ..AuthSettings::default()
    };
    let verifier = TokenVerifier::new(
        std::sync::Arc::new(JwksClient::new(&auth)),
        &auth,
        kit::clock::system(),
    );
    let principal = verifier
        .verify(body["access_token"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(principal.roles, vec!["user".to_owned()]);
}

#[tokio::test]
async fn wrong_password_and_unknown_email_look_the_same() {
    let app = spawn_app().await;
    let email = unique_email();
    app.register(&email).await;
    let mut wrong = Duration::ZERO;
    let mut unknown = Duration::ZERO;
    for _ in 0..3 {
        let started = Instant::now();
        let a = assert_problem(
            app.login(&email, "not the password!").await,
            401,
            "invalid_credentials",
        )
        .await;
        wrong += started.elapsed();
        let started = Instant::now();
        let b = assert_problem(
            app.login(&unique_email(), "not the password!").await,
            401,
            "invalid_credentials",
        )
        .await;
        unknown += started.elapsed();
        assert_eq!(a["detail"], b["detail"]);
    }
    let ratio = unknown.as_secs_f64() / wrong.as_secs_f64();
    assert!(
        (0.5..2.0).contains(&ratio),
        "unknown/wrong timing ratio {ratio}"
    );
}

#[tokio::test]
async fn five_failures_lock_the_account_for_a_minute() {
    let app = spawn_app().await;
    let email = unique_email();
    app.register(&email).await;
    for _ in 0..5 {
        assert_problem(
            app.login(&email, "not the password!").await,
            401,
            "invalid_credentials",
        )
        .await;
    }
    let response = app.login(&email, PASSWORD).await;
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert_problem(response, 429, "rate_limited").await;
}

#[tokio::test]
async fn twenty_failures_from_one_ip_are_rate_limited() {
    let app = spawn_app().await;
    for i in 0..20 {
        let email = format!("nobody{}@example.com", i % 4);
        assert_problem(
            app.login(&email, "not the password!").await,
            401,
            "invalid_credentials",
        )
        .await;
    }
    let (email, _) = {
        let email = unique_email();
        app.register(&email).await;
        (email, ())
    };
    let response = app.login(&email, PASSWORD).await;
    assert!(response.headers().contains_key("retry-after"));
    assert_problem(response, 429, "rate_limited").await;
}

#[tokio::test]
async fn refresh_rotates_and_reuse_revokes_the_family() {
    let app = spawn_app().await;
    let (_, first) = app.logged_in().await;
    let response = app.refresh(&first["refresh_token"]).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let second: Value = response.json().await.unwrap();
    assert_ne!(second["refresh_token"], first["refresh_token"]);

    // The first token was used: presenting it again is reuse.
    assert_problem(
        app.refresh(&first["refresh_token"]).await,
        401,
        "invalid_token",
    )
    .await;
    // Reuse revoked the whole family, so the newest token is dead too.
    assert_problem(
        app.refresh(&second["refresh_token"]).await,
        401,
        "invalid_token",
    )
    .await;
}

#[tokio::test]
async fn unknown_refresh_token_is_401() {
    let app = spawn_app().await;
    assert_problem(app.refresh(&json!("made-up")).await, 401, "invalid_token").await;
    assert_problem(
        app.post("/api/v1/auth/refresh", json!({})).await,
        422,
        "validation_failed",
    )
    .await;
}

#[tokio::test]
async fn logout_revokes_the_session() {
    let app = spawn_app().await;
    let (_, tokens) = app.logged_in().await;
    let logout = app
        .http
        .post(app.url("/api/v1/auth/logout"))
        .bearer_auth(tokens["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(logout.status(), 204);
    assert_problem(
        app.refresh(&tokens["refresh_token"]).await,
        401,
        "invalid_token",
    )
    .await;
}

#[tokio::test]
async fn the_caller_reads_their_own_account() {
    let app = spawn_app().await;
    let (email, tokens) = app.logged_in().await;
    let url = app.url("/api/v1/accounts/me");
    let mine = app
        .http
        .get(&url)
        .bearer_auth(tokens["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(mine.status(), 200);
    let account: Value = mine.json().await.unwrap();
    assert_eq!(account["email"], email.to_lowercase());
    assert_eq!(account["roles"], json!(["user"]));
    let created = account["created_at"].as_str().unwrap();
    assert!(created.ends_with('Z') && created.len() == 24, "{created}");
    assert!(account.get("password_hash").is_none());
    let anonymous = app.http.get(&url).send().await.unwrap();
    assert_problem(anonymous, 401, "invalid_token").await;
}

#[tokio::test]
async fn logout_needs_a_valid_access_token() {
    let app = spawn_app().await;
    let (_, tokens) = app.logged_in().await;
    let url = app.url("/api/v1/auth/logout");
    let none = app.http.post(&url).send().await.unwrap();
    assert_problem(none, 401, "invalid_token").await;
    let refresh_as_access = app
        .http
        .post(&url)
        .bearer_auth(tokens["refresh_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_problem(refresh_as_access, 401, "invalid_token").await;
}

#[tokio::test]
async fn unknown_routes_and_methods_are_problems() {
    let app = spawn_app().await;
    let missing = app.http.get(app.url("/api/v1/nope")).send().await.unwrap();
    assert_problem(missing, 404, "not_found").await;
    let wrong_method = app
        .http
        .get(app.url("/api/v1/auth/token"))
        .send()
        .await
        .unwrap();
    assert_problem(wrong_method, 405, "method_not_allowed").await;
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let app = spawn_app().await;
    assert_eq!(
        app.http
            .get(app.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let ready: Value = app
        .http
        .get(app.url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["checks"]["stores"], "ok");
    app.register(&unique_email()).await;
    let metrics = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("route=\"/api/v1/auth/register\"") && metrics.contains("status=\"201\""),
        "{metrics}"
    );
}

#[tokio::test]
async fn trace_context_is_continued_and_shown_in_problems() {
    let app = spawn_app().await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let response = app
        .http
        .post(app.url("/api/v1/auth/token"))
        .header("traceparent", traceparent)
        .json(&json!({"email": "x@example.com", "password": "whatever it is"}))
        .send()
        .await
        .unwrap();
    let echoed = response.headers()["traceparent"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(echoed.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
    assert!(response.headers().contains_key("x-request-id"));
    let body = assert_problem(response, 401, "invalid_credentials").await;
    assert_eq!(body["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
}

#[tokio::test]
async fn password_hashing_overload_is_503_not_a_queue() {
    let app =
        spawn_app_with("[identity]\npassword_hash_concurrency = 1\npassword_hash_queue_max = 0")
            .await;
    let emails: Vec<String> = (0..6).map(|i| format!("x{i}@example.com")).collect();
    let logins = emails
        .iter()
        .map(|email| app.login(email, "whatever it is"));
    let statuses: Vec<u16> = futures_util::future::join_all(logins)
        .await
        .iter()
        .map(|r| r.status().as_u16())
        .collect();
    assert!(statuses.contains(&503), "{statuses:?}");
    assert!(
        statuses.iter().all(|s| *s == 401 || *s == 503),
        "{statuses:?}"
    );
}
