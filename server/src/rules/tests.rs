//! Rules against a real store: pushed-down conditions give exactly the documents the
//! per-document evaluation allows (in memory and in SQL), and rules that go wrong at run
//! time deny instead of failing.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use hearth_types::Query;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Map, Value, json};

use super::*;
use crate::config::StoreConfig;
use crate::store::ChangeBus;
use crate::store::query::CursorSealer;
use crate::store::sqlite::{SqliteBackend, SqliteOptions};
use crate::store::{Write, WriteOp};

async fn open(dir: &Path) -> Store {
    let bus = ChangeBus::new(1 << 20);
    let options = SqliteOptions::new(dir.join("rules.db"), &StoreConfig::default());
    let backend = SqliteBackend::open(options, bus.clone()).expect("opens");
    Store::new(Arc::new(backend), bus).await.expect("store")
}

fn user(uid: &str) -> Principal {
    Principal::from_value(eval::json_value(&json!({
        "uid": uid, "email": null, "email_verified": false, "anonymous": false, "claims": {}
    })))
}

fn pick<T: Clone>(rng: &mut StdRng, items: &[T]) -> T {
    items[rng.random_range(0..items.len())].clone()
}

/// Field values that trip type rules: ints and floats that are equal, strings that look
/// like numbers, lists, maps keyed by user ids, nulls, and absence.
fn random_data(rng: &mut StdRng) -> Map<String, Value> {
    let mut data = Map::new();
    let mut maybe = |rng: &mut StdRng, key: &str, values: &[Value]| {
        if rng.random_bool(0.85) {
            data.insert(key.to_owned(), pick(rng, values));
        }
    };
    maybe(rng, "owner", &[json!("alice"), json!("bob"), json!(1), json!(null), json!(true), json!(["alice"])]);
    maybe(rng, "n", &[json!(-1), json!(0), json!(1), json!(1.0), json!(1.5), json!("1"), json!(null), json!(false)]);
    maybe(
        rng,
        "tags",
        &[json!(["alice", "x"]), json!(["bob"]), json!([]), json!({"alice": true}), json!("alice"), json!([1, 2.0])],
    );
    maybe(rng, "o", &[json!({"k": 1}), json!({"k": "1"}), json!({}), json!("k"), json!({"k": null})]);
    data
}

const ATOMS: &[&str] = &[
    "resource.data.owner == auth.uid",
    "auth.uid == resource.data.owner",
    "resource.data.owner != auth.uid",
    "resource.data.n < 1",
    "resource.data.n <= 1.0",
    "1 < resource.data.n",
    "resource.data.n >= 0",
    "resource.data.n > '0'",
    "resource.data.n == 1",
    "resource.data.n == null",
    "resource.data.n != 1",
    "resource.data.n == false",
    "auth.uid in resource.data.tags",
    "2 in resource.data.tags",
    "resource.data.owner in ['alice', 1]",
    "resource.data.o.k == 1",
    "resource.data.o.k != null",
    "resource.id == 'd3'",
    "resource.id > 'd5'",
    "auth != null",
    "auth.uid == 'alice'",
    "true",
    "false",
];

fn random_rule(rng: &mut StdRng, depth: usize) -> String {
    if depth >= 2 || rng.random_bool(0.4) {
        return pick(rng, ATOMS).to_owned();
    }
    let joiner = if rng.random_bool(0.5) { "&&" } else { "||" };
    format!("({} {joiner} {})", random_rule(rng, depth + 1), random_rule(rng, depth + 1))
}

#[tokio::test]
async fn pushed_down_rules_allow_exactly_what_per_document_rules_allow() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path()).await;
    let mut rng = StdRng::seed_from_u64(0x5eed_0004);
    let mut docs = Vec::new();
    for i in 0..60 {
        let path = DocPath::parse(&format!("c/d{i}")).expect("path");
        let data = random_data(&mut rng);
        let written = store.write_one(Write { path, op: WriteOp::Set(data), if_version: None }).await.expect("written");
        docs.push(written.doc.expect("stored").as_ref().clone());
    }
    let signer = CursorSealer::new([9; 32]);
    let principals = [user("alice"), user("bob"), Principal::anonymous()];
    let (mut pushed, mut cases) = (0, 0);
    for _ in 0..400 {
        let rule = random_rule(&mut rng, 0);
        let set = RuleSet::parse(&format!("[\"c/{{id}}\"]\nlist = \"{rule}\"\n")).expect("compiles");
        for principal in &principals {
            cases += 1;
            let time = now_micros();
            let mut none = |_: &DocPath| Ok(None);
            let allowed: BTreeSet<String> = docs
                .iter()
                .filter(|doc| {
                    let access = Access { op: Op::List, path: &doc.path, before: Some(doc), after: None, time };
                    set.decide_sync(principal, &access, &mut none).expect("decides") == Decision::Allow
                })
                .map(|doc| doc.path.as_str().to_owned())
                .collect();
            let collection = Target::Collection(store::CollectionPath::parse("c").expect("path"));
            let plan = match set.plan_step(principal, &collection, time, &mut Lookups::default()) {
                Step::Done(plan) => plan,
                Step::Fetch(_) => panic!("no lookups in these rules"),
            };
            let condition = match plan {
                QueryPlan::Denied => {
                    assert!(allowed.is_empty(), "{rule} as {principal:?}: denied, yet {allowed:?} are readable");
                    continue;
                }
                QueryPlan::PerDocument => panic!("{rule}: every atom here can be pushed down"),
                QueryPlan::Restricted(condition) => condition,
            };
            pushed += 1;
            let in_memory: BTreeSet<String> = docs
                .iter()
                .filter(|doc| {
                    let id = Value::String(doc.path.id().to_owned());
                    condition.as_ref().is_none_or(|condition| condition.matches(doc, &id))
                })
                .map(|doc| doc.path.as_str().to_owned())
                .collect();
            assert_eq!(in_memory, allowed, "in memory: {rule} as {principal:?} → {condition:?}");
            let query: Query = serde_json::from_value(json!({"collection": "c", "limit": 1000})).expect("query");
            let mut spec = QuerySpec::parse(&query, &signer).expect("spec");
            spec.restriction = condition.clone();
            let page = store.query(spec).await.expect("query runs");
            let in_sql: BTreeSet<String> = page.docs.iter().map(|doc| doc.path.as_str().to_owned()).collect();
            assert_eq!(in_sql, allowed, "SQL: {rule} as {principal:?} → {condition:?}");
        }
    }
    assert!(pushed > cases / 3, "only {pushed} of {cases} cases were pushed down");
    store.close().await;
}

