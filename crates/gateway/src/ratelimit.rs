//! Rate limits per route, per caller (the verified user, or the client's
//! IP), by GCRA: a caller may send `burst` requests at once, then one per
//! `1 / per_second`. Each caller's whole state is one instant (the
//! theoretical arrival time of its next request). Kept in this process by
//! default; with `rate_limit_redis_url`, in Redis ([`SharedLimits`]) so
//! that every gateway replica counts against the same limit.
//!
//! When Redis cannot answer (down, slow past [`REDIS_TIMEOUT`]), the
//! request is decided by this process's own limiter instead, and Redis is
//! left alone for [`REDIS_REST`]: fail open to per-replica limits. A
//! rate limit protects the services from abuse; refusing every request
//! because the limit's store is down would turn a Redis outage into an
//! outage of the whole API, while letting everything through would drop
//! the protection. Each fallback is counted
//! (`tessera_gateway_rate_limit_store_errors_total`) and logged.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;

/// The longest wait for Redis on a request's path (connecting included).
pub const REDIS_TIMEOUT: Duration = Duration::from_millis(100);
/// After Redis failed, local limits decide for this long before it is
/// asked again.
pub const REDIS_REST: Duration = Duration::from_secs(1);
/// Keys in Redis: `{REDIS_KEY_PREFIX}{route}:{caller}`.
pub const REDIS_KEY_PREFIX: &str = "tessera:gateway:ratelimit:";

/// Callers remembered per route. When full, callers whose state has run
/// out are forgotten; if that is not enough, a new caller is let through
/// untracked (and logged) rather than refused for others' traffic.
pub const TRACKED_KEYS_MAX: usize = 100_000;

/// Whose requests a limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LimitKey {
    /// The verified user (the route must authenticate).
    User,
    /// The client's IP address.
    Ip,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    pub per_second: f64,
    pub burst: u32,
    pub key: LimitKey,
}

#[derive(Debug)]
pub struct RateLimiter {
    pub key: LimitKey,
    interval: Duration,
    /// How far ahead of now a caller's arrival time may run: the burst.
    tolerance: Duration,
    arrivals: Mutex<HashMap<String, Instant>>,
}

impl RateLimiter {
    pub fn new(config: &RateLimitConfig) -> Result<Self, String> {
        if !(config.per_second > 0.0 && config.per_second.is_finite()) || config.burst == 0 {
            return Err("rate_limit needs per_second > 0 and burst ≥ 1".into());
        }
        let interval = Duration::from_secs_f64(1.0 / config.per_second);
        Ok(Self {
            key: config.key,
            interval,
            tolerance: interval * (config.burst - 1),
            arrivals: Mutex::new(HashMap::new()),
        })
    }

    /// Lets a request of `caller` through, or says how long until one
    /// would be.
    pub fn check(&self, caller: &str, now: Instant) -> Result<(), Duration> {
        let mut arrivals = self.arrivals.lock().unwrap_or_else(|p| p.into_inner());
        if arrivals.len() >= TRACKED_KEYS_MAX && !arrivals.contains_key(caller) {
            arrivals.retain(|_, arrival| *arrival > now);
            if arrivals.len() >= TRACKED_KEYS_MAX {
                tracing::warn!("rate limiter full: a new caller goes untracked");
                return Ok(());
            }
        }
        let arrival = arrivals.get(caller).map_or(now, |&a| a.max(now));
        if let Some(allowed_from) = arrival.checked_sub(self.tolerance)
            && now < allowed_from
        {
            return Err(allowed_from - now);
        }
        arrivals.insert(caller.to_owned(), arrival + self.interval);
        Ok(())
    }
}

/// GCRA on Redis's clock, one key per route and caller. Returns 0 when
/// the request may go, else the microseconds until one would.
const GCRA_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < now then tat = now end
if now < tat - tolerance then return tat - tolerance - now end
local next = tat + interval
redis.call('SET', KEYS[1], string.format('%.0f', next), 'PX', math.floor((next - now) / 1000) + 1)
return 0
";

