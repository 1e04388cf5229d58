//! The SQLite backend: one writer thread with group commit (`writer`), a pool of
//! read-only connections in WAL mode, queries compiled by `sql`, and the expression
//! indexes declared in config.

mod auth;
mod portable;
pub mod sql;
mod writer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures::FutureExt;
use futures::future::BoxFuture;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::query::{Field, Target};
use super::{
    AggregateValues, Aggregation, Backend, Change, ChangeBus, ChangeKind, DeadLetter, DocPath, Error, LogPage, Page,
    PathFilter, Prepared, QuerySpec, RawDoc, StoredDoc, WriteGuard, WriteResult,
};
pub use writer::WriterOptions;
use writer::{Command, Exec, Job};

/// Hearth's own schema, applied in order; never edit one that has shipped.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "init", include_str!("../../../../migrations/sqlite/0001_init.sql")),
    (2, "auth", include_str!("../../../../migrations/sqlite/0002_auth.sql")),
    (3, "mail", include_str!("../../../../migrations/sqlite/0003_mail.sql")),
    (4, "mfa", include_str!("../../../../migrations/sqlite/0004_mfa.sql")),
    (5, "oauth", include_str!("../../../../migrations/sqlite/0005_oauth.sql")),
    (6, "functions", include_str!("../../../../migrations/sqlite/0006_functions.sql")),
    (7, "user_events", include_str!("../../../../migrations/sqlite/0007_user_events.sql")),
    (8, "prune_by_seq", include_str!("../../../../migrations/sqlite/0008_prune_by_seq.sql")),
    (9, "log_old_only", include_str!("../../../../migrations/sqlite/0009_log_old_only.sql")),
    (10, "one_document_key", include_str!("../../../../migrations/sqlite/0010_one_document_key.sql")),
    (11, "one_document_index", include_str!("../../../../migrations/sqlite/0011_one_document_index.sql")),
    (12, "security", include_str!("../../../../migrations/sqlite/0012_security.sql")),
];

/// How durable a commit is. `Normal` (WAL) survives a crash of the process; `Full`
/// also survives a power cut, at one fsync per group commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    #[default]
    Normal,
    Full,
}

/// Everything the SQLite backend is configured with.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    pub path: PathBuf,
    pub readers: usize,
    pub writer: WriterOptions,
    pub synchronous: Synchronous,
    /// Hold the database file exclusively: no file lock per read, no other process.
    pub exclusive: bool,
    /// Requests waiting for the writer before callers wait to enqueue.
    pub queue_capacity: usize,
    pub indexes: Vec<IndexDef>,
}

impl SqliteOptions {
    /// The options `[store]` of the config gives, for the database at `path`, with no
    /// declared indexes.
    pub fn new(path: PathBuf, store: &crate::config::StoreConfig) -> SqliteOptions {
        SqliteOptions {
            path,
            readers: store.readers,
            writer: WriterOptions { group_commit: store.group_commit, max_group_writes: store.max_group_writes },
            synchronous: store.synchronous,
            exclusive: store.exclusive,
            queue_capacity: store.queue_capacity,
            indexes: Vec::new(),
        }
    }
}

/// An expression index over some fields of one collection or collection group.
#[derive(Debug, Clone)]
pub struct IndexDef {
    pub target: Target,
    pub fields: Vec<(Field, hearth_types::Direction)>,
}

impl IndexDef {
    /// The `CREATE INDEX` statement; its name is derived from its definition.
    pub fn ddl(&self) -> String {
        let mut columns: Vec<String> =
            self.fields.iter().map(|(field, dir)| sql::FieldSql::of(field).order_columns(*dir)).collect();
        columns.push("path ASC".into());
        let body = format!("ON documents ({}) WHERE {}", columns.join(", "), sql::target_term(&self.target));
        use sha2::Digest;
        let digest = sha2::Sha256::digest(body.as_bytes());
        let name: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        format!("CREATE INDEX IF NOT EXISTS hx_{name} {body}")
    }
}

/// The SQLite implementation of [`Backend`].
pub struct SqliteBackend {
    writer: mpsc::Sender<Command>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    checkpointer: Mutex<Option<Checkpointer>>,
    readers: Arc<Readers>,
    /// Keeps backups and the checkpointer's RESTART apart.
    backups: Arc<BackupGate>,
}

/// A RESTART checkpoint holds new writes back until every reader is on the newest
/// snapshot, so one must never wait for a backup (a read of the whole database, seconds
/// long). Each side announces itself, then looks at the other (sequentially consistent):
/// a RESTART is skipped while a backup runs, and a backup starts its read only after a
/// RESTART already under way has finished.
#[derive(Default)]
struct BackupGate {
    running: AtomicUsize,
    restarting: std::sync::atomic::AtomicBool,
}

impl BackupGate {
    /// Whether a RESTART may go ahead; if so, [`BackupGate::end_restart`] follows it.
    fn begin_restart(&self) -> bool {
        self.restarting.store(true, Ordering::SeqCst);
        if self.running.load(Ordering::SeqCst) == 0 {
            return true;
        }
        self.restarting.store(false, Ordering::SeqCst);
        false
    }

    fn end_restart(&self) {
        self.restarting.store(false, Ordering::SeqCst);
    }