fn doc(path: &str, data: Value) -> StoredDoc {
    StoredDoc {
        path: DocPath::parse(path).expect("path"),
        data: data.as_object().cloned().expect("object"),
        version: 1,
        created_at: 0,
        updated_at: 0,
    }
}

fn decide(rules: &str, principal: &Principal, op: Op, path: &str, world: &HashMap<String, StoredDoc>) -> Decision {
    let set = RuleSet::parse(rules).expect("compiles");
    let path = DocPath::parse(path).expect("path");
    let mut reads = 0;
    let mut fetch = |path: &DocPath| {
        reads += 1;
        Ok(world.get(path.as_str()).cloned())
    };
    let access = Access::read(op, &path, world.get(path.as_str()));
    let decision = set.decide_sync(principal, &access, &mut fetch).expect("decides");
    assert!(reads <= eval::MAX_LOOKUPS, "{reads} reads");
    decision
}

#[test]
fn rules_that_fail_at_run_time_deny() {
    let world: HashMap<String, StoredDoc> = (0..20)
        .map(|i| (format!("chain/{i}"), doc(&format!("chain/{i}"), json!({"next": format!("chain/{}", i + 1)}))))
        .chain([("loop/a".to_owned(), doc("loop/a", json!({"next": "loop/a", "text": "x"})))])
        .collect();
    let anonymous = Principal::anonymous();
    let denied = |decision: Decision| assert!(matches!(decision, Decision::Deny(_)), "{decision:?}");
    // `auth.uid` when auth is null.
    denied(decide("[\"c/{id}\"]\nget = \"auth.uid == 'x'\"\n", &anonymous, Op::Get, "c/x", &world));
    // A non-bool at run time.
    denied(decide("[\"loop/{id}\"]\nget = \"resource.data.text\"\n", &anonymous, Op::Get, "loop/a", &world));
    // A malformed path built at run time.
    denied(decide("[\"c/{id}\"]\nget = \"exists('c/' + id + '/x')\"\n", &anonymous, Op::Get, "c/x", &world));
    // Following a chain past ten lookups.
    let chain = "get(get(get(get(get(get(get(get(get(get(get('chain/0').data.next).data.next).data.next)\
                 .data.next).data.next).data.next).data.next).data.next).data.next).data.next).data.next";
    let eleven = format!("[\"c/{{id}}\"]\nget = \"{chain} != ''\"\n");
    denied(decide(&eleven, &anonymous, Op::Get, "c/x", &world));
    // Ten are fine.
    let ten = "get(get(get(get(get(get(get(get(get(get('chain/0').data.next).data.next).data.next)\
               .data.next).data.next).data.next).data.next).data.next).data.next).data.next == 'chain/10'";
    assert_eq!(
        decide(&format!("[\"c/{{id}}\"]\nget = \"{ten}\"\n"), &anonymous, Op::Get, "c/x", &world),
        Decision::Allow
    );
    // A loop ends: the same document is read once.
    let looped = "get(get(get('loop/a').data.next).data.next).data.text == 'x'";
    assert_eq!(
        decide(&format!("[\"c/{{id}}\"]\nget = \"{looped}\"\n"), &anonymous, Op::Get, "c/x", &world),
        Decision::Allow
    );
    // No matching pattern.
    denied(decide("[\"c/{id}\"]\nget = \"true\"\n", &anonymous, Op::Get, "other/x", &world));
}

#[test]
fn the_most_specific_key_decides_and_any_matching_pattern_may_allow() {
    let world = HashMap::new();
    let rules = "[\"c/{id}\"]\nread = \"true\"\nget = \"false\"\nwrite = \"true\"\n";
    let nobody = Principal::anonymous();
    assert!(matches!(decide(rules, &nobody, Op::Get, "c/x", &world), Decision::Deny(_)));
    assert_eq!(decide(rules, &nobody, Op::List, "c/x", &world), Decision::Allow);
    assert_eq!(decide(rules, &nobody, Op::Delete, "c/x", &world), Decision::Allow);
    // A pattern that denies does not stop another that allows.
    let rules = "[\"c/{id}\"]\nget = \"false\"\n\n[\"{all=**}\"]\nget = \"all == 'c/open'\"\n";
    assert_eq!(decide(rules, &nobody, Op::Get, "c/open", &world), Decision::Allow);
}
