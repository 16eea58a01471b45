//! The response cache: opt-in per route (`cache = { ttl_ms = ... }`), for
//! GET answers only.
//!
//! An entry's key is `{route}/{scope}/{path?query}`, the scope being the
//! verified user on per-user routes (`-` otherwise), so that one user's
//! answer is never served to another and a purge can take one user's
//! entries (`{route}/{user}/`) or a route's (`{route}/`). An answer is kept
//! when it is a complete 200 the upstream allows a shared cache to keep
//! (no `no-store`, `no-cache`, `private` on a shared route, `Set-Cookie`
//! or `Vary` on what the key does not hold), for the route's `ttl_ms` or
//! the upstream's `s-maxage`/`max-age` if shorter. Entries carry an ETag
//! (the upstream's, or one made from the body), so `If-None-Match` is
//! answered 304 from the cache. A client's `Cache-Control: no-cache` goes
//! to the upstream and refreshes the entry; `no-store` passes the cache by.
//!
//! Where entries live is a [`CacheStore`]: [`MemoryCache`] in the process
//! (bounded in bytes, least recently used out first) or [`RedisCache`],
//! shared by every gateway replica. A store that fails is a miss, never an
//! error: the request goes to the upstream, counted in
//! `tessera_gateway_cache_store_errors_total`.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use kit::problem::Problem;
use prometheus_client::metrics::counter::Counter;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::compose::PARTIAL_HEADER;

/// The longest `ttl_ms` a route may ask.
pub const CACHE_TTL_MS_MAX: u64 = 24 * 3600 * 1000;
/// A Redis cache that does not answer within this long is a miss.
pub const REDIS_TIMEOUT: Duration = Duration::from_millis(100);
/// Keys one purge of a Redis cache asks for per SCAN step.
const SCAN_COUNT: usize = 512;
/// RFC 9211's name for this cache in `Cache-Status`.
const CACHE_NAME: &str = "tessera";

/// The answer headers an entry keeps; the rest are the upstream's
/// business with this one exchange.
const KEPT_HEADERS: [HeaderName; 6] = [
    header::CONTENT_TYPE,
    header::CONTENT_LANGUAGE,
    header::ETAG,
    header::LAST_MODIFIED,
    header::CACHE_CONTROL,
    header::LOCATION,
];

/// A route's cache policy as written: `cache = { ttl_ms = 30000 }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// How long an answer is served from the cache at most.
    pub ttl_ms: u64,
    /// One entry per verified user: the default when the route needs a
    /// token. `false` for answers that are the same for every caller.
    #[serde(default)]
    pub per_user: Option<bool>,
    /// Event types (or `prefix.*`) whose arrival purges entries: the
    /// event subject's on a per-user route, all of the route's otherwise.
    #[serde(default)]
    pub purge_on: Vec<String>,
}

/// A route's cache policy, compiled.
#[derive(Debug, Clone)]
pub struct CachePolicy {
    pub ttl: Duration,
    pub per_user: bool,
    /// The events that purge the route's entries, if any.
    pub purge_on: Option<bus::TypeFilter>,
}

impl CachePolicy {
    /// `config` for a route with `auth` taking `methods`; refused with the
    /// reason.
    pub fn compile(
        config: &CacheConfig,
        auth: crate::routes::AuthPolicy,
        methods: &std::collections::BTreeSet<Method>,
    ) -> Result<Self, String> {
        if config.ttl_ms == 0 || config.ttl_ms > CACHE_TTL_MS_MAX {
            return Err(format!("cache.ttl_ms must be in 1..={CACHE_TTL_MS_MAX}"));
        }
        if !methods.is_empty() && !methods.contains(&Method::GET) {
            return Err("a cache needs a route that takes GET".into());
        }
        let per_user = config
            .per_user
            .unwrap_or(auth != crate::routes::AuthPolicy::None);
        if per_user && auth == crate::routes::AuthPolicy::None {
            return Err("cache.per_user needs auth".into());
        }
        let purge_on = if config.purge_on.is_empty() {
            None
        } else {
            let patterns: Vec<&str> = config.purge_on.iter().map(String::as_str).collect();
            let filter =
                bus::TypeFilter::parse(&patterns).map_err(|e| format!("cache.purge_on: {e}"))?;
            Some(filter)
        };
        Ok(Self {
            ttl: Duration::from_millis(config.ttl_ms),
            per_user,
            purge_on,
        })
    }
}

