//! The gateway through real HTTP: upstream servers that echo what they
//! received, answer slowly or are gone; tokens signed like identity's.

use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::routing::get;
use ed25519_dalek::SigningKey;
use kit::config::Config;
use kit::testing::{TestServer, assert_problem};
use serde_json::{Value, json};

const KEY: [u8; 32] = [7; 32];

/// An upstream that answers every request with what it received;
/// `/turns/decorated` with headers of its own, some of them the gateway's
/// to set.
fn echo(name: &'static str) -> Router {
    let echo = move |request: Request| async move {
        let headers: serde_json::Map<String, Value> = request
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap_or(""))))
            .collect();
        axum::Json(json!({
            "upstream": name,
            "method": request.method().as_str(),
            "uri": request.uri().to_string(),
            "headers": headers,
        }))
    };
    kit::testing::jwks_router(&SigningKey::from_bytes(&KEY), "k1")
        .route(
            "/turns/decorated",
            get(|| async {
                let mut headers = http::HeaderMap::new();
                headers.insert("vary", "accept-encoding".parse().unwrap());
                headers.insert("access-control-allow-origin", "*".parse().unwrap());
                headers.insert("x-request-id", "theirs".parse().unwrap());
                headers.append("x-custom", "a".parse().unwrap());
                headers.append("x-custom", "b".parse().unwrap());
                (headers, "decorated")
            }),
        )
        .route(
            "/api/v1/users/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(800)).await;
                "late"
            }),
        )
        .fallback(echo)
}

const ADA: &str = "01a210d3-f91f-76db-ba7d-f3c58371376b";

fn token(roles: &[&str]) -> String {
    token_of(ADA, roles)
}

/// An access token for `subject`, signed as identity would.
fn token_of(subject: &str, roles: &[&str]) -> String {
    kit::testing::access_token(&SigningKey::from_bytes(&KEY), "k1", subject, roles)
}

struct Setup {
    gateway: TestServer,
    _upstreams: Vec<TestServer>,
    http: reqwest::Client,
}

/// Identity and users as echo servers (users twice), a dead `orders`, and
/// the gateway in front with the shipped routes plus test ones.
async fn setup() -> Setup {
    let identity = TestServer::start(echo("identity")).await;
    let users = [
        TestServer::start(echo("users-a")).await,
        TestServer::start(echo("users-b")).await,
    ];
    let dead_url = format!("http://127.0.0.1:{}", kit::testing::free_port());
    let toml = format!(
        r#"
[log]
filter = "warn"
[auth]
jwks_url = "{jwks}"
[gateway.cors]
allowed_origins = ["https://shop.example"]
[gateway.services.identity]
urls = ["{identity}"]
[gateway.services.users]
urls = ["{a}", "{b}"]
[gateway.services.orders]
urls = ["{dead_url}"]
[gateway.services.sticky]
urls = ["{a}", "{b}"]
balance = "hash"
hash_key = "header:x-tessera-user"
[gateway.services.turns]
urls = ["{a}", "{b}"]
balance = "round_robin"
[[gateway.routes]]
name = "auth"
prefix = "/api/v1/auth/"
methods = ["POST"]
service = "identity"
auth = "none"
[[gateway.routes]]
name = "slow"
path = "/api/v1/users/slow"
service = "users"
auth = "none"
timeout_ms = 200
[[gateway.routes]]
name = "users-me"
path = "/api/v1/users/me"
methods = ["GET", "PATCH"]
service = "users"
[[gateway.routes]]
name = "admin-only"
path = "/api/v1/users/{{id}}"
methods = ["GET"]
service = "users"
roles = ["admin"]
[[gateway.routes]]
name = "sticky"
prefix = "/sticky/"
service = "sticky"
[[gateway.routes]]
name = "turns"
prefix = "/turns/"
service = "turns"
auth = "none"
[[gateway.routes]]
name = "limited-by-ip"
prefix = "/limited/ip/"
service = "turns"
auth = "none"
rate_limit = {{ per_second = 1, burst = 3, key = "ip" }}
[[gateway.routes]]
name = "limited-by-user"
prefix = "/limited/user/"
service = "turns"
rate_limit = {{ per_second = 1, burst = 2, key = "user" }}
[[gateway.routes]]
name = "orders"
prefix = "/api/v1/orders/"
service = "orders"
auth = "optional"
"#,
        jwks = identity.url(kit::testing::JWKS_PATH),
        identity = identity.url(""),
        a = users[0].url(""),
        b = users[1].url(""),
    );
    let config = Config::from_toml(&toml).unwrap();
    let metrics = kit::telemetry::Metrics::new("gateway");
    let gateway = gateway::open(&config, kit::clock::system(), &metrics).unwrap();
    let router = |listener, stop| gateway::serve_public(listener, gateway, metrics, stop);
    let [a, b] = users;
    Setup {
        gateway: TestServer::start_with(router).await,
        _upstreams: vec![identity, a, b],
        http: reqwest::Client::new(),
    }
}

