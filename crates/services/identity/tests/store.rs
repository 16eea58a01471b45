//! One suite for every account store: memory, SQLite, and PostgreSQL when
//! `TESSERA_TEST_POSTGRES_URL` names a server.

use identity::domain::{Account, AccountId, DisplayName, Email, Role};
use identity::store::{AccountStore, MemoryAccountStore, SqlAccountStore, StoreError};

fn account(email: &str) -> Account {
    Account {
        id: AccountId::generate(),
        email: Email::parse(email).unwrap(),
        display_name: DisplayName::parse("Ada").unwrap(),
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
        roles: vec![Role::parse("user").unwrap()],
        created_at_ms: 1_700_000_000_000,
    }
}

async fn conformance(store: &dyn AccountStore) {
    store.ping().await.unwrap();
    let ada = account("ada@example.com");
    store.insert(&ada, &[]).await.unwrap();
    assert_eq!(store.by_id(&ada.id).await.unwrap().as_ref(), Some(&ada));
    assert_eq!(
        store.by_email(&ada.email).await.unwrap().as_ref(),
        Some(&ada)
    );
    assert!(store.by_id(&AccountId::generate()).await.unwrap().is_none());
    assert!(
        store
            .by_email(&Email::parse("x@example.com").unwrap())
            .await
            .unwrap()
            .is_none()
    );

    let twin = account("ada@example.com");
    assert!(matches!(
        store.insert(&twin, &[]).await,
        Err(StoreError::DuplicateEmail)
    ));
    assert!(
        store.by_id(&twin.id).await.unwrap().is_none(),
        "nothing half-written"
    );

    let roles = vec![Role::parse("user").unwrap(), Role::parse("admin").unwrap()];
    assert!(store.set_roles(&ada.id, &roles).await.unwrap());
    assert_eq!(store.by_id(&ada.id).await.unwrap().unwrap().roles, roles);
    assert!(
        !store
            .set_roles(&AccountId::generate(), &roles)
            .await
            .unwrap()
    );

    let grace = account("grace@example.com");
    store.insert(&grace, &[]).await.unwrap();
    assert!(store.delete_once(&grace.id, "g", "e1", &[]).await.unwrap());
    assert!(store.by_id(&grace.id).await.unwrap().is_none());
    assert!(
        !store.delete_once(&ada.id, "g", "e1", &[]).await.unwrap(),
        "an event already processed by the group changes nothing"
    );
    assert!(store.by_id(&ada.id).await.unwrap().is_some());
    assert!(
        !store.delete_once(&grace.id, "g", "e2", &[]).await.unwrap(),
        "nothing left to delete"
    );
    let alan = account("alan@example.com");
    store.insert(&alan, &[]).await.unwrap();
    assert!(
        store
            .delete_once(&alan.id, "other", "e1", &[])
            .await
            .unwrap(),
        "event ids are remembered per group"
    );
}

#[tokio::test]
async fn memory_store() {
    let broker = std::sync::Arc::new(bus::memory::MemoryBroker::new(
        kit::clock::system(),
        bus::broker::DeadLetterReport::default(),
    ));
    conformance(&MemoryAccountStore::new(broker)).await;
}

#[tokio::test]
async fn sqlite_store() {
    let dir = tempfile::tempdir().unwrap();
    let url = kit::sql::sqlite_url(&dir.path().join("identity.db"));
    let store = SqlAccountStore::connect(&url, 2, kit::clock::system())
        .await
        .unwrap();
    conformance(&store).await;
    // Migrations are idempotent: a second start on the same file works.
    let again = SqlAccountStore::connect(&url, 2, kit::clock::system())
        .await
        .unwrap();
    assert!(
        again
            .by_email(&Email::parse("ada@example.com").unwrap())
            .await
            .unwrap()
            .is_some()
    );
}

#[tokio::test]
async fn postgres_store() {
    let Some(admin_url) = kit::testing::backend_url("TESSERA_TEST_POSTGRES_URL") else {
        return;
    };
    let url = kit::testing::fresh_postgres_database(&admin_url).await;
    let store = SqlAccountStore::connect(&url, 2, kit::clock::system())
        .await
        .unwrap();
    conformance(&store).await;
}

/// Replicas of a role start together on one embedded file: every one of
/// them must come up, whichever runs the migrations.
#[tokio::test]
async fn replicas_starting_at_once_on_one_sqlite_file_all_succeed() {
    for _ in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let url = kit::sql::sqlite_url(&dir.path().join("identity.db"));
        let starts = (0..4).map(|_| SqlAccountStore::connect(&url, 2, kit::clock::system()));
        for outcome in futures_util::future::join_all(starts).await {
            outcome.unwrap();
        }
    }
}