    /// Counts a backup in; from the returned guard's drop on, it is counted out.
    fn begin_backup(self: &Arc<Self>) -> BackupRunning {
        self.running.fetch_add(1, Ordering::SeqCst);
        BackupRunning(self.clone())
    }
}

/// A running backup, counted until dropped, however the backup ends.
struct BackupRunning(Arc<BackupGate>);

impl BackupRunning {
    /// Waits out a RESTART that was under way before this backup was counted.
    fn wait_for_restart(&self) {
        while self.0.restarting.load(Ordering::SeqCst) {
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
    }
}

impl Drop for BackupRunning {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
    }
}

/// SQLite's default busy handler sleeps in whole milliseconds (and longer as it retries),
/// which is an eternity for the writer when the checkpointer briefly holds a lock; poll
/// every 50 µs instead, for up to 5 s.
fn short_busy_waits(conn: &Connection) -> Result<(), Error> {
    fn wait(attempt: i32) -> bool {
        std::thread::sleep(std::time::Duration::from_micros(50));
        attempt < 100_000
    }
    conn.busy_handler(Some(wait))?;
    Ok(())
}

/// WAL size (in pages) past which the checkpointer restarts the WAL.
const RESTART_WAL_FRAMES: i64 = 16384;

/// Moves WAL checkpoints off the writer thread: the writer only appends to the WAL, and
/// this thread copies committed pages back into the database file (PASSIVE, so it never
/// blocks the writer or readers).
struct Checkpointer {
    stop: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Checkpointer {
    /// `backups`: kept apart from RESTARTs.
    fn start(file: &DbFile, backups: Arc<BackupGate>) -> Result<Checkpointer, Error> {
        let conn = file
            .connect(OpenFlags::default())
            .map_err(|e| Error::Unavailable(format!("cannot open the checkpointer: {e}")))?;
        conn.execute_batch("PRAGMA busy_timeout = 5000;")?;
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("hearth-checkpoint".into())
            .spawn(move || {
                let interval = std::time::Duration::from_millis(100);
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
                    // PASSIVE copies what it can without blocking anyone. Under a steady
                    // stream of writes it never catches up, and the WAL would grow without
                    // end; once it is large, RESTART waits for the writer's current
                    // transaction so the next one starts the WAL from the beginning.
                    // While a backup runs it waits: the WAL grows meanwhile instead.
                    let passive = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| row.get::<_, i64>(1));
                    let outcome = match passive {
                        Ok(frames) if frames > RESTART_WAL_FRAMES && backups.begin_restart() => {
                            let restarted = conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |_| Ok(()));
                            backups.end_restart();
                            restarted
                        }
                        other => other.map(|_| ()),
                    };
                    if let Err(error) = outcome {
                        tracing::warn!(%error, "WAL checkpoint failed");
                    }
                }
                let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
            })
            .map_err(|e| Error::Internal(format!("cannot start the checkpointer: {e}")))?;
        Ok(Checkpointer { stop, thread })
    }

    fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

