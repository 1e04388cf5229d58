//! A rules file parsed and compiled: path patterns, their keys, and one CEL program per key.
//! Everything that can be known without a request is checked here, so a file that loads
//! can only fail at run time in ways that deny.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;

use cel::common::ast::{EntryExpr, Expr, operators};
use cel::{IdedExpr, Program};

use crate::store::path::{DocPath, is_valid_id};

/// The prefix of patterns that guard realtime channels.
pub const CHANNELS: &str = "@channels/";
/// CEL's type names, usable as values (`type(x) == string`).
const TYPE_NAMES: [&str; 11] =
    ["bool", "int", "uint", "double", "string", "bytes", "list", "map", "null_type", "type", "timestamp"];
/// Variables every rule may use besides its pattern's captures.
pub const VARIABLES: [&str; 3] = ["auth", "request", "resource"];

/// What a caller wants to do; each operation is decided by the most specific key present.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Get,
    List,
    Create,
    Update,
    Delete,
    Join,
    Broadcast,
}

impl Op {
    /// The keys that decide this operation, most specific first.
    fn keys(self) -> &'static [Key] {
        match self {
            Op::Get => &[Key::Get, Key::Read],
            Op::List => &[Key::List, Key::Read],
            Op::Create => &[Key::Create, Key::Write],
            Op::Update => &[Key::Update, Key::Write],
            Op::Delete => &[Key::Delete, Key::Write],
            Op::Join => &[Key::Join],
            Op::Broadcast => &[Key::Broadcast],
        }
    }

    /// `request.method` in rules.
    pub fn method(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::List => "list",
            Op::Create => "create",
            Op::Update => "update",
            Op::Delete => "delete",
            Op::Join => "join",
            Op::Broadcast => "broadcast",
        }
    }

    pub fn parse(name: &str) -> Option<Op> {
        [Op::Get, Op::List, Op::Create, Op::Update, Op::Delete, Op::Join, Op::Broadcast]
            .into_iter()
            .find(|op| op.method() == name)
    }
}

/// A key of a pattern's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Key {
    Read,
    Get,
    List,
    Write,
    Create,
    Update,
    Delete,
    Join,
    Broadcast,
}

const DOC_KEYS: [(&str, Key); 7] = [
    ("read", Key::Read),
    ("get", Key::Get),
    ("list", Key::List),
    ("write", Key::Write),
    ("create", Key::Create),
    ("update", Key::Update),
    ("delete", Key::Delete),
];
const CHANNEL_KEYS: [(&str, Key); 2] = [("join", Key::Join), ("broadcast", Key::Broadcast)];

/// Why a rules file was refused: where, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RulesError {
    pub line: Option<usize>,
    pub pattern: Option<String>,
    pub key: Option<String>,
    pub reason: String,
}

impl fmt::Display for RulesError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        if let Some(pattern) = &self.pattern {
            write!(f, "[\"{pattern}\"]")?;
            if let Some(key) = &self.key {
                write!(f, " {key}")?;
            }
            f.write_str(": ")?;
        }
        f.write_str(&self.reason)
    }
}

impl std::error::Error for RulesError {}

/// One segment of a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Literal(String),
    /// `{name}`: any one segment.
    Capture(String),
    /// `{name=**}`, last only: zero or more segments, captured joined by `/`.
    Rest(String),
}

/// One compiled rule: the CEL source, its program, and what it reads of documents.
#[derive(Debug)]
pub struct Rule {
    pub source: String,
    pub program: Program,
    pub needs: Needs,
}

/// What a rule reads of `resource` and `request`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Needs {
    pub resource: Usage,
    pub request: Usage,
}

/// The attributes of a variable a rule reads (`id`, `data`, `time`, ...), and the fields
/// of its `data`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage {
    pub attrs: Fields,
    pub data: Fields,
}

const UNUSED: Usage = Usage { attrs: Fields::Only(BTreeSet::new()), data: Fields::Only(BTreeSet::new()) };

/// The needs of evaluations without documents.
pub static NO_DATA: Needs = Needs { resource: UNUSED, request: UNUSED };

