//! The public API as one OpenAPI document (`GET /api/openapi.json` on the
//! public port): the services' own documents merged, keeping only the
//! operations a route in force takes — what a client of the gateway can
//! call — and a Swagger UI page over it at `/api/docs`, its assets
//! embedded in the binary.

use std::collections::BTreeSet;

use axum::response::{Html, IntoResponse, Response};
use http::{HeaderMap, HeaderValue, Method, header};
use serde_json::{Map, Value, json};

use crate::compose::{Composite, PARTIAL_HEADER};
use crate::routes::{AuthPolicy, Matched, Route, RouteTable, Target};

/// Where the merged document and the docs page are served.
pub const DOCUMENT_PATH: &str = "/api/openapi.json";
pub const DOCS_PATH: &str = "/api/docs";

/// Whether `path` is the document's, the docs page's or one of its assets'.
pub fn is_docs_path(path: &str) -> bool {
    path == DOCUMENT_PATH
        || path
            .strip_prefix(DOCS_PATH)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

const OPERATIONS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// Merges `documents` into one, keeping the operations `table` routes.
/// Two documents defining one component differently, or one path, are a
/// conflict: refused, naming it.
pub fn merge(documents: &[Value], table: &RouteTable) -> Result<Value, String> {
    let mut paths = Map::new();
    let mut components: Map<String, Value> = Map::new();
    let mut tags: Vec<Value> = Vec::new();
    let mut tag_names = BTreeSet::new();
    for document in documents {
        let title = document["info"]["title"].as_str().unwrap_or("a document");
        for (path, item) in document["paths"].as_object().into_iter().flatten() {
            let Some(item) = item.as_object() else {
                continue;
            };
            let routed: Map<String, Value> = item
                .iter()
                .filter(|(key, _)| {
                    !OPERATIONS.contains(&key.as_str())
                        || Method::from_bytes(key.to_ascii_uppercase().as_bytes())
                            .is_ok_and(|method| takes(table, &method, path))
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            if !routed.keys().any(|k| OPERATIONS.contains(&k.as_str())) {
                continue;
            }
            if paths.insert(path.clone(), Value::Object(routed)).is_some() {
                return Err(format!(
                    "{title}: the path {path} is in another document too"
                ));
            }
        }
        for (kind, entries) in document["components"].as_object().into_iter().flatten() {
            let merged = components
                .entry(kind.clone())
                .or_insert_with(|| Value::Object(Map::new()));
            for (name, value) in entries.as_object().into_iter().flatten() {
                match merged.get(name) {
                    Some(known) if known != value => {
                        return Err(format!(
                            "{title}: components.{kind}.{name} differs from another document's"
                        ));
                    }
                    _ => {
                        merged[name] = value.clone();
                    }
                }
            }
        }
        for tag in document["tags"].as_array().into_iter().flatten() {
            if let Some(name) = tag["name"].as_str()
                && tag_names.insert(name.to_owned())
            {
                tags.push(tag.clone());
            }
        }
    }
    for route in table.routes() {
        if route.config.path.is_none() {
            continue;
        }
        let operation = match &route.target {
            Target::Service(_) => continue,
            Target::Compose(composite) => composite_operation(route, composite, &paths),
            Target::Events(types) => events_operation(route, types),
        };
        let item = json!({ "get": operation });
        if paths.insert(route.pattern.clone(), item).is_some() {
            return Err(format!(
                "the composite route {} is on a path a service documents too",
                route.name
            ));
        }
    }
    for (tag, description) in [
        (
            "composites",
            "Answered by the gateway from several services at once",
        ),
        ("events", "The caller's events, streamed by the gateway"),
    ] {
        let used = paths.values().any(|item| item["get"]["tags"][0] == tag);
        if used && tag_names.insert(tag.into()) {
            tags.push(json!({"name": tag, "description": description}));
        }
    }
    Ok(json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Tessera API",
            "description": "Every public route, through the gateway. Errors are RFC 9457 problem details with a stable `code`; the gateway adds its own (429 rate_limited, 503 overloaded or circuit_open, 502, 504).",
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
            "version": env!("CARGO_PKG_VERSION"),
        },
        "paths": paths,
        "components": components,
        "tags": tags,
    }))
}