/// The key prefix of a route's entries for one scope (a user, or `-`).
pub fn scope_prefix(route: &str, scope: &str) -> String {
    format!("{route}/{scope}/")
}

/// The key prefix of all a route's entries.
pub fn route_prefix(route: &str) -> String {
    format!("{route}/")
}

/// A kept answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// `(name, value)` of [`KEPT_HEADERS`] present, the ETag always.
    headers: Vec<(String, String)>,
    #[serde(with = "base64_bytes")]
    body: Bytes,
    /// When it was stored (ms since the Unix epoch), for `Age`.
    stored_at_ms: u64,
    /// When it stops being served.
    expires_at_ms: u64,
}

mod base64_bytes {
    use super::*;

    pub fn serialize<S: serde::Serializer>(bytes: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&B64.encode(bytes))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        let text = String::deserialize(d)?;
        B64.decode(text)
            .map(Bytes::from)
            .map_err(serde::de::Error::custom)
    }
}

impl Entry {
    fn size(&self) -> usize {
        self.body.len()
            + self
                .headers
                .iter()
                .map(|(n, v)| n.len() + v.len())
                .sum::<usize>()
    }

    fn etag(&self) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == header::ETAG.as_str())
            .map(|(_, v)| v.as_str())
    }
}

/// Where entries live.
#[async_trait]
pub trait CacheStore: Send + Sync + 'static {
    async fn get(&self, key: &str, now_ms: u64) -> Result<Option<Entry>, String>;
    async fn put(&self, key: &str, entry: Entry, ttl: Duration) -> Result<(), String>;
    /// Removes every entry whose key starts with `prefix`; how many.
    async fn purge(&self, prefix: &str) -> Result<u64, String>;
}

/// Entries in this process, at most `bytes_max` of them (bodies and
/// headers); the least recently used go first.
pub struct MemoryCache {
    bytes_max: usize,
    inner: Mutex<MemoryInner>,
}

#[derive(Default)]
struct MemoryInner {
    /// Ordered, so that a purge by prefix is a range.
    entries: BTreeMap<String, (Entry, u64)>,
    /// Use tick → key, oldest first.
    recency: BTreeMap<u64, String>,
    tick: u64,
    bytes: usize,
}

impl MemoryInner {
    fn remove(&mut self, key: &str) -> Option<Entry> {
        let (entry, tick) = self.entries.remove(key)?;
        self.recency.remove(&tick);
        self.bytes -= entry.size() + key.len();
        Some(entry)
    }
}

