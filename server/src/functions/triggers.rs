//! Document triggers: each `onDocumentWritten` export follows the change log from a
//! durable cursor (`trigger_cursors`), so it sees every committed write to a matching
//! document at least once, in `seq` order, also across a crash (the cursor is saved after
//! each batch is handled; what was handled after the last save runs again).
//!
//! A new trigger's cursor is set at the end of the log before its bundle is in force
//! (`Functions::mark_trigger_starts`), so it sees every write answered after the deploy.
//!
//! A failing event is retried with doubling backoff and after [`ATTEMPTS`] goes to the
//! dead letters (`GET /v1/admin/functions/dead`); the trigger moves on.
//!
//! With several nodes on one database, one node at a time follows each trigger: the one
//! holding its lease ([`Lease`]). A node that dies stops renewing it, and another takes
//! it over within [`LEASE_TTL`] and goes on from the saved cursor.
//!
//! Every write a function makes is one deeper than the change it ran for
//! (`ChangeBus::cause`); a trigger is not run for a change [`MAX_CHAIN`] deep, so a
//! trigger rewriting its own document, or triggers feeding each other in a cycle, stop
//! there and say so in the log and the dead letters.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::{Functions, Kind};
use crate::changes::Change;
use crate::rules::set::DocPattern;
use crate::store::{DeadLetter, DocJson, LogPage, PathFilter, Store, StoredDoc};

/// Changes read from the log at a time; the cursor is saved after each such batch.
pub(super) const BATCH: usize = 100;
/// Tries of one event before it is dead-lettered.
pub const ATTEMPTS: u32 = 5;
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Writes in a row made by functions run for each other's writes (a trigger rewriting
/// its own document, or triggers feeding each other) before the chain is stopped.
pub const MAX_CHAIN: u32 = 16;

/// How long a lease lasts unless renewed; what a dead node's triggers wait, at most.
pub const LEASE_TTL: Duration = Duration::from_secs(10);
/// How often a holder renews its lease, and a node without it asks again.
const LEASE_RENEW: Duration = Duration::from_secs(3);

/// The right to follow one log (a trigger's, a user function's) on this node.
pub(super) struct Lease {
    store: Store,
    name: String,
    holder: String,
    renewed: Option<std::time::Instant>,
}

impl Lease {
    pub(super) fn new(store: Store, name: String) -> Lease {
        // The process id shows an operator which node holds what.
        let holder = format!("{}-{:012x}", std::process::id(), rand::random::<u64>() >> 16);
        Lease { store, name, holder, renewed: None }
    }

