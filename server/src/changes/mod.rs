//! The change log as seen by the rest of the server: the [`Change`] record every backend
//! appends in the write transaction, and the in-process [`ChangeBus`] that carries
//! committed changes to realtime and function triggers. A reader that falls behind the
//! bus resumes from the log by `seq` (`Store::changes_since`), so nothing is lost.

use std::sync::Arc;

use tokio::sync::broadcast;

use crate::store::{DocPath, StoredDoc};

/// What a change did to its document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Create,
    Update,
    Delete,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Create => "create",
            ChangeKind::Update => "update",
            ChangeKind::Delete => "delete",
        }
    }

    pub fn parse(kind: &str) -> Option<ChangeKind> {
        match kind {
            "create" => Some(ChangeKind::Create),
            "update" => Some(ChangeKind::Update),
            "delete" => Some(ChangeKind::Delete),
            _ => None,
        }
    }
}

/// One committed change to one document.
#[derive(Debug, Clone)]
pub struct Change {
    /// Position in the log; strictly increasing in commit order.
    pub seq: i64,
    pub kind: ChangeKind,
    pub path: DocPath,
    /// The document after the write; `None` for a delete.
    pub doc: Option<Arc<StoredDoc>>,
    /// The document before the write; `None` for a create.
    pub old: Option<Arc<StoredDoc>>,
    /// Commit time, microseconds since the epoch.
    pub committed_at: i64,
}

/// Changes of one commit, in `seq` order, shared by every receiver.
pub type Committed = Arc<[Change]>;

/// The in-process fan-out of committed changes.
#[derive(Clone)]
pub struct ChangeBus {
    sender: broadcast::Sender<Committed>,
}

impl ChangeBus {
    /// `capacity` commits are kept for slow receivers before they lag (and must resume
    /// from the log).
    pub fn new(capacity: usize) -> ChangeBus {
        let (sender, _) = broadcast::channel(capacity);
        ChangeBus { sender }
    }

    /// Publishes the changes of one commit; only ever called after the commit.
    pub fn publish(&self, changes: Vec<Change>) {
        if !changes.is_empty() {
            // No receiver is fine: nothing is listening yet.
            let _ = self.sender.send(changes.into());
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Committed> {
        self.sender.subscribe()
    }
}
