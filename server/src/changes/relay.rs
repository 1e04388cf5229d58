//! Channel events between the nodes of a cluster: presence and broadcast reach members
//! on every node. They are ephemeral, as channels are: a node that misses some (its
//! connection to the database dropped) asks the others for their members again, and a
//! node not heard from for [`NODE_TIMEOUT`] is taken for dead with all its members.
//!
//! One node (SQLite) has no relay; on PostgreSQL the backend carries events over
//! `NOTIFY` (see `store::postgres::relay`).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::mpsc;

/// How often a node says it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(3);
/// A node silent this long is gone: its members leave every channel.
pub const NODE_TIMEOUT: Duration = Duration::from_secs(10);

/// What one node tells the others about its channels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum ChannelEvent {
    /// A member joined `channel` or changed its state there.
    Join {
        channel: String,
        member: String,
        uid: Value,
        state: Value,
    },
    Leave {
        channel: String,
        member: String,
    },
    Broadcast {
        channel: String,
        event: String,
        payload: Value,
    },
    /// Every member the sender has, in every channel: what the others know of it is
    /// replaced by this.
    Members {
        members: Vec<(String, String, Value, Value)>,
    },
    /// A node started or reconnected: the others answer with their `Members`.
    Hello,
    Alive,
}

/// An event from another node.
#[derive(Debug, Clone)]
pub struct Relayed {
    pub node: String,
    pub event: ChannelEvent,
}

/// The carrier of channel events between nodes.
pub trait Relay: Send + Sync {
    /// This node's id, unique among the live nodes (it prefixes member ids).
    fn node(&self) -> &str;
    /// Sends to every other node, in order. Lost when the database is out of reach.
    fn send(&self, event: ChannelEvent);
    /// The other nodes' events; there is one receiver, the first caller's.
    fn receiver(&self) -> Option<mpsc::UnboundedReceiver<Relayed>>;
}
