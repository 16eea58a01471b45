//! The kit's token extractor, through HTTP, against every way a token can
//! be wrong (RFC 8725).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::extract::FromRef;
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ed25519_dalek::{SigningKey, VerifyingKey};
use hmac::{Hmac, Mac};
use kit::auth::{AccessClaims, Authenticated, Jwk, JwkSet, JwksClient, KeySource, TokenVerifier};
use kit::clock::{ManualClock, SharedClock};
use kit::config::{AuthSettings, HttpSettings};
use kit::http::Readiness;
use kit::telemetry::Metrics;
use kit::testing::TestServer;
use serde_json::json;

const NOW_S: u64 = 1_800_000_000;

struct StaticKeys(HashMap<String, VerifyingKey>);

#[async_trait]
impl KeySource for StaticKeys {
    async fn key(&self, kid: &str) -> Option<VerifyingKey> {
        self.0.get(kid).copied()
    }
}

#[derive(Clone)]
struct AppState(Arc<TokenVerifier>);

impl FromRef<AppState> for Arc<TokenVerifier> {
    fn from_ref(state: &AppState) -> Self {
        state.0.clone()
    }
}

struct Fixture {
    server: TestServer,
    key: SigningKey,
    clock: Arc<ManualClock>,
    http: reqwest::Client,
}

fn settings() -> AuthSettings {
    AuthSettings {
        leeway_s: 30,
        ..AuthSettings::default()
    }
}

fn claims() -> AccessClaims {
    AccessClaims {
        iss: settings().issuer,
        aud: settings().audience,
        sub: "0190aaaa-0000-7000-8000-000000000001".into(),
        roles: vec!["user".into()],
        exp: NOW_S + 900,
        iat: NOW_S,
        nbf: NOW_S,
        jti: "j1".into(),
        sid: "s1".into(),
    }
}

async fn serve_with(keys: Arc<dyn KeySource>, clock: SharedClock) -> TestServer {
    let verifier = Arc::new(TokenVerifier::new(keys, &settings(), clock));
    let api = Router::new()
        .route(
            "/whoami",
            get(|Authenticated(p): Authenticated| async move {
                Json(json!({"sub": p.subject, "roles": p.roles}))
            }),
        )
        .with_state(AppState(verifier));
    let router = kit::http::service_router(
        api,
        &HttpSettings::default(),
        Metrics::new("test"),
        Readiness::default(),
    );
    TestServer::start(router).await
}

async fn fixture() -> Fixture {
    let key = SigningKey::from_bytes(&[7u8; 32]);
    let clock = ManualClock::starting_at_ms(NOW_S * 1000);
    let keys = StaticKeys(HashMap::from([("k1".to_owned(), key.verifying_key())]));
    let server = serve_with(Arc::new(keys), clock.clone()).await;
    Fixture {
        server,
        key,
        clock,
        http: reqwest::Client::new(),
    }
}