impl SqliteBackend {
    /// Opens (creating if needed) the database, migrates it, reconciles the declared
    /// indexes and starts the writer.
    pub fn open(options: SqliteOptions, bus: ChangeBus) -> Result<SqliteBackend, Error> {
        crate::private::database(&options.path)
            .map_err(|e| Error::Unavailable(format!("cannot create {}: {e}", options.path.display())))?;
        let file = DbFile { path: options.path.clone(), exclusive: options.exclusive };
        let mut conn = file
            .connect(OpenFlags::default())
            .map_err(|e| Error::Unavailable(format!("cannot open {}: {e}", options.path.display())))?;
        let synchronous = match options.synchronous {
            Synchronous::Normal => "NORMAL",
            Synchronous::Full => "FULL",
        };
        conn.execute_batch(&format!(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = {synchronous}; PRAGMA busy_timeout = 5000; \
             PRAGMA foreign_keys = ON; PRAGMA temp_store = MEMORY; PRAGMA wal_autocheckpoint = 0; \
             PRAGMA journal_size_limit = 268435456; PRAGMA cache_size = -16384; PRAGMA mmap_size = 1073741824;"
        ))
        .map_err(|e| match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DatabaseBusy) => Error::Unavailable(format!(
                "{} is locked by another process (a server running with store.exclusive?)",
                options.path.display()
            )),
            _ => e.into(),
        })?;
        short_busy_waits(&conn)?;
        // `journal_size_limit` stays above the restart threshold (16,384 pages ≈ 64 MiB), so
        // a restarted WAL reuses its file instead of being truncated and grown again.
        // The writer keeps a modest page cache: every commit walks the cache's hash
        // table, so a large cache makes each commit slower; readers keep the big caches.
        conn.set_prepared_statement_cache_capacity(64);
        migrate(&mut conn)?;
        reconcile_indexes(&conn, &options.indexes)?;
        let readers = Arc::new(Readers::open(file.clone(), options.readers.max(1))?);
        let backups = Arc::new(BackupGate::default());
        let checkpointer = Checkpointer::start(&file, backups.clone())?;
        let (sender, receiver) = mpsc::channel(options.queue_capacity.max(1));
        let writer_options = options.writer;
        let thread = std::thread::Builder::new()
            .name("hearth-writer".into())
            .spawn(move || writer::run(conn, receiver, bus, writer_options))
            .map_err(|e| Error::Internal(format!("cannot start the writer: {e}")))?;
        Ok(SqliteBackend {
            writer: sender,
            thread: Mutex::new(Some(thread)),
            checkpointer: Mutex::new(Some(checkpointer)),
            readers,
            backups,
        })
    }

    /// Runs `write` on the write connection, between group commits: for Hearth's own
    /// tables outside the document store (users, sessions, keys). Use a transaction
    /// inside `write` when several statements must hold together.
    pub async fn write_with<R, F>(&self, write: F) -> Result<R, Error>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R, Error> + Send + 'static,
    {
        let (sender, result) = oneshot::channel();
        self.exec(Box::new(move |conn| {
            let _ = sender.send(write(conn));
            Ok(0)
        }))
        .await?;
        result.await.map_err(|_| shutting_down())?
    }

    /// Runs `read` on a read-only connection.
    pub async fn read_with<R, F>(&self, read: F) -> Result<R, Error>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R, Error> + Send + 'static,
    {
        self.readers.run(read).await
    }

    async fn exec(&self, exec: Exec) -> Result<u64, Error> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Exec(exec, reply)).await?;
        answer.await.map_err(|_| shutting_down())?
    }

    /// The integer of a one-row `name → value` table (trigger cursors, schedule ticks).
    fn read_named(&self, sql: &'static str, name: String) -> BoxFuture<'_, Result<Option<i64>, Error>> {
        self.readers
            .run(move |conn| {
                let mut statement = conn.prepare_cached(sql)?;
                let mut rows = statement.query_map([&name], |row| row.get::<_, i64>(0))?;
                Ok(rows.next().transpose()?)
            })
            .boxed()
    }

    /// Writes `(name, value)` with `sql` on the writer.
    fn write_named(&self, sql: &'static str, name: String, value: i64) -> BoxFuture<'_, Result<(), Error>> {
        async move {
            self.exec(Box::new(move |conn| Ok(conn.execute(sql, rusqlite::params![name, value])? as u64)))
                .await
                .map(|_| ())
        }
        .boxed()
    }

    async fn send(&self, command: Command) -> Result<(), Error> {
        self.writer.send(command).await.map_err(|_| shutting_down())?;
        let depth = self.writer.max_capacity() - self.writer.capacity();
        metrics::gauge!("hearth_writer_queue_depth").set(depth as f64);
        Ok(())
    }
}

fn shutting_down() -> Error {
    Error::Unavailable("the server is shutting down".into())
}

fn migrate(conn: &mut Connection) -> Result<(), Error> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS _hearth_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)",
    )?;
    let mut migrated = false;
    for (version, name, sql) in MIGRATIONS {
        let applied: Option<i64> = conn
            .query_row("SELECT version FROM _hearth_migrations WHERE version = ?1", [version], |row| row.get(0))
            .optional()?;
        if applied.is_some() {
            continue;
        }
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.execute(
            "INSERT INTO _hearth_migrations (version, name, applied_at) VALUES (?1, ?2, ?3)",
            rusqlite::params![version, name, super::now_micros()],
        )?;
        tx.commit()?;
        tracing::info!(version, name, "applied migration");
        migrated = true;
    }
    if migrated {
        compact_after_rebuild(conn)?;
    }
    Ok(())
}

/// A migration that rebuilds a table frees the old one's pages inside the file, which
/// keeps its size: after an upgrade that left more than a quarter of the file free, the
/// file is rewritten once (about 10 s per GB of data on 2 cores) rather than left twice
/// as large as its data.
fn compact_after_rebuild(conn: &Connection) -> Result<(), Error> {
    let pages: i64 = conn.query_row("PRAGMA page_count", [], |row| row.get(0))?;
    let free: i64 = conn.query_row("PRAGMA freelist_count", [], |row| row.get(0))?;
    if free * 4 <= pages {
        return Ok(());
    }
    let started = std::time::Instant::now();
    tracing::info!(pages, free, "compacting the database after a migration rebuilt a table");
    conn.execute_batch("VACUUM")?;
    // VACUUM went through the WAL; fold it in now rather than leave a WAL the size of
    // the database for the checkpointer.
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    let after: i64 = conn.query_row("PRAGMA page_count", [], |row| row.get(0))?;
    tracing::info!(pages = after, seconds = started.elapsed().as_secs_f64(), "compacted the database");
    Ok(())
}

