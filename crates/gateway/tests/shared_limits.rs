//! Rate limits shared through Redis by two gateways, and what happens when
//! Redis is not there: each gateway's own limits decide.

use std::sync::Arc;

use axum::Router;
use kit::config::Config;
use kit::testing::{TestServer, assert_problem};

struct Gateway {
    server: TestServer,
    metrics: kit::telemetry::Metrics,
    _gateway: Arc<gateway::Gateway>,
}

/// A gateway whose route `route` allows a burst of 3, then one every 10 s,
/// per client IP, counted at `redis_url`.
async fn gateway(upstream: &TestServer, route: &str, redis_url: &str) -> Gateway {
    let toml = format!(
        r#"
[log]
filter = "error"
[gateway]
rate_limit_redis_url = "{redis_url}"
[gateway.services.ok]
urls = ["{upstream}"]
[[gateway.routes]]
name = "{route}"
prefix = "/limited/"
service = "ok"
auth = "none"
rate_limit = {{ per_second = 0.1, burst = 3, key = "ip" }}
"#,
        upstream = upstream.url(""),
    );
    let config = Config::from_toml(&toml).unwrap();
    let metrics = kit::telemetry::Metrics::new("gateway");
    let opened = gateway::open(&config, kit::clock::system(), &metrics).unwrap();
    Gateway {
        server: TestServer::start_with(|listener, stop| {
            gateway::serve_public(listener, opened.clone(), metrics.clone(), stop)
        })
        .await,
        metrics,
        _gateway: opened,
    }
}

/// A route name no other run uses: the count lives in a shared Redis.
fn fresh_route() -> String {
    format!("limited-{:016x}", fastrand::u64(..))
}

async fn get(gateway: &Gateway) -> reqwest::Response {
    reqwest::get(gateway.server.url("/limited/x"))
        .await
        .unwrap()
}

#[tokio::test]
async fn gateways_sharing_redis_share_the_limit() {
    let Some(redis_url) = kit::testing::backend_url("TESSERA_TEST_REDIS_URL") else {
        return;
    };
    let upstream = TestServer::start(Router::new().fallback(|| async { "ok" })).await;
    let route = fresh_route();
    let (a, b) = (
        gateway(&upstream, &route, &redis_url).await,
        gateway(&upstream, &route, &redis_url).await,
    );
    // The burst of 3 is spent across both gateways.
    for gateway in [&a, &b, &a] {
        assert_eq!(get(gateway).await.status(), 200);
    }
    for gateway in [&b, &a] {
        let refused = get(gateway).await;
        let wait: u64 = refused.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=10).contains(&wait), "Retry-After {wait}");
        assert_problem(refused, 429, "rate_limited").await;
    }
    assert!(
        !a.metrics
            .encode()
            .contains("rate_limit_store_errors_total 1")
    );
}

#[tokio::test]
async fn without_redis_each_gateway_limits_on_its_own() {
    let upstream = TestServer::start(Router::new().fallback(|| async { "ok" })).await;
    let nowhere = format!("redis://127.0.0.1:{}", kit::testing::free_port());
    let route = fresh_route();
    let (a, b) = (
        gateway(&upstream, &route, &nowhere).await,
        gateway(&upstream, &route, &nowhere).await,
    );
    for _ in 0..3 {
        assert_eq!(get(&a).await.status(), 200, "Redis down: let through");
    }
    assert_problem(get(&a).await, 429, "rate_limited").await;
    assert_eq!(get(&b).await.status(), 200, "b counts its own");
    let metrics = a.metrics.encode();
    assert!(
        metrics.contains(r#"tessera_gateway_rate_limit_store_errors_total{role="gateway"} 1"#),
        "one failure, then Redis rests: {metrics}"
    );
}