impl MemoryCache {
    pub fn new(bytes_max: usize) -> Self {
        Self {
            bytes_max,
            inner: Mutex::new(MemoryInner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl CacheStore for MemoryCache {
    async fn get(&self, key: &str, now_ms: u64) -> Result<Option<Entry>, String> {
        let mut inner = self.lock();
        let Some((entry, tick)) = inner.entries.get(key).cloned() else {
            return Ok(None);
        };
        if entry.expires_at_ms <= now_ms {
            inner.remove(key);
            return Ok(None);
        }
        inner.tick += 1;
        let next = inner.tick;
        inner.recency.remove(&tick);
        inner.recency.insert(next, key.to_owned());
        if let Some(slot) = inner.entries.get_mut(key) {
            slot.1 = next;
        }
        Ok(Some(entry))
    }

    async fn put(&self, key: &str, entry: Entry, _ttl: Duration) -> Result<(), String> {
        let size = entry.size() + key.len();
        if size > self.bytes_max {
            return Ok(());
        }
        let mut inner = self.lock();
        inner.remove(key);
        while inner.bytes + size > self.bytes_max {
            let Some((_, oldest)) = inner.recency.pop_first() else {
                break;
            };
            if let Some((entry, _)) = inner.entries.remove(&oldest) {
                inner.bytes -= entry.size() + oldest.len();
            }
        }
        inner.tick += 1;
        let tick = inner.tick;
        inner.recency.insert(tick, key.to_owned());
        inner.entries.insert(key.to_owned(), (entry, tick));
        inner.bytes += size;
        Ok(())
    }

    async fn purge(&self, prefix: &str) -> Result<u64, String> {
        let mut inner = self.lock();
        let keys: Vec<String> = inner
            .entries
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, _)| k.clone())
            .collect();
        for key in &keys {
            inner.remove(key);
        }
        Ok(keys.len() as u64)
    }
}

/// Entries in Redis, shared by every gateway replica using it: one string
/// per entry (`tessera:gateway:cache:{key}`, JSON), expiring with it.
pub struct RedisCache {
    pub url: String,
    connection: tokio::sync::OnceCell<ConnectionManager>,
    client: redis::Client,
}

const REDIS_PREFIX: &str = "tessera:gateway:cache:";

impl RedisCache {
    pub fn new(url: &str) -> Result<Self, String> {
        let client = redis::Client::open(url).map_err(|e| format!("cache.redis_url: {e}"))?;
        Ok(Self {
            url: url.to_owned(),
            connection: tokio::sync::OnceCell::new(),
            client,
        })
    }

    async fn connection(&self) -> Result<ConnectionManager, String> {
        let connection = self
            .connection
            .get_or_try_init(|| ConnectionManager::new(self.client.clone()))
            .await
            .map_err(|e| e.to_string())?;
        Ok(connection.clone())
    }

    async fn bounded<T>(&self, work: impl Future<Output = Result<T, String>>) -> Result<T, String> {
        tokio::time::timeout(REDIS_TIMEOUT, work)
            .await
            .map_err(|_| format!("no answer within {} ms", REDIS_TIMEOUT.as_millis()))?
    }
}

/// `text` with Redis glob's special characters escaped.
fn glob_escaped(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

#[async_trait]
impl CacheStore for RedisCache {
    async fn get(&self, key: &str, now_ms: u64) -> Result<Option<Entry>, String> {
        let stored: Option<String> = self
            .bounded(async {
                let mut connection = self.connection().await?;
                redis::cmd("GET")
                    .arg(format!("{REDIS_PREFIX}{key}"))
                    .query_async(&mut connection)
                    .await
                    .map_err(|e| e.to_string())
            })
            .await?;
        let entry = stored.and_then(|text| serde_json::from_str::<Entry>(&text).ok());
        Ok(entry.filter(|e| e.expires_at_ms > now_ms))
    }

    async fn put(&self, key: &str, entry: Entry, ttl: Duration) -> Result<(), String> {
        let text = serde_json::to_string(&entry).map_err(|e| e.to_string())?;
        self.bounded(async {
            let mut connection = self.connection().await?;
            redis::cmd("SET")
                .arg(format!("{REDIS_PREFIX}{key}"))
                .arg(text)
                .arg("PX")
                .arg(ttl.as_millis().max(1) as u64)
                .query_async::<()>(&mut connection)
                .await
                .map_err(|e| e.to_string())
        })
        .await
    }

    async fn purge(&self, prefix: &str) -> Result<u64, String> {
        // A purge walks the keyspace; it has a bound of its own, not the
        // request path's.
        let mut connection = tokio::time::timeout(REDIS_TIMEOUT * 10, self.connection())
            .await
            .map_err(|_| "no connection".to_owned())??;
        let pattern = format!("{}*", glob_escaped(&format!("{REDIS_PREFIX}{prefix}")));
        let mut cursor: u64 = 0;
        let mut purged = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(SCAN_COUNT)
                .query_async(&mut connection)
                .await
                .map_err(|e| e.to_string())?;
            if !keys.is_empty() {
                let removed: u64 = redis::cmd("UNLINK")
                    .arg(&keys)
                    .query_async(&mut connection)
                    .await
                    .map_err(|e| e.to_string())?;
                purged += removed;
            }
            if next == 0 {
                return Ok(purged);
            }
            cursor = next;
        }
    }
}

/// The cache of one configuration version, with its counters.
pub struct Cache {
    pub store: std::sync::Arc<dyn CacheStore>,
    /// The largest answer kept.
    pub entry_bytes_max: usize,
    pub store_errors: Counter,
    pub purged: Counter,
}

impl Cache {
    /// Removes the entries under `prefix`, counted; a store that fails is
    /// logged and counted (its entries run out with their time to live).
    pub async fn purge(&self, prefix: &str) -> Result<u64, String> {
        match self.store.purge(prefix).await {
            Ok(purged) => {
                self.purged.inc_by(purged);
                Ok(purged)
            }
            Err(error) => {
                self.store_errors.inc();
                tracing::warn!(%prefix, %error, "cache purge failed");
                Err(error)
            }
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What the client's `Cache-Control` asks of the cache.
#[derive(Debug, PartialEq, Eq)]
enum Asked {
    /// Served from the cache if there.
    Any,
    /// From the upstream, the entry refreshed (`no-cache`).
    Fresh,
    /// Not from or into the cache (`no-store`).
    Bypass,
}

fn directives(headers: &HeaderMap) -> impl Iterator<Item = String> + '_ {
    headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|d| d.trim().to_ascii_lowercase())
}

fn asked(headers: &HeaderMap) -> Asked {
    let mut asked = Asked::Any;
    for directive in directives(headers) {
        match directive.as_str() {
            "no-store" => return Asked::Bypass,
            "no-cache" | "max-age=0" => asked = Asked::Fresh,
            _ => {}
        }
    }
    asked
}

/// How long the upstream lets a shared cache keep `headers`' answer, within
/// `ttl`; `None` when it may not.
fn keepable_for(headers: &HeaderMap, ttl: Duration, per_user: bool) -> Option<Duration> {
    if headers.contains_key(header::SET_COOKIE) || headers.contains_key(PARTIAL_HEADER) {
        return None;
    }
    let varies_beyond_key = headers
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_ascii_lowercase())
        .any(|v| !matches!(v.as_str(), "accept-encoding" | "origin" | "authorization"));
    if varies_beyond_key {
        return None;
    }
    let (mut max_age, mut s_maxage) = (None, None);
    for directive in directives(headers) {
        match directive.split_once('=') {
            None if matches!(directive.as_str(), "no-store" | "no-cache") => return None,
            None if directive == "private" && !per_user => return None,
            Some(("max-age", n)) => max_age = n.trim_matches('"').parse::<u64>().ok(),
            Some(("s-maxage", n)) => s_maxage = n.trim_matches('"').parse::<u64>().ok(),
            _ => {}
        }
    }
    let allowed = s_maxage
        .or(max_age)
        .map_or(ttl, |s| ttl.min(Duration::from_secs(s)));
    (!allowed.is_zero()).then_some(allowed)
}

/// Whether `If-None-Match` names `etag` (weak comparison, RFC 9110 §13.1.2).
fn none_match(if_none_match: Option<&HeaderValue>, etag: &str) -> bool {
    let Some(value) = if_none_match.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let opaque = |tag: &str| tag.trim().trim_start_matches("W/").to_owned();
    value.trim() == "*" || value.split(',').any(|tag| opaque(tag) == opaque(etag))
}

/// The conditional headers a client sends the cache; the upstream gets
/// none of them, so that it answers in full what the cache keeps.
const CONDITIONAL: [HeaderName; 2] = [header::IF_NONE_MATCH, header::IF_MODIFIED_SINCE];

/// How one lookup went, for the counters and `Cache-Status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Hit,
    Miss,
    Bypass,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::Miss => "miss",
            Outcome::Bypass => "bypass",
        }
    }
}

