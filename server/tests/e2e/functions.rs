//! The Functions section of the contract through the real binary: deploy, call, the
//! `ctx` API, and every way a function can fail alone.

use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{App, Options};

async fn deploy(app: &App, file: &str, source: &str) -> (u16, Value) {
    let request = app.admin(Method::PUT, &format!("/v1/admin/functions/{file}")).body(source.to_owned());
    let (status, body) = app.send(request).await;
    (status.as_u16(), body)
}

async fn call(app: &App, name: &str, token: Option<&str>, data: Value) -> (u16, Value) {
    let mut request = app.client.post(app.url(&format!("/v1/functions/{name}"))).json(&json!({ "data": data }));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let (status, body) = app.send(request).await;
    (status.as_u16(), body)
}

const GREET: &str = r#"
import { onCall, HearthError } from "hearth";

export const greet = onCall(async (data, ctx) => {
  console.log("greeting", data.name);
  return { hello: ctx.auth ? ctx.auth.uid : "stranger", echo: data };
});

export const refuse = onCall(() => {
  throw new HearthError("permission-denied", "not today");
});

export const oddCode = onCall(() => {
  throw new HearthError("teapot", "short and stout");
});

export const crash = onCall(() => {
  throw new Error("secret internals at line 12");
});

export const count = onCall(async (data, ctx) => {
  const before = await ctx.db.get(`counters/${data.id}`);
  await ctx.db.set(`counters/${data.id}`, { n: 0, ...(before ? before.data : {}) });
  const after = await ctx.db.update(`counters/${data.id}`, { n: { $increment: 1 } });
  const page = await ctx.db.query({ collection: "counters" });
  return { n: after.data.n, version: after.version, listed: page.docs.length };
});

export const badWrite = onCall(async (data, ctx) => {
  await ctx.db.update("counters/none", { n: 1 });
});
"#;

const RUNAWAY: &str = r#"
import { onCall } from "hearth";

export const spin = onCall(() => { for (;;) {} });
export const hog = onCall(() => {
  const chunks = [];
  for (;;) chunks.push(new Array(1 << 20).fill(7));
});
export const hang = onCall(() => new Promise(() => {}));
export const gigabyte = onCall(() => new ArrayBuffer(1024 * 1024 * 1024).byteLength);
export const fine = onCall((data) => data.n * 2);
"#;

#[tokio::test]
async fn a_deployed_callable_answers_with_the_caller_and_its_data() {
    let app = App::spawn().await;
    let (status, body) = deploy(&app, "greet.js", GREET).await;
    assert_eq!(status, 200, "{body}");
    let names: Vec<&str> =
        body["functions"].as_array().expect("list").iter().map(|f| f["name"].as_str().unwrap_or("")).collect();
    assert!(names.contains(&"greet") && names.contains(&"count"), "{body}");
    let (status, body) = call(&app, "greet", None, json!({"name": "ada"})).await;
    assert_eq!((status, body.clone()), (200, json!({"result": {"hello": "stranger", "echo": {"name": "ada"}}})));

    let signup = json!({"email": "ada@example.com", "password": "correct horse battery staple"});
    let (_, session) = app.send(app.client.post(app.url("/v1/auth/signup")).json(&signup)).await;
    let token = session["access_token"].as_str().expect("token");
    let (_, body) = call(&app, "greet", Some(token), json!({})).await;
    assert_eq!(body["result"]["hello"], session["user"]["id"]);
    assert!(app.output_text().contains("greeting ada"), "console.log reaches the server log");

    // The module is in functions/ and listed.
    let (status, listed) = app.send(app.admin(Method::GET, "/v1/admin/functions")).await;
    assert_eq!(status, 200);
    assert!(listed["functions"].as_array().expect("list").iter().any(|f| f["name"] == "greet" && f["kind"] == "call"));
}

#[tokio::test]
async fn ctx_db_reads_and_writes_through_the_store() {
    let app = App::spawn().await;
    assert_eq!(deploy(&app, "greet.js", GREET).await.0, 200);
    let (status, body) = call(&app, "count", None, json!({"id": "c1"})).await;
    assert_eq!((status, body["result"]["n"].clone()), (200, json!(1)), "{body}");
    let (_, body) = call(&app, "count", None, json!({"id": "c1"})).await;
    assert_eq!(body["result"], json!({"n": 2, "version": 4, "listed": 1}));
    let (_, doc) = app.call(Method::GET, "/v1/docs/counters/c1", None).await;
    assert_eq!(doc["data"]["n"], 2);
    // A store error inside the function surfaces with its code when not caught.
    let (status, body) = call(&app, "badWrite", None, json!({})).await;
    assert_eq!((status, body["error"]["code"].clone()), (404, json!("not-found")), "{body}");
}

