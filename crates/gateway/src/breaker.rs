//! A circuit breaker per upstream service. Closed, it counts outcomes in a
//! sliding window; when enough requests fail it opens, and requests are
//! refused at once (503 with `Retry-After`) instead of piling onto a
//! failing service. After `open_for` it lets a few probes through
//! (half-open): if they all succeed it closes, if one fails it opens again.
//! A request that times out counts as a failure: the timeout sits inside
//! the breaker.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus_client::metrics::gauge::Gauge;

/// Buckets the window is counted in.
const BUCKETS: usize = 10;

#[derive(Debug, Clone, Copy)]
pub struct BreakerSettings {
    /// Failures / requests over the window at or above which it opens.
    pub failure_ratio: f64,
    /// Fewer requests than this in the window never open it.
    pub min_requests: u32,
    pub window: Duration,
    /// How long it stays open before probing.
    pub open_for: Duration,
    /// Probes let through while half-open.
    pub probes: u32,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            failure_ratio: 0.5,
            min_requests: 20,
            window: Duration::from_secs(10),
            open_for: Duration::from_secs(5),
            probes: 3,
        }
    }
}

/// What the breaker is doing, for metrics and the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

#[derive(Debug)]
enum Phase {
    Closed,
    Open { until: Instant },
    HalfOpen { admitted: u32, succeeded: u32 },
}

/// One slice of the window: which slice it is counting (its number since
/// the breaker was made), requests, failures.
#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    index: u64,
    requests: u32,
    failures: u32,
}

#[derive(Debug)]
struct Inner {
    phase: Phase,
    buckets: [Bucket; BUCKETS],
}

#[derive(Debug)]
pub struct Breaker {
    settings: BreakerSettings,
    epoch: Instant,
    inner: Mutex<Inner>,
    /// 0 closed, 1 open, 2 half-open: `tessera_gateway_breaker_state`.
    gauge: Gauge,
}

/// Leave to send one request; report how it went.
#[derive(Debug)]
pub struct Admitted {
    probe: bool,
}

impl Breaker {
    pub fn new(settings: BreakerSettings, gauge: Gauge) -> Self {
        gauge.set(0);
        Self {
            settings,
            gauge,
            epoch: Instant::now(),
            inner: Mutex::new(Inner {
                phase: Phase::Closed,
                buckets: [Bucket::default(); BUCKETS],
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn state(&self) -> BreakerState {
        match self.lock().phase {
            Phase::Closed => BreakerState::Closed,
            Phase::Open { until } if Instant::now() < until => BreakerState::Open,
            Phase::Open { .. } | Phase::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Leave to send a request at `now`, or how long until the breaker may
    /// let one through.
    pub fn admit(&self, now: Instant) -> Result<Admitted, Duration> {
        let mut inner = self.lock();
        match inner.phase {
            Phase::Closed => Ok(Admitted { probe: false }),
            Phase::Open { until } if now < until => Err(until - now),
            Phase::Open { .. } => {
                inner.phase = Phase::HalfOpen {
                    admitted: 1,
                    succeeded: 0,
                };
                self.gauge.set(2);
                Ok(Admitted { probe: true })
            }
            Phase::HalfOpen {
                ref mut admitted, ..
            } if *admitted < self.settings.probes => {
                *admitted += 1;
                Ok(Admitted { probe: true })
            }
            Phase::HalfOpen { .. } => Err(self.settings.open_for.min(Duration::from_secs(1))),
        }
    }

    /// How the admitted request went.
    pub fn record(&self, admitted: Admitted, success: bool, now: Instant) {
        let mut inner = self.lock();
        if admitted.probe {
            if let Phase::HalfOpen {
                ref mut succeeded, ..
            } = inner.phase
            {
                if !success {
                    self.open(&mut inner, now);
                } else {
                    *succeeded += 1;
                    if *succeeded >= self.settings.probes {
                        inner.phase = Phase::Closed;
                        inner.buckets = [Bucket::default(); BUCKETS];
                        self.gauge.set(0);
                        tracing::info!("circuit closed");
                    }
                }
            }
            return;
        }
        if !matches!(inner.phase, Phase::Closed) {
            return;
        }
        let width = (self.settings.window / BUCKETS as u32).as_nanos().max(1);
        // Counted from 1, so that an untouched bucket (index 0) is stale.
        let index = (now.duration_since(self.epoch).as_nanos() / width) as u64 + 1;
        let bucket = &mut inner.buckets[index as usize % BUCKETS];
        if bucket.index != index {
            *bucket = Bucket {
                index,
                ..Bucket::default()
            };
        }
        bucket.requests += 1;
        bucket.failures += u32::from(!success);
        let (requests, failures) = inner
            .buckets
            .iter()
            .filter(|b| b.index + BUCKETS as u64 > index)
            .fold((0, 0), |(r, f), b| (r + b.requests, f + b.failures));
        if requests >= self.settings.min_requests
            && f64::from(failures) >= f64::from(requests) * self.settings.failure_ratio
        {
            self.open(&mut inner, now);
        }
    }

    fn open(&self, inner: &mut Inner, now: Instant) {
        inner.phase = Phase::Open {
            until: now + self.settings.open_for,
        };
        self.gauge.set(1);
        tracing::warn!(
            open_for_ms = self.settings.open_for.as_millis() as u64,
            "circuit opened"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quick() -> Breaker {
        let settings = BreakerSettings {
            failure_ratio: 0.5,
            min_requests: 4,
            window: Duration::from_secs(10),
            open_for: Duration::from_millis(100),
            probes: 2,
        };
        Breaker::new(settings, Gauge::default())
    }

    fn outcome(breaker: &Breaker, success: bool) {
        let admitted = breaker.admit(Instant::now()).expect("admitted");
        breaker.record(admitted, success, Instant::now());
    }

    #[test]
    fn opens_on_the_failure_ratio_then_probes_then_closes() {
        let breaker = quick();
        outcome(&breaker, false);
        outcome(&breaker, false);
        outcome(&breaker, true);
        assert_eq!(breaker.state(), BreakerState::Closed, "under min_requests");
        outcome(&breaker, false);
        assert_eq!(breaker.state(), BreakerState::Open, "3 of 4 failed");
        assert_eq!(breaker.gauge.get(), 1);
        let wait = breaker.admit(Instant::now()).unwrap_err();
        assert!(wait <= Duration::from_millis(100));
        std::thread::sleep(Duration::from_millis(120));
        let first = breaker.admit(Instant::now()).unwrap();
        let second = breaker.admit(Instant::now()).unwrap();
        assert!(
            breaker.admit(Instant::now()).is_err(),
            "only 2 probes at a time"
        );
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        assert_eq!(breaker.gauge.get(), 2);
        breaker.record(first, true, Instant::now());
        breaker.record(second, true, Instant::now());
        assert_eq!(breaker.state(), BreakerState::Closed);
        assert_eq!(breaker.gauge.get(), 0);
        outcome(&breaker, false);
        assert_eq!(breaker.state(), BreakerState::Closed, "a fresh window");
    }

    #[test]
    fn a_failed_probe_opens_it_again() {
        let breaker = quick();
        for _ in 0..4 {
            outcome(&breaker, false);
        }
        std::thread::sleep(Duration::from_millis(120));
        outcome(&breaker, false);
        assert_eq!(breaker.state(), BreakerState::Open);
    }

    #[test]
    fn successes_keep_it_closed() {
        let breaker = quick();
        for i in 0..100 {
            outcome(&breaker, i % 3 != 2);
        }
        assert_eq!(breaker.state(), BreakerState::Closed);
    }
}