/// Answers `request` from the cache under `key`, or through `fetch` (the
/// route's target) and keeps what may be kept. `lookups` counts each
/// outcome.
pub async fn through<F, Fut>(
    cache: &Cache,
    policy: &CachePolicy,
    key: String,
    mut request: Request,
    lookups: &[Counter; 3],
    fetch: F,
) -> Result<Response, Problem>
where
    F: FnOnce(Request) -> Fut,
    Fut: Future<Output = Result<Response, Problem>>,
{
    let count = |outcome: Outcome| lookups[outcome as usize].inc();
    let asked = asked(request.headers());
    if asked == Asked::Bypass {
        count(Outcome::Bypass);
        let mut response = fetch(request).await?;
        status(&mut response, "fwd=bypass");
        return Ok(response);
    }
    let if_none_match = request.headers().get(header::IF_NONE_MATCH).cloned();
    let now = now_ms();
    if asked == Asked::Any {
        match cache.store.get(&key, now).await {
            Ok(Some(entry)) => {
                count(Outcome::Hit);
                return Ok(answer(&entry, if_none_match.as_ref(), now, "hit"));
            }
            Ok(None) => {}
            Err(error) => {
                cache.store_errors.inc();
                tracing::warn!(%error, "cache store failed; going to the upstream");
            }
        }
    }
    count(Outcome::Miss);
    for name in CONDITIONAL {
        request.headers_mut().remove(name);
    }
    let mut response = fetch(request).await?;
    // The instance's header lines are read here: into the answer's map.
    crate::pool::whole_headers(&mut response);
    let declared = response
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    let keep_for = keepable_for(response.headers(), policy.ttl, policy.per_user)
        .filter(|_| response.status() == StatusCode::OK)
        .filter(|_| declared.is_some_and(|n| n <= cache.entry_bytes_max));
    let Some(keep_for) = keep_for else {
        status(&mut response, "fwd=miss");
        return Ok(response);
    };
    let (parts, body) = response.into_parts();
    let body = match http_body_util::Limited::new(body, cache.entry_bytes_max)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return Err(Problem::new(kit::problem::Code::BadGateway)
                .detail("the upstream broke its answer off"));
        }
    };
    let mut headers: Vec<(String, String)> = KEPT_HEADERS
        .iter()
        .filter_map(|name| {
            let value = parts.headers.get(name)?.to_str().ok()?;
            Some((name.as_str().to_owned(), value.to_owned()))
        })
        .collect();
    if !parts.headers.contains_key(header::ETAG) {
        let digest = Sha256::digest(&body);
        let tag: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        headers.push((header::ETAG.as_str().to_owned(), format!("\"{tag}\"")));
    }
    let entry = Entry {
        headers,
        body,
        stored_at_ms: now,
        expires_at_ms: now + keep_for.as_millis() as u64,
    };
    let how = match cache.store.put(&key, entry.clone(), keep_for).await {
        Ok(()) => "fwd=miss; stored",
        Err(error) => {
            cache.store_errors.inc();
            tracing::warn!(%error, "cache store failed; the answer was not kept");
            "fwd=miss"
        }
    };
    Ok(answer(&entry, if_none_match.as_ref(), now, how))
}

