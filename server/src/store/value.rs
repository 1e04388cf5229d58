//! The JSON value rules every part of the store shares: type order, comparison,
//! normalisation and the shape limits of a document.
//!
//! The SQL compiler (`sqlite::sql`) encodes exactly these rules in SQL; the in-memory
//! matcher (`query`) uses them directly. A randomized test keeps the two in agreement.

use serde_json::{Map, Value};

/// Deepest nesting a document may have (the document object itself is level 1).
pub const MAX_DEPTH: usize = 32;
/// Largest encoded document.
pub const MAX_DOC_BYTES: usize = 1024 * 1024;

/// `value` as a JSON object, or invalid-argument naming `what` and what it is instead.
pub fn object(value: Value, what: &str) -> Result<Map<String, Value>, super::Error> {
    let kind = match value {
        Value::Object(map) => return Ok(map),
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
    };
    Err(super::Error::InvalidArgument(format!("{what} must be a JSON object, not {kind}")))
}

pub use hearth_types::value::{canonical, compare, equal, normalized_float, type_rank};

/// Why a value breaks the shape rules of a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShapeError {
    TooDeep,
    ReservedKey(String),
}

/// Brings numbers to one spelling so that equal values have equal canonical text:
/// an integral float becomes an integer (`1.0` → `1`, as JavaScript sees it), and an
/// unsigned integer beyond `i64` becomes a float (what SQLite stores for it).
/// Also checks the nesting limit, counting the top value as level 1.
pub fn normalize(value: &mut Value, depth: usize) -> Result<(), ShapeError> {
    if depth > MAX_DEPTH {
        return Err(ShapeError::TooDeep);
    }
    match value {
        Value::Number(n) if n.as_i64().is_none() => {
            if let Some(f) = n.as_f64() {
                *n = normalized_float(f);
            }
        }
        Value::Array(items) => {
            for item in items {
                normalize(item, depth + 1)?;
            }
        }
        Value::Object(map) => {
            for item in map.values_mut() {
                normalize(item, depth + 1)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Checks a stored document: no `$` keys left anywhere (they are transforms, resolved
/// before storing), nesting within the limit, numbers normalised.
pub fn check_document(data: &mut Map<String, Value>) -> Result<(), ShapeError> {
    fn reserved(value: &Value) -> Option<String> {
        match value {
            Value::Object(map) => {
                map.iter().find_map(|(key, item)| if key.starts_with('$') { Some(key.clone()) } else { reserved(item) })
            }
            Value::Array(items) => items.iter().find_map(reserved),
            _ => None,
        }
    }
    for (key, item) in data.iter_mut() {
        if key.starts_with('$') {
            return Err(ShapeError::ReservedKey(key.clone()));
        }
        if let Some(key) = reserved(item) {
            return Err(ShapeError::ReservedKey(key));
        }
        normalize(item, 2)?;
    }
    Ok(())
}

pub use hearth_types::value::lookup;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn normalisation_makes_integral_floats_integers_and_limits_depth() {
        let mut value = json!({"a": 1.0, "b": [2.5, 3.0]});
        normalize(&mut value, 1).expect("shallow");
        assert_eq!(canonical(&value), r#"{"a":1,"b":[2.5,3]}"#);
        let mut deep = json!(1);
        for _ in 0..MAX_DEPTH {
            deep = json!([deep]);
        }
        assert_eq!(normalize(&mut deep, 1), Err(ShapeError::TooDeep));
    }

    #[test]
    fn reserved_keys_are_found_at_any_depth() {
        let mut data = json!({"a": [{"$increment": 1}]});
        let map = data.as_object_mut().expect("object");
        assert_eq!(check_document(map), Err(ShapeError::ReservedKey("$increment".into())));
    }
}
