//! One suite for every profile store: memory, SQLite, and PostgreSQL when
//! `TESSERA_TEST_POSTGRES_URL` names a server.

use std::sync::Arc;

use bus::broker::DeadLetterReport;
use bus::memory::MemoryBroker;
use users::domain::{Profile, ProfilePatch};
use users::store::{MemoryProfileStore, ProfileStore, SqlProfileStore};

async fn conformance(store: &dyn ProfileStore) {
    store.ping().await.unwrap();
    let ada = Profile::registered(
        "01a210d3-f91f-76db-ba7d-f3c58371376b",
        "ada@example.com",
        "Ada",
        1,
    );
    store.create_once(&ada, "g", "event-1").await.unwrap();
    let mut other = ada.clone();
    other.display_name = "Overwritten?".into();
    store.create_once(&other, "g", "event-1").await.unwrap();
    store.create_once(&other, "g", "event-2").await.unwrap();
    assert_eq!(
        store.get(&ada.id).await.unwrap().as_ref(),
        Some(&ada),
        "created once, never overwritten"
    );
    assert!(store.get("nobody").await.unwrap().is_none());

    let patch = ProfilePatch {
        display_name: Some("Ada L".into()),
        ..ProfilePatch::default()
    };
    let next = ada.patched(patch, 2).unwrap();
    assert!(store.update(&next, 1, &[]).await.unwrap());
    assert!(
        !store.update(&next, 1, &[]).await.unwrap(),
        "stale version refused"
    );
    assert_eq!(store.get(&ada.id).await.unwrap().unwrap().version, 2);

    assert!(store.delete(&ada.id, &[]).await.unwrap());
    assert!(!store.delete(&ada.id, &[]).await.unwrap());
    assert!(store.get(&ada.id).await.unwrap().is_none());
}

#[tokio::test]
async fn memory_store() {
    let broker = Arc::new(MemoryBroker::new(
        kit::clock::system(),
        DeadLetterReport::default(),
    ));
    conformance(&MemoryProfileStore::new(broker)).await;
}

#[tokio::test]
async fn sqlite_store() {
    let dir = tempfile::tempdir().unwrap();
    let url = kit::sql::sqlite_url(&dir.path().join("users.db"));
    conformance(
        &SqlProfileStore::connect(&url, 2, kit::clock::system())
            .await
            .unwrap(),
    )
    .await;
}

#[tokio::test]
async fn postgres_store() {
    let Some(admin_url) = kit::testing::backend_url("TESSERA_TEST_POSTGRES_URL") else {
        return;
    };
    let url = kit::testing::fresh_postgres_database(&admin_url).await;
    conformance(
        &SqlProfileStore::connect(&url, 2, kit::clock::system())
            .await
            .unwrap(),
    )
    .await;
}
