//! The document store: one write path, reads, queries and aggregates, over a backend
//! (SQLite now; PostgreSQL is a second [`Backend`], not a rewrite).
//!
//! Every write of every kind goes through [`Store::write`]. The backend applies it with
//! [`write::apply`] inside one transaction that also appends to the change log, and
//! publishes the committed changes on the [`ChangeBus`] after commit. The store knows
//! nothing of HTTP.

pub mod commit;
pub mod path;
pub mod portable;
pub mod postgres;
pub mod query;
pub mod sqlite;
pub mod value;
pub mod write;

use std::sync::Arc;

use futures::future::BoxFuture;
use serde_json::{Map, Value};

pub use crate::changes::{Change, ChangeBus, ChangeKind};
pub use path::{AnyPath, CollectionPath, DocPath};
pub use query::{CursorSealer, QuerySpec};
pub use write::{Prepared, Write, WriteOp};

/// Why a store call failed. Each kind maps to one contract code in `http`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Unavailable(String),
    /// A rule denied the write (see [`WriteGuard`]).
    #[error("{0}")]
    PermissionDenied(String),
    /// A bug or a database fault; the text is for the log only.
    #[error("{0}")]
    Internal(String),
    /// Refused with its own code by code the server runs (a before-write hook).
    #[error("{message}")]
    Refused { code: hearth_types::ErrorCode, message: String },
    /// The write at `index` of a batch failed; nothing of the batch was written.
    #[error("write {index}: {error}")]
    InBatch { index: usize, error: Box<Error> },
}

impl Error {
    /// The contract's code for this error (`internal` for faults, whose text stays in the log).
    pub fn code(&self) -> hearth_types::ErrorCode {
        use hearth_types::ErrorCode as C;
        match self {
            Error::InvalidArgument(_) => C::InvalidArgument,
            Error::NotFound(_) => C::NotFound,
            Error::AlreadyExists(_) => C::AlreadyExists,
            Error::FailedPrecondition(_) => C::FailedPrecondition,
            Error::TooLarge(_) => C::PayloadTooLarge,
            Error::Unavailable(_) => C::Unavailable,
            Error::PermissionDenied(_) => C::PermissionDenied,
            Error::Internal(_) => C::Internal,
            Error::Refused { code, .. } => *code,
            Error::InBatch { error, .. } => error.code(),
        }
    }
}

impl From<rusqlite::Error> for Error {
    fn from(error: rusqlite::Error) -> Error {
        match &error {
            rusqlite::Error::SqliteFailure(code, _)
                if matches!(code.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) =>
            {
                Error::Unavailable("database is busy".into())
            }
            _ => Error::Internal(format!("sqlite: {error}")),
        }
    }
}

/// A document as the store holds it; times in microseconds since the epoch.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredDoc {
    pub path: DocPath,
    pub data: Map<String, Value>,
    pub version: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A document as read, its data still the JSON text the database gave: answers pass it
