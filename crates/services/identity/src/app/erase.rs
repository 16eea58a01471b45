use bus::CloudEvent;

use super::Identity;
use crate::domain::AccountId;
use crate::events::{ERASURES_GROUP, Erased, user_deleted};

impl Identity {
    /// A user erased their profile (`users.user.erased.v1`): their account
    /// is deleted with `identity.user.deleted.v1` in one transaction, once
    /// per event. From then on nothing signs in or refreshes as it (refresh
    /// finds no account); access tokens already issued run out within
    /// `access_ttl_s`. `Err` asks for a retry, and in the end a dead letter.
    pub async fn on_erased(&self, event: &CloudEvent) -> Result<(), String> {
        let erased: Erased = serde_json::from_value(event.data.clone())
            .map_err(|e| format!("unreadable event data: {e}"))?;
        let id = AccountId::parse(&erased.id).map_err(|e| format!("bad account id: {}", e.0))?;
        let deleted = self
            .accounts
            .delete_once(
                &id,
                ERASURES_GROUP,
                &event.id,
                &[user_deleted(&id, self.clock.now_ms())],
            )
            .await
            .map_err(|e| e.to_string())?;
        if deleted {
            tracing::info!(account_id = %id.as_str(), "account deleted after erasure");
        }
        Ok(())
    }
}
