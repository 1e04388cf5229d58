//! Documents, collections, queries, batches and transactions.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use hearth_types::{
    AggregateRequest, AggregateResult, BatchOp, BatchResponse, BatchWrite, Direction, Document, ErrorCode, Filter, Op,
    OrderBy, Query, QueryPage,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::live::{Listener, Target};
use crate::local::unreachable;
use crate::{Client, Error, Result, decode};

/// Typed access to a document's data.
pub trait DocumentExt {
    /// The data decoded as `T` (a struct with `#[derive(Deserialize)]`).
    fn data_as<T: DeserializeOwned>(&self) -> Result<T>;
}

impl DocumentExt for Document {
    fn data_as<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_value(Value::Object(self.data.clone()))
            .map_err(|error| Error::Protocol(format!("`{}` does not decode: {error}", self.path)))
    }
}

fn to_object(data: impl Serialize) -> Result<Map<String, Value>> {
    match serde_json::to_value(data) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(Error::Api {
            code: ErrorCode::InvalidArgument,
            message: "document data is a JSON object".into(),
            details: Map::new(),
        }),
        Err(error) => Err(Error::Protocol(error.to_string())),
    }
}

/// Only if the document is at this version (`If-Match`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Precondition {
    None,
    Version(i64),
}

/// A document by path. Nothing is fetched until a method is called.
#[derive(Clone)]
pub struct DocRef {
    client: Client,
    path: String,
    precondition: Precondition,
}

impl DocRef {
    pub(crate) fn new(client: Client, path: &str) -> DocRef {
        DocRef { client, path: path.trim_matches('/').to_owned(), precondition: Precondition::None }
    }

    /// The path, without leading or trailing `/`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The last segment of the path.
    pub fn id(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or_default()
    }

    /// A sub-collection of this document.
    pub fn collection(&self, name: &str) -> CollectionRef {
        CollectionRef::new(self.client.clone(), &format!("{}/{name}", self.path))
    }

    /// The same document, with writes made only if it is still at `version` (else
    /// `failed-precondition`).
    pub fn if_version(mut self, version: i64) -> DocRef {
        self.precondition = Precondition::Version(version);
        self
    }

    fn url(&self) -> String {
        format!("/v1/docs/{}", self.path)
    }

    /// The document, or `None` if there is none. With a cache
    /// ([`ClientOptions::cache`](crate::ClientOptions)), a document seen before is
    /// answered from it while the server cannot be reached, and writes not yet confirmed
    /// by the server show in the answer.
    pub async fn get(&self) -> Result<Option<Document>> {
        let local = self.client.local();
        let answer = match self.client.request("GET", &self.url(), None).await {
            Ok(answer) => Some(decode::<Document>(&answer.body)?),
            Err(Error::Api { code: ErrorCode::NotFound, .. }) => None,
            Err(error) if unreachable(&error) => {
                return match local.and_then(|local| local.view(&self.path)) {
                    Some(doc) => Ok(Some(doc)),
                    None if local.is_some_and(|local| local.is_pending(&self.path)) => Ok(None),
                    None => Err(error),
                };
            }
            Err(error) => return Err(error),
        };
        let Some(local) = local else { return Ok(answer) };
        match &answer {
            Some(doc) => local.cache.put(std::slice::from_ref(doc)),
            None => local.cache.remove(&self.path),
        }
        if local.is_pending(&self.path) { Ok(local.view(&self.path)) } else { Ok(answer) }
    }

    fn write(&self, op: BatchOp, data: Option<Value>) -> BatchWrite {
        let if_version = match self.precondition {
            Precondition::None => None,
            Precondition::Version(version) => Some(version),
        };
        BatchWrite { op, path: self.path.clone(), data, if_version }
    }

    /// Sends one write; see [`write_one`].
    async fn written(&self, write: BatchWrite) -> Result<Document> {
        let path = write.path.clone();
        write_one(&self.client, write)
            .await?
            .ok_or_else(|| Error::Protocol(format!("no document in the answer for `{path}`")))
    }

