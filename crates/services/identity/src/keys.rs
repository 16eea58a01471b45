//! Identity's signing keys, kept as files in the data directory so that
//! every replica on a machine signs with the same key and `tessera admin
//! rotate-keys` (another process) can add one.
//!
//! Files are `keys/<kid>.json`, mode 0600, in a 0700 directory. Changes are
//! made under an exclusive `flock` on `keys/.lock`. The newest live key
//! signs; a retired key stays in the JWKS until every token it signed has
//! expired, then it is deleted at the next rotation.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ed25519_dalek::{SigningKey, VerifyingKey};
use kit::auth::{Jwk, JwkSet, KeySource};
use kit::clock::SharedClock;
use kit::config::AUTH_LEEWAY_S_MAX;
use serde::{Deserialize, Serialize};

/// How often a running service rereads the key directory.
pub const KEY_RELOAD_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key directory {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("key file {path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

#[derive(Serialize, Deserialize)]
struct StoredKey {
    kid: String,
    /// The 32-byte Ed25519 seed, base64url.
    secret: String,
    created_at_s: u64,
    #[serde(default)]
    retired_at_s: Option<u64>,
}

struct Loaded {
    signing_kid: String,
    signing: SigningKey,
    published: BTreeMap<String, VerifyingKey>,
}

pub struct Keyring {
    dir: PathBuf,
    clock: SharedClock,
    /// How long a retired key must stay published.
    retired_publish_s: u64,
    loaded: RwLock<Loaded>,
}

impl Keyring {
    /// Opens the key directory, creating the first key if there is none.
    pub fn open(dir: &Path, clock: SharedClock, access_ttl_s: u64) -> Result<Self, KeyError> {
        let retired_publish_s = access_ttl_s + AUTH_LEEWAY_S_MAX;
        with_lock(dir, || {
            if read_all(dir)?.iter().all(|k| k.retired_at_s.is_some()) {
                write_new(dir, clock.now_s())?;
            }
            Ok(())
        })?;
        let loaded = load(dir, clock.now_s(), retired_publish_s)?;
        Ok(Self {
            dir: dir.to_owned(),
            clock,
            retired_publish_s,
            loaded: RwLock::new(loaded),
        })
    }

    /// Retires the signing key, adds a new one, and deletes keys whose
    /// tokens have all expired. Returns the new key id.
    pub fn rotate(dir: &Path, clock: &SharedClock, access_ttl_s: u64) -> Result<String, KeyError> {
        let now = clock.now_s();
        let retired_publish_s = access_ttl_s + AUTH_LEEWAY_S_MAX;
        with_lock(dir, || {
            for mut key in read_all(dir)? {
                match key.retired_at_s {
                    None => {
                        key.retired_at_s = Some(now);
                        write_key(dir, &key, true)?;
                    }
                    Some(retired) if retired + retired_publish_s <= now => {
                        let path = key_path(dir, &key.kid);
                        fs::remove_file(&path).map_err(|source| KeyError::Io { path, source })?;
                    }
                    Some(_) => {}
                }
            }
            write_new(dir, now)
        })
    }

    /// Rereads the directory; keeps the old keys if that fails.
    pub fn reload(&self) {
        match load(&self.dir, self.clock.now_s(), self.retired_publish_s) {
            Ok(loaded) => {
                if let Ok(mut current) = self.loaded.write() {
                    *current = loaded;
                }
            }
            Err(error) => tracing::error!(%error, "reloading signing keys failed"),
        }
    }

    /// The key to sign new tokens with, and its id.
    pub fn signing_key(&self) -> (String, SigningKey) {
        let loaded = self.loaded.read().unwrap_or_else(|p| p.into_inner());
        (loaded.signing_kid.clone(), loaded.signing.clone())
    }

    pub fn jwks(&self) -> JwkSet {
        let loaded = self.loaded.read().unwrap_or_else(|p| p.into_inner());
        JwkSet {
            keys: loaded
                .published
                .iter()
                .map(|(kid, key)| Jwk::ed25519(kid, key))
                .collect(),
        }
    }
}

#[async_trait]
impl KeySource for Keyring {
    async fn key(&self, kid: &str) -> Option<VerifyingKey> {
        let loaded = self.loaded.read().unwrap_or_else(|p| p.into_inner());
        loaded.published.get(kid).copied()
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |source| KeyError::Io {
        path: path.to_owned(),
        source,
    }
}

fn key_path(dir: &Path, kid: &str) -> PathBuf {
    dir.join(format!("{kid}.json"))
}

fn with_lock<T>(dir: &Path, f: impl FnOnce() -> Result<T, KeyError>) -> Result<T, KeyError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(dir))?;
    let lock_path = dir.join(".lock");
    let lock = kit::lockfile::lock_exclusive(&lock_path).map_err(io(&lock_path))?;
    let outcome = f();
    drop(lock);
    outcome
}

fn read_all(dir: &Path) -> Result<Vec<StoredKey>, KeyError> {
    let mut keys = Vec::new();
    for entry in fs::read_dir(dir).map_err(io(dir))? {
        let path = entry.map_err(io(dir))?.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let text = fs::read_to_string(&path).map_err(io(&path))?;
        let key: StoredKey = serde_json::from_str(&text).map_err(|e| KeyError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        keys.push(key);
    }
    Ok(keys)
}

fn write_new(dir: &Path, now_s: u64) -> Result<String, KeyError> {
    let key = StoredKey {
        kid: uuid::Uuid::now_v7().simple().to_string(),
        secret: B64.encode(kit::random_bytes::<32>()),
        created_at_s: now_s,
        retired_at_s: None,
    };
    write_key(dir, &key, false)?;
    tracing::info!(kid = %key.kid, "created a signing key");
    Ok(key.kid)
}

/// Writes through a temporary file and a rename, so a reader never sees a
/// half-written key.
fn write_key(dir: &Path, key: &StoredKey, replace: bool) -> Result<(), KeyError> {
    let path = key_path(dir, &key.kid);
    if !replace && path.exists() {
        return Err(io(&path)(std::io::ErrorKind::AlreadyExists.into()));
    }
    let tmp = dir.join(format!(".{}.tmp", key.kid));
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(&tmp))?;
    let text = serde_json::to_vec_pretty(key).map_err(|e| KeyError::Corrupt {
        path: tmp.clone(),
        reason: e.to_string(),
    })?;
    file.write_all(&text).map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
    fs::rename(&tmp, &path).map_err(io(&path))
}

fn load(dir: &Path, now_s: u64, retired_publish_s: u64) -> Result<Loaded, KeyError> {
    let mut signing: Option<(u64, String, SigningKey)> = None;
    let mut published = BTreeMap::new();
    for key in read_all(dir)? {
        let path = key_path(dir, &key.kid);
        let seed: [u8; 32] = B64
            .decode(&key.secret)
            .ok()
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| KeyError::Corrupt {
                path,
                reason: "secret is not 32 base64url bytes".into(),
            })?;
        let signing_key = SigningKey::from_bytes(&seed);
        match key.retired_at_s {
            None => {
                published.insert(key.kid.clone(), signing_key.verifying_key());
                if signing
                    .as_ref()
                    .is_none_or(|(at, _, _)| key.created_at_s >= *at)
                {
                    signing = Some((key.created_at_s, key.kid, signing_key));
                }
            }
            Some(retired) if retired + retired_publish_s > now_s => {
                published.insert(key.kid, signing_key.verifying_key());
            }
            Some(_) => {}
        }
    }
    let (_, signing_kid, signing) = signing.ok_or_else(|| KeyError::Corrupt {
        path: dir.to_owned(),
        reason: "no live signing key".into(),
    })?;
    Ok(Loaded {
        signing_kid,
        signing,
        published,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kit::clock::ManualClock;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn first_open_creates_one_private_key() {
        let dir = tempfile::tempdir().unwrap();
        let clock: SharedClock = ManualClock::starting_at_ms(1_000_000);
        let ring = Keyring::open(dir.path(), clock.clone(), 900).unwrap();
        let again = Keyring::open(dir.path(), clock, 900).unwrap();
        assert_eq!(ring.signing_key().0, again.signing_key().0);
        assert_eq!(ring.jwks().keys.len(), 1);
        let file = key_path(dir.path(), &ring.signing_key().0);
        let mode = fs::metadata(file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn rotation_keeps_old_key_published_until_its_tokens_expire() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::starting_at_ms(1_000_000);
        let shared: SharedClock = clock.clone();
        let ring = Keyring::open(dir.path(), shared.clone(), 900).unwrap();
        let old = ring.signing_key().0;
        let new = Keyring::rotate(dir.path(), &shared, 900).unwrap();
        ring.reload();
        assert_eq!(ring.signing_key().0, new);
        let kids: Vec<_> = ring.jwks().keys.into_iter().map(|k| k.kid).collect();
        assert!(kids.contains(&old) && kids.contains(&new));

        clock.advance(Duration::from_secs(900 + AUTH_LEEWAY_S_MAX));
        ring.reload();
        let kids: Vec<_> = ring.jwks().keys.into_iter().map(|k| k.kid).collect();
        assert_eq!(kids, vec![new.clone()]);
        Keyring::rotate(dir.path(), &shared, 900).unwrap();
        assert!(!key_path(dir.path(), &old).exists(), "expired key deleted");
    }
}
