//! `hearth export` and `hearth import`: a whole project in one portable file, so a
//! project moves between databases (SQLite to PostgreSQL, or the other way) in one
//! command each.
//!
//! The file is JSON Lines:
//!
//! ```text
//! {"hearth_export":1,"exported_at":"2026-12-07T10:00:00.000000Z","sessions":false}
//! {"file":{"name":"rules.toml","source":"…"}}              project files first
//! {"documents":{"path":"rooms/r1","data":{…},"version":3,"created_at":…,"updated_at":…}}
//! {"users":{"id":"…","email":"…","password_hash":"$argon2id$…",…}}
//! …                                                          a line per row, table by table
//! {"end":{"files":2,"documents":1200,"users":40,…}}         counts, to tell a whole file
//! ```
//!
//! Rows are those of [`crate::store::portable::TABLES`], with bytes in base64. Secrets
//! sealed at rest (signing keys, TOTP secrets) are opened with the source project's key
//! and sealed again with the target's, so the file does not depend on `hearth.key`; it
//! holds password hashes and signing keys, and is made readable by its owner alone.
//!
//! An import goes into a new, empty database in one transaction: a file cut short, a bad
//! line or a row the database refuses leaves the target as it was.

use std::collections::BTreeMap;
use std::io::{BufRead, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Map, Value};
use tokio::sync::mpsc;

use crate::auth::repo::SECRETS;
use crate::cluster::Project;
use crate::config::Config;
use crate::seal::Keyring;
use crate::store::portable::{self, BATCH_ROWS, Batch, Cell, Kind, TABLES, Table};
use crate::store::{DocPath, Store};

/// The format's version, in the first line.
const FORMAT: i64 = 1;

/// What went into or came out of a file: rows per table, in table order, then files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub counts: Vec<(&'static str, u64)>,
    pub files: u64,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{} project files", rows(&self.counts), self.files)
    }
}

