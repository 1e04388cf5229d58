//! Live listeners and channels over one shared WebSocket.
//!
//! A task owns the socket. It connects when the first listener or channel needs it,
//! signs in with the client's credential (and again whenever the token is refreshed),
//! and subscribes everything open. When the connection breaks it reconnects with
//! doubling backoff (100 ms to 5 s) and subscribes again with each subscription's last
//! `resume` token, so the server sends exactly what was missed (or a fresh snapshot,
//! which the task turns into the changes against what the listener had).
//!
//! With a local cache, a listener shows the server's result with the writes still
//! queued for the server applied on top (`has_pending_writes`), and answers from the
//! cache while the server cannot be reached.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{SinkExt, Stream, StreamExt};
use hearth_types::realtime::{ChangeType, ClientMessage, ServerMessage};
use hearth_types::{Document, Query};
use serde_json::{Map, Value};
use tokio::sync::mpsc;

use crate::docs::query_order;
use crate::local::Local;
use crate::transport::SocketSink;
use crate::{Client, Error, Inner, Result};

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
const PING_EVERY: Duration = Duration::from_secs(25);

/// What a listener watches.
#[derive(Debug, Clone)]
pub(crate) enum Target {
    Doc(String),
    Query(Query),
}

/// One document entering, changing in or leaving a listener's result.
#[derive(Debug, Clone, PartialEq)]
pub struct DocChange {
    /// Added to, modified in, or removed from the result.
    pub kind: ChangeType,
    /// As it is now; for `Removed`, as it was last seen.
    pub doc: Document,
}

/// A listener's result after a change.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// The whole result, in query order (for a document: it, or nothing).
    pub docs: Vec<Document>,
    /// What changed since the previous snapshot; in the first, every document is `Added`.
    pub changes: Vec<DocChange>,
    /// Whether `docs` shows writes made on this client that the server has not
    /// confirmed yet (made offline, or waiting behind those).
    pub has_pending_writes: bool,
}

/// A live document or query: a [`Stream`] of [`Snapshot`]s. It ends after an error (a
/// subscription the rules refuse); dropping it unsubscribes.
pub struct Listener {
    id: u64,
    events: mpsc::UnboundedReceiver<Result<Snapshot>>,
    live: Live,
}

impl Stream for Listener {
    type Item = Result<Snapshot>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.events.poll_recv(cx)
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = self.live.commands.send(Command::Stop { id: self.id });
    }
}

/// What happens on a channel.
#[derive(Debug, Clone, PartialEq)]
pub enum ChannelEvent {
    /// Members that joined or changed state, and members that left, by member id; each
    /// member is `{uid, state}`. The first event after joining holds everyone present.
    Presence {
        /// Members that joined or changed state.
        joins: Map<String, Value>,
        /// Members that left.
        leaves: Map<String, Value>,
    },
    /// A message another member broadcast.
    Broadcast {
        /// The name the sender gave it.
        event: String,
        /// What it carries.
        payload: Value,
    },
}

/// A realtime channel by name (e.g. `room:r1`), guarded by the `@channels/` rules.
#[derive(Clone)]
pub struct Channel {
    client: Client,
    name: String,
}

impl Channel {
    pub(crate) fn new(client: Client, name: &str) -> Channel {
        Channel { client, name: name.to_owned() }
    }

    /// Joins with a presence `state`; the stream gives what happens on the channel until
    /// it is dropped (which leaves). Joined again after a reconnect.
    pub fn join(&self, state: Value) -> ChannelListener {
        let live = self.client.live();
        let (sender, events) = mpsc::unbounded_channel();
        let _ = live.commands.send(Command::Join { channel: self.name.clone(), state, events: sender });
        ChannelListener { channel: self.name.clone(), events, live }
    }

    /// Sends an ephemeral message to the channel's members (a member may broadcast).
    pub fn broadcast(&self, event: &str, payload: Value) {
        let command = Command::Broadcast { channel: self.name.clone(), event: event.to_owned(), payload };
        let _ = self.client.live().commands.send(command);
    }
}

