//! The gateway in front of real service processes (`tessera serve`), one
//! of which is killed under load.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// A `tessera serve ROLE` child, killed when dropped.
struct Serve(Child);

impl Serve {
    fn start(role: &str, data_dir: &std::path::Path, env: &[(String, String)]) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_tessera"))
            .args(["serve", role])
            .env("TESSERA_DATA_DIR", data_dir)
            .env("TESSERA_LOG__FILTER", "error")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        Self(child)
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn wait_ready(http: &reqwest::Client, url: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !http
        .get(format!("{url}/readyz"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(Instant::now() < deadline, "{url} never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Three users processes behind the gateway; GETs from 8 clients for 3 s;
/// one users process `kill -9`'d after 1 s. Every client request is
/// answered by a users process (its 401: no token is sent): none fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_of_three_replicas_under_load_fails_no_request() {
    let data_dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let users_ports: Vec<u16> = (0..3).map(|_| kit::testing::free_port()).collect();
    let mut users: Vec<Option<Serve>> = users_ports
        .iter()
        .map(|port| {
            let listen = ("TESSERA_USERS__LISTEN".into(), format!("127.0.0.1:{port}"));
            Some(Serve::start("users", data_dir.path(), &[listen]))
        })
        .collect();
    let urls: Vec<String> = users_ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect();
    for url in &urls {
        wait_ready(&http, url).await;
    }

    let config = data_dir.path().join("gateway.toml");
    let quoted: Vec<String> = urls.iter().map(|u| format!("{u:?}")).collect();
    std::fs::write(
        &config,
        format!(
            r#"[gateway.services.users]
urls = [{}]
health_interval_ms = 200
[[gateway.routes]]
name = "users"
prefix = "/api/v1/users/"
methods = ["GET"]
service = "users"
auth = "none"
"#,
            quoted.join(", ")
        ),
    )
    .unwrap();
    let (public, admin) = (kit::testing::free_port(), kit::testing::free_port());
    let env: BTreeMap<String, String> = [
        ("TESSERA_GATEWAY__LISTEN", format!("127.0.0.1:{public}")),
        (
            "TESSERA_GATEWAY__ADMIN_LISTEN",
            format!("127.0.0.1:{admin}"),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let gateway = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["serve", "gateway", "--config"])
        .arg(&config)
        .env("TESSERA_LOG__FILTER", "error")
        .envs(&env)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let _gateway = Serve(gateway);
    wait_ready(&http, &format!("http://127.0.0.1:{admin}")).await;

    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (http, stop) = (http.clone(), stop.clone());
            let url = format!("http://127.0.0.1:{public}/api/v1/users/me");
            tokio::spawn(async move {
                let mut statuses: BTreeMap<u16, u32> = BTreeMap::new();
                while !stop.load(Ordering::Relaxed) {
                    let status = match http.get(&url).send().await {
                        Ok(response) => response.status().as_u16(),
                        Err(_) => 0,
                    };
                    *statuses.entry(status).or_default() += 1;
                }
                statuses
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let victim = users[0].take().unwrap();
    // SAFETY: signalling a process this test started.
    assert_eq!(
        unsafe { libc::kill(victim.0.id() as i32, libc::SIGKILL) },
        0
    );
    drop(victim);
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let mut total: BTreeMap<u16, u32> = BTreeMap::new();
    for client in clients {
        for (status, n) in client.await.unwrap() {
            *total.entry(status).or_default() += n;
        }
    }
    assert_eq!(
        total.keys().copied().collect::<Vec<_>>(),
        vec![401],
        "{total:?}"
    );
    assert!(total[&401] > 100, "{total:?}");
}

/// `tessera serve users` registers with the gateway named in its
/// configuration, leaves on SIGTERM, and drops out when killed once its
/// registration runs out; SIGHUP makes the gateway read its file again.
#[tokio::test]
async fn serve_registers_with_the_gateway_and_sighup_reloads() {
    let data_dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let (public, admin) = (kit::testing::free_port(), kit::testing::free_port());
    let admin_url = format!("http://127.0.0.1:{admin}");
    let config = data_dir.path().join("gateway.toml");
    let write = |extra: &str| {
        let text = format!(
            "[gateway]\nwatch_config = false\n[gateway.services.users]\nurls = []\n[[gateway.routes]]\nname = \"users\"\nprefix = \"/api/v1/users/\"\nservice = \"users\"\nauth = \"none\"\n{extra}"
        );
        std::fs::write(&config, text).unwrap();
    };
    write("");
    let gateway = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["serve", "gateway", "--config"])
        .arg(&config)
        .env("TESSERA_LOG__FILTER", "error")
        .env("TESSERA_GATEWAY__LISTEN", format!("127.0.0.1:{public}"))
        .env(
            "TESSERA_GATEWAY__ADMIN_LISTEN",
            format!("127.0.0.1:{admin}"),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let gateway = Serve(gateway);
    let me = format!("http://127.0.0.1:{public}/api/v1/users/me");
    let users_env = |port: u16| {
        vec![
            ("TESSERA_USERS__LISTEN".into(), format!("127.0.0.1:{port}")),
            (
                "TESSERA_REGISTRY__GATEWAYS".into(),
                format!("[{admin_url:?}]"),
            ),
            ("TESSERA_REGISTRY__TTL_MS".into(), "1000".into()),
        ]
    };
    let status_within = |want: u16, within: Duration| {
        let (http, me) = (http.clone(), me.clone());
        async move {
            let deadline = Instant::now() + within;
            loop {
                let status = http
                    .get(&me)
                    .send()
                    .await
                    .map_or(0, |r| r.status().as_u16());
                if status == want {
                    return;
                }
                assert!(Instant::now() < deadline, "{me}: {status}, not {want}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let registry = || {
        let (http, url) = (http.clone(), format!("{admin_url}/admin/registry"));
        async move {
            let list: serde_json::Value = http.get(url).send().await.unwrap().json().await.unwrap();
            list.as_array().unwrap().clone()
        }
    };

    let port = kit::testing::free_port();
    let users = Serve::start("users", data_dir.path(), &users_env(port));
    // users' 401 (no token) means the gateway sent the request there.
    status_within(401, Duration::from_secs(30)).await;
    let listed = registry().await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["url"], format!("http://127.0.0.1:{port}"));
    // SAFETY: signalling a process this test started.
    assert_eq!(unsafe { libc::kill(users.0.id() as i32, libc::SIGTERM) }, 0);
    status_within(503, Duration::from_secs(5)).await;
    assert!(registry().await.is_empty(), "deregistered on the way out");
    drop(users);

    let users = Serve::start("users", data_dir.path(), &users_env(port));
    status_within(401, Duration::from_secs(30)).await;
    assert_eq!(unsafe { libc::kill(users.0.id() as i32, libc::SIGKILL) }, 0);
    drop(users);
    // Until then the dead instance answers 502, or its open breaker 503.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let answer = http.get(&me).send().await.unwrap();
        let problem: serde_json::Value = answer.json().await.unwrap();
        if problem["code"] == "unavailable" {
            break;
        }
        assert!(Instant::now() < deadline, "never left: {problem}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(registry().await.is_empty(), "expired without renewal");

    let version = || {
        let (http, url) = (http.clone(), format!("{admin_url}/admin/config"));
        async move {
            let config: serde_json::Value =
                http.get(url).send().await.unwrap().json().await.unwrap();
            config["version"].as_u64().unwrap()
        }
    };
    assert_eq!(version().await, 1);
    write(
        "[[gateway.routes]]\nname = \"more\"\nprefix = \"/more/\"\nservice = \"users\"\nauth = \"none\"\n",
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(version().await, 1, "watch_config = false: no reload yet");
    assert_eq!(
        unsafe { libc::kill(gateway.0.id() as i32, libc::SIGHUP) },
        0
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while version().await != 2 {
        assert!(Instant::now() < deadline, "SIGHUP did not reload");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
