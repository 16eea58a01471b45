//! The identity service: accounts, passwords, access and refresh tokens,
//! and the signing keys everyone else verifies tokens with.
//!
//! Read top-down: [`domain`] (what an account is), [`app`] (what you can ask
//! for), [`api`] (how HTTP asks), [`store`] and [`keys`] (where it is kept).

pub mod api;
pub mod app;
pub mod domain;
pub mod events;
mod hashing;
pub mod keys;
pub mod settings;
pub mod store;

use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use bus::broker::DeadLetterReport;
use bus::outbox::Relay;
use bus::{SharedBroker, SubscribeOptions, TypeFilter};
use kit::auth::TokenVerifier;
use kit::clock::SharedClock;
use kit::config::{Common, Config};
use kit::http::Readiness;
use kit::telemetry::Metrics;
use utoipa::OpenApi;

use crate::app::{Identity, NewAccount};
use crate::domain::{Account, DisplayName, Email, Password, Role};
use crate::hashing::PasswordHasher;
use crate::keys::{KEY_RELOAD_INTERVAL, Keyring};
use crate::settings::IdentitySettings;
use crate::store::{AccountStore, MemoryAccountStore, SqlAccountStore};

pub const ROLE: &str = "identity";

#[derive(Debug, thiserror::Error)]
pub enum IdentityStartError {
    #[error(transparent)]
    Config(#[from] kit::config::ConfigError),
    #[error("identity store: {0}")]
    Store(String),
    #[error(transparent)]
    Keys(#[from] keys::KeyError),
    #[error("listener: {0}")]
    Listen(#[from] std::io::Error),
    #[error("{0}")]
    Refused(String),
}

/// The OpenAPI 3.1 document of identity's HTTP API.
pub fn openapi_json() -> String {
    api::ApiDoc::openapi()
        .to_pretty_json()
        .expect("the OpenAPI document serialises")
}

fn data_dir(common: &Common) -> PathBuf {
    common.data_dir.join(ROLE)
}

fn settings(config: &Config) -> Result<(Common, IdentitySettings), IdentityStartError> {
    Ok((config.common()?, config.section(ROLE)?))
}

/// The application with what must run beside it: the outbox relay and the
/// consumer of users' erasures.
pub struct Opened {
    pub identity: Arc<Identity>,
    broker: SharedBroker,
    relay: Option<Relay>,
    max_deliveries: u32,
    metrics: Metrics,
}

impl Opened {
    /// Starts the outbox relay and the account-deleting consumer; they run
    /// until the process exits.
    pub fn start_background(&mut self) {
        if let Some(relay) = self.relay.take() {
            tokio::spawn(relay.run(std::future::pending()));
        }
        let identity = self.identity.clone();
        let options = SubscribeOptions {
            max_deliveries: self.max_deliveries,
            ..SubscribeOptions::new(
                events::ERASURES_GROUP,
                TypeFilter::parse(&[events::USERS_USER_ERASED]).expect("a valid constant"),
            )
        };
        tokio::spawn(bus::consume(self.broker.clone(), options, move |event| {
            let identity = identity.clone();
            async move { identity.on_erased(&event).await }
        }));
    }
}

/// Builds the application on the stores and broker the configuration names.
pub async fn open(config: &Config, clock: SharedClock) -> Result<Opened, IdentityStartError> {
    let (common, settings) = settings(config)?;
    let dir = data_dir(&common);
    std::fs::create_dir_all(&dir)?;
    if settings.database_url == "memory" || settings.kv_url == "memory" {
        tracing::warn!("identity runs on in-memory stores: everything is lost when it stops");
    }
    let store_error = |e: store::StoreError| IdentityStartError::Store(e.to_string());
    let metrics = Metrics::new(ROLE);
    let report = DeadLetterReport::default();
    report.register(&metrics);
    let broker = bus::open(&common.bus_url, &common.data_dir, clock.clone(), report)
        .await
        .map_err(|e| IdentityStartError::Store(e.to_string()))?;
    let (accounts, relay): (Arc<dyn AccountStore>, _) = match settings.database_url.as_str() {
        "memory" => (Arc::new(MemoryAccountStore::new(broker.clone())), None),
        configured => {
            let url = kit::sql::url_or_embedded(configured, &dir.join("identity.db"));
            let store =
                SqlAccountStore::connect(&url, settings.database_connections_max, clock.clone())
                    .await
                    .map_err(store_error)?;
            let relay = store.relay(broker.clone());
            (Arc::new(store), Some(relay))
        }
    };
    let kv = kit::kv::open(&settings.kv_url, &dir.join("kv.db"), ROLE, clock.clone())
        .await
        .map_err(|e| IdentityStartError::Store(e.to_string()))?;
    let keys = Arc::new(Keyring::open(
        &dir.join("keys"),
        clock.clone(),
        settings.access_ttl_s,
    )?);
    let hasher = PasswordHasher::new(
        settings.hash_concurrency(),
        settings.password_hash_queue_max,
    )
    .map_err(|e| IdentityStartError::Store(e.to_string()))?;
    let max_deliveries = settings.consumer_max_deliveries;
    Ok(Opened {
        identity: Arc::new(Identity::new(
            accounts,
            kv,
            keys,
            hasher,
            clock,
            settings,
            common.auth,
        )),
        broker,
        relay,
        max_deliveries,
        metrics,
    })
}

/// The whole HTTP surface: API plus the kit's health, readiness and metrics.
pub fn router(opened: &Opened, common: &Common, clock: SharedClock) -> Router {
    let identity = opened.identity.clone();
    let verifier = Arc::new(TokenVerifier::new(
        identity.keyring().clone(),
        &common.auth,
        clock,
    ));
    let ready = identity.clone();
    let readiness = Readiness::default().check("stores", move || {
        let identity = ready.clone();
        async move { identity.ready().await }
    });
    let api = api::router(api::ApiState { identity, verifier });
    kit::http::service_router(api, &common.http, opened.metrics.clone(), readiness)
}

/// Runs the identity role until SIGTERM or Ctrl-C.
pub async fn serve(config: &Config) -> Result<(), IdentityStartError> {
    let (common, settings) = settings(config)?;
    let clock = kit::clock::system();
    let mut opened = open(config, clock.clone()).await?;
    opened.start_background();
    let keyring = opened.identity.keyring().clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(KEY_RELOAD_INTERVAL);
        loop {
            tick.tick().await;
            keyring.reload();
        }
    });
    let listener = kit::listen::inherited_or_bind(settings.listen).await?;
    tracing::info!(addr = %listener.local_addr()?, "identity listening");
    kit::registry::serve(ROLE, &common, listener, router(&opened, &common, clock)).await?;
    Ok(())
}

/// `tessera admin create-user`: an account with the given roles.
pub async fn create_user(
    config: &Config,
    email: &str,
    password: &str,
    roles: &[String],
) -> Result<Account, IdentityStartError> {
    let refused = |e: domain::Invalid| IdentityStartError::Refused(e.0);
    let new = NewAccount {
        email: Email::parse(email).map_err(refused)?,
        password: Password::new(password).map_err(refused)?,
        display_name: DisplayName::parse(email.split('@').next().unwrap_or(email))
            .map_err(refused)?,
        roles: roles
            .iter()
            .map(|r| Role::parse(r))
            .collect::<Result<_, _>>()
            .map_err(refused)?,
    };
    let opened = open(config, kit::clock::system()).await?;
    opened
        .identity
        .register(new)
        .await
        .map_err(|e| IdentityStartError::Refused(e.to_string()))
}

/// `tessera admin rotate-keys`: a new signing key; the old one stays
/// published until its tokens have expired. Returns the new key id.
pub fn rotate_keys(config: &Config) -> Result<String, IdentityStartError> {
    let (common, settings) = settings(config)?;
    Ok(Keyring::rotate(
        &data_dir(&common).join("keys"),
        &kit::clock::system(),
        settings.access_ttl_s,
    )?)
}
