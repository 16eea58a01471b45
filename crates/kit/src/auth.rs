//! Access tokens: EdDSA (Ed25519) JWTs with `typ: at+jwt`, checked by the
//! rules of RFC 8725.
//!
//! The verifier decides the algorithm, never the token: anything but
//! `EdDSA` is refused before a key is looked up, so `alg: none` and
//! HMAC-with-the-public-key confusion cannot happen. `iss`, `aud`, `typ`,
//! `exp` and `nbf` are always checked, with at most
//! [`crate::config::AUTH_LEEWAY_S_MAX`] seconds of leeway.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderValue, header};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use tokio::sync::RwLock;
use utoipa::ToSchema;

use crate::clock::SharedClock;
use crate::config::{AUTH_LEEWAY_S_MAX, AuthSettings};
use crate::problem::{Code, Problem};

pub const ALG: &str = "EdDSA";
pub const TYP: &str = "at+jwt";
/// Tokens longer than this are refused unread.
pub const TOKEN_LEN_MAX: usize = 8 * 1024;
/// A JWKS response larger than this is refused.
pub const JWKS_BODY_MAX: usize = 64 * 1024;
pub const JWKS_FETCH_TIMEOUT: Duration = Duration::from_secs(3);

/// The claims of an access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    pub iss: String,
    pub aud: String,
    /// The account id.
    pub sub: String,
    pub roles: Vec<String>,
    pub exp: u64,
    pub iat: u64,
    pub nbf: u64,
    pub jti: String,
    /// The refresh-token family (login session) this token was issued in.
    pub sid: String,
}

#[derive(Serialize, Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    typ: Option<String>,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    crit: Option<serde_json::Value>,
}

/// Signs `claims` with `key`, naming it `kid`.
pub fn sign(key: &SigningKey, kid: &str, claims: &AccessClaims) -> String {
    let header = Header {
        alg: ALG.into(),
        typ: Some(TYP.into()),
        kid: Some(kid.into()),
        crit: None,
    };
    let signing_input = format!(
        "{}.{}",
        B64.encode(serde_json::to_vec(&header).unwrap_or_default()),
        B64.encode(serde_json::to_vec(claims).unwrap_or_default())
    );
    let signature = key.sign(signing_input.as_bytes());
    format!("{signing_input}.{}", B64.encode(signature.to_bytes()))
}

/// One public key in a JSON Web Key Set (RFC 8037 OKP form).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Jwk {
    pub kty: String,
    pub crv: String,
    /// The 32-byte public key, base64url without padding.
    pub x: String,
    pub kid: String,
    pub alg: String,
    #[serde(rename = "use")]
    pub use_: String,
}

impl Jwk {
    pub fn ed25519(kid: &str, key: &VerifyingKey) -> Self {
        Self {
            kty: "OKP".into(),
            crv: "Ed25519".into(),
            x: B64.encode(key.to_bytes()),
            kid: kid.into(),
            alg: ALG.into(),
            use_: "sig".into(),
        }
    }

    /// The key, if this is a well-formed Ed25519 signing key.
    pub fn verifying_key(&self) -> Option<VerifyingKey> {
        if self.kty != "OKP" || self.crv != "Ed25519" || self.alg != ALG {
            return None;
        }
        let bytes: [u8; 32] = B64.decode(&self.x).ok()?.try_into().ok()?;
        VerifyingKey::from_bytes(&bytes).ok()
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct JwkSet {
    pub keys: Vec<Jwk>,
}

/// Where a verifier finds public keys by `kid`.
#[async_trait]
pub trait KeySource: Send + Sync + 'static {
    async fn key(&self, kid: &str) -> Option<VerifyingKey>;
}

/// Why a token was refused. Logged, never shown to the client beyond
/// "invalid token": an attacker learns nothing from the answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("no bearer token")]
    Missing,
    #[error("malformed token")]
    Malformed,
    #[error("algorithm {0:?} is not EdDSA")]
    Algorithm(String),
    #[error("typ is not at+jwt")]
    Type,
    #[error("unknown key id")]
    UnknownKey,
    #[error("bad signature")]
    Signature,
    #[error("wrong issuer")]
    Issuer,
    #[error("wrong audience")]
    Audience,
    #[error("expired")]
    Expired,
    #[error("not yet valid")]
    NotYetValid,
}

