//! The PostgreSQL backend: this node's writer thread with group commit (`writer`), a
//! bounded pool for reads, and Hearth's schema migrated at start under an advisory lock.
//!
//! Queries are answered by the in-memory evaluator of `store::query` over the target's
//! documents, so their results, order and cursors are exactly SQLite's; compiling them to
//! SQL over `jsonb` (with the declared indexes as expression indexes) is the next step.

mod auth;
mod portable;
mod relay;
mod tail;
mod writer;

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{AssertSqlSafe, Row};
use tokio::sync::{mpsc, oneshot};

use super::query::Target;
use super::{
    AggregateValues, Aggregation, Backend, Change, ChangeBus, ChangeKind, DeadLetter, DocPath, Error, LogPage, Page,
    PathFilter, Prepared, QuerySpec, RawDoc, StoredDoc, WriteGuard, WriteResult,
};
pub use writer::WriterOptions;
use writer::{Command, Job};

/// Hearth's schema on PostgreSQL, applied in order; never edit one that has shipped.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "init", include_str!("../../../../migrations/postgres/0001_init.sql")),
    (2, "auth", include_str!("../../../../migrations/postgres/0002_auth.sql")),
];

/// The advisory lock nodes take to migrate one at a time ("hearth" in ASCII).
const MIGRATION_LOCK: i64 = 0x6865_6172_7468;

/// Everything the PostgreSQL backend is configured with.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// `postgres://user:password@host:port/database?sslmode=require`.
    pub url: String,
    /// Connections for reads (the writer has one of its own).
    pub pool_size: u32,
    /// Longest a statement may run before PostgreSQL cancels it.
    pub statement_timeout: Duration,
    pub writer: WriterOptions,
    pub queue_capacity: usize,
    /// How often the log tailer reads the log when no notification woke it.
    pub poll_interval: Duration,
    /// The indexes declared in config.
    pub indexes: Vec<super::sqlite::IndexDef>,
}

impl PgOptions {
    pub fn new(url: String, store: &crate::config::StoreConfig) -> PgOptions {
        PgOptions {
            url,
            pool_size: (store.readers as u32).max(2) * 2,
            statement_timeout: Duration::from_secs(30),
            writer: WriterOptions { group_commit: store.group_commit, max_group_writes: store.max_group_writes },
            queue_capacity: store.queue_capacity,
            poll_interval: Duration::from_secs(1),
            indexes: Vec::new(),
        }
    }
}

/// The PostgreSQL implementation of [`Backend`].
pub struct PgBackend {
    pool: PgPool,
    writer: mpsc::Sender<Command>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    relay: std::sync::Arc<relay::PgRelay>,
}

/// What a failed statement means to a caller: PostgreSQL out of reach (or cancelling) is
/// `unavailable`, never a hang or an internal error.
pub(crate) fn pg_error(error: sqlx::Error) -> Error {
    match &error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => Error::Unavailable(format!("PostgreSQL is out of reach: {error}")),
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            // Connection exceptions (08), insufficient resources (53: too many
            // connections, disk full), operator intervention (57: statement_timeout,
            // shutdown, starting up), system errors (58), and a database that is not
            // accepting connections (55000 at connect): the server is out of reach, for now.
            let out_of_reach = ["08", "53", "57", "58"].iter().any(|class| code.starts_with(class))
                || (code == "55000" && db.message().contains("accepting connections"));
            if out_of_reach {
                Error::Unavailable(format!("PostgreSQL refused: {}", db.message()))
            } else {
                Error::Internal(format!("postgres: {error}"))
            }
        }
        _ => Error::Internal(format!("postgres: {error}")),
    }
}

/// A document from a row of `data::text, version, created_at, updated_at`. `jsonb` keeps
/// keys in its own order; the text is written again in the order every other answer has.
pub(crate) fn raw_doc(path: DocPath, row: &PgRow) -> Result<RawDoc, Error> {
    let text: String = row.try_get(0).map_err(pg_error)?;
    let data: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::Internal(format!("stored JSON: {e}")))?;
    Ok(RawDoc {
        path,
        data: data.to_string(),
        version: row.try_get(1).map_err(pg_error)?,
        created_at: row.try_get(2).map_err(pg_error)?,
        updated_at: row.try_get(3).map_err(pg_error)?,
    })
}

