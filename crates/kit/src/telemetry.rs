//! Logs, W3C trace context and Prometheus metrics.
//!
//! Every request runs inside a [`TraceContext`] (taken from `traceparent` or
//! created) held in a task-local, so that logs, problem bodies and outgoing
//! calls carry the same trace id without threading it through every call.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogSettings};

/// Installs the global log subscriber. Safe to call more than once (tests):
/// later calls keep the first subscriber.
pub fn init_logs(settings: &LogSettings) {
    let filter = EnvFilter::try_new(&settings.filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout);
    let _ = match settings.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
        LogFormat::Human => builder.with_ansi(false).try_init(),
    };
}

/// The W3C trace context header. Header names used on every request are
/// constants: a name given as a string is parsed again at each use.
pub const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");

/// A W3C trace id: 128 bits, written as 32 lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceId(pub u128);

impl std::fmt::Display for TraceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// W3C trace context of the request being served. Plain numbers, written
/// out only when a header or a log line needs them: every request has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: TraceId,
    /// This hop's span id.
    pub span_id: u64,
    pub sampled: bool,
}

impl TraceContext {
    /// Continues the caller's trace, or starts one when `traceparent` is
    /// missing or malformed (W3C says: restart, do not fail).
    ///
    /// Ids come from a fast per-thread generator, not the OS: they must be
    /// unique and unguessable enough to correlate, not secret, and every
    /// request makes one.
    pub fn continue_or_start(traceparent: Option<&str>) -> Self {
        let span_id = fastrand::u64(1..);
        match traceparent.and_then(parse_traceparent) {
            Some((trace_id, sampled)) => Self {
                trace_id,
                span_id,
                sampled,
            },
            None => Self {
                trace_id: TraceId(fastrand::u128(1..)),
                span_id,
                sampled: true,
            },
        }
    }

    /// The `traceparent` to send on calls made while serving this request.
    pub fn traceparent(&self) -> String {
        let bytes = self.traceparent_bytes();
        std::str::from_utf8(&bytes)
            .expect("hex digits and dashes")
            .to_owned()
    }

    /// [`TraceContext::traceparent`] as a header value, whose clones share
    /// its bytes (a request's calls and its answer carry the same one).
    pub fn traceparent_header(&self) -> http::HeaderValue {
        let bytes = bytes::Bytes::from_owner(self.traceparent_bytes());
        http::HeaderValue::from_maybe_shared(bytes).expect("a traceparent is visible ASCII")
    }

    /// `00-{trace id}-{span id}-{flags}`, written without the formatting
    /// machinery: every request writes one or two.
    fn traceparent_bytes(&self) -> [u8; TRACEPARENT_LEN] {
        let mut out = [b'-'; TRACEPARENT_LEN];
        out[..2].copy_from_slice(b"00");
        write_hex(&mut out[3..35], &self.trace_id.0.to_be_bytes());
        write_hex(&mut out[36..52], &self.span_id.to_be_bytes());
        out[53..].copy_from_slice(if self.sampled { b"01" } else { b"00" });
        out
    }
}

/// `00-` + 32 + `-` + 16 + `-` + 2.
const TRACEPARENT_LEN: usize = 55;

/// Each byte's two lowercase hex digits: one look-up per byte, not a
/// shift and mask per digit.
const HEX_PAIRS: [[u8; 2]; 256] = {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut pairs = [[0; 2]; 256];
    let mut byte = 0;
    while byte < 256 {
        pairs[byte] = [DIGITS[byte >> 4], DIGITS[byte & 0xf]];
        byte += 1;
    }
    pairs
};

/// A new request id: a random UUID (version 4), hyphenated, lowercase.
pub fn new_request_id() -> http::HeaderValue {
    let mut random = fastrand::u128(..).to_be_bytes();
    random[6] = (random[6] & 0x0f) | 0x40; // version 4
    random[8] = (random[8] & 0x3f) | 0x80; // RFC 9562's variant
    let mut text = [b'-'; 36];
    // Groups of 8, 4, 4, 4 and 12 digits: their bytes, where they start.
    for (bytes, at) in [(0..4, 0), (4..6, 9), (6..8, 14), (8..10, 19), (10..16, 24)] {
        let digits = bytes.len() * 2;
        write_hex(&mut text[at..at + digits], &random[bytes]);
    }
    let bytes = bytes::Bytes::from_owner(text);
    http::HeaderValue::from_maybe_shared(bytes).expect("hex digits and dashes")
}