/// `12 documents, 3 users, ` for the tables with rows.
fn rows(counts: &[(&'static str, u64)]) -> String {
    counts
        .iter()
        .filter(|(_, count)| *count > 0)
        .map(|(table, count)| format!("{count} {}, ", table.replace('_', " ")))
        .collect()
}

/// Writes the project of `config` to `file` (replaced when the export is whole): every
/// portable table, and the sessions too when `sessions`, from one snapshot of the
/// database while it goes on serving. `progress` hears how far it got, now and then.
pub async fn export(config: &Config, file: &Path, sessions: bool, progress: &dyn Fn(&str)) -> anyhow::Result<Summary> {
    let keyring = config.keyring()?;
    let (store, _) = crate::open_store(config).await?;
    let result = write_export(&store, config, &keyring, file, sessions, progress).await;
    store.close().await;
    result
}

async fn write_export(
    store: &Store,
    config: &Config,
    keyring: &Keyring,
    file: &Path,
    sessions: bool,
    progress: &dyn Fn(&str),
) -> anyhow::Result<Summary> {
    let partial = partial_path(file);
    let _ = std::fs::remove_file(&partial);
    let out = crate::private::create_new(&partial).with_context(|| format!("cannot create {}", partial.display()))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, out);
    let written = async {
        let header = serde_json::json!({
            "hearth_export": FORMAT,
            "exported_at": crate::store::format_time(crate::store::now_micros()),
            "sessions": sessions,
        });
        writeln!(out, "{header}")?;
        let files = project_files(store, config).await?;
        for (name, source) in &files {
            writeln!(out, "{}", serde_json::json!({ "file": { "name": name, "source": source } }))?;
        }

        let tables: Vec<&'static Table> = TABLES.iter().copied().filter(|table| sessions || !table.sessions).collect();
        let (sender, mut batches) = mpsc::channel(4);
        let backend = store.backend().clone();
        let reading = tokio::spawn(async move { backend.export_rows(tables, sender).await });
        let mut counter = Counter::new("exported", progress);
        while let Some(batch) = batches.recv().await {
            let Batch::Rows(table, rows) = batch else { continue };
            for row in rows {
                let line = row_line(table, row, keyring)?;
                out.write_all(line.as_bytes())?;
                out.write_all(b"\n")?;
                counter.add(table.name);
            }
        }
        reading.await??;
        let summary = Summary { counts: counter.counts, files: files.len() as u64 };
        let mut end = Map::new();
        end.insert("files".into(), summary.files.into());
        for (table, count) in &summary.counts {
            end.insert((*table).into(), (*count).into());
        }
        writeln!(out, "{}", serde_json::json!({ "end": end }))?;
        let out = out.into_inner().map_err(|error| error.into_error())?;
        out.sync_all()?;
        anyhow::Ok(summary)
    }
    .await;
    match written {
        Ok(summary) => {
            std::fs::rename(&partial, file).with_context(|| format!("cannot write {}", file.display()))?;
            Ok(summary)
        }
        Err(error) => {
            let _ = std::fs::remove_file(&partial);
            Err(error)
        }
    }
}

/// The project's files as every node runs them: those deployed through the database
/// where nodes share one, else those in the project dir.
async fn project_files(store: &Store, config: &Config) -> anyhow::Result<BTreeMap<String, String>> {
    let mut deployed = BTreeMap::new();
    for crate::store::Deployed { name, source, .. } in store.backend().deployed(0).await? {
        deployed.insert(name, source);
    }
    if deployed.is_empty() {
        return Project::at(config.rules_file(), config.functions_dir()).local();
    }
    Ok(deployed.into_iter().filter_map(|(name, source)| Some((name, source?))).collect())
}

/// One row as a line of the file: derived columns left out, bytes in base64, sealed
/// secrets opened.
fn row_line(table: &'static Table, row: Vec<Cell>, keyring: &Keyring) -> anyhow::Result<String> {
    let mut object = Map::new();
    for (column, cell) in table.columns.iter().zip(row.iter()) {
        if column.derived {
            continue;
        }
        let value = match cell {
            Cell::Null => Value::Null,
            Cell::Int(number) => Value::from(*number),
            Cell::Bool(flag) => Value::Bool(*flag),
            Cell::Text(text) if matches!(column.kind, Kind::Json | Kind::Document) => serde_json::from_str(text)
                .with_context(|| format!("{}.{} holds JSON that does not parse", table.name, column.name))?,
            Cell::Text(text) => Value::String(text.clone()),
            Cell::Bytes(bytes) => {
                let plain = match sealed_context(table, column.name, &row) {
                    Some(context) => keyring
                        .open(bytes, &context)
                        .map_err(|_| {
                            anyhow::anyhow!("a secret in {} does not open with this project's key", table.name)
                        })?
                        .into_inner(),
                    None => bytes.clone(),
                };
                Value::String(BASE64.encode(plain))
            }
        };
        object.insert(column.name.into(), value);
    }
    let mut line = Map::new();
    line.insert(table.name.into(), Value::Object(object));
    Ok(Value::Object(line).to_string())
}

/// What the sealed column `column` of `row` is bound to, if it is sealed.
fn sealed_context(table: &Table, column: &str, row: &[Cell]) -> Option<String> {
    let secret = SECRETS.iter().find(|secret| secret.table == table.name && secret.column == column)?;
    match &row[portable::position(table, secret.owner)?] {
        Cell::Text(owner) => Some((secret.context)(owner)),
        _ => None,
    }
}

/// Loads the export `file` into the database of `config`, which must hold no project
/// yet, in one transaction; then writes the project's files into its dir (and deploys
/// them to the other nodes, where nodes share the database). Refused, changing nothing,
/// when a file in the dir differs from the export's.
pub async fn import(config: &Config, file: &Path, progress: &dyn Fn(&str)) -> anyhow::Result<Summary> {
    let _lock = match config.database()? {
        crate::config::Database::Sqlite(database) => Some(crate::backup::DatabaseLock::acquire(&database, "import")?),
        crate::config::Database::Postgres(_) => None,
    };
    let input = std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
    let mut lines = Lines { inner: std::io::BufReader::with_capacity(1 << 20, input).lines(), number: 0 };
    let header: Value = lines.next_json()?.context("the file is empty: not a Hearth export")?;
    if header.get("hearth_export").and_then(Value::as_i64) != Some(FORMAT) {
        bail!("line 1: not a Hearth export (format {FORMAT})");
    }

    std::fs::create_dir_all(&config.dir).with_context(|| format!("cannot create {}", config.dir.display()))?;
    let project = Project::at(config.rules_file(), config.functions_dir());
    let here = project.local()?;
    let mut files = BTreeMap::new();
    let mut first = None;
    while let Some(line) = lines.next_json()? {
        match line.get("file") {
            Some(file) => {
                let (Some(name), Some(source)) =
                    (file.get("name").and_then(Value::as_str), file.get("source").and_then(Value::as_str))
                else {
                    bail!("line {}: a file needs a name and a source", lines.number);
                };
                if !Project::is_file_name(name) {
                    bail!("line {}: `{name}` is not a project file", lines.number);
                }
                if here.get(name).is_some_and(|present| present != source) {
                    bail!(
                        "{} in {} differs from the export's: move it away to import the export's, or import \
                         into another project dir",
                        name,
                        config.dir.display()
                    );
                }
                files.insert(name.to_owned(), source.to_owned());
            }
            None => {
                first = Some(line);
                break;
            }
        }
    }

    let keyring = config.keyring()?;
    let (store, auth_store) = crate::open_store(config).await?;
    // A new database is marked as sealing its secrets before any arrive sealed.
    let sealed = crate::auth::repo::Repo::new(auth_store, keyring.clone()).reseal().await;
    let result = match sealed {
        Ok(_) => load(&store, &keyring, first, lines, files.len() as u64, progress).await,
        Err(error) => Err(error.into()),
    };
    let result = match result {
        Ok(mut summary) => {
            for (name, source) in &files {
                if !here.contains_key(name) {
                    project.write(name, Some(source))?;
                }
                store.backend().deploy(name.clone(), Some(source.clone())).await?;
            }
            summary.files = files.len() as u64;
            Ok(summary)
        }
        Err(error) => Err(error),
    };
    store.close().await;
    result
}

/// Streams the rows to the backend's import and sends [`Batch::Done`] once the end line
/// agrees with what came; any fault before that rolls the whole import back.
async fn load(
    store: &Store,
    keyring: &Keyring,
    first: Option<Value>,
    mut lines: Lines,
    files: u64,
    progress: &dyn Fn(&str),
) -> anyhow::Result<Summary> {
    let (sender, batches) = mpsc::channel(4);
    let backend = store.backend().clone();
    let writing = tokio::spawn(async move { backend.import_rows(batches).await });
    // The sender goes with the reader, so a reader that stops closes the channel and the
    // backend rolls back.
    let read = async move {
        let mut counter = Counter::new("imported", progress);
        let mut pending: Option<(&'static Table, Vec<Vec<Cell>>)> = None;
        let mut next = first;
        loop {
            let Some(line) = next.take() else { bail!("the file ends before its end line: it was cut short") };
            let number = lines.number;
            let Value::Object(line) = line else { bail!("line {number}: not a JSON object") };
            let Some((name, value)) = line.into_iter().next() else { bail!("line {number}: an empty object") };
            if name == "end" {
                let mut whole = counter
                    .counts
                    .iter()
                    .all(|(table, count)| value.get(*table).and_then(Value::as_u64).unwrap_or(0) == *count);
                whole &= value.get("files").and_then(Value::as_u64) == Some(files);
                if !whole {
                    bail!("line {number}: the end line's counts differ from the lines read: the file is damaged");
                }
                if lines.next_json()?.is_some() {
                    bail!("line {}: lines after the end line", lines.number);
                }
                break;
            }
            let Some(table) = portable::table(&name) else {
                bail!("line {number}: `{name}` is not a table of an export")
            };
            let row = parse_row(table, value, keyring).with_context(|| format!("line {number}"))?;
            counter.add(table.name);
            match &mut pending {
                Some((current, rows)) if std::ptr::eq(*current, table) => rows.push(row),
                _ => {
                    if let Some((current, rows)) = pending.replace((table, vec![row])) {
                        send(&sender, Batch::Rows(current, rows)).await?;
                    }
                }
            }
            if let Some((current, rows)) = pending.take_if(|(_, rows)| rows.len() >= BATCH_ROWS) {
                send(&sender, Batch::Rows(current, rows)).await?;
            }
            next = lines.next_json()?;
        }
        if let Some((current, rows)) = pending.take() {
            send(&sender, Batch::Rows(current, rows)).await?;
        }
        send(&sender, Batch::Done).await?;
        anyhow::Ok(())
    };
    let read = read.await;
    let written = writing.await?;
    match (read, written) {
        // The backend stopped taking rows: its own error says why.
        (Err(error), Err(refused)) if error.is::<Stopped>() => Err(refused.into()),
        // Otherwise the reader's fault explains the backend's (it saw the rows stop).
        (Err(error), _) => Err(error),
        (Ok(()), Err(error)) => Err(error.into()),
        (Ok(()), Ok(counts)) => Ok(Summary { counts, files }),
    }
}

/// The backend's import ended (it failed): reading the rest of the file is no use.
#[derive(Debug, thiserror::Error)]
#[error("the import stopped")]
struct Stopped;

async fn send(sender: &mpsc::Sender<Batch>, batch: Batch) -> anyhow::Result<()> {
    sender.send(batch).await.map_err(|_| Stopped.into())
}

/// A line's object as a row of `table`: each column checked against its kind, derived
/// columns worked out, secrets sealed with the target's key.
fn parse_row(table: &'static Table, value: Value, keyring: &Keyring) -> anyhow::Result<Vec<Cell>> {
    let Value::Object(mut object) = value else { bail!("a row of {} is not an object", table.name) };
    let mut row = Vec::with_capacity(table.columns.len());
    for column in table.columns {
        if column.derived {
            row.push(Cell::Null);
            continue;
        }
        let value = object.remove(column.name).unwrap_or(Value::Null);
        let cell = match (column.kind, value) {
            (_, Value::Null) if column.nullable => Cell::Null,
            (_, Value::Null) => bail!("{}.{} is missing", table.name, column.name),
            (Kind::Text, Value::String(text)) => Cell::Text(text),
            (Kind::Int, Value::Number(number)) if number.is_i64() => Cell::Int(number.as_i64().unwrap_or_default()),
            (Kind::Bool, Value::Bool(flag)) => Cell::Bool(flag),
            (Kind::Bytes, Value::String(text)) => Cell::Bytes(
                BASE64.decode(text).with_context(|| format!("{}.{} is not base64", table.name, column.name))?,
            ),
            (Kind::Json, value) => Cell::Text(value.to_string()),
            (Kind::Document, value @ Value::Object(_)) => Cell::Text(value.to_string()),
            (kind, _) => bail!("{}.{} is not {}", table.name, column.name, kind_name(kind)),
        };
        row.push(cell);
    }
    if let Some(extra) = object.keys().next() {
        bail!("{} has no column `{extra}`", table.name);
    }
    if std::ptr::eq(table, &portable::DOCUMENTS) {
        let Cell::Text(path) = &row[0] else { bail!("documents.path is missing") };
        let path = DocPath::parse(path).map_err(|error| anyhow::anyhow!("documents.path: {error}"))?;
        for (column, value) in [("collection", path.collection()), ("coll_id", path.collection_id()), ("id", path.id())]
        {
            if let Some(at) = portable::position(table, column) {
                row[at] = Cell::Text(value.to_owned());
            }
        }
    }
    for secret in SECRETS.iter().filter(|secret| secret.table == table.name) {
        let (Some(owner), Some(at)) =
            (portable::position(table, secret.owner), portable::position(table, secret.column))
        else {
            continue;
        };
        if let (Cell::Text(owner), Cell::Bytes(plain)) = (&row[owner], &row[at]) {
            let sealed = keyring.seal(plain, &(secret.context)(owner));
            row[at] = Cell::Bytes(sealed);
        }
    }
    Ok(row)
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Text => "a string",
        Kind::Int => "an integer",
        Kind::Bool => "true or false",
        Kind::Bytes => "base64 text",
        Kind::Json => "JSON",
        Kind::Document => "a JSON object",
    }
}

/// The file's lines as JSON, counting them for error messages.
struct Lines {
    inner: std::io::Lines<std::io::BufReader<std::fs::File>>,
    number: usize,
}

impl Lines {
    fn next_json(&mut self) -> anyhow::Result<Option<Value>> {
        loop {
            let Some(line) = self.inner.next() else { return Ok(None) };
            self.number += 1;
            let line = line.with_context(|| format!("line {}", self.number))?;
            if line.trim().is_empty() {
                continue;
            }
            let value = serde_json::from_str(&line).with_context(|| format!("line {}: not JSON", self.number))?;
            return Ok(Some(value));
        }
    }
}

/// Rows counted per table, told to `progress` at most once a second.
struct Counter<'a> {
    verb: &'static str,
    counts: Vec<(&'static str, u64)>,
    progress: &'a dyn Fn(&str),
    told: Instant,
}

impl<'a> Counter<'a> {
    fn new(verb: &'static str, progress: &'a dyn Fn(&str)) -> Counter<'a> {
        Counter { verb, counts: TABLES.iter().map(|table| (table.name, 0)).collect(), progress, told: Instant::now() }
    }

    fn add(&mut self, table: &'static str) {
        if let Some(count) = self.counts.iter_mut().find(|(name, _)| *name == table) {
            count.1 += 1;
        }
        if self.told.elapsed() >= Duration::from_secs(1) {
            self.told = Instant::now();
            (self.progress)(&format!("{} {}…", self.verb, rows(&self.counts).trim_end_matches(", ")));
        }
    }
}

fn partial_path(file: &Path) -> PathBuf {
    let mut name = file.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    file.with_file_name(name)
}
