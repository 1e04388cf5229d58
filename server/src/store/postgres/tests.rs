//! Store tests on a real PostgreSQL (`HEARTH_TEST_DATABASE_URL`, by default the local
//! server's `postgres` database; `skip` skips them), each on a fresh database of its own: the
//! two backends answer alike, `seq` order is commit order across nodes, and migrations
//! run once.

use std::collections::BTreeSet;
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use super::*;
use crate::config::StoreConfig;
use crate::store::sqlite::tests::{open as open_sqlite, random_doc, random_query};
use crate::store::{Store, Write, WriteOp};

const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A database made for one test, dropped by [`Fresh::drop_now`].
struct Fresh {
    admin: String,
    name: String,
    url: String,
}

impl Fresh {
    async fn new() -> Option<Fresh> {
        let admin = std::env::var("HEARTH_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned());
        if admin == "skip" {
            eprintln!("HEARTH_TEST_DATABASE_URL=skip: PostgreSQL tests skipped");
            return None;
        }
        let name = format!("hearth_test_{:016x}", rand::random::<u64>());
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&admin).await.unwrap_or_else(|error| {
            panic!("PostgreSQL at {admin}: {error} (start it, or set HEARTH_TEST_DATABASE_URL, or `skip`)")
        });
        sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut conn).await.expect("create");
        let url = match admin.rsplit_once('/') {
            Some((server, _)) => format!("{server}/{name}"),
            None => panic!("HEARTH_TEST_DATABASE_URL names no database: {admin}"),
        };
        Some(Fresh { admin, name, url })
    }

    async fn backend(&self, bus: ChangeBus) -> PgBackend {
        PgBackend::connect(PgOptions::new(self.url.clone(), &StoreConfig::default()), bus).await.expect("connects")
    }

    async fn store(&self) -> Store {
        self.node().await.0
    }

    /// A store with the bus its log tailer publishes to: one node.
    async fn node(&self) -> (Store, ChangeBus) {
        let bus = ChangeBus::new(64 << 20);
        let store = Store::new(Arc::new(self.backend(bus.clone()).await), bus.clone()).await.expect("store");
        (store, bus)
    }

    async fn drop_now(self) {
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&self.admin).await.expect("admin");
        let drop = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        sqlx::raw_sql(AssertSqlSafe(drop)).execute(&mut conn).await.expect("drop");
    }
}

fn write(path: &str, data: serde_json::Value) -> Write {
    Write {
        path: DocPath::parse(path).expect("path"),
        op: WriteOp::Set(data.as_object().cloned().unwrap_or_default()),
        if_version: None,
    }
}

