//! Composite routes: one GET answered by several upstream calls, made in
//! parallel where they can be, each with its own timeout and retries, and
//! merged by JSON pointer into one document.
//!
//! A branch is `required` (its failure is the answer's failure, as the
//! right problem+json) or optional (its failure leaves its `fallback`, or
//! nothing, in its place, adds its problem to the document's `errors` and
//! names it in [`PARTIAL_HEADER`]). A branch's path may use a field of an
//! earlier branch's answer (`{branch.profile/id}`): it starts when that
//! branch has answered. Where two branches would write one place, the
//! configuration is refused when it is loaded.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http_body_util::BodyExt;
use kit::auth::Principal;
use kit::problem::{Code, Problem, ProblemDocument};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::pool::Outgoing;
use crate::proxy::{self, Attempts};
use crate::routes::{AuthPolicy, Route, RouteConfig};
use crate::server::Client;
use crate::state::Snapshot;

/// Branches one composite may have.
pub const BRANCHES_MAX: usize = 16;
/// The largest answer a branch may give; larger fails the branch (502).
pub const BRANCH_BODY_MAX_BYTES: usize = 1024 * 1024;
/// Names the optional branches that failed, on a partial answer.
pub const PARTIAL_HEADER: &str = "x-tessera-partial";
/// Where a partial answer lists its branches' problems.
pub const ERRORS_POINTER: &str = "/errors";

/// The client headers a branch call carries (besides what the gateway
/// adds: forwarded-for, trace context, the verified caller). Conditional
/// and content headers were meant for the composite, not its branches.
const FORWARDED_HEADERS: [&str; 9] = [
    "authorization",
    "accept-language",
    "user-agent",
    "x-request-id",
    "x-forwarded-for",
    "x-forwarded-proto",
    "traceparent",
    crate::proxy::USER_HEADER,
    crate::proxy::ROLES_HEADER,
];

/// A branch as written in the configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BranchConfig {
    /// Names the branch in errors, templates and the partial header.
    pub name: String,
    /// The service called.
    pub service: String,
    /// Path and query called, templated: `{user}` (the verified caller),
    /// `{path.NAME}` (a parameter of the route's path), `{query.NAME}` (of
    /// the request's query), `{branch.NAME/POINTER}` (a field of an
    /// earlier branch's answer). Values are percent-encoded.
    pub path: String,
    /// Where the answer goes in the merged document (a JSON pointer, not
    /// empty, not under `/errors`).
    pub into: String,
    /// The part of the answer taken (a JSON pointer); all of it when absent.
    #[serde(default)]
    pub select: Option<String>,
    /// A failed required branch fails the whole answer; a failed optional
    /// one leaves a partial answer.
    #[serde(default = "required_by_default")]
    pub required: bool,
    /// The branch's own bound, within the route's `timeout_ms` (its
    /// default).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Retries on another instance (the route's `retries` by default).
    #[serde(default)]
    pub retries: Option<u32>,
    /// What an optional branch leaves in its place when it fails.
    #[serde(default)]
    pub fallback: Option<Value>,
}

fn required_by_default() -> bool {
    true
}

/// A compiled composite.
#[derive(Debug)]
pub struct Composite {
    pub(crate) branches: Vec<Branch>,
    /// The route's own path, to read `{path.NAME}` from a request.
    params: matchit::Router<()>,
}

#[derive(Debug)]
pub(crate) struct Branch {
    pub(crate) name: String,
    pub(crate) service: String,
    /// The path as configured, placeholders and all (for documents).
    pub(crate) path: String,
    template: Vec<Piece>,
    pub(crate) into: String,
    pub(crate) select: Option<String>,
    pub(crate) required: bool,
    timeout: Duration,
    retries: u32,
    fallback: Option<Value>,
    /// Branches whose answers the template needs.
    after: BTreeSet<usize>,
}

#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Literal(String),
    User,
    Path(String),
    Query(String),
    Branch { index: usize, pointer: String },
}

