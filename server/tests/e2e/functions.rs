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
    assert!(app.logs("greeting ada"), "console.log reaches the server log");

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
    assert!(app.logs("secret internals"), "the cause is in the log");
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

/// Waits up to 20 s for the server to log `text`, then half a second more for what
/// was in flight to settle.
async fn logged(app: &App, text: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !app.output_text().contains(text) {
        assert!(std::time::Instant::now() < deadline, "never logged: {text}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
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

export const ping = onDocumentWritten("ping/{id}", async (event, ctx) => {
  if (event.after) await ctx.db.set(`pong/${event.params.id}`, { n: event.after.data.n + 1 });
});

export const pong = onDocumentWritten("pong/{id}", async (event, ctx) => {
  if (event.after) await ctx.db.set(`ping/${event.params.id}`, { n: event.after.data.n + 1 });
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
    logged(&app, "runaway chain").await;
    let (_, looped) = app.call(Method::GET, "/v1/docs/loops/l1", None).await;
    assert_eq!(looped["data"]["n"], 16, "{looped}");

    // So is a cycle of two triggers feeding each other: 16 writes by functions in a row.
    app.call(Method::PUT, "/v1/docs/ping/p1", Some(json!({"n": 0}))).await;
    logged(&app, "`ping` is not run for it").await;
    let (_, ping) = app.call(Method::GET, "/v1/docs/ping/p1", None).await;
    let (_, pong) = app.call(Method::GET, "/v1/docs/pong/p1", None).await;
    assert_eq!((&ping["data"]["n"], &pong["data"]["n"]), (&json!(16), &json!(15)), "{ping} {pong}");
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
    // The schedule's task saves its first tick as it starts, just after the deploy.
    let dir = app.dir();
    let saved = || {
        crate::support::stored_rows(&dir, "SELECT count(*) FROM schedule_ticks WHERE name = 'newYear'")[0][0].clone()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while saved() == "0" && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    app.terminate();
    // As if the server had last run it two years ago: the new years since were missed.
    let two_years_ago = (std::time::SystemTime::now() - std::time::Duration::from_secs(2 * 366 * 86_400))
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_micros() as i64;
    assert_eq!(saved(), "1", "the deploy saved the schedule's first tick");
    crate::support::stored_execute(
        &dir,
        &format!("UPDATE schedule_ticks SET tick = {two_years_ago} WHERE name = 'newYear'"),
    );
    let again = App::start_in(&app.dir(), &Options::default());
    let run = eventually(&again, "/v1/docs/yearly/run", |doc| doc["data"]["count"] == 1).await;
    let year = chrono::Datelike::year(&chrono::Utc::now());
    assert_eq!(run["data"]["tick"], format!("{year}-01-01T00:00:00.000000Z"), "the latest missed tick");
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let (_, run) = again.call(Method::GET, "/v1/docs/yearly/run", None).await;
    assert_eq!(run["data"]["count"], 1, "once, not once per missed tick");
}

const HOOKS: &str = r#"
import { beforeDocumentWrite, onCall, HearthError } from "hearth";

export const noShouting = beforeDocumentWrite("rooms/{room}/messages/{msg}", (event, ctx) => {
  if (!event.after) return;
  if (event.after.data.text === "STOP") throw new HearthError("invalid-argument", "no shouting");
  return {
    ...event.after.data,
    text: event.after.data.text.toLowerCase(),
    checked: true,
    by: ctx.auth ? ctx.auth.uid : null,
    room: event.params.room,
    kind: event.kind,
    was: event.before ? event.before.version : 0,
  };
});

export const locked = beforeDocumentWrite("notes/{id}", (event) => {
  if (event.kind === "delete" && event.before.data.locked) throw new HearthError("failed-precondition", "locked");
});

export const stamp = beforeDocumentWrite("counters/{id}", async (event, ctx) => {
  await ctx.db.get("counters/other");
  return event.after && { ...event.after.data, stamped: (event.after.data.stamped || 0) + 1 };
});

export const spin = beforeDocumentWrite("slow/{id}", () => { for (;;) {} });
export const odd = beforeDocumentWrite("odd/{id}", () => 42);

export const direct = onCall(async (data, ctx) => {
  await ctx.db.set("rooms/r1/messages/direct", { text: "FROM A FUNCTION" });
  return (await ctx.db.get("rooms/r1/messages/direct")).data;
});
"#;

const CHECKED_RULES: &str = r#"
["rooms/{room}/messages/{msg}"]
read = "auth != null"
write = "auth != null && (!has(request.data.by) || request.data.by == auth.uid)"
"#;

#[tokio::test]
async fn before_write_hooks_refuse_or_replace_and_the_rules_see_both_sides() {
    let config = "[functions]\nbefore_write_timeout_ms = 300\n".to_owned();
    let app = App::spawn_with(Options { config: Some(config), ..Options::default() }).await;
    let (status, body) = deploy(&app, "hooks.js", HOOKS).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = app.send(app.admin(Method::PUT, "/v1/admin/rules").body(CHECKED_RULES)).await;
    assert!(status.is_success(), "{body}");
    let (status, session) = app
        .send(
            app.client
                .post(app.url("/v1/auth/signup"))
                .json(&json!({"email": "ada@example.com", "password": "correct horse battery staple"})),
        )
        .await;
    assert_eq!(status, 200, "{session}");
    let (uid, token) = (session["user"]["id"].as_str().expect("uid"), session["access_token"].as_str().expect("token"));
    let as_user = |method: Method, path: &str, body: Value| {
        app.client.request(method, app.url(path)).bearer_auth(token).json(&body)
    };

    // The rules decide the caller's own write before any hook runs: a message claiming
    // to be by someone else never reaches the hook (which would have replaced `by`).
    let (status, body) =
        app.send(as_user(Method::PUT, "/v1/docs/rooms/r1/messages/m0", json!({"text": "HI", "by": "someone"}))).await;
    assert_eq!((status.as_u16(), body["error"]["code"].as_str()), (403, Some("permission-denied")), "{body}");

    // Replaced: the rules decide again on what the hook made of the write.
    let (status, doc) = app.send(as_user(Method::PUT, "/v1/docs/rooms/r1/messages/m1", json!({"text": "HELLO"}))).await;
    assert_eq!(status, 201, "{doc}");
    assert_eq!(
        doc["data"],
        json!({"text": "hello", "checked": true, "by": uid, "room": "r1", "kind": "create", "was": 0})
    );
    let (status, doc) =
        app.send(as_user(Method::PATCH, "/v1/docs/rooms/r1/messages/m1", json!({"text": "AGAIN"}))).await;
    assert_eq!(
        (status.as_u16(), &doc["data"]["text"], &doc["data"]["kind"], &doc["data"]["was"]),
        (200, &json!("again"), &json!("update"), &json!(1))
    );

    // Refused with the hook's code; nothing written.
    let (status, body) = app.send(as_user(Method::PUT, "/v1/docs/rooms/r1/messages/m2", json!({"text": "STOP"}))).await;
    assert_eq!((status.as_u16(), body["error"]["code"].as_str()), (400, Some("invalid-argument")), "{body}");
    assert_eq!(body["error"]["message"], "no shouting");
    assert_eq!(app.call(Method::GET, "/v1/docs/rooms/r1/messages/m2", None).await.0, 404);

    // In a batch the refusal names its write and nothing of the batch commits.
    let batch = json!({"writes": [
        {"op": "set", "path": "rooms/r1/messages/m3", "data": {"text": "FINE"}},
        {"op": "set", "path": "rooms/r1/messages/m4", "data": {"text": "STOP"}},
    ]});
    let (status, body) = app.send(as_user(Method::POST, "/v1/batch", batch)).await;
    assert_eq!((status.as_u16(), &body["error"]["details"]["index"]), (400, &json!(1)), "{body}");
    assert_eq!(app.call(Method::GET, "/v1/docs/rooms/r1/messages/m3", None).await.0, 404);

    // Deletes: a hook may refuse them.
    app.call(Method::PUT, "/v1/docs/notes/n1", Some(json!({"locked": true}))).await;
    app.call(Method::PUT, "/v1/docs/notes/n2", Some(json!({"locked": false}))).await;
    let (status, body) = app.call(Method::DELETE, "/v1/docs/notes/n1", None).await;
    assert_eq!((status.as_u16(), body["error"]["code"].as_str()), (412, Some("failed-precondition")), "{body}");
    assert_eq!(app.call(Method::DELETE, "/v1/docs/notes/n2", None).await.0, 204);

    // A hook over its time limit, or returning nonsense, fails the write alone.
    let (status, body) = app.call(Method::PUT, "/v1/docs/slow/s1", Some(json!({"x": 1}))).await;
    assert_eq!((status.as_u16(), body["error"]["code"].as_str()), (504, Some("deadline-exceeded")), "{body}");
    let (status, body) = app.call(Method::PUT, "/v1/docs/odd/o1", Some(json!({"x": 1}))).await;
    assert_eq!((status.as_u16(), body["error"]["code"].as_str()), (500, Some("internal")), "{body}");
    assert_eq!(app.call(Method::GET, "/v1/docs/slow/s1", None).await.0, 404);

    // Concurrent increments through a hook all land, each stamped once.
    app.call(Method::PUT, "/v1/docs/counters/c1", Some(json!({"n": 0}))).await;
    let bumps = (0..24).map(|_| app.call(Method::PATCH, "/v1/docs/counters/c1", Some(json!({"n": {"$increment": 1}}))));
    for (status, body) in futures::future::join_all(bumps).await {
        assert_eq!(status, 200, "{body}");
    }
    let (_, counter) = app.call(Method::GET, "/v1/docs/counters/c1", None).await;
    assert_eq!((&counter["data"]["n"], &counter["data"]["stamped"]), (&json!(24), &json!(25)), "{counter}");

    // Functions' own writes do not run hooks.
    let (status, body) = call(&app, "direct", None, json!({})).await;
    assert_eq!((status, &body["result"]["text"]), (200, &json!("FROM A FUNCTION")), "{body}");

    // The admin list counts each hook.
    let (_, list) = app.send(app.admin(Method::GET, "/v1/admin/functions")).await;
    let stamp =
        list["functions"].as_array().expect("list").iter().find(|f| f["name"] == "stamp").expect("stamp").clone();
    assert_eq!(
        (&stamp["kind"], &stamp["invocations"], &stamp["errors"]),
        (&json!("before-document-write"), &json!(25), &json!(0)),
        "{stamp}"
    );
    assert!(
        stamp["p50_ms"].as_f64().is_some_and(|p50| p50 > 0.0) && stamp["p99_ms"].as_f64() >= stamp["p50_ms"].as_f64(),
        "{stamp}"
    );
}

#[tokio::test]
async fn on_user_created_sees_every_new_user_also_across_a_crash() {
    let welcome = r#"
import { onUserCreated } from "hearth";
export const welcome = onUserCreated(async (user, ctx) => {
  await ctx.db.set(`profiles/${user.id}`, { email: user.email, anonymous: user.anonymous });
});
"#;
    let mut app = App::spawn().await;
    assert_eq!(deploy(&app, "welcome.js", welcome).await.0, 200);
    let signup = json!({"email": "ada@example.com", "password": "correct horse battery staple"});
    let (status, session) = app.send(app.client.post(app.url("/v1/auth/signup")).json(&signup)).await;
    assert_eq!(status, 200, "{session}");
    let ada = session["user"]["id"].as_str().expect("uid").to_owned();
    let profile = eventually(&app, &format!("/v1/docs/profiles/{ada}"), |doc| doc["data"].is_object()).await;
    assert_eq!(profile["data"], json!({"email": "ada@example.com", "anonymous": false}));

    // Users created right before a kill -9 are welcomed after the restart.
    let mut anonymous = Vec::new();
    for _ in 0..5 {
        let (status, session) = app.send(app.client.post(app.url("/v1/auth/anonymous")).json(&json!({}))).await;
        assert_eq!(status, 200, "{session}");
        anonymous.push(session["user"]["id"].as_str().expect("uid").to_owned());
    }
    app.kill_hard();
    let again = App::start_in(&app.dir(), &Options::default());
    for uid in anonymous {
        let profile = eventually(&again, &format!("/v1/docs/profiles/{uid}"), |doc| doc["data"].is_object()).await;
        assert_eq!(profile["data"], json!({"email": null, "anonymous": true}));
    }
}

#[tokio::test]
async fn ctx_db_batch_commits_all_or_nothing() {
    let source = r#"
import { onCall } from "hearth";
export const pair = onCall(async (data, ctx) => ctx.db.batch([
  { op: "set", path: `pairs/${data.id}/sides/left`, data: { n: 1 } },
  { op: data.bad ? "update" : "create", path: `pairs/${data.id}/sides/right`, data: { n: 2 } },
]));
"#;
    let app = App::spawn().await;
    assert_eq!(deploy(&app, "pair.js", source).await.0, 200);
    let (status, body) = call(&app, "pair", None, json!({"id": "p1"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"]["results"].as_array().map(Vec::len), Some(2), "{body}");
    // The update of an absent document fails the batch; its first write is not kept.
    let (status, body) = call(&app, "pair", None, json!({"id": "p2", "bad": true})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("not-found")), "{body}");
    assert_eq!(app.call(Method::GET, "/v1/docs/pairs/p2/sides/left", None).await.0, 404);
}

/// The example functions, deployed as a user of the examples would, do what they say.
#[tokio::test]
async fn the_example_functions_work_with_the_example_rules() {
    let port = echo_server().await;
    let config = format!(
        "[functions]\nfetch_allow = [\"127.0.0.1:{port}\"]\n[functions.secrets]\n\
         WEATHER_API_URL = \"http://127.0.0.1:{port}\"\nWEATHER_API_KEY = \"k-123\"\n"
    );
    let app = App::spawn_with(Options { config: Some(config), ..Options::default() }).await;
    let chat = include_str!("../../../examples/chat/functions/chat.js");
    let weather = include_str!("../../../examples/proxy/functions/weather.js");
    assert_eq!(deploy(&app, "chat.js", chat).await.0, 200);
    assert_eq!(deploy(&app, "weather.js", weather).await.0, 200);
    let rules = include_str!("../../../examples/chat/rules.toml");
    let (status, body) = app.send(app.admin(Method::PUT, "/v1/admin/rules").body(rules)).await;
    assert!(status.is_success(), "{body}");

    let signup = json!({"email": "ada@example.com", "password": "correct horse battery staple"});
    let (_, session) = app.send(app.client.post(app.url("/v1/auth/signup")).json(&signup)).await;
    let (uid, token) = (session["user"]["id"].as_str().expect("uid"), session["access_token"].as_str().expect("token"));
    let profile = eventually(&app, &format!("/v1/docs/users/{uid}"), |doc| doc["data"].is_object()).await;
    assert_eq!(profile["data"]["name"], "ada", "{profile}");

    let as_ada = |method: Method, path: &str, body: Value| {
        app.client.request(method, app.url(path)).bearer_auth(token).json(&body)
    };
    let (status, body) =
        app.send(as_ada(Method::PUT, "/v1/docs/rooms/r1", json!({"owner": uid, "members": [uid]}))).await;
    assert_eq!(status, 201, "{body}");
    let message = json!({"author": uid, "text": "  Oh heck, it works  "});
    let (status, body) = app.send(as_ada(Method::POST, "/v1/docs/rooms/r1/messages", message)).await;
    assert_eq!((status.as_u16(), &body["data"]["text"]), (201, &json!("Oh ****, it works")), "{body}");
    let (status, body) =
        app.send(as_ada(Method::POST, "/v1/docs/rooms/r1/messages", json!({"author": uid, "text": " "}))).await;
    assert_eq!(status, 400, "{body}");
    let room = eventually(&app, "/v1/docs/rooms/r1", |doc| doc["data"]["message_count"] == 1).await;
    assert_eq!(room["data"]["last_message"], "Oh ****, it works");

    // Another user joins through `joinRoom` and may then post.
    let signup = json!({"email": "bob@example.com", "password": "another long password"});
    let (_, session) = app.send(app.client.post(app.url("/v1/auth/signup")).json(&signup)).await;
    let (bob, bob_token) =
        (session["user"]["id"].as_str().expect("uid"), session["access_token"].as_str().expect("token"));
    let post = json!({"author": bob, "text": "hi"});
    let as_bob = || app.client.post(app.url("/v1/docs/rooms/r1/messages")).bearer_auth(bob_token).json(&post);
    assert_eq!(app.send(as_bob()).await.0, 403, "not a member yet");
    let (status, body) = call(&app, "joinRoom", Some(bob_token), json!({"room": "r1"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(app.send(as_bob()).await.0, 201);
    let (status, _) = call(&app, "joinRoom", Some(bob_token), json!({"room": "no/slashes"})).await;
    assert_eq!(status, 400);

    let (status, body) = call(&app, "weather", Some(token), json!({"city": "Zürich"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"]["weather"], json!({"path": "/v1/current?city=Z%C3%BCrich", "key": "k-123"}));
    let (status, _) = call(&app, "weather", None, json!({"city": "Bern"})).await;
    assert_eq!(status, 401, "the proxy is for signed-in users");
}