impl Setup {
    /// What the upstream received for a GET with `token`.
    async fn echoed(&self, path: &str, token: &str) -> Value {
        self.get(path, Some(token)).await.json().await.unwrap()
    }

    async fn get(&self, path: &str, token: Option<&str>) -> reqwest::Response {
        let mut request = self.http.get(self.gateway.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.unwrap()
    }
}

#[tokio::test]
async fn forwards_to_the_routed_service_with_the_verified_caller_only() {
    let setup = setup().await;
    let response = setup
        .http
        .post(setup.gateway.url("/api/v1/auth/token?x=1"))
        .header("x-tessera-user", "someone-else")
        .header("connection", "x-drop-me")
        .header("x-drop-me", "1")
        .header("x-forwarded-for", "203.0.113.7")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let answered_in = response.headers()["traceparent"]
        .to_str()
        .unwrap()
        .to_owned();
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let echoed: Value = response.json().await.unwrap();
    assert_eq!(echoed["upstream"], "identity");
    assert_eq!(echoed["uri"], "/api/v1/auth/token?x=1");
    let headers = &echoed["headers"];
    assert!(
        headers.get("x-tessera-user").is_none(),
        "spoofed identity stripped"
    );
    assert!(headers.get("x-drop-me").is_none(), "named by Connection");
    assert_eq!(
        headers["x-forwarded-for"], "203.0.113.7, 127.0.0.1",
        "the client added to the hops an earlier proxy named"
    );
    assert!(headers["traceparent"].as_str().unwrap().starts_with("00-"));
    assert_eq!(
        headers["traceparent"], answered_in,
        "the answer names the hop the upstream was called from"
    );
    assert_eq!(
        headers["x-request-id"], request_id,
        "the upstream knows the request by the id made for the client"
    );

    let me = setup.echoed("/api/v1/users/me", &token(&["user"])).await;
    assert!(me["upstream"].as_str().unwrap().starts_with("users-"));
    assert_eq!(me["headers"]["x-forwarded-for"], "127.0.0.1");
    assert_eq!(
        me["headers"]["x-tessera-user"],
        "01a210d3-f91f-76db-ba7d-f3c58371376b"
    );
    assert_eq!(me["headers"]["x-tessera-roles"], "user");

    // Both instances of users take requests.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let me = setup.echoed("/api/v1/users/me", &token(&["user"])).await;
        seen.insert(me["upstream"].as_str().unwrap().to_owned());
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
}

#[tokio::test]
async fn refusals_are_problems_with_the_right_status() {
    let setup = setup().await;
    let user = token(&["user"]);
    assert_problem(
        setup.get("/api/v1/users/me", None).await,
        401,
        "invalid_token",
    )
    .await;
    assert_problem(
        setup.get("/api/v1/users/me", Some("x.y.z")).await,
        401,
        "invalid_token",
    )
    .await;
    assert_problem(
        setup.get("/api/v1/users/42", Some(&user)).await,
        403,
        "forbidden",
    )
    .await;
    let admin = token(&["admin"]);
    assert_eq!(
        setup.get("/api/v1/users/42", Some(&admin)).await.status(),
        200
    );
    assert_problem(setup.get("/api/v1/nowhere", None).await, 404, "not_found").await;
    assert_problem(setup.get("/internal/keys", None).await, 404, "not_found").await;
    let delete = setup
        .http
        .delete(setup.gateway.url("/api/v1/users/me"))
        .bearer_auth(&user)
        .send()
        .await
        .unwrap();
    // RFC 9110 §15.5.6: a 405 names the methods the resource takes.
    assert_eq!(delete.headers()["allow"], "GET, PATCH");
    let problem = assert_problem(delete, 405, "method_not_allowed").await;
    assert_eq!(problem["detail"], "allowed: GET, PATCH");
    for bad in [
        "/api/v1/users/../../internal/keys",
        "/api/v1/users/%2e%2e/%2e%2e/internal",
        "/api/v1/users//me",
        "/api/v1/users/a%2fb",
        "/api/v1/users/%00",
        "/api/v1/users/%ff",
    ] {
        // reqwest would normalise the path: send it as written.
        let response = raw_get(&setup, bad).await;
        assert!(response.starts_with("HTTP/1.1 400"), "{bad}: {response}");
        assert!(response.contains("malformed_request"), "{bad}: {response}");
    }
}

#[tokio::test]
async fn upstream_failures_say_which_they_are() {
    let setup = setup().await;
    let slow = setup.get("/api/v1/users/slow", None).await;
    let problem = assert_problem(slow, 504, "upstream_timeout").await;
    assert_eq!(problem["detail"], "users did not answer within 200 ms");
    assert_problem(
        setup.get("/api/v1/orders/1", None).await,
        502,
        "bad_gateway",
    )
    .await;
}

/// One GET with the path exactly as given; the raw response.
async fn raw_get(setup: &Setup, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(setup.gateway.addr)
        .await
        .unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&response).into_owned()
}

