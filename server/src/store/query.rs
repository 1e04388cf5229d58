//! Queries, validated into a [`QuerySpec`] that both evaluators share: the SQL compiler of
//! each backend and the in-memory matcher here (which realtime uses to decide whether a
//! change concerns a subscription). Cursors are sealed so a client can neither read nor forge one.

use std::cmp::Ordering;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hearth_types::{Direction, Op, Query};
use serde_json::Value;

use super::path::{CollectionPath, is_valid_id};
use super::value::{self, compare, equal, lookup};
use super::{Error, StoredDoc};
use crate::seal::Sealer;

/// Default page size.
pub const DEFAULT_LIMIT: usize = 100;
/// Largest page size.
pub const MAX_LIMIT: usize = 1000;
/// Most values in an `in`, `not-in` or `array-contains-any` list.
pub const MAX_LIST_VALUES: usize = 100;
/// Most filters and most order clauses in one query.
pub const MAX_CLAUSES: usize = 16;

/// What a query reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Collection(CollectionPath),
    /// Every collection with this id, at any depth.
    Group(String),
}

/// A field a query names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    /// `__id__`: the document id.
    Id,
    /// A dotted path, split into its segments.
    Path(Vec<String>),
}

impl Field {
    pub fn parse(field: &str) -> Result<Field, Error> {
        if field == "__id__" {
            return Ok(Field::Id);
        }
        let segments: Vec<String> = field.split('.').map(str::to_owned).collect();
        for segment in &segments {
            let bad = segment.is_empty()
                || segment.len() > 256
                || segment.chars().any(|c| c == '"' || c == '\\' || c.is_control());
            if bad {
                return Err(Error::InvalidArgument(format!(
                    "field `{field}` is not a dotted path of non-empty names without `\"`, `\\` or control characters"
                )));
            }
        }
        Ok(Field::Path(segments))
    }

    /// The value of this field in `doc`, if it has it.
    pub fn value_in<'a>(&self, doc: &'a StoredDoc, id: &'a Value) -> Option<&'a Value> {
        match self {
            Field::Id => Some(id),
            Field::Path(segments) => lookup(&doc.data, segments),
        }
    }
}

/// One validated filter.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldFilter {
    pub field: Field,
    pub op: Op,
    /// Normalised; a non-empty array for the list operators.
    pub value: Value,
}

/// One validated order clause.
#[derive(Debug, Clone)]
pub struct OrderKey {
    pub field: Field,
    pub dir: Direction,
}

/// A condition on documents beyond a query's own filters: what the access rules let a
/// caller read, pushed into the query so the database applies it.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    Filter(FieldFilter),
    /// The field holds the value: as an element of an array, or (a string) as a key of an
    /// object; CEL's `value in field`.
    Holds(Field, Value),
    All(Vec<Condition>),
    Any(Vec<Condition>),
}

impl Condition {
    pub fn matches(&self, doc: &StoredDoc, id: &Value) -> bool {
        match self {
            Condition::Filter(filter) => filter_matches(filter, filter.field.value_in(doc, id)),
            Condition::Holds(field, wanted) => match field.value_in(doc, id) {
                Some(Value::Array(items)) => items.iter().any(|item| equal(item, wanted)),
                Some(Value::Object(map)) => wanted.as_str().is_some_and(|key| map.contains_key(key)),
                _ => false,
            },
            Condition::All(conditions) => conditions.iter().all(|condition| condition.matches(doc, id)),
            Condition::Any(conditions) => conditions.iter().any(|condition| condition.matches(doc, id)),
        }
    }
}

/// Where a page starts: strictly after the document with these order values and path.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct After {
    #[serde(rename = "k")]
    pub keys: Vec<Value>,
    #[serde(rename = "p")]
    pub path: String,
}

/// A query checked against every rule of the contract.
#[derive(Debug, Clone)]
pub struct QuerySpec {
    pub target: Target,
    pub filters: Vec<FieldFilter>,
    pub order: Vec<OrderKey>,
    pub limit: usize,
    pub after: Option<After>,
    /// What else a document must meet: the caller's read rules, when they could be pushed
    /// into the query. Not part of the cursor's fingerprint.
    pub restriction: Option<Condition>,
    /// Binds cursors to this query (collection, filters, order).
    fingerprint: String,
}

