//! Rate limits of the sign-in routes: a token bucket per client IP over all of them; a
//! budget of failed logins per account and address, and a larger one per account that
//! the addresses the account signed in from lately are exempt from (so a stranger cannot
//! lock its owner out); a budget of wrong second-factor codes per account.
//!
//! A node alone keeps them in memory. Nodes that share a database keep them there
//! ([`SharedLimits`]), so spreading a guessing run over the nodes gains nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use sha2::{Digest, Sha256};

use crate::config::RateLimitConfig;
use crate::store::Error as StoreError;

/// The budgets' home when several nodes share them. Keys are SHA-256 hex digests (no
/// address or e-mail is stored in the clear).
pub trait SharedLimits: Send + Sync {
    /// Refills the bucket `key` (at most `capacity` tokens, `per_second`), spends a token
    /// if `take` and one is there; answers how many tokens there were before.
    fn bucket(&self, key: String, capacity: f64, per_second: f64, take: bool)
    -> BoxFuture<'_, Result<f64, StoreError>>;
    /// Whether `address` signed in to `account` within `within`.
    fn known(&self, account: String, address: String, within: Duration) -> BoxFuture<'_, Result<bool, StoreError>>;
    /// Notes that `address` signed in to `account` now.
    fn remember(&self, account: String, address: String) -> BoxFuture<'_, Result<(), StoreError>>;
}

fn digest(parts: &[&str]) -> String {
    let mut hash = Sha256::new();
    for part in parts {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    hash.finalize().iter().map(|byte| format!("{byte:02x}")).collect()
}

/// A token bucket: up to `capacity` tokens, refilled at `per_second` (both given at
/// each check, so a bucket is two numbers).
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl Bucket {
    pub fn full(capacity: f64) -> Bucket {
        Bucket { tokens: capacity, updated: Instant::now() }
    }

    /// Refills, then `None` if a token is there (spent if `take`), or how long until one is.
    pub fn check(&mut self, capacity: f64, per_second: f64, take: bool) -> Option<Duration> {
        let now = Instant::now();
        let elapsed = now.duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * per_second).min(capacity);
        self.updated = now;
        if self.tokens >= 1.0 {
            if take {
                self.tokens -= 1.0;
            }
            None
        } else {
            Some(Duration::from_secs_f64((1.0 - self.tokens) / per_second))
        }
    }
}

/// Buckets by key, with the same capacity and refill rate.
struct Buckets {
    /// Which budget (keys of several share one table when shared).
    name: &'static str,
    capacity: f64,
    per_second: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

/// Past this many keys, full buckets are dropped (they hold no information).
const MAX_KEYS: usize = 100_000;

impl Buckets {
    fn new(name: &'static str, capacity: u32, per_second: f64) -> Buckets {
        Buckets { name, capacity: f64::from(capacity.max(1)), per_second, buckets: Mutex::new(HashMap::new()) }
    }

    /// Seconds until a token is there, or `None` if one is there now. `take` spends it.
    async fn check(&self, shared: Option<&dyn SharedLimits>, key: &str, take: bool) -> Result<Option<u64>, StoreError> {
        let Some(shared) = shared else { return Ok(self.check_here(key, take)) };
        let tokens = shared.bucket(digest(&[self.name, key]), self.capacity, self.per_second, take).await?;
        Ok((tokens < 1.0).then(|| (((1.0 - tokens) / self.per_second).ceil() as u64).max(1)))
    }

    fn check_here(&self, key: &str, take: bool) -> Option<u64> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() > MAX_KEYS {
            let (capacity, rate) = (self.capacity, self.per_second);
            buckets
                .retain(|_, bucket| bucket.tokens + now.duration_since(bucket.updated).as_secs_f64() * rate < capacity);
        }
        let bucket = buckets.entry(key.to_owned()).or_insert(Bucket::full(self.capacity));
        bucket.check(self.capacity, self.per_second, take).map(|wait| wait.as_secs().max(1))
    }
}

/// The limits in force.
pub struct Limits {
    per_ip: Buckets,
    /// Failed logins by account and client address together.
    failed_logins: Buckets,
    /// Failed logins by account, from every address that never signed in to it.
    failed_account: Buckets,
    /// Wrong second-factor codes by user.
    failed_codes: Buckets,
    /// Addresses each account signed in from lately: they keep trying when strangers have
    /// used up the account's budget.
    known: Mutex<HashMap<String, Vec<(String, Instant)>>>,
    trusted_proxies: usize,
    shared: Option<Arc<dyn SharedLimits>>,
}

/// How long an address that signed in stays known for its account.
const KNOWN_FOR: Duration = Duration::from_secs(30 * 86_400);

/// Addresses remembered per account.
const KNOWN_PER_ACCOUNT: usize = 16;

impl Limits {
    /// Limits kept in `shared` when given, else in this node's memory.
    pub fn new(config: &RateLimitConfig, shared: Option<Arc<dyn SharedLimits>>) -> Limits {
        let window = config.failed_login_window_seconds.max(1) as f64;
        let per_window = |name, count: u32| Buckets::new(name, count, f64::from(count.max(1)) / window);
        Limits {
            per_ip: Buckets::new("ip", config.per_ip_burst, f64::from(config.per_ip_per_minute.max(1)) / 60.0),
            failed_logins: per_window("login", config.failed_logins),
            failed_account: per_window("account", config.failed_logins_per_account),
            failed_codes: per_window("code", config.failed_mfa_codes),
            known: Mutex::new(HashMap::new()),
            trusted_proxies: config.trusted_proxies.max(usize::from(config.trust_forwarded_for)),
            shared,
        }
    }

    fn shared(&self) -> Option<&dyn SharedLimits> {
        self.shared.as_deref()
    }

