//! Passwords: the policy, and argon2id hashing in a bounded pool off the async runtime.

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use argon2::{Algorithm, Argon2, Block, Params, PasswordHash, PasswordHasher as _, Version};
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

/// argon2id with the configured parameters, run on `max_concurrent_hashes` threads of its
/// own; at most `max_queued_hashes` wait; beyond that the caller gets `RATE_LIMITED` at once
/// instead of an unbounded wait.
///
/// The threads run at a lower scheduling priority (nice 10), so that a burst of sign-ins
/// uses every idle cycle but never delays token checks and refreshes on the async runtime.
/// Each keeps its argon2 memory between hashes (allocating and faulting in 19 MiB per
/// sign-in cost a fifth of the CPU time) and gives it back after a minute without work.
pub struct PasswordHasher {
    params: Params,
    jobs: std::sync::mpsc::Sender<Job>,
    admitted: Arc<Semaphore>,
    capacity: usize,
    /// Verified for unknown addresses, so that they take as long as known ones. Made by a
    /// hashing thread as the first job after start, off the start-up's path: one argon2
    /// hash, and with its random salt aws-lc's seeding of its generator from CPU jitter,
    /// which together were the longest part of a start once the store had a checkpoint.
    dummy_hash: Arc<std::sync::OnceLock<std::result::Result<String, String>>>,
}

/// Work for a hashing thread, given the thread's argon2 memory.
type Job = Box<dyn FnOnce(&mut Vec<Block>) + Send>;

