//! The public port's server: TLS with HTTP/2 or HTTP/1.1 by ALPN, h2c by
//! prior knowledge, a bound on slow request heads, a drain on shutdown.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::Request;
use axum::extract::ws::WebSocketUpgrade;
use axum::routing::{get, post};
use futures_util::{SinkExt, StreamExt};
use gateway::h1::Timeouts;
use gateway::server::{Serving, TlsSettings};
use kit::config::Config;
use kit::testing::TestServer;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

/// Requests `/slow` has received.
static SLOW_STARTED: AtomicUsize = AtomicUsize::new(0);
/// Requests `/hold` has received, and those of them dropped unanswered.
static HOLD_STARTED: AtomicUsize = AtomicUsize::new(0);
static HOLD_DROPPED: AtomicUsize = AtomicUsize::new(0);

/// Counts a `/hold` request dropped before its answer.
struct Held;

impl Drop for Held {
    fn drop(&mut self) {
        HOLD_DROPPED.fetch_add(1, Ordering::SeqCst);
    }
}

/// Answers with the request's `x-forwarded-proto`; `/slow` after 500 ms;
/// `/ws` echoes WebSocket messages; `/echo` echoes a POST's body;
/// `/stream` sends `first`, and `second` 300 ms later; `/later` answers
/// after 300 ms, `/hold` after a minute, counting its requests and those
/// dropped before.
fn upstream() -> Router {
    Router::new()
        .route(
            "/api/later",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                "later"
            }),
        )
        .route(
            "/api/hold",
            get(|| async {
                HOLD_STARTED.fetch_add(1, Ordering::SeqCst);
                let held = Held;
                tokio::time::sleep(Duration::from_secs(60)).await;
                std::mem::forget(held);
                "late"
            }),
        )
        .route("/api/echo", post(|body: String| async move { body }))
        .route(
            "/api/stream",
            get(|| async {
                let chunks =
                    futures_util::stream::iter(["first", "second"]).then(|chunk| async move {
                        if chunk == "second" {
                            tokio::time::sleep(Duration::from_millis(300)).await;
                        }
                        Ok::<_, std::convert::Infallible>(chunk)
                    });
                axum::body::Body::from_stream(chunks)
            }),
        )
        .route(
            "/api/ws",
            get(|upgrade: WebSocketUpgrade| async move {
                upgrade.on_upgrade(|mut socket| async move {
                    while let Some(Ok(message)) = socket.recv().await {
                        if socket.send(message).await.is_err() {
                            break;
                        }
                    }
                })
            }),
        )
        .route(
            "/api/slow",
            get(|| async {
                SLOW_STARTED.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(500)).await;
                "late"
            }),
        )
        .fallback(|request: Request| async move {
            let proto = request.headers().get("x-forwarded-proto").cloned();
            axum::Json(json!({ "proto": proto.and_then(|p| p.to_str().ok().map(String::from)) }))
        })
}

/// Long enough for no test to meet them but those about them.
const TIMEOUTS: Timeouts = Timeouts {
    idle: Duration::from_secs(60),
    header_read: Duration::from_secs(10),
};

struct Running {
    addr: std::net::SocketAddr,
    metrics: kit::telemetry::Metrics,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    served: tokio::task::JoinHandle<std::io::Result<()>>,
    _upstream: TestServer,
}

async fn start(tls: Option<TlsSettings>, timeouts: Timeouts) -> Running {
    let upstream = TestServer::start(upstream()).await;
    let toml = format!(
        "[log]\nfilter = \"error\"\n[gateway.services.up]\nurls = [\"{}\"]\n[[gateway.routes]]\nname = \"api\"\nprefix = \"/api/\"\nservice = \"up\"\nauth = \"none\"\n[[gateway.routes]]\nname = \"private\"\nprefix = \"/private/\"\nservice = \"up\"\n",
        upstream.url("")
    );
    let config = Config::from_toml(&toml).unwrap();
    let metrics = kit::telemetry::Metrics::new("gateway");
    let opened = gateway::open(&config, kit::clock::system(), &metrics).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let serving = Serving {
        tls: tls.map(|t| gateway::server::tls_acceptor(&t).unwrap()),
        timeouts,
        grace: Duration::from_secs(5),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(gateway::server::serve(
        listener,
        gateway::public_service(opened, metrics.clone()),
        serving,
        async {
            let _ = stopped.await;
        },
    ));
    Running {
        addr,
        metrics,
        stop: Some(stop),
        served,
        _upstream: upstream,
    }
}

/// A certificate for `localhost`, written where the gateway reads it.
fn certificate(dir: &std::path::Path) -> (TlsSettings, reqwest::Certificate) {
    let issued = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, issued.cert.pem()).unwrap();
    std::fs::write(&key_path, issued.key_pair.serialize_pem()).unwrap();
    let trusted = reqwest::Certificate::from_pem(issued.cert.pem().as_bytes()).unwrap();
    (
        TlsSettings {
            cert_path,
            key_path,
        },
        trusted,
    )
}

