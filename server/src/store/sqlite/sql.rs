//! Queries compiled to SQLite SQL over the JSONB `data` column, encoding the rules of
//! `store::value`: a type-rank expression and `json_extract` per field, so one
//! `ORDER BY rank, value` sorts mixed types in contract order and an expression index on
//! the same two expressions serves equality, range and order.
//!
//! Collection paths and field paths are inlined as SQL literals (they are validated to
//! safe characters and quoted here) so that partial expression indexes match; every
//! value from a client is a bound parameter.

use std::fmt::Write as _;

use hearth_types::{Direction, Op};
use rusqlite::types::Value as SqlValue;
use serde_json::Value;

use crate::store::query::{Condition, Field, FieldFilter, QuerySpec, Target};
use crate::store::value::{canonical, type_rank};

/// SQL text and its bound parameters.
#[derive(Debug, Default)]
pub struct Compiled {
    pub sql: String,
    pub params: Vec<SqlValue>,
}

/// A string as an SQL literal.
pub fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The rank of a JSON type named by `type_expr` (a `json_type` or `json_each.type`).
fn rank_of(type_expr: &str) -> String {
    format!(
        "CASE {type_expr} WHEN 'null' THEN 0 WHEN 'true' THEN 1 WHEN 'false' THEN 1 \
         WHEN 'integer' THEN 2 WHEN 'real' THEN 2 WHEN 'text' THEN 3 WHEN 'array' THEN 4 \
         WHEN 'object' THEN 5 END"
    )
}

/// The SQL expressions of a field: its type rank (`None` for `__id__`, always a string)
/// and its value.
pub struct FieldSql {
    rank: Option<String>,
    value: String,
    json_path: Option<String>,
}

impl FieldSql {
    pub fn of(field: &Field) -> FieldSql {
        match field {
            Field::Id => FieldSql { rank: None, value: "id".into(), json_path: None },
            Field::Path(segments) => {
                let mut path = String::from("$");
                for segment in segments {
                    let _ = write!(path, ".\"{segment}\"");
                }
                let path = literal(&path);
                FieldSql {
                    rank: Some(rank_of(&format!("json_type(data, {path})"))),
                    value: format!("json_extract(data, {path})"),
                    json_path: Some(path),
                }
            }
        }
    }

    /// The rank expression, or the string rank for `__id__`.
    fn rank(&self) -> String {
        self.rank.clone().unwrap_or_else(|| "3".into())
    }

    /// `ORDER BY` / index columns for this field.
    pub fn order_columns(&self, dir: Direction) -> String {
        let dir = match dir {
            Direction::Asc => "ASC",
            Direction::Desc => "DESC",
        };
        match &self.rank {
            Some(rank) => format!("{rank} {dir}, {} {dir}", self.value),
            None => format!("{} {dir}", self.value),
        }
    }
}

/// A JSON value as the SQL value `json_extract` yields for it.
pub fn sql_value(value: &Value) -> SqlValue {
    match value {
        Value::Null => SqlValue::Null,
        Value::Bool(b) => SqlValue::Integer(i64::from(*b)),
        Value::Number(n) => match n.as_i64() {
            Some(i) => SqlValue::Integer(i),
            None => SqlValue::Real(n.as_f64().unwrap_or(0.0)),
        },
        Value::String(s) => SqlValue::Text(s.clone()),
        Value::Array(_) | Value::Object(_) => SqlValue::Text(canonical(value)),
    }
}

fn equals(rank: &str, value_expr: &str, value: &Value, params: &mut Vec<SqlValue>) -> String {
    let r = type_rank(value);
    if r == 0 {
        return format!("({rank}) = 0");
    }
    params.push(sql_value(value));
    format!("(({rank}) = {r} AND {value_expr} = ?)")
}

fn any_equals(rank: &str, value_expr: &str, values: &[Value], params: &mut Vec<SqlValue>) -> String {
    let terms: Vec<String> = values.iter().map(|v| equals(rank, value_expr, v, params)).collect();
    format!("({})", terms.join(" OR "))
}

fn compare(rank: &str, value_expr: &str, op: &str, value: &Value, params: &mut Vec<SqlValue>) -> String {
    let r = type_rank(value);
    if r == 0 {
        // Only null equals null; nothing is strictly before or after it.
        return if op.contains('=') { format!("({rank}) = 0") } else { "0".into() };
    }
    params.push(sql_value(value));
    format!("(({rank}) = {r} AND {value_expr} {op} ?)")
}

