//! The hub: one task that owns every subscription, fed by the change bus in commit order.
//!
//! A subscription starts in `Preparing`: a task reads its snapshot together with the `seq`
//! it reflects (one read transaction), while the hub buffers the changes that arrive. When
//! the snapshot is ready the hub sends it (or, on resume, the logged changes since the
//! client's token), applies the buffered changes after that `seq`, and goes `Live`: from
//! then on every committed change is matched against the subscriptions of its collection,
//! its collection group and its path, checked against the subscriber's rules, and turned
//! into `added`/`modified`/`removed` for the subscriber's window.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio::sync::mpsc;

use super::{ConnId, Outbox, Watch};
use crate::changes::{Change, RecvError};
use crate::rules::eval::Lookups;
use crate::rules::{Access, Op, Principal, QueryPlan, Rules};
use crate::store::query::{Condition, Target};
use crate::store::{DocJson, Error, QuerySpec, Store, StoredDoc};

/// Most logged changes a resume replays; further back, a fresh snapshot is cheaper.
const MAX_REPLAY: usize = 10_000;
/// Most logged changes of a replay that concern the watch when the rules are decided per
/// document (each costs up to two rule checks, which may read documents); past this, a
/// fresh snapshot, whose rule checks are bounded by the query budget, is sent instead.
const MAX_REPLAY_CHECKS: usize = 1_000;
/// Changes per message of a replay.
const REPLAY_CHUNK: usize = 256;

pub enum Command {
    Open {
        conn: ConnId,
        outbox: Outbox,
        principal: Option<Principal>,
    },
    /// New credentials (`None`: the service key); `paused` (with why) while the caller
    /// has no valid credentials: its token expired or its session was revoked.
    Principal {
        conn: ConnId,
        principal: Option<Principal>,
        paused: Option<&'static str>,
    },
    Sub {
        conn: ConnId,
        id: String,
        watch: Watch,
        resume: Option<i64>,
    },
    Unsub {
        conn: ConnId,
        id: String,
    },
    /// Answered by the hub after the frames before it, every commit published by then
    /// and the snapshots of the subscriptions being prepared.
    Ping {
        conn: ConnId,
    },
    Close {
        conn: ConnId,
    },
    /// Join a channel (or change one's state there); the rules already allowed it.
    Join {
        conn: ConnId,
        channel: String,
        uid: serde_json::Value,
        state: serde_json::Value,
    },
    Leave {
        conn: ConnId,
        channel: String,
    },
    Broadcast {
        conn: ConnId,
        channel: String,
        event: String,
        payload: serde_json::Value,
    },
    /// A member the current rules no longer let join, as checked for `principal`.
    Evict {
        conn: ConnId,
        channel: String,
        principal: Principal,
        message: String,
    },
    Ready {
        conn: ConnId,
        id: String,
        generation: u64,
        outcome: Result<Prepared, Error>,
    },
}

/// A snapshot made ready off the hub.
pub struct Prepared {
    plan: Plan,
    view: View,
    /// The `seq` the snapshot reflects.
    seq: i64,
    /// On resume: per logged change since the token, what the client must hear.
    replay: Option<Vec<(i64, Vec<Entry>)>>,
    /// Documents the rules read to decide (a room for its messages): when one changes,
    /// the subscription is decided again.
    reads: Vec<String>,
}

/// How a subscriber's read rules apply to a document.
#[derive(Clone, Debug)]
enum Plan {
    /// The service key, or a rule that allows every document.
    All,
    /// A rule folded into a condition on the document.
    Where(Condition),
    /// Rules decided per document.
    PerDocument,
}

/// The documents a subscriber holds, in query order; `more` when the query has more than
/// its window.
#[derive(Clone, Default)]
struct View {
    docs: Vec<Arc<StoredDoc>>,
    more: bool,
}

#[derive(Clone)]
enum Entry {
    Added(Arc<StoredDoc>),
    Modified(Arc<StoredDoc>),
    Removed(Arc<StoredDoc>),
}

enum State {
    Preparing {
        buffer: Vec<Change>,
    },
    Live {
        plan: Plan,
        view: View,
    },
    /// Live, its view held by a group of subscriptions with the same query and plan.
    Grouped(GroupId),
}

type GroupId = u64;

/// Live subscriptions that run the same query under the same read plan (the same rule
/// folded for callers it treats alike) share one view: a change is applied to it once,
/// and the message body its members hear is encoded once.
struct Group {
    /// What makes subscriptions alike; see [`Hub::group`].
    signature: String,
    watch: Watch,
    spec: QuerySpec,
    plan: Plan,
    document: bool,
    view: View,
    members: HashSet<Key>,
}

/// Who hears about a change: one subscription, or a group of them.
#[derive(Clone, PartialEq, Eq, Hash)]
enum Listener {
    Sub(Key),
    Group(GroupId),
}

type Heard = HashMap<Listener, (Vec<Entry>, i64)>;

/// Listeners by what they watch: by collection path, by collection id (collection group
/// queries) and by document path.
struct Index<T> {
    by_collection: HashMap<String, HashSet<T>>,
    by_group: HashMap<String, HashSet<T>>,
    by_doc: HashMap<String, HashSet<T>>,
}

