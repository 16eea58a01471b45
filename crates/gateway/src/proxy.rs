//! The request path through the gateway, one named phase at a time:
//! check the path → route → authenticate → prepare (body held, headers
//! cleaned) → pick an instance → forward, retrying what is safe to retry →
//! answer. Every refusal is a problem+json; every upstream failure says
//! which it was (502 unreachable, 504 too slow, 503 nothing to send to).

use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};
use hyper_util::rt::TokioIo;
use kit::auth::Principal;
use kit::telemetry::RouteName;
use tokio::io::AsyncWriteExt;

use kit::problem::{Code, Problem};
use prometheus_client::metrics::counter::Counter;

use crate::breaker::Admitted;
use crate::cors::{Cors, Verdict};
use crate::pool::{Outgoing, PooledBody, SendError, header_list, is_hop_by_hop, whole_headers};
use crate::ratelimit::LimitKey;
use crate::routes::{AuthPolicy, Matched, RESERVED_PREFIX, Route, RouteTable, Target};
use crate::server::Client;
use crate::state::{Gateway, Snapshot};
use crate::upstream::{Instance, Service};
use crate::{cache, compose, events, path, retry};

/// Headers a client may not send: only the gateway says who the caller is.
pub const IDENTITY_HEADER_PREFIX: &str = "x-tessera-";
/// The verified caller's account id and roles, for the upstream.
pub const USER_HEADER: &str = "x-tessera-user";
pub const ROLES_HEADER: &str = "x-tessera-roles";

/// Who the request came through, for the upstream.
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// The one handler of the public port. The route it takes is named for
/// the kit's metrics and access log as soon as it is found.
pub async fn handle(gateway: &Gateway, client: &Client, request: Request) -> Response {
    // One version of the configuration from start to end.
    let snapshot = gateway.snapshot();
    if let Err(problem) = headers_within(request.headers(), snapshot.settings.headers_max_bytes) {
        return problem.into_response();
    }
    let origin = match snapshot.cors.as_ref().map(|c| c.verdict(request.headers())) {
        None | Some(Verdict::NotCors) => None,
        Some(Verdict::Allowed(origin)) => Some(origin),
        Some(Verdict::Refused(origin)) => {
            let origin = String::from_utf8_lossy(origin.as_bytes()).into_owned();
            let problem = Problem::new(Code::Forbidden).detail(format!(
                "requests from the origin {origin:?} are not allowed"
            ));
            return problem.into_response();
        }
    };
    let preflight = Cors::preflight(request.method(), request.headers());
    let method = preflight
        .clone()
        .unwrap_or_else(|| request.method().clone());
    let route = match route(&snapshot.table, &method, &request) {
        Ok(route) => route,
        Err(problem) => {
            return cors_decorated(&snapshot, origin, problem.into_response());
        }
    };
    kit::http::name_route(RouteName(route.name.clone()));
    match (&snapshot.cors, &origin, &preflight) {
        (Some(cors), Some(origin), Some(asked)) => {
            cors.preflight_answer(origin.clone(), &route.methods(), asked)
        }
        _ => match forward(gateway, &snapshot, route, client, request).await {
            Ok(response) => cors_decorated(&snapshot, origin, response),
            Err(problem) => cors_decorated(&snapshot, origin, problem.into_response()),
        },
    }
}

/// `response` readable by the page of an allowed `origin`.
fn cors_decorated(
    snapshot: &Snapshot,
    origin: Option<HeaderValue>,
    mut response: Response,
) -> Response {
    if let (Some(cors), Some(origin)) = (&snapshot.cors, origin) {
        cors.decorate(whole_headers(&mut response), origin);
    }
    response
}

/// Refuses headers adding up to more than `max` bytes (names and values).
fn headers_within(headers: &HeaderMap, max: usize) -> Result<(), Problem> {
    let total: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if total > max {
        return Err(Problem::new(Code::HeadersTooLarge).detail(format!(
            "the headers take {total} bytes; at most {max} are taken"
        )));
    }
    Ok(())
}

/// Upstream answers that a safe request is retried on: the instance could
/// not serve it, another may.
const RETRY_STATUSES: [StatusCode; 3] = [
    StatusCode::BAD_GATEWAY,
    StatusCode::SERVICE_UNAVAILABLE,
    StatusCode::GATEWAY_TIMEOUT,
];

