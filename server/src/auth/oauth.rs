//! OAuth2/OIDC sign-in with any provider that publishes a discovery document: the
//! authorization-code flow with PKCE (S256), `state` and `nonce` checks, and ID-token
//! verification against the provider's JWKS.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::Error;
use crate::config::{OAuthConfig, OidcProviderConfig};

/// What a sign-in in flight remembers between the redirect and the callback.
#[derive(Debug, Clone)]
pub struct Pending {
    pub provider: String,
    pub verifier: String,
    pub nonce: String,
    pub redirect_uri: String,
    pub redirect_to: Option<String>,
    /// SHA-256 of the cookie the browser that started the sign-in was given; the
    /// callback must come with it.
    pub binding: [u8; 32],
}

/// Who the provider says signed in.
#[derive(Debug, Clone)]
pub struct Identity {
    pub subject: String,
    pub email: Option<String>,
    pub email_verified: bool,
}

#[derive(Debug, Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
}

#[derive(Debug, Deserialize)]
struct TokenAnswer {
    id_token: String,
}

#[derive(Debug, Deserialize)]
struct IdClaims {
    sub: String,
    #[serde(default)]
    nonce: Option<String>,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    email_verified: Option<serde_json::Value>,
}

/// The configured providers and what was learnt of them.
pub struct OAuth {
    config: OAuthConfig,
    http: reqwest::Client,
    discovered: Mutex<HashMap<String, Arc<Discovery>>>,
    keys: Mutex<HashMap<String, Arc<JwkSet>>>,
}

impl OAuth {
    pub fn new(config: OAuthConfig) -> anyhow::Result<OAuth> {
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(OAuth { config, http, discovered: Mutex::default(), keys: Mutex::default() })
    }

    fn provider(&self, name: &str) -> Result<&OidcProviderConfig, Error> {
        self.config.providers.get(name).ok_or_else(|| Error::NotFound(format!("no OAuth provider `{name}`")))
    }

    /// The callback URL of a provider, under `public_url` (never from the request's
    /// `Host`, which the client writes). Config validation makes `public_url` required
    /// once a provider is configured.
    pub fn redirect_uri(&self, name: &str) -> Result<String, Error> {
        let base =
            self.config.public_url.as_deref().ok_or_else(|| {
                Error::Internal("auth.oauth.public_url is not set, so there is no callback URL".into())
            })?;
        Ok(format!("{}/v1/auth/oauth/{name}/callback", base.trim_end_matches('/')))
    }

    /// Whether the app may be sent to `url` with its tokens: an allowed URL with the same
    /// scheme, host and port, and a path under its path (segment by segment).
    pub fn allows_redirect(&self, url: &str) -> bool {
        let Ok(target) = reqwest::Url::parse(url) else { return false };
        self.config
            .allowed_redirects
            .iter()
            .filter_map(|allowed| reqwest::Url::parse(allowed).ok())
            .any(|allowed| redirect_allowed(&allowed, &target))
    }

    async fn discovery(&self, name: &str) -> Result<Arc<Discovery>, Error> {
        if let Some(found) = self.discovered.lock().unwrap_or_else(|p| p.into_inner()).get(name) {
            return Ok(found.clone());
        }
        let provider = self.provider(name)?;
        let url = format!("{}/.well-known/openid-configuration", provider.issuer.trim_end_matches('/'));
        let discovery: Discovery = self.fetch_json(&url).await?;
        if discovery.issuer.trim_end_matches('/') != provider.issuer.trim_end_matches('/') {
            return Err(Error::Internal(format!("provider `{name}` names another issuer in its discovery document")));
        }
        let discovery = Arc::new(discovery);
        self.discovered.lock().unwrap_or_else(|p| p.into_inner()).insert(name.to_owned(), discovery.clone());
        Ok(discovery)
    }

