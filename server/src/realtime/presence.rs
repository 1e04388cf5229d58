//! Channels: presence (who is here, with what state) and broadcast (ephemeral messages to
//! whoever is here). Owned by the hub; membership is per connection and ends with it.

use std::collections::{BTreeMap, HashMap};

use serde_json::{Map, Value, json};

use super::{ConnId, Outbox};

struct Member {
    outbox: Outbox,
    uid: Value,
    state: Value,
}

/// Every channel with members.
#[derive(Default)]
pub struct Channels {
    channels: HashMap<String, BTreeMap<ConnId, Member>>,
}

/// A member's id on the wire: one per connection.
fn member_id(conn: ConnId) -> String {
    format!("c{conn}")
}

fn presence(channel: &str, joins: Map<String, Value>, leaves: Map<String, Value>) -> std::sync::Arc<str> {
    json!({"op": "presence", "channel": channel, "joins": joins, "leaves": leaves}).to_string().into()
}

/// A refused `join` or `broadcast`, or an eviction: an `error` naming the channel.
pub fn channel_error(channel: &str, code: &str, message: &str) -> std::sync::Arc<str> {
    json!({"op": "error", "channel": channel, "code": code, "message": message}).to_string().into()
}

impl Channels {
    /// Joins `conn` to `channel`, or changes its state there. The joiner hears every
    /// member (itself included); the others hear the join.
    pub fn join(&mut self, conn: ConnId, outbox: Outbox, channel: &str, uid: Value, state: Value) {
        let members = self.channels.entry(channel.to_owned()).or_default();
        let entry = json!({"uid": uid, "state": state});
        let fresh = !members.contains_key(&conn);
        members.insert(conn, Member { outbox, uid, state });
        let mut joined = Map::new();
        joined.insert(member_id(conn), entry);
        let to_others = presence(channel, joined.clone(), Map::new());
        for (other, member) in members.iter() {
            if *other != conn {
                member.outbox.send(to_others.clone());
            }
        }
        let to_joiner = if fresh {
            let everyone = members
                .iter()
                .map(|(id, member)| (member_id(*id), json!({"uid": member.uid, "state": member.state})))
                .collect();
            presence(channel, everyone, Map::new())
        } else {
            to_others
        };
        if let Some(member) = members.get(&conn) {
            member.outbox.send(to_joiner);
        }
    }

    /// Removes `conn` from `channel`; the others hear it leave.
    pub fn leave(&mut self, conn: ConnId, channel: &str) {
        let Some(members) = self.channels.get_mut(channel) else { return };
        let Some(gone) = members.remove(&conn) else { return };
        let mut left = Map::new();
        left.insert(member_id(conn), json!({"uid": gone.uid, "state": gone.state}));
        let message = presence(channel, Map::new(), left);
        for member in members.values() {
            member.outbox.send(message.clone());
        }
        if members.is_empty() {
            self.channels.remove(channel);
        }
    }

    /// Removes `conn` from every channel (it disconnected).
    pub fn leave_all(&mut self, conn: ConnId) {
        for channel in self.joined(conn) {
            self.leave(conn, &channel);
        }
    }

    /// The channels `conn` is a member of.
    pub fn joined(&self, conn: ConnId) -> Vec<String> {
        self.channels.iter().filter(|(_, members)| members.contains_key(&conn)).map(|(name, _)| name.clone()).collect()
    }

    /// Every membership: (connection, channel).
    pub fn memberships(&self) -> Vec<(ConnId, String)> {
        self.channels.iter().flat_map(|(name, members)| members.keys().map(|conn| (*conn, name.clone()))).collect()
    }

    /// Removes `conn` from `channel` because it may no longer be there, and tells it why
    /// (the others hear it leave).
    pub fn evict(&mut self, conn: ConnId, channel: &str, code: &str, message: &str) {
        let Some(member) = self.channels.get(channel).and_then(|members| members.get(&conn)) else { return };
        member.outbox.send(channel_error(channel, code, message));
        self.leave(conn, channel);
    }

    /// Evicts `conn` from every channel it is in.
    pub fn evict_all(&mut self, conn: ConnId, code: &str, message: &str) {
        for channel in self.joined(conn) {
            self.evict(conn, &channel, code, message);
        }
    }

    pub fn is_member(&self, conn: ConnId, channel: &str) -> bool {
        self.channels.get(channel).is_some_and(|members| members.contains_key(&conn))
    }

    /// Sends an ephemeral message to every member but the sender.
    pub fn broadcast(&self, conn: ConnId, channel: &str, event: &str, payload: &Value) {
        let Some(members) = self.channels.get(channel) else { return };
        let message: std::sync::Arc<str> =
            json!({"op": "broadcast", "channel": channel, "event": event, "payload": payload}).to_string().into();
        for (other, member) in members {
            if *other != conn {
                member.outbox.send(message.clone());
            }
        }
    }
}
