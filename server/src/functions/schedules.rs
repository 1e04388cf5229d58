//! Scheduled functions: `schedule(cron, handler)` runs at each tick of a cron expression
//! (five fields, or six with seconds first; UTC).
//!
//! The guarantee, on one node: each tick runs at most once — the tick is saved
//! (`schedule_ticks`) before the function runs, and a failed run is logged, not retried.
//! When the server was down over one or more ticks, the last of them runs once at
//! start-up; the earlier ones are skipped. A newly deployed schedule starts with the next
//! tick.

use std::str::FromStr;

use chrono::{DateTime, TimeZone, Utc};
use croner::Cron;
use serde_json::json;

use super::Functions;
use crate::store::Store;

/// A cron expression, or why it is not one.
pub fn parse(expression: &str) -> Result<Cron, String> {
    let cron = Cron::from_str(expression).map_err(|error| error.to_string())?;
    // An expression that never fires (e.g. February 30th) is refused too.
    cron.find_next_occurrence(&Utc::now(), false).map_err(|error| error.to_string())?;
    Ok(cron)
}

/// Runs the schedule `name` forever.
pub async fn run(functions: Functions, store: Store, name: String, cron: Cron) {
    let backend = store.backend();
    let last = super::triggers::until_read(&name, "last tick", || backend.schedule_tick(name.clone())).await;
    let now = Utc::now();
    match last.and_then(|micros| Utc.timestamp_micros(micros).single()) {
        Some(last) => {
            // Ticks passed while the server was down: the latest of them runs once.
            if let Ok(missed) = cron.find_previous_occurrence(&now, true)
                && missed > last
            {
                tracing::info!(schedule = %name, tick = %missed, "running the last tick missed while stopped");
                fire(&functions, &store, &name, missed).await;
            }
        }
        None => {
            // Deployed just now: from the next tick on.
            if let Err(error) = backend.claim_schedule_tick(name.clone(), now.timestamp_micros()).await {
                tracing::error!(schedule = %name, %error, "cannot save the schedule's first tick");
            }
        }
    }
    // Never the same tick twice, even if the timer wakes a hair before the wall clock.
    let mut after = Utc::now();
    loop {
        let Ok(next) = cron.find_next_occurrence(&after.max(Utc::now()), false) else {
            tracing::warn!(schedule = %name, "the schedule has no further ticks");
            return;
        };
        let wait = (next - Utc::now()).to_std().unwrap_or_default();
        tokio::time::sleep(wait).await;
        fire(&functions, &store, &name, next).await;
        after = next;
    }
}

/// Saves `tick` as done, then runs the function for it.
async fn fire(functions: &Functions, store: &Store, name: &str, tick: DateTime<Utc>) {
    // Every node runs every schedule's clock; the one whose claim lands runs the tick.
    let claimed = store.backend().claim_schedule_tick(name.to_owned(), tick.timestamp_micros()).await;
    if let Ok(false) = claimed {
        return; // another node runs this tick
    }
    if let Err(error) = claimed {
        // Without the record the tick could run twice after a restart: skip it.
        tracing::error!(schedule = %name, %tick, %error, "cannot save the tick; skipping it");
        return;
    }
    let event = json!({ "tick": tick.to_rfc3339_opts(chrono::SecondsFormat::Micros, true) });
    if let Err(error) = functions.invoke(name, event, None, functions.time_limit(), 0).await {
        tracing::warn!(schedule = %name, %tick, code = error.code.as_str(), message = %error.message, "scheduled run failed");
    }
}