/// Creates the declared indexes and drops `hx_` indexes no longer declared.
fn reconcile_indexes(conn: &Connection, indexes: &[IndexDef]) -> Result<(), Error> {
    let wanted: Vec<String> = indexes.iter().map(IndexDef::ddl).collect();
    let existing: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND name LIKE 'hx\\_%' ESCAPE '\\'")?
        .query_map([], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    for name in existing {
        if !wanted.iter().any(|ddl| ddl.contains(&format!(" {name} "))) {
            conn.execute_batch(&format!("DROP INDEX {name}"))?;
            tracing::info!(index = %name, "dropped index no longer in config");
        }
    }
    for ddl in wanted {
        conn.execute_batch(&ddl)?;
    }
    Ok(())
}

/// A pool of read-only connections. A read runs on the blocking pool, or on the calling
/// thread when it is short (see [`Readers::run_short`]).
struct Readers {
    file: DbFile,
    idle: Mutex<Vec<Reader>>,
    permits: Semaphore,
}

/// One read connection and the step budget its progress handler spends.
struct Reader {
    conn: Connection,
    /// Thousands of SQLite VM steps the current read may still take before it is
    /// interrupted; unbounded on the blocking pool.
    budget: Arc<AtomicI64>,
}

/// How many thousand VM steps a read may take on an async worker before it moves to the
/// blocking pool: a page of 20 documents through an index takes a few thousand; a scan
/// of a large collection takes millions and must not hold a worker.
const INLINE_BUDGET: i64 = 25;

impl Reader {
    fn open(file: &DbFile) -> Result<Reader, Error> {
        let conn = open_reader(file)?;
        let budget = Arc::new(AtomicI64::new(i64::MAX));
        let spent = budget.clone();
        conn.progress_handler(1000, Some(move || spent.fetch_sub(1, Ordering::Relaxed) <= 1));
        Ok(Reader { conn, budget })
    }
}

impl Readers {
    fn open(file: DbFile, size: usize) -> Result<Readers, Error> {
        let connections = (0..size).map(|_| Reader::open(&file)).collect::<Result<Vec<_>, _>>()?;
        metrics::gauge!("hearth_db_readers").set(size as f64);
        Ok(Readers { file, idle: Mutex::new(connections), permits: Semaphore::new(size) })
    }

    fn take_idle(&self) -> Option<Reader> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop()
    }

    fn put_back(&self, reader: Reader) {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).push(reader);
    }

    /// Runs `read` on the blocking pool.
    async fn run<R, F>(self: &Arc<Self>, read: F) -> Result<R, Error>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R, Error> + Send + 'static,
    {
        let _permit = self.permits.acquire().await.map_err(|_| shutting_down())?;
        let reader = match self.take_idle() {
            Some(reader) => reader,
            None => Reader::open(&self.file)?,
        };
        metrics::gauge!("hearth_db_readers_busy").increment(1.0);
        let outcome = tokio::task::spawn_blocking(move || {
            reader.budget.store(i64::MAX, Ordering::Relaxed);
            let result = read(&reader.conn);
            (reader, result)
        })
        .await;
        metrics::gauge!("hearth_db_readers_busy").decrement(1.0);
        match outcome {
            Ok((reader, result)) => {
                self.put_back(reader);
                result
            }
            // The connection went down with the panicking read; the next read opens another.
            Err(error) => Err(Error::Internal(format!("read task failed: {error}"))),
        }
    }

    /// Runs `read` on the calling thread when a connection is idle, within
    /// [`INLINE_BUDGET`]: handing a lookup or a short indexed page to the blocking pool
    /// costs more in thread wake-ups than the read itself. A read that runs out of budget
    /// is interrupted and run again on the blocking pool, as is one that finds no idle
    /// connection.
    async fn run_short<R, F>(self: &Arc<Self>, read: F) -> Result<R, Error>
    where
        R: Send + 'static,
        F: Fn(&Connection) -> Result<R, Error> + Send + 'static,
    {
        let Ok(permit) = self.permits.try_acquire() else {
            return self.run(move |conn| read(conn)).await;
        };
        let Some(reader) = self.take_idle() else {
            drop(permit);
            return self.run(move |conn| read(conn)).await;
        };
        reader.budget.store(INLINE_BUDGET, Ordering::Relaxed);
        let result = read(&reader.conn);
        let interrupted = result.is_err() && reader.budget.load(Ordering::Relaxed) <= 0;
        self.put_back(reader);
        drop(permit);
        if interrupted {
            metrics::counter!("hearth_db_reads_moved_total").increment(1);
            return self.run(move |conn| read(conn)).await;
        }
        result
    }
}

fn run_query(conn: &Connection, spec: &QuerySpec) -> Result<Page, Error> {
    let compiled = sql::select(spec);
    let mut statement = conn.prepare_cached(&compiled.sql)?;
    let rows = statement.query_map(rusqlite::params_from_iter(compiled.params.iter()), doc_from_row)?;
    let mut docs = Vec::with_capacity(spec.limit + 1);
    for row in rows {
        docs.push(parse_doc(row?)?);
    }
    let more = docs.len() > spec.limit;
    docs.truncate(spec.limit);
    Ok(Page { docs, more })
}

/// The `seq` of the last change logged in the database `conn` is open on (0 if none).
pub(crate) fn last_seq(conn: &Connection) -> Result<i64, Error> {
    // AUTOINCREMENT's counter, not max(seq): it survives pruning the log.
    let sql = "SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'changes'), 0)";
    Ok(conn.prepare_cached(sql)?.query_row([], |row| row.get(0))?)
}