impl<T> Default for Index<T> {
    fn default() -> Self {
        Index { by_collection: HashMap::new(), by_group: HashMap::new(), by_doc: HashMap::new() }
    }
}

impl<T: Clone + Eq + std::hash::Hash> Index<T> {
    fn insert(&mut self, watch: &Watch, item: T) {
        let (map, name) = self.slot(watch);
        map.entry(name).or_default().insert(item);
    }

    fn remove(&mut self, watch: &Watch, item: &T) {
        let (map, name) = self.slot(watch);
        forget(map, &name, item);
    }

    /// Everyone a change to the document at `path` may concern.
    fn matching(&self, path: &crate::store::DocPath) -> Vec<T> {
        let mut found = Vec::new();
        for (map, name) in [
            (&self.by_collection, path.collection()),
            (&self.by_group, path.collection_id()),
            (&self.by_doc, path.as_str()),
        ] {
            if let Some(items) = map.get(name) {
                found.extend(items.iter().cloned());
            }
        }
        found
    }

    fn slot(&mut self, watch: &Watch) -> (&mut HashMap<String, HashSet<T>>, String) {
        match watch {
            Watch::Doc(path) => (&mut self.by_doc, path.as_str().to_owned()),
            Watch::Query(spec) => match &spec.target {
                Target::Collection(collection) => (&mut self.by_collection, collection.as_str().to_owned()),
                Target::Group(group) => (&mut self.by_group, group.clone()),
            },
        }
    }
}

struct Sub {
    watch: Watch,
    /// Documents the subscriber's rules read; see [`Prepared::reads`].
    reads: HashSet<String>,
    /// The query the watch runs (a document watch is a query on its id).
    spec: QuerySpec,
    generation: u64,
    state: State,
}

struct Conn {
    outbox: Outbox,
    principal: Option<Principal>,
    paused: bool,
    subs: HashSet<String>,
    /// Pings waiting for a subscription's snapshot.
    pings: usize,
}

type Key = (ConnId, String);

pub struct Hub {
    store: Store,
    rules: Rules,
    commands: mpsc::UnboundedSender<Command>,
    conns: HashMap<ConnId, Conn>,
    subs: HashMap<Key, Sub>,
    /// Live and preparing subscriptions outside a group.
    index: Index<Key>,
    groups: HashMap<GroupId, Group>,
    group_index: Index<GroupId>,
    signatures: HashMap<String, GroupId>,
    next_group: GroupId,
    /// Subscriptions by the documents their rules read.
    by_read: HashMap<String, HashSet<Key>>,
    /// The last change the hub has processed.
    seq: i64,
    channels: super::presence::Channels,
    shared: Shared,
    generations: u64,
    max_subscriptions: usize,
}

impl Hub {
    pub fn new(
        store: Store,
        rules: Rules,
        commands: mpsc::UnboundedSender<Command>,
        seq: i64,
        max_subscriptions: usize,
    ) -> Hub {
        let store_relay = store.backend().relay();
        Hub {
            store,
            rules,
            commands,
            conns: HashMap::new(),
            subs: HashMap::new(),
            index: Index::default(),
            groups: HashMap::new(),
            group_index: Index::default(),
            signatures: HashMap::new(),
            next_group: 0,
            by_read: HashMap::new(),
            seq,
            channels: super::presence::Channels::new(store_relay),
            shared: Shared::default(),
            generations: 0,
            max_subscriptions,
        }
    }

