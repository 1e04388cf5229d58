//! The local cache: every document the app has seen, in a SQLite file, so reads answer
//! while the server cannot be reached (also after the app restarts).
//!
//! Filled by whatever brings documents: reads, writes' answers, query pages and live
//! listeners. A document a live query drops (it stopped matching) stays cached; a
//! delete or a read that finds nothing removes it.
//!
//! It also keeps the queue of writes made while offline (`pending`), in the order they
//! were made, until the server has answered each.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use hearth_types::{BatchWrite, Document};
use rusqlite::{Connection, OptionalExtension, params};

use crate::{Error, Result};

/// The cache file. Calls are short single-row statements, run in place.
pub(crate) struct Cache {
    conn: Mutex<Connection>,
    /// The version the file holds of each document written or read this run: a read
    /// that brings nothing newer (the common case) writes nothing.
    known: Mutex<HashMap<String, i64>>,
}

fn fault(error: impl std::fmt::Display) -> Error {
    Error::Protocol(format!("the local cache: {error}"))
}

impl Cache {
    pub(crate) fn open(path: &Path) -> Result<Cache> {
        let conn = Connection::open(path).map_err(fault)?;
        conn.execute_batch(
            // NORMAL: a commit survives the app crashing (not the machine losing power),
            // without an fsync on every document kept.
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             CREATE TABLE IF NOT EXISTS docs (path TEXT PRIMARY KEY, doc TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS pending (seq INTEGER PRIMARY KEY AUTOINCREMENT, writes TEXT NOT NULL);",
        )
        .map_err(fault)?;
        Ok(Cache { conn: Mutex::new(conn), known: Mutex::default() })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn known(&self) -> std::sync::MutexGuard<'_, HashMap<String, i64>> {
        self.known.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Keeps these documents (newer versions only replace older ones).
    pub(crate) fn put(&self, docs: &[Document]) {
        let docs: Vec<&Document> = {
            let mut known = self.known();
            docs.iter()
                .filter(|doc| match known.get(&doc.path) {
                    Some(&version) if version >= doc.version => false,
                    _ => {
                        known.insert(doc.path.clone(), doc.version);
                        true
                    }
                })
                .collect()
        };
        if docs.is_empty() {
            return;
        }
        let mut conn = self.conn();
        let stored = (|| -> rusqlite::Result<()> {
            let tx = conn.transaction()?;
            {
                let mut upsert = tx.prepare_cached(
                    "INSERT INTO docs (path, doc) VALUES (?1, ?2) ON CONFLICT (path) DO UPDATE SET doc = excluded.doc \
                     WHERE json_extract(docs.doc, '$.version') <= json_extract(excluded.doc, '$.version')",
                )?;
                for doc in &docs {
                    let text = serde_json::to_string(doc).unwrap_or_default();
                    upsert.execute(params![doc.path, text])?;
                }
            }
            tx.commit()
        })();
        if let Err(error) = stored {
            tracing::warn!(%error, "cannot keep documents in the local cache");
        }
    }

    /// Forgets a document that is gone.
    pub(crate) fn remove(&self, path: &str) {
        self.known().remove(path);
        if let Err(error) = self.conn().execute("DELETE FROM docs WHERE path = ?1", [path]) {
            tracing::warn!(%error, "cannot update the local cache");
        }
    }

    /// The document as last seen, if it was.
    pub(crate) fn get(&self, path: &str) -> Option<Document> {
        let text: Option<String> = self
            .conn()
            .query_row("SELECT doc FROM docs WHERE path = ?1", [path], |row| row.get(0))
            .optional()
            .ok()
            .flatten();
        let doc: Document = serde_json::from_str(&text?).ok()?;
        self.known().insert(doc.path.clone(), doc.version);
        Some(doc)
    }

    /// The documents directly in `collection` (for a group: every collection with that
    /// id), as last seen.
    pub(crate) fn scan(&self, collection: Option<&str>, group: Option<&str>) -> Vec<Document> {
        let conn = self.conn();
        let rows = match (collection, group) {
            // Paths under `c/` sort between `c/` and `c0` (`0` follows `/`).
            (Some(collection), _) => {
                conn.prepare_cached("SELECT doc FROM docs WHERE path > ?1 AND path < ?2").and_then(|mut statement| {
                    let rows = statement
                        .query_map(params![format!("{collection}/"), format!("{collection}0")], |row| {
                            row.get::<_, String>(0)
                        })?;
                    rows.collect::<rusqlite::Result<Vec<String>>>()
                })
            }
            (None, Some(_)) => conn.prepare_cached("SELECT doc FROM docs").and_then(|mut statement| {
                let rows = statement.query_map([], |row| row.get::<_, String>(0))?;
                rows.collect::<rusqlite::Result<Vec<String>>>()
            }),
            (None, None) => Ok(Vec::new()),
        };
        let docs = rows.unwrap_or_else(|error| {
            tracing::warn!(%error, "cannot read the local cache");
            Vec::new()
        });
        docs.iter()
            .filter_map(|text| serde_json::from_str::<Document>(text).ok())
            .filter(|doc| crate::docs::in_target(collection, group, &doc.path))
            .collect()
    }

    /// Queues writes made offline (one entry commits as a whole); its sequence number.
    pub(crate) fn push_pending(&self, writes: &[BatchWrite]) -> Result<i64> {
        let text = serde_json::to_string(writes).map_err(fault)?;
        let conn = self.conn();
        conn.execute("INSERT INTO pending (writes) VALUES (?1)", [text]).map_err(fault)?;
        Ok(conn.last_insert_rowid())
    }

    /// Forgets a queued entry the server has answered.
    pub(crate) fn drop_pending(&self, seq: i64) {
        if let Err(error) = self.conn().execute("DELETE FROM pending WHERE seq = ?1", [seq]) {
            tracing::warn!(%error, "cannot update the local write queue");
        }
    }

    /// The queued entries, oldest first.
    pub(crate) fn pending(&self) -> Vec<(i64, Vec<BatchWrite>)> {
        let conn = self.conn();
        let rows = conn.prepare("SELECT seq, writes FROM pending ORDER BY seq").and_then(|mut statement| {
            let rows = statement.query_map([], |row| Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?)))?;
            rows.collect::<rusqlite::Result<Vec<(i64, String)>>>()
        });
        rows.unwrap_or_default()
            .into_iter()
            .filter_map(|(seq, text)| match serde_json::from_str(&text) {
                Ok(writes) => Some((seq, writes)),
                Err(error) => {
                    tracing::warn!(%error, seq, "a queued write the SDK cannot read; dropped");
                    None
                }
            })
            .collect()
    }
}
