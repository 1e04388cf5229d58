//! Authenticated encryption for what leaves the server opaque (query cursors) and for the
//! secrets it keeps at rest (signing keys, TOTP secrets).
//!
//! XChaCha20-Poly1305 with a fresh random nonce per message, so one key seals any number of
//! values safely. Every value is sealed under a *context* (what it is and where it lives),
//! bound in as associated data: a value sealed as one user's TOTP secret does not open as
//! another's, and a cursor issued for one query does not open for another.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

const NONCE_BYTES: usize = 24;

/// One key's cipher.
#[derive(Clone)]
pub struct Sealer {
    cipher: XChaCha20Poly1305,
}

impl Sealer {
    pub fn new(key: &[u8; 32]) -> Sealer {
        Sealer { cipher: XChaCha20Poly1305::new(key.into()) }
    }

    /// `nonce ‖ ciphertext ‖ tag`.
    pub fn seal(&self, plaintext: &[u8], context: &[u8]) -> Vec<u8> {
        let nonce: [u8; NONCE_BYTES] = rand::random();
        let sealed = self
            .cipher
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: plaintext, aad: context })
            .expect("XChaCha20-Poly1305 seals any message that fits in memory");
        let mut out = Vec::with_capacity(NONCE_BYTES + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// The plaintext, or `None` when `sealed` was not sealed by this key under `context`.
    pub fn open(&self, sealed: &[u8], context: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < NONCE_BYTES {
            return None;
        }
        let (nonce, body) = sealed.split_at(NONCE_BYTES);
        self.cipher.decrypt(XNonce::from_slice(nonce), Payload { msg: body, aad: context }).ok()
    }
}

/// The at-rest key and the keys it replaced: values are sealed with the current key and
/// opened with whichever key sealed them, so a rotation needs no downtime. At start the
/// server seals again every value a previous key opened (see `auth::repo::Repo::reseal`).
#[derive(Clone)]
pub struct Keyring {
    current: Sealer,
    previous: Vec<Sealer>,
}

/// What opening a stored secret found.
#[derive(Debug, PartialEq, Eq)]
pub enum Opened {
    /// Sealed with the current key.
    Current(Vec<u8>),
    /// Sealed with a previous key: to be sealed again with the current one.
    Stale(Vec<u8>),
}

impl Opened {
    pub fn into_inner(self) -> Vec<u8> {
        match self {
            Opened::Current(value) | Opened::Stale(value) => value,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error(
    "a secret stored in the database opens with none of the configured keys: restore the key it was sealed with \
     (`hearth.key` in the project dir, or `encryption_key`), or list it in `previous_encryption_keys`"
)]
pub struct WrongKey;

impl Keyring {
    pub fn new(current: [u8; 32], previous: &[[u8; 32]]) -> Keyring {
        Keyring { current: Sealer::new(&current), previous: previous.iter().map(Sealer::new).collect() }
    }

    pub fn seal(&self, plaintext: &[u8], context: &str) -> Vec<u8> {
        self.current.seal(plaintext, context.as_bytes())
    }

    pub fn open(&self, sealed: &[u8], context: &str) -> Result<Opened, WrongKey> {
        if let Some(plain) = self.current.open(sealed, context.as_bytes()) {
            return Ok(Opened::Current(plain));
        }
        self.previous.iter().find_map(|key| key.open(sealed, context.as_bytes())).map(Opened::Stale).ok_or(WrongKey)
    }
}

/// A 32-byte key from its configured spelling: 64 hex digits or 43 base64url characters.
pub fn parse_key(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    let bytes = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        (0..32).map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()).collect::<Option<Vec<u8>>>()?
    } else {
        URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')).ok()?
    };
    bytes.try_into().ok()
}

/// A fresh key in the spelling `parse_key` reads.
pub fn new_key_text() -> String {
    let key: [u8; 32] = rand::random();
    key.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_under_their_context_and_key() {
        let sealer = Sealer::new(&[1; 32]);
        let sealed = sealer.seal(b"secret", b"here");
        assert_eq!(sealer.open(&sealed, b"here").as_deref(), Some(&b"secret"[..]));
        assert_eq!(sealer.open(&sealed, b"there"), None);
        assert_eq!(Sealer::new(&[2; 32]).open(&sealed, b"here"), None);
        let mut tampered = sealed.clone();
        *tampered.last_mut().expect("non-empty") ^= 1;
        assert_eq!(sealer.open(&tampered, b"here"), None);
        assert_ne!(sealer.seal(b"secret", b"here"), sealed, "a fresh nonce per message");
    }

    #[test]
    fn a_keyring_opens_old_values_and_marks_them_stale() {
        let old = Keyring::new([1; 32], &[]);
        let sealed_old = old.seal(b"totp", "user:1");
        let rotated = Keyring::new([2; 32], &[[1; 32]]);
        assert_eq!(rotated.open(&sealed_old, "user:1").expect("previous key"), Opened::Stale(b"totp".to_vec()));
        let sealed_new = rotated.seal(b"totp", "user:1");
        assert_eq!(rotated.open(&sealed_new, "user:1").expect("current key"), Opened::Current(b"totp".to_vec()));
        assert!(Keyring::new([3; 32], &[]).open(&sealed_new, "user:1").is_err());
        assert!(rotated.open(&sealed_new, "user:2").is_err());
        assert!(rotated.open(b"plaintext", "user:1").is_err());
    }

    #[test]
    fn keys_parse_from_hex_or_base64url() {
        let text = new_key_text();
        let key = parse_key(&text).expect("hex");
        assert_eq!(parse_key(&URL_SAFE_NO_PAD.encode(key)), Some(key));
        assert_eq!(parse_key("short"), None);
        assert_eq!(parse_key(&"g".repeat(64)), None);
    }
}