/// Top-level fields of a document's data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fields {
    All,
    Only(BTreeSet<String>),
}

impl Fields {
    fn add(&mut self, field: &str) {
        if let Fields::Only(names) = self {
            names.insert(field.to_owned());
        }
    }

    pub fn has(&self, field: &str) -> bool {
        match self {
            Fields::All => true,
            Fields::Only(names) => names.contains(field),
        }
    }
}

/// What an expression reads of `var`: `var.x` and `has(var.x)` name an attribute,
/// `var.data.f`, `has(var.data.f)` and `var.data['f']` a field of its data; any other use
/// of `var.data` or `var` needs all of it. `var == null` needs nothing.
fn usage(expr: &IdedExpr, var: &str, used: &mut Usage) {
    let is_var = |e: &IdedExpr| matches!(&e.expr, Expr::Ident(name) if name == var);
    let is_data =
        |e: &IdedExpr| matches!(&e.expr, Expr::Select(s) if s.field == "data" && !s.test && is_var(&s.operand));
    let (fields, data) = (&mut used.attrs, &mut used.data);
    match &expr.expr {
        Expr::Select(select) if is_data(&select.operand) => {
            fields.add("data");
            data.add(&select.field);
        }
        Expr::Select(select) if is_var(&select.operand) => {
            fields.add(&select.field);
            if select.field == "data" {
                *data = Fields::All;
            }
        }
        Expr::Ident(name) if name == var => *used = Usage { attrs: Fields::All, data: Fields::All },
        Expr::Call(call) if call.func_name == operators::INDEX && call.args.len() == 2 && is_data(&call.args[0]) => {
            fields.add("data");
            match &call.args[1].expr {
                Expr::Literal(cel::common::ast::LiteralValue::String(key)) => data.add(key.inner()),
                _ => *data = Fields::All,
            }
        }
        Expr::Call(call)
            if matches!(call.func_name.as_str(), operators::EQUALS | operators::NOT_EQUALS)
                && call.args.len() == 2
                && call.args.iter().any(is_var)
                && call
                    .args
                    .iter()
                    .any(|arg| matches!(arg.expr, Expr::Literal(cel::common::ast::LiteralValue::Null))) => {}
        Expr::Call(call) => {
            if let Some(target) = &call.target {
                usage(target, var, used);
            }
            call.args.iter().for_each(|arg| usage(arg, var, used));
        }
        Expr::Comprehension(c) => {
            for part in [&c.iter_range, &c.accu_init, &c.loop_cond, &c.loop_step, &c.result] {
                usage(part, var, used);
            }
        }
        Expr::List(list) => list.elements.iter().for_each(|element| usage(element, var, used)),
        Expr::Map(map) => {
            for entry in &map.entries {
                if let EntryExpr::MapEntry(entry) = &entry.expr {
                    usage(&entry.key, var, used);
                    usage(&entry.value, var, used);
                }
            }
        }
        Expr::Select(select) => usage(&select.operand, var, used),
        Expr::Struct(_) | Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => {}
    }
}

impl Rule {
    pub fn expr(&self) -> &IdedExpr {
        self.program.expression()
    }
}

/// A path pattern and its rules.
#[derive(Debug)]
pub struct Pattern {
    pub text: String,
    pub segments: Vec<Segment>,
    rules: Vec<(Key, Rule)>,
}

/// Captured names and values of a match.
pub type Captures = Vec<(String, String)>;

impl Pattern {
    /// The rule deciding `op` here: the most specific key present.
    pub fn rule(&self, op: Op) -> Option<&Rule> {
        op.keys().iter().find_map(|key| self.rules.iter().find(|(k, _)| k == key).map(|(_, rule)| rule))
    }

    /// The captures if this pattern matches `segments`.
    pub fn matches(&self, segments: &[&str]) -> Option<Captures> {
        match_segments(&self.segments, segments)
    }

    /// The names this pattern captures.
    pub fn capture_names(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|segment| match segment {
            Segment::Capture(name) | Segment::Rest(name) => Some(name.as_str()),
            Segment::Literal(_) => None,
        })
    }
}