/// Up to `limit` changes after `after`, in `seq` order, each with its trigger depth; those
/// `wanted` refuses are skipped but count in `last`, the last `seq` read.
pub(crate) async fn read_log(
    pool: &PgPool,
    after: i64,
    limit: usize,
    wanted: Option<&(dyn Fn(&str) -> bool + Send + Sync)>,
) -> Result<(Vec<(Change, u8)>, Option<i64>), Error> {
    let rows = sqlx::query(
        "SELECT seq, path, kind, doc, old, committed_at, depth FROM changes WHERE seq > $1 ORDER BY seq LIMIT $2",
    )
    .bind(after)
    .bind(limit as i64)
    .fetch_all(pool)
    .await
    .map_err(pg_error)?;
    let mut last = None;
    let mut changes = Vec::with_capacity(rows.len());
    for row in rows {
        let seq: i64 = row.try_get(0).map_err(pg_error)?;
        last = Some(seq);
        let path: String = row.try_get(1).map_err(pg_error)?;
        if wanted.is_some_and(|wanted| !wanted(&path)) {
            continue;
        }
        let path = DocPath::parse(&path).map_err(|e| Error::Internal(format!("logged path: {e}")))?;
        let kind: String = row.try_get(2).map_err(pg_error)?;
        let kind = ChangeKind::parse(&kind).ok_or_else(|| Error::Internal(format!("logged kind {kind}")))?;
        let doc: Option<String> = row.try_get(3).map_err(pg_error)?;
        let old: Option<String> = row.try_get(4).map_err(pg_error)?;
        let bytes = doc.as_ref().map_or(0, String::len) + old.as_ref().map_or(0, String::len);
        let depth: i16 = row.try_get(6).map_err(pg_error)?;
        let change = Change {
            seq,
            kind,
            doc: doc.map(|text| parse_logged(&path, &text).map(std::sync::Arc::new)).transpose()?,
            old: old.map(|text| parse_logged(&path, &text).map(std::sync::Arc::new)).transpose()?,
            path,
            committed_at: row.try_get(5).map_err(pg_error)?,
            bytes,
        };
        changes.push((change, u8::try_from(depth).unwrap_or(u8::MAX)));
    }
    Ok((changes, last))
}

/// A field's value in `data`, as an SQL expression with its path inlined (the declared
/// indexes are built on the same expression, so the planner can use them).
fn field_sql(segments: &[String]) -> String {
    let array: Vec<String> =
        segments.iter().map(|segment| format!("\"{}\"", segment.replace('\\', "\\\\").replace('"', "\\\""))).collect();
    format!("(data #> '{{{}}}'::text[])", array.join(",").replace('\'', "''"))
}

/// A value PostgreSQL's `jsonb` equality compares exactly as `store::value::equal`:
/// strings, booleans and integers within ±2^53 (beyond, `==` compares as floats do).
fn exactly_comparable(value: &serde_json::Value) -> bool {
    const SAFE: i64 = 1 << 53;
    match value {
        serde_json::Value::String(_) | serde_json::Value::Bool(_) => true,
        serde_json::Value::Number(number) => number.as_i64().is_some_and(|n| (-SAFE..=SAFE).contains(&n)),
        _ => false,
    }
}

/// The SQL term (bound at `$place`, an array of JSON texts) that keeps every document
/// `filter` could match, when there is one that narrows the rows.
fn pushed_filter(filter: &super::query::FieldFilter, place: usize) -> Option<(String, Vec<String>)> {
    use super::query::Field;
    let values: Vec<&serde_json::Value> = match filter.op {
        hearth_types::Op::Eq => vec![&filter.value],
        hearth_types::Op::In => filter.value.as_array()?.iter().collect(),
        _ => return None,
    };
    if !values.iter().all(|value| exactly_comparable(value)) {
        return None;
    }
    match &filter.field {
        Field::Id => {
            let ids = values.iter().map(|value| value.as_str().map(str::to_owned)).collect::<Option<Vec<_>>>()?;
            Some((format!("id = ANY(${place}::text[])"), ids))
        }
        Field::Path(segments) => Some((
            format!("{} = ANY(${place}::jsonb[])", field_sql(segments)),
            values.iter().map(|value| value.to_string()).collect(),
        )),
    }
}

