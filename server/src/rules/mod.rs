//! Access rules: `rules.toml` compiled into CEL programs, and every decision made with them.
//!
//! - [`set`]: the file parsed, validated and compiled; pattern matching.
//! - [`eval`]: one evaluation, `get()`/`exists()` served by fetch rounds.
//! - [`pushdown`]: read rules folded into query conditions.
//! - [`testing`]: `hearth rules test`.
//!
//! Writes are decided inside the write's transaction through a [`WriteGuard`], so a rule
//! sees exactly the state the write applies to. Reads are decided here, after the read.
//! The service key never reaches this module: callers skip it for admin requests.

pub mod eval;
pub mod pushdown;
pub mod set;
pub mod testing;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use cel::Value;

use crate::auth::AuthUser;
use crate::store::query::{After, Condition, Target};
use crate::store::{self, DocPath, Error, QuerySpec, RawDoc, Store, StoredDoc, WriteGuard, now_micros};
use eval::{Lookups, Step, Vars};
pub use set::{Op, RuleSet, RulesError};

/// Most documents one query reads while checking rules per document; past it the page
/// is answered short, with a cursor that continues the scan.
pub const SCAN_BUDGET: usize = 1000;

/// Who is asking, as the rules see it (`auth`). The service key is not a principal: it
/// bypasses the rules.
#[derive(Clone, Debug)]
pub struct Principal {
    auth: Arc<eval::AuthVal>,
}

impl Principal {
    /// No credentials: `auth == null`.
    pub fn anonymous() -> Principal {
        Principal::from_value(Value::Null)
    }

    pub fn user(user: &AuthUser) -> Principal {
        Principal::from_value(eval::auth_value(Some(user)))
    }

    /// The caller's uid; `None` without a session.
    pub fn uid(&self) -> Option<String> {
        match self.auth.value() {
            Value::Map(map) => match map.map.get(&cel::objects::Key::String(Arc::new("uid".to_owned()))) {
                Some(Value::String(uid)) => Some(uid.to_string()),
                _ => None,
            },
            _ => None,
        }
    }

    /// Whether two principals are the same caller with the same claims.
    pub fn same_caller(&self, other: &Principal) -> bool {
        self.auth.value() == other.auth.value()
    }

    /// From an `auth` value (a rules test names one).
    pub fn from_value(auth: Value) -> Principal {
        Principal { auth: Arc::new(eval::AuthVal::new(auth)) }
    }
}

/// An answer of the rules: allowed, or denied and why (the reason is for logs and rule
/// tests, not for clients).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny(String),
}

/// How a query may run for a caller.
#[derive(Debug, Clone, PartialEq)]
pub enum QueryPlan {
    /// No rule could allow it.
    Denied,
    /// Run it with this extra condition (none: every document is readable).
    Restricted(Option<Condition>),
    /// Check each document against the rules.
    PerDocument,
}

/// A page of documents the caller may read; `resume` is where the next page starts.
pub struct Filtered {
    pub docs: Vec<RawDoc>,
    pub resume: Option<After>,
}

/// One operation on one document, as the rules see it.
#[derive(Clone, Copy)]
pub struct Access<'a> {
    pub op: Op,
    pub path: &'a DocPath,
    /// The stored document (`resource`).
    pub before: Option<&'a StoredDoc>,
    /// What a write would leave (`request.data`).
    pub after: Option<&'a StoredDoc>,
    /// `request.time`, microseconds since the epoch.
    pub time: i64,
}

impl<'a> Access<'a> {
    /// A read of `doc` (absent: `None`) at `path`, now.
    pub fn read(op: Op, path: &'a DocPath, doc: Option<&'a StoredDoc>) -> Access<'a> {
        Access { op, path, before: doc, after: None, time: now_micros() }
    }
}

impl RuleSet {
    /// Whether some pattern matching `path` has a rule for `op` (one that might allow it).
    pub fn could_allow(&self, op: Op, path: &DocPath) -> bool {
        self.matching_doc(path).iter().any(|(pattern, _)| pattern.rule(op).is_some())
    }

    /// Decides an access. One evaluation round; see [`eval`].
    pub fn decide_step(&self, principal: &Principal, access: &Access<'_>, lookups: &mut Lookups) -> Step<Decision> {
        let Access { op, path, before, after, time } = *access;
        let target = format!("`{path}`");
        first_allowing(self.matching_doc(path), op, &target, lookups, |rule, captures, lookups| {
            let vars = Vars::new(&principal.auth, op, before, after, time, &rule.needs, captures);
            eval::step(rule.expr(), &vars, lookups)
        })
    }

