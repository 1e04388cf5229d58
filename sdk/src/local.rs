//! Offline-first: the local cache and the queue of writes made while the server could
//! not be reached.
//!
//! A write made offline is checked and applied here at once (the same semantics as the
//! server's, from `hearth_types::eval`), kept in the cache file's queue, and sent in
//! order by one task when the server answers again. What the app reads and listens to
//! is the server's last known state with the queued writes applied on top ("the local
//! view"). A write the server then refuses is dropped from the queue, so the local view
//! falls back to the server's state, and reported on [`Client::rejected_writes`].
//!
//! [`Client::rejected_writes`]: crate::Client::rejected_writes

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Mutex, Weak};
use std::time::{Duration, Instant};

use hearth_types::eval::Transforms;
use hearth_types::time::{format_time, now_micros};
use hearth_types::{BatchOp, BatchResponse, BatchWrite, Document, ErrorCode, Query};
use serde_json::{Map, Value};
use tokio::sync::{Notify, broadcast, watch};

use crate::cache::Cache;
use crate::docs::{in_target, query_matches, query_order};
use crate::live::Target;
use crate::{Client, Error, Inner, Result, decode};

const FIRST_RETRY: Duration = Duration::from_millis(100);
const MAX_RETRY: Duration = Duration::from_secs(5);

/// A write (or batch) made offline that the server refused when it was sent. It has been
/// rolled back: the local view no longer shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct RejectedWrite {
    /// The writes, as queued (one for a single document write, several for a batch).
    pub writes: Vec<BatchWrite>,
    /// Why the server refused it.
    pub error: Error,
}

/// One queued entry: commits as a whole.
#[derive(Debug, Clone)]
struct Entry {
    seq: i64,
    writes: Vec<BatchWrite>,
    /// Once sent: the version of each document it writes, as the cache knew it then. A
    /// server version beyond it may already hold the write, so it is not applied again
    /// on top (a `$increment` would show twice until the answer comes).
    sent_over: Option<HashMap<String, i64>>,
    /// Once the server took it: when, and the version it left on each document (0: a
    /// delete). No longer pending; kept a while so that a listener whose server result
    /// is older still shows it, instead of the document going back and forth until the
    /// change arrives over the socket.
    confirmed: Option<(Instant, HashMap<String, i64>)>,
}

impl Entry {
    fn is_pending(&self) -> bool {
        self.confirmed.is_none()
    }

    /// Whether a server state at `server_version` (0: absent) may already hold this
    /// entry's write to `path`.
    fn reached(&self, path: &str, server_version: i64) -> bool {
        let seen = self.sent_over.as_ref().and_then(|sent| sent.get(path)).copied();
        let left = self.confirmed.as_ref().and_then(|(_, left)| left.get(path)).copied();
        match (left, seen) {
            (Some(left), _) if left > 0 => server_version >= left,
            (_, Some(seen)) => server_version > seen || (left == Some(0) && server_version == 0),
            _ => false,
        }
    }
}

/// How long a confirmed entry still shows to listeners that have not had its change.
const SHOWN_AFTER_CONFIRMED: Duration = Duration::from_secs(10);

/// The cache and the write queue of a client.
pub(crate) struct Local {
    pub(crate) cache: Cache,
    queue: Mutex<Vec<Entry>>,
    /// Bumped whenever the queue changes: listeners recompute their local view.
    changed: watch::Sender<u64>,
    rejected: broadcast::Sender<RejectedWrite>,
    /// Wakes the task that sends the queue.
    wake: Notify,
}

/// Whether an error means the server was not reached (the write can wait for it).
pub(crate) fn unreachable(error: &Error) -> bool {
    matches!(error, Error::Network(_) | Error::Api { code: ErrorCode::Unavailable, .. })
}

