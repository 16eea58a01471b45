use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use async_trait::async_trait;
use bus::{CloudEvent, SharedBroker};

use super::{AccountStore, StoreError};
use crate::domain::{Account, AccountId, Email, Role};

/// Accounts in a map, for tests and simulation. Events go straight to the
/// broker once the account is stored (nothing here survives a crash that an
/// outbox would have to cover).
pub struct MemoryAccountStore {
    state: Mutex<State>,
    broker: SharedBroker,
}

#[derive(Default)]
struct State {
    accounts: HashMap<String, Account>,
    /// `(group, event id)` of the events consumers processed.
    processed: HashSet<(String, String)>,
}

impl MemoryAccountStore {
    pub fn new(broker: SharedBroker) -> Self {
        Self {
            state: Mutex::default(),
            broker,
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()))
    }

    async fn publish(&self, events: &[CloudEvent]) -> Result<(), StoreError> {
        self.broker
            .publish(events)
            .await
            .map_err(|e| StoreError::Backend(e.to_string()))
    }
}

#[async_trait]
impl AccountStore for MemoryAccountStore {
    async fn insert(&self, account: &Account, events: &[CloudEvent]) -> Result<(), StoreError> {
        self.with(|state| {
            if state.accounts.values().any(|a| a.email == account.email) {
                return Err(StoreError::DuplicateEmail);
            }
            (state.accounts).insert(account.id.as_str().to_owned(), account.clone());
            Ok(())
        })?;
        self.publish(events).await
    }

    async fn by_email(&self, email: &Email) -> Result<Option<Account>, StoreError> {
        Ok(self.with(|state| {
            let mut accounts = state.accounts.values();
            accounts.find(|a| a.email == *email).cloned()
        }))
    }

    async fn by_id(&self, id: &AccountId) -> Result<Option<Account>, StoreError> {
        Ok(self.with(|state| state.accounts.get(id.as_str()).cloned()))
    }

    async fn delete_once(
        &self,
        id: &AccountId,
        group: &str,
        event_id: &str,
        events: &[CloudEvent],
    ) -> Result<bool, StoreError> {
        let deleted = self.with(|state| {
            state
                .processed
                .insert((group.to_owned(), event_id.to_owned()))
                && state.accounts.remove(id.as_str()).is_some()
        });
        if deleted {
            self.publish(events).await?;
        }
        Ok(deleted)
    }

    async fn set_roles(&self, id: &AccountId, roles: &[Role]) -> Result<bool, StoreError> {
        Ok(
            self.with(|state| match state.accounts.get_mut(id.as_str()) {
                Some(account) => {
                    account.roles = roles.to_vec();
                    true
                }
                None => false,
            }),
        )
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