    /// [`RuleSet::decide_step`] to the end, reading documents with `fetch`.
    pub fn decide_sync(
        &self,
        principal: &Principal,
        access: &Access<'_>,
        fetch: &mut dyn FnMut(&DocPath) -> Result<Option<StoredDoc>, Error>,
    ) -> Result<Decision, Error> {
        drive_sync(|lookups| self.decide_step(principal, access, lookups), fetch)
    }

    /// Decides joining or broadcasting on a realtime channel. One evaluation round.
    pub fn channel_step(
        &self,
        principal: &Principal,
        op: Op,
        channel: &str,
        time: i64,
        lookups: &mut Lookups,
    ) -> Step<Decision> {
        let target = format!("channel `{channel}`");
        first_allowing(self.matching_channel(channel), op, &target, lookups, |rule, captures, lookups| {
            let vars = Vars::new(&principal.auth, op, None, None, time, &set::NO_DATA, captures);
            eval::step(rule.expr(), &vars, lookups)
        })
    }

    /// [`RuleSet::channel_step`] to the end, reading documents with `fetch`.
    pub fn decide_channel_sync(
        &self,
        principal: &Principal,
        op: Op,
        channel: &str,
        time: i64,
        fetch: &mut dyn FnMut(&DocPath) -> Result<Option<StoredDoc>, Error>,
    ) -> Result<Decision, Error> {
        drive_sync(|lookups| self.channel_step(principal, op, channel, time, lookups), fetch)
    }

    /// How a query over `target` may run for `principal`. One evaluation round.
    pub fn plan_step(
        &self,
        principal: &Principal,
        target: &Target,
        time: i64,
        lookups: &mut Lookups,
    ) -> Step<QueryPlan> {
        let Target::Collection(collection) = target else {
            let group = match target {
                Target::Group(group) => group.as_str(),
                Target::Collection(_) => unreachable!(),
            };
            let possible =
                self.docs.iter().any(|pattern| pattern.rule(Op::List).is_some() && could_hold_group(pattern, group));
            return Step::Done(if possible { QueryPlan::PerDocument } else { QueryPlan::Denied });
        };
        let segments: Vec<&str> = collection.as_str().split('/').collect();
        let mut conditions = Vec::new();
        let mut per_document = false;
        for pattern in &self.docs {
            let Some(rule) = pattern.rule(Op::List) else {
                continue;
            };
            let Some(shape) = collection_match(pattern, &segments) else {
                continue;
            };
            let vars = Vars::new(&principal.auth, Op::List, None, None, time, &set::NO_DATA, &shape.fixed);
            let per_doc: Vec<&str> =
                std::iter::once("resource").chain(shape.per_doc.iter().map(String::as_str)).collect();
            let (folded, wanted) =
                eval::resolve_with(&vars, lookups, |scope| pushdown::fold(rule.expr(), scope, &per_doc));
            if !wanted.is_empty() {
                return Step::Fetch(wanted);
            }
            let condition = match folded {
                Err(pushdown::PerDocument) => {
                    per_document = true;
                    continue;
                }
                Ok(pushdown::Folded::Const(false)) => continue,
                Ok(pushdown::Folded::Const(true)) => None,
                Ok(pushdown::Folded::Where(condition)) => Some(condition),
            };
            let id_filter = shape.id.map(|id| {
                Condition::Filter(store::query::FieldFilter {
                    field: store::query::Field::Id,
                    op: hearth_types::Op::Eq,
                    value: serde_json::Value::String(id),
                })
            });
            match (condition, id_filter) {
                (None, None) => return Step::Done(QueryPlan::Restricted(None)),
                (Some(condition), None) | (None, Some(condition)) => conditions.push(condition),
                (Some(condition), Some(id)) => conditions.push(Condition::All(vec![id, condition])),
            }
        }
        Step::Done(if per_document {
            QueryPlan::PerDocument
        } else if conditions.is_empty() {
            QueryPlan::Denied
        } else if conditions.len() == 1 {
            QueryPlan::Restricted(conditions.pop())
        } else {
            QueryPlan::Restricted(Some(Condition::Any(conditions)))
        })
    }
}

/// Fetch rounds before a decision gives up: every round reads a new document, and each
/// pattern's evaluation reads at most `MAX_LOOKUPS`.
const MAX_ROUNDS: usize = 32;

