//! Entra ID access tokens for a `[[pull]]` that authenticates with client
//! credentials: the OAuth 2.0 client-credentials grant (`POST
//! {authority_host}/{tenant}/oauth2/v2.0/token`, form-encoded `client_id`,
//! `client_secret`, `scope=https://eventgrid.azure.net/.default`), as
//! Azure's `ClientSecretCredential` does it.
//!
//! A token is reused until it nears expiry (five minutes before, or half
//! its lifetime for a short-lived one), so a consumer asks the authority
//! about once an hour, not once per call. A 401 from the namespace drops the
//! cached token ([`TokenSource::forget`]) so the next call gets a new one.
//! Failures name the authority's `error` and `error_description` (never
//! the secret).

use std::time::{Duration, Instant};

use serde::Deserialize;

use super::config::ClientCredentials;

/// The scope of every Event Grid data-plane token.
pub const SCOPE: &str = "https://eventgrid.azure.net/.default";

/// Refresh this long before a token expires.
const REFRESH_MARGIN: Duration = Duration::from_secs(5 * 60);

/// Whole-request timeout for one token request.
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);

/// Gets and caches the tokens of one set of client credentials.
pub struct TokenSource {
    http: reqwest::Client,
    /// `{authority_host}/{tenant}/oauth2/v2.0/token`.
    url: String,
    credentials: ClientCredentials,
    /// The token and when to stop using it; a mutex held across the fetch,
    /// so concurrent calls wait for one request instead of each sending one.
    cached: tokio::sync::Mutex<Option<(String, Instant)>>,
}

impl TokenSource {
    pub fn new(credentials: &ClientCredentials) -> TokenSource {
        let authority = credentials.authority_host.as_str().trim_end_matches('/');
        TokenSource {
            http: reqwest::Client::new(),
            url: format!("{authority}/{}/oauth2/v2.0/token", credentials.tenant_id),
            credentials: credentials.clone(),
            cached: tokio::sync::Mutex::new(None),
        }
    }

    /// A token valid for a while yet: the cached one, or a new one.
    pub async fn token(&self) -> anyhow::Result<String> {
        let mut cached = self.cached.lock().await;
        if let Some((token, until)) = &*cached
            && Instant::now() < *until
        {
            return Ok(token.clone());
        }
        let (token, lifetime) = self.fetch().await?;
        let reuse_for = lifetime.saturating_sub(REFRESH_MARGIN).max(lifetime / 2);
        *cached = Some((token.clone(), Instant::now() + reuse_for));
        Ok(token)
    }

    /// Drops the cached token (the namespace refused it).
    pub async fn forget(&self) {
        *self.cached.lock().await = None;
    }

    /// One client-credentials request: the token and its lifetime.
    async fn fetch(&self) -> anyhow::Result<(String, Duration)> {
        #[derive(Deserialize)]
        struct Granted {
            access_token: String,
            expires_in: u64,
        }
        #[derive(Deserialize, Default)]
        struct Refused {
            #[serde(default)]
            error: String,
            #[serde(default)]
            error_description: String,
        }
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", &self.credentials.client_id),
            ("client_secret", &self.credentials.client_secret),
            ("scope", SCOPE),
        ];
        let response = self.http.post(&self.url).form(&form).timeout(FETCH_TIMEOUT).send().await?;
        let status = response.status();
        let body = response.bytes().await?;
        if !status.is_success() {
            let refused: Refused = serde_json::from_slice(&body).unwrap_or_default();
            anyhow::bail!(
                "Entra token request to {} for client {} refused: {status} {}: {}",
                self.url,
                self.credentials.client_id,
                refused.error,
                refused.error_description
            );
        }
        let granted: Granted = serde_json::from_slice(&body)
            .map_err(|e| anyhow::anyhow!("Entra token answer from {} is not a token: {e}", self.url))?;
        tracing::debug!(client_id = %self.credentials.client_id, "got an Entra token valid for {}s", granted.expires_in);
        Ok((granted.access_token, Duration::from_secs(granted.expires_in)))
    }
}
