//! What you can ask identity to do: one file per command. Commands take
//! proven domain values, talk to the ports (account store, key-value store,
//! keyring, hasher) and return domain results; they know nothing of HTTP.

mod account;
mod erase;
mod login;
mod logout;
mod refresh;
mod register;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use kit::auth::AccessClaims;
use kit::clock::SharedClock;
use kit::config::AuthSettings;
use kit::kv::{KvError, SharedKv};
use sha2::{Digest, Sha256};

pub use register::NewAccount;

use crate::domain::Account;
use crate::hashing::{HashError, PasswordHasher};
use crate::keys::Keyring;
use crate::settings::IdentitySettings;
use crate::store::{AccountStore, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("email already registered")]
    EmailTaken,
    #[error("wrong email or password")]
    InvalidCredentials,
    #[error("refresh token invalid, expired, reused or revoked")]
    InvalidRefreshToken,
    #[error("too many failed logins")]
    RateLimited { retry_after: Duration },
    #[error("password hashing is saturated")]
    Overloaded,
    #[error("{0}")]
    Unavailable(String),
}

impl From<StoreError> for IdentityError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::DuplicateEmail => Self::EmailTaken,
            StoreError::Backend(e) => Self::Unavailable(e),
        }
    }
}

impl From<KvError> for IdentityError {
    fn from(error: KvError) -> Self {
        Self::Unavailable(error.to_string())
    }
}

impl From<HashError> for IdentityError {
    fn from(error: HashError) -> Self {
        match error {
            HashError::Overloaded => Self::Overloaded,
            HashError::Failed(e) => Self::Unavailable(e),
        }
    }
}

/// What a successful login or refresh hands out.
#[derive(Debug, Clone)]
pub struct TokenPair {
    pub access_token: String,
    pub expires_in_s: u64,
    pub refresh_token: String,
}

/// The identity application: the ports it needs and its settings.
pub struct Identity {
    pub(crate) accounts: Arc<dyn AccountStore>,
    pub(crate) kv: SharedKv,
    pub(crate) keys: Arc<Keyring>,
    pub(crate) hasher: PasswordHasher,
    pub(crate) clock: SharedClock,
    pub(crate) settings: IdentitySettings,
    pub(crate) auth: AuthSettings,
}

/// Key-value keys, in one place so that their shapes stay consistent.
mod keys {
    pub fn refresh(token_hash: &str) -> String {
        format!("refresh:{token_hash}")
    }
    pub fn refresh_used(token_hash: &str) -> String {
        format!("refresh-used:{token_hash}")
    }
    pub fn family_revoked(family: &str) -> String {
        format!("family-revoked:{family}")
    }
    pub fn failures_of_account(email_hash: &str) -> String {
        format!("login-failures:account:{email_hash}")
    }
    pub fn failures_of_ip(ip: &str) -> String {
        format!("login-failures:ip:{ip}")
    }
}

/// What the key-value store remembers about an outstanding refresh token.
#[derive(serde::Serialize, serde::Deserialize)]
struct RefreshRecord {
    account_id: String,
    family: String,
}

/// Refresh tokens are kept only as this hash: a leaked store leaks no
/// usable token. 256 random bits need no salt or slow hash.
fn sha256_hex(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

impl Identity {
    pub fn new(
        accounts: Arc<dyn AccountStore>,
        kv: SharedKv,
        keys: Arc<Keyring>,
        hasher: PasswordHasher,
        clock: SharedClock,
        settings: IdentitySettings,
        auth: AuthSettings,
    ) -> Self {
        Self {
            accounts,
            kv,
            keys,
            hasher,
            clock,
            settings,
            auth,
        }
    }

    pub fn keyring(&self) -> &Arc<Keyring> {
        &self.keys
    }

    fn refresh_ttl(&self) -> Duration {
        Duration::from_secs(self.settings.refresh_ttl_s)
    }

    /// Signs an access token and stores a new refresh token in `family`.
    async fn issue(&self, account: &Account, family: &str) -> Result<TokenPair, IdentityError> {
        let now = self.clock.now_s();
        let claims = AccessClaims {
            iss: self.auth.issuer.clone(),
            aud: self.auth.audience.clone(),
            sub: account.id.as_str().to_owned(),
            roles: account.role_names(),
            exp: now + self.settings.access_ttl_s,
            iat: now,
            nbf: now,
            jti: uuid::Uuid::new_v4().to_string(),
            sid: family.to_owned(),
        };
        let (kid, key) = self.keys.signing_key();
        let access_token = kit::auth::sign(&key, &kid, &claims);

        let refresh_token = B64.encode(kit::random_bytes::<32>());
        let record = serde_json::to_string(&RefreshRecord {
            account_id: account.id.as_str().to_owned(),
            family: family.to_owned(),
        })
        .map_err(|e| IdentityError::Unavailable(e.to_string()))?;
        self.kv
            .put(
                &keys::refresh(&sha256_hex(&refresh_token)),
                &record,
                self.refresh_ttl(),
            )
            .await?;
        Ok(TokenPair {
            access_token,
            expires_in_s: self.settings.access_ttl_s,
            refresh_token,
        })
    }

    async fn revoke_family(&self, family: &str) -> Result<(), IdentityError> {
        self.kv
            .put(&keys::family_revoked(family), "1", self.refresh_ttl())
            .await?;
        Ok(())
    }

    pub async fn ready(&self) -> Result<(), String> {
        self.accounts.ping().await.map_err(|e| e.to_string())?;
        self.kv.ping().await.map_err(|e| e.to_string())
    }
}
