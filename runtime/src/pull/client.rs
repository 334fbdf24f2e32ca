//! The namespace data plane as a client calls it (api-version
//! `2024-06-01`): a long-polling receive and the settle calls, with the key
//! as `Authorization: SharedAccessKey`, or an Entra token as
//! `Authorization: Bearer` ([`super::token`]). Speaks to Azure and to a
//! gridfn serving `[namespace]` alike.

use std::time::Duration;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::config::{Credential, Pull};
use super::token::TokenSource;
use crate::namespace::broker::Settle;

const API_VERSION: &str = "2024-06-01";

/// Extra time a receive's HTTP call gets beyond its `maxWaitTime`.
const RECEIVE_SLACK: Duration = Duration::from_secs(30);

/// One subscription's data plane.
pub struct Client {
    http: reqwest::Client,
    /// `{endpoint}/topics/{topic}/eventsubscriptions/{subscription}`.
    base: String,
    authorization: Authorization,
}

/// What goes in each call's `Authorization` header.
enum Authorization {
    /// `SharedAccessKey KEY`, always the same.
    Key(String),
    /// `Bearer <token>`, the token cached until near its expiry.
    Entra(Box<TokenSource>),
}

/// One received event.
#[derive(Debug, Deserialize)]
pub struct Delivery {
    #[serde(rename = "brokerProperties")]
    pub broker: BrokerProperties,
    pub event: Box<RawValue>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BrokerProperties {
    pub lock_token: String,
    pub delivery_count: u32,
}

/// A settle call's answer. Azure answers 200 even when tokens failed, so
/// the failures are here, not in an error.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Settled {
    pub succeeded_lock_tokens: Vec<String>,
    pub failed_lock_tokens: Vec<FailedLockToken>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FailedLockToken {
    pub lock_token: String,
    pub error: ErrorDetail,
}

#[derive(Debug, Deserialize)]
pub struct ErrorDetail {
    #[serde(default)]
    pub code: String,
    #[serde(default)]
    pub message: String,
}

impl Client {
    pub fn new(pull: &Pull) -> Client {
        let endpoint = pull.endpoint.as_str().trim_end_matches('/');
        Client {
            http: reqwest::Client::new(),
            base: format!("{endpoint}/topics/{}/eventsubscriptions/{}", pull.topic, pull.subscription),
            authorization: match &pull.credential {
                Credential::Key(key) => Authorization::Key(format!("SharedAccessKey {key}")),
                Credential::Entra(credentials) => Authorization::Entra(Box::new(TokenSource::new(credentials))),
            },
        }
    }

    /// The `Authorization` header of the next call.
    async fn authorization(&self) -> anyhow::Result<String> {
        match &self.authorization {
            Authorization::Key(header) => Ok(header.clone()),
            Authorization::Entra(tokens) => Ok(format!("Bearer {}", tokens.token().await?)),
        }
    }

    /// Up to `max_events` events, after waiting up to `max_wait` for the first.
    pub async fn receive(&self, max_events: u32, max_wait: Duration) -> anyhow::Result<Vec<Delivery>> {
        #[derive(Deserialize)]
        struct Received {
            value: Vec<Delivery>,
        }
        let url = format!(
            "{}:receive?api-version={API_VERSION}&maxEvents={max_events}&maxWaitTime={}",
            self.base,
            max_wait.as_secs()
        );
        let response = self.post(&url, "{}".into(), max_wait + RECEIVE_SLACK).await?;
        Ok(serde_json::from_slice::<Received>(&response)?.value)
    }

    pub async fn settle(&self, settle: Settle, tokens: &[String]) -> anyhow::Result<Settled> {
        let (operation, query) = match settle {
            Settle::Acknowledge => ("acknowledge", String::new()),
            Settle::Reject => ("reject", String::new()),
            Settle::RenewLock => ("renewLock", String::new()),
            Settle::Release { delay } => ("release", format!("&releaseDelayInSeconds={}", delay.as_secs())),
        };
        let url = format!("{}:{operation}?api-version={API_VERSION}{query}", self.base);
        let body = serde_json::to_string(&serde_json::json!({ "lockTokens": tokens }))?;
        let response = self.post(&url, body, RECEIVE_SLACK).await?;
        Ok(serde_json::from_slice(&response)?)
    }

    /// POSTs `body`; the response body on 200, else an error naming the
    /// status and Azure's error code.
    async fn post(&self, url: &str, body: String, timeout: Duration) -> anyhow::Result<bytes::Bytes> {
        let response = (self.http.post(url))
            .header("authorization", self.authorization().await?)
            .header("content-type", "application/json; charset=utf-8")
            .body(body)
            .timeout(timeout)
            .send()
            .await?;
        let status = response.status();
        let code = response.headers().get("broker-errorcode").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let body = response.bytes().await?;
        if let (401, Authorization::Entra(tokens)) = (status.as_u16(), &self.authorization) {
            tokens.forget().await;
        }
        match status.as_u16() {
            200 => Ok(body),
            _ => anyhow::bail!(
                "{url}: {status} {}: {}",
                code.unwrap_or_default(),
                String::from_utf8_lossy(&body[..body.len().min(512)])
            ),
        }
    }
}
