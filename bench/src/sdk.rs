//! `hearth-bench sdk`: what the client SDK costs. Reads through the SDK against the same
//! reads as raw `reqwest` calls (the SDK's own transport stack, so the ratio is the SDK's
//! overhead: credentials, the error mapping and decoding into `Document`); the memory of
//! 1,000 live listeners in one client; and the time from a server restart to a listener
//! resuming with the change it missed.

use std::future::Future;
use std::time::{Duration, Instant};

use futures::StreamExt;
use hearth_sdk::{Client, ClientOptions};
use serde_json::json;

use super::*;

/// Runs `call` from `concurrency` tasks for `phase`; calls/s and p50/p99 in ms.
async fn measure<F, Fut>(concurrency: usize, phase: Duration, call: F) -> (f64, f64, f64)
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = bool> + Send,
{
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let call = call.clone();
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            while started.elapsed() < phase {
                let at = Instant::now();
                assert!(call().await, "a call failed");
                latencies.push(at.elapsed().as_micros() as u32);
            }
            latencies
        });
    }
    let mut latencies = Vec::new();
    while let Some(done) = tasks.join_next().await {
        latencies.extend(done.expect("task"));
    }
    let rate = latencies.len() as f64 / started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let at = |q: f64| f64::from(latencies[((latencies.len() - 1) as f64 * q) as usize]) / 1000.0;
    (rate, at(0.5), at(0.99))
}

fn own_rss_kib() -> u64 {
    super::fanout::rss_kib(std::process::id())
}