impl Local {
    pub(crate) fn open(path: &Path) -> Result<Local> {
        let cache = Cache::open(path)?;
        let queue = cache
            .pending()
            .into_iter()
            .map(|(seq, writes)| Entry { seq, writes, sent_over: None, confirmed: None })
            .collect();
        Ok(Local {
            cache,
            queue: Mutex::new(queue),
            changed: watch::Sender::new(0),
            rejected: broadcast::Sender::new(64),
            wake: Notify::new(),
        })
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Vec<Entry>> {
        self.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// How many entries wait for the server.
    pub(crate) fn pending(&self) -> usize {
        self.queue().iter().filter(|entry| entry.is_pending()).count()
    }

    pub(crate) fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    pub(crate) fn rejections(&self) -> broadcast::Receiver<RejectedWrite> {
        self.rejected.subscribe()
    }

    /// Asks the sending task to try now (the server may be back).
    pub(crate) fn poke(&self) {
        self.wake.notify_one();
    }

    /// Whether a queued write touches `path`.
    pub(crate) fn is_pending(&self, path: &str) -> bool {
        self.queue().iter().any(|entry| entry.is_pending() && entry.writes.iter().any(|write| write.path == path))
    }

    /// The documents `target` could show that queued (or just confirmed) writes touch,
    /// and whether a pending one does.
    fn written_in(&self, target: &Target) -> (HashSet<String>, bool) {
        let mut paths = HashSet::new();
        let mut pending = false;
        for entry in self.queue().iter() {
            for write in entry.writes.iter().filter(|write| within(target, &write.path)) {
                pending |= entry.is_pending();
                paths.insert(write.path.clone());
            }
        }
        (paths, pending)
    }

    /// Whether a queued write concerns `target`.
    pub(crate) fn touches(&self, target: &Target) -> bool {
        self.queue().iter().any(|entry| entry.writes.iter().any(|write| within(target, &write.path)))
    }

    /// `base` (the server's state of `path`, as last known) with the queued writes to
    /// it applied.
    fn fold(&self, path: &str, base: Option<Document>) -> Option<Document> {
        let server_version = base.as_ref().map_or(0, |doc| doc.version);
        let mut doc = base;
        for entry in self.queue().iter() {
            if entry.reached(path, server_version) {
                continue;
            }
            for write in entry.writes.iter().filter(|write| write.path == path) {
                // A write that fails here fails on the server too; it shows nothing.
                if let Ok(after) = apply(doc.as_ref(), write) {
                    doc = after;
                }
            }
        }
        doc
    }

    /// The document as the app should see it: the cache with queued writes applied.
    pub(crate) fn view(&self, path: &str) -> Option<Document> {
        self.fold(path, self.cache.get(path))
    }

    /// A target's result from the server (`server`) with the queued writes applied, and
    /// whether any of them concern it.
    pub(crate) fn overlay(&self, target: &Target, server: &[Document]) -> (Vec<Document>, bool) {
        let (paths, pending) = self.written_in(target);
        if paths.is_empty() {
            return (server.to_vec(), false);
        }
        let mut docs: HashMap<String, Document> = server.iter().map(|doc| (doc.path.clone(), doc.clone())).collect();
        for path in paths {
            let base = docs.get(&path).cloned().or_else(|| self.cache.get(&path));
            match self.fold(&path, base) {
                Some(doc) if matches(target, &doc) => docs.insert(path, doc),
                _ => docs.remove(&path),
            };
        }
        let mut docs: Vec<Document> = docs.into_values().collect();
        if let Target::Query(query) = target {
            in_result_order(query, &mut docs);
        }
        (docs, pending)
    }

    /// The matching cached documents of a query, in order, limited: the server's result
    /// as last seen, for answering while offline.
    pub(crate) fn cached(&self, query: &Query) -> Vec<Document> {
        let mut cached = self.cache.scan(query.collection.as_deref(), query.collection_group.as_deref());
        cached.retain(|doc| query_matches(query, doc));
        in_result_order(query, &mut cached);
        cached
    }

    /// A query answered from the cache alone (offline), with the queued writes applied.
    pub(crate) fn query(&self, query: &Query) -> Vec<Document> {
        self.overlay(&Target::Query(query.clone()), &self.cached(query)).0
    }

    /// Applies `writes` locally and queues them for the server: all of them or, if one
    /// cannot apply to the local view, none (its error). The documents after each write
    /// (`None` after a delete).
    pub(crate) fn enqueue(&self, writes: Vec<BatchWrite>) -> Result<Vec<Option<Document>>> {
        let mut after: HashMap<String, Option<Document>> = HashMap::new();
        let mut results = Vec::with_capacity(writes.len());
        for (index, write) in writes.iter().enumerate() {
            let current = match after.get(&write.path) {
                Some(doc) => doc.clone(),
                None => self.view(&write.path),
            };
            let doc = apply(current.as_ref(), write).map_err(|error| match error {
                Error::Api { code, message, mut details } if writes.len() > 1 => {
                    details.insert("index".into(), Value::from(index));
                    Error::Api { code, message, details }
                }
                other => other,
            })?;
            after.insert(write.path.clone(), doc.clone());
            results.push(doc);
        }
        let seq = self.cache.push_pending(&writes)?;
        self.queue().push(Entry { seq, writes, sent_over: None, confirmed: None });
        self.changed.send_modify(|generation| *generation += 1);
        self.poke();
        Ok(results)
    }

    /// The oldest pending entry, marked as sent.
    fn next(&self) -> Option<Entry> {
        let (seq, paths): (i64, Vec<String>) = {
            let mut queue = self.queue();
            queue.retain(|entry| entry.confirmed.as_ref().is_none_or(|(at, _)| at.elapsed() < SHOWN_AFTER_CONFIRMED));
            let entry = queue.iter().find(|entry| entry.is_pending())?;
            (entry.seq, entry.writes.iter().map(|write| write.path.clone()).collect())
        };
        // The cache is read without holding the queue: listeners fold through it meanwhile.
        let versions: HashMap<String, i64> =
            paths.into_iter().map(|path| (path.clone(), self.cache.get(&path).map_or(0, |doc| doc.version))).collect();
        let mut queue = self.queue();
        let entry = queue.iter_mut().find(|entry| entry.seq == seq)?;
        entry.sent_over = Some(versions);
        Some(entry.clone())
    }

    /// The server took `seq`, leaving these versions (its documents are in the cache).
    fn confirmed(&self, seq: i64, left: HashMap<String, i64>) {
        self.cache.drop_pending(seq);
        if let Some(entry) = self.queue().iter_mut().find(|entry| entry.seq == seq) {
            entry.confirmed = Some((Instant::now(), left));
        }
        self.changed.send_modify(|generation| *generation += 1);
    }

    /// The server refused `seq`: it is dropped, so the local view rolls back.
    fn refused(&self, seq: i64) {
        self.cache.drop_pending(seq);
        self.queue().retain(|entry| entry.seq != seq);
        self.changed.send_modify(|generation| *generation += 1);
    }
}

/// Sorts matching documents as `query` orders them and keeps its `limit`.
fn in_result_order(query: &Query, docs: &mut Vec<Document>) {
    docs.sort_by(|a, b| query_order(query, a, b));
    if let Some(limit) = query.limit {
        docs.truncate(limit as usize);
    }
}

/// Whether `path` is a document `target` could hold.
fn within(target: &Target, path: &str) -> bool {
    match target {
        Target::Doc(doc) => doc == path,
        Target::Query(query) => in_target(query.collection.as_deref(), query.collection_group.as_deref(), path),
    }
}

fn matches(target: &Target, doc: &Document) -> bool {
    match target {
        Target::Doc(path) => &doc.path == path,
        Target::Query(query) => query_matches(query, doc),
    }
}

fn api(code: ErrorCode, message: String) -> Error {
    Error::Api { code, message, details: Map::new() }
}

/// What one write does to the local view of its document, with the server's rules:
/// preconditions, create on an existing document, update of a missing one, transforms.
fn apply(current: Option<&Document>, write: &BatchWrite) -> Result<Option<Document>> {
    let path = &write.path;
    if let Some(expected) = write.if_version {
        match current {
            Some(doc) if doc.version == expected => {}
            Some(doc) => {
                let message = format!("`{path}` is at version {}, not {expected}", doc.version);
                return Err(api(ErrorCode::FailedPrecondition, message));
            }
            None => {
                let message = format!("`{path}` does not exist, so it is not at version {expected}");
                return Err(api(ErrorCode::FailedPrecondition, message));
            }
        }
    }
    let now = format_time(now_micros());
    let server_time = || now.clone();
    let transforms = Transforms { now: &server_time };
    let data = match (&write.op, &write.data, current) {
        (BatchOp::Delete, _, _) => return Ok(None),
        (BatchOp::Create, _, Some(_)) => return Err(api(ErrorCode::AlreadyExists, format!("`{path}` already exists"))),
        (BatchOp::Update, _, None) => return Err(api(ErrorCode::NotFound, format!("`{path}` does not exist"))),
        (_, Some(Value::Object(data)), current) => match write.op {
            BatchOp::Update => {
                let mut merged = current.map(|doc| doc.data.clone()).unwrap_or_default();
                transforms.merge(&mut merged, data).map(|()| merged)
            }
            _ => transforms.materialize(data, current.map(|doc| &doc.data)),
        }
        .map_err(|message| api(ErrorCode::InvalidArgument, message))?,
        _ => return Err(api(ErrorCode::InvalidArgument, "document data is a JSON object".into())),
    };
    let id = path.rsplit('/').next().unwrap_or_default().to_owned();
    let (version, created_at) = match current {
        Some(doc) => (doc.version + 1, doc.created_at.clone()),
        None => (1, now.clone()),
    };
    Ok(Some(Document { path: path.clone(), id, data, version, created_at, updated_at: now }))
}

/// Sends the queue, oldest first, whenever there is something in it and the server
/// answers; ends with the client.
pub(crate) async fn send_queue(client: Weak<Inner>) {
    let mut retry = FIRST_RETRY;
    loop {
        let Some(inner) = client.upgrade() else { return };
        let client_now = Client { inner };
        let Some(local) = client_now.inner.local.clone() else { return };
        let Some(entry) = local.next() else {
            drop(client_now);
            local.wake.notified().await;
            continue;
        };
        match send(&client_now, &entry).await {
            Ok(left) => {
                retry = FIRST_RETRY;
                local.confirmed(entry.seq, left);
            }
            Err(error) if unreachable(&error) => {
                drop(client_now);
                tracing::debug!(%error, ?retry, "queued writes wait for the server");
                tokio::select! {
                    () = tokio::time::sleep(retry) => {}
                    () = local.wake.notified() => {}
                }
                retry = (retry * 2).min(MAX_RETRY);
            }
            Err(error) => {
                tracing::warn!(%error, "the server refused a write made offline; rolled back");
                local.refused(entry.seq);
                let _ = local.rejected.send(RejectedWrite { writes: entry.writes, error });
            }
        }
    }
}

/// Sends one entry: a single write through the document routes (whose answer is the
/// document, kept in the cache), several as a batch. The version each document was left
/// at (0: deleted).
async fn send(client: &Client, entry: &Entry) -> Result<HashMap<String, i64>> {
    let Some(local) = client.local() else { return Ok(HashMap::new()) };
    if let [write] = entry.writes.as_slice() {
        let version = crate::docs::send_write(client, write).await?.map_or(0, |doc| doc.version);
        return Ok(HashMap::from([(write.path.clone(), version)]));
    }
    let body = serde_json::json!({ "writes": entry.writes });
    let answer: BatchResponse = decode(&client.request("POST", "/v1/batch", Some(&body)).await?.body)?;
    // The batch answers versions, not documents: the cache takes the writes applied to
    // what it had, at the versions the server gave.
    let mut left = HashMap::new();
    for (write, result) in entry.writes.iter().zip(answer.results) {
        match apply(local.cache.get(&write.path).as_ref(), write) {
            Ok(Some(mut doc)) => {
                doc.version = result.version;
                local.cache.put(&[doc]);
            }
            _ => local.cache.remove(&write.path),
        }
        left.insert(write.path.clone(), result.version);
    }
    Ok(left)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn write(op: BatchOp, path: &str, data: Value) -> BatchWrite {
        BatchWrite { op, path: path.into(), data: Some(data), if_version: None }
    }

    #[test]
    fn queued_writes_apply_over_the_cache_in_order_and_survive_a_reopen() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("cache.db");
        let local = Local::open(&file).expect("open");
        let created = local.enqueue(vec![write(BatchOp::Create, "todos/a", json!({"n": 1, "tags": ["x"]}))]);
        assert_eq!(created.expect("queued")[0].as_ref().map(|doc| doc.version), Some(1));
        local
            .enqueue(vec![write(
                BatchOp::Update,
                "todos/a",
                json!({"n": {"$increment": 2}, "tags": {"$array_union": ["y"]}}),
            )])
            .expect("queued");
        let refused = local.enqueue(vec![write(BatchOp::Create, "todos/a", json!({}))]);
        assert_eq!(refused.map_err(|error| error.code()), Err(ErrorCode::AlreadyExists));
        let stale = BatchWrite { if_version: Some(1), ..write(BatchOp::Set, "todos/a", json!({})) };
        assert_eq!(local.enqueue(vec![stale]).map_err(|error| error.code()), Err(ErrorCode::FailedPrecondition));
        drop(local);

        let local = Local::open(&file).expect("reopen");
        assert_eq!(local.pending(), 2, "the refused writes were never queued");
        let doc = local.view("todos/a").expect("local view");
        assert_eq!((Value::Object(doc.data), doc.version), (json!({"n": 3, "tags": ["x", "y"]}), 2));
        let query: Query =
            serde_json::from_value(json!({"collection": "todos", "where": [{"field": "n", "op": ">", "value": 2}]}))
                .expect("query");
        assert_eq!(local.query(&query).len(), 1);
        // The server takes the create: no longer pending, but a listener whose server
        // result does not have it yet still sees it; once it does, it is not applied twice.
        let entry = local.next().expect("first entry");
        local.confirmed(entry.seq, HashMap::from([("todos/a".to_owned(), 1)]));
        assert_eq!(local.pending(), 1);
        assert!(local.is_pending("todos/a"), "the update still waits");
        let target = Target::Query(query);
        assert_eq!(local.overlay(&target, &[]).0.len(), 1);
        let on_server = apply(None, &write(BatchOp::Create, "todos/a", json!({"n": 1, "tags": ["x"]})))
            .expect("applies")
            .expect("a document");
        let (shown, pending) = local.overlay(&target, &[on_server]);
        assert_eq!((shown[0].data["n"].clone(), pending), (json!(3), true), "the create once, the update on top");
    }
}
