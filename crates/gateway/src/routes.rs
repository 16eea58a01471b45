//! Declared routes, compiled once into an immutable table.
//!
//! A route matches a path (exact, a template such as `/api/v1/users/{id}`,
//! or a prefix such as `/api/v1/users/`), optionally methods, a host and
//! header values, and names the service that answers it with its policy.
//! Routes are tried in declaration order among those whose path matches.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, Method};
use prometheus_client::metrics::counter::Counter;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use crate::cache::{CacheConfig, CachePolicy, Outcome};
use crate::compose::{BranchConfig, Composite};
use crate::metrics::{CacheLabels, GatewayMetrics, RouteLabel};
use crate::ratelimit::{LimitKey, RateLimitConfig, RateLimiter};

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AuthPolicy {
    /// A valid access token is needed (401 otherwise).
    #[default]
    Required,
    /// A token is verified when present (401 if invalid), not needed.
    Optional,
    /// No token is looked at.
    None,
}

/// A route as written in the configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Names the route in metrics, logs and errors.
    pub name: String,
    /// An exact path or a template with `{param}` segments.
    #[serde(default)]
    pub path: Option<String>,
    /// A prefix ending in `/`: the route takes every path under it.
    #[serde(default)]
    pub prefix: Option<String>,
    /// With `prefix`: what the prefix becomes upstream (`/mobile/v1/` →
    /// `/api/v1/`), so that a client's own route set reaches the same
    /// services.
    #[serde(default)]
    pub rewrite: Option<String>,
    /// Methods the route takes; empty means all.
    #[serde(default)]
    pub methods: Vec<String>,
    /// The `Host` the route takes (without port); absent means any.
    #[serde(default)]
    pub host: Option<String>,
    /// Header values the request must carry, exactly.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The upstream service the route proxies to; or, for a composite,
    /// none and `branches`.
    #[serde(default)]
    pub service: Option<String>,
    /// A composite route: one GET answered by calls to several services,
    /// merged into one JSON document (see [`crate::compose`]).
    #[serde(default)]
    pub branches: Vec<BranchConfig>,
    /// An event-stream route: the bus events of these types (or
    /// `prefix.*`) about the verified caller, as Server-Sent Events (see
    /// [`crate::events`]).
    #[serde(default)]
    pub events: Vec<String>,
    #[serde(default)]
    pub auth: AuthPolicy,
    /// Roles of which the caller must have one; empty means any caller the
    /// auth policy lets through.
    #[serde(default)]
    pub roles: Vec<String>,
    /// The whole upstream exchange, retries included, must finish within
    /// this long (504).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Opening a connection to an instance must take at most this long
    /// (then the attempt failed, and a safe request goes elsewhere);
    /// `timeout_ms` bounds it too.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Retries of a failed request that is safe to repeat (see
    /// [`crate::retry`]); at most [`RETRIES_MAX`].
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// The backoff before the first retry, doubling (jittered) after.
    #[serde(default = "default_retry_backoff_ms")]
    pub retry_backoff_ms: u64,
    /// The largest request body taken (413 beyond).
    #[serde(default = "default_body_max_bytes")]
    pub body_max_bytes: usize,
    /// Requests in flight on this route at once; more are shed with 503
    /// `overloaded` at once, never queued.
    #[serde(default = "default_concurrency_max")]
    pub concurrency_max: usize,
    /// Requests per caller (user or IP); beyond, 429 with `Retry-After`.
    #[serde(default)]
    pub rate_limit: Option<RateLimitConfig>,
    /// GET answers kept and served again (see [`crate::cache`]).
    #[serde(default)]
    pub cache: Option<CacheConfig>,
}

fn default_concurrency_max() -> usize {
    1024
}

/// The most retries a route may ask for.
pub const RETRIES_MAX: u32 = 5;
/// The largest `body_max_bytes` a route may ask for: bodies are held in
/// memory so that a retry can send them again.
pub const BODY_MAX_BYTES_LIMIT: usize = 16 * 1024 * 1024;

fn default_timeout_ms() -> u64 {
    15_000
}

fn default_connect_timeout_ms() -> u64 {
    1_000
}

fn default_retries() -> u32 {
    2
}

fn default_retry_backoff_ms() -> u64 {
    25
}

fn default_body_max_bytes() -> usize {
    1024 * 1024
}