/// Creates an expression index for the first field of each declared index (what the
/// pushed-down `==` and `in` filters use) and drops those no longer declared.
async fn reconcile_indexes(pool: &PgPool, indexes: &[super::sqlite::IndexDef]) -> Result<(), Error> {
    use sha2::Digest;
    let mut wanted = std::collections::BTreeMap::new();
    for index in indexes {
        let Some((super::query::Field::Path(segments), _)) = index.fields.first() else { continue };
        let column = match index.target {
            Target::Collection(_) => "collection",
            Target::Group(_) => "coll_id",
        };
        let body = format!("ON documents ({column}, {})", field_sql(segments));
        let digest = sha2::Sha256::digest(body.as_bytes());
        let name = format!("hpx_{}", digest.iter().take(8).map(|byte| format!("{byte:02x}")).collect::<String>());
        wanted.insert(name, body);
    }
    let existing: Vec<String> =
        sqlx::query("SELECT indexname FROM pg_indexes WHERE tablename = 'documents' AND indexname LIKE 'hpx\\_%'")
            .fetch_all(pool)
            .await
            .map_err(pg_error)?
            .iter()
            .map(|row| row.try_get(0))
            .collect::<Result<_, _>>()
            .map_err(pg_error)?;
    for name in existing.iter().filter(|name| !wanted.contains_key(*name)) {
        sqlx::raw_sql(AssertSqlSafe(format!("DROP INDEX IF EXISTS {name}"))).execute(pool).await.map_err(pg_error)?;
    }
    for (name, body) in wanted {
        sqlx::raw_sql(AssertSqlSafe(format!("CREATE INDEX IF NOT EXISTS {name} {body}")))
            .execute(pool)
            .await
            .map_err(pg_error)?;
    }
    Ok(())
}

fn connect_options(options: &PgOptions) -> Result<PgConnectOptions, Error> {
    let timeout = options.statement_timeout.as_millis().to_string();
    Ok(PgConnectOptions::from_str(&options.url)
        .map_err(|e| Error::InvalidArgument(format!("database_url: {e}")))?
        .application_name("hearth")
        .options([("statement_timeout", timeout.as_str()), ("client_min_messages", "warning")]))
}

impl PgBackend {
    /// Connects, migrates (one node at a time) and starts the writer.
    pub async fn connect(options: PgOptions, bus: ChangeBus) -> Result<PgBackend, Error> {
        let connect = connect_options(&options)?;
        let pool = PgPoolOptions::new()
            .max_connections(options.pool_size.max(1) + 2) // + the listeners of the tailer and the relay
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(connect.clone())
            .await
            .map_err(pg_error)?;
        migrate(&pool).await?;
        reconcile_indexes(&pool, &options.indexes).await?;
        metrics::gauge!("hearth_db_readers").set(f64::from(options.pool_size.max(1)));
        let (sender, receiver) = mpsc::channel(options.queue_capacity.max(1));
        let local = tail::start(pool.clone(), bus.clone(), options.poll_interval).await?;
        let writer_options = options.writer;
        let thread = std::thread::Builder::new()
            .name("hearth-pg-writer".into())
            .spawn(move || writer::run(connect, receiver, local, bus, writer_options))
            .map_err(|e| Error::Internal(format!("cannot start the writer: {e}")))?;
        let relay = relay::start(pool.clone()).await?;
        Ok(PgBackend { pool, writer: sender, thread: Mutex::new(Some(thread)), relay })
    }