impl Composite {
    /// Compiles the branches of `route` (whose path matcher is `matcher`),
    /// refusing with the branch and the reason: a bad or unknown name,
    /// template, pointer or service, a cycle, two branches writing one
    /// place, a method other than GET.
    pub fn compile(
        route: &RouteConfig,
        matcher: &str,
        services: &BTreeSet<String>,
    ) -> Result<Self, String> {
        if route.methods.iter().any(|m| !m.eq_ignore_ascii_case("GET")) {
            return Err("a composite answers GET only".into());
        }
        if route.branches.len() > BRANCHES_MAX {
            return Err(format!("at most {BRANCHES_MAX} branches"));
        }
        let mut params = matchit::Router::new();
        params
            .insert(matcher, ())
            .map_err(|e| format!("path {matcher:?}: {e}"))?;
        let route_params = param_names(matcher);
        let names: Vec<&str> = route.branches.iter().map(|b| b.name.as_str()).collect();
        let mut branches = Vec::with_capacity(route.branches.len());
        for (i, config) in route.branches.iter().enumerate() {
            let refuse = |problem: String| format!("branch {:?}: {problem}", config.name);
            let name_ok = !config.name.is_empty()
                && config
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'));
            if !name_ok || names[..i].contains(&config.name.as_str()) {
                return Err(refuse("the name must be unique, of [A-Za-z0-9_-]".into()));
            }
            if !services.contains(&config.service) {
                return Err(refuse(format!("no service named {:?}", config.service)));
            }
            let template = parse_template(&config.path, &names).map_err(refuse)?;
            for piece in &template {
                match piece {
                    Piece::User if route.auth != AuthPolicy::Required => {
                        return Err(refuse("{user} needs auth = \"required\"".into()));
                    }
                    Piece::Path(name) if !route_params.contains(name) => {
                        return Err(refuse(format!("the route's path has no {{{name}}}")));
                    }
                    Piece::Branch { index, .. } if *index == i => {
                        return Err(refuse("a branch cannot use its own answer".into()));
                    }
                    _ => {}
                }
            }
            if !is_pointer(&config.into) || config.into.is_empty() {
                return Err(refuse(format!(
                    "into {:?} must be a JSON pointer below the root",
                    config.into
                )));
            }
            if overlaps(&config.into, ERRORS_POINTER) {
                return Err(refuse(format!(
                    "into {:?}: {ERRORS_POINTER} is where a partial answer lists its errors",
                    config.into
                )));
            }
            if let Some(select) = config.select.as_deref().filter(|s| !is_pointer(s)) {
                return Err(refuse(format!("select {select:?} is not a JSON pointer")));
            }
            if config.fallback.is_some() && config.required {
                return Err(refuse("only an optional branch has a fallback".into()));
            }
            let timeout_ms = config.timeout_ms.unwrap_or(route.timeout_ms);
            if timeout_ms == 0 || timeout_ms > route.timeout_ms {
                return Err(refuse(format!(
                    "timeout_ms must be in 1..={} (the route's)",
                    route.timeout_ms
                )));
            }
            let retries = config.retries.unwrap_or(route.retries);
            if retries > crate::routes::RETRIES_MAX {
                return Err(refuse(format!(
                    "retries must be at most {}",
                    crate::routes::RETRIES_MAX
                )));
            }
            let after = template
                .iter()
                .filter_map(|p| match p {
                    Piece::Branch { index, .. } => Some(*index),
                    _ => None,
                })
                .collect();
            branches.push(Branch {
                name: config.name.clone(),
                service: config.service.clone(),
                path: config.path.clone(),
                template,
                into: config.into.clone(),
                select: config.select.clone(),
                required: config.required,
                timeout: Duration::from_millis(timeout_ms),
                retries,
                fallback: config.fallback.clone(),
                after,
            });
        }
        if branches.is_empty() {
            return Err("a composite has at least one branch".into());
        }
        for (i, a) in branches.iter().enumerate() {
            if let Some(b) = branches[i + 1..]
                .iter()
                .find(|b| overlaps(&a.into, &b.into))
            {
                return Err(format!(
                    "branches {:?} and {:?} both write {:?} and {:?}: one place, two answers",
                    a.name, b.name, a.into, b.into
                ));
            }
        }
        if let Some(cycle) = find_cycle(&branches) {
            return Err(format!(
                "branch {:?} depends on itself through other branches",
                branches[cycle].name
            ));
        }
        Ok(Self { branches, params })
    }
}

