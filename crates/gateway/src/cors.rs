//! Cross-origin requests (the Fetch standard's CORS protocol), answered by
//! the gateway for every route: preflights get the route's methods, actual
//! requests the allowed origin. Off until `[gateway.cors]` names origins.
//! The gateway owns these headers: an upstream's are dropped.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CorsSettings {
    /// Origins allowed, as `scheme://host[:port]`, or `["*"]` for any;
    /// empty turns CORS off.
    pub allowed_origins: Vec<String>,
    /// Request headers a page may send.
    pub allowed_headers: Vec<String>,
    /// Response headers a page may read.
    pub exposed_headers: Vec<String>,
    /// How long a browser may keep a preflight's answer.
    pub max_age_s: u64,
    /// Cookies and `Authorization` from pages (not with `*`).
    pub allow_credentials: bool,
}

impl Default for CorsSettings {
    fn default() -> Self {
        Self {
            allowed_origins: Vec::new(),
            allowed_headers: [
                "authorization",
                "content-type",
                "idempotency-key",
                "if-match",
                "if-none-match",
                "x-request-id",
            ]
            .map(String::from)
            .into(),
            exposed_headers: ["etag", "location", "retry-after", "x-request-id"]
                .map(String::from)
                .into(),
            max_age_s: 600,
            allow_credentials: false,
        }
    }
}

/// The longest preflight cache a configuration may ask (browsers cap
/// lower anyway).
pub const MAX_AGE_S_LIMIT: u64 = 86_400;

/// [`CorsSettings`], checked and made into header values once.
#[derive(Debug)]
pub struct Cors {
    any_origin: bool,
    origins: Vec<HeaderValue>,
    allow_headers: HeaderValue,
    expose_headers: HeaderValue,
    max_age: HeaderValue,
    credentials: bool,
}

/// What to do with a request, as far as CORS goes.
pub enum Verdict {
    /// Not cross-origin (no `Origin`), or CORS is off: nothing to add.
    NotCors,
    /// A cross-origin request from an allowed origin: answer it, then
    /// [`Cors::decorate`] the response with this origin.
    Allowed(HeaderValue),
    /// From an origin not allowed.
    Refused(HeaderValue),
}

