use super::{DisplayName, Email, Invalid};

/// An account's id: a UUIDv7, so ids sort by creation time.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AccountId(String);

impl AccountId {
    pub fn generate() -> Self {
        Self(uuid::Uuid::now_v7().to_string())
    }

    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        uuid::Uuid::parse_str(raw)
            .map(|u| Self(u.to_string()))
            .map_err(|_| Invalid("not an account id".into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A role name: lowercase letters, digits, `-` and `_`, 1 to 32 long.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Role(String);

impl Role {
    pub const USER: &str = "user";
    pub const ADMIN: &str = "admin";

    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        let ok = (1..=32).contains(&raw.len())
            && raw.starts_with(|c: char| c.is_ascii_lowercase())
            && raw
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(Invalid(format!("not a role name: {raw:?}")))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A registered account. The password is only ever held as its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub id: AccountId,
    pub email: Email,
    pub display_name: DisplayName,
    /// PHC string of the argon2id hash.
    pub password_hash: String,
    pub roles: Vec<Role>,
    pub created_at_ms: u64,
}

impl Account {
    pub fn role_names(&self) -> Vec<String> {
        self.roles.iter().map(|r| r.as_str().to_owned()).collect()
    }
}