/// `{name}` and `{*name}` parameters of a matcher path.
fn param_names(matcher: &str) -> BTreeSet<String> {
    matcher
        .split('{')
        .skip(1)
        .filter_map(|rest| rest.split_once('}'))
        .map(|(name, _)| name.trim_start_matches('*').to_owned())
        .collect()
}

fn parse_template(template: &str, branches: &[&str]) -> Result<Vec<Piece>, String> {
    if !template.starts_with('/') {
        return Err(format!("path {template:?} must start with /"));
    }
    let mut pieces = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let literal = &rest[..open];
        let Some(close) = rest[open..].find('}') else {
            return Err(format!("path {template:?}: a {{ is not closed"));
        };
        let inside = &rest[open + 1..open + close];
        if !literal.is_empty() {
            pieces.push(Piece::Literal(literal.to_owned()));
        }
        pieces.push(parse_placeholder(inside, branches)?);
        rest = &rest[open + close + 1..];
    }
    if rest.contains('}')
        || pieces
            .iter()
            .any(|p| matches!(p, Piece::Literal(l) if l.contains('}')))
    {
        return Err(format!("path {template:?}: a }} without {{"));
    }
    if !rest.is_empty() {
        pieces.push(Piece::Literal(rest.to_owned()));
    }
    for piece in &pieces {
        if let Piece::Literal(literal) = piece
            && literal.parse::<PathAndQuery>().is_err()
            && format!("/{literal}").parse::<PathAndQuery>().is_err()
        {
            return Err(format!(
                "path {template:?}: {literal:?} is not a valid path"
            ));
        }
    }
    Ok(pieces)
}

fn parse_placeholder(inside: &str, branches: &[&str]) -> Result<Piece, String> {
    if inside == "user" {
        return Ok(Piece::User);
    }
    if let Some(name) = inside.strip_prefix("path.").filter(|n| !n.is_empty()) {
        return Ok(Piece::Path(name.to_owned()));
    }
    if let Some(name) = inside.strip_prefix("query.").filter(|n| !n.is_empty()) {
        return Ok(Piece::Query(name.to_owned()));
    }
    if let Some(reference) = inside.strip_prefix("branch.") {
        let (name, pointer) = match reference.find('/') {
            Some(slash) => reference.split_at(slash),
            None => (reference, ""),
        };
        let Some(index) = branches.iter().position(|b| *b == name) else {
            return Err(format!("{{{inside}}}: no branch named {name:?}"));
        };
        if pointer.is_empty() {
            return Err(format!(
                "{{{inside}}}: name the field, as {{branch.{name}/id}}"
            ));
        }
        return Ok(Piece::Branch {
            index,
            pointer: pointer.to_owned(),
        });
    }
    Err(format!(
        "{{{inside}}} is not one of {{user}}, {{path.NAME}}, {{query.NAME}}, {{branch.NAME/POINTER}}"
    ))
}

/// A JSON pointer (RFC 6901): empty, or `/`-separated tokens whose `~`
/// escapes are `~0` or `~1`.
fn is_pointer(pointer: &str) -> bool {
    pointer.is_empty()
        || (pointer.starts_with('/')
            && pointer
                .split('~')
                .skip(1)
                .all(|after| after.starts_with('0') || after.starts_with('1')))
}

/// Whether writing at `a` and at `b` would touch the same place: equal, or
/// one inside the other.
fn overlaps(a: &str, b: &str) -> bool {
    let inside = |inner: &str, outer: &str| {
        inner
            .strip_prefix(outer)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    };
    inside(a, b) || inside(b, a)
}

/// A branch on a cycle of `after` edges, if any.
fn find_cycle(branches: &[Branch]) -> Option<usize> {
    // Kahn: what cannot be ordered is on (or behind) a cycle.
    let mut waiting: Vec<usize> = branches.iter().map(|b| b.after.len()).collect();
    let mut ready: Vec<usize> = (0..branches.len()).filter(|&i| waiting[i] == 0).collect();
    let mut ordered = 0;
    while let Some(done) = ready.pop() {
        ordered += 1;
        for (i, branch) in branches.iter().enumerate() {
            if branch.after.contains(&done) {
                waiting[i] -= 1;
                if waiting[i] == 0 {
                    ready.push(i);
                }
            }
        }
    }
    (ordered < branches.len()).then(|| waiting.iter().position(|&w| w > 0))?
}

