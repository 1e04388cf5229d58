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
    // Presence across nodes is eventual: a's join may reach b's node just after b joins.
    let mut present = std::collections::BTreeSet::new();
    while present.len() < 2 {
        let message = b.next().await;
        assert_eq!(message["op"], "presence", "{message}");
        present.extend(message["joins"].as_object().into_iter().flatten().map(|(id, _)| id.clone()));
    }
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

/// A second project dir on the same database, as a node on another machine has: only the
/// at-rest key is shared (as an operator copies it, or sets `encryption_key`).
fn another_dir(project: &SharedProject) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for file in ["hearth.key", ".hearth-test-database"] {
        std::fs::copy(project.dir().join(file), dir.path().join(file)).expect("copy");
    }
    dir
}

/// Asks until `check` holds for the answer (10 s at most).
async fn eventually_on(
    app: &App,
    what: &str,
    mut request: impl FnMut() -> reqwest::RequestBuilder,
    check: impl Fn(u16, &Value) -> bool,
) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = app.send(request()).await;
        if check(status.as_u16(), &body) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{what}: still {status} {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A GET with a bearer token, to send again and again.
fn get<'a>(app: &'a App, path: &'a str, token: String) -> impl FnMut() -> reqwest::RequestBuilder + 'a {
    move || app.client.get(app.url(path)).bearer_auth(&token)
}

async fn session(app: &App, email: &str) -> Value {
    let request =
        app.client.post(app.url("/v1/auth/signup")).json(&json!({"email": email, "password": "a long password"}));
    let (status, body) = app.send(request).await;
    assert_eq!(status, 200, "{body}");
    body
}

fn token(session: &Value) -> String {
    session["access_token"].as_str().expect("token").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_made_on_one_node_hold_on_the_others() {
    let project = SharedProject::new("");
    let a = App::start_in(project.dir(), &Options::default());
    let other = another_dir(&project);
    let b = App::start_in(other.path(), &Options::default());

    // Rules put on A are in force on B, whose own dir had none.
    let alice = session(&a, "alice@example.com").await;
    assert_eq!(b.send(get(&b, "/v1/docs/open/x", token(&alice))()).await.0, 403, "deny by default");
    let request = a.admin(Method::PUT, "/v1/admin/rules").body("[\"open/{id}\"]\nread = \"true\"\n");
    assert_eq!(a.send(request).await.0, 204);
    eventually_on(&b, "rules from A on B", get(&b, "/v1/docs/open/x", token(&alice)), |status, _| status == 404).await;
    assert!(std::fs::read_to_string(other.path().join("rules.toml")).expect("written").contains("open/{id}"));

    // A function deployed on B runs on A.
    let greet =
        "import { onCall } from \"hearth\";\nexport const greet = onCall(async () => ({ hello: \"from B\" }));\n";
    let (status, body) = b.send(b.admin(Method::PUT, "/v1/admin/functions/greet.js").body(greet)).await;
    assert_eq!(status, 200, "{body}");
    let call = || a.client.post(a.url("/v1/functions/greet")).json(&json!({"data": {}}));
    eventually_on(&a, "B's function on A", call, |status, body| status == 200 && body["result"]["hello"] == "from B")
        .await;

    // A sign-out on A stops the session's access token on B too.
    let token_b = token(&alice);
    assert_eq!(b.send(get(&b, "/v1/auth/user", token_b.clone())()).await.0, 200);
    let logout = a.client.post(a.url("/v1/auth/logout")).bearer_auth(&token_b).json(&json!({}));
    assert_eq!(a.send(logout).await.0, 204);
    eventually_on(&b, "A's sign-out on B", get(&b, "/v1/auth/user", token_b), |status, _| status == 401).await;

    // A user disabled on B is refused on A.
    let bob = session(&a, "bob@example.com").await;
    let uid = bob["user"]["id"].as_str().expect("uid");
    let (status, body) =
        b.call(Method::PATCH, &format!("/v1/admin/users/{uid}"), Some(json!({"disabled": true}))).await;
    assert_eq!(status, 200, "{body}");
    eventually_on(&a, "B's disabling on A", get(&a, "/v1/auth/user", token(&bob)), |status, _| status == 401).await;

    // Signing keys rotated and a service key added while both run.
    let rotated = support::hearth_command(project.dir()).args(["keys", "rotate", "--dir"]).arg(project.dir()).output();
    assert!(rotated.expect("runs").status.success());
    let added = support::hearth_command(project.dir()).args(["keys", "service", "--dir"]).arg(project.dir()).output();
    let added = added.expect("runs");
    let stdout = String::from_utf8_lossy(&added.stdout);
    let new_key = stdout.split_whitespace().find(|word| word.starts_with("hk_")).expect("a new key").to_owned();
    eventually_on(&b, "a new service key on B", get(&b, "/v1/docs/c/x", new_key.clone()), |status, _| status == 404)
        .await;
    eventually_on(&a, "a new service key on A", get(&a, "/v1/docs/c/x", new_key), |status, _| status == 404).await;
    let carol = session(&a, "carol@example.com").await;
    let header: Value = {
        use base64::Engine;
        let part = token(&carol).split('.').next().map(str::to_owned).expect("header");
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part).expect("b64"))
            .expect("json")
    };
    let (_, jwks) = b.send(b.client.get(b.url("/.well-known/jwks.json"))).await;
    let kids: Vec<&Value> = jwks["keys"].as_array().expect("keys").iter().map(|key| &key["kid"]).collect();
    assert!(kids.contains(&&header["kid"]), "B publishes the key A signs with: {kids:?}");
    assert_eq!(b.send(get(&b, "/v1/auth/user", token(&carol))()).await.0, 200, "a token A signed verifies on B");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guessing_run_spread_over_the_nodes_gains_nothing() {
    let project = SharedProject::new("[auth.rate_limit]\nfailed_logins = 6\n");
    let nodes: Vec<App> = (0..2).map(|_| App::start_in(project.dir(), &Options::default())).collect();
    session(&nodes[0], "target@example.com").await;
    let guess = |app: &App, password: &str| {
        app.client.post(app.url("/v1/auth/login")).json(&json!({"email": "target@example.com", "password": password}))
    };
    // Six wrong guesses, three on each node: the budget is the account's, not a node's.
    for i in 0..6 {
        let (status, body) = nodes[i % 2].send(guess(&nodes[i % 2], "wrong guess")).await;
        assert_eq!(status, 401, "guess {i}: {body}");
    }
    for node in &nodes {
        let (status, body) = node.send(guess(node, "a long password")).await;
        assert_eq!(status, 429, "every node refuses the next try, even the right one: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_fails_fast_and_loses_no_acknowledged_write() {
    let project = SharedProject::new("");
    let app = App::start_in(project.dir(), &Options::default());
    let client = reqwest::Client::builder().timeout(Duration::from_secs(20)).build().expect("client");
    let stop = std::time::Instant::now() + Duration::from_secs(6);
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (client, base) = (client.clone(), app.url(""));
            tokio::spawn(async move {
                let (mut acknowledged, mut statuses) = (Vec::new(), BTreeMap::<u16, usize>::new());
                let mut i = 0;
                while std::time::Instant::now() < stop {
                    let id = format!("w{w}-{i}");
                    i += 1;
                    let sent = client.put(format!("{base}/v1/docs/items/{id}")).bearer_auth(KEY).json(&json!({"i": i}));
                    let response = sent.send().await.expect("an answer, never a hang");
                    let status = response.status().as_u16();
                    *statuses.entry(status).or_default() += 1;
                    if status == 201 {
                        acknowledged.push(id);
                    } else {
                        let body: Value = response.json().await.expect("the error shape");
                        let code = if status == 503 { "unavailable" } else { "internal" };
                        assert_eq!(body["error"]["code"], code, "{body}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                (acknowledged, statuses)
            })
        })
        .collect();
    // The database goes away for two seconds: every connection cut, none let in.
    tokio::time::sleep(Duration::from_secs(1)).await;
    project.admin_sql("ALTER DATABASE {db} ALLOW_CONNECTIONS false");
    project.admin_sql("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = '{db}'");
    tokio::time::sleep(Duration::from_secs(2)).await;
    project.admin_sql("ALTER DATABASE {db} ALLOW_CONNECTIONS true");
    let (mut acknowledged, mut statuses) = (Vec::new(), BTreeMap::<u16, usize>::new());
    for writer in writers {
        let (ids, counts) = writer.await.expect("writer");
        acknowledged.extend(ids);
        for (status, count) in counts {
            *statuses.entry(status).or_default() += count;
        }
    }
    let errors: Vec<String> =
        app.output_text().lines().filter(|line| line.contains("ERROR")).take(5).map(str::to_owned).collect();
    assert!(!statuses.contains_key(&500), "{statuses:?}: {errors:#?}");
    assert!(statuses.get(&503).is_some_and(|count| *count > 0), "the outage was seen: {statuses:?}");
    assert!(statuses.get(&201).is_some_and(|count| *count > 0), "{statuses:?}");
    // The node recovers by itself, and everything it acknowledged is there.
    let (status, body) = app.call(Method::PUT, "/v1/docs/items/after", Some(json!({}))).await;
    assert_eq!(status, 201, "recovered: {body}");
    let (status, ready) = app.send(app.client.get(app.url("/readyz"))).await;
    assert_eq!(status, 200, "{ready}");
    let rows = support::stored_rows(project.dir(), "SELECT id FROM documents WHERE collection = 'items'");
    let stored: std::collections::BTreeSet<String> = rows.into_iter().map(|row| row[0].clone()).collect();
    let lost: Vec<&String> = acknowledged.iter().filter(|id| !stored.contains(*id)).collect();
    assert!(lost.is_empty(), "acknowledged and lost: {lost:?} ({statuses:?})");
    eprintln!("during the outage: {statuses:?}");
}