/// The GET a composite route answers: each branch's answer (the schema
/// its service documents for the path, when it does) at its place, and
/// the partial answer's `errors`.
fn composite_operation(route: &Route, composite: &Composite, paths: &Map<String, Value>) -> Value {
    let problem = json!({"$ref": "#/components/schemas/Problem"});
    let mut schema = json!({"type": "object", "properties": {}});
    let mut lines = Vec::new();
    for branch in &composite.branches {
        let documented = paths
            .get(&branch.path)
            .and_then(|item| item.pointer("/get/responses/200/content/application~1json/schema"))
            .filter(|_| branch.select.is_none())
            .cloned()
            .unwrap_or_else(|| json!({}));
        put_schema(&mut schema, &branch.into, documented);
        lines.push(format!(
            "- `{}`: {} `GET {}` → `{}`{}",
            branch.name,
            branch.service,
            branch.path,
            branch.into,
            if branch.required { "" } else { " (optional)" }
        ));
    }
    schema["properties"]["errors"] = json!({
        "type": "array",
        "description": "On a partial answer: the failed optional branches' problems, each with its `branch`",
        "items": problem,
    });
    let parameters: Vec<Value> = route
        .pattern
        .split('/')
        .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
        .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
        .collect();
    let failure = |description: &str| json!({"description": description, "content": {"application/problem+json": {"schema": problem}}});
    let mut operation = json!({
        "tags": ["composites"],
        "operationId": route.name.to_string(),
        "summary": format!("{} services in one answer", composite.branches.len()),
        "description": format!(
            "Answered by the gateway from these calls, made in parallel (a branch using another's answer waits for it):\n\n{}\n\nA failed optional branch leaves a partial answer: its problem in `errors`, its name in `{PARTIAL_HEADER}`. A failed required branch is the answer's problem.",
            lines.join("\n")
        ),
        "parameters": parameters,
        "responses": {
            "200": {
                "description": "The merged answer",
                "headers": {PARTIAL_HEADER: {"description": "The optional branches that failed, on a partial answer", "schema": {"type": "string"}}},
                "content": {"application/json": {"schema": schema}},
            },
            "401": failure("No valid access token"),
            "404": failure("A required branch found nothing"),
            "502": failure("A required branch's service failed or could not be reached"),
            "504": failure("A required branch did not answer within its timeout"),
        },
    });
    if route.auth == AuthPolicy::Required {
        operation["security"] = json!([{"bearer": []}]);
    }
    operation
}

