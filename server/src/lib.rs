//! Hearth: a self-hosted Firebase-style backend in one binary.
//!
//! The server is a library; `main.rs` is only its command line. Embedders and tests
//! build a [`Server`] from a [`Config`], read [`Server::local_addr`], and run it until a
//! shutdown future resolves. [`Server::builder`] adds functions written in Rust, at the
//! same hook points as the JavaScript ones:
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! use hearth_server::{Config, Server, functions::FunctionError};
//! use serde_json::json;
//!
//! let server = Server::builder(Config::default())
//!     .on_call("add", |data, _ctx| async move {
//!         let sum = data["a"].as_i64().unwrap_or(0) + data["b"].as_i64().unwrap_or(0);
//!         Ok::<_, FunctionError>(json!({ "sum": sum }))
//!     })
//!     .build()
//!     .await?;
//! server.run_until_stopped(async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```
//!
//! Modules: `config` (file + env + flags), `store` (documents, queries, the one write
//! path), `changes` (the change log record and the bus), `auth` (users, sessions,
//! tokens), `rules` (access rules), `http` (routes, extractors, errors, middleware),
//! `backup` (backups, restore, the lock that keeps one server per database).

pub mod auth;
pub mod backup;
pub mod changes;
pub mod cluster;
pub mod config;
pub mod export;
pub mod functions;
pub mod http;
pub mod private;
pub mod realtime;
pub mod rules;
pub mod seal;
pub mod store;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;

use auth::Auth;
pub use config::{Config, LogFormat, Overrides};
use functions::{FunctionError, Kind, Native, NativeContext};
use http::extract::{ServiceKeys, new_service_key};
use store::sqlite::{SqliteBackend, SqliteOptions};
use store::{ChangeBus, Store};

/// A built server, bound to its address, not yet serving.
pub struct Server {
    listener: TcpListener,
    state: http::AppState,
    new_service_key: Option<String>,
    /// Held until the server has stopped and flushed its writer.
    /// Held while serving an SQLite file.
    lock: Option<backup::DatabaseLock>,
}

/// A server being set up: its config and the functions it runs in Rust.
pub struct ServerBuilder {
    config: Config,
    natives: Vec<Native>,
}