/// A compiled route.
#[derive(Debug)]
pub struct Route {
    /// As declared: a reload keeps the route's limiters when it is equal.
    pub config: RouteConfig,
    /// Shared: every response of the route is named with it.
    pub name: Arc<str>,
    /// The path as declared, for metrics labels.
    pub pattern: String,
    methods: BTreeSet<Method>,
    host: Option<String>,
    headers: Vec<(http::HeaderName, http::HeaderValue)>,
    pub target: Target,
    /// The prefix and what it becomes upstream (`rewrite`).
    pub rewrite: Option<(String, String)>,
    pub auth: AuthPolicy,
    pub roles: Vec<String>,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub retries: u32,
    pub retry_backoff: Duration,
    pub body_max_bytes: usize,
    /// Permits for requests in flight; none left means shed.
    pub concurrency: Arc<Semaphore>,
    /// Counts retries and shed requests (`tessera_gateway_retries`, `_shed`).
    pub retried: Counter,
    pub shed: Counter,
    pub rate_limiter: Option<Arc<RateLimiter>>,
    pub rate_limited: Counter,
    pub cache: Option<CachePolicy>,
    /// Cache lookups by [`crate::cache::Outcome`].
    pub cache_lookups: [Counter; 3],
}

/// What answers a route.
#[derive(Debug)]
pub enum Target {
    /// The named service, through the proxy.
    Service(String),
    /// Several services' answers, merged.
    Compose(Composite),
    /// The caller's events from the bus, streamed.
    Events(bus::TypeFilter),
}

impl Route {
    fn takes(&self, method: &Method, host: Option<&str>, headers: &HeaderMap) -> bool {
        (self.methods.is_empty() || self.methods.contains(method))
            && self
                .host
                .as_deref()
                .is_none_or(|h| host.is_some_and(|given| given.eq_ignore_ascii_case(h)))
            && self
                .headers
                .iter()
                .all(|(name, value)| headers.get(name) == Some(value))
    }

    /// The methods the route takes; empty means all.
    pub fn methods(&self) -> Vec<Method> {
        self.methods.iter().cloned().collect()
    }

    fn allows(&self, method: &Method) -> bool {
        self.methods.is_empty() || self.methods.contains(method)
    }
}

/// A configuration the gateway refuses, naming the route and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("route {route:?}: {problem}")]
pub struct RouteError {
    pub route: String,
    pub problem: String,
}

/// Paths no route may take: internal endpoints stay internal.
pub const RESERVED_PREFIX: &str = "/internal";

/// What the table says about a request.
#[derive(Debug)]
pub enum Matched<'a> {
    Route(&'a Route),
    /// The path is routed, but not for this method: these are allowed.
    MethodNotAllowed(Vec<Method>),
    NotFound,
}

/// Every route, compiled; immutable once built.
#[derive(Debug)]
pub struct RouteTable {
    routes: Vec<Route>,
    /// Path pattern → indices of the routes declared on it, in order.
    paths: matchit::Router<Vec<usize>>,
}

