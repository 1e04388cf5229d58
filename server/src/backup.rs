//! Backups: consistent copies of the database made while the server runs, kept in
//! `backups/` beside the database file; the restore that puts one back; and the lock
//! that keeps a second server, or a restore, off a database a server is running on.

use std::fs::File;
use std::path::{Path, PathBuf};

use chrono::{DateTime, NaiveDateTime, Utc};
use rusqlite::{Connection, OpenFlags};
use serde::Serialize;

use crate::store::{self, Error, Store, format_time};

/// One backup file.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct BackupInfo {
    /// The file name, e.g. `hearth-20261128T153012.345Z.db`.
    pub name: String,
    pub bytes: u64,
    /// When the copy was taken (RFC 3339).
    pub created_at: String,
    /// The `seq` of the last change the copy holds.
    pub seq: i64,
    /// Made by `backups.schedule` (and deleted by it past `backups.keep`), not by a call.
    pub scheduled: bool,
}

/// The backups of one database.
pub struct Backups {
    dir: PathBuf,
    /// One backup at a time: each is a full read of the database.
    running: tokio::sync::Mutex<()>,
}

const PREFIX: &str = "hearth-";
/// After [`PREFIX`] in the names of scheduled backups.
const SCHEDULED: &str = "auto-";
const SUFFIX: &str = "Z.db";
const TIME_FORMAT: &str = "%Y%m%dT%H%M%S%.3f";

impl Backups {
    /// The backups of the database file `database`, in `backups/` beside it.
    pub fn beside(database: &Path) -> Backups {
        let dir = database.parent().unwrap_or(Path::new(".")).join("backups");
        Backups { dir, running: tokio::sync::Mutex::new(()) }
    }

    /// Copies the database into a new backup file. Writes go on meanwhile; the copy is
    /// the database as of the moment it began.
    pub async fn create(&self, store: &Store) -> Result<BackupInfo, Error> {
        self.make(store, false).await
    }

    async fn make(&self, store: &Store, scheduled: bool) -> Result<BackupInfo, Error> {
        let _one_at_a_time = self.running.lock().await;
        let dir = self.dir.clone();
        let kind = if scheduled { SCHEDULED } else { "" };
        let (name, partial) = blocking(move || {
            crate::private::dir(&dir).map_err(|e| io_error(&dir, e))?;
            // Names carry milliseconds; two backups in one millisecond wait for the next.
            let name = loop {
                let name = format!("{PREFIX}{kind}{}{SUFFIX}", Utc::now().format(TIME_FORMAT));
                if !dir.join(&name).exists() {
                    break name;
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            };
            // A hidden name until complete: a listing never shows half a backup. One backup
            // runs at a time, so any other partial file is left from a stop mid-backup.
            remove_partials(&dir);
            let partial = dir.join(format!(".{name}.partial"));
            Ok((name, partial))
        })
        .await?;
        if let Err(error) = store.backend().backup(partial.clone()).await {
            let _ = std::fs::remove_file(&partial);
            return Err(error);
        }
        let dir = self.dir.clone();
        let made = blocking(move || {
            let file = dir.join(&name);
            let finished = crate::private::restrict(&partial)
                .and_then(|()| File::open(&partial))
                .and_then(|copy| copy.sync_all())
                .and_then(|()| std::fs::rename(&partial, &file))
                .and_then(|()| File::open(&dir)?.sync_all());
            if let Err(error) = finished {
                let _ = std::fs::remove_file(&partial);
                return Err(io_error(&file, error));
            }
            describe(&dir, name)
        })
        .await?;
        tracing::info!(name = %made.name, bytes = made.bytes, seq = made.seq, "backup made");
        Ok(made)
    }

    /// Every backup, newest first.
    pub async fn list(&self) -> Result<Vec<BackupInfo>, Error> {
        let dir = self.dir.clone();
        blocking(move || {
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(error) => return Err(io_error(&dir, error)),
            };
            let mut backups = Vec::new();
            for entry in entries {
                let name = entry.map_err(|e| io_error(&dir, e))?.file_name().to_string_lossy().into_owned();
                match describe(&dir, name) {
                    Ok(backup) => backups.push(backup),
                    // Not a backup's name: a partial one, or a file someone put there.
                    Err(Error::NotFound(_)) => {}
                    Err(error) => tracing::warn!(%error, "unreadable backup left out of the list"),
                }
            }
            backups.sort_by(|a, b| (&b.created_at, &b.name).cmp(&(&a.created_at, &a.name)));
            Ok(backups)
        })
        .await
    }

