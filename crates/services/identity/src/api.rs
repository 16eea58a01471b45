//! How HTTP asks identity: request and response shapes, status codes, and
//! the OpenAPI document generated from them (checked in as
//! `openapi/identity.json`).

use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRef, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use kit::auth::{Authenticated, BearerSecurity, JwkSet, TokenVerifier};
use kit::http::{ApiJson, PeerAddr};
use kit::problem::{Code, Problem, ProblemDocument};
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};

use crate::app::{Identity, IdentityError, NewAccount, TokenPair};
use crate::domain::{Account, DisplayName, Email, Password, Role};

#[derive(Clone)]
pub struct ApiState {
    pub identity: Arc<Identity>,
    pub verifier: Arc<TokenVerifier>,
}

impl FromRef<ApiState> for Arc<TokenVerifier> {
    fn from_ref(state: &ApiState) -> Self {
        state.verifier.clone()
    }
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/api/v1/auth/register", post(register))
        .route("/api/v1/auth/token", post(token))
        .route("/api/v1/auth/refresh", post(refresh))
        .route("/api/v1/auth/logout", post(logout))
        .route("/api/v1/accounts/me", get(my_account))
        .route("/.well-known/jwks.json", get(jwks))
        .with_state(state)
}

impl From<IdentityError> for Problem {
    fn from(error: IdentityError) -> Self {
        match error {
            IdentityError::EmailTaken => Problem::new(Code::EmailTaken),
            IdentityError::InvalidCredentials => Problem::new(Code::InvalidCredentials),
            IdentityError::InvalidRefreshToken => Problem::new(Code::InvalidToken)
                .detail("the refresh token is invalid, expired, already used or revoked"),
            IdentityError::RateLimited { retry_after } => Problem::new(Code::RateLimited)
                .detail("too many failed logins; wait before trying again")
                .retry_after(retry_after),
            IdentityError::Overloaded => {
                Problem::new(Code::Overloaded).retry_after(kit::problem::RETRY_SOON)
            }
            IdentityError::Unavailable(reason) => {
                tracing::error!(%reason, "identity dependency failed");
                Problem::new(Code::Unavailable).retry_after(kit::problem::RETRY_SOON)
            }
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct RegisterRequest {
    /// Becomes the login name; compared case-insensitively.
    #[schema(example = "ada@example.com", format = Email, max_length = 254)]
    pub email: String,
    /// 12 to 128 characters, not a commonly used password.
    #[schema(
        example = "correct horse battery staple",
        min_length = 12,
        max_length = 128
    )]
    pub password: String,
    /// 1 to 100 characters, not only white space.
    #[schema(example = "Ada Lovelace", min_length = 1, max_length = 100)]
    pub display_name: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AccountView {
    pub id: String,
    pub email: String,
    pub display_name: String,
}

impl From<&Account> for AccountView {
    fn from(account: &Account) -> Self {
        Self {
            id: account.id.as_str().to_owned(),
            email: account.email.as_str().to_owned(),
            display_name: account.display_name.as_str().to_owned(),
        }
    }
}

/// The caller's own account, as identity keeps it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MyAccountView {
    pub id: String,
    pub email: String,
    pub display_name: String,
    /// What the account may do (`user`, `admin`).
    pub roles: Vec<String>,
    /// When it registered (RFC 3339, UTC).
    #[schema(example = "2026-12-01T06:35:00.000Z")]
    pub created_at: String,
}

impl From<&Account> for MyAccountView {
    fn from(account: &Account) -> Self {
        let created =
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(account.created_at_ms);
        Self {
            id: account.id.as_str().to_owned(),
            email: account.email.as_str().to_owned(),
            display_name: account.display_name.as_str().to_owned(),
            roles: account.role_names(),
            created_at: humantime::format_rfc3339_millis(created).to_string(),
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct TokenRequest {
    pub email: String,
    pub password: String,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct RefreshRequest {
    pub refresh_token: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TokenResponse {
    /// EdDSA-signed JWT (`typ: at+jwt`) for `Authorization: Bearer`.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    /// Opaque; works once, for `POST /api/v1/auth/refresh`.
    pub refresh_token: String,
}

/// Token responses must never be cached (RFC 6749 §5.1).
fn token_response(pair: TokenPair) -> Response {
    let mut response = Json(TokenResponse {
        access_token: pair.access_token,
        token_type: "Bearer".into(),
        expires_in: pair.expires_in_s,
        refresh_token: pair.refresh_token,
    })
    .into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Register an account.
#[utoipa::path(
    post, path = "/api/v1/auth/register", tag = "auth",
    request_body = RegisterRequest,
    responses(
        (status = 201, description = "Registered", body = AccountView,
            headers(("Location" = String, description = "The account's profile resource"))),
        (status = 400, description = "Malformed JSON", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 409, description = "Email already registered", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 413, description = "Body over the limit", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 422, description = "Invalid email, password or display name", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 503, description = "Overloaded or a dependency is down", body = ProblemDocument, content_type = "application/problem+json"),
    )
)]
async fn register(
    State(state): State<ApiState>,
    ApiJson(body): ApiJson<RegisterRequest>,
) -> Result<Response, Problem> {
    let email = Email::parse(&body.email);
    let password = Password::new(&body.password);
    let display_name = DisplayName::parse(&body.display_name);
    let (email, password, display_name) = match (email, password, display_name) {
        (Ok(e), Ok(p), Ok(d)) => (e, p, d),
        (e, p, d) => {
            let mut problem = Problem::new(Code::ValidationFailed);
            for (pointer, error) in [
                ("/email", e.err()),
                ("/password", p.err()),
                ("/display_name", d.err()),
            ] {
                if let Some(error) = error {
                    problem = problem.field(pointer, error.0);
                }
            }
            return Err(problem);
        }
    };
    let account = state
        .identity
        .register(NewAccount {
            email,
            password,
            display_name,
            roles: vec![Role::parse(Role::USER).expect("a valid constant")],
        })
        .await?;
    let location = format!("/api/v1/users/{}", account.id.as_str());
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(AccountView::from(&account)),
    )
        .into_response())
}

/// Log in: exchange email and password for tokens.
#[utoipa::path(
    post, path = "/api/v1/auth/token", tag = "auth",
    request_body = TokenRequest,
    responses(
        (status = 200, description = "Logged in", body = TokenResponse),
        (status = 400, description = "Malformed JSON", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 401, description = "Wrong email or password", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 413, description = "Body over the limit", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 422, description = "Wrong body shape", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 429, description = "Too many failed logins for this account or client",
            body = ProblemDocument, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "Overloaded or a dependency is down", body = ProblemDocument, content_type = "application/problem+json"),
    )
)]
async fn token(
    State(state): State<ApiState>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    ApiJson(body): ApiJson<TokenRequest>,
) -> Result<Response, Problem> {
    let pair = state
        .identity
        .login(&body.email, &body.password, peer.ip())
        .await?;
    Ok(token_response(pair))
}

/// Trade a refresh token for a new pair; the old refresh token stops working.
#[utoipa::path(
    post, path = "/api/v1/auth/refresh", tag = "auth",
    request_body = RefreshRequest,
    responses(
        (status = 200, description = "New tokens", body = TokenResponse),
        (status = 400, description = "Malformed JSON", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 401, description = "Refresh token invalid, expired, reused or revoked", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 413, description = "Body over the limit", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 422, description = "Wrong body shape", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 503, description = "A dependency is down", body = ProblemDocument, content_type = "application/problem+json"),
    )
)]
async fn refresh(
    State(state): State<ApiState>,
    ApiJson(body): ApiJson<RefreshRequest>,
) -> Result<Response, Problem> {
    let pair = state.identity.refresh(&body.refresh_token).await?;
    Ok(token_response(pair))
}

