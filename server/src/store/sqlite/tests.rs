//! Store tests on a real SQLite file: the SQL and in-memory evaluators agree, cursors
//! hold under concurrent writes, and declared indexes serve queries without a scan.

use std::collections::BTreeMap;
use std::sync::Arc;

use hearth_types::{Direction, Filter, Op, OrderBy, Query};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Map, Value, json};

use super::*;
use crate::config::StoreConfig;
use crate::store::query::QuerySpec;
use crate::store::{Store, Write, WriteOp};

pub(crate) async fn open(dir: &std::path::Path, indexes: Vec<IndexDef>) -> Store {
    let bus = ChangeBus::new(1 << 20);
    let options = SqliteOptions { indexes, ..SqliteOptions::new(dir.join("test.db"), &StoreConfig::default()) };
    let backend = SqliteBackend::open(options, bus.clone()).expect("opens");
    Store::new(Arc::new(backend), bus).await.expect("store")
}

/// Values of every JSON type, with numbers that collide across int and float.
pub(crate) fn random_value(rng: &mut StdRng, depth: usize) -> Value {
    match rng.random_range(0..if depth > 1 { 5 } else { 8 }) {
        0 => Value::Null,
        1 => Value::Bool(rng.random()),
        2 => json!(rng.random_range(-3..4)),
        3 => json!([-2.5, -0.5, 0.5, 1.5, 2.0, 1e-3][rng.random_range(0..6)]),
        4 => json!(["", "a", "b", "ab", "B", "é", "a\"b", "10", "2"][rng.random_range(0..9)]),
        5 => Value::Array((0..rng.random_range(0..3)).map(|_| random_value(rng, depth + 1)).collect()),
        6 => json!({"x": random_value(rng, depth + 1)}),
        _ => json!({}),
    }
}

pub(crate) fn random_doc(rng: &mut StdRng) -> Map<String, Value> {
    let mut data = Map::new();
    for field in ["a", "b", "tags"] {
        if rng.random_bool(0.8) {
            data.insert(field.into(), random_value(rng, 0));
        }
    }
    if rng.random_bool(0.5) {
        data.insert("c".into(), json!({"d": random_value(rng, 1)}));
    }
    data
}

const FIELDS: [&str; 6] = ["a", "b", "tags", "c.d", "__id__", "missing"];

pub(crate) fn random_query(rng: &mut StdRng, target: &str) -> Query {
    let filters = (0..rng.random_range(0..3))
        .map(|_| {
            let op = Op::ALL[rng.random_range(0..Op::ALL.len())];
            let field = FIELDS[rng.random_range(0..FIELDS.len())];
            let value = if matches!(op, Op::In | Op::NotIn | Op::ArrayContainsAny) {
                Value::Array((0..rng.random_range(1..4)).map(|_| random_value(rng, 1)).collect())
            } else if field == "__id__" && rng.random_bool(0.7) {
                json!(format!("d{}", rng.random_range(0..40)))
            } else {
                random_value(rng, 1)
            };
            Filter { field: field.into(), op, value }
        })
        .collect();
    let order_by = (0..rng.random_range(0..3))
        .map(|_| OrderBy {
            field: FIELDS[rng.random_range(0..5)].into(),
            dir: if rng.random() { Direction::Asc } else { Direction::Desc },
        })
        .collect();
    let (collection, collection_group) =
        if target == "group" { (None, Some("c".to_owned())) } else { (Some(target.to_owned()), None) };
    Query { collection, collection_group, filters, order_by, limit: Some(rng.random_range(1..60)), cursor: None }
}

/// Writes `count` documents `collection/d00000`, `d00001`, … in batches of 500 (the
/// batch limit); `data(n)` is the n-th document's data.
async fn write_many(store: &Store, collection: &str, count: usize, data: impl Fn(usize) -> Value) {
    for start in (0..count).step_by(500) {
        let writes = (start..count.min(start + 500))
            .map(|n| Write {
                path: DocPath::parse(&format!("{collection}/d{n:05}")).expect("path"),
                op: WriteOp::Set(data(n).as_object().cloned().unwrap_or_default()),
                if_version: None,
            })
            .collect();
        store.batch(writes).await.expect("written");
    }
}

