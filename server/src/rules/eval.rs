//! Evaluating one rule: CEL values for `auth`, `request`, `resource` and the captures, and
//! `get()`/`exists()` without blocking inside CEL.
//!
//! An evaluation is pure: `get(path)` answers from the documents already fetched, and a
//! path not fetched yet makes the evaluation stop with the paths it wants. The caller
//! fetches them however it reads (the writer's transaction, the async store, a test's
//! fixtures) and evaluates again; at most [`MAX_LOOKUPS`] distinct paths per evaluation.
//! CEL's `&&`/`||` absorb errors, so a bool reached while a lookup was still missing did
//! not depend on it.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, LazyLock, OnceLock};

use cel::common::types::CelNull;
use cel::common::value::{CowVal, Val};
use cel::context::VariableResolver;
use cel::objects::{Key, Map as CelMap};
use cel::{Context, Env, ExecutionError, IdedExpr, Value, extensions};
use serde_json::Value as Json;

use super::set::{Captures, Fields, Needs, Op, Usage};
use crate::store::{DocPath, StoredDoc};

/// Most distinct documents one evaluation may read with `get()`/`exists()`.
pub const MAX_LOOKUPS: usize = 10;

const PENDING: &str = "document not fetched yet";

/// Documents fetched for `get()`/`exists()`, shared by the evaluations of one request.
#[derive(Default)]
pub struct Lookups {
    /// Path → the document as a CEL value, or null when absent.
    known: HashMap<String, Value>,
    /// Paths the current evaluation asked for and `known` lacks.
    wanted: Vec<DocPath>,
    /// Distinct paths the current evaluation used.
    used: HashSet<String>,
}

impl Lookups {
    /// The paths the rules read so far (present or absent documents).
    pub fn read(&self) -> impl Iterator<Item = &str> {
        self.known.keys().map(String::as_str)
    }

    pub fn supply(&mut self, path: &DocPath, doc: Option<&StoredDoc>) {
        self.known.insert(path.as_str().to_owned(), doc.map_or(Value::Null, doc_value));
    }
}

thread_local! {
    static ROOT: Context<'static, 'static> = root_context();
    /// The lookups of the evaluation running on this thread (CEL functions are `'static`).
    static ACTIVE: RefCell<Lookups> = RefCell::default();
}

/// The CEL environment of rules: the standard library and the strings, lists and math
/// extensions (`substring`, `split`, `lowerAscii`, `sort`, `math.least`, ...).
pub fn env() -> &'static Arc<Env> {
    static ENV: LazyLock<Arc<Env>> = LazyLock::new(|| {
        let mut env = Env::stdlib();
        for extension in [extensions::strings, extensions::lists, extensions::math] {
            // The extensions declare disjoint names; a clash would be a bug of the crate.
            let _ = env.add_extension(extension);
        }
        Arc::new(env)
    });
    &ENV
}

fn root_context() -> Context<'static, 'static> {
    let mut context = Context::with_env(env().clone());
    // Neither name is a standard CEL function, so adding them cannot fail.
    let _ = context.add_function("get", |path: Arc<String>| lookup("get", &path));
    let _ = context.add_function("exists", |path: Arc<String>| {
        lookup("exists", &path).map(|doc| Value::Bool(!matches!(doc, Value::Null)))
    });
    context
}

fn lookup(function: &str, path: &str) -> Result<Value, ExecutionError> {
    let doc_path = DocPath::parse(path)
        .map_err(|_| ExecutionError::function_error(function, format!("`{path}` is not a document path")))?;
    ACTIVE.with_borrow_mut(|lookups| {
        if !lookups.used.contains(path) {
            if lookups.used.len() >= MAX_LOOKUPS {
                return Err(ExecutionError::function_error(
                    function,
                    format!("more than {MAX_LOOKUPS} documents read in one rule"),
                ));
            }
            lookups.used.insert(path.to_owned());
        }
        match lookups.known.get(path) {
            Some(doc) => Ok(doc.clone()),
            None => {
                lookups.wanted.push(doc_path);
                Err(ExecutionError::function_error(function, PENDING))
            }
        }
    })
}

