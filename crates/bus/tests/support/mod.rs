//! What the outbox tests and the events benchmark share: a service's
//! database with the tables the outbox and idempotent consumers need (the
//! services create them with their migrations).

#![allow(dead_code)]

use sqlx::AnyPool;

pub const SQLITE_DDL: &[&str] = &[
    "CREATE TABLE outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL UNIQUE, body TEXT NOT NULL, created_at_ms BIGINT NOT NULL)",
    "CREATE TABLE outbox_lease (id INTEGER PRIMARY KEY, holder TEXT NOT NULL, until_ms BIGINT NOT NULL)",
    "INSERT INTO outbox_lease (id, holder, until_ms) VALUES (1, '', 0)",
    "CREATE TABLE processed_events (grp TEXT NOT NULL, event_id TEXT NOT NULL, processed_at_ms BIGINT NOT NULL, PRIMARY KEY (grp, event_id))",
    "CREATE TABLE notes (id TEXT PRIMARY KEY)",
];

/// A SQLite service database in `dir`.
pub async fn sqlite_pool(dir: &std::path::Path) -> AnyPool {
    let url = kit::sql::sqlite_url(&dir.join("service.db"));
    let pool = kit::sql::connect_any(&url, 4).await.unwrap();
    for ddl in SQLITE_DDL {
        sqlx::query(ddl).execute(&pool).await.unwrap();
    }
    pool
}