/// through without a parse and a re-encode; [`RawDoc::parse`] gives a [`StoredDoc`]
/// where the data itself is needed.
#[derive(Debug, Clone, PartialEq)]
pub struct RawDoc {
    pub path: DocPath,
    /// A JSON object, as text.
    pub data: String,
    pub version: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

impl RawDoc {
    pub fn parse(&self) -> Result<StoredDoc, Error> {
        Ok(StoredDoc {
            path: self.path.clone(),
            data: serde_json::from_str(&self.data).map_err(|e| Error::Internal(format!("stored JSON: {e}")))?,
            version: self.version,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

/// What one write left behind.
#[derive(Debug, Clone)]
pub struct WriteResult {
    pub path: DocPath,
    /// The stored document, `None` after a delete.
    pub doc: Option<Arc<StoredDoc>>,
    /// Its data as stored JSON text, so answers need not encode it again.
    pub data_json: Option<Arc<str>>,
}

impl WriteResult {
    /// The version now stored; 0 when the document is gone.
    pub fn version(&self) -> i64 {
        self.doc.as_ref().map_or(0, |doc| doc.version)
    }
}

/// Sums and averages asked of an aggregate.
#[derive(Debug, Clone, Default)]
pub struct Aggregation {
    pub count: bool,
    pub sum: Vec<query::Field>,
    pub avg: Vec<query::Field>,
    /// Aggregate only the first `limit` documents of the query, if set.
    pub limit: Option<usize>,
}

/// The numbers an aggregate found, in the order asked.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AggregateValues {
    pub count: u64,
    pub sum: Vec<Value>,
    pub avg: Vec<Value>,
}

/// Which documents' changes a reader of the log wants, by path.
pub type PathFilter = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// A stretch of the change log.
#[derive(Debug)]
pub struct LogPage {
    /// The wanted changes, oldest first.
    pub changes: Vec<Change>,
    /// The `seq` of the last change read, wanted or not; `None` when the log has nothing
    /// after the start.
    pub last: Option<i64>,
}

/// A page of a query: the documents and whether more follow.
#[derive(Debug, Clone)]
pub struct Page {
    pub docs: Vec<RawDoc>,
    pub more: bool,
}

/// Decides, inside a write's transaction, whether the write may happen: the access rules
/// plug in here, so they see exactly the state the write applies to and a batch with one
/// refused write commits nothing.
pub trait WriteGuard: Send + Sync {
    /// `before` is the stored document, `after` what the write leaves (`None` for a delete).
    /// `lookup` reads other documents as the transaction sees them. Refuse with
    /// [`Error::PermissionDenied`].
    fn check(
        &self,
        path: &DocPath,
        before: Option<&StoredDoc>,
        after: Option<&StoredDoc>,
        lookup: &mut dyn FnMut(&DocPath) -> Result<Option<StoredDoc>, Error>,
    ) -> Result<(), Error>;

    /// The same decision ahead of the transaction, reading other documents as they are
    /// now: what a write with before-write hooks passes before any hook runs for it.
    fn check_ahead<'a>(
        &'a self,
        path: &'a DocPath,
        before: Option<&'a StoredDoc>,
        after: Option<&'a StoredDoc>,
    ) -> BoxFuture<'a, Result<(), Error>>;
}

/// What a storage engine provides. Implementations apply writes with [`write::apply`],
/// append each change to their log in the same transaction, and publish after commit.
pub trait Backend: Send + Sync + 'static {
    /// Applies `writes` atomically (all or none). `batch` names the failing index in errors;
    /// `guard`, if set, sees every write before it happens.
    fn commit(
        &self,
        writes: Vec<Prepared>,
        batch: bool,
        guard: Option<Arc<dyn WriteGuard>>,
    ) -> BoxFuture<'_, Result<Vec<WriteResult>, Error>>;
    fn get(&self, path: DocPath) -> BoxFuture<'_, Result<Option<RawDoc>, Error>>;
    /// Up to `spec.limit` documents after the cursor, in query order.
    fn query(&self, spec: QuerySpec) -> BoxFuture<'_, Result<Page, Error>>;
    fn aggregate(&self, spec: QuerySpec, aggregation: Aggregation) -> BoxFuture<'_, Result<AggregateValues, Error>>;
    /// Like [`Backend::query`], with the `seq` of the last change the answer reflects: the
    /// two are read in one transaction, so changes after it are exactly those with a
    /// greater `seq` (what a live subscription starts from).
    fn snapshot(&self, spec: QuerySpec) -> BoxFuture<'_, Result<(Page, i64), Error>>;
    /// The `seq` of the last committed change (0 if none).
    fn last_seq(&self) -> BoxFuture<'_, Result<i64, Error>>;
    /// Logged changes with `seq > after`, oldest first: the next `limit` changes, less
    /// those of paths `wanted` refuses (whose documents are then not read at all).
    fn changes_since(
        &self,
        after: i64,
        limit: usize,
        wanted: Option<PathFilter>,
    ) -> BoxFuture<'_, Result<LogPage, Error>>;
    /// Removes logged changes committed before `before` (microseconds) that every trigger
    /// is done with; returns how many.
    fn prune_changes(&self, before: i64) -> BoxFuture<'_, Result<u64, Error>>;
    /// Whether the database answers.
    fn ping(&self) -> BoxFuture<'_, Result<(), Error>>;
    /// Writes a consistent copy of the whole database to the new file `into`, without
    /// holding up writes.
    fn backup(&self, into: std::path::PathBuf) -> BoxFuture<'_, Result<(), Error>>;
    /// Finishes queued writes and stops the writer; later writes fail with unavailable.
    fn close(&self) -> BoxFuture<'_, ()>;
    /// Project files (`rules.toml`, `functions/*.js`) deployed after `version`, in order.
    /// Kept only where nodes share the database; a node alone has its files.
    fn deployed(&self, version: i64) -> BoxFuture<'_, Result<Vec<Deployed>, Error>> {
        let _ = version;
        futures::FutureExt::boxed(async { Ok(Vec::new()) })
    }
    /// Records a project file as deployed (or deleted), for the other nodes; its version.
    fn deploy(&self, name: String, source: Option<String>) -> BoxFuture<'_, Result<i64, Error>> {
        let _ = (name, source);
        futures::FutureExt::boxed(async { Ok(0) })
    }
    /// What carries channel events to the other nodes sharing the database; none when a
    /// node is alone, as on SQLite.
    fn relay(&self) -> Option<Arc<dyn crate::changes::relay::Relay>> {
        None
    }
    /// SHA-256 hashes of the service keys stored in the database.
    fn service_key_hashes(&self) -> BoxFuture<'_, Result<Vec<[u8; 32]>, Error>>;
    fn add_service_key_hash(&self, hash: [u8; 32]) -> BoxFuture<'_, Result<(), Error>>;
    /// Forgets every service key but `keep`; how many were forgotten.
    fn revoke_service_keys_except(&self, keep: [u8; 32]) -> BoxFuture<'_, Result<u64, Error>>;
    /// The key that seals query cursors, made on first use.
    fn cursor_key(&self) -> BoxFuture<'_, Result<[u8; 32], Error>>;
    /// The last change the trigger `name` is done with, if it ever started.
    fn trigger_cursor(&self, name: String) -> BoxFuture<'_, Result<Option<i64>, Error>>;
    fn set_trigger_cursor(&self, name: String, seq: i64) -> BoxFuture<'_, Result<(), Error>>;
    /// Forgets the cursors of triggers and the ticks of schedules not in `names`
    /// (undeployed), so they no longer hold back pruning or start from an old tick.
    fn retain_trigger_cursors(&self, names: Vec<String>) -> BoxFuture<'_, Result<(), Error>>;
    /// The last tick (microseconds) the scheduled function `name` ran.
    fn schedule_tick(&self, name: String) -> BoxFuture<'_, Result<Option<i64>, Error>>;
    /// Records that the scheduled function `name` runs at `tick`, unless a tick as late is
    /// recorded already: true for the one caller, on whichever node, that should run it.
    fn claim_schedule_tick(&self, name: String, tick: i64) -> BoxFuture<'_, Result<bool, Error>>;
    /// Takes, renews or is refused the lease `name` for `ttl`: work that one node at a time
    /// does (following a trigger's log). A node alone, as on SQLite, holds every lease.
    fn lease(&self, name: String, holder: String, ttl: std::time::Duration) -> BoxFuture<'_, Result<bool, Error>> {
        let _ = (name, holder, ttl);
        futures::FutureExt::boxed(async { Ok(true) })
    }
    /// Sends every row of `tables` (see [`portable`]), all read from one consistent
    /// snapshot, in batches; each row has a cell per column. Writes go on meanwhile.
    fn export_rows(
        &self,
        tables: Vec<&'static portable::Table>,
        into: tokio::sync::mpsc::Sender<portable::Batch>,
    ) -> BoxFuture<'_, Result<(), Error>>;
    /// Inserts the rows that come from `from` in one transaction, committed when
    /// [`portable::Batch::Done`] comes and rolled back if the channel closes first;
    /// refused ([`portable::not_empty`]) unless the database holds no project yet. How
    /// many rows each table gained, in [`portable::TABLES`] order.
    fn import_rows(
        &self,
        from: tokio::sync::mpsc::Receiver<portable::Batch>,
    ) -> BoxFuture<'_, Result<Vec<(&'static str, u64)>, Error>>;
    fn add_dead_letter(&self, letter: DeadLetter) -> BoxFuture<'_, Result<(), Error>>;
    /// The newest dead letters first, at most `limit`.
    fn dead_letters(&self, limit: usize) -> BoxFuture<'_, Result<Vec<DeadLetter>, Error>>;
}

