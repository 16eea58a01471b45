//! What identity tells others. Each type has a JSON Schema beside it in
//! `events/<type>.schema.json`, checked in tests.

use bus::CloudEvent;
use serde::Deserialize;
use serde_json::json;

use crate::ROLE;
use crate::domain::{Account, AccountId};

pub const USER_REGISTERED: &str = "identity.user.registered.v1";
pub const USER_DELETED: &str = "identity.user.deleted.v1";

/// Listened to: a user erased their profile, so their account goes too.
pub const USERS_USER_ERASED: &str = "users.user.erased.v1";
/// The durable consumer group that deletes erased users' accounts.
pub const ERASURES_GROUP: &str = "identity-erasures";

/// An account was created (by registration or by an operator).
pub fn user_registered(account: &Account, now_ms: u64) -> CloudEvent {
    CloudEvent::new(
        ROLE,
        USER_REGISTERED,
        account.id.as_str(),
        json!({
            "id": account.id.as_str(),
            "email": account.email.as_str(),
            "display_name": account.display_name.as_str(),
            "roles": account.role_names(),
        }),
        now_ms,
    )
}

/// An account was deleted; nothing can sign in or refresh as it any more.
pub fn user_deleted(id: &AccountId, now_ms: u64) -> CloudEvent {
    CloudEvent::new(
        ROLE,
        USER_DELETED,
        id.as_str(),
        json!({ "id": id.as_str() }),
        now_ms,
    )
}

/// The part of `users.user.erased.v1` this service needs.
#[derive(Debug, Deserialize)]
pub struct Erased {
    pub id: String,
}
