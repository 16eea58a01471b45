//! The `[identity]` section of the configuration.

use std::net::SocketAddr;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct IdentitySettings {
    /// Where `tessera serve identity` listens when not handed a socket.
    pub listen: SocketAddr,
    /// `sqlite://...` or `postgres://...`; empty means SQLite in the data dir.
    pub database_url: String,
    pub database_connections_max: u32,
    /// `redis://...`; empty means the embedded SQLite key-value file.
    pub kv_url: String,
    pub access_ttl_s: u64,
    pub refresh_ttl_s: u64,
    /// Failed logins per account per window before 429.
    pub login_failures_per_account_max: u64,
    /// Failed logins per client IP per window before 429.
    pub login_failures_per_ip_max: u64,
    pub login_failure_window_s: u64,
    /// Password hashes computed at once; 0 means one per core.
    pub password_hash_concurrency: usize,
    /// Password hashes that may wait for a thread before 503.
    pub password_hash_queue_max: usize,
    /// Deliveries of one consumed event before it is dead-lettered.
    pub consumer_max_deliveries: u32,
}

impl Default for IdentitySettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            database_url: String::new(),
            database_connections_max: 8,
            kv_url: String::new(),
            access_ttl_s: 15 * 60,
            refresh_ttl_s: 30 * 24 * 3600,
            login_failures_per_account_max: 5,
            login_failures_per_ip_max: 20,
            login_failure_window_s: 60,
            password_hash_concurrency: 0,
            password_hash_queue_max: 64,
            consumer_max_deliveries: 5,
        }
    }
}

impl IdentitySettings {
    pub fn hash_concurrency(&self) -> usize {
        match self.password_hash_concurrency {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }
}