#[tokio::test]
async fn throws_become_their_code_or_internal_without_the_stack() {
    let app = App::spawn().await;
    assert_eq!(deploy(&app, "greet.js", GREET).await.0, 200);
    let (status, body) = call(&app, "refuse", None, json!({})).await;
    assert_eq!(
        (status, body["error"]["code"].clone(), body["error"]["message"].clone()),
        (403, json!("permission-denied"), json!("not today"))
    );
    for name in ["crash", "oddCode"] {
        let (status, body) = call(&app, name, None, json!({})).await;
        assert_eq!((status, body["error"]["code"].clone()), (500, json!("internal")), "{name}: {body}");
        assert_eq!(body["error"]["message"], "internal error");
    }
    assert!(app.output_text().contains("secret internals"), "the cause is in the log");
    let (status, body) = call(&app, "nothing", None, json!({})).await;
    assert_eq!((status, body["error"]["code"].clone()), (404, json!("not-found")));
    // A body over the limit.
    let big = "x".repeat(2 * 1024 * 1024);
    let (status, body) = call(&app, "greet", None, json!({ "name": big })).await;
    assert_eq!((status, body["error"]["code"].clone()), (413, json!("payload-too-large")), "{body}");
}

#[tokio::test]
async fn a_function_that_loops_hogs_or_hangs_fails_alone() {
    let config = "[functions]\ntimeout_ms = 500\nmemory_mib = 32\nworkers = 1\n";
    let app = App::spawn_with(Options { config: Some(config.into()), ..Options::default() }).await;
    assert_eq!(deploy(&app, "runaway.js", RUNAWAY).await.0, 200);
    let expected = [
        ("spin", 504, "deadline-exceeded"),
        ("hog", 429, "resource-exhausted"),
        ("hang", 504, "deadline-exceeded"),
        ("gigabyte", 429, "resource-exhausted"),
    ];
    for (name, status_wanted, code) in expected {
        let (status, body) = call(&app, name, None, json!({})).await;
        assert_eq!((status, body["error"]["code"].as_str()), (status_wanted, Some(code)), "{name}: {body}");
        // The one worker carries on with the next call.
        let (status, body) = call(&app, "fine", None, json!({"n": 21})).await;
        assert_eq!((status, body["result"].clone()), (200, json!(42)), "after {name}: {body}");
    }
}

#[tokio::test]
async fn a_module_that_does_not_load_is_refused_and_the_previous_keeps_running() {
    let app = App::spawn().await;
    assert_eq!(deploy(&app, "greet.js", GREET).await.0, 200);
    let broken = [
        ("import { onCall } from \"hearth\";\n\nexport const f = onCall(() => {\n  return 1 +;\n});\n", Some(4)),
        ("export const notAFunction = 42;\n", None),
        ("import { nope } from \"hearth\";\nexport const f = nope(() => 1);\n", None),
        ("throw new Error(\"at load\");\n", Some(1)),
    ];
    for (source, line) in broken {
        let (status, body) = deploy(&app, "greet.js", source).await;
        assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid-argument")), "{source}: {body}");
        assert_eq!(body["error"]["details"]["file"], "greet.js");
        if let Some(line) = line {
            assert_eq!(body["error"]["details"]["line"], line, "{body}");
        }
        let (status, _) = call(&app, "greet", None, json!({})).await;
        assert_eq!(status, 200, "the previous version still answers");
    }
    let (status, body) = deploy(&app, "../escape.js", GREET).await;
    assert!(status == 400 || status == 404, "{status} {body}");
}

