//! Embedded functions: ES modules from `functions/` in the project dir, run by QuickJS
//! (`rquickjs`) on a pool of worker threads.
//!
//! Each worker owns one runtime with the current bundle of modules loaded, warm between
//! invocations. An invocation has a deadline (the interrupt handler stops the engine
//! there) and the runtime a memory limit; a function that throws, loops or allocates
//! without end fails alone, and a runtime that was interrupted or ran out of memory is
//! replaced before the next invocation. Host calls (`ctx.db`) go through the one write
//! path of the store, with admin rights.
//!
//! Deploying (`PUT /v1/admin/functions/{file}`, or a change of the files) loads the new
//! bundle in a probe runtime first: a module that does not parse, fails to link or
//! exports something that is not a Hearth function is refused with its line and
//! message, and the bundle in force keeps running.

mod hooks;
mod host;
mod native;
mod schedules;
mod stats;
mod triggers;
mod users;

pub use native::{Native, NativeContext};
pub use stats::Summary;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, mpsc};
use std::time::{Duration, Instant};

use hearth_types::ErrorCode;
use rquickjs::loader::{BuiltinLoader, BuiltinResolver};
use rquickjs::{CatchResultExt, CaughtError, Context, Ctx, Function, Module, Object, Promise, Runtime, Value};
use serde::Serialize;
use tokio::sync::oneshot;

use crate::config::FunctionsConfig;
use crate::rules::set::DocPattern;
use crate::store::Store;

/// The source of the `"hearth"` module.
const HEARTH_MODULE: &str = include_str!("hearth.js");
/// Installs `console` and the host API in every runtime.
const PRELUDE: &str = include_str!("prelude.js");
/// Files larger than this are refused.
pub const MAX_FILE_BYTES: usize = 1024 * 1024;

/// Why an invocation failed, in the contract's terms.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionError {
    pub code: ErrorCode,
    pub message: String,
}

impl FunctionError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> FunctionError {
        FunctionError { code, message: message.into() }
    }
}

/// A module refused at deploy: which file, where and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoadError {
    pub file: String,
    pub line: Option<u32>,
    pub message: String,
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}: {}", self.file, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

/// The kinds of function a module can export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// `onCall`: `POST /v1/functions/{name}`.
    Call,
    /// `onDocumentWritten(pattern, handler)`: after each committed write to a matching
    /// document, from the change log.
    DocumentWritten,
    /// `beforeDocumentWrite(pattern, handler)`: inside the write path of client writes to
    /// a matching document, before the rules; rejects the write or replaces its data.
    BeforeDocumentWrite,
    /// `onUserCreated(handler)`: after each new user, from a durable log like triggers.
    UserCreated,
    /// `schedule(cron, handler)`: at each tick of a cron expression (UTC).
    Schedule,
}

impl Kind {
    /// The kinds that follow a log from a durable cursor.
    fn has_cursor(self) -> bool {
        matches!(self, Kind::DocumentWritten | Kind::UserCreated)
    }
}

/// One exported function.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FunctionInfo {
    pub name: String,
    pub kind: Kind,
    pub file: String,
    /// The documents a trigger reacts to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    /// When a scheduled function runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
}

/// A function in force, with what an admin sees of its use.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FunctionStatus {
    #[serde(flatten)]
    pub info: FunctionInfo,
    #[serde(flatten)]
    pub summary: Summary,
}

/// The modules in force, and what they export.
struct Bundle {
    generation: u64,
    /// (file name, source), sorted by name.
    files: Vec<(String, String)>,
    functions: Vec<FunctionInfo>,
    /// The before-write hooks, Rust ones first, each with its parsed pattern.
    hooks: Vec<(String, DocPattern)>,
}

impl Bundle {
    fn new(generation: u64, files: Vec<(String, String)>, functions: Vec<FunctionInfo>, natives: &[Native]) -> Bundle {
        let hooks = natives
            .iter()
            .map(|native| &native.info)
            .chain(&functions)
            .filter(|function| function.kind == Kind::BeforeDocumentWrite)
            .filter_map(|function| Some((function.name.clone(), DocPattern::parse(function.pattern.as_deref()?).ok()?)))
            .collect();
        Bundle { generation, files, functions, hooks }
    }
}

