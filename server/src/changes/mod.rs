//! The change log as seen by the rest of the server: the [`Change`] record every backend
//! appends in the write transaction, and the in-process [`ChangeBus`] that carries
//! committed changes to realtime and function triggers. A reader that falls behind the
//! bus resumes from the log by `seq` (`Store::changes_since`), so nothing is lost.

pub mod relay;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

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
    /// The length of the documents' JSON: what holding the change costs, about.
    pub bytes: usize,
}

/// Changes of one commit, in `seq` order, shared by every receiver.
pub type Committed = Arc<[Change]>;

/// The in-process fan-out of committed changes. Each receiver has its own queue, bounded
/// in bytes of document JSON: a commit is freed as soon as every receiver has taken it
/// (a ring of recent commits would keep the last N alive however large they were), and
/// a receiver that falls a whole queue behind is told it lagged and resumes from the log.
#[derive(Clone)]
pub struct ChangeBus {
    receivers: Arc<Mutex<Vec<Queue>>>,
    limit: usize,
    /// The `seq` of the last change published: a wake-up for readers of the log that
    /// need no documents from the bus.
    published: Arc<tokio::sync::watch::Sender<i64>>,
    /// `seq` → how many trigger runs in a row led to that change, for recent changes a
    /// trigger run caused (what stops a chain of triggers feeding each other). Kept in
    /// memory: after a restart a chain is counted afresh.
    causes: Arc<Mutex<std::collections::BTreeMap<i64, u8>>>,
}

/// Changes whose cause is remembered; older ones count as not caused by a trigger.
const REMEMBERED_CAUSES: usize = 100_000;

/// The bus's end of one receiver.
struct Queue {
    sender: mpsc::UnboundedSender<Committed>,
    state: Arc<QueueState>,
}

#[derive(Default)]
struct QueueState {
    queued: AtomicUsize,
    lagged: AtomicBool,
}

/// Why [`BusReceiver::recv`] gave no commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecvError {
    /// Commits were dropped for this receiver: read the log from the last `seq` seen.
    Lagged,
    /// The bus is gone.
    Closed,
}

/// One receiver's end: commits in order, or [`RecvError::Lagged`] once after a gap.
pub struct BusReceiver {
    receiver: mpsc::UnboundedReceiver<Committed>,
    state: Arc<QueueState>,
}

impl BusReceiver {
    pub async fn recv(&mut self) -> Result<Committed, RecvError> {
        loop {
            if self.state.lagged.swap(false, Ordering::AcqRel) {
                return Err(RecvError::Lagged);
            }
            let committed = self.receiver.recv().await.ok_or(RecvError::Closed)?;
            if let Some(committed) = self.take(committed) {
                return Ok(committed);
            }
        }
    }

    /// What [`recv`](Self::recv) would return now, or `None` if it would wait.
    pub fn try_recv(&mut self) -> Option<Result<Committed, RecvError>> {
        loop {
            if self.state.lagged.swap(false, Ordering::AcqRel) {
                return Some(Err(RecvError::Lagged));
            }
            let committed = match self.receiver.try_recv() {
                Ok(committed) => committed,
                Err(mpsc::error::TryRecvError::Empty) => return None,
                Err(mpsc::error::TryRecvError::Disconnected) => return Some(Err(RecvError::Closed)),
            };
            if let Some(committed) = self.take(committed) {
                return Some(Ok(committed));
            }
        }
    }

    /// Counts a received commit out of the queue; an empty one only woke a receiver
    /// that lagged.
    fn take(&self, committed: Committed) -> Option<Committed> {
        if committed.is_empty() {
            return None;
        }
        self.state.queued.fetch_sub(size_of(&committed), Ordering::AcqRel);
        Some(committed)
    }
}

/// What a commit holds, about: its documents' JSON.
fn size_of(committed: &[Change]) -> usize {
    committed.iter().map(|change| change.bytes).sum()
}

impl ChangeBus {
    /// Each receiver may fall `limit` bytes of document JSON behind before it lags (and
    /// must resume from the log).
    pub fn new(limit: usize) -> ChangeBus {
        ChangeBus {
            receivers: Arc::default(),
            limit,
            published: Arc::new(tokio::sync::watch::Sender::new(0)),
            causes: Arc::default(),
        }
    }

    /// Remembers how deep in a chain of trigger runs each of these changes is.
    pub fn note_causes(&self, causes: &[(i64, u8)]) {
        if causes.is_empty() {
            return;
        }
        let mut known = self.causes.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        known.extend(causes.iter().copied());
        while known.len() > REMEMBERED_CAUSES {
            known.pop_first();
        }
    }

    /// Forgets causes noted for changes that did not commit.
    pub fn forget_causes(&self, causes: &[(i64, u8)]) {
        let mut known = self.causes.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for (seq, _) in causes {
            known.remove(seq);
        }
    }

