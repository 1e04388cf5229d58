//! Configuration: defaults, then `hearth.toml` in the project dir, then `HEARTH_*`
//! environment variables (nested keys with `__`, e.g. `HEARTH_STORE__GROUP_COMMIT`), then
//! command-line flags. Validated once at start.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::store::query::{Field, Target};
use crate::store::sqlite::{IndexDef, Synchronous};
use crate::store::{CollectionPath, path::is_valid_id};

/// A secret that never prints.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Everything Hearth is configured with.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The project dir: `hearth.toml`, `rules.toml`, `functions/`, `hearth_data/`.
    #[serde(skip)]
    pub dir: PathBuf,
    pub addr: String,
    /// `sqlite:PATH` (default: `hearth_data/hearth.db` in the project dir) or
    /// `postgres://user:password@host:port/database`.
    pub database_url: Option<String>,
    /// One more service key to accept, besides those stored in the database.
    pub service_key: Option<Secret>,
    /// The key that seals signing keys and TOTP secrets in the database (64 hex digits).
    /// Without it, the key is kept in `hearth.key` in the project dir, made on first start.
    pub encryption_key: Option<Secret>,
    /// Keys that sealed secrets before `encryption_key`: they still open, and every value
    /// they open is sealed again with `encryption_key` at start.
    pub previous_encryption_keys: Vec<Secret>,
    pub log_format: LogFormat,
    pub store: StoreConfig,
    pub limits: LimitsConfig,
    pub metrics: MetricsConfig,
    pub auth: AuthConfig,
    pub mail: MailConfig,
    pub realtime: RealtimeConfig,
    pub functions: FunctionsConfig,
    pub backups: BackupsConfig,
    /// Expression indexes over document fields.
    pub indexes: Vec<IndexConfig>,
    /// A built web app served beside the API (`index.html` for paths that name no file,
    /// so client-side routes work); relative to the project dir.
    pub public: Option<PathBuf>,
}

/// Store tuning.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Commit all queued writes in one transaction (true) or one request per transaction.
    pub group_commit: bool,
    /// Most writes in one group commit.
    pub max_group_writes: usize,
    /// `normal` survives a process crash; `full` also a power cut.
    pub synchronous: Synchronous,
    /// Hold the SQLite file exclusively: faster reads (no file lock per read), but no
    /// other process (the `sqlite3` shell, a live backup tool, `hearth keys rotate`) can
    /// open the database while the server runs.
    pub exclusive: bool,
    /// Read-only connections.
    pub readers: usize,
    /// Write requests that may wait for the writer.
    pub queue_capacity: usize,
    /// How long the change log keeps a change.
    pub change_retention_hours: f64,
    /// How often old changes are pruned.
    pub prune_interval_seconds: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            group_commit: true,
            max_group_writes: 2000,
            synchronous: Synchronous::Normal,
            exclusive: false,
            readers: 4,
            queue_capacity: 8192,
            change_retention_hours: 24.0,
            prune_interval_seconds: 300,
        }
    }
}

/// Backups made on a schedule.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackupsConfig {
    /// A cron expression (UTC; five fields, or six with seconds first): a backup is made
    /// at each of its ticks. None by default.
    pub schedule: Option<String>,
    /// Scheduled backups kept: after each new one the older ones go (0 keeps them all).
    /// Backups made through the API are never deleted by the schedule.
    pub keep: usize,
}

impl Default for BackupsConfig {
    fn default() -> Self {
        BackupsConfig { schedule: None, keep: 7 }
    }
}

/// Request limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest request body on document and query routes (a document is at most 1 MiB).
    pub max_body_bytes: usize,
    /// Largest batch body.
    pub max_batch_body_bytes: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig { max_body_bytes: 1024 * 1024, max_batch_body_bytes: 16 * 1024 * 1024 }
    }
}

/// Realtime limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RealtimeConfig {
    /// Open WebSockets the server holds; more are refused with `resource-exhausted`.
    pub max_connections: usize,
    /// Subscriptions one connection may hold.
    pub max_subscriptions: usize,
    /// Bytes queued for one connection before it is cut with 4008 (it resumes with its
    /// tokens).
    pub queue_bytes: usize,
    /// Open WebSockets from one client address (see `auth.rate_limit.trusted_proxies`),
    /// so one client cannot take every connection.
    pub max_connections_per_address: usize,
    /// `sub` messages one connection may send per second, after a first burst of
    /// `subscribe_burst`; more are refused with `resource-exhausted`.
    pub subscribes_per_second: u32,
    pub subscribe_burst: u32,
}

