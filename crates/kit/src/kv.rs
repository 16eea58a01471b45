//! The key-value port: values and counters that expire. Sessions, refresh
//! tokens and rate-limit windows live here.
//!
//! Adapters: [`MemoryKv`] (tests, simulation), [`SqliteKv`] (the embedded
//! default; one file that every process of a role on one machine shares),
//! [`RedisKv`] (when configured).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use sqlx::{Row, SqlitePool};

use crate::clock::SharedClock;

#[derive(Debug, thiserror::Error)]
#[error("key-value store: {0}")]
pub struct KvError(String);

impl KvError {
    fn from(error: impl std::fmt::Display) -> Self {
        Self(error.to_string())
    }
}

/// A fixed-window counter's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counter {
    pub count: u64,
    /// Until the window closes and the count starts again from zero.
    pub resets_in: Duration,
}

#[async_trait]
pub trait KeyValue: Send + Sync + 'static {
    async fn get(&self, key: &str) -> Result<Option<String>, KvError>;
    async fn put(&self, key: &str, value: &str, ttl: Duration) -> Result<(), KvError>;
    /// Stores `value` only if `key` holds nothing live; true if it stored.
    /// Atomic across every process sharing the store.
    async fn put_if_absent(&self, key: &str, value: &str, ttl: Duration) -> Result<bool, KvError>;
    async fn delete(&self, key: &str) -> Result<(), KvError>;
    /// Adds one to a counter whose window of `window` starts at its first
    /// increment.
    async fn incr(&self, key: &str, window: Duration) -> Result<Counter, KvError>;
    /// The counter's state, if its window is open.
    async fn counter(&self, key: &str) -> Result<Option<Counter>, KvError>;
    async fn ping(&self) -> Result<(), KvError>;
}

pub type SharedKv = Arc<dyn KeyValue>;

/// Opens the store named by `url`: `redis://...`, or `sqlite` (or empty)
/// for the embedded file at `embedded_path`.
pub async fn open(
    url: &str,
    embedded_path: &Path,
    namespace: &str,
    clock: SharedClock,
) -> Result<SharedKv, KvError> {
    if url.starts_with("redis://") || url.starts_with("rediss://") {
        Ok(Arc::new(RedisKv::connect(url, namespace).await?))
    } else if url.is_empty() || url == "sqlite" {
        Ok(Arc::new(SqliteKv::open(embedded_path, clock).await?))
    } else if url == "memory" {
        Ok(Arc::new(MemoryKv::new(clock)))
    } else {
        Err(KvError(format!(
            "unsupported key-value URL {url:?} (expected redis://..., sqlite or memory)"
        )))
    }
}

fn ms(duration: Duration) -> u64 {
    duration.as_millis() as u64
}

/// In-process map, for tests and simulation.
pub struct MemoryKv {
    clock: SharedClock,
    entries: Mutex<HashMap<String, (String, u64)>>,
}

/// The memory adapter drops expired entries once it holds this many.
const MEMORY_SWEEP_AT_ENTRIES: usize = 10_000;

impl MemoryKv {
    pub fn new(clock: SharedClock) -> Self {
        Self {
            clock,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut HashMap<String, (String, u64)>, u64) -> T) -> T {
        let now = self.clock.now_ms();
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= MEMORY_SWEEP_AT_ENTRIES {
            entries.retain(|_, (_, expires)| *expires > now);
        }
        f(&mut entries, now)
    }
}

#[async_trait]
impl KeyValue for MemoryKv {
    async fn get(&self, key: &str) -> Result<Option<String>, KvError> {
        Ok(self.with(|e, now| {
            e.get(key)
                .filter(|(_, expires)| *expires > now)
                .map(|(v, _)| v.clone())
        }))
    }

    async fn put(&self, key: &str, value: &str, ttl: Duration) -> Result<(), KvError> {
        self.with(|e, now| e.insert(key.to_owned(), (value.to_owned(), now + ms(ttl))));
        Ok(())
    }

    async fn put_if_absent(&self, key: &str, value: &str, ttl: Duration) -> Result<bool, KvError> {
        Ok(self.with(|e, now| {
            if e.get(key).is_some_and(|(_, expires)| *expires > now) {
                return false;
            }
            e.insert(key.to_owned(), (value.to_owned(), now + ms(ttl)));
            true
        }))
    }

    async fn delete(&self, key: &str) -> Result<(), KvError> {
        self.with(|e, _| e.remove(key));
        Ok(())
    }