    /// The document's data decoded as `T`, or `None` if there is none.
    ///
    /// ```no_run
    /// # async fn run(client: hearth_sdk::Client) -> hearth_sdk::Result<()> {
    /// #[derive(serde::Deserialize)]
    /// struct Room {
    ///     title: String,
    ///     members: u32,
    /// }
    ///
    /// if let Some(room) = client.doc("rooms/r1").get_as::<Room>().await? {
    ///     println!("{}: {}", room.title, room.members);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn get_as<T: DeserializeOwned>(&self) -> Result<Option<T>> {
        self.get().await?.map(|doc| doc.data_as()).transpose()
    }

    /// Creates or replaces the document with `data` (a JSON object, or any struct).
    ///
    /// With a cache, a write the server cannot take now (offline) is applied locally and
    /// queued (see [`Client::pending_writes`]); the answer is then the local document.
    pub async fn set(&self, data: impl Serialize) -> Result<Document> {
        self.written(self.write(BatchOp::Set, Some(Value::Object(to_object(data)?)))).await
    }

    /// Creates the document; `already-exists` if it exists.
    pub async fn create(&self, data: impl Serialize) -> Result<Document> {
        self.written(self.write(BatchOp::Create, Some(Value::Object(to_object(data)?)))).await
    }

    /// Deep-merges `patch` into the document (`null` removes a field; `$increment`,
    /// `$server_time`, `$array_union`, `$array_remove` transform one); `not-found` if
    /// it does not exist.
    pub async fn update(&self, patch: impl Serialize) -> Result<Document> {
        self.written(self.write(BatchOp::Update, Some(Value::Object(to_object(patch)?)))).await
    }

    /// Deletes the document (nothing happens if there is none, unless a version is set).
    pub async fn delete(&self) -> Result<()> {
        write_one(&self.client, self.write(BatchOp::Delete, None)).await.map(drop)
    }

    /// The document live: a first [`Snapshot`](crate::Snapshot) (its `docs` empty when the document is
    /// absent or unreadable), then one per change.
    pub fn listen(&self) -> Listener {
        self.client.live().listen(Target::Doc(self.path.clone()))
    }
}

/// A collection by path.
#[derive(Clone)]
pub struct CollectionRef {
    client: Client,
    path: String,
}

impl CollectionRef {
    pub(crate) fn new(client: Client, path: &str) -> CollectionRef {
        CollectionRef { client, path: path.trim_matches('/').to_owned() }
    }

    /// The path, without leading or trailing `/`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// A document of this collection.
    pub fn doc(&self, id: &str) -> DocRef {
        DocRef::new(self.client.clone(), &format!("{}/{id}", self.path))
    }

    /// Creates a document with a server-made id (offline, with a cache: a random id
    /// made here, and the create queued).
    pub async fn add(&self, data: impl Serialize) -> Result<Document> {
        let create = BatchWrite {
            op: BatchOp::Create,
            path: format!("{}/{}", self.path, local_id()),
            data: Some(Value::Object(to_object(data)?)),
            if_version: None,
        };
        let url = format!("/v1/docs/{}", self.path);
        let online = self.client.request("POST", &url, create.data.as_ref());
        match send_or_queue(&self.client, std::slice::from_ref(&create), online).await? {
            Sent(answer) => {
                let doc: Document = decode(&answer.body)?;
                if let Some(local) = self.client.local() {
                    local.cache.put(std::slice::from_ref(&doc));
                }
                Ok(doc)
            }
            Queued(mut docs) => docs.pop().flatten().ok_or_else(|| Error::Protocol("a create left no document".into())),
        }
    }

    /// A query over this collection.
    pub fn query(&self) -> QueryBuilder {
        QueryBuilder {
            client: self.client.clone(),
            query: Query { collection: Some(self.path.clone()), ..Query::default() },
        }
    }

