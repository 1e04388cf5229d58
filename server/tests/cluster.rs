//! Several real nodes on one PostgreSQL: one history on every node, resume across nodes
//! after a SIGKILL, work that must happen once, and settings that reach every node.
//! Runs on the PostgreSQL server `HEARTH_TEST_DATABASE_URL` names (default: the local one).

#[allow(dead_code)]
#[path = "e2e/support.rs"]
mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use reqwest::Method;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use support::{App, Client, KEY, Options, SharedProject};

/// What one subscriber heard, in order: `(type, id, version)`.
type History = Vec<(String, String, i64)>;

/// A subscriber to the whole `items` collection.
struct Subscriber {
    client: Client,
    history: History,
    resume: String,
}

const ITEMS: &str = r#"{"collection": "items", "limit": 1000}"#;

impl Subscriber {
    async fn on(app: &App) -> Subscriber {
        let mut client = Client::connect(app, Some(KEY)).await;
        let query: Value = serde_json::from_str(ITEMS).expect("query");
        client.send(json!({"op": "sub", "id": "items", "query": query})).await;
        let snapshot = client.next().await;
        assert_eq!(snapshot["op"], "snapshot", "{snapshot}");
        let resume = snapshot["resume"].as_str().expect("token").to_owned();
        let mut subscriber = Subscriber { client, history: Vec::new(), resume };
        for doc in snapshot["docs"].as_array().expect("docs") {
            subscriber.history.push(entry("added", doc));
        }
        subscriber
    }

    /// Reads until it has heard `total` entries; `false` when its node went away first.
    async fn hear(&mut self, total: usize) -> bool {
        while self.history.len() < total {
            let frame = tokio::time::timeout(Duration::from_secs(20), self.client.socket.next()).await;
            let text = match frame {
                Err(_) => panic!("heard {} of {total} entries in 20 s", self.history.len()),
                Ok(Some(Ok(Message::Text(text)))) => text,
                Ok(Some(Ok(Message::Close(_))) | Some(Err(_)) | None) => return false,
                Ok(Some(Ok(_))) => continue,
            };
            let message: Value = serde_json::from_str(text.as_str()).expect("JSON");
            assert_eq!(message["op"], "changes", "{message}");
            for change in message["changes"].as_array().expect("changes") {
                self.history.push(entry(change["type"].as_str().expect("type"), &change["doc"]));
            }
            self.resume = message["resume"].as_str().expect("token").to_owned();
        }
        true
    }

    /// Reconnects to `app` and resumes where it stopped.
    async fn resume_on(&mut self, app: &App) {
        self.client = Client::connect(app, Some(KEY)).await;
        let query: Value = serde_json::from_str(ITEMS).expect("query");
        self.client.send(json!({"op": "sub", "id": "items", "query": query, "resume": self.resume})).await;
    }
}

fn entry(kind: &str, doc: &Value) -> (String, String, i64) {
    (kind.to_owned(), doc["id"].as_str().expect("id").to_owned(), doc["version"].as_i64().expect("version"))
}

/// What the log holds for `items`, as a subscriber to the whole collection hears it.
fn logged(project: &SharedProject) -> History {
    support::stored_rows(
        project.dir(),
        "SELECT kind, path, (CASE WHEN doc IS NULL THEN old ELSE doc END)::jsonb->>'v' \
         FROM changes WHERE path LIKE 'items/%' ORDER BY seq",
    )
    .into_iter()
    .map(|row| {
        let kind = match row[0].as_str() {
            "create" => "added",
            "update" => "modified",
            _ => "removed",
        };
        (kind.to_owned(), row[1].trim_start_matches("items/").to_owned(), row[2].parse().expect("version"))
    })
    .collect()
}

/// The documents a history leaves a subscriber holding: id → version.
fn view(history: &History) -> BTreeMap<String, i64> {
    let mut view = BTreeMap::new();
    for (kind, id, version) in history {
        match kind.as_str() {
            "removed" => view.remove(id),
            _ => view.insert(id.clone(), *version),
        };
    }
    view
}

async fn fresh_query(app: &App) -> BTreeMap<String, i64> {
    let (status, page) = app.call(Method::POST, "/v1/query", Some(json!({"collection": "items", "limit": 1000}))).await;
    assert_eq!(status, 200, "{page}");
    let docs = page["docs"].as_array().expect("docs");
    docs.iter().map(|doc| (doc["id"].as_str().expect("id").to_owned(), doc["version"].as_i64().expect("v"))).collect()
}