/// Why an attempt did not end the exchange.
enum Failure {
    /// No answer: the connection failed or broke.
    Unreachable,
    /// An answer worth retrying; returned as it is if no retry follows.
    Answered(http::Response<PooledBody>),
}

async fn forward(
    gateway: &Gateway,
    snapshot: &Snapshot,
    route: &Route,
    client: &Client,
    request: Request,
) -> Result<Response, Problem> {
    let permit = route.concurrency.clone().try_acquire_owned().map_err(|_| {
        route.shed.inc();
        Problem::new(Code::Overloaded)
            .detail(format!("route {} is at its concurrency limit", route.name))
            .retry_after(kit::problem::RETRY_SOON)
    })?;
    // The rarer phases' futures are large (token verification may fetch
    // keys, a shared limit asks Redis, an upgrade joins two connections):
    // boxed where they run, so that the common request's future stays small.
    let caller = match route.auth {
        AuthPolicy::None => None,
        _ => Box::pin(authenticate(gateway, route, request.headers())).await?,
    };
    if let Some(limiter) = &route.rate_limiter {
        let key = match (limiter.key, &caller) {
            (LimitKey::User, Some(caller)) => caller.subject.as_str(),
            _ => client.ip_text(),
        };
        let shared = match &snapshot.shared_limits {
            Some(shared) => Box::pin(shared.check(&route.name, key, limiter)).await,
            None => None,
        };
        shared
            .unwrap_or_else(|| limiter.check(key, Instant::now()))
            .map_err(|wait| {
                route.rate_limited.inc();
                Problem::new(Code::RateLimited)
                    .detail(format!("route {} allows no more now", route.name))
                    .retry_after(wait)
            })?;
    }
    let Some(policy) = &route.cache else {
        return dispatch(gateway, snapshot, route, caller, client, request, permit).await;
    };
    let scope = match (&caller, policy.per_user) {
        (Some(caller), true) => caller.subject.clone(),
        _ => "-".to_owned(),
    };
    let prefix = cache::scope_prefix(&route.name, &scope);
    if request.method() == http::Method::GET {
        let target = request.uri().path_and_query().map_or("/", |t| t.as_str());
        let key = format!("{prefix}{target}");
        let fetch = |request| dispatch(gateway, snapshot, route, caller, client, request, permit);
        let answer = cache::through(
            &snapshot.cache,
            policy,
            key,
            request,
            &route.cache_lookups,
            fetch,
        );
        return Box::pin(answer).await;
    }
    // A write through a cached route may change what it answers: the
    // caller's entries (all of the route's, when they are shared) go.
    let writes = !matches!(
        *request.method(),
        http::Method::HEAD | http::Method::OPTIONS
    );
    let response = dispatch(gateway, snapshot, route, caller, client, request, permit).await?;
    if writes && response.status().is_success() {
        let purge_from = match policy.per_user {
            true => prefix,
            false => cache::route_prefix(&route.name),
        };
        // A failed purge is logged and counted; the answer stands.
        let _ = snapshot.cache.purge(&purge_from).await;
    }
    Ok(response)
}