    async fn incr(&self, key: &str, window: Duration) -> Result<Counter, KvError> {
        Ok(self.with(|e, now| {
            let entry = e
                .entry(key.to_owned())
                .or_insert_with(|| ("0".to_owned(), now + ms(window)));
            if entry.1 <= now {
                *entry = ("0".to_owned(), now + ms(window));
            }
            let count = entry.0.parse::<u64>().unwrap_or(0) + 1;
            entry.0 = count.to_string();
            Counter {
                count,
                resets_in: Duration::from_millis(entry.1 - now),
            }
        }))
    }

    async fn counter(&self, key: &str) -> Result<Option<Counter>, KvError> {
        Ok(self.with(|e, now| {
            e.get(key)
                .filter(|(_, expires)| *expires > now)
                .map(|(v, expires)| Counter {
                    count: v.parse().unwrap_or(0),
                    resets_in: Duration::from_millis(expires - now),
                })
        }))
    }

    async fn ping(&self) -> Result<(), KvError> {
        Ok(())
    }
}

/// A table in a SQLite file. Every statement is a single atomic upsert, so
/// processes sharing the file never lose an increment or a claim.
pub struct SqliteKv {
    pool: SqlitePool,
    clock: SharedClock,
}

/// Connections per process to the embedded key-value file.
const SQLITE_KV_CONNECTIONS_MAX: u32 = 4;
/// How often expired rows are deleted.
const SQLITE_KV_SWEEP_INTERVAL: Duration = Duration::from_secs(60);

impl SqliteKv {
    pub async fn open(path: &Path, clock: SharedClock) -> Result<Self, KvError> {
        let pool = crate::sql::connect_sqlite(path, SQLITE_KV_CONNECTIONS_MAX)
            .await
            .map_err(KvError::from)?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS kv (
                key TEXT PRIMARY KEY NOT NULL,
                value TEXT NOT NULL,
                expires_at_ms INTEGER NOT NULL
            ) WITHOUT ROWID",
        )
        .execute(&pool)
        .await
        .map_err(KvError::from)?;
        let sweeper = (pool.clone(), clock.clone());
        tokio::spawn(async move {
            let (pool, clock) = sweeper;
            let mut tick = tokio::time::interval(SQLITE_KV_SWEEP_INTERVAL);
            loop {
                tick.tick().await;
                if pool.is_closed() {
                    break;
                }
                let _ = sqlx::query("DELETE FROM kv WHERE expires_at_ms <= ?1")
                    .bind(clock.now_ms() as i64)
                    .execute(&pool)
                    .await;
            }
        });
        Ok(Self { pool, clock })
    }

    fn now(&self) -> i64 {
        self.clock.now_ms() as i64
    }
}

#[async_trait]
impl KeyValue for SqliteKv {
    async fn get(&self, key: &str) -> Result<Option<String>, KvError> {
        sqlx::query_scalar("SELECT value FROM kv WHERE key = ?1 AND expires_at_ms > ?2")
            .bind(key)
            .bind(self.now())
            .fetch_optional(&self.pool)
            .await
            .map_err(KvError::from)
    }

    async fn put(&self, key: &str, value: &str, ttl: Duration) -> Result<(), KvError> {
        sqlx::query(
            "INSERT INTO kv (key, value, expires_at_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at_ms = excluded.expires_at_ms",
        )
        .bind(key)
        .bind(value)
        .bind(self.now() + ms(ttl) as i64)
        .execute(&self.pool)
        .await
        .map_err(KvError::from)?;
        Ok(())
    }

    async fn put_if_absent(&self, key: &str, value: &str, ttl: Duration) -> Result<bool, KvError> {
        let now = self.now();
        let done = sqlx::query(
            "INSERT INTO kv (key, value, expires_at_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at_ms = excluded.expires_at_ms
             WHERE kv.expires_at_ms <= ?4",
        )
        .bind(key)
        .bind(value)
        .bind(now + ms(ttl) as i64)
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(KvError::from)?;
        Ok(done.rows_affected() == 1)
    }

    async fn delete(&self, key: &str) -> Result<(), KvError> {
        sqlx::query("DELETE FROM kv WHERE key = ?1")
            .bind(key)
            .execute(&self.pool)
            .await
            .map_err(KvError::from)?;
        Ok(())
    }

    async fn incr(&self, key: &str, window: Duration) -> Result<Counter, KvError> {
        let now = self.now();
        // Every SET expression sees the old row, so both CASEs agree on
        // whether the window had closed.
        let row = sqlx::query(
            "INSERT INTO kv (key, value, expires_at_ms) VALUES (?1, '1', ?2)
             ON CONFLICT (key) DO UPDATE SET
               value = CASE WHEN kv.expires_at_ms <= ?3 THEN '1'
                            ELSE CAST(CAST(kv.value AS INTEGER) + 1 AS TEXT) END,
               expires_at_ms = CASE WHEN kv.expires_at_ms <= ?3 THEN excluded.expires_at_ms
                                    ELSE kv.expires_at_ms END
             RETURNING CAST(value AS INTEGER) AS count, expires_at_ms",
        )
        .bind(key)
        .bind(now + ms(window) as i64)
        .bind(now)
        .fetch_one(&self.pool)
        .await
        .map_err(KvError::from)?;
        counter_from(row.get("count"), row.get("expires_at_ms"), now)
    }

