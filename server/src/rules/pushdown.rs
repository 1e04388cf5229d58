//! Turning a read rule into a query condition, so "my documents" costs an index lookup.
//!
//! Everything in the rule that does not read the document (`auth`, `request`, constants,
//! captures the collection path binds, even `get()` of another document) is evaluated once
//! for the whole query. What is left must be `&&`/`||` of comparisons between a
//! `resource.data` field (or `resource.id`) and such a value; anything else is evaluated
//! per document instead. The translation is exact, not an approximation: CEL denies where
//! a field is missing or of another type, and the query's filters skip those documents
//! just the same (a randomized test holds the two to it).

use std::collections::HashSet;

use cel::common::ast::{Expr, operators};
use cel::{Context, IdedExpr, Value};
use hearth_types::Op;
use serde_json::Value as Json;

use super::set::free_variables;
use crate::store::query::{Condition, Field, FieldFilter};

/// A rule folded against what is known before reading any document.
#[derive(Debug, Clone, PartialEq)]
pub enum Folded {
    /// The rule allows every document (`true`) or none.
    Const(bool),
    /// The documents meeting this condition.
    Where(Condition),
}

/// Why a rule was not folded: it depends on the document some other way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PerDocument;

/// A part of a rule: a value known before reading documents, or a condition on them.
enum Part {
    Known(Result<Value, cel::ExecutionError>),
    Where(Condition),
}

impl Part {
    fn allows_all(&self) -> bool {
        matches!(self, Part::Known(Ok(Value::Bool(true))))
    }

    /// Anything but `true` allows nothing (CEL's errors deny like `false`).
    fn allows_none(&self) -> bool {
        matches!(self, Part::Known(known) if !matches!(known, Ok(Value::Bool(true))))
    }
}

/// Folds `expr`; `per_doc` names the variables only a document knows (`resource`, and the
/// captures of its id).
pub fn fold(expr: &IdedExpr, scope: &Context<'_, '_>, per_doc: &[&str]) -> Result<Folded, PerDocument> {
    Ok(match part(expr, scope, per_doc)? {
        Part::Known(Ok(Value::Bool(allowed))) => Folded::Const(allowed),
        Part::Known(_) => Folded::Const(false),
        Part::Where(condition) => Folded::Where(condition),
    })
}

fn reads_document(expr: &IdedExpr, per_doc: &[&str]) -> bool {
    let mut free = HashSet::new();
    free_variables(expr, &mut Vec::new(), &mut free);
    free.iter().any(|name| per_doc.contains(name))
}

fn part(expr: &IdedExpr, scope: &Context<'_, '_>, per_doc: &[&str]) -> Result<Part, PerDocument> {
    if !reads_document(expr, per_doc) {
        return Ok(Part::Known(scope.resolve(expr)));
    }
    let Expr::Call(call) = &expr.expr else {
        return Err(PerDocument);
    };
    if call.target.is_some() || call.args.len() != 2 {
        return Err(PerDocument);
    }
    let (left, right) = (&call.args[0], &call.args[1]);
    match call.func_name.as_str() {
        operators::LOGICAL_AND => {
            let (a, b) = (part(left, scope, per_doc)?, part(right, scope, per_doc)?);
            Ok(match (a, b) {
                (a, b) if a.allows_none() || b.allows_none() => Part::Known(Ok(Value::Bool(false))),
                (a, b) if a.allows_all() => b,
                (a, b) if b.allows_all() => a,
                (Part::Where(a), Part::Where(b)) => Part::Where(all(a, b)),
                _ => unreachable!("known parts allow all or none"),
            })
        }
        operators::LOGICAL_OR => {
            let (a, b) = (part(left, scope, per_doc)?, part(right, scope, per_doc)?);
            Ok(match (a, b) {
                (a, b) if a.allows_all() || b.allows_all() => Part::Known(Ok(Value::Bool(true))),
                (a, b) if a.allows_none() => b,
                (a, b) if b.allows_none() => a,
                (Part::Where(a), Part::Where(b)) => Part::Where(any(a, b)),
                _ => unreachable!("known parts allow all or none"),
            })
        }
        operators::IN => {
            if let Some(field) = field_of(right) {
                let known = known(left, scope, per_doc)?;
                return Ok(match known {
                    Ok(value) => match scalar(&value) {
                        Some(value) => Part::Where(Condition::Holds(field, value)),
                        None => return Err(PerDocument),
                    },
                    Err(_) => Part::Known(Ok(Value::Bool(false))),
                });
            }
            let field = field_of(left).ok_or(PerDocument)?;
            match known(right, scope, per_doc)? {
                Ok(Value::List(items)) => {
                    let values = items.iter().map(scalar).collect::<Option<Vec<_>>>().ok_or(PerDocument)?;
                    if values.is_empty() {
                        return Ok(Part::Known(Ok(Value::Bool(false))));
                    }
                    Ok(Part::Where(Condition::Filter(FieldFilter { field, op: Op::In, value: Json::Array(values) })))
                }
                Ok(_) => Err(PerDocument),
                Err(_) => Ok(Part::Known(Ok(Value::Bool(false)))),
            }
        }
        name => {
            let op = match name {
                operators::EQUALS => Op::Eq,
                operators::NOT_EQUALS => Op::Ne,
                operators::LESS => Op::Lt,
                operators::LESS_EQUALS => Op::Le,
                operators::GREATER => Op::Gt,
                operators::GREATER_EQUALS => Op::Ge,
                _ => return Err(PerDocument),
            };
            let (field, other, op) = match (field_of(left), field_of(right)) {
                (Some(field), None) => (field, right, op),
                (None, Some(field)) => (field, left, flipped(op)),
                _ => return Err(PerDocument),
            };
            let value = match known(other, scope, per_doc)? {
                Ok(value) => scalar(&value).ok_or(PerDocument)?,
                Err(_) => return Ok(Part::Known(Ok(Value::Bool(false)))),
            };
            if value.is_null() && !matches!(op, Op::Eq | Op::Ne) {
                return Err(PerDocument); // CEL cannot order null; the query would match it
            }
            Ok(Part::Where(Condition::Filter(FieldFilter { field, op, value })))
        }
    }
}