#[test]
fn the_shipped_routes_compile_against_the_shipped_services() {
    let settings = gateway::settings::GatewaySettings::default();
    let config = Config::from_toml("").unwrap();
    assert!(!settings.routes.is_empty());
    let metrics = kit::telemetry::Metrics::new("gateway");
    gateway::open(&config, kit::clock::system(), &metrics).unwrap();
}

#[tokio::test]
async fn balancing_by_round_robin_and_by_the_verified_user() {
    let setup = setup().await;
    let mut turns = Vec::new();
    for _ in 0..4 {
        let echoed: Value = setup.get("/turns/x", None).await.json().await.unwrap();
        turns.push(echoed["upstream"].as_str().unwrap().to_owned());
    }
    assert_ne!(turns[0], turns[1], "{turns:?}");
    assert_eq!((&turns[0], &turns[1]), (&turns[2], &turns[3]), "{turns:?}");

    // The key is the gateway's own x-tessera-user, from the verified
    // token: a client cannot pick its instance by sending the header.
    let token = token(&["user"]);
    let first = setup.echoed("/sticky/x", &token).await["upstream"].clone();
    for i in 0..20 {
        let spoofed = setup
            .http
            .get(setup.gateway.url("/sticky/x"))
            .bearer_auth(&token)
            .header("x-tessera-user", format!("someone-{i}"))
            .send()
            .await
            .unwrap();
        let echoed: Value = spoofed.json().await.unwrap();
        assert_eq!(echoed["upstream"], first, "one user, one instance");
    }
}

#[tokio::test]
async fn rate_limits_count_per_client_ip_or_per_verified_user() {
    let setup = setup().await;
    for _ in 0..3 {
        assert_eq!(setup.get("/limited/ip/x", None).await.status(), 200);
    }
    let limited = setup.get("/limited/ip/x", None).await;
    assert_eq!(limited.headers()["retry-after"], "1");
    assert_problem(limited, 429, "rate_limited").await;

    let ada = token(&["user"]);
    let bo = token_of("01a210d3-f91f-76db-ba7d-000000000b0b", &["user"]);
    for _ in 0..2 {
        assert_eq!(setup.get("/limited/user/x", Some(&ada)).await.status(), 200);
    }
    assert_problem(
        setup.get("/limited/user/x", Some(&ada)).await,
        429,
        "rate_limited",
    )
    .await;
    assert_eq!(
        setup.get("/limited/user/x", Some(&bo)).await.status(),
        200,
        "another user, same IP: a limit of their own"
    );
}

