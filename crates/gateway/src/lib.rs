//! The API gateway: the one host clients see. Routes declared in TOML and
//! compiled once ([`routes`]), a path check no input escapes ([`path`]),
//! instances chosen by power of two choices ([`upstream`]), and the proxy
//! itself, one phase at a time ([`proxy`]).

pub mod balance;
pub mod breaker;
pub mod metrics;
pub mod path;
pub mod proxy;
pub mod ratelimit;
pub mod retry;
pub mod routes;
pub mod settings;
pub mod upstream;

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::Router;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use kit::auth::{JwksClient, TokenVerifier};
use kit::clock::SharedClock;
use kit::config::{Common, Config};
use kit::http::Readiness;
use kit::telemetry::Metrics;

use crate::balance::Balance;
use crate::breaker::{Breaker, BreakerSettings};
use crate::metrics::{GatewayMetrics, ServiceLabel};
use crate::proxy::Gateway;
use crate::retry::RetryBudget;
use crate::routes::RouteTable;
use crate::settings::GatewaySettings;
use crate::upstream::{HealthCheck, Instance, Service};

pub const ROLE: &str = "gateway";

/// Idle upstream connections kept per instance.
pub const UPSTREAM_IDLE_PER_INSTANCE: usize = 64;
/// An idle upstream connection is closed after this long.
pub const UPSTREAM_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum GatewayStartError {
    #[error(transparent)]
    Config(#[from] kit::config::ConfigError),
    #[error("listener: {0}")]
    Listen(#[from] std::io::Error),
    #[error(transparent)]
    Routes(#[from] routes::RouteError),
    #[error("service {service:?}: {problem}")]
    Service { service: String, problem: String },
}

/// The gateway's shared state, from the configuration, counted in
/// `metrics`.
pub fn open(
    config: &Config,
    clock: SharedClock,
    metrics: &Metrics,
) -> Result<Arc<Gateway>, GatewayStartError> {
    let common = config.common()?;
    let settings: GatewaySettings = config.section(ROLE)?;
    build(&settings, &common, clock, metrics)
}

fn build(
    settings: &GatewaySettings,
    common: &Common,
    clock: SharedClock,
    metrics: &Metrics,
) -> Result<Arc<Gateway>, GatewayStartError> {
    let counted = GatewayMetrics::registered(metrics);
    let names: BTreeSet<String> = settings.services.keys().cloned().collect();
    let table = RouteTable::compile(&settings.routes, &names, &counted)?;
    let mut services = std::collections::BTreeMap::new();
    for (name, service) in &settings.services {
        let refuse = |problem: String| GatewayStartError::Service {
            service: name.clone(),
            problem,
        };
        let instances = service
            .urls
            .iter()
            .map(|url| Instance::counted(url, name, &counted).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()
            .map_err(refuse)?;
        if service.health_interval_ms == 0 || service.health_timeout_ms == 0 {
            return Err(refuse(
                "health_interval_ms and health_timeout_ms must be > 0".into(),
            ));
        }
        if !(service.breaker_failure_ratio > 0.0 && service.breaker_failure_ratio <= 1.0)
            || service.breaker_window_ms == 0
            || service.breaker_open_ms == 0
            || service.breaker_probes == 0
        {
            return Err(refuse(
                "breaker_failure_ratio must be in (0, 1]; breaker_window_ms, breaker_open_ms and breaker_probes > 0".into(),
            ));
        }
        let balance = Balance::parse(&service.balance, service.hash_key.as_deref(), &service.urls)
            .map_err(refuse)?;
        let label = ServiceLabel {
            service: name.clone(),
        };
        let breaker = Breaker::new(
            BreakerSettings {
                failure_ratio: service.breaker_failure_ratio,
                min_requests: service.breaker_min_requests,
                window: std::time::Duration::from_millis(service.breaker_window_ms),
                open_for: std::time::Duration::from_millis(service.breaker_open_ms),
                probes: service.breaker_probes,
            },
            counted.breaker_state.get_or_create(&label).clone(),
        );
        let health = HealthCheck {
            path: service.health_path.clone(),
            interval: std::time::Duration::from_millis(service.health_interval_ms),
            timeout: std::time::Duration::from_millis(service.health_timeout_ms),
        };
        services.insert(
            name.clone(),
            Service {
                name: name.clone(),
                instances,
                health,
                breaker,
                budget: RetryBudget::default(),
                latency: counted.upstream_latency.get_or_create(&label).clone(),
                balance,
            },
        );
    }
    let verifier = Arc::new(TokenVerifier::new(
        Arc::new(JwksClient::new(&common.auth)),
        &common.auth,
        clock,
    ));
    let client = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(UPSTREAM_IDLE_PER_INSTANCE)
        .pool_idle_timeout(UPSTREAM_IDLE_TIMEOUT)
        .build_http();
    Ok(Arc::new(Gateway {
        table,
        services,
        verifier,
        client,
    }))
}

/// Asks every instance's health path on its service's interval, for as
/// long as the returned task runs.
pub fn spawn_health_checks(gateway: &Arc<Gateway>) -> tokio::task::JoinHandle<()> {
    let gateway = gateway.clone();
    tokio::spawn(async move {
        let mut checks = tokio::task::JoinSet::new();
        for service in gateway.services.values() {
            for instance in &service.instances {
                let (gateway, instance) = (gateway.clone(), instance.clone());
                let health = service.health.clone();
                checks.spawn(async move {
                    let mut tick = tokio::time::interval(health.interval);
                    loop {
                        tick.tick().await;
                        let healthy = check(&gateway, &instance.base, &health).await;
                        instance.set_healthy(healthy);
                    }
                });
            }
        }
        while checks.join_next().await.is_some() {}
    })
}

async fn check(gateway: &Gateway, base: &str, health: &HealthCheck) -> bool {
    let Ok(uri) = format!("{base}{}", health.path).parse::<http::Uri>() else {
        return false;
    };
    let mut request = http::Request::new(axum::body::Body::empty());
    *request.uri_mut() = uri;
    let answer = tokio::time::timeout(health.timeout, gateway.client.request(request)).await;
    matches!(answer, Ok(Ok(response)) if response.status().is_success())
}

/// The public port: every request goes to the proxy; no metrics, health
/// or admin path is served here.
pub fn public_router(gateway: Arc<Gateway>, metrics: Metrics) -> Router {
    let proxy = Router::new().fallback(proxy::handle).with_state(gateway);
    kit::http::observed(proxy, metrics)
}

/// The admin port: `/metrics`, `/healthz`, `/readyz`.
pub fn admin_router(common: &Common, metrics: Metrics) -> Router {
    kit::http::service_router(Router::new(), &common.http, metrics, Readiness::default())
}

/// Runs the gateway until SIGTERM or Ctrl-C: the public port and, beside
/// it, the admin port; both drain in-flight requests on the way out.
pub async fn serve(config: &Config) -> Result<(), GatewayStartError> {
    let common = config.common()?;
    let settings: GatewaySettings = config.section(ROLE)?;
    let metrics = Metrics::new(ROLE);
    let gateway = build(&settings, &common, kit::clock::system(), &metrics)?;
    let _health_checks = spawn_health_checks(&gateway);
    let public = kit::listen::inherited_or_bind(settings.listen).await?;
    let admin = kit::listen::admin_inherited_or_bind(settings.admin_listen).await?;
    tracing::info!(
        addr = %public.local_addr()?,
        admin = %admin.local_addr()?,
        routes = gateway.table.routes().len(),
        "gateway listening"
    );
    let grace = std::time::Duration::from_millis(common.http.shutdown_grace_ms);
    let public = kit::http::serve(
        public,
        public_router(gateway, metrics.clone()),
        kit::http::shutdown_signal(),
        grace,
    );
    let admin = kit::http::serve(
        admin,
        admin_router(&common, metrics),
        kit::http::shutdown_signal(),
        grace,
    );
    let (public, admin) = tokio::join!(public, admin);
    public?;
    admin?;
    Ok(())
}
