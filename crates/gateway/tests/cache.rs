//! The response cache through real HTTP, in memory and in Redis: a hit
//! does not reach the upstream, `If-None-Match` gets 304, one user's
//! answer never reaches another, and entries go by admin purge, by a write
//! through the route and by a domain event.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::Request;
use axum::routing::get;
use ed25519_dalek::SigningKey;
use kit::config::Config;
use kit::testing::TestServer;
use serde_json::{Value, json};

const KEY: [u8; 32] = [9; 32];
const ADA: &str = "0190a1b2-0000-7000-8000-00000000000a";
const BOB: &str = "0190a1b2-0000-7000-8000-00000000000b";

fn token(subject: &str) -> String {
    kit::testing::access_token(&SigningKey::from_bytes(&KEY), "k1", subject, &["user"])
}

/// The JWKS, and `/me` answering who asked and how many requests it has
/// had; PATCH counts too.
fn upstream(hits: Arc<AtomicUsize>) -> Router {
    let me = move |request: Request| {
        let hits = hits.clone();
        async move {
            let n = hits.fetch_add(1, Ordering::SeqCst) + 1;
            let user = request
                .headers()
                .get("x-tessera-user")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            let conditional = request.headers().contains_key("if-none-match");
            axum::Json(json!({"user": user, "n": n, "saw_if_none_match": conditional}))
        }
    };
    kit::testing::jwks_router(&SigningKey::from_bytes(&KEY), "k1")
        .route("/me", get(me.clone()).patch(me.clone()))
        .route(
            "/nostore",
            get(|| async { ([("cache-control", "no-store")], "{}") }),
        )
}

struct Setup {
    public: TestServer,
    admin: TestServer,
    gateway: Arc<gateway::Gateway>,
    hits: Arc<AtomicUsize>,
    route: String,
    http: reqwest::Client,
    _upstream: TestServer,
}

async fn setup(cache_section: &str) -> Setup {
    let hits = Arc::new(AtomicUsize::new(0));
    let upstream = TestServer::start(upstream(hits.clone())).await;
    // A name of its own, so that runs sharing one Redis never meet.
    let route = format!("me-{}", uuid::Uuid::new_v4().simple());
    let toml = format!(
        r#"
[log]
filter = "warn"
[auth]
jwks_url = "{jwks}"
{cache_section}
[gateway.services.up]
urls = ["{url}"]
[[gateway.routes]]
name = "{route}"
path = "/me"
methods = ["GET", "PATCH"]
service = "up"
cache = {{ ttl_ms = 60000, purge_on = ["users.user.updated.v1"] }}
[[gateway.routes]]
name = "nostore"
path = "/nostore"
service = "up"
auth = "none"
cache = {{ ttl_ms = 60000 }}
"#,
        jwks = upstream.url(kit::testing::JWKS_PATH),
        url = upstream.url(""),
    );
    let config = Config::from_toml(&toml).unwrap();
    let common = config.common().unwrap();
    let metrics = kit::telemetry::Metrics::new("gateway");
    let gateway = gateway::open(&config, kit::clock::system(), &metrics).unwrap();
    Setup {
        public: TestServer::start_with(|listener, stop| {
            gateway::serve_public(listener, gateway.clone(), metrics.clone(), stop)
        })
        .await,
        admin: TestServer::start(gateway::admin_router(gateway.clone(), &common, metrics)).await,
        gateway,
        hits,
        route,
        http: reqwest::Client::new(),
        _upstream: upstream,
    }
}

impl Setup {
    async fn me(&self, user: &str, headers: &[(&str, &str)]) -> reqwest::Response {
        let mut request = self
            .http
            .get(self.public.url("/me"))
            .bearer_auth(token(user));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().await.unwrap()
    }

