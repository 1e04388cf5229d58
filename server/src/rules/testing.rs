//! `hearth rules test FILE`: rules unit tests without a server.
//!
//! A test file names the rules file, the documents that exist, and cases:
//!
//! ```toml
//! rules = "rules.toml"            # relative to this file
//!
//! [[docs]]
//! path = "rooms/r1"
//! data = { owner = "alice", members = ["alice", "bob"] }
//!
//! [[case]]
//! name = "a member reads a message"
//! auth = { uid = "bob" }          # leave out for a caller without a session
//! op = "get"                      # get, list, create, update, delete, join, broadcast
//! path = "rooms/r1/messages/m1"   # a channel name for join and broadcast
//! data = { text = "hi" }          # create/update: the document after the write
//! expect = "allow"                # or "deny"
//! ```
//!
//! `resource` is the listed document at `path` (if any); `get()`/`exists()` read the
//! listed documents.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Map, Value as Json};

use super::eval::json_value;
use super::{Access, Decision, Op, Principal, RuleSet};
use crate::store::{DocPath, StoredDoc};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestFile {
    rules: Option<PathBuf>,
    #[serde(default)]
    docs: Vec<FixtureDoc>,
    #[serde(default)]
    case: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FixtureDoc {
    path: String,
    data: Map<String, Json>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    auth: Option<TestAuth>,
    op: String,
    path: String,
    data: Option<Map<String, Json>>,
    expect: Expect,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestAuth {
    uid: String,
    email: Option<String>,
    #[serde(default)]
    email_verified: bool,
    #[serde(default)]
    anonymous: bool,
    #[serde(default)]
    claims: Map<String, Json>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Expect {
    Allow,
    Deny,
}

/// What a test run found.
pub struct Report {
    pub passed: usize,
    pub failed: usize,
    /// One line per case, and for a failure what was expected, what happened and why.
    pub text: String,
}

/// Runs the cases of `test_file` against `rules_file` (default: the file's `rules` key).
pub fn run(test_file: &Path, rules_file: Option<&Path>) -> anyhow::Result<Report> {
    use anyhow::Context as _;
    let source = std::fs::read_to_string(test_file).with_context(|| format!("reading {}", test_file.display()))?;
    let tests: TestFile = toml::from_str(&source).with_context(|| format!("parsing {}", test_file.display()))?;
    let rules_path = match (rules_file, &tests.rules) {
        (Some(path), _) => path.to_owned(),
        (None, Some(path)) => test_file.parent().unwrap_or(Path::new(".")).join(path),
        (None, None) => anyhow::bail!("{}: name the rules file with `rules = \"...\"` or --rules", test_file.display()),
    };
    let rules_source =
        std::fs::read_to_string(&rules_path).with_context(|| format!("reading {}", rules_path.display()))?;
    let set = RuleSet::parse(&rules_source).map_err(|error| anyhow::anyhow!("{}: {error}", rules_path.display()))?;
    let mut docs = HashMap::new();
    for fixture in tests.docs {
        let path = DocPath::parse(&fixture.path).map_err(|e| anyhow::anyhow!("docs: {}", e.0))?;
        docs.insert(path.as_str().to_owned(), stored(path, fixture.data));
    }
    let mut report = Report { passed: 0, failed: 0, text: String::new() };
    for case in tests.case {
        let outcome = run_case(&set, &docs, &case);
        let (ok, detail) = match outcome {
            Err(error) => (false, format!("bad case: {error}")),
            Ok(decision) => {
                let got = if decision == Decision::Allow { Expect::Allow } else { Expect::Deny };
                let why = match &decision {
                    Decision::Allow => String::new(),
                    Decision::Deny(reason) => format!(" ({reason})"),
                };
                (got == case.expect, format!("expected {:?}, got {:?}{why}", case.expect, got).to_lowercase())
            }
        };
        if ok {
            report.passed += 1;
            let _ = writeln!(report.text, "ok      {}", case.name);
        } else {
            report.failed += 1;
            let _ = writeln!(report.text, "FAILED  {}\n        {} {}: {detail}", case.name, case.op, case.path);
        }
    }
    let _ = writeln!(report.text, "\n{} passed, {} failed", report.passed, report.failed);
    Ok(report)
}

fn run_case(set: &RuleSet, docs: &HashMap<String, StoredDoc>, case: &Case) -> Result<Decision, String> {
    let op = Op::parse(&case.op)
        .ok_or_else(|| format!("op `{}`: one of get, list, create, update, delete, join, broadcast", case.op))?;
    let principal = Principal::from_value(match &case.auth {
        None => cel::Value::Null,
        Some(auth) => {
            let mut object = Map::new();
            object.insert("uid".into(), Json::String(auth.uid.clone()));
            object.insert("email".into(), auth.email.clone().map_or(Json::Null, Json::String));
            object.insert("email_verified".into(), Json::Bool(auth.email_verified));
            object.insert("anonymous".into(), Json::Bool(auth.anonymous));
            object.insert("claims".into(), Json::Object(auth.claims.clone()));
            json_value(&Json::Object(object))
        }
    });
    let time = crate::store::now_micros();
    let mut fetch = |path: &DocPath| Ok(docs.get(path.as_str()).cloned());
    if matches!(op, Op::Join | Op::Broadcast) {
        return set.decide_channel_sync(&principal, op, &case.path, time, &mut fetch).map_err(|e| e.to_string());
    }
    let path = DocPath::parse(&case.path).map_err(|e| e.0)?;
    let before = docs.get(path.as_str());
    let after = match (op, &case.data) {
        (Op::Create | Op::Update, Some(data)) => Some(stored(path.clone(), data.clone())),
        (Op::Create | Op::Update, None) => return Err("create and update cases need `data`".into()),
        (_, Some(_)) => return Err("only create and update cases take `data`".into()),
        _ => None,
    };
    let access = Access { op, path: &path, before, after: after.as_ref(), time };
    set.decide_sync(&principal, &access, &mut fetch).map_err(|e| e.to_string())
}

fn stored(path: DocPath, data: Map<String, Json>) -> StoredDoc {
    let now = crate::store::now_micros();
    StoredDoc { path, data, version: 1, created_at: now, updated_at: now }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_examples_pass() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        for app in ["chat", "todo"] {
            let report = run(&root.join(app).join("rules.test.toml"), None).expect("runs");
            assert_eq!(report.failed, 0, "{app}:\n{}", report.text);
            assert!(report.passed >= 8, "{app}: {}", report.text);
        }
    }

    #[test]
    fn a_wrong_expectation_fails_with_the_reason() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("rules.toml"), "[\"notes/{id}\"]\nread = \"auth.uid == resource.data.owner\"\n")
            .expect("write");
        std::fs::write(
            dir.path().join("t.toml"),
            r#"
rules = "rules.toml"
[[docs]]
path = "notes/n1"
data = { owner = "alice" }
[[case]]
name = "bob reads alice's note"
auth = { uid = "bob" }
op = "get"
path = "notes/n1"
expect = "allow"
[[case]]
name = "nobody reads"
op = "get"
path = "notes/n1"
expect = "deny"
"#,
        )
        .expect("write");
        let report = run(&dir.path().join("t.toml"), None).expect("runs");
        assert_eq!((report.passed, report.failed), (1, 1), "{}", report.text);
        assert!(report.text.contains("FAILED  bob reads alice's note"), "{}", report.text);
        assert!(report.text.contains("expected allow, got deny"), "{}", report.text);
        assert!(report.text.contains("[\"notes/{id}\"] get: false"), "{}", report.text);
    }
}