    /// How many trigger runs in a row led to change `seq` (0: a client's write, a
    /// callable's, or one too old to remember).
    pub fn cause(&self, seq: i64) -> u8 {
        self.causes.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).get(&seq).copied().unwrap_or(0)
    }

    /// Publishes the changes of one commit; only ever called after the commit.
    pub fn publish(&self, changes: Vec<Change>) {
        if changes.is_empty() {
            return;
        }
        let last = changes.last().map_or(0, |change| change.seq);
        let committed: Committed = changes.into();
        let size = size_of(&committed);
        self.published.send_replace(last);
        let mut receivers = self.receivers.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        receivers.retain(|queue| {
            let state = &queue.state;
            if state.lagged.load(Ordering::Acquire) {
                return true; // it reads the log before anything queued after the gap
            }
            if state.queued.fetch_add(size, Ordering::AcqRel) + size > self.limit {
                state.queued.fetch_sub(size, Ordering::AcqRel);
                state.lagged.store(true, Ordering::Release);
                return queue.sender.send(Arc::from([])).is_ok();
            }
            queue.sender.send(committed.clone()).is_ok()
        });
    }

    /// The `seq` of the last change published, changing with every commit.
    pub fn published(&self) -> tokio::sync::watch::Receiver<i64> {
        self.published.subscribe()
    }

    pub fn subscribe(&self) -> BusReceiver {
        let (sender, receiver) = mpsc::unbounded_channel();
        let state = Arc::new(QueueState::default());
        let mut receivers = self.receivers.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        receivers.push(Queue { sender, state: state.clone() });
        BusReceiver { receiver, state }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit(seq: i64, bytes: usize) -> Vec<Change> {
        let path = DocPath::parse("c/d").expect("path");
        vec![Change { seq, kind: ChangeKind::Update, path, doc: None, old: None, committed_at: 0, bytes }]
    }

    fn seqs(committed: &Committed) -> Vec<i64> {
        committed.iter().map(|change| change.seq).collect()
    }

    #[tokio::test]
    async fn a_receiver_a_queue_behind_lags_once_then_hears_new_commits() {
        let bus = ChangeBus::new(100);
        let mut receiver = bus.subscribe();
        bus.publish(commit(1, 60));
        bus.publish(commit(2, 60)); // over the limit: dropped
        bus.publish(commit(3, 10)); // dropped too: the receiver reads the log first
        assert_eq!(receiver.recv().await.map(|c| seqs(&c)), Err(RecvError::Lagged));
        assert_eq!(receiver.recv().await.map(|c| seqs(&c)), Ok(vec![1]));
        bus.publish(commit(4, 10));
        assert_eq!(receiver.recv().await.map(|c| seqs(&c)), Ok(vec![4]));
    }

    #[test]
    fn try_recv_takes_what_is_queued_and_never_waits() {
        let bus = ChangeBus::new(100);
        let mut receiver = bus.subscribe();
        assert!(receiver.try_recv().is_none());
        bus.publish(commit(1, 60));
        bus.publish(commit(2, 30));
        assert_eq!(receiver.try_recv().map(|c| c.map(|c| seqs(&c))), Some(Ok(vec![1])));
        assert_eq!(receiver.try_recv().map(|c| c.map(|c| seqs(&c))), Some(Ok(vec![2])));
        assert!(receiver.try_recv().is_none());
        // Emptied queues count down: another 90 bytes fit again, then a gap shows as a lag.
        bus.publish(commit(3, 90));
        bus.publish(commit(4, 20));
        assert_eq!(receiver.try_recv().map(|c| c.map(|c| seqs(&c))), Some(Err(RecvError::Lagged)));
        assert_eq!(receiver.try_recv().map(|c| c.map(|c| seqs(&c))), Some(Ok(vec![3])));
        assert!(receiver.try_recv().is_none(), "the wake-up of the lag is not a commit");
        drop(bus);
        assert_eq!(receiver.try_recv().map(|c| c.map(|c| seqs(&c))), Some(Err(RecvError::Closed)));
    }

    #[tokio::test]
    async fn a_waiting_receiver_is_woken_by_a_commit_larger_than_its_queue() {
        let bus = ChangeBus::new(100);
        let mut receiver = bus.subscribe();
        let waiting = tokio::spawn(async move { receiver.recv().await.map(|c| seqs(&c)) });
        tokio::task::yield_now().await;
        bus.publish(commit(1, 500));
        let woken = tokio::time::timeout(std::time::Duration::from_secs(5), waiting).await;
        assert_eq!(woken.expect("woken").expect("task"), Err(RecvError::Lagged));
    }

    #[tokio::test]
    async fn a_commit_is_freed_once_every_receiver_took_it() {
        let bus = ChangeBus::new(1000);
        let mut receiver = bus.subscribe();
        bus.publish(commit(1, 10));
        let taken = receiver.recv().await.expect("commit");
        assert_eq!(Arc::strong_count(&taken), 1);
        drop(receiver);
        bus.publish(commit(2, 10)); // finds the receiver gone and forgets it
        assert!(bus.receivers.lock().expect("lock").is_empty());
    }
}
