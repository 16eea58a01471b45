use crate::domain::{Account, AccountId};

use super::{Identity, IdentityError};

impl Identity {
    /// The caller's own account; `None` once it is deleted (a token issued
    /// before stays valid until it expires) or for a subject that is not an
    /// account id.
    pub async fn account(&self, subject: &str) -> Result<Option<Account>, IdentityError> {
        let Ok(id) = AccountId::parse(subject) else {
            return Ok(None);
        };
        Ok(self.accounts.by_id(&id).await?)
    }
}