/// Membership of a channel: a [`Stream`] of [`ChannelEvent`]s; dropping it leaves.
pub struct ChannelListener {
    channel: String,
    events: mpsc::UnboundedReceiver<Result<ChannelEvent>>,
    live: Live,
}

impl ChannelListener {
    /// Changes this member's presence state.
    pub fn set_state(&self, state: Value) {
        let _ = self.live.commands.send(Command::State { channel: self.channel.clone(), state });
    }
}

impl Stream for ChannelListener {
    type Item = Result<ChannelEvent>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.events.poll_recv(cx)
    }
}

impl Drop for ChannelListener {
    fn drop(&mut self) {
        let _ = self.live.commands.send(Command::Leave { channel: self.channel.clone() });
    }
}

enum Command {
    Listen { id: u64, target: Target, events: mpsc::UnboundedSender<Result<Snapshot>> },
    Stop { id: u64 },
    Join { channel: String, state: Value, events: mpsc::UnboundedSender<Result<ChannelEvent>> },
    State { channel: String, state: Value },
    Leave { channel: String },
    Broadcast { channel: String, event: String, payload: Value },
}

/// The handle to the socket task. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Live {
    commands: mpsc::UnboundedSender<Command>,
    next: Arc<AtomicU64>,
}

impl Live {
    pub(crate) fn start(client: Weak<Inner>, local: Option<Arc<Local>>) -> Live {
        let (commands, receiver) = mpsc::unbounded_channel();
        let open = Open { local, ..Open::default() };
        tokio::spawn(run(client, receiver, open));
        Live { commands, next: Arc::new(AtomicU64::new(1)) }
    }

    pub(crate) fn listen(&self, target: Target) -> Listener {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (sender, events) = mpsc::unbounded_channel();
        let _ = self.commands.send(Command::Listen { id, target, events: sender });
        Listener { id, events, live: self.clone() }
    }
}

struct Subscription {
    target: Target,
    events: mpsc::UnboundedSender<Result<Snapshot>>,
    /// The last `resume` token.
    resume: Option<String>,
    /// Whether the server's first snapshot came (later ones become changes).
    seen: bool,
    /// The result as the server (or, before it answered, the cache) has it.
    server: Vec<Document>,
    /// What the listener was last given, when that is not `server` (queued writes were
    /// on top, or `server` just took a fresh snapshot): the result never costs two copies
    /// while nothing is queued.
    shown: Option<Vec<Document>>,
    shown_pending: bool,
    /// Whether the listener has had a first snapshot.
    delivered: bool,
}

impl Subscription {
    fn new(target: Target, events: mpsc::UnboundedSender<Result<Snapshot>>) -> Subscription {
        Subscription {
            target,
            events,
            resume: None,
            seen: false,
            server: Vec::new(),
            shown: None,
            shown_pending: false,
            delivered: false,
        }
    }

    /// Gives the listener the server's result with the queued writes applied, if it
    /// differs from what it has. `server_changes` are the server's own changes, passed on
    /// as they are (in the server's order) when no queued write is in the way.
    fn show(&mut self, local: Option<&Local>, server_changes: Option<Vec<DocChange>>) {
        let (view, pending) = match local {
            Some(local) => local.overlay(&self.target, &self.server),
            None => (self.server.clone(), false),
        };
        let changes = match server_changes {
            Some(changes) if self.delivered && !pending && self.shown.is_none() => changes,
            _ => diff(self.shown.as_deref().unwrap_or(&self.server), &view, !self.delivered),
        };
        if self.delivered && changes.is_empty() && pending == self.shown_pending {
            return;
        }
        self.shown = pending.then(|| view.clone());
        self.shown_pending = pending;
        self.delivered = true;
        let _ = self.events.send(Ok(Snapshot { docs: view, changes, has_pending_writes: pending }));
    }
}

struct Membership {
    state: Value,
    events: mpsc::UnboundedSender<Result<ChannelEvent>>,
}

/// Everything open, kept across connections.
#[derive(Default)]
struct Open {
    subs: HashMap<u64, Subscription>,
    channels: HashMap<String, Membership>,
    /// Who the resume tokens were read as (a user id; `None`: no user): a token only
    /// means "what this caller saw", so another caller starts from fresh snapshots.
    identity: Option<String>,
    /// Where documents that arrive are kept, and the writes queued for the server, if
    /// the client has a cache.
    local: Option<Arc<Local>>,
}