    /// The read pool, for Hearth's own tables beside the documents.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn named(&self, sql: &'static str, name: String) -> Result<Option<i64>, Error> {
        let row = sqlx::query(sql).bind(name).fetch_optional(&self.pool).await.map_err(pg_error)?;
        row.map(|row| row.try_get(0).map_err(pg_error)).transpose()
    }

    async fn execute(&self, sql: &'static str, binds: impl FnOnce(SqlQuery<'_>) -> SqlQuery<'_>) -> Result<u64, Error> {
        Ok(binds(sqlx::query(sql)).execute(&self.pool).await.map_err(pg_error)?.rows_affected())
    }

    /// Every document of the query's target that matches it, in query order. The
    /// filters PostgreSQL can decide exactly as `store::query` does (`==` and `in` on
    /// strings, booleans and safe integers) narrow the rows read, through the declared
    /// indexes; the in-memory evaluator then decides every filter, the order and the rest.
    async fn matching(&self, conn: &mut sqlx::PgConnection, spec: &QuerySpec) -> Result<Vec<StoredDoc>, Error> {
        let (column, value) = match &spec.target {
            Target::Collection(collection) => ("collection", collection.as_str().to_owned()),
            Target::Group(group) => ("coll_id", group.clone()),
        };
        let mut sql =
            format!("SELECT data::text, version, created_at, updated_at, path FROM documents WHERE {column} = $1");
        let mut binds: Vec<Vec<String>> = Vec::new();
        for filter in &spec.filters {
            if let Some((term, values)) = pushed_filter(filter, binds.len() + 2) {
                sql.push_str(" AND ");
                sql.push_str(&term);
                binds.push(values);
            }
        }
        let mut query = sqlx::query(AssertSqlSafe(sql)).bind(value);
        for values in binds {
            query = query.bind(values);
        }
        let rows = query.fetch_all(&mut *conn).await.map_err(pg_error)?;
        let mut docs = Vec::new();
        for row in rows {
            let path: String = row.try_get(4).map_err(pg_error)?;
            let path = DocPath::parse(&path).map_err(|e| Error::Internal(format!("stored path: {e}")))?;
            let doc = raw_doc(path, &row)?.parse()?;
            if spec.matches(&doc) {
                docs.push(doc);
            }
        }
        docs.sort_by(|a, b| spec.compare_docs(a, b));
        Ok(docs)
    }

    async fn page(&self, conn: &mut sqlx::PgConnection, spec: &QuerySpec) -> Result<Page, Error> {
        let docs = self.matching(conn, spec).await?;
        let mut after: Vec<StoredDoc> = docs.into_iter().filter(|doc| spec.is_after_cursor(doc)).collect();
        let more = after.len() > spec.limit;
        after.truncate(spec.limit);
        let docs = after
            .into_iter()
            .map(|doc| RawDoc {
                data: serde_json::Value::Object(doc.data).to_string(),
                path: doc.path,
                version: doc.version,
                created_at: doc.created_at,
                updated_at: doc.updated_at,
            })
            .collect();
        Ok(Page { docs, more })
    }
}

type SqlQuery<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

async fn migrate(pool: &PgPool) -> Result<(), Error> {
    let mut tx = pool.begin().await.map_err(pg_error)?;
    // Held to the end of this transaction: nodes starting together migrate once.
    sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(MIGRATION_LOCK).execute(&mut *tx).await.map_err(pg_error)?;
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS _hearth_migrations \
         (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)",
    )
    .execute(&mut *tx)
    .await
    .map_err(pg_error)?;
    let newest: Option<i64> = sqlx::query("SELECT max(version) FROM _hearth_migrations")
        .fetch_one(&mut *tx)
        .await
        .map_err(pg_error)?
        .try_get(0)
        .map_err(pg_error)?;
    let known = MIGRATIONS.last().map_or(0, |(version, _, _)| *version);
    if let Some(newest) = newest
        && newest > known
    {
        return Err(Error::Unavailable(format!(
            "the database's schema is version {newest}, newer than this Hearth knows ({known}): run a newer Hearth"
        )));
    }
    for (version, name, sql) in MIGRATIONS {
        if newest.is_some_and(|newest| newest >= *version) {
            continue;
        }
        sqlx::raw_sql(AssertSqlSafe(*sql)).execute(&mut *tx).await.map_err(pg_error)?;
        sqlx::query("INSERT INTO _hearth_migrations (version, name, applied_at) VALUES ($1, $2, $3)")
            .bind(version)
            .bind(*name)
            .bind(super::now_micros())
            .execute(&mut *tx)
            .await
            .map_err(pg_error)?;
        tracing::info!(version, name, "applied migration");
    }
    tx.commit().await.map_err(pg_error)
}

