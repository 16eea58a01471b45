//! How HTTP asks the users service; the OpenAPI document is generated from
//! here and checked in as `openapi/users.json`.

use std::sync::Arc;

use axum::extract::{FromRef, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use kit::auth::{Authenticated, BearerSecurity, TokenVerifier};
use kit::http::ApiJson;
use kit::problem::{Code, Problem, ProblemDocument};
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};

use crate::app::{Users, UsersError};
use crate::domain::{Address, Preferences, Profile, ProfilePatch};

pub const ADMIN_ROLE: &str = "admin";

#[derive(Clone)]
pub struct ApiState {
    pub users: Arc<Users>,
    pub verifier: Arc<TokenVerifier>,
}

impl FromRef<ApiState> for Arc<TokenVerifier> {
    fn from_ref(state: &ApiState) -> Self {
        state.verifier.clone()
    }
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route(
            "/api/v1/users/me",
            get(get_me).patch(patch_me).delete(delete_me),
        )
        .route("/api/v1/users/{id}", get(get_user))
        .with_state(state)
}

impl From<UsersError> for Problem {
    fn from(error: UsersError) -> Self {
        match error {
            UsersError::NotFound => Problem::new(Code::NotFound),
            UsersError::PreconditionFailed => Problem::new(Code::PreconditionFailed),
            UsersError::Invalid(fields) => fields.into_iter().fold(
                Problem::new(Code::ValidationFailed),
                |p, (pointer, detail)| p.field(pointer, detail),
            ),
            UsersError::Unavailable(reason) => {
                tracing::error!(%reason, "users dependency failed");
                Problem::new(Code::Unavailable).retry_after(kit::problem::RETRY_SOON)
            }
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ProfileView {
    pub id: String,
    pub email: String,
    pub display_name: String,
    pub addresses: Vec<Address>,
    pub preferences: Preferences,
}

/// The profile with its version as a strong `ETag`.
fn profile_response(profile: &Profile) -> Response {
    let view = ProfileView {
        id: profile.id.clone(),
        email: profile.email.clone(),
        display_name: profile.display_name.clone(),
        addresses: profile.addresses.clone(),
        preferences: profile.preferences.clone(),
    };
    let etag = HeaderValue::from_str(&format!("\"{}\"", profile.version))
        .expect("digits are a valid header");
    ([(header::ETAG, etag)], Json(view)).into_response()
}

/// The version `If-Match` requires: none when absent or `*`; `"N"` → N;
/// anything else → 0, which never matches (versions start at 1).
fn if_match(headers: &HeaderMap) -> Option<u64> {
    let value = headers.get(header::IF_MATCH)?;
    let tag = value.to_str().map(str::trim).unwrap_or_default();
    if tag == "*" {
        return None;
    }
    Some(
        tag.strip_prefix('"')
            .and_then(|t| t.strip_suffix('"'))
            .and_then(|t| t.parse().ok())
            .unwrap_or(0),
    )
}

/// The caller's profile.
#[utoipa::path(
    get, path = "/api/v1/users/me", tag = "users", security(("bearer" = [])),
    responses(
        (status = 200, description = "The profile", body = ProfileView,
            headers(("ETag" = String, description = "The profile's version, for If-Match"))),
        (status = 401, description = "No valid access token", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 404, description = "No profile (yet: it follows registration within a second)", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 503, description = "A dependency is down", body = ProblemDocument, content_type = "application/problem+json"),
    )
)]
async fn get_me(
    State(state): State<ApiState>,
    Authenticated(caller): Authenticated,
) -> Result<Response, Problem> {
    Ok(profile_response(&state.users.get(&caller.subject).await?))
}

/// Change the caller's display name, addresses or preferences.
#[utoipa::path(
    patch, path = "/api/v1/users/me", tag = "users", security(("bearer" = [])),
    request_body = ProfilePatch,
    params(("If-Match" = Option<String>, Header, description = "The ETag last read; a mismatch is refused with 412")),
    responses(
        (status = 200, description = "The changed profile", body = ProfileView,
            headers(("ETag" = String, description = "The new version"))),
        (status = 400, description = "Malformed JSON", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 401, description = "No valid access token", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 404, description = "No profile", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 412, description = "If-Match does not match the current ETag", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 413, description = "Body over the limit", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 422, description = "A field may not be written (id, email, roles, unknown) or is invalid", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 503, description = "A dependency is down", body = ProblemDocument, content_type = "application/problem+json"),
    )
)]
async fn patch_me(
    State(state): State<ApiState>,
    Authenticated(caller): Authenticated,
    headers: HeaderMap,
    ApiJson(patch): ApiJson<ProfilePatch>,
) -> Result<Response, Problem> {
    let expected = if_match(&headers);
    let profile = state.users.update(&caller.subject, expected, patch).await?;
    Ok(profile_response(&profile))
}

/// Erase the caller's profile; identity then revokes the account.
#[utoipa::path(
    delete, path = "/api/v1/users/me", tag = "users", security(("bearer" = [])),
    responses(
        (status = 204, description = "Erased"),
        (status = 401, description = "No valid access token", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 404, description = "No profile", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 503, description = "A dependency is down", body = ProblemDocument, content_type = "application/problem+json"),
    )
)]
async fn delete_me(
    State(state): State<ApiState>,
    Authenticated(caller): Authenticated,
) -> Result<StatusCode, Problem> {
    state.users.erase(&caller.subject).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A user's profile: admins see anyone's, others only their own.
#[utoipa::path(
    get, path = "/api/v1/users/{id}", tag = "users", security(("bearer" = [])),
    params(("id" = String, Path, description = "Account id")),
    responses(
        (status = 200, description = "The profile", body = ProfileView,
            headers(("ETag" = String, description = "The profile's version"))),
        (status = 401, description = "No valid access token", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 404, description = "No such profile, or not yours to see", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 503, description = "A dependency is down", body = ProblemDocument, content_type = "application/problem+json"),
    )
)]
async fn get_user(
    State(state): State<ApiState>,
    Authenticated(caller): Authenticated,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    // Someone else's id answers exactly like a missing one: no probing.
    if id != caller.subject && !caller.has_role(ADMIN_ROLE) {
        return Err(Problem::new(Code::NotFound));
    }
    Ok(profile_response(&state.users.get(&id).await?))
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Tessera users",
        description = "Profiles: display name, addresses, preferences. Created from identity's \
                       `identity.user.registered.v1`. Errors are RFC 9457 problem details."
    ),
    paths(get_me, patch_me, delete_me, get_user),
    components(schemas(ProblemDocument, kit::problem::FieldError)),
    modifiers(&BearerSecurity),
    tags((name = "users", description = "Profiles"))
)]
pub struct ApiDoc;