    pub async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>, mut bus: crate::changes::BusReceiver) {
        let mut installed = self.rules.installed();
        let mut relayed = self.store.backend().relay().and_then(|relay| relay.receiver());
        let mut heartbeat = tokio::time::interval(crate::changes::relay::HEARTBEAT);
        loop {
            tokio::select! {
                Some(event) = next_relayed(&mut relayed) => self.channels.relayed(event),
                _ = heartbeat.tick() => self.channels.heartbeat(),
                Ok(()) = installed.changed() => {
                    // New rules: every subscription re-decides from a fresh snapshot, and
                    // every channel member is checked again.
                    let keys: Vec<Key> = self.subs.keys().cloned().collect();
                    for key in keys {
                        self.restart(key);
                    }
                    self.recheck_members(None);
                }
                command = commands.recv() => match command {
                    Some(command) => {
                        if matches!(command, Command::Ping { .. }) {
                            // Commits published before the ping go first, so a `pong` tells
                            // the caller it has every delivery of the writes it saw
                            // acknowledged.
                            while let Some(committed) = bus.try_recv() {
                                if !self.committed(committed).await {
                                    return;
                                }
                            }
                        }
                        self.command(command).await;
                    }
                    None => return,
                },
                committed = bus.recv() => {
                    if !self.committed(committed).await {
                        return;
                    }
                }
            }
        }
    }

    /// Takes one commit off the bus; false once the bus is closed.
    async fn committed(&mut self, committed: Result<crate::changes::Committed, RecvError>) -> bool {
        match committed {
            Ok(changes) => self.commit(&changes).await,
            Err(RecvError::Lagged) => {
                tracing::warn!("realtime fell behind the change bus; catching up from the log");
                self.catch_up().await;
            }
            Err(RecvError::Closed) => return false,
        }
        true
    }

    /// Reads what the bus dropped from the log.
    async fn catch_up(&mut self) {
        loop {
            match self.store.changes_since(self.seq, 1000).await {
                Ok(changes) if changes.is_empty() => return,
                Ok(changes) => self.commit(&changes).await,
                Err(error) => {
                    tracing::error!(%error, "realtime cannot read the change log");
                    return;
                }
            }
        }
    }

    async fn command(&mut self, command: Command) {
        match command {
            Command::Open { conn, outbox, principal } => {
                self.conns.insert(conn, Conn { outbox, principal, paused: false, subs: HashSet::new(), pings: 0 });
            }
            Command::Principal { conn, principal, paused } => {
                let Some(state) = self.conns.get_mut(&conn) else { return };
                let changed = !same(&state.principal, &principal);
                let uid = |principal: &Option<Principal>| principal.as_ref().map(Principal::uid);
                let someone_else = uid(&state.principal) != uid(&principal);
                let resubscribe = paused.is_none() && (state.paused || changed);
                state.principal = principal;
                state.paused = paused.is_some();
                if let Some(why) = paused {
                    // Sent from here, not by the socket, so the caller hears of the pause only
                    // once no later change can reach it.
                    state.outbox.send(error_message("", "unauthenticated", why));
                    self.channels.evict_all(conn, "unauthenticated", why);
                } else if someone_else {
                    // Members join as who they were: another caller joins again as itself.
                    self.channels.evict_all(
                        conn,
                        "permission-denied",
                        "the connection signed in as another caller; join again",
                    );
                } else if changed {
                    // The same user with other claims: the rules decide again.
                    self.recheck_members(Some(conn));
                }
                let Some(state) = self.conns.get_mut(&conn) else { return };
                if resubscribe {
                    // What this caller may read changed, or deliveries were paused: start
                    // every subscription again from a fresh snapshot.
                    let ids: Vec<String> = state.subs.iter().cloned().collect();
                    for id in ids {
                        self.restart((conn, id));
                    }
                }
            }
            Command::Sub { conn, id, watch, resume } => {
                let Some(state) = self.conns.get(&conn) else { return };
                if state.subs.contains(&id) {
                    let message = error_message(&id, "invalid-argument", "a subscription with this id is open");
                    state.outbox.send(message);
                    return;
                }
                if state.subs.len() >= self.max_subscriptions {
                    let message = error_message(
                        &id,
                        "resource-exhausted",
                        &format!("at most {} subscriptions per connection", self.max_subscriptions),
                    );
                    state.outbox.send(message);
                    return;
                }
                self.subscribe(conn, id, watch, resume);
            }
            Command::Unsub { conn, id } => {
                self.remove(&(conn, id));
                self.answer_pings(conn);
            }
            Command::Ping { conn } => {
                if let Some(state) = self.conns.get_mut(&conn) {
                    state.pings += 1;
                }
                self.answer_pings(conn);
            }
            Command::Join { conn, channel, uid, state } => match self.conns.get(&conn) {
                Some(connection) if connection.paused => connection.outbox.send(super::presence::channel_error(
                    &channel,
                    "unauthenticated",
                    "deliveries are paused: send a new `auth` first",
                )),
                Some(connection) => self.channels.join(conn, connection.outbox.clone(), &channel, uid, state),
                None => {}
            },
            Command::Leave { conn, channel } => self.channels.leave(conn, &channel),
            Command::Broadcast { conn, channel, event, payload } => match self.conns.get(&conn) {
                Some(connection) if connection.paused => connection.outbox.send(super::presence::channel_error(
                    &channel,
                    "unauthenticated",
                    "deliveries are paused: send a new `auth` first",
                )),
                Some(_) => self.channels.broadcast(conn, &channel, &event, &payload),
                None => {}
            },
            Command::Evict { conn, channel, principal, message } => {
                // Only if it is still there as the caller that was checked.
                let checked = self.conns.get(&conn).is_some_and(|state| same(&state.principal, &Some(principal)));
                if checked {
                    self.channels.evict(conn, &channel, "permission-denied", &message);
                }
            }
            Command::Close { conn } => {
                self.channels.leave_all(conn);
                if let Some(state) = self.conns.remove(&conn) {
                    for id in state.subs {
                        let key = (conn, id);
                        if let Some(sub) = self.subs.remove(&key) {
                            self.unindex(&key, &sub);
                        }
                    }
                }
            }
            Command::Ready { conn, id, generation, outcome } => {
                self.ready(conn, id, generation, outcome).await;
                self.answer_pings(conn);
            }
        }
    }

    /// Checks channel members (all, or those of `only`) against the rules now installed,
    /// off the hub's task; those refused are evicted (`Command::Evict`).
    fn recheck_members(&self, only: Option<ConnId>) {
        let members: Vec<(ConnId, String, Principal)> = self
            .channels
            .memberships()
            .into_iter()
            .filter(|(conn, _)| only.is_none_or(|only| only == *conn))
            .filter_map(|(conn, channel)| {
                let principal = self.conns.get(&conn)?.principal.clone()?;
                Some((conn, channel, principal))
            })
            .collect();
        if members.is_empty() {
            return;
        }
        let (rules, commands) = (self.rules.clone(), self.commands.clone());
        tokio::spawn(async move {
            for (conn, channel, principal) in members {
                match rules.check_channel(&principal, Op::Join, &channel).await {
                    Ok(()) => {}
                    Err(Error::PermissionDenied(message)) => {
                        let _ = commands.send(Command::Evict { conn, channel, principal, message });
                    }
                    Err(error) => tracing::error!(%error, "checking a channel member against new rules failed"),
                }
            }
        });
    }

    /// Answers a connection's pings once none of its subscriptions waits for its
    /// snapshot, so a `pong` also follows every snapshot asked for before the `ping`.
    fn answer_pings(&mut self, conn: ConnId) {
        let Some(state) = self.conns.get(&conn) else { return };
        let preparing = |id: &String| {
            let sub = self.subs.get(&(conn, id.clone()));
            matches!(sub.map(|sub| &sub.state), Some(State::Preparing { .. }))
        };
        if state.pings == 0 || state.subs.iter().any(preparing) {
            return;
        }
        let Some(state) = self.conns.get_mut(&conn) else { return };
        for _ in 0..std::mem::take(&mut state.pings) {
            state.outbox.send(r#"{"op":"pong"}"#.into());
        }
    }

    fn subscribe(&mut self, conn: ConnId, id: String, watch: Watch, resume: Option<i64>) {
        let Some(state) = self.conns.get_mut(&conn) else { return };
        state.subs.insert(id.clone());
        let principal = state.principal.clone();
        self.generations += 1;
        let generation = self.generations;
        let key = (conn, id.clone());
        self.index.insert(&watch, key.clone());
        let (store, rules, commands) = (self.store.clone(), self.rules.clone(), self.commands.clone());
        let task_watch = watch.clone();
        let spec = spec_of(&watch);
        let state = State::Preparing { buffer: Vec::new() };
        self.subs.insert(key, Sub { watch, reads: HashSet::new(), spec, generation, state });
        tokio::spawn(async move {
            let outcome = prepare(&store, &rules, principal.as_ref(), &task_watch, resume).await;
            let _ = commands.send(Command::Ready { conn, id, generation, outcome });
        });
    }

    /// Starts a subscription over: a fresh plan and snapshot.
    fn restart(&mut self, key: Key) {
        if let Some(sub) = self.subs.remove(&key) {
            self.unindex(&key, &sub);
            self.subscribe(key.0, key.1, sub.watch, None);
        }
    }

    fn remove(&mut self, key: &Key) {
        if let Some(sub) = self.subs.remove(key) {
            self.unindex(key, &sub);
        }
        if let Some(state) = self.conns.get_mut(&key.0) {
            state.subs.remove(&key.1);
        }
    }

    fn unindex(&mut self, key: &Key, sub: &Sub) {
        match sub.state {
            State::Grouped(group) => self.leave_group(group, key),
            _ => self.index.remove(&sub.watch, key),
        }
        for read in &sub.reads {
            forget(&mut self.by_read, read, key);
        }
    }

    /// Notes that `key`'s rules read these documents.
    fn depend(&mut self, key: &Key, reads: Vec<String>) {
        let Some(sub) = self.subs.get_mut(key) else { return };
        for read in reads {
            if sub.reads.insert(read.clone()) {
                self.by_read.entry(read).or_default().insert(key.clone());
            }
        }
    }

    /// Moves a live subscription into the group of its query and plan, founding it if
    /// there is none. Subscriptions decided per document stay alone (their rules depend on
    /// who asks), and so does one whose view differs from the group's (a refill that read
    /// a newer version than the hub has processed yet) rather than risk a repeated event.
    fn group(&mut self, key: &Key) {
        let Some(sub) = self.subs.get_mut(key) else { return };
        let State::Live { plan, view } = &sub.state else { return };
        if matches!(plan, Plan::PerDocument) {
            return;
        }
        let document = matches!(sub.watch, Watch::Doc(_));
        let signature = format!("{document}|{plan:?}|{:?}", sub.spec);
        let id = match self.signatures.get(&signature) {
            Some(&id) => {
                let Some(group) = self.groups.get_mut(&id) else { return };
                if !same_view(&group.view, view) {
                    return;
                }
                group.members.insert(key.clone());
                id
            }
            None => {
                self.next_group += 1;
                let id = self.next_group;
                let group = Group {
                    signature: signature.clone(),
                    watch: sub.watch.clone(),
                    spec: sub.spec.clone(),
                    plan: plan.clone(),
                    document,
                    view: view.clone(),
                    members: HashSet::from([key.clone()]),
                };
                self.group_index.insert(&group.watch, id);
                self.groups.insert(id, group);
                self.signatures.insert(signature, id);
                id
            }
        };
        sub.state = State::Grouped(id);
        self.index.remove(&sub.watch, key);
    }

    fn leave_group(&mut self, id: GroupId, key: &Key) {
        let Some(group) = self.groups.get_mut(&id) else { return };
        group.members.remove(key);
        if group.members.is_empty()
            && let Some(group) = self.groups.remove(&id)
        {
            self.signatures.remove(&group.signature);
            self.group_index.remove(&group.watch, &id);
        }
    }

    async fn ready(&mut self, conn: ConnId, id: String, generation: u64, outcome: Result<Prepared, Error>) {
        let key = (conn, id.clone());
        let Some(sub) = self.subs.get_mut(&key) else { return };
        if sub.generation != generation {
            return; // superseded by a newer start of the same subscription
        }
        let prepared = match outcome {
            Ok(prepared) => prepared,
            Err(error) => {
                let (code, message) = error_code(&error);
                if let Some(state) = self.conns.get(&conn) {
                    state.outbox.send(error_message(&id, code, &message));
                }
                self.remove(&key);
                return;
            }
        };
        let buffer = match &mut sub.state {
            State::Preparing { buffer } => std::mem::take(buffer),
            State::Live { .. } | State::Grouped(_) => return,
        };
        let Prepared { plan, mut view, seq, replay, reads } = prepared;
        self.depend(&key, reads);
        // Subscribers of the same query hold one copy of each document.
        for doc in &mut view.docs {
            *doc = self.shared.intern(doc);
        }
        let Some(sub) = self.subs.get_mut(&key) else { return };
        sub.state = State::Live { plan, view: view.clone() };
        if let Some(state) = self.conns.get(&conn)
            && !state.paused
        {
            match replay {
                None => state.outbox.send(snapshot_message(&id, &view.docs, seq)),
                Some(replay) => {
                    // In messages of up to REPLAY_CHUNK changes, each carrying the token
                    // of its last one; an empty one says the client is up to date.
                    let entries: Vec<(i64, Entry)> = replay
                        .into_iter()
                        .flat_map(|(change_seq, entries)| entries.into_iter().map(move |entry| (change_seq, entry)))
                        .collect();
                    let mut encoded = Encoded::default();
                    if entries.is_empty() {
                        state.outbox.send(frame("changes", &id, "changes", "", seq));
                    }
                    for chunk in entries.chunks(REPLAY_CHUNK) {
                        let last = chunk.last().map_or(seq, |(change_seq, _)| *change_seq);
                        let chunk: Vec<Entry> = chunk.iter().map(|(_, entry)| entry.clone()).collect();
                        state.outbox.send(frame("changes", &id, "changes", &encoded.entries(&chunk), last));
                    }
                }
            }
        }
        let mut heard = Heard::new();
        let listener = Listener::Sub(key.clone());
        for change in buffer.iter().filter(|change| change.seq > seq) {
            self.deliver(&listener, change, &mut heard).await;
        }
        self.flush(heard);
        self.group(&key);
    }

    /// Processes the changes of one commit: each subscriber hears what the commit did to
    /// its view in one `changes` message.
    async fn commit(&mut self, changes: &[Change]) {
        let mut heard = Heard::new();
        for change in changes {
            self.change(change, &mut heard).await;
        }
        self.flush(heard);
    }

    fn flush(&self, heard: Heard) {
        // A document is encoded once however many subscribers hear of it, and a group's
        // changes once for all its members.
        let mut encoded = Encoded::default();
        for (listener, (entries, seq)) in heard {
            let body = encoded.entries(&entries);
            let members = match &listener {
                Listener::Sub(key) => std::slice::from_ref(key).iter().collect::<Vec<_>>(),
                Listener::Group(id) => match self.groups.get(id) {
                    Some(group) => group.members.iter().collect(),
                    None => continue,
                },
            };
            for (conn, id) in members {
                if let Some(conn) = self.conns.get(conn)
                    && !conn.paused
                {
                    conn.outbox.send(frame("changes", id, "changes", &body, seq));
                }
            }
        }
    }

    async fn change(&mut self, change: &Change, heard: &mut Heard) {
        if change.seq <= self.seq {
            return; // already processed (the bus and the log overlap after a catch-up)
        }
        self.seq = change.seq;
        for id in self.group_index.matching(&change.path) {
            self.deliver(&Listener::Group(id), change, heard).await;
        }
        for key in self.index.matching(&change.path) {
            let Some(sub) = self.subs.get_mut(&key) else { continue };
            if let State::Preparing { buffer } = &mut sub.state {
                buffer.push(change.clone());
                continue;
            }
            self.deliver(&Listener::Sub(key), change, heard).await;
        }
        // A document the rules read changed (a room's members): those subscriptions are
        // decided again, from a fresh snapshot.
        if let Some(keys) = self.by_read.get(change.path.as_str()) {
            let keys: Vec<Key> = keys.iter().cloned().collect();
            for key in keys {
                heard.remove(&Listener::Sub(key.clone()));
                self.restart(key);
            }
        }
    }

    /// Applies a change to one live view and adds what it gained and lost to what its
    /// subscribers will hear.
    async fn deliver(&mut self, listener: &Listener, change: &Change, heard: &mut Heard) {
        let Hub { store, rules, conns, subs, groups, .. } = self;
        let (context, view) = match listener {
            Listener::Sub(key) => {
                let Some(conn) = conns.get(&key.0) else { return };
                let Some(sub) = subs.get_mut(key) else { return };
                let State::Live { plan, view } = &mut sub.state else { return };
                let document = matches!(sub.watch, Watch::Doc(_));
                let principal = conn.principal.as_ref();
                (Context { store, rules, principal, plan, spec: &sub.spec, document, reads: Default::default() }, view)
            }
            Listener::Group(id) => {
                let Some(Group { plan, spec, document, view, .. }) = groups.get_mut(id) else { return };
                // A group's plan never asks who the caller is (see `Hub::group`).
                let document = *document;
                (Context { store, rules, principal: None, plan, spec, document, reads: Default::default() }, view)
            }
        };
        let entries = match apply(&context, view, change).await {
            Ok(entries) => entries,
            Err(error) => {
                tracing::error!(%error, "realtime could not apply a change");
                Vec::new()
            }
        };
        let reads = context.take_reads();
        if let Listener::Sub(key) = listener
            && !reads.is_empty()
        {
            self.depend(key, reads);
        }
        if entries.is_empty() {
            return;
        }
        let slot = heard.entry(listener.clone()).or_insert_with(|| (Vec::new(), change.seq));
        slot.0.extend(entries);
        slot.1 = change.seq;
    }
}

