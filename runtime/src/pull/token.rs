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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// An authority on loopback that grants tokens `t1`, `t2`, … living
    /// `lifetime` seconds to client `good`, and refuses any other client.
    async fn authority(lifetime: u64) -> (ClientCredentials, Arc<AtomicUsize>) {
        let granted = Arc::new(AtomicUsize::new(0));
        let count = granted.clone();
        let app = axum::Router::new().route(
            "/tenant-1/oauth2/v2.0/token",
            axum::routing::post(move |body: String| {
                let count = count.clone();
                async move {
                    if !body.contains("client_id=good") || !body.contains("grant_type=client_credentials") {
                        let refusal =
                            r#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret."}"#;
                        return (axum::http::StatusCode::UNAUTHORIZED, refusal.to_owned());
                    }
                    let n = count.fetch_add(1, Ordering::SeqCst) + 1;
                    (axum::http::StatusCode::OK, format!(r#"{{"access_token":"t{n}","expires_in":{lifetime}}}"#))
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let credentials = ClientCredentials {
            tenant_id: "tenant-1".into(),
            client_id: "good".into(),
            client_secret: "s".into(),
            authority_host: url.parse().unwrap(),
        };
        (credentials, granted)
    }

    #[tokio::test]
    async fn a_token_is_reused_until_near_expiry_and_fetched_again_when_forgotten() {
        let (credentials, granted) = authority(3600).await;
        let tokens = TokenSource::new(&credentials);
        assert_eq!(tokens.token().await.unwrap(), "t1");
        assert_eq!(tokens.token().await.unwrap(), "t1");
        assert_eq!(granted.load(Ordering::SeqCst), 1, "cached");
        tokens.forget().await;
        assert_eq!(tokens.token().await.unwrap(), "t2", "a refused token is not used again");
    }

    #[tokio::test]
    async fn a_short_lived_token_is_reused_for_half_its_life() {
        let (credentials, _) = authority(2).await;
        let tokens = TokenSource::new(&credentials);
        assert_eq!(tokens.token().await.unwrap(), "t1");
        assert_eq!(tokens.token().await.unwrap(), "t1");
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(tokens.token().await.unwrap(), "t2");
    }

    #[tokio::test]
    async fn a_refusal_names_the_authoritys_error_and_never_the_secret() {
        let (mut credentials, _) = authority(3600).await;
        credentials.client_id = "bad".into();
        credentials.client_secret = "very-secret".into();
        let error = TokenSource::new(&credentials).token().await.unwrap_err().to_string();
        assert!(error.contains("invalid_client") && error.contains("AADSTS7000215"), "{error}");
        assert!(!error.contains("very-secret"), "{error}");
    }
}
