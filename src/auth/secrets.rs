//! Randomness and keyed hashes: codes and tokens are stored only as HMAC-SHA256 under a key
//! that lives in a file beside the database, never inside it.

use std::path::Path;

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::{aead, hmac};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::config::ConfigError;

/// What sealed text in a record starts with; a value without it was written in clear by an
/// older Keyhold.
pub const SEALED_PREFIX: &str = "sealed:";

/// The HMAC key for stored codes and tokens, and an AES-256-GCM key derived from it for
/// what must be stored recoverably but never in clear (queued mail, which carries codes).
#[derive(Clone)]
pub struct Secrets {
    key: hmac::Key,
    sealing: std::sync::Arc<aead::LessSafeKey>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secrets([REDACTED])")
    }
}

impl Secrets {
    /// Reads `dir/hmac.key`, making it (32 random bytes, mode 0600) on first start.
    pub fn load_or_create(dir: &Path) -> Result<Secrets, ConfigError> {
        Secrets::load_or_create_file(&dir.join("hmac.key"))
    }

    /// Reads the key file `path`, making it (32 random bytes, mode 0600) when it does not
    /// exist.
    pub fn load_or_create_file(path: &Path) -> Result<Secrets, ConfigError> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let fresh = random_bytes::<32>();
                write_key_file(path, &fresh)?;
                fresh.to_vec()
            }
            Err(e) => return Err(ConfigError::file(path, format!("cannot read: {e}"))),
        };
        Secrets::from_key(path, &bytes)
    }

    /// The secrets of the key file `path` holding `bytes`.
    pub fn from_key(path: &Path, bytes: &[u8]) -> Result<Secrets, ConfigError> {
        if bytes.len() != 32 {
            return Err(ConfigError::file(path, "must hold exactly 32 bytes"));
        }
        let key = hmac::Key::new(hmac::HMAC_SHA256, bytes);
        let derived = hmac::sign(&key, b"keyhold sealing key v1");
        let sealing = aead::UnboundKey::new(&aead::AES_256_GCM, derived.as_ref())
            .map_err(|_| ConfigError::file(path, "cannot derive the sealing key"))?;
        Ok(Secrets {
            key,
            sealing: std::sync::Arc::new(aead::LessSafeKey::new(sealing)),
        })
    }

    /// What identifies the key without revealing it: a keyed hash of a fixed label, in hex.
    /// The database keeps it, so that an instance started with another key is refused.
    pub fn fingerprint(&self) -> String {
        let tag = hmac::sign(&self.key, b"keyhold key fingerprint v1");
        tag.as_ref()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Encrypts `plain` (random nonce in front); `label` binds it to its use.
    pub fn seal(&self, label: &[u8], plain: &[u8]) -> Vec<u8> {
        let nonce = random_bytes::<{ aead::NONCE_LEN }>();
        let mut sealed = plain.to_vec();
        // Sealing only fails for inputs larger than GCM allows (64 GiB).
        self.sealing
            .seal_in_place_append_tag(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(label),
                &mut sealed,
            )
            .unwrap_or_else(|_| unreachable!());
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        out
    }

    /// Decrypts what [`Secrets::seal`] made with the same label; `None` if it was altered.
    pub fn open(&self, label: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < aead::NONCE_LEN {
            return None;
        }
        let (nonce, body) = sealed.split_at(aead::NONCE_LEN);
        let nonce = aead::Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut body = body.to_vec();
        let plain = self
            .sealing
            .open_in_place(nonce, aead::Aad::from(label), &mut body)
            .ok()?;
        Some(plain.to_vec())
    }

    /// `plain` sealed under `label`, as text to keep in a record: `sealed:` and base64.
    pub fn seal_text(&self, label: &[u8], plain: &str) -> String {
        use base64::engine::general_purpose::STANDARD;
        format!(
            "{SEALED_PREFIX}{}",
            STANDARD.encode(self.seal(label, plain.as_bytes()))
        )
    }

    /// What [`Secrets::seal_text`] sealed; `None` if it was altered or is not sealed text.
    pub fn open_text(&self, label: &[u8], stored: &str) -> Option<String> {
        use base64::engine::general_purpose::STANDARD;
        let sealed = STANDARD.decode(stored.strip_prefix(SEALED_PREFIX)?).ok()?;
        String::from_utf8(self.open(label, &sealed)?).ok()
    }

    /// The keyed hash under which a code or token is stored and looked up.
    pub fn keyed_hash(&self, purpose: &str, value: &str) -> [u8; 32] {
        self.mac(purpose, value.as_bytes())
    }

    /// HMAC-SHA256 of `bytes` under the key, bound to `purpose`.
    pub fn mac(&self, purpose: &str, bytes: &[u8]) -> [u8; 32] {
        let mut ctx = hmac::Context::with_key(&self.key);
        // The purpose keeps a verification code from ever matching a refresh token.
        ctx.update(purpose.as_bytes());
        ctx.update(&[0]);
        ctx.update(bytes);
        let tag = ctx.sign();
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }
}

