use async_trait::async_trait;
use bus::outbox::{Outbox, Relay};
use bus::{CloudEvent, SharedBroker};
use kit::clock::SharedClock;
use sqlx::Row;
use sqlx::any::AnyRow;
use sqlx::migrate::Migrator;

use super::{ProfileStore, StoreError};
use crate::domain::Profile;

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

const COLUMNS: &str =
    "id, email, display_name, addresses, preferences, version, created_at_ms, updated_at_ms";

fn backend(error: impl std::fmt::Display) -> StoreError {
    StoreError(error.to_string())
}

/// Profiles in SQLite or PostgreSQL; changes stage their events in the
/// outbox in the same transaction.
pub struct SqlProfileStore {
    outbox: Outbox,
}

impl SqlProfileStore {
    pub async fn connect(
        url: &str,
        connections_max: u32,
        clock: SharedClock,
    ) -> Result<Self, StoreError> {
        let pool = kit::sql::open_migrated(
            url,
            connections_max,
            &SQLITE_MIGRATIONS,
            &POSTGRES_MIGRATIONS,
        )
        .await
        .map_err(backend)?;
        Ok(Self {
            outbox: Outbox::new(pool, clock),
        })
    }

    pub fn relay(&self, broker: SharedBroker) -> Relay {
        self.outbox.relay(broker)
    }

    fn profile(row: &AnyRow) -> Result<Profile, StoreError> {
        Ok(Profile {
            id: row.try_get("id").map_err(backend)?,
            email: row.try_get("email").map_err(backend)?,
            display_name: row.try_get("display_name").map_err(backend)?,
            addresses: serde_json::from_str(
                &row.try_get::<String, _>("addresses").map_err(backend)?,
            )
            .map_err(backend)?,
            preferences: serde_json::from_str(
                &row.try_get::<String, _>("preferences").map_err(backend)?,
            )
            .map_err(backend)?,
            version: row.try_get::<i64, _>("version").map_err(backend)? as u64,
            created_at_ms: row.try_get::<i64, _>("created_at_ms").map_err(backend)? as u64,
            updated_at_ms: row.try_get::<i64, _>("updated_at_ms").map_err(backend)? as u64,
        })
    }
}

fn json(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).expect("profile parts serialise")
}

#[async_trait]
impl ProfileStore for SqlProfileStore {
    async fn create_once(
        &self,
        profile: &Profile,
        group: &str,
        event_id: &str,
    ) -> Result<(), StoreError> {
        let mut tx = self.outbox.pool().begin().await.map_err(backend)?;
        if bus::idempotency::first_time(&mut tx, group, event_id, self.outbox.now_ms())
            .await
            .map_err(backend)?
        {
            sqlx::query(&format!(
                "INSERT INTO profiles ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 ON CONFLICT (id) DO NOTHING"
            ))
            .bind(profile.id.clone())
            .bind(profile.email.clone())
            .bind(profile.display_name.clone())
            .bind(json(&profile.addresses))
            .bind(json(&profile.preferences))
            .bind(profile.version as i64)
            .bind(profile.created_at_ms as i64)
            .bind(profile.updated_at_ms as i64)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        }
        tx.commit().await.map_err(backend)
    }

    async fn get(&self, id: &str) -> Result<Option<Profile>, StoreError> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM profiles WHERE id = $1"))
            .bind(id.to_owned())
            .fetch_optional(self.outbox.pool())
            .await
            .map_err(backend)?;
        row.as_ref().map(Self::profile).transpose()
    }

    async fn update(
        &self,
        profile: &Profile,
        expected_version: u64,
        events: &[CloudEvent],
    ) -> Result<bool, StoreError> {
        let mut tx = self.outbox.pool().begin().await.map_err(backend)?;
        let done = sqlx::query(
            "UPDATE profiles SET display_name = $1, addresses = $2, preferences = $3,
                    version = $4, updated_at_ms = $5
             WHERE id = $6 AND version = $7",
        )
        .bind(profile.display_name.clone())
        .bind(json(&profile.addresses))
        .bind(json(&profile.preferences))
        .bind(profile.version as i64)
        .bind(profile.updated_at_ms as i64)
        .bind(profile.id.clone())
        .bind(expected_version as i64)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        if done.rows_affected() != 1 {
            return Ok(false);
        }
        self.outbox.commit(tx, events).await.map_err(backend)?;
        Ok(true)
    }

    async fn delete(&self, id: &str, events: &[CloudEvent]) -> Result<bool, StoreError> {
        let mut tx = self.outbox.pool().begin().await.map_err(backend)?;
        let done = sqlx::query("DELETE FROM profiles WHERE id = $1")
            .bind(id.to_owned())
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        if done.rows_affected() != 1 {
            return Ok(false);
        }
        self.outbox.commit(tx, events).await.map_err(backend)?;
        Ok(true)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(self.outbox.pool())
            .await
            .map_err(backend)?;
        Ok(())
    }
}
