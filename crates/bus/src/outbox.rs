//! Transactional outbox: a service writes the events of a change in the
//! same SQL transaction as the change ([`stage`]), so that both commit or
//! neither does; a [`Relay`] publishes them to the broker in order and
//! deletes them once the broker has them.
//!
//! The service's migrations create the tables (same shape on SQLite and
//! PostgreSQL; `seq` is `INTEGER PRIMARY KEY AUTOINCREMENT` / `BIGSERIAL`):
//!
//! ```sql
//! CREATE TABLE outbox (seq ..., event_id TEXT NOT NULL UNIQUE, body TEXT NOT NULL,
//!                      created_at_ms BIGINT NOT NULL);
//! CREATE TABLE outbox_lease (id INTEGER PRIMARY KEY, holder TEXT NOT NULL,
//!                            until_ms BIGINT NOT NULL);
//! INSERT INTO outbox_lease (id, holder, until_ms) VALUES (1, '', 0);
//! ```
//!
//! With several replicas, one relay at a time holds the lease (a row,
//! renewed while it works, taken over when it expires), so events leave in
//! the order they were written. A relay that dies between publishing and
//! deleting leaves rows that the next one publishes again: the broker
//! de-duplicates on the event id.

use std::sync::Arc;
use std::time::Duration;

use kit::clock::SharedClock;
use sqlx::{Any, AnyConnection, AnyPool, Row, Transaction};
use tokio::sync::Notify;

use crate::broker::SharedBroker;
use crate::event::CloudEvent;

/// Rows published per round trip to the broker.
pub const RELAY_BATCH_MAX: i64 = 256;
/// How long a relay's lease lasts without renewal.
pub const RELAY_LEASE: Duration = Duration::from_secs(5);
/// An idle relay looks at the table at least this often (other replicas'
/// commits are only seen by looking).
pub const RELAY_IDLE_POLL: Duration = Duration::from_millis(20);
/// After a failure (store or broker down), wait this long before retrying.
pub const RELAY_RETRY_DELAY: Duration = Duration::from_millis(500);

/// Writes `event` into the outbox inside the caller's transaction.
pub async fn stage(
    conn: &mut AnyConnection,
    event: &CloudEvent,
    now_ms: u64,
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO outbox (event_id, body, created_at_ms) VALUES ($1, $2, $3)")
        .bind(event.id.clone())
        .bind(event.to_json())
        .bind(now_ms as i64)
        .execute(conn)
        .await?;
    Ok(())
}

/// A service's SQL pool together with its outbox: what its store commits
/// changes through, so that events are staged in the same transaction and
/// the relay is woken after the commit.
#[derive(Clone)]
pub struct Outbox {
    pool: AnyPool,
    clock: SharedClock,
    wake: Arc<Notify>,
}

impl Outbox {
    pub fn new(pool: AnyPool, clock: SharedClock) -> Self {
        Self {
            pool,
            clock,
            wake: Arc::new(Notify::new()),
        }
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// Stages `events` in `tx`, commits, and wakes this process's relay.
    pub async fn commit(
        &self,
        mut tx: Transaction<'static, Any>,
        events: &[CloudEvent],
    ) -> Result<(), sqlx::Error> {
        let now = self.clock.now_ms();
        for event in events {
            stage(&mut tx, event, now).await?;
        }
        tx.commit().await?;
        if !events.is_empty() {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// The relay that publishes this outbox to `broker`.
    pub fn relay(&self, broker: SharedBroker) -> Relay {
        Relay {
            pool: self.pool.clone(),
            broker,
            clock: self.clock.clone(),
            holder: uuid::Uuid::new_v4().to_string(),
            wake: self.wake.clone(),
        }
    }
}

/// Publishes a service's outbox.
pub struct Relay {
    pool: AnyPool,
    broker: SharedBroker,
    clock: SharedClock,
    holder: String,
    wake: Arc<Notify>,
}

impl Relay {
    async fn hold_lease(&self) -> Result<bool, sqlx::Error> {
        let now = self.clock.now_ms() as i64;
        let taken = sqlx::query(
            "UPDATE outbox_lease SET holder = $1, until_ms = $2
             WHERE id = 1 AND (holder = $1 OR until_ms < $3)",
        )
        .bind(self.holder.clone())
        .bind(now + RELAY_LEASE.as_millis() as i64)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(taken.rows_affected() == 1)
    }

    /// Publishes one batch; the number of events relayed.
    async fn relay_batch(&self) -> Result<usize, String> {
        let rows = sqlx::query("SELECT seq, body FROM outbox ORDER BY seq LIMIT $1")
            .bind(RELAY_BATCH_MAX)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| e.to_string())?;
        let Some(last) = rows.last() else {
            return Ok(0);
        };
        let last_seq: i64 = last.get("seq");
        let mut events = Vec::with_capacity(rows.len());
        for row in &rows {
            match serde_json::from_str::<CloudEvent>(row.get("body")) {
                Ok(event) => events.push(event),
                Err(error) => {
                    tracing::error!(seq = row.get::<i64, _>("seq"), %error, "unreadable outbox row skipped")
                }
            }
        }
        self.broker
            .publish(&events)
            .await
            .map_err(|e| e.to_string())?;
        sqlx::query("DELETE FROM outbox WHERE seq <= $1")
            .bind(last_seq)
            .execute(&self.pool)
            .await
            .map_err(|e| e.to_string())?;
        Ok(rows.len())
    }

    /// Relays until `shutdown` resolves.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            let pause = match self.hold_lease().await {
                Ok(true) => match self.relay_batch().await {
                    Ok(n) if n as i64 == RELAY_BATCH_MAX => Duration::ZERO,
                    Ok(_) => RELAY_IDLE_POLL,
                    Err(error) => {
                        tracing::warn!(%error, "outbox relay failed; retrying");
                        RELAY_RETRY_DELAY
                    }
                },
                Ok(false) => RELAY_LEASE / 2,
                Err(error) => {
                    tracing::warn!(%error, "outbox lease unavailable; retrying");
                    RELAY_RETRY_DELAY
                }
            };
            tokio::select! {
                _ = &mut shutdown => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }
}