impl Default for RealtimeConfig {
    fn default() -> Self {
        RealtimeConfig {
            max_connections: 10_000,
            max_subscriptions: 1_000,
            queue_bytes: 16 * 1024 * 1024,
            max_connections_per_address: 500,
            subscribes_per_second: 50,
            subscribe_burst: 500,
        }
    }
}

/// Embedded functions.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FunctionsConfig {
    /// Worker threads, each with one warm runtime; 0: one per core.
    pub workers: usize,
    /// Time limit of one invocation, then `deadline-exceeded`.
    pub timeout_ms: u64,
    /// Time limit of a before-write hook: the client's write waits for it.
    pub before_write_timeout_ms: u64,
    /// Memory limit of a runtime, then `resource-exhausted`.
    pub memory_mib: usize,
    /// Hosts `ctx.fetch` may reach: `host` (any port) or `host:port`.
    pub fetch_allow: Vec<String>,
    /// Time limit of one `ctx.fetch`.
    pub fetch_timeout_ms: u64,
    /// `ctx.secrets`: name → value; never logged or returned by the server.
    pub secrets: std::collections::BTreeMap<String, Secret>,
}

impl Default for FunctionsConfig {
    fn default() -> Self {
        FunctionsConfig {
            workers: 0,
            timeout_ms: 10_000,
            before_write_timeout_ms: 2_000,
            memory_mib: 64,
            fetch_allow: Vec::new(),
            fetch_timeout_ms: 10_000,
            secrets: Default::default(),
        }
    }
}

/// `/metrics` access.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Serve `/metrics` without the service key.
    pub public: bool,
}

/// Outgoing mail. Without `smtp`, mail goes to the outbox (`GET /v1/admin/outbox`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MailConfig {
    /// `From:` of every mail, e.g. `"My App <noreply@example.com>"`.
    pub from: String,
    pub smtp: Option<SmtpConfig>,
}

impl Default for MailConfig {
    fn default() -> Self {
        MailConfig { from: "Hearth <noreply@localhost>".into(), smtp: None }
    }
}

/// An SMTP relay.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    pub host: String,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<Secret>,
    /// `starttls` (default, port 587), `tls` (port 465) or `none` (plain, for a local relay).
    #[serde(default)]
    pub tls: SmtpTls,
    /// Tries per mail while the relay is down or answers "try later".
    #[serde(default = "default_smtp_attempts")]
    pub attempts: u32,
    /// The pause before the first retry; each next pause is twice as long (at most 10 min).
    #[serde(default = "default_smtp_first_retry_ms")]
    pub first_retry_ms: u64,
}

fn default_smtp_attempts() -> u32 {
    8
}

fn default_smtp_first_retry_ms() -> u64 {
    2_000
}

/// How the connection to the relay is encrypted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    #[default]
    Starttls,
    Tls,
    None,
}

/// Sign-in and tokens.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// `iss` of access tokens.
    pub issuer: String,
    /// `aud` of access tokens.
    pub audience: String,
    /// Lifetime of an access token.
    pub access_token_seconds: u64,
    /// Lifetime of a session (its refresh tokens) from sign-in.
    pub session_days: u64,
    /// Lifetime of a mailed e-mail verification token.
    pub verify_token_seconds: u64,
    /// Lifetime of a mailed password reset token.
    pub reset_token_seconds: u64,
    /// For how long after a sign-in a sensitive change (e-mail, password, TOTP on or off,
    /// deleting the account) needs no current password.
    pub reauth_seconds: u64,
    pub password: PasswordConfig,
    pub rate_limit: RateLimitConfig,
    pub oauth: OAuthConfig,
}

/// OAuth2/OIDC sign-in.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OAuthConfig {
    /// The URL users reach this server at (callback URLs are made under it). Required
    /// once a provider is configured: a URL made from the request's `Host` header would
    /// be the client's to choose.
    pub public_url: Option<String>,
    /// URLs an app may ask to be sent back to with the tokens (`redirect_to`): a target
    /// must have the same scheme, host and port as one of them, and a path under its path.
    pub allowed_redirects: Vec<String>,
    /// OIDC providers by the name used in the routes (`/v1/auth/oauth/{name}`).
    pub providers: std::collections::BTreeMap<String, OidcProviderConfig>,
}

/// One OIDC provider, found through its discovery document.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcProviderConfig {
    /// Its issuer URL; `{issuer}/.well-known/openid-configuration` is fetched.
    pub issuer: String,
    pub client_id: String,
    pub client_secret: Secret,
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
}

