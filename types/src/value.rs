//! The order and equality of JSON values that queries use, shared by the server (its
//! SQL and in-memory evaluators) and the SDK (which keeps live query results in order).

use std::cmp::Ordering;

use serde_json::{Map, Number, Value};

/// Rank of a JSON type in the sort order: null < booleans < numbers < strings < arrays <
/// objects. Booleans share a rank so that `<` between booleans means false < true.
pub fn type_rank(value: &Value) -> u8 {
    match value {
        Value::Null => 0,
        Value::Bool(_) => 1,
        Value::Number(_) => 2,
        Value::String(_) => 3,
        Value::Array(_) => 4,
        Value::Object(_) => 5,
    }
}

/// Total order of JSON values: by type rank, then within the type: booleans false < true,
/// numbers numerically, strings by UTF-8 bytes, arrays and objects by their canonical
/// (minified, keys sorted) JSON text.
pub fn compare(a: &Value, b: &Value) -> Ordering {
    let by_rank = type_rank(a).cmp(&type_rank(b));
    if by_rank != Ordering::Equal {
        return by_rank;
    }
    match (a, b) {
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        (Value::Number(x), Value::Number(y)) => compare_numbers(x, y),
        (Value::String(x), Value::String(y)) => x.as_bytes().cmp(y.as_bytes()),
        (Value::Array(_), Value::Array(_)) | (Value::Object(_), Value::Object(_)) => canonical(a).cmp(&canonical(b)),
        _ => Ordering::Equal,
    }
}

/// Whether two values are equal under the rules of `==` (numbers numerically).
pub fn equal(a: &Value, b: &Value) -> bool {
    compare(a, b) == Ordering::Equal
}

fn compare_numbers(x: &Number, y: &Number) -> Ordering {
    if let (Some(x), Some(y)) = (x.as_i64(), y.as_i64()) {
        return x.cmp(&y);
    }
    let x = x.as_f64().unwrap_or(f64::NAN);
    let y = y.as_f64().unwrap_or(f64::NAN);
    x.partial_cmp(&y).unwrap_or(Ordering::Equal)
}

/// A float as stored: integral values within `i64` become integers (`1.0` → `1`, as
/// JavaScript sees it).
pub fn normalized_float(f: f64) -> Number {
    const LIMIT: f64 = 9_223_372_036_854_775_808.0; // 2^63
    if f.fract() == 0.0 && (-LIMIT..LIMIT).contains(&f) {
        Number::from(f as i64)
    } else {
        Number::from_f64(f).unwrap_or_else(|| Number::from(0))
    }
}

/// The canonical text of a value: minified, object keys sorted (serde_json's default map).
pub fn canonical(value: &Value) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// The value at a dotted field path, if the document has it.
pub fn lookup<'a>(data: &'a Map<String, Value>, segments: &[String]) -> Option<&'a Value> {
    let (first, rest) = segments.split_first()?;
    let mut current = data.get(first)?;
    for segment in rest {
        current = current.as_object()?.get(segment)?;
    }
    Some(current)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn types_sort_in_contract_order() {
        let ordered = [
            json!(null),
            json!(false),
            json!(true),
            json!(-5),
            json!(1.5),
            json!(2),
            json!(""),
            json!("a"),
            json!("b"),
            json!([1]),
            json!([2]),
            json!({}),
        ];
        for pair in ordered.windows(2) {
            assert_eq!(compare(&pair[0], &pair[1]), Ordering::Less, "{pair:?}");
        }
        assert!(equal(&json!(1), &json!(1.0)));
    }
}