/// `bytes` (most significant first) as hex digits into `out`, which is
/// twice as long.
fn write_hex(out: &mut [u8], bytes: &[u8]) {
    for (pair, &byte) in out.chunks_exact_mut(2).zip(bytes) {
        pair.copy_from_slice(&HEX_PAIRS[usize::from(byte)]);
    }
}

fn parse_traceparent(value: &str) -> Option<(TraceId, bool)> {
    let mut parts = value.trim().split('-');
    let (version, trace_id, parent_id, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let is_hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let valid = is_hex(version, 2)
        && version != "ff"
        && (version != "00" || parts.next().is_none())
        && is_hex(trace_id, 32)
        && trace_id.bytes().any(|b| b != b'0')
        && is_hex(parent_id, 16)
        && parent_id.bytes().any(|b| b != b'0')
        && is_hex(flags, 2);
    if !valid {
        return None;
    }
    let sampled = u8::from_str_radix(flags, 16).ok()? & 1 == 1;
    Some((TraceId(u128::from_str_radix(trace_id, 16).ok()?), sampled))
}

/// The trace something is done in: its context, and its `traceparent`,
/// written once for every call made in it (and a request's answer).
#[derive(Debug, Clone)]
pub struct Traced {
    context: TraceContext,
    traceparent: http::HeaderValue,
}

impl Traced {
    pub fn new(context: TraceContext) -> Self {
        let traceparent = context.traceparent_header();
        Self {
            context,
            traceparent,
        }
    }

    /// The `traceparent` header of this hop (a clone shares its bytes).
    pub fn traceparent(&self) -> &http::HeaderValue {
        &self.traceparent
    }
}

tokio::task_local! {
    static CURRENT: Traced;
}

/// Runs `future` in `traced` (the current trace while it runs). Not an
/// `async fn`: that would hold `future` twice (as its argument and inside
/// the scope), and the request's future is the largest there is.
pub fn in_trace<F: Future>(
    traced: Traced,
    future: F,
) -> tokio::task::futures::TaskLocalFuture<Traced, F> {
    CURRENT.scope(traced, future)
}

pub fn current_trace() -> Option<TraceContext> {
    CURRENT.try_with(|c| c.context).ok()
}

/// The current trace's `traceparent` header, for a call made in it.
pub fn current_traceparent() -> Option<http::HeaderValue> {
    CURRENT.try_with(|c| c.traceparent.clone()).ok()
}

pub fn current_trace_id() -> Option<String> {
    CURRENT.try_with(|c| c.context.trace_id.to_string()).ok()
}

#[derive(Clone, Debug, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// One of the standard methods, or [`OTHER_METHOD`]: see
    /// [`method_label`].
    pub method: &'static str,
    /// The route template (`/api/v1/users/{id}`) or the gateway route's
    /// name, never the raw path, so that label cardinality stays bounded.
    pub route: RouteName,
    pub status: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub method: &'static str,
    pub route: RouteName,
}

// Every request looks its label sets up, and the metric families hash with
// SipHash, which costs per write: each set is one write of a cheap digest
// of its values (equal sets, equal digests, as `Hash` asks).
impl std::hash::Hash for RequestLabels {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(label_digest(self.method, &self.route) ^ u64::from(self.status));
    }
}

impl std::hash::Hash for RouteLabels {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(label_digest(self.method, &self.route));
    }
}

