//! The embedded broker: an append-only event log in one SQLite file in the
//! data directory, with a cursor and an inbox per consumer group. Every
//! process of one machine opens the same file; SQLite's write lock makes
//! each claim, ack and publish atomic across them, and WAL makes the log
//! survive `kill -9` of any of them. No server to run.
//!
//! A claim runs in one write transaction: move newly published matching
//! events into the group's inbox, turn expired leases into retries (or dead
//! letters), then lease the first deliverable entries, skipping any subject
//! with an earlier entry still pending, so that each subject is delivered
//! in order.

use std::collections::{HashSet, VecDeque};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use kit::clock::SharedClock;
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, Sqlite, SqlitePool, Transaction};
use tokio::sync::Notify;

use crate::broker::{
    Backoff, Broker, BusError, Claim, DeadLetter, DeadLetterReport, Delivery, EventStream,
    GroupLag, PollingSubscription, Position, Settle, SubscribeOptions, Subscription, TailFrom,
    TypeFilter,
};
use crate::event::CloudEvent;

/// An idle subscriber looks for work at least this often; other processes'
/// publishes are only seen by looking.
pub const IDLE_POLL_INTERVAL: Duration = Duration::from_millis(10);
/// Events moved from the log into a group's inbox per claim.
const MATERIALISE_BATCH_MAX: i64 = 1000;
/// Inbox entries examined per claim when looking for deliverable ones.
const INBOX_SCAN_MAX: i64 = 4096;
const CONNECTIONS_MAX: u32 = 4;

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        type TEXT NOT NULL,
        subject TEXT NOT NULL,
        body TEXT NOT NULL,
        published_at_ms INTEGER NOT NULL
    )",
    "CREATE TABLE IF NOT EXISTS groups (
        name TEXT PRIMARY KEY NOT NULL,
        types TEXT NOT NULL,
        max_deliveries INTEGER NOT NULL,
        ack_wait_ms INTEGER NOT NULL,
        backoff_first_ms INTEGER NOT NULL,
        backoff_max_ms INTEGER NOT NULL,
        cursor INTEGER NOT NULL DEFAULT 0
    )",
    "CREATE TABLE IF NOT EXISTS inbox (
        grp TEXT NOT NULL,
        seq INTEGER NOT NULL,
        subject TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        visible_at_ms INTEGER NOT NULL DEFAULT 0,
        lease_until_ms INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (grp, seq)
    ) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS dead_letters (
        grp TEXT NOT NULL,
        seq INTEGER NOT NULL,
        attempts INTEGER NOT NULL,
        reason TEXT NOT NULL,
        dead_at_ms INTEGER NOT NULL,
        PRIMARY KEY (grp, seq)
    ) WITHOUT ROWID",
];

#[derive(Clone)]
pub struct EmbeddedBroker {
    inner: Arc<Inner>,
}

struct Inner {
    pool: SqlitePool,
    clock: SharedClock,
    report: DeadLetterReport,
    /// Wakes this process's subscribers early after its own publishes and
    /// settles; other processes' are found by polling.
    changed: Notify,
}

/// A group's settings as stored, so that any process settling a delivery
/// applies the same backoff and limit.
struct GroupSettings {
    cursor: i64,
    types: TypeFilter,
    max_deliveries: u32,
    ack_wait_ms: i64,
    backoff: Backoff,
}

impl GroupSettings {
    fn from_row(row: &SqliteRow) -> Result<Self, BusError> {
        let types: Vec<String> =
            serde_json::from_str(row.get("types")).map_err(BusError::unavailable)?;
        let patterns: Vec<&str> = types.iter().map(String::as_str).collect();
        Ok(Self {
            cursor: row.get("cursor"),
            types: TypeFilter::parse(&patterns)?,
            max_deliveries: row.get::<i64, _>("max_deliveries") as u32,
            ack_wait_ms: row.get("ack_wait_ms"),
            backoff: Backoff {
                first: Duration::from_millis(row.get::<i64, _>("backoff_first_ms") as u64),
                max: Duration::from_millis(row.get::<i64, _>("backoff_max_ms") as u64),
            },
        })
    }
}

type Tx = Transaction<'static, Sqlite>;

fn db(error: sqlx::Error) -> BusError {
    BusError::unavailable(error)
}

fn decode(body: &str) -> Result<CloudEvent, BusError> {
    serde_json::from_str(body).map_err(BusError::unavailable)
}

