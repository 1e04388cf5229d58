//! What a write does to a document, as a pure function of the stored document: the
//! preconditions, RFC 7396 merge, the four transforms and the shape limits. Every backend
//! calls [`apply`] inside its transaction, so they cannot disagree on semantics.

use hearth_types::eval::{Transforms, has_transform};
use serde_json::{Map, Value};

use super::value::{self, MAX_DOC_BYTES, ShapeError};
use super::{DocPath, Error, StoredDoc};

/// One write of the one write path.
#[derive(Debug, Clone)]
pub struct Write {
    pub path: DocPath,
    pub op: WriteOp,
    /// Apply only if the stored version is this one.
    pub if_version: Option<i64>,
}

impl Write {
    /// A write of a batch as the contract sends it (`POST /v1/batch`, `ctx.db.batch`).
    pub fn from_batch(write: hearth_types::BatchWrite) -> Result<Write, Error> {
        use hearth_types::BatchOp;
        let invalid = |message: &str| Error::InvalidArgument(message.to_owned());
        let path = DocPath::parse(&write.path).map_err(|error| Error::InvalidArgument(error.0))?;
        let op = match (write.op, write.data) {
            (BatchOp::Delete, None) => WriteOp::Delete,
            (BatchOp::Delete, Some(_)) => return Err(invalid("a delete takes no `data`")),
            (_, None) => return Err(invalid("this write needs `data`")),
            (op, Some(data)) => {
                let data = value::object(data, "`data`")?;
                match op {
                    BatchOp::Create => WriteOp::Create(data),
                    BatchOp::Set => WriteOp::Set(data),
                    _ => WriteOp::Update(data),
                }
            }
        };
        Ok(Write { path, op, if_version: write.if_version })
    }
}

/// The kinds of write.
#[derive(Debug, Clone)]
pub enum WriteOp {
    /// Create; fails with already-exists if the document exists.
    Create(Map<String, Value>),
    /// Create or replace.
    Set(Map<String, Value>),
    /// Deep-merge into an existing document; not-found if absent.
    Update(Map<String, Value>),
    /// Remove; a no-op if absent (unless `if_version` is set).
    Delete,
}

impl WriteOp {
    /// The data a create, set or update carries (none for a delete).
    fn into_data(self) -> Map<String, Value> {
        match self {
            WriteOp::Create(data) | WriteOp::Set(data) | WriteOp::Update(data) => data,
            WriteOp::Delete => Map::new(),
        }
    }
}

/// What a write does to the stored state.
#[derive(Debug, Clone)]
pub enum Effect {
    /// Store this document (created when there was none before); `text` is its data as
    /// JSON, serialised once while checking the size limit.
    Put { doc: StoredDoc, text: String },
    /// Remove the document.
    Delete,
    /// Nothing changes (a delete of an absent document).
    Nothing,
}

/// A write made ready for the writer on the caller's thread: a create or set whose data
/// holds no transform does not depend on the stored document, so it is checked,
/// normalised and encoded before it reaches the single writer.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub write: Write,
    /// How many trigger runs in a row led to this write (0: not a trigger's); see
    /// [`crate::changes::ChangeBus::cause`].
    pub depth: u8,
    /// The encoded data, when it could be settled in advance.
    text: Option<String>,
}

impl Prepared {
    /// Checks what can be checked without the stored document.
    pub fn new(mut write: Write) -> Result<Prepared, Error> {
        let text = match &mut write.op {
            WriteOp::Create(data) | WriteOp::Set(data) if !has_transform(data) => {
                let (checked, text) = checked(std::mem::take(data))?;
                *data = checked;
                Some(text)
            }
            _ => None,
        };
        Ok(Prepared { write, depth: 0, text })
    }

    /// A set whose document needs nothing from the stored one: only its version and
    /// creation time do, so the store may try it as a create first.
    pub fn replaces_blindly(&self) -> bool {
        matches!(self.write.op, WriteOp::Set(_)) && self.text.is_some() && self.write.if_version.is_none()
    }
}

/// A write [`apply`] refused, handed back whole so the rules can be decided on what it
/// attempted ([`attempted`]) before the caller learns why it failed.
#[derive(Debug)]
pub struct Refused {
    pub error: Error,
    pub write: Write,
}

