//! The messages of `GET /v1/realtime`, one JSON object per text frame.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{Document, ErrorCode, Query};

/// Client → server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum ClientMessage {
    /// Sign in (again, when the token was refreshed); a service key works too.
    Auth {
        token: String,
    },
    /// Watch a document (`doc`) or a query; `resume` from an earlier message delivers
    /// only what changed since.
    Sub {
        id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        doc: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        query: Option<Query>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resume: Option<String>,
    },
    Unsub {
        id: String,
    },
    Ping,
    /// Join a channel with a presence state (again: change the state).
    Join {
        channel: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        presence: Option<Value>,
    },
    Leave {
        channel: String,
    },
    /// An ephemeral message to the channel's other members.
    Broadcast {
        channel: String,
        event: String,
        #[serde(default)]
        payload: Value,
    },
}

/// Server → client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum ServerMessage {
    /// The whole result of a subscription.
    Snapshot {
        id: String,
        docs: Vec<Document>,
        resume: String,
    },
    /// What changed since the last message of the subscription, in commit order.
    Changes {
        id: String,
        changes: Vec<Change>,
        resume: String,
    },
    /// A failed subscription (`id`), a refused `join` or `broadcast` (`channel`), or a
    /// problem with the connection (neither).
    Error {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        channel: Option<String>,
        code: ErrorCode,
        message: String,
    },
    Pong,
    /// Members who joined (or changed state) and who left, by member id.
    Presence {
        channel: String,
        joins: Map<String, Value>,
        leaves: Map<String, Value>,
    },
    Broadcast {
        channel: String,
        event: String,
        payload: Value,
    },
}

/// One entry of a `changes` message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    #[serde(rename = "type")]
    pub kind: ChangeType,
    /// The document as it is now; for `removed`, as it was last seen.
    pub doc: Document,
}

/// How a document changed for a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeType {
    /// It entered the result (created, or now matches or is readable).
    Added,
    Modified,
    /// It left the result (deleted, or no longer matches or is readable).
    Removed,
}
