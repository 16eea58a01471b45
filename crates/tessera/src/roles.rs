//! Every role the binary can play. Adding a service = one entry here, one
//! checked-in OpenAPI document, one crate, its routes in the gateway's
//! `routes.toml`.

use std::pin::Pin;

use kit::config::Config;

type Serving = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

pub struct Role {
    pub name: &'static str,
    /// Runs the role in this process until SIGTERM.
    pub serve: fn(Config) -> Serving,
    /// Its OpenAPI 3.1 document; the gateway serves the others' APIs.
    pub openapi: Option<fn() -> String>,
    /// The front door: listens on `up --port` itself, one replica, with an
    /// admin port of its own; the services listen on the ports after it.
    pub front_door: bool,
}

pub const ROLES: &[Role] = &[
    Role {
        name: gateway::ROLE,
        serve: |config| {
            Box::pin(async move {
                gateway::serve(&config, public_documents())
                    .await
                    .map_err(|e| e.to_string())
            })
        },
        openapi: None,
        front_door: true,
    },
    Role {
        name: identity::ROLE,
        serve: |config| {
            Box::pin(async move { identity::serve(&config).await.map_err(|e| e.to_string()) })
        },
        openapi: Some(identity::openapi_json),
        front_door: false,
    },
    Role {
        name: users::ROLE,
        serve: |config| {
            Box::pin(async move { users::serve(&config).await.map_err(|e| e.to_string()) })
        },
        openapi: Some(users::openapi_json),
        front_door: false,
    },
];

/// The services' OpenAPI documents, for the gateway to merge.
pub fn public_documents() -> Vec<serde_json::Value> {
    ROLES
        .iter()
        .filter_map(|role| role.openapi)
        .map(|document| {
            serde_json::from_str(&document()).expect("a role's OpenAPI document is JSON")
        })
        .collect()
}

pub fn find(name: &str) -> Result<&'static Role, String> {
    ROLES.iter().find(|r| r.name == name).ok_or_else(|| {
        let known: Vec<_> = ROLES.iter().map(|r| r.name).collect();
        format!("unknown role {name:?}; roles are: {}", known.join(", "))
    })
}
