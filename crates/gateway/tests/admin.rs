//! The admin API, reloads and discovery through real HTTP: a gateway read
//! from a file that the test rewrites, upstreams that say who they are,
//! instances joining by registration and by DNS.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use kit::config::Config;
use kit::testing::{TestServer, assert_problem};
use serde_json::{Value, json};

const ADMIN_TOKEN: &str = "s3cret-admin";

/// An upstream that answers every path with its name.
fn named(name: &'static str) -> Router {
    Router::new().fallback(move || async move { name })
}

struct Setup {
    public: TestServer,
    admin: TestServer,
    gateway: Arc<gateway::Gateway>,
    file: std::path::PathBuf,
    _dir: tempfile::TempDir,
    _background: tokio::task::JoinHandle<()>,
    http: reqwest::Client,
}

/// The configuration file: service `a` at `a_url`, `dyn` with no
/// instance of its own (they register), and `extra` routes.
fn write_config(file: &Path, a_url: &str, extra: &str) {
    let text = format!(
        r#"
[log]
filter = "warn"
[gateway]
admin_token = "{ADMIN_TOKEN}"
[gateway.services.a]
urls = ["{a_url}"]
[gateway.services.dyn]
[[gateway.routes]]
name = "a"
prefix = "/a/"
service = "a"
auth = "none"
[[gateway.routes]]
name = "dyn"
prefix = "/dyn/"
service = "dyn"
auth = "none"
{extra}
"#
    );
    // Written beside, then renamed: the gateway never reads half a file.
    let next = file.with_extension("next");
    std::fs::write(&next, text).unwrap();
    std::fs::rename(&next, file).unwrap();
}

async fn setup(a_url: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tessera.toml");
    write_config(&file, a_url, "");
    let config = Config::load(Some(&file)).unwrap();
    let common = config.common().unwrap();
    let metrics = kit::telemetry::Metrics::new("gateway");
    let gateway = gateway::open(&config, kit::clock::system(), &metrics).unwrap();
    let background = gateway.start_background();
    Setup {
        public: TestServer::start_with(|listener, stop| {
            gateway::serve_public(listener, gateway.clone(), metrics.clone(), stop)
        })
        .await,
        admin: TestServer::start(gateway::admin_router(gateway.clone(), &common, metrics)).await,
        gateway,
        file,
        _dir: dir,
        _background: background,
        http: reqwest::Client::new(),
    }
}

impl Setup {
    async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> reqwest::Response {
        let mut request = self
            .http
            .request(method, self.admin.url(path))
            .bearer_auth(ADMIN_TOKEN);
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await.unwrap()
    }

    async fn version(&self) -> u64 {
        let config: Value = self
            .admin(reqwest::Method::GET, "/admin/config", None)
            .await
            .json()
            .await
            .unwrap();
        config["version"].as_u64().unwrap()
    }