/// A project file as deployed to every node sharing the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deployed {
    /// `rules.toml` or `functions/<file>.js`.
    pub name: String,
    /// `None`: deleted.
    pub source: Option<String>,
    pub version: i64,
}

/// A trigger event that kept failing, kept for an admin to see.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DeadLetter {
    /// The trigger.
    pub name: String,
    /// The change it failed on.
    pub seq: i64,
    pub path: String,
    pub attempts: u32,
    pub error: String,
    /// Microseconds since the epoch.
    pub failed_at: i64,
}

/// The store every other module uses. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    backend: Arc<dyn Backend>,
    bus: ChangeBus,
    cursors: CursorSealer,
}

impl Store {
    pub async fn new(backend: Arc<dyn Backend>, bus: ChangeBus) -> Result<Store, Error> {
        let cursors = CursorSealer::new(backend.cursor_key().await?);
        Ok(Store { backend, bus, cursors })
    }

    /// The one write path: applies `writes` atomically.
    pub async fn write(&self, writes: Vec<Write>) -> Result<Vec<WriteResult>, Error> {
        self.write_guarded(writes, None).await
    }

    /// Like [`Store::write`], each write first passing `guard` inside the transaction.
    pub async fn write_guarded(
        &self,
        writes: Vec<Write>,
        guard: Option<Arc<dyn WriteGuard>>,
    ) -> Result<Vec<WriteResult>, Error> {
        let prepared = writes.into_iter().map(Prepared::new).collect::<Result<Vec<_>, _>>()?;
        self.backend.commit(prepared, false, guard).await
    }