/// Applies `write` to `current` at time `now` (microseconds since the epoch).
pub fn apply(current: Option<&StoredDoc>, prepared: Prepared, now: i64) -> Result<Effect, Refused> {
    let Prepared { write, text, .. } = prepared;
    let server_time = || super::format_time(now);
    let context = Transforms { now: &server_time };
    let computed = match (&write.op, current) {
        _ if write.if_version.is_some() && current.map(|doc| doc.version) != write.if_version => {
            Err(unmet(&write, current))
        }
        (WriteOp::Delete, Some(_)) => return Ok(Effect::Delete),
        (WriteOp::Delete, None) => return Ok(Effect::Nothing),
        (WriteOp::Create(_), Some(_)) => Err(Error::AlreadyExists(format!("`{}` already exists", write.path))),
        (WriteOp::Update(_), None) => Err(Error::NotFound(format!("`{}` does not exist", write.path))),
        // Settled by `Prepared::new`: nothing here depends on the stored document.
        (WriteOp::Create(_) | WriteOp::Set(_), _) if text.is_some() => Ok(None),
        (WriteOp::Create(data) | WriteOp::Set(data), current) => context
            .materialize(data, current.map(|doc| &doc.data))
            .map_err(Error::InvalidArgument)
            .and_then(checked)
            .map(Some),
        (WriteOp::Update(patch), Some(doc)) => {
            let mut merged = doc.data.clone();
            context.merge(&mut merged, patch).map_err(Error::InvalidArgument).and_then(|()| checked(merged)).map(Some)
        }
    };
    let (data, text) = match computed {
        Err(error) => return Err(Refused { error, write }),
        Ok(Some(settled)) => settled,
        Ok(None) => (write.op.into_data(), text.unwrap_or_default()),
    };
    let (version, created_at) = match current {
        Some(doc) => (doc.version + 1, doc.created_at),
        None => (1, now),
    };
    let doc = StoredDoc { path: write.path, data, version, created_at, updated_at: now };
    Ok(Effect::Put { doc, text })
}

/// The failed `if_version` of `write` on `current`.
fn unmet(write: &Write, current: Option<&StoredDoc>) -> Error {
    let (path, expected) = (&write.path, write.if_version.unwrap_or_default());
    Error::FailedPrecondition(match current {
        Some(doc) => format!("`{path}` is at version {}, not {expected}", doc.version),
        None => format!("`{path}` does not exist, so it is not at version {expected}"),
    })
}

/// What `write` set out to do to `current`, made out even when [`apply`] refuses it: the
/// `(before, after)` the rules decide on before a caller may learn why the write failed
/// (a version, whether a document exists, a field's type or a size). Preconditions are
/// ignored, transforms that cannot apply are left out and sizes are not checked. A create
/// is decided as a create, as it is when the insert itself finds the path taken.
pub fn attempted<'a>(
    current: Option<&'a StoredDoc>,
    write: &Write,
    now: i64,
) -> (Option<&'a StoredDoc>, Option<StoredDoc>) {
    let server_time = || super::format_time(now);
    let context = Transforms { now: &server_time };
    let before = if matches!(write.op, WriteOp::Create(_)) { None } else { current };
    let stored = before.map(|doc| &doc.data);
    let data = match &write.op {
        WriteOp::Delete => return (before, None),
        WriteOp::Create(data) | WriteOp::Set(data) => {
            context.materialize(data, stored).unwrap_or_else(|_| without_transforms(data))
        }
        WriteOp::Update(patch) => {
            let mut merged = stored.cloned().unwrap_or_default();
            if context.merge(&mut merged, patch).is_err() {
                merged = stored.cloned().unwrap_or_default();
                // Best effort: what is left of the patch may still not merge.
                let _ = context.merge(&mut merged, &without_transforms(patch));
            }
            merged
        }
    };
    let (version, created_at) = before.map_or((1, now), |doc| (doc.version + 1, doc.created_at));
    (before, Some(StoredDoc { path: write.path.clone(), data, version, created_at, updated_at: now }))
}

