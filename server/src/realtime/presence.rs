//! Channels: presence (who is here, with what state) and broadcast (ephemeral messages to
//! whoever is here). Owned by the hub; membership is per connection and ends with it.
//! With other nodes on the same database, the [`Relay`] carries joins, leaves and
//! broadcasts to them, and their members are kept here beside this node's own.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use serde_json::{Map, Value, json};

use super::{ConnId, Outbox};
use crate::changes::relay::{ChannelEvent, NODE_TIMEOUT, Relay, Relayed};

struct Member {
    outbox: Outbox,
    uid: Value,
    state: Value,
}

/// A member on another node.
struct Remote {
    node: String,
    entry: Value,
}

/// A member's id on the wire: the node's prefix ("" alone) and the connection.
fn member_id(prefix: &str, conn: ConnId) -> String {
    format!("{prefix}c{conn}")
}

/// Every channel with members.
#[derive(Default)]
pub struct Channels {
    channels: HashMap<String, BTreeMap<ConnId, Member>>,
    relay: Option<Arc<dyn Relay>>,
    /// This node's prefix of member ids ("" alone).
    prefix: String,
    /// Members on other nodes: channel → member id → member.
    remote: HashMap<String, BTreeMap<String, Remote>>,
    /// When each other node was last heard from.
    heard: HashMap<String, Instant>,
}

fn presence(channel: &str, joins: Map<String, Value>, leaves: Map<String, Value>) -> std::sync::Arc<str> {
    json!({"op": "presence", "channel": channel, "joins": joins, "leaves": leaves}).to_string().into()
}

/// A refused `join` or `broadcast`, or an eviction: an `error` naming the channel.
pub fn channel_error(channel: &str, code: &str, message: &str) -> std::sync::Arc<str> {
    json!({"op": "error", "channel": channel, "code": code, "message": message}).to_string().into()
}

impl Channels {
    /// Channels that reach the other nodes through `relay`, if there is one.
    pub fn new(relay: Option<Arc<dyn Relay>>) -> Channels {
        let prefix = relay.as_ref().map_or(String::new(), |relay| format!("{}-", relay.node()));
        if let Some(relay) = &relay {
            // Whoever is already there announces its members.
            relay.send(ChannelEvent::Hello);
        }
        Channels { relay, prefix, ..Channels::default() }
    }

    /// A member's id on the wire: one per connection, unique across the nodes.
    fn member_id(&self, conn: ConnId) -> String {
        member_id(&self.prefix, conn)
    }

    fn relay(&self, event: ChannelEvent) {
        if let Some(relay) = &self.relay {
            relay.send(event);
        }
    }

    /// Joins `conn` to `channel`, or changes its state there. The joiner hears every
    /// member (itself included); the others hear the join.
    pub fn join(&mut self, conn: ConnId, outbox: Outbox, channel: &str, uid: Value, state: Value) {
        let id = self.member_id(conn);
        let members = self.channels.entry(channel.to_owned()).or_default();
        let entry = json!({"uid": uid, "state": state});
        let fresh = !members.contains_key(&conn);
        members.insert(conn, Member { outbox, uid: uid.clone(), state: state.clone() });
        let mut joined = Map::new();
        joined.insert(id.clone(), entry);
        let to_others = presence(channel, joined.clone(), Map::new());
        for (other, member) in members.iter() {
            if *other != conn {
                member.outbox.send(to_others.clone());
            }
        }
        let to_joiner = if fresh {
            let mut everyone: Map<String, Value> = members
                .iter()
                .map(|(id, member)| (member_id(&self.prefix, *id), json!({"uid": member.uid, "state": member.state})))
                .collect();
            for (id, remote) in self.remote.get(channel).into_iter().flatten() {
                everyone.insert(id.clone(), remote.entry.clone());
            }
            presence(channel, everyone, Map::new())
        } else {
            to_others
        };
        if let Some(member) = members.get(&conn) {
            member.outbox.send(to_joiner);
        }
        self.relay(ChannelEvent::Join { channel: channel.to_owned(), member: id, uid, state });
    }

    /// Removes `conn` from `channel`; the others hear it leave.
    pub fn leave(&mut self, conn: ConnId, channel: &str) {
        let id = self.member_id(conn);
        let Some(members) = self.channels.get_mut(channel) else { return };
        let Some(gone) = members.remove(&conn) else { return };
        let mut left = Map::new();
        left.insert(id.clone(), json!({"uid": gone.uid, "state": gone.state}));
        let message = presence(channel, Map::new(), left);
        for member in members.values() {
            member.outbox.send(message.clone());
        }
        if members.is_empty() {
            self.channels.remove(channel);
        }
        self.relay(ChannelEvent::Leave { channel: channel.to_owned(), member: id });
    }