/// Log out: revoke the refresh tokens of the caller's session.
#[utoipa::path(
    post, path = "/api/v1/auth/logout", tag = "auth",
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Logged out"),
        (status = 401, description = "No valid access token", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 503, description = "A dependency is down", body = ProblemDocument, content_type = "application/problem+json"),
    )
)]
async fn logout(
    State(state): State<ApiState>,
    Authenticated(caller): Authenticated,
) -> Result<StatusCode, Problem> {
    state.identity.logout(&caller).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The caller's account.
#[utoipa::path(
    get, path = "/api/v1/accounts/me", tag = "accounts",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The account", body = MyAccountView),
        (status = 401, description = "No valid access token", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 404, description = "The account was deleted", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 503, description = "A dependency is down", body = ProblemDocument, content_type = "application/problem+json"),
    )
)]
async fn my_account(
    State(state): State<ApiState>,
    Authenticated(caller): Authenticated,
) -> Result<Response, Problem> {
    match state.identity.account(&caller.subject).await? {
        Some(account) => Ok(Json(MyAccountView::from(&account)).into_response()),
        None => Err(Problem::new(Code::NotFound).detail("the account was deleted")),
    }
}

/// The public keys that verify access tokens.
#[utoipa::path(
    get, path = "/.well-known/jwks.json", tag = "keys",
    responses((status = 200, description = "JSON Web Key Set", body = JwkSet))
)]
async fn jwks(State(state): State<ApiState>) -> Response {
    (
        [(header::CACHE_CONTROL, "public, max-age=60")],
        Json(state.identity.keyring().jwks()),
    )
        .into_response()
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Tessera identity",
        description = "Accounts, passwords, access and refresh tokens, signing keys. \
                       Errors are RFC 9457 problem details with a stable `code`."
    ),
    paths(register, token, refresh, logout, my_account, jwks),
    components(schemas(ProblemDocument, kit::problem::FieldError, kit::auth::Jwk)),
    modifiers(&BearerSecurity),
    tags(
        (name = "auth", description = "Registration, login, refresh, logout"),
        (name = "accounts", description = "The caller's account"),
        (name = "keys", description = "Token verification keys"),
    )
)]
pub struct ApiDoc;