/// The next channel event from another node; never, without other nodes.
async fn next_relayed(
    receiver: &mut Option<mpsc::UnboundedReceiver<crate::changes::relay::Relayed>>,
) -> Option<crate::changes::relay::Relayed> {
    match receiver {
        Some(receiver) => receiver.recv().await,
        None => std::future::pending().await,
    }
}

fn same_view(a: &View, b: &View) -> bool {
    a.more == b.more
        && a.docs.len() == b.docs.len()
        && a.docs.iter().zip(&b.docs).all(|(a, b)| a.path == b.path && a.version == b.version)
}

/// Snapshot documents shared between the views that hold them, by path and version.
#[derive(Default)]
struct Shared {
    docs: HashMap<(String, i64), std::sync::Weak<StoredDoc>>,
    /// Sweep dead entries when the map reaches this size (twice what was live last time).
    sweep_at: usize,
}

impl Shared {
    fn intern(&mut self, doc: &Arc<StoredDoc>) -> Arc<StoredDoc> {
        let key = (doc.path.as_str().to_owned(), doc.version);
        if let Some(shared) = self.docs.get(&key).and_then(std::sync::Weak::upgrade) {
            return shared;
        }
        if self.docs.len() >= self.sweep_at {
            self.docs.retain(|_, doc| doc.strong_count() > 0);
            self.sweep_at = (2 * self.docs.len()).max(4096);
        }
        self.docs.insert(key, Arc::downgrade(doc));
        doc.clone()
    }
}