fn match_segments(pattern: &[Segment], segments: &[&str]) -> Option<Captures> {
    let mut captures = Vec::new();
    for (index, segment) in pattern.iter().enumerate() {
        match segment {
            Segment::Rest(name) => {
                captures.push((name.clone(), segments.get(index..).unwrap_or_default().join("/")));
                return Some(captures);
            }
            Segment::Literal(literal) => {
                if segments.get(index) != Some(&literal.as_str()) {
                    return None;
                }
            }
            Segment::Capture(name) => captures.push((name.clone(), (*segments.get(index)?).to_owned())),
        }
    }
    (segments.len() == pattern.len()).then_some(captures)
}

/// A document pattern without rules (`rooms/{room}/messages/{msg}`), as functions name
/// the documents they react to; the syntax of rules patterns.
#[derive(Debug, Clone)]
pub struct DocPattern {
    pub text: String,
    segments: Vec<Segment>,
}

impl DocPattern {
    pub fn parse(text: &str) -> Result<DocPattern, String> {
        match parse_pattern(text)? {
            (_, true) => Err("a document pattern, not a channel".into()),
            (segments, false) => Ok(DocPattern { text: text.to_owned(), segments }),
        }
    }

    /// The captures if the document at `path` matches.
    pub fn matches(&self, path: &str) -> Option<Captures> {
        match_segments(&self.segments, &path.split('/').collect::<Vec<_>>())
    }
}

/// A whole rules file, compiled. An empty set denies everything.
#[derive(Debug, Default)]
pub struct RuleSet {
    pub source: String,
    pub docs: Vec<Pattern>,
    pub channels: Vec<Pattern>,
}

/// The file as TOML gives it: pattern → key → expression, with where each sits.
type RawFile =
    BTreeMap<toml::Spanned<String>, toml::Spanned<BTreeMap<toml::Spanned<String>, toml::Spanned<toml::Value>>>>;

/// What is wrong with a file that is TOML but not rules: a pattern split at a dot into
/// nested tables (`[docs."rooms/{id}"]`), or a value outside any pattern's table.
fn misshapen(source: &str) -> Option<RulesError> {
    let table = source.parse::<toml::Table>().ok()?;
    let line_of = |name: &str| {
        source.lines().position(|line| line.trim_start().starts_with('[') && line.contains(name)).map(|line| line + 1)
    };
    for (pattern, value) in &table {
        let Some(inner) = value.as_table() else {
            return Some(RulesError {
                line: source
                    .lines()
                    .position(|line| line.trim_start().starts_with(pattern.as_str()))
                    .map(|line| line + 1),
                pattern: None,
                key: Some(pattern.clone()),
                reason: format!(
                    "`{pattern}` is outside any pattern: rules go under a pattern's table, like [\"rooms/{{room}}\"]"
                ),
            });
        };
        if let Some((key, _)) = inner.iter().find(|(_, value)| value.is_table()) {
            return Some(RulesError {
                line: line_of(key),
                pattern: Some(pattern.clone()),
                key: Some(key.clone()),
                reason: format!(
                    "`{pattern}` holds a table `{key}`: a pattern is one quoted name, slashes and all, like [\"{pattern}/{key}\"]"
                ),
            });
        }
    }
    None
}