/// `auth` for CEL, converted once per caller however many checks it makes.
pub struct AuthVal {
    value: Value,
    val: OnceLock<Box<dyn Val>>,
}

impl AuthVal {
    pub fn new(value: Value) -> AuthVal {
        AuthVal { value, val: OnceLock::new() }
    }

    pub fn value(&self) -> &Value {
        &self.value
    }

    fn val(&self) -> &dyn Val {
        self.val.get_or_init(|| to_val(self.value.clone())).as_ref()
    }
}

impl std::fmt::Debug for AuthVal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.value.fmt(f)
    }
}

/// The variables of one evaluation, each converted for CEL only if the rule reads it
/// (binding values is most of what a check costs), and of documents only the fields the
/// rule reads ([`Needs`]).
pub struct Vars<'a> {
    pub auth: &'a AuthVal,
    pub op: Op,
    /// The stored document (`resource`).
    pub before: Option<&'a StoredDoc>,
    /// The document as the write leaves it (`request.data`).
    pub after: Option<&'a StoredDoc>,
    /// `request.time`, microseconds since the epoch.
    pub time: i64,
    pub needs: &'a Needs,
    pub captures: &'a [(String, String)],
    request: OnceLock<Box<dyn Val>>,
    resource: OnceLock<Box<dyn Val>>,
}

impl<'a> Vars<'a> {
    pub fn new(
        auth: &'a AuthVal,
        op: Op,
        before: Option<&'a StoredDoc>,
        after: Option<&'a StoredDoc>,
        time: i64,
        needs: &'a Needs,
        captures: &'a Captures,
    ) -> Vars<'a> {
        Vars { auth, op, before, after, time, needs, captures, request: OnceLock::new(), resource: OnceLock::new() }
    }
}

impl VariableResolver for Vars<'_> {
    fn resolve<'b>(&'b self, variable: &str) -> Option<CowVal<'b, 'b>> {
        let val = match variable {
            "auth" => self.auth.val(),
            "request" => self
                .request
                .get_or_init(|| {
                    let used = &self.needs.request;
                    let mut entries = Vec::with_capacity(3);
                    if used.attrs.has("data") {
                        let data = self.after.map_or(Value::Null, |doc| json_fields(&doc.data, &used.data));
                        entries.push(("data", data));
                    }
                    if used.attrs.has("time") {
                        entries.push(("time", timestamp(self.time)));
                    }
                    if used.attrs.has("method") {
                        entries.push(("method", Value::String(Arc::new(self.op.method().to_owned()))));
                    }
                    to_val(map(entries))
                })
                .as_ref(),
            "resource" => self
                .resource
                .get_or_init(|| to_val(self.before.map_or(Value::Null, |doc| doc_value_of(doc, &self.needs.resource))))
                .as_ref(),
            name => {
                let (_, value) = self.captures.iter().find(|(capture, _)| capture == name)?;
                return Some(CowVal::Owned(to_val(Value::String(Arc::new(value.clone())))));
            }
        };
        Some(CowVal::Borrowed(val))
    }
}

fn to_val(value: Value) -> Box<dyn Val> {
    // Every value built here converts (no functions or opaque values inside).
    Box::<dyn Val>::try_from(value).unwrap_or_else(|_| Box::new(CelNull))
}

/// Where an evaluation got to.
pub enum Step<T> {
    Done(T),
    /// Fetch these documents into the [`Lookups`] and evaluate again.
    Fetch(Vec<DocPath>),
}

/// Evaluates `expr` once with `lookups` (see the module comment); `Err` says why a result
/// is not a bool.
pub fn step(expr: &IdedExpr, vars: &Vars, lookups: &mut Lookups) -> Step<Result<bool, String>> {
    let (result, wanted) = resolve_with(vars, lookups, |scope| scope.resolve(expr));
    match result {
        Ok(Value::Bool(allowed)) => Step::Done(Ok(allowed)),
        _ if !wanted.is_empty() => Step::Fetch(wanted),
        Ok(other) => Step::Done(Err(format!("the rule gave {:?}, not a bool", other.type_of()))),
        Err(error) => Step::Done(Err(error.to_string())),
    }
}