impl EmbeddedBroker {
    pub async fn open(
        path: &Path,
        clock: SharedClock,
        report: DeadLetterReport,
    ) -> Result<Self, BusError> {
        let pool = kit::sql::connect_sqlite(path, CONNECTIONS_MAX)
            .await
            .map_err(db)?;
        for statement in SCHEMA {
            sqlx::query(statement).execute(&pool).await.map_err(db)?;
        }
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                clock,
                report,
                changed: Notify::new(),
            }),
        })
    }
}

impl Inner {
    fn now(&self) -> i64 {
        self.clock.now_ms() as i64
    }

    /// Starts a write transaction and takes SQLite's write lock at once (a
    /// no-op update), so that waiting for it goes through the busy timeout
    /// instead of failing on a lock upgrade. Returns the group's settings.
    async fn lock_group(&self, group: &str) -> Result<(Tx, Option<GroupSettings>), BusError> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        let row = sqlx::query(
            "UPDATE groups SET cursor = cursor WHERE name = ?1
             RETURNING cursor, types, max_deliveries, ack_wait_ms, backoff_first_ms, backoff_max_ms",
        )
        .bind(group)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
        let settings = row.as_ref().map(GroupSettings::from_row).transpose()?;
        Ok((tx, settings))
    }

    /// Cheap read: is there anything for this group to do?
    async fn has_work(&self, group: &str) -> Result<bool, BusError> {
        let now = self.now();
        sqlx::query_scalar(
            "SELECT (SELECT COALESCE(MAX(seq), 0) FROM events) > (SELECT cursor FROM groups WHERE name = ?1)
                 OR EXISTS (SELECT 1 FROM inbox WHERE grp = ?1 AND (
                        (lease_until_ms = 0 AND visible_at_ms <= ?2)
                     OR (lease_until_ms != 0 AND lease_until_ms <= ?2)))",
        )
        .bind(group)
        .bind(now)
        .fetch_one(&self.pool)
        .await
        .map_err(db)
    }

    /// A failed delivery inside `tx`: scheduled for retry, or moved to the
    /// dead letters (returned, to be reported once committed).
    async fn fail(
        &self,
        tx: &mut Tx,
        group: &str,
        settings: &GroupSettings,
        seq: i64,
        attempts: u32,
        reason: &str,
    ) -> Result<Option<(CloudEvent, u32)>, BusError> {
        let now = self.now();
        if attempts < settings.max_deliveries {
            let visible_at = now + settings.backoff.after(attempts).as_millis() as i64;
            sqlx::query(
                "UPDATE inbox SET lease_until_ms = 0, visible_at_ms = ?3 WHERE grp = ?1 AND seq = ?2",
            )
            .bind(group)
            .bind(seq)
            .bind(visible_at)
            .execute(&mut **tx)
            .await
            .map_err(db)?;
            return Ok(None);
        }
        sqlx::query("DELETE FROM inbox WHERE grp = ?1 AND seq = ?2")
            .bind(group)
            .bind(seq)
            .execute(&mut **tx)
            .await
            .map_err(db)?;
        sqlx::query(
            "INSERT OR REPLACE INTO dead_letters (grp, seq, attempts, reason, dead_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .bind(group)
        .bind(seq)
        .bind(attempts as i64)
        .bind(reason)
        .bind(now)
        .execute(&mut **tx)
        .await
        .map_err(db)?;
        let body: String = sqlx::query_scalar("SELECT body FROM events WHERE seq = ?1")
            .bind(seq)
            .fetch_one(&mut **tx)
            .await
            .map_err(db)?;
        Ok(Some((decode(&body)?, attempts)))
    }

    async fn claim_batch(
        self: &Arc<Self>,
        group: &str,
        batch_max: usize,
    ) -> Result<Vec<Delivery>, BusError> {
        if !self.has_work(group).await? {
            return Ok(Vec::new());
        }
        let (mut tx, settings) = self.lock_group(group).await?;
        let Some(settings) = settings else {
            return Err(BusError::Closed);
        };
        let now = self.now();

        let fresh = sqlx::query(
            "SELECT seq, type, subject FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )
        .bind(settings.cursor)
        .bind(MATERIALISE_BATCH_MAX)
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
        if let Some(last) = fresh.last() {
            for row in &fresh {
                if settings.types.matches(row.get("type")) {
                    sqlx::query(
                        "INSERT OR IGNORE INTO inbox (grp, seq, subject) VALUES (?1, ?2, ?3)",
                    )
                    .bind(group)
                    .bind(row.get::<i64, _>("seq"))
                    .bind(row.get::<String, _>("subject"))
                    .execute(&mut *tx)
                    .await
                    .map_err(db)?;
                }
            }
            sqlx::query("UPDATE groups SET cursor = ?2 WHERE name = ?1")
                .bind(group)
                .bind(last.get::<i64, _>("seq"))
                .execute(&mut *tx)
                .await
                .map_err(db)?;
        }

        let expired: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT seq, attempts FROM inbox WHERE grp = ?1 AND lease_until_ms != 0 AND lease_until_ms <= ?2",
        )
        .bind(group)
        .bind(now)
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
        let mut dead = Vec::new();
        for (seq, attempts) in expired {
            let reason = "not acknowledged within ack_wait";
            if let Some(letter) = self
                .fail(&mut tx, group, &settings, seq, attempts as u32, reason)
                .await?
            {
                dead.push((letter, reason));
            }
        }

        let entries = sqlx::query(
            "SELECT seq, subject, attempts, visible_at_ms, lease_until_ms FROM inbox
             WHERE grp = ?1 ORDER BY seq LIMIT ?2",
        )
        .bind(group)
        .bind(INBOX_SCAN_MAX)
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
        let mut blocked = HashSet::new();
        let mut claimed = Vec::new();
        for entry in &entries {
            if !blocked.insert(entry.get::<String, _>("subject")) {
                continue;
            }
            let free = entry.get::<i64, _>("lease_until_ms") == 0
                && entry.get::<i64, _>("visible_at_ms") <= now;
            if free {
                claimed.push((
                    entry.get::<i64, _>("seq"),
                    entry.get::<i64, _>("attempts") as u32 + 1,
                ));
                if claimed.len() >= batch_max {
                    break;
                }
            }
        }
        let mut deliveries = Vec::with_capacity(claimed.len());
        for (seq, attempt) in claimed {
            sqlx::query(
                "UPDATE inbox SET attempts = ?3, lease_until_ms = ?4 WHERE grp = ?1 AND seq = ?2",
            )
            .bind(group)
            .bind(seq)
            .bind(attempt as i64)
            .bind(now + settings.ack_wait_ms)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
            let body: String = sqlx::query_scalar("SELECT body FROM events WHERE seq = ?1")
                .bind(seq)
                .fetch_one(&mut *tx)
                .await
                .map_err(db)?;
            let settle = EmbeddedSettle {
                broker: Arc::clone(self),
                group: group.to_owned(),
                seq,
                attempt,
            };
            deliveries.push(Delivery::new(decode(&body)?, attempt, Box::new(settle)));
        }
        tx.commit().await.map_err(db)?;
        for ((event, attempts), reason) in dead {
            self.report.report(group, &event, attempts, reason);
        }
        Ok(deliveries)
    }
}

