//! The `[users]` section of the configuration.

use std::net::SocketAddr;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct UsersSettings {
    /// Where `tessera serve users` listens when not handed a socket.
    pub listen: SocketAddr,
    /// `sqlite://...` or `postgres://...`; empty means SQLite in the data dir.
    pub database_url: String,
    pub database_connections_max: u32,
    /// Deliveries of one event before it is dead-lettered.
    pub consumer_max_deliveries: u32,
}

impl Default for UsersSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8082)),
            database_url: String::new(),
            database_connections_max: 8,
            consumer_max_deliveries: 5,
        }
    }
}