    /// Every document of the collection, in id order, live.
    pub fn listen(&self) -> Listener {
        self.query().listen()
    }
}

/// A query being built: filters, order, limit, cursor; then run, aggregated or listened to.
#[derive(Clone)]
pub struct QueryBuilder {
    client: Client,
    query: Query,
}

impl QueryBuilder {
    pub(crate) fn group(client: Client, id: &str) -> QueryBuilder {
        QueryBuilder { client, query: Query { collection_group: Some(id.to_owned()), ..Query::default() } }
    }

    /// `field op value`; `field` is dotted (`address.city`) or `__id__`.
    pub fn filter(mut self, field: &str, op: Op, value: impl Serialize) -> QueryBuilder {
        let value = serde_json::to_value(value).unwrap_or(Value::Null);
        self.query.filters.push(Filter { field: field.to_owned(), op, value });
        self
    }

    /// Orders by `field` (after earlier orders); ties break on the path.
    pub fn order_by(mut self, field: &str, dir: Direction) -> QueryBuilder {
        self.query.order_by.push(OrderBy { field: field.to_owned(), dir });
        self
    }

    /// At most `limit` documents (the server allows up to 1,000 per page).
    pub fn limit(mut self, limit: u32) -> QueryBuilder {
        self.query.limit = Some(limit);
        self
    }

    /// Continues after the page that gave `cursor`.
    pub fn start_after(mut self, cursor: &str) -> QueryBuilder {
        self.query.cursor = Some(cursor.to_owned());
        self
    }

    /// The query as it goes on the wire.
    pub fn as_query(&self) -> &Query {
        &self.query
    }

    /// One page; `cursor` in the answer fetches the next. With a cache, writes not yet
    /// confirmed by the server show in the first page, and while the server cannot be
    /// reached the first page is answered from the cache (without a `cursor`).
    pub async fn get(&self) -> Result<QueryPage> {
        let body = serde_json::to_value(&self.query).map_err(|error| Error::Protocol(error.to_string()))?;
        let local = self.client.local();
        let mut page: QueryPage = match self.client.post_json("/v1/query", &body).await {
            Ok(page) => page,
            Err(error) if unreachable(&error) && self.query.cursor.is_none() => match local {
                Some(local) => return Ok(QueryPage { docs: local.query(&self.query), cursor: None }),
                None => return Err(error),
            },
            Err(error) => return Err(error),
        };
        if let Some(local) = local {
            local.cache.put(&page.docs);
            // Queued writes show on the first page only: on a later one they could land
            // before its cursor.
            if self.query.cursor.is_none() {
                page.docs = local.overlay(&Target::Query(self.query.clone()), &page.docs).0;
            }
        }
        Ok(page)
    }

    /// Every page, followed to the end.
    pub async fn get_all(&self) -> Result<Vec<Document>> {
        let mut docs = Vec::new();
        let mut query = self.clone();
        loop {
            let page = query.get().await?;
            docs.extend(page.docs);
            match page.cursor {
                Some(cursor) => query = query.start_after(&cursor),
                None => return Ok(docs),
            }
        }
    }

    /// How many documents match.
    pub async fn count(&self) -> Result<u64> {
        let result = self.aggregate(true, &[], &[]).await?;
        result.count.ok_or_else(|| Error::Protocol("no count in the answer".into()))
    }

    /// Count, sums and averages of number fields over the matching documents.
    pub async fn aggregate(&self, count: bool, sum: &[&str], avg: &[&str]) -> Result<AggregateResult> {
        let request = AggregateRequest {
            query: self.query.clone(),
            count,
            sum: sum.iter().map(|field| (*field).to_owned()).collect(),
            avg: avg.iter().map(|field| (*field).to_owned()).collect(),
        };
        let body = serde_json::to_value(&request).map_err(|error| Error::Protocol(error.to_string()))?;
        self.client.post_json("/v1/aggregate", &body).await
    }

