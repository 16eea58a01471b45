//! What the tests of `tessera up` share: starting `up` as an operator
//! would, reading its manifest, signalling its children, logging in.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub const PASSWORD: &str = "correct horse battery staple";

pub fn tessera() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tessera"))
}

pub struct Up {
    pub child: Child,
    pub data_dir: tempfile::TempDir,
}

impl Up {
    pub fn start(extra: &[&str]) -> Self {
        let data_dir = tempfile::tempdir().unwrap();
        Self::start_in(data_dir, extra)
    }

    pub fn start_in(data_dir: tempfile::TempDir, extra: &[&str]) -> Self {
        Self::start_with_env(data_dir, extra, &[])
    }

    /// `up` with `env` set for it and, through it, for every role.
    pub fn start_with_env(
        data_dir: tempfile::TempDir,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let child = tessera()
            .args(["up", "--port", "0", "--data-dir"])
            .arg(data_dir.path())
            .args(extra)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        Self { child, data_dir }
    }

    pub fn manifest_path(&self) -> PathBuf {
        self.data_dir.path().join("up.json")
    }

    pub fn manifest(&self) -> Vec<Value> {
        std::fs::read(self.manifest_path())
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }

    /// Waits until every entry is ready and `check` holds; returns them.
    pub fn wait_for(&self, within: Duration, check: impl Fn(&[Value]) -> bool) -> Vec<Value> {
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

    pub fn wait_ready(&self) -> Vec<Value> {
        self.wait_for(Duration::from_secs(30), |e| {
            e.iter().all(|e| e["state"] == "ready")
        })
    }

    pub fn terminate(&mut self) -> std::process::ExitStatus {
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
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

pub fn signal(pid: u32, signal: i32) {
    // SAFETY: signalling a process this test started.
    assert_eq!(unsafe { libc::kill(pid as i32, signal) }, 0);
}

pub fn alive(pid: u32) -> bool {
    // Signal 0 checks existence; a zombie would still count, but children
    // of `up` are reaped by it.
    unsafe { libc::kill(pid as i32, 0) == 0 }
}

pub fn entry_of<'a>(entries: &'a [Value], role: &str, replica: u64) -> &'a Value {
    entries
        .iter()
        .find(|e| e["role"] == role && e["replica"] == replica)
        .unwrap_or_else(|| panic!("no {role}.{replica} in {entries:?}"))
}

pub fn url_of(entries: &[Value], role: &str, replica: u64) -> String {
    entry_of(entries, role, replica)["url"]
        .as_str()
        .unwrap()
        .to_owned()
}

pub fn pid_of(entries: &[Value], role: &str, replica: u64) -> u32 {
    entry_of(entries, role, replica)["pid"].as_u64().unwrap() as u32
}

pub async fn login(http: &reqwest::Client, base: &str, email: &str) -> reqwest::Response {
    http.post(format!("{base}/api/v1/auth/token"))
        .json(&json!({"email": email, "password": PASSWORD}))
        .send()
        .await
        .unwrap()
}

pub fn token_roles(access_token: &str) -> Value {
    use base64::Engine;
    let payload = access_token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice::<Value>(&bytes).unwrap()["roles"].clone()
}

pub fn admin(data_dir: &Path, args: &[&str]) -> String {
    run(data_dir, "admin", args, &[])
}

/// `root@example.com`, an admin, made with `tessera admin create-user`.
pub fn create_root(data_dir: &Path, env: &[(&str, &str)]) {
    let args = ["create-user", "--email", "root@example.com", "--password"];
    let role = ["--role", "admin"];
    run(
        data_dir,
        "admin",
        &[&args[..], &[PASSWORD], &role].concat(),
        env,
    );
}

/// `tessera COMMAND ARGS --data-dir DIR` with `env`; its stdout, once it
/// has succeeded.
pub fn run(data_dir: &Path, command: &str, args: &[&str], env: &[(&str, &str)]) -> String {
    let output = tessera()
        .arg(command)
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}