/// Replaces the database at `path` with the backup `from` (a file [`Backend::backup`]
/// made), page by page through SQLite, so the live file's WAL is never replayed over
/// restored pages. Nothing else may have `path` open. Returns the `seq` of the last
/// change the backup holds.
pub fn restore(path: &Path, from: &Path) -> Result<i64, Error> {
    let refused = |reason: String| Error::InvalidArgument(format!("{}: {reason}", from.display()));
    let source = Connection::open_with_flags(from, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| refused(format!("cannot open it: {e}")))?;
    let check: String = source
        .query_row("PRAGMA quick_check", [], |row| row.get(0))
        .map_err(|e| refused(format!("not a database: {e}")))?;
    if check != "ok" {
        return Err(refused(format!("damaged: {check}")));
    }
    let version: i64 = source
        .query_row("SELECT coalesce(max(version), 0) FROM _hearth_migrations", [], |row| row.get(0))
        .map_err(|_| refused("not a Hearth database".into()))?;
    let known = MIGRATIONS.last().map_or(0, |(version, ..)| *version);
    if version > known {
        return Err(refused(format!("made by a newer Hearth (schema {version}; this one knows up to {known})")));
    }
    let restored = last_seq(&source)?;
    drop(source);
    crate::private::database(path).map_err(|e| Error::Unavailable(format!("cannot create {}: {e}", path.display())))?;
    let mut live = Connection::open(path)?;
    let logged: bool =
        live.query_row("SELECT count(*) > 0 FROM sqlite_master WHERE name = 'sqlite_sequence'", [], |row| row.get(0))?;
    let live_seq = if logged { last_seq(&live)? } else { 0 };
    live.restore(rusqlite::MAIN_DB, from, None::<fn(rusqlite::backup::Progress)>)?;
    // A client may hold a resume token from after the backup. Changes from now on start
    // past a gap above every `seq` the live log gave out, so no such token reaches them
    // and the client gets a fresh snapshot instead of missing the rewind.
    if live_seq > restored
        && live.execute("UPDATE sqlite_sequence SET seq = ?1 WHERE name = 'changes'", [live_seq + 1])? == 0
    {
        live.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('changes', ?1)", [live_seq + 1])?;
    }
    Ok(restored)
}

/// The database file, and whether this process holds it alone.
#[derive(Debug, Clone)]
struct DbFile {
    path: PathBuf,
    /// Connect through SQLite's `unix-excl` VFS: the WAL index lives in this process's
    /// memory and a read transaction takes no file lock (two `fcntl` calls fewer per
    /// read), but no other process can open the file while the server runs (no `sqlite3`
    /// shell, no backup tool reading it live).
    exclusive: bool,
}

impl DbFile {
    fn connect(&self, flags: OpenFlags) -> rusqlite::Result<Connection> {
        if self.exclusive {
            Connection::open_with_flags_and_vfs(&self.path, flags, "unix-excl")
        } else {
            Connection::open_with_flags(&self.path, flags)
        }
    }
}

fn open_reader(file: &DbFile) -> Result<Connection, Error> {
    let conn = file
        .connect(OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI)
        .map_err(|e| Error::Unavailable(format!("cannot open a reader: {e}")))?;
    conn.execute_batch("PRAGMA busy_timeout = 5000; PRAGMA cache_size = -32768; PRAGMA mmap_size = 1073741824;")?;
    conn.set_prepared_statement_cache_capacity(256);
    Ok(conn)
}

/// The stored document at `path` (the path is the caller's, not parsed again from the row).
fn read_document(conn: &Connection, path: &DocPath) -> Result<Option<RawDoc>, Error> {
    Ok(conn
        .prepare_cached(
            "SELECT json(data), version, created_at, updated_at FROM documents WHERE coll_id = ?1 AND path = ?2",
        )?
        .query_row([path.collection_id(), path.as_str()], |row| {
            Ok(RawDoc {
                path: path.clone(),
                data: row.get(0)?,
                version: row.get(1)?,
                created_at: row.get(2)?,
                updated_at: row.get(3)?,
            })
        })
        .optional()?)
}

/// Runs `read` in one read transaction, so all its statements see the same commit.
fn in_read_transaction<R>(conn: &Connection, read: impl FnOnce(&Connection) -> Result<R, Error>) -> Result<R, Error> {
    conn.execute_batch("BEGIN")?;
    let outcome = read(conn);
    let _ = conn.execute_batch("COMMIT");
    outcome
}

fn doc_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<(String, String, i64, i64, i64)> {
    Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?))
}

fn parse_doc((path, data, version, created_at, updated_at): (String, String, i64, i64, i64)) -> Result<RawDoc, Error> {
    Ok(RawDoc {
        path: DocPath::parse(&path).map_err(|e| Error::Internal(format!("stored path: {e}")))?,
        data,
        version,
        created_at,
        updated_at,
    })
}

/// The log's shape of a document (see `writer::logged`).
#[derive(Deserialize)]
struct Logged {
    v: i64,
    c: i64,
    u: i64,
    d: serde_json::Map<String, Value>,
}

/// A document read back from the log, with its size there (what holding it costs).
type LoggedDoc = (Arc<StoredDoc>, usize);

fn parse_logged(path: &DocPath, text: &str) -> Result<LoggedDoc, Error> {
    let logged: Logged = serde_json::from_str(text).map_err(|e| Error::Internal(format!("logged JSON: {e}")))?;
    let doc =
        StoredDoc { path: path.clone(), data: logged.d, version: logged.v, created_at: logged.c, updated_at: logged.u };
    Ok((Arc::new(doc), text.len()))
}

/// One row of `changes`.
struct LogRow {
    seq: i64,
    path: String,
    kind: String,
    /// Only in rows logged before migration 9; see [`read_changes`].
    doc: Option<String>,
    old: Option<String>,
    committed_at: i64,
}

