//! Realtime: live documents and live queries over WebSockets, fed by the change bus and
//! guarded by the rules.
//!
//! - [`hub`]: the task that owns every subscription and turns committed changes into
//!   `snapshot`/`changes` messages.
//! - this module: the service handle, and the protocol of one connection
//!   ([`Realtime::open`] and [`Session`]), which knows frames and JSON but not axum.
//!
//! Each connection has an outbound queue bounded in bytes; the hub never waits on a
//! client. A client whose queue is full is closed with 4008 and resumes with its token.

pub mod hub;
pub mod presence;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, mpsc};

use crate::auth::limits::Bucket;
use crate::config::RealtimeConfig;
use crate::rules::Principal;
use crate::store::{DocPath, QuerySpec, Store};
use hub::{Command, Hub, error_message};

/// The largest frame a client may send.
pub const MAX_FRAME_BYTES: usize = 64 * 1024;
/// Close code for a client that reads too slowly.
pub const CLOSE_TOO_SLOW: u16 = 4008;

/// Identifies a connection inside the hub.
pub type ConnId = u64;

/// What a subscription watches.
#[derive(Clone)]
pub enum Watch {
    Doc(DocPath),
    Query(QuerySpec),
}

/// The hub's way to a connection: a queue bounded in bytes, and a signal when it
/// overflowed. The hub never waits on a client.
#[derive(Clone)]
pub struct Outbox {
    sender: mpsc::UnboundedSender<Arc<str>>,
    queued: Arc<AtomicUsize>,
    /// Bytes that may wait.
    limit: usize,
    overflow: Arc<Notify>,
}

impl Outbox {
    /// Queues a message; past its limit the connection is marked too slow.
    pub fn send(&self, message: Arc<str>) {
        let size = message.len();
        if self.queued.fetch_add(size, Ordering::AcqRel) + size > self.limit {
            self.overflow.notify_one();
            return;
        }
        if self.sender.send(message).is_err() {
            self.queued.fetch_sub(size, Ordering::AcqRel);
        }
    }
}

/// The connection's end of its outbox.
pub struct Outgoing {
    receiver: mpsc::UnboundedReceiver<Arc<str>>,
    queued: Arc<AtomicUsize>,
}

impl Outgoing {
    /// Waits for the next message, then takes every message queued by then, up to
    /// `limit`, into `into`; 0 when the queue is closed.
    pub async fn recv_many(&mut self, into: &mut Vec<Arc<str>>, limit: usize) -> usize {
        let taken = self.receiver.recv_many(into, limit).await;
        let bytes: usize = into[into.len() - taken..].iter().map(|message| message.len()).sum();
        self.queued.fetch_sub(bytes, Ordering::AcqRel);
        taken
    }
}

/// The priority of the fan-out threads, from 0 (lowest) to 99; 35 is nice 5 on Linux:
/// under contention request handling gets about three times their share of the CPU, and
/// they still get a steady share of it.
const FANOUT_PRIORITY: u8 = 35;

/// Lowers the calling thread to the fan-out priority. Public for load generators that
/// stand in for remote clients on the server's own machine.
pub fn lower_thread_priority() {
    use thread_priority::{ThreadPriority, ThreadPriorityValue, set_current_thread_priority};
    if let Ok(priority) = ThreadPriorityValue::try_from(FANOUT_PRIORITY)
        && let Err(error) = set_current_thread_priority(ThreadPriority::Crossplatform(priority))
    {
        tracing::debug!(?error, "this thread keeps the default priority");
    }
}

/// The realtime service. Cheap to clone.
#[derive(Clone)]
pub struct Realtime {
    commands: mpsc::UnboundedSender<Command>,
    next: Arc<AtomicU64>,
    open: Arc<AtomicUsize>,
    /// Open connections by client address.
    by_address: Arc<Mutex<HashMap<String, usize>>>,
    limits: RealtimeConfig,
    fanout: Arc<Fanout>,
}

/// The runtime the hub and the connections run on. Its threads run at a lower OS
/// priority than request handling: sending one change to 10,000 sockets is 10,000
/// system calls, and on the request runtime a write arriving behind them would wait for
/// all of them. Here a large fan-out delays deliveries, not writes.
struct Fanout {
    runtime: Option<tokio::runtime::Runtime>,
}