fn filter_sql(filter: &FieldFilter, params: &mut Vec<SqlValue>) -> String {
    let field = FieldSql::of(&filter.field);
    let rank = field.rank();
    let value_expr = &field.value;
    let list = filter.value.as_array().map(Vec::as_slice).unwrap_or(&[]);
    let exists = format!("({rank}) IS NOT NULL");
    match filter.op {
        Op::Eq => equals(&rank, value_expr, &filter.value, params),
        Op::Ne => format!("({exists} AND NOT {})", equals(&rank, value_expr, &filter.value, params)),
        Op::Lt => compare(&rank, value_expr, "<", &filter.value, params),
        Op::Le => compare(&rank, value_expr, "<=", &filter.value, params),
        Op::Gt => compare(&rank, value_expr, ">", &filter.value, params),
        Op::Ge => compare(&rank, value_expr, ">=", &filter.value, params),
        Op::In => any_equals(&rank, value_expr, list, params),
        Op::NotIn => format!("({exists} AND NOT {})", any_equals(&rank, value_expr, list, params)),
        Op::ArrayContains | Op::ArrayContainsAny => {
            let Some(json_path) = &field.json_path else {
                return "0".into(); // an id is never an array
            };
            let element_rank = rank_of("e.type");
            let element = if filter.op == Op::ArrayContains {
                equals(&element_rank, "e.value", &filter.value, params)
            } else {
                any_equals(&element_rank, "e.value", list, params)
            };
            format!(
                "(({rank}) = 4 AND EXISTS (SELECT 1 FROM json_each(documents.data, {json_path}) AS e WHERE {element}))"
            )
        }
    }
}

fn condition_sql(condition: &Condition, params: &mut Vec<SqlValue>) -> String {
    match condition {
        Condition::Filter(filter) => filter_sql(filter, params),
        Condition::Holds(field, wanted) => {
            let field = FieldSql::of(field);
            let (Some(rank), Some(json_path)) = (&field.rank, &field.json_path) else {
                return "0".into(); // an id is a string: it holds nothing
            };
            let element = equals(&rank_of("e.type"), "e.value", wanted, params);
            let mut sql = format!(
                "((({rank}) = 4 AND EXISTS (SELECT 1 FROM json_each(documents.data, {json_path}) AS e WHERE {element}))"
            );
            if let Value::String(key) = wanted {
                params.push(SqlValue::Text(key.clone()));
                let _ = write!(
                    sql,
                    " OR (({rank}) = 5 AND EXISTS (SELECT 1 FROM json_each(documents.data, {json_path}) AS e WHERE e.key = ?))"
                );
            }
            sql.push(')');
            sql
        }
        Condition::All(conditions) | Condition::Any(conditions) if conditions.is_empty() => {
            if matches!(condition, Condition::All(_)) { "1".into() } else { "0".into() }
        }
        Condition::All(conditions) => joined(conditions, " AND ", params),
        Condition::Any(conditions) => joined(conditions, " OR ", params),
    }
}

fn joined(conditions: &[Condition], separator: &str, params: &mut Vec<SqlValue>) -> String {
    let terms: Vec<String> = conditions.iter().map(|condition| condition_sql(condition, params)).collect();
    format!("({})", terms.join(separator))
}

/// The `WHERE` clause of a query (target, filters, order fields present, cursor).
pub fn where_clause(spec: &QuerySpec, params: &mut Vec<SqlValue>) -> String {
    let mut terms = vec![target_scan(&spec.target)];
    for filter in &spec.filters {
        terms.push(filter_sql(filter, params));
    }
    if let Some(condition) = &spec.restriction {
        terms.push(condition_sql(condition, params));
    }
    for key in &spec.order {
        if let Some(rank) = FieldSql::of(&key.field).rank {
            terms.push(format!("({rank}) IS NOT NULL"));
        }
    }
    if let Some(after) = &spec.after {
        // Keyset: strictly after (k1, ..., kn, path) in the query's order.
        // Built from the innermost term out; parameters follow the text order.
        let mut tail = "path > ?".to_owned();
        let mut tail_params = vec![SqlValue::Text(after.path.clone())];
        for (key, last) in spec.order.iter().zip(&after.keys).rev() {
            let field = FieldSql::of(&key.field);
            let rank = field.rank();
            let r = type_rank(last);
            let (rank_op, value_op) = match key.dir {
                Direction::Asc => (">", ">"),
                Direction::Desc => ("<", "<"),
            };
            let mut local = Vec::new();
            let beyond = if r == 0 {
                format!("({rank}) {rank_op} 0")
            } else {
                local.push(sql_value(last));
                format!("(({rank}) {rank_op} {r} OR (({rank}) = {r} AND {} {value_op} ?))", field.value)
            };
            let same = equals(&rank, &field.value, last, &mut local);
            tail = format!("({beyond} OR ({same} AND {tail}))");
            local.extend(tail_params);
            tail_params = local;
        }
        params.extend(tail_params);
        terms.push(tail);
    }
    terms.join(" AND ")
}

