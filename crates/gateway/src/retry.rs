//! When a failed request is sent again: only when sending it twice is safe
//! (an idempotent method, or an `Idempotency-Key` the upstream honours), on
//! another instance, after a jittered backoff, and only while the service's
//! retry budget allows, so that retries cannot multiply an outage.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::{HeaderMap, Method};

/// The header that makes any method safe to retry.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Retries earned per request sent (20%).
pub const BUDGET_RATIO: f64 = 0.2;
/// Retries earned per second regardless of traffic, so a quiet service can
/// still retry.
pub const BUDGET_FLOOR_PER_S: f64 = 10.0;
/// Retries that can be saved up.
pub const BUDGET_CAP: u64 = 100;
/// The backoff before a retry never exceeds this.
pub const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Whether the request may be sent twice.
pub fn is_safe(method: &Method, headers: &HeaderMap) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    ) || headers.contains_key(IDEMPOTENCY_KEY)
}

/// A wait in `[0, min(BACKOFF_MAX, base × 2^(retry-1))]` ("full jitter").
pub fn backoff(retry: u32, base: Duration) -> Duration {
    let ceiling = base
        .saturating_mul(1 << retry.saturating_sub(1).min(16))
        .min(BACKOFF_MAX);
    ceiling.mul_f64(fastrand::f64())
}

/// Retries a service may spend: every request deposits [`BUDGET_RATIO`],
/// time deposits [`BUDGET_FLOOR_PER_S`], each retry withdraws one. Counted
/// in millionths of a retry, so that sums are exact.
#[derive(Debug)]
pub struct RetryBudget {
    per_request: u64,
    per_second: u64,
    state: Mutex<(u64, Instant)>,
}

const UNIT: u64 = 1_000_000;

impl Default for RetryBudget {
    fn default() -> Self {
        Self::new(BUDGET_RATIO, BUDGET_FLOOR_PER_S)
    }
}

impl RetryBudget {
    /// Starts with one second's floor saved, so that a fresh gateway can
    /// retry its first failures.
    pub fn new(ratio: f64, floor_per_s: f64) -> Self {
        let per_second = (floor_per_s * UNIT as f64).round() as u64;
        Self {
            per_request: (ratio * UNIT as f64).round() as u64,
            per_second,
            state: Mutex::new((per_second.min(BUDGET_CAP * UNIT), Instant::now())),
        }
    }

    /// `f` on the tokens, those earned by `now` added.
    fn with<T>(&self, now: Instant, f: impl FnOnce(&mut u64) -> T) -> T {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, last) = &mut *state;
        let earned = now.duration_since(*last).as_micros() as u64 * self.per_second / 1_000_000;
        if earned > 0 {
            *tokens = (*tokens + earned).min(BUDGET_CAP * UNIT);
            *last = now;
        }
        f(tokens)
    }

    /// A request was sent (not a retry) at `now`.
    pub fn deposit(&self, now: Instant) {
        self.with(now, |tokens| {
            *tokens = (*tokens + self.per_request).min(BUDGET_CAP * UNIT)
        });
    }

    /// Takes one retry if the budget has it at `now`.
    pub fn try_withdraw(&self, now: Instant) -> bool {
        self.with(now, |tokens| {
            let ok = *tokens >= UNIT;
            if ok {
                *tokens -= UNIT;
            }
            ok
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_idempotent_or_keyed_requests_are_safe() {
        let none = HeaderMap::new();
        assert!(is_safe(&Method::GET, &none));
        assert!(is_safe(&Method::PUT, &none));
        assert!(!is_safe(&Method::POST, &none));
        assert!(!is_safe(&Method::PATCH, &none));
        let mut keyed = HeaderMap::new();
        keyed.insert(IDEMPOTENCY_KEY, "k1".parse().unwrap());
        assert!(is_safe(&Method::POST, &keyed));
    }

    #[test]
    fn backoff_is_jittered_under_a_doubling_ceiling() {
        let base = Duration::from_millis(100);
        for retry in 1..6 {
            let ceiling = (base * (1 << (retry - 1))).min(BACKOFF_MAX);
            for _ in 0..50 {
                assert!(backoff(retry, base) <= ceiling);
            }
        }
    }

    #[test]
    fn the_budget_is_a_fifth_of_requests() {
        let budget = RetryBudget::new(BUDGET_RATIO, 0.0);
        assert!(!budget.try_withdraw(Instant::now()));
        for _ in 0..10 {
            budget.deposit(Instant::now());
        }
        // 10 requests earn 2 retries.
        assert!(budget.try_withdraw(Instant::now()));
        assert!(budget.try_withdraw(Instant::now()));
        assert!(!budget.try_withdraw(Instant::now()));
        let floor = RetryBudget::new(0.0, 2.0);
        assert!(
            floor.try_withdraw(Instant::now()) && floor.try_withdraw(Instant::now()),
            "a second's floor to start"
        );
        assert!(!floor.try_withdraw(Instant::now()));
        std::thread::sleep(Duration::from_millis(600));
        assert!(
            floor.try_withdraw(Instant::now()),
            "time alone earns retries"
        );
    }
}
