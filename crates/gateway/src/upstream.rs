//! Upstream services and their instances; which instance takes a request,
//! and which are left out for a while: passive outlier ejection (failures
//! seen on real traffic) and active health checks (`/readyz`).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::HeaderMap;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;

use crate::balance::{Balance, Ring};
use crate::breaker::Breaker;
use crate::metrics::{
    ANSWER_CLASSES, AnswerLabels, GatewayMetrics, InstanceLabels, ServiceLabel, answer_class,
};
use crate::pool::Pool;
use crate::retry::RetryBudget;
use crate::settings::ServiceSettings;

/// Consecutive failures (no answer, or 5xx) that eject an instance.
pub const EJECT_AFTER_FAILURES: u32 = 5;
/// The first ejection lasts this long; each further one this much longer.
pub const EJECTION_BASE: Duration = Duration::from_secs(5);
/// No ejection lasts longer than this.
pub const EJECTION_MAX: Duration = Duration::from_secs(300);
/// At most this share of a service's instances is ejected at once: past
/// it, a failing instance keeps taking traffic rather than overloading
/// the rest.
pub const EJECTED_SHARE_MAX: f64 = 0.5;

/// One instance of a service: where it listens, how many requests it has in
/// flight from this gateway, and whether it is left out for now.
#[derive(Debug)]
pub struct Instance {
    /// `scheme://host:port`, no path.
    pub base: String,
    /// `base`'s host and port, parsed once.
    pub authority: http::uri::Authority,
    /// Keep-alive connections to it.
    pub pool: Arc<Pool>,
    outstanding: AtomicUsize,
    consecutive_failures: AtomicU32,
    ejections: AtomicU32,
    ejected_until: Mutex<Option<Instant>>,
    /// What the last active health check said (true until one fails).
    healthy: AtomicBool,
    /// Answers by class ([`ANSWER_CLASSES`]) and ejections, for metrics.
    answers: [Counter; 6],
    ejected_total: Counter,
}

impl Instance {
    /// An instance of `service` counted in `metrics`; `base` must be
    /// `http://host:port`.
    pub fn counted(base: &str, service: &str, metrics: &GatewayMetrics) -> Result<Self, String> {
        let authority = parse_base(base)?;
        let base = base.trim_end_matches('/').to_owned();
        let answers = ANSWER_CLASSES.map(|class| {
            metrics
                .upstream_requests
                .get_or_create(&AnswerLabels {
                    service: service.into(),
                    instance: base.clone(),
                    class: class.into(),
                })
                .clone()
        });
        let ejected_total = metrics
            .ejections
            .get_or_create(&InstanceLabels {
                service: service.into(),
                instance: base.clone(),
            })
            .clone();
        Ok(Self {
            answers,
            ejected_total,
            pool: Pool::new(authority.clone()),
            authority,
            base,
            outstanding: AtomicUsize::new(0),
            consecutive_failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            ejected_until: Mutex::new(None),
            healthy: AtomicBool::new(true),
        })
    }

    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Relaxed)
    }

    pub fn is_ejected(&self, now: Instant) -> bool {
        self.ejected_until
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|until| now < until)
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// What an active health check found.
    pub fn set_healthy(&self, healthy: bool) {
        if self.healthy.swap(healthy, Ordering::Relaxed) != healthy {
            tracing::warn!(instance = %self.base, healthy, "health check changed");
        }
    }

    /// How many times this instance has been ejected.
    pub fn ejections(&self) -> u32 {
        self.ejections.load(Ordering::Relaxed)
    }

    /// Counts an attempt's outcome: its status, or `None` for no answer.
    pub fn answered(&self, status: Option<u16>) {
        self.answers[answer_class(status)].inc();
    }

    fn takes_traffic(&self, now: Instant) -> bool {
        self.is_healthy() && !self.is_ejected(now)
    }
}

/// The authority of `base`, which must be `http://host:port`.
pub fn parse_base(base: &str) -> Result<http::uri::Authority, String> {
    let uri: http::Uri = base.parse().map_err(|_| format!("{base:?} is not a URL"))?;
    let (Some(_), Some(authority)) = (uri.scheme(), uri.authority()) else {
        return Err(format!("{base:?} must be http://host:port"));
    };
    if uri.scheme_str() != Some("http") || uri.path() != "/" || uri.query().is_some() {
        return Err(format!("{base:?} must be http://host:port with no path"));
    }
    Ok(authority.clone())
}

