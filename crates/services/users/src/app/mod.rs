//! What you can ask the users service to do. Knows nothing of HTTP.

use std::sync::Arc;

use bus::CloudEvent;
use kit::clock::SharedClock;

use crate::domain::{FieldProblem, Profile, ProfilePatch};
use crate::events::{self, PROFILES_GROUP, Registered};
use crate::store::{ProfileStore, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    #[error("no such profile")]
    NotFound,
    #[error("the profile changed since it was read")]
    PreconditionFailed,
    #[error("invalid fields")]
    Invalid(Vec<FieldProblem>),
    #[error("{0}")]
    Unavailable(String),
}

impl From<StoreError> for UsersError {
    fn from(error: StoreError) -> Self {
        Self::Unavailable(error.0)
    }
}

pub struct Users {
    store: Arc<dyn ProfileStore>,
    clock: SharedClock,
}

impl Users {
    pub fn new(store: Arc<dyn ProfileStore>, clock: SharedClock) -> Self {
        Self { store, clock }
    }

    /// Consumer of `identity.user.registered.v1`: creates the profile once,
    /// however often the event is delivered.
    pub async fn on_registered(&self, event: &CloudEvent) -> Result<(), String> {
        let registered: Registered = serde_json::from_value(event.data.clone())
            .map_err(|e| format!("unreadable event data: {e}"))?;
        let profile = Profile::registered(
            &registered.id,
            &registered.email,
            &registered.display_name,
            self.clock.now_ms(),
        );
        self.store
            .create_once(&profile, PROFILES_GROUP, &event.id)
            .await
            .map_err(|e| e.to_string())
    }

    pub async fn get(&self, id: &str) -> Result<Profile, UsersError> {
        self.store.get(id).await?.ok_or(UsersError::NotFound)
    }

    /// Applies `patch` if the profile is still at `if_match` (when given).
    /// An invalid patch is refused (422) before the version is compared
    /// (412): what is wrong with the request comes first.
    pub async fn update(
        &self,
        id: &str,
        if_match: Option<u64>,
        patch: ProfilePatch,
    ) -> Result<Profile, UsersError> {
        let current = self.get(id).await?;
        let now = self.clock.now_ms();
        let next = current.patched(patch, now).map_err(UsersError::Invalid)?;
        if if_match.is_some_and(|v| v != current.version) {
            return Err(UsersError::PreconditionFailed);
        }
        let updated = self
            .store
            .update(&next, current.version, &[events::user_updated(&next, now)])
            .await?;
        if !updated {
            // Someone else changed it between our read and our write.
            return Err(UsersError::PreconditionFailed);
        }
        Ok(next)
    }

    /// Erases the profile and tells identity to revoke the account.
    pub async fn erase(&self, id: &str) -> Result<(), UsersError> {
        let erased = events::user_erased(id, self.clock.now_ms());
        if self.store.delete(id, &[erased]).await? {
            Ok(())
        } else {
            Err(UsersError::NotFound)
        }
    }

    pub async fn ready(&self) -> Result<(), String> {
        self.store.ping().await.map_err(|e| e.to_string())
    }
}
