//! Passwords: the policy, and argon2id hashing in a bounded pool off the async runtime.

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use argon2::{
    Algorithm, Argon2, Params, PasswordHash, PasswordHasher as _, PasswordVerifier, Version,
};
use tokio::sync::Semaphore;

use super::secrets::random_bytes;
use crate::config::{ConfigError, PasswordsConfig};
use crate::error::{Error, Result};

/// The longest password accepted, in characters.
pub const MAX_LENGTH: usize = 256;

/// The 30,000 most common passwords of the zxcvbn project's list (itself drawn from leaked
/// password corpora), lower-cased, most common first. See README, "Password policy".
const COMMON_PASSWORDS: &str = include_str!("common_passwords.txt");

fn common_passwords() -> &'static HashSet<&'static str> {
    static SET: OnceLock<HashSet<&'static str>> = OnceLock::new();
    SET.get_or_init(|| COMMON_PASSWORDS.lines().filter(|l| !l.is_empty()).collect())
}

/// How many common passwords are compiled in.
pub fn common_password_count() -> usize {
    common_passwords().len()
}

/// Checks the policy: length, not the address or username, not a common password.
pub fn check_policy(password: &str, min_length: usize, email: &str, username: &str) -> Result<()> {
    let weak = |reason: &str| {
        Err(Error::WeakPassword {
            reason: reason.to_string(),
        })
    };
    let length = password.chars().count();
    if length < min_length {
        return weak(&format!("it must be at least {min_length} characters long"));
    }
    if length > MAX_LENGTH {
        return weak(&format!("it must be at most {MAX_LENGTH} characters long"));
    }
    let lower = password.to_lowercase();
    if lower == email.to_lowercase() || lower == username.to_lowercase() {
        return weak("it must not be your e-mail address or username");
    }
    if common_passwords().contains(lower.as_str()) {
        return weak("it is one of the most commonly used passwords");
    }
    Ok(())
}

/// The outcome of checking a password against a stored hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    pub matches: bool,
    /// The hash was made with other parameters than the configured ones.
    pub needs_rehash: bool,
}

/// argon2id with the configured parameters, run on blocking threads: at most
/// `max_concurrent_hashes` at once, at most `max_queued_hashes` waiting; beyond that the
/// caller gets `RATE_LIMITED` at once instead of an unbounded wait.
pub struct PasswordHasher {
    params: Params,
    running: Arc<Semaphore>,
    admitted: Arc<Semaphore>,
    capacity: usize,
    /// Verified for unknown addresses, so that they take as long as known ones.
    dummy_hash: String,
}

impl std::fmt::Debug for PasswordHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordHasher")
            .field("params", &self.params)
            .finish_non_exhaustive()
    }
}

impl PasswordHasher {
    pub fn new(config: &PasswordsConfig) -> std::result::Result<PasswordHasher, ConfigError> {
        let params = Params::new(
            config.argon2_memory_kib,
            config.argon2_iterations,
            config.argon2_parallelism,
            None,
        )
        .map_err(|e| ConfigError::key("passwords.argon2_memory_kib", e))?;
        let concurrent = config.max_concurrent_hashes.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        });
        let dummy_hash = hash_with(&params, &super::secrets::random_token::<16>())
            .map_err(|e| ConfigError::key("passwords.argon2_memory_kib", e))?;
        Ok(PasswordHasher {
            params,
            running: Arc::new(Semaphore::new(concurrent)),
            admitted: Arc::new(Semaphore::new(concurrent + config.max_queued_hashes)),
            capacity: concurrent + config.max_queued_hashes,
            dummy_hash,
        })
    }

    /// Hashes waiting or running now.
    pub fn in_use(&self) -> usize {
        self.capacity - self.admitted.available_permits()
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Params) -> T + Send + 'static,
    ) -> Result<T> {
        let Ok(admitted) = self.admitted.clone().try_acquire_owned() else {
            return Err(Error::RateLimited {
                retry_after: Duration::from_secs(1),
            });
        };
        let running = self
            .running
            .clone()
            .acquire_owned()
            .await
            .map_err(Error::internal)?;
        let params = self.params.clone();
        tokio::task::spawn_blocking(move || {
            let out = work(&params);
            drop((running, admitted));
            out
        })
        .await
        .map_err(Error::internal)
    }

    /// A PHC string of `password` under the configured parameters.
    pub async fn hash(&self, password: String) -> Result<String> {
        self.run(move |params| hash_with(params, &password))
            .await?
            .map_err(Error::internal)
    }

    /// Checks `password` against `phc`, or against a dummy hash when there is no account,
    /// so both take the same time.
    pub async fn verify(&self, password: String, phc: Option<String>) -> Result<Verified> {
        let known = phc.is_some();
        let phc = phc.unwrap_or_else(|| self.dummy_hash.clone());
        let verified = self
            .run(move |params| {
                let parsed = PasswordHash::new(&phc).map_err(|e| e.to_string())?;
                let matches = Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok();
                let same_params = parsed.algorithm.as_str() == "argon2id"
                    && Params::try_from(&parsed).is_ok_and(|p| {
                        p.m_cost() == params.m_cost()
                            && p.t_cost() == params.t_cost()
                            && p.p_cost() == params.p_cost()
                    });
                Ok::<_, String>(Verified {
                    matches,
                    needs_rehash: matches && !same_params,
                })
            })
            .await?
            .map_err(|e| Error::internal(anyhow::anyhow!("stored password hash: {e}")))?;
        Ok(Verified {
            matches: known && verified.matches,
            ..verified
        })
    }
}

