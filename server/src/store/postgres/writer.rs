//! This node's writer on PostgreSQL: one thread owns one connection and commits whatever is
//! queued as one transaction (group commit), each request of several writes in its own
//! savepoint, with the same per-write logic as SQLite ([`crate::store::commit`]).
//!
//! The rules' `get()` lookups inside a write are synchronous, so the thread drives its
//! connection statement by statement (`block_on` on a runtime of its own) rather than
//! running as a task.
//!
//! The log's `seq`s are taken last, from the one row of `log_head`: its row lock is held
//! until `COMMIT`, so a writer on any node that takes the next numbers waits until this
//! transaction has committed. Hence `seq` order is commit order, and a reader that sees
//! change N+1 sees every change up to N.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{AssertSqlSafe, Connection, Row};
use tokio::runtime::Runtime;
use tokio::sync::{mpsc, oneshot};

use super::pg_error;
use crate::changes::{Change, ChangeBus, ChangeKind};
use crate::store::commit::{WriteTx, apply_job, logged};
use crate::store::write::Prepared;
use crate::store::{DocPath, Error, StoredDoc, WriteGuard, WriteResult, now_micros};

/// One atomic request: all its writes commit or none do.
pub struct Job {
    pub writes: Vec<Prepared>,
    pub batch: bool,
    pub guard: Option<Arc<dyn WriteGuard>>,
    pub reply: oneshot::Sender<Result<Vec<WriteResult>, Error>>,
}

pub enum Command {
    Write(Job),
    /// Finish what is queued before this, then stop.
    Shutdown(oneshot::Sender<()>),
}

/// How the writer groups requests.
#[derive(Debug, Clone, Copy)]
pub struct WriterOptions {
    pub group_commit: bool,
    pub max_group_writes: usize,
}

/// The writer's connection, opened again after it is lost.
struct Link {
    options: PgConnectOptions,
    conn: Option<PgConnection>,
}

impl Link {
    fn get(&mut self, runtime: &Runtime) -> Result<&mut PgConnection, Error> {
        if self.conn.is_none() {
            let connect = PgConnection::connect_with(&self.options);
            let conn = runtime
                .block_on(async { tokio::time::timeout(Duration::from_secs(5), connect).await })
                .map_err(|_| Error::Unavailable("PostgreSQL does not answer".into()))?
                .map_err(pg_error)?;
            self.conn = Some(conn);
        }
        Ok(self.conn.as_mut().expect("connected above"))
    }
}

/// The writer's loop: each committed group's changes go to this node's log tailer
/// (`local`), which publishes them in `seq` order among every other node's.
pub fn run(
    options: PgConnectOptions,
    mut receiver: mpsc::Receiver<Command>,
    local: mpsc::UnboundedSender<Vec<Change>>,
    bus: ChangeBus,
    writer: WriterOptions,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "the PostgreSQL writer cannot start");
            return;
        }
    };
    let mut link = Link { options, conn: None };
    while let Some(first) = receiver.blocking_recv() {
        let mut jobs = Vec::new();
        let mut shutdown = None;
        match first {
            Command::Write(job) => jobs.push(job),
            Command::Shutdown(done) => shutdown = Some(done),
        }
        if writer.group_commit && shutdown.is_none() {
            let mut writes = jobs[0].writes.len();
            while writes < writer.max_group_writes {
                match receiver.try_recv() {
                    Ok(Command::Write(job)) => {
                        writes += job.writes.len();
                        jobs.push(job);
                    }
                    Ok(Command::Shutdown(done)) => {
                        shutdown = Some(done);
                        break;
                    }
                    Err(_) => break,
                }
            }
        }
        metrics::gauge!("hearth_writer_queue_depth").set(receiver.len() as f64);
        if !jobs.is_empty() {
            commit_group(&runtime, &mut link, jobs, &local, &bus);
        }
        if let Some(done) = shutdown {
            receiver.close();
            while let Ok(command) = receiver.try_recv() {
                match command {
                    Command::Write(job) => {
                        let _ = job.reply.send(Err(Error::Unavailable("the server is shutting down".into())));
                    }
                    Command::Shutdown(done) => {
                        let _ = done.send(());
                    }
                }
            }
            if let Some(conn) = link.conn.take() {
                let _ = runtime.block_on(conn.close());
            }
            let _ = done.send(());
            return;
        }
    }
}

