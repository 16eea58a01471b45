//! What users tells others and what it listens to. Each type it produces
//! has a JSON Schema in `events/<type>.schema.json`, checked in tests.

use bus::CloudEvent;
use serde::Deserialize;
use serde_json::json;

use crate::ROLE;
use crate::domain::Profile;

pub const USER_UPDATED: &str = "users.user.updated.v1";
pub const USER_ERASED: &str = "users.user.erased.v1";

/// Listened to: identity's new accounts become profiles.
pub const IDENTITY_USER_REGISTERED: &str = "identity.user.registered.v1";
/// The durable consumer group that creates profiles.
pub const PROFILES_GROUP: &str = "users-profiles";

pub fn user_updated(profile: &Profile, now_ms: u64) -> CloudEvent {
    CloudEvent::new(
        ROLE,
        USER_UPDATED,
        &profile.id,
        json!({
            "id": profile.id,
            "display_name": profile.display_name,
            "addresses": profile.addresses,
            "preferences": profile.preferences,
            "version": profile.version,
        }),
        now_ms,
    )
}

pub fn user_erased(id: &str, now_ms: u64) -> CloudEvent {
    CloudEvent::new(ROLE, USER_ERASED, id, json!({ "id": id }), now_ms)
}

/// The part of `identity.user.registered.v1` this service needs.
#[derive(Debug, Deserialize)]
pub struct Registered {
    pub id: String,
    pub email: String,
    pub display_name: String,
}
