//! `tessera up` as an operator runs it: real child processes, real signals.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const PASSWORD: &str = "correct horse battery staple";

fn tessera() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tessera"))
}

struct Up {
    child: Child,
    data_dir: tempfile::TempDir,
}

impl Up {
    fn start(extra: &[&str]) -> Self {
        let data_dir = tempfile::tempdir().unwrap();
        Self::start_in(data_dir, extra)
    }

    fn start_in(data_dir: tempfile::TempDir, extra: &[&str]) -> Self {
        let child = tessera()
            .args(["up", "--port", "0", "--data-dir"])
            .arg(data_dir.path())
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        Self { child, data_dir }
    }

    fn manifest_path(&self) -> PathBuf {
        self.data_dir.path().join("up.json")
    }

    fn manifest(&self) -> Vec<Value> {
        std::fs::read(self.manifest_path())
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }

    /// Waits until every entry is ready and `check` holds; returns them.
    fn wait_for(&self, within: Duration, check: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + within;
        loop {
            let entries = self.manifest();
            if !entries.is_empty() && check(&entries) {
                return entries;
            }
            assert!(Instant::now() < deadline, "timed out; up.json: {entries:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_ready(&self) -> Vec<Value> {
        self.wait_for(Duration::from_secs(30), |e| {
            e.iter().all(|e| e["state"] == "ready")
        })
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        signal(self.child.id(), libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "up did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.terminate();
        }
    }
}

/// No pooled connections: one kept alive to a process the test kills would
/// fail the next request, which is the client's problem, not `up`'s.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

fn signal(pid: u32, signal: i32) {
    // SAFETY: signalling a process this test started.
    assert_eq!(unsafe { libc::kill(pid as i32, signal) }, 0);
}

fn alive(pid: u32) -> bool {
    // Signal 0 checks existence; a zombie would still count, but children
    // of `up` are reaped by it.
    unsafe { libc::kill(pid as i32, 0) == 0 }
}

fn url_of(entries: &[Value], role: &str, replica: u64) -> String {
    entries
        .iter()
        .find(|e| e["role"] == role && e["replica"] == replica)
        .map(|e| e["url"].as_str().unwrap().to_owned())
        .unwrap()
}

fn pid_of(entries: &[Value], role: &str, replica: u64) -> u32 {
    entries
        .iter()
        .find(|e| e["role"] == role && e["replica"] == replica)
        .map(|e| e["pid"].as_u64().unwrap() as u32)
        .unwrap()
}

async fn login(http: &reqwest::Client, base: &str, email: &str) -> reqwest::Response {
    http.post(format!("{base}/api/v1/auth/token"))
        .json(&json!({"email": email, "password": PASSWORD}))
        .send()
        .await
        .unwrap()
}

fn token_roles(access_token: &str) -> Value {
    use base64::Engine;
    let payload = access_token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice::<Value>(&bytes).unwrap()["roles"].clone()
}

fn admin(data_dir: &Path, args: &[&str]) -> String {
    let output = tessera()
        .arg("admin")
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test]
async fn up_serves_survives_kill_9_and_stops_cleanly() {
    let data_dir = tempfile::tempdir().unwrap();
    admin(
        data_dir.path(),
        &[
            "create-user",
            "--email",
            "root@example.com",
            "--password",
            PASSWORD,
            "--role",
            "admin",
        ],
    );
    let mut up = Up::start_in(data_dir, &[]);
    let entries = up.wait_ready();
    let base = url_of(&entries, "identity", 0);
    let http = client();

    let admin_tokens: Value = login(&http, &base, "root@example.com")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        token_roles(admin_tokens["access_token"].as_str().unwrap()),
        json!(["admin"])
    );

    let register = http
        .post(format!("{base}/api/v1/auth/register"))
        .json(&json!({"email": "ada@example.com", "password": PASSWORD, "display_name": "Ada"}))
        .send()
        .await
        .unwrap();
    assert_eq!(register.status(), 201);

    // Identity's event reaches users through the embedded log: a profile
    // exists within a second.
    let tokens: Value = login(&http, &base, "ada@example.com")
        .await
        .json()
        .await
        .unwrap();
    let users = url_of(&entries, "users", 0);
    let registered = Instant::now();
    loop {
        let me = http
            .get(format!("{users}/api/v1/users/me"))
            .bearer_auth(tokens["access_token"].as_str().unwrap())
            .send()
            .await
            .unwrap();
        if me.status() == 200 {
            break;
        }
        assert!(
            registered.elapsed() < Duration::from_secs(1),
            "no profile within 1 s: {}",
            me.status()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let victim = pid_of(&entries, "identity", 0);
    signal(victim, libc::SIGKILL);
    let killed_at = Instant::now();
    let entries = up.wait_for(Duration::from_secs(5), |e| {
        e[0]["state"] == "ready" && e[0]["pid"] != victim
    });
    assert_eq!(entries[0]["restarts"], 1);
    assert_eq!(
        url_of(&entries, "identity", 0),
        base,
        "same socket after restart"
    );
    let response = login(&http, &base, "ada@example.com").await;
    assert_eq!(response.status(), 200, "data intact after kill -9");
    assert!(killed_at.elapsed() < Duration::from_secs(5));

    let jwks_url = format!("{base}/.well-known/jwks.json");
    let keys_before = http
        .get(&jwks_url)
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(keys_before["keys"].as_array().unwrap().len(), 1);
    admin(up.data_dir.path(), &["rotate-keys"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let keys = http
            .get(&jwks_url)
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap();
        if keys["keys"].as_array().unwrap().len() == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "rotated key never published");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let children: Vec<u32> = up
        .manifest()
        .iter()
        .map(|e| e["pid"].as_u64().unwrap() as u32)
        .collect();
    let status = up.terminate();
    assert!(status.success(), "{status}");
    for pid in children {
        assert!(!alive(pid), "child {pid} outlived up");
    }
    assert!(!up.manifest_path().exists(), "up.json removed on exit");
}

#[tokio::test]
async fn replicas_run_side_by_side_and_a_crashing_one_fails_alone() {
    let up = Up::start(&["--replicas", "identity=2"]);
    let entries = up.wait_ready();
    assert_eq!(
        entries.iter().filter(|e| e["role"] == "identity").count(),
        2
    );
    let (a, b) = (
        url_of(&entries, "identity", 0),
        url_of(&entries, "identity", 1),
    );
    assert_ne!(a, b);

    // Shared embedded stores: registered on one replica, log in on the other.
    let http = client();
    let register = http
        .post(format!("{a}/api/v1/auth/register"))
        .json(&json!({"email": "bo@example.com", "password": PASSWORD, "display_name": "Bo"}))
        .send()
        .await
        .unwrap();
    assert_eq!(register.status(), 201);
    assert_eq!(login(&http, &b, "bo@example.com").await.status(), 200);

    // Kill replica 1 each time it comes back: after 5 restarts within a
    // minute it is reported failed, and replica 0 keeps serving.
    for round in 0..6 {
        let entries = up.wait_for(Duration::from_secs(20), |e| {
            e.iter()
                .any(|e| e["replica"] == 1 && e["state"] == "ready" && e["restarts"] == round)
        });
        signal(pid_of(&entries, "identity", 1), libc::SIGKILL);
    }
    up.wait_for(Duration::from_secs(10), |e| {
        e.iter()
            .any(|e| e["replica"] == 1 && e["state"] == "failed")
    });
    assert_eq!(login(&http, &a, "bo@example.com").await.status(), 200);
}

#[test]
fn a_second_up_on_the_same_data_dir_is_refused() {
    let up = Up::start(&[]);
    up.wait_ready();
    let output = tessera()
        .args(["up", "--port", "0", "--data-dir"])
        .arg(up.data_dir.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("another `tessera up`"));
}