/// A request in flight on an instance; dropping it ends it.
pub struct InFlight(Arc<Instance>);

impl InFlight {
    pub fn instance(&self) -> &Arc<Instance> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How a service's instances are checked.
#[derive(Debug, Clone)]
pub struct HealthCheck {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
}

impl Default for HealthCheck {
    fn default() -> Self {
        Self {
            path: "/readyz".into(),
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(1),
        }
    }
}

/// A service's instances, swapped whole when discovery changes them, with
/// their hash ring.
#[derive(Debug, Default)]
pub struct Members {
    pub instances: Vec<Arc<Instance>>,
    ring: Ring,
}

/// A service's instances, how they are checked, its circuit breaker and
/// the retries it may spend.
#[derive(Debug)]
pub struct Service {
    pub name: String,
    /// As configured: a reload keeps the service (breaker, budget,
    /// instances) when these did not change.
    pub settings: ServiceSettings,
    members: ArcSwap<Members>,
    pub health: HealthCheck,
    pub breaker: Breaker,
    pub budget: RetryBudget,
    /// Time to upstream answer headers.
    pub latency: Histogram,
    pub balance: Balance,
    /// Whether its health checks (and DNS resolution) run.
    pub(crate) workers_started: AtomicBool,
    /// The instance URLs `settings.dns` resolved to last.
    resolved: Mutex<BTreeSet<String>>,
    metrics: GatewayMetrics,
}

impl Service {
    /// The service `settings` describe, its instances those of `previous`
    /// (health and ejections kept) until [`Service::set_instances`].
    pub fn from_settings(
        name: &str,
        settings: &ServiceSettings,
        metrics: &GatewayMetrics,
        previous: Option<&Service>,
    ) -> Result<Self, String> {
        settings.check()?;
        let balance = Balance::parse(&settings.balance, settings.hash_key.as_deref())?;
        let label = ServiceLabel {
            service: name.to_owned(),
        };
        let breaker = Breaker::new(
            settings.breaker(),
            metrics.breaker_state.get_or_create(&label).clone(),
        );
        let service = Self {
            name: name.to_owned(),
            settings: settings.clone(),
            members: ArcSwap::from_pointee(Members::default()),
            health: settings.health(),
            breaker,
            budget: RetryBudget::default(),
            latency: metrics.upstream_latency.get_or_create(&label).clone(),
            balance,
            workers_started: AtomicBool::new(false),
            resolved: Mutex::default(),
            metrics: metrics.clone(),
        };
        if let Some(previous) = previous {
            service.install(previous.members().instances.clone());
            if previous.settings.dns == settings.dns {
                service.set_resolved(previous.resolved());
            }
        }
        Ok(service)
    }

