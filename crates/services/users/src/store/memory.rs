use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use async_trait::async_trait;
use bus::{CloudEvent, SharedBroker};

use super::{ProfileStore, StoreError};
use crate::domain::Profile;

/// Profiles in a map, for tests and simulation; events go straight to the
/// broker after the change.
pub struct MemoryProfileStore {
    state: Mutex<State>,
    broker: SharedBroker,
}

#[derive(Default)]
struct State {
    profiles: HashMap<String, Profile>,
    /// (consumer group, event id) pairs already handled.
    processed: HashSet<(String, String)>,
}

impl MemoryProfileStore {
    pub fn new(broker: SharedBroker) -> Self {
        Self {
            state: Mutex::default(),
            broker,
        }
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut HashMap<String, Profile>, &mut HashSet<(String, String)>) -> T,
    ) -> T {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let State {
            profiles,
            processed,
        } = &mut *state;
        f(profiles, processed)
    }

    async fn publish(&self, events: &[CloudEvent]) -> Result<(), StoreError> {
        self.broker
            .publish(events)
            .await
            .map_err(|e| StoreError(e.to_string()))
    }
}

#[async_trait]
impl ProfileStore for MemoryProfileStore {
    async fn create_once(
        &self,
        profile: &Profile,
        group: &str,
        event_id: &str,
    ) -> Result<(), StoreError> {
        self.with(|profiles, processed| {
            if processed.insert((group.to_owned(), event_id.to_owned())) {
                profiles
                    .entry(profile.id.clone())
                    .or_insert_with(|| profile.clone());
            }
        });
        Ok(())
    }

    async fn get(&self, id: &str) -> Result<Option<Profile>, StoreError> {
        Ok(self.with(|profiles, _| profiles.get(id).cloned()))
    }

    async fn update(
        &self,
        profile: &Profile,
        expected_version: u64,
        events: &[CloudEvent],
    ) -> Result<bool, StoreError> {
        let updated = self.with(|profiles, _| match profiles.get_mut(&profile.id) {
            Some(current) if current.version == expected_version => {
                *current = profile.clone();
                true
            }
            _ => false,
        });
        if updated {
            self.publish(events).await?;
        }
        Ok(updated)
    }

    async fn delete(&self, id: &str, events: &[CloudEvent]) -> Result<bool, StoreError> {
        let deleted = self.with(|profiles, _| profiles.remove(id).is_some());
        if deleted {
            self.publish(events).await?;
        }
        Ok(deleted)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
