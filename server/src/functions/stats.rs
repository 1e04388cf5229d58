//! Invocations, errors and duration quantiles per function, for `GET /v1/admin/functions`
//! (Prometheus has the same as `hearth_function_*`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

/// Duration buckets: bucket `i` holds durations up to `FIRST * GROWTH^i`, so a quantile
/// is known within 25 %; the last (~7 min) holds anything longer.
const BUCKETS: usize = 80;
const FIRST_MICROS: f64 = 10.0;
const GROWTH: f64 = 1.25;

/// What one function has done since the server started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Summary {
    pub invocations: u64,
    pub errors: u64,
    /// Median duration in milliseconds (`null` before the first invocation).
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

struct Counts {
    invocations: u64,
    errors: u64,
    buckets: [u64; BUCKETS],
}

/// Counts per function name.
#[derive(Default)]
pub struct Stats {
    by_name: Mutex<HashMap<String, Counts>>,
}

impl Stats {
    pub fn record(&self, name: &str, took: Duration, failed: bool) {
        let mut by_name = self.by_name.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let counts = match by_name.get_mut(name) {
            Some(counts) => counts,
            None => {
                by_name.entry(name.to_owned()).or_insert(Counts { invocations: 0, errors: 0, buckets: [0; BUCKETS] })
            }
        };
        counts.invocations += 1;
        counts.errors += u64::from(failed);
        counts.buckets[bucket(took)] += 1;
    }

    pub fn summary(&self, name: &str) -> Summary {
        let by_name = self.by_name.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let Some(counts) = by_name.get(name) else { return Summary::default() };
        let quantile = |q: f64| {
            let wanted = ((counts.invocations as f64) * q).ceil().max(1.0) as u64;
            let mut seen = 0;
            counts.buckets.iter().position(|&count| {
                seen += count;
                seen >= wanted
            })
        };
        let millis = |index: Option<usize>| index.map(|index| round(upper_micros(index) / 1000.0));
        Summary {
            invocations: counts.invocations,
            errors: counts.errors,
            p50_ms: millis(quantile(0.5)),
            p99_ms: millis(quantile(0.99)),
        }
    }
}

fn bucket(took: Duration) -> usize {
    let micros = took.as_secs_f64() * 1e6;
    if micros <= FIRST_MICROS {
        return 0;
    }
    ((micros / FIRST_MICROS).ln() / GROWTH.ln()).ceil().min((BUCKETS - 1) as f64) as usize
}

fn upper_micros(index: usize) -> f64 {
    FIRST_MICROS * GROWTH.powi(index as i32)
}

fn round(millis: f64) -> f64 {
    (millis * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_within_a_bucket() {
        let stats = Stats::default();
        for micros in 1..=1000u64 {
            stats.record("f", Duration::from_micros(micros * 10), micros % 100 == 0);
        }
        let summary = stats.summary("f");
        assert_eq!((summary.invocations, summary.errors), (1000, 10));
        let (p50, p99) = (summary.p50_ms.expect("p50"), summary.p99_ms.expect("p99"));
        assert!((5.0..=5.0 * GROWTH).contains(&p50), "p50 {p50}");
        assert!((9.9..=9.9 * GROWTH).contains(&p99), "p99 {p99}");
        assert_eq!(stats.summary("g"), Summary::default());
    }
}
