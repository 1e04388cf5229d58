//! Hearth load benchmark: starts the release `hearth` binary on loopback and measures
//! throughput and p50/p99 latency of creates, gets, an indexed query and 500-write
//! batches, with group commit on and off; and, in the same run, the references: raw
//! SQLite inserts (WAL, synchronous=NORMAL, 1 KB JSON rows), a bare axum hello world, and
//! the least an HTTP server can do per create ([`floor`]).
//!
//! Run with `bench/run.sh` (builds in release first). `--quick` shortens every phase.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use tokio::net::TcpStream;

mod fanout;
mod floor;
mod functions;
mod rules;
mod sdk;

const KEY: &str = "hk_bench_0123456789abcdefghijklmnopqrstuvwxyz";
const SEEDED: usize = 100_000;
const OWNERS: usize = 5_000;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("hello") {
        return hello_world();
    }
    if args.get(1).map(String::as_str) == Some("floor") {
        let dir = args.get(2).expect("usage: hearth-bench floor DIR");
        return floor::serve(std::path::Path::new(dir));
    }
    if args.get(1).map(String::as_str) == Some("auth") {
        let quick = args.iter().any(|arg| arg == "--quick");
        let phase = if quick { Duration::from_secs(1) } else { Duration::from_secs(5) };
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
        return runtime.block_on(auth_bench(phase));
    }
    if args.get(1).map(String::as_str) == Some("sdk") {
        let quick = args.iter().any(|arg| arg == "--quick");
        let phase = if quick { Duration::from_secs(1) } else { Duration::from_secs(5) };
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
        return runtime.block_on(sdk::sdk_bench(phase));
    }
    if args.get(1).map(String::as_str) == Some("fanout") {
        let quick = args.iter().any(|arg| arg == "--quick");
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
        return runtime.block_on(fanout::fanout_bench(quick));
    }
    if args.get(1).map(String::as_str) == Some("tail") {
        let url = args
            .get(2)
            .expect("usage: hearth-bench tail POSTGRES_SERVER_URL (e.g. postgres://postgres@127.0.0.1:5432)");
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
        return runtime.block_on(fanout::tail_bench(url));
    }
    if args.get(1).map(String::as_str) == Some("functions") {
        let quick = args.iter().any(|arg| arg == "--quick");
        let phase = if quick { Duration::from_secs(2) } else { Duration::from_secs(5) };
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
        return runtime.block_on(functions::functions_bench(phase));
    }
    if args.get(1).map(String::as_str) == Some("rules") {
        let quick = args.iter().any(|arg| arg == "--quick");
        let phase = if quick { Duration::from_secs(1) } else { Duration::from_secs(5) };
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
        return runtime.block_on(rules::rules_bench(phase, quick));
    }
    if args.get(1).map(String::as_str) == Some("seed") {
        let addr: SocketAddr =
            args.get(2).and_then(|addr| addr.parse().ok()).expect("usage: hearth-bench seed ADDR COUNT");
        let count: usize =
            args.get(3).and_then(|count| count.parse().ok()).expect("usage: hearth-bench seed ADDR COUNT");
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
        let outcome = runtime.block_on(seed(addr, count));
        eprintln!("{}", outcome.row());
        return;
    }
    if args.get(1).map(String::as_str) == Some("load") {
        return load_only(&args[2..]);
    }
    let quick = args.iter().any(|arg| arg == "--quick");
    let phase = if quick { Duration::from_secs(1) } else { Duration::from_secs(5) };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(run(phase, quick));
}

/// One measured phase.
struct Outcome {
    name: String,
    requests: usize,
    errors: usize,
    elapsed: Duration,
    latencies: Vec<u32>,
    /// Rows or writes per request, for per-row rates.
    per_request: usize,
}

impl Outcome {
    fn rate(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return 0.0;
        }
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
        sorted[index] as f64 / 1000.0
    }

    fn row(&self) -> String {
        let per_row = if self.per_request > 1 {
            format!("{:.0} writes/s", self.rate() * self.per_request as f64)
        } else {
            String::new()
        };
        format!(
            "| {} | {:.0} | {:.2} | {:.2} | {} | {} |",
            self.name,
            self.rate(),
            self.percentile(0.50),
            self.percentile(0.99),
            self.errors,
            per_row
        )
    }
}

