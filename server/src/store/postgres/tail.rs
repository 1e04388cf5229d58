//! This node's one reader of the change log on PostgreSQL. Every node's commits land in
//! the one `changes` table; the tailer publishes them to this node's [`ChangeBus`] in `seq`
//! order, whoever wrote them, so realtime and triggers see one history on every node.
//!
//! - This node's own commits come straight from its writer, documents and all: when they
//!   follow the last `seq` published, they are published without a query.
//! - Other nodes' commits are read from the log when a `NOTIFY hearth_changes` wakes the
//!   tailer, when this node's next commit shows a gap before it, or every `poll` at the
//!   latest. The notification carries only the commit's last `seq` (one this node has
//!   published already is no reason to read): it is a wake-up, never the data, so one
//!   lost with a dropped connection costs a poll's delay and no change.
//!
//! Whatever the number of subscribers, a node reads the log once: at rest, one query per
//! `poll`; under load, one per wake-up that found another node's changes.

use std::time::Duration;

use sqlx::postgres::{PgListener, PgPool};
use tokio::sync::{mpsc, watch};

use super::{pg_error, read_log};
use crate::changes::{Change, ChangeBus};
use crate::store::Error;

/// The channel the writers notify after each commit that logged changes.
pub(super) const CHANNEL: &str = "hearth_changes";

/// Changes read from the log in one query.
const PAGE: usize = 1_000;

/// Starts tailing from the log's current end; answers where the writer hands over this
/// node's commits.
pub(super) async fn start(
    pool: PgPool,
    bus: ChangeBus,
    poll: Duration,
) -> Result<mpsc::UnboundedSender<Vec<Change>>, Error> {
    let last = {
        let mut conn = pool.acquire().await.map_err(pg_error)?;
        super::last_seq(&mut conn).await?
    };
    let mut listener = PgListener::connect_with(&pool).await.map_err(pg_error)?;
    listener.listen(CHANNEL).await.map_err(pg_error)?;
    let (wake, woken) = watch::channel(last);
    tokio::spawn(listen(listener, wake));
    let (local, from_writer) = mpsc::unbounded_channel();
    tokio::spawn(Tailer { pool, bus, last }.run(from_writer, woken, poll));
    Ok(local)
}

/// Turns notifications into wake-ups carrying the highest `seq` notified; a reconnection
/// is one too (what was notified while the connection was down is read then).
async fn listen(mut listener: PgListener, wake: watch::Sender<i64>) {
    loop {
        match listener.try_recv().await {
            Ok(Some(notification)) => {
                let seq = notification.payload().parse().unwrap_or(i64::MAX);
                wake.send_modify(|notified| *notified = (*notified).max(seq));
            }
            Ok(None) => wake.send_modify(|notified| *notified = i64::MAX),
            Err(sqlx::Error::PoolClosed) => return,
            Err(error) => {
                tracing::warn!(%error, "listening for changes failed; the log is polled meanwhile");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

struct Tailer {
    pool: PgPool,
    bus: ChangeBus,
    /// The last `seq` published.
    last: i64,
}

impl Tailer {
    async fn run(
        mut self,
        mut from_writer: mpsc::UnboundedReceiver<Vec<Change>>,
        mut woken: watch::Receiver<i64>,
        poll: Duration,
    ) {
        loop {
            tokio::select! {
                biased;
                committed = from_writer.recv() => match committed {
                    Some(changes) => self.local(changes).await,
                    None => return, // the writer stopped: the backend is closing
                },
                Ok(()) = woken.changed() => {
                    // This node's own commits arrive from its writer: nothing to read.
                    let notified = *woken.borrow_and_update();
                    if notified > self.last {
                        self.read_or_warn().await;
                    }
                }
                _ = tokio::time::sleep(poll) => self.read_or_warn().await,
            }
        }
    }

    /// This node's commit: published as it is, after whatever other nodes committed
    /// before it (read first, until it succeeds: nothing may pass a gap).
    async fn local(&mut self, mut changes: Vec<Change>) {
        changes.retain(|change| change.seq > self.last);
        let Some(first) = changes.first().map(|change| change.seq) else { return };
        let mut backoff = Duration::from_millis(50);
        while self.last < first - 1 {
            match self.read(Some(first - 1)).await {
                // `seq`s are never skipped (a rolled-back transaction returns its numbers
                // with its update of `log_head`), so only a pruned log stops short.
                Ok(()) if self.last < first - 1 => {
                    tracing::warn!(from = self.last, to = first, "changes pruned before this node read them");
                    break;
                }
                Ok(()) => {}
                Err(error) => {
                    tracing::warn!(%error, "reading other nodes' changes failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
        self.last = changes.last().map_or(self.last, |change| change.seq);
        self.bus.publish(changes);
    }

    async fn read_or_warn(&mut self) {
        if let Err(error) = self.read(None).await {
            tracing::warn!(%error, "reading the change log failed; it is read again at the next wake-up");
        }
    }

    /// Publishes what the log holds after the last `seq` published, up to `until`.
    async fn read(&mut self, until: Option<i64>) -> Result<(), Error> {
        loop {
            let limit = until.map_or(PAGE, |until| PAGE.min((until - self.last).max(0) as usize));
            if limit == 0 {
                return Ok(());
            }
            let (changes, last) = read_log(&self.pool, self.last, limit, None).await?;
            let Some(last) = last else { return Ok(()) };
            let causes: Vec<(i64, u8)> =
                changes.iter().filter(|(_, depth)| *depth > 0).map(|(change, depth)| (change.seq, *depth)).collect();
            self.bus.note_causes(&causes);
            let read = changes.len();
            self.bus.publish(changes.into_iter().map(|(change, _)| change).collect());
            self.last = last;
            if read < limit {
                return Ok(());
            }
        }
    }
}
