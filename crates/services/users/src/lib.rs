//! The users service: profiles (display name, addresses, preferences),
//! created from identity's `identity.user.registered.v1`, changed with
//! optimistic concurrency (ETag / If-Match), erased on request.
//!
//! Read top-down: [`domain`], [`app`], [`api`], [`store`], [`events`].

pub mod api;
pub mod app;
pub mod domain;
pub mod events;
pub mod settings;
pub mod store;

use std::sync::Arc;

use axum::Router;
use bus::broker::DeadLetterReport;
use bus::outbox::Relay;
use bus::{SharedBroker, SubscribeOptions, TypeFilter};
use kit::auth::{JwksClient, TokenVerifier};
use kit::clock::SharedClock;
use kit::config::{Common, Config};
use kit::http::Readiness;
use kit::telemetry::Metrics;
use utoipa::OpenApi;

use crate::app::Users;
use crate::settings::UsersSettings;
use crate::store::{MemoryProfileStore, ProfileStore, SqlProfileStore};

pub const ROLE: &str = "users";

#[derive(Debug, thiserror::Error)]
pub enum UsersStartError {
    #[error(transparent)]
    Config(#[from] kit::config::ConfigError),
    #[error("users store: {0}")]
    Store(String),
    #[error("listener: {0}")]
    Listen(#[from] std::io::Error),
}

pub fn openapi_json() -> String {
    api::ApiDoc::openapi()
        .to_pretty_json()
        .expect("the OpenAPI document serialises")
}

/// The application with what must run beside it: the outbox relay and the
/// consumer of identity's events.
pub struct Opened {
    pub users: Arc<Users>,
    broker: SharedBroker,
    relay: Option<Relay>,
    max_deliveries: u32,
    metrics: Metrics,
}

impl Opened {
    /// Starts the outbox relay and the profile-creating consumer; they run
    /// until the process exits.
    pub fn start_background(&mut self) {
        if let Some(relay) = self.relay.take() {
            tokio::spawn(relay.run(std::future::pending()));
        }
        let users = self.users.clone();
        let options = SubscribeOptions {
            max_deliveries: self.max_deliveries,
            ..SubscribeOptions::new(
                events::PROFILES_GROUP,
                TypeFilter::parse(&[events::IDENTITY_USER_REGISTERED]).expect("a valid constant"),
            )
        };
        tokio::spawn(bus::consume(self.broker.clone(), options, move |event| {
            let users = users.clone();
            async move { users.on_registered(&event).await }
        }));
    }

    pub fn metrics(&self) -> Metrics {
        self.metrics.clone()
    }
}

pub async fn open(config: &Config, clock: SharedClock) -> Result<Opened, UsersStartError> {
    let common = config.common()?;
    let settings: UsersSettings = config.section(ROLE)?;
    let dir = common.data_dir.join(ROLE);
    std::fs::create_dir_all(&dir)?;
    let metrics = Metrics::new(ROLE);
    let report = DeadLetterReport::default();
    report.register(&metrics);
    let broker = bus::open(&common.bus_url, &common.data_dir, clock.clone(), report)
        .await
        .map_err(|e| UsersStartError::Store(e.to_string()))?;
    let (store, relay): (Arc<dyn ProfileStore>, _) = match settings.database_url.as_str() {
        "memory" => {
            tracing::warn!("users runs on an in-memory store: everything is lost when it stops");
            (Arc::new(MemoryProfileStore::new(broker.clone())), None)
        }
        configured => {
            let url = kit::sql::url_or_embedded(configured, &dir.join("users.db"));
            let store =
                SqlProfileStore::connect(&url, settings.database_connections_max, clock.clone())
                    .await
                    .map_err(|e| UsersStartError::Store(e.to_string()))?;
            let relay = store.relay(broker.clone());
            (Arc::new(store), Some(relay))
        }
    };
    Ok(Opened {
        users: Arc::new(Users::new(store, clock)),
        broker,
        relay,
        max_deliveries: settings.consumer_max_deliveries,
        metrics,
    })
}

/// The HTTP surface; tokens are verified against identity's JWKS.
pub fn router(opened: &Opened, common: &Common, clock: SharedClock) -> Router {
    let verifier = Arc::new(TokenVerifier::new(
        Arc::new(JwksClient::new(&common.auth)),
        &common.auth,
        clock,
    ));
    let ready = opened.users.clone();
    let readiness = Readiness::default().check("store", move || {
        let users = ready.clone();
        async move { users.ready().await }
    });
    let api = api::router(api::ApiState {
        users: opened.users.clone(),
        verifier,
    });
    kit::http::service_router(api, &common.http, opened.metrics(), readiness)
}

/// Runs the users role until SIGTERM or Ctrl-C.
pub async fn serve(config: &Config) -> Result<(), UsersStartError> {
    let common = config.common()?;
    let settings: UsersSettings = config.section(ROLE)?;
    let clock = kit::clock::system();
    let mut opened = open(config, clock.clone()).await?;
    opened.start_background();
    let listener = kit::listen::inherited_or_bind(settings.listen).await?;
    tracing::info!(addr = %listener.local_addr()?, "users listening");
    kit::registry::serve(ROLE, &common, listener, router(&opened, &common, clock)).await?;
    Ok(())
}