/// The nice value of the hashing threads (0 is normal, 19 the lowest priority).
const HASHING_NICE: i32 = 10;
/// A hashing thread with no work for this long frees its argon2 memory.
const IDLE_RELEASE: Duration = Duration::from_secs(60);

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
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        let queue = Arc::new(parking_lot::Mutex::new(queue));
        for i in 0..concurrent.max(1) {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("keyhold-argon2-{i}"))
                .spawn(move || hashing_thread(&queue))
                .map_err(|e| ConfigError::key("passwords.max_concurrent_hashes", e))?;
        }
        let dummy_hash = Arc::new(std::sync::OnceLock::new());
        let (made, dummy_params) = (dummy_hash.clone(), params.clone());
        // The threads are running, so the job is taken at once; a verify that comes first
        // makes the hash itself, or waits for this one to finish it.
        let _ = jobs.send(Box::new(move |_| {
            made.get_or_init(|| dummy_hash_with(&dummy_params));
        }));
        Ok(PasswordHasher {
            params,
            jobs,
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
        work: impl FnOnce(&Params, &mut Vec<Block>) -> T + Send + 'static,
    ) -> Result<T> {
        let Ok(admitted) = self.admitted.clone().try_acquire_owned() else {
            return Err(Error::RateLimited {
                retry_after: Duration::from_secs(1),
            });
        };
        let params = self.params.clone();
        let (done, result) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |memory| {
            let out = work(&params, memory);
            drop(admitted);
            let _ = done.send(out);
        });
        self.jobs
            .send(job)
            .map_err(|_| Error::internal(anyhow::anyhow!("the hashing threads have stopped")))?;
        result
            .await
            .map_err(|_| Error::internal(anyhow::anyhow!("a hashing thread panicked")))
    }

    /// A PHC string of `password` under the configured parameters.
    pub async fn hash(&self, password: String) -> Result<String> {
        self.run(move |params, _| hash_with(params, &password))
            .await?
            .map_err(Error::internal)
    }

    /// A PHC string of `password`, hashed on the calling thread outside the pool: for tools
    /// that make accounts in bulk (imports, benchmarks), never for requests.
    pub fn hash_now(&self, password: &str) -> Result<String> {
        hash_with(&self.params, password).map_err(Error::internal)
    }

    /// Checks `password` against `phc`, or against a dummy hash when there is no account,
    /// so both take the same time.
    pub async fn verify(&self, password: String, phc: Option<String>) -> Result<Verified> {
        let known = phc.is_some();
        let dummy_hash = self.dummy_hash.clone();
        let verified = self
            .run(move |params, memory| {
                let phc = match &phc {
                    Some(phc) => phc,
                    None => dummy_hash
                        .get_or_init(|| dummy_hash_with(params))
                        .as_ref()
                        .map_err(|e| format!("the dummy hash: {e}"))?,
                };
                let parsed = PasswordHash::new(phc).map_err(|e| e.to_string())?;
                let matches = verify_with(memory, password.as_bytes(), &parsed)?;
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

/// A hashing thread: lower priority, one job at a time, its argon2 memory kept between jobs.
fn hashing_thread(queue: &parking_lot::Mutex<std::sync::mpsc::Receiver<Job>>) {
    let tid = rustix::thread::gettid();
    if let Err(e) = rustix::process::setpriority_process(Some(tid), HASHING_NICE) {
        tracing::debug!(error = %e, "cannot lower the priority of a hashing thread");
    }
    let mut memory: Vec<Block> = Vec::new();
    loop {
        let Some(receiver) = queue.try_lock_for(IDLE_RELEASE) else {
            memory = Vec::new();
            continue;
        };
        match receiver.recv_timeout(IDLE_RELEASE) {
            Ok(job) => {
                drop(receiver);
                let ran =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&mut memory)));
                if ran.is_err() {
                    // The caller sees the failure; this thread goes on serving.
                    memory = Vec::new();
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => memory = Vec::new(),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// Whether `password` matches `phc`, computed in `memory` (grown to the hash's size and kept).
fn verify_with(
    memory: &mut Vec<Block>,
    password: &[u8],
    phc: &PasswordHash,
) -> std::result::Result<bool, String> {
    let (Some(salt), Some(expected)) = (&phc.salt, &phc.hash) else {
        return Err("no salt or no hash".into());
    };
    let params = Params::try_from(phc).map_err(|e| e.to_string())?;
    let algorithm = Algorithm::try_from(phc.algorithm.as_str()).map_err(|e| e.to_string())?;
    let version = phc
        .version
        .map(Version::try_from)
        .transpose()
        .map_err(|e| e.to_string())?
        .unwrap_or_default();
    let blocks = params.block_count();
    if memory.len() < blocks {
        memory.resize(blocks, Block::new());
    }
    let mut out = vec![0u8; expected.len()];
    Argon2::new(algorithm, version, params)
        .hash_password_into_with_memory(password, salt, &mut out, &mut memory[..blocks])
        .map_err(|e| e.to_string())?;
    Ok(argon2::password_hash::phc::Output::new(&out).is_ok_and(|computed| computed == *expected))
}

/// The hash of a random password, which nobody can match.
fn dummy_hash_with(params: &Params) -> std::result::Result<String, String> {
    hash_with(params, &super::secrets::random_token::<16>()).map_err(|e| e.to_string())
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
    async fn hashing_runs_on_lower_priority_threads_that_keep_their_memory() {
        let hasher = PasswordHasher::new(&cheap()).unwrap();
        let phc = hasher.hash("correct horse".into()).await.unwrap();
        assert!(
            hasher
                .verify("correct horse".into(), Some(phc))
                .await
                .unwrap()
                .matches
        );
        let (nice, kept) = hasher
            .run(|_, memory| {
                let me = rustix::thread::gettid();
                (
                    rustix::process::getpriority_process(Some(me)).unwrap(),
                    memory.len(),
                )
            })
            .await
            .unwrap();
        assert_eq!(nice, HASHING_NICE);
        assert!(
            kept == 0 || kept == 64,
            "the 64 KiB of argon2 memory: {kept} blocks"
        );
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
    async fn the_dummy_hash_is_made_after_start_on_a_hashing_thread_and_matches_nothing() {
        let hasher = PasswordHasher::new(&PasswordsConfig {
            max_concurrent_hashes: Some(1),
            ..cheap()
        })
        .unwrap();
        // One thread takes jobs in order: the dummy hash was the first.
        hasher.run(|_, _| ()).await.unwrap();
        let dummy = hasher.dummy_hash.get().unwrap().clone().unwrap();
        let parsed = PasswordHash::new(&dummy).unwrap();
        let params = Params::try_from(&parsed).unwrap();
        assert_eq!(parsed.algorithm.as_str(), "argon2id");
        assert_eq!(
            (params.m_cost(), params.t_cost()),
            (64, 1),
            "the configured cost"
        );
        let unknown = hasher.verify("anything at all".into(), None).await.unwrap();
        assert!(!unknown.matches);
        assert_eq!(hasher.dummy_hash.get().unwrap().as_ref().unwrap(), &dummy);
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
                    .run(move |_, _| {
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