impl Open {
    fn is_empty(&self) -> bool {
        self.subs.is_empty() && self.channels.is_empty()
    }

    /// Applies a command; gives the message it needs sent, if connected.
    fn apply(&mut self, command: Command) -> Option<ClientMessage> {
        match command {
            Command::Listen { id, target, events } => {
                let subscription = Subscription::new(target, events);
                let message = subscribe(id, &subscription);
                self.subs.insert(id, subscription);
                Some(message)
            }
            Command::Stop { id } => self.subs.remove(&id).map(|_| ClientMessage::Unsub { id: wire_id(id) }),
            Command::Join { channel, state, events } => {
                self.channels.insert(channel.clone(), Membership { state: state.clone(), events });
                Some(ClientMessage::Join { channel, presence: Some(state) })
            }
            Command::State { channel, state } => {
                let membership = self.channels.get_mut(&channel)?;
                membership.state = state.clone();
                Some(ClientMessage::Join { channel, presence: Some(state) })
            }
            Command::Leave { channel } => self.channels.remove(&channel).map(|_| ClientMessage::Leave { channel }),
            Command::Broadcast { channel, event, payload } => {
                Some(ClientMessage::Broadcast { channel, event, payload })
            }
        }
    }

    /// Forgets the resume tokens if they were read as someone else than `identity`.
    fn speak_as(&mut self, identity: Option<String>) {
        if self.identity != identity {
            for subscription in self.subs.values_mut() {
                subscription.resume = None;
            }
            self.identity = identity;
        }
    }

    /// While the server cannot be reached, a listener that has had nothing yet gets
    /// what the cache holds, if anything (a snapshot without a `resume` token: the
    /// server's first snapshot then comes as the changes against it).
    fn answer_from_cache(&mut self) {
        let Some(local) = &self.local else { return };
        for subscription in self.subs.values_mut().filter(|subscription| !subscription.delivered) {
            subscription.server = match &subscription.target {
                Target::Doc(path) => local.cache.get(path).into_iter().collect(),
                Target::Query(query) => local.cached(query),
            };
            if !subscription.server.is_empty() || local.overlay(&subscription.target, &[]).1 {
                subscription.show(Some(local), None);
            }
        }
    }

    /// The queue of local writes changed: every listener shows its new local view.
    fn queue_changed(&mut self) {
        let local = self.local.clone();
        for subscription in self.subs.values_mut().filter(|subscription| subscription.delivered || subscription.seen) {
            subscription.show(local.as_deref(), None);
        }
    }

    /// Everything to send on a new connection.
    fn resubscribe(&self) -> Vec<ClientMessage> {
        let subs = self.subs.iter().map(|(id, subscription)| subscribe(*id, subscription));
        let joins = self.channels.iter().map(|(channel, membership)| ClientMessage::Join {
            channel: channel.clone(),
            presence: Some(membership.state.clone()),
        });
        subs.chain(joins).collect()
    }

