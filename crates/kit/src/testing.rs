//! Test helpers: services on port 0, fresh stores, real backends by URL.

use std::net::SocketAddr;

use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// A service serving on an ephemeral loopback port until dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
}

impl TestServer {
    pub async fn start(router: Router) -> Self {
        Self::start_with(|listener, stop| {
            crate::http::serve(listener, router, stop, std::time::Duration::from_secs(1))
        })
        .await
    }

    /// A server `serve` runs on an ephemeral port until the future it is
    /// given resolves, which it does when the `TestServer` is dropped.
    pub async fn start_with<F, S>(serve: S) -> Self
    where
        S: FnOnce(TcpListener, std::pin::Pin<Box<dyn Future<Output = ()> + Send>>) -> F,
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind an ephemeral port");
        let addr = listener.local_addr().expect("local address");
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(serve(
            listener,
            Box::pin(async {
                let _ = stopped.await;
            }),
        ));
        Self {
            addr,
            stop: Some(stop),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// True when running in CI, where a missing backend is a failure.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// A loopback port nothing listens on now (a moment later, someone may).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

/// The URL of a real backend named by the environment variable `var`.
/// Outside CI a missing variable skips the test with a message; in CI it
/// fails, so that a suite never skips silently there.
pub fn backend_url(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) if !url.is_empty() => Some(url),
        _ if in_ci() => panic!("{var} is not set: CI must run this suite against the real server"),
        _ => {
            eprintln!("skipping: set {var} to run this suite against a real server");
            None
        }
    }
}

/// Creates an empty PostgreSQL database next to `admin_url`'s and returns
/// its URL, so that each test owns its data.
pub async fn fresh_postgres_database(admin_url: &str) -> String {
    use sqlx::Connection;
    let name = format!("tessera_test_{}", uuid::Uuid::new_v4().simple());
    let mut admin = sqlx::PgConnection::connect(admin_url)
        .await
        .expect("connect to PostgreSQL");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .expect("create a test database");
    let _ = admin.close().await;
    match admin_url.rsplit_once('/') {
        Some((base, _)) if base.contains("//") && !base.ends_with('/') => format!("{base}/{name}"),
        _ => format!("{}/{name}", admin_url.trim_end_matches('/')),
    }
}

/// Asserts a problem+json answer with `status` and `code`; returns the body.
pub async fn assert_problem(
    response: reqwest::Response,
    status: u16,
    code: &str,
) -> serde_json::Value {
    assert_eq!(response.status().as_u16(), status);
    assert_eq!(
        response.headers()["content-type"],
        crate::problem::CONTENT_TYPE
    );
    let body: serde_json::Value = response.json().await.expect("a JSON problem body");
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["status"], status);
    assert!(body["type"].as_str().is_some_and(|t| t.ends_with(code)));
    body
}

/// Where identity publishes its verification keys.
pub const JWKS_PATH: &str = "/.well-known/jwks.json";

/// Serves, at [`JWKS_PATH`], the public half of `key` under `kid`, as
/// identity does: a stand-in for identity, alone or merged into a test
/// upstream.
pub fn jwks_router(key: &ed25519_dalek::SigningKey, kid: &str) -> Router {
    let keys = crate::auth::JwkSet {
        keys: vec![crate::auth::Jwk::ed25519(kid, &key.verifying_key())],
    };
    Router::new().route(
        JWKS_PATH,
        axum::routing::get(move || async move { axum::Json(keys.clone()) }),
    )
}

/// An access token for `subject` with `roles`, signed with `key` under
/// `kid` as identity signs them, valid for five minutes.
pub fn access_token(
    key: &ed25519_dalek::SigningKey,
    kid: &str,
    subject: &str,
    roles: &[&str],
) -> String {
    let now = crate::clock::system().now_s();
    let settings = crate::config::AuthSettings::default();
    crate::auth::sign(
        key,
        kid,
        &crate::auth::AccessClaims {
            iss: settings.issuer,
            aud: settings.audience,
            sub: subject.into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            exp: now + 300,
            iat: now,
            nbf: now,
            jti: "t1".into(),
            sid: "s1".into(),
        },
    )
}