impl Cors {
    /// None when the settings name no origin (CORS off).
    pub fn compile(settings: &CorsSettings) -> Result<Option<Self>, String> {
        if settings.allowed_origins.is_empty() {
            return Ok(None);
        }
        let any_origin = settings.allowed_origins.iter().any(|o| o == "*");
        if any_origin && settings.allow_credentials {
            return Err("cors: allow_credentials cannot go with the origin \"*\"".into());
        }
        if settings.max_age_s > MAX_AGE_S_LIMIT {
            return Err(format!("cors: max_age_s must be at most {MAX_AGE_S_LIMIT}"));
        }
        let mut origins = Vec::new();
        for origin in settings.allowed_origins.iter().filter(|o| *o != "*") {
            let uri: http::Uri = origin
                .parse()
                .map_err(|_| format!("cors: origin {origin:?} is not a URL"))?;
            let plain = uri.scheme().is_some()
                && uri.authority().is_some()
                && uri.path() == "/"
                && !origin.ends_with('/');
            if !plain {
                return Err(format!(
                    "cors: origin {origin:?} must be scheme://host[:port]"
                ));
            }
            origins.push(
                HeaderValue::from_str(&origin.to_ascii_lowercase()).map_err(|e| e.to_string())?,
            );
        }
        let list = |names: &[String]| -> Result<HeaderValue, String> {
            for name in names {
                HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| format!("cors: {name:?} is not a header name"))?;
            }
            HeaderValue::from_str(&names.join(", ")).map_err(|e| e.to_string())
        };
        Ok(Some(Self {
            any_origin,
            origins,
            allow_headers: list(&settings.allowed_headers)?,
            expose_headers: list(&settings.exposed_headers)?,
            max_age: HeaderValue::from(settings.max_age_s),
            credentials: settings.allow_credentials,
        }))
    }

    pub fn verdict(&self, headers: &HeaderMap) -> Verdict {
        let Some(origin) = headers.get(header::ORIGIN) else {
            return Verdict::NotCors;
        };
        let allowed = self.any_origin
            || self
                .origins
                .iter()
                .any(|o| o.as_bytes().eq_ignore_ascii_case(origin.as_bytes()));
        if allowed {
            Verdict::Allowed(origin.clone())
        } else {
            Verdict::Refused(origin.clone())
        }
    }

    /// The method a preflight asks about, if the request is one.
    pub fn preflight(method: &Method, headers: &HeaderMap) -> Option<Method> {
        if method != Method::OPTIONS || !headers.contains_key(header::ORIGIN) {
            return None;
        }
        let asked = headers.get(header::ACCESS_CONTROL_REQUEST_METHOD)?;
        Method::from_bytes(asked.as_bytes()).ok()
    }

    /// The answer to a preflight from `origin` for a route taking
    /// `methods` (all when empty: then the one asked).
    pub fn preflight_answer(
        &self,
        origin: HeaderValue,
        methods: &[Method],
        asked: &Method,
    ) -> http::Response<axum::body::Body> {
        let allow: Vec<&str> = if methods.is_empty() {
            vec![asked.as_str()]
        } else {
            methods.iter().map(Method::as_str).collect()
        };
        let mut response = http::Response::new(axum::body::Body::empty());
        *response.status_mut() = StatusCode::NO_CONTENT;
        let headers = response.headers_mut();
        self.decorate(headers, origin);
        if let Ok(methods) = HeaderValue::from_str(&allow.join(", ")) {
            headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, methods);
        }
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            self.allow_headers.clone(),
        );
        headers.insert(header::ACCESS_CONTROL_MAX_AGE, self.max_age.clone());
        response
    }

    /// Adds what lets the page from `origin` read the response, and drops
    /// any CORS header the upstream set.
    pub fn decorate(&self, headers: &mut HeaderMap, origin: HeaderValue) {
        let theirs: Vec<HeaderName> = headers
            .keys()
            .filter(|n| n.as_str().starts_with("access-control-"))
            .cloned()
            .collect();
        for name in theirs {
            headers.remove(name);
        }
        let origin = if self.any_origin {
            HeaderValue::from_static("*")
        } else {
            origin
        };
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            self.expose_headers.clone(),
        );
        if self.credentials {
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if !self.any_origin {
            headers.append(header::VARY, HeaderValue::from_static("origin"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(origins: &[&str]) -> CorsSettings {
        CorsSettings {
            allowed_origins: origins.iter().map(|o| o.to_string()).collect(),
            ..CorsSettings::default()
        }
    }

    fn with_origin(origin: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::ORIGIN, HeaderValue::from_str(origin).unwrap());
        headers
    }

    #[test]
    fn only_named_origins_are_allowed() {
        assert!(Cors::compile(&settings(&[])).unwrap().is_none(), "off");
        let cors = Cors::compile(&settings(&["https://shop.example"]))
            .unwrap()
            .unwrap();
        assert!(matches!(cors.verdict(&HeaderMap::new()), Verdict::NotCors));
        assert!(matches!(
            cors.verdict(&with_origin("https://SHOP.example")),
            Verdict::Allowed(_)
        ));
        assert!(matches!(
            cors.verdict(&with_origin("https://evil.example")),
            Verdict::Refused(_)
        ));
        assert!(matches!(
            cors.verdict(&with_origin("null")),
            Verdict::Refused(_)
        ));
    }

    #[test]
    fn bad_settings_are_refused() {
        for origins in [
            &["https://a.example/"][..],
            &["a.example"],
            &["https://a.example/x"],
        ] {
            assert!(Cors::compile(&settings(origins)).is_err(), "{origins:?}");
        }
        let wildcard_with_cookies = CorsSettings {
            allow_credentials: true,
            ..settings(&["*"])
        };
        assert!(Cors::compile(&wildcard_with_cookies).is_err());
        let bad_header = CorsSettings {
            allowed_headers: vec!["bad header".into()],
            ..settings(&["*"])
        };
        assert!(Cors::compile(&bad_header).is_err());
    }

    #[test]
    fn upstream_cors_headers_are_replaced() {
        let cors = Cors::compile(&settings(&["https://shop.example"]))
            .unwrap()
            .unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
        cors.decorate(
            &mut headers,
            HeaderValue::from_static("https://shop.example"),
        );
        assert_eq!(
            headers[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://shop.example"
        );
        assert_eq!(headers[header::VARY], "origin");
    }
}