/// What a request gives the templates.
struct Inputs {
    user: Option<String>,
    path: BTreeMap<String, String>,
    query: Vec<(String, String)>,
}

/// Answers a composite route: calls the branches (each as soon as the
/// branches it uses have answered), merges their answers.
pub(crate) async fn answer(
    snapshot: &Snapshot,
    route: &Route,
    composite: &Composite,
    caller: Option<Principal>,
    client: &Client,
    request: Request,
) -> Result<Response, Problem> {
    let deadline = tokio::time::Instant::now() + route.timeout;
    let inputs = Inputs {
        user: caller.as_ref().map(|c| c.subject.clone()),
        path: composite
            .params
            .at(request.uri().path())
            .map(|found| {
                found
                    .params
                    .iter()
                    .map(|(k, v)| {
                        let decoded = percent_encoding::percent_decode_str(v);
                        (k.to_owned(), decoded.decode_utf8_lossy().into_owned())
                    })
                    .collect()
            })
            .unwrap_or_default(),
        query: request
            .uri()
            .query()
            .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
            .unwrap_or_default(),
    };
    // A composite takes no body.
    let mut headers = proxy::read_and_prepare(request, client, caller, 0)
        .await?
        .headers;
    retain_names(&mut headers, &FORWARDED_HEADERS);
    headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));

    let count = composite.branches.len();
    let mut outcomes: Vec<Option<Result<Value, Problem>>> = vec![None; count];
    let mut started = vec![false; count];
    let mut running = FuturesUnordered::new();
    loop {
        // Start every branch whose inputs are there; one whose input
        // branch failed fails without a call.
        let mut progressed = true;
        while progressed {
            progressed = false;
            for (i, branch) in composite.branches.iter().enumerate() {
                if started[i] || branch.after.iter().any(|&a| outcomes[a].is_none()) {
                    continue;
                }
                started[i] = true;
                progressed = true;
                let target = render(branch, &inputs, &outcomes);
                match target {
                    Ok(target) => {
                        let prepared = Outgoing::get(target, headers.clone());
                        running.push(async move {
                            (i, call(snapshot, route, branch, prepared, deadline).await)
                        });
                    }
                    Err(problem) => {
                        if branch.required {
                            return Err(problem);
                        }
                        outcomes[i] = Some(Err(problem));
                    }
                }
            }
        }
        let Some((i, outcome)) = running.next().await else {
            break;
        };
        if let Err(problem) = &outcome
            && composite.branches[i].required
        {
            return Err(problem.clone());
        }
        outcomes[i] = Some(outcome);
    }
    Ok(merge(composite, outcomes))
}

/// The branch's path and query for this request.
fn render(
    branch: &Branch,
    inputs: &Inputs,
    outcomes: &[Option<Result<Value, Problem>>],
) -> Result<PathAndQuery, Problem> {
    let mut target = String::new();
    for piece in &branch.template {
        let value = match piece {
            Piece::Literal(literal) => {
                target.push_str(literal);
                continue;
            }
            Piece::User => inputs.user.clone().unwrap_or_default(),
            Piece::Path(name) => inputs.path.get(name).cloned().unwrap_or_default(),
            Piece::Query(name) => inputs
                .query
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_default(),
            Piece::Branch { index, pointer } => {
                let answer = match &outcomes[*index] {
                    Some(Ok(answer)) => answer,
                    _ => {
                        return Err(branch_problem(
                            branch,
                            Problem::new(Code::BadGateway)
                                .detail("a branch it uses failed".to_owned()),
                        ));
                    }
                };
                match answer.pointer(pointer) {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Number(n)) => n.to_string(),
                    Some(Value::Bool(b)) => b.to_string(),
                    _ => {
                        return Err(branch_problem(
                            branch,
                            Problem::new(Code::BadGateway).detail(format!(
                                "the answer it uses has no string or number at {pointer}"
                            )),
                        ));
                    }
                }
            }
        };
        target.extend(percent_encoding::utf8_percent_encode(
            &value,
            percent_encoding::NON_ALPHANUMERIC,
        ));
    }
    target.parse().map_err(|_| {
        branch_problem(
            branch,
            Problem::new(Code::Internal).detail("its path is not valid".to_owned()),
        )
    })
}

