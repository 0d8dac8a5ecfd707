//! The server's certificate: the configured PEM files, or a self-signed one for `localhost`
//! made on first start and kept under `storage.path/tls`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{Config, ConfigError};

/// Makes aws-lc-rs the process's rustls provider, for the parts (poem, mail-send) that ask
/// rustls for the default. Installing twice is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// The names a generated certificate is valid for.
pub const GENERATED_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// A certificate chain and its private key, checked to belong together.
#[derive(Clone)]
pub struct TlsMaterial {
    pub cert_pem: String,
    key_pem: String,
    /// Where the certificate was read from.
    pub cert_path: PathBuf,
    /// True when Keyhold made it (now or on an earlier start).
    pub generated: bool,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("cert_path", &self.cert_path)
            .field("generated", &self.generated)
            .finish_non_exhaustive()
    }
}

impl TlsMaterial {
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// The configured files, or the generated pair (made now if there is none yet).
    pub fn load(config: &Config) -> Result<TlsMaterial, ConfigError> {
        match (&config.tls.cert_file, &config.tls.key_file) {
            (Some(cert), Some(key)) => Self::from_files(cert, key, false),
            _ => Self::generated(&config.generated_tls_dir()),
        }
    }

    fn generated(dir: &Path) -> Result<TlsMaterial, ConfigError> {
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        if cert.exists() || key.exists() {
            return Self::from_files(&cert, &key, true);
        }
        crate::files::create_private_dir(dir).map_err(|e| ConfigError::file(dir, e))?;
        let names: Vec<String> = GENERATED_NAMES.iter().map(|s| s.to_string()).collect();
        let made = rcgen::generate_simple_self_signed(names)
            .map_err(|e| ConfigError::file(&cert, format!("cannot make a certificate: {e}")))?;
        // The key first: a crash between the two writes leaves a key without a certificate,
        // which the next start reports instead of silently replacing.
        write_new_file(&key, made.signing_key.serialize_pem().as_bytes(), 0o600)?;
        write_new_file(&cert, made.cert.pem().as_bytes(), 0o644)?;
        tracing::info!(path = %cert.display(), "generated a self-signed TLS certificate for localhost");
        Self::from_files(&cert, &key, true)
    }

    fn from_files(cert: &Path, key: &Path, generated: bool) -> Result<TlsMaterial, ConfigError> {
        let cert_pem = std::fs::read_to_string(cert)
            .map_err(|e| ConfigError::file(cert, format!("cannot read the certificate: {e}")))?;
        let key_pem = std::fs::read_to_string(key)
            .map_err(|e| ConfigError::file(key, format!("cannot read the private key: {e}")))?;
        let material = TlsMaterial {
            cert_pem,
            key_pem,
            cert_path: cert.to_path_buf(),
            generated,
        };
        material.server_config(cert, key)?;
        Ok(material)
    }

    /// Builds the rustls configuration, which proves the PEM parses and the key fits the
    /// certificate.
    fn server_config(&self, cert: &Path, key: &Path) -> Result<rustls::ServerConfig, ConfigError> {
        let chain = CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ConfigError::file(cert, format!("not a PEM certificate: {e}")))?;
        if chain.is_empty() {
            return Err(ConfigError::file(cert, "holds no PEM certificate"));
        }
        let private = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| ConfigError::file(key, format!("not a PEM private key: {e}")))?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ConfigError::file(cert, e))?
            .with_no_client_auth()
            .with_single_cert(chain, private)
            .map_err(|e| ConfigError::file(key, format!("does not fit the certificate: {e}")))
    }
}

fn write_new_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), ConfigError> {
    crate::files::write_durably(path, contents, mode)
        .map_err(|e| ConfigError::file(path, format!("cannot write: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn config_in(dir: &Path) -> Config {
        let mut config = Config::default();
        config.storage.path = dir.to_path_buf();
        config
    }

    #[test]
    fn a_certificate_is_made_once_and_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let config = config_in(dir.path());
        let first = TlsMaterial::load(&config).unwrap();
        assert!(first.generated);
        let key_mode = std::fs::metadata(dir.path().join("tls/key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(key_mode & 0o777, 0o600);
        let second = TlsMaterial::load(&config).unwrap();
        assert_eq!(first.cert_pem, second.cert_pem);
        assert_eq!(first.key_pem(), second.key_pem());
    }

    #[test]
    fn an_unreadable_certificate_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = config_in(dir.path());
        config.tls.cert_file = Some(dir.path().join("missing-cert.pem"));
        config.tls.key_file = Some(dir.path().join("missing-key.pem"));
        let err = TlsMaterial::load(&config).unwrap_err().to_string();
        assert!(err.contains("missing-cert.pem"), "{err}");
    }

    #[test]
    fn a_key_that_does_not_fit_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let a = rcgen::generate_simple_self_signed(vec!["a.example".into()]).unwrap();
        let b = rcgen::generate_simple_self_signed(vec!["b.example".into()]).unwrap();
        std::fs::write(dir.path().join("cert.pem"), a.cert.pem()).unwrap();
        std::fs::write(dir.path().join("key.pem"), b.signing_key.serialize_pem()).unwrap();
        std::fs::write(dir.path().join("junk.pem"), "not pem at all").unwrap();
        let mut config = config_in(dir.path());
        config.tls.cert_file = Some(dir.path().join("cert.pem"));
        config.tls.key_file = Some(dir.path().join("key.pem"));
        let err = TlsMaterial::load(&config).unwrap_err().to_string();
        assert!(err.contains("key.pem"), "{err}");
        config.tls.cert_file = Some(dir.path().join("junk.pem"));
        let err = TlsMaterial::load(&config).unwrap_err().to_string();
        assert!(err.contains("junk.pem"), "{err}");
    }
}