/// Who called, as functions see it in `ctx.auth`: JSON, or `None` for no caller (and the
/// service key).
pub type Auth = Option<serde_json::Value>;

struct Job {
    name: String,
    /// The first argument: a callable's data, a trigger's event.
    argument: serde_json::Value,
    auth: Auth,
    timeout: Duration,
    /// How many function runs in a row led here; its writes are one deeper.
    depth: u8,
    reply: oneshot::Sender<Outcome>,
}

/// What one invocation gave.
type Outcome = Result<serde_json::Value, FunctionError>;

struct Shared {
    dir: PathBuf,
    store: Store,
    auth: crate::auth::Auth,
    /// Functions in Rust, in force whatever the bundle.
    natives: Vec<Native>,
    stats: stats::Stats,
    hook_locks: hooks::PathLocks,
    bundle: RwLock<Arc<Bundle>>,
    limits: FunctionsConfig,
    generations: AtomicU64,
    /// Serializes deploys, so two never interleave their check and swap.
    deploying: tokio::sync::Mutex<()>,
    /// The generation in force, for the trigger supervisor.
    installed: tokio::sync::watch::Sender<u64>,
}

/// The functions service. Cheap to clone.
#[derive(Clone)]
pub struct Functions {
    shared: Arc<Shared>,
    jobs: mpsc::Sender<Job>,
}

impl Functions {
    /// Loads `functions/` of `dir` (refusing to start on a bad module) and starts the
    /// workers, which reach the store through the current tokio runtime. `natives` are
    /// the functions in Rust, in force whatever is deployed.
    pub async fn start(
        dir: &Path,
        store: Store,
        auth: crate::auth::Auth,
        limits: FunctionsConfig,
        natives: Vec<Native>,
    ) -> Result<Functions, LoadError> {
        let dir = dir.join("functions");
        let files = read_dir(&dir)?;
        let functions = probe(&files)?;
        check_names(&natives, &functions)?;
        let bundle = Bundle::new(1, files, functions, &natives);
        let shared = Arc::new(Shared {
            dir,
            store: store.clone(),
            auth,
            natives,
            stats: stats::Stats::default(),
            hook_locks: hooks::PathLocks::default(),
            bundle: RwLock::new(Arc::new(bundle)),
            limits: limits.clone(),
            generations: AtomicU64::new(1),
            deploying: tokio::sync::Mutex::new(()),
            installed: tokio::sync::watch::Sender::new(1),
        });
        let (jobs, receiver) = mpsc::channel::<Job>();
        let receiver = Arc::new(Mutex::new(receiver));
        let handle = tokio::runtime::Handle::current();
        let fetch =
            host::Fetch::new(&limits).map_err(|message| LoadError { file: String::new(), line: None, message })?;
        let workers = if limits.workers == 0 {
            std::thread::available_parallelism().map_or(2, usize::from)
        } else {
            limits.workers
        };
        for index in 0..workers {
            let host = host::Host { store: store.clone(), handle: handle.clone(), fetch: fetch.clone() };
            let (receiver, shared) = (receiver.clone(), shared.clone());
            std::thread::Builder::new()
                .name(format!("hearth-js-{index}"))
                .spawn(move || worker(&receiver, &shared, &host))
                .map_err(|error| LoadError { file: String::new(), line: None, message: error.to_string() })?;
        }
        let functions = Functions { shared, jobs };
        let deployed = functions.list();
        functions.mark_trigger_starts(&deployed).await?;
        functions.forget_undeployed(&deployed).await;
        tokio::spawn(triggers::supervise(functions.clone(), store));
        Ok(functions)
    }

    /// The functions in force: those in Rust, then the deployed ones.
    pub fn list(&self) -> Vec<FunctionInfo> {
        let natives = self.shared.natives.iter().map(|native| native.info.clone());
        natives.chain(self.current().functions.iter().cloned()).collect()
    }