impl RuleSet {
    /// Parses and compiles a rules file; the first problem refuses it whole.
    pub fn parse(source: &str) -> Result<RuleSet, RulesError> {
        let line_of = |offset: usize| source[..offset.min(source.len())].matches('\n').count() + 1;
        let raw: RawFile = toml::from_str(source).map_err(|error| {
            misshapen(source).unwrap_or_else(|| RulesError {
                line: error.span().map(|span| line_of(span.start)),
                pattern: None,
                key: None,
                reason: error.message().to_owned(),
            })
        })?;
        let mut set = RuleSet { source: source.to_owned(), ..RuleSet::default() };
        for (pattern_text, table) in raw {
            let pattern_line = line_of(pattern_text.span().start);
            let text = pattern_text.into_inner();
            let fail = |line: usize, key: Option<&str>, reason: String| RulesError {
                line: Some(line),
                pattern: Some(text.clone()),
                key: key.map(str::to_owned),
                reason,
            };
            let (segments, channel) = parse_pattern(&text).map_err(|reason| fail(pattern_line, None, reason))?;
            let keys: &[(&str, Key)] = if channel { &CHANNEL_KEYS } else { &DOC_KEYS };
            let captures: Vec<&str> = segments
                .iter()
                .filter_map(|segment| match segment {
                    Segment::Capture(name) | Segment::Rest(name) => Some(name.as_str()),
                    Segment::Literal(_) => None,
                })
                .collect();
            let mut rules = Vec::new();
            for (key_name, expression) in table.into_inner() {
                let line = line_of(key_name.span().start);
                let key_name = key_name.into_inner();
                let Some(&(_, key)) = keys.iter().find(|(name, _)| *name == key_name) else {
                    let known: Vec<&str> = keys.iter().map(|(name, _)| *name).collect();
                    return Err(fail(
                        line,
                        Some(&key_name),
                        format!("unknown key `{key_name}` (known here: {})", known.join(", ")),
                    ));
                };
                let expression = match expression.get_ref() {
                    toml::Value::String(expression) => expression,
                    other => {
                        return Err(fail(
                            line,
                            Some(&key_name),
                            format!(
                                "a rule is a CEL expression in a string, like \"{other}\", not a {}",
                                other.type_str()
                            ),
                        ));
                    }
                };
                let rule = compile(expression, &captures).map_err(|reason| fail(line, Some(&key_name), reason))?;
                rules.push((key, rule));
            }
            let pattern = Pattern { text: text.clone(), segments, rules };
            if channel { set.channels.push(pattern) } else { set.docs.push(pattern) }
        }
        Ok(set)
    }

    /// The patterns matching a document path, each with its captures.
    pub fn matching_doc<'a>(&'a self, path: &DocPath) -> Vec<(&'a Pattern, Captures)> {
        let segments: Vec<&str> = path.as_str().split('/').collect();
        self.docs.iter().filter_map(|pattern| pattern.matches(&segments).map(|captures| (pattern, captures))).collect()
    }

    /// The patterns matching a channel name, each with its captures.
    pub fn matching_channel<'a>(&'a self, channel: &str) -> Vec<(&'a Pattern, Captures)> {
        self.channels
            .iter()
            .filter_map(|pattern| pattern.matches(&[channel]).map(|captures| (pattern, captures)))
            .collect()
    }
}

fn parse_pattern(text: &str) -> Result<(Vec<Segment>, bool), String> {
    let (body, channel) = match text.strip_prefix(CHANNELS) {
        Some(body) => (body, true),
        None => (text, false),
    };
    if body.is_empty() {
        return Err("a pattern is a path like `rooms/{room}`, not empty".into());
    }
    let mut segments = Vec::new();
    let mut names = HashSet::new();
    let parts: Vec<&str> = body.split('/').collect();
    for (index, part) in parts.iter().enumerate() {
        let segment = if let Some(inner) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
            let (name, rest) = match inner.strip_suffix("=**") {
                Some(name) => (name, true),
                None => (inner, false),
            };
            if !is_identifier(name) || VARIABLES.contains(&name) {
                return Err(format!(
                    "`{{{inner}}}`: a capture is `{{name}}` or `{{name=**}}`, its name an identifier other than auth, request, resource"
                ));
            }
            if !names.insert(name) {
                return Err(format!("`{name}` is captured twice"));
            }
            if rest && index + 1 != parts.len() {
                return Err(format!("`{{{name}=**}}` may only be the last segment"));
            }
            if rest { Segment::Rest(name.to_owned()) } else { Segment::Capture(name.to_owned()) }
        } else if channel && is_channel_name(part) || !channel && is_valid_id(part) {
            Segment::Literal((*part).to_owned())
        } else {
            return Err(format!(
                "`{part}` is neither a valid id nor a `{{capture}}` (ids are 1 to 128 of A-Z a-z 0-9 _ . -)"
            ));
        };
        segments.push(segment);
    }
    if channel {
        if segments.len() != 1 || matches!(segments[0], Segment::Rest(_)) {
            return Err("a channel pattern is `@channels/` and one segment: a name or `{capture}`".into());
        }
    } else if !matches!(segments.last(), Some(Segment::Rest(_))) && segments.len() % 2 != 0 {
        return Err("a pattern names documents: collection and id segments alternate, so their number is even".into());
    }
    Ok((segments, channel))
}

