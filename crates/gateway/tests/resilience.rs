//! Resilience through real HTTP: safe requests go to another instance when
//! one is gone, a POST without `Idempotency-Key` is never sent twice, the
//! retry budget bounds what a failing service receives, the breaker opens
//! and closes, and a saturated route sheds instead of queueing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

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
    format!("http://127.0.0.1:{}", kit::testing::free_port())
}

/// An upstream that answers 500 while `broken` is set, else 200; and,
/// under `/slow`, after 300 ms.
fn switchable() -> (Router, Arc<AtomicBool>, Arc<AtomicUsize>) {
    let (broken, hits) = (
        Arc::new(AtomicBool::new(true)),
        Arc::new(AtomicUsize::new(0)),
    );
    let (flag, counter) = (broken.clone(), hits.clone());
    let router = Router::new()
        .route(
            "/slow/{n}",
            axum::routing::get(|| async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                "late"
            }),
        )
        .fallback(move || {
            let (flag, counter) = (flag.clone(), counter.clone());
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                match flag.load(Ordering::SeqCst) {
                    true => StatusCode::INTERNAL_SERVER_ERROR,
                    false => StatusCode::OK,
                }
            }
        });
    (router, broken, hits)
}

struct Setup {
    gateway: TestServer,
    _upstreams: Vec<TestServer>,
    ok_hits: Arc<AtomicUsize>,
    failing_hits: Arc<AtomicUsize>,
    broken: Arc<AtomicBool>,
    switchable_hits: Arc<AtomicUsize>,
    metrics: kit::telemetry::Metrics,
}

impl Setup {
    /// The sum of the exposed metric lines named `name` that contain
    /// `label`; panics if there is none.
    fn metric(&self, name: &str, label: &str) -> f64 {
        let text = self.metrics.encode();
        let values: Vec<f64> = text
            .lines()
            .filter(|l| l.starts_with(name) && l.contains(label))
            .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
            .collect();
        assert!(!values.is_empty(), "no {name} with {label} in:\n{text}");
        values.iter().sum()
    }
}