/// One branch's call, within its timeout and the route's.
async fn call(
    snapshot: &Snapshot,
    route: &Route,
    branch: &Branch,
    prepared: Outgoing,
    route_deadline: tokio::time::Instant,
) -> Result<Value, Problem> {
    let Some(service) = snapshot.services.get(&branch.service) else {
        return Err(branch_problem(branch, Problem::new(Code::Unavailable)));
    };
    let deadline = route_deadline.min(tokio::time::Instant::now() + branch.timeout);
    let attempts = Attempts {
        deadline,
        timeout: branch.timeout.min(route.timeout),
        connect_timeout: route.connect_timeout,
        retries: branch.retries,
        backoff: route.retry_backoff,
        retried: &route.retried,
    };
    let response = proxy::exchange(service, &prepared, true, &attempts)
        .await
        .map_err(|problem| branch_problem(branch, problem))?;
    let status = response.status();
    let body = http_body_util::Limited::new(response.into_body(), BRANCH_BODY_MAX_BYTES);
    let body = match tokio::time::timeout_at(deadline, body.collect()).await {
        Err(_) => {
            let problem = proxy::too_slow(service, attempts.timeout);
            return Err(branch_problem(branch, problem));
        }
        Ok(Err(_)) => {
            let problem = Problem::new(Code::BadGateway).detail(format!(
                "{} sent an answer larger than {BRANCH_BODY_MAX_BYTES} bytes, or broke it off",
                service.name
            ));
            return Err(branch_problem(branch, problem));
        }
        Ok(Ok(collected)) => collected.to_bytes(),
    };
    if !status.is_success() {
        return Err(branch_problem(
            branch,
            upstream_problem(&service.name, status, &body),
        ));
    }
    let answer: Value = serde_json::from_slice(&body).map_err(|_| {
        branch_problem(
            branch,
            Problem::new(Code::BadGateway)
                .detail(format!("{} answered with something not JSON", service.name)),
        )
    })?;
    match &branch.select {
        None => Ok(answer),
        Some(pointer) => answer.pointer(pointer).cloned().ok_or_else(|| {
            branch_problem(
                branch,
                Problem::new(Code::BadGateway)
                    .detail(format!("the answer has nothing at {pointer}")),
            )
        }),
    }
}

/// The problem an upstream's refusal becomes: its own code when it is one
/// of ours with that status (a 404 stays a 404, a 401 a 401); a server
/// error is a bad gateway, unless it says to come back later (503).
fn upstream_problem(service: &str, status: http::StatusCode, body: &[u8]) -> Problem {
    let said: Option<ProblemDocument> = serde_json::from_slice(body).ok();
    let code = said.as_ref().and_then(|doc| {
        Code::ALL
            .iter()
            .copied()
            .find(|c| c.as_str() == doc.code && c.status() == status)
    });
    let passes = |code: Code| {
        status.is_client_error()
            || status == http::StatusCode::SERVICE_UNAVAILABLE && code != Code::Internal
    };
    let detail = said
        .and_then(|doc| doc.detail)
        .unwrap_or_else(|| format!("{service} answered {}", status.as_u16()));
    match code.filter(|&c| passes(c)) {
        Some(code) => Problem::new(code).detail(detail),
        None if status.is_client_error() => Problem::new(Code::BadGateway).detail(format!(
            "{service} refused the call ({}): {detail}",
            status.as_u16()
        )),
        None => Problem::new(Code::BadGateway)
            .detail(format!("{service} failed ({}): {detail}", status.as_u16())),
    }
}

/// `problem`, saying which branch it came from.
fn branch_problem(branch: &Branch, problem: Problem) -> Problem {
    let detail = problem
        .document()
        .detail
        .unwrap_or_else(|| problem.code().title().to_owned());
    let mut named =
        Problem::new(problem.code()).detail(format!("branch {}: {detail}", branch.name));
    for (name, value) in problem.headers() {
        named = named.header(name.clone(), value.clone());
    }
    named
}

