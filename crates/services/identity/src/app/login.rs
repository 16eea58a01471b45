use std::net::IpAddr;
use std::time::Duration;

use super::{Identity, IdentityError, TokenPair, keys, sha256_hex};
use crate::domain::Email;

impl Identity {
    /// Exchanges email and password for a token pair.
    ///
    /// An unknown email and a wrong password get the same error after the
    /// same amount of hashing. Failures are counted per account and per
    /// client IP; over either limit the attempt is refused before any
    /// hashing.
    pub async fn login(
        &self,
        email: &str,
        password: &str,
        client_ip: IpAddr,
    ) -> Result<TokenPair, IdentityError> {
        let normalised = email.trim().to_lowercase();
        // Hashed: any string may arrive here, and the store should hold no emails.
        let account_key = keys::failures_of_account(&sha256_hex(&normalised));
        let ip_key = keys::failures_of_ip(&client_ip.to_string());
        let limits = [
            (&account_key, self.settings.login_failures_per_account_max),
            (&ip_key, self.settings.login_failures_per_ip_max),
        ];
        for (key, max) in limits {
            if let Some(counter) = self.kv.counter(key).await?
                && counter.count >= max
            {
                return Err(IdentityError::RateLimited {
                    retry_after: counter.resets_in,
                });
            }
        }

        let account = match Email::parse(&normalised) {
            Ok(email) => self.accounts.by_email(&email).await?,
            Err(_) => None,
        };
        let phc = account.as_ref().map(|a| a.password_hash.as_str());
        if self.hasher.verify(password, phc).await?
            && let Some(account) = account
        {
            self.kv.delete(&account_key).await?;
            let family = uuid::Uuid::new_v4().to_string();
            return self.issue(&account, &family).await;
        }
        let window = Duration::from_secs(self.settings.login_failure_window_s);
        for (key, _) in limits {
            self.kv.incr(key, window).await?;
        }
        Err(IdentityError::InvalidCredentials)
    }
}