fn hash_with(
    params: &Params,
    password: &str,
) -> std::result::Result<String, argon2::password_hash::Error> {
    let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    let salt = random_bytes::<16>();
    Ok(argon2
        .hash_password_with_salt(password.as_bytes(), &salt)?
        .to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cheap() -> PasswordsConfig {
        PasswordsConfig {
            argon2_memory_kib: 64,
            argon2_iterations: 1,
            ..PasswordsConfig::default()
        }
    }

    #[test]
    fn at_least_ten_thousand_common_passwords_are_compiled_in() {
        assert!(
            common_password_count() >= 10_000,
            "{}",
            common_password_count()
        );
    }

    #[test]
    fn the_policy_gives_its_reason() {
        let check =
            |p: &str| check_policy(p, 10, "ada@example.com", "ada").map_err(|e| e.to_string());
        assert!(check("short").unwrap_err().contains("at least 10"));
        assert!(check(&"x".repeat(257)).unwrap_err().contains("at most 256"));
        assert!(check("ADA@example.com").unwrap_err().contains("e-mail"));
        assert!(check("1234567890").unwrap_err().contains("common"));
        assert!(check("Password123").unwrap_err().contains("common"));
        assert!(check("correct horse battery staple").is_ok());
        assert!(check(&"é".repeat(256)).is_ok(), "counted in characters");
    }

    #[tokio::test]
    async fn a_hash_is_argon2id_phc_with_the_configured_parameters() {
        let hasher = PasswordHasher::new(&cheap()).unwrap();
        let phc = hasher.hash("correct horse".into()).await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{phc}");
        let ok = hasher
            .verify("correct horse".into(), Some(phc.clone()))
            .await
            .unwrap();
        assert_eq!(
            ok,
            Verified {
                matches: true,
                needs_rehash: false
            }
        );
        let bad = hasher
            .verify("wrong horse".into(), Some(phc))
            .await
            .unwrap();
        assert!(!bad.matches);
        let unknown = hasher.verify("anything".into(), None).await.unwrap();
        assert!(!unknown.matches);
    }

    #[tokio::test]
    async fn a_hash_with_other_parameters_asks_for_a_rehash() {
        let old = PasswordHasher::new(&cheap()).unwrap();
        let phc = old.hash("correct horse".into()).await.unwrap();
        let new = PasswordHasher::new(&PasswordsConfig {
            argon2_memory_kib: 128,
            ..cheap()
        })
        .unwrap();
        let verified = new.verify("correct horse".into(), Some(phc)).await.unwrap();
        assert_eq!(
            verified,
            Verified {
                matches: true,
                needs_rehash: true
            }
        );
    }

    #[tokio::test]
    async fn a_full_queue_answers_rate_limited_instead_of_waiting() {
        let hasher = Arc::new(
            PasswordHasher::new(&PasswordsConfig {
                max_concurrent_hashes: Some(1),
                max_queued_hashes: 0,
                ..cheap()
            })
            .unwrap(),
        );
        // Hold the only place.
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let busy = {
            let hasher = hasher.clone();
            tokio::spawn(async move {
                hasher
                    .run(move |_| {
                        let _ = rx.recv();
                    })
                    .await
            })
        };
        while hasher.admitted.available_permits() > 0 {
            tokio::task::yield_now().await;
        }
        let refused = hasher.hash("correct horse".into()).await.unwrap_err();
        assert_eq!(refused.code(), "RATE_LIMITED");
        assert_eq!(refused.retry_after(), Some(1));
        tx.send(()).unwrap();
        busy.await.unwrap().unwrap();
        assert!(hasher.hash("correct horse".into()).await.is_ok());
    }
}