    async fn body(&self, user: &str) -> Value {
        let response = self.me(user, &[]).await;
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

async fn hits_miss_304_and_per_user_keys(setup: &Setup) {
    let first = setup.me(ADA, &[]).await;
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["cache-status"], "tessera; fwd=miss; stored");
    let etag = first.headers()["etag"].to_str().unwrap().to_owned();
    let first: Value = first.json().await.unwrap();
    assert_eq!(first["user"], ADA);

    let again = setup.me(ADA, &[]).await;
    assert_eq!(again.headers()["cache-status"], "tessera; hit");
    assert!(again.headers().contains_key("age"));
    assert_eq!(again.headers()["etag"], etag.as_str());
    assert_eq!(again.json::<Value>().await.unwrap(), first);
    assert_eq!(setup.hits(), 1, "the hit did not reach the upstream");

    let unchanged = setup.me(ADA, &[("if-none-match", &etag)]).await;
    assert_eq!(unchanged.status(), 304);
    assert_eq!(unchanged.headers()["etag"], etag.as_str());
    assert_eq!(setup.hits(), 1);

    // Another user never gets Ada's answer.
    let bob = setup.body(BOB).await;
    assert_eq!(bob["user"], BOB);
    assert_eq!(setup.hits(), 2);
    assert_eq!(setup.body(ADA).await["user"], ADA);
    assert_eq!(setup.body(BOB).await["user"], BOB);
    assert_eq!(setup.hits(), 2);

    // no-cache goes to the upstream (without the client's conditions) and
    // refreshes the entry.
    let fresh = setup
        .me(
            ADA,
            &[("cache-control", "no-cache"), ("if-none-match", "\"x\"")],
        )
        .await;
    let fresh: Value = fresh.json().await.unwrap();
    assert_eq!(fresh["n"], 3);
    assert_eq!(fresh["saw_if_none_match"], false);
    assert_eq!(setup.body(ADA).await["n"], 3);
    assert_eq!(setup.hits(), 3);
}

async fn purges(setup: &Setup) {
    // By prefix, through the admin API: Ada's entries only.
    let purge = setup
        .http
        .delete(
            setup
                .admin
                .url(&format!("/admin/cache?prefix={}/{ADA}/", setup.route)),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(purge.status(), 200);
    assert_eq!(purge.json::<Value>().await.unwrap()["purged"], 1);
    let before = setup.hits();
    setup.body(ADA).await;
    assert_eq!(setup.hits(), before + 1, "Ada's entry was purged");
    setup.body(BOB).await;
    assert_eq!(setup.hits(), before + 1, "Bob's was not");

    // By a write through the route: the writer's entries.
    let patched = setup
        .http
        .patch(setup.public.url("/me"))
        .bearer_auth(token(ADA))
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), 200);
    let before = setup.hits();
    setup.body(ADA).await;
    assert_eq!(setup.hits(), before + 1, "the write purged Ada's entry");

    // By an event the route names: its subject's entries.
    let event = bus::CloudEvent::new("users", "users.user.updated.v1", BOB, json!({}), 0);
    gateway::cache::purge_for(&setup.gateway.snapshot(), &event)
        .await
        .unwrap();
    let before = setup.hits();
    setup.body(BOB).await;
    assert_eq!(setup.hits(), before + 1, "the event purged Bob's entry");
    setup.body(ADA).await;
    assert_eq!(setup.hits(), before + 1);

    let missing = setup
        .http
        .delete(setup.admin.url("/admin/cache"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 422);
}

#[tokio::test]
async fn in_memory() {
    let setup = setup("").await;
    hits_miss_304_and_per_user_keys(&setup).await;
    purges(&setup).await;
    let nostore = setup
        .http
        .get(setup.public.url("/nostore"))
        .send()
        .await
        .unwrap();
    assert_eq!(nostore.headers()["cache-status"], "tessera; fwd=miss");
}

#[tokio::test]
async fn in_redis() {
    let Some(url) = kit::testing::backend_url("TESSERA_TEST_REDIS_URL") else {
        return;
    };
    let setup = setup(&format!("[gateway.cache]\nredis_url = \"{url}\"")).await;
    hits_miss_304_and_per_user_keys(&setup).await;
    purges(&setup).await;
}

#[tokio::test]
async fn events_on_the_bus_purge_as_they_come() {
    let setup = setup("").await;
    let broker: bus::SharedBroker = Arc::new(bus::memory::MemoryBroker::new(
        kit::clock::system(),
        bus::broker::DeadLetterReport::default(),
    ));
    let _follower = gateway::cache::follow_events(setup.gateway.clone(), broker.clone(), false)
        .await
        .unwrap();
    setup.body(ADA).await;
    setup.body(ADA).await;
    assert_eq!(setup.hits(), 1);
    let event = bus::CloudEvent::new("users", "users.user.updated.v1", ADA, json!({}), 0);
    broker.publish(&[event]).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while setup.hits() == 1 {
        assert!(
            Instant::now() < deadline,
            "the event did not purge the entry"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        setup.body(ADA).await;
    }
}