/// The route's target answers: its service through the proxy, or its
/// branches merged.
async fn dispatch(
    gateway: &Gateway,
    snapshot: &Snapshot,
    route: &Route,
    caller: Option<Principal>,
    client: &Client,
    request: Request,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> Result<Response, Problem> {
    let service = match &route.target {
        Target::Service(name) => snapshot
            .services
            .get(name)
            .ok_or_else(|| Problem::new(Code::Unavailable))?,
        Target::Compose(composite) => {
            let answer = compose::answer(snapshot, route, composite, caller, client, request);
            return Box::pin(answer).await;
        }
        Target::Events(types) => {
            let subject = caller
                .map(|c| c.subject)
                .ok_or_else(|| Problem::new(Code::InvalidToken))?;
            let resume = request.headers().get(events::LAST_EVENT_ID);
            return events::stream(gateway.feed(), types, subject, resume, permit);
        }
    };
    if wants_upgrade(&request) {
        return Box::pin(upgrade(route, service, client, caller, request, permit)).await;
    }
    let safe = retry::is_safe(request.method(), request.headers());
    // The route's timeout covers reading the body and the whole exchange.
    let deadline = tokio::time::Instant::now() + route.timeout;
    let (parts, body) = request.into_parts();
    let read = read_body(body, &parts.headers, route.body_max_bytes);
    let body = tokio::time::timeout_at(deadline, read)
        .await
        .map_err(|_| {
            Problem::new(Code::Timeout).detail(format!(
                "the request body did not arrive within {} ms",
                route.timeout.as_millis()
            ))
        })??;
    let prepared = prepare(parts, body, client, caller);
    let prepared = match &route.rewrite {
        Some((prefix, to)) => rewritten(prepared, prefix, to)?,
        None => prepared,
    };
    let attempts = Attempts {
        deadline,
        timeout: route.timeout,
        connect_timeout: route.connect_timeout,
        retries: route.retries,
        backoff: route.retry_backoff,
        retried: &route.retried,
    };
    exchange(service, &prepared, safe, &attempts)
        .await
        .map(finish)
}

/// `prepared` with its target's `prefix` replaced by `to` (a route's
/// `rewrite`); the query stays.
fn rewritten(mut prepared: Outgoing, prefix: &str, to: &str) -> Result<Outgoing, Problem> {
    let target = prepared.target.as_str();
    let rest = target.strip_prefix(prefix).unwrap_or(target);
    prepared.target = format!("{to}{rest}")
        .parse()
        .map_err(|_| Problem::new(Code::MalformedRequest).detail("the path cannot be rewritten"))?;
    Ok(prepared)
}

/// How one exchange with a service is attempted.
pub(crate) struct Attempts<'a> {
    /// Every attempt and backoff ends by then (504 after).
    pub deadline: tokio::time::Instant,
    /// What the deadline was set from, for the 504's detail.
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// Retries of a safe request, each on another instance if there is one.
    pub retries: u32,
    /// Before the first retry; doubling (jittered) after.
    pub backoff: Duration,
    /// Counts the retries (the route's `tessera_gateway_retries`).
    pub retried: &'a Counter,
}

/// Sends `prepared` to an instance of `service`, and again elsewhere if
/// it is `safe` and failed (no answer, 502/503/504), within the service's
/// retry budget and the attempts' bounds. The answer comes back as the
/// instance gave it; its failures are problems (502, 503, 504).
pub(crate) async fn exchange(
    service: &Service,
    prepared: &Outgoing,
    safe: bool,
    attempts: &Attempts<'_>,
) -> Result<http::Response<PooledBody>, Problem> {
    // The clock is read once before each attempt and once after: the
    // budget, the balancer, the breaker and the latency share the readings.
    let mut now = Instant::now();
    service.budget.deposit(now);
    let mut tried = Vec::new();
    let mut retries = 0;
    loop {
        // Another instance if there is one left; else any.
        let in_flight = service
            .pick_except(&tried, &prepared.headers, now)
            .or_else(|| service.pick(&prepared.headers, now))
            .ok_or_else(|| no_instance(service))?;
        let admitted = admit(service, now)?;
        let sent =
            in_flight
                .instance()
                .pool
                .send(prepared, attempts.connect_timeout, attempts.deadline);
        let started = now;
        let outcome = sent.await;
        now = Instant::now();
        service.latency.observe((now - started).as_secs_f64());
        settle(service, in_flight.instance(), admitted, &outcome, now);
        let failure = match outcome {
            Err(SendError::TimedOut) => return Err(too_slow(service, attempts.timeout)),
            Err(_) => Failure::Unreachable,
            Ok(response) => {
                if !(safe && RETRY_STATUSES.contains(&response.status())) {
                    return Ok(response);
                }
                Failure::Answered(response)
            }
        };
        let retry = safe && retries < attempts.retries && service.budget.try_withdraw(now);
        let wait = retry::backoff(retries + 1, attempts.backoff);
        if !retry || tokio::time::Instant::from_std(now) + wait >= attempts.deadline {
            return match failure {
                Failure::Answered(response) => Ok(response),
                Failure::Unreachable => Err(unreachable(service)),
            };
        }
        // Remembered only when there is a retry: most exchanges have none,
        // and allocate nothing for it.
        tried.push(in_flight.instance().clone());
        drop(in_flight);
        retries += 1;
        attempts.retried.inc();
        tracing::debug!(service = %service.name, retries, "retrying on another instance");
        tokio::time::sleep(wait).await;
        now = Instant::now();
    }
}