    /// Sends to this node's members of `channel` (but `except`).
    fn tell(&self, channel: &str, message: &Arc<str>, except: Option<ConnId>) {
        for (conn, member) in self.channels.get(channel).into_iter().flatten() {
            if Some(*conn) != except {
                member.outbox.send(message.clone());
            }
        }
    }

    /// An event from another node.
    pub fn relayed(&mut self, Relayed { node, event }: Relayed) {
        let ours = self.relay.as_ref().is_some_and(|relay| relay.node() == node);
        if !ours {
            self.heard.insert(node.clone(), Instant::now());
        }
        match event {
            ChannelEvent::Join { channel, member, uid, state } => {
                let entry = json!({"uid": uid, "state": state});
                let mut joined = Map::new();
                joined.insert(member.clone(), entry.clone());
                self.tell(&channel, &presence(&channel, joined, Map::new()), None);
                self.remote.entry(channel).or_default().insert(member, Remote { node, entry });
            }
            ChannelEvent::Leave { channel, member } => self.forget(&channel, &member),
            ChannelEvent::Broadcast { channel, event, payload } => {
                self.tell(&channel, &broadcast_message(&channel, &event, &payload), None);
            }
            ChannelEvent::Members { members } => {
                // What this node knows of the sender becomes exactly this.
                let mut stale: Vec<(String, String)> = Vec::new();
                for (channel, remotes) in &self.remote {
                    for (id, remote) in remotes {
                        let kept = members.iter().any(|(c, m, _, _)| c == channel && m == id);
                        if remote.node == node && !kept {
                            stale.push((channel.clone(), id.clone()));
                        }
                    }
                }
                for (channel, member) in stale {
                    self.forget(&channel, &member);
                }
                for (channel, member, uid, state) in members {
                    let entry = json!({"uid": uid, "state": state});
                    let known = self.remote.get(&channel).and_then(|remotes| remotes.get(&member));
                    if known.is_none_or(|remote| remote.entry != entry) {
                        let mut joined = Map::new();
                        joined.insert(member.clone(), entry.clone());
                        self.tell(&channel, &presence(&channel, joined, Map::new()), None);
                    }
                    self.remote.entry(channel).or_default().insert(member, Remote { node: node.clone(), entry });
                }
            }
            ChannelEvent::Hello => {
                if ours {
                    self.relay(ChannelEvent::Hello); // this node reconnected: ask again
                }
                self.relay(ChannelEvent::Members { members: self.own_members() });
            }
            ChannelEvent::Alive => {}
        }
    }

    /// Says this node is alive, and lets go of the members of nodes that went silent.
    pub fn heartbeat(&mut self) {
        if self.relay.is_none() {
            return;
        }
        self.relay(ChannelEvent::Alive);
        let silent: Vec<String> =
            self.heard.iter().filter(|(_, at)| at.elapsed() > NODE_TIMEOUT).map(|(node, _)| node.clone()).collect();
        for node in silent {
            self.heard.remove(&node);
            let gone: Vec<(String, String)> = self
                .remote
                .iter()
                .flat_map(|(channel, remotes)| {
                    remotes
                        .iter()
                        .filter(|(_, remote)| remote.node == node)
                        .map(|(id, _)| (channel.clone(), id.clone()))
                })
                .collect();
            for (channel, member) in gone {
                self.forget(&channel, &member);
            }
        }
    }

    /// A member of another node left: this node's members hear it.
    fn forget(&mut self, channel: &str, member: &str) {
        let Some(remotes) = self.remote.get_mut(channel) else { return };
        let Some(gone) = remotes.remove(member) else { return };
        if remotes.is_empty() {
            self.remote.remove(channel);
        }
        let mut left = Map::new();
        left.insert(member.to_owned(), gone.entry);
        self.tell(channel, &presence(channel, Map::new(), left), None);
    }

    fn own_members(&self) -> Vec<(String, String, Value, Value)> {
        self.channels
            .iter()
            .flat_map(|(channel, members)| {
                members.iter().map(|(conn, member)| {
                    (channel.clone(), self.member_id(*conn), member.uid.clone(), member.state.clone())
                })
            })
            .collect()
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

    /// Sends an ephemeral message to every member but the sender, on every node.
    pub fn broadcast(&self, conn: ConnId, channel: &str, event: &str, payload: &Value) {
        self.tell(channel, &broadcast_message(channel, event, payload), Some(conn));
        let (channel, event, payload) = (channel.to_owned(), event.to_owned(), payload.clone());
        self.relay(ChannelEvent::Broadcast { channel, event, payload });
    }
}

fn broadcast_message(channel: &str, event: &str, payload: &Value) -> Arc<str> {
    json!({"op": "broadcast", "channel": channel, "event": event, "payload": payload}).to_string().into()
}
