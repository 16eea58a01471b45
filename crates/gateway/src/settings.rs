//! The `[gateway]` section of the configuration.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::breaker::BreakerSettings;
use crate::cors::CorsSettings;
use crate::routes::RouteConfig;
use crate::server::TlsSettings;
use crate::upstream::HealthCheck;

/// The routes the gateway ships with: every public route of the system.
pub const DEFAULT_ROUTES: &str = include_str!("../routes.toml");

/// The most `headers_max_bytes` may say: past it the HTTP server itself
/// refuses the request.
pub const HEADERS_MAX_BYTES_LIMIT: usize = 256 * 1024;

/// The shortest and longest DNS re-resolution interval a service may ask.
pub const DNS_INTERVAL_MS_MIN: u64 = 100;
pub const DNS_INTERVAL_MS_MAX: u64 = 3_600_000;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewaySettings {
    /// The public port.
    pub listen: SocketAddr,
    /// With a certificate, the public port speaks TLS (HTTP/2 and
    /// HTTP/1.1 by ALPN); without, plain HTTP/1.1 and h2c.
    pub tls: Option<TlsSettings>,
    /// The admin port (metrics, health, the admin API): loopback by default.
    pub admin_listen: SocketAddr,
    /// When set, `/admin/*` on the admin port needs `Authorization: Bearer`
    /// with this token (registrations included).
    pub admin_token: Option<String>,
    /// Reload when the configuration file changes (looked at every
    /// second); SIGHUP and `POST /admin/reload` reload either way.
    pub watch_config: bool,
    /// `redis://host:port`: rate limits counted there, shared by every
    /// gateway replica using it; absent, each replica counts its own.
    pub rate_limit_redis_url: Option<String>,
    /// Requests whose header names and values add up to more are refused
    /// with 431 (at most [`HEADERS_MAX_BYTES_LIMIT`]).
    pub headers_max_bytes: usize,
    /// A request head must arrive within this long, or the connection is
    /// closed (slow clients hold no connection forever).
    pub header_read_timeout_ms: u64,
    /// A connection with no request under way is closed after this long
    /// without one (HTTP/1.1; idle clients hold no connection forever).
    pub idle_timeout_ms: u64,
    /// Cross-origin requests from browsers; off until origins are named.
    pub cors: CorsSettings,
    /// Where the routes' response caches keep their entries.
    pub cache: CacheSettings,
    /// Replaces the shipped routes when given.
    pub routes: Vec<RouteConfig>,
    /// Where each service's instances are found.
    pub services: BTreeMap<String, ServiceSettings>,
}

/// `[gateway.cache]`: where cached answers live.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheSettings {
    /// In this process: at most this many bytes of answers (bodies and
    /// headers), the least recently used going first.
    pub memory_bytes_max: usize,
    /// The largest answer kept (larger ones pass through).
    pub entry_bytes_max: usize,
    /// `redis://host:port`: entries kept there instead, shared by every
    /// gateway replica.
    pub redis_url: Option<String>,
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            memory_bytes_max: 64 * 1024 * 1024,
            entry_bytes_max: 1024 * 1024,
            redis_url: None,
        }
    }
}

/// The largest `entry_bytes_max`: an entry is held in memory while it is
/// read and kept.
pub const CACHE_ENTRY_BYTES_LIMIT: usize = 16 * 1024 * 1024;

impl GatewaySettings {
    /// Refuses the gateway-wide values it cannot work with, saying which
    /// (routes and services are checked as they are compiled).
    pub fn check(&self) -> Result<(), String> {
        if self.cache.entry_bytes_max == 0 || self.cache.entry_bytes_max > CACHE_ENTRY_BYTES_LIMIT {
            return Err(format!(
                "[gateway.cache] entry_bytes_max must be in 1..={CACHE_ENTRY_BYTES_LIMIT}"
            ));
        }
        if self.headers_max_bytes == 0 || self.headers_max_bytes > HEADERS_MAX_BYTES_LIMIT {
            return Err(format!(
                "[gateway] headers_max_bytes must be in 1..={HEADERS_MAX_BYTES_LIMIT}"
            ));
        }
        if self.header_read_timeout_ms == 0 || self.idle_timeout_ms == 0 {
            return Err("[gateway] header_read_timeout_ms and idle_timeout_ms must be > 0".into());
        }
        Ok(())
    }

    /// How long the public port waits for a client.
    pub fn timeouts(&self) -> crate::h1::Timeouts {
        crate::h1::Timeouts {
            idle: Duration::from_millis(self.idle_timeout_ms),
            header_read: Duration::from_millis(self.header_read_timeout_ms),
        }
    }
}