/// Rate limit state in Redis, shared by every gateway replica using it.
pub struct SharedLimits {
    pub url: String,
    client: redis::Client,
    connection: OnceCell<ConnectionManager>,
    script: redis::Script,
    /// Until then, Redis is not asked: it failed a moment ago.
    resting_until: Mutex<Option<Instant>>,
    errors: Counter,
}

impl std::fmt::Debug for SharedLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedLimits")
            .field("url", &self.url)
            .finish()
    }
}

impl SharedLimits {
    /// Limits kept at `url`; nothing is connected until the first request.
    pub fn new(url: &str, errors: Counter) -> Result<Self, String> {
        let client = redis::Client::open(url).map_err(|e| format!("rate_limit_redis_url: {e}"))?;
        Ok(Self {
            url: url.to_owned(),
            client,
            connection: OnceCell::new(),
            script: redis::Script::new(GCRA_SCRIPT),
            resting_until: Mutex::new(None),
            errors,
        })
    }

    /// Redis's verdict for `caller` on `route` under `limiter`'s rate, or
    /// `None` when Redis could not give one (the caller decides locally).
    pub async fn check(
        &self,
        route: &str,
        caller: &str,
        limiter: &RateLimiter,
    ) -> Option<Result<(), Duration>> {
        let now = Instant::now();
        {
            let resting = self.resting_until.lock().unwrap_or_else(|p| p.into_inner());
            if resting.is_some_and(|until| now < until) {
                return None;
            }
        }
        let asked = tokio::time::timeout(REDIS_TIMEOUT, async {
            let connection = self
                .connection
                .get_or_try_init(|| ConnectionManager::new(self.client.clone()))
                .await?;
            let wait_us: u64 = self
                .script
                .key(format!("{REDIS_KEY_PREFIX}{route}:{caller}"))
                .arg(limiter.interval.as_micros() as u64)
                .arg(limiter.tolerance.as_micros() as u64)
                .invoke_async(&mut connection.clone())
                .await?;
            Ok::<_, redis::RedisError>(wait_us)
        })
        .await;
        let failure = match asked {
            Ok(Ok(0)) => return Some(Ok(())),
            Ok(Ok(wait_us)) => return Some(Err(Duration::from_micros(wait_us))),
            Ok(Err(error)) => error.to_string(),
            Err(_) => format!("no answer within {} ms", REDIS_TIMEOUT.as_millis()),
        };
        self.errors.inc();
        *self.resting_until.lock().unwrap_or_else(|p| p.into_inner()) = Some(now + REDIS_REST);
        tracing::warn!(
            url = %self.url,
            %failure,
            rest_ms = REDIS_REST.as_millis() as u64,
            "rate limit store failed; this replica's own limits decide meanwhile"
        );
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(per_second: f64, burst: u32) -> RateLimiter {
        RateLimiter::new(&RateLimitConfig {
            per_second,
            burst,
            key: LimitKey::Ip,
        })
        .unwrap()
    }

    #[test]
    fn a_burst_then_one_per_interval_per_caller() {
        let limiter = limiter(10.0, 3);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(limiter.check("a", t0).is_ok());
        }
        let wait = limiter.check("a", t0).unwrap_err();
        assert!(wait > Duration::from_millis(90) && wait <= Duration::from_millis(100));
        assert!(limiter.check("b", t0).is_ok(), "another caller has its own");
        assert!(limiter.check("a", t0 + Duration::from_millis(100)).is_ok());
        assert!(limiter.check("a", t0 + Duration::from_millis(100)).is_err());
        assert!(
            limiter.check("a", t0 + Duration::from_secs(1)).is_ok(),
            "refilled"
        );
    }

    #[test]
    fn nonsense_settings_are_refused() {
        for (per_second, burst) in [(0.0, 1), (-1.0, 1), (f64::NAN, 1), (1.0, 0)] {
            let config = RateLimitConfig {
                per_second,
                burst,
                key: LimitKey::User,
            };
            assert!(RateLimiter::new(&config).is_err());
        }
    }
}