#[tokio::test]
async fn tls_offers_http2_and_http1_and_says_https_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let (settings, trusted) = certificate(dir.path());
    let running = start(Some(settings), TIMEOUTS).await;
    let url = format!("https://localhost:{}/api/x", running.addr.port());
    for (http1_only, version) in [
        (false, http::Version::HTTP_2),
        (true, http::Version::HTTP_11),
    ] {
        let mut client = reqwest::Client::builder()
            .use_rustls_tls()
            .add_root_certificate(trusted.clone())
            .resolve("localhost", running.addr);
        if http1_only {
            client = client.http1_only();
        }
        let answer = client.build().unwrap().get(&url).send().await.unwrap();
        assert_eq!(answer.status(), 200);
        assert_eq!(answer.version(), version);
        let body: Value = answer.json().await.unwrap();
        assert_eq!(body["proto"], "https");
    }
    let plain = reqwest::get(format!("http://{}/api/x", running.addr)).await;
    assert!(plain.is_err(), "no plain HTTP on a TLS port");

    let dir = tempfile::tempdir().unwrap();
    let missing = TlsSettings {
        cert_path: dir.path().join("nope.pem"),
        key_path: dir.path().join("nope.key"),
    };
    let refused = gateway::server::tls_acceptor(&missing).err().unwrap();
    assert!(refused.contains("tls.cert_path"), "{refused}");
}

#[tokio::test]
async fn plain_http_takes_h2c_by_prior_knowledge() {
    let running = start(None, TIMEOUTS).await;
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let answer = client
        .get(format!("http://{}/api/x", running.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.version(), http::Version::HTTP_2);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["proto"], "http");
}

#[tokio::test]
async fn a_head_too_slow_to_arrive_loses_its_connection() {
    let running = start(
        None,
        Timeouts {
            header_read: Duration::from_millis(300),
            ..TIMEOUTS
        },
    )
    .await;
    let mut slow = tokio::net::TcpStream::connect(running.addr).await.unwrap();
    slow.write_all(b"GET /api/x HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the connection stayed open");
    assert!(started.elapsed() < Duration::from_secs(2));
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
}

#[tokio::test]
async fn a_connection_idle_past_the_idle_timeout_is_closed() {
    let running = start(
        None,
        Timeouts {
            idle: Duration::from_millis(300),
            ..TIMEOUTS
        },
    )
    .await;
    let closed_within = |mut stream: tokio::net::TcpStream| async move {
        let started = Instant::now();
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest));
        assert!(read.await.is_ok(), "the connection stayed open");
        (started.elapsed(), rest)
    };
    // Connected, never a byte.
    let silent = tokio::net::TcpStream::connect(running.addr).await.unwrap();
    let (waited, rest) = closed_within(silent).await;
    assert!(rest.is_empty());
    assert!(
        waited >= Duration::from_millis(250),
        "closed after {waited:?}"
    );
    // One request answered, then nothing: the wait starts again after it.
    let mut quiet = tokio::net::TcpStream::connect(running.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    quiet
        .write_all(b"GET /api/x HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (waited, answer) = closed_within(quiet).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        waited >= Duration::from_millis(250),
        "closed after {waited:?}"
    );
    assert!(waited < Duration::from_secs(2), "closed after {waited:?}");
}

