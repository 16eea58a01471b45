//! The API gateway: the one host clients see. Routes declared in TOML and
//! compiled into a snapshot swapped whole on reload ([`routes`],
//! [`state`]), a path check no input escapes ([`path`]), instances from
//! static lists, the registry and DNS ([`discovery`]) chosen by power of
//! two choices ([`upstream`]), the proxy itself, one phase at a time
//! ([`proxy`]), and the admin API on its own port ([`admin`]).

pub mod admin;
pub mod balance;
pub mod breaker;
pub mod cache;
pub mod compose;
pub mod cors;
pub mod discovery;
pub mod events;
pub mod h1;
pub mod metrics;
pub mod openapi;
pub mod path;
pub mod pool;
pub mod proxy;
pub mod ratelimit;
pub mod retry;
pub mod routes;
pub mod server;
pub mod settings;
pub mod state;
pub mod upstream;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use kit::clock::SharedClock;
use kit::config::{Common, Config};
use kit::problem::{Code, Problem};
use kit::telemetry::{Metrics, RouteName};
use tower::ServiceExt;

use crate::settings::GatewaySettings;
pub use crate::state::Gateway;

pub const ROLE: &str = "gateway";

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
    #[error("event bus: {0}")]
    Bus(String),
}

/// The gateway's shared state, from the configuration, counted in
/// `metrics`.
pub fn open(
    config: &Config,
    clock: SharedClock,
    metrics: &Metrics,
) -> Result<Arc<Gateway>, GatewayStartError> {
    Gateway::open(config, clock, metrics)
}

/// The public port: the merged OpenAPI document and its docs page, and
/// every other request to the proxy; no metrics, health or admin path is
/// served here.
pub fn public_service(gateway: Arc<Gateway>, metrics: Metrics) -> Public {
    Public {
        docs: docs_router(gateway.clone()),
        gateway,
        metrics: Arc::new(metrics),
    }
}

/// The public port on `listener`, plain HTTP, heads bounded by the
/// default timeout, until `shutdown` resolves: served as [`serve`] serves
/// it (tests).
pub async fn serve_public(
    listener: tokio::net::TcpListener,
    gateway: Arc<Gateway>,
    metrics: Metrics,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let defaults = GatewaySettings::default();
    let serving = server::Serving {
        tls: None,
        timeouts: defaults.timeouts(),
        grace: std::time::Duration::from_secs(1),
    };
    server::serve(
        listener,
        public_service(gateway, metrics),
        serving,
        shutdown,
    )
    .await
}

/// What serves the public port. A request is either for the docs (a small
/// router) or for the proxy, which it reaches with no router in between:
/// the proxy does its own routing, and one future, observed by the kit,
/// holds the whole request.
#[derive(Clone)]
pub struct Public {
    gateway: Arc<Gateway>,
    docs: Router,
    metrics: Arc<Metrics>,
}

impl Public {
    /// Answers one request from `client`. Not boxed: the gateway's own
    /// HTTP/1.1 loop holds it where it awaits it (boxing copies the whole
    /// future, kilobytes, on every request); hyper's side boxes it.
    pub(crate) async fn serve(&self, request: Request, client: &server::Client) -> Response {
        kit::http::observe(&self.metrics, request, |request| async move {
            let path = request.uri().path();
            if openapi::is_docs_path(path) {
                let name = match path == openapi::DOCUMENT_PATH {
                    true => "openapi",
                    false => "docs",
                };
                kit::http::name_route(RouteName::from(name));
                // Rare, and its future large: boxed where it runs.
                let Ok(response) = Box::pin(self.docs.clone().oneshot(request)).await;
                return response;
            }
            proxy::handle(&self.gateway, client, request).await
        })
        .await
    }
}