type Outcome = Result<http::Response<PooledBody>, SendError>;

/// An attempt's outcome, told to whom it concerns: the instance's answer
/// counts, its failures (no answer, 5xx) lead to ejection, the breaker
/// counts successes and failures (a timeout is one), as of `now`.
fn settle(
    service: &Service,
    instance: &Instance,
    admitted: Admitted,
    outcome: &Outcome,
    now: Instant,
) {
    let status = match outcome {
        Ok(response) => Some(response.status()),
        _ => None,
    };
    instance.answered(status.map(|s| s.as_u16()));
    let ok = match (outcome, status) {
        (Err(SendError::TimedOut), _) => false,
        (Err(error), _) => {
            tracing::warn!(service = %service.name, instance = %instance.base, %error, "upstream failed");
            service.failed(instance, now);
            false
        }
        (Ok(_), status) => {
            let ok = !status.is_some_and(|s| s.is_server_error());
            if ok {
                service.succeeded(instance);
            } else {
                service.failed(instance, now);
            }
            ok
        }
    };
    service.breaker.record(admitted, ok, now);
}

fn admit(service: &Service, now: Instant) -> Result<Admitted, Problem> {
    service.breaker.admit(now).map_err(|wait| {
        Problem::new(Code::CircuitOpen)
            .detail(format!(
                "{} is failing; requests to it are refused",
                service.name
            ))
            .retry_after(wait)
    })
}

fn no_instance(service: &Service) -> Problem {
    Problem::new(Code::Unavailable).detail(format!("no instance of {}", service.name))
}

fn unreachable(service: &Service) -> Problem {
    Problem::new(Code::BadGateway).detail(format!("{} could not be reached", service.name))
}

pub(crate) fn too_slow(service: &Service, timeout: Duration) -> Problem {
    Problem::new(Code::UpstreamTimeout).detail(format!(
        "{} did not answer within {} ms",
        service.name,
        timeout.as_millis()
    ))
}

/// An HTTP/1.1 request to switch protocols (a WebSocket handshake).
fn wants_upgrade(request: &Request) -> bool {
    request.version() == http::Version::HTTP_11
        && request.headers().contains_key(header::UPGRADE)
        && header_list(request.headers(), header::CONNECTION)
            .any(|t| t.eq_ignore_ascii_case(b"upgrade"))
}

/// Passes a protocol switch on: the handshake goes to one instance (never
/// retried: the upstream may have acted on it), and once it answers 101
/// both connections are joined, byte for byte, until either side closes.
/// The session holds the route's concurrency permit and counts as a
/// request in flight on its instance for as long as it lasts.
async fn upgrade(
    route: &Route,
    service: &Service,
    client: &Client,
    caller: Option<Principal>,
    mut request: Request,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> Result<Response, Problem> {
    let protocol = request.headers().get(header::UPGRADE).cloned();
    let client_side = hyper::upgrade::on(&mut request);
    let deadline = tokio::time::Instant::now() + route.timeout;
    let mut prepared = read_and_prepare(request, client, caller, route.body_max_bytes).await?;
    let now = Instant::now();
    let in_flight = service
        .pick(&prepared.headers, now)
        .ok_or_else(|| no_instance(service))?;
    let admitted = admit(service, now)?;
    let instance = in_flight.instance().clone();
    let headers = &mut prepared.headers;
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Some(protocol) = protocol {
        headers.insert(header::UPGRADE, protocol);
    }
    let sent = instance
        .pool
        .send(&prepared, route.connect_timeout, deadline);
    let outcome = sent.await;
    settle(service, &instance, admitted, &outcome, Instant::now());
    let mut response = match outcome {
        Ok(response) => response,
        Err(SendError::TimedOut) => return Err(too_slow(service, route.timeout)),
        Err(_) => return Err(unreachable(service)),
    };
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Ok(finish(response));
    }
    // The switch's own headers (Connection, Upgrade) go back as they came,
    // through hyper, which writes only a header map.
    whole_headers(&mut response).remove(header::TRANSFER_ENCODING);
    let (parts, body) = response.into_parts();
    let Some(upstream) = body.switched() else {
        return Err(unreachable(service));
    };
    let route_name = route.name.clone();
    tokio::spawn(async move {
        let (_permit, _in_flight) = (permit, in_flight);
        let mut upstream_io = upstream.io;
        let joined = async {
            let mut client = TokioIo::new(client_side.await.map_err(std::io::Error::other)?);
            // What the instance sent right after its 101 goes first.
            client.write_all(&upstream.early).await?;
            tokio::io::copy_bidirectional(&mut client, &mut upstream_io).await
        };
        if let Err(error) = joined.await {
            tracing::debug!(route = %route_name, %error, "upgraded connection ended");
        }
    });
    Ok(Response::from_parts(parts, Body::empty()))
}