/// `writers` tasks, writer `w` on `nodes[w % len]`, each creating, updating and deleting
/// its own documents.
async fn write_load(nodes: &[&App], writers: usize, rounds: usize) {
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (client, base) = (nodes[w % nodes.len()].client.clone(), format!("http://{}", nodes[w % nodes.len()].addr));
        tasks.push(tokio::spawn(async move {
            for i in 0..rounds {
                let url = format!("{base}/v1/docs/items/w{w}-{}", i / 3);
                let request = match i % 3 {
                    0 => client.put(&url).json(&json!({"w": w, "i": i})),
                    1 => client.patch(&url).json(&json!({"i": i})),
                    _ if i % 2 == 0 => client.delete(&url),
                    _ => client.patch(&url).json(&json!({"last": true})),
                };
                let response = request.bearer_auth(KEY).send().await.expect("sent");
                assert!(response.status().is_success(), "{}", response.text().await.unwrap_or_default());
            }
        }));
    }
    for task in tasks {
        task.await.expect("writer");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subscriber_on_every_node_hears_every_change_once_in_one_order() {
    let project = SharedProject::new("");
    // One after the other: the first start makes the project's at-rest key the others use.
    let nodes: Vec<App> = (0..3).map(|_| App::start_in(project.dir(), &Options::default())).collect();
    let mut subscribers = Vec::new();
    for node in &nodes {
        for _ in 0..2 {
            subscribers.push(Subscriber::on(node).await);
        }
    }

    // Eight writers spread over the three nodes.
    write_load(&nodes.iter().collect::<Vec<_>>(), 8, 24).await;
    let log = logged(&project);
    assert_eq!(log.len(), 8 * 24, "every write logged once");
    for subscriber in &mut subscribers {
        assert!(subscriber.hear(log.len()).await, "no node went away");
        assert_eq!(subscriber.history, log, "every change once, in the log's order");
    }
    let fresh = fresh_query(&nodes[1]).await;
    assert_eq!(view(&subscribers[0].history), fresh, "the view a subscriber holds is a fresh query's");

    // A node killed mid-stream: its subscribers resume on another node and lose nothing.
    let mut nodes = nodes;
    let mut doomed = nodes.pop().expect("three nodes");
    let load = {
        let survivors: Vec<(reqwest::Client, String)> =
            nodes.iter().map(|n| (n.client.clone(), n.addr.clone())).collect();
        tokio::spawn(async move {
            let mut tasks = Vec::new();
            for w in 0..8 {
                let (client, addr) = survivors[w % survivors.len()].clone();
                tasks.push(tokio::spawn(async move {
                    for i in 0..30 {
                        let url = format!("http://{addr}/v1/docs/items/late{w}-{i}");
                        let response = client.put(&url).json(&json!({"i": i})).bearer_auth(KEY).send().await;
                        assert!(response.expect("sent").status().is_success());
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }));
            }
            for task in tasks {
                task.await.expect("writer");
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    doomed.kill_hard();
    load.await.expect("the load on the other nodes");
    let log = logged(&project);
    assert_eq!(log.len(), 8 * 24 + 8 * 30);
    let mut resumed = 0;
    for (index, subscriber) in subscribers.iter_mut().enumerate() {
        if !subscriber.hear(log.len()).await {
            assert!(index >= 4, "only the killed node's subscribers lose their socket");
            resumed += 1;
            subscriber.resume_on(&nodes[index % 2]).await;
            assert!(subscriber.hear(log.len()).await, "the other node stays up");
        }
        assert_eq!(subscriber.history, log, "subscriber {index}: nothing lost, nothing twice, in order");
    }
    assert_eq!(resumed, 2, "the node was killed mid-stream");
    assert_eq!(view(&subscribers[5].history), fresh_query(&nodes[0]).await);
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_and_broadcast_reach_members_on_every_node() {
    let project = SharedProject::new("");
    let nodes: Vec<App> = (0..2).map(|_| App::start_in(project.dir(), &Options::default())).collect();
    let mut a = Client::connect(&nodes[0], Some(KEY)).await;
    let mut b = Client::connect(&nodes[1], Some(KEY)).await;
    a.send(json!({"op": "join", "channel": "room:1", "presence": {"name": "a"}})).await;
    let first = a.next().await;
    assert_eq!(first["op"], "presence", "{first}");
    b.send(json!({"op": "join", "channel": "room:1", "presence": {"name": "b"}})).await;
    let joined = b.next().await;
    assert_eq!(joined["joins"].as_object().map(|joins| joins.len()), Some(2), "b sees a on the other node: {joined}");
    let seen_by_a = a.next().await;
    assert_eq!(seen_by_a["joins"].as_object().map(|joins| joins.len()), Some(1), "{seen_by_a}");
    b.send(json!({"op": "broadcast", "channel": "room:1", "event": "typing", "payload": {"by": "b"}})).await;
    let heard = a.next().await;
    assert_eq!((heard["op"].clone(), heard["payload"]["by"].clone()), (json!("broadcast"), json!("b")), "{heard}");
    drop(b);
    let left = a.next().await;
    assert_eq!(left["leaves"].as_object().map(|leaves| leaves.len()), Some(1), "{left}");

    // A node that starts later learns who is already there.
    let mut late = App::start_in(project.dir(), &Options::default());
    let mut c = Client::connect(&late, Some(KEY)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        c.send(json!({"op": "join", "channel": "room:1", "presence": {"name": "c"}})).await;
        let joined = c.next().await;
        if joined["joins"].as_object().map(|joins| joins.len()) == Some(2) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the late node never learned of a: {joined}");
        c.send(json!({"op": "leave", "channel": "room:1"})).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Joins (and leaves) of c's retries reach a; what counts is that c is there at the end.
    let mut present = std::collections::BTreeSet::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !(present.len() == 1 && present.iter().all(|id: &String| id.contains('-'))) {
        assert!(std::time::Instant::now() < deadline, "a never saw c: {present:?}");
        let message = a.next().await;
        for id in message["joins"].as_object().into_iter().flatten().map(|(id, _)| id) {
            present.insert(id.clone());
        }
        for id in message["leaves"].as_object().into_iter().flatten().map(|(id, _)| id) {
            present.remove(id);
        }
    }

    // A node killed outright: its members leave on the others once it falls silent.
    late.kill_hard();
    let gone = loop {
        let frame = tokio::time::timeout(Duration::from_secs(20), a.socket.next()).await.expect("c leaves in 20 s");
        if let Some(Ok(Message::Text(text))) = frame {
            break serde_json::from_str::<Value>(text.as_str()).expect("JSON");
        }
    };
    let leaves: Vec<&String> = gone["leaves"].as_object().expect("leaves").keys().collect();
    assert_eq!(leaves, present.iter().collect::<Vec<_>>(), "{gone}");
}

const ONCE: &str = r#"
import { onDocumentWritten, schedule } from "hearth";
export const work = onDocumentWritten("jobs/{id}", async (event, ctx) => {
  if (event.kind === "create") await ctx.db.set(`runs/${event.params.id}`, { n: { $increment: 1 }, seq: event.seq });
});
export const tick = schedule("* * * * * *", async (ctx, tick) => {
  await ctx.db.set(`ticks/${tick.tick.replace(/[^0-9]/g, "")}`, { n: { $increment: 1 } });
});
"#;

/// Every document of a collection: id → data.
async fn all(app: &App, collection: &str) -> BTreeMap<String, Value> {
    let (status, page) =
        app.call(Method::POST, "/v1/query", Some(json!({"collection": collection, "limit": 1000}))).await;
    assert_eq!(status, 200, "{page}");
    let docs = page["docs"].as_array().expect("docs").iter();
    docs.map(|doc| (doc["id"].as_str().expect("id").to_owned(), doc["data"].clone())).collect()
}

async fn until_count(app: &App, collection: &str, count: usize) -> BTreeMap<String, Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let docs = all(app, collection).await;
        if docs.len() >= count {
            return docs;
        }
        assert!(std::time::Instant::now() < deadline, "{} of {count} in {collection}", docs.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triggers_run_once_across_the_nodes_and_a_dead_holder_is_taken_over() {
    let project = SharedProject::new("");
    let mut nodes: Vec<App> = (0..3).map(|_| App::start_in(project.dir(), &Options::default())).collect();
    let request = nodes[0].admin(Method::PUT, "/v1/admin/functions/once.js").body(ONCE);
    let (status, body) = nodes[0].send(request).await;
    assert_eq!(status, 200, "{body}");
    // Every node follows the functions dir: give the others a moment to load it.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    for i in 0..60 {
        let node = &nodes[i % 3];
        let (status, body) = node.call(Method::PUT, &format!("/v1/docs/jobs/j{i}"), Some(json!({"i": i}))).await;
        assert_eq!(status, 201, "{body}");
    }
    let runs = until_count(&nodes[1], "runs", 60).await;
    assert!(runs.values().all(|run| run["n"] == 1), "each event ran once on one node: {runs:?}");
    let ticks = until_count(&nodes[2], "ticks", 3).await;
    assert!(ticks.values().all(|tick| tick["n"] == 1), "each tick fired once across three nodes: {ticks:?}");

    // The node following the trigger dies; another takes over from the saved cursor.
    let rows = support::stored_rows(project.dir(), "SELECT holder FROM leases WHERE name = 'trigger:work'");
    let pid: u32 = rows[0][0].split('-').next().and_then(|pid| pid.parse().ok()).expect("a holder's pid");
    let index = nodes.iter().position(|node| node.child.id() == pid).expect("a node holds the lease");
    nodes.remove(index).kill_hard();
    for i in 60..90 {
        let node = &nodes[i % 2];
        let (status, body) = node.call(Method::PUT, &format!("/v1/docs/jobs/j{i}"), Some(json!({"i": i}))).await;
        assert_eq!(status, 201, "{body}");
    }
    let runs = until_count(&nodes[0], "runs", 90).await;
    assert_eq!(runs.len(), 90, "every event ran after the takeover");
    let ticks = all(&nodes[0], "ticks").await;
    assert!(ticks.values().all(|tick| tick["n"] == 1), "{ticks:?}");
}