    /// The query live: a first [`Snapshot`](crate::Snapshot) with the current result, then one per
    /// change, each equal to a fresh run of the query.
    ///
    /// ```no_run
    /// # async fn run(client: hearth_sdk::Client) -> hearth_sdk::Result<()> {
    /// use futures::StreamExt;
    /// use hearth_sdk::{ChangeType, Direction};
    ///
    /// let messages = client.collection("rooms/r1/messages");
    /// let mut latest = messages.query().order_by("sent_at", Direction::Desc).limit(50).listen();
    /// while let Some(snapshot) = latest.next().await {
    ///     for change in snapshot?.changes.iter().filter(|change| change.kind == ChangeType::Added) {
    ///         println!("{}", change.doc.data["text"]);
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn listen(&self) -> Listener {
        self.client.live().listen(Target::Query(self.query.clone()))
    }
}

/// Writes that commit together or not at all.
pub struct Batch {
    client: Client,
    writes: Vec<BatchWrite>,
}

impl Batch {
    pub(crate) fn new(client: Client) -> Batch {
        Batch { client, writes: Vec::new() }
    }

    fn push(mut self, op: BatchOp, path: &str, data: Option<Value>, if_version: Option<i64>) -> Batch {
        self.writes.push(BatchWrite { op, path: path.to_owned(), data, if_version });
        self
    }

    /// Adds a create (`already-exists` fails the batch).
    pub fn create(self, path: &str, data: impl Serialize) -> Batch {
        let data = serde_json::to_value(data).ok();
        self.push(BatchOp::Create, path, data, None)
    }

    /// Adds a create-or-replace.
    pub fn set(self, path: &str, data: impl Serialize) -> Batch {
        let data = serde_json::to_value(data).ok();
        self.push(BatchOp::Set, path, data, None)
    }

    /// Adds a deep merge with transforms (`not-found` fails the batch).
    pub fn update(self, path: &str, patch: impl Serialize) -> Batch {
        let data = serde_json::to_value(patch).ok();
        self.push(BatchOp::Update, path, data, None)
    }

    /// Adds a delete.
    pub fn delete(self, path: &str) -> Batch {
        self.push(BatchOp::Delete, path, None, None)
    }

    /// The last write added happens only if its document is at `version`.
    pub fn if_version(mut self, version: i64) -> Batch {
        if let Some(last) = self.writes.last_mut() {
            last.if_version = Some(version);
        }
        self
    }

    /// Commits; the version each write left (0 for a delete). A failing write names its
    /// index in the error's `details`. With a cache, a batch the server cannot take now
    /// is applied locally and queued as a whole.
    pub async fn commit(self) -> Result<Vec<i64>> {
        let body = serde_json::json!({ "writes": self.writes });
        let online = self.client.post_json::<BatchResponse>("/v1/batch", &body);
        Ok(match send_or_queue(&self.client, &self.writes, online).await? {
            Sent(answer) => answer.results.into_iter().map(|result| result.version).collect(),
            Queued(docs) => docs.iter().map(|doc| doc.as_ref().map_or(0, |doc| doc.version)).collect(),
        })
    }
}

/// The reads and queued writes of one run of a transaction.
#[derive(Clone)]
pub struct Transaction {
    client: Client,
    state: Arc<Mutex<TransactionState>>,
}

#[derive(Default)]
struct TransactionState {
    /// The version each read document was at (0: absent).
    read: HashMap<String, i64>,
    writes: Vec<BatchWrite>,
}

impl Transaction {
    fn state(&self) -> std::sync::MutexGuard<'_, TransactionState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Reads a document; a write to it later commits only if it is still this version.
    pub async fn get(&self, path: &str) -> Result<Option<Document>> {
        let doc = self.client.doc(path).get().await?;
        self.state().read.insert(path.trim_matches('/').to_owned(), doc.as_ref().map_or(0, |doc| doc.version));
        Ok(doc)
    }

