//! `hearth-bench fanout`: many realtime subscribers on one live query, from this process.
//!
//! For 1,000 and then 10,000 subscribers (signed in, under a `read` rule): server RSS per
//! idle connection; write-to-delivery latency at a steady write rate, with the writes' own
//! latency; and deliveries per second with writers going as fast as they can. Each write
//! stamps its send time into the document; a subscriber subtracts it on arrival.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::*;

/// Documents the writers update in turn; every subscriber watches all of them.
const DOCS: u64 = 10;

fn now_micros() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("VmRSS:"))
                .and_then(|line| line.split_whitespace().nth(1).and_then(|kib| kib.parse().ok()))
        })
        .unwrap_or(0)
}

/// What the subscribers saw.
#[derive(Default)]
struct Seen {
    deliveries: AtomicU64,
    latencies: std::sync::Mutex<Vec<u32>>,
    record: std::sync::atomic::AtomicBool,
}

/// The `"sent":` stamp of a delivery, read without parsing the whole message.
fn stamp(text: &str) -> Option<u64> {
    let at = text.find("\"sent\":")? + 7;
    let digits: String = text[at..].chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

async fn subscriber(addr: SocketAddr, token: String, seen: Arc<Seen>, ready: tokio::sync::mpsc::Sender<()>) {
    let mut request = format!("ws://{addr}/v1/realtime").into_client_request().expect("request");
    request.headers_mut().insert("authorization", format!("Bearer {token}").parse().expect("header"));
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.expect("websocket");
    let sub = r#"{"op":"sub","id":"feed","query":{"collection":"feed","limit":100}}"#;
    socket.send(Message::text(sub)).await.expect("sub");
    let mut announced = false;
    while let Some(Ok(frame)) = socket.next().await {
        let Message::Text(text) = frame else { continue };
        if !announced {
            announced = true;
            let _ = ready.send(()).await;
            continue;
        }
        let arrived = now_micros();
        let count = text.matches("\"type\":").count() as u64;
        seen.deliveries.fetch_add(count, Ordering::Relaxed);
        if seen.record.load(Ordering::Relaxed)
            && let Some(sent) = stamp(text.as_str())
        {
            let micros = arrived.saturating_sub(sent).min(u64::from(u32::MAX)) as u32;
            seen.latencies.lock().expect("lock").push(micros);
        }
    }
}

/// Opens `count` subscribers to the feed on `clients` and waits for their snapshots.
async fn open_subscribers(
    clients: &tokio::runtime::Runtime,
    addr: SocketAddr,
    token: &str,
    seen: &Arc<Seen>,
    count: usize,
) {
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(1024);
    for opened in 0..count {
        clients.spawn(subscriber(addr, token.to_owned(), seen.clone(), ready_tx.clone()));
        // Pace the handshakes a little so the accept queue keeps up.
        if opened % 200 == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    for _ in 0..count {
        if tokio::time::timeout(Duration::from_secs(60), ready_rx.recv()).await.is_err() {
            println!("subscribers did not all get their snapshot within 60 s");
            return;
        }
    }
}

/// Writes to the feed at `rate` per second (0: as fast as `concurrency` connections go)
/// for `phase`; the writes' own latencies.
async fn write(addr: SocketAddr, rate: u32, concurrency: usize, phase: Duration) -> Outcome {
    let counter = Arc::new(AtomicU64::new(0));
    let make: MakeRequest = Arc::new(move |_| {
        let i = counter.fetch_add(1, Ordering::Relaxed);
        let body = format!(r#"{{"sent":{},"i":{i}}}"#, now_micros());
        (Method::PATCH, format!("/v1/docs/feed/d{}", i % DOCS), Some(Bytes::from(body)))
    });
    if rate == 0 {
        return load("writes, as fast as they go", addr, concurrency, Budget::Time(phase), make).await;
    }
    // Paced: one request per tick on one connection.
    let total = (f64::from(rate) * phase.as_secs_f64()) as usize;
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
    let mut ticker = tokio::time::interval(interval);
    let started = Instant::now();
    let mut latencies = Vec::with_capacity(total);
    let mut errors = 0;
    for i in 0..total {
        ticker.tick().await;
        let (method, path, body) = make(i as u64);
        let sent = Instant::now();
        let answer = request_json(
            addr,
            method,
            &path,
            serde_json::from_slice(&body.unwrap_or_default()).unwrap_or_default(),
            KEY,
        )
        .await;
        if answer.get("error").is_some() {
            errors += 1;
        }
        latencies.push(sent.elapsed().as_micros() as u32);
    }
    Outcome {
        name: format!("writes at {rate}/s"),
        requests: total,
        errors,
        elapsed: started.elapsed(),
        latencies,
        per_request: 1,
    }
}

pub fn percentile(values: &mut [u32], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_unstable();
    values[((values.len() as f64 - 1.0) * p).round() as usize] as f64 / 1000.0
}

/// A fresh server with the feed, and a subscriber's token.
async fn feed_server() -> (Hearth, String) {
    feed_server_on(None).await
}

/// [`feed_server`] on the PostgreSQL database `database` when given.
async fn feed_server_on(database: Option<&str>) -> (Hearth, String) {
    let hearth = start_hearth_on(true, database);
    let addr = hearth.addr;
    let rules = "[\"feed/{id}\"]\nread = \"auth != null\"\n";
    let (status, _) = send_raw(addr, Method::PUT, "/v1/admin/rules", Bytes::from(rules), KEY).await;
    assert_eq!(status, 204, "rules accepted");
    let session = request_json(
        addr,
        Method::POST,
        "/v1/auth/signup",
        serde_json::json!({"email": "fan@example.com", "password": "correct horse battery staple"}),
        KEY,
    )
    .await;
    let token = session["access_token"].as_str().expect("signed up").to_owned();
    for doc in 0..DOCS {
        request_json(addr, Method::PUT, &format!("/v1/docs/feed/d{doc}"), serde_json::json!({"sent": 0}), KEY).await;
    }
    (hearth, token)
}

pub async fn fanout_bench(quick: bool) {
    println!("# Hearth realtime fan-out benchmark\n");
    println!("machine: {} cores, {}; subscribers in this process, on the same cores\n", cores(), cpu_model());
    let phase = if quick { Duration::from_secs(3) } else { Duration::from_secs(10) };
    // The subscribers stand in for remote clients: their threads run at the priority of
    // the server's fan-out, so they do not take the CPU ahead of it, and the writer and
    // the server's request handling come first for both.
    let clients = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_start(hearth_server::realtime::lower_thread_priority)
        .build()
        .expect("runtime");
    println!(
        "| subscribers | phase | writes/s | write p50 ms | write p99 ms | deliveries/s | delivery p50 ms | delivery p99 ms |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut rss_lines = Vec::new();
    let steps: &[(usize, u32)] = if quick { &[(1000, 50), (3000, 10)] } else { &[(1000, 50), (10_000, 10)] };
    for &(subscribers, rate) in steps {
        // Each step on a fresh server, so memory is measured from an idle start.
        let (hearth, token) = feed_server().await;
        let (addr, pid) = (hearth.addr, hearth.child.id());
        let seen = Arc::new(Seen::default());
        let before = rss_kib(pid);
        let opening = Instant::now();
        open_subscribers(&clients, addr, &token, &seen, subscribers).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = rss_kib(pid);
        rss_lines.push(format!(
            "{subscribers} subscribers: server RSS {} MiB, {:.1} KiB per idle subscriber (opened in {:.1} s)",
            after / 1024,
            after.saturating_sub(before) as f64 / subscribers as f64,
            opening.elapsed().as_secs_f64()
        ));

        for (label, rate, concurrency) in [("steady", rate, 1), ("saturated", 0, 4)] {
            seen.latencies.lock().expect("lock").clear();
            seen.record.store(true, Ordering::Relaxed);
            let delivered_before = seen.deliveries.load(Ordering::Relaxed);
            let started = Instant::now();
            let writes = write(addr, rate, concurrency, phase).await;
            // Let the last deliveries land.
            tokio::time::sleep(Duration::from_secs(2)).await;
            seen.record.store(false, Ordering::Relaxed);
            let delivered = seen.deliveries.load(Ordering::Relaxed) - delivered_before;
            let elapsed = started.elapsed().as_secs_f64();
            let mut latencies = std::mem::take(&mut *seen.latencies.lock().expect("lock"));
            println!(
                "| {subscribers} | {label} | {:.0} | {:.2} | {:.2} | {:.0} | {:.1} | {:.1} |",
                writes.rate(),
                writes.percentile(0.5),
                writes.percentile(0.99),
                delivered as f64 / elapsed,
                percentile(&mut latencies, 0.5),
                percentile(&mut latencies, 0.99),
            );
        }
        drop(hearth);
    }
    clients.shutdown_background();
    println!();
    for line in rss_lines {
        println!("{line}");
    }
}

/// `psql` on `url`: the first field of the answer.
fn psql(url: &str, sql: &str) -> String {
    let output = Command::new("psql").args([url, "-tAc", sql]).output().expect("psql runs");
    assert!(output.status.success(), "psql {sql}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// PostgreSQL's committed transactions on the bench database, per second over `phase`.
async fn transactions_per_second(url: &str, phase: Duration) -> f64 {
    let count = || -> f64 {
        psql(url, "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()").parse().expect("count")
    };
    let before = count();
    tokio::time::sleep(phase).await;
    // The two `psql` reads count one transaction each.
    (count() - before - 1.0) / phase.as_secs_f64()
}

/// The log tail on PostgreSQL: transactions per second the database serves for one node,
/// idle and at 50 writes/s, with 10 and with 5,000 subscribers. With one tailer per node
/// it must not grow with the subscribers.
pub async fn tail_bench(server: &str) {
    println!("# Hearth on PostgreSQL: database transactions per node\n");
    println!("machine: {} cores, {}\n", cores(), cpu_model());
    println!("| subscribers | idle: transactions/s | at 50 writes/s: transactions/s | deliveries/s at 50 writes/s |");
    println!("|---|---|---|---|");
    let clients = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_start(hearth_server::realtime::lower_thread_priority)
        .build()
        .expect("runtime");
    let phase = Duration::from_secs(10);
    let database = "hearth_bench_tail";
    let url = format!("{server}/{database}");
    for subscribers in [10, 5_000] {
        psql(&format!("{server}/postgres"), &format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"));
        psql(&format!("{server}/postgres"), &format!("CREATE DATABASE {database}"));
        let (hearth, token) = feed_server_on(Some(&url)).await;
        let seen = Arc::new(Seen::default());
        open_subscribers(&clients, hearth.addr, &token, &seen, subscribers).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let idle = transactions_per_second(&url, phase).await;
        let delivered_before = seen.deliveries.load(Ordering::Relaxed);
        let addr = hearth.addr;
        let writing = tokio::spawn(async move { write(addr, 50, 1, phase).await });
        let busy = transactions_per_second(&url, phase).await;
        let _ = writing.await;
        let delivered = seen.deliveries.load(Ordering::Relaxed) - delivered_before;
        println!("| {subscribers} | {idle:.1} | {busy:.1} | {:.0} |", delivered as f64 / phase.as_secs_f64());
        drop(hearth);
    }
    clients.shutdown_background();
    psql(&format!("{server}/postgres"), &format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"));
}