/// Who is calling, as proven by a verified access token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub subject: String,
    pub roles: Vec<String>,
    pub session_id: String,
    pub token_id: String,
    pub expires_at_s: u64,
}

impl Principal {
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
}

#[derive(Deserialize)]
struct RawClaims {
    iss: Option<String>,
    aud: Option<serde_json::Value>,
    sub: Option<String>,
    #[serde(default)]
    roles: Vec<String>,
    exp: Option<u64>,
    nbf: Option<u64>,
    #[serde(default)]
    jti: String,
    #[serde(default)]
    sid: String,
}

pub struct TokenVerifier {
    keys: Arc<dyn KeySource>,
    issuer: String,
    audience: String,
    leeway_s: u64,
    clock: SharedClock,
}

impl TokenVerifier {
    pub fn new(keys: Arc<dyn KeySource>, settings: &AuthSettings, clock: SharedClock) -> Self {
        Self {
            keys,
            issuer: settings.issuer.clone(),
            audience: settings.audience.clone(),
            leeway_s: settings.leeway_s.min(AUTH_LEEWAY_S_MAX),
            clock,
        }
    }

    pub async fn verify(&self, token: &str) -> Result<Principal, TokenError> {
        if token.len() > TOKEN_LEN_MAX {
            return Err(TokenError::Malformed);
        }
        let mut parts = token.split('.');
        let (Some(header_b64), Some(claims_b64), Some(signature_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let header: Header = decode_json(header_b64)?;
        if header.alg != ALG {
            return Err(TokenError::Algorithm(header.alg));
        }
        if header.crit.is_some() {
            // No extension is understood, so none may be critical.
            return Err(TokenError::Malformed);
        }
        let typ_ok = header.typ.as_deref().is_some_and(|t| {
            t.eq_ignore_ascii_case(TYP) || t.eq_ignore_ascii_case("application/at+jwt")
        });
        if !typ_ok {
            return Err(TokenError::Type);
        }
        let kid = header.kid.ok_or(TokenError::UnknownKey)?;
        let key = self.keys.key(&kid).await.ok_or(TokenError::UnknownKey)?;
        let signature: [u8; 64] = B64
            .decode(signature_b64)
            .ok()
            .and_then(|s| s.try_into().ok())
            .ok_or(TokenError::Malformed)?;
        let signing_input = &token[..header_b64.len() + 1 + claims_b64.len()];
        key.verify_strict(signing_input.as_bytes(), &Signature::from_bytes(&signature))
            .map_err(|_| TokenError::Signature)?;

        let claims: RawClaims = decode_json(claims_b64)?;
        if claims.iss.as_deref() != Some(self.issuer.as_str()) {
            return Err(TokenError::Issuer);
        }
        let audience_ok = match &claims.aud {
            Some(serde_json::Value::String(aud)) => *aud == self.audience,
            Some(serde_json::Value::Array(auds)) => auds.iter().any(|a| *a == *self.audience),
            _ => false,
        };
        if !audience_ok {
            return Err(TokenError::Audience);
        }
        let now = self.clock.now_s();
        let exp = claims.exp.ok_or(TokenError::Malformed)?;
        if now >= exp.saturating_add(self.leeway_s) {
            return Err(TokenError::Expired);
        }
        if claims
            .nbf
            .is_some_and(|nbf| nbf > now.saturating_add(self.leeway_s))
        {
            return Err(TokenError::NotYetValid);
        }
        let subject = claims
            .sub
            .filter(|s| !s.is_empty())
            .ok_or(TokenError::Malformed)?;
        Ok(Principal {
            subject,
            roles: claims.roles,
            session_id: claims.sid,
            token_id: claims.jti,
            expires_at_s: exp,
        })
    }
}

fn decode_json<T: serde::de::DeserializeOwned>(segment: &str) -> Result<T, TokenError> {
    let bytes = B64.decode(segment).map_err(|_| TokenError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed)
}

/// Fetches identity's JWKS over HTTP, caches it, and refetches when a token
/// names a `kid` it has not seen (a rotated key) at most once per interval,
/// so a flood of made-up `kid`s cannot turn into a flood of fetches.
pub struct JwksClient {
    url: String,
    http: reqwest::Client,
    refetch_interval: Duration,
    cache: RwLock<JwksCache>,
}

struct JwksCache {
    keys: HashMap<String, VerifyingKey>,
    fetched_at: Option<Instant>,
}

impl JwksClient {
    pub fn new(settings: &AuthSettings) -> Self {
        Self {
            url: settings.jwks_url.clone(),
            http: reqwest::Client::builder()
                .timeout(JWKS_FETCH_TIMEOUT)
                .build()
                .unwrap_or_default(),
            refetch_interval: Duration::from_millis(settings.jwks_refetch_interval_ms),
            cache: RwLock::new(JwksCache {
                keys: HashMap::new(),
                fetched_at: None,
            }),
        }
    }

    async fn fetch(&self) -> Result<HashMap<String, VerifyingKey>, String> {
        let mut request = self.http.get(&self.url);
        if let Some(trace) = crate::telemetry::current_trace() {
            request = request.header("traceparent", trace.traceparent());
        }
        let mut response = request.send().await.map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("JWKS answered {}", response.status()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
            if body.len() + chunk.len() > JWKS_BODY_MAX {
                return Err(format!("JWKS larger than {JWKS_BODY_MAX} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        let set: JwkSet = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        Ok(set
            .keys
            .iter()
            .filter_map(|jwk| Some((jwk.kid.clone(), jwk.verifying_key()?)))
            .collect())
    }
}

#[async_trait]
impl KeySource for JwksClient {
    async fn key(&self, kid: &str) -> Option<VerifyingKey> {
        {
            let cache = self.cache.read().await;
            if let Some(key) = cache.keys.get(kid) {
                return Some(*key);
            }
            if cache
                .fetched_at
                .is_some_and(|at| at.elapsed() < self.refetch_interval)
            {
                return None;
            }
        }
        let mut cache = self.cache.write().await;
        // Another task may have refetched while this one waited.
        if let Some(key) = cache.keys.get(kid) {
            return Some(*key);
        }
        if cache
            .fetched_at
            .is_some_and(|at| at.elapsed() < self.refetch_interval)
        {
            return None;
        }
        cache.fetched_at = Some(Instant::now());
        match self.fetch().await {
            Ok(keys) => cache.keys = keys,
            Err(error) => tracing::warn!(url = %self.url, %error, "JWKS fetch failed"),
        }
        cache.keys.get(kid).copied()
    }
}

/// Extracts the verified caller from `Authorization: Bearer ...`; refuses
/// the request with 401 problem+json otherwise.
#[derive(Debug, Clone)]
pub struct Authenticated(pub Principal);

impl Authenticated {
    /// 403 unless the caller has `role`.
    pub fn require_role(&self, role: &str) -> Result<(), Problem> {
        if self.0.has_role(role) {
            Ok(())
        } else {
            Err(Problem::new(Code::Forbidden).detail(format!("requires role {role}")))
        }
    }
}

pub fn bearer_token(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

impl<S> FromRequestParts<S> for Authenticated
where
    Arc<TokenVerifier>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let verifier = Arc::<TokenVerifier>::from_ref(state);
        let outcome = match bearer_token(parts) {
            Some(token) => verifier.verify(token).await,
            None => Err(TokenError::Missing),
        };
        outcome.map(Authenticated).map_err(|reason| {
            tracing::info!(%reason, "token refused");
            let challenge = if reason == TokenError::Missing {
                "Bearer"
            } else {
                "Bearer error=\"invalid_token\""
            };
            Problem::new(Code::InvalidToken).header(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            )
        })
    }
}

/// Adds the `bearer` security scheme (JWT in `Authorization: Bearer`) to an
/// OpenAPI document: `#[openapi(modifiers(&kit::auth::BearerSecurity))]`.
pub struct BearerSecurity;

impl utoipa::Modify for BearerSecurity {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}