/// The next `limit` logged changes after `after` that `wanted` accepts, in `seq` order,
/// each with the document before and after it.
///
/// A row keeps only the document before its change; the one after it is the `old` of the
/// path's next change or, if none has come yet, the path's row in `documents`. Walking the
/// rows backwards finds most of them in the rows already read; the others take one lookup
/// in `changes_next_by_path` and, for the newest change of a path, one in `documents`.
/// Call it inside a read transaction, so both tables are read at the same commit.
fn read_changes(
    conn: &Connection,
    after: i64,
    limit: usize,
    wanted: Option<&(dyn Fn(&str) -> bool + Send + Sync)>,
) -> Result<LogPage, Error> {
    let mut rows = conn
        .prepare_cached(
            "SELECT seq, path, kind, doc, old, committed_at FROM changes WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )?
        .query_map(params![after, limit as i64], |row| {
            Ok(LogRow {
                seq: row.get(0)?,
                path: row.get(1)?,
                kind: row.get(2)?,
                doc: row.get(3)?,
                old: row.get(4)?,
                committed_at: row.get(5)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let last = rows.last().map(|row| row.seq);
    if let Some(wanted) = wanted {
        rows.retain(|row| wanted(&row.path));
    }
    // Per path, the document before the next change seen so far (walking backwards).
    let mut before_next: HashMap<String, LoggedDoc> = HashMap::new();
    let mut changes = Vec::with_capacity(rows.len());
    for row in rows.into_iter().rev() {
        let path = DocPath::parse(&row.path).map_err(|e| Error::Internal(format!("logged path: {e}")))?;
        let kind = ChangeKind::parse(&row.kind).ok_or_else(|| Error::Internal(format!("logged kind {}", row.kind)))?;
        let old = row.old.as_deref().map(|text| parse_logged(&path, text)).transpose()?;
        let after_change = match (kind, row.doc) {
            (ChangeKind::Delete, _) => None,
            (_, Some(text)) => Some(parse_logged(&path, &text)?),
            (_, None) => match before_next.get(row.path.as_str()) {
                Some(next) => Some(next.clone()),
                None => Some(document_after(conn, &path, row.seq)?),
            },
        };
        match &old {
            Some(old) => before_next.insert(row.path, old.clone()),
            None => before_next.remove(row.path.as_str()),
        };
        let size = |logged: &Option<LoggedDoc>| logged.as_ref().map_or(0, |(_, bytes)| *bytes);
        changes.push(Change {
            seq: row.seq,
            kind,
            bytes: size(&after_change) + size(&old),
            doc: after_change.map(|(doc, _)| doc),
            old: old.map(|(doc, _)| doc),
            path,
            committed_at: row.committed_at,
        });
    }
    changes.reverse();
    Ok(LogPage { changes, last })
}

/// The `old` of the path's next change after a `seq`; `kind <> 'create'` lets SQLite use
/// the partial index `changes_next_by_path`.
const NEXT_CHANGE_OLD: &str =
    "SELECT old FROM changes WHERE path = ?1 AND seq > ?2 AND kind <> 'create' ORDER BY seq LIMIT 1";

/// The document as the change `seq` left it, when no later row read so far says: the `old`
/// of the path's next change, else the current document.
fn document_after(conn: &Connection, path: &DocPath, seq: i64) -> Result<LoggedDoc, Error> {
    let next_old: Option<String> = conn
        .prepare_cached(NEXT_CHANGE_OLD)?
        .query_row(params![path.as_str(), seq], |row| row.get(0))
        .optional()?
        .flatten();
    if let Some(text) = next_old {
        return parse_logged(path, &text);
    }
    let current = read_document(conn, path)?
        .ok_or_else(|| Error::Internal(format!("change {seq} of `{path}` has no document after it")))?;
    Ok((Arc::new(current.parse()?), current.data.len()))
}

impl Backend for SqliteBackend {
    fn commit(
        &self,
        writes: Vec<Prepared>,
        batch: bool,
        guard: Option<Arc<dyn WriteGuard>>,
    ) -> BoxFuture<'_, Result<Vec<WriteResult>, Error>> {
        async move {
            let (reply, answer) = oneshot::channel();
            self.send(Command::Write(Job { writes, batch, guard, reply })).await?;
            answer.await.map_err(|_| shutting_down())?
        }
        .boxed()
    }

    fn get(&self, path: DocPath) -> BoxFuture<'_, Result<Option<RawDoc>, Error>> {
        self.readers.run_short(move |conn| read_document(conn, &path)).boxed()
    }

    fn query(&self, spec: QuerySpec) -> BoxFuture<'_, Result<Page, Error>> {
        self.readers.run_short(move |conn| run_query(conn, &spec)).boxed()
    }

    fn snapshot(&self, spec: QuerySpec) -> BoxFuture<'_, Result<(Page, i64), Error>> {
        self.readers
            .run(move |conn| {
                // The page and the seq, at the same commit.
                in_read_transaction(conn, |conn| Ok((run_query(conn, &spec)?, last_seq(conn)?)))
            })
            .boxed()
    }

    fn last_seq(&self) -> BoxFuture<'_, Result<i64, Error>> {
        self.readers.run_short(last_seq).boxed()
    }

    fn aggregate(&self, spec: QuerySpec, aggregation: Aggregation) -> BoxFuture<'_, Result<AggregateValues, Error>> {
        self.readers
            .run(move |conn| {
                let compiled = sql::aggregate(&spec, &aggregation.sum, &aggregation.avg, aggregation.limit);
                let mut statement = conn.prepare_cached(&compiled.sql)?;
                let sums = aggregation.sum.len();
                let avgs = aggregation.avg.len();
                statement
                    .query_row(rusqlite::params_from_iter(compiled.params.iter()), |row| {
                        let count: i64 = row.get(0)?;
                        let number = |index: usize| -> rusqlite::Result<Value> {
                            Ok(match row.get::<_, rusqlite::types::Value>(index)? {
                                rusqlite::types::Value::Integer(i) => Value::from(i),
                                rusqlite::types::Value::Real(f) => Value::Number(super::value::normalized_float(f)),
                                _ => Value::Null,
                            })
                        };
                        let sum = (0..sums)
                            .map(|i| number(1 + i).map(|v| if v.is_null() { Value::from(0) } else { v }))
                            .collect::<rusqlite::Result<Vec<_>>>()?;
                        let avg = (0..avgs).map(|i| number(1 + sums + i)).collect::<rusqlite::Result<Vec<_>>>()?;
                        Ok(AggregateValues { count: count as u64, sum, avg })
                    })
                    .map_err(|error| match &error {
                        rusqlite::Error::SqliteFailure(_, Some(message)) if message.contains("overflow") => {
                            Error::InvalidArgument("a sum overflowed 64-bit integers".into())
                        }
                        _ => Error::from(error),
                    })
            })
            .boxed()
    }

    fn changes_since(
        &self,
        after: i64,
        limit: usize,
        wanted: Option<PathFilter>,
    ) -> BoxFuture<'_, Result<LogPage, Error>> {
        self.readers
            .run(move |conn| {
                // The log and the documents it points at, at the same commit.
                in_read_transaction(conn, |conn| read_changes(conn, after, limit, wanted.as_deref()))
            })
            .boxed()
    }

    fn prune_changes(&self, before: i64) -> BoxFuture<'_, Result<u64, Error>> {
        // In slices, each its own command, so a large backlog never holds the writer long.
        const SLICE: u64 = 5_000;
        async move {
            // The first change to keep. One writer stamps the log, so times grow with `seq`
            // and the walk in `seq` order stops at it (no index on the time needed); it is
            // read once, on a reader: changes committed since come later still.
            let keep_from: i64 = self
                .readers
                .run(move |conn| {
                    Ok(conn
                        .prepare_cached("SELECT seq FROM changes WHERE committed_at >= ?1 ORDER BY seq LIMIT 1")?
                        .query_row([before], |row| row.get(0))
                        .optional()?
                        .unwrap_or(i64::MAX))
                })
                .await?;
            let mut pruned = 0;
            loop {
                let deleted = self
                    .exec(Box::new(move |conn| {
                        Ok(conn.execute(
                            // A change a trigger has not handled yet stays, however old.
                            "DELETE FROM changes WHERE seq IN \
                             (SELECT seq FROM changes WHERE seq < ?1 \
                              AND seq <= (SELECT coalesce(min(seq), 9223372036854775807) FROM trigger_cursors) \
                              ORDER BY seq LIMIT ?2)",
                            params![keep_from, SLICE as i64],
                        )? as u64)
                    }))
                    .await?;
                pruned += deleted;
                if deleted < SLICE {
                    return Ok(pruned);
                }
            }
        }
        .boxed()
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), Error>> {
        self.readers
            .run(|conn| {
                conn.query_row("SELECT 1", [], |_| Ok(()))?;
                Ok(())
            })
            .boxed()
    }

    fn backup(&self, into: PathBuf) -> BoxFuture<'_, Result<(), Error>> {
        let running = self.backups.begin_backup();
        self.readers
            .run(move |conn| {
                running.wait_for_restart();
                // One read transaction: the copy is the database as of its start, while the
                // writer goes on appending to the WAL.
                conn.execute("VACUUM INTO ?1", [into.to_string_lossy()])?;
                Ok(())
            })
            .boxed()
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        async move {
            let (done, finished) = oneshot::channel();
            if self.writer.send(Command::Shutdown(done)).await.is_ok() {
                let _ = finished.await;
            }
            let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
            let checkpointer = self.checkpointer.lock().unwrap_or_else(|p| p.into_inner()).take();
            let _ = tokio::task::spawn_blocking(move || {
                if let Some(thread) = thread {
                    let _ = thread.join();
                }
                if let Some(checkpointer) = checkpointer {
                    checkpointer.stop();
                }
            })
            .await;
        }
        .boxed()
    }

    fn service_key_hashes(&self) -> BoxFuture<'_, Result<Vec<[u8; 32]>, Error>> {
        self.readers
            .run(|conn| {
                let mut statement = conn.prepare_cached("SELECT hash FROM service_keys")?;
                let hashes = statement
                    .query_map([], |row| row.get::<_, Vec<u8>>(0))?
                    .filter_map(|hash| hash.ok().and_then(|bytes| <[u8; 32]>::try_from(bytes).ok()))
                    .collect();
                Ok(hashes)
            })
            .boxed()
    }

    fn add_service_key_hash(&self, hash: [u8; 32]) -> BoxFuture<'_, Result<(), Error>> {
        async move {
            self.exec(Box::new(move |conn| {
                Ok(conn.execute(
                    "INSERT OR IGNORE INTO service_keys (hash, created_at) VALUES (?1, ?2)",
                    rusqlite::params![hash.to_vec(), super::now_micros()],
                )? as u64)
            }))
            .await
            .map(|_| ())
        }
        .boxed()
    }

    fn revoke_service_keys_except(&self, keep: [u8; 32]) -> BoxFuture<'_, Result<u64, Error>> {
        self.exec(Box::new(move |conn| {
            Ok(conn.execute("DELETE FROM service_keys WHERE hash <> ?1", [keep.to_vec()])? as u64)
        }))
        .boxed()
    }

    fn trigger_cursor(&self, name: String) -> BoxFuture<'_, Result<Option<i64>, Error>> {
        self.read_named("SELECT seq FROM trigger_cursors WHERE name = ?1", name)
    }

    fn set_trigger_cursor(&self, name: String, seq: i64) -> BoxFuture<'_, Result<(), Error>> {
        self.write_named(
            "INSERT INTO trigger_cursors (name, seq) VALUES (?1, ?2)
             ON CONFLICT (name) DO UPDATE SET seq = max(seq, excluded.seq)",
            name,
            seq,
        )
    }

    fn retain_trigger_cursors(&self, names: Vec<String>) -> BoxFuture<'_, Result<(), Error>> {
        async move {
            let names = serde_json::to_string(&names).map_err(|error| Error::Internal(error.to_string()))?;
            self.exec(Box::new(move |conn| {
                Ok(conn.execute(
                    "DELETE FROM trigger_cursors WHERE name NOT IN (SELECT value FROM json_each(?1))",
                    [&names],
                )? as u64
                    + conn.execute(
                        "DELETE FROM schedule_ticks WHERE name NOT IN (SELECT value FROM json_each(?1))",
                        [&names],
                    )? as u64)
            }))
            .await
            .map(|_| ())
        }
        .boxed()
    }

    fn schedule_tick(&self, name: String) -> BoxFuture<'_, Result<Option<i64>, Error>> {
        self.read_named("SELECT tick FROM schedule_ticks WHERE name = ?1", name)
    }

    fn claim_schedule_tick(&self, name: String, tick: i64) -> BoxFuture<'_, Result<bool, Error>> {
        async move {
            let claimed = self
                .exec(Box::new(move |conn| {
                    Ok(conn.execute(
                        "INSERT INTO schedule_ticks (name, tick) VALUES (?1, ?2)
                         ON CONFLICT (name) DO UPDATE SET tick = excluded.tick WHERE tick < excluded.tick",
                        rusqlite::params![name, tick],
                    )? as u64)
                }))
                .await?;
            Ok(claimed == 1)
        }
        .boxed()
    }

    fn export_rows(
        &self,
        tables: Vec<&'static super::portable::Table>,
        into: mpsc::Sender<super::portable::Batch>,
    ) -> BoxFuture<'_, Result<(), Error>> {
        self.readers.run(move |conn| portable::export(conn, &tables, &into)).boxed()
    }

    fn import_rows(
        &self,
        from: mpsc::Receiver<super::portable::Batch>,
    ) -> BoxFuture<'_, Result<Vec<(&'static str, u64)>, Error>> {
        self.write_with(move |conn| portable::import(conn, from)).boxed()
    }

    fn add_dead_letter(&self, letter: DeadLetter) -> BoxFuture<'_, Result<(), Error>> {
        async move {
            self.exec(Box::new(move |conn| {
                Ok(conn.execute(
                    "INSERT INTO dead_letters (name, seq, path, attempts, error, failed_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    rusqlite::params![letter.name, letter.seq, letter.path, letter.attempts, letter.error, letter.failed_at],
                )? as u64)
            }))
            .await
            .map(|_| ())
        }
        .boxed()
    }

    fn dead_letters(&self, limit: usize) -> BoxFuture<'_, Result<Vec<DeadLetter>, Error>> {
        self.readers
            .run(move |conn| {
                let mut statement = conn.prepare_cached(
                    "SELECT name, seq, path, attempts, error, failed_at FROM dead_letters ORDER BY id DESC LIMIT ?1",
                )?;
                let rows = statement.query_map([limit as i64], |row| {
                    Ok(DeadLetter {
                        name: row.get(0)?,
                        seq: row.get(1)?,
                        path: row.get(2)?,
                        attempts: row.get(3)?,
                        error: row.get(4)?,
                        failed_at: row.get(5)?,
                    })
                })?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            })
            .boxed()
    }

    fn cursor_key(&self) -> BoxFuture<'_, Result<[u8; 32], Error>> {
        async move {
            let fresh: [u8; 32] = rand::random();
            self.exec(Box::new(move |conn| {
                conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('cursor_key', ?1)", [fresh.to_vec()])?;
                Ok(0)
            }))
            .await?;
            let stored: Vec<u8> = self
                .readers
                .run(
                    |conn| Ok(conn.query_row("SELECT value FROM meta WHERE key = 'cursor_key'", [], |row| row.get(0))?),
                )
                .await?;
            <[u8; 32]>::try_from(stored).map_err(|_| Error::Internal("stored cursor key has the wrong size".into()))
        }
        .boxed()
    }
}

#[cfg(test)]
pub(crate) mod tests;
