use kit::auth::Principal;

use super::{Identity, IdentityError};

impl Identity {
    /// Ends the caller's login session: every refresh token of its family
    /// stops working. Access tokens already issued run out on their own.
    pub async fn logout(&self, caller: &Principal) -> Result<(), IdentityError> {
        if caller.session_id.is_empty() {
            return Ok(());
        }
        self.revoke_family(&caller.session_id).await
    }
}