    async fn status(&self, path: &str) -> u16 {
        self.http
            .get(self.public.url(path))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    /// Waits up to `within` for `path` to answer `status`.
    async fn until_status(&self, path: &str, status: u16, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let now = self.status(path).await;
            if now == status {
                return;
            }
            assert!(Instant::now() < deadline, "{path}: {now}, not {status}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn route_b(timeout_ms: u64) -> String {
    format!(
        "[[gateway.routes]]\nname = \"b\"\nprefix = \"/b/\"\nservice = \"a\"\nauth = \"none\"\ntimeout_ms = {timeout_ms}\n"
    )
}

#[tokio::test]
async fn reloads_under_load_drop_nothing_and_a_bad_config_keeps_the_old_one() {
    let upstream = TestServer::start(named("a")).await;
    let setup = Arc::new(setup(&upstream.url("")).await);
    assert_eq!(setup.version().await, 1);

    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load: Vec<_> = (0..8)
        .map(|_| {
            let (setup, stop) = (setup.clone(), stop.clone());
            let (sent, failed) = (sent.clone(), failed.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let status = setup.status("/a/load").await;
                    sent.fetch_add(1, Ordering::Relaxed);
                    if status != 200 {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();

    // Ten reloads by the admin API, route b coming and going.
    for round in 1..=10u64 {
        let extra = if round % 2 == 1 {
            route_b(1000 + round)
        } else {
            String::new()
        };
        write_config(&setup.file, &upstream.url(""), &extra);
        let reloaded: Value = setup
            .admin(reqwest::Method::POST, "/admin/reload", None)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(reloaded, json!({"version": round + 1, "changed": true}));
        let expected = if round % 2 == 1 { 200 } else { 404 };
        assert_eq!(setup.status("/b/x").await, expected, "round {round}");
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let unchanged: Value = setup
        .admin(reqwest::Method::POST, "/admin/reload", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(unchanged, json!({"version": 11, "changed": false}));

    // A route the gateway cannot take: refused, named, the old one stays.
    let bad =
        "[[gateway.routes]]\nname = \"bad\"\nprefix = \"/bad/\"\nservice = \"a\"\ntimeout_ms = 0\n";
    write_config(&setup.file, &upstream.url(""), bad);
    let refused = setup
        .admin(reqwest::Method::POST, "/admin/reload", None)
        .await;
    let problem = assert_problem(refused, 422, "validation_failed").await;
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains(r#"route "bad": timeout_ms must be > 0"#),
        "{detail}"
    );
    let unknown_key = "[gateway.services.a.nope]\n";
    write_config(&setup.file, &upstream.url(""), unknown_key);
    let refused = setup
        .admin(reqwest::Method::POST, "/admin/reload", None)
        .await;
    let problem = assert_problem(refused, 422, "validation_failed").await;
    assert!(
        problem["detail"].as_str().unwrap().contains("nope"),
        "{problem}"
    );
    assert_eq!(setup.version().await, 11);
    assert_eq!(setup.status("/a/x").await, 200);

    // A change to the file is picked up on its own.
    write_config(&setup.file, &upstream.url(""), &route_b(3000));
    let deadline = Instant::now() + Duration::from_secs(5);
    while setup.version().await == 11 {
        assert!(
            Instant::now() < deadline,
            "the file change was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(setup.status("/b/x").await, 200);

    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    let (sent, failed) = (sent.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert!(sent > 100, "only {sent} requests under load");
    assert_eq!(failed, 0, "{failed} of {sent} failed during reloads");
}

#[tokio::test]
async fn instances_join_by_registration_and_leave_by_deregistration_or_expiry() {
    let a = TestServer::start(named("a")).await;
    let one = TestServer::start(named("one")).await;
    let setup = setup(&a.url("")).await;
    let none = setup
        .http
        .get(setup.public.url("/dyn/x"))
        .send()
        .await
        .unwrap();
    assert_problem(none, 503, "unavailable").await;

    // The admin API wants its token.
    let anonymous = setup
        .http
        .get(setup.admin.url("/admin/registry"))
        .send()
        .await
        .unwrap();
    assert_problem(anonymous, 401, "invalid_token").await;
    let health = setup
        .http
        .get(setup.admin.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200, "health needs no token");

    let registered = setup
        .admin(
            reqwest::Method::PUT,
            "/admin/registry/dyn/one",
            Some(json!({"url": one.url(""), "ttl_ms": 60_000})),
        )
        .await;
    assert_eq!(registered.status(), 200);
    setup
        .until_status("/dyn/x", 200, Duration::from_secs(3))
        .await;
    let body = setup
        .http
        .get(setup.public.url("/dyn/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(body.text().await.unwrap(), "one");
    let upstreams: Value = setup
        .admin(reqwest::Method::GET, "/admin/upstreams", None)
        .await
        .json()
        .await
        .unwrap();
    let dyn_service = upstreams["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "dyn")
        .unwrap();
    assert_eq!(dyn_service["breaker"], "closed");
    assert_eq!(dyn_service["instances"][0]["url"], one.url(""));
    assert_eq!(dyn_service["instances"][0]["healthy"], true);

    let gone = setup
        .admin(reqwest::Method::DELETE, "/admin/registry/dyn/one", None)
        .await;
    assert_eq!(gone.status(), 204);
    setup
        .until_status("/dyn/x", 503, Duration::from_secs(3))
        .await;
    let again = setup
        .admin(reqwest::Method::DELETE, "/admin/registry/dyn/one", None)
        .await;
    assert_problem(again, 404, "not_found").await;

    // No heartbeat: the registration runs out.
    let short = json!({"url": one.url(""), "ttl_ms": 1_000});
    setup
        .admin(
            reqwest::Method::PUT,
            "/admin/registry/dyn/brief",
            Some(short),
        )
        .await;
    setup
        .until_status("/dyn/x", 200, Duration::from_secs(3))
        .await;
    setup
        .until_status("/dyn/x", 503, Duration::from_secs(4))
        .await;
    assert!(setup.gateway.registry.list(Instant::now()).is_empty());

    for (path, body, status, code) in [
        (
            "/admin/registry/nope/x",
            json!({"url": one.url("")}),
            404,
            "not_found",
        ),
        (
            "/admin/registry/dyn/x",
            json!({"url": "ftp://h:1"}),
            422,
            "validation_failed",
        ),
        (
            "/admin/registry/dyn/x",
            json!({"url": one.url(""), "ttl_ms": 10}),
            422,
            "validation_failed",
        ),
        (
            "/admin/registry/dyn/a%20b",
            json!({"url": one.url("")}),
            422,
            "validation_failed",
        ),
        (
            "/admin/registry/dyn/x",
            json!({"url": one.url(""), "extra": 1}),
            422,
            "validation_failed",
        ),
    ] {
        let refused = setup.admin(reqwest::Method::PUT, path, Some(body)).await;
        assert_problem(refused, status, code).await;
    }

    // The public port knows nothing of the admin API.
    let hidden = setup
        .http
        .get(setup.public.url("/admin/config"))
        .send()
        .await
        .unwrap();
    assert_eq!(hidden.status(), 404);
}

#[tokio::test]
async fn instances_come_from_dns_and_follow_it() {
    let a = TestServer::start(named("a")).await;
    let resolved = TestServer::start(named("resolved")).await;
    let setup = setup(&a.url("")).await;
    let port = resolved.addr.port();
    let by_dns = format!(
        "[gateway.services.by-dns]\ndns = \"localhost:{port}\"\ndns_interval_ms = 200\n[[gateway.routes]]\nname = \"by-dns\"\nprefix = \"/by-dns/\"\nservice = \"by-dns\"\nauth = \"none\"\n"
    );
    write_config(&setup.file, &a.url(""), &by_dns);
    let reloaded = setup
        .admin(reqwest::Method::POST, "/admin/reload", None)
        .await;
    assert_eq!(reloaded.status(), 200);
    setup
        .until_status("/by-dns/x", 200, Duration::from_secs(5))
        .await;
    let snapshot = setup.gateway.snapshot();
    let members = snapshot.services["by-dns"].members();
    let urls: Vec<&str> = members.instances.iter().map(|i| i.base.as_str()).collect();
    assert!(urls.contains(&resolved.url("").as_str()), "{urls:?}");
}
