//! What identity tells others. Each type has a JSON Schema beside it in
//! `events/<type>.schema.json`, checked in tests.

use bus::CloudEvent;
use serde_json::json;

use crate::ROLE;
use crate::domain::Account;

pub const USER_REGISTERED: &str = "identity.user.registered.v1";

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