type MakeRequest = Arc<dyn Fn(u64) -> (Method, String, Option<Bytes>) + Send + Sync>;

/// How long a phase runs: for a time, or for a number of requests.
#[derive(Clone)]
enum Budget {
    Time(Duration),
    Count(Arc<std::sync::atomic::AtomicUsize>),
}

impl Budget {
    fn count(total: usize) -> Budget {
        Budget::Count(Arc::new(std::sync::atomic::AtomicUsize::new(total)))
    }

    /// Whether one more request may go.
    fn take(&self, deadline: Instant) -> bool {
        use std::sync::atomic::Ordering::SeqCst;
        match self {
            Budget::Time(_) => Instant::now() < deadline,
            Budget::Count(left) => left.fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1)).is_ok(),
        }
    }
}

/// `concurrency` keep-alive connections, each sending requests back to back until the
/// budget is spent.
async fn load(name: &str, addr: SocketAddr, concurrency: usize, budget: Budget, make: MakeRequest) -> Outcome {
    load_as(name, addr, concurrency, budget, make, KEY).await
}

/// One timed phase of Hearth: prints its row and gives its rate.
async fn timed_row(name: &str, addr: SocketAddr, concurrency: usize, phase: Duration, make: MakeRequest) -> f64 {
    let outcome = load(name, addr, concurrency, Budget::Time(phase), make).await;
    println!("{}", outcome.row());
    outcome.rate()
}

/// Like [`load`], with `token` as the bearer credential.
async fn load_as(
    name: &str,
    addr: SocketAddr,
    concurrency: usize,
    budget: Budget,
    make: MakeRequest,
    token: &str,
) -> Outcome {
    let authorization: Arc<str> = format!("Bearer {token}").into();
    let started = Instant::now();
    let deadline = match &budget {
        Budget::Time(phase) => started + *phase,
        Budget::Count(_) => started + Duration::from_secs(3600),
    };
    let mut workers = Vec::new();
    for worker in 0..concurrency {
        let make = make.clone();
        let budget = budget.clone();
        let authorization = authorization.clone();
        workers.push(tokio::spawn(async move {
            let stream = TcpStream::connect(addr).await.expect("connect");
            stream.set_nodelay(true).expect("nodelay");
            let io = hyper_util::rt::TokioIo::new(stream);
            let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await.expect("handshake");
            tokio::spawn(connection);
            let mut latencies = Vec::new();
            let mut errors = 0;
            let mut counter = worker as u64;
            while budget.take(deadline) {
                let (method, path, body) = make(counter);
                counter += concurrency as u64;
                let request = Request::builder()
                    .method(method)
                    .uri(path)
                    .header("host", "bench")
                    .header("authorization", &*authorization)
                    .header("content-type", "application/json")
                    .body(Full::new(body.unwrap_or_default()))
                    .expect("request");
                let sent = Instant::now();
                match sender.send_request(request).await {
                    Ok(response) => {
                        let ok = response.status().is_success();
                        let _ = response.into_body().collect().await;
                        latencies.push(sent.elapsed().as_micros() as u32);
                        if !ok {
                            errors += 1;
                        }
                    }
                    Err(_) => {
                        errors += 1;
                        break;
                    }
                }
            }
            (latencies, errors)
        }));
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    for worker in workers {
        let (mut l, e) = worker.await.expect("worker");
        latencies.append(&mut l);
        errors += e;
    }
    Outcome {
        name: name.into(),
        requests: latencies.len(),
        errors,
        elapsed: started.elapsed(),
        latencies,
        per_request: 1,
    }
}

/// About 1 KB of JSON, like the SQLite reference rows.
fn document(i: u64) -> String {
    format!(
        r#"{{"owner":"u{}","score":{},"title":"document number {i}","tags":["bench","load","json"],"body":"{}"}}"#,
        i as usize % OWNERS,
        (i * 7919) % 100_000,
        filler()
    )
}

/// `POST` of a ~1 KB document with a server-made id.
fn create_request(i: u64) -> (Method, String, Option<Bytes>) {
    (Method::POST, "/v1/docs/creates".into(), Some(Bytes::from(document(i))))
}

/// `PUT` of a ~1 KB document at a random id the client made.
fn client_create_request(i: u64) -> (Method, String, Option<Bytes>) {
    (Method::PUT, format!("/v1/docs/creates/{}", random_id(i)), Some(Bytes::from(document(i))))
}

/// `GET` of one of the `seeded` documents, spread over all of them.
fn get_request(i: u64, seeded: usize) -> (Method, String, Option<Bytes>) {
    let id = (i * 2_654_435_761) as usize % seeded;
    (Method::GET, format!("/v1/docs/items/i{id}"), None)
}

/// One owner's 20 documents by score, out of the `seeded` ones.
fn indexed_query(i: u64, seeded: usize) -> (Method, String, Option<Bytes>) {
    let owner = (i * 2_654_435_761) as usize % OWNERS.min(seeded);
    let body = format!(
        r#"{{"collection":"items","where":[{{"field":"owner","op":"==","value":"u{owner}"}}],"order_by":[{{"field":"score","dir":"desc"}}],"limit":20}}"#
    );
    (Method::POST, "/v1/query".into(), Some(Bytes::from(body)))
}

/// The constant part of every document, made once so the load generator stays lean.
fn filler() -> &'static str {
    static FILLER: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    FILLER.get_or_init(|| "lorem ipsum dolor sit amet ".repeat(34))
}