#[async_trait]
impl Claim for Inner {
    async fn claim(
        this: &Arc<Self>,
        group: &str,
        batch_max: usize,
    ) -> Result<Vec<Delivery>, BusError> {
        this.claim_batch(group, batch_max).await
    }

    fn changed(&self) -> &Notify {
        &self.changed
    }
}

struct EmbeddedSettle {
    broker: Arc<Inner>,
    group: String,
    seq: i64,
    /// Settles only this delivery: a late answer to an expired lease changes
    /// nothing.
    attempt: u32,
}

#[async_trait]
impl Settle for EmbeddedSettle {
    async fn ack(self: Box<Self>) -> Result<(), BusError> {
        sqlx::query(
            "DELETE FROM inbox WHERE grp = ?1 AND seq = ?2 AND attempts = ?3 AND lease_until_ms != 0",
        )
        .bind(&self.group)
        .bind(self.seq)
        .bind(self.attempt as i64)
        .execute(&self.broker.pool)
        .await
        .map_err(db)?;
        self.broker.changed.notify_waiters();
        Ok(())
    }

    async fn nack(self: Box<Self>, reason: &str) -> Result<(), BusError> {
        let (mut tx, settings) = self.broker.lock_group(&self.group).await?;
        let Some(settings) = settings else {
            return Ok(());
        };
        let current: Option<i64> = sqlx::query_scalar(
            "SELECT seq FROM inbox WHERE grp = ?1 AND seq = ?2 AND attempts = ?3 AND lease_until_ms != 0",
        )
        .bind(&self.group)
        .bind(self.seq)
        .bind(self.attempt as i64)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
        let mut dead = None;
        if current.is_some() {
            dead = self
                .broker
                .fail(
                    &mut tx,
                    &self.group,
                    &settings,
                    self.seq,
                    self.attempt,
                    reason,
                )
                .await?;
        }
        tx.commit().await.map_err(db)?;
        if let Some((event, attempts)) = dead {
            self.broker
                .report
                .report(&self.group, &event, attempts, reason);
        }
        self.broker.changed.notify_waiters();
        Ok(())
    }
}

