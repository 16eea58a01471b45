//! The admin port: the kit's `/metrics`, `/healthz` and `/readyz`, and the
//! admin API under `/admin`: what is in force (configuration version,
//! routes, upstreams with each instance's health and its service's
//! breaker), reload, and the registry instances join and leave through.
//! Loopback by default; with `admin_token` set, `/admin/*` needs it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use http::{StatusCode, header};
use kit::config::Common;
use kit::http::{ApiJson, Readiness};
use kit::problem::{Code, Problem};
use kit::telemetry::Metrics;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::discovery::Registration;
use crate::state::Gateway;

/// The time to live of a registration that does not say.
pub const REGISTRATION_TTL_MS_DEFAULT: u64 = 10_000;
/// A gateway that just started is not ready until every service has an
/// instance, or this long has passed: long enough for running instances
/// to renew their registrations (every third of their time to live), so
/// that a restarted gateway does not take traffic it would answer 503.
pub const READY_WAIT_FOR_INSTANCES: Duration = Duration::from_secs(5);

pub fn router(gateway: Arc<Gateway>, common: &Common, metrics: Metrics) -> Router {
    let api = Router::new()
        .route("/admin/config", get(config))
        .route("/admin/reload", post(reload))
        .route("/admin/routes", get(routes))
        .route("/admin/upstreams", get(upstreams))
        .route("/admin/registry", get(registrations))
        .route("/admin/cache", delete(purge))
        .route(
            "/admin/registry/{service}/{instance}",
            put(register).delete(deregister),
        )
        .route_layer(middleware::from_fn_with_state(gateway.clone(), authorize))
        .with_state(gateway.clone());
    let started = Instant::now();
    let readiness = Readiness::default().check("instances", move || {
        let gateway = gateway.clone();
        async move {
            let snapshot = gateway.snapshot();
            let empty: Vec<&str> = snapshot
                .services
                .values()
                .filter(|s| s.members().instances.is_empty())
                .map(|s| s.name.as_str())
                .collect();
            if empty.is_empty() || started.elapsed() >= READY_WAIT_FOR_INSTANCES {
                Ok(())
            } else {
                Err(format!("waiting for instances of {}", empty.join(", ")))
            }
        }
    });
    kit::http::service_router(api, &common.http, metrics, readiness)
}

/// With `admin_token` set, the request must carry it as a bearer token.
async fn authorize(State(gateway): State<Arc<Gateway>>, request: Request, next: Next) -> Response {
    if let Some(expected) = &gateway.snapshot().settings.admin_token {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !same(given.as_bytes(), expected.as_bytes()) {
            return Problem::new(Code::InvalidToken)
                .detail("the admin API needs the admin token")
                .into_response();
        }
    }
    next.run(request).await
}

/// Equal, in a time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn config(State(gateway): State<Arc<Gateway>>) -> Json<Value> {
    let snapshot = gateway.snapshot();
    Json(json!({
        "version": snapshot.version,
        "loaded_at_ms": snapshot.loaded_at_ms,
        "file": gateway.config_file().map(|f| f.display().to_string()),
        "routes": snapshot.table.routes().len(),
        "services": snapshot.services.len(),
    }))
}

async fn reload(State(gateway): State<Arc<Gateway>>) -> Response {
    let outcome = tokio::task::spawn_blocking(move || gateway.reload()).await;
    match outcome {
        Ok(Ok(reloaded)) => Json(reloaded).into_response(),
        Ok(Err(refused)) => Problem::new(Code::ValidationFailed)
            .detail(format!(
                "configuration refused; the one in force stays: {refused}"
            ))
            .into_response(),
        Err(panicked) => Problem::internal(panicked).into_response(),
    }
}

async fn routes(State(gateway): State<Arc<Gateway>>) -> Json<Value> {
    let snapshot = gateway.snapshot();
    let routes: Vec<_> = snapshot.table.routes().iter().map(|r| &r.config).collect();
    Json(json!({ "version": snapshot.version, "routes": routes }))
}

#[derive(Serialize)]
struct InstanceView {
    url: String,
    healthy: bool,
    ejected: bool,
    ejections: u32,
    outstanding: usize,
}

async fn upstreams(State(gateway): State<Arc<Gateway>>) -> Json<Value> {
    let snapshot = gateway.snapshot();
    let now = Instant::now();
    let services: Vec<Value> = snapshot
        .services
        .values()
        .map(|service| {
            let instances: Vec<InstanceView> = service
                .members()
                .instances
                .iter()
                .map(|i| InstanceView {
                    url: i.base.clone(),
                    healthy: i.is_healthy(),
                    ejected: i.is_ejected(now),
                    ejections: i.ejections(),
                    outstanding: i.outstanding(),
                })
                .collect();
            json!({
                "name": service.name,
                "breaker": service.breaker.state(),
                "balance": service.settings.balance,
                "urls": service.settings.urls,
                "dns": service.settings.dns,
                "registered": gateway.registry.urls(&service.name, now),
                "instances": instances,
            })
        })
        .collect();
    Json(json!({ "version": snapshot.version, "services": services }))
}

async fn registrations(State(gateway): State<Arc<Gateway>>) -> Json<Vec<Registration>> {
    Json(gateway.registry.list(Instant::now()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Register {
    /// `http://host:port` where the instance listens.
    url: String,
    ttl_ms: Option<u64>,
}

/// Registers or renews an instance of a declared service.
async fn register(
    State(gateway): State<Arc<Gateway>>,
    Path((service, instance)): Path<(String, String)>,
    ApiJson(body): ApiJson<Register>,
) -> Result<Json<Registration>, Problem> {
    if !gateway.snapshot().services.contains_key(&service) {
        return Err(Problem::new(Code::NotFound).detail(format!(
            "no service named {service:?} is declared in [gateway.services]"
        )));
    }
    let ttl_ms = body.ttl_ms.unwrap_or(REGISTRATION_TTL_MS_DEFAULT);
    gateway
        .registry
        .register(&service, &instance, &body.url, ttl_ms, Instant::now())
        .map(Json)
        .map_err(|e| Problem::new(Code::ValidationFailed).detail(e))
}

async fn deregister(
    State(gateway): State<Arc<Gateway>>,
    Path((service, instance)): Path<(String, String)>,
) -> Result<StatusCode, Problem> {
    if gateway.registry.deregister(&service, &instance) {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(Problem::new(Code::NotFound).detail(format!("{service}/{instance} is not registered")))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PurgeQuery {
    /// Entries whose key (`{route}/{user or -}/{path?query}`) starts with
    /// it go; `prefix=` (empty) purges everything.
    prefix: String,
}

/// Purges cached answers by key prefix: a route's (`users-me/`), one
/// user's on a route (`users-me/{id}/`), everything (``).
async fn purge(
    State(gateway): State<Arc<Gateway>>,
    query: Result<Query<PurgeQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, Problem> {
    let Query(PurgeQuery { prefix }) = query.map_err(|_| {
        Problem::new(Code::ValidationFailed)
            .detail("give the key prefix to purge: ?prefix=ROUTE/ (empty for everything)")
    })?;
    let purged = gateway
        .snapshot()
        .cache
        .purge(&prefix)
        .await
        .map_err(|error| Problem::new(Code::Unavailable).detail(format!("cache store: {error}")))?;
    Ok(Json(json!({ "prefix": prefix, "purged": purged })))
}