    async fn fetch_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, Error> {
        let response = self.http.get(url).send().await.map_err(|e| Error::Internal(format!("fetching {url}: {e}")))?;
        if !response.status().is_success() {
            return Err(Error::Internal(format!("fetching {url}: HTTP {}", response.status())));
        }
        response.json().await.map_err(|e| Error::Internal(format!("reading {url}: {e}")))
    }

    /// Starts a sign-in: the provider URL to send the browser to, and what to remember.
    pub async fn start(
        &self,
        name: &str,
        redirect_to: Option<String>,
        binding: [u8; 32],
    ) -> Result<(String, String, Pending), Error> {
        let redirect_uri = self.redirect_uri(name)?;
        let provider = self.provider(name)?;
        let discovery = self.discovery(name).await?;
        let random = super::random_token;
        let (state, verifier, nonce) = (random(), random(), random());
        let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
        let mut url = reqwest::Url::parse(&discovery.authorization_endpoint)
            .map_err(|e| Error::Internal(format!("authorization endpoint: {e}")))?;
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &provider.client_id)
            .append_pair("redirect_uri", &redirect_uri)
            .append_pair("scope", &provider.scopes.join(" "))
            .append_pair("state", &state)
            .append_pair("nonce", &nonce)
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256");
        let pending = Pending { provider: name.to_owned(), verifier, nonce, redirect_uri, redirect_to, binding };
        Ok((url.to_string(), state, pending))
    }

    /// Finishes a sign-in: trades the code for tokens and checks the ID token.
    pub async fn finish(&self, pending: &Pending, code: &str) -> Result<Identity, Error> {
        let provider = self.provider(&pending.provider)?;
        let discovery = self.discovery(&pending.provider).await?;
        let response = self
            .http
            .post(&discovery.token_endpoint)
            .basic_auth(&provider.client_id, Some(provider.client_secret.expose()))
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", pending.redirect_uri.as_str()),
                ("client_id", provider.client_id.as_str()),
                ("code_verifier", pending.verifier.as_str()),
            ])
            .send()
            .await
            .map_err(|e| Error::Internal(format!("token endpoint: {e}")))?;
        if !response.status().is_success() {
            return Err(Error::Unauthenticated(format!("the provider refused the code (HTTP {})", response.status())));
        }
        let answer: TokenAnswer =
            response.json().await.map_err(|e| Error::Unauthenticated(format!("the provider's answer: {e}")))?;
        let claims = self.verify_id_token(&pending.provider, &discovery, provider, &answer.id_token).await?;
        if claims.nonce.as_deref() != Some(pending.nonce.as_str()) {
            return Err(Error::Unauthenticated("the ID token's nonce does not match".into()));
        }
        let email_verified = match claims.email_verified {
            Some(serde_json::Value::Bool(verified)) => verified,
            Some(serde_json::Value::String(text)) => text == "true",
            _ => false,
        };
        Ok(Identity { subject: claims.sub, email: claims.email, email_verified })
    }

    async fn verify_id_token(
        &self,
        name: &str,
        discovery: &Discovery,
        provider: &OidcProviderConfig,
        token: &str,
    ) -> Result<IdClaims, Error> {
        let invalid = |why: &str| Error::Unauthenticated(format!("the provider's ID token is not valid: {why}"));
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid("malformed"))?;
        if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256 | Algorithm::EdDSA | Algorithm::PS256) {
            return Err(invalid("unexpected algorithm"));
        }
        let key = match self.jwk(name, discovery, header.kid.as_deref(), false).await? {
            Some(key) => key,
            // The provider may have rotated its keys since they were fetched.
            None => {
                self.jwk(name, discovery, header.kid.as_deref(), true).await?.ok_or_else(|| invalid("unknown key"))?
            }
        };
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&discovery.issuer]);
        validation.set_audience(&[&provider.client_id]);
        validation.leeway = 60;
        jsonwebtoken::decode::<IdClaims>(token, &key, &validation)
            .map(|data| data.claims)
            .map_err(|e| invalid(&e.to_string()))
    }

    async fn jwk(
        &self,
        name: &str,
        discovery: &Discovery,
        kid: Option<&str>,
        refresh: bool,
    ) -> Result<Option<DecodingKey>, Error> {
        let cached = self.keys.lock().unwrap_or_else(|p| p.into_inner()).get(name).cloned();
        let set = match cached {
            Some(set) if !refresh => set,
            _ => {
                let set: Arc<JwkSet> = Arc::new(self.fetch_json(&discovery.jwks_uri).await?);
                self.keys.lock().unwrap_or_else(|p| p.into_inner()).insert(name.to_owned(), set.clone());
                set
            }
        };
        let jwk = match kid {
            Some(kid) => set.find(kid),
            None if set.keys.len() == 1 => set.keys.first(),
            None => None,
        };
        Ok(jwk.and_then(|jwk| DecodingKey::from_jwk(jwk).ok()))
    }
}