#[tokio::test]
async fn changed_files_reload_without_a_restart() {
    let app = App::spawn().await;
    let dir = app.dir().join("functions");
    std::fs::create_dir_all(&dir).expect("functions dir");
    std::fs::write(dir.join("v.js"), "import { onCall } from \"hearth\";\nexport const version = onCall(() => 1);\n")
        .expect("write");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (status, body) = call(&app, "version", None, json!({})).await;
        if status == 200 {
            assert_eq!(body["result"], 1);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not loaded: {body}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    std::fs::write(dir.join("v.js"), "import { onCall } from \"hearth\";\nexport const version = onCall(() => 2);\n")
        .expect("write");
    loop {
        let (_, body) = call(&app, "version", None, json!({})).await;
        if body["result"] == 2 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not reloaded: {body}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// Polls `path` until `done` holds for its document, for up to 20 s.
async fn eventually(app: &App, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (_, body) = app.call(Method::GET, path, None).await;
        if done(&body) {
            return body;
        }
        assert!(std::time::Instant::now() < deadline, "{path} never got there: {body}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

const TRIGGERS: &str = r#"
import { onDocumentWritten } from "hearth";

export const countMessages = onDocumentWritten("rooms/{room}/messages/{msg}", async (event, ctx) => {
  if (event.kind !== "create") return;
  const room = await ctx.db.get(`rooms/${event.params.room}`);
  if (room) await ctx.db.update(`rooms/${event.params.room}`, { count: { $increment: 1 }, last: event.after.data.text });
  else await ctx.db.set(`rooms/${event.params.room}`, { count: 1, last: event.after.data.text });
});

export const alwaysFails = onDocumentWritten("fragile/{id}", () => {
  throw new Error("cannot cope");
});

export const feedsItself = onDocumentWritten("loops/{id}", async (event, ctx) => {
  await ctx.db.update(event.path, { n: { $increment: 1 } });
});
"#;

#[tokio::test]
async fn a_trigger_sees_every_write_in_order_and_failures_are_dead_lettered() {
    let app = App::spawn().await;
    let (status, body) = deploy(&app, "triggers.js", TRIGGERS).await;
    assert_eq!(status, 200, "{body}");
    // Every write answered after the deploy reaches the triggers.
    for n in 0..20 {
        let (status, _) = app
            .call(Method::PUT, &format!("/v1/docs/rooms/r1/messages/m{n}"), Some(json!({"text": format!("hi {n}")})))
            .await;
        assert_eq!(status, 201);
    }
    let room = eventually(&app, "/v1/docs/rooms/r1", |doc| doc["data"]["count"] == 20).await;
    assert_eq!(room["data"]["last"], "hi 19", "events run in seq order");

    app.call(Method::PUT, "/v1/docs/fragile/f1", Some(json!({"x": 1}))).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let letter = loop {
        let (_, dead) = app.send(app.admin(Method::GET, "/v1/admin/functions/dead")).await;
        if let Some(letter) = dead["dead"].as_array().and_then(|dead| dead.iter().find(|l| l["name"] == "alwaysFails"))
        {
            break letter.clone();
        }
        assert!(std::time::Instant::now() < deadline, "never dead-lettered: {dead}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!((letter["path"].as_str(), letter["attempts"].as_u64()), (Some("fragile/f1"), Some(5)));
    assert_eq!(letter["error"], "internal: internal error");

    // A trigger rewriting its own document is stopped, and says so.
    app.call(Method::PUT, "/v1/docs/loops/l1", Some(json!({"n": 0}))).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !app.output_text().contains("runaway chain") {
        assert!(std::time::Instant::now() < deadline, "the chain was not stopped");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let (_, looped) = app.call(Method::GET, "/v1/docs/loops/l1", None).await;
    assert_eq!(looped["data"]["n"], 16, "{looped}");
}

#[tokio::test]
async fn a_trigger_catches_up_after_a_crash() {
    let copy = r#"
import { onDocumentWritten } from "hearth";
export const copy = onDocumentWritten("src/{id}", async (event, ctx) => {
  if (event.after) await ctx.db.set(`dst/${event.params.id}`, event.after.data);
});
"#;
    let mut app = App::spawn().await;
    assert_eq!(deploy(&app, "copy.js", copy).await.0, 200);
    let writes: Vec<Value> =
        (0..300).map(|n| json!({"op": "set", "path": format!("src/d{n}"), "data": {"n": n}})).collect();
    let (status, _) = app.call(Method::POST, "/v1/batch", Some(json!({"writes": writes}))).await;
    assert_eq!(status, 200);
    // Killed while the trigger is (most likely) part-way through.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    app.kill_hard();
    let again = App::start_in(&app.dir(), &Options::default());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (_, page) = again
            .call(Method::POST, "/v1/aggregate", Some(json!({"query": {"collection": "dst"}, "count": true})))
            .await;
        if page["count"] == 300 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the trigger did not catch up: {page}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// A loopback HTTP server that answers every request with its path and `x-api-key`.
async fn echo_server() -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buffer = [0u8; 4096];
                while !request.windows(4).any(|window| window == b"\r\n\r\n") {
                    match socket.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(read) => request.extend_from_slice(&buffer[..read]),
                    }
                }
                let text = String::from_utf8_lossy(&request);
                let path = text.split_whitespace().nth(1).unwrap_or_default().to_owned();
                let key = text.lines().find_map(|line| {
                    line.to_ascii_lowercase().starts_with("x-api-key:").then(|| line[10..].trim().to_owned())
                });
                let body = json!({ "path": path, "key": key }).to_string();
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(answer.as_bytes()).await;
            });
        }
    });
    port
}

#[tokio::test]
async fn ctx_fetch_reaches_allowed_hosts_with_a_secret_and_nothing_else() {
    let port = echo_server().await;
    let config = format!(
        "[functions]\nfetch_allow = [\"127.0.0.1:{port}\"]\n\n[functions.secrets]\nWEATHER_KEY = \"s3cret-weather-key\"\n"
    );
    let app = App::spawn_with(Options { config: Some(config), ..Options::default() }).await;
    let proxy = r#"
import { onCall, HearthError } from "hearth";

export const weather = onCall(async (data, ctx) => {
  const answer = await ctx.fetch(`http://127.0.0.1:${data.port}/weather?city=${data.city}`, {
    headers: { "x-api-key": ctx.secrets.WEATHER_KEY },
  });
  if (!answer.ok) throw new HearthError("unavailable", "the weather service failed");
  return { status: answer.status, body: await answer.json() };
});

export const elsewhere = onCall(async (data, ctx) => (await ctx.fetch(`http://localhost:${data.port}/`)).status);
"#;
    assert_eq!(deploy(&app, "proxy.js", proxy).await.0, 200);
    let (status, body) = call(&app, "weather", None, json!({"port": port, "city": "Oslo"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["result"],
        json!({"status": 200, "body": {"path": "/weather?city=Oslo", "key": "s3cret-weather-key"}})
    );
    let (status, body) = call(&app, "elsewhere", None, json!({"port": port})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("permission-denied")), "{body}");
    assert!(!app.output_text().contains("s3cret-weather-key"), "a secret never reaches the log");
}

#[tokio::test]
async fn a_schedule_runs_at_its_ticks_and_a_bad_cron_is_refused() {
    let app = App::spawn().await;
    let ticking = r#"
import { schedule } from "hearth";
export const everySecond = schedule("* * * * * *", async (ctx, tick) => {
  await ctx.db.set("ticks/seen", { count: { $increment: 1 }, last: tick.tick });
});
"#;
    let (status, body) = deploy(&app, "ticking.js", ticking).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["functions"][0]["kind"], "schedule");
    let seen = eventually(&app, "/v1/docs/ticks/seen", |doc| doc["data"]["count"].as_i64() >= Some(3)).await;
    assert!(
        seen["data"]["last"].as_str().is_some_and(|tick| tick.ends_with(".000000Z")),
        "ticks fall on whole seconds: {seen}"
    );

    let broken = "import { schedule } from \"hearth\";\nexport const never = schedule(\"61 * * * *\", () => {});\n";
    let (status, body) = deploy(&app, "broken.js", broken).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"].as_str().is_some_and(|message| message.contains("cron")), "{body}");
}

#[tokio::test]
async fn the_last_tick_missed_while_stopped_runs_once_at_start() {
    let mut app = App::spawn().await;
    let yearly = r#"
import { schedule } from "hearth";
export const newYear = schedule("0 0 1 1 *", async (ctx, tick) => {
  await ctx.db.set("yearly/run", { count: { $increment: 1 }, tick: tick.tick });
});
"#;
    assert_eq!(deploy(&app, "yearly.js", yearly).await.0, 200);
    app.terminate();
    // As if the server had last run it two years ago: the new years since were missed.
    let database = rusqlite::Connection::open(app.dir().join("hearth_data/hearth.db")).expect("database");
    let two_years_ago = (std::time::SystemTime::now() - std::time::Duration::from_secs(2 * 366 * 86_400))
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_micros() as i64;
    let updated = database
        .execute("UPDATE schedule_ticks SET tick = ?1 WHERE name = 'newYear'", [two_years_ago])
        .expect("update");
    assert_eq!(updated, 1, "the deploy saved the schedule's first tick");
    drop(database);
    let again = App::start_in(&app.dir(), &Options::default());
    let run = eventually(&again, "/v1/docs/yearly/run", |doc| doc["data"]["count"] == 1).await;
    let year = chrono::Datelike::year(&chrono::Utc::now());
    assert_eq!(run["data"]["tick"], format!("{year}-01-01T00:00:00.000000Z"), "the latest missed tick");
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let (_, run) = again.call(Method::GET, "/v1/docs/yearly/run", None).await;
    assert_eq!(run["data"]["count"], 1, "once, not once per missed tick");
}