fn known(
    expr: &IdedExpr,
    scope: &Context<'_, '_>,
    per_doc: &[&str],
) -> Result<Result<Value, cel::ExecutionError>, PerDocument> {
    if reads_document(expr, per_doc) {
        return Err(PerDocument);
    }
    Ok(scope.resolve(expr))
}

fn all(a: Condition, b: Condition) -> Condition {
    match (a, b) {
        (Condition::All(mut a), Condition::All(b)) => {
            a.extend(b);
            Condition::All(a)
        }
        (Condition::All(mut a), b) | (b, Condition::All(mut a)) => {
            a.push(b);
            Condition::All(a)
        }
        (a, b) => Condition::All(vec![a, b]),
    }
}

fn any(a: Condition, b: Condition) -> Condition {
    match (a, b) {
        (Condition::Any(mut a), Condition::Any(b)) => {
            a.extend(b);
            Condition::Any(a)
        }
        (Condition::Any(mut a), b) | (b, Condition::Any(mut a)) => {
            a.push(b);
            Condition::Any(a)
        }
        (a, b) => Condition::Any(vec![a, b]),
    }
}

fn flipped(op: Op) -> Op {
    match op {
        Op::Lt => Op::Gt,
        Op::Le => Op::Ge,
        Op::Gt => Op::Lt,
        Op::Ge => Op::Le,
        other => other,
    }
}

/// `resource.id` or `resource.data.a.b` as a query field.
fn field_of(expr: &IdedExpr) -> Option<Field> {
    let mut segments = Vec::new();
    let mut current = expr;
    loop {
        match &current.expr {
            Expr::Select(select) if !select.test => {
                segments.push(select.field.as_str());
                current = &select.operand;
            }
            Expr::Ident(name) if name == "resource" => break,
            _ => return None,
        }
    }
    segments.reverse();
    match segments.as_slice() {
        ["id"] => Some(Field::Id),
        ["data", path @ ..] if !path.is_empty() => Field::parse(&path.join(".")).ok(),
        _ => None,
    }
}

/// A CEL scalar as JSON; lists, maps and the rest are not pushed down.
fn scalar(value: &Value) -> Option<Json> {
    Some(match value {
        Value::Null => Json::Null,
        Value::Bool(b) => Json::Bool(*b),
        Value::Int(i) => Json::from(*i),
        Value::UInt(u) => Json::from(*u),
        Value::Float(f) => Json::from(serde_json::Number::from_f64(*f)?),
        Value::String(s) => Json::String(s.to_string()),
        _ => return None,
    })
}
