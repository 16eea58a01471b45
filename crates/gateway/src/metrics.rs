//! The gateway's own metrics, beside the kit's per-route request counts and
//! latencies. Handles are made once, when routes and services are built, so
//! the request path only increments atomics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabel {
    pub service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    pub route: String,
    /// `hit`, `miss` or `bypass`.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InstanceLabels {
    pub service: String,
    pub instance: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AnswerLabels {
    pub service: String,
    pub instance: String,
    /// `2xx` … `5xx`, or `none` when no answer came.
    pub class: String,
}

/// Answer classes of [`AnswerLabels::class`], in [`answer_class`] order.
pub const ANSWER_CLASSES: [&str; 6] = ["none", "1xx", "2xx", "3xx", "4xx", "5xx"];

/// The index in [`ANSWER_CLASSES`] of a status, `None` for no answer.
pub fn answer_class(status: Option<u16>) -> usize {
    status.map_or(0, |s| usize::from(s / 100).clamp(1, 5))
}

#[derive(Clone, Debug)]
pub struct GatewayMetrics {
    pub upstream_requests: Family<AnswerLabels, Counter>,
    pub upstream_latency: Family<ServiceLabel, Histogram>,
    pub retries: Family<RouteLabel, Counter>,
    pub shed: Family<RouteLabel, Counter>,
    pub rate_limited: Family<RouteLabel, Counter>,
    pub ejections: Family<InstanceLabels, Counter>,
    pub breaker_state: Family<ServiceLabel, Gauge>,
    pub rate_limit_store_errors: Counter,
    pub cache_lookups: Family<CacheLabels, Counter>,
    pub cache_purged: Counter,
    pub cache_store_errors: Counter,
}

/// Families registered nowhere (tests, and instances made on their own).
impl Default for GatewayMetrics {
    fn default() -> Self {
        Self {
            upstream_requests: Family::default(),
            upstream_latency: Family::new_with_constructor(kit::telemetry::latency_histogram),
            retries: Family::default(),
            shed: Family::default(),
            rate_limited: Family::default(),
            ejections: Family::default(),
            breaker_state: Family::default(),
            rate_limit_store_errors: Counter::default(),
            cache_lookups: Family::default(),
            cache_purged: Counter::default(),
            cache_store_errors: Counter::default(),
        }
    }
}

impl GatewayMetrics {
    /// Families registered on the process's metrics.
    pub fn registered(metrics: &kit::telemetry::Metrics) -> Self {
        let this = Self::default();
        metrics.register(
            "gateway_upstream_requests",
            "Requests sent upstream (retries included), by service, instance and answer class",
            this.upstream_requests.clone(),
        );
        metrics.register(
            "gateway_upstream_duration_seconds",
            "Time to an upstream's answer headers, by service",
            this.upstream_latency.clone(),
        );
        metrics.register(
            "gateway_retries",
            "Requests sent again after a failure, by route",
            this.retries.clone(),
        );
        metrics.register(
            "gateway_shed",
            "Requests refused at a route's concurrency limit",
            this.shed.clone(),
        );
        metrics.register(
            "gateway_rate_limited",
            "Requests refused by a route's rate limit",
            this.rate_limited.clone(),
        );
        metrics.register(
            "gateway_ejections",
            "Times an instance was ejected after consecutive failures",
            this.ejections.clone(),
        );
        metrics.register(
            "gateway_breaker_state",
            "Circuit breaker per service: 0 closed, 1 open, 2 half-open",
            this.breaker_state.clone(),
        );
        metrics.register(
            "gateway_rate_limit_store_errors",
            "Rate limit checks Redis could not answer (this replica's limits decided)",
            this.rate_limit_store_errors.clone(),
        );
        metrics.register(
            "gateway_cache_lookups",
            "Cached routes' GETs, by route and outcome (hit, miss, bypass)",
            this.cache_lookups.clone(),
        );
        metrics.register(
            "gateway_cache_purged",
            "Cache entries removed by purges (admin API, events, writes through the route)",
            this.cache_purged.clone(),
        );
        metrics.register(
            "gateway_cache_store_errors",
            "Cache lookups and writes the store could not answer (served from the upstream)",
            this.cache_store_errors.clone(),
        );
        this
    }
}