/// What the in-memory evaluator says a page is.
fn expected_page(spec: &QuerySpec, docs: &BTreeMap<String, Arc<StoredDoc>>) -> Vec<String> {
    let mut matching: Vec<&Arc<StoredDoc>> =
        docs.values().filter(|doc| spec.matches(doc) && spec.is_after_cursor(doc)).collect();
    matching.sort_by(|a, b| spec.compare_docs(a, b));
    matching.iter().take(spec.limit).map(|doc| doc.path.as_str().to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_and_in_memory_evaluators_agree_on_random_documents_and_queries() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path(), Vec::new()).await;
    let mut rng = StdRng::seed_from_u64(0x4ea27);
    let mut docs = BTreeMap::new();
    let mut writes = Vec::new();
    for i in 0..200 {
        let path = if i % 4 == 3 { format!("x/y{}/c/d{i}", i % 3) } else { format!("c/d{i}") };
        writes.push(Write {
            path: DocPath::parse(&path).expect("path"),
            op: WriteOp::Set(random_doc(&mut rng)),
            if_version: None,
        });
    }
    for result in store.batch(writes).await.expect("seeded") {
        let doc = result.doc.expect("stored");
        docs.insert(doc.path.as_str().to_owned(), doc);
    }
    let mut pairs = 0usize;
    let mut nonempty = 0usize;
    for round in 0..400 {
        let target = ["c", "group", "x/y1/c"][round % 3];
        let wire = random_query(&mut rng, target);
        let spec = QuerySpec::parse(&wire, store.cursors()).expect("random query is valid");
        let page = store.query(spec.clone()).await.expect("query runs");
        let got: Vec<String> = page.docs.iter().map(|doc| doc.path.as_str().to_owned()).collect();
        pairs += docs.len();
        nonempty += usize::from(!got.is_empty());
        assert_eq!(got, expected_page(&spec, &docs), "query {}", serde_json::to_string(&wire).unwrap_or_default());
    }
    assert!(pairs >= 10_000, "only {pairs} document/query pairs");
    assert!(nonempty > 150, "only {nonempty} of 400 queries found anything: the test would prove little");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursors_resume_right_after_the_last_document_while_documents_come_and_go() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path(), Vec::new()).await;
    let mut rng = StdRng::seed_from_u64(77);
    let mut docs = BTreeMap::new();
    let mut next_id = 0;
    let write = |rng: &mut StdRng, next_id: &mut usize| {
        *next_id += 1;
        Write {
            path: DocPath::parse(&format!("c/d{next_id}")).expect("path"),
            op: WriteOp::Set(random_doc(rng)),
            if_version: None,
        }
    };
    let seed: Vec<Write> = (0..120).map(|_| write(&mut rng, &mut next_id)).collect();
    for result in store.batch(seed).await.expect("seeded") {
        let doc = result.doc.expect("stored");
        docs.insert(doc.path.as_str().to_owned(), doc);
    }
    for _ in 0..60 {
        let mut wire = random_query(&mut rng, "c");
        wire.limit = Some(rng.random_range(1..8));
        for _page in 0..6 {
            let spec = QuerySpec::parse(&wire, store.cursors()).expect("valid");
            let page = store.query(spec.clone()).await.expect("runs");
            let got: Vec<String> = page.docs.iter().map(|doc| doc.path.as_str().to_owned()).collect();
            assert_eq!(got, expected_page(&spec, &docs));
            let Some(last) = page.docs.last().filter(|_| page.more) else {
                break;
            };
            wire.cursor = Some(spec.cursor_after(&last.parse().expect("stored JSON"), store.cursors()));
            // Between pages: inserts, updates and deletes anywhere in the order.
            let mut changes = vec![write(&mut rng, &mut next_id)];
            if let Some(victim) = docs.keys().nth(rng.random_range(0..docs.len())).cloned() {
                changes.push(Write {
                    path: DocPath::parse(&victim).expect("path"),
                    op: WriteOp::Delete,
                    if_version: None,
                });
            }
            for result in store.write(changes).await.expect("written") {
                match result.doc {
                    Some(doc) => docs.insert(doc.path.as_str().to_owned(), doc),
                    None => docs.remove(result.path.as_str()),
                };
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_indexes_serve_equality_range_and_order_without_a_scan() {
    let dir = tempfile::tempdir().expect("temp dir");
    let collection = || Target::Collection(crate::store::CollectionPath::parse("rooms").expect("path"));
    let field = |name: &str| Field::parse(name).expect("field");
    let indexes = vec![
        IndexDef { target: collection(), fields: vec![(field("owner"), Direction::Asc)] },
        IndexDef {
            target: collection(),
            fields: vec![(field("owner"), Direction::Asc), (field("score"), Direction::Desc)],
        },
        IndexDef { target: collection(), fields: vec![(field("score"), Direction::Asc)] },
    ];
    let store = open(dir.path(), indexes).await;
    write_many(&store, "rooms", 500, |i| json!({"owner": format!("u{}", i % 50), "score": i})).await;
    let conn = Connection::open(dir.path().join("test.db")).expect("opens");
    let plan = |query: Value| -> String {
        let wire: Query = serde_json::from_value(query).expect("wire");
        let spec = QuerySpec::parse(&wire, store.cursors()).expect("valid");
        let compiled = sql::select(&spec);
        let mut statement = conn.prepare(&format!("EXPLAIN QUERY PLAN {}", compiled.sql)).expect("explains");
        let rows = statement
            .query_map(rusqlite::params_from_iter(compiled.params.iter()), |row| row.get::<_, String>(3))
            .expect("plan rows");
        rows.map(|row| row.expect("row")).collect::<Vec<_>>().join("\n")
    };
    for query in [
        json!({"collection": "rooms", "where": [{"field": "owner", "op": "==", "value": "u7"}]}),
        json!({"collection": "rooms", "where": [{"field": "score", "op": ">=", "value": 480}], "order_by": [{"field": "score"}]}),
        json!({"collection": "rooms", "where": [{"field": "owner", "op": "==", "value": "u7"}],
               "order_by": [{"field": "score", "dir": "desc"}], "limit": 20}),
    ] {
        let plan = plan(query.clone());
        assert!(plan.contains("USING INDEX hx_"), "{query}: {plan}");
        assert!(!plan.contains("SCAN"), "{query}: {plan}");
        assert!(!plan.contains("TEMP B-TREE"), "{query}: {plan}");
    }
    // Without a declared index, a collection is a range of its group in the one key.
    let range = "USING INDEX documents_key (coll_id=? AND path>? AND path<?)";
    for (query, search) in [
        (json!({"collection": "rooms", "limit": 20}), range),
        (json!({"collection": "rooms/r1/rooms", "limit": 20}), range),
        (json!({"collection_group": "rooms", "limit": 20}), "USING INDEX documents_key (coll_id=?)"),
    ] {
        let plan = plan(query.clone());
        assert!(plan.contains(search), "{query}: {plan}");
        assert!(!plan.contains("SCAN"), "{query}: {plan}");
        assert!(!plan.contains("TEMP B-TREE"), "{query}: {plan}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collection_holds_only_its_own_documents_among_deeper_ones_of_its_name() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path(), Vec::new()).await;
    // Paths that sort inside and around `a/x/m/`: deeper `m` collections, a sibling
    // collection `m-2`, and ids next to `/` in byte order.
    let paths = [
        "m/top",
        "a/x/m/d1",
        "a/x/m/d1/m/deep",
        "a/x/m/d2",
        "a/x/m/d2/n/e/m/deeper",
        "a/x/m-2/s",
        "a/x/m.x/t",
        "a/x/m0/u",
        "a/x/mm/v",
        "b/x/m/other",
    ];
    let writes = paths
        .iter()
        .map(|path| Write {
            path: DocPath::parse(path).expect("path"),
            op: WriteOp::Set(serde_json::Map::new()),
            if_version: None,
        })
        .collect();
    store.write(writes).await.expect("written");
    let listed = |query: Value| {
        let store = &store;
        async move {
            let wire: Query = serde_json::from_value(query).expect("wire");
            let page = store.query(QuerySpec::parse(&wire, store.cursors()).expect("valid")).await.expect("query");
            page.docs.iter().map(|doc| doc.path.as_str().to_owned()).collect::<Vec<_>>()
        }
    };
    assert_eq!(listed(json!({"collection": "a/x/m"})).await, ["a/x/m/d1", "a/x/m/d2"]);
    assert_eq!(listed(json!({"collection": "a/x/m/d1/m"})).await, ["a/x/m/d1/m/deep"]);
    assert_eq!(listed(json!({"collection": "m"})).await, ["m/top"]);
    assert_eq!(
        listed(json!({"collection_group": "m"})).await,
        ["a/x/m/d1", "a/x/m/d1/m/deep", "a/x/m/d2", "a/x/m/d2/n/e/m/deeper", "b/x/m/other", "m/top"]
    );
    for path in paths {
        let doc = store.get(DocPath::parse(path).expect("path")).await.expect("get");
        assert!(doc.is_some(), "{path}");
    }
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_write_appends_to_the_log_and_publishes_after_commit() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path(), Vec::new()).await;
    let mut receiver = store.bus().subscribe();
    let path = DocPath::parse("c/one").expect("path");
    let set = |n: i64| Write {
        path: path.clone(),
        op: WriteOp::Set(json!({"n": n}).as_object().cloned().unwrap_or_default()),
        if_version: None,
    };
    store.write(vec![set(1)]).await.expect("create");
    store.write(vec![set(2)]).await.expect("update");
    let failed = store.write(vec![Write { if_version: Some(9), ..set(3) }]).await;
    assert!(matches!(failed, Err(Error::FailedPrecondition(_))));
    store.write(vec![Write { path: path.clone(), op: WriteOp::Delete, if_version: None }]).await.expect("delete");
    let logged = store.changes_since(0, 100).await.expect("log");
    let kinds: Vec<ChangeKind> = logged.iter().map(|change| change.kind).collect();
    assert_eq!(kinds, [ChangeKind::Create, ChangeKind::Update, ChangeKind::Delete]);
    assert!(logged.windows(2).all(|pair| pair[0].seq < pair[1].seq));
    assert_eq!(logged[1].old.as_ref().map(|doc| doc.data["n"].clone()), Some(json!(1)));
    assert_eq!(logged[1].doc.as_ref().map(|doc| doc.version), Some(2));
    let mut published = Vec::new();
    for _ in 0..3 {
        published.extend(receiver.recv().await.expect("published").iter().map(|change| change.seq));
    }
    assert_eq!(published, logged.iter().map(|change| change.seq).collect::<Vec<_>>());
    assert_eq!(store.prune_changes(i64::MAX).await.expect("pruned"), 3);
    store.write(vec![set(5)]).await.expect("create again");
    let after = store.changes_since(0, 10).await.expect("log");
    assert!(after[0].seq > logged[2].seq, "a pruned seq is never reused");
}

/// Refuses creates, allows replaces: what a rule like `update = "true"` with no `create`
/// does.
struct ReplacesOnly;

impl crate::store::WriteGuard for ReplacesOnly {
    fn check(
        &self,
        path: &DocPath,
        before: Option<&StoredDoc>,
        _after: Option<&StoredDoc>,
        _lookup: &mut dyn FnMut(&DocPath) -> Result<Option<StoredDoc>, Error>,
    ) -> Result<(), Error> {
        match before {
            Some(_) => Ok(()),
            None => Err(Error::PermissionDenied(format!("no creating `{path}`"))),
        }
    }

    fn check_ahead<'a>(
        &'a self,
        path: &'a DocPath,
        before: Option<&'a StoredDoc>,
        after: Option<&'a StoredDoc>,
    ) -> futures::future::BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move { self.check(path, before, after, &mut |_| Ok(None)) })
    }
}

/// A set is tried as a create first; a stored document, or a guard that refuses the
/// create, make it a replace decided against what is stored.
#[tokio::test]
async fn a_set_tried_as_a_create_is_decided_against_what_is_stored() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path(), Vec::new()).await;
    let set = |path: &str, n: i64| Write {
        path: DocPath::parse(path).expect("path"),
        op: WriteOp::Set(json!({"n": n}).as_object().cloned().unwrap_or_default()),
        if_version: None,
    };
    let first = store.write(vec![set("s/a", 1)]).await.expect("created");
    let created = first[0].doc.clone().expect("doc");
    std::thread::sleep(std::time::Duration::from_millis(2));

    let guard: Arc<dyn crate::store::WriteGuard> = Arc::new(ReplacesOnly);
    let replaced = store.write_guarded(vec![set("s/a", 2)], Some(guard.clone())).await.expect("a replace is allowed");
    let doc = replaced[0].doc.clone().expect("doc");
    assert_eq!((doc.version, doc.created_at, doc.data["n"].clone()), (2, created.created_at, json!(2)));
    assert!(doc.updated_at > created.updated_at);
    let refused = store.write_guarded(vec![set("s/new", 1)], Some(guard)).await;
    assert!(matches!(refused, Err(Error::PermissionDenied(_))), "{refused:?}");
    assert!(store.get(DocPath::parse("s/new").expect("path")).await.expect("read").is_none());

    // Twice in one batch: the second finds the first.
    let batch = store.batch(vec![set("s/b", 1), set("s/b", 2)]).await.expect("batch");
    assert_eq!(
        batch[1].doc.as_ref().map(|doc| (doc.version, doc.created_at)),
        Some((2, batch[0].doc.as_ref().expect("doc").created_at))
    );

    let logged = store.changes_since(0, 10).await.expect("log");
    let seen: Vec<(&str, ChangeKind, Option<i64>)> = logged
        .iter()
        .map(|change| (change.path.as_str(), change.kind, change.old.as_ref().map(|old| old.version)))
        .collect();
    assert_eq!(
        seen,
        [
            ("s/a", ChangeKind::Create, None),
            ("s/a", ChangeKind::Update, Some(1)),
            ("s/b", ChangeKind::Create, None),
            ("s/b", ChangeKind::Update, Some(1)),
        ]
    );
    let stored = store.get(DocPath::parse("s/a").expect("path")).await.expect("read").expect("exists");
    assert_eq!((stored.version, stored.created_at), (2, created.created_at));
}