impl RouteTable {
    /// Compiles `configs`, refusing (with the route and the reason) a bad
    /// path, method, header or timeout, a reserved path, two routes on one
    /// name, and paths the matcher cannot tell apart. A route declared as
    /// in `previous` keeps its concurrency permits and rate limit state.
    pub fn compile(
        configs: &[RouteConfig],
        services: &BTreeSet<String>,
        metrics: &GatewayMetrics,
        previous: Option<&RouteTable>,
    ) -> Result<Self, RouteError> {
        let mut routes = Vec::with_capacity(configs.len());
        let mut by_pattern: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        let mut order: Vec<String> = Vec::new();
        let mut names = BTreeSet::new();
        for config in configs {
            let error = |problem: String| RouteError {
                route: config.name.clone(),
                problem,
            };
            if config.name.is_empty() || !names.insert(config.name.clone()) {
                return Err(error("the name is empty or used by another route".into()));
            }
            let (pattern, matcher) = match (&config.path, &config.prefix) {
                (Some(path), None) => (path.clone(), path.clone()),
                (None, Some(prefix)) if prefix.starts_with('/') && prefix.ends_with('/') => {
                    (format!("{prefix}*"), format!("{prefix}{{*rest}}"))
                }
                (None, Some(_)) => return Err(error("a prefix starts and ends with /".into())),
                _ => return Err(error("give exactly one of path and prefix".into())),
            };
            let literal = matcher.split('{').next().unwrap_or("");
            if !matcher.starts_with('/') || crate::path::check(literal).is_err() {
                return Err(error(format!("{pattern:?} is not a clean absolute path")));
            }
            if literal.starts_with(RESERVED_PREFIX) {
                return Err(error(format!(
                    "{pattern:?} is under {RESERVED_PREFIX}, which is never routable"
                )));
            }
            let rewrite = match (&config.prefix, &config.rewrite) {
                (_, None) => None,
                (Some(prefix), Some(to))
                    if to.starts_with('/')
                        && to.ends_with('/')
                        && crate::path::check(to).is_ok() =>
                {
                    Some((prefix.clone(), to.clone()))
                }
                (Some(_), Some(to)) => {
                    return Err(error(format!(
                        "rewrite {to:?} must be a clean path starting and ending with /"
                    )));
                }
                (None, Some(_)) => return Err(error("rewrite needs a prefix".into())),
            };
            let given = (
                &config.service,
                config.branches.is_empty(),
                config.events.is_empty(),
            );
            let target = match given {
                (Some(service), true, true) if services.contains(service) => {
                    Target::Service(service.clone())
                }
                (Some(service), true, true) => {
                    return Err(error(format!("no service named {service:?}")));
                }
                (None, false, true) => {
                    Target::Compose(Composite::compile(config, &matcher, services).map_err(error)?)
                }
                (None, true, false) => {
                    if config.auth != AuthPolicy::Required {
                        return Err(error("an event stream needs auth = \"required\"".into()));
                    }
                    let patterns: Vec<&str> = config.events.iter().map(String::as_str).collect();
                    let types = bus::TypeFilter::parse(&patterns)
                        .map_err(|e| error(format!("events: {e}")))?;
                    Target::Events(types)
                }
                _ => {
                    return Err(error(
                        "give exactly one of service, branches and events".into(),
                    ));
                }
            };
            if config.timeout_ms == 0 {
                return Err(error("timeout_ms must be > 0".into()));
            }
            if config.connect_timeout_ms == 0 {
                return Err(error("connect_timeout_ms must be > 0".into()));
            }
            if config.concurrency_max == 0 || config.concurrency_max > Semaphore::MAX_PERMITS {
                return Err(error("concurrency_max must be > 0".into()));
            }
            let rate_limiter = config
                .rate_limit
                .as_ref()
                .map(|limit| RateLimiter::new(limit).map(Arc::new))
                .transpose()
                .map_err(error)?;
            if rate_limiter
                .as_ref()
                .is_some_and(|l| l.key == LimitKey::User)
                && config.auth == AuthPolicy::None
            {
                return Err(error("a rate limit by user needs auth".into()));
            }
            if config.retries > RETRIES_MAX {
                return Err(error(format!("retries must be at most {RETRIES_MAX}")));
            }
            if config.body_max_bytes > BODY_MAX_BYTES_LIMIT {
                return Err(error(format!(
                    "body_max_bytes must be at most {BODY_MAX_BYTES_LIMIT}"
                )));
            }
            if config.auth == AuthPolicy::None && !config.roles.is_empty() {
                return Err(error("roles need auth = \"required\"".into()));
            }
            let methods = config
                .methods
                .iter()
                .map(|m| {
                    Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                        .map_err(|_| error(format!("{m:?} is not a method")))
                })
                .collect::<Result<BTreeSet<_>, _>>()?;
            // A composite or an event stream answers GET only, said or not.
            let methods = match &target {
                Target::Compose(_) | Target::Events(_) => BTreeSet::from([Method::GET]),
                Target::Service(_) => methods,
            };
            let cache = config
                .cache
                .as_ref()
                .map(|c| CachePolicy::compile(c, config.auth, &methods))
                .transpose()
                .map_err(error)?;
            let cache_lookups = [Outcome::Hit, Outcome::Miss, Outcome::Bypass].map(|outcome| {
                metrics
                    .cache_lookups
                    .get_or_create(&CacheLabels {
                        route: config.name.clone(),
                        outcome: outcome.label().to_owned(),
                    })
                    .clone()
            });
            let headers = config
                .headers
                .iter()
                .map(|(name, value)| {
                    let name = http::HeaderName::from_bytes(name.as_bytes())
                        .map_err(|_| error(format!("{name:?} is not a header name")))?;
                    let value = http::HeaderValue::from_str(value)
                        .map_err(|_| error(format!("{value:?} is not a header value")))?;
                    Ok((name, value))
                })
                .collect::<Result<Vec<_>, RouteError>>()?;
            let label = RouteLabel {
                route: config.name.clone(),
            };
            if !by_pattern.contains_key(&matcher) {
                order.push(matcher.clone());
            }
            by_pattern.entry(matcher).or_default().push(routes.len());
            let same = previous.and_then(|table| table.routes.iter().find(|r| r.config == *config));
            routes.push(Route {
                config: config.clone(),
                name: config.name.as_str().into(),
                pattern,
                methods,
                host: config.host.as_ref().map(|h| h.to_ascii_lowercase()),
                headers,
                target,
                rewrite,
                auth: config.auth,
                roles: config.roles.clone(),
                timeout: Duration::from_millis(config.timeout_ms),
                connect_timeout: Duration::from_millis(
                    config.connect_timeout_ms.min(config.timeout_ms),
                ),
                retries: config.retries,
                retry_backoff: Duration::from_millis(config.retry_backoff_ms),
                body_max_bytes: config.body_max_bytes,
                concurrency: same.map_or_else(
                    || Arc::new(Semaphore::new(config.concurrency_max)),
                    |r| r.concurrency.clone(),
                ),
                retried: metrics.retries.get_or_create(&label).clone(),
                shed: metrics.shed.get_or_create(&label).clone(),
                rate_limiter: same.map_or(rate_limiter, |r| r.rate_limiter.clone()),
                rate_limited: metrics.rate_limited.get_or_create(&label).clone(),
                cache,
                cache_lookups,
            });
        }
        let mut paths = matchit::Router::new();
        for matcher in order {
            let indices = by_pattern.remove(&matcher).unwrap_or_default();
            let first = routes[indices[0]].name.to_string();
            paths.insert(&matcher, indices).map_err(|e| RouteError {
                route: first,
                problem: format!("path {matcher:?}: {e}"),
            })?;
        }
        Ok(Self { routes, paths })
    }