#[async_trait]
impl Broker for EmbeddedBroker {
    async fn publish(&self, events: &[CloudEvent]) -> Result<(), BusError> {
        let now = self.inner.now();
        let mut tx = self.inner.pool.begin().await.map_err(db)?;
        for event in events {
            let body = event.to_bounded_json()?;
            sqlx::query(
                "INSERT INTO events (id, type, subject, body, published_at_ms) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(&event.id)
            .bind(&event.event_type)
            .bind(&event.subject)
            .bind(body)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        }
        tx.commit().await.map_err(db)?;
        self.inner.changed.notify_waiters();
        Ok(())
    }

    async fn subscribe(
        &self,
        options: SubscribeOptions,
    ) -> Result<Box<dyn Subscription>, BusError> {
        options.validate()?;
        sqlx::query(
            "INSERT INTO groups (name, types, max_deliveries, ack_wait_ms, backoff_first_ms, backoff_max_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (name) DO UPDATE SET types = excluded.types,
                max_deliveries = excluded.max_deliveries, ack_wait_ms = excluded.ack_wait_ms,
                backoff_first_ms = excluded.backoff_first_ms, backoff_max_ms = excluded.backoff_max_ms",
        )
        .bind(&options.group)
        .bind(serde_json::to_string(options.types.patterns()).map_err(BusError::unavailable)?)
        .bind(options.max_deliveries as i64)
        .bind(options.ack_wait.as_millis() as i64)
        .bind(options.backoff.first.as_millis() as i64)
        .bind(options.backoff.max.as_millis() as i64)
        .execute(&self.inner.pool)
        .await
        .map_err(db)?;
        Ok(Box::new(PollingSubscription {
            source: self.inner.clone(),
            group: options.group,
            batch_max: options.batch_max,
            idle: IDLE_POLL_INTERVAL,
            ready: VecDeque::new(),
        }))
    }

    async fn lag(&self) -> Result<Vec<GroupLag>, BusError> {
        let groups = sqlx::query(
            "SELECT name, cursor, types, max_deliveries, ack_wait_ms, backoff_first_ms, backoff_max_ms,
                    (SELECT COUNT(*) FROM inbox WHERE grp = name) AS inbox,
                    (SELECT COUNT(*) FROM dead_letters WHERE grp = name) AS dead
             FROM groups ORDER BY name",
        )
        .fetch_all(&self.inner.pool)
        .await
        .map_err(db)?;
        let mut lags = Vec::with_capacity(groups.len());
        for row in groups {
            let settings = GroupSettings::from_row(&row)?;
            let unread: Vec<(String, i64)> =
                sqlx::query_as("SELECT type, COUNT(*) FROM events WHERE seq > ?1 GROUP BY type")
                    .bind(settings.cursor)
                    .fetch_all(&self.inner.pool)
                    .await
                    .map_err(db)?;
            let unread: i64 = unread
                .iter()
                .filter(|(t, _)| settings.types.matches(t))
                .map(|(_, n)| n)
                .sum();
            lags.push(GroupLag {
                group: row.get("name"),
                pending: (row.get::<i64, _>("inbox") + unread) as u64,
                dead_letters: row.get::<i64, _>("dead") as u64,
            });
        }
        Ok(lags)
    }

    async fn dead_letters(
        &self,
        group: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, BusError> {
        let rows = sqlx::query(
            "SELECT d.grp, d.seq, d.attempts, d.reason, d.dead_at_ms, e.body
             FROM dead_letters d JOIN events e ON e.seq = d.seq
             WHERE ?1 IS NULL OR d.grp = ?1
             ORDER BY d.dead_at_ms, d.seq LIMIT ?2",
        )
        .bind(group)
        .bind(limit as i64)
        .fetch_all(&self.inner.pool)
        .await
        .map_err(db)?;
        rows.iter()
            .map(|row| {
                Ok(DeadLetter {
                    seq: row.get::<i64, _>("seq") as u64,
                    group: row.get("grp"),
                    attempts: row.get::<i64, _>("attempts") as u32,
                    reason: row.get("reason"),
                    dead_at_ms: row.get::<i64, _>("dead_at_ms") as u64,
                    event: decode(row.get("body"))?,
                })
            })
            .collect()
    }

    async fn replay_dead_letter(&self, group: &str, seq: u64) -> Result<bool, BusError> {
        let (mut tx, _) = self.inner.lock_group(group).await?;
        let removed = sqlx::query("DELETE FROM dead_letters WHERE grp = ?1 AND seq = ?2")
            .bind(group)
            .bind(seq as i64)
            .execute(&mut *tx)
            .await
            .map_err(db)?
            .rows_affected();
        if removed == 1 {
            sqlx::query(
                "INSERT OR IGNORE INTO inbox (grp, seq, subject) SELECT ?1, seq, subject FROM events WHERE seq = ?2",
            )
            .bind(group)
            .bind(seq as i64)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        }
        tx.commit().await.map_err(db)?;
        self.inner.changed.notify_waiters();
        Ok(removed == 1)
    }

    async fn drop_dead_letter(&self, group: &str, seq: u64) -> Result<bool, BusError> {
        let removed = sqlx::query("DELETE FROM dead_letters WHERE grp = ?1 AND seq = ?2")
            .bind(group)
            .bind(seq as i64)
            .execute(&self.inner.pool)
            .await
            .map_err(db)?
            .rows_affected();
        Ok(removed == 1)
    }

    async fn tail(
        &self,
        types: TypeFilter,
        from: TailFrom,
    ) -> Result<Box<dyn EventStream>, BusError> {
        let after_seq = match from {
            TailFrom::Start => 0,
            TailFrom::Now => sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM events")
                .fetch_one(&self.inner.pool)
                .await
                .map_err(db)?,
            TailFrom::After(position) => i64::try_from(position.seq(LOG))
                .map_err(|_| BusError::Invalid(format!("{} is past the log", position.token())))?,
        };
        Ok(Box::new(EmbeddedTail {
            broker: self.inner.clone(),
            types,
            after_seq,
            returned_seq: after_seq,
            ready: VecDeque::new(),
        }))
    }
}

/// Events read from the log per query while tailing.
const TAIL_BATCH_MAX: i64 = 256;

/// The one log's name in a [`Position`].
const LOG: &str = "log";

struct EmbeddedTail {
    broker: Arc<Inner>,
    types: TypeFilter,
    /// The last sequence read from the log.
    after_seq: i64,
    /// The sequence of the last event returned.
    returned_seq: i64,
    /// Read, matching, not yet returned, with their sequences.
    ready: VecDeque<(i64, CloudEvent)>,
}

#[async_trait]
impl EventStream for EmbeddedTail {
    fn position(&self) -> Position {
        // With nothing waiting, every event read was returned or passed
        // over by the filter.
        let seq = match self.ready.is_empty() {
            true => self.after_seq,
            false => self.returned_seq,
        };
        let mut position = Position::default();
        position.advance(LOG, seq as u64);
        position
    }

    async fn next(&mut self) -> Result<CloudEvent, BusError> {
        loop {
            if let Some((seq, event)) = self.ready.pop_front() {
                self.returned_seq = seq;
                return Ok(event);
            }
            let changed = self.broker.changed.notified();
            let rows: Vec<(i64, String, String)> = sqlx::query_as(
                "SELECT seq, type, body FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            )
            .bind(self.after_seq)
            .bind(TAIL_BATCH_MAX)
            .fetch_all(&self.broker.pool)
            .await
            .map_err(db)?;
            for (seq, event_type, body) in rows {
                self.after_seq = seq;
                if self.types.matches(&event_type) {
                    self.ready.push_back((seq, decode(&body)?));
                }
            }
            if self.ready.is_empty() {
                tokio::select! {
                    _ = changed => {}
                    _ = tokio::time::sleep(IDLE_POLL_INTERVAL) => {}
                }
            }
        }
    }
}