/// `data` with every transform (`{"$increment": 1}`, …) taken out.
fn without_transforms(data: &Map<String, Value>) -> Map<String, Value> {
    data.iter()
        .filter(|(key, _)| !key.starts_with('$'))
        .filter_map(|(key, value)| match value {
            Value::Object(inner) if inner.keys().any(|key| key.starts_with('$')) => None,
            Value::Object(inner) => Some((key.clone(), Value::Object(without_transforms(inner)))),
            other => Some((key.clone(), other.clone())),
        })
        .collect()
}

fn checked(mut data: Map<String, Value>) -> Result<(Map<String, Value>, String), Error> {
    value::check_document(&mut data).map_err(|error| match error {
        ShapeError::TooDeep => Error::InvalidArgument(format!(
            "document nests deeper than {} levels",
            value::MAX_DEPTH
        )),
        ShapeError::ReservedKey(key) => Error::InvalidArgument(format!(
            "`{key}`: keys starting with `$` are reserved for transforms (`$increment`, `$server_time`, `$array_union`, `$array_remove`), which are allowed only as object values outside arrays"
        )),
    })?;
    // The encoding that is measured is the one that is stored.
    let text = serde_json::to_string(&data).map_err(|e| Error::Internal(format!("encoding a document: {e}")))?;
    if text.len() > MAX_DOC_BYTES {
        return Err(Error::TooLarge(format!("document is {} bytes encoded; the limit is {MAX_DOC_BYTES}", text.len())));
    }
    check_no_nul(&text)?;
    Ok((data, text))
}