/// Whether `target` lies under `allowed`: scheme, host and port equal, no user info, and
/// the path `allowed`'s path or below it. A string prefix would let
/// `https://app.example.com` admit `https://app.example.com.evil.tld/`.
pub fn redirect_allowed(allowed: &reqwest::Url, target: &reqwest::Url) -> bool {
    if target.scheme() != allowed.scheme()
        || target.host_str() != allowed.host_str()
        || target.port_or_known_default() != allowed.port_or_known_default()
        || !target.username().is_empty()
        || target.password().is_some()
        || target.fragment().is_some()
    {
        return false;
    }
    let (base, path) = (allowed.path(), target.path());
    match path.strip_prefix(base) {
        Some(rest) => base.ends_with('/') || rest.is_empty() || rest.starts_with('/') || base.is_empty(),
        None => false,
    }
}

/// Checks the allow-list and the public URL at start.
pub fn validate(config: &OAuthConfig) -> anyhow::Result<()> {
    if let Some(public) = &config.public_url {
        let url = reqwest::Url::parse(public).map_err(|e| anyhow::anyhow!("auth.oauth.public_url `{public}`: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            anyhow::bail!("auth.oauth.public_url `{public}` is not an http(s) URL with a host");
        }
    } else if !config.providers.is_empty() {
        anyhow::bail!(
            "auth.oauth.public_url is required once a provider is configured: it is the URL users reach this server at, and the provider sends them back under it"
        );
    }
    for allowed in &config.allowed_redirects {
        let url = reqwest::Url::parse(allowed)
            .map_err(|e| anyhow::anyhow!("auth.oauth.allowed_redirects `{allowed}`: {e}"))?;
        if url.host_str().is_none_or(str::is_empty) {
            anyhow::bail!(
                "auth.oauth.allowed_redirects `{allowed}` needs a host (`https://app.example.com/…`, `myapp://callback`)"
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allows(allowed: &str, target: &str) -> bool {
        redirect_allowed(&reqwest::Url::parse(allowed).expect("allowed"), &reqwest::Url::parse(target).expect("target"))
    }

    #[test]
    fn redirects_are_compared_as_urls_not_strings() {
        assert!(allows("https://app.example.com", "https://app.example.com/"));
        assert!(allows("https://app.example.com", "https://app.example.com/signed-in?x=1"));
        assert!(allows("https://app.example.com/auth", "https://app.example.com/auth/done"));
        assert!(allows("myapp://signed-in", "myapp://signed-in"));
        assert!(!allows("https://app.example.com", "https://app.example.com.evil.tld/"));
        assert!(!allows("https://app.example.com", "https://app.example.com@evil.tld/"));
        assert!(!allows("https://app.example.com", "https://user@app.example.com/"));
        assert!(!allows("https://app.example.com", "http://app.example.com/"));
        assert!(!allows("https://app.example.com", "https://app.example.com:8443/"));
        assert!(!allows("https://app.example.com/auth", "https://app.example.com/authx"));
        assert!(!allows("https://app.example.com/auth", "https://app.example.com/"));
        assert!(!allows("myapp://signed-in", "myapp://signed-in.evil"));
        assert!(!allows("https://app.example.com", "https://app.example.com/#already"));
    }
}