#[tokio::test]
async fn shutdown_lets_requests_under_way_finish() {
    let mut running = start(None, TIMEOUTS).await;
    let url = format!("http://{}/api/slow", running.addr);
    let under_way = tokio::spawn(async move { reqwest::get(url).await.unwrap() });
    // Once the request is under way upstream (a drain closes a connection
    // that has not sent one yet).
    until_counted(&SLOW_STARTED, 1, "the request upstream").await;
    running.stop.take().unwrap().send(()).unwrap();
    let answer = under_way.await.unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.text().await.unwrap(), "late");
    running.served.await.unwrap().unwrap();
    let after = reqwest::get(format!("http://{}/api/x", running.addr)).await;
    assert!(after.is_err(), "the port is closed");
}

#[tokio::test]
async fn shutdown_closes_idle_keep_alive_connections_at_once() {
    let mut running = start(None, TIMEOUTS).await;
    let mut stream = tokio::net::TcpStream::connect(running.addr).await.unwrap();
    stream
        .write_all(b"GET /api/x HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = vec![0; 4096];
    let n = stream.read(&mut answer).await.unwrap();
    assert!(answer[..n].starts_with(b"HTTP/1.1 200 OK\r\n"));
    // The connection waits for its next request when the drain begins: it
    // is closed then, not when the grace (5 s) runs out.
    let began = Instant::now();
    running.stop.take().unwrap().send(()).unwrap();
    let rest = read_all(&mut stream).await;
    assert!(rest.is_empty(), "{rest}");
    running.served.await.unwrap().unwrap();
    assert!(
        began.elapsed() < Duration::from_secs(2),
        "{:?}",
        began.elapsed()
    );
}

/// Waits until `count` reaches `expected`, for at most five seconds.
async fn until_counted(count: &AtomicUsize, expected: usize, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while count.load(Ordering::SeqCst) < expected {
        assert!(Instant::now() < deadline, "{what}: never came");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_client_that_leaves_drops_its_request_upstream_and_counts_499() {
    let running = start(None, TIMEOUTS).await;
    let url = format!("http://{}/api/hold", running.addr);
    // Over HTTP/1.1, in the gateway's own loop: the client closes its
    // connection while the upstream holds the answer.
    let mut stream = tokio::net::TcpStream::connect(running.addr).await.unwrap();
    stream
        .write_all(b"GET /api/hold HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    until_counted(&HOLD_STARTED, 1, "the request upstream").await;
    drop(stream);
    until_counted(&HOLD_DROPPED, 1, "the upstream exchange dropped").await;
    // Over HTTP/2, in hyper: the client resets its stream.
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let asked = tokio::spawn(async move { client.get(url).send().await });
    until_counted(&HOLD_STARTED, 2, "the second request upstream").await;
    asked.abort();
    until_counted(&HOLD_DROPPED, 2, "the second upstream exchange dropped").await;
    // Neither is in flight any more; both are counted as the client's,
    // under the route they had taken.
    assert_eq!(running.metrics.in_flight.get(), 0);
    let counted = running.metrics.encode();
    assert!(
        counted.contains(
            r#"tessera_http_requests_total{role="gateway",method="GET",route="api",status="499"} 2"#
        ),
        "{counted}"
    );
}

#[tokio::test]
async fn a_request_pipelined_while_one_is_answered_is_kept_for_its_turn() {
    let running = start(None, TIMEOUTS).await;
    let mut stream = tokio::net::TcpStream::connect(running.addr).await.unwrap();
    stream
        .write_all(b"GET /api/later HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // The second request arrives while the first is being answered: the
    // loop, reading to see whether the client left, keeps it.
    tokio::time::sleep(Duration::from_millis(100)).await;
    stream
        .write_all(b"GET /api/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let answers = read_all(&mut stream).await;
    let later = answers.find("later").expect(&answers);
    let proto = answers.find("\"proto\":\"http\"").expect(&answers);
    assert!(later < proto, "{answers}");
    assert_eq!(
        answers.matches("HTTP/1.1 200 OK\r\n").count(),
        2,
        "{answers}"
    );
}

#[tokio::test]
async fn websockets_pass_through_after_the_gateway_checks_them() {
    let running = start(None, TIMEOUTS).await;
    let (mut socket, handshake) =
        tokio_tungstenite::connect_async(format!("ws://{}/api/ws", running.addr))
            .await
            .unwrap();
    assert_eq!(handshake.status(), 101);
    for text in ["hello", "through the gateway"] {
        socket.send(Message::text(text)).await.unwrap();
        let echoed = socket.next().await.unwrap().unwrap();
        assert_eq!(echoed, Message::text(text));
    }
    socket.send(Message::binary(vec![0u8, 1, 2])).await.unwrap();
    assert_eq!(
        socket.next().await.unwrap().unwrap(),
        Message::binary(vec![0u8, 1, 2])
    );
    socket.close(None).await.unwrap();

    // A route that wants a token refuses the handshake without one.
    let refused = tokio_tungstenite::connect_async(format!("ws://{}/private/ws", running.addr))
        .await
        .err()
        .unwrap();
    match refused {
        tokio_tungstenite::tungstenite::Error::Http(response) => {
            assert_eq!(response.status(), 401)
        }
        other => panic!("{other}"),
    }
}

/// Reads answers off `stream` until it closes: each one's head and body.
async fn read_all(stream: &mut tokio::net::TcpStream) -> String {
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the connection stayed open");
    String::from_utf8(answer).unwrap()
}

#[tokio::test]
async fn one_connection_carries_plain_requests_a_body_and_a_close() {
    let running = start(None, TIMEOUTS).await;
    let mut stream = tokio::net::TcpStream::connect(running.addr).await.unwrap();
    // Sent at once: the gateway's own loop answers the GETs and the HEAD,
    // hands the connection to hyper at the POST, which answers the rest.
    stream
        .write_all(
            b"GET /api/x HTTP/1.1\r\nHost: x\r\n\r\n\
              HEAD /api/x HTTP/1.1\r\nHost: x\r\n\r\n\
              GET /api/x HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n\
              POST /api/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
              GET /api/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
    let answers = read_all(&mut stream).await;
    let heads: Vec<&str> = answers.matches("HTTP/1.1 200 OK\r\n").collect();
    assert_eq!(heads.len(), 5, "{answers}");
    let proto = r#"{"proto":"http"}"#;
    assert_eq!(
        answers.matches(proto).count(),
        3,
        "HEAD has no body: {answers}"
    );
    assert!(answers.contains("\r\n\r\nhello"), "{answers}");
    let lower = answers.to_ascii_lowercase();
    assert_eq!(lower.matches("\r\ndate: ").count(), 5, "{answers}");
    assert_eq!(
        lower
            .matches(&format!("content-length: {}\r\n", proto.len()))
            .count(),
        4,
        "the HEAD's length is the GET's: {answers}"
    );
    assert!(
        lower.ends_with(&format!("connection: close\r\n\r\n{proto}")),
        "{answers}"
    );
}

#[tokio::test]
async fn what_the_gateways_loop_does_not_take_hyper_answers() {
    let running = start(None, TIMEOUTS).await;
    for (request, status) in [
        (
            &b"GET /api/x HTTP/1.0\r\nHost: x\r\n\r\n"[..],
            "HTTP/1.0 200 OK",
        ),
        (
            b"GET /api/x HTTP/1.1\r\nHost: x\r\nbad header\r\n\r\n",
            "HTTP/1.1 400",
        ),
        (
            b"GET /api/x HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "HTTP/1.1 400",
        ),
    ] {
        let mut stream = tokio::net::TcpStream::connect(running.addr).await.unwrap();
        stream.write_all(request).await.unwrap();
        let answer = read_all(&mut stream).await;
        assert!(answer.starts_with(status), "{answer}");
    }
}

#[tokio::test]
async fn a_streamed_answer_is_passed_on_as_it_comes() {
    let running = start(None, TIMEOUTS).await;
    let mut stream = tokio::net::TcpStream::connect(running.addr).await.unwrap();
    stream
        .write_all(b"GET /api/stream HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut first = vec![0; 4096];
    let mut seen = String::new();
    let started = Instant::now();
    while !seen.contains("first") {
        let n = stream.read(&mut first).await.unwrap();
        assert!(n > 0, "{seen}");
        seen.push_str(std::str::from_utf8(&first[..n]).unwrap());
    }
    assert!(
        started.elapsed() < Duration::from_millis(250),
        "the first chunk waited for the last"
    );
    assert!(
        seen.to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{seen}"
    );
    seen.push_str(&read_all(&mut stream).await);
    assert!(
        seen.ends_with("5\r\nfirst\r\n6\r\nsecond\r\n0\r\n\r\n"),
        "{seen}"
    );
}