    /// Handles a server message; `true` when the token must be refreshed.
    fn receive(&mut self, message: ServerMessage) -> bool {
        match message {
            ServerMessage::Snapshot { id, docs, resume } => {
                let Some(subscription) = parse_id(&id).and_then(|id| self.subs.get_mut(&id)) else { return false };
                if let Some(local) = &self.local {
                    local.cache.put(&docs);
                }
                let before = std::mem::replace(&mut subscription.server, docs);
                subscription.shown.get_or_insert(before);
                subscription.resume = Some(resume);
                subscription.seen = true;
                subscription.show(self.local.as_deref(), None);
            }
            ServerMessage::Changes { id, changes, resume } => {
                let Some(subscription) = parse_id(&id).and_then(|id| self.subs.get_mut(&id)) else { return false };
                subscription.resume = Some(resume);
                if changes.is_empty() {
                    return false;
                }
                if let Some(local) = &self.local {
                    let arrived: Vec<Document> = changes
                        .iter()
                        .filter(|change| change.kind != ChangeType::Removed)
                        .map(|change| change.doc.clone())
                        .collect();
                    local.cache.put(&arrived);
                }
                if subscription.shown.is_none()
                    && self.local.as_ref().is_some_and(|local| local.touches(&subscription.target))
                {
                    // Queued writes now apply: keep what the listener has to tell the changes.
                    subscription.shown = Some(subscription.server.clone());
                }
                let mut applied = Vec::with_capacity(changes.len());
                for change in changes {
                    subscription.server.retain(|doc| doc.path != change.doc.path);
                    if change.kind != ChangeType::Removed {
                        subscription.server.push(change.doc.clone());
                    }
                    applied.push(DocChange { kind: change.kind, doc: change.doc });
                }
                if let Target::Query(query) = &subscription.target {
                    subscription.server.sort_by(|a, b| query_order(query, a, b));
                }
                subscription.show(self.local.as_deref(), Some(applied));
            }
            ServerMessage::Error { id: Some(id), code, message, .. } => {
                if let Some(subscription) = parse_id(&id).and_then(|id| self.subs.remove(&id)) {
                    let _ = subscription.events.send(Err(Error::Api { code, message, details: Map::new() }));
                }
            }
            ServerMessage::Error { channel: Some(channel), code, message, .. } => {
                if let Some(membership) = self.channels.remove(&channel) {
                    let _ = membership.events.send(Err(Error::Api { code, message, details: Map::new() }));
                }
            }
            ServerMessage::Error { code, message, .. } => {
                tracing::debug!(?code, %message, "the realtime connection reported a problem");
                return code == hearth_types::ErrorCode::Unauthenticated;
            }
            ServerMessage::Presence { channel, joins, leaves } => {
                if let Some(membership) = self.channels.get(&channel) {
                    let _ = membership.events.send(Ok(ChannelEvent::Presence { joins, leaves }));
                }
            }
            ServerMessage::Broadcast { channel, event, payload } => {
                if let Some(membership) = self.channels.get(&channel) {
                    let _ = membership.events.send(Ok(ChannelEvent::Broadcast { event, payload }));
                }
            }
            ServerMessage::Pong => {}
        }
        false
    }
}

fn wire_id(id: u64) -> String {
    format!("s{id}")
}

fn parse_id(id: &str) -> Option<u64> {
    id.strip_prefix('s')?.parse().ok()
}

fn subscribe(id: u64, subscription: &Subscription) -> ClientMessage {
    let (doc, query) = match &subscription.target {
        Target::Doc(path) => (Some(path.clone()), None),
        Target::Query(query) => (None, Some(query.clone())),
    };
    ClientMessage::Sub { id: wire_id(id), doc, query, resume: subscription.resume.clone() }
}

/// The changes from `before` to `after`: all `Added` for a first snapshot.
fn diff(before: &[Document], after: &[Document], first: bool) -> Vec<DocChange> {
    let added = |doc: &Document| DocChange { kind: ChangeType::Added, doc: doc.clone() };
    if first {
        return after.iter().map(added).collect();
    }
    let old: HashMap<&str, &Document> = before.iter().map(|doc| (doc.path.as_str(), doc)).collect();
    let new: HashMap<&str, &Document> = after.iter().map(|doc| (doc.path.as_str(), doc)).collect();
    let removed = before
        .iter()
        .filter(|doc| !new.contains_key(doc.path.as_str()))
        .map(|doc| DocChange { kind: ChangeType::Removed, doc: doc.clone() });
    let changed = after.iter().filter_map(|doc| match old.get(doc.path.as_str()) {
        None => Some(added(doc)),
        Some(was) if was.version != doc.version => Some(DocChange { kind: ChangeType::Modified, doc: doc.clone() }),
        Some(was) if was.data != doc.data => Some(DocChange { kind: ChangeType::Modified, doc: doc.clone() }),
        Some(_) => None,
    });
    removed.chain(changed).collect()
}

async fn send(sink: &mut SocketSink, message: &ClientMessage) -> Result<()> {
    let text = serde_json::to_string(message).map_err(|error| Error::Protocol(error.to_string()))?;
    sink.send(text).await
}

