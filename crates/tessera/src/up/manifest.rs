//! `DATA_DIR/up.json`: every running child, kept current, for tools and
//! tests. Rewritten whole through a temporary file and a rename, so a reader
//! never sees half of it.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Spawned, `/readyz` not yet answered 200.
    Starting,
    Ready,
    /// Exited unexpectedly; waiting out its backoff.
    Restarting,
    /// Restarted too often; `up` gave up on it and keeps the rest running.
    Failed,
}

#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub role: String,
    pub replica: u32,
    /// Zero while no process runs.
    pub pid: u32,
    pub url: String,
    /// The admin port's URL, for a role that has one (the gateway).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_url: Option<String>,
    pub state: State,
    pub restarts: u32,
}

pub struct Manifest {
    path: PathBuf,
    entries: Mutex<Vec<Entry>>,
}

impl Manifest {
    pub fn new(data_dir: &Path, entries: Vec<Entry>) -> Self {
        Self {
            path: data_dir.join("up.json"),
            entries: Mutex::new(entries),
        }
    }

    pub fn update(&self, role: &str, replica: u32, change: impl FnOnce(&mut Entry)) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = entries
            .iter_mut()
            .find(|e| e.role == role && e.replica == replica)
        {
            change(entry);
        }
        if let Err(error) = write(&self.path, &entries) {
            tracing::error!(path = %self.path.display(), %error, "cannot write up.json");
        }
    }

    pub fn all_ready(&self) -> bool {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.iter().all(|e| e.state == State::Ready)
    }

    pub fn remove(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn write(path: &Path, entries: &[Entry]) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(entries)?)?;
    std::fs::rename(tmp, path)
}
