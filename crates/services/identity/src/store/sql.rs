use async_trait::async_trait;
use bus::outbox::{Outbox, Relay};
use bus::{CloudEvent, SharedBroker};
use kit::clock::SharedClock;
use sqlx::Row;
use sqlx::any::AnyRow;
use sqlx::migrate::Migrator;

use super::{AccountStore, StoreError};
use crate::domain::{Account, AccountId, DisplayName, Email, Role};

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

/// Accounts in SQLite or PostgreSQL, through one portable set of queries.
pub struct SqlAccountStore {
    outbox: Outbox,
}

fn backend(error: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(error.to_string())
}

const COLUMNS: &str = "id, email, display_name, password_hash, roles, created_at_ms";

impl SqlAccountStore {
    /// Connects and brings the schema up to date.
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

    /// The relay that publishes this store's outbox to `broker`.
    pub fn relay(&self, broker: SharedBroker) -> Relay {
        self.outbox.relay(broker)
    }

    fn account(row: &AnyRow) -> Result<Account, StoreError> {
        let corrupt = |what: &str| backend(format!("stored account has an invalid {what}"));
        let roles: Vec<String> =
            serde_json::from_str(&row.try_get::<String, _>("roles").map_err(backend)?)
                .map_err(|_| corrupt("role list"))?;
        Ok(Account {
            id: AccountId::parse(&row.try_get::<String, _>("id").map_err(backend)?)
                .map_err(|_| corrupt("id"))?,
            email: Email::parse(&row.try_get::<String, _>("email").map_err(backend)?)
                .map_err(|_| corrupt("email"))?,
            display_name: DisplayName::parse(
                &row.try_get::<String, _>("display_name").map_err(backend)?,
            )
            .map_err(|_| corrupt("display name"))?,
            password_hash: row.try_get("password_hash").map_err(backend)?,
            roles: roles
                .iter()
                .map(|r| Role::parse(r))
                .collect::<Result<_, _>>()
                .map_err(|_| corrupt("role"))?,
            created_at_ms: row.try_get::<i64, _>("created_at_ms").map_err(backend)? as u64,
        })
    }

    async fn one(&self, column: &str, value: &str) -> Result<Option<Account>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM accounts WHERE {column} = $1"
        ))
        .bind(value.to_owned())
        .fetch_optional(self.outbox.pool())
        .await
        .map_err(backend)?;
        row.as_ref().map(Self::account).transpose()
    }
}

fn roles_json(roles: &[Role]) -> String {
    serde_json::to_string(&roles.iter().map(Role::as_str).collect::<Vec<_>>())
        .unwrap_or_else(|_| "[]".into())
}

#[async_trait]
impl AccountStore for SqlAccountStore {
    async fn insert(&self, account: &Account, events: &[CloudEvent]) -> Result<(), StoreError> {
        let mut tx = self.outbox.pool().begin().await.map_err(backend)?;
        let outcome = sqlx::query(&format!(
            "INSERT INTO accounts ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)"
        ))
        .bind(account.id.as_str().to_owned())
        .bind(account.email.as_str().to_owned())
        .bind(account.display_name.as_str().to_owned())
        .bind(account.password_hash.clone())
        .bind(roles_json(&account.roles))
        .bind(account.created_at_ms as i64)
        .execute(&mut *tx)
        .await;
        match outcome {
            Ok(_) => {}
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                return Err(StoreError::DuplicateEmail);
            }
            Err(e) => return Err(backend(e)),
        }
        self.outbox.commit(tx, events).await.map_err(backend)
    }

    async fn by_email(&self, email: &Email) -> Result<Option<Account>, StoreError> {
        self.one("email", email.as_str()).await
    }

    async fn by_id(&self, id: &AccountId) -> Result<Option<Account>, StoreError> {
        self.one("id", id.as_str()).await
    }

    async fn delete_once(
        &self,
        id: &AccountId,
        group: &str,
        event_id: &str,
        events: &[CloudEvent],
    ) -> Result<bool, StoreError> {
        let mut tx = self.outbox.pool().begin().await.map_err(backend)?;
        let first = bus::idempotency::first_time(&mut tx, group, event_id, self.outbox.now_ms())
            .await
            .map_err(backend)?;
        let deleted = first
            && sqlx::query("DELETE FROM accounts WHERE id = $1")
                .bind(id.as_str().to_owned())
                .execute(&mut *tx)
                .await
                .map_err(backend)?
                .rows_affected()
                == 1;
        let staged: &[CloudEvent] = if deleted { events } else { &[] };
        self.outbox.commit(tx, staged).await.map_err(backend)?;
        Ok(deleted)
    }

    async fn set_roles(&self, id: &AccountId, roles: &[Role]) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE accounts SET roles = $1 WHERE id = $2")
            .bind(roles_json(roles))
            .bind(id.as_str().to_owned())
            .execute(self.outbox.pool())
            .await
            .map_err(backend)?;
        Ok(done.rows_affected() == 1)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(self.outbox.pool())
            .await
            .map_err(backend)?;
        Ok(())
    }
}
