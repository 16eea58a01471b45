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