    /// The functions in force with their invocations, errors and p50/p99 durations.
    pub fn status(&self) -> Vec<FunctionStatus> {
        let list = self.list().into_iter();
        list.map(|info| FunctionStatus { summary: self.shared.stats.summary(&info.name), info }).collect()
    }

    fn current(&self) -> Arc<Bundle> {
        self.shared.bundle.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// Calls the callable `name` with `data`; `not-found` if there is none.
    pub async fn call(
        &self,
        name: &str,
        data: serde_json::Value,
        auth: Auth,
    ) -> Result<serde_json::Value, FunctionError> {
        let bundle = self.current();
        let natives = self.shared.natives.iter().map(|native| &native.info);
        if !natives.chain(&bundle.functions).any(|function| function.name == name && function.kind == Kind::Call) {
            return Err(FunctionError::new(ErrorCode::NotFound, format!("no callable function `{name}`")));
        }
        self.invoke(name, data, auth, self.time_limit(), 0).await
    }

    /// The time limit of an invocation.
    fn time_limit(&self) -> Duration {
        Duration::from_millis(self.shared.limits.timeout_ms)
    }

    /// Runs the function `name`: in Rust, or of the bundle in force on a worker. `depth`:
    /// how many function runs in a row led to this one (see `ChangeBus::cause`).
    async fn invoke(
        &self,
        name: &str,
        argument: serde_json::Value,
        auth: Auth,
        timeout: Duration,
        depth: u8,
    ) -> Outcome {
        let started = Instant::now();
        let failed = |code, message: &str| Err(FunctionError::new(code, message));
        let outcome = match self.shared.natives.iter().find(|native| native.info.name == name) {
            Some(native) => {
                let context = NativeContext { store: self.shared.store.clone(), auth, depth };
                match tokio::time::timeout(timeout, native.run(argument, context)).await {
                    Ok(outcome) => outcome,
                    Err(_) => failed(ErrorCode::DeadlineExceeded, "the function ran over its time limit"),
                }
            }
            None => {
                let (reply, answer) = oneshot::channel();
                let job = Job { name: name.to_owned(), argument, auth, timeout, depth, reply };
                if self.jobs.send(job).is_err() {
                    return failed(ErrorCode::Unavailable, "functions are stopped");
                }
                answer.await.unwrap_or_else(|_| failed(ErrorCode::Internal, "internal error"))
            }
        };
        self.shared.stats.record(name, started.elapsed(), outcome.is_err());
        let status = if outcome.is_ok() { "ok" } else { "error" };
        metrics::counter!("hearth_function_invocations_total", "name" => name.to_owned(), "status" => status)
            .increment(1);
        metrics::histogram!("hearth_function_duration_seconds", "name" => name.to_owned())
            .record(started.elapsed().as_secs_f64());
        outcome
    }

    /// Checks `source` as `file` together with the other modules and, if the bundle
    /// loads, writes it to `functions/` and puts it in force. Gives the functions now in
    /// force.
    pub async fn deploy(&self, file: &str, source: String) -> Result<Vec<FunctionInfo>, LoadError> {
        if !is_module_name(file) {
            return Err(LoadError {
                file: file.to_owned(),
                line: None,
                message: "a function file is named like `name.js` (letters, digits, `_` and `-`)".into(),
            });
        }
        if source.len() > MAX_FILE_BYTES {
            return Err(LoadError {
                file: file.to_owned(),
                line: None,
                message: "a function file is at most 1 MiB".into(),
            });
        }
        let _deploying = self.shared.deploying.lock().await;
        let mut files: Vec<(String, String)> =
            self.current().files.iter().filter(|(name, _)| name != file).cloned().collect();
        files.push((file.to_owned(), source.clone()));
        files.sort();
        let checked = files.clone();
        let functions = tokio::task::spawn_blocking(move || probe(&checked)).await.map_err(|error| LoadError {
            file: file.to_owned(),
            line: None,
            message: error.to_string(),
        })??;
        check_names(&self.shared.natives, &functions)?;
        self.mark_trigger_starts(&functions).await?;
        let dir = self.shared.dir.clone();
        let name = file.to_owned();
        tokio::task::spawn_blocking(move || write_file(&dir, &name, &source))
            .await
            .map_err(|error| error.to_string())
            .and_then(|written| written.map_err(|error| error.to_string()))
            .map_err(|message| LoadError { file: file.to_owned(), line: None, message })?;
        let functions = self.install(files, functions);
        self.forget_undeployed(&functions).await;
        Ok(functions)
    }

    /// Reloads `functions/` if its files differ from the bundle in force; a bad bundle is
    /// logged and the one in force stays.
    pub async fn reload(&self) {
        let _deploying = self.shared.deploying.lock().await;
        let dir = self.shared.dir.clone();
        let Ok(Ok(files)) = tokio::task::spawn_blocking(move || read_dir(&dir)).await else { return };
        if files == self.current().files {
            return;
        }
        let checked = files.clone();
        let probed = tokio::task::spawn_blocking(move || probe(&checked)).await;
        let checked = probed.map(|probed| {
            probed.and_then(|functions| check_names(&self.shared.natives, &functions).map(|()| functions))
        });
        match checked {
            Ok(Ok(functions)) => {
                if let Err(error) = self.mark_trigger_starts(&functions).await {
                    tracing::error!(%error, "functions not reloaded");
                    return;
                }
                let count = functions.len();
                let functions = self.install(files, functions);
                self.forget_undeployed(&functions).await;
                tracing::info!(functions = count, "functions reloaded");
            }
            Ok(Err(error)) => tracing::error!(%error, "functions not reloaded; the previous version keeps running"),
            Err(error) => tracing::error!(%error, "functions not reloaded"),
        }
    }

    /// The `functions/` dir the bundle is read from.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Polls `functions/` for changes until the server stops.
    pub async fn watch(self, every: Duration) {
        let mut ticker = tokio::time::interval(every);
        loop {
            ticker.tick().await;
            self.reload().await;
        }
    }

    /// Gives each new trigger its cursor at the end of the log before it is in force, so
    /// every write answered after a deploy (or a start) reaches it. Called with the
    /// deploy lock held, like [`Functions::forget_undeployed`].
    async fn mark_trigger_starts(&self, functions: &[FunctionInfo]) -> Result<(), LoadError> {
        let natives = self.shared.natives.iter().map(|native| &native.info);
        for function in natives.chain(functions).filter(|function| function.kind.has_cursor()) {
            let started = match function.kind {
                Kind::UserCreated => users::start_at(&self.shared.auth, &function.name).await,
                _ => triggers::start_at(&self.shared.store, &function.name).await,
            };
            started.map_err(|error| LoadError {
                file: function.file.clone(),
                line: None,
                message: format!("cannot start trigger `{}`: {error}", function.name),
            })?;
        }
        Ok(())
    }

    /// Deletes the cursors of triggers no longer deployed: they would hold back pruning
    /// forever, and deployed again a trigger starts afresh at the end of the log.
    async fn forget_undeployed(&self, functions: &[FunctionInfo]) {
        let natives = self.shared.natives.iter().map(|native| &native.info);
        let kept = |kind: Kind| {
            natives.clone().chain(functions).filter(move |function| function.kind == kind).map(|f| f.name.clone())
        };
        let (logged, users) =
            (kept(Kind::DocumentWritten).chain(kept(Kind::Schedule)).collect(), kept(Kind::UserCreated).collect());
        if let Err(error) = self.shared.store.backend().retain_trigger_cursors(logged).await {
            tracing::error!(%error, "cannot forget the cursors of undeployed triggers");
        }
        if let Err(error) = self.shared.auth.repo().retain_user_event_cursors(users).await {
            tracing::error!(%error, "cannot forget the cursors of undeployed user triggers");
        }
    }

    fn install(&self, files: Vec<(String, String)>, functions: Vec<FunctionInfo>) -> Vec<FunctionInfo> {
        let generation = self.shared.generations.fetch_add(1, Ordering::AcqRel) + 1;
        let bundle = Arc::new(Bundle::new(generation, files, functions, &self.shared.natives));
        *self.shared.bundle.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = bundle;
        self.shared.installed.send_replace(generation);
        self.list()
    }
}

/// Refuses a bundle that exports a name a Rust function has.
fn check_names(natives: &[Native], functions: &[FunctionInfo]) -> Result<(), LoadError> {
    match functions.iter().find(|function| natives.iter().any(|native| native.info.name == function.name)) {
        Some(function) => Err(LoadError {
            file: function.file.clone(),
            line: None,
            message: format!("`{}` is the name of a function the server defines in Rust", function.name),
        }),
        None => Ok(()),
    }
}

/// `name.js` or `name.mjs`, with a plain name.
pub(crate) fn is_module_name(file: &str) -> bool {
    let stem = file.strip_suffix(".js").or_else(|| file.strip_suffix(".mjs"));
    stem.is_some_and(|stem| {
        !stem.is_empty() && stem.len() <= 64 && stem.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    })
}

/// The module files of `dir` (none when it does not exist), sorted by name.
pub(crate) fn read_dir(dir: &Path) -> Result<Vec<(String, String)>, LoadError> {
    let error = |file: &str, message: String| LoadError { file: file.to_owned(), line: None, message };
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(missing) if missing.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(other) => return Err(error(&dir.display().to_string(), other.to_string())),
    };
    let mut files = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !is_module_name(&name) {
            continue;
        }
        let source = std::fs::read_to_string(entry.path()).map_err(|e| error(&name, e.to_string()))?;
        files.push((name, source));
    }
    files.sort();
    Ok(files)
}

