//! Where accounts are kept. One port, [`AccountStore`]; adapters: SQL
//! (SQLite embedded by default, PostgreSQL when configured) and memory.

mod memory;
mod sql;

use async_trait::async_trait;
use bus::CloudEvent;

pub use memory::MemoryAccountStore;
pub use sql::SqlAccountStore;

use crate::domain::{Account, AccountId, Email, Role};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("an account with this email exists")]
    DuplicateEmail,
    #[error("account store: {0}")]
    Backend(String),
}

#[async_trait]
pub trait AccountStore: Send + Sync + 'static {
    /// Stores a new account and the events that announce it, atomically.
    async fn insert(&self, account: &Account, events: &[CloudEvent]) -> Result<(), StoreError>;
    async fn by_email(&self, email: &Email) -> Result<Option<Account>, StoreError>;
    async fn by_id(&self, id: &AccountId) -> Result<Option<Account>, StoreError>;
    /// Deletes the account, staging `events` with the deletion, unless
    /// consumer `group` already processed `event_id`; the record of
    /// processing commits with it. False if there was nothing to delete.
    async fn delete_once(
        &self,
        id: &AccountId,
        group: &str,
        event_id: &str,
        events: &[CloudEvent],
    ) -> Result<bool, StoreError>;
    /// Replaces an account's roles; false if there is no such account.
    async fn set_roles(&self, id: &AccountId, roles: &[Role]) -> Result<bool, StoreError>;
    async fn ping(&self) -> Result<(), StoreError>;
}
