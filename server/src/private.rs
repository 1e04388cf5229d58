//! The data dir holds secrets: the database keeps signing keys, TOTP secrets, mailed
//! codes and session hashes, and so do its WAL and its backups. Whatever Hearth creates
//! there is for the server's own user alone (dirs 0700, files 0600), whatever the umask,
//! and files left by an older version are narrowed when the server opens them.

use std::io;
use std::path::Path;

#[cfg(unix)]
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};

/// Creates `dir` (and its parents) and makes it private.
pub fn dir(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    #[cfg(unix)]
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    Ok(())
}

/// Creates `file` empty if it is absent, and makes it private.
pub fn file(file: &Path) -> io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    options.mode(0o600);
    drop(options.open(file)?);
    restrict(file)
}

/// Creates `file`, private from its first byte; fails if it exists.
pub fn create_new(file: &Path) -> io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    options.mode(0o600);
    options.open(file)
}

/// Makes `file` private if it exists.
pub fn restrict(file: &Path) -> io::Result<()> {
    #[cfg(unix)]
    match std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600)) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        other => other?,
    }
    Ok(())
}

/// Makes the database at `path` and its companion files (`-wal`, `-shm`) private.
pub fn database(path: &Path) -> io::Result<()> {
    if let Some(parent) = path.parent().filter(|parent| !parent.as_os_str().is_empty()) {
        dir(parent)?;
    }
    file(path)?;
    for suffix in ["-wal", "-shm"] {
        let mut companion = path.as_os_str().to_owned();
        companion.push(suffix);
        restrict(Path::new(&companion))?;
    }
    Ok(())
}
