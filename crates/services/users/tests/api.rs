//! The users service through HTTP, with a real identity beside it on one
//! data directory and its embedded event log, as `tessera up` runs them.

use std::time::{Duration, Instant};

use bus::broker::DeadLetterReport;
use bus::{TailFrom, TypeFilter};
use kit::config::Config;
use kit::testing::{TestServer, assert_problem};
use serde_json::{Value, json};

const PASSWORD: &str = "correct horse battery staple";

struct System {
    identity: TestServer,
    users: TestServer,
    http: reqwest::Client,
    data_dir: tempfile::TempDir,
}

async fn spawn_system() -> System {
    let data_dir = tempfile::tempdir().unwrap();
    let base = format!(
        "data_dir = {:?}\n[log]\nfilter = \"warn\"\n",
        data_dir.path().display().to_string()
    );
    let clock = kit::clock::system();
    let identity_config = Config::from_toml(&base).unwrap();
    let mut identity = identity::open(&identity_config, clock.clone())
        .await
        .unwrap();
    identity.start_background();
    let identity = TestServer::start(identity::router(
        &identity,
        &identity_config.common().unwrap(),
        clock.clone(),
    ))
    .await;
    let users_config = Config::from_toml(&format!(
        "{base}[auth]\njwks_url = {:?}\n",
        identity.url("/.well-known/jwks.json")
    ))
    .unwrap();
    let mut users = users::open(&users_config, clock.clone()).await.unwrap();
    users.start_background();
    let users = TestServer::start(users::router(
        &users,
        &users_config.common().unwrap(),
        clock,
    ))
    .await;
    System {
        identity,
        users,
        http: reqwest::Client::new(),
        data_dir,
    }
}