    /// The client's address: the peer's, or behind `trusted_proxies` proxies the entry of
    /// `X-Forwarded-For` the outermost one wrote (the right-most entries are the proxies'
    /// own; everything left of the client's entry is the client's to write).
    pub fn client_address(&self, peer: std::net::IpAddr, forwarded_for: &[&str]) -> String {
        if self.trusted_proxies == 0 {
            return peer.to_string();
        }
        let hops: Vec<&str> = forwarded_for
            .iter()
            .flat_map(|value| value.split(','))
            .map(str::trim)
            .filter(|hop| !hop.is_empty())
            .collect();
        // With N proxies the last N - 1 entries name proxies, the one before the client.
        match hops.len().checked_sub(self.trusted_proxies) {
            Some(index) => hops[index].to_owned(),
            // Fewer entries than proxies: the request did not come through all of them.
            None => hops.first().map_or_else(|| peer.to_string(), |hop| (*hop).to_owned()),
        }
    }

    /// Spends one request of this IP's budget.
    pub async fn check_ip(&self, ip: &str) -> Result<(), super::Error> {
        match self.per_ip.check(self.shared(), ip, true).await? {
            None => Ok(()),
            Some(seconds) => Err(limited("too many sign-in requests from this address", seconds)),
        }
    }

    /// Whether this account may try to log in from `address` now.
    pub async fn check_login(&self, email: &str, address: &str) -> Result<(), super::Error> {
        if let Some(seconds) = self.failed_logins.check(self.shared(), &pair(email, address), false).await? {
            return Err(limited("too many failed logins for this account from this address", seconds));
        }
        if !self.is_known(email, address).await?
            && let Some(seconds) = self.failed_account.check(self.shared(), email, false).await?
        {
            return Err(limited("too many failed logins for this account", seconds));
        }
        Ok(())
    }

    pub async fn record_login_failure(&self, email: &str, address: &str) -> Result<(), super::Error> {
        self.failed_logins.check(self.shared(), &pair(email, address), true).await?;
        if !self.is_known(email, address).await? {
            self.failed_account.check(self.shared(), email, true).await?;
        }
        Ok(())
    }

    /// Remembers that `address` signed in to this account.
    pub async fn record_sign_in(&self, email: &str, address: &str) -> Result<(), super::Error> {
        if let Some(shared) = self.shared() {
            return Ok(shared.remember(digest(&[email]), digest(&[address])).await?);
        }
        self.remember_here(email, address);
        Ok(())
    }

    fn remember_here(&self, email: &str, address: &str) {
        let now = Instant::now();
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        if known.len() >= MAX_KEYS && !known.contains_key(email) {
            known.retain(|_, seen| seen.iter().any(|(_, at)| now.duration_since(*at) < KNOWN_FOR));
            if known.len() >= MAX_KEYS {
                return;
            }
        }
        let seen = known.entry(email.to_owned()).or_default();
        seen.retain(|(other, at)| other != address && now.duration_since(*at) < KNOWN_FOR);
        if seen.len() >= KNOWN_PER_ACCOUNT {
            seen.remove(0);
        }
        seen.push((address.to_owned(), now));
    }

    async fn is_known(&self, email: &str, address: &str) -> Result<bool, super::Error> {
        if let Some(shared) = self.shared() {
            return Ok(shared.known(digest(&[email]), digest(&[address]), KNOWN_FOR).await?);
        }
        Ok(self.is_known_here(email, address))
    }

    fn is_known_here(&self, email: &str, address: &str) -> bool {
        let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        known.get(email).is_some_and(|seen| seen.iter().any(|(other, at)| other == address && at.elapsed() < KNOWN_FOR))
    }

    /// Whether this user may try a second-factor code now.
    pub async fn check_code(&self, uid: &str) -> Result<(), super::Error> {
        match self.failed_codes.check(self.shared(), uid, false).await? {
            None => Ok(()),
            Some(seconds) => Err(limited("too many wrong codes for this account", seconds)),
        }
    }

    pub async fn record_code_failure(&self, uid: &str) -> Result<(), super::Error> {
        self.failed_codes.check(self.shared(), uid, true).await?;
        Ok(())
    }
}

fn pair(email: &str, address: &str) -> String {
    format!("{email}\u{0}{address}")
}

fn limited(message: &str, seconds: u64) -> super::Error {
    super::Error::RateLimited { message: format!("{message}; retry in {seconds} s"), retry_after_seconds: seconds }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_says_when_to_retry() {
        let buckets = Buckets::new("test", 3, 1.0 / 60.0);
        for _ in 0..3 {
            assert_eq!(buckets.check_here("a", true), None);
        }
        let wait = buckets.check_here("a", true).expect("empty");
        assert!((1..=60).contains(&wait), "{wait}");
        assert_eq!(buckets.check_here("b", true), None, "keys do not share a bucket");
    }

    #[test]
    fn the_client_address_is_the_hop_the_outermost_trusted_proxy_wrote() {
        let peer: std::net::IpAddr = "10.0.0.1".parse().expect("ip");
        let limits =
            |proxies| Limits::new(&RateLimitConfig { trusted_proxies: proxies, ..RateLimitConfig::default() }, None);
        assert_eq!(limits(0).client_address(peer, &["1.1.1.1"]), "10.0.0.1");
        assert_eq!(limits(1).client_address(peer, &["6.6.6.6, 2.2.2.2"]), "2.2.2.2");
        assert_eq!(limits(2).client_address(peer, &["6.6.6.6", "2.2.2.2, 10.0.0.9"]), "2.2.2.2");
        assert_eq!(limits(1).client_address(peer, &[]), "10.0.0.1");
    }
}
