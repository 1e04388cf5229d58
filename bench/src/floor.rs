//! The least an HTTP document store can do per create, as a reference beside the raw
//! SQLite loop and the hello world: axum takes `POST /v1/docs/{collection}`, checks the
//! body is a JSON object, hands it to one writer thread that commits whatever is queued
//! in one transaction (group commit, as Hearth does), and answers the new id. No auth, no
//! change log, no metrics, no logs, and the WAL is never checkpointed (it only grows for
//! the few seconds of a phase). What it reaches on a box is a generous ceiling for any
//! server that takes creates over HTTP and commits them to SQLite there.

use std::sync::mpsc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use tokio::sync::oneshot;

/// One create waiting for the writer: the row and where to send the commit's outcome.
struct Pending {
    path: String,
    data: Bytes,
    done: oneshot::Sender<Result<(), String>>,
}

#[derive(Clone)]
struct Floor {
    writer: mpsc::Sender<Pending>,
    ids: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// `hearth-bench floor DIR`: serves on `127.0.0.1:0` with its database in `DIR`, which
/// the caller removes (this process ends by being killed).
pub fn serve(dir: &std::path::Path) {
    let conn = rusqlite::Connection::open(dir.join("floor.db")).expect("opens");
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA wal_autocheckpoint = 0; CREATE TABLE docs (path TEXT PRIMARY KEY, data TEXT NOT NULL);",
    )
    .expect("schema");
    let (writer, queue) = mpsc::channel();
    std::thread::spawn(move || write_groups(conn, queue));
    let floor = Floor { writer, ids: Default::default() };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let app = axum::Router::new().route("/v1/docs/{collection}", axum::routing::post(create)).with_state(floor);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        println!("listening on http://{}", listener.local_addr().expect("addr"));
        axum::serve(listener, app).await.expect("serve");
    });
}

async fn create(
    State(floor): State<Floor>,
    Path(collection): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<serde_json::Value>), (StatusCode, String)> {
    let parsed: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&body).map_err(|error| (StatusCode::BAD_REQUEST, error.to_string()))?;
    drop(parsed);
    let id = format!("{:016x}", floor.ids.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    let (done, committed) = oneshot::channel();
    let pending = Pending { path: format!("{collection}/{id}"), data: body, done };
    floor.writer.send(pending).map_err(|_| (StatusCode::SERVICE_UNAVAILABLE, "writer gone".into()))?;
    match committed.await {
        Ok(Ok(())) => Ok((StatusCode::CREATED, Json(serde_json::json!({ "id": id })))),
        Ok(Err(error)) => Err((StatusCode::INTERNAL_SERVER_ERROR, error)),
        Err(_) => Err((StatusCode::SERVICE_UNAVAILABLE, "writer gone".into())),
    }
}

/// Waits for a create, takes everything queued behind it, and commits them together.
fn write_groups(mut conn: rusqlite::Connection, queue: mpsc::Receiver<Pending>) {
    while let Ok(first) = queue.recv() {
        let mut group = vec![first];
        group.extend(queue.try_iter());
        let outcome = commit(&mut conn, &group).map_err(|error| error.to_string());
        for pending in group {
            let _ = pending.done.send(outcome.clone());
        }
    }
}

fn commit(conn: &mut rusqlite::Connection, group: &[Pending]) -> rusqlite::Result<()> {
    let transaction = conn.transaction()?;
    {
        let mut insert = transaction.prepare_cached("INSERT INTO docs VALUES (?1, ?2)")?;
        for pending in group {
            let text = std::str::from_utf8(&pending.data).map_err(|_| rusqlite::Error::InvalidQuery)?;
            insert.execute(rusqlite::params![pending.path, text])?;
        }
    }
    transaction.commit()
}
