//! The HTTP conventions every service follows, applied in one place:
//! trace context and request id, metrics, request timeout, body limit,
//! panic → 500, problem+json for every error, `/healthz`, `/readyz`,
//! `/metrics`, and graceful shutdown.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::connect_info::Connected;
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, MatchedPath, Request};
use axum::http::{HeaderName, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::{IncomingStream, Listener};
use axum::{Json, Router};
use futures_util::FutureExt;
use serde::de::DeserializeOwned;
use tokio::task::futures::TaskLocalFuture;

use crate::config::HttpSettings;
use crate::problem::{Code, Problem};
use crate::telemetry::{self, Metrics, RouteName, TraceContext};

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// A client-supplied request id longer than this is replaced.
pub const REQUEST_ID_LEN_MAX: usize = 128;

type CheckFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// The dependencies `/readyz` checks, each by name.
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Vec<(String, Arc<dyn Fn() -> CheckFuture + Send + Sync>)>,
}

/// A readiness check that does not answer within this long has failed.
pub const READINESS_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

impl Readiness {
    pub fn check<F, Fut>(mut self, name: &str, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.checks
            .push((name.to_owned(), Arc::new(move || Box::pin(check()))));
        self
    }

    async fn report(&self) -> (bool, BTreeMap<String, String>) {
        let mut all_ok = true;
        let mut report = BTreeMap::new();
        for (name, check) in &self.checks {
            let outcome = match tokio::time::timeout(READINESS_CHECK_TIMEOUT, check()).await {
                Ok(Ok(())) => "ok".to_owned(),
                Ok(Err(reason)) => reason,
                Err(_) => "timed out".to_owned(),
            };
            all_ok &= outcome == "ok";
            report.insert(name.clone(), outcome);
        }
        (all_ok, report)
    }
}

/// Wraps a service's API router in the kit's conventions.
pub fn service_router(
    api: Router,
    settings: &HttpSettings,
    metrics: Metrics,
    readiness: Readiness,
) -> Router {
    let metrics_for_endpoint = metrics.clone();
    let api = api
        .route(
            "/healthz",
            get(|| async { Json(serde_json::json!({"status": "alive"})) }),
        )
        .route(
            "/readyz",
            get(move || {
                let readiness = readiness.clone();
                async move {
                    let (ok, checks) = readiness.report().await;
                    if ok {
                        Json(serde_json::json!({"status": "ready", "checks": checks}))
                            .into_response()
                    } else {
                        let failing: Vec<_> = checks
                            .iter()
                            .filter(|(_, v)| *v != "ok")
                            .map(|(k, v)| format!("{k}: {v}"))
                            .collect();
                        Problem::new(Code::Unavailable)
                            .detail(failing.join("; "))
                            .into_response()
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics_for_endpoint.clone();
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        metrics.encode(),
                    )
                }
            }),
        )
        .fallback(|| async { Problem::new(Code::NotFound) })
        .method_not_allowed_fallback(|| async { Problem::new(Code::MethodNotAllowed) })
        .layer(DefaultBodyLimit::max(settings.body_limit_bytes));
    let timeout = Duration::from_millis(settings.request_timeout_ms);
    api.layer(middleware::from_fn(move |req, next| {
        enforce_timeout(timeout, req, next)
    }))
    .layer(ObserveLayer::new(metrics))
}

/// The observation layer as a tower [`Layer`](tower::Layer): trace
/// context, request id, access log, metrics, panics → 500.
#[derive(Clone)]
pub struct ObserveLayer {
    metrics: Arc<Metrics>,
}

impl ObserveLayer {
    pub fn new(metrics: Metrics) -> Self {
        Self {
            metrics: Arc::new(metrics),
        }
    }
}

impl<S> tower::Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// A service inside the observation layer (see [`ObserveLayer`]).
#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S> tower::Service<Request> for Observe<S>
where
    S: tower::Service<Request, Error = Infallible> + Clone + Send + 'static,
    S::Response: IntoResponse,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        // The clone that was made ready serves this request; a fresh one
        // waits for the next (tower's contract).
        let fresh = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, fresh);
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let served = observe(&metrics, req, |req| async move {
                let mut ready = ready;
                match ready.call(req).await {
                    Ok(response) => response.into_response(),
                    Err(never) => match never {},
                }
            });
            Ok(served.await)
        })
    }
}

/// The status a request is counted and logged with when its client went
/// away before its answer was ready (hyper, HTTP/2 and the gateway's own
/// HTTP/1.1 loop then drop the request's future): nginx's 499, "client
/// closed request".
pub const CLIENT_CLOSED: u16 = 499;

tokio::task_local! {
    /// The route serving the current request, once a handler named it.
    static NAMED: Cell<Option<RouteName>>;
}

/// Names the route serving the current request (under [`observe`]) for
/// its metrics and access log, from the moment it is known: a request
/// its client leaves before the answer is counted under it too. For a
/// handler that routes by itself (the gateway); a router's routes are
/// named by their matched path. Outside a request, nothing happens.
pub fn name_route(name: RouteName) {
    let _ = NAMED.try_with(|named| named.set(Some(name)));
}

