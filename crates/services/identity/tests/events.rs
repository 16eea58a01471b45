//! What identity tells others, as a consumer on the bus sees it.

mod common;

use std::time::Duration;

use bus::broker::DeadLetterReport;
use bus::{TailFrom, TypeFilter};
use common::{spawn_app, unique_email};
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

    let broker = bus::open(
        "",
        app.data_dir.path(),
        kit::clock::system(),
        DeadLetterReport::default(),
    )
    .await
    .unwrap();
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
}