/// FNV-1a over a method and a route name. Not for untrusted input: label
/// values come from the configuration and a fixed set of methods.
fn label_digest(method: &str, route: &RouteName) -> u64 {
    let mut digest: u64 = 0xcbf2_9ce4_8422_2325;
    for part in [method.as_bytes(), b"\0", route.as_str().as_bytes()] {
        for &byte in part {
            digest = (digest ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    digest
}

/// The method label of requests with a method outside the standard ones:
/// a client can send any token as a method, and one series per token
/// would grow without bound.
pub const OTHER_METHOD: &str = "other";

/// A method as a label value: one of a fixed set, so that the series a
/// client can make stay bounded.
pub fn method_label(method: &http::Method) -> &'static str {
    const STANDARD: [&str; 9] = [
        "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "CONNECT", "TRACE",
    ];
    STANDARD
        .into_iter()
        .find(|name| *name == method.as_str())
        .unwrap_or(OTHER_METHOD)
}

/// The Prometheus registry of one process and the HTTP metrics every
/// service has. Services register their own metrics on [`Metrics::registry`]
/// before serving.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<std::sync::RwLock<Registry>>,
    /// Told apart from other registries (tests make many) in
    /// [`RECENT_SERIES`].
    id: u64,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
    pub in_flight: Gauge,
}

/// The label sets a thread last recorded requests under, at most this
/// many; when full, it starts over.
const RECENT_SERIES_MAX: usize = 64;

/// One label set's request counter and latency histogram (handles to the
/// families' own series).
struct Series {
    metrics: u64,
    method: &'static str,
    route: RouteName,
    status: u16,
    requests: Counter,
    latency: Histogram,
}

thread_local! {
    /// Every request records under a label set, nearly always one seen
    /// before: found here by comparison, where a family hashes the labels
    /// and takes its lock.
    static RECENT_SERIES: std::cell::RefCell<Vec<Series>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Latency buckets in seconds: 1 ms to 10 s.
const LATENCY_BUCKETS_S: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// A latency histogram with the buckets every Tessera latency uses.
pub fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS_S.into_iter())
}

/// The route a response belongs to, for metrics and the access log, when
/// the router's matched path does not say it (the gateway's routes): put
/// in the response's extensions. Shared, so that naming a response copies
/// no string.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub struct RouteName(pub Arc<str>);

impl RouteName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for RouteName {
    fn from(name: &str) -> Self {
        Self(name.into())
    }
}

impl std::fmt::Display for RouteName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl EncodeLabelValue for RouteName {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelValueEncoder,
    ) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

impl Metrics {
    pub fn new(role: &str) -> Self {
        let mut registry = Registry::with_prefix_and_labels(
            "tessera",
            [(
                std::borrow::Cow::Borrowed("role"),
                std::borrow::Cow::Owned(role.to_owned()),
            )]
            .into_iter(),
        );
        let requests = Family::<RequestLabels, Counter>::default();
        let latency: Family<RouteLabels, Histogram> =
            Family::new_with_constructor(latency_histogram);
        let in_flight = Gauge::default();
        registry.register(
            "http_requests",
            "HTTP requests served, by route and status",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency, by route",
            latency.clone(),
        );
        registry.register(
            "http_requests_in_flight",
            "HTTP requests being served now",
            in_flight.clone(),
        );
        static IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        Self {
            registry: Arc::new(std::sync::RwLock::new(registry)),
            id: IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            requests,
            latency,
            in_flight,
        }
    }

    /// Counts a request served under `method`, `route` and `status`, and
    /// its latency.
    pub fn record(&self, method: &'static str, route: RouteName, status: u16, elapsed: Duration) {
        RECENT_SERIES.with_borrow_mut(|recent| {
            let known = recent.iter().position(|series| {
                series.metrics == self.id
                    && series.status == status
                    && series.method == method
                    && series.route == route
            });
            let at = known.unwrap_or_else(|| {
                if recent.len() == RECENT_SERIES_MAX {
                    recent.clear();
                }
                recent.push(self.series(method, route, status));
                recent.len() - 1
            });
            recent[at].requests.inc();
            recent[at].latency.observe(elapsed.as_secs_f64());
        });
    }

    /// Handles to the families' series of one label set.
    fn series(&self, method: &'static str, route: RouteName, status: u16) -> Series {
        let requests = RequestLabels {
            method,
            route: route.clone(),
            status,
        };
        let latency = RouteLabels {
            method,
            route: route.clone(),
        };
        Series {
            metrics: self.id,
            method,
            route,
            status,
            requests: self.requests.get_or_create(&requests).clone(),
            latency: self.latency.get_or_create(&latency).clone(),
        }
    }

