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

    /// The callback URL of a provider, from `public_url` or the request's own origin.
    pub fn redirect_uri(&self, name: &str, origin: &str) -> String {
        let base = self.config.public_url.as_deref().unwrap_or(origin).trim_end_matches('/');
        format!("{base}/v1/auth/oauth/{name}/callback")
    }

    /// Whether the app may be sent to `url` with its tokens.
    pub fn allows_redirect(&self, url: &str) -> bool {
        self.config.allowed_redirects.iter().any(|prefix| url.starts_with(prefix.as_str()))
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
        redirect_uri: String,
        redirect_to: Option<String>,
    ) -> Result<(String, String, Pending), Error> {
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
        let pending = Pending { provider: name.to_owned(), verifier, nonce, redirect_uri, redirect_to };
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