/// Evaluates `op`'s rule in each matching pattern until one allows (patterns are OR-ed);
/// denies with every pattern's reason otherwise.
fn first_allowing(
    matching: Vec<(&set::Pattern, set::Captures)>,
    op: Op,
    target: &str,
    lookups: &mut Lookups,
    mut evaluate: impl FnMut(&set::Rule, &set::Captures, &mut Lookups) -> Step<Result<bool, String>>,
) -> Step<Decision> {
    let mut reasons = Vec::new();
    for (pattern, captures) in matching {
        let Some(rule) = pattern.rule(op) else {
            continue;
        };
        match evaluate(rule, &captures, lookups) {
            Step::Fetch(paths) => return Step::Fetch(paths),
            Step::Done(Ok(true)) => return Step::Done(Decision::Allow),
            Step::Done(Ok(false)) => reasons.push(format!("[\"{}\"] {}: false", pattern.text, op.method())),
            Step::Done(Err(error)) => reasons.push(format!("[\"{}\"] {}: {error}", pattern.text, op.method())),
        }
    }
    Step::Done(Decision::Deny(if reasons.is_empty() {
        format!("no rule for `{}` matches {target}", op.method())
    } else {
        reasons.join("; ")
    }))
}

/// Runs evaluation rounds to a decision, reading the documents they ask for with `fetch`.
fn drive_sync(
    mut step: impl FnMut(&mut Lookups) -> Step<Decision>,
    fetch: &mut dyn FnMut(&DocPath) -> Result<Option<StoredDoc>, Error>,
) -> Result<Decision, Error> {
    let mut lookups = Lookups::default();
    for _ in 0..MAX_ROUNDS {
        match step(&mut lookups) {
            Step::Done(decision) => return Ok(decision),
            Step::Fetch(paths) => {
                for path in paths {
                    let doc = fetch(&path)?;
                    lookups.supply(&path, doc.as_ref());
                }
            }
        }
    }
    Ok(Decision::Deny("too many document lookups".into()))
}

/// How a pattern meets the documents of one collection.
struct CollectionShape {
    /// Captures the collection path fixes.
    fixed: set::Captures,
    /// Captures that differ per document.
    per_doc: Vec<String>,
    /// The one document id the pattern names, if it names one.
    id: Option<String>,
}

fn collection_match(pattern: &set::Pattern, collection: &[&str]) -> Option<CollectionShape> {
    use set::Segment;
    let mut shape = CollectionShape { fixed: Vec::new(), per_doc: Vec::new(), id: None };
    let n = collection.len();
    for (index, segment) in pattern.segments.iter().enumerate() {
        match (segment, index.cmp(&n)) {
            (Segment::Rest(name), std::cmp::Ordering::Greater) => {
                shape.fixed.push((name.clone(), String::new()));
                return Some(shape);
            }
            (Segment::Rest(name), _) => {
                shape.per_doc.push(name.clone());
                return Some(shape);
            }
            (_, std::cmp::Ordering::Greater) => return None,
            (Segment::Literal(literal), std::cmp::Ordering::Less) => {
                if collection[index] != literal {
                    return None;
                }
            }
            (Segment::Capture(name), std::cmp::Ordering::Less) => {
                shape.fixed.push((name.clone(), collection[index].to_owned()))
            }
            (Segment::Literal(id), std::cmp::Ordering::Equal) => shape.id = Some(id.clone()),
            (Segment::Capture(name), std::cmp::Ordering::Equal) => shape.per_doc.push(name.clone()),
        }
    }
    (pattern.segments.len() == n + 1).then_some(shape)
}

/// Whether a pattern could match some document of a collection named `group`.
fn could_hold_group(pattern: &set::Pattern, group: &str) -> bool {
    use set::Segment;
    if pattern.segments.iter().any(|segment| matches!(segment, Segment::Rest(_))) {
        return true;
    }
    let len = pattern.segments.len();
    len >= 2
        && match &pattern.segments[len - 2] {
            Segment::Literal(id) => id == group,
            _ => true,
        }
}

/// The rules in force, reloadable while the server runs. Cheap to clone.
#[derive(Clone)]
pub struct Rules(Arc<Inner>);

