//! Events through `tessera up`, on the embedded log and on NATS JetStream:
//! nothing committed is lost when users is killed mid-stream or NATS
//! restarts, an erasure reaches identity, and a poison event waits in the
//! dead-letter store until an operator replays it.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

const REGISTRATIONS: usize = 200;
const CLIENTS: usize = 8;

#[tokio::test]
async fn on_the_embedded_log() {
    scenario(&[], None).await;
}

#[tokio::test]
async fn on_nats_jetstream_through_a_server_restart() {
    let Some(mut nats) = NatsServer::start() else {
        return;
    };
    let url = nats.url();
    scenario(&[("TESSERA_BUS_URL", &url)], Some(&mut nats)).await;
}

async fn scenario(bus_env: &[(&str, &str)], nats: Option<&mut NatsServer>) {
    let data_dir = tempfile::tempdir().unwrap();
    create_root(data_dir.path(), bus_env);
    let mut env = bus_env.to_vec();
    env.push(("TESSERA_USERS__CONSUMER_MAX_DELIVERIES", "2"));
    let up = Up::start_with_env(data_dir, &[], &env);
    let entries = up.wait_ready();
    let (identity, users) = (
        url_of(&entries, "identity", 0),
        url_of(&entries, "users", 0),
    );
    let http = client();
    let admin_token = access_token(&http, &identity, "root@example.com").await;

    // 200 registrations from 8 clients; users is killed after the 50th and
    // NATS (when it is the bus) restarted after the 120th.
    let (started, done) = (Arc::default(), Arc::new(AtomicUsize::new(0)));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (http, identity) = (http.clone(), identity.clone());
            tokio::spawn(register_some(
                http,
                identity,
                Arc::clone(&started),
                done.clone(),
            ))
        })
        .collect();
    let users_pid = pid_of(&entries, "users", 0);
    wait_until("50 registrations", async || {
        done.load(Ordering::SeqCst) >= 50
    })
    .await;
    signal(users_pid, libc::SIGKILL);
    if let Some(nats) = nats {
        wait_until("120 registrations", async || {
            done.load(Ordering::SeqCst) >= 120
        })
        .await;
        nats.restart();
    }
    let mut registered = Vec::new();
    for client in clients {
        registered.extend(client.await.unwrap());
    }
    assert_eq!(registered.len(), REGISTRATIONS);
    up.wait_for(Duration::from_secs(20), |e| {
        e.iter()
            .all(|e| e["state"] == "ready" && e["pid"] != users_pid)
    });

    // Every registration has its profile, made once from its event.
    let deadline = Instant::now() + Duration::from_secs(60);
    for (id, email) in &registered {
        loop {
            let profile = http
                .get(format!("{users}/api/v1/users/{id}"))
                .bearer_auth(&admin_token)
                .send()
                .await
                .unwrap();
            if profile.status() == 200 {
                assert_eq!(profile.headers()["etag"], "\"1\"", "made once, never again");
                let profile: Value = profile.json().await.unwrap();
                assert_eq!(profile["email"], json!(email));
                break;
            }
            assert_eq!(profile.status(), 404);
            assert!(Instant::now() < deadline, "no profile for {email}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let data_dir = up.data_dir.path();
    wait_until("users-profiles to have nothing pending", async || {
        let lag = run(data_dir, "events", &["lag"], bus_env);
        lag.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["users-profiles", "0", "0"])
    })
    .await;

    // An erased profile takes the account with it.
    let (id, email) = &registered[0];
    let token = access_token(&http, &identity, email).await;
    let erased = http
        .delete(format!("{users}/api/v1/users/me"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(erased.status(), 204, "{id}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while login(&http, &identity, email).await.status() != 401 {
        assert!(
            Instant::now() < deadline,
            "the account outlived its erasure"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A poison event: dead-lettered after 2 deliveries, counted, and
    // delivered again (failing again) when replayed.
    let poison = bus::CloudEvent::new(
        "identity",
        "identity.user.registered.v1",
        "poison",
        json!({"id": 42}),
        0,
    );
    publish(data_dir, bus_env, poison.clone()).await;
    let seq = wait_for_dead_letter(data_dir, bus_env, &poison.id).await;
    wait_until("one dead letter counted", async || {
        dead_letters_counted(&http, &users).await == Some(1)
    })
    .await;
    run(
        data_dir,
        "events",
        &["dlq", "replay", "--group", "users-profiles", "--seq", &seq],
        bus_env,
    );
    wait_until("the replayed event to fail again", async || {
        dead_letters_counted(&http, &users).await == Some(2)
    })
    .await;
    wait_for_dead_letter(data_dir, bus_env, &poison.id).await;
}

/// Registers accounts until `REGISTRATIONS` are done between all clients;
/// returns this client's (id, email) pairs.
async fn register_some(
    http: reqwest::Client,
    identity: String,
    started: Arc<AtomicUsize>,
    done: Arc<AtomicUsize>,
) -> Vec<(String, String)> {
    let mut mine = Vec::new();
    loop {
        let n = started.fetch_add(1, Ordering::SeqCst);
        if n >= REGISTRATIONS {
            return mine;
        }
        let email = format!("user-{n}@example.com");
        let response = http
            .post(format!("{identity}/api/v1/auth/register"))
            .json(&json!({"email": email, "password": PASSWORD, "display_name": "Ada"}))
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body = response.text().await.unwrap();
        assert_eq!(status, 201, "{body}");
        let account: Value = serde_json::from_str(&body).unwrap();
        mine.push((account["id"].as_str().unwrap().to_owned(), email));
        done.fetch_add(1, Ordering::SeqCst);
    }
}

async fn access_token(http: &reqwest::Client, identity: &str, email: &str) -> String {
    let response = login(http, identity, email).await;
    assert_eq!(response.status(), 200);
    let tokens: Value = response.json().await.unwrap();
    tokens["access_token"].as_str().unwrap().to_owned()
}

async fn wait_until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Publishes as a producer would, on the bus the environment names.
async fn publish(data_dir: &Path, bus_env: &[(&str, &str)], event: bus::CloudEvent) {
    let url = bus_env
        .iter()
        .find(|(k, _)| *k == "TESSERA_BUS_URL")
        .map_or("", |(_, v)| *v);
    let broker = bus::open(
        url,
        data_dir,
        kit::clock::system(),
        bus::broker::DeadLetterReport::default(),
    )
    .await
    .unwrap();
    broker.publish(&[event]).await.unwrap();
}

/// Waits until `tessera events dlq list` shows the event; its `seq`.
async fn wait_for_dead_letter(data_dir: &Path, bus_env: &[(&str, &str)], event_id: &str) -> String {
    let mut seq = None;
    wait_until("a dead letter", async || {
        let listed = run(data_dir, "events", &["dlq", "list"], bus_env);
        seq = listed
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .find(|l| l["event"]["id"] == event_id && l["group"] == "users-profiles")
            .map(|l| l["seq"].to_string());
        seq.is_some()
    })
    .await;
    seq.unwrap()
}

/// users' `tessera_dead_letters_total` for its profiles group.
async fn dead_letters_counted(http: &reqwest::Client, users: &str) -> Option<u64> {
    let response = http.get(format!("{users}/metrics")).send().await.ok()?;
    let text = response.text().await.ok()?;
    text.lines()
        .find(|l| l.starts_with("tessera_dead_letters_total{") && l.contains("users-profiles"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// A NATS server of this test's own (its port, its store), so that it can
/// be restarted without disturbing anyone else.
struct NatsServer {
    binary: PathBuf,
    port: u16,
    store: tempfile::TempDir,
    child: Child,
}

impl NatsServer {
    /// `TESSERA_TEST_NATS_SERVER`, else `nats-server` on the PATH or in
    /// /usr/sbin. Missing: skipped outside CI, a failure in CI.
    fn start() -> Option<Self> {
        let binary = std::env::var_os("TESSERA_TEST_NATS_SERVER")
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("PATH").and_then(|paths| {
                    std::env::split_paths(&paths)
                        .chain([PathBuf::from("/usr/sbin")])
                        .map(|dir| dir.join("nats-server"))
                        .find(|path| path.is_file())
                })
            });
        let Some(binary) = binary else {
            assert!(
                std::env::var("CI").is_err(),
                "nats-server is not installed: CI must run the NATS end-to-end test"
            );
            eprintln!("skipping: no nats-server (set TESSERA_TEST_NATS_SERVER)");
            return None;
        };
        let port = kit::testing::free_port();
        let store = tempfile::tempdir().unwrap();
        let child = Self::spawn(&binary, port, store.path());
        Some(Self {
            binary,
            port,
            store,
            child,
        })
    }

    fn spawn(binary: &Path, port: u16, store: &Path) -> Child {
        let child = Command::new(binary)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        child
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// kill -9, then the same server again on the same port and store.
    fn restart(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        std::thread::sleep(Duration::from_millis(500));
        self.child = Self::spawn(&self.binary, self.port, self.store.path());
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
