//! Every role the binary can play. Adding a service = one entry here, one
//! checked-in OpenAPI document, one crate.

use std::pin::Pin;

use kit::config::Config;

type Serving = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

pub struct Role {
    pub name: &'static str,
    /// Runs the role in this process until SIGTERM.
    pub serve: fn(Config) -> Serving,
    /// Its OpenAPI 3.1 document.
    pub openapi: fn() -> String,
}

pub const ROLES: &[Role] = &[
    Role {
        name: identity::ROLE,
        serve: |config| {
            Box::pin(async move { identity::serve(&config).await.map_err(|e| e.to_string()) })
        },
        openapi: identity::openapi_json,
    },
    Role {
        name: users::ROLE,
        serve: |config| {
            Box::pin(async move { users::serve(&config).await.map_err(|e| e.to_string()) })
        },
        openapi: users::openapi_json,
    },
];

pub fn find(name: &str) -> Result<&'static Role, String> {
    ROLES.iter().find(|r| r.name == name).ok_or_else(|| {
        let known: Vec<_> = ROLES.iter().map(|r| r.name).collect();
        format!("unknown role {name:?}; roles are: {}", known.join(", "))
    })
}