#[tokio::test]
async fn cross_origin_requests_from_allowed_origins_only() {
    let setup = setup().await;
    let shop = "https://shop.example";
    let preflight = setup
        .http
        .request(
            reqwest::Method::OPTIONS,
            setup.gateway.url("/api/v1/users/me"),
        )
        .header("origin", shop)
        .header("access-control-request-method", "PATCH")
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), 204);
    let headers = preflight.headers();
    assert_eq!(headers["access-control-allow-origin"], shop);
    assert_eq!(headers["access-control-allow-methods"], "GET, PATCH");
    assert!(
        headers["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .contains("authorization")
    );
    assert_eq!(headers["access-control-max-age"], "600");
    assert_eq!(headers["vary"], "origin");
    let not_taken = setup
        .http
        .request(
            reqwest::Method::OPTIONS,
            setup.gateway.url("/api/v1/users/me"),
        )
        .header("origin", shop)
        .header("access-control-request-method", "DELETE")
        .send()
        .await
        .unwrap();
    assert_problem(not_taken, 405, "method_not_allowed").await;

    let get = setup
        .http
        .get(setup.gateway.url("/turns/x"))
        .header("origin", shop)
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 200);
    assert_eq!(get.headers()["access-control-allow-origin"], shop);
    assert!(
        get.headers()["access-control-expose-headers"]
            .to_str()
            .unwrap()
            .contains("etag")
    );
    let refused = setup
        .http
        .get(setup.gateway.url("/api/v1/users/me"))
        .header("origin", shop)
        .send()
        .await
        .unwrap();
    assert_eq!(
        refused.headers()["access-control-allow-origin"],
        shop,
        "a page can read the gateway's problems too"
    );
    assert_problem(refused, 401, "invalid_token").await;

    let evil = setup
        .http
        .get(setup.gateway.url("/turns/x"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(evil.headers().get("access-control-allow-origin").is_none());
    assert_problem(evil, 403, "forbidden").await;
    let no_origin = setup.get("/turns/x", None).await;
    assert!(
        no_origin
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
}

#[tokio::test]
async fn an_upstreams_headers_pass_on_but_those_the_gateway_sets() {
    let setup = setup().await;
    let shop = "https://shop.example";
    // The gateway's own HTTP/1.1 loop writes the instance's header lines as
    // they came; hyper (HTTP/2 here) writes a map made of them.
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    for (client, version) in [
        (&setup.http, reqwest::Version::HTTP_11),
        (&h2, reqwest::Version::HTTP_2),
    ] {
        for origin in [None, Some(shop)] {
            let mut request = client
                .get(setup.gateway.url("/turns/decorated"))
                .header("x-request-id", "ours");
            if let Some(origin) = origin {
                request = request.header("origin", origin);
            }
            let answer = request.send().await.unwrap();
            assert_eq!(answer.version(), version);
            let headers = answer.headers();
            let all = |name: &str| -> Vec<&str> {
                headers
                    .get_all(name)
                    .iter()
                    .map(|v| v.to_str().unwrap())
                    .collect()
            };
            assert_eq!(all("x-custom"), ["a", "b"], "{version:?} {origin:?}");
            assert_eq!(all("x-request-id"), ["ours"], "{version:?} {origin:?}");
            assert_eq!(all("traceparent").len(), 1, "{version:?} {origin:?}");
            let (vary, allowed): (&[&str], _) = match origin {
                None => (&["accept-encoding"], "*"),
                Some(origin) => (&["accept-encoding", "origin"], origin),
            };
            assert_eq!(all("vary"), vary, "{version:?} {origin:?}");
            assert_eq!(
                all("access-control-allow-origin"),
                [allowed],
                "{version:?} {origin:?}"
            );
            assert_eq!(answer.text().await.unwrap(), "decorated");
        }
    }
}

#[tokio::test]
async fn oversized_headers_are_refused_with_431() {
    let setup = setup().await;
    let big = "x".repeat(40 * 1024);
    let refused = setup
        .http
        .get(setup.gateway.url("/turns/x"))
        .header("x-big", big)
        .send()
        .await
        .unwrap();
    assert_problem(refused, 431, "headers_too_large").await;
    let fine = "x".repeat(8 * 1024);
    let taken = setup
        .http
        .get(setup.gateway.url("/turns/x"))
        .header("x-big", fine)
        .send()
        .await
        .unwrap();
    assert_eq!(taken.status(), 200);
}
