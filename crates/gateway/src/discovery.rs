//! Where a service's instances come from besides its static `urls`: the
//! registry (an instance registers itself through the admin API and
//! renews the registration before its time to live runs out) and DNS
//! (every A and AAAA address of a name, resolved again and again).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::Notify;

/// The shortest and longest time to live a registration may ask for.
pub const REGISTRATION_TTL_MS_MIN: u64 = 1_000;
pub const REGISTRATION_TTL_MS_MAX: u64 = 300_000;
/// Registrations kept per service; more are refused.
pub const REGISTERED_PER_SERVICE_MAX: usize = 256;
/// The longest instance name: letters, digits, `.`, `-`, `_`, `:`.
pub const INSTANCE_NAME_LEN_MAX: usize = 128;
/// A DNS answer that does not come within this long keeps the last one.
pub const DNS_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug)]
struct Entry {
    url: String,
    ttl: Duration,
    expires: Instant,
}

/// One registration, as the admin API lists it.
#[derive(Debug, Clone, Serialize)]
pub struct Registration {
    pub service: String,
    pub instance: String,
    pub url: String,
    pub ttl_ms: u64,
    pub expires_in_ms: u64,
}

/// The instances that registered themselves, by service and name, until
/// they leave or their time to live runs out.
#[derive(Debug, Default)]
pub struct Registry {
    entries: Mutex<BTreeMap<(String, String), Entry>>,
    changed: Notify,
}

impl Registry {
    /// Registers (or renews) `instance` of `service` at `url` for `ttl`.
    /// Refuses a bad name, URL or time to live, and a service already
    /// holding [`REGISTERED_PER_SERVICE_MAX`] registrations.
    pub fn register(
        &self,
        service: &str,
        instance: &str,
        url: &str,
        ttl_ms: u64,
        now: Instant,
    ) -> Result<Registration, String> {
        let name_ok = !instance.is_empty()
            && instance.len() <= INSTANCE_NAME_LEN_MAX
            && instance
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-:".contains(&b));
        if !name_ok {
            return Err(format!(
                "the instance name must be 1 to {INSTANCE_NAME_LEN_MAX} letters, digits, '.', '-', '_' or ':'"
            ));
        }
        crate::upstream::parse_base(url)?;
        if !(REGISTRATION_TTL_MS_MIN..=REGISTRATION_TTL_MS_MAX).contains(&ttl_ms) {
            return Err(format!(
                "ttl_ms must be in {REGISTRATION_TTL_MS_MIN}..={REGISTRATION_TTL_MS_MAX}"
            ));
        }
        let url = url.trim_end_matches('/').to_owned();
        let ttl = Duration::from_millis(ttl_ms);
        let key = (service.to_owned(), instance.to_owned());
        let mut entries = self.lock();
        let known = entries.get(&key).map(|e| e.url.clone());
        if known.is_none() {
            let held = entries.keys().filter(|(s, _)| s == service).count();
            if held >= REGISTERED_PER_SERVICE_MAX {
                return Err(format!(
                    "{service} already has {REGISTERED_PER_SERVICE_MAX} registered instances"
                ));
            }
        }
        entries.insert(
            key,
            Entry {
                url: url.clone(),
                ttl,
                expires: now + ttl,
            },
        );
        drop(entries);
        if known.as_ref() != Some(&url) {
            tracing::info!(service, instance, url, "instance registered");
            self.changed.notify_one();
        }
        Ok(Registration {
            service: service.to_owned(),
            instance: instance.to_owned(),
            url,
            ttl_ms,
            expires_in_ms: ttl_ms,
        })
    }

    /// Removes a registration; false when there was none.
    pub fn deregister(&self, service: &str, instance: &str) -> bool {
        let gone = self
            .lock()
            .remove(&(service.to_owned(), instance.to_owned()))
            .is_some();
        if gone {
            tracing::info!(service, instance, "instance deregistered");
            self.changed.notify_one();
        }
        gone
    }