    fn queue(&self, op: BatchOp, path: &str, data: Option<Value>) {
        let path = path.trim_matches('/').to_owned();
        let mut state = self.state();
        let (op, if_version) = match state.read.get(&path).copied() {
            // Read as absent: it must still be absent.
            Some(0) if op == BatchOp::Set => (BatchOp::Create, None),
            Some(0) => (op, None),
            Some(version) => (op, Some(version)),
            None => (op, None),
        };
        state.writes.push(BatchWrite { op, path, data, if_version });
    }

    /// Queues a create-or-replace.
    pub fn set(&self, path: &str, data: impl Serialize) {
        self.queue(BatchOp::Set, path, serde_json::to_value(data).ok());
    }

    /// Queues a deep merge.
    pub fn update(&self, path: &str, patch: impl Serialize) {
        self.queue(BatchOp::Update, path, serde_json::to_value(patch).ok());
    }

    /// Queues a delete.
    pub fn delete(&self, path: &str) {
        self.queue(BatchOp::Delete, path, None);
    }
}

/// Sends one document write. With a cache, it waits behind writes already queued, and a
/// server that cannot be reached queues it: applied locally at once, sent when the server
/// answers again. The document after the write (`None` after a delete).
pub(crate) async fn write_one(client: &Client, write: BatchWrite) -> Result<Option<Document>> {
    match send_or_queue(client, std::slice::from_ref(&write), send_write(client, &write)).await? {
        Sent(doc) => Ok(doc),
        Queued(mut docs) => Ok(docs.pop().flatten()),
    }
}

/// What became of writes: the server's answer, or (offline, with a cache) the local
/// documents after them, queued.
enum Outcome<T> {
    Sent(T),
    Queued(Vec<Option<Document>>),
}

use Outcome::{Queued, Sent};

/// Sends `writes` through `online`, unless writes made earlier still wait (they go
/// first); with a cache, a server that cannot be reached gets them queued instead.
async fn send_or_queue<T>(
    client: &Client,
    writes: &[BatchWrite],
    online: impl Future<Output = Result<T>>,
) -> Result<Outcome<T>> {
    let local = client.local();
    if local.is_none_or(|local| local.pending() == 0) {
        match online.await {
            Ok(answer) => return Ok(Sent(answer)),
            Err(error) if local.is_some() && unreachable(&error) => {}
            Err(error) => return Err(error),
        }
    }
    let Some(local) = local else { return Err(Error::Protocol("no local cache".into())) };
    local.enqueue(writes.to_vec()).map(Queued)
}

/// One write through the document routes, whose answer is the document (kept in the
/// cache, if the client has one).
pub(crate) async fn send_write(client: &Client, write: &BatchWrite) -> Result<Option<Document>> {
    let url = format!("/v1/docs/{}", write.path);
    let mut headers = Vec::new();
    if let Some(version) = write.if_version {
        headers.push(("if-match", format!("\"{version}\"")));
    }
    let (method, body) = match write.op {
        BatchOp::Create => {
            headers.push(("if-none-match", "*".to_owned()));
            ("PUT", write.data.as_ref())
        }
        BatchOp::Set => ("PUT", write.data.as_ref()),
        BatchOp::Update => ("PATCH", write.data.as_ref()),
        BatchOp::Delete => ("DELETE", None),
    };
    let answer = client.request_with(method, &url, body, &headers).await?;
    let doc = if write.op == BatchOp::Delete { None } else { Some(decode::<Document>(&answer.body)?) };
    if let Some(local) = client.local() {
        match &doc {
            Some(doc) => local.cache.put(std::slice::from_ref(doc)),
            None => local.cache.remove(&write.path),
        }
    }
    Ok(doc)
}

/// A document id made on this device, like the server's: time first, then random.
fn local_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let keys = std::collections::hash_map::RandomState::new();
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let mut index = 0u64;
    hearth_types::id::time_ordered_id(since.as_millis() as u64, || {
        let mut hasher = keys.build_hasher();
        hasher.write_u128(since.as_nanos());
        hasher.write_u64(index);
        index += 1;
        hasher.finish()
    })
}