/// The upstream's answer as the client gets it (the pool has left out
/// what was for its connection). Its header lines stay as they came
/// ([`crate::pool::Lines`]) until something reads them.
fn finish(response: http::Response<PooledBody>) -> Response {
    response.map(Body::new)
}

/// Phase 1 and 2: a clean path, then the route that takes the request
/// (by `method`: for a preflight, the one it asks about).
fn route<'a>(
    table: &'a RouteTable,
    method: &http::Method,
    request: &Request,
) -> Result<&'a Route, Problem> {
    let path = request.uri().path();
    path::check(path).map_err(|e| Problem::new(Code::MalformedRequest).detail(e.to_string()))?;
    if path
        .strip_prefix(RESERVED_PREFIX)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    {
        return Err(Problem::new(Code::NotFound));
    }
    // HTTP/2 requests name the host in the URI, HTTP/1.1 ones in `Host`;
    // the port is not part of the match, nor is case.
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| request.uri().authority().map(|a| a.as_str()))
        .map(|h| match h.rsplit_once(':') {
            Some((name, port)) if !port.contains(']') => name,
            _ => h,
        });
    match table.find(method, path, host, request.headers()) {
        Matched::Route(route) => Ok(route),
        Matched::MethodNotAllowed(allowed) => {
            let allow: Vec<&str> = allowed.iter().map(|m| m.as_str()).collect();
            let allow = allow.join(", ");
            // RFC 9110 §15.5.6: a 405 says, in `Allow`, what the resource takes.
            let value = HeaderValue::try_from(&allow).expect("method names are header tokens");
            Err(Problem::new(Code::MethodNotAllowed)
                .detail(format!("allowed: {allow}"))
                .header(header::ALLOW, value))
        }
        Matched::NotFound => Err(Problem::new(Code::NotFound)),
    }
}

/// Phase 3: the caller, as the route's policy asks (not `none`).
async fn authenticate(
    gateway: &Gateway,
    route: &Route,
    headers: &HeaderMap,
) -> Result<Option<Principal>, Problem> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let caller = match token {
        Some(token) => Some(
            gateway
                .verifier
                .verify(token)
                .await
                .map_err(|e| Problem::new(Code::InvalidToken).detail(e.to_string()))?,
        ),
        None if route.auth == AuthPolicy::Required => {
            return Err(Problem::new(Code::InvalidToken).detail("a bearer token is required"));
        }
        None => None,
    };
    if !route.roles.is_empty()
        && !caller
            .as_ref()
            .is_some_and(|c| route.roles.iter().any(|r| c.has_role(r)))
    {
        return Err(Problem::new(Code::Forbidden).detail(format!(
            "one of these roles is needed: {}",
            route.roles.join(", ")
        )));
    }
    Ok(caller)
}

/// Phase 4a: the request's body, held whole (a retry sends it again) and
/// at most `body_max_bytes` long.
pub(crate) async fn read_body(
    body: Body,
    headers: &HeaderMap,
    body_max_bytes: usize,
) -> Result<Bytes, Problem> {
    let too_large = || {
        Problem::new(Code::PayloadTooLarge)
            .detail(format!("this route takes at most {body_max_bytes} bytes"))
    };
    // Most requests have no body (nor a length to look up): reading one is
    // boxed where it happens, so that the request's future stays small.
    if hyper::body::Body::is_end_stream(&body) {
        return Ok(Bytes::new());
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|n| n > body_max_bytes) {
        return Err(too_large());
    }
    Box::pin(axum::body::to_bytes(body, body_max_bytes))
        .await
        .map_err(|error| {
            let over = std::error::Error::source(&error)
                .is_some_and(|e| e.is::<http_body_util::LengthLimitError>());
            if over {
                too_large()
            } else {
                Problem::new(Code::MalformedRequest).detail("the request body could not be read")
            }
        })
}