/// Channel names: 1 to 128 of `[A-Za-z0-9_.:-]`.
pub fn is_channel_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn compile(source: &str, captures: &[&str]) -> Result<Rule, String> {
    let program = super::eval::env().compile(source).map_err(|error| {
        // The parser's report spans several lines with a caret under the spot.
        let report = error.to_string();
        format!("syntax error: {}", report.lines().collect::<Vec<_>>().join(" | "))
    })?;
    let expr = program.expression();
    let mut problems = Vec::new();
    let mut bound = Vec::new();
    check(expr, captures, &mut bound, &mut problems);
    if let Some(problem) = problems.into_iter().next() {
        return Err(problem);
    }
    if let Some(kind) = never_bool(&expr.expr) {
        return Err(format!("the expression gives {kind}, not a bool"));
    }
    let mut needs = NO_DATA.clone();
    usage(expr, "resource", &mut needs.resource);
    usage(expr, "request", &mut needs.request);
    Ok(Rule { source: source.to_owned(), program, needs })
}

/// What a rule's top expression gives, when it is surely not a bool.
fn never_bool(expr: &Expr) -> Option<&'static str> {
    match expr {
        Expr::Literal(literal) => match literal {
            cel::common::ast::LiteralValue::Boolean(_) => None,
            cel::common::ast::LiteralValue::String(_) => Some("a string"),
            cel::common::ast::LiteralValue::Null => Some("null"),
            _ => Some("a number or bytes"),
        },
        Expr::List(_) => Some("a list"),
        Expr::Map(_) | Expr::Struct(_) => Some("a map"),
        Expr::Call(call)
            if [
                operators::ADD,
                operators::SUBSTRACT,
                operators::MULTIPLY,
                operators::DIVIDE,
                operators::MODULO,
                operators::NEGATE,
            ]
            .contains(&call.func_name.as_str()) =>
        {
            Some("a number, string or list")
        }
        _ => None,
    }
}

/// Finds unknown variables and `get()`/`exists()` calls that can never work.
fn check(expr: &IdedExpr, captures: &[&str], bound: &mut Vec<String>, problems: &mut Vec<String>) {
    match &expr.expr {
        Expr::Ident(name) => {
            let known = VARIABLES.contains(&name.as_str())
                || TYPE_NAMES.contains(&name.as_str())
                || captures.contains(&name.as_str())
                || bound.iter().any(|b| b == name);
            if !known {
                let mut names: Vec<&str> = VARIABLES.to_vec();
                names.extend(captures);
                problems.push(format!("unknown variable `{name}` (known here: {})", names.join(", ")));
            }
        }
        Expr::Call(call) => {
            if matches!(call.func_name.as_str(), "get" | "exists") && call.target.is_none() {
                if call.args.len() != 1 {
                    problems.push(format!("`{}()` takes one document path", call.func_name));
                }
                if let Some(Expr::Literal(cel::common::ast::LiteralValue::String(path))) =
                    call.args.first().map(|arg| &arg.expr)
                    && DocPath::parse(path.inner()).is_err()
                {
                    problems.push(format!("`{}('{}')`: not a document path", call.func_name, path.inner()));
                }
            }
            if let Some(target) = &call.target {
                check(target, captures, bound, problems);
            }
            for arg in &call.args {
                check(arg, captures, bound, problems);
            }
        }
        Expr::Comprehension(comprehension) => {
            check(&comprehension.iter_range, captures, bound, problems);
            check(&comprehension.accu_init, captures, bound, problems);
            let before = bound.len();
            bound.push(comprehension.iter_var.clone());
            bound.extend(comprehension.iter_var2.clone());
            bound.push(comprehension.accu_var.clone());
            for part in [&comprehension.loop_cond, &comprehension.loop_step, &comprehension.result] {
                check(part, captures, bound, problems);
            }
            bound.truncate(before);
        }
        Expr::List(list) => list.elements.iter().for_each(|element| check(element, captures, bound, problems)),
        Expr::Map(map) => {
            for entry in &map.entries {
                if let EntryExpr::MapEntry(entry) = &entry.expr {
                    check(&entry.key, captures, bound, problems);
                    check(&entry.value, captures, bound, problems);
                }
            }
        }
        Expr::Select(select) => check(&select.operand, captures, bound, problems),
        Expr::Struct(_) => problems.push("message construction is not available in rules".into()),
        Expr::Literal(_) | Expr::Unspecified => {}
    }
}