    async fn counter(&self, key: &str) -> Result<Option<Counter>, KvError> {
        let now = self.now();
        let row = sqlx::query(
            "SELECT CAST(value AS INTEGER) AS count, expires_at_ms FROM kv
             WHERE key = ?1 AND expires_at_ms > ?2",
        )
        .bind(key)
        .bind(now)
        .fetch_optional(&self.pool)
        .await
        .map_err(KvError::from)?;
        row.map(|row| counter_from(row.get("count"), row.get("expires_at_ms"), now))
            .transpose()
    }

    async fn ping(&self) -> Result<(), KvError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(KvError::from)?;
        Ok(())
    }
}

fn counter_from(count: i64, expires_at_ms: i64, now: i64) -> Result<Counter, KvError> {
    Ok(Counter {
        count: u64::try_from(count).map_err(KvError::from)?,
        resets_in: Duration::from_millis(expires_at_ms.saturating_sub(now).max(0) as u64),
    })
}

/// Redis, shared by every replica on every machine. Keys are prefixed with
/// a namespace so that services sharing a server never collide.
pub struct RedisKv {
    connection: ConnectionManager,
    namespace: String,
    incr_script: redis::Script,
}

impl RedisKv {
    pub async fn connect(url: &str, namespace: &str) -> Result<Self, KvError> {
        let client = redis::Client::open(url).map_err(KvError::from)?;
        let connection = ConnectionManager::new(client)
            .await
            .map_err(KvError::from)?;
        Ok(Self {
            connection,
            namespace: format!("tessera:{namespace}:"),
            incr_script: redis::Script::new(
                "local count = redis.call('INCR', KEYS[1])
                 if count == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
                 return {count, redis.call('PTTL', KEYS[1])}",
            ),
        })
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.namespace)
    }
}

fn ttl_ms(ttl: Duration) -> u64 {
    ms(ttl).max(1)
}

#[async_trait]
impl KeyValue for RedisKv {
    async fn get(&self, key: &str) -> Result<Option<String>, KvError> {
        redis::cmd("GET")
            .arg(self.key(key))
            .query_async(&mut self.connection.clone())
            .await
            .map_err(KvError::from)
    }

    async fn put(&self, key: &str, value: &str, ttl: Duration) -> Result<(), KvError> {
        redis::cmd("SET")
            .arg(self.key(key))
            .arg(value)
            .arg("PX")
            .arg(ttl_ms(ttl))
            .query_async::<()>(&mut self.connection.clone())
            .await
            .map_err(KvError::from)
    }

    async fn put_if_absent(&self, key: &str, value: &str, ttl: Duration) -> Result<bool, KvError> {
        let stored: Option<String> = redis::cmd("SET")
            .arg(self.key(key))
            .arg(value)
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms(ttl))
            .query_async(&mut self.connection.clone())
            .await
            .map_err(KvError::from)?;
        Ok(stored.is_some())
    }

    async fn delete(&self, key: &str) -> Result<(), KvError> {
        redis::cmd("DEL")
            .arg(self.key(key))
            .query_async::<()>(&mut self.connection.clone())
            .await
            .map_err(KvError::from)
    }

    async fn incr(&self, key: &str, window: Duration) -> Result<Counter, KvError> {
        let (count, pttl): (i64, i64) = self
            .incr_script
            .key(self.key(key))
            .arg(ttl_ms(window))
            .invoke_async(&mut self.connection.clone())
            .await
            .map_err(KvError::from)?;
        counter_from(count, pttl.max(0), 0)
    }

    async fn counter(&self, key: &str) -> Result<Option<Counter>, KvError> {
        let key = self.key(key);
        let (count, pttl): (Option<i64>, i64) = redis::pipe()
            .cmd("GET")
            .arg(&key)
            .cmd("PTTL")
            .arg(&key)
            .query_async(&mut self.connection.clone())
            .await
            .map_err(KvError::from)?;
        match count {
            Some(count) if pttl > 0 => counter_from(count, pttl, 0).map(Some),
            _ => Ok(None),
        }
    }

    async fn ping(&self) -> Result<(), KvError> {
        redis::cmd("PING")
            .query_async::<String>(&mut self.connection.clone())
            .await
            .map_err(KvError::from)?;
        Ok(())
    }
}