/// Runs of a transaction before it gives up.
const TRANSACTION_TRIES: u32 = 10;

pub(crate) async fn run_transaction<T, F, Fut>(client: &Client, work: F) -> Result<T>
where
    F: Fn(Transaction) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut last = None;
    for attempt in 0..TRANSACTION_TRIES {
        if attempt > 0 {
            // Contenders that collided back off by different amounts, so one gets through.
            tokio::time::sleep(jitter(attempt)).await;
        }
        let transaction = Transaction { client: client.clone(), state: Arc::default() };
        let value = work(transaction.clone()).await?;
        let writes = std::mem::take(&mut transaction.state().writes);
        if writes.is_empty() {
            return Ok(value);
        }
        let body = serde_json::json!({ "writes": writes });
        match client.post_json::<BatchResponse>("/v1/batch", &body).await {
            Ok(_) => return Ok(value),
            // Someone wrote a document this run read: run again on what is there now.
            Err(error @ Error::Api { code: ErrorCode::FailedPrecondition | ErrorCode::AlreadyExists, .. }) => {
                last = Some(error);
            }
            Err(error) => return Err(error),
        }
    }
    Err(last.unwrap_or(Error::Protocol("the transaction never ran".into())))
}

/// A random pause that grows with `attempt` (5 ms to 20 ms × attempt).
fn jitter(attempt: u32) -> std::time::Duration {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |now| now.subsec_nanos());
    std::time::Duration::from_micros(u64::from(attempt) * (5_000 + u64::from(nanos % 15_000)))
}

/// The value of `field` in `doc` for ordering (`__id__` is the document id).
pub(crate) fn field_value<'a>(doc: &'a Document, field: &str) -> Option<std::borrow::Cow<'a, Value>> {
    if field == "__id__" {
        return Some(std::borrow::Cow::Owned(Value::String(doc.id.clone())));
    }
    let segments: Vec<String> = field.split('.').map(str::to_owned).collect();
    hearth_types::value::lookup(&doc.data, &segments).map(std::borrow::Cow::Borrowed)
}

/// Whether `doc` is in the result of `query` (target, filters, every order field
/// present), ignoring limit and cursor: the server's rules, from `hearth_types::eval`.
pub(crate) fn query_matches(query: &Query, doc: &Document) -> bool {
    in_target(query.collection.as_deref(), query.collection_group.as_deref(), &doc.path)
        && query.order_by.iter().all(|order| field_value(doc, &order.field).is_some())
        && query.filters.iter().all(|filter| {
            hearth_types::eval::op_matches(filter.op, &filter.value, field_value(doc, &filter.field).as_deref())
        })
}

/// Whether the document at `path` is directly in `collection`, or (without one) in a
/// collection with the id `group`.
pub(crate) fn in_target(collection: Option<&str>, group: Option<&str>, path: &str) -> bool {
    let parent = path.rsplit_once('/').map_or("", |(parent, _)| parent);
    match (collection, group) {
        (Some(collection), _) => parent == collection,
        (None, Some(group)) => parent.rsplit('/').next() == Some(group),
        (None, None) => false,
    }
}

/// The order of a query's results: its `order_by`, then the path ascending.
pub(crate) fn query_order(query: &Query, a: &Document, b: &Document) -> std::cmp::Ordering {
    for order in &query.order_by {
        let (x, y) = (field_value(a, &order.field), field_value(b, &order.field));
        let null = Value::Null;
        let ordering = hearth_types::value::compare(x.as_deref().unwrap_or(&null), y.as_deref().unwrap_or(&null));
        let ordering = match order.dir {
            Direction::Asc => ordering,
            Direction::Desc => ordering.reverse(),
        };
        if ordering.is_ne() {
            return ordering;
        }
    }
    a.path.cmp(&b.path)
}