impl System {
    /// Registers, logs in, and waits for the profile: (account id, token).
    async fn member(&self) -> (String, String) {
        let email = format!("u{}@example.com", uuid::Uuid::new_v4().simple());
        let account: Value = self
            .http
            .post(self.identity.url("/api/v1/auth/register"))
            .json(&json!({"email": email, "password": PASSWORD, "display_name": "Ada"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let tokens: Value = self
            .http
            .post(self.identity.url("/api/v1/auth/token"))
            .json(&json!({"email": email, "password": PASSWORD}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let token = tokens["access_token"].as_str().unwrap().to_owned();
        let registered = Instant::now();
        loop {
            if self.me(&token).await.status() == 200 {
                break;
            }
            assert!(
                registered.elapsed() < Duration::from_secs(1),
                "profile not there within 1 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (account["id"].as_str().unwrap().to_owned(), token)
    }

    /// The first event of `event_type` on the shared embedded log.
    async fn first_event(&self, event_type: &str) -> bus::CloudEvent {
        let broker = bus::open(
            "",
            self.data_dir.path(),
            kit::clock::system(),
            DeadLetterReport::default(),
        )
        .await
        .unwrap();
        let types = TypeFilter::parse(&[event_type]).unwrap();
        let mut log = broker.tail(types, TailFrom::Start).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), log.next())
            .await
            .unwrap()
            .unwrap()
    }

    async fn me(&self, token: &str) -> reqwest::Response {
        self.http
            .get(self.users.url("/api/v1/users/me"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    async fn patch(&self, token: &str, if_match: Option<&str>, body: Value) -> reqwest::Response {
        let mut request = self
            .http
            .patch(self.users.url("/api/v1/users/me"))
            .bearer_auth(token)
            .json(&body);
        if let Some(tag) = if_match {
            request = request.header("if-match", tag);
        }
        request.send().await.unwrap()
    }
}

#[tokio::test]
async fn registration_creates_a_profile_within_a_second() {
    let system = spawn_system().await;
    let (id, token) = system.member().await;
    let response = system.me(&token).await;
    assert_eq!(response.headers()["etag"], "\"1\"");
    let profile: Value = response.json().await.unwrap();
    assert_eq!(profile["id"], id);
    assert_eq!(profile["display_name"], "Ada");
    assert_eq!(profile["addresses"], json!([]));
}

#[tokio::test]
async fn patch_with_if_match_changes_and_publishes() {
    let system = spawn_system().await;
    let (id, token) = system.member().await;
    let address =
        json!({"line1": "1 High St", "city": "London", "postal_code": "N1 1AA", "country": "GB"});
    let response = system
        .patch(&token, Some("\"1\""), json!({"display_name": "Ada L", "addresses": [address], "preferences": {"language": "en"}}))
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["etag"], "\"2\"");
    let profile: Value = response.json().await.unwrap();
    assert_eq!(profile["display_name"], "Ada L");
    assert_eq!(profile["addresses"][0]["country"], "GB");

    assert_problem(
        system
            .patch(&token, Some("\"1\""), json!({"display_name": "Stale"}))
            .await,
        412,
        "precondition_failed",
    )
    .await;
    assert_problem(
        system
            .patch(&token, Some("garbage"), json!({"display_name": "X"}))
            .await,
        412,
        "precondition_failed",
    )
    .await;
    assert_eq!(
        system
            .patch(&token, Some("*"), json!({"display_name": "Any"}))
            .await
            .status(),
        200
    );

    let updated = system.first_event(users::events::USER_UPDATED).await;
    assert_eq!(updated.subject, id);
    assert_eq!(updated.data["version"], 2);
    assert_matches_schema(&updated);
}

/// Checks an event's data against the JSON Schema checked in for its type.
fn assert_matches_schema(event: &bus::CloudEvent) {
    let path = format!(
        "{}/events/{}.schema.json",
        env!("CARGO_MANIFEST_DIR"),
        event.event_type
    );
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let validator = jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap();
    let errors: Vec<String> = validator
        .iter_errors(&event.data)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "{}: {errors:?}", event.event_type);
}

#[tokio::test]
async fn fields_the_user_may_not_write_are_422_and_change_nothing() {
    let system = spawn_system().await;
    let (_, token) = system.member().await;
    for body in [
        json!({"id": "someone-else"}),
        json!({"email": "new@example.com"}),
        json!({"roles": ["admin"]}),
        json!({"display_name": "Ok", "surprise": true}),
        json!({"display_name": ""}),
        json!({"addresses": [{"line1": "x", "city": "y", "postal_code": "z", "country": "gb"}]}),
        json!({"display_name": 5}),
    ] {
        assert_problem(
            system.patch(&token, None, body.clone()).await,
            422,
            "validation_failed",
        )
        .await;
    }
    let response = system.me(&token).await;
    assert_eq!(response.headers()["etag"], "\"1\"", "nothing changed");
}

#[tokio::test]
async fn bad_requests_are_problems() {
    let system = spawn_system().await;
    let (_, token) = system.member().await;
    assert_problem(system.me("not-a-token").await, 401, "invalid_token").await;
    let no_type = system
        .http
        .patch(system.users.url("/api/v1/users/me"))
        .bearer_auth(&token)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_problem(no_type, 415, "unsupported_media_type").await;
    let bad_json = system
        .http
        .patch(system.users.url("/api/v1/users/me"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await
        .unwrap();
    assert_problem(bad_json, 400, "malformed_request").await;
    let huge = json!({"display_name": "x".repeat(70 * 1024)});
    assert_problem(
        system.patch(&token, None, huge).await,
        413,
        "payload_too_large",
    )
    .await;
    let wrong_method = system
        .http
        .put(system.users.url("/api/v1/users/me"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_problem(wrong_method, 405, "method_not_allowed").await;
}

/// Every endpoint, every kind of bad input: a problem with the right
/// status, and the profile as it was.
#[tokio::test]
async fn every_endpoint_refuses_bad_input_with_a_problem() {
    let system = spawn_system().await;
    let (id, token) = system.member().await;
    let endpoints = [
        (reqwest::Method::GET, "/api/v1/users/me".to_owned()),
        (reqwest::Method::PATCH, "/api/v1/users/me".to_owned()),
        (reqwest::Method::DELETE, "/api/v1/users/me".to_owned()),
        (reqwest::Method::GET, format!("/api/v1/users/{id}")),
    ];
    for (method, path) in &endpoints {
        let url = system.users.url(path);
        let anonymous = system.http.request(method.clone(), &url).send().await;
        assert_problem(anonymous.unwrap(), 401, "invalid_token").await;
        let forged = system
            .http
            .request(method.clone(), &url)
            .bearer_auth(format!("{token}x"))
            .send()
            .await;
        assert_problem(forged.unwrap(), 401, "invalid_token").await;
    }

    for (body, field) in [
        (json!({"display_name": ""}), "/display_name"),
        (json!({"display_name": "x".repeat(101)}), "/display_name"),
        (
            json!({"addresses": [{"line1": "1 Main St", "city": "Oslo", "postal_code": "0150", "country": "norway"}]}),
            "/addresses/0/country",
        ),
        (
            json!({"preferences": {"language": "not a tag"}}),
            "/preferences/language",
        ),
        (json!({"display_name": 7}), ""),
        (json!([]), ""),
        // serde would read these structs from arrays, field by position.
        (json!(["Bo"]), ""),
        (json!({"preferences": []}), ""),
        (
            json!({"addresses": [["Home", "1 Main St", null, "Oslo", "0150", "NO"]]}),
            "",
        ),
    ] {
        let response = system.patch(&token, None, body.clone()).await;
        let problem = assert_problem(response, 422, "validation_failed").await;
        if !field.is_empty() {
            assert!(
                problem["errors"]
                    .as_array()
                    .is_some_and(|errors| errors.iter().any(|e| e["pointer"] == field)),
                "{body}: {problem}"
            );
        }
    }
    let invalid_and_stale = system
        .patch(&token, Some("\"999\""), json!({"display_name": ""}))
        .await;
    assert_problem(invalid_and_stale, 422, "validation_failed").await;
    for tag in ["W/\"1\"", "1", "\"x\"", "\"999\"", ""] {
        let response = system
            .patch(&token, Some(tag), json!({"display_name": "Bo"}))
            .await;
        assert_problem(response, 412, "precondition_failed").await;
    }
    let me = system.me(&token).await;
    assert_eq!(me.headers()["etag"], "\"1\"", "nothing changed");
    let me: Value = me.json().await.unwrap();
    assert_eq!(me["display_name"], "Ada");
}

#[tokio::test]
async fn only_admins_read_other_profiles() {
    let system = spawn_system().await;
    let (ada, ada_token) = system.member().await;
    let (bob, _) = system.member().await;
    let get = |id: &str, token: &str| {
        system
            .http
            .get(system.users.url(&format!("/api/v1/users/{id}")))
            .bearer_auth(token.to_owned())
            .send()
    };
    assert_eq!(
        get(&ada, &ada_token).await.unwrap().status(),
        200,
        "your own id"
    );
    assert_problem(get(&bob, &ada_token).await.unwrap(), 404, "not_found").await;
    assert_problem(
        get("no-such-id", &ada_token).await.unwrap(),
        404,
        "not_found",
    )
    .await;

    let config = Config::from_toml(&format!(
        "data_dir = {:?}",
        system.data_dir.path().display().to_string()
    ))
    .unwrap();
    identity::create_user(
        &config,
        "root@example.com",
        "a long admin passphrase",
        &["admin".into()],
    )
    .await
    .unwrap();
    let tokens: Value = system
        .http
        .post(system.identity.url("/api/v1/auth/token"))
        .json(&json!({"email": "root@example.com", "password": "a long admin passphrase"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let admin = tokens["access_token"].as_str().unwrap();
    let profile: Value = get(&bob, admin).await.unwrap().json().await.unwrap();
    assert_eq!(profile["id"], bob);
}

#[tokio::test]
async fn delete_erases_and_publishes() {
    let system = spawn_system().await;
    let (id, token) = system.member().await;
    let erase = || {
        system
            .http
            .delete(system.users.url("/api/v1/users/me"))
            .bearer_auth(&token)
            .send()
    };
    assert_eq!(erase().await.unwrap().status(), 204);
    assert_problem(system.me(&token).await, 404, "not_found").await;
    assert_problem(erase().await.unwrap(), 404, "not_found").await;
    let erased = system.first_event(users::events::USER_ERASED).await;
    assert_eq!(
        (erased.subject.as_str(), erased.data["id"].as_str()),
        (id.as_str(), Some(id.as_str()))
    );
    assert_matches_schema(&erased);
}
