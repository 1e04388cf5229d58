//! The single writer: one thread owns the write connection and commits whatever is queued
//! as one transaction (group commit), each request in its own savepoint so a failed
//! precondition fails only its own request. Changes are appended to the log in the same
//! transaction and published only after `COMMIT` succeeds.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use rusqlite::{Connection, TransactionBehavior, params};
use tokio::sync::{mpsc, oneshot};

use crate::changes::{Change, ChangeBus, ChangeKind};
use crate::store::commit::{WriteTx, apply_job};
use crate::store::write::Prepared;

const INSERT_NEW: &str = "INSERT INTO documents (path, collection, coll_id, id, data, version, created_at, updated_at) \
     VALUES (?1, ?2, ?3, ?4, jsonb(?5), ?6, ?7, ?8) ON CONFLICT (coll_id, path) DO NOTHING";
const UPSERT: &str = "INSERT INTO documents (path, collection, coll_id, id, data, version, created_at, updated_at) \
     VALUES (?1, ?2, ?3, ?4, jsonb(?5), ?6, ?7, ?8) \
     ON CONFLICT (coll_id, path) DO UPDATE SET data = excluded.data, version = excluded.version, updated_at = excluded.updated_at";
use crate::store::{DocPath, Error, StoredDoc, WriteGuard, WriteResult, now_micros};

/// A closure run on the write connection, outside the document write path (set-up,
/// pruning, key storage).
pub type Exec = Box<dyn FnOnce(&Connection) -> Result<u64, Error> + Send>;

/// What the writer is asked to do.
pub enum Command {
    Write(Job),
    Exec(Exec, oneshot::Sender<Result<u64, Error>>),
    /// Finish what is queued before this, then stop.
    Shutdown(oneshot::Sender<()>),
}

/// One atomic request: all its writes commit or none do.
pub struct Job {
    pub writes: Vec<Prepared>,
    pub batch: bool,
    /// Sees every write before it happens (the access rules).
    pub guard: Option<Arc<dyn WriteGuard>>,
    pub reply: oneshot::Sender<Result<Vec<WriteResult>, Error>>,
}

/// How the writer groups requests.
#[derive(Debug, Clone, Copy)]
pub struct WriterOptions {
    /// Commit everything queued together (true) or one request per transaction.
    pub group_commit: bool,
    /// Upper bound on writes in one group.
    pub max_group_writes: usize,
}

pub fn run(mut conn: Connection, mut receiver: mpsc::Receiver<Command>, bus: ChangeBus, options: WriterOptions) {
    while let Some(first) = receiver.blocking_recv() {
        let mut jobs = Vec::new();
        let mut control = None;
        match first {
            Command::Write(job) => jobs.push(job),
            other => control = Some(other),
        }
        if options.group_commit && control.is_none() {
            let mut writes = jobs[0].writes.len();
            while writes < options.max_group_writes {
                match receiver.try_recv() {
                    Ok(Command::Write(job)) => {
                        writes += job.writes.len();
                        jobs.push(job);
                    }
                    Ok(other) => {
                        control = Some(other);
                        break;
                    }
                    Err(_) => break,
                }
            }
        }
        metrics::gauge!("hearth_writer_queue_depth").set(receiver.len() as f64);
        if !jobs.is_empty() {
            commit_group(&mut conn, jobs, &bus);
        }
        match control {
            Some(Command::Exec(exec, reply)) => {
                let _ = reply.send(exec(&conn));
            }
            Some(Command::Shutdown(done)) => {
                receiver.close();
                // Writes queued after the shutdown request are refused, not dropped silently.
                while let Ok(command) = receiver.try_recv() {
                    refuse(command);
                }
                let _ = conn.execute_batch("PRAGMA optimize;");
                let _ = done.send(());
                return;
            }
            _ => {}
        }
    }
}

fn refuse(command: Command) {
    let closed = || Error::Unavailable("the server is shutting down".into());
    match command {
        Command::Write(job) => {
            let _ = job.reply.send(Err(closed()));
        }
        Command::Exec(_, reply) => {
            let _ = reply.send(Err(closed()));
        }
        Command::Shutdown(done) => {
            let _ = done.send(());
        }
    }
}

