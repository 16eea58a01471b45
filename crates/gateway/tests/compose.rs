//! Composite routes through real HTTP: branches in parallel and in
//! sequence, a dead optional branch gives a partial answer, a dead or
//! refusing required branch the right problem, a slow branch its own
//! timeout, and overlapping branches are refused when the configuration
//! is loaded.

use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use kit::config::Config;
use kit::problem::{Code, Problem};
use kit::testing::TestServer;
use serde_json::{Value, json};

/// People and their teams, each answer after a millisecond; `/slow`
/// after 500 ms; `/missing` is a 404 problem.
fn upstream() -> Router {
    Router::new()
        .route(
            "/people/{id}",
            get(|Path(id): Path<String>| async move {
                tokio::time::sleep(Duration::from_millis(1)).await;
                axum::Json(json!({"id": id, "name": "Ada", "team": "t 1"}))
            }),
        )
        .route(
            "/teams/{id}",
            get(|Path(id): Path<String>| async move {
                tokio::time::sleep(Duration::from_millis(1)).await;
                axum::Json(json!({"team": id, "size": 3}))
            }),
        )
        .route(
            "/search",
            get(
                |axum::extract::RawQuery(q): axum::extract::RawQuery| async move {
                    axum::Json(json!({"query": q}))
                },
            ),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(500)).await;
                axum::Json(json!({"late": true}))
            }),
        )
        .route(
            "/missing",
            get(|| async {
                Problem::new(Code::NotFound)
                    .detail("no such person")
                    .into_response()
            }),
        )
        .route("/text", get(|| async { "not json" }))
}

struct Setup {
    gateway: TestServer,
    _upstream: TestServer,
}

const ROUTES: &str = r#"
[[gateway.routes]]
name = "mobile-people"
prefix = "/m/v1/"
rewrite = "/people/"
service = "people"
auth = "none"

[[gateway.routes]]
name = "overview"
path = "/overview/{id}"
auth = "none"
timeout_ms = 3000
[[gateway.routes.branches]]
name = "person"
service = "people"
path = "/people/{path.id}"
into = "/person"
[[gateway.routes.branches]]
name = "team"
service = "people"
path = "/teams/{branch.person/team}"
into = "/about/team"
required = false
[[gateway.routes.branches]]
name = "search"
service = "people"
path = "/search?q={query.q}&who={path.id}"
into = "/about/search"
select = "/query"
required = false
[[gateway.routes.branches]]
name = "extra"
service = "dead"
path = "/anything"
into = "/extra"
required = false
fallback = { none = true }

[[gateway.routes]]
name = "required-dead"
path = "/required-dead"
auth = "none"
[[gateway.routes.branches]]
name = "person"
service = "dead"
path = "/people/1"
into = "/person"

[[gateway.routes]]
name = "required-missing"
path = "/required-missing"
auth = "none"
[[gateway.routes.branches]]
name = "person"
service = "people"
path = "/missing"
into = "/person"
[[gateway.routes.branches]]
name = "team"
service = "people"
path = "/teams/1"
into = "/team"

[[gateway.routes]]
name = "not-json"
path = "/not-json"
auth = "none"
[[gateway.routes.branches]]
name = "text"
service = "people"
path = "/text"
into = "/text"

[[gateway.routes]]
name = "slow-optional"
path = "/slow-optional"
auth = "none"
timeout_ms = 5000
[[gateway.routes.branches]]
name = "fast"
service = "people"
path = "/people/2"
into = "/fast"
[[gateway.routes.branches]]
name = "slow"
service = "people"
path = "/slow"
into = "/slow"
required = false
timeout_ms = 100
retries = 0

[[gateway.routes]]
name = "slow-required"
path = "/slow-required"
auth = "none"
timeout_ms = 5000
[[gateway.routes.branches]]
name = "slow"
service = "people"
path = "/slow"
into = "/slow"
timeout_ms = 100
retries = 0
"#;