/// `N` bytes from the operating system's CSPRNG.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    // The system RNG does not fail on Linux once the kernel is seeded; a failure here
    // would mean no safe randomness at all, so refusing to go on is right.
    SystemRandom::new()
        .fill(&mut bytes)
        .unwrap_or_else(|_| panic!("the system random number generator failed"));
    bytes
}

/// An opaque token of `N` random bytes, base64url without padding.
pub fn random_token<const N: usize>() -> String {
    URL_SAFE_NO_PAD.encode(random_bytes::<N>())
}

/// Writes the key `bytes` as the key file `path` (mode 0600). A folder of its own is made
/// private; an existing one (`/etc/keyhold`, or the working directory) is the operator's and
/// left as it is.
pub(crate) fn write_key_file(path: &Path, bytes: &[u8]) -> Result<(), ConfigError> {
    let dir = path
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.exists() {
        crate::files::create_private_dir(dir).map_err(|e| ConfigError::file(dir, e))?;
    }
    crate::files::write_durably(path, bytes, 0o600)
        .map_err(|e| ConfigError::file(path, format!("cannot write: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_key_file_named_by_the_operator_leaves_its_existing_folder_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let made = Secrets::load_or_create_file(&dir.path().join("hmac.key")).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(dir.path()), 0o755, "the operator's folder");
        assert_eq!(mode(&dir.path().join("hmac.key")), 0o600);
        let nested = dir.path().join("keys/hmac.key");
        Secrets::load_or_create_file(&nested).unwrap();
        assert_eq!(mode(&dir.path().join("keys")), 0o700, "a folder it made");
        let again = Secrets::load_or_create_file(&dir.path().join("hmac.key")).unwrap();
        assert_eq!(made.fingerprint(), again.fingerprint());
    }

    #[test]
    fn the_key_is_made_once_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let a = Secrets::load_or_create(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join("hmac.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = Secrets::load_or_create(dir.path()).unwrap();
        assert_eq!(a.keyed_hash("x", "code"), b.keyed_hash("x", "code"));
        assert_ne!(a.keyed_hash("x", "code"), a.keyed_hash("y", "code"));
    }

    #[test]
    fn sealed_data_opens_only_unaltered_and_with_its_label() {
        let dir = tempfile::tempdir().unwrap();
        let secrets = Secrets::load_or_create(dir.path()).unwrap();
        let sealed = secrets.seal(b"mail", b"code 123456");
        assert!(!sealed.windows(6).any(|w| w == b"123456"));
        assert_eq!(secrets.open(b"mail", &sealed).unwrap(), b"code 123456");
        assert!(secrets.open(b"other", &sealed).is_none());
        let mut altered = sealed.clone();
        *altered.last_mut().unwrap() ^= 1;
        assert!(secrets.open(b"mail", &altered).is_none());
    }

    #[test]
    fn tokens_are_long_and_distinct() {
        let a = random_token::<32>();
        assert_eq!(a.len(), 43);
        assert_ne!(a, random_token::<32>());
    }
}