impl QuerySpec {
    /// Validates a wire query. `signer` checks the cursor, if any.
    pub fn parse(query: &Query, signer: &CursorSealer) -> Result<QuerySpec, Error> {
        let target = match (&query.collection, &query.collection_group) {
            (Some(collection), None) => {
                Target::Collection(CollectionPath::parse(collection).map_err(|e| Error::InvalidArgument(e.0))?)
            }
            (None, Some(group)) if is_valid_id(group) => Target::Group(group.clone()),
            (None, Some(group)) => {
                return Err(Error::InvalidArgument(format!("collection_group `{group}` is not a valid collection id")));
            }
            _ => {
                return Err(Error::InvalidArgument(
                    "a query names exactly one of `collection` and `collection_group`".into(),
                ));
            }
        };
        if query.filters.len() > MAX_CLAUSES || query.order_by.len() > MAX_CLAUSES {
            return Err(Error::InvalidArgument(format!(
                "at most {MAX_CLAUSES} filters and {MAX_CLAUSES} order clauses"
            )));
        }
        let filters = query
            .filters
            .iter()
            .map(|filter| {
                let field = Field::parse(&filter.field)?;
                let mut value = filter.value.clone();
                value::normalize(&mut value, 1)
                    .map_err(|_| Error::InvalidArgument(format!("the value for `{}` nests too deep", filter.field)))?;
                if matches!(filter.op, Op::In | Op::NotIn | Op::ArrayContainsAny) {
                    match &value {
                        Value::Array(items) if !items.is_empty() && items.len() <= MAX_LIST_VALUES => {}
                        _ => {
                            return Err(Error::InvalidArgument(format!(
                                "`{}` on `{}` takes an array of 1 to {MAX_LIST_VALUES} values",
                                op_name(filter.op),
                                filter.field
                            )));
                        }
                    }
                }
                Ok(FieldFilter { field, op: filter.op, value })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let order = query
            .order_by
            .iter()
            .map(|order| Ok(OrderKey { field: Field::parse(&order.field)?, dir: order.dir }))
            .collect::<Result<Vec<_>, Error>>()?;
        let limit = match query.limit {
            None => DEFAULT_LIMIT,
            Some(0) => return Err(Error::InvalidArgument("`limit` must be at least 1".into())),
            Some(n) if n as usize > MAX_LIMIT => {
                return Err(Error::InvalidArgument(format!("`limit` is at most {MAX_LIMIT}")));
            }
            Some(n) => n as usize,
        };
        let shape = Query { limit: None, cursor: None, ..query.clone() };
        let fingerprint = serde_json::to_string(&shape).unwrap_or_default();
        let after = match &query.cursor {
            None => None,
            Some(cursor) => {
                let after = signer.open(cursor, &fingerprint)?;
                if after.keys.len() != order.len() {
                    return Err(Error::InvalidArgument("cursor does not fit this query".into()));
                }
                Some(after)
            }
        };
        Ok(QuerySpec { target, filters, order, limit, after, restriction: None, fingerprint })
    }

    /// A query over a whole collection in id order (the list route).
    pub fn list(
        collection: CollectionPath,
        limit: Option<u32>,
        cursor: Option<String>,
        signer: &CursorSealer,
    ) -> Result<QuerySpec, Error> {
        let query = Query { collection: Some(collection.as_str().to_owned()), limit, cursor, ..Query::default() };
        QuerySpec::parse(&query, signer)
    }

    /// The query that finds one document: its collection, its id, limit 1.
    pub fn of_doc(path: &crate::store::DocPath) -> QuerySpec {
        QuerySpec {
            target: Target::Collection(path.collection_path()),
            filters: vec![FieldFilter { field: Field::Id, op: Op::Eq, value: Value::String(path.id().to_owned()) }],
            order: Vec::new(),
            limit: 1,
            after: None,
            restriction: None,
            fingerprint: String::new(),
        }
    }

    /// Whether `doc` belongs to the result set (target, filters, and every order field
    /// present), ignoring the limit and cursor.
    pub fn matches(&self, doc: &StoredDoc) -> bool {
        let in_target = match &self.target {
            Target::Collection(collection) => doc.path.collection() == collection.as_str(),
            Target::Group(group) => doc.path.collection_id() == group,
        };
        if !in_target {
            return false;
        }
        let id = Value::String(doc.path.id().to_owned());
        self.order.iter().all(|key| key.field.value_in(doc, &id).is_some())
            && self.filters.iter().all(|filter| filter_matches(filter, filter.field.value_in(doc, &id)))
            && self.restriction.as_ref().is_none_or(|condition| condition.matches(doc, &id))
    }

    /// Whether `doc` sorts strictly after the cursor position.
    pub fn is_after_cursor(&self, doc: &StoredDoc) -> bool {
        match &self.after {
            None => true,
            Some(after) => {
                let keys = self.sort_values(doc);
                compare_positions(&self.order, &keys, doc.path.as_str(), &after.keys, &after.path) == Ordering::Greater
            }
        }
    }

    /// The result order of two matching documents.
    pub fn compare_docs(&self, a: &StoredDoc, b: &StoredDoc) -> Ordering {
        compare_positions(&self.order, &self.sort_values(a), a.path.as_str(), &self.sort_values(b), b.path.as_str())
    }

    /// The values of the order fields of `doc` (null where absent).
    pub fn sort_values(&self, doc: &StoredDoc) -> Vec<Value> {
        let id = Value::String(doc.path.id().to_owned());
        self.order.iter().map(|key| key.field.value_in(doc, &id).cloned().unwrap_or(Value::Null)).collect()
    }

    /// Where `doc` sits in this query's order.
    pub fn position_of(&self, doc: &StoredDoc) -> After {
        After { keys: self.sort_values(doc), path: doc.path.as_str().to_owned() }
    }

    /// The cursor that resumes right after `last`.
    pub fn cursor_after(&self, last: &StoredDoc, signer: &CursorSealer) -> String {
        self.cursor_at(&self.position_of(last), signer)
    }

    /// The cursor that resumes right after `position`.
    pub fn cursor_at(&self, position: &After, signer: &CursorSealer) -> String {
        signer.seal(position, &self.fingerprint)
    }
}

fn compare_positions(order: &[OrderKey], a: &[Value], a_path: &str, b: &[Value], b_path: &str) -> Ordering {
    for ((key, x), y) in order.iter().zip(a).zip(b) {
        let ordering = compare(x, y);
        let ordering = match key.dir {
            Direction::Asc => ordering,
            Direction::Desc => ordering.reverse(),
        };
        if ordering != Ordering::Equal {
            return ordering;
        }
    }
    a_path.cmp(b_path)
}

/// The in-memory meaning of one filter; `value` is the field's value, `None` if absent.
pub fn filter_matches(filter: &FieldFilter, value: Option<&Value>) -> bool {
    hearth_types::eval::op_matches(filter.op, &filter.value, value)
}

/// The wire spelling of an operator.
pub fn op_name(op: Op) -> &'static str {
    match op {
        Op::Eq => "==",
        Op::Ne => "!=",
        Op::Lt => "<",
        Op::Le => "<=",
        Op::Gt => ">",
        Op::Ge => ">=",
        Op::In => "in",
        Op::NotIn => "not-in",
        Op::ArrayContains => "array-contains",
        Op::ArrayContainsAny => "array-contains-any",
    }
}

/// Seals and opens cursors with a key kept by the store: a cursor is encrypted, so it shows
/// nothing of the document it resumes after (which a budget-stopped scan may have read
/// without the caller being allowed to); bound to its query's fingerprint; and unforgeable.
#[derive(Clone)]
pub struct CursorSealer {
    sealer: Sealer,
}

impl CursorSealer {
    pub fn new(key: [u8; 32]) -> CursorSealer {
        CursorSealer { sealer: Sealer::new(&key) }
    }

