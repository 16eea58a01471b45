//! One conformance suite for every key-value adapter: memory, embedded
//! SQLite, and Redis when `TESSERA_TEST_REDIS_URL` names a server.

use std::sync::Arc;
use std::time::Duration;

use kit::kv::{KeyValue, MemoryKv, RedisKv, SqliteKv};

const SHORT: Duration = Duration::from_millis(300);
const LONG: Duration = Duration::from_secs(60);

async fn conformance(kv: Arc<dyn KeyValue>) {
    let p = uuid::Uuid::new_v4().simple().to_string();
    let key = |k: &str| format!("{p}:{k}");
    kv.ping().await.unwrap();

    assert_eq!(kv.get(&key("a")).await.unwrap(), None);
    kv.put(&key("a"), "1", LONG).await.unwrap();
    assert_eq!(kv.get(&key("a")).await.unwrap().as_deref(), Some("1"));
    kv.put(&key("a"), "2", LONG).await.unwrap();
    assert_eq!(kv.get(&key("a")).await.unwrap().as_deref(), Some("2"));
    kv.delete(&key("a")).await.unwrap();
    assert_eq!(kv.get(&key("a")).await.unwrap(), None);

    assert!(kv.put_if_absent(&key("claim"), "x", SHORT).await.unwrap());
    assert!(!kv.put_if_absent(&key("claim"), "y", SHORT).await.unwrap());
    assert_eq!(kv.get(&key("claim")).await.unwrap().as_deref(), Some("x"));

    let first = kv.incr(&key("n"), SHORT).await.unwrap();
    assert_eq!(first.count, 1);
    assert!(first.resets_in <= SHORT && first.resets_in > Duration::ZERO);
    assert_eq!(kv.incr(&key("n"), SHORT).await.unwrap().count, 2);
    assert_eq!(kv.counter(&key("n")).await.unwrap().unwrap().count, 2);
    assert_eq!(kv.counter(&key("none")).await.unwrap(), None);

    kv.put(&key("ttl"), "v", SHORT).await.unwrap();
    tokio::time::sleep(SHORT + Duration::from_millis(100)).await;
    assert_eq!(kv.get(&key("ttl")).await.unwrap(), None, "value expired");
    assert!(
        kv.put_if_absent(&key("claim"), "z", SHORT).await.unwrap(),
        "claim expired"
    );
    assert_eq!(kv.counter(&key("n")).await.unwrap(), None, "window closed");
    assert_eq!(
        kv.incr(&key("n"), SHORT).await.unwrap().count,
        1,
        "new window"
    );

    // Concurrent claims: exactly one wins; concurrent increments: none lost.
    let claims = (0..16).map(|_| {
        let kv = kv.clone();
        let k = key("race");
        tokio::spawn(async move { kv.put_if_absent(&k, "w", LONG).await.unwrap() })
    });
    let mut winners = 0;
    for claim in claims {
        winners += claim.await.unwrap() as u32;
    }
    assert_eq!(winners, 1);
    let incrs: Vec<_> = (0..32)
        .map(|_| {
            let kv = kv.clone();
            let k = key("count");
            tokio::spawn(async move { kv.incr(&k, LONG).await.unwrap() })
        })
        .collect();
    for incr in incrs {
        incr.await.unwrap();
    }
    assert_eq!(kv.counter(&key("count")).await.unwrap().unwrap().count, 32);
}

#[tokio::test]
async fn memory_adapter() {
    conformance(Arc::new(MemoryKv::new(kit::clock::system()))).await;
}

#[tokio::test]
async fn sqlite_adapter() {
    let dir = tempfile::tempdir().unwrap();
    let kv = SqliteKv::open(&dir.path().join("kv.db"), kit::clock::system())
        .await
        .unwrap();
    conformance(Arc::new(kv)).await;
}

#[tokio::test]
async fn sqlite_adapter_shared_by_two_openers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.db");
    let a = SqliteKv::open(&path, kit::clock::system()).await.unwrap();
    let b = SqliteKv::open(&path, kit::clock::system()).await.unwrap();
    assert!(a.put_if_absent("k", "a", LONG).await.unwrap());
    assert!(!b.put_if_absent("k", "b", LONG).await.unwrap());
    a.incr("n", LONG).await.unwrap();
    assert_eq!(b.incr("n", LONG).await.unwrap().count, 2);
}

#[tokio::test]
async fn redis_adapter() {
    let Some(url) = kit::testing::backend_url("TESSERA_TEST_REDIS_URL") else {
        return;
    };
    let kv = RedisKv::connect(&url, "kv-conformance").await.unwrap();
    conformance(Arc::new(kv)).await;
}