async fn setup() -> Setup {
    let upstream = TestServer::start(upstream()).await;
    let toml = format!(
        "[gateway.services.people]\nurls = [\"{people}\"]\n\
         [gateway.services.dead]\nurls = [\"http://127.0.0.1:{dead}\"]\n{ROUTES}",
        people = upstream.url(""),
        dead = kit::testing::free_port(),
    );
    let config = Config::from_toml(&toml).unwrap();
    let metrics = kit::telemetry::Metrics::new("gateway");
    let gateway = gateway::open(&config, kit::clock::system(), &metrics).unwrap();
    Setup {
        gateway: TestServer::start_with(|listener, stop| {
            gateway::serve_public(listener, gateway, metrics, stop)
        })
        .await,
        _upstream: upstream,
    }
}

async fn fetch(setup: &Setup, path: &str) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let response = reqwest::get(setup.gateway.url(path)).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    (status, headers, response.json().await.unwrap())
}

#[tokio::test]
async fn branches_merge_in_parallel_and_in_sequence_and_a_dead_optional_one_leaves_a_partial_answer()
 {
    let setup = setup().await;
    let (status, headers, body) = fetch(&setup, "/overview/a%20b?q=x%26y").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["person"],
        json!({"id": "a b", "name": "Ada", "team": "t 1"})
    );
    // The team branch used a field of the person branch's answer.
    assert_eq!(body["about"]["team"], json!({"team": "t 1", "size": 3}));
    // Path and query values reach the branch percent-encoded.
    assert_eq!(body["about"]["search"], json!("q=x%26y&who=a%20b"));
    assert_eq!(body["extra"], json!({"none": true}), "the fallback");
    assert_eq!(headers["x-tessera-partial"], "extra");
    let errors = body["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{body}");
    assert_eq!(errors[0]["branch"], "extra");
    assert_eq!(errors[0]["code"], "bad_gateway");
    assert_eq!(errors[0]["status"], 502);
}

#[tokio::test]
async fn a_failed_required_branch_is_the_answer() {
    let setup = setup().await;
    let (status, headers, body) = fetch(&setup, "/required-dead").await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(headers["content-type"], "application/problem+json");
    assert_eq!(body["code"], "bad_gateway");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .starts_with("branch person:"),
        "{body}"
    );

    let (status, _, body) = fetch(&setup, "/required-missing").await;
    assert_eq!(
        status, 404,
        "the upstream's refusal stays what it was: {body}"
    );
    assert_eq!(body["code"], "not_found");
    assert_eq!(body["detail"], "branch person: no such person");

    let (status, _, body) = fetch(&setup, "/not-json").await;
    assert_eq!(status, 502, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("not JSON"),
        "{body}"
    );
}

#[tokio::test]
async fn a_slow_branch_ends_at_its_own_timeout() {
    let setup = setup().await;
    let started = Instant::now();
    let (status, headers, body) = fetch(&setup, "/slow-optional").await;
    let took = started.elapsed();
    assert_eq!(status, 200, "{body}");
    assert!(took < Duration::from_millis(400), "took {took:?}");
    assert_eq!(body["fast"]["id"], "2");
    assert!(body.get("slow").is_none(), "{body}");
    assert_eq!(headers["x-tessera-partial"], "slow");
    assert_eq!(body["errors"][0]["code"], "upstream_timeout");

    let started = Instant::now();
    let (status, _, body) = fetch(&setup, "/slow-required").await;
    assert!(started.elapsed() < Duration::from_millis(400));
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["code"], "upstream_timeout");
}

#[tokio::test]
async fn a_client_route_set_reaches_the_same_service_under_its_own_prefix() {
    let setup = setup().await;
    let (status, _, body) = fetch(&setup, "/m/v1/7?x=1").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id"], "7");
}