    pub fn seal(&self, after: &After, fingerprint: &str) -> String {
        let payload = serde_json::to_vec(after).unwrap_or_default();
        URL_SAFE_NO_PAD.encode(self.sealer.seal(&payload, fingerprint.as_bytes()))
    }

    pub fn open(&self, cursor: &str, fingerprint: &str) -> Result<After, Error> {
        let forged = || Error::InvalidArgument("cursor is not one this server issued for this query".into());
        let sealed = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| forged())?;
        let payload = self.sealer.open(&sealed, fingerprint.as_bytes()).ok_or_else(forged)?;
        serde_json::from_slice(&payload).map_err(|_| forged())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(query: Value) -> QuerySpec {
        let query: Query = serde_json::from_value(query).expect("wire query");
        QuerySpec::parse(&query, &CursorSealer::new([7; 32])).expect("valid query")
    }

    fn doc(path: &str, data: Value) -> StoredDoc {
        StoredDoc {
            path: crate::store::DocPath::parse(path).expect("valid test path"),
            data: data.as_object().cloned().expect("object"),
            version: 1,
            created_at: 0,
            updated_at: 0,
        }
    }

    #[test]
    fn filters_follow_the_type_rules() {
        let d = doc("c/d", json!({"n": 5, "s": "5", "tags": ["a", 1], "o": {"x": null}}));
        let yes = |q: Value| assert!(spec(q.clone()).matches(&d), "{q}");
        let no = |q: Value| assert!(!spec(q.clone()).matches(&d), "{q}");
        yes(json!({"collection": "c", "where": [{"field": "n", "op": ">", "value": 4}]}));
        no(json!({"collection": "c", "where": [{"field": "s", "op": ">", "value": 4}]}));
        yes(json!({"collection": "c", "where": [{"field": "s", "op": "!=", "value": 5}]}));
        no(json!({"collection": "c", "where": [{"field": "missing", "op": "!=", "value": 5}]}));
        yes(json!({"collection": "c", "where": [{"field": "o.x", "op": "==", "value": null}]}));
        yes(json!({"collection": "c", "where": [{"field": "tags", "op": "array-contains", "value": 1.0}]}));
        yes(json!({"collection": "c", "where": [{"field": "tags", "op": "array-contains-any", "value": ["z", "a"]}]}));
        yes(json!({"collection": "c", "where": [{"field": "__id__", "op": "in", "value": ["d", "e"]}]}));
        no(json!({"collection": "c", "where": [{"field": "n", "op": "not-in", "value": [5]}]}));
        no(json!({"collection": "other", "where": []}));
        yes(json!({"collection_group": "c"}));
        no(json!({"collection": "c", "order_by": [{"field": "missing"}]}));
    }

