//! Event streams through real HTTP: a caller receives their own events,
//! never another's, and a stream resumed with `Last-Event-ID` misses
//! nothing: from the gateway's feed, or from the bus itself when the feed
//! no longer holds the place.

use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use kit::config::Config;
use kit::testing::TestServer;
use serde_json::{Value, json};

const KEY: [u8; 32] = [5; 32];
const ADA: &str = "0190a1b2-0000-7000-8000-0000000000aa";
const BOB: &str = "0190a1b2-0000-7000-8000-0000000000bb";
const WAIT: Duration = Duration::from_secs(5);

struct Setup {
    public: TestServer,
    gateway: Arc<gateway::Gateway>,
    broker: bus::SharedBroker,
    _keys: TestServer,
}

async fn setup() -> Setup {
    let keys = TestServer::start(kit::testing::jwks_router(
        &SigningKey::from_bytes(&KEY),
        "k1",
    ))
    .await;
    let toml = format!(
        r#"
[auth]
jwks_url = "{jwks}"
[gateway.services.none]
urls = []
[[gateway.routes]]
name = "me-events"
path = "/me/events"
auth = "required"
events = ["users.*"]
"#,
        jwks = keys.url(kit::testing::JWKS_PATH),
    );
    let config = Config::from_toml(&toml).unwrap();
    let metrics = kit::telemetry::Metrics::new("gateway");
    let gateway = gateway::open(&config, kit::clock::system(), &metrics).unwrap();
    let broker: bus::SharedBroker = Arc::new(bus::memory::MemoryBroker::new(
        kit::clock::system(),
        bus::broker::DeadLetterReport::default(),
    ));
    Setup {
        public: TestServer::start_with(|listener, stop| {
            gateway::serve_public(listener, gateway.clone(), metrics, stop)
        })
        .await,
        gateway,
        broker,
        _keys: keys,
    }
}

impl Setup {
    async fn publish(&self, event_type: &str, subject: &str, n: u64) {
        let event = bus::CloudEvent::new("users", event_type, subject, json!({"n": n}), 0);
        self.broker.publish(&[event]).await.unwrap();
    }

    async fn open(&self, user: &str, last_event_id: Option<&str>) -> Stream {
        let token =
            kit::testing::access_token(&SigningKey::from_bytes(&KEY), "k1", user, &["user"]);
        let mut request = reqwest::Client::new()
            .get(self.public.url("/me/events"))
            .bearer_auth(token);
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        let mut stream = Stream {
            response,
            buffer: String::new(),
            last_id: None,
        };
        // The first lines say where the stream stands.
        stream.frame().await;
        assert!(stream.last_id.is_some());
        stream
    }
}

struct Stream {
    response: reqwest::Response,
    buffer: String,
    last_id: Option<String>,
}

impl Stream {
    /// The next frame's `data`, if it had any; its `id` kept.
    async fn frame(&mut self) -> Option<Value> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let frame: String = self.buffer.drain(..end + 2).collect();
                let mut data = None;
                for line in frame.lines() {
                    if let Some(id) = line.strip_prefix("id: ") {
                        self.last_id = Some(id.to_owned());
                    }
                    if let Some(json) = line.strip_prefix("data: ") {
                        data = Some(serde_json::from_str(json).unwrap());
                    }
                }
                return data;
            }
            let chunk = tokio::time::timeout(WAIT, self.response.chunk())
                .await
                .expect("a frame within the wait")
                .unwrap()
                .expect("the stream goes on");
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// The `n` of the next event (keepalives passed over).
    async fn next_n(&mut self) -> u64 {
        loop {
            if let Some(event) = self.frame().await {
                return event["data"]["n"].as_u64().unwrap();
            }
        }
    }
}

#[tokio::test]
async fn a_caller_gets_their_own_events_and_resumes_without_gaps() {
    let setup = setup().await;
    let _follow = setup
        .gateway
        .follow_bus(setup.broker.clone(), false)
        .await
        .unwrap();
    let mut ada = setup.open(ADA, None).await;
    let mut bob = setup.open(BOB, None).await;
    setup.publish("users.user.updated.v1", BOB, 1).await;
    setup.publish("identity.user.deleted.v1", ADA, 2).await;
    setup.publish("users.user.updated.v1", ADA, 3).await;
    assert_eq!(
        ada.next_n().await,
        3,
        "not Bob's, not a type the route takes"
    );
    assert_eq!(bob.next_n().await, 1);

    // Ada goes away; what happens meanwhile is there when she comes back.
    let resume = ada.last_id.clone().unwrap();
    drop(ada);
    setup.publish("users.user.updated.v1", ADA, 4).await;
    setup.publish("users.user.updated.v1", BOB, 5).await;
    setup.publish("users.user.erased.v1", ADA, 6).await;
    let mut ada = setup.open(ADA, Some(&resume)).await;
    assert_eq!(ada.next_n().await, 4);
    assert_eq!(ada.next_n().await, 6);
    assert_eq!(bob.next_n().await, 5, "Bob never got Ada's");
}

#[tokio::test]
async fn a_place_the_feed_no_longer_holds_is_read_from_the_bus() {
    let setup = setup().await;
    // Before the gateway followed the bus: not in its feed.
    setup.publish("users.user.updated.v1", ADA, 1).await;
    setup.publish("users.user.updated.v1", BOB, 2).await;
    let _follow = setup
        .gateway
        .follow_bus(setup.broker.clone(), false)
        .await
        .unwrap();
    setup.publish("users.user.updated.v1", ADA, 3).await;
    let mut ada = setup.open(ADA, Some("log:0")).await;
    assert_eq!(ada.next_n().await, 1);
    assert_eq!(ada.next_n().await, 3);
}

#[tokio::test]
async fn refusals() {
    let setup = setup().await;
    let http = reqwest::Client::new();
    let anonymous = http
        .get(setup.public.url("/me/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    let token = kit::testing::access_token(&SigningKey::from_bytes(&KEY), "k1", ADA, &["user"]);
    let not_followed = http
        .get(setup.public.url("/me/events"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(not_followed.status(), 503, "the bus is not followed yet");
    let _follow = setup
        .gateway
        .follow_bus(setup.broker.clone(), false)
        .await
        .unwrap();
    let forged = http
        .get(setup.public.url("/me/events"))
        .bearer_auth(&token)
        .header("last-event-id", "<script>")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 400);
}
