//! The Hearth client SDK: auth, documents, queries, batches, transactions, functions and
//! live listeners, for apps that talk to a Hearth server.
//!
//! ```no_run
//! # async fn run() -> hearth_sdk::Result<()> {
//! use futures::StreamExt;
//! use hearth_sdk::{Client, Op};
//! use serde_json::json;
//!
//! let client = Client::new("http://127.0.0.1:8080")?;
//! client.sign_up("ada@example.com", "correct horse battery staple").await?;
//! let uid = client.current_user().map(|user| user.id).unwrap_or_default();
//! client.doc(&format!("notes/{uid}-1")).set(json!({ "owner": uid, "text": "hello" })).await?;
//!
//! // A live query: the first item is the current result, then one per change.
//! let mut notes = client.collection("notes").query().filter("owner", Op::Eq, uid).listen();
//! while let Some(snapshot) = notes.next().await {
//!     println!("{} notes", snapshot?.docs.len());
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Every call returns [`Result`]; [`Error::code`] is the contract's error code. The access
//! token is refreshed before it expires, and all listeners share one WebSocket that
//! reconnects with backoff and resumes each subscription where it stopped, so a network
//! blip costs no event.
//!
//! The transport is a trait ([`Transport`]); [`NativeTransport`] (reqwest and
//! tokio-tungstenite) is the default. There is no browser (wasm) transport yet.

#![warn(missing_docs)]

mod auth;
mod cache;
mod docs;
mod error;
mod live;
mod local;
mod transport;

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures::{Stream, StreamExt};
use hearth_types::{LoginAnswer, RecoveryCodes, Session};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

pub use auth::{FileTokenStore, MemoryTokenStore, SignIn, StoredSession, TokenStore};
pub use docs::{Batch, CollectionRef, DocRef, DocumentExt, QueryBuilder, Transaction};
pub use error::{Error, Result};
pub use hearth_types::realtime::ChangeType;
pub use hearth_types::{BatchOp, BatchWrite, Direction, Document, ErrorCode, Op, QueryPage, TotpEnrollment, User};
pub use live::{Channel, ChannelEvent, ChannelListener, DocChange, Listener, Snapshot};
pub use local::RejectedWrite;
pub use transport::{HttpRequest, HttpResponse, NativeTransport, SocketSink, SocketStream, Transport};

/// How a [`Client`] is set up.
pub struct ClientOptions {
    /// Calls are made with this service key (admin rights, rules bypassed) instead of a
    /// user's token. For servers and tools only: never ship a service key in an app.
    pub service_key: Option<String>,
    /// Where the session is kept between runs (default: memory only).
    pub token_store: Arc<dyn TokenStore>,
    /// How requests and the WebSocket travel (default: [`NativeTransport`]).
    pub transport: Arc<dyn Transport>,
    /// How long before it expires the access token is refreshed.
    pub refresh_margin: Duration,
    /// A SQLite file that makes the client offline-first: it keeps every document the
    /// app has seen, so reads, queries and listeners answer from it while the server
    /// cannot be reached, and the writes made meanwhile, which are applied locally at
    /// once and sent in order when the server answers again (also after the app
    /// restarts). `None` (the default): no cache, and calls fail while offline.
    pub cache: Option<std::path::PathBuf>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            service_key: None,
            token_store: Arc::new(MemoryTokenStore::default()),
            transport: Arc::new(NativeTransport::new()),
            refresh_margin: Duration::from_secs(60),
            cache: None,
        }
    }
}

/// A connection to one Hearth server. Cheap to clone; clones share the session and the
/// live connection.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    /// `http(s)://host:port`, without a trailing slash.
    base: String,
    transport: Arc<dyn Transport>,
    store: Arc<dyn TokenStore>,
    service_key: Option<String>,
    refresh_margin: Duration,
    session: Mutex<Option<StoredSession>>,
    /// One refresh at a time.
    refreshing: tokio::sync::Mutex<()>,
    /// The signed-in user; the live connection also re-authenticates when it changes.
    user: tokio::sync::watch::Sender<Option<User>>,
    /// Bumped on every new access token.
    tokens: tokio::sync::watch::Sender<u64>,
    live: Mutex<Option<live::Live>>,
    refresher: Mutex<Option<tokio::task::JoinHandle<()>>>,
    local: Option<Arc<local::Local>>,
    /// The task that sends the queued writes.
    sender: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for task in [&self.refresher, &self.sender] {
            if let Some(task) = task.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take() {
                task.abort();
            }
        }
    }
}