/// A change of the group, its `seq` still to be taken.
struct Pending {
    path: String,
    kind: &'static str,
    doc: Option<String>,
    old: Option<String>,
    committed_at: i64,
    depth: u8,
}

/// The statements of a commit, on the writer's connection inside its transaction.
struct Postgres<'a> {
    runtime: &'a Runtime,
    conn: &'a mut PgConnection,
    /// Changes logged so far; `log` answers 1-based places in this list, replaced by
    /// real `seq`s before commit.
    pending: Vec<Pending>,
}

impl Postgres<'_> {
    fn execute(&mut self, sql: &'static str) -> Result<(), Error> {
        self.runtime.block_on(sqlx::raw_sql(sql).execute(&mut *self.conn)).map_err(pg_error)?;
        Ok(())
    }
}

impl WriteTx for Postgres<'_> {
    fn load(&mut self, path: &DocPath) -> Result<Option<(StoredDoc, String)>, Error> {
        let row = self
            .runtime
            .block_on(
                sqlx::query("SELECT data::text, version, created_at, updated_at FROM documents WHERE path = $1")
                    .bind(path.as_str())
                    .fetch_optional(&mut *self.conn),
            )
            .map_err(pg_error)?;
        let Some(row) = row else { return Ok(None) };
        let raw = super::raw_doc(path.clone(), &row)?;
        Ok(Some((raw.parse()?, raw.data)))
    }

    fn store(&mut self, doc: &StoredDoc, text: &str, new_only: bool) -> Result<usize, Error> {
        let sql = if new_only {
            "INSERT INTO documents (path, collection, coll_id, id, data, version, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7, $8) ON CONFLICT (path) DO NOTHING"
        } else {
            "INSERT INTO documents (path, collection, coll_id, id, data, version, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7, $8) ON CONFLICT (path) DO UPDATE \
             SET data = excluded.data, version = excluded.version, updated_at = excluded.updated_at"
        };
        let path = &doc.path;
        let done = self
            .runtime
            .block_on(
                sqlx::query(sql)
                    .bind(path.as_str())
                    .bind(path.collection())
                    .bind(path.collection_id())
                    .bind(path.id())
                    .bind(text)
                    .bind(doc.version)
                    .bind(doc.created_at)
                    .bind(doc.updated_at)
                    .execute(&mut *self.conn),
            )
            .map_err(pg_error)?;
        Ok(done.rows_affected() as usize)
    }

    fn delete(&mut self, path: &DocPath) -> Result<(), Error> {
        self.runtime
            .block_on(sqlx::query("DELETE FROM documents WHERE path = $1").bind(path.as_str()).execute(&mut *self.conn))
            .map_err(pg_error)?;
        Ok(())
    }

    fn log(
        &mut self,
        path: &str,
        kind: ChangeKind,
        old: Option<&str>,
        new: Option<(&StoredDoc, &str)>,
        now: i64,
    ) -> Result<i64, Error> {
        self.pending.push(Pending {
            path: path.to_owned(),
            kind: kind.as_str(),
            doc: new.map(|(doc, text)| logged(doc, text)),
            old: old.map(str::to_owned),
            committed_at: now,
            depth: 0,
        });
        Ok(self.pending.len() as i64)
    }
}

