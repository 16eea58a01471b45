use super::{Identity, IdentityError};
use crate::domain::{Account, AccountId, DisplayName, Email, Password, Role};

/// A registration whose values passed the domain rules.
pub struct NewAccount {
    pub email: Email,
    pub password: Password,
    pub display_name: DisplayName,
    pub roles: Vec<Role>,
}

impl Identity {
    /// Creates an account. The hash is computed before anything is written,
    /// and the insert is one statement: a failure leaves nothing behind.
    pub async fn register(&self, new: NewAccount) -> Result<Account, IdentityError> {
        if self.accounts.by_email(&new.email).await?.is_some() {
            return Err(IdentityError::EmailTaken);
        }
        let password_hash = self.hasher.hash(new.password.expose()).await?;
        let account = Account {
            id: AccountId::generate(),
            email: new.email,
            display_name: new.display_name,
            password_hash,
            roles: new.roles,
            created_at_ms: self.clock.now_ms(),
        };
        let registered = crate::events::user_registered(&account, self.clock.now_ms());
        self.accounts.insert(&account, &[registered]).await?;
        tracing::info!(account_id = %account.id.as_str(), "account registered");
        Ok(account)
    }
}