/// `flaky`: one instance gone, one fine. `failing`: one instance that
/// always answers 503. `switchable`: failing until told otherwise, with a
/// quick breaker and a slow path on a route that takes 2 at a time.
async fn setup() -> Setup {
    let (ok, ok_hits) = counting(StatusCode::OK);
    let (failing, failing_hits) = counting(StatusCode::SERVICE_UNAVAILABLE);
    let (switchable, broken, switchable_hits) = switchable();
    let ok = TestServer::start(ok).await;
    let failing = TestServer::start(failing).await;
    let switchable = TestServer::start(switchable).await;
    let toml = format!(
        r#"
[log]
filter = "error"
[gateway.services.flaky]
urls = ["{dead}", "{ok}"]
[gateway.services.failing]
urls = ["{failing}"]
breaker_min_requests = 100000
[gateway.services.switchable]
urls = ["{switchable}"]
breaker_min_requests = 4
breaker_open_ms = 300
breaker_probes = 2
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
[[gateway.routes]]
name = "slow"
prefix = "/slow/"
service = "switchable"
auth = "none"
concurrency_max = 2
[[gateway.routes]]
name = "switchable"
prefix = "/switchable/"
service = "switchable"
auth = "none"
retries = 0
"#,
        dead = dead_url(),
        ok = ok.url(""),
        failing = failing.url(""),
        switchable = switchable.url(""),
    );
    let config = Config::from_toml(&toml).unwrap();
    let metrics = kit::telemetry::Metrics::new("gateway");
    let gateway = gateway::open(&config, kit::clock::system(), &metrics).unwrap();
    let router = |listener, stop| gateway::serve_public(listener, gateway, metrics.clone(), stop);
    Setup {
        gateway: TestServer::start_with(router).await,
        _upstreams: vec![ok, failing, switchable],
        ok_hits,
        failing_hits,
        broken,
        switchable_hits,
        metrics,
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
    let retried = setup.metric("tessera_gateway_retries_total", "route=\"flaky\"");
    let unanswered = setup.metric("tessera_gateway_upstream_requests_total", "class=\"none\"");
    assert_eq!(
        retried, unanswered,
        "every attempt on the gone instance was retried"
    );
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

#[tokio::test]
async fn the_breaker_opens_refuses_fast_then_closes_once_probes_pass() {
    let setup = setup().await;
    let http = reqwest::Client::new();
    let get = || http.get(setup.gateway.url("/switchable/x")).send();
    let mut opened = None;
    for _ in 0..10 {
        let response = get().await.unwrap();
        if response.status() == 503 {
            opened = Some(response);
            break;
        }
        assert_eq!(response.status(), 500, "the upstream's own answer");
    }
    let opened = opened.expect("the breaker opened");
    let state = |setup: &Setup| setup.metric("tessera_gateway_breaker_state", "switchable");
    assert_eq!(state(&setup), 1.0, "open");
    assert_eq!(opened.headers()["retry-after"], "1");
    let problem: serde_json::Value = opened.json().await.unwrap();
    assert_eq!(problem["code"], "circuit_open");
    let hits = setup.switchable_hits.load(Ordering::SeqCst);
    for _ in 0..20 {
        assert_eq!(get().await.unwrap().status(), 503);
    }
    assert_eq!(
        setup.switchable_hits.load(Ordering::SeqCst),
        hits,
        "nothing reaches a service while its breaker is open"
    );
    setup.broken.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(350)).await;
    for _ in 0..10 {
        assert_eq!(get().await.unwrap().status(), 200, "probes passed: closed");
    }
    assert_eq!(state(&setup), 0.0, "closed");
}

#[tokio::test]
async fn a_saturated_route_sheds_at_once_instead_of_queueing() {
    let setup = setup().await;
    let http = reqwest::Client::new();
    let requests: Vec<_> = (0..6)
        .map(|n| {
            let request = http.get(setup.gateway.url(&format!("/slow/{n}"))).send();
            tokio::spawn(async move {
                let started = Instant::now();
                let response = request.await.unwrap();
                (response.status().as_u16(), started.elapsed())
            })
        })
        .collect();
    let mut answers = Vec::new();
    for request in requests {
        answers.push(request.await.unwrap());
    }
    let served = answers.iter().filter(|(status, _)| *status == 200).count();
    assert_eq!(served, 2, "{answers:?}");
    assert_eq!(
        setup.metric("tessera_gateway_shed_total", "route=\"slow\""),
        4.0
    );
    for (status, took) in &answers {
        if *status != 200 {
            assert_eq!(*status, 503);
            assert!(
                *took < Duration::from_millis(250),
                "shed at once, not queued: {took:?}"
            );
        }
    }
}

/// A listener that never accepts, its backlog full: a connection to it
/// hangs in the handshake (what an instance behind a dead host does).
async fn unanswering() -> (String, Vec<tokio::net::TcpStream>) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut queued = Vec::new();
    // Fill the accept queue, until a handshake is never completed.
    loop {
        let connecting = tokio::net::TcpStream::connect(addr);
        match tokio::time::timeout(Duration::from_millis(100), connecting).await {
            Ok(Ok(stream)) => queued.push(stream),
            Ok(Err(error)) => panic!("{error}"),
            Err(_) => break,
        }
    }
    std::mem::forget(listener);
    (format!("http://{addr}"), queued)
}

#[tokio::test]
async fn a_connection_that_does_not_open_fails_the_attempt_at_the_connect_timeout() {
    let (hanging, _queued) = unanswering().await;
    let (ok, ok_hits) = counting(StatusCode::OK);
    let ok = TestServer::start(ok).await;
    let toml = format!(
        r#"
[log]
filter = "error"
[gateway.services.half]
urls = ["{hanging}", "{ok}"]
balance = "round_robin"
[gateway.services.hanging]
urls = ["{hanging}"]
[[gateway.routes]]
name = "half"
prefix = "/half/"
service = "half"
auth = "none"
timeout_ms = 5000
connect_timeout_ms = 200
retry_backoff_ms = 1
[[gateway.routes]]
name = "hanging"
prefix = "/hanging/"
service = "hanging"
auth = "none"
timeout_ms = 5000
connect_timeout_ms = 200
"#,
        ok = ok.url(""),
    );
    let config = Config::from_toml(&toml).unwrap();
    let metrics = kit::telemetry::Metrics::new("gateway");
    let gateway = gateway::open(&config, kit::clock::system(), &metrics).unwrap();
    let gateway = TestServer::start_with(|listener, stop| {
        gateway::serve_public(listener, gateway, metrics, stop)
    })
    .await;
    let http = reqwest::Client::new();
    for n in 0..4 {
        let started = Instant::now();
        let answer = http
            .get(gateway.url(&format!("/half/{n}")))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "{:?}",
            started.elapsed()
        );
    }
    assert_eq!(ok_hits.load(Ordering::SeqCst), 4);
    let started = Instant::now();
    let post = http.post(gateway.url("/hanging/x")).send().await.unwrap();
    assert_eq!(post.status(), 502, "unreachable, not a 504 after 5 s");
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
}