/// One upstream service. Its instances are the union of `urls`, the
/// instances registered for it through the admin API, and the addresses
/// `dns` resolves to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServiceSettings {
    /// `http://host:port` of each instance known in advance.
    pub urls: Vec<String>,
    /// `host:port` resolved every `dns_interval_ms` (A and AAAA records):
    /// each address is an instance (a Kubernetes headless service).
    pub dns: Option<String>,
    pub dns_interval_ms: u64,
    /// Asked on every instance every `health_interval_ms`; a non-2xx or no
    /// answer within `health_timeout_ms` leaves the instance out until it
    /// passes again.
    pub health_path: String,
    pub health_interval_ms: u64,
    pub health_timeout_ms: u64,
    /// The circuit breaker opens when at least this share of the requests
    /// in the last `breaker_window_ms` failed, once there were at least
    /// `breaker_min_requests`; it stays open `breaker_open_ms`, then lets
    /// `breaker_probes` requests through to decide.
    pub breaker_failure_ratio: f64,
    pub breaker_min_requests: u32,
    pub breaker_window_ms: u64,
    pub breaker_open_ms: u64,
    pub breaker_probes: u32,
    /// `least_outstanding` (two at random, the less busy wins),
    /// `round_robin`, or `hash` with `hash_key` (`header:NAME` or
    /// `cookie:NAME`): one key, one instance while it takes traffic.
    pub balance: String,
    pub hash_key: Option<String>,
}

impl Default for ServiceSettings {
    fn default() -> Self {
        let breaker = BreakerSettings::default();
        let health = HealthCheck::default();
        Self {
            urls: Vec::new(),
            dns: None,
            dns_interval_ms: 5_000,
            health_path: health.path,
            health_interval_ms: health.interval.as_millis() as u64,
            health_timeout_ms: health.timeout.as_millis() as u64,
            breaker_failure_ratio: breaker.failure_ratio,
            breaker_min_requests: breaker.min_requests,
            breaker_window_ms: breaker.window.as_millis() as u64,
            breaker_open_ms: breaker.open_for.as_millis() as u64,
            breaker_probes: breaker.probes,
            balance: "least_outstanding".into(),
            hash_key: None,
        }
    }
}

impl ServiceSettings {
    /// Refuses values the gateway cannot work with, saying which.
    pub fn check(&self) -> Result<(), String> {
        if self.health_interval_ms == 0 || self.health_timeout_ms == 0 {
            return Err("health_interval_ms and health_timeout_ms must be > 0".into());
        }
        if !(self.breaker_failure_ratio > 0.0 && self.breaker_failure_ratio <= 1.0)
            || self.breaker_window_ms == 0
            || self.breaker_open_ms == 0
            || self.breaker_probes == 0
        {
            return Err("breaker_failure_ratio must be in (0, 1]; breaker_window_ms, breaker_open_ms and breaker_probes > 0".into());
        }
        if !(DNS_INTERVAL_MS_MIN..=DNS_INTERVAL_MS_MAX).contains(&self.dns_interval_ms) {
            return Err(format!(
                "dns_interval_ms must be in {DNS_INTERVAL_MS_MIN}..={DNS_INTERVAL_MS_MAX}"
            ));
        }
        if let Some(dns) = &self.dns {
            let port = dns
                .rsplit_once(':')
                .and_then(|(_, p)| p.parse::<u16>().ok());
            if port.is_none_or(|p| p == 0) {
                return Err(format!("dns {dns:?}: expected host:port"));
            }
        }
        Ok(())
    }

    pub fn breaker(&self) -> BreakerSettings {
        BreakerSettings {
            failure_ratio: self.breaker_failure_ratio,
            min_requests: self.breaker_min_requests,
            window: Duration::from_millis(self.breaker_window_ms),
            open_for: Duration::from_millis(self.breaker_open_ms),
            probes: self.breaker_probes,
        }
    }

    pub fn health(&self) -> HealthCheck {
        HealthCheck {
            path: self.health_path.clone(),
            interval: Duration::from_millis(self.health_interval_ms),
            timeout: Duration::from_millis(self.health_timeout_ms),
        }
    }
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
            ..ServiceSettings::default()
        };
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9080)),
            tls: None,
            admin_token: None,
            watch_config: true,
            rate_limit_redis_url: None,
            headers_max_bytes: 32 * 1024,
            header_read_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            cors: CorsSettings::default(),
            cache: CacheSettings::default(),
            routes: default_routes(),
            services: [
                ("identity".to_string(), local(8081)),
                ("users".to_string(), local(8082)),
            ]
            .into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zero_timeout_is_refused_by_name() {
        for zeroed in [
            GatewaySettings {
                idle_timeout_ms: 0,
                ..GatewaySettings::default()
            },
            GatewaySettings {
                header_read_timeout_ms: 0,
                ..GatewaySettings::default()
            },
        ] {
            let refused = zeroed.check().unwrap_err();
            assert!(refused.contains("idle_timeout_ms"), "{refused}");
        }
        assert!(GatewaySettings::default().check().is_ok());
    }
}