struct Inner {
    current: RwLock<Arc<RuleSet>>,
    file: PathBuf,
    /// The file's modification time when last loaded, to notice edits.
    loaded: Mutex<Option<SystemTime>>,
    /// One replacement at a time, so the file and the rules in force agree.
    replacing: tokio::sync::Mutex<()>,
    /// Counts the rule sets put in force, for those who must re-decide (live queries).
    installed: tokio::sync::watch::Sender<u64>,
    store: Store,
}

impl Rules {
    /// Loads `file` (no file: no rules, everything denied). A file that does not compile
    /// stops the start.
    pub fn open(file: PathBuf, store: Store) -> Result<Rules, RulesError> {
        let (set, modified) = match std::fs::read_to_string(&file) {
            Ok(source) => (RuleSet::parse(&source)?, modified(&file)),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => (RuleSet::default(), None),
            Err(error) => return Err(io_error(&file, &error)),
        };
        Ok(Rules(Arc::new(Inner {
            current: RwLock::new(Arc::new(set)),
            file,
            loaded: Mutex::new(modified),
            replacing: tokio::sync::Mutex::new(()),
            installed: tokio::sync::watch::Sender::new(0),
            store,
        })))
    }

    /// The rules in force.
    pub fn current(&self) -> Arc<RuleSet> {
        self.0.current.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    fn install(&self, set: RuleSet) {
        *self.0.current.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(set);
        self.0.installed.send_modify(|count| *count += 1);
    }

    /// Changes each time new rules are put in force.
    pub fn installed(&self) -> tokio::sync::watch::Receiver<u64> {
        self.0.installed.subscribe()
    }

    /// Compiles `source`, writes it to the rules file and puts it in force; a source
    /// that does not compile changes nothing.
    pub async fn replace(&self, source: &str) -> Result<(), RulesError> {
        let set = RuleSet::parse(source)?;
        let _one_at_a_time = self.0.replacing.lock().await;
        let file = self.0.file.clone();
        let text = source.to_owned();
        let written = tokio::task::spawn_blocking(move || {
            // Write beside, then rename: a crash leaves the old file or the new, never half.
            let temporary = file.with_extension("toml.tmp");
            std::fs::write(&temporary, text)?;
            std::fs::rename(&temporary, &file)?;
            Ok::<_, std::io::Error>(modified(&file))
        })
        .await
        .map_err(|error| RulesError { line: None, pattern: None, key: None, reason: error.to_string() })?
        .map_err(|error| io_error(&self.0.file, &error))?;
        *self.0.loaded.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = written;
        self.install(set);
        tracing::info!(file = %self.0.file.display(), "rules replaced");
        Ok(())
    }

    /// Reloads the file if it changed since it was last loaded. A file that does not
    /// compile is logged and the rules in force stay.
    pub fn reload_if_changed(&self) {
        let now = modified(&self.0.file);
        let mut loaded = self.0.loaded.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if now == *loaded {
            return;
        }
        *loaded = now;
        let source = match std::fs::read_to_string(&self.0.file) {
            Ok(source) => source,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                tracing::warn!(file = %self.0.file.display(), "rules file removed; the rules in force stay");
                return;
            }
            Err(error) => {
                tracing::error!(file = %self.0.file.display(), %error, "cannot read the rules file");
                return;
            }
        };
        match RuleSet::parse(&source) {
            Ok(set) => {
                self.install(set);
                tracing::info!(file = %self.0.file.display(), "rules reloaded");
            }
            Err(error) => {
                tracing::error!(file = %self.0.file.display(), %error, "rules file refused; the rules in force stay")
            }
        }
    }

    /// Watches the rules file, reloading it when it changes (a task to abort when done).
    pub async fn watch(self, interval: Duration) {
        let mut ticks = tokio::time::interval(interval);
        loop {
            ticks.tick().await;
            let rules = self.clone();
            let _ = tokio::task::spawn_blocking(move || rules.reload_if_changed()).await;
        }
    }

    /// The file the rules live in.
    pub fn file(&self) -> &Path {
        &self.0.file
    }

    /// Decides an access outside the write path (writes are decided by [`Rules::guard`]):
    /// reads of documents, and (through this) realtime deliveries. `Err(PermissionDenied)`
    /// when denied.
    pub async fn check(&self, principal: &Principal, access: &Access<'_>) -> Result<(), Error> {
        self.check_reading(principal, access, &mut Lookups::default()).await
    }

