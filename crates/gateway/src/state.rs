//! The gateway's state: the configuration in force (routes and services:
//! one immutable [`Snapshot`], swapped whole on reload, so a request sees
//! one version from start to end) and what outlives a reload (the
//! registry, the token verifier, the upstream connection pool).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use axum::body::Bytes;
use kit::auth::{JwksClient, TokenVerifier};
use kit::clock::SharedClock;
use kit::config::Config;
use kit::telemetry::Metrics;
use serde::Serialize;
use serde_json::Value;

use crate::cache::{Cache, CacheStore, MemoryCache, RedisCache};
use crate::cors::Cors;
use crate::discovery::{self, Registry};
use crate::events::Feed;
use crate::metrics::GatewayMetrics;
use crate::pool::Outgoing;
use crate::ratelimit::SharedLimits;
use crate::routes::RouteTable;
use crate::settings::GatewaySettings;
use crate::upstream::{HealthCheck, Instance, Service};
use crate::{GatewayStartError, ROLE, openapi};

/// How often the configuration file is looked at for a change, and
/// expired registrations are let go.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// One version of the configuration, compiled.
pub struct Snapshot {
    /// 1 at start, one more for each reload that changed something.
    pub version: u64,
    /// When it was loaded, in milliseconds since the Unix epoch.
    pub loaded_at_ms: u64,
    pub settings: GatewaySettings,
    pub table: RouteTable,
    pub services: BTreeMap<String, Arc<Service>>,
    /// Where rate limits are counted when not in this process.
    pub shared_limits: Option<Arc<SharedLimits>>,
    /// Cross-origin requests, when allowed.
    pub cors: Option<Cors>,
    /// Where cached routes keep their answers.
    pub cache: Arc<Cache>,
}

/// What a reload did.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Reloaded {
    pub version: u64,
    /// False when the configuration read was the one in force.
    pub changed: bool,
}

/// Everything the proxy and the admin API share.
pub struct Gateway {
    current: ArcSwap<Snapshot>,
    pub registry: Registry,
    pub verifier: Arc<TokenVerifier>,
    metrics: GatewayMetrics,
    /// The sources a reload reads again.
    config: Config,
    /// One reload at a time.
    reloading: Mutex<()>,
    /// The services' OpenAPI documents, and their merge for the version
    /// in force.
    documents: OnceLock<Vec<Value>>,
    merged: Mutex<Option<(u64, Bytes)>>,
    /// What event-stream routes read, once the bus is followed.
    feed: OnceLock<Arc<Feed>>,
}

impl Gateway {
    /// The gateway `config` describes, counted in `metrics`. Its
    /// background work starts with [`Gateway::start_background`].
    pub fn open(
        config: &Config,
        clock: SharedClock,
        metrics: &Metrics,
    ) -> Result<Arc<Self>, GatewayStartError> {
        let common = config.common()?;
        let settings: GatewaySettings = config.section(ROLE)?;
        let counted = GatewayMetrics::registered(metrics);
        let registry = Registry::default();
        let snapshot = build(settings, 1, &counted, &registry, None)?;
        let verifier = Arc::new(TokenVerifier::new(
            Arc::new(JwksClient::new(&common.auth)),
            &common.auth,
            clock,
        ));
        Ok(Arc::new(Self {
            current: ArcSwap::from_pointee(snapshot),
            registry,
            verifier,
            metrics: counted,
            config: config.clone(),
            reloading: Mutex::new(()),
            documents: OnceLock::new(),
            merged: Mutex::new(None),
            feed: OnceLock::new(),
        }))
    }

    /// Gives the services' OpenAPI documents, merged into the public one
    /// for each configuration version; refused if they conflict.
    pub fn publish(&self, documents: Vec<Value>) -> Result<(), String> {
        self.documents
            .set(documents)
            .map_err(|_| "the documents were given already".to_owned())?;
        self.document().map(drop)
    }

    /// The public OpenAPI document for the routes in force, merged once
    /// per configuration version.
    pub fn document(&self) -> Result<Bytes, String> {
        let snapshot = self.snapshot();
        let mut merged = self.merged.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((version, document)) = merged.as_ref()
            && *version == snapshot.version
        {
            return Ok(document.clone());
        }
        let documents = self.documents.get().map_or(&[][..], Vec::as_slice);
        let document = openapi::merge(documents, &snapshot.table)?;
        let document = Bytes::from(serde_json::to_vec(&document).map_err(|e| e.to_string())?);
        *merged = Some((snapshot.version, document.clone()));
        Ok(document)
    }

