//! A terminal chat on Hearth: messages live, who is here, and what they type.
//!
//! ```text
//! cargo run --release -p hearth-server -- serve --dir examples/chat     # the server
//! cargo run -p hearth-sdk --example chat -- http://127.0.0.1:8080 ada@example.com 'a long password' lobby
//! cargo run -p hearth-sdk --example chat -- http://127.0.0.1:8080 bob@example.com 'another password' lobby
//! ```
//!
//! Each process signs in (or signs up), joins the room through the `joinRoom` function,
//! prints the last messages and every new one, and shows who joins and leaves. Lines
//! typed are sent as messages (the `filterWords` hook masks a few words on the way in).

use futures::StreamExt;
use hearth_sdk::{ChangeType, ChannelEvent, Client, Direction, ErrorCode, SignIn};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, email, password, room] = args.as_slice() else {
        eprintln!("usage: chat URL EMAIL PASSWORD ROOM");
        std::process::exit(2);
    };
    let client = Client::new(url)?;
    let me = match client.sign_in(email, password).await {
        Ok(SignIn::Done(user)) => user,
        Ok(SignIn::MfaRequired { .. }) => {
            return Err("this account has TOTP on; the example does not ask for codes".into());
        }
        Err(error) if error.code() == ErrorCode::Unauthenticated => client.sign_up(email, password).await?,
        Err(error) => return Err(error.into()),
    };
    let name = email.split('@').next().unwrap_or("someone").to_owned();
    client.call("joinRoom", json!({ "room": room })).await?;
    println!("-- {name} in #{room}; type a message and press enter (Ctrl-D quits)");

    // The last 50 messages, then each new one, in the order they were sent.
    let messages = client.collection(&format!("rooms/{room}/messages"));
    let mut live = messages.query().order_by("sent_at", Direction::Asc).limit(50).listen();
    tokio::spawn(async move {
        while let Some(snapshot) = live.next().await {
            match snapshot {
                Ok(snapshot) => {
                    for change in snapshot.changes.iter().filter(|change| change.kind == ChangeType::Added) {
                        let data = &change.doc.data;
                        let text = data.get("text").and_then(Value::as_str).unwrap_or_default();
                        let who = data.get("name").and_then(Value::as_str).unwrap_or("?");
                        println!("[{who}] {text}");
                    }
                }
                Err(error) => eprintln!("-- messages stopped: {error}"),
            }
        }
    });

    // Presence: who is in the room.
    let mut here = client.channel(&format!("room:{room}")).join(json!({ "name": name }));
    tokio::spawn(async move {
        while let Some(event) = here.next().await {
            match event {
                Ok(ChannelEvent::Presence { joins, leaves }) => {
                    let names = |members: &serde_json::Map<String, Value>| -> Vec<String> {
                        members
                            .values()
                            .filter_map(|member| member["state"]["name"].as_str().map(str::to_owned))
                            .collect()
                    };
                    for joined in names(&joins) {
                        println!("-- {joined} is here");
                    }
                    for left in names(&leaves) {
                        println!("-- {left} left");
                    }
                }
                Ok(ChannelEvent::Broadcast { .. }) => {}
                Err(error) => eprintln!("-- presence stopped: {error}"),
            }
        }
    });

    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let text = line.trim();
        if text.is_empty() {
            continue;
        }
        let message = json!({ "author": me.id, "name": name, "text": text, "sent_at": { "$server_time": true } });
        if let Err(error) = messages.add(message).await {
            eprintln!("-- not sent: {error}");
        }
    }
    Ok(())
}