    /// [`Rules::check`], leaving in `lookups` the documents the rules read (what the
    /// decision depends on besides the document itself).
    pub async fn check_reading(
        &self,
        principal: &Principal,
        access: &Access<'_>,
        lookups: &mut Lookups,
    ) -> Result<(), Error> {
        let set = self.current();
        let decision = self.decide(&set, principal, access, lookups).await?;
        denied_if(decision, access.op, access.path)
    }

    async fn decide(
        &self,
        set: &RuleSet,
        principal: &Principal,
        access: &Access<'_>,
        lookups: &mut Lookups,
    ) -> Result<Decision, Error> {
        let step = |lookups: &mut Lookups| set.decide_step(principal, access, lookups);
        self.drive(step, lookups, Decision::Deny("too many document lookups".into())).await
    }

    /// Runs evaluation rounds to an answer, reading documents from the store; `give_up`
    /// after too many rounds.
    async fn drive<T>(
        &self,
        mut step: impl FnMut(&mut Lookups) -> Step<T>,
        lookups: &mut Lookups,
        give_up: T,
    ) -> Result<T, Error> {
        for _ in 0..MAX_ROUNDS {
            match step(lookups) {
                Step::Done(answer) => return Ok(answer),
                Step::Fetch(paths) => self.fetch(paths, lookups).await?,
            }
        }
        Ok(give_up)
    }

    async fn fetch(&self, paths: Vec<DocPath>, lookups: &mut Lookups) -> Result<(), Error> {
        for path in paths {
            let doc = self.0.store.get(path.clone()).await?;
            lookups.supply(&path, doc.as_ref());
        }
        Ok(())
    }

    /// Decides joining (`Op::Join`) or broadcasting on a realtime channel.
    pub async fn check_channel(&self, principal: &Principal, op: Op, channel: &str) -> Result<(), Error> {
        let set = self.current();
        let time = now_micros();
        let step = |lookups: &mut Lookups| set.channel_step(principal, op, channel, time, lookups);
        let give_up = Decision::Deny("too many document lookups".into());
        match self.drive(step, &mut Lookups::default(), give_up).await? {
            Decision::Allow => Ok(()),
            Decision::Deny(reason) => {
                tracing::debug!(op = op.method(), channel, %reason, "rules denied");
                Err(Error::PermissionDenied(format!("rules deny `{}` on channel `{channel}`", op.method())))
            }
        }
    }

    /// The guard that decides `principal`'s writes inside their transaction.
    pub fn guard(&self, principal: &Principal) -> Arc<dyn WriteGuard> {
        Arc::new(Guard { set: self.current(), principal: principal.clone(), time: now_micros(), rules: self.clone() })
    }

    /// How `principal` may query `target`.
    pub async fn plan(&self, principal: &Principal, target: &Target) -> Result<QueryPlan, Error> {
        self.plan_reading(principal, target, &mut Lookups::default()).await
    }

    /// [`Rules::plan`], leaving in `lookups` the documents the rules read.
    pub async fn plan_reading(
        &self,
        principal: &Principal,
        target: &Target,
        lookups: &mut Lookups,
    ) -> Result<QueryPlan, Error> {
        let set = self.current();
        let time = now_micros();
        let step = |lookups: &mut Lookups| set.plan_step(principal, target, time, lookups);
        self.drive(step, lookups, QueryPlan::Denied).await
    }

    /// Runs a query as `principal`: only readable documents, pages full unless the
    /// collection or the scan budget ran out.
    pub async fn query(&self, principal: &Principal, spec: QuerySpec) -> Result<Filtered, Error> {
        self.query_reading(principal, spec, &mut Lookups::default()).await
    }

    /// [`Rules::query`], leaving in `lookups` the documents the rules read.
    pub async fn query_reading(
        &self,
        principal: &Principal,
        mut spec: QuerySpec,
        lookups: &mut Lookups,
    ) -> Result<Filtered, Error> {
        let store = &self.0.store;
        match self.plan_reading(principal, &spec.target, lookups).await? {
            QueryPlan::Denied => Err(denied_list(&spec.target)),
            QueryPlan::Restricted(condition) => {
                spec.restriction = condition;
                let page = store.query(spec.clone()).await?;
                let resume = match (page.more, page.docs.last()) {
                    (true, Some(last)) => Some(spec.position_of(&last.parse()?)),
                    _ => None,
                };
                Ok(Filtered { docs: page.docs, resume })
            }
            QueryPlan::PerDocument => self.scan(principal, spec, lookups).await,
        }
    }

