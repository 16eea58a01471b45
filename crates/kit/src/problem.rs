//! RFC 9457 problem details, with one table of stable error codes.
//!
//! Clients branch on `code`, never on `title` or `detail`. Adding a code is an
//! API change: add it to [`Code`] and to the table in `ARCHITECTURE.md`.

use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub const CONTENT_TYPE: &str = "application/problem+json";

/// The `Retry-After` of a refusal that should pass soon (a saturated pool,
/// a store that failed this request), when nothing better is known.
pub const RETRY_SOON: std::time::Duration = std::time::Duration::from_secs(1);

macro_rules! codes {
    ($($variant:ident => ($status:expr, $code:literal, $title:literal),)+) => {
        /// Every error code any Tessera service answers with.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Code { $($variant,)+ }

        impl Code {
            pub const ALL: &'static [Code] = &[$(Code::$variant,)+];

            pub fn status(self) -> StatusCode {
                match self { $(Code::$variant => $status,)+ }
            }

            /// The stable, machine-readable name.
            pub fn as_str(self) -> &'static str {
                match self { $(Code::$variant => $code,)+ }
            }

            pub fn title(self) -> &'static str {
                match self { $(Code::$variant => $title,)+ }
            }
        }
    };
}

codes! {
    MalformedRequest => (StatusCode::BAD_REQUEST, "malformed_request", "The request could not be parsed"),
    InvalidCredentials => (StatusCode::UNAUTHORIZED, "invalid_credentials", "Email or password is wrong"),
    InvalidToken => (StatusCode::UNAUTHORIZED, "invalid_token", "The token is missing, invalid, expired or revoked"),
    Forbidden => (StatusCode::FORBIDDEN, "forbidden", "You may not do this"),
    NotFound => (StatusCode::NOT_FOUND, "not_found", "No such resource"),
    MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "The method is not allowed on this resource"),
    EmailTaken => (StatusCode::CONFLICT, "email_taken", "An account with this email already exists"),
    PreconditionFailed => (StatusCode::PRECONDITION_FAILED, "precondition_failed", "The resource changed since you read it (If-Match)"),
    PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "The request body is too large"),
    HeadersTooLarge => (StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "headers_too_large", "The request headers are too large"),
    UnsupportedMediaType => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", "The request body must be application/json"),
    ValidationFailed => (StatusCode::UNPROCESSABLE_ENTITY, "validation_failed", "The request is well-formed but its values are invalid"),
    RateLimited => (StatusCode::TOO_MANY_REQUESTS, "rate_limited", "Too many requests; retry later"),
    Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal", "Something went wrong on our side"),
    Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", "A dependency is unavailable; retry later"),
    Overloaded => (StatusCode::SERVICE_UNAVAILABLE, "overloaded", "The service is saturated; retry later"),
    Timeout => (StatusCode::SERVICE_UNAVAILABLE, "timeout", "The request took too long"),
    BadGateway => (StatusCode::BAD_GATEWAY, "bad_gateway", "The upstream service could not be reached or answered badly"),
    UpstreamTimeout => (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout", "The upstream service did not answer in time"),
    CircuitOpen => (StatusCode::SERVICE_UNAVAILABLE, "circuit_open", "The upstream service is failing; requests to it are refused for a while"),
}

/// One invalid field of a request (`pointer` is a JSON Pointer, RFC 6901).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FieldError {
    pub pointer: String,
    pub detail: String,
}

/// The body of every error response, as it goes on the wire (and into the
/// OpenAPI documents, under the name `Problem`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(as = Problem)]
pub struct ProblemDocument {
    #[serde(rename = "type")]
    pub type_uri: String,
    pub title: String,
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Stable machine-readable code; see the table in `ARCHITECTURE.md`.
    pub code: String,
    /// The W3C trace id of the request, for finding its logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

/// An error answer: a [`Code`] plus what this occurrence adds. Small, so
/// that `Result<_, Problem>` stays cheap; title, type and status come from
/// the code.
#[derive(Debug, Clone)]
pub struct Problem {
    code: Code,
    detail: Option<String>,
    trace_id: Option<String>,
    errors: Vec<FieldError>,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl Problem {
    pub fn new(code: Code) -> Self {
        Self {
            code,
            detail: None,
            trace_id: crate::telemetry::current_trace_id(),
            errors: Vec::new(),
            headers: Vec::new(),
        }
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn field(mut self, pointer: impl Into<String>, detail: impl Into<String>) -> Self {
        self.errors.push(FieldError {
            pointer: pointer.into(),
            detail: detail.into(),
        });
        self
    }

    /// `Retry-After` for `wait`, in whole seconds rounded up, at least one
    /// ([`RETRY_SOON`] when nothing better is known).
    pub fn retry_after(mut self, wait: std::time::Duration) -> Self {
        let seconds = (wait.as_secs_f64().ceil() as u64).max(1);
        self.headers
            .push((header::RETRY_AFTER, HeaderValue::from(seconds)));
        self
    }

    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    pub fn code(&self) -> Code {
        self.code
    }

    /// Headers the response carries besides the body (`Retry-After`, ...).
    pub fn headers(&self) -> &[(HeaderName, HeaderValue)] {
        &self.headers
    }

    pub fn status(&self) -> StatusCode {
        self.code.status()
    }

    /// Logs an unexpected failure and hides its text from the client.
    pub fn internal(error: impl std::fmt::Display) -> Self {
        tracing::error!(%error, "internal error");
        Self::new(Code::Internal)
    }

    pub fn document(&self) -> ProblemDocument {
        ProblemDocument {
            type_uri: format!("urn:tessera:problem:{}", self.code.as_str()),
            title: self.code.title().to_owned(),
            status: self.code.status().as_u16(),
            detail: self.detail.clone(),
            code: self.code.as_str().to_owned(),
            trace_id: self.trace_id.clone(),
            errors: self.errors.clone(),
        }
    }
}

impl From<Code> for Problem {
    fn from(code: Code) -> Self {
        Problem::new(code)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = serde_json::to_vec(&self.document()).unwrap_or_else(|_| b"{}".to_vec());
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
        for (name, value) in self.headers {
            headers.insert(name, value);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn codes_are_unique_and_errors() {
        let mut seen = HashSet::new();
        for code in Code::ALL {
            assert!(seen.insert(code.as_str()), "duplicate {}", code.as_str());
            assert!(code.status().is_client_error() || code.status().is_server_error());
        }
    }
}
