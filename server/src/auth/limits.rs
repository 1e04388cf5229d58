//! Rate limits of the sign-in routes: a token bucket per client IP over all of them, and
//! a budget of failed logins per account. In memory, per node.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::RateLimitConfig;

/// A token bucket: `capacity` tokens, refilled at `per_second`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Buckets by key, with the same capacity and refill rate.
struct Buckets {
    capacity: f64,
    per_second: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

/// Past this many keys, full buckets are dropped (they hold no information).
const MAX_KEYS: usize = 100_000;

impl Buckets {
    fn new(capacity: u32, per_second: f64) -> Buckets {
        Buckets { capacity: f64::from(capacity.max(1)), per_second, buckets: Mutex::new(HashMap::new()) }
    }

    /// Seconds until a token is there, or `None` if one is there now. `take` spends it.
    fn check(&self, key: &str, take: bool) -> Option<u64> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() > MAX_KEYS {
            let (capacity, rate) = (self.capacity, self.per_second);
            buckets
                .retain(|_, bucket| bucket.tokens + now.duration_since(bucket.updated).as_secs_f64() * rate < capacity);
        }
        let bucket = buckets.entry(key.to_owned()).or_insert(Bucket { tokens: self.capacity, updated: now });
        let elapsed = now.duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.per_second).min(self.capacity);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            if take {
                bucket.tokens -= 1.0;
            }
            None
        } else {
            let wait = Duration::from_secs_f64((1.0 - bucket.tokens) / self.per_second);
            Some(wait.as_secs().max(1))
        }
    }
}

/// The limits in force.
pub struct Limits {
    per_ip: Buckets,
    failed_logins: Buckets,
    pub trust_forwarded_for: bool,
}

impl Limits {
    pub fn new(config: &RateLimitConfig) -> Limits {
        Limits {
            per_ip: Buckets::new(config.per_ip_burst, f64::from(config.per_ip_per_minute.max(1)) / 60.0),
            failed_logins: Buckets::new(
                config.failed_logins,
                f64::from(config.failed_logins.max(1)) / config.failed_login_window_seconds.max(1) as f64,
            ),
            trust_forwarded_for: config.trust_forwarded_for,
        }
    }

    /// Spends one request of this IP's budget.
    pub fn check_ip(&self, ip: &str) -> Result<(), super::Error> {
        match self.per_ip.check(ip, true) {
            None => Ok(()),
            Some(seconds) => Err(limited("too many sign-in requests from this address", seconds)),
        }
    }

    /// Whether this account may try to log in now.
    pub fn check_account(&self, email: &str) -> Result<(), super::Error> {
        match self.failed_logins.check(email, false) {
            None => Ok(()),
            Some(seconds) => Err(limited("too many failed logins for this account", seconds)),
        }
    }

    pub fn record_failure(&self, email: &str) {
        self.failed_logins.check(email, true);
    }
}

fn limited(message: &str, seconds: u64) -> super::Error {
    super::Error::RateLimited { message: format!("{message}; retry in {seconds} s"), retry_after_seconds: seconds }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_says_when_to_retry() {
        let buckets = Buckets::new(3, 1.0 / 60.0);
        for _ in 0..3 {
            assert_eq!(buckets.check("a", true), None);
        }
        let wait = buckets.check("a", true).expect("empty");
        assert!((1..=60).contains(&wait), "{wait}");
        assert_eq!(buckets.check("b", true), None, "keys do not share a bucket");
    }
}