    /// The URLs registered for `service` whose time has not run out.
    pub fn urls(&self, service: &str, now: Instant) -> BTreeSet<String> {
        self.lock()
            .iter()
            .filter(|((s, _), entry)| s == service && now < entry.expires)
            .map(|(_, entry)| entry.url.clone())
            .collect()
    }

    /// Forgets the registrations whose time ran out.
    pub fn sweep(&self, now: Instant) {
        self.lock().retain(|(service, instance), entry| {
            let live = now < entry.expires;
            if !live {
                tracing::warn!(service, instance, url = %entry.url, "registration expired");
            }
            live
        });
    }

    /// Every live registration, by service and instance name.
    pub fn list(&self, now: Instant) -> Vec<Registration> {
        self.lock()
            .iter()
            .filter(|(_, entry)| now < entry.expires)
            .map(|((service, instance), entry)| Registration {
                service: service.clone(),
                instance: instance.clone(),
                url: entry.url.clone(),
                ttl_ms: entry.ttl.as_millis() as u64,
                expires_in_ms: entry.expires.saturating_duration_since(now).as_millis() as u64,
            })
            .collect()
    }

    /// Returns once a registration came, changed its URL or left.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, String), Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Every address `target` (`host:port`) resolves to, as instance URLs.
pub async fn resolve(target: &str) -> Result<BTreeSet<String>, String> {
    let addresses = tokio::time::timeout(DNS_TIMEOUT, tokio::net::lookup_host(target))
        .await
        .map_err(|_| format!("{target}: no answer within {} ms", DNS_TIMEOUT.as_millis()))?
        .map_err(|e| format!("{target}: {e}"))?;
    Ok(addresses.map(|a| format!("http://{a}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registrations_live_until_they_leave_or_run_out() {
        let registry = Registry::default();
        let t0 = Instant::now();
        registry
            .register("users", "u-1", "http://127.0.0.1:1/", 1_000, t0)
            .unwrap();
        registry
            .register("users", "u-2", "http://127.0.0.1:2", 5_000, t0)
            .unwrap();
        let both: BTreeSet<String> = ["http://127.0.0.1:1", "http://127.0.0.1:2"]
            .map(String::from)
            .into();
        assert_eq!(registry.urls("users", t0), both);
        assert!(registry.urls("identity", t0).is_empty());
        let later = t0 + Duration::from_millis(1_500);
        assert_eq!(registry.urls("users", later).len(), 1, "u-1 ran out");
        registry
            .register("users", "u-2", "http://127.0.0.1:2", 5_000, later)
            .unwrap();
        registry.sweep(later);
        assert_eq!(registry.list(later).len(), 1);
        assert!(registry.deregister("users", "u-2"));
        assert!(!registry.deregister("users", "u-2"));
        assert!(registry.urls("users", later).is_empty());
    }

    #[test]
    fn bad_registrations_are_refused() {
        let registry = Registry::default();
        let now = Instant::now();
        for (instance, url, ttl) in [
            ("a b", "http://h:1", 1_000),
            ("", "http://h:1", 1_000),
            ("a", "ftp://h:1", 1_000),
            ("a", "http://h:1/path", 1_000),
            ("a", "http://h:1", 10),
            ("a", "http://h:1", 10_000_000),
        ] {
            assert!(
                registry.register("s", instance, url, ttl, now).is_err(),
                "{instance:?} {url} {ttl}"
            );
        }
        for i in 0..REGISTERED_PER_SERVICE_MAX {
            registry
                .register("s", &format!("i{i}"), "http://h:1", 1_000, now)
                .unwrap();
        }
        let full = registry.register("s", "one-more", "http://h:1", 1_000, now);
        assert!(full.unwrap_err().contains("already has"));
        assert!(
            registry
                .register("s", "i0", "http://h:2", 1_000, now)
                .is_ok()
        );
    }

    #[tokio::test]
    async fn names_resolve_to_every_address() {
        let found = resolve("localhost:8082").await.unwrap();
        assert!(found.contains("http://127.0.0.1:8082"), "{found:?}");
        assert!(resolve("localhost").await.is_err(), "no port");
    }
}
