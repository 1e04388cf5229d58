//! `hearth-bench functions`: what running JavaScript costs. A trivial callable against
//! plain routes of the same server (the ratio is the function overhead), a deploy and
//! the first call after it (a fresh runtime), creates through a before-write hook
//! against creates without one, and trigger lag (commit → the trigger's write) at a
//! steady write rate.

use std::time::{Duration, Instant};

use super::*;

const MODULE: &str = r#"
import { beforeDocumentWrite, onCall, onDocumentWritten } from "hearth";

export const echo = onCall((data) => data);

export const check = beforeDocumentWrite("hooked/{id}", (event) => event.after && { ...event.after.data, checked: true });

export const follow = onDocumentWritten("lag/{id}", async (event, ctx) => {
  if (!event.after) return;
  const lag = Date.now() - Date.parse(event.after.updated_at);
  await ctx.db.set(`lagged/${event.params.id}`, { lag });
});
"#;

pub async fn functions_bench(phase: Duration) {
    println!("# Hearth functions benchmark\n");
    println!("machine: {} cores, {}; load generator in this process\n", cores(), cpu_model());
    let hearth = start_hearth(true);
    let addr = hearth.addr;
    let started = Instant::now();
    let (status, body) = send_raw(addr, Method::PUT, "/v1/admin/functions/bench.js", Bytes::from(MODULE), KEY).await;
    let deploy_ms = started.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(status, 200, "deployed: {}", String::from_utf8_lossy(&body));
    let call = Bytes::from(r#"{"data":{"n":1}}"#);
    let started = Instant::now();
    let (status, _) = send_raw(addr, Method::POST, "/v1/functions/echo", call.clone(), KEY).await;
    let first_ms = started.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(status, 200);
    request_json(addr, Method::PUT, "/v1/docs/plain/doc", serde_json::json!({"n": 1}), KEY).await;

    println!("| phase | req/s | p50 ms | p99 ms | errors | rows |");
    println!("|---|---|---|---|---|---|");
    let mut rows = Vec::new();
    for concurrency in [1, 16] {
        let healthz: MakeRequest = Arc::new(|_| (Method::GET, "/healthz".into(), None));
        let get: MakeRequest = Arc::new(|_| (Method::GET, "/v1/docs/plain/doc".into(), None));
        let body = call.clone();
        let echo: MakeRequest = Arc::new(move |_| (Method::POST, "/v1/functions/echo".into(), Some(body.clone())));
        let budget = || Budget::Time(phase);
        let outcomes = [
            load(&format!("GET /healthz, c={concurrency}"), addr, concurrency, budget(), healthz).await,
            load(&format!("GET a document, c={concurrency}"), addr, concurrency, budget(), get).await,
            load(&format!("call `echo`, c={concurrency}"), addr, concurrency, budget(), echo).await,
        ];
        for outcome in &outcomes {
            println!("{}", outcome.row());
        }
        rows.push(outcomes);
    }
    println!();
    for outcomes in &rows {
        let [health, get, echo] = outcomes;
        println!(
            "{}: a call runs at {:.2}x the rate of GET /healthz and {:.2}x of a document read",
            echo.name,
            echo.rate() / health.rate(),
            echo.rate() / get.rate()
        );
    }
    println!();
    println!("| phase | req/s | p50 ms | p99 ms | errors | rows |");
    println!("|---|---|---|---|---|---|");
    let mut pairs = Vec::new();
    for concurrency in [1, 16] {
        let doc = Bytes::from(r#"{"text":"hello","n":1}"#);
        let body = doc.clone();
        let plain: MakeRequest = Arc::new(move |_| (Method::POST, "/v1/docs/plain".into(), Some(body.clone())));
        let hooked: MakeRequest = Arc::new(move |_| (Method::POST, "/v1/docs/hooked".into(), Some(doc.clone())));
        let plain =
            load(&format!("create, no hook, c={concurrency}"), addr, concurrency, Budget::Time(phase), plain).await;
        let hooked =
            load(&format!("create through a hook, c={concurrency}"), addr, concurrency, Budget::Time(phase), hooked)
                .await;
        println!("{}\n{}", plain.row(), hooked.row());
        pairs.push((plain, hooked));
    }
    println!();
    for (plain, hooked) in &pairs {
        println!(
            "{}: {:.2}x the rate of creates without a hook; {:.0} µs more per create at p50",
            hooked.name,
            hooked.rate() / plain.rate(),
            (hooked.percentile(0.5) - plain.percentile(0.5)) * 1e3
        );
    }
    println!("\ndeploy (probe runtime, load, write the file): {deploy_ms:.1} ms");
    println!("first call after the deploy (workers build their runtimes): {first_ms:.1} ms\n");

    println!("| trigger lag | writes/s | lag p50 ms | lag p99 ms | events |");
    println!("|---|---|---|---|---|");
    for rate in [100u32, 1000] {
        let prefix = format!("r{rate}-");
        let total = (f64::from(rate) * phase.as_secs_f64()) as usize;
        let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut writes = tokio::task::JoinSet::new();
        for i in 0..total {
            ticker.tick().await;
            let path = format!("/v1/docs/lag/{prefix}{i}");
            writes.spawn(async move { request_json(addr, Method::PUT, &path, serde_json::json!({"i": i}), KEY).await });
        }
        while writes.join_next().await.is_some() {}
        // Wait for the trigger to finish, then read what it measured.
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut lags: Vec<u32> = Vec::new();
        while Instant::now() < deadline {
            lags = lagged(addr, &prefix).await;
            if lags.len() >= total {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let events = lags.len();
        println!(
            "| trigger lag | {rate} | {:.1} | {:.1} | {events} of {total} |",
            super::fanout::percentile(&mut lags, 0.5) * 1000.0,
            super::fanout::percentile(&mut lags, 0.99) * 1000.0,
        );
    }
}

/// The lags (ms) the trigger recorded for documents with `prefix`.
async fn lagged(addr: SocketAddr, prefix: &str) -> Vec<u32> {
    let mut lags = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut query = serde_json::json!({
            "collection": "lagged",
            "where": [{"field": "__id__", "op": ">=", "value": prefix}, {"field": "__id__", "op": "<", "value": format!("{prefix}~")}],
            "limit": 1000,
        });
        if let Some(cursor) = &cursor {
            query["cursor"] = serde_json::Value::String(cursor.clone());
        }
        let page = request_json(addr, Method::POST, "/v1/query", query, KEY).await;
        for doc in page["docs"].as_array().into_iter().flatten() {
            lags.push(doc["data"]["lag"].as_u64().unwrap_or(0) as u32);
        }
        match page["cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return lags,
        }
    }
}
