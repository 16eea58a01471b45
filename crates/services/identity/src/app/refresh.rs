use super::{Identity, IdentityError, RefreshRecord, TokenPair, keys, sha256_hex};
use crate::domain::AccountId;

impl Identity {
    /// Trades a refresh token for a new pair in the same family. Each
    /// refresh token works once: presenting a used one means it was copied,
    /// so the whole family is revoked (RFC 9700 reuse detection).
    pub async fn refresh(&self, refresh_token: &str) -> Result<TokenPair, IdentityError> {
        let hash = sha256_hex(refresh_token);
        let record = self
            .kv
            .get(&keys::refresh(&hash))
            .await?
            .and_then(|text| serde_json::from_str::<RefreshRecord>(&text).ok())
            .ok_or(IdentityError::InvalidRefreshToken)?;
        if self
            .kv
            .get(&keys::family_revoked(&record.family))
            .await?
            .is_some()
        {
            return Err(IdentityError::InvalidRefreshToken);
        }
        let first_use = self
            .kv
            .put_if_absent(&keys::refresh_used(&hash), "1", self.refresh_ttl())
            .await?;
        if !first_use {
            tracing::warn!(
                account_id = %record.account_id,
                family = %record.family,
                "refresh token reused; revoking its family"
            );
            self.revoke_family(&record.family).await?;
            return Err(IdentityError::InvalidRefreshToken);
        }
        let account_id =
            AccountId::parse(&record.account_id).map_err(|_| IdentityError::InvalidRefreshToken)?;
        let account = self
            .accounts
            .by_id(&account_id)
            .await?
            .ok_or(IdentityError::InvalidRefreshToken)?;
        self.issue(&account, &record.family).await
    }
}
