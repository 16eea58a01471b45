//! Registration with the gateway: an instance tells each configured
//! gateway's admin API where it listens
//! (`PUT /admin/registry/{role}/{instance}`), renews the registration well
//! before its time to live runs out, and leaves on the way out. An
//! instance that dies without leaving drops out when its time runs out.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use serde::Deserialize;

use crate::config::Common;

/// One attempt to register, renew or leave waits this long at most.
pub const REGISTRY_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// After a failed attempt the next comes this soon, doubling up to a third
/// of the time to live.
pub const REGISTRY_RETRY_MIN: Duration = Duration::from_millis(250);

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistrySettings {
    /// Admin URLs (`http://host:port`) of the gateways to register with;
    /// none means no registration.
    pub gateways: Vec<String>,
    /// Where clients of this instance reach it; empty means the address
    /// it listens on (which must then not be 0.0.0.0 or [::]).
    pub advertise_url: String,
    /// This instance's name; empty means `{role}-{host}:{port}`.
    pub instance: String,
    /// How long a registration lasts without renewal; 0 means the
    /// gateway's default (10 s). It is renewed every third of it.
    pub ttl_ms: u64,
    /// The gateways' admin token, if they want one.
    pub token: Option<String>,
}

/// The time to live asked when the settings say 0.
pub const REGISTRY_TTL_DEFAULT: Duration = Duration::from_secs(10);

/// Serves `router` on `listener` like [`crate::http::serve`] until SIGTERM,
/// registered with the configured gateways for as long as it serves: the
/// first registration is tried before the first request is taken, and the
/// instance leaves before the listener drains.
pub async fn serve(
    role: &str,
    common: &Common,
    listener: tokio::net::TcpListener,
    router: Router,
) -> std::io::Result<()> {
    let grace = Duration::from_millis(common.http.shutdown_grace_ms);
    let Some(registration) = Registration::new(role, &common.registry, listener.local_addr()?)
        .map_err(std::io::Error::other)?
    else {
        return crate::http::serve(listener, router, crate::http::shutdown_signal(), grace).await;
    };
    let registration = std::sync::Arc::new(registration);
    registration.renew_all().await;
    let renewing = tokio::spawn(registration.clone().keep_renewed());
    let leaving = registration.clone();
    let shutdown = async move {
        crate::http::shutdown_signal().await;
        renewing.abort();
        leaving.leave().await;
    };
    crate::http::serve(listener, router, shutdown, grace).await
}

struct Registration {
    http: reqwest::Client,
    /// `{gateway}/admin/registry/{role}/{instance}` per gateway.
    targets: Vec<String>,
    url: String,
    ttl: Duration,
    token: Option<String>,
}

impl Registration {
    fn new(
        role: &str,
        settings: &RegistrySettings,
        listening: SocketAddr,
    ) -> Result<Option<Self>, String> {
        if settings.gateways.is_empty() {
            return Ok(None);
        }
        let url = if settings.advertise_url.is_empty() {
            if listening.ip().is_unspecified() {
                return Err(format!(
                    "registry: listening on {listening}, set registry.advertise_url to where the gateway reaches this instance"
                ));
            }
            format!("http://{listening}")
        } else {
            settings.advertise_url.trim_end_matches('/').to_owned()
        };
        let host_port = url.trim_start_matches("http://");
        let instance = if settings.instance.is_empty() {
            format!("{role}-{}", host_port.replace(['[', ']'], ""))
        } else {
            settings.instance.clone()
        };
        let ttl = match settings.ttl_ms {
            0 => REGISTRY_TTL_DEFAULT,
            ms => Duration::from_millis(ms),
        };
        let http = reqwest::Client::builder()
            .timeout(REGISTRY_REQUEST_TIMEOUT)
            .build()
            .map_err(|e| e.to_string())?;
        let targets = settings
            .gateways
            .iter()
            .map(|g| {
                format!(
                    "{}/admin/registry/{role}/{instance}",
                    g.trim_end_matches('/')
                )
            })
            .collect();
        Ok(Some(Self {
            http,
            targets,
            url,
            ttl,
            token: settings.token.clone(),
        }))
    }

    fn authorized(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Registers with (or renews at) every gateway; true if all took it.
    async fn renew_all(&self) -> bool {
        let body = serde_json::json!({"url": self.url, "ttl_ms": self.ttl.as_millis() as u64});
        let mut all = true;
        for target in &self.targets {
            let sent = self
                .authorized(self.http.put(target))
                .json(&body)
                .send()
                .await;
            let failure = match sent {
                Ok(answer) if answer.status().is_success() => continue,
                Ok(answer) => format!("answered {}", answer.status()),
                Err(error) => error.to_string(),
            };
            tracing::warn!(%target, %failure, "registration with the gateway failed");
            all = false;
        }
        all
    }

    /// Renews every third of the time to live; sooner after a failure.
    async fn keep_renewed(self: std::sync::Arc<Self>) {
        let period = self.ttl / 3;
        let mut wait = period;
        loop {
            tokio::time::sleep(wait).await;
            wait = if self.renew_all().await {
                period
            } else if wait >= period {
                REGISTRY_RETRY_MIN
            } else {
                (wait * 2).min(period)
            };
        }
    }

    async fn leave(&self) {
        for target in &self.targets {
            if let Err(error) = self.authorized(self.http.delete(target)).send().await {
                tracing::warn!(%target, %error, "leaving the gateway failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(advertise: &str) -> RegistrySettings {
        RegistrySettings {
            gateways: vec!["http://127.0.0.1:9080/".into()],
            advertise_url: advertise.into(),
            ..RegistrySettings::default()
        }
    }

    #[test]
    fn the_instance_is_named_after_its_role_and_address() {
        let here: SocketAddr = "127.0.0.1:8082".parse().unwrap();
        let registration = Registration::new("users", &settings(""), here)
            .unwrap()
            .unwrap();
        assert_eq!(registration.url, "http://127.0.0.1:8082");
        assert_eq!(
            registration.targets,
            ["http://127.0.0.1:9080/admin/registry/users/users-127.0.0.1:8082"]
        );
        assert_eq!(registration.ttl, REGISTRY_TTL_DEFAULT);
        let any: SocketAddr = "0.0.0.0:8082".parse().unwrap();
        let error = Registration::new("users", &settings(""), any)
            .err()
            .unwrap();
        assert!(error.contains("advertise_url"), "{error}");
        let told = Registration::new("users", &settings("http://10.0.0.7:80/"), any)
            .unwrap()
            .unwrap();
        assert_eq!(told.url, "http://10.0.0.7:80");
        let none = RegistrySettings::default();
        assert!(Registration::new("users", &none, here).unwrap().is_none());
    }
}
