//! The `[gateway]` section of the configuration.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::Deserialize;

use crate::breaker::BreakerSettings;
use crate::routes::RouteConfig;
use crate::upstream::HealthCheck;

/// The routes the gateway ships with: every public route of the system.
pub const DEFAULT_ROUTES: &str = include_str!("../routes.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct GatewaySettings {
    /// The public port.
    pub listen: SocketAddr,
    /// The admin port (metrics, health): loopback by default.
    pub admin_listen: SocketAddr,
    /// Replaces the shipped routes when given.
    pub routes: Vec<RouteConfig>,
    /// Where each service's instances listen.
    pub services: BTreeMap<String, ServiceSettings>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSettings {
    /// `http://host:port` of each instance.
    pub urls: Vec<String>,
    /// Asked on every instance every `health_interval_ms`; a non-2xx or no
    /// answer within `health_timeout_ms` leaves the instance out until it
    /// passes again.
    #[serde(default = "default_health_path")]
    pub health_path: String,
    #[serde(default = "default_health_interval_ms")]
    pub health_interval_ms: u64,
    #[serde(default = "default_health_timeout_ms")]
    pub health_timeout_ms: u64,
    /// The circuit breaker opens when at least this share of the requests
    /// in the last `breaker_window_ms` failed, once there were at least
    /// `breaker_min_requests`; it stays open `breaker_open_ms`, then lets
    /// `breaker_probes` requests through to decide.
    #[serde(default = "default_breaker_failure_ratio")]
    pub breaker_failure_ratio: f64,
    #[serde(default = "default_breaker_min_requests")]
    pub breaker_min_requests: u32,
    #[serde(default = "default_breaker_window_ms")]
    pub breaker_window_ms: u64,
    #[serde(default = "default_breaker_open_ms")]
    pub breaker_open_ms: u64,
    #[serde(default = "default_breaker_probes")]
    pub breaker_probes: u32,
    /// `least_outstanding` (two at random, the less busy wins),
    /// `round_robin`, or `hash` with `hash_key` (`header:NAME` or
    /// `cookie:NAME`): one key, one instance while it takes traffic.
    #[serde(default = "default_balance")]
    pub balance: String,
    #[serde(default)]
    pub hash_key: Option<String>,
}

fn default_balance() -> String {
    "least_outstanding".into()
}

fn default_breaker_failure_ratio() -> f64 {
    BreakerSettings::default().failure_ratio
}

fn default_breaker_min_requests() -> u32 {
    BreakerSettings::default().min_requests
}

fn default_breaker_window_ms() -> u64 {
    BreakerSettings::default().window.as_millis() as u64
}

fn default_breaker_open_ms() -> u64 {
    BreakerSettings::default().open_for.as_millis() as u64
}

fn default_breaker_probes() -> u32 {
    BreakerSettings::default().probes
}

fn default_health_path() -> String {
    HealthCheck::default().path
}

fn default_health_interval_ms() -> u64 {
    HealthCheck::default().interval.as_millis() as u64
}

fn default_health_timeout_ms() -> u64 {
    HealthCheck::default().timeout.as_millis() as u64
}

#[derive(Deserialize)]
struct Shipped {
    routes: Vec<RouteConfig>,
}

/// The shipped routes, parsed.
pub fn default_routes() -> Vec<RouteConfig> {
    let shipped: Shipped = toml::from_str(DEFAULT_ROUTES).expect("the shipped routes parse");
    shipped.routes
}

impl Default for GatewaySettings {
    fn default() -> Self {
        let local = |port: u16| ServiceSettings {
            urls: vec![format!("http://127.0.0.1:{port}")],
            health_path: default_health_path(),
            health_interval_ms: default_health_interval_ms(),
            health_timeout_ms: default_health_timeout_ms(),
            breaker_failure_ratio: default_breaker_failure_ratio(),
            breaker_min_requests: default_breaker_min_requests(),
            breaker_window_ms: default_breaker_window_ms(),
            breaker_open_ms: default_breaker_open_ms(),
            breaker_probes: default_breaker_probes(),
            balance: default_balance(),
            hash_key: None,
        };
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9080)),
            routes: default_routes(),
            services: [
                ("identity".to_string(), local(8081)),
                ("users".to_string(), local(8082)),
            ]
            .into(),
        }
    }
}