/// The GET an event-stream route answers.
fn events_operation(route: &Route, types: &bus::TypeFilter) -> Value {
    json!({
        "tags": ["events"],
        "operationId": route.name.to_string(),
        "summary": "The caller's events, as Server-Sent Events",
        "description": format!(
            "Each event about the caller of the types {} as it happens: `event:` its type, `data:` the CloudEvent (JSON), `id:` where the stream stands. Reconnect with `Last-Event-ID` to resume just after it, missing nothing. A comment line every {} s keeps the connection (and the id) alive; a stream ends after {} s and the client reconnects.",
            types.patterns().join(", "),
            crate::events::KEEPALIVE.as_secs(),
            crate::events::STREAM_LIFETIME.as_secs(),
        ),
        "security": [{"bearer": []}],
        "parameters": [{"name": "Last-Event-ID", "in": "header", "required": false, "schema": {"type": "string"}}],
        "responses": {
            "200": {"description": "The stream", "content": {"text/event-stream": {"schema": {"type": "string"}}}},
            "400": {"description": "Last-Event-ID is not an id this stream gave", "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}},
            "401": {"description": "No valid access token", "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}},
        },
    })
}

/// `schema` at `pointer` (each token a property) in an object schema.
fn put_schema(root: &mut Value, pointer: &str, schema: Value) {
    let tokens = crate::compose::pointer_tokens(pointer);
    let mut at = root;
    for token in &tokens[..tokens.len().saturating_sub(1)] {
        at = &mut at["properties"][token.as_str()];
        if !at.is_object() || at.get("properties").is_none() {
            *at = json!({"type": "object", "properties": {}});
        }
    }
    if let Some(last) = tokens.last() {
        at["properties"][last.as_str()] = schema;
    }
}

/// Whether a route takes `method` on `template` (each `{param}` segment
/// stands for any one segment).
fn takes(table: &RouteTable, method: &Method, template: &str) -> bool {
    let concrete: Vec<&str> = template
        .split('/')
        .map(|s| {
            if s.starts_with('{') && s.ends_with('}') {
                "x"
            } else {
                s
            }
        })
        .collect();
    matches!(
        table.find(method, &concrete.join("/"), None, &HeaderMap::new()),
        Matched::Route(_)
    )
}

/// The docs page: Swagger UI over [`DOCUMENT_PATH`], scripts and styles
/// from this gateway only.
pub fn docs_page() -> Response {
    let page = format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Tessera API</title>
<link rel="stylesheet" href="{DOCS_PATH}/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{DOCS_PATH}/swagger-ui-bundle.js"></script>
<script src="{DOCS_PATH}/init.js"></script>
</body>
</html>
"#
    );
    let mut response = Html(page).into_response();
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
        ),
    );
    response
}

/// Starts Swagger UI on the merged document (a file of its own: the page
/// runs no inline script).
pub fn docs_init() -> Response {
    let script = format!(
        "window.ui = SwaggerUIBundle({{ url: '{DOCUMENT_PATH}', dom_id: '#swagger-ui' }});\n"
    );
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        script,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::GatewayMetrics;
    use crate::routes::RouteConfig;

    fn table() -> RouteTable {
        let route: RouteConfig = toml::from_str(
            "name = \"a\"\npath = \"/a/{id}\"\nmethods = [\"GET\"]\nservice = \"s\"",
        )
        .unwrap();
        RouteTable::compile(
            &[route],
            &["s".to_string()].into(),
            &GatewayMetrics::default(),
            None,
        )
        .unwrap()
    }

    fn document(title: &str, paths: Value, problem: Value) -> Value {
        json!({
            "info": {"title": title},
            "paths": paths,
            "components": {"schemas": {"Problem": problem}},
            "tags": [{"name": "t"}],
        })
    }

    #[test]
    fn only_routed_operations_are_published() {
        let one = document(
            "one",
            json!({
                "/a/{id}": {"get": {"summary": "read"}, "post": {}, "parameters": []},
                "/internal/x": {"get": {}},
            }),
            json!({"type": "object"}),
        );
        let two = document("two", json!({"/b": {"get": {}}}), json!({"type": "object"}));
        let merged = merge(&[one, two], &table()).unwrap();
        assert_eq!(
            merged["paths"],
            json!({"/a/{id}": {"get": {"summary": "read"}, "parameters": []}})
        );
        assert_eq!(merged["tags"], json!([{"name": "t"}]), "tags once");
        assert_eq!(merged["components"]["schemas"]["Problem"]["type"], "object");
    }

    #[test]
    fn conflicting_documents_are_refused_by_name() {
        let one = document("one", json!({}), json!({"type": "object"}));
        let two = document("two", json!({}), json!({"type": "string"}));
        let conflict = merge(&[one.clone(), two], &table()).unwrap_err();
        assert!(
            conflict.contains("components.schemas.Problem"),
            "{conflict}"
        );
        let same_path = document(
            "three",
            json!({"/a/{id}": {"get": {}}}),
            json!({"type": "object"}),
        );
        let conflict = merge(&[same_path.clone(), same_path], &table()).unwrap_err();
        assert!(conflict.contains("/a/{id}"), "{conflict}");
    }
}