/// What deciding a delivery to one subscription needs.
struct Context<'a> {
    store: &'a Store,
    rules: &'a Rules,
    principal: Option<&'a Principal>,
    plan: &'a Plan,
    spec: &'a QuerySpec,
    /// A document watch reads with `get`, a query with `list`.
    document: bool,
    /// Documents the rules read while deciding.
    reads: std::sync::Mutex<Vec<String>>,
}

impl Context<'_> {
    fn note_reads(&self, lookups: &Lookups) {
        let mut reads = self.reads.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        reads.extend(lookups.read().map(str::to_owned));
    }

    fn take_reads(&self) -> Vec<String> {
        std::mem::take(&mut *self.reads.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }
}

fn forget<T: Eq + std::hash::Hash>(map: &mut HashMap<String, HashSet<T>>, name: &str, key: &T) {
    if let Some(keys) = map.get_mut(name) {
        keys.remove(key);
        if keys.is_empty() {
            map.remove(name);
        }
    }
}

fn same(a: &Option<Principal>, b: &Option<Principal>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => a.same_caller(b),
        _ => false,
    }
}

/// The query a watch runs; a document watch is a query on its id.
fn spec_of(watch: &Watch) -> QuerySpec {
    match watch {
        Watch::Query(spec) => spec.clone(),
        Watch::Doc(path) => QuerySpec::of_doc(path),
    }
}

