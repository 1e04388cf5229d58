//! A terminal todo list on Hearth that keeps working with the server stopped.
//!
//! ```text
//! cargo run --release -p hearth-server -- serve --dir examples/todo     # the server
//! cargo run -p hearth-sdk --example todo -- http://127.0.0.1:8080 ada@example.com 'a long password'
//! ```
//!
//! The list is live (a second process with the same account sees changes at once).
//! Stop the server and go on adding, ticking and removing: each change shows at once,
//! marked `(not synced)`, and is kept in `todo-data/` with the session. Quit, start the
//! app again, even before the server is back: the list and the queued changes are
//! there. When the server returns, the changes are sent in order; one the server
//! refuses is undone and reported.
//!
//! Commands: `add TEXT`, `done N`, `rm N`, `quit` (N is the number shown in the list).

use std::sync::{Arc, Mutex};

use futures::StreamExt;
use hearth_sdk::{Client, ClientOptions, Direction, Document, ErrorCode, FileTokenStore, Op, SignIn};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, email, password, rest @ ..] = args.as_slice() else {
        eprintln!("usage: todo URL EMAIL PASSWORD [DATA_DIR]");
        std::process::exit(2);
    };
    let data = std::path::PathBuf::from(rest.first().map_or("todo-data", String::as_str));
    std::fs::create_dir_all(&data)?;
    let options = ClientOptions {
        token_store: Arc::new(FileTokenStore::new(data.join("session.json"))),
        cache: Some(data.join("cache.db")),
        ..ClientOptions::default()
    };
    let client = Client::with_options(url, options)?;
    // A kept session works offline; only the first run needs the server to sign in.
    let me = match client.current_user() {
        Some(user) => user,
        None => match client.sign_in(email, password).await {
            Ok(SignIn::Done(user)) => user,
            Ok(SignIn::MfaRequired { .. }) => return Err("this account has TOTP on; the example does not ask".into()),
            Err(error) if error.code() == ErrorCode::Unauthenticated => client.sign_up(email, password).await?,
            Err(error) => return Err(error.into()),
        },
    };
    println!("-- {} ({}); commands: add TEXT, done N, rm N, quit", me.email.as_deref().unwrap_or("?"), me.id);

    // The list, live: the server's, with the changes not yet synced applied on top.
    let shown: Arc<Mutex<Vec<Document>>> = Arc::default();
    let todos = client.collection("todos");
    let mut live = todos.query().filter("owner", Op::Eq, &me.id).order_by("at", Direction::Asc).listen();
    let list = shown.clone();
    tokio::spawn(async move {
        while let Some(snapshot) = live.next().await {
            match snapshot {
                Ok(snapshot) => {
                    print_list(&snapshot.docs, snapshot.has_pending_writes);
                    *list.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = snapshot.docs;
                }
                Err(error) => eprintln!("-- the list stopped: {error}"),
            }
        }
    });
    let mut rejected = client.rejected_writes();
    tokio::spawn(async move {
        while let Some(refused) = rejected.next().await {
            let path = refused.writes.first().map_or("?", |write| write.path.as_str());
            eprintln!("-- the server refused a change to {path} ({}); it was undone", refused.error);
        }
    });

    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let (command, argument) = line.trim().split_once(' ').unwrap_or((line.trim(), ""));
        let nth = |argument: &str| -> Option<Document> {
            let index = argument.trim().parse::<usize>().ok()?.checked_sub(1)?;
            shown.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).get(index).cloned()
        };
        let done = match (command, nth(argument)) {
            ("add", _) if !argument.trim().is_empty() => {
                let todo = json!({
                    "owner": me.id, "title": argument.trim(), "done": false, "shared_with": [],
                    "at": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as u64,
                });
                todos.add(todo).await.map(drop)
            }
            ("done", Some(todo)) => {
                let ticked = todo.data.get("done").and_then(Value::as_bool).unwrap_or(false);
                client.doc(&todo.path).update(json!({ "done": !ticked })).await.map(drop)
            }
            ("rm", Some(todo)) => client.doc(&todo.path).delete().await,
            ("quit", _) => break,
            _ => {
                eprintln!("-- commands: add TEXT, done N, rm N, quit");
                continue;
            }
        };
        if let Err(error) = done {
            eprintln!("-- {error}");
        }
    }
    if client.pending_writes() > 0 {
        println!("-- {} change(s) wait for the server; they are sent next time", client.pending_writes());
    }
    Ok(())
}

fn print_list(docs: &[Document], pending: bool) {
    println!("{}", if pending { "-- todos (not synced)" } else { "-- todos" });
    for (index, doc) in docs.iter().enumerate() {
        let done = doc.data.get("done").and_then(Value::as_bool).unwrap_or(false);
        let title = doc.data.get("title").and_then(Value::as_str).unwrap_or_default();
        println!("{:>3}. [{}] {title}", index + 1, if done { "x" } else { " " });
    }
}