/// The socket task: connects while anything is open, until the client is gone.
async fn run(client: Weak<Inner>, mut commands: mpsc::UnboundedReceiver<Command>, mut open: Open) {
    let mut backoff = FIRST_BACKOFF;
    let mut queue = open.local.as_ref().map(|local| local.changes());
    loop {
        if open.is_empty() {
            match commands.recv().await {
                Some(command) => drop(open.apply(command)),
                None => return,
            }
            continue;
        }
        let Some(inner) = client.upgrade() else { return };
        let client_now = Client { inner };
        let connected = client_now.inner.transport.connect(client_now.websocket_url()).await;
        let credential = client_now.credential().await.ok().flatten();
        let mut tokens = client_now.inner.tokens.subscribe();
        tokens.borrow_and_update();
        open.speak_as(identity(&client_now));
        drop(client_now);
        let (mut sink, mut stream) = match connected {
            Ok(socket) => socket,
            Err(error) => {
                tracing::debug!(%error, ?backoff, "realtime connection failed; retrying");
                open.answer_from_cache();
                if !wait(&mut open, &mut commands, &mut queue, backoff).await {
                    return;
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        if let Some(local) = &open.local {
            // The server answers again: send what was written meanwhile.
            local.poke();
        }
        let mut greeting = Vec::new();
        if let Some(token) = credential {
            greeting.push(ClientMessage::Auth { token });
        }
        greeting.extend(open.resubscribe());
        let mut healthy = true;
        for message in &greeting {
            if send(&mut sink, message).await.is_err() {
                healthy = false;
                break;
            }
        }
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.tick().await;
        while healthy {
            tokio::select! {
                command = commands.recv() => match command {
                    Some(command) => {
                        if let Some(message) = open.apply(command) {
                            healthy = send(&mut sink, &message).await.is_ok();
                        }
                    }
                    None => return,
                },
                frame = stream.next() => match frame {
                    Some(Ok(text)) => match serde_json::from_str::<ServerMessage>(&text) {
                        Ok(message) => {
                            backoff = FIRST_BACKOFF;
                            if open.receive(message) {
                                // Deliveries paused for an expired token: refresh; the new
                                // token arrives through `tokens` below.
                                if let Some(inner) = client.upgrade() {
                                    tokio::spawn(async move { drop(Client { inner }.refresh(true).await) });
                                }
                            }
                        }
                        Err(error) => tracing::warn!(%error, "a realtime message the SDK does not know"),
                    },
                    _ => healthy = false,
                },
                changed = tokens.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let Some(inner) = client.upgrade() else { return };
                    let now = Client { inner };
                    let token = now.credential().await.ok().flatten();
                    if identity(&now) != open.identity {
                        // Another caller: the server restarts the subscriptions from
                        // fresh snapshots after the `auth`, and tokens read before are void.
                        open.speak_as(identity(&now));
                    }
                    match token {
                        Some(token) => healthy = send(&mut sink, &ClientMessage::Auth { token }).await.is_ok(),
                        // Signed out: the socket still speaks for the old user, and the
                        // protocol has no way back to no one; start a new one.
                        None => healthy = false,
                    }
                }
                _ = ping.tick() => healthy = send(&mut sink, &ClientMessage::Ping).await.is_ok(),
                () = queue_changed(&mut queue) => open.queue_changed(),
            }
        }
        tracing::debug!(?backoff, "realtime connection lost; reconnecting");
        if !wait(&mut open, &mut commands, &mut queue, backoff).await {
            return;
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Who the client's calls speak for: the signed-in user's id, or the service key.
fn identity(client: &Client) -> Option<String> {
    if client.inner.service_key.is_some() {
        return Some("service key".into());
    }
    client.current_user().map(|user| user.id)
}

/// Resolves when the local write queue changed (never without a cache).
async fn queue_changed(queue: &mut Option<tokio::sync::watch::Receiver<u64>>) {
    let changed = match queue {
        Some(receiver) => receiver.changed().await.is_ok(),
        None => false,
    };
    if !changed {
        std::future::pending::<()>().await;
    }
}

/// Sleeps `backoff`, still taking commands and showing local writes; `false` when the
/// client is gone.
async fn wait(
    open: &mut Open,
    commands: &mut mpsc::UnboundedReceiver<Command>,
    queue: &mut Option<tokio::sync::watch::Receiver<u64>>,
    backoff: Duration,
) -> bool {
    let sleep = tokio::time::sleep(backoff);
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            () = &mut sleep => return true,
            () = queue_changed(queue) => {
                open.queue_changed();
                open.answer_from_cache();
            }
            command = commands.recv() => match command {
                Some(command) => {
                    drop(open.apply(command));
                    open.answer_from_cache();
                }
                None => return false,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc(id: &str, version: i64, n: i64) -> Document {
        let data = json!({ "n": n }).as_object().cloned().unwrap_or_default();
        let time = "2026-11-28T00:00:00.000000Z".to_owned();
        Document { path: format!("c/{id}"), id: id.into(), data, version, created_at: time.clone(), updated_at: time }
    }

    #[test]
    fn a_fresh_snapshot_becomes_the_changes_against_what_the_listener_had() {
        let before = [doc("a", 1, 1), doc("b", 1, 2), doc("c", 3, 3)];
        let after = [doc("b", 2, 5), doc("c", 3, 3), doc("d", 1, 4)];
        let kinds: Vec<(ChangeType, String)> =
            diff(&before, &after, false).into_iter().map(|change| (change.kind, change.doc.id)).collect();
        assert_eq!(
            kinds,
            vec![
                (ChangeType::Removed, "a".into()),
                (ChangeType::Modified, "b".into()),
                (ChangeType::Added, "d".into())
            ]
        );
        assert!(diff(&before, &after, true).iter().all(|change| change.kind == ChangeType::Added));
    }

    #[test]
    fn changes_keep_a_query_result_in_query_order_and_unknown_ids_are_ignored() {
        let query = Query {
            collection: Some("c".into()),
            order_by: vec![hearth_types::OrderBy { field: "n".into(), dir: hearth_types::Direction::Desc }],
            ..Query::default()
        };
        let (events, mut received) = mpsc::unbounded_channel();
        let mut open = Open::default();
        open.apply(Command::Listen { id: 7, target: Target::Query(query), events });
        let snapshot =
            ServerMessage::Snapshot { id: "s7".into(), docs: vec![doc("a", 1, 3), doc("b", 1, 1)], resume: "5".into() };
        assert!(!open.receive(snapshot));
        let change = |kind, doc| hearth_types::realtime::Change { kind, doc };
        let changes = vec![change(ChangeType::Added, doc("c", 1, 2)), change(ChangeType::Removed, doc("a", 1, 3))];
        open.receive(ServerMessage::Changes { id: "s7".into(), changes, resume: "7".into() });
        open.receive(ServerMessage::Changes { id: "s99".into(), changes: Vec::new(), resume: "8".into() });
        let first = received.try_recv().expect("snapshot").expect("ok");
        assert_eq!(first.changes.len(), 2);
        let second = received.try_recv().expect("changes").expect("ok");
        let ids: Vec<&str> = second.docs.iter().map(|doc| doc.id.as_str()).collect();
        assert_eq!(ids, ["c", "b"], "n descending");
        assert_eq!(open.subs[&7].resume.as_deref(), Some("7"));
        assert!(received.try_recv().is_err(), "nothing for another subscription");
        // An expired token asks for a refresh; a refused subscription ends its listener.
        let expired = ServerMessage::Error {
            id: None,
            channel: None,
            code: hearth_types::ErrorCode::Unauthenticated,
            message: "expired".into(),
        };
        assert!(open.receive(expired));
        let refused = ServerMessage::Error {
            id: Some("s7".into()),
            channel: None,
            code: hearth_types::ErrorCode::PermissionDenied,
            message: "no".into(),
        };
        open.receive(refused);
        assert!(matches!(received.try_recv(), Ok(Err(Error::Api { .. }))));
        assert!(open.subs.is_empty());
    }
}