    /// Adds a service's own metric to the registry.
    pub fn register(
        &self,
        name: &str,
        help: &str,
        metric: impl prometheus_client::registry::Metric,
    ) {
        if let Ok(mut registry) = self.registry.write() {
            registry.register(name, help, metric);
        }
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Ok(registry) = self.registry.read() {
            let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_random_version_4_uuids() {
        let ids: Vec<_> = (0..64).map(|_| new_request_id()).collect();
        for id in &ids {
            let text = id.to_str().unwrap();
            let parsed = uuid::Uuid::parse_str(text).unwrap();
            assert_eq!(parsed.get_version_num(), 4, "{text}");
            assert_eq!(parsed.get_variant(), uuid::Variant::RFC4122, "{text}");
            assert_eq!(
                parsed.hyphenated().to_string(),
                text,
                "lowercase, hyphenated"
            );
        }
        let distinct: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
    }

    #[test]
    fn continues_a_valid_traceparent() {
        let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let ctx = TraceContext::continue_or_start(Some(incoming));
        assert_eq!(ctx.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(ctx.span_id, 0x00f0_67aa_0ba9_02b7);
        assert_eq!(ctx.traceparent_header(), ctx.traceparent().as_str());
        assert!(
            ctx.traceparent()
                .starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-")
        );
    }

    #[test]
    fn writes_traceparent_with_every_digit() {
        let ctx = TraceContext {
            trace_id: TraceId(0x0bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736),
            span_id: 0x00f0_67aa_0ba9_02b7,
            sampled: false,
        };
        assert_eq!(
            ctx.traceparent(),
            "00-0bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
        );
        let sampled = TraceContext {
            sampled: true,
            ..ctx
        };
        assert!(sampled.traceparent().ends_with("-01"));
    }

    /// The `tessera_http_requests_total` sample of `route` and `status`.
    fn requests_counted(metrics: &Metrics, route: &str, status: u16) -> Option<u64> {
        let labels = format!("method=\"GET\",route=\"{route}\",status=\"{status}\"");
        metrics
            .encode()
            .lines()
            .find(|line| line.starts_with("tessera_http_requests_total{") && line.contains(&labels))
            .and_then(|line| line.rsplit(' ').next()?.parse().ok())
    }

    #[test]
    fn requests_are_counted_under_their_labels_in_their_own_registry() {
        let (one, other) = (Metrics::new("one"), Metrics::new("other"));
        let elapsed = Duration::from_millis(3);
        for _ in 0..3 {
            one.record("GET", RouteName::from("/a"), 200, elapsed);
        }
        one.record("GET", RouteName::from("/a"), 404, elapsed);
        other.record("GET", RouteName::from("/a"), 200, elapsed);
        // More label sets than a thread remembers: none is lost.
        for n in 0..RECENT_SERIES_MAX + 5 {
            one.record(
                "GET",
                RouteName::from(format!("/n{n}").as_str()),
                200,
                elapsed,
            );
        }
        one.record("GET", RouteName::from("/a"), 200, elapsed);
        assert_eq!(requests_counted(&one, "/a", 200), Some(4));
        assert_eq!(requests_counted(&one, "/a", 404), Some(1));
        assert_eq!(requests_counted(&other, "/a", 200), Some(1));
        assert_eq!(requests_counted(&one, "/n0", 200), Some(1));
        let latency = "tessera_http_request_duration_seconds_count\
            {role=\"one\",method=\"GET\",route=\"/a\"} 5";
        assert!(one.encode().lines().any(|line| line == latency));
    }

    #[test]
    fn restarts_on_malformed_traceparent() {
        for bad in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        ] {
            let ctx = TraceContext::continue_or_start(Some(bad));
            let id = ctx.trace_id.to_string();
            assert_ne!(id, "4bf92f3577b34da6a3ce929d0e0e4736", "{bad}");
            assert_eq!(id.len(), 32);
        }
    }
}