async fn prepare(
    store: &Store,
    rules: &Rules,
    principal: Option<&Principal>,
    watch: &Watch,
    resume: Option<i64>,
) -> Result<Prepared, Error> {
    let mut spec = spec_of(watch);
    // Documents the rules read, gathered across the plan and the snapshot.
    let mut lookups = Lookups::default();
    let mut extra_reads = Vec::new();
    let plan = match (principal, watch) {
        (None, _) => Plan::All,
        (Some(_), Watch::Doc(path)) => {
            if !rules.current().could_allow(Op::Get, path) {
                return Err(Error::PermissionDenied(format!("rules allow no `get` of `{path}` to this caller")));
            }
            Plan::PerDocument
        }
        (Some(principal), Watch::Query(_)) => match rules.plan_reading(principal, &spec.target, &mut lookups).await? {
            QueryPlan::Denied => {
                return Err(Error::PermissionDenied("rules allow no `list` of this query to this caller".into()));
            }
            QueryPlan::Restricted(None) => Plan::All,
            QueryPlan::Restricted(Some(condition)) => {
                spec.restriction = Some(condition.clone());
                Plan::Where(condition)
            }
            QueryPlan::PerDocument => Plan::PerDocument,
        },
    };
    let (view, seq) = match (&plan, principal, watch) {
        // Several reads: the seq first; a change both in the snapshot and after the seq
        // is recognised by its version and applied once.
        (Plan::PerDocument, Some(principal), Watch::Doc(path)) => {
            let seq = store.last_seq().await?;
            let mut view = View::default();
            if let Some(doc) = store.get(path.clone()).await?
                && rules.check_reading(principal, &Access::read(Op::Get, path, Some(&doc)), &mut lookups).await.is_ok()
            {
                view.docs.push(Arc::new(doc));
            }
            (view, seq)
        }
        (Plan::PerDocument, Some(principal), Watch::Query(_)) => {
            let seq = store.last_seq().await?;
            let filtered = rules.query_reading(principal, spec.clone(), &mut lookups).await?;
            let docs = filtered.docs.iter().map(|raw| raw.parse().map(Arc::new)).collect::<Result<Vec<_>, _>>()?;
            (View { docs, more: filtered.resume.is_some() }, seq)
        }
        _ => {
            let (page, seq) = store.snapshot(spec.clone()).await?;
            let docs = page.docs.iter().map(|raw| raw.parse().map(Arc::new)).collect::<Result<Vec<_>, _>>()?;
            (View { docs, more: page.more }, seq)
        }
    };
    let replay = match resume {
        Some(after) if !view.more && after <= seq => {
            let changes = store.changes_since(after, MAX_REPLAY).await?;
            let reaches = changes.first().map_or(after == seq, |first| first.seq == after + 1);
            let plain = spec_of(watch);
            let concerned = |change: &&Change| {
                change.seq <= seq
                    && (change.old.as_ref().is_some_and(|doc| plain.matches(doc))
                        || change.doc.as_ref().is_some_and(|doc| plain.matches(doc)))
            };
            let costly = matches!(plan, Plan::PerDocument)
                && principal.is_some()
                && changes.iter().filter(concerned).nth(MAX_REPLAY_CHECKS).is_some();
            if reaches && changes.len() < MAX_REPLAY && !costly {
                let document = matches!(watch, Watch::Doc(_));
                let reads = Default::default();
                let context = Context { store, rules, principal, plan: &plan, spec: &plain, document, reads };
                let mut replay = Vec::new();
                for change in changes.iter().filter(|change| change.seq <= seq) {
                    replay.push((change.seq, transition(&context, change).await?));
                }
                extra_reads = context.take_reads();
                Some(replay)
            } else {
                None
            }
        }
        _ => None,
    };
    let mut reads: Vec<String> = lookups.read().map(str::to_owned).collect();
    reads.extend(extra_reads);
    Ok(Prepared { plan, view, seq, replay, reads })
}

