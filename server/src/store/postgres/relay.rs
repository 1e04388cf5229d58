//! Channel events between nodes over `NOTIFY hearth_channels`: the payload is the event
//! itself, or, past what a payload may hold, the id of a row of `channel_messages` that
//! holds it. Each node sends from one task, so its events arrive in the order it sent them.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::postgres::{PgListener, PgPool};
use tokio::sync::mpsc;

use super::pg_error;
use crate::changes::relay::{ChannelEvent, Relay, Relayed};
use crate::store::{Error, now_micros};

const CHANNEL: &str = "hearth_channels";
/// PostgreSQL refuses payloads of 8000 bytes or more.
const MAX_PAYLOAD: usize = 7_900;
/// How long a large event stays readable.
const KEPT: Duration = Duration::from_secs(60);

#[derive(Serialize, Deserialize)]
struct Wire {
    /// The sending node.
    n: String,
    /// The event, or the id of the row that holds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    e: Option<ChannelEvent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    r: Option<i64>,
}

pub(super) struct PgRelay {
    node: String,
    outgoing: mpsc::UnboundedSender<ChannelEvent>,
    incoming: Mutex<Option<mpsc::UnboundedReceiver<Relayed>>>,
}

impl Relay for PgRelay {
    fn node(&self) -> &str {
        &self.node
    }

    fn send(&self, event: ChannelEvent) {
        let _ = self.outgoing.send(event);
    }

    fn receiver(&self) -> Option<mpsc::UnboundedReceiver<Relayed>> {
        self.incoming.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take()
    }
}

pub(super) async fn start(pool: PgPool) -> Result<Arc<PgRelay>, Error> {
    let node = format!("n{:08x}", rand::random::<u32>());
    let mut listener = PgListener::connect_with(&pool).await.map_err(pg_error)?;
    listener.listen(CHANNEL).await.map_err(pg_error)?;
    let (to_hub, incoming) = mpsc::unbounded_channel();
    let (outgoing, from_hub) = mpsc::unbounded_channel();
    tokio::spawn(receive(listener, pool.clone(), node.clone(), to_hub));
    tokio::spawn(send(pool, node.clone(), from_hub));
    Ok(Arc::new(PgRelay { node, outgoing, incoming: Mutex::new(Some(incoming)) }))
}

async fn receive(mut listener: PgListener, pool: PgPool, node: String, to_hub: mpsc::UnboundedSender<Relayed>) {
    loop {
        let relayed = match listener.try_recv().await {
            Ok(Some(notification)) => match read(&pool, notification.payload()).await {
                Ok(Some(relayed)) if relayed.node != node => relayed,
                Ok(_) => continue,
                Err(error) => {
                    tracing::warn!(%error, "a channel event from another node could not be read");
                    continue;
                }
            },
            // Reconnected: what was sent meanwhile is lost, so this node asks again.
            Ok(None) => Relayed { node: node.clone(), event: ChannelEvent::Hello },
            Err(sqlx::Error::PoolClosed) => return,
            Err(error) => {
                tracing::warn!(%error, "listening for channel events failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if to_hub.send(relayed).is_err() {
            return;
        }
    }
}

async fn read(pool: &PgPool, payload: &str) -> Result<Option<Relayed>, Error> {
    let wire: Wire = serde_json::from_str(payload).map_err(|e| Error::Internal(format!("channel event: {e}")))?;
    let event = match (wire.e, wire.r) {
        (Some(event), _) => event,
        (None, Some(id)) => {
            let row = sqlx::query("SELECT body FROM channel_messages WHERE id = $1")
                .bind(id)
                .fetch_optional(pool)
                .await
                .map_err(pg_error)?;
            let Some(row) = row else { return Ok(None) };
            let body: String = row.try_get(0).map_err(pg_error)?;
            serde_json::from_str(&body).map_err(|e| Error::Internal(format!("channel event: {e}")))?
        }
        (None, None) => return Ok(None),
    };
    Ok(Some(Relayed { node: wire.n, event }))
}

async fn send(pool: PgPool, node: String, mut from_hub: mpsc::UnboundedReceiver<ChannelEvent>) {
    let mut pruned = Instant::now();
    while let Some(event) = from_hub.recv().await {
        let wire = Wire { n: node.clone(), e: Some(event), r: None };
        let payload = serde_json::to_string(&wire).unwrap_or_default();
        let sent = if payload.len() <= MAX_PAYLOAD {
            sqlx::query("SELECT pg_notify($1, $2)").bind(CHANNEL).bind(&payload).execute(&pool).await
        } else {
            let body = serde_json::to_string(&wire.e).unwrap_or_default();
            sqlx::query(
                "WITH m AS (INSERT INTO channel_messages (body, at) VALUES ($1, $2) RETURNING id) \
                 SELECT pg_notify($3, json_build_object('n', $4::text, 'r', m.id)::text) FROM m",
            )
            .bind(body)
            .bind(now_micros())
            .bind(CHANNEL)
            .bind(&node)
            .execute(&pool)
            .await
        };
        if let Err(error) = sent {
            tracing::debug!(%error, "a channel event could not reach the other nodes");
        }
        if pruned.elapsed() > KEPT {
            pruned = Instant::now();
            let before = now_micros() - KEPT.as_micros() as i64;
            let _ = sqlx::query("DELETE FROM channel_messages WHERE at < $1").bind(before).execute(&pool).await;
        }
    }
}