    /// Follows the bus, before the first request is served: events purge
    /// the cached answers they make stale (`shared_cache`: the cache is
    /// shared by replicas, which purge as one consumer group), and feed the
    /// event-stream routes.
    pub async fn follow_bus(
        self: &Arc<Self>,
        broker: bus::SharedBroker,
        shared_cache: bool,
    ) -> Result<tokio::task::JoinHandle<()>, bus::BusError> {
        let purges =
            crate::cache::follow_events(self.clone(), broker.clone(), shared_cache).await?;
        let _ = self.feed.set(Feed::start(broker).await?);
        Ok(purges)
    }

    /// What event-stream routes read; none until the bus is followed.
    pub fn feed(&self) -> Option<&Arc<Feed>> {
        self.feed.get()
    }

    /// The configuration in force.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// The file a change of which reloads the configuration.
    pub fn config_file(&self) -> Option<&Path> {
        self.config.file()
    }

    /// Reads the configuration again and, if it compiles, puts it in force
    /// at once; requests under way finish on the version they started
    /// with. A configuration that does not compile is refused with the
    /// reason, and the one in force stays.
    pub fn reload(&self) -> Result<Reloaded, GatewayStartError> {
        let _one = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        let settings: GatewaySettings = self.config.reloaded()?.section(ROLE)?;
        let current = self.snapshot();
        if settings == current.settings {
            return Ok(Reloaded {
                version: current.version,
                changed: false,
            });
        }
        if (settings.listen, settings.admin_listen)
            != (current.settings.listen, current.settings.admin_listen)
        {
            tracing::warn!("listen addresses change only on restart; the old ones stay");
        }
        let next = build(
            settings,
            current.version + 1,
            &self.metrics,
            &self.registry,
            Some(&current),
        )?;
        let version = next.version;
        self.current.store(Arc::new(next));
        tracing::info!(version, "configuration reloaded");
        Ok(Reloaded {
            version,
            changed: true,
        })
    }

    /// [`Gateway::reload`], its outcome logged: for triggers with no one
    /// to answer (a signal, a file change).
    pub fn reload_logged(&self, trigger: &str) {
        match self.reload() {
            Ok(Reloaded { changed: false, .. }) => {
                tracing::info!(trigger, "configuration unchanged")
            }
            Ok(_) => {}
            Err(error) => {
                tracing::error!(trigger, %error, "configuration refused; the one in force stays")
            }
        }
    }

    /// Sets a service's instances from its static URLs, its live
    /// registrations and its DNS answer.
    fn refresh(&self, service: &Service, now: Instant) {
        if let Err(error) = service.set_instances(&members(service, &self.registry, now)) {
            tracing::error!(service = %service.name, %error, "instances not changed");
        }
    }

    /// Health checks and DNS resolution for each service, instances
    /// joining and leaving with registrations, and reloads when the
    /// configuration file changes; for as long as the task runs.
    pub fn start_background(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let gateway = self.clone();
        tokio::spawn(async move {
            let mut seen = gateway.config_file().map(stamp);
            loop {
                let now = Instant::now();
                gateway.registry.sweep(now);
                let snapshot = gateway.snapshot();
                for service in snapshot.services.values() {
                    if !service.workers_started.swap(true, Ordering::Relaxed) {
                        let weak = Arc::downgrade(service);
                        tokio::spawn(health_checks(weak.clone()));
                        if let Some(target) = service.settings.dns.clone() {
                            tokio::spawn(resolving(weak, target, Arc::downgrade(&gateway)));
                        }
                    }
                    gateway.refresh(service, now);
                }
                let watched = snapshot.settings.watch_config;
                drop(snapshot);
                if let Some(file) = gateway.config_file().filter(|_| watched) {
                    let now_seen = stamp(file);
                    if seen.as_ref() != Some(&now_seen) {
                        seen = Some(now_seen);
                        gateway.reload_logged("file changed");
                    }
                }
                tokio::select! {
                    () = tokio::time::sleep(WATCH_INTERVAL) => {}
                    () = gateway.registry.changed() => {}
                }
            }
        })
    }
}