pub async fn sdk_bench(phase: Duration) {
    println!("# Hearth SDK benchmark\n");
    println!("machine: {} cores, {}; client in this process\n", cores(), cpu_model());
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut hearth = start_hearth_at(dir.path(), port);
    let url = format!("http://127.0.0.1:{port}");
    let options = ClientOptions { service_key: Some(KEY.to_owned()), ..ClientOptions::default() };
    let client = Client::with_options(&url, options).expect("client");
    client.doc("plain/doc").set(json!({"text": "hello", "n": 1})).await.expect("seeded");
    let cache_dir = tempfile::tempdir().expect("temp dir");
    let offline_first = || ClientOptions {
        service_key: Some(KEY.to_owned()),
        cache: Some(cache_dir.path().join("cache.db")),
        ..ClientOptions::default()
    };
    let cached = Client::with_options(&url, offline_first()).expect("client");

    println!("| phase | calls/s | p50 ms | p99 ms |");
    println!("|---|---|---|---|");
    let http = reqwest::Client::new();
    for concurrency in [1, 16] {
        let (http, doc_url) = (http.clone(), format!("{url}/v1/docs/plain/doc"));
        let raw = measure(concurrency, phase, move || {
            let (http, doc_url) = (http.clone(), doc_url.clone());
            async move {
                let answer = http.get(&doc_url).bearer_auth(KEY).send().await;
                match answer {
                    Ok(answer) if answer.status().is_success() => answer.bytes().await.is_ok(),
                    _ => false,
                }
            }
        })
        .await;
        let sdk_client = client.clone();
        let sdk = measure(concurrency, phase, move || {
            let client = sdk_client.clone();
            async move { matches!(client.doc("plain/doc").get().await, Ok(Some(_))) }
        })
        .await;
        let cached_client = cached.clone();
        let with_cache = measure(concurrency, phase, move || {
            let client = cached_client.clone();
            async move { matches!(client.doc("plain/doc").get().await, Ok(Some(_))) }
        })
        .await;
        println!("| raw reqwest GET, c={concurrency} | {:.0} | {:.2} | {:.2} |", raw.0, raw.1, raw.2);
        println!("| SDK `doc.get()`, c={concurrency} | {:.0} | {:.2} | {:.2} |", sdk.0, sdk.1, sdk.2);
        println!("| SDK / raw, c={concurrency} | {:.2}x | +{:.0} µs | |", sdk.0 / raw.0, (sdk.1 - raw.1) * 1000.0);
        let (rate, p50, p99) = with_cache;
        println!("| SDK `doc.get()` with a cache file, c={concurrency} | {rate:.0} | {p50:.2} | {p99:.2} |");
        println!(
            "| with cache / without, c={concurrency} | {:.2}x | +{:.0} µs | |",
            rate / sdk.0,
            (p50 - sdk.1) * 1000.0
        );
    }

    // 1,000 listeners on distinct documents, all through one socket.
    let writes: Vec<_> =
        (0..1000).map(|n| json!({"op": "set", "path": format!("items/i{n}"), "data": {"n": n}})).collect();
    for chunk in writes.chunks(500) {
        request_json(hearth.addr, Method::POST, "/v1/batch", json!({"writes": chunk}), KEY).await;
    }
    let before = own_rss_kib();
    let opening = Instant::now();
    let mut listeners = Vec::new();
    for n in 0..1000 {
        listeners.push(client.doc(&format!("items/i{n}")).listen());
    }
    for listener in &mut listeners {
        listener.next().await.expect("open").expect("snapshot");
    }
    let after = own_rss_kib();
    println!(
        "\n1,000 listeners (one document each, one socket): {:.1} s to open, client RSS +{} KiB = {:.1} KiB per listener",
        opening.elapsed().as_secs_f64(),
        after.saturating_sub(before),
        after.saturating_sub(before) as f64 / 1000.0
    );

    drop(listeners);

    // A server restart: kill -9, start on the same port and data, write; the listener
    // resumes from its token and gets the write.
    let mut feed = client.collection("feed").listen();
    feed.next().await.expect("open").expect("snapshot");
    let mut resumes = Vec::new();
    for round in 0..3 {
        let _ = hearth.child.kill();
        let _ = hearth.child.wait();
        let restarted = Instant::now();
        hearth = start_hearth_at(dir.path(), port);
        let up = restarted.elapsed();
        request_json(hearth.addr, Method::PUT, &format!("/v1/docs/feed/f{round}"), json!({"round": round}), KEY).await;
        let written = restarted.elapsed();
        loop {
            let snapshot = feed.next().await.expect("open").expect("no error");
            if snapshot.changes.iter().any(|change| change.doc.id == format!("f{round}")) {
                break;
            }
        }
        resumes.push((up, written, restarted.elapsed()));
    }
    println!("\n| restart | server up ms | write answered ms | listener has it ms |");
    println!("|---|---|---|---|");
    for (round, (up, written, delivered)) in resumes.iter().enumerate() {
        let ms = |at: &Duration| at.as_secs_f64() * 1000.0;
        println!("| {} | {:.0} | {:.0} | {:.0} |", round + 1, ms(up), ms(written), ms(delivered));
    }

    // Offline: 1,000 writes made with the server down (each applied locally and queued
    // in the cache file), then the time for the queue to reach the restarted server.
    let _ = hearth.child.kill();
    let _ = hearth.child.wait();
    const OFFLINE: usize = 1000;
    let queueing = Instant::now();
    for n in 0..OFFLINE {
        cached.doc(&format!("offline/o{n}")).set(json!({"n": n, "text": "written offline"})).await.expect("queued");
    }
    let queued = queueing.elapsed();
    assert_eq!(cached.pending_writes(), OFFLINE);
    let restarted = Instant::now();
    hearth = start_hearth_at(dir.path(), port);
    let up = restarted.elapsed();
    // The queue's retry backs off up to 5 s while the server is away (a listener's
    // reconnect wakes it early); sending starts with the first retry after the restart.
    while cached.pending_writes() == OFFLINE {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let first = restarted.elapsed();
    cached.wait_for_pending_writes().await;
    let synced = restarted.elapsed();
    println!(
        "\nOffline: {OFFLINE} writes queued in {:.0} ms ({:.0} µs each). After the restart (server up in \
         {:.0} ms) the first was confirmed at {:.0} ms (retry backoff), all {OFFLINE} at {:.0} ms: \
         {:.0} writes/s, one request each, in order",
        queued.as_secs_f64() * 1000.0,
        queued.as_secs_f64() * 1e6 / OFFLINE as f64,
        up.as_secs_f64() * 1000.0,
        first.as_secs_f64() * 1000.0,
        synced.as_secs_f64() * 1000.0,
        (OFFLINE - 1) as f64 / (synced - first).as_secs_f64()
    );
    drop(hearth);
}