struct Hearth {
    child: Child,
    addr: SocketAddr,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for Hearth {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn server_binary() -> std::path::PathBuf {
    let me = std::env::current_exe().expect("own path");
    let binary = me.with_file_name("hearth");
    assert!(binary.exists(), "build the server first: cargo build --release -p hearth-server");
    binary
}

/// Starts a process and waits for it to print `listening on http://ADDR`.
fn start(mut command: Command) -> (Child, SocketAddr) {
    let mut child = command.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().expect("starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let addr = loop {
        let line = lines.next().expect("printed before exiting").expect("line");
        if let Some(at) = line.find("listening on http://") {
            let addr: String = line[at + 20..].chars().take_while(|c| !c.is_whitespace()).collect();
            break addr.parse().expect("address");
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (child, addr)
}

/// `hearth serve` on `dir` at `addr`, with the bench's key and request logs off.
fn serve_command(dir: &std::path::Path, addr: &str) -> Command {
    let mut command = Command::new(server_binary());
    command
        .args(["serve", "--addr", addr, "--dir"])
        .arg(dir)
        .env("HEARTH_SERVICE_KEY", KEY)
        .env("RUST_LOG", "info,hearth::access=off")
        // Every subscriber comes from loopback: lift the per-address and per-connection
        // caps meant for clients spread over the internet.
        .env("HEARTH_REALTIME__MAX_CONNECTIONS_PER_ADDRESS", "1000000")
        .env("HEARTH_REALTIME__SUBSCRIBES_PER_SECOND", "1000000")
        .env("HEARTH_REALTIME__SUBSCRIBE_BURST", "1000000");
    command
}

/// A server on `dir` at `127.0.0.1:port` (to restart it on the same data and port).
fn start_hearth_at(dir: &std::path::Path, port: u16) -> Hearth {
    let (child, addr) = start(serve_command(dir, &format!("127.0.0.1:{port}")));
    Hearth { child, addr, _dir: None }
}

fn start_hearth(group_commit: bool) -> Hearth {
    start_hearth_on(group_commit, None)
}

/// A fresh server, on the PostgreSQL database `database` when given.
fn start_hearth_on(group_commit: bool, database: Option<&str>) -> Hearth {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        dir.path().join("hearth.toml"),
        "[[indexes]]\ncollection = \"items\"\nfields = [\"owner\", \"score desc\"]\n",
    )
    .expect("config");
    let mut command = serve_command(dir.path(), "127.0.0.1:0");
    if let Some(url) = database {
        command.env("HEARTH_DATABASE_URL", url);
    }
    command
        .env("HEARTH_STORE__GROUP_COMMIT", group_commit.to_string())
        // Every request comes from loopback: lift the per-IP sign-in limit so the login
        // phases measure hashing, not the limiter.
        .env("HEARTH_AUTH__RATE_LIMIT__PER_IP_PER_MINUTE", "100000000")
        .env("HEARTH_AUTH__RATE_LIMIT__PER_IP_BURST", "100000000");
    let (child, addr) = start(command);
    Hearth { child, addr, _dir: Some(dir) }
}

async fn run(phase: Duration, quick: bool) {
    println!("# Hearth benchmark\n");
    println!("machine: {} cores, {}", cores(), cpu_model());
    println!("phase length: {} s per row; load generator in this process, on the same cores\n", phase.as_secs());
    println!("| phase | req/s | p50 ms | p99 ms | errors | rows |");
    println!("|---|---|---|---|---|---|");

    let reference = sqlite_reference(quick);
    for outcome in &reference {
        println!("{}", outcome.row());
    }
    let hello = hello_reference(phase).await;
    println!("{}", hello.row());
    let floor = floor_reference(phase).await;
    println!("{}", floor.row());

    let mut creates_on = Vec::new();
    let mut creates_off = Vec::new();
    let mut client_ids = 0.0;
    for group_commit in [true, false] {
        let hearth = start_hearth(group_commit);
        let label = if group_commit { "group commit on" } else { "group commit off" };
        for concurrency in [1, 16, 64] {
            let name = format!("hearth create c={concurrency} ({label})");
            let rate = timed_row(&name, hearth.addr, concurrency, phase, Arc::new(create_request)).await;
            if group_commit { &mut creates_on } else { &mut creates_off }.push(rate);
        }
        if !group_commit {
            break;
        }
        // Creates with ids the client makes, random like the reference's keys: each lands
        // at a random place in the b-trees instead of at their end.
        let name = "hearth create, random client ids, c=64";
        client_ids = timed_row(name, hearth.addr, 64, phase, Arc::new(client_create_request)).await;
        // 100,000 documents through 500-write batches: the batch benchmark and the seed.
        let seeded = if quick { 20_000 } else { SEEDED };
        let outcome = seed(hearth.addr, seeded).await;
        println!("{}", outcome.row());
        // Reads are measured in the steady state: let the checkpointer fold the bulk load
        // from the WAL into the database file first.
        tokio::time::sleep(if quick { Duration::from_secs(1) } else { Duration::from_secs(5) }).await;

        for concurrency in [16, 64] {
            let make: MakeRequest = Arc::new(move |i| get_request(i, seeded));
            timed_row(&format!("hearth get by id c={concurrency}"), hearth.addr, concurrency, phase, make).await;
        }
        for concurrency in [16, 64] {
            let name = format!("hearth indexed query, 20 of {seeded} c={concurrency}");
            let make: MakeRequest = Arc::new(move |i| indexed_query(i, seeded));
            timed_row(&name, hearth.addr, concurrency, phase, make).await;
        }
    }
    println!();
    for (i, concurrency) in [1, 16, 64].iter().enumerate() {
        println!(
            "creates c={concurrency}: group commit on/off = {:.0}/{:.0} = {:.2}x",
            creates_on[i],
            creates_off[i],
            creates_on[i] / creates_off[i]
        );
    }
    let per_second = |outcome: &Outcome| outcome.rate() * outcome.per_request as f64;
    let (ordered, scattered) = (per_second(&reference[1]), per_second(&reference[2]));
    println!("creates c=64 vs raw SQLite 1000-row transactions, keys in order: {:.2}", creates_on[2] / ordered);
    println!(
        "creates c=64 vs raw SQLite 1000-row transactions, random keys: {:.2} (server ids), {:.2} (random client ids)",
        creates_on[2] / scattered,
        client_ids / scattered
    );
    println!(
        "minimal HTTP create server vs raw SQLite 1000-row transactions, keys in order: {:.2}; hearth creates c=64 vs it: {:.2}",
        floor.rate() / ordered,
        creates_on[2] / floor.rate()
    );
}

/// `count` documents `items/i0`, `items/i1`, ... through batches of 500 `set` writes on
/// two connections: the batch benchmark and the seed of the read benchmarks.
async fn seed(addr: SocketAddr, count: usize) -> Outcome {
    let counter = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let make: MakeRequest = Arc::new(move |_| {
        let batch = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let writes: Vec<String> = (0..500)
            .map(|j| {
                let i = batch * 500 + j;
                format!(r#"{{"op":"set","path":"items/i{i}","data":{}}}"#, document(i))
            })
            .collect();
        (Method::POST, "/v1/batch".into(), Some(Bytes::from(format!(r#"{{"writes":[{}]}}"#, writes.join(",")))))
    });
    let mut outcome = load("hearth batch of 500 c=2", addr, 2, Budget::count(count / 500), make).await;
    outcome.per_request = 500;
    outcome
}

/// One request, its status and JSON answer.
async fn request_json(
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: serde_json::Value,
    token: &str,
) -> serde_json::Value {
    let (_, bytes) = send_raw(addr, method, path, Bytes::from(body.to_string()), token).await;
    serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null)
}

/// One request on its own connection; its status and body.
async fn send_raw(
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: Bytes,
    token: &str,
) -> (hyper::StatusCode, Bytes) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.expect("handshake");
    tokio::spawn(connection);
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "bench")
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Full::new(body))
        .expect("request");
    let response = sender.send_request(request).await.expect("answer");
    let status = response.status();
    (status, response.into_body().collect().await.expect("body").to_bytes())
}

/// Argon2id hashes per second with the OWASP parameters Hearth uses, one thread per core.
fn raw_argon2(phase: Duration) -> f64 {
    use argon2::password_hash::PasswordHasher;
    let started = Instant::now();
    let threads: Vec<_> = (0..cores())
        .map(|_| {
            std::thread::spawn(move || {
                let hasher = argon2::Argon2::default();
                let mut hashes = 0u64;
                while started.elapsed() < phase {
                    hasher.hash_password(b"correct horse battery staple").expect("hash");
                    hashes += 1;
                }
                hashes
            })
        })
        .collect();
    let hashes: u64 = threads.into_iter().map(|thread| thread.join().expect("thread")).sum();
    hashes as f64 / started.elapsed().as_secs_f64()
}

/// Access-token verification in process, in microseconds per token: the first time a
/// token is seen (signature and claims), and again (from the cache of verified tokens).
async fn verify_cost() -> (f64, f64) {
    use hearth_server::auth::{Auth, repo::Repo};
    use hearth_server::store::ChangeBus;
    use hearth_server::store::sqlite::{SqliteBackend, SqliteOptions};
    let dir = tempfile::tempdir().expect("temp dir");
    let options = SqliteOptions::new(dir.path().join("verify.db"), &hearth_server::config::StoreConfig::default());
    let backend = Arc::new(SqliteBackend::open(options, ChangeBus::new(16)).expect("database"));
    let auth = Auth::new(
        Repo::new(backend, hearth_server::seal::Keyring::new([7; 32], &[])),
        hearth_server::config::AuthConfig::default(),
        &hearth_server::config::MailConfig::default(),
    )
    .await
    .expect("auth");
    let mut tokens = Vec::new();
    for _ in 0..2_000 {
        tokens.push(auth.anonymous().await.expect("session").access_token);
    }
    let started = Instant::now();
    for token in &tokens {
        auth.verify(token).expect("valid");
    }
    let first = started.elapsed().as_secs_f64() * 1e6 / tokens.len() as f64;
    let rounds = 20_000;
    let started = Instant::now();
    for round in 0..rounds {
        auth.verify(&tokens[round % tokens.len()]).expect("valid");
    }
    (first, started.elapsed().as_secs_f64() * 1e6 / rounds as f64)
}

/// Logins against raw argon2, and document gets with and without a login flood.
async fn auth_bench(phase: Duration) {
    println!("# Hearth auth benchmark\n");
    println!("machine: {} cores, {}; {} s per phase\n", cores(), cpu_model(), phase.as_secs());
    let hashes = raw_argon2(phase);
    println!("raw argon2id (m=19456 KiB, t=2, p=1), {} threads: {hashes:.1} hashes/s", cores());
    let (first, again) = verify_cost().await;
    println!(
        "access-token verification (EdDSA, in process): {first:.1} µs the first time a token is seen, {again:.2} µs after\n"
    );
    println!("| phase | req/s | p50 ms | p99 ms | errors | rows |");
    println!("|---|---|---|---|---|---|");
    let hearth = start_hearth(true);
    let addr = hearth.addr;
    let password = "correct horse battery staple";
    let session = request_json(
        addr,
        Method::POST,
        "/v1/auth/signup",
        serde_json::json!({"email": "bench@example.com", "password": password}),
        KEY,
    )
    .await;
    let user_token: String = session["access_token"].as_str().expect("signed up").to_owned();
    request_json(addr, Method::PUT, "/v1/docs/items/one", serde_json::json!({"n": 1, "body": filler()}), KEY).await;
    let login: MakeRequest = Arc::new(move |_| {
        let body = format!(r#"{{"email":"bench@example.com","password":"{password}"}}"#);
        (Method::POST, "/v1/auth/login".into(), Some(Bytes::from(body)))
    });
    let get_doc: MakeRequest = Arc::new(|_| (Method::GET, "/v1/docs/items/one".into(), None));
    let get_user: MakeRequest = Arc::new(|_| (Method::GET, "/v1/auth/user".into(), None));
    let alone = load("logins c=16", addr, 16, Budget::Time(phase), login.clone()).await;
    println!("{}", alone.row());
    let doc_alone =
        load("document get c=16 (service key), alone", addr, 16, Budget::Time(phase), get_doc.clone()).await;
    println!("{}", doc_alone.row());
    let user_alone = load_as(
        "GET /v1/auth/user c=16 (access token), alone",
        addr,
        16,
        Budget::Time(phase),
        get_user.clone(),
        &user_token,
    )
    .await;
    println!("{}", user_alone.row());
    let (flood, doc_during) = tokio::join!(
        load("logins c=16, during document gets", addr, 16, Budget::Time(phase), login.clone()),
        load("document get c=16, during a login flood", addr, 16, Budget::Time(phase), get_doc)
    );
    println!("{}\n{}", flood.row(), doc_during.row());
    let (flood, user_during) = tokio::join!(
        load("logins c=16, during user gets", addr, 16, Budget::Time(phase), login),
        load_as("GET /v1/auth/user c=16, during a login flood", addr, 16, Budget::Time(phase), get_user, &user_token)
    );
    println!("{}\n{}", flood.row(), user_during.row());
    println!();
    println!("logins/s vs raw argon2 hashes/s: {:.2}", alone.rate() / hashes);
    println!(
        "document gets during the flood vs alone: {:.2}x throughput, p99 {:.2} ms vs {:.2} ms",
        doc_during.rate() / doc_alone.rate(),
        doc_during.percentile(0.99),
        doc_alone.percentile(0.99)
    );
    println!(
        "user gets during the flood vs alone: {:.2}x throughput, p99 {:.2} ms vs {:.2} ms",
        user_during.rate() / user_alone.rate(),
        user_during.percentile(0.99),
        user_alone.percentile(0.99)
    );
}

/// Raw SQLite: WAL, synchronous=NORMAL, 1 KB JSON rows; one row per transaction, then
/// a thousand per transaction with keys in insertion order, then a thousand per
/// transaction with random 20-character keys (ids like a document store's) into a table
/// of its own.
fn sqlite_reference(quick: bool) -> Vec<Outcome> {
    let dir = tempfile::tempdir().expect("temp dir");
    let conn = rusqlite::Connection::open(dir.path().join("ref.db")).expect("opens");
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;
         CREATE TABLE docs (path TEXT PRIMARY KEY, data TEXT NOT NULL);
         CREATE TABLE random_docs (path TEXT PRIMARY KEY, data TEXT NOT NULL);",
    )
    .expect("schema");
    let single = if quick { 5_000 } else { 20_000 };
    let started = Instant::now();
    let mut latencies = Vec::with_capacity(single);
    for i in 0..single as u64 {
        let sent = Instant::now();
        conn.execute_batch("BEGIN").expect("begin");
        conn.prepare_cached("INSERT INTO docs VALUES (?1, ?2)")
            .expect("prepare")
            .execute(rusqlite::params![format!("a/{i}"), document(i)])
            .expect("insert");
        conn.execute_batch("COMMIT").expect("commit");
        latencies.push(sent.elapsed().as_micros() as u32);
    }
    let one = Outcome {
        name: "raw SQLite insert, 1 row per transaction".into(),
        requests: single,
        errors: 0,
        elapsed: started.elapsed(),
        latencies,
        per_request: 1,
    };
    let batched = if quick { 20_000 } else { 100_000 };
    let ordered =
        insert_thousands(&conn, "raw SQLite insert, 1000 rows per transaction", "docs", batched, |i| format!("b/{i}"));
    let random = if quick { 40_000 } else { 200_000 };
    let scattered = insert_thousands(
        &conn,
        "raw SQLite insert, 1000 rows per transaction, random 20-char keys",
        "random_docs",
        random,
        |i| format!("b/{}", random_id(i)),
    );
    vec![one, ordered, scattered]
}

/// `rows` rows into `table`, a thousand per transaction, keyed by `key`.
fn insert_thousands(
    conn: &rusqlite::Connection,
    name: &str,
    table: &str,
    rows: usize,
    key: impl Fn(u64) -> String,
) -> Outcome {
    let insert = format!("INSERT INTO {table} VALUES (?1, ?2)");
    let started = Instant::now();
    let mut latencies = Vec::new();
    for chunk in 0..(rows / 1000) as u64 {
        let sent = Instant::now();
        conn.execute_batch("BEGIN").expect("begin");
        for j in 0..1000 {
            let i = chunk * 1000 + j;
            conn.prepare_cached(&insert)
                .expect("prepare")
                .execute(rusqlite::params![key(i), document(i)])
                .expect("insert");
        }
        conn.execute_batch("COMMIT").expect("commit");
        latencies.push(sent.elapsed().as_micros() as u32);
    }
    Outcome {
        name: name.into(),
        requests: rows / 1000,
        errors: 0,
        elapsed: started.elapsed(),
        latencies,
        per_request: 1000,
    }
}

/// A 20-character id in `[0-9A-Za-z]`, spread evenly over the key space (distinct in
/// practice), like the random ids clients of a document store make; made from `i`
/// (splitmix64) so the load generator stays lean and runs repeat.
fn random_id(i: u64) -> String {
    use hearth_types::id::ID_ALPHABET;
    let mix = |mut z: u64| {
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let (mut high, mut low) = (mix(i.wrapping_mul(0x9e37_79b9_7f4a_7c15)), mix(i));
    (0..20)
        .map(|n| {
            let word = if n < 10 { &mut high } else { &mut low };
            let c = ID_ALPHABET[(*word % 62) as usize];
            *word /= 62;
            c as char
        })
        .collect()
}

async fn hello_reference(phase: Duration) -> Outcome {
    let mut command = Command::new(std::env::current_exe().expect("own path"));
    command.arg("hello");
    let (mut child, addr) = start(command);
    let make: MakeRequest = Arc::new(|_| (Method::GET, "/".into(), None));
    let outcome = load("axum hello world c=64", addr, 64, Budget::Time(phase), make).await;
    let _ = child.kill();
    let _ = child.wait();
    outcome
}

/// Creates c=64 against the least an HTTP document store can do ([`floor`]).
async fn floor_reference(phase: Duration) -> Outcome {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut command = Command::new(std::env::current_exe().expect("own path"));
    command.arg("floor").arg(dir.path());
    let (mut child, addr) = start(command);
    let make: MakeRequest = Arc::new(create_request);
    let outcome = load("minimal HTTP create server c=64", addr, 64, Budget::Time(phase), make).await;
    let _ = child.kill();
    let _ = child.wait();
    outcome
}

/// `load ADDR create|client|seed|getitem|query|other CONCURRENCY SECONDS`: one phase
/// against a running server, for profiling it from outside.
fn load_only(args: &[String]) {
    let [addr, kind, concurrency, seconds] = args else {
        panic!("usage: hearth-bench load ADDR create|client|seed|getitem|query|other CONCURRENCY SECONDS");
    };
    let addr: SocketAddr = addr.parse().expect("address");
    let concurrency: usize = concurrency.parse().expect("concurrency");
    let phase = Duration::from_secs(seconds.parse().expect("seconds"));
    let make: MakeRequest = match kind.as_str() {
        "create" => Arc::new(create_request),
        "client" => Arc::new(client_create_request),
        "seed" => Arc::new(|i| (Method::PUT, format!("/v1/docs/items/i{i}"), Some(Bytes::from(document(i))))),
        "query" => Arc::new(|i| indexed_query(i, SEEDED)),
        "getitem" => Arc::new(|i| get_request(i, SEEDED)),
        _ => Arc::new(|i| (Method::GET, format!("/v1/docs/creates/missing{i}"), None)),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let outcome = runtime.block_on(load(kind, addr, concurrency, Budget::Time(phase), make));
    println!("{}", outcome.row());
}

/// The hello-world reference server (a child process, like Hearth).
fn hello_world() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let app = axum::Router::new().route("/", axum::routing::get(|| async { "Hello, World!" }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        println!("listening on http://{}", listener.local_addr().expect("addr"));
        axum::serve(listener, app).await.expect("serve");
    });
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}