    #[test]
    fn bad_queries_are_invalid_arguments() {
        let signer = CursorSealer::new([1; 32]);
        for bad in [
            json!({"collection": "c/d"}),
            json!({"collection": "c", "collection_group": "c"}),
            json!({}),
            json!({"collection": "c", "limit": 1001}),
            json!({"collection": "c", "limit": 0}),
            json!({"collection": "c", "where": [{"field": "a..b", "op": "==", "value": 1}]}),
            json!({"collection": "c", "where": [{"field": "a", "op": "in", "value": 1}]}),
            json!({"collection": "c", "where": [{"field": "a", "op": "in", "value": []}]}),
            json!({"collection": "c", "cursor": "abc.def"}),
        ] {
            let query: Query = serde_json::from_value(bad.clone()).expect("wire query");
            assert!(QuerySpec::parse(&query, &signer).is_err(), "{bad}");
        }
    }

    #[test]
    fn cursors_are_bound_to_their_query_and_cannot_be_forged() {
        let signer = CursorSealer::new([3; 32]);
        let q = spec(json!({"collection": "c", "order_by": [{"field": "n"}]}));
        let cursor = q.cursor_after(&doc("c/a", json!({"n": 1})), &signer);
        let again: Query =
            serde_json::from_value(json!({"collection": "c", "order_by": [{"field": "n"}], "cursor": cursor}))
                .expect("wire");
        let resumed = QuerySpec::parse(&again, &signer).expect("own cursor opens");
        assert!(resumed.is_after_cursor(&doc("c/b", json!({"n": 1}))));
        assert!(!resumed.is_after_cursor(&doc("c/0", json!({"n": 1}))));
        let other: Query =
            serde_json::from_value(json!({"collection": "c", "order_by": [{"field": "m"}], "cursor": cursor}))
                .expect("wire");
        assert!(QuerySpec::parse(&other, &signer).is_err());
        let mut tampered = cursor.clone();
        tampered.replace_range(0..1, if cursor.starts_with('A') { "B" } else { "A" });
        let forged: Query =
            serde_json::from_value(json!({"collection": "c", "order_by": [{"field": "n"}], "cursor": tampered}))
                .expect("wire");
        assert!(QuerySpec::parse(&forged, &signer).is_err());
    }
}
