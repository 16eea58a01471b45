//! One supervisor per child process: spawn it on its inherited socket,
//! watch it become ready, restart it with exponential backoff when it dies,
//! give up when it dies too often, and stop it gracefully on shutdown.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};
use tokio::sync::watch;

use super::manifest::{Manifest, State};
use super::output;

/// The first restart comes this soon; each further one within the window
/// waits twice as long, up to [`RESTART_BACKOFF_MAX`].
pub const RESTART_BACKOFF_FIRST: Duration = Duration::from_millis(250);
pub const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(8);
/// More restarts than this within [`RESTART_WINDOW`] and the role is failed.
pub const RESTARTS_PER_WINDOW_MAX: usize = 5;
pub const RESTART_WINDOW: Duration = Duration::from_secs(60);
/// After SIGTERM a child gets this long before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
/// How often a starting child's `/readyz` is asked.
pub const READY_POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Children find their listening socket at this descriptor...
const LISTEN_FD: RawFd = 3;
/// ... and an admin socket, when their role has one, at this one.
const ADMIN_LISTEN_FD: RawFd = 4;
/// Inherited sockets are first copied at or above this descriptor, so that
/// placing one at 3 or 4 never overwrites the other.
const SCRATCH_FD_MIN: RawFd = 10;

/// What every child is launched with.
pub struct Launch {
    pub exe: PathBuf,
    pub config: Option<PathBuf>,
    pub env: Vec<(String, String)>,
}

/// One child: a replica of a role and the socket it serves on.
pub struct Instance {
    pub role: &'static str,
    pub replica: u32,
    pub url: String,
    pub listener: std::net::TcpListener,
    /// The admin socket and its URL, for a role that has one; its
    /// `/readyz` is then the one asked.
    pub admin: Option<(std::net::TcpListener, String)>,
}

impl Instance {
    fn name(&self) -> String {
        format!("{}.{}", self.role, self.replica)
    }

