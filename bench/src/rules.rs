//! `hearth-bench rules`: what access rules cost. In process, the cost of one rule check
//! per document; over HTTP, "my 20 documents" out of 100,000 with the rule pushed into
//! the query against the same query made with the service key, and creates with a
//! `get()`-based rule against no rule.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use hearth_server::rules::eval::json_value;
use hearth_server::rules::{Access, Decision, Op, Principal, RuleSet};
use hearth_server::store::{DocPath, StoredDoc};
use serde_json::json;

use super::*;

const RULES: &str = r#"
["items/{id}"]
read = "auth != null && resource.data.owner == auth.uid"

["projects/{project}/tasks/{task}"]
create = "auth != null && auth.uid in get('projects/' + project).data.members"

["open/{id}"]
create = "auth != null"
"#;

fn stored(path: &str, data: serde_json::Value) -> StoredDoc {
    StoredDoc {
        path: DocPath::parse(path).expect("path"),
        data: data.as_object().cloned().expect("object"),
        version: 1,
        created_at: 0,
        updated_at: 0,
    }
}

/// Nanoseconds per decision, over `rounds` decisions.
fn per_check(rounds: u32, mut check: impl FnMut() -> Decision) -> f64 {
    for _ in 0..rounds / 10 {
        assert_eq!(check(), Decision::Allow);
    }
    let started = Instant::now();
    for _ in 0..rounds {
        std::hint::black_box(check());
    }
    started.elapsed().as_nanos() as f64 / f64::from(rounds)
}

fn check_costs(quick: bool) {
    let rounds = if quick { 20_000 } else { 200_000 };
    let set = RuleSet::parse(RULES).expect("rules compile");
    let principal = Principal::from_value(json_value(&json!({
        "uid": "u7", "email": "u7@example.com", "email_verified": true, "anonymous": false, "claims": {}
    })));
    let item: serde_json::Value = serde_json::from_str(&document(7)).expect("document");
    let item = stored("items/i7", item);
    let project = stored("projects/p1", json!({"name": "p", "members": ["u1", "u2", "u7", "u9"]}));
    let task = stored("projects/p1/tasks/t1", json!({"title": "a task", "done": false}));
    let world: HashMap<String, StoredDoc> = HashMap::from([("projects/p1".to_owned(), project)]);
    let ownership = per_check(rounds, || {
        let access = Access { op: Op::Get, path: &item.path, before: Some(&item), after: None, time: 0 };
        set.decide_sync(&principal, &access, &mut |_| Ok(None)).expect("decides")
    });
    let lookup = per_check(rounds, || {
        let access = Access { op: Op::Create, path: &task.path, before: None, after: Some(&task), time: 0 };
        set.decide_sync(&principal, &access, &mut |path| Ok(world.get(path.as_str()).cloned())).expect("decides")
    });
    println!("rule check, ownership rule on a 1 KB document: {ownership:.0} ns");
    println!("rule check, create rule with one get() (document served from memory): {lookup:.0} ns\n");
}

pub async fn rules_bench(phase: Duration, quick: bool) {
    println!("# Hearth rules benchmark\n");
    println!("machine: {} cores, {}; {} s per phase\n", cores(), cpu_model(), phase.as_secs());
    check_costs(quick);
    let hearth = start_hearth(true);
    let addr = hearth.addr;
    put_rules(addr).await;
    let session = request_json(
        addr,
        Method::POST,
        "/v1/auth/signup",
        json!({"email": "owner@example.com", "password": "correct horse battery staple"}),
        KEY,
    )
    .await;
    let token = session["access_token"].as_str().expect("signed up").to_owned();
    let uid = session["user"]["id"].as_str().expect("uid").to_owned();
    let seeded = if quick { 20_000 } else { SEEDED };
    let outcome = seed(addr, seeded).await;
    eprintln!("seeded: {}", outcome.row());
    // The user owns 20 of the documents.
    let writes: Vec<serde_json::Value> = (0..20)
        .map(|i| json!({"op": "update", "path": format!("items/i{}", i * 997), "data": {"owner": uid}}))
        .collect();
    request_json(addr, Method::POST, "/v1/batch", json!({"writes": writes}), KEY).await;
    request_json(addr, Method::PUT, "/v1/docs/projects/p1", json!({"members": ["someone", uid]}), KEY).await;
    tokio::time::sleep(if quick { Duration::from_secs(1) } else { Duration::from_secs(5) }).await;

    println!("| phase | req/s | p50 ms | p99 ms | errors | rows |");
    println!("|---|---|---|---|---|---|");
    let filtered = format!(
        r#"{{"collection":"items","where":[{{"field":"owner","op":"==","value":"{uid}"}}],"order_by":[{{"field":"score","dir":"desc"}}],"limit":20}}"#
    );
    let unfiltered = r#"{"collection":"items","order_by":[{"field":"score","dir":"desc"}],"limit":20}"#;
    let query = |body: String| -> MakeRequest {
        Arc::new(move |_| (Method::POST, "/v1/query".into(), Some(Bytes::from(body.clone()))))
    };
    let service = load(
        &format!("my 20 of {seeded}, service key, `owner ==` filter, c=16"),
        addr,
        16,
        Budget::Time(phase),
        query(filtered.clone()),
    )
    .await;
    println!("{}", service.row());
    let user_filtered = load_as(
        &format!("my 20 of {seeded}, user + rule, `owner ==` filter, c=16"),
        addr,
        16,
        Budget::Time(phase),
        query(filtered),
        &token,
    )
    .await;
    println!("{}", user_filtered.row());
    let user_rule_only = load_as(
        &format!("my 20 of {seeded}, user + rule, no filter (the rule is the filter), c=16"),
        addr,
        16,
        Budget::Time(phase),
        query(unfiltered.to_owned()),
        &token,
    )
    .await;
    println!("{}", user_rule_only.row());

    let body = Bytes::from(r#"{"title":"a task","done":false}"#);
    let to = |path: &'static str| -> MakeRequest {
        let body = body.clone();
        Arc::new(move |_| (Method::POST, path.into(), Some(body.clone())))
    };
    let no_rule = load("create c=64, service key (no rule)", addr, 64, Budget::Time(phase), to("/v1/docs/open")).await;
    println!("{}", no_rule.row());
    let simple =
        load_as("create c=64, user, `auth != null`", addr, 64, Budget::Time(phase), to("/v1/docs/open"), &token).await;
    println!("{}", simple.row());
    let lookup = load_as(
        "create c=64, user, get() membership rule",
        addr,
        64,
        Budget::Time(phase),
        to("/v1/docs/projects/p1/tasks"),
        &token,
    )
    .await;
    println!("{}", lookup.row());
    println!();
    println!("my 20 documents, user with pushed-down rule / service key: {:.2}", user_filtered.rate() / service.rate());
    println!("  ... with the rule as the only filter / service key: {:.2}", user_rule_only.rate() / service.rate());
    println!("creates with a get() rule / no rule: {:.2}", lookup.rate() / no_rule.rate());
    println!("creates with `auth != null` / no rule: {:.2}", simple.rate() / no_rule.rate());
}

async fn put_rules(addr: SocketAddr) {
    let (status, _) = send_raw(addr, Method::PUT, "/v1/admin/rules", Bytes::from(RULES), KEY).await;
    assert_eq!(status, 204, "rules accepted");
}