impl Fanout {
    fn start() -> std::io::Result<Fanout> {
        let threads = std::thread::available_parallelism().map_or(2, usize::from);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("hearth-realtime")
            .on_thread_start(lower_thread_priority)
            .enable_all()
            .build()?;
        Ok(Fanout { runtime: Some(runtime) })
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        self.runtime.as_ref().expect("running until dropped").handle()
    }
}

impl Drop for Fanout {
    fn drop(&mut self) {
        // Dropped from async code at shutdown, where blocking on the workers is not allowed.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Realtime {
    /// Starts the hub on the current runtime.
    pub async fn start(
        store: Store,
        rules: crate::rules::Rules,
        limits: &RealtimeConfig,
    ) -> Result<Realtime, crate::store::Error> {
        let (commands, receiver) = mpsc::unbounded_channel();
        // Subscribe before reading the seq: nothing committed in between is missed.
        let bus = store.bus().subscribe();
        let seq = store.last_seq().await?;
        let hub = Hub::new(store, rules, commands.clone(), seq, limits.max_subscriptions);
        let fanout = Fanout::start().map_err(|error| crate::store::Error::Internal(error.to_string()))?;
        fanout.handle().spawn(hub.run(receiver, bus));
        Ok(Realtime {
            fanout: Arc::new(fanout),
            commands,
            next: Arc::new(AtomicU64::new(1)),
            open: Arc::new(AtomicUsize::new(0)),
            by_address: Default::default(),
            limits: limits.clone(),
        })
    }

    /// Runs a connection on the fan-out runtime, to its end.
    pub async fn run<F>(&self, connection: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        if let Err(error) = self.fanout.handle().spawn(connection).await
            && error.is_panic()
        {
            tracing::error!(%error, "a realtime connection failed");
        }
    }

    /// Admits one more connection from `address`, or says which limit it would pass.
    pub fn admit(&self, address: &str) -> Result<Admitted, &'static str> {
        {
            let mut by_address = self.by_address.lock().unwrap_or_else(|p| p.into_inner());
            let count = by_address.entry(address.to_owned()).or_default();
            if *count >= self.limits.max_connections_per_address {
                return Err("this address holds as many realtime connections as it may");
            }
            *count += 1;
        }
        // Counted from here on: a refusal below gives the address's place back on drop.
        let admitted =
            Admitted { open: self.open.clone(), by_address: self.by_address.clone(), address: address.to_owned() };
        let open = self.open.fetch_add(1, Ordering::AcqRel);
        if open >= self.limits.max_connections {
            return Err("the server holds as many realtime connections as it may");
        }
        metrics::gauge!("hearth_realtime_connections").set((open + 1) as f64);
        Ok(admitted)
    }

    /// Registers a connection with the hub. Gives its session, the messages for the
    /// client in order, and the signal that the client fell a whole queue behind.
    pub fn open(&self, principal: Option<Principal>) -> (Session, Outgoing, Arc<Notify>) {
        let conn = self.next.fetch_add(1, Ordering::Relaxed);
        let (sender, receiver) = mpsc::unbounded_channel();
        let overflow = Arc::new(Notify::new());
        let queued = Arc::new(AtomicUsize::new(0));
        let outbox =
            Outbox { sender, queued: queued.clone(), limit: self.limits.queue_bytes, overflow: overflow.clone() };
        let _ = self.commands.send(Command::Open { conn, outbox: outbox.clone(), principal });
        let subscribes = SubscribeRate {
            bucket: Mutex::new(Bucket::full(f64::from(self.limits.subscribe_burst))),
            burst: f64::from(self.limits.subscribe_burst),
            per_second: f64::from(self.limits.subscribes_per_second),
        };
        (Session { conn, commands: self.commands.clone(), outbox, subscribes }, Outgoing { receiver, queued }, overflow)
    }
}

/// A connection counted against the limits while it lives.
pub struct Admitted {
    open: Arc<AtomicUsize>,
    by_address: Arc<Mutex<HashMap<String, usize>>>,
    address: String,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let open = self.open.fetch_sub(1, Ordering::AcqRel);
        metrics::gauge!("hearth_realtime_connections").set(open.saturating_sub(1) as f64);
        let mut by_address = self.by_address.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = by_address.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                by_address.remove(&self.address);
            }
        }
    }
}