pub(crate) fn write_file(dir: &Path, file: &str, source: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let temporary = dir.join(format!(".{file}.new"));
    std::fs::write(&temporary, source)?;
    std::fs::rename(&temporary, dir.join(file))
}

/// A runtime with a bundle loaded, and what stops it at a deadline.
struct Engine {
    generation: u64,
    runtime: Runtime,
    context: Context,
    /// Microseconds after `epoch` when the running invocation must stop; 0: none.
    deadline: Arc<AtomicU64>,
    interrupted: Arc<AtomicBool>,
    epoch: Instant,
}

impl Engine {
    fn new(
        bundle: &Bundle,
        limits: &FunctionsConfig,
        host: Option<&host::Host>,
    ) -> Result<(Engine, Vec<FunctionInfo>), LoadError> {
        let fault = |message: String| LoadError { file: String::new(), line: None, message };
        let runtime = Runtime::new().map_err(|e| fault(e.to_string()))?;
        runtime.set_memory_limit(limits.memory_mib * 1024 * 1024);
        runtime.set_max_stack_size(512 * 1024);
        let (deadline, interrupted, epoch) =
            (Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)), Instant::now());
        {
            let (deadline, interrupted) = (deadline.clone(), interrupted.clone());
            runtime.set_interrupt_handler(Some(Box::new(move || {
                let at = deadline.load(Ordering::Relaxed);
                let stop = at != 0 && epoch.elapsed().as_micros() as u64 >= at;
                if stop {
                    interrupted.store(true, Ordering::Relaxed);
                }
                stop
            })));
        }
        let mut resolver = BuiltinResolver::default().with_module("hearth");
        let mut loader = BuiltinLoader::default().with_module("hearth", HEARTH_MODULE);
        for (file, source) in &bundle.files {
            resolver.add_module(file.clone());
            loader.add_module(file.clone(), source.clone());
        }
        runtime.set_loader(resolver, loader);
        let context = Context::full(&runtime).map_err(|e| fault(e.to_string()))?;
        let engine = Engine { generation: bundle.generation, runtime, context, deadline, interrupted, epoch };
        // Loading is time-bounded too: a module that loops at the top level is refused.
        engine.arm(Duration::from_millis(limits.timeout_ms));
        let functions = engine.context.with(|ctx| load(&ctx, bundle, host, &limits.secrets))?;
        engine.disarm();
        if engine.interrupted.load(Ordering::Relaxed) {
            return Err(fault("loading the modules took longer than the time limit".into()));
        }
        Ok((engine, functions))
    }

    fn arm(&self, limit: Duration) {
        self.interrupted.store(false, Ordering::Relaxed);
        let at = (self.epoch.elapsed() + limit).as_micros() as u64;
        self.deadline.store(at.max(1), Ordering::Relaxed);
    }

    fn disarm(&self) {
        self.deadline.store(0, Ordering::Relaxed);
    }
}