/// Whether the subscriber may read `doc`.
async fn readable(context: &Context<'_>, doc: &StoredDoc) -> Result<bool, Error> {
    Ok(match (context.plan, context.principal) {
        (Plan::All, _) | (Plan::PerDocument, None) => true,
        (Plan::Where(condition), _) => condition.matches(doc, &serde_json::Value::String(doc.path.id().to_owned())),
        (Plan::PerDocument, Some(principal)) => {
            let op = if context.document { Op::Get } else { Op::List };
            let mut lookups = Lookups::default();
            let decided =
                context.rules.check_reading(principal, &Access::read(op, &doc.path, Some(doc)), &mut lookups).await;
            context.note_reads(&lookups);
            match decided {
                Ok(()) => true,
                Err(Error::PermissionDenied(_)) => false,
                Err(error) => return Err(error),
            }
        }
    })
}

/// `doc` if it is in the query's result set and readable.
async fn visible(context: &Context<'_>, doc: Option<&Arc<StoredDoc>>) -> Result<Option<Arc<StoredDoc>>, Error> {
    Ok(match doc {
        Some(doc) if context.spec.matches(doc) && readable(context, doc).await? => Some(doc.clone()),
        _ => None,
    })
}

/// What a logged change means to a client that held the result before it, judged by
/// whether the document matched (and was readable) before and after.
async fn transition(context: &Context<'_>, change: &Change) -> Result<Vec<Entry>, Error> {
    let before = visible(context, change.old.as_ref()).await?;
    let after = visible(context, change.doc.as_ref()).await?;
    Ok(match (before, after) {
        (None, Some(doc)) => vec![Entry::Added(doc)],
        (Some(_), Some(doc)) => vec![Entry::Modified(doc)],
        (Some(doc), None) => vec![Entry::Removed(doc)],
        (None, None) => Vec::new(),
    })
}

/// Applies `change` to `view` and returns what changed for the client. The view stays
/// equal to a fresh run of the query: a document that leaves a full window lets the next
/// one in (read from the store), one that sorts past the end of a window with more
/// beyond it is not shown.
async fn apply(context: &Context<'_>, view: &mut View, change: &Change) -> Result<Vec<Entry>, Error> {
    let spec = context.spec;
    let new = visible(context, change.doc.as_ref()).await?;
    let old_position = view.docs.iter().position(|doc| doc.path == change.path);
    if let (Some(index), Some(new)) = (old_position, &new)
        && view.docs[index].version >= new.version
    {
        return Ok(Vec::new()); // the snapshot or a refill already showed this version
    }
    // What left the view and what entered it; netted out at the end.
    let mut left = Vec::new();
    let mut entered = Vec::new();
    if let Some(index) = old_position {
        left.push(view.docs.remove(index));
    }
    if let Some(new) = new {
        let position = view.docs.partition_point(|doc| spec.compare_docs(doc, &new) == std::cmp::Ordering::Less);
        if !(view.more && position == view.docs.len()) {
            view.docs.insert(position, new.clone());
            entered.push(new);
        }
    }
    if view.docs.len() > spec.limit {
        left.extend(view.docs.drain(spec.limit..));
        view.more = true;
    }
    if view.docs.len() < spec.limit && view.more {
        let shown = view.docs.len();
        refill(context, view).await?;
        entered.extend(view.docs[shown..].iter().cloned());
    }
    let mut entries = Vec::new();
    for doc in &left {
        match entered.iter().find(|now| now.path == doc.path) {
            None => entries.push(Entry::Removed(doc.clone())),
            Some(now) if now.version != doc.version => entries.push(Entry::Modified(now.clone())),
            Some(_) => {}
        }
    }
    for doc in entered {
        if !left.iter().any(|then| then.path == doc.path) {
            entries.push(Entry::Added(doc));
        }
    }
    Ok(entries)
}

