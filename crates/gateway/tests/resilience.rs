//! Retries through real HTTP: safe requests go to another instance when one
//! is gone, a POST without `Idempotency-Key` is never sent twice, and the
//! retry budget bounds what a failing service receives.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use axum::Router;
use axum::http::StatusCode;
use kit::config::Config;
use kit::testing::TestServer;

/// An upstream that counts requests and answers each with `status`.
fn counting(status: StatusCode) -> (Router, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let router = Router::new().fallback(move || {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            (status, "answer")
        }
    });
    (router, hits)
}

fn dead_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", listener.local_addr().unwrap())
}

struct Setup {
    gateway: TestServer,
    _upstreams: Vec<TestServer>,
    ok_hits: Arc<AtomicUsize>,
    failing_hits: Arc<AtomicUsize>,
}

/// `flaky`: one instance gone, one fine. `failing`: one instance that
/// always answers 503.
async fn setup() -> Setup {
    let (ok, ok_hits) = counting(StatusCode::OK);
    let (failing, failing_hits) = counting(StatusCode::SERVICE_UNAVAILABLE);
    let ok = TestServer::start(ok).await;
    let failing = TestServer::start(failing).await;
    let toml = format!(
        r#"
[log]
filter = "error"
[gateway.services.flaky]
urls = ["{dead}", "{ok}"]
[gateway.services.failing]
urls = ["{failing}"]
[[gateway.routes]]
name = "flaky"
prefix = "/flaky/"
service = "flaky"
auth = "none"
retry_backoff_ms = 1
[[gateway.routes]]
name = "failing"
prefix = "/failing/"
service = "failing"
auth = "none"
retry_backoff_ms = 1
"#,
        dead = dead_url(),
        ok = ok.url(""),
        failing = failing.url(""),
    );
    let config = Config::from_toml(&toml).unwrap();
    let router = gateway::public_router(
        gateway::open(&config, kit::clock::system()).unwrap(),
        &config.common().unwrap(),
        kit::telemetry::Metrics::new("gateway"),
    );
    Setup {
        gateway: TestServer::start(router).await,
        _upstreams: vec![ok, failing],
        ok_hits,
        failing_hits,
    }
}

#[tokio::test]
async fn safe_requests_are_retried_on_another_instance() {
    let setup = setup().await;
    let http = reqwest::Client::new();
    // Paced so that the budget covers even the worst case (every request
    // tried on the gone instance first): 10 + 20 × 0.2 + 1 s × 10 ≥ 20.
    for i in 0..10 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let get = http
            .get(setup.gateway.url(&format!("/flaky/{i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(get.status(), 200, "GET {i}");
        let keyed = http
            .post(setup.gateway.url("/flaky/orders"))
            .header("idempotency-key", format!("k{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(keyed.status(), 200, "POST with a key {i}");
    }
    assert_eq!(setup.ok_hits.load(Ordering::SeqCst), 20);
}

#[tokio::test]
async fn a_post_without_idempotency_key_is_never_retried() {
    let setup = setup().await;
    let http = reqwest::Client::new();
    let (mut ok, mut refused) = (0, 0);
    for _ in 0..30 {
        let post = http
            .post(setup.gateway.url("/flaky/orders"))
            .send()
            .await
            .unwrap();
        match post.status().as_u16() {
            200 => ok += 1,
            502 => refused += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert!(refused > 0, "the dead instance was never picked");
    assert_eq!(
        setup.ok_hits.load(Ordering::SeqCst),
        ok,
        "each POST reached an instance once at most"
    );
}

#[tokio::test]
async fn retries_stay_within_the_budget() {
    let setup = setup().await;
    let http = reqwest::Client::new();
    let started = Instant::now();
    let requests = 200;
    for _ in 0..requests {
        let get = http
            .get(setup.gateway.url("/failing/x"))
            .send()
            .await
            .unwrap();
        assert_eq!(get.status(), 503, "the upstream's answer, as it was");
    }
    let hits = setup.failing_hits.load(Ordering::SeqCst) as f64;
    // A second's floor to start, a fifth of the requests, the floor per second.
    let budget = requests as f64 * gateway::retry::BUDGET_RATIO
        + (1.0 + started.elapsed().as_secs_f64()) * gateway::retry::BUDGET_FLOOR_PER_S;
    assert!(
        hits <= requests as f64 + budget + 1.0,
        "{hits} upstream requests for {requests} (budget {budget:.1})"
    );
    assert!(hits > requests as f64, "some retries were spent");
}