#[tokio::test]
async fn a_composite_takes_get_only() {
    let setup = setup().await;
    let response = reqwest::Client::new()
        .post(setup.gateway.url("/overview/1"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
}

fn refusal(routes: &str) -> String {
    let toml = format!("[gateway.services.people]\nurls = [\"http://127.0.0.1:1\"]\n{routes}");
    let config = Config::from_toml(&toml).unwrap();
    let metrics = kit::telemetry::Metrics::new("gateway");
    match gateway::open(&config, kit::clock::system(), &metrics) {
        Ok(_) => panic!("accepted: {routes}"),
        Err(error) => error.to_string(),
    }
}

fn composite(branches: &str) -> String {
    format!(
        "[[gateway.routes]]\nname = \"c\"\npath = \"/c/{{id}}\"\nauth = \"none\"\ntimeout_ms = 1000\n{branches}"
    )
}

fn branch(name: &str, extra: &str) -> String {
    format!(
        "[[gateway.routes.branches]]\nname = \"{name}\"\nservice = \"people\"\npath = \"/p\"\ninto = \"/{name}\"\n{extra}\n"
    )
}

#[test]
fn bad_composites_are_refused_at_load_with_a_precise_message() {
    let collision = refusal(&composite(&format!(
        "{}{}",
        dedupe(&branch("a", "into = \"/x\"")),
        dedupe(&branch("b", "into = \"/x/y\""))
    )));
    assert!(
        collision.contains(r#"branches "a" and "b" both write "/x" and "/x/y""#),
        "{collision}"
    );
    let cases = [
        (
            branch("a", "into = \"\""),
            "must be a JSON pointer below the root",
        ),
        (
            branch("a", "into = \"/errors\""),
            "where a partial answer lists its errors",
        ),
        (
            branch("a", "path = \"/p/{user}\""),
            r#"{user} needs auth = "required""#,
        ),
        (branch("a", "path = \"/p/{path.nope}\""), "has no {nope}"),
        (
            branch("a", "service = \"nope\""),
            r#"no service named "nope""#,
        ),
        (
            branch("a", "timeout_ms = 2000"),
            "timeout_ms must be in 1..=1000",
        ),
        (
            branch("a", "fallback = 1"),
            "only an optional branch has a fallback",
        ),
        (
            branch("a", "path = \"/p/{branch.a/id}\""),
            "cannot use its own answer",
        ),
    ];
    for (branches, expected) in cases {
        // A key given twice in one table is a TOML error: the cases that
        // change `into`, `path` or `service` replace the default line.
        let branches = dedupe(&branches);
        let error = refusal(&composite(&branches));
        assert!(error.contains(expected), "{expected}: {error}");
        assert!(error.contains("route \"c\""), "{error}");
    }
    let cycle = refusal(&composite(&format!(
        "{}{}",
        dedupe(&branch("a", "path = \"/p/{branch.b/id}\"")),
        dedupe(&branch("b", "path = \"/p/{branch.a/id}\""))
    )));
    assert!(cycle.contains("depends on itself"), "{cycle}");
    let both = refusal(
        &composite(&branch("a", ""))
            .replace("auth = \"none\"", "auth = \"none\"\nservice = \"people\""),
    );
    assert!(
        both.contains("give exactly one of service, branches and events"),
        "{both}"
    );
    let post = refusal(
        &composite(&branch("a", ""))
            .replace("auth = \"none\"", "auth = \"none\"\nmethods = [\"POST\"]"),
    );
    assert!(post.contains("answers GET only"), "{post}");
    let rewrite = refusal(
        "[[gateway.routes]]\nname = \"c\"\npath = \"/c\"\nrewrite = \"/x/\"\nservice = \"people\"\n",
    );
    assert!(rewrite.contains("rewrite needs a prefix"), "{rewrite}");
}

/// The branch table with each key's last line only.
fn dedupe(table: &str) -> String {
    let lines: Vec<&str> = table.lines().collect();
    let key = |line: &str| line.split('=').next().unwrap_or("").trim().to_owned();
    lines
        .iter()
        .enumerate()
        .filter(|(i, line)| {
            !line.contains('=') || !lines[i + 1..].iter().any(|later| key(later) == key(line))
        })
        .map(|(_, line)| *line)
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}
