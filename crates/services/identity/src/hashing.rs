//! Password hashing with argon2id on a bounded pool of blocking threads.
//!
//! Each hash costs ~19 MiB and tens of milliseconds of one core, so at most
//! `concurrency` run at once and at most `queue_max` wait; beyond that the
//! caller gets [`HashError::Overloaded`] (503) instead of an unbounded queue.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::Semaphore;

/// OWASP's argon2id recommendation: m = 19 MiB, t = 2, p = 1.
pub const ARGON2_MEMORY_KIB: u32 = 19_456;
pub const ARGON2_ITERATIONS: u32 = 2;
pub const ARGON2_PARALLELISM: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("too many password hashes waiting")]
    Overloaded,
    #[error("password hashing failed: {0}")]
    Failed(String),
}

#[derive(Clone)]
pub struct PasswordHasher {
    permits: Arc<Semaphore>,
    /// Hashes running or waiting for a thread.
    admitted: Arc<AtomicUsize>,
    admitted_max: usize,
    /// A hash of nothing in particular, verified against when an email is
    /// unknown so that the answer takes as long as for a wrong password.
    decoy: Arc<str>,
}

fn argon2() -> Argon2<'static> {
    let params = Params::new(
        ARGON2_MEMORY_KIB,
        ARGON2_ITERATIONS,
        ARGON2_PARALLELISM,
        None,
    )
    .expect("argon2 parameters are valid constants");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

fn hash_now(password: &[u8]) -> Result<String, HashError> {
    let salt = SaltString::encode_b64(&kit::random_bytes::<16>())
        .map_err(|e| HashError::Failed(e.to_string()))?;
    argon2()
        .hash_password(password, &salt)
        .map(|h| h.to_string())
        .map_err(|e| HashError::Failed(e.to_string()))
}

fn verify_now(password: &[u8], phc: &str) -> Result<bool, HashError> {
    let parsed = PasswordHash::new(phc).map_err(|e| HashError::Failed(e.to_string()))?;
    Ok(argon2().verify_password(password, &parsed).is_ok())
}

impl PasswordHasher {
    pub fn new(concurrency: usize, queue_max: usize) -> Result<Self, HashError> {
        let decoy = hash_now(&kit::random_bytes::<16>())?;
        Ok(Self {
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            admitted: Arc::new(AtomicUsize::new(0)),
            admitted_max: concurrency.max(1) + queue_max,
            decoy: decoy.into(),
        })
    }

    pub async fn hash(&self, password: &str) -> Result<String, HashError> {
        let password = password.as_bytes().to_vec();
        self.run(move || hash_now(&password)).await
    }

    /// Checks `password` against `phc`, or against the decoy when there is
    /// no account, so that both take the same time.
    pub async fn verify(&self, password: &str, phc: Option<&str>) -> Result<bool, HashError> {
        let password = password.as_bytes().to_vec();
        let known = phc.is_some();
        let phc = phc
            .map(str::to_owned)
            .unwrap_or_else(|| self.decoy.to_string());
        let matched = self.run(move || verify_now(&password, &phc)).await?;
        Ok(known && matched)
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T, HashError> + Send + 'static,
    ) -> Result<T, HashError> {
        if self.admitted.fetch_add(1, Ordering::SeqCst) >= self.admitted_max {
            self.admitted.fetch_sub(1, Ordering::SeqCst);
            return Err(HashError::Overloaded);
        }
        // Released on every path, including a caller that gives up waiting.
        let _admission = Admission(&self.admitted);
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| HashError::Failed(e.to_string()))?;
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| HashError::Failed(e.to_string()))?
    }
}

struct Admission<'a>(&'a AtomicUsize);

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_verify_and_decoy_never_matches() {
        let hasher = PasswordHasher::new(2, 8).unwrap();
        let phc = hasher.hash("a long enough password").await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(
            hasher
                .verify("a long enough password", Some(&phc))
                .await
                .unwrap()
        );
        assert!(
            !hasher
                .verify("another password!!", Some(&phc))
                .await
                .unwrap()
        );
        assert!(!hasher.verify("a long enough password", None).await.unwrap());
    }

    #[tokio::test]
    async fn refuses_beyond_the_queue_bound() {
        let hasher = PasswordHasher::new(1, 0).unwrap();
        let (first, second) =
            tokio::join!(hasher.hash("whatever it is"), hasher.hash("and another"));
        assert!(first.is_ok());
        assert!(matches!(second, Err(HashError::Overloaded)));
    }
}