fn default_scopes() -> Vec<String> {
    vec!["openid".into(), "email".into(), "profile".into()]
}

/// Limits on the sign-in routes (signup, login, anonymous, refresh, recover, reset, MFA).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Requests a minute from one IP to those routes together.
    pub per_ip_per_minute: u32,
    /// How many of them may come at once.
    pub per_ip_burst: u32,
    /// Failed logins allowed per account from one client address in
    /// `failed_login_window_seconds`: a stranger who exhausts it locks out only themself.
    pub failed_logins: u32,
    /// Failed logins allowed per account from all addresses together in the window; past
    /// it only addresses the account signed in from before may still try, so a guessing
    /// run spread over many addresses gets nowhere while the owner still gets in.
    pub failed_logins_per_account: u32,
    pub failed_login_window_seconds: u64,
    /// Wrong second-factor codes allowed per account in the window (a ticket itself is
    /// burnt after 5).
    pub failed_mfa_codes: u32,
    /// How many reverse proxies stand in front of the server. With N > 0 the client
    /// address is the N-th entry of `X-Forwarded-For` from the right (the one the
    /// outermost proxy wrote); entries further left are the client's to write.
    pub trusted_proxies: usize,
    /// The same as `trusted_proxies = 1` (kept for older configs).
    pub trust_forwarded_for: bool,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            per_ip_per_minute: 120,
            per_ip_burst: 30,
            failed_logins: 10,
            failed_logins_per_account: 100,
            failed_login_window_seconds: 900,
            failed_mfa_codes: 10,
            trusted_proxies: 0,
            trust_forwarded_for: false,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            issuer: "hearth".into(),
            audience: "hearth".into(),
            access_token_seconds: 900,
            session_days: 30,
            verify_token_seconds: 86_400,
            reset_token_seconds: 3_600,
            reauth_seconds: 300,
            password: PasswordConfig::default(),
            rate_limit: RateLimitConfig::default(),
            oauth: OAuthConfig::default(),
        }
    }
}

/// argon2id cost. The defaults are OWASP's (19 MiB, 2 passes, 1 lane); lower them only
/// for tests.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PasswordConfig {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
    /// Hashing threads (low priority); 0 means one per core.
    pub max_concurrent: usize,
}

impl Default for PasswordConfig {
    fn default() -> Self {
        PasswordConfig { memory_kib: 19_456, iterations: 2, parallelism: 1, max_concurrent: 0 }
    }
}

/// One declared index: `fields` like `["owner", "score desc"]` on a collection path or on
/// every collection of a collection group.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexConfig {
    #[serde(default)]
    pub collection: Option<String>,
    #[serde(default)]
    pub collection_group: Option<String>,
    pub fields: Vec<String>,
}

fn read_or_make_key_file(file: &Path) -> anyhow::Result<[u8; 32]> {
    use std::io::Write as _;
    match std::fs::read_to_string(file) {
        Ok(text) => {
            crate::private::restrict(file)?;
            crate::seal::parse_key(&text).with_context(|| format!("{}: not a key (64 hex digits)", file.display()))
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let text = crate::seal::new_key_text();
            let mut out = crate::private::create_new(file)
                .with_context(|| format!("cannot create the at-rest key file {}", file.display()))?;
            out.write_all(format!("{text}\n").as_bytes())?;
            out.sync_all()?;
            Ok(crate::seal::parse_key(&text).expect("a fresh key parses"))
        }
        Err(error) => Err(error).with_context(|| format!("cannot read the at-rest key file {}", file.display())),
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            dir: PathBuf::from("."),
            addr: "127.0.0.1:8080".into(),
            database_url: None,
            service_key: None,
            encryption_key: None,
            previous_encryption_keys: Vec::new(),
            log_format: LogFormat::Text,
            store: StoreConfig::default(),
            limits: LimitsConfig::default(),
            metrics: MetricsConfig::default(),
            auth: AuthConfig::default(),
            mail: MailConfig::default(),
            realtime: RealtimeConfig::default(),
            functions: FunctionsConfig::default(),
            backups: BackupsConfig::default(),
            indexes: Vec::new(),
            public: None,
        }
    }
}

/// Values from the command line; each one set wins over file and environment.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub addr: Option<String>,
    pub database_url: Option<String>,
    pub log_format: Option<LogFormat>,
    /// The web app's dir, relative to the working dir (as a command line means it).
    pub public: Option<PathBuf>,
}

/// Where the database lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    Sqlite(PathBuf),
    /// A `postgres://` URL.
    Postgres(String),
}