/// The budget of `sub` messages of one connection: each may cost a snapshot query.
struct SubscribeRate {
    bucket: Mutex<Bucket>,
    burst: f64,
    per_second: f64,
}

/// One connection's side of the protocol.
pub struct Session {
    conn: ConnId,
    commands: mpsc::UnboundedSender<Command>,
    outbox: Outbox,
    subscribes: SubscribeRate,
}

pub use hearth_types::realtime::ClientMessage;

impl Session {
    /// Sends a message to this client directly (answers that are not deliveries).
    pub fn reply(&self, message: Arc<str>) {
        self.outbox.send(message);
    }

    /// Tells the hub who the caller is now (`None`: the service key); `paused` (with why)
    /// stops deliveries and ends channel memberships until new credentials arrive, and
    /// the hub tells the caller so.
    pub fn set_principal(&self, principal: Option<Principal>, paused: Option<&'static str>) {
        let _ = self.commands.send(Command::Principal { conn: self.conn, principal, paused });
    }

    /// Handles one text frame that is not `auth` (the caller handles credentials).
    pub fn handle(&self, message: ClientMessage, signer: &crate::store::CursorSealer) {
        match message {
            ClientMessage::Ping => {
                let _ = self.commands.send(Command::Ping { conn: self.conn });
            }
            ClientMessage::Unsub { id } => {
                let _ = self.commands.send(Command::Unsub { conn: self.conn, id });
            }
            ClientMessage::Sub { id, doc, query, resume } => {
                if id.is_empty() || id.len() > 128 {
                    self.reply(error_message("", "invalid-argument", "a subscription id is 1 to 128 characters"));
                    return;
                }
                let rate = &self.subscribes;
                let waited =
                    rate.bucket.lock().unwrap_or_else(|p| p.into_inner()).check(rate.burst, rate.per_second, true);
                if let Some(wait) = waited {
                    let message =
                        format!("too many subscriptions in a short time; try again in {} ms", wait.as_millis() + 1);
                    return self.reply(error_message(&id, "resource-exhausted", &message));
                }
                let watch = match (doc, query) {
                    (Some(doc), None) => match DocPath::parse(&doc) {
                        Ok(path) => Watch::Doc(path),
                        Err(error) => return self.reply(error_message(&id, "invalid-argument", &error.0)),
                    },
                    (None, Some(query)) => {
                        if query.cursor.is_some() {
                            return self.reply(error_message(&id, "invalid-argument", "a live query takes no cursor"));
                        }
                        match QuerySpec::parse(&query, signer) {
                            Ok(spec) => Watch::Query(spec),
                            Err(error) => {
                                return self.reply(error_message(&id, "invalid-argument", &error.to_string()));
                            }
                        }
                    }
                    _ => {
                        return self.reply(error_message(
                            &id,
                            "invalid-argument",
                            "a sub names one of `doc` and `query`",
                        ));
                    }
                };
                let resume = match resume.map(|token| token.parse::<i64>()) {
                    None => None,
                    Some(Ok(seq)) if seq >= 0 => Some(seq),
                    Some(_) => {
                        return self.reply(error_message(
                            &id,
                            "invalid-argument",
                            "`resume` is a token from this server",
                        ));
                    }
                };
                let _ = self.commands.send(Command::Sub { conn: self.conn, id, watch, resume });
            }
            ClientMessage::Leave { channel } => {
                let _ = self.commands.send(Command::Leave { conn: self.conn, channel });
            }
            // Credentials and channels are decided by the caller first.
            ClientMessage::Auth { .. } | ClientMessage::Join { .. } | ClientMessage::Broadcast { .. } => {}
        }
    }

    /// Joins a channel the rules allowed, as `uid` (null for the service key).
    pub fn join(&self, channel: String, uid: serde_json::Value, state: serde_json::Value) {
        let _ = self.commands.send(Command::Join { conn: self.conn, channel, uid, state });
    }

    /// Broadcasts on a channel the rules allowed.
    pub fn broadcast(&self, channel: String, event: String, payload: serde_json::Value) {
        let _ = self.commands.send(Command::Broadcast { conn: self.conn, channel, event, payload });
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Close { conn: self.conn });
    }
}