    /// The route for a request whose path already passed [`crate::path::check`].
    pub fn find(
        &self,
        method: &Method,
        path: &str,
        host: Option<&str>,
        headers: &HeaderMap,
    ) -> Matched<'_> {
        let Ok(found) = self.paths.at(path) else {
            return Matched::NotFound;
        };
        let candidates = found.value.iter().map(|&i| &self.routes[i]);
        if let Some(route) = candidates.clone().find(|r| r.takes(method, host, headers)) {
            return Matched::Route(route);
        }
        let allowed: BTreeSet<Method> = candidates
            .filter(|r| !r.allows(method))
            .flat_map(|r| r.methods.iter().cloned())
            .collect();
        if allowed.is_empty() {
            Matched::NotFound
        } else {
            Matched::MethodNotAllowed(allowed.into_iter().collect())
        }
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str, path: &str) -> RouteConfig {
        RouteConfig {
            name: name.into(),
            path: Some(path.into()),
            prefix: None,
            rewrite: None,
            methods: vec![],
            host: None,
            headers: BTreeMap::new(),
            service: Some("users".into()),
            branches: vec![],
            events: vec![],
            auth: AuthPolicy::Required,
            roles: vec![],
            timeout_ms: 1000,
            connect_timeout_ms: 500,
            retries: 2,
            retry_backoff_ms: 25,
            body_max_bytes: 1024,
            concurrency_max: 8,
            rate_limit: None,
            cache: None,
        }
    }

    fn services() -> BTreeSet<String> {
        ["users".to_string(), "identity".to_string()].into()
    }

    fn compile(configs: &[RouteConfig]) -> Result<RouteTable, RouteError> {
        RouteTable::compile(configs, &services(), &GatewayMetrics::default(), None)
    }

    fn name(matched: Matched<'_>) -> String {
        match matched {
            Matched::Route(r) => r.name.to_string(),
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn matches_templates_prefixes_methods_hosts_and_headers() {
        let table = compile(&[
            RouteConfig {
                methods: vec!["get".into()],
                ..route("me", "/api/v1/users/me")
            },
            RouteConfig {
                methods: vec!["GET".into()],
                ..route("one", "/api/v1/users/{id}")
            },
            RouteConfig {
                host: Some("Admin.Example".into()),
                headers: [("x-beta".to_string(), "1".to_string())].into(),
                ..route("beta", "/api/v1/users/{id}")
            },
            RouteConfig {
                path: None,
                prefix: Some("/api/v1/auth/".into()),
                service: Some("identity".into()),
                ..route("auth", "")
            },
        ])
        .unwrap();
        let none = HeaderMap::new();
        let get = |path: &str| name(table.find(&Method::GET, path, None, &none));
        assert_eq!(get("/api/v1/users/me"), "me");
        assert_eq!(get("/api/v1/users/42"), "one");
        assert_eq!(get("/api/v1/auth/token"), "auth");
        assert_eq!(get("/api/v1/auth/a/b"), "auth");
        assert_eq!(get("/api/v1/users"), "NotFound");
        assert_eq!(get("/api/v1/orders"), "NotFound");
        let beta: HeaderMap = [(
            http::HeaderName::from_static("x-beta"),
            http::HeaderValue::from_static("1"),
        )]
        .into_iter()
        .collect();
        let patch = |host| name(table.find(&Method::PATCH, "/api/v1/users/7", host, &beta));
        assert_eq!(patch(Some("admin.example")), "beta");
        assert_eq!(
            name(table.find(&Method::PATCH, "/api/v1/users/me", None, &none)),
            "MethodNotAllowed([GET])"
        );
    }

    #[test]
    fn refuses_bad_routes_with_a_precise_message() {
        let cases = [
            (route("x", "/internal/keys"), "is under /internal"),
            (route("x", "/api/../internal"), "not a clean absolute path"),
            (route("x", "api"), "not a clean absolute path"),
            (
                RouteConfig {
                    service: Some("nope".into()),
                    ..route("x", "/a")
                },
                "no service named \"nope\"",
            ),
            (
                RouteConfig {
                    methods: vec!["GE T".into()],
                    ..route("x", "/a")
                },
                "\"GE T\" is not a method",
            ),
            (
                RouteConfig {
                    timeout_ms: 0,
                    ..route("x", "/a")
                },
                "timeout_ms must be > 0",
            ),
            (
                RouteConfig {
                    connect_timeout_ms: 0,
                    ..route("x", "/a")
                },
                "connect_timeout_ms must be > 0",
            ),
            (
                RouteConfig {
                    retries: 6,
                    ..route("x", "/a")
                },
                "retries must be at most 5",
            ),
            (
                RouteConfig {
                    path: None,
                    prefix: Some("/api".into()),
                    ..route("x", "")
                },
                "a prefix starts and ends with /",
            ),
            (
                RouteConfig {
                    auth: AuthPolicy::None,
                    roles: vec!["admin".into()],
                    ..route("x", "/a")
                },
                "roles need auth",
            ),
        ];
        for (config, expected) in cases {
            let error = compile(&[config]).unwrap_err();
            assert_eq!(error.route, "x");
            assert!(error.problem.contains(expected), "{error}");
        }
        let twins = compile(&[route("x", "/a"), route("x", "/b")]).unwrap_err();
        assert!(twins.problem.contains("used by another route"), "{twins}");
        let clash = compile(&[route("a", "/u/{id}"), route("b", "/u/{name}")]).unwrap_err();
        assert_eq!(clash.route, "b");
    }

    #[test]
    fn a_route_declared_alike_keeps_its_limiters_across_a_recompile() {
        let limited = RouteConfig {
            rate_limit: Some(RateLimitConfig {
                per_second: 1.0,
                burst: 1,
                key: LimitKey::Ip,
            }),
            ..route("a", "/a")
        };
        let before = compile(&[limited.clone(), route("b", "/b")]).unwrap();
        let changed = RouteConfig {
            retries: 0,
            ..route("b", "/b")
        };
        let after = RouteTable::compile(
            &[limited, changed],
            &services(),
            &GatewayMetrics::default(),
            Some(&before),
        )
        .unwrap();
        let (a0, a1) = (&before.routes()[0], &after.routes()[0]);
        assert!(Arc::ptr_eq(&a0.concurrency, &a1.concurrency));
        let (l0, l1) = (a0.rate_limiter.as_ref(), a1.rate_limiter.as_ref());
        assert!(Arc::ptr_eq(l0.unwrap(), l1.unwrap()));
        let (b0, b1) = (&before.routes()[1], &after.routes()[1]);
        assert!(!Arc::ptr_eq(&b0.concurrency, &b1.concurrency), "b changed");
    }
}