impl Config {
    /// Loads the config of the project in `dir`.
    pub fn load(dir: &Path, overrides: Overrides) -> anyhow::Result<Config> {
        let mut config: Config = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::file(dir.join("hearth.toml")))
            // `HEARTH_TEST_*` belong to the test suite (`scripts/test.sh`), not to a server.
            .merge(
                Env::prefixed("HEARTH_")
                    .filter(|key| !key.as_str().to_ascii_lowercase().starts_with("test_"))
                    .split("__"),
            )
            .extract()
            .map_err(|error| anyhow::anyhow!("configuration: {error}"))?;
        config.dir = dir.to_owned();
        if let Some(addr) = overrides.addr {
            config.addr = addr;
        }
        if let Some(url) = overrides.database_url {
            config.database_url = Some(url);
        }
        if let Some(format) = overrides.log_format {
            config.log_format = format;
        }
        if let Some(public) = overrides.public {
            config.public = Some(std::path::absolute(&public)?);
        }
        config.validate()?;
        Ok(config)
    }

    /// Checks what can be checked before anything starts.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.socket_addr()?;
        self.database()?;
        if let Some(public) = self.public_dir()
            && !public.is_dir()
        {
            anyhow::bail!("public: {} is not a directory", public.display());
        }
        self.index_defs()?;
        if self.store.readers == 0 || self.store.readers > 256 {
            anyhow::bail!("store.readers must be 1 to 256");
        }
        if self.auth.access_token_seconds < 5 || self.auth.access_token_seconds > 86_400 {
            anyhow::bail!("auth.access_token_seconds must be 5 to 86400");
        }
        let realtime = &self.realtime;
        if realtime.max_connections == 0
            || realtime.max_subscriptions == 0
            || realtime.max_connections_per_address == 0
            || realtime.subscribes_per_second == 0
            || realtime.subscribe_burst == 0
        {
            anyhow::bail!(
                "realtime.max_connections, max_subscriptions, max_connections_per_address, subscribes_per_second and subscribe_burst must be at least 1"
            );
        }
        if realtime.queue_bytes < 64 * 1024 {
            anyhow::bail!("realtime.queue_bytes must be at least 65536 (a frame may be that large)");
        }
        let functions = &self.functions;
        if functions.workers > 256 || !(1..=600_000).contains(&functions.timeout_ms) || functions.memory_mib < 4 {
            anyhow::bail!("functions: workers 0 to 256, timeout_ms 1 to 600000, memory_mib at least 4");
        }
        if self.backups.schedule.is_some() && matches!(self.database()?, Database::Postgres(_)) {
            anyhow::bail!("backups.schedule copies an SQLite file; on PostgreSQL, schedule pg_dump instead");
        }
        if let Some(schedule) = &self.backups.schedule {
            crate::functions::parse_cron(schedule)
                .map_err(|reason| anyhow::anyhow!("backups.schedule `{schedule}`: {reason}"))?;
        }
        crate::auth::oauth::validate(&self.auth.oauth)?;
        if self.store.max_group_writes == 0 {
            anyhow::bail!("store.max_group_writes must be at least 1");
        }
        if let Some(key) = &self.service_key
            && (!key.expose().starts_with("hk_") || key.expose().len() < 24)
        {
            anyhow::bail!("service_key must start with `hk_` and be at least 24 characters");
        }
        for key in self.encryption_key.iter().chain(&self.previous_encryption_keys) {
            if crate::seal::parse_key(key.expose()).is_none() {
                anyhow::bail!("encryption_key and previous_encryption_keys must be 32 bytes: 64 hex digits");
            }
        }
        Ok(())
    }

    pub fn socket_addr(&self) -> anyhow::Result<SocketAddr> {
        self.addr.parse().map_err(|error| anyhow::anyhow!("addr `{}` is not HOST:PORT: {error}", self.addr))
    }

    /// The access rules file in the project dir.
    pub fn rules_file(&self) -> PathBuf {
        self.dir.join("rules.toml")
    }

    /// The web app's dir, when one is served (`public`, relative to the project dir).
    pub fn public_dir(&self) -> Option<PathBuf> {
        self.public.as_ref().map(|public| self.dir.join(public))
    }

    /// The functions' dir: one module per `.js` file.
    pub fn functions_dir(&self) -> PathBuf {
        self.dir.join("functions")
    }

    /// The file that keeps the at-rest key when `encryption_key` is not set: beside the
    /// data dir, not in it, so a copy of the data dir or a backup does not carry its key.
    pub fn key_file(&self) -> PathBuf {
        self.dir.join("hearth.key")
    }

    /// The keys that seal secrets at rest: `encryption_key`, or the key file (made, 0600,
    /// on first use), with `previous_encryption_keys` to open what older keys sealed.
    pub fn keyring(&self) -> anyhow::Result<crate::seal::Keyring> {
        let parse = |key: &Secret| crate::seal::parse_key(key.expose()).context("encryption keys are 64 hex digits");
        let current = match &self.encryption_key {
            Some(key) => parse(key)?,
            None => read_or_make_key_file(&self.key_file())?,
        };
        let previous = self.previous_encryption_keys.iter().map(parse).collect::<anyhow::Result<Vec<_>>>()?;
        Ok(crate::seal::Keyring::new(current, &previous))
    }

    /// The data dir inside the project dir.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("hearth_data")
    }

    pub fn database(&self) -> anyhow::Result<Database> {
        match self.database_url.as_deref() {
            None | Some("") => Ok(Database::Sqlite(self.data_dir().join("hearth.db"))),
            Some(url) => {
                if let Some(path) = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")) {
                    let path = PathBuf::from(path);
                    Ok(Database::Sqlite(if path.is_relative() { self.dir.join(path) } else { path }))
                } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
                    Ok(Database::Postgres(url.to_owned()))
                } else {
                    anyhow::bail!("database_url must start with sqlite: or postgres://")
                }
            }
        }
    }

    /// The declared indexes, validated.
    pub fn index_defs(&self) -> anyhow::Result<Vec<IndexDef>> {
        self.indexes
            .iter()
            .map(|index| {
                let target = match (&index.collection, &index.collection_group) {
                    (Some(collection), None) => Target::Collection(
                        CollectionPath::parse(collection).map_err(|e| anyhow::anyhow!("index: {e}"))?,
                    ),
                    (None, Some(group)) if is_valid_id(group) => Target::Group(group.clone()),
                    _ => anyhow::bail!("an index names exactly one valid `collection` or `collection_group`"),
                };
                if index.fields.is_empty() {
                    anyhow::bail!("an index names at least one field");
                }
                let fields = index
                    .fields
                    .iter()
                    .map(|spec| {
                        let mut words = spec.split_whitespace();
                        let name = words.next().unwrap_or_default();
                        let dir = match words.next() {
                            None | Some("asc") => hearth_types::Direction::Asc,
                            Some("desc") => hearth_types::Direction::Desc,
                            Some(other) => {
                                anyhow::bail!("index field `{spec}`: `{other}` is not asc or desc")
                            }
                        };
                        let field = Field::parse(name).map_err(|e| anyhow::anyhow!("index field `{spec}`: {e}"))?;
                        Ok((field, dir))
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?;
                Ok(IndexDef { target, fields })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_then_flags_decide_and_secrets_do_not_print() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(
            dir.path().join("hearth.toml"),
            "addr = \"127.0.0.1:9999\"\nservice_key = \"hk_0123456789abcdefghijklmn\"\n\
             [store]\ngroup_commit = false\n\n[[indexes]]\ncollection = \"rooms\"\nfields = [\"owner\", \"score desc\"]\n",
        )
        .expect("write config");
        let config = Config::load(dir.path(), Overrides::default()).expect("loads");
        assert_eq!(config.addr, "127.0.0.1:9999");
        assert!(!config.store.group_commit);
        assert_eq!(config.index_defs().expect("valid").len(), 1);
        assert!(!format!("{config:?}").contains("hk_0123"));
        let flagged = Config::load(dir.path(), Overrides { addr: Some("127.0.0.1:0".into()), ..Overrides::default() })
            .expect("loads");
        assert_eq!(flagged.addr, "127.0.0.1:0");
    }

    #[test]
    fn bad_config_is_refused_at_start() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("hearth.toml"), "bogus = 1\n").expect("write");
        assert!(Config::load(dir.path(), Overrides::default()).is_err());
        std::fs::write(dir.path().join("hearth.toml"), "[[indexes]]\ncollection = \"a/b\"\nfields = [\"x\"]\n")
            .expect("write");
        assert!(Config::load(dir.path(), Overrides::default()).is_err());
        std::fs::write(dir.path().join("hearth.toml"), "[backups]\nschedule = \"at dawn\"\n").expect("write");
        let error = Config::load(dir.path(), Overrides::default()).expect_err("a bad cron is refused").to_string();
        assert!(error.contains("backups.schedule `at dawn`"), "{error}");
    }
}
