//! The in-memory meaning of filters and writes, shared by the server (its matcher and
//! its one write path) and the SDK (which answers queries and applies writes locally
//! while offline), so the two cannot disagree.

use std::cmp::Ordering;

use serde_json::{Map, Number, Value};

use crate::Op;
use crate::value::{compare, equal, normalized_float, type_rank};

/// Whether a field's `value` (`None`: the document lacks the field) meets `op wanted`.
/// `wanted` is an array for the list operators.
pub fn op_matches(op: Op, wanted: &Value, value: Option<&Value>) -> bool {
    let Some(value) = value else {
        return false;
    };
    let same_type = type_rank(value) == type_rank(wanted);
    let list = || wanted.as_array().map(Vec::as_slice).unwrap_or(&[]);
    match op {
        Op::Eq => equal(value, wanted),
        Op::Ne => !equal(value, wanted),
        Op::Lt => same_type && compare(value, wanted) == Ordering::Less,
        Op::Le => same_type && compare(value, wanted) != Ordering::Greater,
        Op::Gt => same_type && compare(value, wanted) == Ordering::Greater,
        Op::Ge => same_type && compare(value, wanted) != Ordering::Less,
        Op::In => list().iter().any(|item| equal(value, item)),
        Op::NotIn => !list().iter().any(|item| equal(value, item)),
        Op::ArrayContains => value.as_array().is_some_and(|items| items.iter().any(|item| equal(item, wanted))),
        Op::ArrayContainsAny => value
            .as_array()
            .is_some_and(|items| items.iter().any(|item| list().iter().any(|candidate| equal(item, candidate)))),
    }
}

/// Whether an object holds a transform (a `$` key) at any depth outside arrays.
pub fn has_transform(data: &Map<String, Value>) -> bool {
    data.iter().any(|(key, value)| key.starts_with('$') || value.as_object().is_some_and(has_transform))
}

/// Resolves the four transforms (`$increment`, `$server_time`, `$array_union`,
/// `$array_remove`). `now` gives the text `$server_time` stores. Errors are the message
/// of an invalid-argument answer.
pub struct Transforms<'a> {
    pub now: &'a dyn Fn() -> String,
}

/// A transform found as a value: `{"$increment": 1}` and friends.
enum Transform<'a> {
    Increment(&'a Number),
    ServerTime,
    ArrayUnion(&'a [Value]),
    ArrayRemove(&'a [Value]),
}

fn transform_of(value: &Value) -> Result<Option<Transform<'_>>, String> {
    let Value::Object(map) = value else {
        return Ok(None);
    };
    let Some((key, argument)) = map.iter().find(|(key, _)| key.starts_with('$')) else {
        return Ok(None);
    };
    if map.len() != 1 {
        return Err(format!("a transform object holds only its `{key}` key"));
    }
    Ok(Some(match (key.as_str(), argument) {
        ("$increment", Value::Number(n)) => Transform::Increment(n),
        ("$increment", _) => return Err("`$increment` takes a number".into()),
        ("$server_time", Value::Bool(true)) => Transform::ServerTime,
        ("$server_time", _) => return Err("`$server_time` takes `true`".into()),
        ("$array_union", Value::Array(items)) => Transform::ArrayUnion(items),
        ("$array_remove", Value::Array(items)) => Transform::ArrayRemove(items),
        ("$array_union" | "$array_remove", _) => return Err(format!("`{key}` takes an array")),
        _ => {
            return Err(format!(
                "unknown transform `{key}` (known: `$increment`, `$server_time`, `$array_union`, `$array_remove`)"
            ));
        }
    }))
}

impl Transforms<'_> {
    /// RFC 7396 merge of `patch` into `target` (`null` removes), resolving transforms
    /// against `target`.
    pub fn merge(&self, target: &mut Map<String, Value>, patch: &Map<String, Value>) -> Result<(), String> {
        for (key, value) in patch {
            if value.is_null() {
                target.remove(key);
                continue;
            }
            if let Some(transform) = transform_of(value)? {
                let result = self.resolve(key, transform, target.get(key))?;
                target.insert(key.clone(), result);
                continue;
            }
            match value {
                Value::Object(inner_patch) => {
                    let slot = target.entry(key.clone()).or_insert_with(|| Value::Object(Map::new()));
                    if !slot.is_object() {
                        *slot = Value::Object(Map::new());
                    }
                    if let Value::Object(inner) = slot {
                        self.merge(inner, inner_patch)?;
                    }
                }
                other => {
                    target.insert(key.clone(), other.clone());
                }
            }
        }
        Ok(())
    }

    /// The data of a create or set: kept as given (nulls included), transforms resolved
    /// against the fields of the document being replaced.
    pub fn materialize(
        &self,
        data: &Map<String, Value>,
        current: Option<&Map<String, Value>>,
    ) -> Result<Map<String, Value>, String> {
        let mut out = Map::new();
        for (key, value) in data {
            let before = current.and_then(|map| map.get(key));
            let resolved = if let Some(transform) = transform_of(value)? {
                self.resolve(key, transform, before)?
            } else if let Value::Object(inner) = value {
                Value::Object(self.materialize(inner, before.and_then(Value::as_object))?)
            } else {
                value.clone()
            };
            out.insert(key.clone(), resolved);
        }
        Ok(out)
    }

    fn resolve(&self, key: &str, transform: Transform<'_>, before: Option<&Value>) -> Result<Value, String> {
        Ok(match transform {
            Transform::Increment(by) => match before {
                None | Some(Value::Null) => Value::Number(by.clone()),
                Some(Value::Number(current)) => Value::Number(add(current, by)),
                Some(_) => return Err(format!("`$increment` on `{key}`, which is not a number")),
            },
            Transform::ServerTime => Value::String((self.now)()),
            Transform::ArrayUnion(items) => {
                let mut array = existing_array(key, before)?;
                for item in items {
                    if !array.iter().any(|present| equal(present, item)) {
                        array.push(item.clone());
                    }
                }
                Value::Array(array)
            }
            Transform::ArrayRemove(items) => {
                let mut array = existing_array(key, before)?;
                array.retain(|present| !items.iter().any(|item| equal(present, item)));
                Value::Array(array)
            }
        })
    }
}

fn existing_array(key: &str, before: Option<&Value>) -> Result<Vec<Value>, String> {
    match before {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => Ok(items.clone()),
        Some(_) => Err(format!("array transform on `{key}`, which is not an array")),
    }
}

fn add(a: &Number, b: &Number) -> Number {
    if let (Some(x), Some(y)) = (a.as_i64(), b.as_i64())
        && let Some(sum) = x.checked_add(y)
    {
        return Number::from(sum);
    }
    normalized_float(a.as_f64().unwrap_or(0.0) + b.as_f64().unwrap_or(0.0))
}