fn commit_group(
    runtime: &Runtime,
    link: &mut Link,
    jobs: Vec<Job>,
    local: &mpsc::UnboundedSender<Vec<Change>>,
    bus: &ChangeBus,
) {
    let started = Instant::now();
    let writes: usize = jobs.iter().map(|job| job.writes.len()).sum();
    metrics::histogram!("hearth_group_commit_requests").record(jobs.len() as f64);
    metrics::histogram!("hearth_group_commit_writes").record(writes as f64);
    let conn = match link.get(runtime) {
        Ok(conn) => conn,
        Err(error) => {
            for job in jobs {
                let _ = job.reply.send(Err(error.clone()));
            }
            return;
        }
    };
    let now = now_micros();
    let mut answers = Vec::with_capacity(jobs.len());
    let mut changes: Vec<Change> = Vec::new();
    let mut causes: Vec<(i64, u8)> = Vec::new();
    let mut tx = Postgres { runtime, conn, pending: Vec::new() };
    let mut seen = std::collections::HashMap::new();
    let outcome = (|| -> Result<(), Error> {
        tx.execute("BEGIN")?;
        for Job { writes, batch, guard, reply } in jobs {
            let depth = writes.iter().map(|prepared| prepared.depth).max().unwrap_or(0);
            let alone = writes.len() == 1;
            let logged_before = tx.pending.len();
            if !alone {
                tx.execute("SAVEPOINT request")?;
            }
            match apply_job(&mut tx, writes, batch, guard.as_deref(), &mut seen, now) {
                Ok((results, job_changes)) => {
                    if !alone {
                        tx.execute("RELEASE SAVEPOINT request")?;
                    }
                    if depth > 0 {
                        causes.extend(job_changes.iter().map(|change| (change.seq, depth)));
                        for pending in &mut tx.pending[logged_before..] {
                            pending.depth = depth;
                        }
                    }
                    changes.extend(job_changes);
                    answers.push((reply, Ok(results)));
                }
                // A failed statement aborts the transaction: the whole group fails.
                Err(error @ (Error::Internal(_) | Error::Unavailable(_))) => {
                    answers.push((reply, Err(error.clone())));
                    return Err(error);
                }
                Err(error) => {
                    if !alone {
                        tx.execute("ROLLBACK TO SAVEPOINT request")?;
                        seen.clear();
                    }
                    tx.pending.truncate(logged_before);
                    answers.push((reply, Err(error)));
                }
            }
        }
        if !tx.pending.is_empty() {
            let base = take_seqs(&mut tx)?;
            for change in &mut changes {
                change.seq += base;
            }
            for cause in &mut causes {
                cause.0 += base;
            }
            bus.note_causes(&causes);
        }
        tx.execute("COMMIT")
    })();
    match outcome {
        Ok(()) => {
            // The tailer is gone only at shutdown, when nobody listens any more.
            let _ = local.send(changes);
            for (reply, answer) in answers {
                let _ = reply.send(answer);
            }
        }
        Err(error) => {
            tracing::error!(%error, "group commit failed");
            bus.forget_causes(&causes);
            // Whatever state the connection is in, the next group starts on a clean one.
            if let Some(conn) = link.conn.take() {
                let _ = runtime.block_on(conn.close());
            }
            for (reply, _) in answers {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }
    metrics::histogram!("hearth_group_commit_seconds").record(started.elapsed().as_secs_f64());
}

/// Takes the next `seq`s for the pending changes and appends them to the log; answers the
/// offset from their places to their `seq`s. Last in the transaction: the row lock it
/// takes on `log_head` is held until commit (see the module's notes).
fn take_seqs(tx: &mut Postgres<'_>) -> Result<i64, Error> {
    let count = tx.pending.len() as i64;
    let head: i64 = tx
        .runtime
        .block_on(sqlx::query("UPDATE log_head SET seq = seq + $1 RETURNING seq").bind(count).fetch_one(&mut *tx.conn))
        .map_err(pg_error)?
        .try_get(0)
        .map_err(pg_error)?;
    let base = head - count;
    let pending = std::mem::take(&mut tx.pending);
    let seqs: Vec<i64> = (1..=count).map(|place| base + place).collect();
    let mut paths = Vec::with_capacity(pending.len());
    let mut kinds = Vec::with_capacity(pending.len());
    let mut docs = Vec::with_capacity(pending.len());
    let mut olds = Vec::with_capacity(pending.len());
    let mut times = Vec::with_capacity(pending.len());
    let mut depths = Vec::with_capacity(pending.len());
    for change in pending {
        depths.push(i16::from(change.depth));
        paths.push(change.path);
        kinds.push(change.kind);
        docs.push(change.doc);
        olds.push(change.old);
        times.push(change.committed_at);
    }
    let insert = "INSERT INTO changes (seq, path, kind, doc, old, committed_at, depth) SELECT * FROM \
                  UNNEST($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[], $7::int2[])";
    tx.runtime
        .block_on(
            sqlx::query(AssertSqlSafe(insert))
                .bind(seqs)
                .bind(paths)
                .bind(kinds)
                .bind(docs)
                .bind(olds)
                .bind(times)
                .bind(depths)
                .execute(&mut *tx.conn),
        )
        .map_err(pg_error)?;
    // The payload is the last `seq` of the commit: a tailer that has it already (its own
    // node's commit) reads nothing.
    let notify = sqlx::query("SELECT pg_notify('hearth_changes', $1)").bind((base + count).to_string());
    tx.runtime.block_on(notify.execute(&mut *tx.conn)).map_err(pg_error)?;
    Ok(base)
}