/// `entry` as an answer: 304 when `If-None-Match` names its ETag.
fn answer(entry: &Entry, if_none_match: Option<&HeaderValue>, now_ms: u64, how: &str) -> Response {
    let not_modified = entry
        .etag()
        .is_some_and(|etag| none_match(if_none_match, etag));
    let mut response = if not_modified {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        Response::new(Body::from(entry.body.clone()))
    };
    let headers = response.headers_mut();
    for (name, value) in &entry.headers {
        if not_modified && name == header::CONTENT_TYPE.as_str() {
            continue;
        }
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.insert(name, value);
        }
    }
    let age_s = now_ms.saturating_sub(entry.stored_at_ms) / 1000;
    headers.insert(header::AGE, HeaderValue::from(age_s));
    status(&mut response, how);
    response
}

/// `Cache-Status` (RFC 9211) saying what the cache did.
fn status(response: &mut Response, how: &str) {
    if let Ok(value) = HeaderValue::from_str(&format!("{CACHE_NAME}; {how}")) {
        response
            .headers_mut()
            .insert(HeaderName::from_static("cache-status"), value);
    }
}

/// The consumer group of the gateways sharing a Redis cache: one of them
/// purges for each event.
pub const PURGE_GROUP: &str = "gateway-cache";

/// Purges what `event` makes stale: on each route whose `purge_on` takes
/// its type, the subject's entries (per-user routes) or all of them.
pub async fn purge_for(
    snapshot: &crate::state::Snapshot,
    event: &bus::CloudEvent,
) -> Result<(), String> {
    for route in snapshot.table.routes() {
        let Some(policy) = &route.cache else { continue };
        if !policy
            .purge_on
            .as_ref()
            .is_some_and(|f| f.matches(&event.event_type))
        {
            continue;
        }
        let prefix = match policy.per_user && !event.subject.is_empty() {
            true => scope_prefix(&route.name, &event.subject),
            false => route_prefix(&route.name),
        };
        snapshot.cache.purge(&prefix).await?;
    }
    Ok(())
}