/// The log's shape of a document (see `commit::logged`).
#[derive(serde::Deserialize)]
struct Logged {
    v: i64,
    c: i64,
    u: i64,
    d: serde_json::Map<String, serde_json::Value>,
}

fn parse_logged(path: &DocPath, text: &str) -> Result<StoredDoc, Error> {
    let logged: Logged = serde_json::from_str(text).map_err(|e| Error::Internal(format!("logged JSON: {e}")))?;
    Ok(StoredDoc { path: path.clone(), data: logged.d, version: logged.v, created_at: logged.c, updated_at: logged.u })
}

async fn last_seq(conn: &mut sqlx::PgConnection) -> Result<i64, Error> {
    sqlx::query("SELECT seq FROM log_head").fetch_one(&mut *conn).await.map_err(pg_error)?.try_get(0).map_err(pg_error)
}

/// A sum of floats with Neumaier's compensation, as SQLite's `sum()` takes it.
fn float_sum(values: &[serde_json::Number]) -> f64 {
    let (mut sum, mut compensation) = (0.0f64, 0.0f64);
    for value in values.iter().filter_map(serde_json::Number::as_f64) {
        let total = sum + value;
        compensation += if sum.abs() >= value.abs() { (sum - total) + value } else { (value - total) + sum };
        sum = total;
    }
    sum + compensation
}

/// Sums and averages of the numbers at each field (others are skipped), as SQLite gives
/// them: integer sums stay integers (an overflow is refused), a float makes the sum a
/// float; averages are floats, null when no document has a number there.
fn aggregate_docs(docs: &[StoredDoc], aggregation: &Aggregation) -> Result<AggregateValues, Error> {
    let numbers = |field: &super::query::Field| {
        docs.iter()
            .filter_map(|doc| {
                let id = serde_json::Value::String(doc.path.id().to_owned());
                field.value_in(doc, &id).and_then(|value| value.as_number().cloned())
            })
            .collect::<Vec<_>>()
    };
    let mut sum = Vec::new();
    for field in &aggregation.sum {
        let values = numbers(field);
        let total = if values.iter().all(|number| number.as_i64().is_some()) {
            let mut total: i64 = 0;
            for number in &values {
                total = total
                    .checked_add(number.as_i64().unwrap_or_default())
                    .ok_or_else(|| Error::InvalidArgument("a sum overflowed 64-bit integers".into()))?;
            }
            serde_json::Value::from(total)
        } else {
            serde_json::Value::Number(super::value::normalized_float(float_sum(&values)))
        };
        sum.push(total);
    }
    let avg = aggregation
        .avg
        .iter()
        .map(|field| {
            let values = numbers(field);
            if values.is_empty() {
                return serde_json::Value::Null;
            }
            serde_json::Value::Number(super::value::normalized_float(float_sum(&values) / values.len() as f64))
        })
        .collect();
    Ok(AggregateValues { count: docs.len() as u64, sum, avg })
}

