//! The service kit: what every Tessera service shares so that it only has to
//! write its domain.
//!
//! - [`config`]: one TOML file plus `TESSERA_...` environment overrides.
//! - [`telemetry`]: logs, trace context, Prometheus metrics.
//! - [`problem`]: RFC 9457 errors with stable codes from one table.
//! - [`http`]: the router every service is wrapped in (health, readiness,
//!   metrics, body limit, timeout, graceful shutdown) and the JSON extractor.
//! - [`auth`]: EdDSA access tokens: signing, JWKS, verification, extractor.
//! - [`kv`]: the key-value port (TTLs, counters) and its adapters.
//! - [`sql`]: SQL pool helpers for SQLite and PostgreSQL.
//! - [`listen`]: listeners, bound here or inherited from `tessera up`.
//! - [`registry`]: registration with the gateway while serving.
//! - [`lockfile`]: cross-process exclusive locks on files.
//! - [`clock`]: the injected clock.

pub mod auth;
pub mod clock;
pub mod config;
pub mod http;
pub mod kv;
pub mod listen;
pub mod lockfile;
pub mod problem;
pub mod registry;
pub mod sql;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;

/// Fills a fresh array with bytes from the operating system's CSPRNG.
///
/// Panics only if the OS has no entropy source, in which case no key,
/// token or salt could be made safely and stopping is the right answer.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).expect("the operating system's random source failed");
    bytes
}
