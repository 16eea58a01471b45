//! The transactional outbox and idempotent consumers, on SQLite and (when
//! `TESSERA_TEST_POSTGRES_URL` names a server) PostgreSQL.

mod support;

use std::sync::Arc;
use std::time::Duration;

use bus::broker::DeadLetterReport;
use bus::memory::MemoryBroker;
use bus::outbox::{Outbox, stage};
use bus::{Broker, CloudEvent, SubscribeOptions, TypeFilter};
use serde_json::json;
use sqlx::AnyPool;
use support::{SQLITE_DDL, sqlite_pool};

async fn postgres_pool() -> Option<AnyPool> {
    let admin = kit::testing::backend_url("TESSERA_TEST_POSTGRES_URL")?;
    let url = kit::testing::fresh_postgres_database(&admin).await;
    let pool = kit::sql::connect_any(&url, 4).await.unwrap();
    for ddl in SQLITE_DDL {
        let ddl = ddl.replace("INTEGER PRIMARY KEY AUTOINCREMENT", "BIGSERIAL PRIMARY KEY");
        sqlx::query(&ddl).execute(&pool).await.unwrap();
    }
    Some(pool)
}

fn note_event(i: u64) -> CloudEvent {
    CloudEvent::new(
        "notes",
        "notes.note.created.v1",
        &format!("n{}", i % 4),
        json!({"i": i}),
        1_800_000_000_000,
    )
}

/// Writes a note and its event in one transaction; commits or rolls back.
async fn write_note(pool: &AnyPool, i: u64, commit: bool) {
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("INSERT INTO notes (id) VALUES ($1)")
        .bind(format!("note-{i}"))
        .execute(&mut *tx)
        .await
        .unwrap();
    stage(&mut tx, &note_event(i), 0).await.unwrap();
    if commit {
        tx.commit().await.unwrap();
    } else {
        tx.rollback().await.unwrap();
    }
}

async fn relayed_in_order_exactly_once(pool: AnyPool) {
    let broker = Arc::new(MemoryBroker::new(
        kit::clock::system(),
        DeadLetterReport::default(),
    ));
    for i in 0..50 {
        write_note(&pool, i, i % 10 != 9).await;
    }
    // Two replicas' relays at once: the lease lets one work at a time.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    for _ in 0..2 {
        let relay = Outbox::new(pool.clone(), kit::clock::system()).relay(broker.clone());
        let mut stopped = stopped.clone();
        tokio::spawn(relay.run(async move {
            let _ = stopped.wait_for(|s| *s).await;
        }));
    }
    let mut sub = broker
        .subscribe(SubscribeOptions::new("notes-test", TypeFilter::all()))
        .await
        .unwrap();
    let mut got = Vec::new();
    while let Ok(Ok(d)) = tokio::time::timeout(Duration::from_secs(2), sub.next()).await {
        got.push(d.event.data["i"].as_u64().unwrap());
        d.ack().await.unwrap();
    }
    let _ = stop.send(true);
    let committed: Vec<u64> = (0..50).filter(|i| i % 10 != 9).collect();
    let mut sorted = got.clone();
    sorted.sort();
    assert_eq!(
        sorted, committed,
        "every committed event once, no rolled-back one"
    );
    for subject in 0..4 {
        let of_subject: Vec<_> = got.iter().filter(|i| *i % 4 == subject).collect();
        assert!(
            of_subject.windows(2).all(|w| w[0] < w[1]),
            "in order: {of_subject:?}"
        );
    }
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 0, "relayed rows are removed");
}

async fn redelivery_changes_nothing(pool: AnyPool) {
    let mut tx = pool.begin().await.unwrap();
    assert!(
        bus::idempotency::first_time(&mut tx, "g", "e1", 0)
            .await
            .unwrap()
    );
    tx.commit().await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    assert!(
        !bus::idempotency::first_time(&mut tx, "g", "e1", 0)
            .await
            .unwrap()
    );
    assert!(
        bus::idempotency::first_time(&mut tx, "other-group", "e1", 0)
            .await
            .unwrap()
    );
    tx.rollback().await.unwrap();
}

#[tokio::test]
async fn sqlite_outbox() {
    let dir = tempfile::tempdir().unwrap();
    relayed_in_order_exactly_once(sqlite_pool(dir.path()).await).await;
}

#[tokio::test]
async fn sqlite_idempotency() {
    let dir = tempfile::tempdir().unwrap();
    redelivery_changes_nothing(sqlite_pool(dir.path()).await).await;
}

#[tokio::test]
async fn postgres_outbox_and_idempotency() {
    let Some(pool) = postgres_pool().await else {
        return;
    };
    redelivery_changes_nothing(pool.clone()).await;
    relayed_in_order_exactly_once(pool).await;
}