impl Fixture {
    async fn status_with(&self, token: &str) -> u16 {
        let response = self
            .http
            .get(self.server.url("/whoami"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        if status == 401 {
            assert_eq!(
                response.headers()["content-type"],
                "application/problem+json"
            );
            assert!(response.headers().contains_key("www-authenticate"));
            let body: serde_json::Value = response.json().await.unwrap();
            assert_eq!(body["code"], "invalid_token");
        }
        status
    }

    fn sign(&self, claims: &AccessClaims) -> String {
        kit::auth::sign(&self.key, "k1", claims)
    }
}

/// A token with a hand-made header, signed with the real key.
fn forge(key: &SigningKey, header: serde_json::Value, claims: &AccessClaims) -> String {
    use ed25519_dalek::Signer;
    let input = format!(
        "{}.{}",
        B64.encode(header.to_string()),
        B64.encode(serde_json::to_vec(claims).unwrap())
    );
    let sig = key.sign(input.as_bytes());
    format!("{input}.{}", B64.encode(sig.to_bytes()))
}

#[tokio::test]
async fn a_valid_token_is_accepted() {
    let f = fixture().await;
    let response = f
        .http
        .get(f.server.url("/whoami"))
        .bearer_auth(f.sign(&claims()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["roles"], json!(["user"]));
}

#[tokio::test]
async fn missing_token_is_401() {
    let f = fixture().await;
    let response = f.http.get(f.server.url("/whoami")).send().await.unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
}

#[tokio::test]
async fn expired_token_is_refused_after_the_leeway() {
    let f = fixture().await;
    let token = f.sign(&claims());
    f.clock.advance(Duration::from_secs(900 + 29));
    assert_eq!(f.status_with(&token).await, 200, "within leeway");
    f.clock.advance(Duration::from_secs(1));
    assert_eq!(f.status_with(&token).await, 401);
}

#[tokio::test]
async fn not_yet_valid_token_is_refused() {
    let f = fixture().await;
    let mut c = claims();
    c.nbf = NOW_S + 31;
    assert_eq!(f.status_with(&f.sign(&c)).await, 401);
    c.nbf = NOW_S + 30;
    assert_eq!(f.status_with(&f.sign(&c)).await, 200, "within leeway");
}

#[tokio::test]
async fn wrong_audience_or_issuer_is_refused() {
    let f = fixture().await;
    let mut c = claims();
    c.aud = "someone-else".into();
    assert_eq!(f.status_with(&f.sign(&c)).await, 401);
    let mut c = claims();
    c.iss = "urn:evil".into();
    assert_eq!(f.status_with(&f.sign(&c)).await, 401);
}

#[tokio::test]
async fn wrong_typ_is_refused() {
    let f = fixture().await;
    for typ in [json!("JWT"), json!(null)] {
        let token = forge(
            &f.key,
            json!({"alg": "EdDSA", "typ": typ, "kid": "k1"}),
            &claims(),
        );
        assert_eq!(f.status_with(&token).await, 401, "typ {typ}");
    }
    let token = forge(
        &f.key,
        json!({"alg": "EdDSA", "typ": "at+jwt", "kid": "k1"}),
        &claims(),
    );
    assert_eq!(
        f.status_with(&token).await,
        200,
        "the forge itself is sound"
    );
}

#[tokio::test]
async fn alg_none_is_refused() {
    let f = fixture().await;
    let input = format!(
        "{}.{}",
        B64.encode(json!({"alg": "none", "typ": "at+jwt", "kid": "k1"}).to_string()),
        B64.encode(serde_json::to_vec(&claims()).unwrap())
    );
    assert_eq!(f.status_with(&format!("{input}.")).await, 401);
}

#[tokio::test]
async fn hs256_signed_with_the_public_key_is_refused() {
    let f = fixture().await;
    let input = format!(
        "{}.{}",
        B64.encode(json!({"alg": "HS256", "typ": "at+jwt", "kid": "k1"}).to_string()),
        B64.encode(serde_json::to_vec(&claims()).unwrap())
    );
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(f.key.verifying_key().as_bytes()).unwrap();
    mac.update(input.as_bytes());
    let sig = B64.encode(mac.finalize().into_bytes());
    assert_eq!(f.status_with(&format!("{input}.{sig}")).await, 401);
}

#[tokio::test]
async fn unknown_kid_is_refused() {
    let f = fixture().await;
    let token = kit::auth::sign(&f.key, "k-unknown", &claims());
    assert_eq!(f.status_with(&token).await, 401);
}

#[tokio::test]
async fn tampered_signature_or_claims_are_refused() {
    let f = fixture().await;
    let token = f.sign(&claims());
    let (input, sig) = token.rsplit_once('.').unwrap();
    let mut sig = B64.decode(sig).unwrap();
    sig[0] ^= 1;
    assert_eq!(
        f.status_with(&format!("{input}.{}", B64.encode(&sig)))
            .await,
        401
    );

    let (header, rest) = token.split_once('.').unwrap();
    let (_, sig) = rest.split_once('.').unwrap();
    let mut c = claims();
    c.roles = vec!["admin".into()];
    let forged = format!(
        "{header}.{}.{sig}",
        B64.encode(serde_json::to_vec(&c).unwrap())
    );
    assert_eq!(f.status_with(&forged).await, 401);
}

#[tokio::test]
async fn an_opaque_refresh_token_is_not_an_access_token() {
    let f = fixture().await;
    let refresh_like = B64.encode([9u8; 32]);
    assert_eq!(f.status_with(&refresh_like).await, 401);
    assert_eq!(f.status_with("a.b.c").await, 401);
}

#[tokio::test]
async fn jwks_client_fetches_and_refetches_on_a_new_kid() {
    let first = SigningKey::from_bytes(&[1u8; 32]);
    let second = SigningKey::from_bytes(&[2u8; 32]);
    let published = Arc::new(std::sync::Mutex::new(vec![Jwk::ed25519(
        "a",
        &first.verifying_key(),
    )]));
    let shown = published.clone();
    let jwks_server = TestServer::start(Router::new().route(
        "/jwks",
        get(move || {
            let keys = shown.lock().unwrap().clone();
            async move { Json(JwkSet { keys }) }
        }),
    ))
    .await;
    let client = JwksClient::new(&AuthSettings {
        jwks_url: jwks_server.url("/jwks"),
        jwks_refetch_interval_ms: 0,
        ..settings()
    });
    assert!(client.key("a").await.is_some());
    assert!(client.key("b").await.is_none());
    published
        .lock()
        .unwrap()
        .push(Jwk::ed25519("b", &second.verifying_key()));
    assert_eq!(
        client.key("b").await,
        Some(second.verifying_key()),
        "rotated key found"
    );
}