    async fn scan(&self, principal: &Principal, spec: QuerySpec, lookups: &mut Lookups) -> Result<Filtered, Error> {
        let set = self.current();
        let wanted = spec.limit;
        let mut docs = Vec::with_capacity(wanted);
        let mut chunk = spec.clone();
        let mut scanned = 0;
        loop {
            chunk.limit = (wanted - docs.len()).clamp(20, 200).min(SCAN_BUDGET - scanned).max(1);
            let page = self.0.store.query(chunk.clone()).await?;
            let count = page.docs.len();
            for (index, raw) in page.docs.into_iter().enumerate() {
                scanned += 1;
                let doc = raw.parse()?;
                let access = Access::read(Op::List, &doc.path, Some(&doc));
                let decision = self.decide(&set, principal, &access, lookups).await?;
                if decision == Decision::Allow {
                    docs.push(raw);
                }
                let more_here = index + 1 < count || page.more;
                if docs.len() == wanted {
                    return Ok(Filtered { docs, resume: more_here.then(|| spec.position_of(&doc)) });
                }
                chunk.after = Some(spec.position_of(&doc));
            }
            if !page.more {
                return Ok(Filtered { docs, resume: None });
            }
            if scanned >= SCAN_BUDGET {
                return Ok(Filtered { docs, resume: chunk.after });
            }
        }
    }

    /// The condition `principal`'s aggregates run with; rules that need a per-document
    /// check cannot be aggregated over.
    pub async fn aggregate_restriction(
        &self,
        principal: &Principal,
        target: &Target,
    ) -> Result<Option<Condition>, Error> {
        match self.plan(principal, target).await? {
            QueryPlan::Denied => Err(denied_list(target)),
            QueryPlan::Restricted(condition) => Ok(condition),
            QueryPlan::PerDocument => Err(Error::PermissionDenied(
                "aggregates need `list` rules made of comparisons between `resource.data` fields and `auth` or constants, which the database can apply".into(),
            )),
        }
    }
}

fn denied_list(target: &Target) -> Error {
    let what = match target {
        Target::Collection(collection) => format!("`{collection}`"),
        Target::Group(group) => format!("collection group `{group}`"),
    };
    Error::PermissionDenied(format!("rules allow no `list` of {what} to this caller"))
}

fn denied_if(decision: Decision, op: Op, path: &DocPath) -> Result<(), Error> {
    match decision {
        Decision::Allow => Ok(()),
        Decision::Deny(reason) => {
            tracing::debug!(op = op.method(), %path, %reason, "rules denied");
            Err(Error::PermissionDenied(format!("rules deny `{}` on `{path}`", op.method())))
        }
    }
}

/// Decides writes inside the writer's transaction.
struct Guard {
    set: Arc<RuleSet>,
    principal: Principal,
    time: i64,
    /// Reads documents for decisions ahead of the transaction.
    rules: Rules,
}

impl Guard {
    fn access<'a>(&self, path: &'a DocPath, before: Option<&'a StoredDoc>, after: Option<&'a StoredDoc>) -> Access<'a> {
        let op = match (before, after) {
            (_, None) => Op::Delete,
            (None, Some(_)) => Op::Create,
            (Some(_), Some(_)) => Op::Update,
        };
        Access { op, path, before, after, time: self.time }
    }
}

impl WriteGuard for Guard {
    fn check(
        &self,
        path: &DocPath,
        before: Option<&StoredDoc>,
        after: Option<&StoredDoc>,
        lookup: &mut dyn FnMut(&DocPath) -> Result<Option<StoredDoc>, Error>,
    ) -> Result<(), Error> {
        let access = self.access(path, before, after);
        let decision = self.set.decide_sync(&self.principal, &access, lookup)?;
        denied_if(decision, access.op, path)
    }

    fn check_ahead<'a>(
        &'a self,
        path: &'a DocPath,
        before: Option<&'a StoredDoc>,
        after: Option<&'a StoredDoc>,
    ) -> futures::future::BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let access = self.access(path, before, after);
            let decision = self.rules.decide(&self.set, &self.principal, &access, &mut Lookups::default()).await?;
            denied_if(decision, access.op, path)
        })
    }
}

fn modified(file: &Path) -> Option<SystemTime> {
    std::fs::metadata(file).and_then(|metadata| metadata.modified()).ok()
}

fn io_error(file: &Path, error: &std::io::Error) -> RulesError {
    RulesError { line: None, pattern: None, key: None, reason: format!("{}: {error}", file.display()) }
}

#[cfg(test)]
mod tests;
