//! Starting the real binary and talking to it.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// The service key every test server accepts (besides the one it makes).
pub const KEY: &str = "hk_test_0123456789abcdefghijklmnopqrstuv";

/// A running server; killed when dropped.
pub struct App {
    pub addr: String,
    pub client: reqwest::Client,
    pub child: Child,
    pub output: Arc<Mutex<Vec<String>>>,
    dir: Option<tempfile::TempDir>,
    project: std::path::PathBuf,
}

/// What a start may change.
#[derive(Default, Clone)]
pub struct Options {
    pub config: Option<String>,
    pub extra_args: Vec<String>,
    /// `--addr` (default `127.0.0.1:0`): a restart on the same port for clients that reconnect.
    pub addr: Option<String>,
}

impl App {
    /// A fresh server in a fresh temp dir.
    pub async fn spawn() -> App {
        App::spawn_with(Options::default()).await
    }

    pub async fn spawn_with(options: Options) -> App {
        let dir = tempfile::tempdir().expect("temp dir");
        if let Some(config) = &options.config {
            std::fs::write(dir.path().join("hearth.toml"), config).expect("write config");
        }
        let path = dir.path().to_owned();
        if on_postgres() {
            fresh_database(&path);
        }
        let mut app = App::start_in(&path, &options);
        app.dir = Some(dir);
        app
    }

