use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use bus::{CloudEvent, SharedBroker};

use super::{AccountStore, StoreError};
use crate::domain::{Account, AccountId, Email, Role};

/// Accounts in a map, for tests and simulation. Events go straight to the
/// broker once the account is stored (nothing here survives a crash that an
/// outbox would have to cover).
pub struct MemoryAccountStore {
    accounts: Mutex<HashMap<String, Account>>,
    broker: SharedBroker,
}

impl MemoryAccountStore {
    pub fn new(broker: SharedBroker) -> Self {
        Self {
            accounts: Mutex::default(),
            broker,
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut HashMap<String, Account>) -> T) -> T {
        f(&mut self.accounts.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

#[async_trait]
impl AccountStore for MemoryAccountStore {
    async fn insert(&self, account: &Account, events: &[CloudEvent]) -> Result<(), StoreError> {
        self.with(|accounts| {
            if accounts.values().any(|a| a.email == account.email) {
                return Err(StoreError::DuplicateEmail);
            }
            accounts.insert(account.id.as_str().to_owned(), account.clone());
            Ok(())
        })?;
        self.broker
            .publish(events)
            .await
            .map_err(|e| StoreError::Backend(e.to_string()))
    }

    async fn by_email(&self, email: &Email) -> Result<Option<Account>, StoreError> {
        Ok(self.with(|accounts| accounts.values().find(|a| a.email == *email).cloned()))
    }

    async fn by_id(&self, id: &AccountId) -> Result<Option<Account>, StoreError> {
        Ok(self.with(|accounts| accounts.get(id.as_str()).cloned()))
    }

    async fn set_roles(&self, id: &AccountId, roles: &[Role]) -> Result<bool, StoreError> {
        Ok(self.with(|accounts| match accounts.get_mut(id.as_str()) {
            Some(account) => {
                account.roles = roles.to_vec();
                true
            }
            None => false,
        }))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