    fn spawn(&self, launch: &Launch) -> std::io::Result<Child> {
        let mut command = Command::new(&launch.exe);
        command.arg("serve").arg(self.role);
        if let Some(config) = &launch.config {
            command.arg("--config").arg(config);
        }
        if self.admin.is_some() {
            command.env(
                kit::listen::ADMIN_LISTEN_FD_ENV,
                ADMIN_LISTEN_FD.to_string(),
            );
        }
        command
            .envs(launch.env.iter().map(|(k, v)| (k, v)))
            .env(kit::listen::LISTEN_FD_ENV, LISTEN_FD.to_string())
            .env("TESSERA_REPLICA", self.replica.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut sockets = vec![(self.listener.as_raw_fd(), LISTEN_FD)];
        if let Some((admin, _)) = &self.admin {
            sockets.push((admin.as_raw_fd(), ADMIN_LISTEN_FD));
        }
        let parent = std::process::id();
        // SAFETY: only async-signal-safe calls (fcntl, dup2, setpgid, prctl,
        // getppid) run between fork and exec; `sockets` was built before.
        unsafe {
            command.pre_exec(move || {
                // Copy each socket out of the way, then into its place
                // (dup2 leaves the placed copy open across exec).
                let mut scratch = [0 as RawFd; 2];
                for (i, (fd, _)) in sockets.iter().enumerate() {
                    scratch[i] = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, SCRATCH_FD_MIN);
                    if scratch[i] < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                for (i, (_, target)) in sockets.iter().enumerate() {
                    if libc::dup2(scratch[i], *target) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                // Own process group: a terminal's Ctrl-C reaches `up` only,
                // which then stops children in order.
                libc::setpgid(0, 0);
                // If `up` dies without stopping us, we stop too: no orphans.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                if libc::getppid() as u32 != parent {
                    return Err(std::io::Error::other("parent exited during spawn"));
                }
                Ok(())
            });
        }
        let mut child = command.spawn()?;
        let name = self.name();
        if let Some(stdout) = child.stdout.take() {
            tokio::spawn(output::relay(name.clone(), stdout));
        }
        if let Some(stderr) = child.stderr.take() {
            tokio::spawn(output::relay(name, stderr));
        }
        Ok(child)
    }
}

/// Runs until `shutdown` turns true (then stops the child) or the child has
/// failed too often.
pub async fn supervise(
    instance: Instance,
    launch: Arc<Launch>,
    manifest: Arc<Manifest>,
    http: reqwest::Client,
    mut shutdown: watch::Receiver<bool>,
) {
    let name = instance.name();
    let mut recent_restarts: VecDeque<Instant> = VecDeque::new();
    let mut restarts = 0u32;
    loop {
        let started = Instant::now();
        let mut child = match instance.spawn(&launch) {
            Ok(child) => child,
            Err(error) => {
                tracing::error!(child = %name, %error, "cannot spawn");
                manifest.update(instance.role, instance.replica, |e| e.state = State::Failed);
                return;
            }
        };
        let pid = child.id().unwrap_or(0);
        manifest.update(instance.role, instance.replica, |e| {
            e.pid = pid;
            e.state = State::Starting;
            e.restarts = restarts;
        });
        tracing::info!(child = %name, pid, url = %instance.url, "started");
        let health_url = instance
            .admin
            .as_ref()
            .map_or(&instance.url, |(_, url)| url);
        let readiness = tokio::spawn(await_ready(
            http.clone(),
            format!("{health_url}/readyz"),
            manifest.clone(),
            instance.role,
            instance.replica,
            started,
        ));

        let status = tokio::select! {
            status = child.wait() => status,
            _ = stopping(&mut shutdown) => {
                readiness.abort();
                stop(&name, pid, &mut child).await;
                manifest.update(instance.role, instance.replica, |e| e.pid = 0);
                return;
            }
        };
        readiness.abort();
        let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());

        let now = Instant::now();
        recent_restarts.retain(|at| now.duration_since(*at) < RESTART_WINDOW);
        if recent_restarts.len() >= RESTARTS_PER_WINDOW_MAX {
            tracing::error!(
                child = %name, %status,
                "exited again: {RESTARTS_PER_WINDOW_MAX} restarts within {} s already; role failed, the rest keep running",
                RESTART_WINDOW.as_secs()
            );
            manifest.update(instance.role, instance.replica, |e| {
                e.pid = 0;
                e.state = State::Failed;
            });
            return;
        }
        recent_restarts.push_back(now);
        restarts += 1;
        let backoff = RESTART_BACKOFF_FIRST
            .saturating_mul(1 << (recent_restarts.len() - 1).min(16))
            .min(RESTART_BACKOFF_MAX);
        tracing::warn!(child = %name, %status, backoff_ms = backoff.as_millis() as u64, "exited unexpectedly; restarting");
        manifest.update(instance.role, instance.replica, |e| {
            e.pid = 0;
            e.state = State::Restarting;
        });
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stopping(&mut shutdown) => return,
        }
    }
}

/// Resolves once shutdown is asked for (or `up` is gone).
async fn stopping(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

async fn await_ready(
    http: reqwest::Client,
    url: String,
    manifest: Arc<Manifest>,
    role: &'static str,
    replica: u32,
    started: Instant,
) {
    loop {
        let ready = http
            .get(&url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ready {
            tracing::info!(
                child = %format!("{role}.{replica}"),
                ready_ms = started.elapsed().as_millis() as u64,
                "ready"
            );
            manifest.update(role, replica, |e| e.state = State::Ready);
            return;
        }
        tokio::time::sleep(READY_POLL_INTERVAL).await;
    }
}

/// SIGTERM, up to [`STOP_GRACE`] to exit, then SIGKILL.
async fn stop(name: &str, pid: u32, child: &mut Child) {
    if pid != 0 {
        // SAFETY: signalling a child this process spawned and has not reaped.
        unsafe {
            libc::kill(pid as i32, libc::SIGTERM);
        }
    }
    match tokio::time::timeout(STOP_GRACE, child.wait()).await {
        Ok(_) => tracing::info!(child = %name, "stopped"),
        Err(_) => {
            tracing::warn!(child = %name, "did not stop within {} s; killing", STOP_GRACE.as_secs());
            let _ = child.kill().await;
        }
    }
}