/// A page as a client sees it: paths and data.
fn seen(page: &Page) -> Vec<(String, serde_json::Value)> {
    page.docs.iter().map(|doc| (doc.path.as_str().to_owned(), serde_json::from_str(&doc.data).expect("JSON"))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_and_sqlite_answer_every_query_alike() {
    let Some(fresh) = Fresh::new().await else { return };
    let pg = fresh.store().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let sqlite = open_sqlite(dir.path(), Vec::new()).await;
    let mut rng = StdRng::seed_from_u64(0x9e);
    let writes: Vec<Write> = (0..200)
        .map(|i| {
            let path = if i % 4 == 3 { format!("x/y{}/c/d{i}", i % 3) } else { format!("c/d{i}") };
            Write {
                path: DocPath::parse(&path).expect("path"),
                op: WriteOp::Set(random_doc(&mut rng)),
                if_version: None,
            }
        })
        .collect();
    pg.batch(writes.clone()).await.expect("seeded on postgres");
    sqlite.batch(writes).await.expect("seeded on sqlite");
    let mut nonempty = 0;
    for round in 0..300 {
        let target = ["c", "group", "x/y1/c"][round % 3];
        let mut wire = random_query(&mut rng, target);
        // Every page of the query, each backend following its own cursors.
        let (mut pg_wire, mut sqlite_wire) = (wire.clone(), wire.clone());
        for _page in 0..4 {
            let pg_spec = QuerySpec::parse(&pg_wire, pg.cursors()).expect("valid");
            let sqlite_spec = QuerySpec::parse(&sqlite_wire, sqlite.cursors()).expect("valid");
            let (pg_page, sqlite_page) = (
                pg.query(pg_spec.clone()).await.expect("pg"),
                sqlite.query(sqlite_spec.clone()).await.expect("sqlite"),
            );
            let query = serde_json::to_string(&wire).unwrap_or_default();
            assert_eq!(seen(&pg_page), seen(&sqlite_page), "query {query}");
            assert_eq!(pg_page.more, sqlite_page.more, "query {query}");
            nonempty += usize::from(!pg_page.docs.is_empty());
            let (Some(pg_last), Some(sqlite_last)) = (pg_page.docs.last(), sqlite_page.docs.last()) else { break };
            if !pg_page.more {
                break;
            }
            pg_wire.cursor = Some(pg_spec.cursor_after(&pg_last.parse().expect("doc"), pg.cursors()));
            sqlite_wire.cursor = Some(sqlite_spec.cursor_after(&sqlite_last.parse().expect("doc"), sqlite.cursors()));
        }
        wire.cursor = None;
        let aggregation = Aggregation {
            count: true,
            sum: vec![super::super::query::Field::parse("a").expect("field")],
            avg: vec![super::super::query::Field::parse("b").expect("field")],
            limit: if round % 2 == 0 { Some(rng.random_range(1..30)) } else { None },
        };
        let spec = |store: &Store| {
            let mut wire = wire.clone();
            wire.limit = None;
            QuerySpec::parse(&wire, store.cursors()).expect("valid")
        };
        let pg_values = pg.aggregate(spec(&pg), aggregation.clone()).await;
        let sqlite_values = sqlite.aggregate(spec(&sqlite), aggregation).await;
        assert_eq!(pg_values, sqlite_values, "aggregate of {}", serde_json::to_string(&wire).unwrap_or_default());
    }
    assert!(nonempty > 150, "only {nonempty} pages had documents: the test would prove little");
    pg.close().await;
    fresh.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_reader_sees_a_change_before_an_earlier_one_commits_across_nodes() {
    let Some(fresh) = Fresh::new().await else { return };
    // Two nodes: two backends, each with its own writer, on one database.
    let nodes = [fresh.store().await, fresh.store().await];
    let writers: Vec<_> = (0..8)
        .map(|writer| {
            let store = nodes[writer % 2].clone();
            tokio::spawn(async move {
                for i in 0..60 {
                    store.write(vec![write(&format!("w{writer}/d{i}"), json!({"i": i}))]).await.expect("written");
                }
            })
        })
        .collect();
    // A reader on a third pool follows the log as it grows: every page starts right
    // after the last change it saw, with no gap, whatever order the commits finished in.
    let reader = fresh.store().await;
    let mut after = 0;
    let total = 8 * 60;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while after < total {
        assert!(std::time::Instant::now() < deadline, "the log stopped at {after}");
        let page = reader.changes_since(after, 100).await.expect("log");
        for change in &page {
            assert_eq!(change.seq, after + 1, "a gap in the log: {} after {after}", change.seq);
            after = change.seq;
        }
    }
    for writer in writers {
        writer.await.expect("writer");
    }
    let paths: BTreeSet<String> = reader
        .changes_since(0, 1000)
        .await
        .expect("log")
        .iter()
        .map(|change| change.path.as_str().to_owned())
        .collect();
    assert_eq!(paths.len(), total as usize, "every write logged once");
    for node in nodes {
        node.close().await;
    }
    reader.close().await;
    fresh.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_publishes_every_change_once_in_log_order() {
    let Some(fresh) = Fresh::new().await else { return };
    let nodes = [fresh.node().await, fresh.node().await, fresh.node().await];
    let mut receivers: Vec<_> = nodes.iter().map(|(_, bus)| bus.subscribe()).collect();
    // Writers on two of the nodes; the third only listens.
    let writers: Vec<_> = (0..6)
        .map(|writer| {
            let store = nodes[writer % 2].0.clone();
            tokio::spawn(async move {
                for i in 0..50 {
                    let writes = vec![write(&format!("w{writer}/d{i}"), json!({"i": i}))];
                    store.write(writes).await.expect("written");
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.expect("writer");
    }
    let total = 6 * 50;
    let mut histories = Vec::new();
    for receiver in &mut receivers {
        let mut seen = Vec::new();
        while seen.len() < total {
            let committed = tokio::time::timeout(std::time::Duration::from_secs(10), receiver.recv())
                .await
                .unwrap_or_else(|_| panic!("only {} of {total} changes arrived", seen.len()))
                .expect("no lag");
            seen.extend(committed.iter().map(|change| (change.seq, change.path.as_str().to_owned())));
        }
        assert_eq!(seen.len(), total, "nothing twice");
        assert!(seen.iter().enumerate().all(|(i, (seq, _))| *seq == i as i64 + 1), "in log order, gap-free");
        histories.push(seen);
    }
    assert!(histories.iter().all(|history| *history == histories[0]), "one history on every node");
    for (node, _) in nodes {
        node.close().await;
    }
    fresh.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_starting_together_migrate_once_and_a_newer_schema_is_refused() {
    let Some(fresh) = Fresh::new().await else { return };
    let (a, b, c) = tokio::join!(
        fresh.backend(ChangeBus::new(16)),
        fresh.backend(ChangeBus::new(16)),
        fresh.backend(ChangeBus::new(16))
    );
    let applied: i64 = sqlx::query("SELECT count(*) FROM _hearth_migrations")
        .fetch_one(a.pool())
        .await
        .expect("count")
        .try_get(0)
        .expect("count");
    assert_eq!(applied, MIGRATIONS.len() as i64);
    sqlx::query("INSERT INTO _hearth_migrations (version, name, applied_at) VALUES (9999, 'future', 0)")
        .execute(a.pool())
        .await
        .expect("a future migration");
    for backend in [a, b, c] {
        backend.close().await;
    }
    let refused =
        PgBackend::connect(PgOptions::new(fresh.url.clone(), &StoreConfig::default()), ChangeBus::new(16)).await;
    match refused {
        Err(Error::Unavailable(message)) => assert!(message.contains("newer than this Hearth"), "{message}"),
        Err(other) => panic!("refused for another reason: {other}"),
        Ok(_) => panic!("started on a schema it does not know"),
    }
    fresh.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_keep_their_semantics_on_postgres() {
    let Some(fresh) = Fresh::new().await else { return };
    let store = fresh.store().await;
    let path = DocPath::parse("notes/n1").expect("path");
    let created = store.write(vec![write("notes/n1", json!({"n": 1, "s": "a\\u0000b"}))]).await.expect("created");
    assert_eq!(created[0].doc.as_ref().expect("doc").version, 1);
    // A version precondition that no longer holds fails alone; a batch is all or nothing.
    let stale = Write { if_version: Some(7), ..write("notes/n1", json!({"n": 2})) };
    assert!(matches!(store.write(vec![stale]).await, Err(Error::FailedPrecondition(_))));
    let batch = vec![write("notes/n2", json!({"n": 2})), Write { if_version: Some(9), ..write("notes/n1", json!({})) }];
    assert!(store.batch(batch).await.is_err());
    assert!(store.get(DocPath::parse("notes/n2").expect("path")).await.expect("read").is_none());
    // U+0000 is refused whole (jsonb cannot hold it); an escaped backslash before `u0000` is text.
    let nul = write("notes/n3", json!({"s": "a\u{0}b"}));
    assert!(matches!(store.write(vec![nul]).await, Err(Error::InvalidArgument(_))));
    let doc = store.get(path.clone()).await.expect("read").expect("stored");
    assert_eq!(doc.data["s"], "a\\u0000b");
    // A delete is logged with the document it removed.
    store.write(vec![Write { path: path.clone(), op: WriteOp::Delete, if_version: None }]).await.expect("deleted");
    let log = store.changes_since(0, 10).await.expect("log");
    let kinds: Vec<&str> = log.iter().map(|change| change.kind.as_str()).collect();
    assert_eq!(kinds, ["create", "delete"]);
    assert_eq!(log[1].old.as_ref().expect("old").data["n"], 1);
    assert_eq!(log[0].doc.as_ref().expect("new").data["n"], 1);
    store.close().await;
    fresh.drop_now().await;
}