    /// What `settings.dns` resolved to last.
    pub fn resolved(&self) -> BTreeSet<String> {
        self.resolved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn set_resolved(&self, urls: BTreeSet<String>) {
        *self.resolved.lock().unwrap_or_else(|p| p.into_inner()) = urls;
    }

    /// The instances now.
    pub fn members(&self) -> Arc<Members> {
        self.members.load_full()
    }

    /// Makes `bases` (`http://host:port`) the service's instances: those
    /// already there stay as they are (outstanding requests, health,
    /// ejections), the others are added, the missing ones leave. Refuses
    /// an unusable URL, changing nothing. Says whether anything changed.
    pub fn set_instances(&self, bases: &BTreeSet<String>) -> Result<bool, String> {
        let current = self.members();
        let wanted: BTreeSet<&str> = bases.iter().map(|b| b.trim_end_matches('/')).collect();
        let now: BTreeSet<&str> = current.instances.iter().map(|i| i.base.as_str()).collect();
        if wanted == now {
            return Ok(false);
        }
        let instances = wanted
            .iter()
            .map(
                |base| match current.instances.iter().find(|i| i.base == *base) {
                    Some(kept) => Ok(kept.clone()),
                    None => Instance::counted(base, &self.name, &self.metrics).map(Arc::new),
                },
            )
            .collect::<Result<Vec<_>, _>>()?;
        tracing::info!(
            service = %self.name,
            instances = ?wanted,
            "instances changed"
        );
        self.install(instances);
        Ok(true)
    }

    fn install(&self, instances: Vec<Arc<Instance>>) {
        let ring = self.balance.ring(instances.iter().map(|i| i.base.as_str()));
        self.members.store(Arc::new(Members { instances, ring }));
    }

    /// An instance for a request with `headers`, by the service's
    /// [`Balance`]; least outstanding requests of two at random when that
    /// leaves the choice open. None when there is no instance.
    pub fn pick(&self, headers: &HeaderMap, now: Instant) -> Option<InFlight> {
        self.pick_except(&[], headers, now)
    }

    /// As [`Service::pick`], among the instances not in `tried` (a retry
    /// goes elsewhere). None when none is left. Ejected and unhealthy
    /// instances are left out, unless every instance is: then all take
    /// traffic again (better a chance than a certain 503).
    pub fn pick_except(
        &self,
        tried: &[Arc<Instance>],
        headers: &HeaderMap,
        now: Instant,
    ) -> Option<InFlight> {
        let members = self.members.load();
        let instances = &members.instances;
        let any_in = instances.iter().any(|i| i.takes_traffic(now));
        let candidate = |i: &Arc<Instance>| {
            (!any_in || i.takes_traffic(now)) && !tried.iter().any(|t| Arc::ptr_eq(t, i))
        };
        let by_policy = self
            .balance
            .choose(headers, &members.ring, instances.len(), |i| {
                candidate(&instances[i])
            });
        if let Some(i) = by_policy {
            let chosen = &instances[i];
            chosen.outstanding.fetch_add(1, Ordering::Relaxed);
            return Some(InFlight(chosen.clone()));
        }
        // The n-th candidate, without collecting them (this runs per request).
        let nth = |n: usize| instances.iter().filter(|i| candidate(i)).nth(n);
        let chosen = match instances.iter().filter(|i| candidate(i)).count() {
            0 => return None,
            1 => nth(0)?,
            n => {
                let a = fastrand::usize(..n);
                let b = (a + 1 + fastrand::usize(..n - 1)) % n;
                let (a, b) = (nth(a)?, nth(b)?);
                if b.outstanding() < a.outstanding() {
                    b
                } else {
                    a
                }
            }
        };
        chosen.outstanding.fetch_add(1, Ordering::Relaxed);
        Some(InFlight(chosen.clone()))
    }

    /// An answer below 500 came back: the instance is fine.
    pub fn succeeded(&self, instance: &Instance) {
        instance.consecutive_failures.store(0, Ordering::Relaxed);
    }

    /// No answer, or a 5xx: after [`EJECT_AFTER_FAILURES`] in a row the
    /// instance is ejected (as of `now`), for longer each time, within the
    /// share cap.
    pub fn failed(&self, instance: &Instance, now: Instant) {
        let failures = instance
            .consecutive_failures
            .fetch_add(1, Ordering::Relaxed)
            + 1;
        if failures < EJECT_AFTER_FAILURES {
            return;
        }
        let members = self.members.load();
        let ejected = members
            .instances
            .iter()
            .filter(|i| i.is_ejected(now))
            .count();
        if (ejected + 1) as f64 > members.instances.len() as f64 * EJECTED_SHARE_MAX {
            return;
        }
        let mut until = instance
            .ejected_until
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if until.is_some_and(|u| now < u) {
            return;
        }
        let times = instance.ejections.fetch_add(1, Ordering::Relaxed) + 1;
        let length = EJECTION_BASE.saturating_mul(times).min(EJECTION_MAX);
        *until = Some(now + length);
        instance.consecutive_failures.store(0, Ordering::Relaxed);
        instance.ejected_total.inc();
        tracing::warn!(service = %self.name, instance = %instance.base, times, ejected_for_ms = length.as_millis() as u64, "instance ejected");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Service {
        /// A service with default policies and unregistered metrics.
        fn new(name: &str, bases: &[&str]) -> Self {
            let settings = ServiceSettings::default();
            let service =
                Service::from_settings(name, &settings, &GatewayMetrics::default(), None).unwrap();
            let bases = bases.iter().map(|b| b.to_string()).collect();
            service.set_instances(&bases).unwrap();
            service
        }

        fn instance(&self, i: usize) -> Arc<Instance> {
            self.members().instances[i].clone()
        }
    }

    #[test]
    fn the_less_busy_of_two_wins_and_release_counts_down() {
        let service = Service::new("s", &["http://a/", "http://b"]);
        assert_eq!(service.instance(0).base, "http://a");
        let busy = service.pick(&HeaderMap::new(), Instant::now()).unwrap();
        // With two instances both are always compared: the idle one wins.
        for _ in 0..20 {
            let next = service.pick(&HeaderMap::new(), Instant::now()).unwrap();
            assert!(!Arc::ptr_eq(next.instance(), busy.instance()));
        }
        drop(busy);
        assert!(
            service
                .members()
                .instances
                .iter()
                .all(|i| i.outstanding() == 0)
        );
    }

    #[test]
    fn a_retry_goes_to_an_instance_not_yet_tried() {
        let service = Service::new("s", &["http://a", "http://b"]);
        let first = service.pick(&HeaderMap::new(), Instant::now()).unwrap();
        let other = service
            .pick_except(
                &[first.instance().clone()],
                &HeaderMap::new(),
                Instant::now(),
            )
            .unwrap();
        assert!(!Arc::ptr_eq(other.instance(), first.instance()));
        let both = [first.instance().clone(), other.instance().clone()];
        assert!(
            service
                .pick_except(&both, &HeaderMap::new(), Instant::now())
                .is_none()
        );
        assert!(
            Service::new("e", &[])
                .pick(&HeaderMap::new(), Instant::now())
                .is_none()
        );
    }

    fn three() -> Service {
        Service::new("s", &["http://a", "http://b", "http://c"])
    }

    #[test]
    fn consecutive_failures_eject_for_longer_each_time_within_the_share_cap() {
        let service = three();
        let (a, b) = (service.instance(0), service.instance(1));
        for _ in 0..EJECT_AFTER_FAILURES - 1 {
            service.failed(&a, Instant::now());
        }
        service.succeeded(&a);
        service.failed(&a, Instant::now());
        assert!(!a.is_ejected(Instant::now()), "a success resets the count");
        for _ in 0..EJECT_AFTER_FAILURES {
            service.failed(&a, Instant::now());
        }
        assert!(a.is_ejected(Instant::now()));
        assert_eq!(a.ejections(), 1);
        for _ in 0..100 {
            let picked = service.pick(&HeaderMap::new(), Instant::now()).unwrap();
            assert!(
                !Arc::ptr_eq(picked.instance(), &a),
                "an ejected instance takes nothing"
            );
        }
        // A second one would eject 2 of 3, over the 50% cap: it stays in.
        for _ in 0..EJECT_AFTER_FAILURES {
            service.failed(&b, Instant::now());
        }
        assert!(!b.is_ejected(Instant::now()));
        let until = a.ejected_until.lock().unwrap().unwrap();
        assert!(until <= Instant::now() + EJECTION_BASE);
    }

    #[test]
    fn unhealthy_instances_are_left_out_unless_all_are() {
        let service = three();
        service.instance(0).set_healthy(false);
        service.instance(1).set_healthy(false);
        for _ in 0..50 {
            let picked = service.pick(&HeaderMap::new(), Instant::now()).unwrap();
            assert!(Arc::ptr_eq(picked.instance(), &service.instance(2)));
        }
        service.instance(2).set_healthy(false);
        assert!(
            service.pick(&HeaderMap::new(), Instant::now()).is_some(),
            "all down: all take traffic again"
        );
    }

    #[test]
    fn new_instances_join_and_kept_ones_keep_their_state() {
        let service = three();
        let a = service.instance(0);
        a.set_healthy(false);
        let bases = ["http://a/", "http://c", "http://d"]
            .map(String::from)
            .into();
        assert!(service.set_instances(&bases).unwrap());
        let now: Vec<String> = service
            .members()
            .instances
            .iter()
            .map(|i| i.base.clone())
            .collect();
        assert_eq!(now, ["http://a", "http://c", "http://d"]);
        assert!(
            Arc::ptr_eq(&service.instance(0), &a),
            "a is the same instance"
        );
        assert!(!service.instance(0).is_healthy());
        assert!(!service.set_instances(&bases).unwrap(), "no change");
        let bad = ["ftp://x".to_string()].into();
        assert!(service.set_instances(&bad).is_err());
        assert_eq!(
            service.members().instances.len(),
            3,
            "a refusal changes nothing"
        );
    }
}
