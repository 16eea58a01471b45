//! Idempotent consumers: a handler records the event id it processed in
//! the same SQL transaction as the effect, so a redelivery (at-least-once)
//! changes nothing. The service's migrations create:
//!
//! ```sql
//! CREATE TABLE processed_events (grp TEXT NOT NULL, event_id TEXT NOT NULL,
//!     processed_at_ms BIGINT NOT NULL, PRIMARY KEY (grp, event_id));
//! ```

use sqlx::AnyConnection;

/// Records that `group` processed `event_id`; false if it already had, in
/// which case the caller rolls back and acks.
pub async fn first_time(
    conn: &mut AnyConnection,
    group: &str,
    event_id: &str,
    now_ms: u64,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO processed_events (grp, event_id, processed_at_ms) VALUES ($1, $2, $3)
         ON CONFLICT (grp, event_id) DO NOTHING",
    )
    .bind(group.to_owned())
    .bind(event_id.to_owned())
    .bind(now_ms as i64)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}