/// Phases 4a and 4b, with no deadline of their own (a protocol switch, a
/// composite).
pub(crate) async fn read_and_prepare(
    request: Request,
    client: &Client,
    caller: Option<Principal>,
    body_max_bytes: usize,
) -> Result<Outgoing, Problem> {
    let (parts, body) = request.into_parts();
    let body = read_body(body, &parts.headers, body_max_bytes).await?;
    Ok(prepare(parts, body, client, caller))
}

/// Phase 4b: the request as the upstream sees it.
pub(crate) fn prepare(
    parts: http::request::Parts,
    body: Bytes,
    client: &Client,
    caller: Option<Principal>,
) -> Outgoing {
    let target = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    let mut headers = parts.headers;
    strip_hop_by_hop(&mut headers);
    let spoofed = |name: &HeaderName| name.as_str().starts_with(IDENTITY_HEADER_PREFIX);
    if headers.keys().any(spoofed) {
        let names: Vec<HeaderName> = headers.keys().filter(|n| spoofed(n)).cloned().collect();
        for name in names {
            headers.remove(name);
        }
    }
    if let Some(caller) = caller {
        if let Ok(user) = HeaderValue::from_str(&caller.subject) {
            headers.insert(USER_HEADER, user);
        }
        if let Ok(roles) = HeaderValue::from_str(&caller.roles.join(",")) {
            headers.insert(ROLES_HEADER, roles);
        }
    }
    // One look-up for the name, whether an earlier hop set it or not.
    match headers.entry(X_FORWARDED_FOR) {
        Entry::Vacant(entry) => {
            entry.insert(client.ip.clone());
        }
        Entry::Occupied(mut entry) => {
            let forwarded_for = match entry.get().to_str() {
                Ok(earlier) => HeaderValue::try_from(format!("{earlier}, {}", client.ip_text())),
                Err(_) => Ok(client.ip.clone()),
            };
            if let Ok(value) = forwarded_for {
                entry.insert(value);
            }
        }
    }
    let proto = if client.tls { "https" } else { "http" };
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    if let Some(traceparent) = kit::telemetry::current_traceparent() {
        headers.insert(kit::telemetry::TRACEPARENT, traceparent);
    }
    Outgoing {
        method: parts.method,
        target,
        headers,
        body,
    }
}

/// Removes hop-by-hop headers and those `Connection` names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one look at the few names present.
    if !headers
        .keys()
        .any(|name| is_hop_by_hop(name.as_str().as_bytes()))
    {
        return;
    }
    // `Connection` names options (`close`, `keep-alive`) and, rarely, other
    // headers as hop-by-hop: those go first, while the header naming them
    // is still there (an empty list allocates nothing).
    let named: Vec<HeaderName> = header_list(headers, header::CONNECTION)
        .filter(|token| !token.eq_ignore_ascii_case(b"close") && !is_hop_by_hop(token))
        .filter_map(|name| HeaderName::from_bytes(name).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    // Those that carry some carry one or two (`Connection: keep-alive`):
    // found without allocating.
    while let Some(name) = headers
        .keys()
        .find(|name| is_hop_by_hop(name.as_str().as_bytes()))
        .cloned()
    {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_the_ones_connection_names_go() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert("te", HeaderValue::from_static("trailers"));
        headers.insert("accept", HeaderValue::from_static("*/*"));
        strip_hop_by_hop(&mut headers);
        let left: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, vec!["accept"]);
    }

    #[test]
    fn connection_options_and_names_are_read_in_any_case() {
        let mut headers = HeaderMap::new();
        headers.append(header::CONNECTION, HeaderValue::from_static("Keep-Alive"));
        headers.append(
            header::CONNECTION,
            HeaderValue::from_static("Close, X-Secret"),
        );
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert("upgrade", HeaderValue::from_static("websocket"));
        headers.insert("content-type", HeaderValue::from_static("text/plain"));
        strip_hop_by_hop(&mut headers);
        let left: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, vec!["content-type"]);
    }

    #[test]
    fn a_message_without_hop_by_hop_headers_is_left_as_it_is() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("text/plain"));
        headers.insert("x-connection-id", HeaderValue::from_static("7"));
        let before = headers.clone();
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers, before);
    }
}