/// The observation step around `serve`: trace context (the task-local
/// [`telemetry::current_trace`] while it runs), request id (the client's,
/// else one made and set on the request), access log,
/// metrics, panics → 500, and a request its client left counted as
/// [`CLIENT_CLOSED`]. The route a request is counted under is the one
/// [`name_route`] named, else the router's matched path, else
/// `unmatched`. [`ObserveLayer`] applies it to a router's routes; a
/// server that dispatches by itself (the gateway) calls it directly, so
/// that one future holds the whole request.
pub async fn observe<F, Fut>(metrics: &Metrics, mut req: Request, serve: F) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: Future<Output = Response>,
{
    let started = Instant::now();
    let trace = TraceContext::continue_or_start(
        req.headers()
            .get(telemetry::TRACEPARENT)
            .and_then(|v| v.to_str().ok()),
    );
    let sent = req.headers().get(&REQUEST_ID).filter(|v| {
        v.to_str()
            .is_ok_and(|v| !v.is_empty() && v.len() <= REQUEST_ID_LEN_MAX)
    });
    let request_id = match sent {
        Some(sent) => sent.clone(),
        // Made here, and carried by the request too: what the handler
        // calls (the gateway's upstream) knows it by the client's id.
        None => {
            let made = telemetry::new_request_id();
            req.headers_mut().insert(REQUEST_ID, made.clone());
            made
        }
    };
    // A clone of the URI shares its bytes: no copy of the path.
    let uri = req.uri().clone();
    let seen = Seen {
        metrics,
        // The log says what the client sent, the metrics a bounded label.
        method: telemetry::method_label(req.method()),
        sent_method: req.method().clone(),
        path: uri.path(),
        matched: req.extensions().get::<MatchedPath>().cloned(),
        trace,
        request_id: &request_id,
        started,
    };

    // The request's future (kilobytes) is pinned once, where it lives;
    // the panic catcher and the scopes around it hold a pointer to it, so
    // that wrapping it and awaiting the wrappers copy nothing big.
    let served = std::pin::pin!(serve(req));
    let served = AssertUnwindSafe(served).catch_unwind();
    // The answer carries the `traceparent` the calls made for it carry.
    let traced = telemetry::Traced::new(trace);
    let traceparent = traced.traceparent().clone();
    let scoped = std::pin::pin!(NAMED.scope(Cell::new(None), telemetry::in_trace(traced, served)));
    let mut in_flight = InFlight::new(&seen, scoped);
    let response = in_flight.scoped.as_mut().await;
    let named = in_flight.answered();
    let mut response = match response {
        Ok(response) => response,
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(trace_id = %trace.trace_id, path = seen.path, panic = %message, "handler panicked");
            telemetry::in_trace(telemetry::Traced::new(trace), async {
                Problem::new(Code::Internal).into_response()
            })
            .await
        }
    };

    seen.record(
        named.unwrap_or_else(|| seen.route_matched_or("unmatched")),
        response.status().as_u16(),
    );
    let headers = response.headers_mut();
    headers.insert(REQUEST_ID, request_id);
    headers.insert(telemetry::TRACEPARENT, traceparent);
    response
}

/// What a request's access log line and metrics say of it, however it
/// ends.
struct Seen<'a> {
    metrics: &'a Metrics,
    method: &'static str,
    sent_method: axum::http::Method,
    path: &'a str,
    /// The route as the router matched it (none for the gateway's).
    matched: Option<MatchedPath>,
    trace: TraceContext,
    request_id: &'a axum::http::HeaderValue,
    started: Instant,
}

impl Seen<'_> {
    /// The matched route's name, else `otherwise`.
    fn route_matched_or(&self, otherwise: &str) -> RouteName {
        RouteName::from(self.matched.as_ref().map_or(otherwise, |m| m.as_str()))
    }

    /// Logs the request (probes aside) and counts it under `route` and
    /// `status`.
    fn record(&self, route: RouteName, status: u16) {
        let elapsed = self.started.elapsed();
        if !matches!(self.path, "/healthz" | "/readyz" | "/metrics") {
            tracing::info!(
                trace_id = %self.trace.trace_id,
                request_id = self.request_id.to_str().unwrap_or_default(),
                method = %self.sent_method,
                %route,
                path = self.path,
                status,
                latency_us = elapsed.as_micros() as u64,
                "request"
            );
        }
        self.metrics.record(self.method, route, status, elapsed);
    }
}

/// A request's future in the scope where its route is named.
type Scoped<'a, F> = Pin<&'a mut TaskLocalFuture<Cell<Option<RouteName>>, F>>;

/// A request in flight (the gauge) with its future, until it is answered
/// — the scope's slot is then taken back — or dropped; dropped with the
/// slot still in the scope — its client went away — it is recorded with
/// [`CLIENT_CLOSED`] under the route named so far, else the matched path,
/// else `unknown`.
struct InFlight<'a, F: Future> {
    seen: &'a Seen<'a>,
    scoped: Scoped<'a, F>,
}

