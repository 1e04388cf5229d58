//! TOTP (RFC 6238: SHA-1, 6 digits, 30 s steps, one step of clock skew either way) and
//! recovery codes.

use totp_rs::{Builder, Secret, Totp};

use super::Error;

/// Issuer shown in authenticator apps.
const ISSUER: &str = "Hearth";

fn totp(secret: &[u8], account: &str) -> Result<Totp, Error> {
    Builder::new()
        .with_secret(Secret::new(secret.to_vec().into_boxed_slice()))
        .with_account_name(account)
        .with_issuer(Some(ISSUER))
        .build()
        .map_err(|error| Error::Internal(format!("TOTP: {error}")))
}

/// A fresh 160-bit secret, its base32 form and its `otpauth://` URI.
pub fn new_secret(account: &str) -> Result<(Vec<u8>, String, String), Error> {
    let secret: [u8; 20] = rand::random();
    let generator = totp(&secret, account)?;
    let uri = generator.to_url().map_err(|error| Error::Internal(format!("TOTP URI: {error}")))?;
    Ok((secret.to_vec(), generator.secret().to_base32(), uri))
}

/// The time step `code` is valid for now, if any.
pub fn check(secret: &[u8], code: &str) -> Option<i64> {
    let generator = totp(secret, "user").ok()?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).ok()?.as_secs();
    generator.check(code.trim(), now).map(|step| step as i64)
}

/// Ten fresh recovery codes, `xxxxx-xxxxx` from an unambiguous alphabet.
pub fn recovery_codes() -> Vec<String> {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";
    let mut rng = rand::rng();
    (0..10)
        .map(|_| {
            let mut code: String = (0..10).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char).collect();
            code.insert(5, '-');
            code
        })
        .collect()
}
