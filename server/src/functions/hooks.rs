//! Before-write hooks (`beforeDocumentWrite`) in the write path of client writes.
//!
//! A hook runs before the write reaches the single writer, never on it: JavaScript on
//! the writer thread would stall every other write for as long as the hook runs. So the
//! documents a request writes are read, each write is applied to them in memory
//! ([`write::apply`], the writer's own semantics) and every matching hook sees the
//! stored document and the one the write would leave. A hook throws to refuse (the
//! client gets its `HearthError` code) or returns the data to store instead. The hooked
//! write is then committed as what the hooks approved, pinned to the version they saw
//! (`if_version`, or a create when there was no document); the rules, inside the
//! transaction, check that data. Hooked writes to one document wait for each other
//! (a lock per path, held from the read to the commit), so concurrent `$increment`s
//! through a hook all land; if a document changed in between anyway (a function's
//! write), the pin fails and the whole request runs again, hooks included, up to
//! [`TRIES`] times.
//!
//! Writes made by functions (`ctx.db`, Rust functions' store) do not run hooks: a hook
//! writing its own collection would call itself, and a function waiting for a hook that
//! waits for a free worker could stall the pool.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hearth_types::ErrorCode;
use serde_json::{Map, Value, json};

use super::{Auth, Bundle, Functions};
use crate::store::write::{self, Effect};
use crate::store::{DocPath, Error, Prepared, StoredDoc, Write, WriteGuard, WriteOp, WriteResult};

/// Runs of a request whose documents keep changing under its hooks.
const TRIES: usize = 5;

impl Functions {
    /// The write path of client writes: runs the before-write hooks matching `writes`,
    /// then commits what they left, each write passing `guard`. `batch` names the
    /// failing index in errors.
    pub async fn write(
        &self,
        writes: Vec<Write>,
        batch: bool,
        guard: Option<Arc<dyn WriteGuard>>,
        auth: Auth,
    ) -> Result<Vec<WriteResult>, Error> {
        let bundle = self.current();
        let hooked =
            |write: &Write| bundle.hooks.iter().any(|(_, pattern)| pattern.matches(write.path.as_str()).is_some());
        if !writes.iter().any(hooked) {
            return self.commit(writes, batch, guard).await;
        }
        let paths = writes.iter().filter(|write| hooked(write)).map(|write| write.path.clone()).collect();
        let _locked = self.shared.hook_locks.lock(paths).await;
        for attempt in 0..TRIES {
            let approved =
                self.run_hooks(&bundle, writes.clone(), batch, guard.as_deref(), &auth, attempt == 0).await?;
            match self.commit(approved, batch, guard.clone()).await {
                Err(error) if is_race(&error) => continue,
                other => return other,
            }
        }
        Err(Error::Unavailable(format!(
            "the documents changed under the before-write hooks {TRIES} times in a row; try again"
        )))
    }

    async fn commit(
        &self,
        writes: Vec<Write>,
        batch: bool,
        guard: Option<Arc<dyn WriteGuard>>,
    ) -> Result<Vec<WriteResult>, Error> {
        let store = &self.shared.store;
        if batch { store.batch_guarded(writes, guard).await } else { store.write_guarded(writes, guard).await }
    }