impl Backend for PgBackend {
    fn commit(
        &self,
        writes: Vec<Prepared>,
        batch: bool,
        guard: Option<std::sync::Arc<dyn WriteGuard>>,
    ) -> BoxFuture<'_, Result<Vec<WriteResult>, Error>> {
        async move {
            let (reply, answer) = oneshot::channel();
            self.writer.send(Command::Write(Job { writes, batch, guard, reply })).await.map_err(|_| shutting_down())?;
            answer.await.map_err(|_| shutting_down())?
        }
        .boxed()
    }

    fn get(&self, path: DocPath) -> BoxFuture<'_, Result<Option<RawDoc>, Error>> {
        async move {
            let row = sqlx::query("SELECT data::text, version, created_at, updated_at FROM documents WHERE path = $1")
                .bind(path.as_str())
                .fetch_optional(&self.pool)
                .await
                .map_err(pg_error)?;
            row.map(|row| raw_doc(path, &row)).transpose()
        }
        .boxed()
    }

    fn query(&self, spec: QuerySpec) -> BoxFuture<'_, Result<Page, Error>> {
        async move {
            let mut conn = self.pool.acquire().await.map_err(pg_error)?;
            self.page(&mut conn, &spec).await
        }
        .boxed()
    }

    fn aggregate(&self, spec: QuerySpec, aggregation: Aggregation) -> BoxFuture<'_, Result<AggregateValues, Error>> {
        async move {
            let mut conn = self.pool.acquire().await.map_err(pg_error)?;
            let mut docs = self.matching(&mut conn, &spec).await?;
            if let Some(limit) = aggregation.limit {
                docs.truncate(limit);
            }
            aggregate_docs(&docs, &aggregation)
        }
        .boxed()
    }

    fn snapshot(&self, spec: QuerySpec) -> BoxFuture<'_, Result<(Page, i64), Error>> {
        async move {
            let mut tx = self.pool.begin().await.map_err(pg_error)?;
            // One snapshot for the page and the seq.
            sqlx::raw_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                .execute(&mut *tx)
                .await
                .map_err(pg_error)?;
            let page = self.page(&mut tx, &spec).await?;
            let seq = last_seq(&mut tx).await?;
            tx.commit().await.map_err(pg_error)?;
            Ok((page, seq))
        }
        .boxed()
    }

    fn last_seq(&self) -> BoxFuture<'_, Result<i64, Error>> {
        async move {
            let mut conn = self.pool.acquire().await.map_err(pg_error)?;
            last_seq(&mut conn).await
        }
        .boxed()
    }

    fn changes_since(
        &self,
        after: i64,
        limit: usize,
        wanted: Option<PathFilter>,
    ) -> BoxFuture<'_, Result<LogPage, Error>> {
        async move {
            let (changes, last) = read_log(&self.pool, after, limit, wanted.as_deref()).await?;
            Ok(LogPage { changes: changes.into_iter().map(|(change, _)| change).collect(), last })
        }
        .boxed()
    }

    fn prune_changes(&self, before: i64) -> BoxFuture<'_, Result<u64, Error>> {
        async move {
            // A change a trigger has not handled yet stays, however old.
            self.execute(
                "DELETE FROM changes WHERE committed_at < $1 \
                 AND seq <= (SELECT coalesce(min(seq), 9223372036854775807) FROM trigger_cursors)",
                |query| query.bind(before),
            )
            .await
        }
        .boxed()
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), Error>> {
        async move {
            sqlx::raw_sql("SELECT 1").execute(&self.pool).await.map_err(pg_error)?;
            Ok(())
        }
        .boxed()
    }

    fn backup(&self, _into: PathBuf) -> BoxFuture<'_, Result<(), Error>> {
        async move {
            Err(Error::FailedPrecondition(
                "on PostgreSQL, back up with pg_dump (or `hearth export`); the server writes no copy itself".into(),
            ))
        }
        .boxed()
    }

    fn deployed(&self, version: i64) -> BoxFuture<'_, Result<Vec<crate::store::Deployed>, Error>> {
        async move {
            let rows = sqlx::query("SELECT name, source, version FROM deployments WHERE version > $1 ORDER BY version")
                .bind(version)
                .fetch_all(&self.pool)
                .await
                .map_err(pg_error)?;
            rows.iter()
                .map(|row| {
                    Ok(crate::store::Deployed {
                        name: row.try_get(0).map_err(pg_error)?,
                        source: row.try_get(1).map_err(pg_error)?,
                        version: row.try_get(2).map_err(pg_error)?,
                    })
                })
                .collect()
        }
        .boxed()
    }

    fn deploy(&self, name: String, source: Option<String>) -> BoxFuture<'_, Result<i64, Error>> {
        async move {
            // Versions are taken under the table's lock, so they appear in the order taken.
            let mut tx = self.pool.begin().await.map_err(pg_error)?;
            sqlx::raw_sql("LOCK TABLE deployments IN EXCLUSIVE MODE").execute(&mut *tx).await.map_err(pg_error)?;
            let row = sqlx::query(
                "INSERT INTO deployments (name, source, version, deployed_at) \
                 VALUES ($1, $2, (SELECT coalesce(max(version), 0) + 1 FROM deployments), $3) \
                 ON CONFLICT (name) DO UPDATE SET source = excluded.source, version = excluded.version, \
                 deployed_at = excluded.deployed_at RETURNING version",
            )
            .bind(name)
            .bind(source)
            .bind(crate::store::now_micros())
            .fetch_one(&mut *tx)
            .await
            .map_err(pg_error)?;
            let version: i64 = row.try_get(0).map_err(pg_error)?;
            tx.commit().await.map_err(pg_error)?;
            Ok(version)
        }
        .boxed()
    }

    fn relay(&self) -> Option<std::sync::Arc<dyn crate::changes::relay::Relay>> {
        Some(self.relay.clone())
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        async move {
            let (done, finished) = oneshot::channel();
            if self.writer.send(Command::Shutdown(done)).await.is_ok() {
                let _ = finished.await;
            }
            let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
            let _ = tokio::task::spawn_blocking(move || thread.map(std::thread::JoinHandle::join)).await;
            self.pool.close().await;
        }
        .boxed()
    }

    fn service_key_hashes(&self) -> BoxFuture<'_, Result<Vec<[u8; 32]>, Error>> {
        async move {
            let rows = sqlx::query("SELECT hash FROM service_keys").fetch_all(&self.pool).await.map_err(pg_error)?;
            Ok(rows
                .iter()
                .filter_map(|row| row.try_get::<Vec<u8>, _>(0).ok().and_then(|bytes| <[u8; 32]>::try_from(bytes).ok()))
                .collect())
        }
        .boxed()
    }

    fn add_service_key_hash(&self, hash: [u8; 32]) -> BoxFuture<'_, Result<(), Error>> {
        async move {
            self.execute(
                "INSERT INTO service_keys (hash, created_at) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                |query| query.bind(hash.to_vec()).bind(super::now_micros()),
            )
            .await
            .map(drop)
        }
        .boxed()
    }

    fn revoke_service_keys_except(&self, keep: [u8; 32]) -> BoxFuture<'_, Result<u64, Error>> {
        async move { self.execute("DELETE FROM service_keys WHERE hash <> $1", |query| query.bind(keep.to_vec())).await }
            .boxed()
    }

    fn cursor_key(&self) -> BoxFuture<'_, Result<[u8; 32], Error>> {
        async move {
            let fresh: [u8; 32] = rand::random();
            self.execute("INSERT INTO meta (key, value) VALUES ('cursor_key', $1) ON CONFLICT DO NOTHING", |query| {
                query.bind(fresh.to_vec())
            })
            .await?;
            let stored: Vec<u8> = sqlx::query("SELECT value FROM meta WHERE key = 'cursor_key'")
                .fetch_one(&self.pool)
                .await
                .map_err(pg_error)?
                .try_get(0)
                .map_err(pg_error)?;
            <[u8; 32]>::try_from(stored).map_err(|_| Error::Internal("stored cursor key has the wrong size".into()))
        }
        .boxed()
    }

    fn trigger_cursor(&self, name: String) -> BoxFuture<'_, Result<Option<i64>, Error>> {
        self.named("SELECT seq FROM trigger_cursors WHERE name = $1", name).boxed()
    }

    fn set_trigger_cursor(&self, name: String, seq: i64) -> BoxFuture<'_, Result<(), Error>> {
        async move {
            self.execute(
                "INSERT INTO trigger_cursors (name, seq) VALUES ($1, $2) \
                 ON CONFLICT (name) DO UPDATE SET seq = greatest(trigger_cursors.seq, excluded.seq)",
                |query| query.bind(name).bind(seq),
            )
            .await
            .map(drop)
        }
        .boxed()
    }

    fn retain_trigger_cursors(&self, names: Vec<String>) -> BoxFuture<'_, Result<(), Error>> {
        async move {
            let names2 = names.clone();
            self.execute("DELETE FROM trigger_cursors WHERE NOT (name = ANY($1))", |query| query.bind(names)).await?;
            self.execute("DELETE FROM schedule_ticks WHERE NOT (name = ANY($1))", |query| query.bind(names2)).await?;
            Ok(())
        }
        .boxed()
    }

    fn schedule_tick(&self, name: String) -> BoxFuture<'_, Result<Option<i64>, Error>> {
        self.named("SELECT tick FROM schedule_ticks WHERE name = $1", name).boxed()
    }

    fn claim_schedule_tick(&self, name: String, tick: i64) -> BoxFuture<'_, Result<bool, Error>> {
        async move {
            let claimed = self
                .execute(
                    "INSERT INTO schedule_ticks (name, tick) VALUES ($1, $2) \
                     ON CONFLICT (name) DO UPDATE SET tick = excluded.tick WHERE schedule_ticks.tick < excluded.tick",
                    |query| query.bind(name).bind(tick),
                )
                .await?;
            Ok(claimed == 1)
        }
        .boxed()
    }

    fn lease(&self, name: String, holder: String, ttl: Duration) -> BoxFuture<'_, Result<bool, Error>> {
        async move {
            // The database's clock decides, so the nodes' clocks need not agree.
            let taken = self
                .execute(
                    "INSERT INTO leases (name, holder, expires_at) \
                     VALUES ($1, $2, clock_timestamp() + make_interval(secs => $3)) \
                     ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at \
                     WHERE leases.holder = excluded.holder OR leases.expires_at < clock_timestamp()",
                    |query| query.bind(name).bind(holder).bind(ttl.as_secs_f64()),
                )
                .await?;
            Ok(taken == 1)
        }
        .boxed()
    }

    fn export_rows(
        &self,
        tables: Vec<&'static super::portable::Table>,
        into: mpsc::Sender<super::portable::Batch>,
    ) -> BoxFuture<'_, Result<(), Error>> {
        async move { portable::export(&self.pool, &tables, &into).await }.boxed()
    }

    fn import_rows(
        &self,
        from: mpsc::Receiver<super::portable::Batch>,
    ) -> BoxFuture<'_, Result<Vec<(&'static str, u64)>, Error>> {
        portable::import(&self.pool, from).boxed()
    }

    fn add_dead_letter(&self, letter: DeadLetter) -> BoxFuture<'_, Result<(), Error>> {
        async move {
            self.execute(
                "INSERT INTO dead_letters (name, seq, path, attempts, error, failed_at) VALUES ($1, $2, $3, $4, $5, $6)",
                |query| {
                    query
                        .bind(letter.name)
                        .bind(letter.seq)
                        .bind(letter.path)
                        .bind(letter.attempts as i32)
                        .bind(letter.error)
                        .bind(letter.failed_at)
                },
            )
            .await
            .map(drop)
        }
        .boxed()
    }

    fn dead_letters(&self, limit: usize) -> BoxFuture<'_, Result<Vec<DeadLetter>, Error>> {
        async move {
            let rows = sqlx::query(
                "SELECT name, seq, path, attempts, error, failed_at FROM dead_letters ORDER BY id DESC LIMIT $1",
            )
            .bind(limit as i64)
            .fetch_all(&self.pool)
            .await
            .map_err(pg_error)?;
            rows.iter()
                .map(|row| {
                    Ok(DeadLetter {
                        name: row.try_get(0).map_err(pg_error)?,
                        seq: row.try_get(1).map_err(pg_error)?,
                        path: row.try_get(2).map_err(pg_error)?,
                        attempts: row.try_get::<i32, _>(3).map_err(pg_error)? as u32,
                        error: row.try_get(4).map_err(pg_error)?,
                        failed_at: row.try_get(5).map_err(pg_error)?,
                    })
                })
                .collect()
        }
        .boxed()
    }
}

fn shutting_down() -> Error {
    Error::Unavailable("the server is shutting down".into())
}

#[cfg(test)]
mod tests;