/// `collection = '...'` or `coll_id = '...'`, as literals so partial indexes apply: the
/// condition of a declared index over the target.
pub fn target_term(target: &Target) -> String {
    match target {
        Target::Collection(collection) => format!("collection = {}", literal(collection.as_str())),
        Target::Group(group) => format!("coll_id = {}", literal(group)),
    }
}

/// [`target_term`] and, for a collection, the range of `documents_key` it lies in: in
/// its group, the paths from `C/` to `C0` (`0` follows `/`). The range is marked as
/// filtering nothing (`likelihood(…, 1.0)`, still usable by an index): on a declared
/// index, which ends in `path`, it would otherwise look selective and win over the
/// index that gives the query's order.
fn target_scan(target: &Target) -> String {
    match target {
        Target::Collection(collection) => format!(
            "{} AND coll_id = {} AND likelihood(path > {}, 1.0) AND likelihood(path < {}, 1.0)",
            target_term(target),
            literal(collection.id()),
            literal(&format!("{collection}/")),
            literal(&format!("{collection}0"))
        ),
        Target::Group(_) => target_term(target),
    }
}

/// The `ORDER BY` clause of a query; ties break on path.
///
/// When a filter pins an order field to one type (`==`, a range, `array-contains`), the
/// rank column is left out: it is constant over the result, and SQLite only recognises
/// an index as already sorted when the `ORDER BY` names no such constant expression.
pub fn order_clause(spec: &QuerySpec) -> String {
    let mut columns: Vec<String> = spec
        .order
        .iter()
        .map(|key| {
            let field = FieldSql::of(&key.field);
            if pinned_rank(spec, &key.field) {
                let dir = if key.dir == Direction::Desc { "DESC" } else { "ASC" };
                format!("{} {dir}", field.value)
            } else {
                field.order_columns(key.dir)
            }
        })
        .collect();
    columns.push("path ASC".into());
    columns.join(", ")
}

/// Whether some filter makes every matching document hold `field` with one type rank.
fn pinned_rank(spec: &QuerySpec, field: &Field) -> bool {
    spec.filters.iter().any(|filter| {
        &filter.field == field
            && matches!(
                filter.op,
                Op::Eq | Op::Lt | Op::Le | Op::Gt | Op::Ge | Op::ArrayContains | Op::ArrayContainsAny
            )
    })
}

/// The page query: one row more than the limit tells whether more follow.
pub fn select(spec: &QuerySpec) -> Compiled {
    let mut params = Vec::new();
    let where_sql = where_clause(spec, &mut params);
    let sql = format!(
        "SELECT path, json(data), version, created_at, updated_at FROM documents WHERE {where_sql} ORDER BY {} LIMIT {}",
        order_clause(spec),
        spec.limit + 1
    );
    Compiled { sql, params }
}

/// The aggregate query: count, then a sum per field, then an avg per field.
pub fn aggregate(spec: &QuerySpec, sum: &[Field], avg: &[Field], limit: Option<usize>) -> Compiled {
    let mut params = Vec::new();
    let where_sql = where_clause(spec, &mut params);
    let mut columns = vec!["count(*)".to_owned()];
    for (function, fields) in [("SUM", sum), ("AVG", avg)] {
        for field in fields {
            let field = FieldSql::of(field);
            columns.push(format!("{function}(CASE WHEN ({}) = 2 THEN {} END)", field.rank(), field.value));
        }
    }
    let source = match limit {
        Some(limit) => format!(
            "(SELECT data, id FROM documents WHERE {where_sql} ORDER BY {} LIMIT {limit}) AS documents",
            order_clause(spec)
        ),
        None => format!("documents WHERE {where_sql}"),
    };
    Compiled { sql: format!("SELECT {} FROM {source}", columns.join(", ")), params }
}
