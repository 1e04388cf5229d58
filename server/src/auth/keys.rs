//! The Ed25519 keys that sign access tokens: made and kept in the database, published as
//! a JWKS so any service can verify a token without a shared secret. The newest key
//! signs; retired keys stay published (and accepted) until every token they signed has
//! expired.

use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{DecodingKey, EncodingKey};

use super::repo::KeyRecord;

/// PKCS#8 v1 prefix of an Ed25519 private key (RFC 8410): the 32-byte seed follows.
const PKCS8_ED25519_PREFIX: [u8; 16] =
    [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];

/// A fresh key, ready to store.
pub fn generate(now: i64) -> KeyRecord {
    let seed: [u8; 32] = rand::random();
    let signing = ed25519_dalek::SigningKey::from_bytes(&seed);
    let mut private_key = PKCS8_ED25519_PREFIX.to_vec();
    private_key.extend_from_slice(&seed);
    let kid_bytes: [u8; 12] = rand::random();
    KeyRecord {
        kid: URL_SAFE_NO_PAD.encode(kid_bytes),
        private_key,
        public_key: signing.verifying_key().to_bytes().to_vec(),
        created_at: now,
        retired_at: None,
    }
}

/// The keys in force: one to sign, all still valid to verify.
pub struct KeySet {
    signing: Option<(String, EncodingKey)>,
    verifying: HashMap<String, DecodingKey>,
    jwks: String,
}

impl KeySet {
    /// Builds the set from stored keys. A retired key is kept only while tokens it signed
    /// can still be valid (`token_lifetime` plus leeway after it retired).
    pub fn from_records(records: &[KeyRecord], now: i64, token_lifetime_micros: i64) -> KeySet {
        let live: Vec<&KeyRecord> = records
            .iter()
            .filter(|key| key.retired_at.is_none_or(|retired| retired + token_lifetime_micros > now))
            .collect();
        let signing = records
            .iter()
            .filter(|key| key.retired_at.is_none())
            .max_by_key(|key| key.created_at)
            .map(|key| (key.kid.clone(), EncodingKey::from_ed_der(&key.private_key)));
        let verifying = live.iter().map(|key| (key.kid.clone(), DecodingKey::from_ed_der(&key.public_key))).collect();
        let jwks = serde_json::json!({
            "keys": live.iter().map(|key| serde_json::json!({
                "kty": "OKP",
                "crv": "Ed25519",
                "x": URL_SAFE_NO_PAD.encode(&key.public_key),
                "kid": key.kid,
                "alg": "EdDSA",
                "use": "sig",
            })).collect::<Vec<_>>()
        })
        .to_string();
        KeySet { signing, verifying, jwks }
    }

    /// The key that signs new tokens, with its id.
    pub fn signing(&self) -> Option<(&str, &EncodingKey)> {
        self.signing.as_ref().map(|(kid, key)| (kid.as_str(), key))
    }

    /// The key with this id, if it may still verify tokens.
    pub fn verifying(&self, kid: &str) -> Option<&DecodingKey> {
        self.verifying.get(kid)
    }

    /// `/.well-known/jwks.json`.
    pub fn jwks(&self) -> &str {
        &self.jwks
    }
}