/// The free variables of an expression: what it reads from outside.
pub fn free_variables<'a>(expr: &'a IdedExpr, bound: &mut Vec<&'a str>, out: &mut HashSet<&'a str>) {
    match &expr.expr {
        Expr::Ident(name) => {
            if !bound.contains(&name.as_str()) {
                out.insert(name);
            }
        }
        Expr::Call(call) => {
            if let Some(target) = &call.target {
                free_variables(target, bound, out);
            }
            for arg in &call.args {
                free_variables(arg, bound, out);
            }
        }
        Expr::Comprehension(c) => {
            free_variables(&c.iter_range, bound, out);
            free_variables(&c.accu_init, bound, out);
            let before = bound.len();
            bound.push(&c.iter_var);
            if let Some(second) = &c.iter_var2 {
                bound.push(second);
            }
            bound.push(&c.accu_var);
            for part in [&c.loop_cond, &c.loop_step, &c.result] {
                free_variables(part, bound, out);
            }
            bound.truncate(before);
        }
        Expr::List(list) => list.elements.iter().for_each(|element| free_variables(element, bound, out)),
        Expr::Map(map) => {
            for entry in &map.entries {
                if let EntryExpr::MapEntry(entry) = &entry.expr {
                    free_variables(&entry.key, bound, out);
                    free_variables(&entry.value, bound, out);
                }
            }
        }
        Expr::Select(select) => free_variables(&select.operand, bound, out),
        Expr::Struct(_) | Expr::Literal(_) | Expr::Unspecified => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(source: &str) -> RulesError {
        RuleSet::parse(source).expect_err(source)
    }

    #[test]
    fn a_good_file_compiles_and_matches_paths() {
        let set = RuleSet::parse(
            r#"
["rooms/{room}"]
read = "auth != null"
create = "auth != null && request.data.owner == auth.uid"

["rooms/{room}/messages/{msg}"]
read = "auth.uid in get('rooms/' + room).data.members"

["users/{uid}/{rest=**}"]
write = "auth.uid == uid"

["@channels/{name}"]
join = "auth != null"
"#,
        )
        .expect("compiles");
        assert_eq!(set.docs.len(), 3);
        let path = DocPath::parse("rooms/r1/messages/m1").expect("path");
        let matched = set.matching_doc(&path);
        assert_eq!(matched.len(), 1);
        assert_eq!(matched[0].1, vec![("room".to_owned(), "r1".to_owned()), ("msg".to_owned(), "m1".to_owned())]);
        assert!(matched[0].0.rule(Op::Get).is_some());
        assert!(matched[0].0.rule(Op::Create).is_none());
        let deep = DocPath::parse("users/u1/notes/n1").expect("path");
        assert_eq!(set.matching_doc(&deep)[0].1[1], ("rest".to_owned(), "notes/n1".to_owned()));
        assert_eq!(set.matching_channel("room:1").len(), 1);
        let room = &set.matching_doc(&DocPath::parse("rooms/r1").expect("path"))[0].0;
        assert!(room.rule(Op::Update).is_none(), "no write key: update is denied");
        assert_eq!(room.rule(Op::List).map(|rule| rule.source.as_str()), Some("auth != null"));
    }

    #[test]
    fn bad_files_are_refused_with_the_place_and_reason() {
        let e = refused("[\"rooms/{room}\"]\nread = \"auth !=\"\n");
        assert_eq!((e.line, e.key.as_deref()), (Some(2), Some("read")));
        assert!(e.reason.contains("syntax error"), "{e}");
        let e = refused("[\"rooms/{room}\"]\nread = \"user.id == 'x'\"\n");
        assert!(e.reason.contains("unknown variable `user`"), "{e}");
        let e = refused("[\"rooms/{room}\"]\nlist = \"true\"\nreed = \"true\"\n");
        assert_eq!((e.line, e.key.as_deref()), (Some(3), Some("reed")));
        assert!(refused("[\"rooms//x\"]\nread = \"true\"\n").reason.contains("neither a valid id"));
        assert!(refused("[\"rooms\"]\nread = \"true\"\n").reason.contains("even"));
        assert!(refused("[\"{a=**}/b\"]\nread = \"true\"\n").reason.contains("last"));
        assert!(refused("[\"a/{auth}\"]\nread = \"true\"\n").reason.contains("capture"));
        assert!(refused("[\"a/{x}\"]\nread = \"1 + 2\"\n").reason.contains("not a bool"));
        assert!(refused("[\"a/{x}\"]\nread = \"'yes'\"\n").reason.contains("not a bool"));
        assert!(refused("[\"a/{x}\"]\nread = \"get('a/b/c').data.x\"\n").reason.contains("not a document path"));
        assert!(refused("[\"@channels/{c}\"]\nread = \"true\"\n").reason.contains("unknown key"));
        assert!(refused("[\"a/{x}\"]\njoin = \"true\"\n").reason.contains("unknown key"));
        assert!(refused("not toml at all [").line.is_some());
        // TOML that is not rules says what shape it should have.
        let e = refused("[docs.\"rooms/{id}\"]\nread = \"true\"\n");
        assert_eq!((e.line, e.pattern.as_deref(), e.key.as_deref()), (Some(1), Some("docs"), Some("rooms/{id}")));
        assert!(e.reason.contains("[\"docs/rooms/{id}\"]"), "{e}");
        let e = refused("read = \"true\"\n[\"a/{x}\"]\nread = \"true\"\n");
        assert_eq!((e.line, e.key.as_deref()), (Some(1), Some("read")));
        assert!(e.reason.contains("outside any pattern"), "{e}");
        let e = refused("[\"a/{x}\"]\nread = true\n");
        assert_eq!((e.line, e.key.as_deref()), (Some(2), Some("read")));
        assert!(e.reason.contains("in a string"), "{e}");
        // Comprehension variables are not unknown.
        RuleSet::parse("[\"a/{x}\"]\nread = \"[1, 2].all(n, n > 0) && x != ''\"\n").expect("compiles");
    }

    #[test]
    fn a_rule_knows_which_fields_it_reads() {
        let needs = |rule: &str| {
            let set = RuleSet::parse(&format!("[\"a/{{x}}\"]\nwrite = \"{rule}\"\n")).expect("compiles");
            set.docs[0].rule(Op::Create).expect("rule").needs.clone()
        };
        let only = |names: &[&str]| Fields::Only(names.iter().map(|name| (*name).to_owned()).collect());
        let n = needs("resource.data.owner == auth.uid && has(request.data.title) && request.data['n'] > 1");
        assert_eq!((n.resource.data, n.request.data), (only(&["owner"]), only(&["n", "title"])));
        assert_eq!((n.resource.attrs, n.request.attrs), (only(&["data"]), only(&["data"])));
        let n = needs(
            "resource == null && request.data.keys().size() < 3 && resource.id != '' && request.time > timestamp('2020-01-01T00:00:00Z')",
        );
        assert_eq!((n.resource.data, n.request.data), (only(&[]), Fields::All));
        assert_eq!((n.resource.attrs, n.request.attrs), (only(&["id"]), only(&["data", "time"])));
        let n = needs("get('a/b').data == resource.data || resource.size() > 0");
        assert_eq!((n.resource.attrs, n.resource.data), (Fields::All, Fields::All));
    }
}