    /// Waits until this node holds the lease, renewing it when due; true when it was just
    /// taken, so whatever the last holder saved must be read again.
    pub(super) async fn hold(&mut self) -> bool {
        loop {
            if self.renewed.is_some_and(|at| at.elapsed() < LEASE_RENEW) {
                return false;
            }
            let taken = self.store.backend().lease(self.name.clone(), self.holder.clone(), LEASE_TTL).await;
            match taken {
                Ok(true) => return self.renewed.replace(std::time::Instant::now()).is_none(),
                Ok(false) => {
                    self.renewed = None;
                    tokio::time::sleep(LEASE_RENEW).await;
                }
                Err(error) => {
                    tracing::warn!(lease = %self.name, %error, "cannot renew the lease; pausing");
                    self.renewed = None;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}

/// Keeps one task per trigger and per schedule of the bundle in force.
pub async fn supervise(functions: Functions, store: Store) {
    let mut installed = functions.shared.installed.subscribe();
    let mut running: HashMap<String, ((Kind, String), tokio::task::JoinHandle<()>)> = HashMap::new();
    loop {
        // Each trigger and schedule by name, with what decides when it runs.
        let wanted: HashMap<String, (Kind, String)> = functions
            .list()
            .into_iter()
            .filter_map(|function| match function.kind {
                Kind::DocumentWritten => Some((function.name, (Kind::DocumentWritten, function.pattern?))),
                Kind::Schedule => Some((function.name, (Kind::Schedule, function.cron?))),
                Kind::UserCreated => Some((function.name, (Kind::UserCreated, String::new()))),
                Kind::Call | Kind::BeforeDocumentWrite => None,
            })
            .collect();
        running.retain(|name, (spec, task)| {
            let keep = wanted.get(name) == Some(spec);
            if !keep {
                task.abort();
            }
            keep
        });
        for (name, spec) in wanted {
            if running.contains_key(&name) {
                continue;
            }
            let (functions, store, task_name) = (functions.clone(), store.clone(), name.clone());
            let task = match &spec {
                (Kind::Schedule, cron) => match super::schedules::parse(cron) {
                    Ok(cron) => tokio::spawn(super::schedules::run(functions, store, task_name, cron)),
                    Err(_) => continue,
                },
                (Kind::UserCreated, _) => tokio::spawn(super::users::follow(functions, task_name)),
                (_, pattern) => match DocPattern::parse(pattern) {
                    Ok(pattern) => tokio::spawn(follow(functions, store, task_name, pattern)),
                    Err(_) => continue,
                },
            };
            running.insert(name, (spec, task));
        }
        if installed.changed().await.is_err() {
            return;
        }
    }
}

/// Runs one trigger over the log, forever.
async fn follow(functions: Functions, store: Store, name: String, pattern: DocPattern) {
    let mut published = store.bus().published();
    let mut lease = Lease::new(store.clone(), format!("trigger:{name}"));
    let mut cursor = 0;
    // Changes of other paths are skipped without reading their documents.
    let wanted: PathFilter = {
        let pattern = pattern.clone();
        Arc::new(move |path: &str| pattern.matches(path).is_some())
    };
    loop {
        if lease.hold().await {
            cursor = until_read(&name, "cursor", || start_at(&store, &name)).await;
        }
        let LogPage { changes, last } = match store.changes_of(cursor, BATCH, wanted.clone()).await {
            Ok(page) => page,
            Err(error) => {
                tracing::error!(trigger = %name, %error, "cannot read the change log");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let Some(last) = last else {
            // Up to date: wait for the next commit (or a second, in case of a lost wake-up).
            let _ = tokio::time::timeout(Duration::from_secs(1), published.changed()).await;
            continue;
        };
        for change in &changes {
            if let Some(captures) = pattern.matches(change.path.as_str()) {
                handle(&functions, &store, &name, change, captures).await;
            }
        }
        cursor = last;
        if let Err(error) = store.backend().set_trigger_cursor(name.clone(), cursor).await {
            tracing::error!(trigger = %name, %error, "cannot save the trigger's cursor");
        }
    }
}

/// What `read` gives once it succeeds: a function's saved state (cursor, last tick) is
/// read again a second later while the database fails, each failure logged.
pub(super) async fn until_read<T, F, Fut>(name: &str, what: &str, read: F) -> T
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T, crate::store::Error>>,
{
    loop {
        match read().await {
            Ok(value) => return value,
            Err(error) => {
                tracing::error!(function = %name, %error, "cannot read the function's {what}; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// The trigger's saved cursor; a new trigger starts at the end of the log (it sees the
/// writes after it was deployed, not the history).
pub async fn start_at(store: &Store, name: &str) -> Result<i64, crate::store::Error> {
    if let Some(seq) = store.backend().trigger_cursor(name.to_owned()).await? {
        return Ok(seq);
    }
    let seq = store.last_seq().await?;
    store.backend().set_trigger_cursor(name.to_owned(), seq).await?;
    Ok(seq)
}

async fn handle(functions: &Functions, store: &Store, name: &str, change: &Change, captures: Vec<(String, String)>) {
    let path = change.path.as_str();
    let depth = store.bus().cause(change.seq);
    if u32::from(depth) >= MAX_CHAIN {
        let error = format!(
            "runaway chain: change {} of `{path}` is the {depth}th write in a row made by functions run for \
             each other's writes; `{name}` is not run for it",
            change.seq
        );
        tracing::error!(trigger = %name, path, seq = change.seq, "{error}");
        dead_letter(store, name, change.seq, path, 0, error).await;
        return;
    }
    let params: serde_json::Map<String, Value> =
        captures.into_iter().map(|(key, value)| (key, Value::String(value))).collect();
    let event = json!({
        "kind": change.kind.as_str(),
        "path": path,
        "params": params,
        "before": change.old.as_deref().map(doc_json),
        "after": change.doc.as_deref().map(doc_json),
        "seq": change.seq,
    });
    deliver(functions, store, name, event, change.seq, path, depth).await;
}

/// Invokes `name` with `event` (`depth` runs deep in a chain) until it succeeds, at most
/// [`ATTEMPTS`] times with doubling backoff; then the event (`seq`, about `path`) goes to
/// the dead letters.
pub(super) async fn deliver(
    functions: &Functions,
    store: &Store,
    name: &str,
    event: Value,
    seq: i64,
    path: &str,
    depth: u8,
) {
    let mut backoff = FIRST_BACKOFF;
    let mut last_error = String::new();
    for attempt in 1..=ATTEMPTS {
        match functions.invoke(name, event.clone(), None, functions.time_limit(), depth).await {
            Ok(_) => return,
            Err(error) => {
                tracing::warn!(trigger = %name, path, seq, attempt, code = error.code.as_str(), "trigger failed");
                last_error = format!("{}: {}", error.code.as_str(), error.message);
                if attempt < ATTEMPTS {
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                }
            }
        }
    }
    dead_letter(store, name, seq, path, ATTEMPTS, last_error).await;
}

async fn dead_letter(store: &Store, name: &str, seq: i64, path: &str, attempts: u32, error: String) {
    let letter = DeadLetter {
        name: name.to_owned(),
        seq,
        path: path.to_owned(),
        attempts,
        error,
        failed_at: chrono::Utc::now().timestamp_micros(),
    };
    if let Err(error) = store.backend().add_dead_letter(letter).await {
        tracing::error!(trigger = %name, %error, "cannot keep a dead letter");
    }
}

/// A document as functions see it: the contract's `Document`.
pub(super) fn doc_json(doc: &StoredDoc) -> Value {
    let data = serde_json::to_string(&doc.data).unwrap_or_else(|_| "{}".into());
    let mut text = String::new();
    DocJson::written(doc, &data).write_to(&mut text);
    serde_json::from_str(&text).unwrap_or(Value::Null)
}