/// Runs `resolve` in a scope holding `vars`, with `lookups` serving `get()`/`exists()`;
/// also gives the paths it asked for that `lookups` lacks.
pub fn resolve_with<T>(
    vars: &Vars,
    lookups: &mut Lookups,
    resolve: impl FnOnce(&Context<'_, '_>) -> T,
) -> (T, Vec<DocPath>) {
    lookups.wanted.clear();
    lookups.used.clear();
    ACTIVE.with_borrow_mut(|active| std::mem::swap(active, lookups));
    let result = ROOT.with(|root| {
        let mut scope = root.new_inner_scope();
        scope.set_variable_resolver(vars);
        resolve(&scope)
    });
    ACTIVE.with_borrow_mut(|active| std::mem::swap(active, lookups));
    let mut wanted = std::mem::take(&mut lookups.wanted);
    wanted.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    wanted.dedup();
    (result, wanted)
}

/// `auth` in rules: null, or `{uid, email, email_verified, anonymous, claims}`.
pub fn auth_value(user: Option<&crate::auth::AuthUser>) -> Value {
    let Some(user) = user else {
        return Value::Null;
    };
    map([
        ("uid", Value::String(Arc::new(user.uid.clone()))),
        ("email", user.email.clone().map_or(Value::Null, |email| Value::String(Arc::new(email)))),
        ("email_verified", Value::Bool(user.email_verified)),
        ("anonymous", Value::Bool(user.anonymous)),
        ("claims", json_map(&user.claims)),
    ])
}

/// A stored document as `resource` and `get()` give it.
pub fn doc_value(doc: &StoredDoc) -> Value {
    doc_value_of(doc, &Usage { attrs: Fields::All, data: Fields::All })
}

/// The parts of a document a rule reads.
fn doc_value_of(doc: &StoredDoc, used: &Usage) -> Value {
    let attrs: [(&str, &dyn Fn() -> Value); 6] = [
        ("id", &|| Value::String(Arc::new(doc.path.id().to_owned()))),
        ("path", &|| Value::String(Arc::new(doc.path.as_str().to_owned()))),
        ("data", &|| json_fields(&doc.data, &used.data)),
        ("version", &|| Value::Int(doc.version)),
        ("created_at", &|| timestamp(doc.created_at)),
        ("updated_at", &|| timestamp(doc.updated_at)),
    ];
    map(attrs.into_iter().filter(|(name, _)| used.attrs.has(name)).map(|(name, make)| (name, make())))
}

fn map<'n>(entries: impl IntoIterator<Item = (&'n str, Value)>) -> Value {
    let map: HashMap<Key, Value> =
        entries.into_iter().map(|(key, value)| (Key::String(Arc::new(key.to_owned())), value)).collect();
    Value::Map(CelMap { map: Arc::new(map) })
}

fn timestamp(micros: i64) -> Value {
    chrono::DateTime::from_timestamp_micros(micros).map_or(Value::Null, |time| Value::Timestamp(time.fixed_offset()))
}

fn json_map(object: &serde_json::Map<String, Json>) -> Value {
    let map: HashMap<Key, Value> =
        object.iter().map(|(key, value)| (Key::String(Arc::new(key.clone())), json_value(value))).collect();
    Value::Map(CelMap { map: Arc::new(map) })
}

/// The fields of `object` that `fields` names, as a CEL map.
fn json_fields(object: &serde_json::Map<String, Json>, fields: &Fields) -> Value {
    match fields {
        Fields::All => json_map(object),
        Fields::Only(names) => {
            let map: HashMap<Key, Value> = names
                .iter()
                .filter_map(|name| {
                    object.get(name).map(|value| (Key::String(Arc::new(name.clone())), json_value(value)))
                })
                .collect();
            Value::Map(CelMap { map: Arc::new(map) })
        }
    }
}

/// JSON as CEL: integers as signed ints (so arithmetic with literals works), other
/// numbers as doubles.
pub fn json_value(value: &Json) -> Value {
    match value {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(s) => Value::String(Arc::new(s.clone())),
        Json::Array(items) => Value::List(Arc::new(items.iter().map(json_value).collect())),
        Json::Object(object) => json_map(object),
    }
}