/// Every change the log gives back, however it is paged, with the documents before and
/// after it exactly as the bus published them at commit. The log keeps each version once
/// (as the next change's `old`, or in `documents` while it is current), so this covers
/// changes followed in the same page, in a later page, and not at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_gives_back_every_version_the_bus_published() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path(), Vec::new()).await;
    let mut receiver = store.bus().subscribe();
    let mut rng = StdRng::seed_from_u64(11);
    for _ in 0..80 {
        // Concurrent requests on four paths, so that groups hold several changes of a path.
        let mut requests = Vec::new();
        for _ in 0..rng.random_range(1..6) {
            let write = |rng: &mut StdRng| Write {
                path: DocPath::parse(&format!("v/d{}", rng.random_range(0..4))).expect("path"),
                op: match rng.random_range(0..4) {
                    0 => WriteOp::Delete,
                    1 => WriteOp::Create(random_doc(rng)),
                    _ => WriteOp::Set(random_doc(rng)),
                },
                if_version: None,
            };
            let writes: Vec<Write> = (0..rng.random_range(1..4)).map(|_| write(&mut rng)).collect();
            let store = store.clone();
            // Some fail (a create of a path that exists); what they tried is not logged.
            requests.push(tokio::spawn(async move { store.batch(writes).await }));
        }
        for request in requests {
            let _ = request.await.expect("task");
        }
    }
    let logged = store.changes_since(0, 10_000).await.expect("log");
    let last = logged.last().expect("some writes succeeded").seq;
    let mut published = Vec::new();
    while published.last().is_none_or(|change: &Change| change.seq < last) {
        published.extend(receiver.recv().await.expect("published").iter().cloned());
    }
    let key = |change: &Change| (change.seq, change.kind, change.path.clone(), change.doc.clone(), change.old.clone());
    let expected: Vec<_> = published.iter().map(key).collect();
    assert!(expected.iter().any(|(_, kind, ..)| *kind == ChangeKind::Delete), "the mix has deletes");
    for page in [1, 2, 5, 10_000] {
        let mut read = Vec::new();
        let mut after = 0;
        loop {
            let changes = store.changes_since(after, page).await.expect("log");
            let Some(change) = changes.last() else { break };
            after = change.seq;
            read.extend(changes.iter().map(key));
        }
        assert_eq!(read, expected, "read in pages of {page}");
    }
    // Finding a path's next change is an index seek, not a scan of the log.
    let conn = rusqlite::Connection::open(dir.path().join("test.db")).expect("opens");
    let plan: String = conn
        .query_row(&format!("EXPLAIN QUERY PLAN {NEXT_CHANGE_OLD}"), rusqlite::params!["v/d1", 3], |row| row.get(3))
        .expect("plan");
    assert!(plan.contains("changes_next_by_path"), "{plan}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_logged_with_their_document_before_migration_9_still_read() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path(), Vec::new()).await;
    let path = DocPath::parse("c/old").expect("path");
    let data = json!({"n": 1}).as_object().cloned().unwrap_or_default();
    store.write(vec![Write { path, op: WriteOp::Set(data), if_version: None }]).await.expect("create");
    // A row as the log wrote it before: the document after the change in `doc`.
    let conn = rusqlite::Connection::open(dir.path().join("test.db")).expect("opens");
    conn.execute(r#"UPDATE changes SET doc = '{"v":1,"c":5,"u":5,"d":{"n":"logged"}}'"#, []).expect("legacy row");
    let logged = store.changes_since(0, 10).await.expect("log");
    let doc = logged[0].doc.as_ref().expect("a create has a document after it");
    assert_eq!((doc.data["n"].clone(), doc.created_at), (json!("logged"), 5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_request_in_a_group_commit_fails_alone() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path(), Vec::new()).await;
    let data = |n: i64| json!({"n": n}).as_object().cloned().unwrap_or_default();
    store
        .write(vec![Write {
            path: DocPath::parse("g/taken").expect("path"),
            op: WriteOp::Set(data(0)),
            if_version: None,
        }])
        .await
        .expect("seeded");
    let mut requests = Vec::new();
    for i in 0..200i64 {
        let store = store.clone();
        requests.push(tokio::spawn(async move {
            let writes = match i % 4 {
                // Fails: the path exists.
                0 => vec![Write {
                    path: DocPath::parse("g/taken").expect("path"),
                    op: WriteOp::Create(data(i)),
                    if_version: None,
                }],
                // Fails at its second write; its first write must not survive.
                1 => vec![
                    Write {
                        path: DocPath::parse(&format!("g/partial{i}")).expect("path"),
                        op: WriteOp::Set(data(i)),
                        if_version: None,
                    },
                    Write {
                        path: DocPath::parse("g/taken").expect("path"),
                        op: WriteOp::Set(data(i)),
                        if_version: Some(99),
                    },
                ],
                _ => vec![Write {
                    path: DocPath::parse(&format!("g/ok{i}")).expect("path"),
                    op: WriteOp::Create(data(i)),
                    if_version: None,
                }],
            };
            (i, store.batch(writes).await)
        }));
    }
    for request in requests {
        let (i, result) = request.await.expect("task");
        match i % 4 {
            0 => assert!(matches!(result, Err(Error::InBatch { index: 0, .. })), "{i}: {result:?}"),
            1 => assert!(matches!(result, Err(Error::InBatch { index: 1, .. })), "{i}: {result:?}"),
            _ => assert!(result.is_ok(), "{i}: {result:?}"),
        }
    }
    let spec = QuerySpec::parse(
        &serde_json::from_value(json!({"collection": "g", "limit": 1000})).expect("wire"),
        store.cursors(),
    )
    .expect("valid");
    let page = store.query(spec).await.expect("runs");
    let ids: Vec<&str> = page.docs.iter().map(|doc| doc.path.id()).collect();
    assert_eq!(ids.len(), 101, "100 creates and the seed");
    assert!(ids.iter().all(|id| !id.starts_with("partial")), "a failed request left a write behind");
    let taken = store.get(DocPath::parse("g/taken").expect("path")).await.expect("read").expect("exists");
    assert_eq!((taken.version, taken.data["n"].clone()), (1, json!(0)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruning_a_large_log_goes_in_slices_and_misses_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path(), Vec::new()).await;
    write_many(&store, "p", 12_500, |_| json!({})).await;
    assert_eq!(store.prune_changes(i64::MAX).await.expect("pruned"), 12_500);
    assert!(store.changes_since(0, 10).await.expect("log").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruning_keeps_what_a_trigger_has_not_handled() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path(), Vec::new()).await;
    let path = DocPath::parse("c/one").expect("path");
    for n in 0..5 {
        let data = json!({"n": n}).as_object().cloned().unwrap_or_default();
        store.write(vec![Write { path: path.clone(), op: WriteOp::Set(data), if_version: None }]).await.expect("write");
    }
    let seqs: Vec<i64> = store.changes_since(0, 10).await.expect("log").iter().map(|change| change.seq).collect();
    let backend = store.backend();
    backend.set_trigger_cursor("slow".into(), seqs[1]).await.expect("cursor");
    backend.set_trigger_cursor("fast".into(), seqs[4]).await.expect("cursor");
    assert_eq!(store.prune_changes(i64::MAX).await.expect("pruned"), 2, "up to the slowest trigger's cursor");
    backend.retain_trigger_cursors(vec!["fast".into()]).await.expect("undeployed");
    assert_eq!(backend.trigger_cursor("slow".into()).await.expect("read"), None);
    assert_eq!(store.prune_changes(i64::MAX).await.expect("pruned"), 3, "the rest, once `slow` is undeployed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruning_keeps_the_changes_inside_the_retention_window() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path(), Vec::new()).await;
    let write = |n: i64| Write {
        path: DocPath::parse(&format!("c/d{n}")).expect("path"),
        op: WriteOp::Set(json!({"n": n}).as_object().cloned().unwrap_or_default()),
        if_version: None,
    };
    for n in 0..3 {
        store.write(vec![write(n)]).await.expect("old write");
    }
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let cutoff = crate::store::now_micros();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    for n in 3..5 {
        store.write(vec![write(n)]).await.expect("recent write");
    }
    assert_eq!(store.prune_changes(cutoff).await.expect("pruned"), 3, "the three older than the cutoff");
    let kept: Vec<String> =
        store.changes_since(0, 10).await.expect("log").iter().map(|change| change.path.to_string()).collect();
    assert_eq!(kept, ["c/d3", "c/d4"]);
    assert_eq!(store.prune_changes(cutoff).await.expect("pruned again"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_query_moves_off_the_async_worker_and_still_answers() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path(), Vec::new()).await;
    write_many(&store, "big", 5_000, |n| json!({"n": n})).await;
    // No index on `n`: the whole collection is scanned, far past the inline step budget.
    let spec = QuerySpec::parse(
        &serde_json::from_value(json!({"collection": "big", "where": [{"field": "n", "op": ">=", "value": 4998}]}))
            .expect("wire"),
        store.cursors(),
    )
    .expect("valid");
    let page = store.query(spec).await.expect("runs to the end");
    let ids: Vec<&str> = page.docs.iter().map(|doc| doc.path.id()).collect();
    assert_eq!(ids, ["d04998", "d04999"]);
}

#[tokio::test]
async fn a_backup_of_a_newer_schema_or_a_damaged_file_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path(), Vec::new()).await;
    write_many(&store, "notes", 3, |i| json!({"i": i})).await;
    let copy = dir.path().join("copy.db");
    store.backend().backup(copy.clone()).await.expect("backup");
    assert_eq!(last_seq(&Connection::open(&copy).expect("copy opens")).expect("seq"), 3);
    store.close().await;
    let live = dir.path().join("test.db");

    let newer = dir.path().join("newer.db");
    std::fs::copy(&copy, &newer).expect("copy");
    Connection::open(&newer)
        .and_then(|conn| conn.execute("INSERT INTO _hearth_migrations VALUES (9999, 'future', 0)", []))
        .expect("a future migration");
    let refused = restore(&live, &newer).expect_err("refused").to_string();
    assert!(refused.contains("made by a newer Hearth (schema 9999"), "{refused}");

    let damaged = dir.path().join("damaged.db");
    let mut bytes = std::fs::read(&copy).expect("read");
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&damaged, bytes).expect("write");
    assert!(restore(&live, &damaged).is_err(), "half a database is refused");

    let store = open(dir.path(), Vec::new()).await;
    let spec =
        QuerySpec::parse(&serde_json::from_value(json!({"collection": "notes"})).expect("wire"), store.cursors())
            .expect("valid");
    let page = store.query(spec).await.expect("query");
    assert_eq!(page.docs.len(), 3, "the live database is untouched");
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_from_before_migrations_10_and_11_carry_over_under_one_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    {
        // A database as migration 9 left it, with documents in the path-keyed table.
        let mut conn = Connection::open(dir.path().join("test.db")).expect("opens");
        conn.execute_batch("PRAGMA journal_mode = WAL").expect("wal");
        conn.execute_batch(
            "CREATE TABLE _hearth_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)",
        )
        .expect("table");
        let tx = conn.transaction().expect("tx");
        for (version, name, sql) in MIGRATIONS.iter().filter(|(version, ..)| *version <= 9) {
            tx.execute_batch(sql).expect("old migration");
            tx.execute("INSERT INTO _hearth_migrations VALUES (?1, ?2, 0)", rusqlite::params![version, name])
                .expect("recorded");
        }
        for (path, collection, id, owner) in [("rooms/r1", "rooms", "r1", "ann"), ("rooms/r2", "rooms", "r2", "bob")] {
            tx.execute(
                "INSERT INTO documents VALUES (?1, ?2, ?2, ?3, jsonb(?4), 1, 5, 5)",
                rusqlite::params![path, collection, id, json!({"owner": owner}).to_string()],
            )
            .expect("old row");
        }
        // Enough data that the old table's pages, once freed, are most of the file.
        let body = "x".repeat(1000);
        for n in 0..500 {
            tx.execute(
                "INSERT INTO documents VALUES (?1, 'bulk', 'bulk', ?2, jsonb(?3), 1, 5, 5)",
                rusqlite::params![format!("bulk/b{n}"), format!("b{n}"), json!({"body": body}).to_string()],
            )
            .expect("bulk row");
        }
        tx.commit().expect("commit");
    }
    let field = Field::parse("owner").expect("field");
    let rooms = Target::Collection(crate::store::CollectionPath::parse("rooms").expect("path"));
    let store = open(dir.path(), vec![IndexDef { target: rooms, fields: vec![(field, Direction::Asc)] }]).await;

    let r1 = store.get(DocPath::parse("rooms/r1").expect("path")).await.expect("get").expect("carried over");
    assert_eq!((r1.data["owner"].clone(), r1.version, r1.created_at), (json!("ann"), 1, 5));
    // The path is still unique: a create of a taken path fails, a set updates in place.
    let data = |owner: &str| json!({"owner": owner}).as_object().cloned().unwrap_or_default();
    let taken = store
        .write(vec![Write {
            path: DocPath::parse("rooms/r2").expect("path"),
            op: WriteOp::Create(data("eve")),
            if_version: None,
        }])
        .await;
    assert!(matches!(taken, Err(Error::AlreadyExists(_))), "{taken:?}");
    let set = DocPath::parse("rooms/r2").expect("path");
    store.write(vec![Write { path: set.clone(), op: WriteOp::Set(data("eve")), if_version: None }]).await.expect("set");
    assert_eq!(store.get(set).await.expect("get").expect("kept").version, 2);

    let conn = Connection::open(dir.path().join("test.db")).expect("opens");
    let rows: i64 = conn
        .query_row("SELECT count(*) FROM documents WHERE collection = 'rooms'", [], |row| row.get(0))
        .expect("count");
    assert_eq!(rows, 2, "one row per path after the update");
    let bulk: i64 = conn
        .query_row("SELECT count(*) FROM documents WHERE collection = 'bulk'", [], |row| row.get(0))
        .expect("count");
    assert_eq!(bulk, 500);
    // The rebuild's freed pages were given back: the file holds little free space.
    let pages: i64 = conn.query_row("PRAGMA page_count", [], |row| row.get(0)).expect("pages");
    let free: i64 = conn.query_row("PRAGMA freelist_count", [], |row| row.get(0)).expect("free");
    assert!(free * 10 < pages, "{free} of {pages} pages free after the upgrade");
    // A point read is one seek in the key, and the declared index was made again.
    let plan: String = conn
        .query_row(
            "EXPLAIN QUERY PLAN SELECT data FROM documents WHERE coll_id = ?1 AND path = ?2",
            ["rooms", "rooms/r1"],
            |row| row.get(3),
        )
        .expect("plan");
    assert!(plan.contains("documents_key"), "{plan}");
    let indexes: Vec<String> = conn
        .prepare(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'documents' AND name NOT LIKE 'hx%'",
        )
        .expect("indexes")
        .query_map([], |row| row.get(0))
        .expect("rows")
        .map(|name| name.expect("name"))
        .collect();
    assert_eq!(indexes, ["documents_key"], "one index over the path");
    let declared: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name LIKE 'hx%'", [], |row| row.get(0))
        .expect("indexes");
    assert_eq!(declared, 1);
}

#[test]
fn a_restart_checkpoint_and_a_backup_never_overlap() {
    let gate = Arc::new(BackupGate::default());
    // A backup counted while a RESTART is under way starts only after it.
    assert!(gate.begin_restart(), "no backup runs");
    let running = gate.begin_backup();
    let waiter = std::thread::spawn(move || {
        running.wait_for_restart();
        std::time::Instant::now()
    });
    std::thread::sleep(std::time::Duration::from_millis(30));
    let restarted = std::time::Instant::now();
    gate.end_restart();
    assert!(waiter.join().expect("waiter") >= restarted, "the backup waited for the RESTART");
    // No RESTART while a backup runs, however it ends; one may go ahead after.
    let running = gate.begin_backup();
    assert!(!gate.begin_restart());
    drop(running);
    assert!(gate.begin_restart());
    gate.end_restart();
}