    /// The writes as the hooks approved them, each pinned to the state the hooks saw.
    /// On a `first_try`, a create is taken to find no document without reading it (one
    /// that exists fails the commit, and the next try reads it). The caller's `guard`
    /// decides each write as the caller made it before anything else (its preconditions,
    /// its hooks) happens; the commit decides again what the hooks made of it.
    async fn run_hooks(
        &self,
        bundle: &Bundle,
        writes: Vec<Write>,
        batch: bool,
        guard: Option<&dyn WriteGuard>,
        auth: &Auth,
        first_try: bool,
    ) -> Result<Vec<Write>, Error> {
        let timeout = Duration::from_millis(self.shared.limits.before_write_timeout_ms);
        let now = crate::store::now_micros();
        // Each document as the request has left it so far: a batch may write one twice.
        let mut state: HashMap<DocPath, Option<StoredDoc>> = HashMap::new();
        let mut approved = Vec::with_capacity(writes.len());
        for (index, write) in writes.into_iter().enumerate() {
            let fail = |error: Error| if batch { Error::InBatch { index, error: Box::new(error) } } else { error };
            let path = write.path.clone();
            let before = match state.get(&path) {
                Some(doc) => doc.clone(),
                None if first_try && matches!(write.op, WriteOp::Create(_)) => None,
                None => self.shared.store.get(path.clone()).await?,
            };
            let unpinned = write.if_version;
            let hooks: Vec<_> = bundle
                .hooks
                .iter()
                .filter_map(|(name, pattern)| Some((name, pattern.matches(path.as_str())?)))
                .collect();
            let mut after = match write::apply(before.as_ref(), Prepared::new(write.clone()).map_err(fail)?, now) {
                Ok(Effect::Put { doc, .. }) => Some(doc),
                Ok(Effect::Delete | Effect::Nothing) => None,
                Err(refused) => {
                    if let Some(guard) = guard {
                        let (before, after) = write::attempted(before.as_ref(), &refused.write, now);
                        guard.check_ahead(&path, before, after.as_ref()).await.map_err(fail)?;
                    }
                    return Err(fail(refused.error));
                }
            };
            if hooks.is_empty() {
                state.insert(path, after);
                approved.push(write);
                continue;
            }
            if let Some(guard) = guard {
                guard.check_ahead(&path, before.as_ref(), after.as_ref()).await.map_err(fail)?;
            }
            for (name, captures) in hooks {
                let params: Map<String, Value> =
                    captures.into_iter().map(|(key, value)| (key, Value::String(value))).collect();
                let kind = match (&before, &after) {
                    (None, _) => "create",
                    (Some(_), Some(_)) => "update",
                    (Some(_), None) => "delete",
                };
                let event = json!({
                    "kind": kind,
                    "path": path.as_str(),
                    "params": params,
                    "before": before.as_ref().map(super::triggers::doc_json),
                    "after": after.as_ref().map(super::triggers::doc_json),
                });
                let outcome = self.invoke(name, event, auth.clone(), timeout, 0).await;
                match (outcome, after.as_mut()) {
                    (Err(error), _) => {
                        return Err(fail(Error::Refused { code: error.code, message: error.message }));
                    }
                    (Ok(Value::Null), _) => {}
                    (Ok(Value::Object(data)), Some(doc)) => doc.data = data,
                    (Ok(other), _) => {
                        tracing::error!(hook = %name, path = %path, returned = %other, "a before-write hook returned neither an object nor nothing");
                        let message =
                            format!("before-write hook `{name}` returned something that is not the data to store");
                        return Err(fail(Error::Refused { code: ErrorCode::Internal, message }));
                    }
                }
            }
            approved.push(pinned(path.clone(), before.as_ref(), after.as_ref(), unpinned));
            state.insert(path, after);
        }
        Ok(approved)
    }
}

/// The write that leaves `after` where the hooks saw `before`, and only there.
fn pinned(path: DocPath, before: Option<&StoredDoc>, after: Option<&StoredDoc>, unpinned: Option<i64>) -> Write {
    match (before, after) {
        (Some(before), Some(after)) => {
            Write { path, op: WriteOp::Set(after.data.clone()), if_version: Some(before.version) }
        }
        (None, Some(after)) => Write { path, op: WriteOp::Create(after.data.clone()), if_version: None },
        (Some(before), None) => Write { path, op: WriteOp::Delete, if_version: Some(before.version) },
        (None, None) => Write { path, op: WriteOp::Delete, if_version: unpinned },
    }
}

/// A write failed because a document changed since the hooks read it (the request's own
/// preconditions were already checked against what they read).
fn is_race(error: &Error) -> bool {
    match error {
        Error::InBatch { error, .. } => is_race(error),
        Error::FailedPrecondition(_) | Error::AlreadyExists(_) | Error::NotFound(_) => true,
        _ => false,
    }
}

/// One lock per document that hooked writes are writing now.
#[derive(Default)]
pub(super) struct PathLocks {
    held: Mutex<HashMap<DocPath, Arc<tokio::sync::Mutex<()>>>>,
}

/// The locks of one request; they go, and their entries with them, when it is dropped.
pub(super) struct Locked<'a> {
    locks: &'a PathLocks,
    guards: Vec<(DocPath, tokio::sync::OwnedMutexGuard<()>)>,
}

impl PathLocks {
    /// Locks `paths`, always in path order, so two requests never wait for each other in a circle.
    async fn lock(&self, mut paths: Vec<DocPath>) -> Locked<'_> {
        paths.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        paths.dedup();
        let mut guards = Vec::with_capacity(paths.len());
        for path in paths {
            let lock = {
                let mut held = self.held.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                held.entry(path.clone()).or_default().clone()
            };
            guards.push((path, lock.lock_owned().await));
        }
        Locked { locks: self, guards }
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        let mut held = self.locks.held.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for (path, guard) in std::mem::take(&mut self.guards) {
            drop(guard);
            // Nobody else holds or waits for it: the map holds the last reference.
            if held.get(&path).is_some_and(|lock| Arc::strong_count(lock) == 1) {
                held.remove(&path);
            }
        }
    }
}