/// Follows the bus for the events that purge cached answers, until the
/// process ends. A cache in this process follows from now on (it started
/// empty: nothing earlier can be stale in it), every replica for itself;
/// a Redis cache is purged by one consumer group shared by the replicas,
/// which misses nothing while they are down. The stream is opened before
/// this returns, so that nothing kept after it is missed.
pub async fn follow_events(
    gateway: std::sync::Arc<crate::state::Gateway>,
    broker: bus::SharedBroker,
    shared: bool,
) -> Result<tokio::task::JoinHandle<()>, bus::BusError> {
    if shared {
        let options = bus::SubscribeOptions::new(PURGE_GROUP, bus::TypeFilter::all());
        return Ok(tokio::spawn(bus::consume(broker, options, move |event| {
            let gateway = gateway.clone();
            async move { purge_for(&gateway.snapshot(), &event).await }
        })));
    }
    let mut events = broker
        .tail(bus::TypeFilter::all(), bus::TailFrom::Now)
        .await?;
    Ok(tokio::spawn(async move {
        loop {
            match events.next().await {
                Ok(event) => {
                    let _ = purge_for(&gateway.snapshot(), &event).await;
                }
                Err(error) => {
                    tracing::warn!(%error, "following the bus for cache purges failed; retrying");
                    tokio::time::sleep(bus::CONSUME_RETRY_DELAY).await;
                }
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The moment an entry of `ttl` kept now expires.
    fn expiring(ttl: Duration) -> u64 {
        now_ms() + ttl.as_millis() as u64
    }

    /// An entry with `body` and `etag`.
    fn entry(body: &'static str, etag: &str, expires_at_ms: u64) -> Entry {
        Entry {
            headers: vec![("etag".into(), etag.into())],
            body: Bytes::from_static(body.as_bytes()),
            stored_at_ms: now_ms(),
            expires_at_ms,
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(n, v)| (HeaderName::from_static(n), HeaderValue::from_static(v)))
            .collect()
    }

    #[test]
    fn what_the_upstream_lets_a_shared_cache_keep() {
        let ttl = Duration::from_secs(60);
        assert_eq!(keepable_for(&headers(&[]), ttl, false), Some(ttl));
        let short = headers(&[("cache-control", "public, max-age=5")]);
        assert_eq!(
            keepable_for(&short, ttl, false),
            Some(Duration::from_secs(5))
        );
        let shared = headers(&[("cache-control", "max-age=5, s-maxage=10")]);
        assert_eq!(
            keepable_for(&shared, ttl, false),
            Some(Duration::from_secs(10))
        );
        for refused in [
            headers(&[("cache-control", "no-store")]),
            headers(&[("cache-control", "No-Cache")]),
            headers(&[("cache-control", "max-age=0")]),
            headers(&[("set-cookie", "a=b")]),
            headers(&[("vary", "accept-language")]),
            headers(&[("x-tessera-partial", "orders")]),
        ] {
            assert_eq!(keepable_for(&refused, ttl, true), None, "{refused:?}");
        }
        let private = headers(&[("cache-control", "private")]);
        assert_eq!(keepable_for(&private, ttl, false), None);
        assert_eq!(keepable_for(&private, ttl, true), Some(ttl), "per user");
    }

    #[test]
    fn if_none_match_compares_weakly_and_takes_lists_and_star() {
        let tag = HeaderValue::from_static;
        assert!(none_match(Some(&tag("\"a\"")), "\"a\""));
        assert!(none_match(Some(&tag("W/\"a\"")), "\"a\""));
        assert!(none_match(Some(&tag("\"x\", \"a\"")), "\"a\""));
        assert!(none_match(Some(&tag("*")), "\"a\""));
        assert!(!none_match(Some(&tag("\"b\"")), "\"a\""));
        assert!(!none_match(None, "\"a\""));
    }

    #[tokio::test]
    async fn memory_keeps_its_byte_bound_least_recently_used_out_first() {
        let cache = MemoryCache::new(60);
        let later = expiring(Duration::from_secs(60));
        let ttl = Duration::from_secs(60);
        cache
            .put("r/-/a", entry("0123456789", "\"a\"", later), ttl)
            .await
            .unwrap();
        cache
            .put("r/-/b", entry("0123456789", "\"b\"", later), ttl)
            .await
            .unwrap();
        // a is used, so b is the least recently used when c needs room.
        assert!(cache.get("r/-/a", now_ms()).await.unwrap().is_some());
        cache
            .put("r/-/c", entry("0123456789", "\"c\"", later), ttl)
            .await
            .unwrap();
        assert!(cache.get("r/-/b", now_ms()).await.unwrap().is_none());
        assert!(cache.get("r/-/a", now_ms()).await.unwrap().is_some());
        assert!(cache.get("r/-/c", now_ms()).await.unwrap().is_some());
        assert!(cache.lock().bytes <= 60);
        let expired = entry("x", "\"x\"", now_ms());
        cache.put("r/-/x", expired, ttl).await.unwrap();
        assert!(cache.get("r/-/x", now_ms()).await.unwrap().is_none());
        assert_eq!(cache.purge("r/-/").await.unwrap(), 2);
        assert_eq!(cache.lock().bytes, 0);
    }
}
