//! The local cache: every document the app has seen, in a SQLite file, so reads answer
//! while the server cannot be reached (also after the app restarts).
//!
//! Filled by whatever brings documents: reads, writes' answers, query pages and live
//! listeners. A document a live query drops (it stopped matching) stays cached; a
//! delete or a read that finds nothing removes it.

use std::path::Path;
use std::sync::Mutex;

use hearth_types::Document;
use rusqlite::{Connection, OptionalExtension, params};

use crate::{Error, Result};

/// The cache file. Calls are short single-row statements, run in place.
pub(crate) struct Cache {
    conn: Mutex<Connection>,
}

fn fault(error: impl std::fmt::Display) -> Error {
    Error::Protocol(format!("the local cache: {error}"))
}

impl Cache {
    pub(crate) fn open(path: &Path) -> Result<Cache> {
        let conn = Connection::open(path).map_err(fault)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE IF NOT EXISTS docs (path TEXT PRIMARY KEY, doc TEXT NOT NULL);",
        )
        .map_err(fault)?;
        Ok(Cache { conn: Mutex::new(conn) })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Keeps these documents (newer versions only replace older ones).
    pub(crate) fn put(&self, docs: &[Document]) {
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
                for doc in docs {
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
        text.and_then(|text| serde_json::from_str(&text).ok())
    }
}