impl ServerBuilder {
    fn add<F, Fut>(mut self, kind: Kind, name: &str, pattern: Option<&str>, cron: Option<&str>, handler: F) -> Self
    where
        F: Fn(serde_json::Value, NativeContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<serde_json::Value, FunctionError>> + Send + 'static,
    {
        self.natives.push(Native::new(kind, name, pattern, cron, handler));
        self
    }

    /// A callable at `POST /v1/functions/{name}`: `data` in, the result out.
    pub fn on_call<F, Fut>(self, name: &str, handler: F) -> Self
    where
        F: Fn(serde_json::Value, NativeContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<serde_json::Value, FunctionError>> + Send + 'static,
    {
        self.add(Kind::Call, name, None, None, handler)
    }

    /// After each committed write to a document matching `pattern` (e.g.
    /// `rooms/{room}/messages/{msg}`), from the change log: the event is
    /// `{kind, path, params, before, after, seq}`.
    pub fn on_document_written<F, Fut>(self, name: &str, pattern: &str, handler: F) -> Self
    where
        F: Fn(serde_json::Value, NativeContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<serde_json::Value, FunctionError>> + Send + 'static,
    {
        self.add(Kind::DocumentWritten, name, Some(pattern), None, handler)
    }

    /// Before each client write to a document matching `pattern`: the event is
    /// `{kind, path, params, before, after}`; an error refuses the write with its code,
    /// an object replaces the data stored, `null` keeps it.
    pub fn before_document_write<F, Fut>(self, name: &str, pattern: &str, handler: F) -> Self
    where
        F: Fn(serde_json::Value, NativeContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<serde_json::Value, FunctionError>> + Send + 'static,
    {
        self.add(Kind::BeforeDocumentWrite, name, Some(pattern), None, handler)
    }

    /// After each new user; the argument is the user in the contract's shape.
    pub fn on_user_created<F, Fut>(self, name: &str, handler: F) -> Self
    where
        F: Fn(serde_json::Value, NativeContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<serde_json::Value, FunctionError>> + Send + 'static,
    {
        self.add(Kind::UserCreated, name, None, None, handler)
    }

    /// At each tick of `cron` (five fields, or six with seconds; UTC); the argument is
    /// `{tick}`.
    pub fn schedule<F, Fut>(self, name: &str, cron: &str, handler: F) -> Self
    where
        F: Fn(serde_json::Value, NativeContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<serde_json::Value, FunctionError>> + Send + 'static,
    {
        self.add(Kind::Schedule, name, None, Some(cron), handler)
    }

    /// Opens the database, makes the first service key if there is none, and binds.
    /// Refuses two functions with one name, a bad pattern or a bad cron expression.
    pub async fn build(self) -> anyhow::Result<Server> {
        let ServerBuilder { config, natives } = self;
        for (index, native) in natives.iter().enumerate() {
            let info = &native.info;
            if natives[..index].iter().any(|other| other.info.name == info.name) {
                anyhow::bail!("two Rust functions are named `{}`", info.name);
            }
            if let Some(pattern) = &info.pattern {
                rules::set::DocPattern::parse(pattern)
                    .map_err(|reason| anyhow::anyhow!("function `{}`: pattern `{pattern}`: {reason}", info.name))?;
            }
            if let Some(cron) = &info.cron {
                functions::parse_cron(cron)
                    .map_err(|reason| anyhow::anyhow!("function `{}`: cron `{cron}`: {reason}", info.name))?;
            }
        }
        Server::start(config, natives).await
    }
}

impl Server {
    /// Opens the database, makes the first service key if there is none, and binds.
    pub async fn build(config: Config) -> anyhow::Result<Server> {
        Server::builder(config).build().await
    }

    /// A server with functions in Rust as well; see [`ServerBuilder`].
    pub fn builder(config: Config) -> ServerBuilder {
        ServerBuilder { config, natives: Vec::new() }
    }

    async fn start(config: Config, natives: Vec<Native>) -> anyhow::Result<Server> {
        // Loaded configs were checked already; an embedder's may be made in code.
        config.validate()?;
        let metrics = metrics_handle()?;
        // One server per SQLite file; PostgreSQL takes any number of nodes.
        let (lock, backups) = match config.database()? {
            config::Database::Sqlite(database) => {
                (Some(backup::DatabaseLock::acquire(&database, "start")?), backup::Backups::beside(&database))
            }
            config::Database::Postgres(_) => (None, backup::Backups::beside(&config.data_dir().join("hearth.db"))),
        };
        let (store, auth_store) = open_store(&config).await?;
        let repo = auth::repo::Repo::new(auth_store, config.keyring()?);
        let resealed = repo.reseal().await?;
        if resealed > 0 {
            tracing::info!(resealed, "sealed secrets at rest with the current encryption key");
        }
        let auth = Auth::new(repo, config.auth.clone(), &config.mail).await?;
        let addr = config.socket_addr()?;
        let listener = TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
        let rules = rules::Rules::open(config.rules_file(), store.clone())
            .map_err(|error| anyhow::anyhow!("{}: {error}", config.rules_file().display()))?;
        let realtime = realtime::Realtime::start(store.clone(), rules.clone(), &config.realtime).await?;
        let functions =
            functions::Functions::start(&config.dir, store.clone(), auth.clone(), config.functions.clone(), natives)
                .await
                .map_err(|error| anyhow::anyhow!("functions: {error}"))?;
        // The first key is made last: a start that fails after storing its hash (a port
        // in use, a rules file that does not compile) would never show the key, and the
        // next start, finding a hash, would make none.
        let mut hashes = store.backend().service_key_hashes().await?;
        let mut first_key = None;
        if hashes.is_empty() {
            let key = new_service_key();
            let hash = ServiceKeys::hash(&key);
            store.backend().add_service_key_hash(hash).await?;
            hashes.push(hash);
            first_key = Some(key);
        }
        let configured = config.service_key.as_ref().map(|key| ServiceKeys::hash(key.expose()));
        let services = http::Services { store, auth, rules, realtime, functions, backups };
        let state = http::AppState::new(services, config, ServiceKeys::new(hashes, configured), metrics);
        Ok(Server { listener, state, new_service_key: first_key, lock })
    }

    /// The address the server listens on (with the real port when 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// The service key made at this start, if this is the first start. Shown once:
    /// only its hash is stored.
    pub fn take_new_service_key(&mut self) -> Option<String> {
        self.new_service_key.take()
    }

    /// The shared store, for embedders that write from Rust.
    pub fn store(&self) -> &Store {
        self.state.store()
    }

    /// Serves until `shutdown` resolves, then stops accepting, finishes in-flight
    /// requests, flushes the writer and returns.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let state = self.state.clone();
        let pruner = tokio::spawn(prune_changes(state.clone()));
        let key_reloader = tokio::spawn(reload_keys(state.auth().clone()));
        // Other nodes may share the database: keep in step with them, first of all on
        // the project's files, before serving.
        let cluster = match state.store().backend().relay() {
            Some(_) => {
                let mut project = cluster::Project::new(&state);
                if let Err(error) = project.sync(&state).await {
                    tracing::warn!(%error, "syncing the project's files with the other nodes failed");
                }
                Some(tokio::spawn(cluster::follow(state.clone(), project)))
            }
            None => None,
        };
        let rules_watcher = tokio::spawn(state.rules().clone().watch(Duration::from_secs(1)));
        let functions_watcher = tokio::spawn(state.functions().clone().watch(Duration::from_secs(1)));
        let backups = state.config().backups.clone();
        let scheduled_backups = backups.schedule.as_deref().map(|schedule| {
            let cron = functions::parse_cron(schedule).expect("checked at start");
            let state = state.clone();
            tokio::spawn(async move { state.backups().run_schedule(state.store(), cron, backups.keep).await })
        });
        let app = http::router(state.clone());
        tracing::info!("listening on http://{}", self.local_addr());
        let stopping = state.clone();
        axum::serve(self.listener, app.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(async move {
                shutdown.await;
                stopping.begin_stopping();
                tracing::info!("shutting down: finishing in-flight requests");
            })
            .await
            .context("server failed")?;
        pruner.abort();
        key_reloader.abort();
        if let Some(cluster) = cluster {
            cluster.abort();
        }
        rules_watcher.abort();
        functions_watcher.abort();
        if let Some(task) = scheduled_backups {
            task.abort();
        }
        state.store().close().await;
        drop(self.lock);
        tracing::info!("stopped");
        Ok(())
    }
}

/// Opens the database: the document store, and the backend auth shares with it.
pub(crate) async fn open_store(config: &Config) -> anyhow::Result<(Store, Arc<dyn auth::repo::AuthStore>)> {
    // A receiver may fall 64 MiB of documents behind before it reads the log instead.
    let bus = ChangeBus::new(64 * 1024 * 1024);
    match config.database()? {
        config::Database::Sqlite(path) => {
            let options = SqliteOptions { indexes: config.index_defs()?, ..SqliteOptions::new(path, &config.store) };
            let opened = bus.clone();
            let backend = Arc::new(tokio::task::spawn_blocking(move || SqliteBackend::open(options, opened)).await??);
            Ok((Store::new(backend.clone(), bus).await?, backend))
        }
        config::Database::Postgres(url) => {
            let options = store::postgres::PgOptions {
                indexes: config.index_defs()?,
                ..store::postgres::PgOptions::new(url, &config.store)
            };
            let backend = Arc::new(store::postgres::PgBackend::connect(options, bus.clone()).await?);
            Ok((Store::new(backend.clone(), bus).await?, backend))
        }
    }
}

/// Deletes changes older than the retention window, now and then.
async fn prune_changes(state: http::AppState) {
    let config = &state.config().store;
    let retention = (config.change_retention_hours * 3600.0 * 1e6) as i64;
    let mut ticker = tokio::time::interval(Duration::from_secs(config.prune_interval_seconds.max(1)));
    loop {
        ticker.tick().await;
        match state.store().prune_changes(store::now_micros() - retention).await {
            Ok(0) => {}
            Ok(pruned) => tracing::info!(pruned, "pruned old changes"),
            Err(error) => tracing::warn!(%error, "pruning changes failed"),
        }
    }
}

/// Picks up keys added by `hearth keys rotate` and drops expired ones; now and then,
/// sweeps expired auth rows.
async fn reload_keys(auth: Auth) {
    let mut ticker = tokio::time::interval(Duration::from_secs(30));
    ticker.tick().await;
    let mut sweeps: u64 = 0;
    loop {
        ticker.tick().await;
        if let Err(error) = auth.reload_keys().await {
            tracing::warn!(%error, "reloading signing keys failed");
        }
        // Every 20th tick (10 minutes): sweep what auth can no longer use.
        sweeps += 1;
        if sweeps.is_multiple_of(20) {
            match auth.prune().await {
                Ok(0) => {}
                Ok(pruned) => tracing::info!(pruned, "pruned expired auth rows"),
                Err(error) => tracing::warn!(%error, "pruning auth rows failed"),
            }
        }
    }
}

/// Adds a new signing key to the project's database; the old ones keep verifying until
/// their tokens expire. Running servers pick it up within 30 s.
pub async fn rotate_keys(config: &Config) -> anyhow::Result<String> {
    let (store, auth_store) = open_store(config).await?;
    let repo = auth::repo::Repo::new(auth_store, config.keyring()?);
    repo.reseal().await?;
    let key = auth::keys::generate(store::now_micros());
    let kid = key.kid.clone();
    repo.add_key(key).await?;
    store.close().await;
    Ok(kid)
}

/// Makes a new service key, stores its hash and returns the key (to be shown once), for
/// a project whose key was lost; with `revoke_others`, for one that leaked: every other
/// stored key stops working. Refused while a server runs on the database, which would
/// go on accepting the keys it loaded at start.
pub async fn add_service_key(config: &Config, revoke_others: bool) -> anyhow::Result<(String, u64)> {
    let _lock = match config.database()? {
        config::Database::Sqlite(database) => Some(backup::DatabaseLock::acquire(&database, "change service keys")?),
        // Nodes load the hashes at start: restart them to pick up the change.
        config::Database::Postgres(_) => None,
    };
    let (store, _) = open_store(config).await?;
    let key = new_service_key();
    let hash = ServiceKeys::hash(&key);
    store.backend().add_service_key_hash(hash).await?;
    let revoked = if revoke_others { store.backend().revoke_service_keys_except(hash).await? } else { 0 };
    store.close().await;
    Ok((key, revoked))
}

/// The process-wide Prometheus recorder (a process has one, however many servers).
fn metrics_handle() -> anyhow::Result<PrometheusHandle> {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let recorder = PrometheusBuilder::new()
        .set_buckets(&[
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ])?
        .set_buckets_for_metric(
            Matcher::Prefix("hearth_group_commit_".into()),
            &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0],
        )?
        .set_buckets_for_metric(
            Matcher::Full("hearth_group_commit_seconds".into()),
            &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0],
        )?
        .build_recorder();
    let handle = recorder.handle();
    if metrics::set_global_recorder(recorder).is_err() {
        anyhow::bail!("another metrics recorder is installed in this process");
    }
    let _ = HANDLE.set(handle.clone());
    Ok(handle)
}