    /// The file of the backup `name`; not-found for any name this module did not make.
    pub fn file(&self, name: &str) -> Result<PathBuf, Error> {
        let missing = || Error::NotFound(format!("no backup named `{name}`"));
        // Only names of the exact form made here, so no name reaches outside the dir.
        created_at(name).ok_or_else(missing)?;
        let file = self.dir.join(name);
        if file.is_file() { Ok(file) } else { Err(missing()) }
    }

    /// Deletes the backup `name`.
    pub async fn delete(&self, name: &str) -> Result<(), Error> {
        let file = self.file(name)?;
        tokio::fs::remove_file(&file).await.map_err(|e| io_error(&file, e))?;
        tracing::info!(%name, "backup deleted");
        Ok(())
    }

    /// Makes a backup at each tick of `cron`, keeping the newest `keep` scheduled ones
    /// (0: all), until dropped. A tick missed while the server was stopped is made up at
    /// start; with no scheduled backup yet, the first comes at the next tick.
    pub async fn run_schedule(&self, store: &Store, cron: croner::Cron, keep: usize) {
        let newest = match self.list().await {
            Ok(list) => list.into_iter().find(|backup| backup.scheduled),
            Err(error) => {
                tracing::error!(%error, "cannot list the backups; scheduled backups start with the next tick");
                None
            }
        };
        let newest = newest.and_then(|backup| DateTime::parse_from_rfc3339(&backup.created_at).ok());
        if let (Some(newest), Ok(missed)) = (newest, cron.find_previous_occurrence(&Utc::now(), true))
            && missed > newest
        {
            tracing::info!(tick = %missed, "making the scheduled backup missed while stopped");
            self.scheduled(store, keep).await;
        }
        // Never the same tick twice, even if the timer wakes a hair before the wall clock.
        let mut after = Utc::now();
        loop {
            let Ok(next) = cron.find_next_occurrence(&after.max(Utc::now()), false) else {
                tracing::warn!("backups.schedule has no further ticks");
                return;
            };
            tokio::time::sleep((next - Utc::now()).to_std().unwrap_or_default()).await;
            self.scheduled(store, keep).await;
            after = next;
        }
    }

    /// One scheduled backup, then the scheduled ones past `keep` go. A failure is
    /// logged; the next tick tries again.
    async fn scheduled(&self, store: &Store, keep: usize) {
        if let Err(error) = self.make(store, true).await {
            tracing::error!(%error, "the scheduled backup failed");
            return;
        }
        if keep == 0 {
            return;
        }
        let list = match self.list().await {
            Ok(list) => list,
            Err(error) => return tracing::error!(%error, "cannot list the backups to delete old ones"),
        };
        for old in list.iter().filter(|backup| backup.scheduled).skip(keep) {
            if let Err(error) = self.delete(&old.name).await {
                tracing::error!(name = %old.name, %error, "cannot delete an old scheduled backup");
            }
        }
    }
}

/// Removes the hidden files of backups that never finished.
fn remove_partials(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let hidden = format!(".{PREFIX}");
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(&hidden) && name.ends_with(".partial") {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => tracing::info!(%name, "removed an unfinished backup"),
                Err(error) => tracing::warn!(%name, %error, "cannot remove an unfinished backup"),
            }
        }
    }
}

/// The creation time a backup's name carries, or `None` for a name not made here.
fn created_at(name: &str) -> Option<String> {
    let rest = name.strip_prefix(PREFIX)?;
    let time = rest.strip_prefix(SCHEDULED).unwrap_or(rest).strip_suffix(SUFFIX)?;
    // chrono accepts some variations (fewer digits); only the canonical form is a name.
    let parsed = NaiveDateTime::parse_from_str(time, TIME_FORMAT).ok()?;
    (parsed.format(TIME_FORMAT).to_string() == time)
        .then(|| format_time(DateTime::<Utc>::from_naive_utc_and_offset(parsed, Utc).timestamp_micros()))
}