/// The merged document: each branch's answer (or an optional one's
/// fallback) at its place, in declaration order; the failed optional
/// branches' problems under `/errors`, and named in [`PARTIAL_HEADER`].
fn merge(composite: &Composite, outcomes: Vec<Option<Result<Value, Problem>>>) -> Response {
    let mut document = Value::Object(Map::new());
    let mut errors = Vec::new();
    let mut failed = Vec::new();
    for (branch, outcome) in composite.branches.iter().zip(outcomes) {
        let value = match outcome {
            Some(Ok(value)) => Some(value),
            Some(Err(problem)) => {
                let mut described = serde_json::to_value(problem.document()).unwrap_or(Value::Null);
                if let Value::Object(fields) = &mut described {
                    fields.insert("branch".into(), Value::String(branch.name.clone()));
                }
                errors.push(described);
                failed.push(branch.name.as_str());
                branch.fallback.clone()
            }
            None => None,
        };
        if let Some(value) = value {
            put(&mut document, &branch.into, value);
        }
    }
    let partial = !failed.is_empty();
    if partial {
        put(&mut document, ERRORS_POINTER, Value::Array(errors));
    }
    let mut response = (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        Body::from(serde_json::to_vec(&document).unwrap_or_default()),
    )
        .into_response();
    if partial && let Ok(names) = HeaderValue::from_str(&failed.join(", ")) {
        response
            .headers_mut()
            .insert(HeaderName::from_static(PARTIAL_HEADER), names);
    }
    response
}

/// The unescaped tokens of a JSON pointer (RFC 6901).
pub(crate) fn pointer_tokens(pointer: &str) -> Vec<String> {
    pointer
        .split('/')
        .skip(1)
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect()
}

/// Sets `value` at `pointer` in `document`, making the objects on the way.
fn put(document: &mut Value, pointer: &str, value: Value) {
    let tokens = pointer_tokens(pointer);
    let mut at = document;
    for token in &tokens[..tokens.len() - 1] {
        if !at.is_object() {
            *at = Value::Object(Map::new());
        }
        at = at
            .as_object_mut()
            .expect("made an object above")
            .entry(token.clone())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    if !at.is_object() {
        *at = Value::Object(Map::new());
    }
    if let (Some(object), Some(last)) = (at.as_object_mut(), tokens.last()) {
        object.insert(last.clone(), value);
    }
}

/// Keeps only the named headers.
fn retain_names(headers: &mut HeaderMap, names: &[&str]) {
    let drop: Vec<HeaderName> = headers
        .keys()
        .filter(|k| !names.contains(&k.as_str()))
        .cloned()
        .collect();
    for name in drop {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_overlap_when_equal_or_nested() {
        assert!(overlaps("/profile", "/profile"));
        assert!(overlaps("/profile", "/profile/name"));
        assert!(overlaps("/profile/name", "/profile"));
        assert!(!overlaps("/profile", "/profiles"));
        assert!(!overlaps("/a/b", "/a/c"));
    }

    #[test]
    fn templates_parse_into_pieces() {
        let pieces =
            parse_template("/api/v1/x/{user}?q={query.q}&id={branch.a/id}", &["a"]).unwrap();
        assert_eq!(
            pieces,
            vec![
                Piece::Literal("/api/v1/x/".into()),
                Piece::User,
                Piece::Literal("?q=".into()),
                Piece::Query("q".into()),
                Piece::Literal("&id=".into()),
                Piece::Branch {
                    index: 0,
                    pointer: "/id".into()
                },
            ]
        );
        for (bad, why) in [
            ("x/{user}", "must start with /"),
            ("/x/{nope}", "is not one of"),
            ("/x/{branch.zz/id}", "no branch named"),
            ("/x/{branch.a}", "name the field"),
            ("/x/{user", "not closed"),
        ] {
            let error = parse_template(bad, &["a"]).unwrap_err();
            assert!(error.contains(why), "{bad}: {error}");
        }
    }

    #[test]
    fn put_makes_the_objects_on_the_way() {
        let mut doc = Value::Object(Map::new());
        put(&mut doc, "/a/b", Value::from(1));
        put(&mut doc, "/a/c~1d", Value::from(2));
        put(&mut doc, "/e", Value::from("x"));
        assert_eq!(doc, serde_json::json!({"a": {"b": 1, "c/d": 2}, "e": "x"}));
    }
}
