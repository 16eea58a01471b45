//! What identity tells others, as a consumer on the bus sees it.

mod common;

use std::time::Duration;

use bus::broker::DeadLetterReport;
use bus::{TailFrom, TypeFilter};
use common::{PASSWORD, spawn_app, spawn_app_with, unique_email};
use serde_json::Value;

fn schema(event_type: &str) -> jsonschema::Validator {
    let path = format!(
        "{}/events/{event_type}.schema.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap()
}

/// The broker the app publishes to (the embedded log in its data dir).
async fn bus_of(app: &common::TestApp) -> bus::SharedBroker {
    let dir = app.data_dir.path();
    bus::open("", dir, kit::clock::system(), DeadLetterReport::default())
        .await
        .unwrap()
}

#[tokio::test]
async fn registration_publishes_user_registered_once_through_the_outbox() {
    let app = spawn_app().await;
    let email = unique_email();
    let account: Value = app.register(&email).await.json().await.unwrap();
    assert_eq!(
        app.register(&email).await.status(),
        409,
        "a refused registration publishes nothing"
    );
    app.register(&unique_email()).await;

    let broker = bus_of(&app).await;
    let mut log = broker
        .tail(TypeFilter::all(), TailFrom::Start)
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), log.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.event_type, identity::events::USER_REGISTERED);
    assert_eq!(first.source, "identity");
    assert_eq!(first.subject, account["id"].as_str().unwrap());
    assert_eq!(first.data["email"], email);
    let validator = schema(identity::events::USER_REGISTERED);
    let errors: Vec<String> = validator
        .iter_errors(&first.data)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "{errors:?}");
    let second = tokio::time::timeout(Duration::from_secs(5), log.next())
        .await
        .unwrap()
        .unwrap();
    assert_ne!(second.data["email"], email, "the 409 left no event behind");
}

async fn wait_for<T>(what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(found) = probe().await {
            return found;
        }
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn erased(id: &str) -> bus::CloudEvent {
    bus::CloudEvent::new(
        "users",
        identity::events::USERS_USER_ERASED,
        id,
        serde_json::json!({ "id": id }),
        kit::clock::system().now_ms(),
    )
}

#[tokio::test]
async fn an_erased_user_loses_the_account_and_every_way_to_sign_in() {
    let app = spawn_app().await;
    let email = unique_email();
    let account: Value = app.register(&email).await.json().await.unwrap();
    let id = account["id"].as_str().unwrap();
    let tokens: Value = app.login(&email, PASSWORD).await.json().await.unwrap();
    let broker = bus_of(&app).await;
    let erasure = erased(id);
    broker
        .publish(std::slice::from_ref(&erasure))
        .await
        .unwrap();

    wait_for("the login to be refused", async || {
        (app.login(&email, PASSWORD).await.status() == 401).then_some(())
    })
    .await;
    assert_eq!(app.refresh(&tokens["refresh_token"]).await.status(), 401);
    // The same erasure again, and another one for the same user: one
    // deletion, one event.
    let mut again = erasure.clone();
    again.id = "a-redelivery-with-a-new-id".into();
    broker.publish(&[erasure, again]).await.unwrap();
    let mut log = broker
        .tail(
            TypeFilter::parse(&[identity::events::USER_DELETED]).unwrap(),
            TailFrom::Start,
        )
        .await
        .unwrap();
    let deleted = tokio::time::timeout(Duration::from_secs(5), log.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (deleted.subject.as_str(), deleted.source.as_str()),
        (id, "identity")
    );
    let validator = schema(identity::events::USER_DELETED);
    assert!(validator.is_valid(&deleted.data), "{}", deleted.data);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(300), log.next())
            .await
            .is_err(),
        "one deletion event only"
    );
    let lag = wait_for("the erasures to be consumed", async || {
        let lag = broker.lag().await.unwrap();
        let group = lag
            .into_iter()
            .find(|l| l.group == identity::events::ERASURES_GROUP)?;
        (group.pending == 0).then_some(group)
    })
    .await;
    assert_eq!(lag.dead_letters, 0);
}

#[tokio::test]
async fn an_unreadable_erasure_is_dead_lettered_and_deletes_nothing() {
    let app = spawn_app_with("[identity]\nconsumer_max_deliveries = 1").await;
    let email = unique_email();
    assert_eq!(app.register(&email).await.status(), 201);
    let broker = bus_of(&app).await;
    broker.publish(&[erased("not-a-uuid")]).await.unwrap();
    let dead = wait_for("a dead letter", async || {
        let mut dead = broker
            .dead_letters(Some(identity::events::ERASURES_GROUP), 10)
            .await
            .unwrap();
        dead.pop()
    })
    .await;
    assert_eq!(dead.reason, "bad account id: not an account id");
    assert_eq!(app.login(&email, PASSWORD).await.status(), 200);
}

#[test]
fn every_schema_rejects_what_it_should() {
    let validator = schema(identity::events::USER_REGISTERED);
    let valid = serde_json::json!({
        "id": "01a210d3-f91f-76db-ba7d-f3c58371376b",
        "email": "ada@example.com",
        "display_name": "Ada",
        "roles": ["user"]
    });
    assert!(validator.is_valid(&valid));
    let mut extra = valid.clone();
    extra["password_hash"] = "leak".into();
    assert!(!validator.is_valid(&extra), "no field beyond the contract");
    let mut missing = valid.clone();
    missing.as_object_mut().unwrap().remove("email");
    assert!(!validator.is_valid(&missing));

    let deleted = schema(identity::events::USER_DELETED);
    assert!(deleted.is_valid(&serde_json::json!({"id": "01a210d3-f91f-76db-ba7d-f3c58371376b"})));
    assert!(!deleted.is_valid(&serde_json::json!({"id": "01a210d3-f91f-76db-ba7d-f3c58371376b", "email": "ada@example.com"})));
    assert!(!deleted.is_valid(&serde_json::json!({})));
}