/// The backup `name` in `dir`, read from its file; not-found for a name not made here.
fn describe(dir: &Path, name: String) -> Result<BackupInfo, Error> {
    let created_at = created_at(&name).ok_or_else(|| Error::NotFound(format!("no backup named `{name}`")))?;
    let file = dir.join(&name);
    let bytes = std::fs::metadata(&file).map_err(|e| io_error(&file, e))?.len();
    let seq = store::sqlite::last_seq(&Connection::open_with_flags(&file, OpenFlags::SQLITE_OPEN_READ_ONLY)?)?;
    let scheduled = name[PREFIX.len()..].starts_with(SCHEDULED);
    Ok(BackupInfo { name, bytes, created_at, seq, scheduled })
}

/// Runs file work off the async workers.
async fn blocking<R: Send + 'static>(work: impl FnOnce() -> Result<R, Error> + Send + 'static) -> Result<R, Error> {
    tokio::task::spawn_blocking(work).await.map_err(|e| Error::Internal(format!("backup task failed: {e}")))?
}

fn io_error(path: &Path, error: std::io::Error) -> Error {
    Error::Unavailable(format!("{}: {error}", path.display()))
}

/// Held while a server runs on a database (an OS lock on `<database>.lock`, gone with the
/// process however it ends): a second server would break the one-writer design, and a
/// restore under a running server would leave it serving stale state.
pub struct DatabaseLock {
    _file: File,
}

impl DatabaseLock {
    /// Takes the lock, or says who holds it.
    pub fn acquire(database: &Path, purpose: &str) -> anyhow::Result<DatabaseLock> {
        if let Some(parent) = database.parent() {
            crate::private::dir(parent)?;
        }
        let path = lock_path(database);
        crate::private::file(&path)?;
        let file = File::options().create(true).truncate(false).write(true).open(&path)?;
        match file.try_lock() {
            Ok(()) => Ok(DatabaseLock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
                "cannot {purpose}: a Hearth server is running on {} (it holds {})",
                database.display(),
                path.display()
            ),
            Err(std::fs::TryLockError::Error(error)) => Err(anyhow::anyhow!("cannot lock {}: {error}", path.display())),
        }
    }
}

fn lock_path(database: &Path) -> PathBuf {
    let mut name = database.file_name().unwrap_or_default().to_os_string();
    name.push(".lock");
    database.with_file_name(name)
}

/// Puts the backup `from` in place of the database at `database`: refused while a
/// server runs on it, and refused whole for a file that is not a sound Hearth backup.
/// Returns the `seq` of the last change the backup holds.
pub fn restore(database: &Path, from: &Path) -> anyhow::Result<i64> {
    let _lock = DatabaseLock::acquire(database, "restore")?;
    Ok(store::sqlite::restore(database, from)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_names_made_here_are_backups() {
        let made = format!("{PREFIX}{}{SUFFIX}", Utc::now().format(TIME_FORMAT));
        assert!(created_at(&made).is_some(), "{made}");
        assert_eq!(created_at("hearth-20261128T153012.345Z.db").as_deref(), Some("2026-11-28T15:30:12.345000Z"));
        for bad in [
            "hearth-20261128T153012.3Z.db",
            "hearth-20261128T153012.345Z.db.partial",
            ".hearth-20261128T153012.345Z.db.partial",
            "../hearth-20261128T153012.345Z.db",
            "hearth-20261128T153012.345Z.db/..",
            "hearth.db",
            "hearth-20261328T153012.345Z.db",
        ] {
            assert_eq!(created_at(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_second_lock_on_one_database_is_refused_until_the_first_goes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let database = dir.path().join("data/hearth.db");
        let held = DatabaseLock::acquire(&database, "serve").expect("first lock");
        let refused = DatabaseLock::acquire(&database, "restore").err().expect("second lock refused").to_string();
        assert!(refused.contains("cannot restore: a Hearth server is running"), "{refused}");
        drop(held);
        DatabaseLock::acquire(&database, "restore").expect("free again");
    }
}
