//! Rate limits per route, per caller (the verified user, or the client's
//! IP), by GCRA: a caller may send `burst` requests at once, then one per
//! `1 / per_second`. Each caller's whole state is one instant (the
//! theoretical arrival time of its next request). Kept in this process;
//! shared through Redis between gateway replicas is to come.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

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