/// The merged OpenAPI document and the docs page (Swagger UI).
fn docs_router(gateway: Arc<Gateway>) -> Router {
    let assets = swagger_ui_dist::generate_routes(swagger_ui_dist::ApiDefinition {
        uri_prefix: openapi::DOCS_PATH,
        api_definition: swagger_ui_dist::OpenApiSource::Uri(openapi::DOCUMENT_PATH),
        title: Some("Tessera API"),
    });
    let document = |State(gateway): State<Arc<Gateway>>| async move {
        match gateway.document() {
            Ok(json) => ([(http::header::CONTENT_TYPE, "application/json")], json).into_response(),
            Err(conflict) => Problem::internal(conflict).into_response(),
        }
    };
    let docs = format!("{}/", openapi::DOCS_PATH);
    Router::new()
        .route(openapi::DOCUMENT_PATH, get(document))
        .route(openapi::DOCS_PATH, get(|| async { openapi::docs_page() }))
        .route(
            &format!("{docs}init.js"),
            get(|| async { openapi::docs_init() }),
        )
        .route_service(&format!("{docs}swagger-ui.css"), assets.clone())
        .route_service(&format!("{docs}swagger-ui-bundle.js"), assets)
        .fallback(|| async { Problem::new(Code::NotFound) })
        .method_not_allowed_fallback(|| async { Problem::new(Code::MethodNotAllowed) })
        .with_state(gateway)
}

/// The admin port: `/metrics`, `/healthz`, `/readyz` and the admin API.
pub fn admin_router(gateway: Arc<Gateway>, common: &Common, metrics: Metrics) -> Router {
    admin::router(gateway, common, metrics)
}

/// Runs the gateway until SIGTERM or Ctrl-C: the public port and, beside
/// it, the admin port; both drain in-flight requests on the way out.
/// SIGHUP reloads the configuration. `documents` are the services' OpenAPI
/// documents, merged into the public one.
pub async fn serve(
    config: &Config,
    documents: Vec<serde_json::Value>,
) -> Result<(), GatewayStartError> {
    let common = config.common()?;
    let settings: GatewaySettings = config.section(ROLE)?;
    let metrics = Metrics::new(ROLE);
    let gateway = open(config, kit::clock::system(), &metrics)?;
    gateway
        .publish(documents)
        .map_err(|problem| GatewayStartError::Service {
            service: "openapi".into(),
            problem,
        })?;
    let _background = gateway.start_background();
    // Cached answers that events make stale are purged as the events come,
    // and event streams read them; the bus is followed before the first
    // request is served.
    let follows = gateway.snapshot().table.routes().iter().any(|route| {
        matches!(route.target, routes::Target::Events(_))
            || route
                .cache
                .as_ref()
                .is_some_and(|policy| policy.purge_on.is_some())
    });
    let _purges = if follows {
        let report = bus::broker::DeadLetterReport::default();
        report.register(&metrics);
        let broker = bus::open(
            &common.bus_url,
            &common.data_dir,
            kit::clock::system(),
            report,
        )
        .await
        .map_err(|e| GatewayStartError::Bus(e.to_string()))?;
        let shared = settings.cache.redis_url.is_some();
        let purges = gateway
            .follow_bus(broker, shared)
            .await
            .map_err(|e| GatewayStartError::Bus(e.to_string()))?;
        Some(purges)
    } else {
        None
    };
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let on_hangup = gateway.clone();
    let _reloads = tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            on_hangup.reload_logged("SIGHUP");
        }
    });
    let tls = settings
        .tls
        .as_ref()
        .map(server::tls_acceptor)
        .transpose()
        .map_err(kit::config::ConfigError::Invalid)?;
    let public = kit::listen::inherited_or_bind(settings.listen).await?;
    let admin = kit::listen::admin_inherited_or_bind(settings.admin_listen).await?;
    tracing::info!(
        addr = %public.local_addr()?,
        admin = %admin.local_addr()?,
        tls = settings.tls.is_some(),
        routes = gateway.snapshot().table.routes().len(),
        "gateway listening"
    );
    let grace = std::time::Duration::from_millis(common.http.shutdown_grace_ms);
    let serving = server::Serving {
        tls,
        timeouts: settings.timeouts(),
        grace,
    };
    let public = server::serve(
        public,
        public_service(gateway.clone(), metrics.clone()),
        serving,
        kit::http::shutdown_signal(),
    );
    let admin = kit::http::serve(
        admin,
        admin_router(gateway, &common, metrics),
        kit::http::shutdown_signal(),
        grace,
    );
    let (public, admin) = tokio::join!(public, admin);
    public?;
    admin?;
    Ok(())
}
