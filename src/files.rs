//! Files Keyhold writes for itself: folders only this user may read, and files written whole.

use std::fs::DirBuilder;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// A private folder that could not be made.
#[derive(Debug, thiserror::Error)]
#[error("cannot create the folder {path}: {source}")]
pub struct PrivateDirError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

/// Creates `path` (and its parents) readable by this user only; an existing folder is
/// narrowed to 0700 too, since what Keyhold keeps holds password hashes and keys.
pub fn create_private_dir(path: &Path) -> Result<(), PrivateDirError> {
    let err = |source| PrivateDirError {
        path: path.to_path_buf(),
        source,
    };
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).map_err(err)
}

/// Writes `contents` to `path` with `mode`, whole or not at all: into a temporary file beside
/// it, synced, then renamed over it, so that a crash leaves the old file or the new one.
pub fn write_durably(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    file.write_all(contents)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}