impl<'a, F: Future> InFlight<'a, F> {
    fn new(seen: &'a Seen<'a>, scoped: Scoped<'a, F>) -> Self {
        seen.metrics.in_flight.inc();
        Self { seen, scoped }
    }

    /// The request is answered: the route its handler named, if any.
    fn answered(mut self) -> Option<RouteName> {
        self.left_flight().flatten()
    }

    /// Takes the request out of the gauge and its route's slot out of the
    /// scope, the first time it is asked: `None` every time after.
    fn left_flight(&mut self) -> Option<Option<RouteName>> {
        let slot = self.scoped.as_mut().take_value()?;
        self.seen.metrics.in_flight.dec();
        Some(slot.into_inner())
    }
}

impl<F: Future> Drop for InFlight<'_, F> {
    fn drop(&mut self) {
        if let Some(named) = self.left_flight() {
            let route = named.unwrap_or_else(|| self.seen.route_matched_or("unknown"));
            self.seen.record(route, CLIENT_CLOSED);
        }
    }
}

async fn enforce_timeout(timeout: Duration, req: Request, next: Next) -> Response {
    match tokio::time::timeout(timeout, next.run(req)).await {
        Ok(response) => response,
        Err(_) => Problem::new(Code::Timeout)
            .detail(format!("no answer within {} ms", timeout.as_millis()))
            .into_response(),
    }
}

/// A JSON object request body whose rejections are problem+json: 413 over
/// the body limit, 415 without `Content-Type: application/json`, 400 for bad
/// syntax, 422 for the wrong shape. Only an object is accepted: serde would
/// otherwise read a struct from an array, field by position.
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(req.headers()) {
            return Err(Problem::new(Code::UnsupportedMediaType));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            match rejection.status() {
                StatusCode::PAYLOAD_TOO_LARGE => Problem::new(Code::PayloadTooLarge),
                _ => Problem::new(Code::MalformedRequest).detail(rejection.body_text()),
            }
        })?;
        let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
        if first.is_some_and(|&b| b != b'{')
            && serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).is_ok()
        {
            return Err(
                Problem::new(Code::ValidationFailed).detail("the body must be a JSON object")
            );
        }
        match Json::<T>::from_bytes(&bytes) {
            Ok(Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(json_problem(rejection)),
        }
    }
}

/// Field deserializers that read a struct only from a JSON object: serde
/// reads one from an array too, field by position, which no client means.
/// [`ApiJson`] checks the body itself; nested structs use these, as
/// `#[serde(default, deserialize_with = "kit::http::objects::optional")]`.
pub mod objects {
    use serde::de::{DeserializeOwned, Error};
    use serde::{Deserialize, Deserializer};
    use serde_json::{Map, Value};

    fn from_map<T: DeserializeOwned, E: Error>(map: Map<String, Value>) -> Result<T, E> {
        T::deserialize(Value::Object(map)).map_err(E::custom)
    }

    /// `null` or absent → `None`; an object → `Some`; anything else fails.
    pub fn optional<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: DeserializeOwned,
    {
        Option::<Map<String, Value>>::deserialize(deserializer)?
            .map(from_map)
            .transpose()
    }

    /// `null` or absent → `None`; an array of objects → `Some`.
    pub fn optional_list<'de, D, T>(deserializer: D) -> Result<Option<Vec<T>>, D::Error>
    where
        D: Deserializer<'de>,
        T: DeserializeOwned,
    {
        Option::<Vec<Map<String, Value>>>::deserialize(deserializer)?
            .map(|items| items.into_iter().map(from_map).collect())
            .transpose()
    }
}

/// `application/json` or any `+json` type, parameters aside.
fn is_json(headers: &axum::http::HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

fn json_problem(rejection: JsonRejection) -> Problem {
    match rejection {
        JsonRejection::JsonDataError(e) => {
            Problem::new(Code::ValidationFailed).detail(e.body_text())
        }
        other => Problem::new(Code::MalformedRequest).detail(other.body_text()),
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}

/// The client's address, for handlers (`ConnectInfo<PeerAddr>`). Each
/// listener kind [`serve`] accepts gets an impl here (a simulated network's
/// listener adds its own next to this one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

impl Connected<IncomingStream<'_, tokio::net::TcpListener>> for PeerAddr {
    fn connect_info(stream: IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        Self(*stream.remote_addr())
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, then lets
/// in-flight requests finish for at most `grace`.
pub async fn serve<L>(
    listener: L,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> std::io::Result<()>
where
    L: Listener<Addr = SocketAddr>,
    PeerAddr: for<'a> Connected<IncomingStream<'a, L>>,
{
    let (stop_tx, mut grace_rx) = tokio::sync::watch::channel(false);
    let server = axum::serve(
        listener,
        router.into_make_service_with_connect_info::<PeerAddr>(),
    )
    .with_graceful_shutdown(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let grace_expired = async move {
        let _ = grace_rx.wait_for(|stopped| *stopped).await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        result = std::future::IntoFuture::into_future(server) => result,
        _ = grace_expired => {
            tracing::warn!(grace_ms = grace.as_millis() as u64, "shutdown grace expired; dropping open connections");
            Ok(())
        }
    }
}
