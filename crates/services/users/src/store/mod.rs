//! Where profiles are kept: the [`ProfileStore`] port; adapters SQL
//! (SQLite by default, PostgreSQL when configured) and memory.

mod memory;
mod sql;

use async_trait::async_trait;
use bus::CloudEvent;

pub use memory::MemoryProfileStore;
pub use sql::SqlProfileStore;

use crate::domain::Profile;

#[derive(Debug, thiserror::Error)]
#[error("profile store: {0}")]
pub struct StoreError(pub String);

#[async_trait]
pub trait ProfileStore: Send + Sync + 'static {
    /// Creates `profile` unless `group` already processed `event_id` or the
    /// profile exists; the record of processing commits with it.
    async fn create_once(
        &self,
        profile: &Profile,
        group: &str,
        event_id: &str,
    ) -> Result<(), StoreError>;
    async fn get(&self, id: &str) -> Result<Option<Profile>, StoreError>;
    /// Replaces the profile if its stored version is still
    /// `expected_version`, staging `events` with it; false otherwise.
    async fn update(
        &self,
        profile: &Profile,
        expected_version: u64,
        events: &[CloudEvent],
    ) -> Result<bool, StoreError>;
    /// Deletes the profile, staging `events` with it; false if absent.
    async fn delete(&self, id: &str, events: &[CloudEvent]) -> Result<bool, StoreError>;
    async fn ping(&self) -> Result<(), StoreError>;
}