    /// Writes made by a trigger run `depth` deep in a chain of triggers (see
    /// [`ChangeBus::cause`]); `batch` names the failing index in errors.
    pub async fn write_caused(&self, writes: Vec<Write>, batch: bool, depth: u8) -> Result<Vec<WriteResult>, Error> {
        let prepared = writes
            .into_iter()
            .enumerate()
            .map(|(index, write)| {
                let located = |error| if batch { Error::InBatch { index, error: Box::new(error) } } else { error };
                let mut prepared = Prepared::new(write).map_err(located)?;
                prepared.depth = depth;
                Ok::<_, Error>(prepared)
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.backend.commit(prepared, batch, None).await
    }

    /// Like [`Store::write`], with errors naming the index of the failing write.
    pub async fn batch(&self, writes: Vec<Write>) -> Result<Vec<WriteResult>, Error> {
        self.batch_guarded(writes, None).await
    }

    /// Like [`Store::batch`], each write first passing `guard` inside the transaction.
    pub async fn batch_guarded(
        &self,
        writes: Vec<Write>,
        guard: Option<Arc<dyn WriteGuard>>,
    ) -> Result<Vec<WriteResult>, Error> {
        let prepared = writes
            .into_iter()
            .enumerate()
            .map(|(index, write)| {
                Prepared::new(write).map_err(|error| Error::InBatch { index, error: Box::new(error) })
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.backend.commit(prepared, true, guard).await
    }

    /// One write; its result.
    pub async fn write_one(&self, write: Write) -> Result<WriteResult, Error> {
        self.write(vec![write]).await?.pop().ok_or_else(|| Error::Internal("a write gave no result".into()))
    }

    pub async fn get(&self, path: DocPath) -> Result<Option<StoredDoc>, Error> {
        self.backend.get(path).await?.map(|raw| raw.parse()).transpose()
    }

    /// Like [`Store::get`], with the data left as JSON text.
    pub async fn get_raw(&self, path: DocPath) -> Result<Option<RawDoc>, Error> {
        self.backend.get(path).await
    }

    pub async fn query(&self, spec: QuerySpec) -> Result<Page, Error> {
        self.backend.query(spec).await
    }

    pub async fn aggregate(&self, spec: QuerySpec, aggregation: Aggregation) -> Result<AggregateValues, Error> {
        self.backend.aggregate(spec, aggregation).await
    }

    pub async fn snapshot(&self, spec: QuerySpec) -> Result<(Page, i64), Error> {
        self.backend.snapshot(spec).await
    }

    pub async fn last_seq(&self) -> Result<i64, Error> {
        self.backend.last_seq().await
    }

    /// The next `limit` logged changes after `after`.
    pub async fn changes_since(&self, after: i64, limit: usize) -> Result<Vec<Change>, Error> {
        Ok(self.backend.changes_since(after, limit, None).await?.changes)
    }

    /// The next `limit` logged changes after `after`, less those of paths `wanted` refuses:
    /// for a reader that follows a few paths and skips the rest cheaply.
    pub async fn changes_of(&self, after: i64, limit: usize, wanted: PathFilter) -> Result<LogPage, Error> {
        self.backend.changes_since(after, limit, Some(wanted)).await
    }

    pub async fn prune_changes(&self, before: i64) -> Result<u64, Error> {
        self.backend.prune_changes(before).await
    }

    pub async fn ping(&self) -> Result<(), Error> {
        self.backend.ping().await
    }

    pub async fn close(&self) {
        self.backend.close().await
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// Committed changes, as they commit.
    pub fn bus(&self) -> &ChangeBus {
        &self.bus
    }

    /// Seals and opens query cursors.
    pub fn cursors(&self) -> &CursorSealer {
        &self.cursors
    }
}

/// A stored document in the contract's shape (`Document`), written out directly: its
/// data is the JSON text the store holds, never parsed and re-encoded on the way out.
pub struct DocJson<'a> {
    pub path: &'a DocPath,
    /// The data, as JSON text.
    pub data: &'a str,
    pub version: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

impl<'a> DocJson<'a> {
    pub fn read(doc: &'a RawDoc) -> DocJson<'a> {
        let RawDoc { path, data, version, created_at, updated_at } = doc;
        DocJson { path, data, version: *version, created_at: *created_at, updated_at: *updated_at }
    }

    pub fn written(doc: &'a StoredDoc, data: &'a str) -> DocJson<'a> {
        DocJson { path: &doc.path, data, version: doc.version, created_at: doc.created_at, updated_at: doc.updated_at }
    }

    pub fn write_to(&self, out: &mut String) {
        let quoted = |text: &str| serde_json::to_string(text).unwrap_or_default();
        out.push_str("{\"path\":");
        out.push_str(&quoted(self.path.as_str()));
        out.push_str(",\"id\":");
        out.push_str(&quoted(self.path.id()));
        out.push_str(",\"data\":");
        out.push_str(self.data);
        out.push_str(",\"version\":");
        out.push_str(&self.version.to_string());
        out.push_str(",\"created_at\":\"");
        out.push_str(&format_time(self.created_at));
        out.push_str("\",\"updated_at\":\"");
        out.push_str(&format_time(self.updated_at));
        out.push_str("\"}");
    }
}

pub use hearth_types::time::{format_time, now_micros};