    /// A server on an existing project dir (to restart on the same data).
    pub fn start_in(dir: &Path, options: &Options) -> App {
        let mut child = hearth_command(dir)
            .arg("serve")
            .arg("--dir")
            .arg(dir)
            .args(["--addr", options.addr.as_deref().unwrap_or("127.0.0.1:0")])
            .args(&options.extra_args)
            .env("HEARTH_SERVICE_KEY", KEY)
            // Cheap password hashing keeps the suite fast; production keeps OWASP's cost.
            .env("HEARTH_AUTH__PASSWORD__MEMORY_KIB", "1024")
            .env("HEARTH_AUTH__PASSWORD__ITERATIONS", "1")
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the hearth binary starts");
        let output = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        for (stream, ready) in
            [(Box::new(stdout) as Box<dyn std::io::Read + Send>, Some(ready_tx)), (Box::new(stderr), None)]
        {
            let output = output.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    if let (Some(ready), Some(at)) = (&ready, line.find("listening on http://")) {
                        let addr: String = line[at + "listening on http://".len()..]
                            .chars()
                            .take_while(|c| !c.is_whitespace() && *c != '"')
                            .collect();
                        let _ = ready.send(addr);
                    }
                    output.lock().expect("lock").push(line);
                }
            });
        }
        let addr = match ready_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                panic!("server did not start: {:?}", output.lock().expect("lock"));
            }
        };
        App { addr, client: reqwest::Client::new(), child, output, dir: None, project: dir.to_owned() }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A request with the service key.
    pub fn admin(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.client.request(method, self.url(path)).bearer_auth(KEY)
    }

    /// Sends a request and returns its status and JSON body (null when empty).
    pub async fn send(&self, request: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let response = request.send().await.expect("request sent");
        let status = response.status();
        let bytes = response.bytes().await.expect("body");
        let body = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).expect("JSON body") };
        (status, body)
    }

    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut request = self.admin(method, path);
        if let Some(body) = body {
            request = request.json(&body);
        }
        self.send(request).await
    }

    /// Whether the server prints `text` within 5 s (its output is read on other threads,
    /// a moment behind the answers).
    pub fn logs(&self, text: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.output_text().contains(text) {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// Everything the server printed so far.
    pub fn output_text(&self) -> String {
        self.output.lock().expect("lock").join("\n")
    }

    /// Sends SIGTERM and waits for the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        // `kill` from the shell keeps the tests free of unsafe code.
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill_hard(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The project dir.
    pub fn dir(&self) -> std::path::PathBuf {
        self.project.clone()
    }

    /// Keeps the project dir after this server is gone.
    pub fn keep_dir(&mut self) -> Option<tempfile::TempDir> {
        self.dir.take()
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The database goes with the project dir (a kept dir keeps it until the next run).
        if let Some(dir) = &self.dir
            && let Ok(name) = std::fs::read_to_string(dir.path().join(DATABASE_FILE))
        {
            drop_database(name.trim());
        }
    }
}

/// `HEARTH_TEST_BACKEND=postgres` runs the suite on PostgreSQL: each project gets a
/// fresh database on the server `HEARTH_TEST_DATABASE_URL` names.
pub fn on_postgres() -> bool {
    std::env::var("HEARTH_TEST_BACKEND").is_ok_and(|backend| backend == "postgres")
}

/// Where a project dir notes the name of its test database.
const DATABASE_FILE: &str = ".hearth-test-database";
const DATABASE_PREFIX: &str = "hearth_e2e_";

fn admin_url() -> String {
    std::env::var("HEARTH_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

fn database_url(name: &str) -> String {
    let admin = admin_url();
    let (server, _) = admin.rsplit_once('/').expect("HEARTH_TEST_DATABASE_URL names a database");
    format!("{server}/{name}")
}

fn psql(sql: &str) -> String {
    psql_at(&admin_url(), &["-tA"], sql)
}

/// `psql` on `url` with `options`, stopping at the first error: what it printed.
fn psql_at(url: &str, options: &[&str], sql: &str) -> String {
    let output = Command::new("psql")
        .args([url, "-v", "ON_ERROR_STOP=1"])
        .args(options)
        .args(["-c", sql])
        .output()
        .expect("psql runs");
    assert!(output.status.success(), "psql {sql}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn drop_database(name: &str) {
    let _ = Command::new("psql")
        .args([admin_url().as_str(), "-qc", &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")])
        .output();
}

/// A project dir on a fresh PostgreSQL database whatever the suite's backend, for several
/// nodes to share; the database goes with it. (The cluster suite's.)
#[allow(dead_code)]
pub struct SharedProject {
    dir: tempfile::TempDir,
}

#[allow(dead_code)]
impl SharedProject {
    pub fn new(config: &str) -> SharedProject {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("hearth.toml"), config).expect("write config");
        fresh_database(dir.path());
        SharedProject { dir }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Runs SQL as the PostgreSQL server's admin (on its maintenance database), with
    /// `{db}` standing for this project's database.
    pub fn admin_sql(&self, sql: &str) -> String {
        let name = std::fs::read_to_string(self.dir.path().join(DATABASE_FILE)).expect("database name");
        psql(&sql.replace("{db}", name.trim()))
    }
}

impl Drop for SharedProject {
    fn drop(&mut self) {
        if let Ok(name) = std::fs::read_to_string(self.dir.path().join(DATABASE_FILE)) {
            drop_database(name.trim());
        }
    }
}

/// Makes the project's database, first dropping what earlier runs left: the databases of
/// test processes that are gone (another suite running beside this one keeps its own).
fn fresh_database(dir: &Path) {
    static CLEANED: std::sync::Once = std::sync::Once::new();
    let ours = format!("{DATABASE_PREFIX}{}_", std::process::id());
    CLEANED.call_once(|| {
        let names = psql(&format!("SELECT datname FROM pg_database WHERE datname LIKE '{DATABASE_PREFIX}%'"));
        let left = |name: &&str| {
            let pid = name.strip_prefix(DATABASE_PREFIX).and_then(|rest| rest.split('_').next()).unwrap_or_default();
            !Path::new("/proc").join(pid).exists()
        };
        for name in names.lines().filter(left) {
            drop_database(name);
        }
    });
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let name = format!("{ours}{}", NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    psql(&format!("CREATE DATABASE {name}"));
    std::fs::write(dir.join(DATABASE_FILE), &name).expect("note the database");
}

/// The `hearth` binary (the server never reads the suite's own `HEARTH_TEST_*`).
pub fn hearth_bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hearth"))
}

/// `hearth`, pointed at the project's test database when it has one.
pub fn hearth_command(dir: &Path) -> Command {
    let mut command = hearth_bin();
    if let Ok(name) = std::fs::read_to_string(dir.join(DATABASE_FILE)) {
        command.env("HEARTH_DATABASE_URL", database_url(name.trim()));
    }
    command
}

/// True on SQLite; on PostgreSQL notes why the caller (a test of what only the SQLite
/// backend has: its file, its backups, its locks) does not run.
pub fn sqlite_only(what: &str) -> bool {
    if on_postgres() {
        eprintln!("not on PostgreSQL: {what}");
    }
    !on_postgres()
}

/// The rows a query answers on the project's database, whichever its backend: each column
/// as text, blobs as lowercase hex, NULL as "".
pub fn stored_rows(dir: &Path, sql: &str) -> Vec<Vec<String>> {
    if let Ok(name) = std::fs::read_to_string(dir.join(DATABASE_FILE)) {
        let text = psql_at(&database_url(name.trim()), &["-tA", "-F", "\u{1f}"], sql);
        return text
            .lines()
            .filter(|line| !line.is_empty())
            .map(|line| line.split('\u{1f}').map(|value| value.trim_start_matches("\\x").to_owned()).collect())
            .collect();
    }
    let db = rusqlite::Connection::open(dir.join("hearth_data/hearth.db")).expect("database");
    let mut statement = db.prepare(sql).expect("sql");
    let columns = statement.column_count();
    let rows = statement
        .query_map([], |row| {
            (0..columns)
                .map(|i| {
                    Ok(match row.get_ref(i)? {
                        rusqlite::types::ValueRef::Null => String::new(),
                        rusqlite::types::ValueRef::Integer(n) => n.to_string(),
                        rusqlite::types::ValueRef::Real(x) => x.to_string(),
                        rusqlite::types::ValueRef::Text(text) => String::from_utf8_lossy(text).into_owned(),
                        rusqlite::types::ValueRef::Blob(bytes) => hex(bytes),
                    })
                })
                .collect::<rusqlite::Result<Vec<String>>>()
        })
        .expect("rows");
    rows.collect::<Result<_, _>>().expect("rows")
}

/// Runs statements on the project's database, whichever its backend.
pub fn stored_execute(dir: &Path, sql: &str) {
    if let Ok(name) = std::fs::read_to_string(dir.join(DATABASE_FILE)) {
        psql_at(&database_url(name.trim()), &["-q"], sql);
        return;
    }
    let db = rusqlite::Connection::open(dir.join("hearth_data/hearth.db")).expect("database");
    db.execute_batch(sql).expect("sql");
}

/// A blob as a SQL literal of the test's backend.
pub fn blob_literal(bytes: &[u8]) -> String {
    if on_postgres() { format!("'\\x{}'::bytea", hex(bytes)) } else { format!("X'{}'", hex(bytes)) }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

pub fn unhex(text: &str) -> Vec<u8> {
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex")).collect()
}

/// Starts `hearth serve` on the project in `dir`, expecting it to refuse: its stderr.
pub fn refused_start(dir: &Path) -> String {
    let mut child = hearth_command(dir)
        .args(["serve", "--addr", "127.0.0.1:0", "--dir"])
        .arg(dir)
        .env("HEARTH_SERVICE_KEY", KEY)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the server started");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr).expect("read");
    assert!(!status.success(), "{stderr}");
    stderr
}

/// Asserts the contract's error shape and code; returns the message.
pub fn assert_error(status: StatusCode, body: &Value, expected_status: u16, code: &str) -> String {
    assert_eq!(status.as_u16(), expected_status, "body: {body}");
    assert_eq!(body["error"]["code"], code, "body: {body}");
    assert!(body["error"]["details"].is_object(), "body: {body}");
    body["error"]["message"].as_str().expect("message").to_owned()
}

/// The code of the authenticator with this base32 secret, `offset` seconds from now.
pub fn totp_code(secret: &str, offset: u64) -> String {
    let totp = totp_rs::Builder::new()
        .with_secret(totp_rs::Secret::try_from_base32(secret).expect("base32 secret"))
        .with_account_name("test")
        .build()
        .expect("authenticator");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
    totp.generate(now + offset).to_string()
}

/// A loopback address no one listens on right now, for a server whose own URL must be
/// written into its config before it starts.
pub fn free_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").to_string()
}

/// The code in the newest outbox mail to `to`.
pub async fn mailed_code(app: &App, to: &str) -> String {
    mailed_code_about(app, to, "").await
}

/// The code in the newest outbox mail to `to` whose subject has `subject` in it, waiting
/// a little for mail sent in the background (password resets).
pub async fn mailed_code_about(app: &App, to: &str, subject: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, outbox) = app.call(Method::GET, "/v1/admin/outbox", None).await;
        assert_eq!(status, 200, "{outbox}");
        if let Some(mail) = outbox
            .as_array()
            .expect("mails")
            .iter()
            .find(|mail| mail["to"] == to && mail["subject"].as_str().is_some_and(|text| text.contains(subject)))
        {
            let body = mail["body"].as_str().expect("body");
            let code = body.lines().map(str::trim).find(|line| line.len() == 43 && !line.contains(' '));
            return code.expect("a code line").to_owned();
        }
        assert!(Instant::now() < deadline, "no mail to {to}: {outbox}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A minimal SMTP server on loopback that hands over the text of every mail it accepts;
/// it answers "try again later" to the first `busy` mails.
pub fn fake_smtp(busy: usize) -> (u16, std::sync::mpsc::Receiver<String>) {
    let busy = Arc::new(std::sync::atomic::AtomicUsize::new(busy));
    use std::io::Write;
    use std::sync::atomic::Ordering;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (sender, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { break };
            let (sender, busy) = (sender.clone(), busy.clone());
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut writer = stream;
                let _ = writer.write_all(b"220 localhost ESMTP test\r\n");
                let mut line = String::new();
                while reader.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
                    let command = line.trim_end().to_uppercase();
                    let answer: &[u8] = if command.starts_with("EHLO") || command.starts_with("HELO") {
                        b"250 localhost\r\n"
                    } else if command.starts_with("MAIL FROM")
                        && busy.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| left.checked_sub(1)).is_ok()
                    {
                        b"451 4.3.0 busy, try again later\r\n"
                    } else if command == "DATA" {
                        let _ = writer.write_all(b"354 go ahead\r\n");
                        let mut data = String::new();
                        let mut data_line = String::new();
                        while reader.read_line(&mut data_line).map(|n| n > 0).unwrap_or(false) {
                            if data_line == ".\r\n" {
                                break;
                            }
                            data.push_str(&data_line);
                            data_line.clear();
                        }
                        let _ = sender.send(data);
                        b"250 queued\r\n"
                    } else if command == "QUIT" {
                        let _ = writer.write_all(b"221 bye\r\n");
                        break;
                    } else {
                        b"250 OK\r\n"
                    };
                    let _ = writer.write_all(answer);
                    line.clear();
                }
            });
        }
    });
    (port, received)
}

pub type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A realtime connection speaking the contract's JSON messages.
pub struct Client {
    pub socket: Socket,
}

impl Client {
    pub async fn connect(app: &App, token: Option<&str>) -> Client {
        let mut request = format!("ws://{}/v1/realtime", app.addr).into_client_request().expect("request");
        if let Some(token) = token {
            request.headers_mut().insert("authorization", format!("Bearer {token}").parse().expect("header"));
        }
        let (socket, _) = tokio_tungstenite::connect_async(request).await.expect("websocket opens");
        Client { socket }
    }

    pub async fn send(&mut self, message: Value) {
        self.socket.send(Message::text(message.to_string())).await.expect("sent");
    }

    /// The next JSON message (pings skipped), or a panic after 10 s.
    pub async fn next(&mut self) -> Value {
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(10), self.socket.next())
                .await
                .expect("a message within 10 s")
                .expect("socket open")
                .expect("frame");
            match frame {
                Message::Text(text) => return serde_json::from_str(text.as_str()).expect("JSON message"),
                Message::Close(close) => panic!("closed: {close:?}"),
                _ => continue,
            }
        }
    }

    /// Every message before the `pong` of a fresh `ping`: the snapshots asked for and all
    /// deliveries of the writes acknowledged before it.
    pub async fn until_pong(&mut self) -> Vec<Value> {
        self.send(json!({"op": "ping"})).await;
        let mut messages = Vec::new();
        loop {
            let message = self.next().await;
            if message["op"] == "pong" {
                return messages;
            }
            messages.push(message);
        }
    }

    /// Hands every message that arrives to `apply` until `done(state)` holds after a
    /// `pong`, or 20 s have passed (the caller then asserts what it expected). A `pong`
    /// follows the snapshots asked for before its `ping`, but the changes of writes
    /// acknowledged before it may still be on their way.
    pub async fn settle<S>(&mut self, state: &mut S, mut apply: impl FnMut(&mut S, &Value), done: impl Fn(&S) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            for message in self.until_pong().await {
                apply(state, &message);
            }
            if done(state) || Instant::now() > deadline {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Nothing arrives for a moment.
    pub async fn quiet(&mut self) {
        if let Ok(Some(Ok(Message::Text(text)))) =
            tokio::time::timeout(Duration::from_millis(300), self.socket.next()).await
        {
            panic!("unexpected message: {text}");
        }
    }
}