/// No string or key may hold the character U+0000, on either backend: PostgreSQL's
/// `jsonb` cannot store it, C-string APIs cut text at it, and a document must read back
/// the same wherever it is stored. `json` is the encoded document, where it can only
/// appear escaped as `\u0000` (an escaped backslash before `u0000` is text).
fn check_no_nul(json: &str) -> Result<(), Error> {
    let bytes = json.as_bytes();
    let mut at = 0;
    while let Some(found) = json[at..].find("\\u0000") {
        let start = at + found;
        let backslashes = bytes[..start].iter().rev().take_while(|byte| **byte == b'\\').count();
        if backslashes % 2 == 0 {
            return Err(Error::InvalidArgument("strings and keys may not contain the character U+0000".into()));
        }
        at = start + 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => panic!("not an object"),
        }
    }

    fn doc(data: Value) -> StoredDoc {
        StoredDoc {
            path: DocPath::parse("c/d").expect("valid"),
            data: object(data),
            version: 3,
            created_at: 1,
            updated_at: 2,
        }
    }

    fn update(patch: Value) -> Write {
        Write { path: DocPath::parse("c/d").expect("valid"), op: WriteOp::Update(object(patch)), if_version: None }
    }

    /// Prepares and applies, as the write path does.
    fn run(current: Option<&StoredDoc>, write: &Write, now: i64) -> Result<Effect, Error> {
        Prepared::new(write.clone()).and_then(|prepared| apply(current, prepared, now).map_err(|refused| refused.error))
    }

    fn put(effect: Result<Effect, Error>) -> StoredDoc {
        match effect {
            Ok(Effect::Put { doc, .. }) => doc,
            other => panic!("expected a put, got {other:?}"),
        }
    }

    #[test]
    fn patch_deep_merges_and_null_removes() {
        let current = doc(json!({"a": {"b": 1, "c": 2}, "d": 1, "e": "x"}));
        let after = put(run(Some(&current), &update(json!({"a": {"c": null, "z": 9}, "d": null, "e": {"f": 1}})), 10));
        assert_eq!(Value::Object(after.data), json!({"a": {"b": 1, "z": 9}, "e": {"f": 1}}));
        assert_eq!(after.version, 4);
        assert_eq!(after.created_at, 1);
        assert_eq!(after.updated_at, 10);
    }

    #[test]
    fn the_four_transforms_apply_to_the_stored_values() {
        let current = doc(json!({"n": 1, "tags": ["a", "b"], "f": 1.5}));
        let after = put(run(
            Some(&current),
            &update(json!({
                "n": {"$increment": 2},
                "f": {"$increment": 0.5},
                "fresh": {"$increment": 5},
                "at": {"$server_time": true},
                "tags": {"$array_union": ["b", "c"]},
                "gone": {"$array_remove": ["x"]},
            })),
            0,
        ));
        assert_eq!(after.data["n"], json!(3));
        assert_eq!(after.data["f"], json!(2));
        assert_eq!(after.data["fresh"], json!(5));
        assert_eq!(after.data["at"], json!("1970-01-01T00:00:00.000000Z"));
        assert_eq!(after.data["tags"], json!(["a", "b", "c"]));
        assert_eq!(after.data["gone"], json!([]));
        let removed = put(run(Some(&after), &update(json!({"tags": {"$array_remove": ["a", "c"]}})), 0));
        assert_eq!(removed.data["tags"], json!(["b"]));
    }

    #[test]
    fn bad_transforms_are_invalid_arguments() {
        let current = doc(json!({"s": "text"}));
        for patch in [
            json!({"s": {"$increment": 1}}),
            json!({"x": {"$increment": "1"}}),
            json!({"x": {"$bogus": 1}}),
            json!({"x": {"$server_time": false}}),
            json!({"x": {"$increment": 1, "other": 2}}),
            json!({"s": {"$array_union": [1]}}),
            json!({"x": [{"$increment": 1}]}),
        ] {
            let result = run(Some(&current), &update(patch.clone()), 0);
            assert!(matches!(result, Err(Error::InvalidArgument(_))), "{patch}: {result:?}");
        }
    }

    #[test]
    fn preconditions_decide_before_anything_changes() {
        let current = doc(json!({}));
        let path = DocPath::parse("c/d").expect("valid");
        let create = Write { path: path.clone(), op: WriteOp::Create(Map::new()), if_version: None };
        assert!(matches!(run(Some(&current), &create, 0), Err(Error::AlreadyExists(_))));
        let stale = Write { path: path.clone(), op: WriteOp::Set(Map::new()), if_version: Some(2) };
        assert!(matches!(run(Some(&current), &stale, 0), Err(Error::FailedPrecondition(_))));
        let fresh = Write { path: path.clone(), op: WriteOp::Set(Map::new()), if_version: Some(3) };
        assert_eq!(put(run(Some(&current), &fresh, 0)).version, 4);
        assert!(matches!(run(None, &update(json!({})), 0), Err(Error::NotFound(_))));
        let delete = Write { path, op: WriteOp::Delete, if_version: None };
        assert!(matches!(run(None, &delete, 0), Ok(Effect::Nothing)));
    }

    #[test]
    fn documents_over_the_limits_are_refused() {
        let big = json!({"x": "a".repeat(MAX_DOC_BYTES)});
        let write =
            Write { path: DocPath::parse("c/d").expect("valid"), op: WriteOp::Set(object(big)), if_version: None };
        assert!(matches!(run(None, &write, 0), Err(Error::TooLarge(_))));
    }

    #[test]
    fn the_character_u0000_is_refused_in_strings_keys_and_patches_but_its_escaped_text_is_not() {
        let path = DocPath::parse("c/d").expect("valid");
        let set = |data: Value| Write { path: path.clone(), op: WriteOp::Set(object(data)), if_version: None };
        for nul in [json!({"s": "a\u{0}b"}), json!({"a\u{0}": 1}), json!({"deep": [{"s": "\u{0}"}]})] {
            assert!(matches!(Prepared::new(set(nul.clone())), Err(Error::InvalidArgument(_))), "{nul}");
        }
        // Backslash, then the letters `u0000`: text, stored as it is.
        let text = set(json!({"s": "a\\u0000b", "t": "\\\\u0000"}));
        assert!(matches!(run(None, &text, 0), Ok(Effect::Put { .. })));
        let stored =
            StoredDoc { path: path.clone(), data: object(json!({"n": 1})), version: 1, created_at: 0, updated_at: 0 };
        let patch = Write { path: path.clone(), op: WriteOp::Update(object(json!({"s": "\u{0}"}))), if_version: None };
        assert!(matches!(run(Some(&stored), &patch, 0), Err(Error::InvalidArgument(_))));
    }
}
