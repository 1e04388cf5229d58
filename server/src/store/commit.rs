//! What a commit does to each write, the same on every backend: read what is stored,
//! apply the write ([`write::apply`]), ask the guard (the rules) with the state the write
//! applies to, store, and append the change to the log. A backend supplies the few
//! statements ([`WriteTx`]) inside its own transaction and decides how requests group.

use std::collections::HashMap;
use std::sync::Arc;

use crate::changes::{Change, ChangeKind};
use crate::store::write::{self, Effect, Prepared, WriteOp};
use crate::store::{DocPath, Error, StoredDoc, WriteGuard, WriteResult};

/// The statements a commit needs, run inside the backend's open transaction.
pub trait WriteTx {
    /// The stored document and its data as JSON text.
    fn load(&mut self, path: &DocPath) -> Result<Option<(StoredDoc, String)>, Error>;
    /// Stores `doc` (its data as `text`): inserts, or replaces what is at its path unless
    /// `new_only`. The rows changed: 0 when `new_only` and the path is taken.
    fn store(&mut self, doc: &StoredDoc, text: &str, new_only: bool) -> Result<usize, Error>;
    fn delete(&mut self, path: &DocPath) -> Result<(), Error>;
    /// Appends a change to the log: the document before it in its logged form
    /// ([`logged`]), and the one after it (`None` for a delete). Answers its `seq`, or a
    /// placeholder the backend replaces before anyone sees it.
    fn log(
        &mut self,
        path: &str,
        kind: ChangeKind,
        old: Option<&str>,
        new: Option<(&StoredDoc, &str)>,
        now: i64,
    ) -> Result<i64, Error>;
}

/// Applies one request's writes in order inside the open transaction; the first error
/// ends it (the backend rolls the request back). Answers the results and the changes.
pub fn apply_job(
    tx: &mut impl WriteTx,
    writes: Vec<Prepared>,
    batch: bool,
    guard: Option<&dyn WriteGuard>,
    seen: &mut HashMap<String, Option<StoredDoc>>,
    now: i64,
) -> Result<(Vec<WriteResult>, Vec<Change>), Error> {
    let mut results = Vec::with_capacity(writes.len());
    let mut changes = Vec::with_capacity(writes.len());
    for (index, prepared) in writes.into_iter().enumerate() {
        let located = |error: Error| {
            if batch { Error::InBatch { index, error: Box::new(error) } } else { error }
        };
        let write = &prepared.write;
        // A create needs no read: the insert itself finds out whether the path is taken.
        // So does a set that can be decided as one (most sets make new documents).
        let blind_create = matches!(write.op, WriteOp::Create(_)) && write.if_version.is_none();
        let blind_set = prepared.replaces_blindly();
        let mut current = if blind_create || blind_set { None } else { tx.load(&write.path)? };
        let doc_path = write.path.clone();
        let mut effect = match write::apply(current.as_ref().map(|(doc, _)| doc), prepared, now) {
            Ok(effect) => effect,
            Err(refused) => {
                // The rules come first: a caller they refuse learns nothing from why the
                // write itself failed (a version, whether the document exists, a type).
                let (before, after) = write::attempted(current.as_ref().map(|(doc, _)| doc), &refused.write, now);
                allowed(tx, guard, seen, &doc_path, before, after.as_ref()).map_err(located)?;
                return Err(located(refused.error));
            }
        };
        let mut inserted = false;
        match &mut effect {
            Effect::Put { doc, text } if blind_set => {
                let as_create = allowed(tx, guard, seen, &doc_path, None, Some(doc));
                if as_create.is_ok() && tx.store(doc, text, true)? == 1 {
                    inserted = true;
                } else {
                    // The path is taken (or the rules refuse a create): a replace of what
                    // is stored, decided again with it.
                    current = tx.load(&doc_path)?;
                    match &current {
                        Some((old, _)) => {
                            doc.version = old.version + 1;
                            doc.created_at = old.created_at;
                            allowed(tx, guard, seen, &doc_path, Some(old), Some(doc)).map_err(located)?;
                        }
                        None => as_create.map_err(located)?,
                    }
                }
            }
            _ => {
                let after = match &effect {
                    Effect::Put { doc, .. } => Some(doc),
                    Effect::Delete | Effect::Nothing => None,
                };
                allowed(tx, guard, seen, &doc_path, current.as_ref().map(|(doc, _)| doc), after).map_err(located)?;
            }
        }
        let old_logged = current.as_ref().map(|(doc, text)| logged(doc, text));
        let old_bytes = current.as_ref().map_or(0, |(_, text)| text.len());
        let path = doc_path.as_str();
        if !seen.is_empty() {
            seen.remove(path);
        }
        match effect {
            Effect::Put { doc, text } => {
                let stored = if inserted { 1 } else { tx.store(&doc, &text, blind_create)? };
                if stored == 0 {
                    return Err(located(Error::AlreadyExists(format!("`{path}` already exists"))));
                }
                let kind = if current.is_some() { ChangeKind::Update } else { ChangeKind::Create };
                let seq = tx.log(path, kind, old_logged.as_deref(), Some((&doc, text.as_str())), now)?;
                let old = current.map(|(old, _)| Arc::new(old));
                // One copy of the document, shared by the answer and the bus.
                let doc = Arc::new(doc);
                changes.push(Change {
                    seq,
                    kind,
                    path: doc_path.clone(),
                    doc: Some(doc.clone()),
                    old,
                    committed_at: now,
                    bytes: text.len() + old_bytes,
                });
                results.push(WriteResult { path: doc_path.clone(), doc: Some(doc), data_json: Some(text.into()) });
            }
            Effect::Delete => {
                tx.delete(&doc_path)?;
                let seq = tx.log(path, ChangeKind::Delete, old_logged.as_deref(), None, now)?;
                let old = current.map(|(old, _)| Arc::new(old));
                changes.push(Change {
                    seq,
                    kind: ChangeKind::Delete,
                    path: doc_path.clone(),
                    doc: None,
                    old,
                    committed_at: now,
                    bytes: old_bytes,
                });
                results.push(WriteResult { path: doc_path.clone(), doc: None, data_json: None });
            }
            Effect::Nothing => results.push(WriteResult { path: doc_path.clone(), doc: None, data_json: None }),
        }
    }
    Ok((results, changes))
}

/// Asks the guard, if any, whether a write may take `path` from `before` to `after`;
/// `seen` caches the documents the guard reads, for the whole group.
fn allowed(
    tx: &mut impl WriteTx,
    guard: Option<&dyn WriteGuard>,
    seen: &mut HashMap<String, Option<StoredDoc>>,
    path: &DocPath,
    before: Option<&StoredDoc>,
    after: Option<&StoredDoc>,
) -> Result<(), Error> {
    let Some(guard) = guard else { return Ok(()) };
    let mut lookup = |path: &DocPath| {
        if let Some(doc) = seen.get(path.as_str()) {
            return Ok(doc.clone());
        }
        let doc = tx.load(path)?.map(|(doc, _)| doc);
        seen.insert(path.as_str().to_owned(), doc.clone());
        Ok(doc)
    };
    guard.check(path, before, after, &mut lookup)
}

/// A document as the log keeps it: `{"v", "c", "u", "d"}`, data spliced in as text.
pub fn logged(doc: &StoredDoc, data_text: &str) -> String {
    format!(r#"{{"v":{},"c":{},"u":{},"d":{data_text}}}"#, doc.version, doc.created_at, doc.updated_at)
}