impl Client {
    /// A client of the server at `url` (e.g. `http://127.0.0.1:8080`).
    pub fn new(url: &str) -> Result<Client> {
        Client::with_options(url, ClientOptions::default())
    }

    /// A client with a token store, a service key or another transport. A session in
    /// the token store signs the client in at once.
    ///
    /// ```no_run
    /// use std::sync::Arc;
    /// use hearth_sdk::{Client, ClientOptions, FileTokenStore};
    ///
    /// let options = ClientOptions {
    ///     token_store: Arc::new(FileTokenStore::new("session.json")),
    ///     cache: Some("cache.db".into()),
    ///     ..ClientOptions::default()
    /// };
    /// let client = Client::with_options("https://hearth.example.com", options)?;
    /// # Ok::<(), hearth_sdk::Error>(())
    /// ```
    pub fn with_options(url: &str, options: ClientOptions) -> Result<Client> {
        let base = url.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Error::Protocol(format!("`{url}` is not an http(s) URL")));
        }
        let local = match &options.cache {
            Some(path) => Some(Arc::new(local::Local::open(path)?)),
            None => None,
        };
        let session = options.token_store.load();
        let user = session.as_ref().map(|session| session.user.clone());
        let client = Client {
            inner: Arc::new(Inner {
                base,
                transport: options.transport,
                store: options.token_store,
                service_key: options.service_key,
                refresh_margin: options.refresh_margin,
                session: Mutex::new(session),
                refreshing: tokio::sync::Mutex::new(()),
                user: tokio::sync::watch::Sender::new(user),
                tokens: tokio::sync::watch::Sender::new(0),
                live: Mutex::new(None),
                refresher: Mutex::new(None),
                local,
                sender: Mutex::new(None),
            }),
        };
        // Writes queued by an earlier run go out as soon as the server answers (outside
        // a runtime, the task starts with the first call that needs it).
        if tokio::runtime::Handle::try_current().is_ok() {
            client.local();
        }
        Ok(client)
    }

    // ---- auth ----

    /// Makes a password user and signs in as it.
    pub async fn sign_up(&self, email: &str, password: &str) -> Result<User> {
        let session: Session =
            self.post_json("/v1/auth/signup", &json!({ "email": email, "password": password })).await?;
        Ok(self.signed_in(session))
    }

    /// Signs in with e-mail and password; a user with TOTP on needs a second step.
    ///
    /// ```no_run
    /// # async fn run(client: hearth_sdk::Client, code: &str) -> hearth_sdk::Result<()> {
    /// use hearth_sdk::SignIn;
    ///
    /// let user = match client.sign_in("ada@example.com", "correct horse battery staple").await? {
    ///     SignIn::Done(user) => user,
    ///     SignIn::MfaRequired { ticket } => client.verify_mfa(&ticket, code).await?,
    /// };
    /// # Ok(())
    /// # }
    /// ```
    pub async fn sign_in(&self, email: &str, password: &str) -> Result<SignIn> {
        let answer: LoginAnswer =
            self.post_json("/v1/auth/login", &json!({ "email": email, "password": password })).await?;
        Ok(match answer {
            LoginAnswer::Session(session) => SignIn::Done(self.signed_in(session)),
            LoginAnswer::MfaRequired(challenge) => SignIn::MfaRequired { ticket: challenge.ticket },
        })
    }

    /// The second step of a sign-in: a TOTP code or an unused recovery code.
    pub async fn verify_mfa(&self, ticket: &str, code: &str) -> Result<User> {
        let session: Session =
            self.post_json("/v1/auth/mfa/verify", &json!({ "ticket": ticket, "code": code })).await?;
        Ok(self.signed_in(session))
    }

    /// Signs in as a new anonymous user (keep them with [`Client::link`]).
    pub async fn sign_in_anonymously(&self) -> Result<User> {
        let session: Session = self.post_json("/v1/auth/anonymous", &json!({})).await?;
        Ok(self.signed_in(session))
    }

    /// Turns the signed-in anonymous user into a password user with the same id.
    pub async fn link(&self, email: &str, password: &str) -> Result<User> {
        let session: Session =
            self.post_json("/v1/auth/link", &json!({ "email": email, "password": password })).await?;
        Ok(self.signed_in(session))
    }

    /// Starts turning TOTP sign-in on: the secret (and `otpauth://` URI) for an
    /// authenticator app. Takes effect with [`Client::confirm_totp`].
    pub async fn enroll_totp(&self) -> Result<TotpEnrollment> {
        self.post_json("/v1/auth/mfa/totp/enroll", &json!({})).await
    }

    /// Turns TOTP sign-in on with a first code; gives single-use recovery codes.
    pub async fn confirm_totp(&self, code: &str) -> Result<Vec<String>> {
        let codes: RecoveryCodes = self.post_json("/v1/auth/mfa/totp/confirm", &json!({ "code": code })).await?;
        Ok(codes.recovery_codes)
    }

    /// Turns TOTP sign-in off (a current code proves it is the user).
    pub async fn disable_totp(&self, code: &str) -> Result<()> {
        self.request("DELETE", "/v1/auth/mfa/totp", Some(&json!({ "code": code }))).await.map(drop)
    }

    /// Mails a password-reset code to `email` (the answer is the same whether or not
    /// there is such a user).
    pub async fn recover(&self, email: &str) -> Result<()> {
        self.request("POST", "/v1/auth/recover", Some(&json!({ "email": email }))).await.map(drop)
    }

    /// Sets a new password with a mailed reset code; every session of the user ends.
    pub async fn reset_password(&self, token: &str, password: &str) -> Result<()> {
        let body = json!({ "token": token, "password": password });
        self.request("POST", "/v1/auth/reset", Some(&body)).await.map(drop)
    }

    /// Mails the signed-in user a code that verifies their e-mail address.
    pub async fn request_verification(&self) -> Result<()> {
        self.request("POST", "/v1/auth/verify/request", Some(&json!({}))).await.map(drop)
    }

    /// Ends the session on the server and forgets it here.
    pub async fn sign_out(&self) -> Result<()> {
        let answer = match self.has_session() {
            true => self.request("POST", "/v1/auth/logout", Some(&json!({}))).await.map(drop),
            false => Ok(()),
        };
        self.set_session(None);
        // Signed out either way; a server that cannot be reached lets the token expire.
        match answer {
            Err(Error::Network(_)) | Ok(()) => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// The signed-in user, if any.
    pub fn current_user(&self) -> Option<User> {
        self.inner.user.borrow().clone()
    }

    /// The signed-in user now and after every change (sign-in, sign-out, a session that
    /// could not be refreshed).
    pub fn auth_state(&self) -> impl Stream<Item = Option<User>> + Send + 'static {
        let receiver = self.inner.user.subscribe();
        futures::stream::unfold((receiver, true), |(mut receiver, first)| async move {
            if !first && receiver.changed().await.is_err() {
                return None;
            }
            let user = receiver.borrow_and_update().clone();
            Some((user, (receiver, false)))
        })
    }

    fn has_session(&self) -> bool {
        self.inner.session.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).is_some()
    }

    fn signed_in(&self, session: Session) -> User {
        let stored = StoredSession::from_session(session);
        let user = stored.user.clone();
        self.set_session(Some(stored));
        self.start_refresher();
        user
    }

    fn set_session(&self, session: Option<StoredSession>) {
        self.inner.store.save(session.as_ref());
        let user = session.as_ref().map(|session| session.user.clone());
        *self.inner.session.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = session;
        self.inner.user.send_replace(user);
        self.inner.tokens.send_modify(|count| *count += 1);
    }

    /// Keeps the access token fresh while the client lives, so live listeners never
    /// pause for an expired token.
    fn start_refresher(&self) {
        let mut refresher = self.inner.refresher.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if refresher.as_ref().is_some_and(|task| !task.is_finished()) || tokio::runtime::Handle::try_current().is_err()
        {
            return;
        }
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        *refresher = Some(tokio::spawn(async move {
            loop {
                let wait = {
                    let Some(inner) = weak.upgrade() else { return };
                    let session = inner.session.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
                    let Some(session) = session else { return };
                    let due = session.expires_at.saturating_sub(inner.refresh_margin.as_secs());
                    Duration::from_secs(due.saturating_sub(auth::unix_now()))
                };
                tokio::time::sleep(wait.max(Duration::from_secs(1))).await;
                let Some(inner) = weak.upgrade() else { return };
                let client = Client { inner };
                if let Err(error) = client.refresh(false).await {
                    tracing::debug!(%error, "refreshing the session failed; retrying");
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
            }
        }));
    }

    /// Trades the refresh token for a new session when the access token is about to
    /// expire (or at once with `force`). A refresh token the server no longer takes
    /// signs the client out.
    async fn refresh(&self, force: bool) -> Result<()> {
        let _one_at_a_time = self.inner.refreshing.lock().await;
        let current = self.inner.session.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
        let Some(current) = current else { return Err(Error::SignedOut) };
        if !force && !current.expires_within(self.inner.refresh_margin) {
            return Ok(());
        }
        let body = json!({ "refresh_token": current.refresh_token });
        match self.send_with("POST", "/v1/auth/refresh", Some(json_body(&body)?), None, &[]).await {
            Ok(answer) => {
                let session: Session = decode(&answer.body)?;
                self.set_session(Some(StoredSession::from_session(session)));
                Ok(())
            }
            Err(error @ Error::Api { code: ErrorCode::Unauthenticated | ErrorCode::PermissionDenied, .. }) => {
                self.set_session(None);
                Err(error)
            }
            Err(error) => Err(error),
        }
    }

    /// The credential calls go out with: the service key, or a fresh access token.
    pub(crate) async fn credential(&self) -> Result<Option<String>> {
        if let Some(key) = &self.inner.service_key {
            return Ok(Some(key.clone()));
        }
        let expiring = {
            let session = self.inner.session.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            match session.as_ref() {
                None => return Ok(None),
                Some(session) => session.expires_within(self.inner.refresh_margin),
            }
        };
        if expiring {
            // A failed refresh leaves the old token: the server says whether it still holds.
            let _ = self.refresh(false).await;
        }
        let session = self.inner.session.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        Ok(session.as_ref().map(|session| session.access_token.clone()))
    }

    // ---- HTTP ----

    /// Sends a request with the client's credential; a 401 with a user token refreshes
    /// the session once and tries again.
    pub(crate) async fn request(&self, method: &'static str, path: &str, body: Option<&Value>) -> Result<HttpResponse> {
        self.request_with(method, path, body, &[]).await
    }

    pub(crate) async fn request_with(
        &self,
        method: &'static str,
        path: &str,
        body: Option<&Value>,
        headers: &[(&'static str, String)],
    ) -> Result<HttpResponse> {
        let body = body.map(json_body).transpose()?;
        let credential = self.credential().await?;
        let answer = self.send_with(method, path, body.clone(), credential.as_deref(), headers).await;
        match answer {
            Err(Error::Api { code: ErrorCode::Unauthenticated, .. })
                if credential.is_some() && self.inner.service_key.is_none() =>
            {
                self.refresh(true).await?;
                let credential = self.credential().await?;
                self.send_with(method, path, body, credential.as_deref(), headers).await
            }
            other => other,
        }
    }

    /// One request; `body` is its content type and bytes.
    async fn send_with(
        &self,
        method: &'static str,
        path: &str,
        body: Option<(&'static str, Vec<u8>)>,
        credential: Option<&str>,
        extra: &[(&'static str, String)],
    ) -> Result<HttpResponse> {
        let mut headers: Vec<(&'static str, String)> = extra.to_vec();
        if let Some(credential) = credential {
            headers.push(("authorization", format!("Bearer {credential}")));
        }
        let body = body.map(|(content_type, bytes)| {
            headers.push(("content-type", content_type.to_owned()));
            bytes
        });
        let request = HttpRequest { method, url: format!("{}{path}", self.inner.base), headers, body };
        let answer = self.inner.transport.send(request).await?;
        if (200..300).contains(&answer.status) {
            Ok(answer)
        } else {
            Err(Error::from_answer(answer.status, &answer.body))
        }
    }

    pub(crate) async fn post_json<T: DeserializeOwned>(&self, path: &str, body: &Value) -> Result<T> {
        decode(&self.request("POST", path, Some(body)).await?.body)
    }

    // ---- documents, queries, functions ----

    /// The document at `path` (`rooms/r1`, `rooms/r1/messages/m1`).
    ///
    /// ```no_run
    /// # async fn run(client: hearth_sdk::Client) -> hearth_sdk::Result<()> {
    /// use serde_json::json;
    ///
    /// let room = client.doc("rooms/r1");
    /// room.set(json!({ "title": "Lobby", "members": 3 })).await?;
    /// let updated = room.update(json!({ "members": { "$increment": 1 } })).await?;
    /// room.clone().if_version(updated.version).delete().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn doc(&self, path: &str) -> DocRef {
        DocRef::new(self.clone(), path)
    }

    /// The collection at `path` (`rooms`, `rooms/r1/messages`).
    ///
    /// ```no_run
    /// # async fn run(client: hearth_sdk::Client) -> hearth_sdk::Result<()> {
    /// use hearth_sdk::{Direction, Op};
    ///
    /// let page = client
    ///     .collection("rooms")
    ///     .query()
    ///     .filter("members", Op::Ge, 5)
    ///     .order_by("members", Direction::Desc)
    ///     .limit(20)
    ///     .get()
    ///     .await?;
    /// println!("{} rooms, more: {}", page.docs.len(), page.cursor.is_some());
    /// # Ok(())
    /// # }
    /// ```
    pub fn collection(&self, path: &str) -> CollectionRef {
        CollectionRef::new(self.clone(), path)
    }

    /// A query over every collection named `id`, at any depth.
    pub fn collection_group(&self, id: &str) -> QueryBuilder {
        QueryBuilder::group(self.clone(), id)
    }

    /// Writes that commit together or not at all (up to 500).
    ///
    /// ```no_run
    /// # async fn run(client: hearth_sdk::Client) -> hearth_sdk::Result<()> {
    /// use serde_json::json;
    ///
    /// let versions = client
    ///     .batch()
    ///     .create("rooms/r2", json!({ "title": "Go" }))
    ///     .update("rooms/r1", json!({ "members": { "$increment": -1 } }))
    ///     .if_version(4)
    ///     .delete("rooms/r9")
    ///     .commit()
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn batch(&self) -> Batch {
        Batch::new(self.clone())
    }

    /// Runs `work` as a transaction: it reads with [`Transaction::get`] and queues
    /// writes; they commit together, each document written only if it is still at the
    /// version `work` read. When another write got there first, `work` runs again after
    /// a short random pause (at most 10 runs, then `failed-precondition`). Documents only
    /// read are not checked at commit.
    ///
    /// ```no_run
    /// # async fn run(client: hearth_sdk::Client) -> hearth_sdk::Result<()> {
    /// use serde_json::json;
    ///
    /// let seats = client
    ///     .run_transaction(|tx| async move {
    ///         let left = tx.get("events/e1").await?.and_then(|doc| doc.data["seats"].as_i64()).unwrap_or(0);
    ///         if left > 0 {
    ///             tx.update("events/e1", json!({ "seats": left - 1 }));
    ///         }
    ///         Ok(left)
    ///     })
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn run_transaction<T, F, Fut>(&self, work: F) -> Result<T>
    where
        F: Fn(Transaction) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        docs::run_transaction(self, work).await
    }

    /// Calls the callable function `name` with `data`; its result.
    ///
    /// ```no_run
    /// # async fn run(client: hearth_sdk::Client) -> hearth_sdk::Result<()> {
    /// let answer = client.call("greet", serde_json::json!({ "name": "Ada" })).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn call(&self, name: &str, data: impl Serialize) -> Result<Value> {
        let data = serde_json::to_value(data).map_err(|error| Error::Protocol(error.to_string()))?;
        let answer: Value = self.post_json(&format!("/v1/functions/{name}"), &json!({ "data": data })).await?;
        Ok(answer.get("result").cloned().unwrap_or(Value::Null))
    }

    /// Like [`Client::call`], the result decoded as `T`.
    pub async fn call_as<T: DeserializeOwned>(&self, name: &str, data: impl Serialize) -> Result<T> {
        serde_json::from_value(self.call(name, data).await?).map_err(|error| Error::Protocol(error.to_string()))
    }

    /// A realtime channel: presence (who is here, with what state) and broadcast.
    ///
    /// ```no_run
    /// # async fn run(client: hearth_sdk::Client) -> hearth_sdk::Result<()> {
    /// use futures::StreamExt;
    /// use hearth_sdk::ChannelEvent;
    ///
    /// let room = client.channel("room:r1");
    /// let mut here = room.join(serde_json::json!({ "typing": false }));
    /// room.broadcast("wave", serde_json::json!({}));
    /// while let Some(event) = here.next().await {
    ///     if let ChannelEvent::Presence { joins, leaves } = event? {
    ///         println!("+{} -{}", joins.len(), leaves.len());
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn channel(&self, name: &str) -> Channel {
        Channel::new(self.clone(), name)
    }

    // ---- admin (service key) ----

    /// Replaces the access rules (`rules.toml` text). Needs the service key.
    pub async fn set_rules(&self, rules: &str) -> Result<()> {
        self.raw("PUT", "/v1/admin/rules", rules).await.map(drop)
    }

    /// Deploys one function module (`file` like `chat.js`). Needs the service key.
    pub async fn deploy_function(&self, file: &str, source: &str) -> Result<Value> {
        let answer = self.raw("PUT", &format!("/v1/admin/functions/{file}"), source).await?;
        decode(&answer.body)
    }

    /// A text body (admin calls, made with the service key).
    async fn raw(&self, method: &'static str, path: &str, body: &str) -> Result<HttpResponse> {
        let credential = self.credential().await?;
        let body = Some(("text/plain", body.as_bytes().to_vec()));
        self.send_with(method, path, body, credential.as_deref(), &[]).await
    }

    /// The live connection, started on first use.
    pub(crate) fn live(&self) -> live::Live {
        let mut live = self.inner.live.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        live.get_or_insert_with(|| live::Live::start(Arc::downgrade(&self.inner), self.inner.local.clone())).clone()
    }

    /// The local cache and write queue, if the client has them; starts the task that
    /// sends the queue on first use.
    pub(crate) fn local(&self) -> Option<&local::Local> {
        let local = self.inner.local.as_deref()?;
        let mut sender = self.inner.sender.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        // Outside a runtime (a sync call such as `rejected_writes`), the next async call
        // starts it.
        if sender.is_none()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            *sender = Some(runtime.spawn(local::send_queue(Arc::downgrade(&self.inner))));
        }
        Some(local)
    }

    // ---- offline ----

    /// How many writes (or batches) made offline wait for the server. Always 0 without
    /// a cache.
    pub fn pending_writes(&self) -> usize {
        self.inner.local.as_ref().map_or(0, |local| local.pending())
    }

    /// Waits until every write made offline has been answered by the server (confirmed,
    /// or refused and reported on [`Client::rejected_writes`]).
    ///
    /// ```no_run
    /// # async fn run(client: hearth_sdk::Client) -> hearth_sdk::Result<()> {
    /// client.doc("todos/t1").set(serde_json::json!({ "title": "milk", "done": false })).await?;
    /// if client.pending_writes() > 0 {
    ///     println!("offline: saved here, syncing when the server is back");
    ///     client.wait_for_pending_writes().await;
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn wait_for_pending_writes(&self) {
        let Some(local) = self.local() else { return };
        let mut changes = local.changes();
        while local.pending() > 0 {
            if changes.changed().await.is_err() {
                return;
            }
        }
    }

    /// Writes made offline that the server refused when they were sent (a precondition
    /// no longer held, a rule denied it, ...). Each has been rolled back: reads and
    /// listeners no longer show it. Only refusals after this call are seen.
    ///
    /// ```no_run
    /// # async fn run(client: hearth_sdk::Client) {
    /// use futures::StreamExt;
    ///
    /// let mut rejected = client.rejected_writes();
    /// while let Some(refused) = rejected.next().await {
    ///     eprintln!("not saved: {} ({})", refused.writes[0].path, refused.error);
    /// }
    /// # }
    /// ```
    pub fn rejected_writes(&self) -> impl Stream<Item = RejectedWrite> + Send + Unpin + 'static {
        let receiver = self.local().map(local::Local::rejections);
        futures::stream::unfold(receiver, |receiver| async move {
            let mut receiver = receiver?;
            loop {
                match receiver.recv().await {
                    Ok(refused) => return Some((refused, Some(receiver))),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::warn!(missed, "refused offline writes were not all read");
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
        .boxed()
    }

    pub(crate) fn websocket_url(&self) -> String {
        let base = &self.inner.base;
        let base = base.strip_prefix("http").map_or_else(|| base.clone(), |rest| format!("ws{rest}"));
        format!("{base}/v1/realtime")
    }
}

/// A JSON request body: its content type and bytes.
fn json_body(value: &Value) -> Result<(&'static str, Vec<u8>)> {
    let bytes = serde_json::to_vec(value).map_err(|error| Error::Protocol(error.to_string()))?;
    Ok(("application/json", bytes))
}

/// Decodes a JSON answer.
pub(crate) fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T> {
    serde_json::from_slice(body).map_err(|error| Error::Protocol(format!("{error}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_offline_first_client_is_usable_outside_a_runtime() {
        let dir = tempfile::tempdir().expect("temp dir");
        let options = ClientOptions { cache: Some(dir.path().join("cache.db")), ..ClientOptions::default() };
        let client = Client::with_options("http://127.0.0.1:9", options).expect("client");
        assert_eq!(client.pending_writes(), 0);
        drop(client.rejected_writes());
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(client.wait_for_pending_writes());
    }
}