/// What tells a changed file: its modification time and length.
fn stamp(file: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(file).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

fn members(service: &Service, registry: &Registry, now: Instant) -> BTreeSet<String> {
    let mut urls: BTreeSet<String> = service.settings.urls.iter().cloned().collect();
    urls.extend(registry.urls(&service.name, now));
    urls.extend(service.resolved());
    urls
}

/// Compiles `settings` as version `version`. What did not change since
/// `previous` is kept: a service declared alike as it is (breaker, budget,
/// instances), a route declared alike its limiters.
fn build(
    settings: GatewaySettings,
    version: u64,
    metrics: &GatewayMetrics,
    registry: &Registry,
    previous: Option<&Snapshot>,
) -> Result<Snapshot, GatewayStartError> {
    settings
        .check()
        .map_err(kit::config::ConfigError::Invalid)?;
    let names: BTreeSet<String> = settings.services.keys().cloned().collect();
    let table = RouteTable::compile(
        &settings.routes,
        &names,
        metrics,
        previous.map(|p| &p.table),
    )?;
    let now = Instant::now();
    let mut services = BTreeMap::new();
    for (name, wanted) in &settings.services {
        let refuse = |problem: String| GatewayStartError::Service {
            service: name.clone(),
            problem,
        };
        let before = previous.and_then(|p| p.services.get(name));
        let service = match before {
            Some(same) if same.settings == *wanted => same.clone(),
            _ => {
                let service = Service::from_settings(name, wanted, metrics, before.map(|b| &**b))
                    .map_err(refuse)?;
                service
                    .set_instances(&members(&service, registry, now))
                    .map_err(refuse)?;
                Arc::new(service)
            }
        };
        services.insert(name.clone(), service);
    }
    let cors = Cors::compile(&settings.cors).map_err(kit::config::ConfigError::Invalid)?;
    let shared_limits = match &settings.rate_limit_redis_url {
        None => None,
        Some(url) => match previous.and_then(|p| p.shared_limits.as_ref()) {
            Some(same) if same.url == *url => Some(same.clone()),
            _ => Some(Arc::new(
                SharedLimits::new(url, metrics.rate_limit_store_errors.clone())
                    .map_err(kit::config::ConfigError::Invalid)?,
            )),
        },
    };
    let cache = match previous {
        Some(p) if p.settings.cache == settings.cache => p.cache.clone(),
        _ => {
            let store: Arc<dyn CacheStore> = match &settings.cache.redis_url {
                Some(url) => {
                    Arc::new(RedisCache::new(url).map_err(kit::config::ConfigError::Invalid)?)
                }
                None => Arc::new(MemoryCache::new(settings.cache.memory_bytes_max)),
            };
            Arc::new(Cache {
                store,
                entry_bytes_max: settings.cache.entry_bytes_max,
                store_errors: metrics.cache_store_errors.clone(),
                purged: metrics.cache_purged.clone(),
            })
        }
    };
    let loaded_at_ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    Ok(Snapshot {
        version,
        loaded_at_ms,
        settings,
        table,
        services,
        shared_limits,
        cors,
        cache,
    })
}

/// Asks each instance of the service its health path every interval, for
/// as long as the service is in force.
async fn health_checks(service: Weak<Service>) {
    let Some(interval) = service.upgrade().map(|s| s.health.interval) else {
        return;
    };
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(service) = service.upgrade() else {
            return;
        };
        let mut checks = tokio::task::JoinSet::new();
        for instance in service.members().instances.iter().cloned() {
            let health = service.health.clone();
            checks.spawn(async move {
                instance.pool.evict_idle();
                instance.set_healthy(check(&instance, &health).await);
            });
        }
        drop(service);
        while checks.join_next().await.is_some() {}
    }
}

async fn check(instance: &Instance, health: &HealthCheck) -> bool {
    let Ok(target) = health.path.parse::<http::uri::PathAndQuery>() else {
        return false;
    };
    let request = Outgoing::get(target, http::HeaderMap::new());
    let deadline = tokio::time::Instant::now() + health.timeout;
    let answer = instance.pool.send(&request, health.timeout, deadline).await;
    matches!(answer, Ok(response) if response.status().is_success())
}

/// Resolves the service's DNS name every `dns_interval_ms`; a failed
/// lookup keeps the last answer.
async fn resolving(service: Weak<Service>, target: String, gateway: Weak<Gateway>) {
    loop {
        let found = discovery::resolve(&target).await;
        let (Some(service), Some(gateway)) = (service.upgrade(), gateway.upgrade()) else {
            return;
        };
        match found {
            Ok(urls) => {
                service.set_resolved(urls);
                gateway.refresh(&service, Instant::now());
            }
            Err(error) => {
                tracing::warn!(service = %service.name, %error, "DNS lookup failed; the last answer stays")
            }
        }
        let wait = Duration::from_millis(service.settings.dns_interval_ms);
        drop((service, gateway));
        tokio::time::sleep(wait).await;
    }
}