/// Evaluates every module and registers its exports in `globalThis.__hearth_functions`.
fn load(
    ctx: &Ctx<'_>,
    bundle: &Bundle,
    host: Option<&host::Host>,
    secrets: &std::collections::BTreeMap<String, crate::config::Secret>,
) -> Result<Vec<FunctionInfo>, LoadError> {
    let fault = |file: &str, message: String| LoadError { file: file.to_owned(), line: None, message };
    host::install(ctx, host).map_err(|e| fault("", e.to_string()))?;
    host::install_secrets(ctx, secrets).map_err(|e| fault("", e.to_string()))?;
    ctx.eval::<(), _>(PRELUDE).catch(ctx).map_err(|e| fault("", e.to_string()))?;
    let registry = Object::new(ctx.clone()).map_err(|e| fault("", e.to_string()))?;
    let mut functions: Vec<FunctionInfo> = Vec::new();
    for (file, source) in &bundle.files {
        let declared =
            Module::declare(ctx.clone(), file.as_str(), source.as_str()).catch(ctx).map_err(|e| caught(file, e))?;
        let (module, promise) = declared.eval().catch(ctx).map_err(|e| caught(file, e))?;
        promise.finish::<()>().catch(ctx).map_err(|e| caught(file, e))?;
        let namespace = module.namespace().map_err(|e| fault(file, e.to_string()))?;
        for key in namespace.keys::<String>() {
            let name = key.map_err(|e| fault(file, e.to_string()))?;
            let export: Value = namespace.get(&name).map_err(|e| fault(file, e.to_string()))?;
            let object = export.as_object();
            let field = |key: &str| object.and_then(|object| object.get::<_, Option<String>>(key).ok().flatten());
            let kind = field("__hearth")
                .and_then(|kind| match kind.as_str() {
                    "call" => Some(Kind::Call),
                    "document-written" => Some(Kind::DocumentWritten),
                    "before-document-write" => Some(Kind::BeforeDocumentWrite),
                    "user-created" => Some(Kind::UserCreated),
                    "schedule" => Some(Kind::Schedule),
                    _ => None,
                })
                .ok_or_else(|| {
                    let helpers = "`onCall`, `onDocumentWritten`, `beforeDocumentWrite`, `onUserCreated` or `schedule` from \"hearth\"";
                    fault(file, format!("export `{name}` is not a Hearth function (made with {helpers})"))
                })?;
            let pattern = field("pattern");
            if let Some(pattern) = &pattern {
                crate::rules::set::DocPattern::parse(pattern)
                    .map_err(|reason| fault(file, format!("export `{name}`: pattern `{pattern}`: {reason}")))?;
            }
            let cron = field("cron");
            if let Some(cron) = &cron {
                schedules::parse(cron)
                    .map_err(|reason| fault(file, format!("export `{name}`: cron `{cron}`: {reason}")))?;
            }
            if let Some(other) = functions.iter().find(|function| function.name == name) {
                return Err(fault(file, format!("`{name}` is exported by `{}` too", other.file)));
            }
            registry.set(name.as_str(), export).map_err(|e| fault(file, e.to_string()))?;
            functions.push(FunctionInfo { name, kind, file: file.clone(), pattern, cron });
        }
    }
    ctx.globals().set("__hearth_functions", registry).map_err(|e| fault("", e.to_string()))?;
    Ok(functions)
}

