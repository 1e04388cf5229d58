//! `onUserCreated` functions. Creating a user writes a `user_events` row in the same
//! transaction; each function follows that log from a durable cursor
//! (`user_event_cursors`) exactly as a document trigger follows the change log: every new
//! user at least once, in creation order, across crashes, retried and dead-lettered the
//! same way (dead letters name the user as `@users/{uid}`).

use std::time::Duration;

use serde_json::Value;

use super::Functions;
use super::triggers::{BATCH, Lease, deliver, until_read};
use crate::auth::Auth;

/// The function's saved cursor; a new one starts at the end of the log (users created
/// after it was deployed).
pub async fn start_at(auth: &Auth, name: &str) -> Result<i64, crate::store::Error> {
    let repo = auth.repo();
    if let Some(seq) = repo.user_event_cursor(name).await? {
        return Ok(seq);
    }
    let seq = repo.last_user_event().await?;
    repo.set_user_event_cursor(name, seq).await?;
    Ok(seq)
}

/// Runs the `onUserCreated` function `name` over the user events, forever.
pub async fn follow(functions: Functions, name: String) {
    let (auth, store) = (functions.shared.auth.clone(), functions.shared.store.clone());
    let mut created = auth.users_created();
    let mut lease = Lease::new(store.clone(), format!("users:{name}"));
    let mut cursor = 0;
    loop {
        if lease.hold().await {
            cursor = until_read(&name, "cursor", || start_at(&auth, &name)).await;
        }
        let events = match auth.repo().user_events_since(cursor, BATCH).await {
            Ok(events) => events,
            Err(error) => {
                tracing::error!(function = %name, %error, "cannot read the user events");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let Some(last) = events.last().map(|(seq, _)| *seq) else {
            let _ = tokio::time::timeout(Duration::from_secs(1), created.changed()).await;
            continue;
        };
        for (seq, user) in events {
            let user: Value = serde_json::from_str(&user).unwrap_or(Value::Null);
            let path = format!("@users/{}", user.get("id").and_then(Value::as_str).unwrap_or_default());
            deliver(&functions, &store, &name, user, seq, &path, 0).await;
        }
        cursor = last;
        if let Err(error) = auth.repo().set_user_event_cursor(&name, cursor).await {
            tracing::error!(function = %name, %error, "cannot save the function's cursor");
        }
    }
}
