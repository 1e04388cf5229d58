//! What functions reach outside the engine: `console` and `ctx.db`.
//!
//! One native function, `__hearth_host(op, ...args)`, takes and gives JSON text; the
//! prelude wraps it in the JavaScript API. Host calls run the store's async calls to
//! completion on the server's runtime (the worker is a plain thread), so every promise a
//! function awaits is settled by the time the engine runs its jobs.

use rquickjs::function::Opt;
use rquickjs::{Ctx, Function};
use serde_json::{Value, json};

use crate::store::{DocJson, DocPath, Error, QuerySpec, Store, Write, WriteOp};

/// The server side of host calls.
#[derive(Clone)]
pub struct Host {
    pub store: Store,
    pub handle: tokio::runtime::Handle,
    pub fetch: Fetch,
}

/// `ctx.fetch`: an HTTP client limited to the allow-listed hosts.
#[derive(Clone)]
pub struct Fetch {
    client: reqwest::Client,
    allow: Vec<String>,
}

/// Largest response body `ctx.fetch` reads.
const MAX_FETCH_BYTES: usize = 10 * 1024 * 1024;

impl Fetch {
    pub fn new(config: &crate::config::FunctionsConfig) -> Result<Fetch, String> {
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_millis(config.fetch_timeout_ms))
            // A redirect could leave the allow-list.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|error| error.to_string())?;
        Ok(Fetch { client, allow: config.fetch_allow.iter().map(|host| host.to_ascii_lowercase()).collect() })
    }

    fn allows(&self, url: &reqwest::Url) -> bool {
        let Some(host) = url.host_str().map(str::to_ascii_lowercase) else { return false };
        let with_port = url.port_or_known_default().map(|port| format!("{host}:{port}"));
        self.allow.iter().any(|allowed| *allowed == host || Some(allowed) == with_port.as_ref())
    }

    async fn send(&self, url: &str, init: Option<&str>) -> Result<Value, HostError> {
        #[derive(serde::Deserialize)]
        struct Init {
            method: String,
            headers: std::collections::BTreeMap<String, String>,
            body: Option<String>,
        }
        let url = reqwest::Url::parse(url).map_err(|error| invalid(format!("`{url}` is not a URL: {error}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(invalid("ctx.fetch takes http and https URLs"));
        }
        if !self.allows(&url) {
            let host = url.host_str().unwrap_or_default();
            return Err(("permission-denied", format!("`{host}` is not in functions.fetch_allow")));
        }
        let init: Init = parse(init, "the fetch options")?;
        let method = reqwest::Method::from_bytes(init.method.to_ascii_uppercase().as_bytes())
            .map_err(|_| invalid(format!("`{}` is not an HTTP method", init.method)))?;
        let mut request = self.client.request(method, url);
        for (name, value) in &init.headers {
            request = request.header(name, value);
        }
        if let Some(body) = init.body {
            request = request.body(body);
        }
        let unavailable = |error: reqwest::Error| {
            let code = if error.is_timeout() { "deadline-exceeded" } else { "unavailable" };
            (code, format!("fetch failed: {error}"))
        };
        let mut response = request.send().await.map_err(unavailable)?;
        let status = response.status().as_u16();
        let headers: serde_json::Map<String, Value> = response
            .headers()
            .iter()
            .filter_map(|(name, value)| {
                Some((name.as_str().to_owned(), Value::String(value.to_str().ok()?.to_owned())))
            })
            .collect();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(unavailable)? {
            if body.len() + chunk.len() > MAX_FETCH_BYTES {
                return Err(("resource-exhausted", "the response is over 10 MiB".into()));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(json!({ "status": status, "headers": headers, "body": String::from_utf8_lossy(&body) }))
    }
}

/// `ctx.secrets`, frozen.
pub fn install_secrets(
    ctx: &Ctx<'_>,
    secrets: &std::collections::BTreeMap<String, crate::config::Secret>,
) -> rquickjs::Result<()> {
    let object = rquickjs::Object::new(ctx.clone())?;
    for (name, value) in secrets {
        object.set(name.as_str(), value.expose())?;
    }
    let freeze: Function = ctx.eval("Object.freeze")?;
    let frozen: rquickjs::Object = freeze.call((object,))?;
    ctx.globals().set("__hearth_secrets", frozen)
}

/// Installs `__hearth_host`; without a host (checking a deploy) only `log` works.
pub fn install(ctx: &Ctx<'_>, host: Option<&Host>) -> rquickjs::Result<()> {
    let host = host.cloned();
    let function = Function::new(ctx.clone(), move |op: String, first: Opt<String>, second: Opt<String>| -> String {
        let answer = match op.as_str() {
            "log" => {
                log(first.0.as_deref().unwrap_or("info"), second.0.as_deref().unwrap_or(""));
                Ok(Value::Null)
            }
            "fetch" => match &host {
                Some(host) => match parse::<String>(first.0.as_deref(), "the URL") {
                    Ok(url) => host.handle.block_on(host.fetch.send(&url, second.0.as_deref())),
                    Err(error) => Err(error),
                },
                None => Err(("failed-precondition", "fetch is not available while modules load".into())),
            },
            _ => match &host {
                Some(host) => host.handle.block_on(db(&host.store, &op, first.0.as_deref(), second.0.as_deref())),
                None => Err(("failed-precondition", "the database is not available while modules load".into())),
            },
        };
        match answer {
            Ok(value) => json!({ "ok": value }).to_string(),
            Err((code, message)) => json!({ "error": { "code": code, "message": message } }).to_string(),
        }
    })?;
    ctx.globals().set("__hearth_host", function)
}

thread_local! {
    /// How many function runs in a row led to the running invocation.
    static DEPTH: std::cell::Cell<u8> = const { std::cell::Cell::new(0) };
}

/// Sets the depth of this thread's next invocation: its writes are one deeper.
pub fn set_depth(depth: u8) {
    DEPTH.with(|cell| cell.set(depth));
}

fn write_depth() -> u8 {
    DEPTH.with(|cell| cell.get()).saturating_add(1)
}

fn log(level: &str, message: &str) {
    match level {
        "error" => tracing::error!(target: "hearth::functions::console", "{message}"),
        "warn" => tracing::warn!(target: "hearth::functions::console", "{message}"),
        "debug" => tracing::debug!(target: "hearth::functions::console", "{message}"),
        _ => tracing::info!(target: "hearth::functions::console", "{message}"),
    }
}

type HostError = (&'static str, String);

fn invalid(message: impl Into<String>) -> HostError {
    ("invalid-argument", message.into())
}

fn parse<T: serde::de::DeserializeOwned>(argument: Option<&str>, what: &str) -> Result<T, HostError> {
    serde_json::from_str(argument.unwrap_or("null")).map_err(|_| invalid(format!("{what} has the wrong type")))
}

fn store_error(error: crate::store::Error) -> HostError {
    let code = error.code();
    if code == hearth_types::ErrorCode::Internal {
        tracing::error!(%error, "a function's database call failed");
        return (code.as_str(), "internal error".into());
    }
    (code.as_str(), error.to_string())
}

fn doc_value(doc: &crate::store::StoredDoc, data: &str) -> Result<Value, HostError> {
    let mut text = String::new();
    DocJson::written(doc, data).write_to(&mut text);
    serde_json::from_str(&text).map_err(|error| ("internal", error.to_string()))
}

async fn db(store: &Store, op: &str, first: Option<&str>, second: Option<&str>) -> Result<Value, HostError> {
    if op == "query" {
        let query: hearth_types::Query = parse(first, "the query")?;
        let spec = QuerySpec::parse(&query, store.cursors()).map_err(store_error)?;
        let page = store.query(spec).await.map_err(store_error)?;
        let mut docs = Vec::with_capacity(page.docs.len());
        for raw in &page.docs {
            let mut text = String::new();
            DocJson::read(raw).write_to(&mut text);
            docs.push(serde_json::from_str::<Value>(&text).map_err(|error| ("internal", error.to_string()))?);
        }
        return Ok(json!({ "docs": docs, "more": page.more }));
    }
    if op == "batch" {
        let writes: Vec<hearth_types::BatchWrite> = parse(first, "the writes")?;
        let max = crate::http::docs::MAX_BATCH_WRITES;
        if writes.is_empty() || writes.len() > max {
            return Err(invalid(format!("a batch holds 1 to {max} writes, not {}", writes.len())));
        }
        let writes = writes
            .into_iter()
            .enumerate()
            .map(|(index, write)| {
                Write::from_batch(write).map_err(|error| Error::InBatch { index, error: Box::new(error) })
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(store_error)?;
        let results = store.write_caused(writes, true, write_depth()).await.map_err(store_error)?;
        let results: Vec<Value> =
            results.iter().map(|result| json!({ "path": result.path.as_str(), "version": result.version() })).collect();
        return Ok(json!({ "results": results }));
    }
    let path: String = parse(first, "the path")?;
    let path = DocPath::parse(&path).map_err(|error| invalid(error.0))?;
    let data = || -> Result<serde_json::Map<String, Value>, HostError> {
        parse(second, "the data").map_err(|_| invalid("the data is an object"))
    };
    let op = match op {
        "get" => {
            let doc = store.get(path).await.map_err(store_error)?;
            return match doc {
                Some(doc) => doc_value(&doc, &serde_json::to_string(&doc.data).unwrap_or_default()),
                None => Ok(Value::Null),
            };
        }
        "set" => WriteOp::Set(data()?),
        "create" => WriteOp::Create(data()?),
        "update" => WriteOp::Update(data()?),
        "delete" => WriteOp::Delete,
        other => return Err(invalid(format!("unknown host call `{other}`"))),
    };
    let write = Write { path, op, if_version: None };
    let mut written = store.write_caused(vec![write], false, write_depth()).await.map_err(store_error)?;
    let written = written.pop().ok_or(("internal", "a write gave no result".to_owned()))?;
    match (&written.doc, &written.data_json) {
        (Some(doc), Some(data)) => doc_value(doc, data),
        _ => Ok(Value::Null),
    }
}
