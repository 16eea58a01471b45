//! The kit's HTTP conventions through a real server: JSON bodies, timeout,
//! panic, drain.

use std::time::Duration;

use axum::Router;
use axum::routing::get;
use kit::config::HttpSettings;
use kit::http::Readiness;
use kit::telemetry::Metrics;
use kit::testing::TestServer;

async fn serve(settings: HttpSettings, readiness: Readiness) -> TestServer {
    serve_counted(settings, readiness, Metrics::new("test")).await
}

async fn serve_counted(
    settings: HttpSettings,
    readiness: Readiness,
    metrics: Metrics,
) -> TestServer {
    let api = Router::new()
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(400)).await;
                "done"
            }),
        )
        .route(
            "/echo",
            axum::routing::post(
                |kit::http::ApiJson(body): kit::http::ApiJson<Echo>| async move { body.name },
            ),
        )
        .route(
            "/panic",
            get(|| async {
                if true {
                    panic!("boom");
                }
                "unreachable"
            }),
        );
    TestServer::start(kit::http::service_router(
        api, &settings, metrics, readiness,
    ))
    .await
}

#[derive(serde::Deserialize)]
struct Echo {
    name: String,
}

async fn problem_code(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let body: serde_json::Value = response.json().await.unwrap();
    (status, body["code"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn json_bodies_are_objects_or_a_precise_problem() {
    let server = serve(HttpSettings::default(), Readiness::default()).await;
    let http = reqwest::Client::new();
    let post = |content_type: &'static str, body: &'static str| {
        http.post(server.url("/echo"))
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    let ok = post("application/json; charset=utf-8", r#" {"name":"ada"}"#)
        .await
        .unwrap();
    assert_eq!(ok.text().await.unwrap(), "ada");
    let vendor = post("application/vnd.api+json", r#"{"name":"bo"}"#)
        .await
        .unwrap();
    assert_eq!(vendor.status(), 200);
    for (content_type, body, expected) in [
        // serde reads a struct from an array by position: refused.
        ("application/json", r#"["ada"]"#, (422, "validation_failed")),
        ("application/json", "[]", (422, "validation_failed")),
        ("application/json", "7", (422, "validation_failed")),
        ("application/json", "{}", (422, "validation_failed")),
        ("application/json", "", (400, "malformed_request")),
        ("application/json", "[", (400, "malformed_request")),
        ("application/json", "nope", (400, "malformed_request")),
        (
            "text/plain",
            r#"{"name":"ada"}"#,
            (415, "unsupported_media_type"),
        ),
        (
            "application/jsonx",
            r#"{"name":"ada"}"#,
            (415, "unsupported_media_type"),
        ),
    ] {
        let response = post(content_type, body).await.unwrap();
        let (status, code) = problem_code(response).await;
        assert_eq!((status, code.as_str()), expected, "{content_type} {body:?}");
    }
}

#[tokio::test]
async fn slow_requests_time_out_with_503() {
    let server = serve(
        HttpSettings {
            request_timeout_ms: 100,
            ..HttpSettings::default()
        },
        Readiness::default(),
    )
    .await;
    let response = reqwest::get(server.url("/slow")).await.unwrap();
    assert_eq!(problem_code(response).await, (503, "timeout".into()));
}

/// Waits until `done` says so, for at most two seconds.
async fn until(done: impl Fn() -> bool, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_request_its_client_left_is_counted_499_and_no_longer_in_flight() {
    let metrics = Metrics::new("test");
    let server = serve_counted(
        HttpSettings::default(),
        Readiness::default(),
        metrics.clone(),
    )
    .await;
    let asked = tokio::spawn(reqwest::get(server.url("/slow")));
    until(|| metrics.in_flight.get() == 1, "never in flight").await;
    // The client gives up; the server sees its connection close.
    asked.abort();
    until(|| metrics.in_flight.get() == 0, "still in flight").await;
    let counted = metrics.encode();
    assert!(
        counted.contains(
            r#"tessera_http_requests_total{role="test",method="GET",route="/slow",status="499"} 1"#
        ),
        "{counted}"
    );
}

#[tokio::test]
async fn a_panicking_handler_is_a_500_and_the_server_lives_on() {
    let server = serve(HttpSettings::default(), Readiness::default()).await;
    let response = reqwest::get(server.url("/panic")).await.unwrap();
    assert_eq!(problem_code(response).await, (500, "internal".into()));
    let health = reqwest::get(server.url("/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test]
async fn failing_readiness_check_is_503_naming_it() {
    let readiness = Readiness::default()
        .check("database", || async { Ok(()) })
        .check("broker", || async { Err("connection refused".to_owned()) });
    let server = serve(HttpSettings::default(), readiness).await;
    let response = reqwest::get(server.url("/readyz")).await.unwrap();
    assert_eq!(response.status(), 503);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["detail"], "broker: connection refused");
}

#[tokio::test]
async fn shutdown_drains_in_flight_requests() {
    let server = serve(HttpSettings::default(), Readiness::default()).await;
    let url = server.url("/slow");
    let in_flight = tokio::spawn(async move { reqwest::get(url).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let addr = server.addr;
    drop(server); // asks for shutdown while /slow is being served
    let response = in_flight.await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "done");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no new connections after shutdown"
    );
}

#[tokio::test]
async fn methods_outside_the_standard_ones_share_one_metric_label() {
    let server = serve(HttpSettings::default(), Readiness::default()).await;
    let http = reqwest::Client::new();
    for method in ["BREW", "WHEN", "GET"] {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        http.request(method, server.url("/slow-not"))
            .send()
            .await
            .unwrap();
    }
    let metrics = reqwest::get(server.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let requests: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("tessera_http_requests_total{"))
        .collect();
    assert!(
        requests
            .iter()
            .any(|l| l.contains("method=\"other\"") && l.ends_with(" 2")),
        "{requests:?}"
    );
    assert!(requests.iter().any(|l| l.contains("method=\"GET\"")));
    assert!(!metrics.contains("BREW") && !metrics.contains("WHEN"));
}

#[tokio::test]
async fn a_method_a_route_does_not_take_is_a_405_naming_the_ones_it_does() {
    let server = serve(HttpSettings::default(), Readiness::default()).await;
    let delete = reqwest::Client::new()
        .delete(server.url("/echo"))
        .send()
        .await
        .unwrap();
    assert_eq!(delete.headers()["allow"], "POST");
    assert_eq!(
        problem_code(delete).await,
        (405, "method_not_allowed".into())
    );
}