/// A load error with the line the engine reports.
fn caught(file: &str, error: CaughtError<'_>) -> LoadError {
    let (message, line) = match &error {
        CaughtError::Exception(exception) => {
            let message = exception.message().unwrap_or_else(|| "exception".into());
            let line = exception.stack().and_then(|stack| line_in(&stack, file));
            (message, line)
        }
        other => (other.to_string(), None),
    };
    // QuickJS puts the position of a syntax error in the message: `file:LINE:COL`.
    let line = line.or_else(|| line_in(&message, file));
    LoadError { file: file.to_owned(), line, message }
}

/// The first `file:LINE` in `text`.
fn line_in(text: &str, file: &str) -> Option<u32> {
    let at = text.find(&format!("{file}:"))? + file.len() + 1;
    text[at..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// Checks a bundle in a runtime of its own: gives its functions or the first error.
fn probe(files: &[(String, String)]) -> Result<Vec<FunctionInfo>, LoadError> {
    let bundle = Bundle::new(0, files.to_vec(), Vec::new(), &[]);
    let limits = FunctionsConfig::default();
    Engine::new(&bundle, &limits, None).map(|(_, functions)| functions)
}

fn worker(receiver: &Mutex<mpsc::Receiver<Job>>, shared: &Shared, host: &host::Host) {
    let mut engine: Option<Engine> = None;
    loop {
        let job = {
            let receiver = receiver.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            match receiver.recv() {
                Ok(job) => job,
                Err(_) => return,
            }
        };
        let bundle = shared.bundle.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
        if engine.as_ref().is_none_or(|engine| engine.generation != bundle.generation) {
            match Engine::new(&bundle, &shared.limits, Some(host)) {
                Ok((fresh, _)) => engine = Some(fresh),
                Err(error) => {
                    tracing::error!(%error, "a function runtime could not load the modules");
                    let _ = job.reply.send(Err(FunctionError::new(ErrorCode::Internal, "internal error")));
                    engine = None;
                    continue;
                }
            }
        }
        let Some(current) = &engine else { continue };
        let invocation = uuid_like();
        let span = tracing::info_span!("function", name = %job.name, invocation = %invocation);
        let _entered = span.enter();
        host::set_depth(job.depth);
        let (outcome, broken) = invoke(current, &job);
        if let Err(error) = &outcome
            && error.code == ErrorCode::Internal
        {
            tracing::warn!(message = %error.message, "function failed");
        }
        let outcome = outcome.map_err(|error| match error.code {
            // The cause of an internal error stays in the log.
            ErrorCode::Internal => FunctionError::new(ErrorCode::Internal, "internal error"),
            _ => error,
        });
        let _ = job.reply.send(outcome);
        if broken {
            // Interrupted or out of memory: the next invocation gets a fresh runtime.
            engine = None;
        }
    }
}

/// An id for the log lines of one invocation.
fn uuid_like() -> String {
    use rand::Rng;
    format!("{:016x}", rand::rng().random::<u64>())
}

/// Runs one invocation; `true` when the runtime must not be used again.
fn invoke(engine: &Engine, job: &Job) -> (Result<serde_json::Value, FunctionError>, bool) {
    engine.arm(job.timeout);
    let outcome = engine.context.with(|ctx| run(&ctx, job));
    engine.disarm();
    let interrupted = engine.interrupted.load(Ordering::Relaxed);
    let outcome = match outcome {
        Err(_) if interrupted => Err(FunctionError::new(
            ErrorCode::DeadlineExceeded,
            format!("the function ran longer than {} ms", job.timeout.as_millis()),
        )),
        other => other,
    };
    let out_of_memory = matches!(&outcome, Err(error) if error.code == ErrorCode::ResourceExhausted);
    if out_of_memory {
        engine.runtime.run_gc();
    }
    (outcome, interrupted || out_of_memory)
}

fn run(ctx: &Ctx<'_>, job: &Job) -> Result<serde_json::Value, FunctionError> {
    let internal = |message: String| FunctionError::new(ErrorCode::Internal, message);
    let registry: Object = ctx.globals().get("__hearth_functions").map_err(|e| internal(e.to_string()))?;
    let entry: Object = registry.get(job.name.as_str()).map_err(|e| internal(e.to_string()))?;
    let handler: Function = entry.get("handler").map_err(|e| internal(e.to_string()))?;
    let data = ctx.json_parse(job.argument.to_string()).map_err(|e| internal(e.to_string()))?;
    let context = Object::new(ctx.clone()).map_err(|e| internal(e.to_string()))?;
    let auth = match &job.auth {
        Some(auth) => ctx.json_parse(auth.to_string()).map_err(|e| internal(e.to_string()))?,
        None => Value::new_null(ctx.clone()),
    };
    for (name, global) in [("db", "__hearth_db"), ("fetch", "__hearth_fetch"), ("secrets", "__hearth_secrets")] {
        let value: Value = ctx.globals().get(global).map_err(|e| internal(e.to_string()))?;
        context.set(name, value).map_err(|e| internal(e.to_string()))?;
    }
    context.set("auth", auth).map_err(|e| internal(e.to_string()))?;
    let returned: Value = handler.call((data, context)).catch(ctx).map_err(thrown)?;
    let value = match returned.as_promise() {
        Some(promise) => settle(ctx, promise)?,
        None => returned,
    };
    let text = ctx.json_stringify(value).catch(ctx).map_err(thrown)?;
    let text = match text {
        Some(text) => text.to_string().map_err(|e| internal(e.to_string()))?,
        None => "null".to_owned(),
    };
    serde_json::from_str(&text).map_err(|e| internal(format!("the result is not JSON: {e}")))
}

/// Drives the engine's jobs until `promise` settles.
fn settle<'js>(ctx: &Ctx<'js>, promise: &Promise<'js>) -> Result<Value<'js>, FunctionError> {
    loop {
        if let Some(result) = promise.result::<Value>() {
            return result.catch(ctx).map_err(thrown);
        }
        if !ctx.execute_pending_job() {
            // Nothing left that could settle it: every host call completes before it returns.
            return Err(FunctionError::new(ErrorCode::DeadlineExceeded, "the function's promise never settles"));
        }
    }
}

/// What a throw becomes for the caller: a `HearthError` keeps its code; anything else is
/// `internal`, its message and stack only for the log.
fn thrown(error: CaughtError<'_>) -> FunctionError {
    match error {
        CaughtError::Exception(exception) => {
            let message = exception.message().unwrap_or_default();
            if message.contains("out of memory") {
                return FunctionError::new(ErrorCode::ResourceExhausted, "the function ran out of memory");
            }
            let object = exception.as_object();
            let name: Option<String> = object.get("name").ok().flatten();
            let code: Option<String> = object.get("code").ok().flatten();
            if name.as_deref() == Some("HearthError") {
                let parsed = code.as_deref().and_then(|code| serde_json::from_value(serde_json::json!(code)).ok());
                return match parsed {
                    Some(code) => FunctionError::new(code, message),
                    None => FunctionError::new(
                        ErrorCode::Internal,
                        format!("HearthError with an unknown code {code:?}: {message}"),
                    ),
                };
            }
            let stack = exception.stack().unwrap_or_default();
            FunctionError::new(ErrorCode::Internal, format!("{message}\n{stack}"))
        }
        CaughtError::Value(value) => {
            let text = value.as_string().and_then(|text| text.to_string().ok()).unwrap_or_else(|| "a value".into());
            FunctionError::new(ErrorCode::Internal, format!("threw {text}"))
        }
        CaughtError::Error(rquickjs::Error::Allocation) => {
            FunctionError::new(ErrorCode::ResourceExhausted, "the function ran out of memory")
        }
        CaughtError::Error(error) => FunctionError::new(ErrorCode::Internal, error.to_string()),
    }
}

/// A cron expression as `schedule` takes it (five fields, or six with seconds first;
/// UTC), or why it is not one.
pub fn parse_cron(expression: &str) -> Result<croner::Cron, String> {
    schedules::parse(expression)
}