/// Tops a window up from the store after a document left it.
async fn refill(context: &Context<'_>, view: &mut View) -> Result<(), Error> {
    let spec = context.spec;
    let mut next = spec.clone();
    next.limit = spec.limit - view.docs.len();
    next.after = view.docs.last().map(|last| spec.position_of(last));
    let (raws, more) = match (context.plan, context.principal) {
        (Plan::PerDocument, Some(principal)) => {
            let mut lookups = Lookups::default();
            let filtered = context.rules.query_reading(principal, next, &mut lookups).await?;
            context.note_reads(&lookups);
            let more = filtered.resume.is_some();
            (filtered.docs, more)
        }
        (plan, _) => {
            if let Plan::Where(condition) = plan {
                next.restriction = Some(condition.clone());
            }
            let page = context.store.query(next).await?;
            (page.docs, page.more)
        }
    };
    for raw in raws {
        let doc = Arc::new(raw.parse()?);
        if !view.docs.iter().any(|shown| shown.path == doc.path) {
            view.docs.push(doc);
        }
    }
    view.more = more;
    Ok(())
}

fn doc_json(doc: &StoredDoc, out: &mut String) {
    let data = serde_json::to_string(&doc.data).unwrap_or_else(|_| "{}".into());
    DocJson::written(doc, &data).write_to(out);
}

/// Documents already encoded, by the address of their shared `Arc` (alive while the
/// entries that hold them are).
#[derive(Default)]
struct Encoded(HashMap<usize, Arc<str>>);

impl Encoded {
    fn write(&mut self, doc: &Arc<StoredDoc>, out: &mut String) {
        let text = self.0.entry(Arc::as_ptr(doc) as usize).or_insert_with(|| {
            let mut text = String::new();
            doc_json(doc, &mut text);
            text.into()
        });
        out.push_str(text);
    }

    /// The items of a `changes` array.
    fn entries(&mut self, entries: &[Entry]) -> String {
        let mut out = String::with_capacity(entries.len() * 256);
        for (index, entry) in entries.iter().enumerate() {
            if index > 0 {
                out.push(',');
            }
            let (kind, doc) = match entry {
                Entry::Added(doc) => ("added", doc),
                Entry::Modified(doc) => ("modified", doc),
                Entry::Removed(doc) => ("removed", doc),
            };
            out.push_str(r#"{"type":""#);
            out.push_str(kind);
            out.push_str(r#"","doc":"#);
            self.write(doc, &mut out);
            out.push('}');
        }
        out
    }
}

fn snapshot_message(id: &str, docs: &[Arc<StoredDoc>], seq: i64) -> Arc<str> {
    let mut items = String::with_capacity(docs.len() * 256);
    for (index, doc) in docs.iter().enumerate() {
        if index > 0 {
            items.push(',');
        }
        doc_json(doc, &mut items);
    }
    frame("snapshot", id, "docs", &items, seq)
}

/// `{"op":<op>,"id":<id>,<field>:[<items>],"resume":<seq>}`: the shape of the messages
/// that carry documents.
fn frame(op: &str, id: &str, field: &str, items: &str, seq: i64) -> Arc<str> {
    let mut out = String::with_capacity(80 + id.len() + items.len());
    out.push_str(r#"{"op":""#);
    out.push_str(op);
    out.push_str(r#"","id":"#);
    out.push_str(&quoted(id));
    out.push_str(r#",""#);
    out.push_str(field);
    out.push_str(r#"":["#);
    out.push_str(items);
    out.push_str(r#"],"resume":""#);
    out.push_str(&seq.to_string());
    out.push_str("\"}");
    out.into()
}

/// An `error` op, for one subscription when `id` is not empty.
pub fn error_message(id: &str, code: &str, message: &str) -> Arc<str> {
    let message = hearth_types::bounded_error_message(message.to_owned());
    let mut body = serde_json::json!({"op": "error", "code": code, "message": message});
    if !id.is_empty() {
        body["id"] = serde_json::Value::String(id.to_owned());
    }
    body.to_string().into()
}

fn quoted(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_else(|_| "\"\"".into())
}

/// The code and message a client hears for a failed subscription; faults go to the log.
fn error_code(error: &Error) -> (&'static str, String) {
    let code = error.code();
    if code == hearth_types::ErrorCode::Internal {
        tracing::error!(%error, "realtime subscription failed");
        return (code.as_str(), "internal error".into());
    }
    (code.as_str(), error.to_string())
}