fn commit_group(conn: &mut Connection, jobs: Vec<Job>, bus: &ChangeBus) {
    let started = Instant::now();
    let writes: usize = jobs.iter().map(|job| job.writes.len()).sum();
    metrics::histogram!("hearth_group_commit_requests").record(jobs.len() as f64);
    metrics::histogram!("hearth_group_commit_writes").record(writes as f64);
    let now = now_micros();
    let mut answers = Vec::with_capacity(jobs.len());
    let mut changes = Vec::new();
    // `(seq, depth)` of the changes trigger runs caused.
    let mut causes: Vec<(i64, u8)> = Vec::new();
    // Documents the guards read, shared by the group: many writes check the same parent
    // (a room, a project). An entry goes when its document is written, all of them when
    // a request rolls back.
    let mut seen = HashMap::new();
    let outcome = (|| -> Result<(), Error> {
        let mut tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        for Job { writes, batch, guard, reply } in jobs {
            let depth = writes.iter().map(|prepared| prepared.depth).max().unwrap_or(0);
            let caused = |changes: &[Change], causes: &mut Vec<(i64, u8)>| {
                if depth > 0 {
                    causes.extend(changes.iter().map(|change| (change.seq, depth)));
                }
            };
            // A single write checks everything before it changes a row, so only requests
            // of several writes need a savepoint to fail alone.
            if writes.len() == 1 {
                match apply_job(&mut Sqlite(&tx), writes, batch, guard.as_deref(), &mut seen, now) {
                    Ok((results, job_changes)) => {
                        answers.push((reply, Ok(results)));
                        caused(&job_changes, &mut causes);
                        changes.extend(job_changes);
                    }
                    Err(error @ (Error::Internal(_) | Error::Unavailable(_))) => {
                        answers.push((reply, Err(error.clone())));
                        return Err(error);
                    }
                    Err(error) => answers.push((reply, Err(error))),
                }
                continue;
            }
            let savepoint = tx.savepoint()?;
            match apply_job(&mut Sqlite(&savepoint), writes, batch, guard.as_deref(), &mut seen, now) {
                Ok((results, job_changes)) => {
                    savepoint.commit()?;
                    answers.push((reply, Ok(results)));
                    caused(&job_changes, &mut causes);
                    changes.extend(job_changes);
                }
                Err(error) => {
                    drop(savepoint); // rolls back this request only
                    seen.clear();
                    answers.push((reply, Err(error)));
                }
            }
        }
        // Noted before the commit, so a trigger that reads the log right after it finds
        // them; forgotten again if the commit fails (its `seq`s may then be reused).
        bus.note_causes(&causes);
        tx.commit()?;
        Ok(())
    })();
    match outcome {
        Ok(()) => {
            // Published before anyone hears of the commit: a caller that saw its write
            // acknowledged and then pings a realtime connection gets the write's
            // deliveries before the `pong`.
            bus.publish(changes);
            for (reply, answer) in answers {
                let _ = reply.send(answer);
            }
        }
        Err(error) => {
            // Nothing of the group committed: every request hears so, none is published.
            tracing::error!(%error, "group commit failed");
            bus.forget_causes(&causes);
            for (reply, _) in answers {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }
    metrics::histogram!("hearth_group_commit_seconds").record(started.elapsed().as_secs_f64());
}

/// The statements of a commit on SQLite, on the writer's connection (or a savepoint of it).
struct Sqlite<'a>(&'a Connection);

impl WriteTx for Sqlite<'_> {
    fn load(&mut self, path: &DocPath) -> Result<Option<(StoredDoc, String)>, Error> {
        let Some(raw) = super::read_document(self.0, path)? else {
            return Ok(None);
        };
        Ok(Some((raw.parse()?, raw.data)))
    }

    fn store(&mut self, doc: &StoredDoc, text: &str, new_only: bool) -> Result<usize, Error> {
        let path = &doc.path;
        Ok(self.0.prepare_cached(if new_only { INSERT_NEW } else { UPSERT })?.execute(params![
            path.as_str(),
            path.collection(),
            path.collection_id(),
            path.id(),
            text,
            doc.version,
            doc.created_at,
            doc.updated_at
        ])?)
    }

    fn delete(&mut self, path: &DocPath) -> Result<(), Error> {
        self.0
            .prepare_cached("DELETE FROM documents WHERE coll_id = ?1 AND path = ?2")?
            .execute([path.collection_id(), path.as_str()])?;
        Ok(())
    }

    /// Only the document before the change is copied: the one after it is in `documents`
    /// until the path's next change, which logs it as its `old` (see `read_changes`), so
    /// each version is written once to the log, not twice.
    fn log(
        &mut self,
        path: &str,
        kind: ChangeKind,
        old: Option<&str>,
        _new: Option<(&StoredDoc, &str)>,
        now: i64,
    ) -> Result<i64, Error> {
        self.0
            .prepare_cached("INSERT INTO changes (path, kind, old, committed_at) VALUES (?1, ?2, ?3, ?4)")?
            .execute(params![path, kind.as_str(), old, now])?;
        Ok(self.0.last_insert_rowid())
    }
}
