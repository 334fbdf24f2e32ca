//! The Azure Blob Storage dead-letter store: the same blobs the folder store
//! writes (`<SUBSCRIPTION>/<yyyy>/<m>/<d>/<h>/<uuid>.json`, a JSON array with
//! one record), in an Azure Storage container, where Event Grid's own
//! dead-letter tooling and `gridfn replay` read them.
//!
//! gridfn builds the record and the name; this module only names the blob
//! inside the configured container (and optional prefix), uploads, lists and
//! reads. A `put` returns only once Azure has acknowledged the Put Blob, which
//! it does only after the blob is committed.
//!
//! Transport, signing, and retries of transient failures are `object_store`'s
//! (`azure` feature); every call is also bounded as a whole ([`OP_TIMEOUT`]).
//! `object_store` has no container operations, so two requests are signed
//! here, with its own HTTP client and authorizer: Create Container, and a
//! one-result List Blobs that asks whether the container exists (through
//! `object_store`, a failed listing is `Generic`, its status only in the text).
//! Errors are told apart by `object_store`'s variants and by those statuses,
//! never by error text.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use object_store::azure::{AzureAccessKey, AzureAuthorizer, AzureCredential, MicrosoftAzure, MicrosoftAzureBuilder};
use object_store::client::{HttpClient, HttpConnector, HttpError, HttpErrorKind, HttpRequestBody, ReqwestConnector};
use object_store::path::Path;
use object_store::{
    Attribute, Attributes, BackoffConfig, ClientOptions, CredentialProvider, ObjectStore, ObjectStoreExt, PutMode,
    PutOptions, PutPayload, RetryConfig, StaticCredentialProvider,
};
use url::Url;

/// The most one call (`put`, `get`, one page of `list`, a container request)
/// may take, retries included. Past it the call fails; for `put` that means
/// the event was not dead-lettered and the caller must not acknowledge it.
pub const OP_TIMEOUT: Duration = Duration::from_secs(20);
/// How long `object_store` keeps retrying transient failures (then the last
/// attempt may still run up to [`REQUEST_TIMEOUT`], inside [`OP_TIMEOUT`]).
const RETRY_TIMEOUT: Duration = Duration::from_secs(12);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(8);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Azurite's (and the legacy storage emulator's) published development account.
pub(crate) const DEV_ACCOUNT: &str = "devstoreaccount1";
pub(crate) const DEV_ACCOUNT_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
const DEV_BLOB_ENDPOINT: &str = "http://127.0.0.1:10000/devstoreaccount1";

/// `[deadletter]` for `store = "azure-blob"` (gridfn removes `store` first).
#[derive(Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AzureBlobConfig {
    /// The container the blobs go in (3-63 lower-case letters, digits, hyphens).
    pub container: String,
    /// Optional folder inside the container, e.g. `gridfn/deadletter`.
    pub prefix: Option<String>,
    /// A storage connection string (already resolved from `env:` by gridfn).
    pub connection_string: Option<String>,
    /// Storage account name, with `access_key` or `sas_token`.
    pub account: Option<String>,
    /// The account's shared key (base64).
    pub access_key: Option<String>,
    /// A SAS token (`sv=...&sig=...`, a leading `?` is fine).
    pub sas_token: Option<String>,
    /// Blob service endpoint override, e.g. `http://127.0.0.1:10000/devstoreaccount1`
    /// for Azurite; default `https://<account>.blob.core.windows.net`.
    pub endpoint: Option<String>,
    /// Create the container at start (and on a put that finds it missing).
    #[serde(default)]
    pub create_container: bool,
}

/// Secrets are never printed.
impl fmt::Debug for AzureBlobConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secret = |s: &Option<String>| s.as_ref().map(|_| "<redacted>");
        f.debug_struct("AzureBlobConfig")
            .field("container", &self.container)
            .field("prefix", &self.prefix)
            .field("connection_string", &secret(&self.connection_string))
            .field("account", &self.account)
            .field("access_key", &secret(&self.access_key))
            .field("sas_token", &secret(&self.sas_token))
            .field("endpoint", &self.endpoint)
            .field("create_container", &self.create_container)
            .finish()
    }
}

impl AzureBlobConfig {
    /// Everything wrong with this table, each naming its key; empty when usable.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.container.trim().is_empty() {
            problems.push("container: required (the Azure Storage container for dead-lettered events)".to_string());
        } else if !valid_container_name(&self.container) {
            problems.push(format!(
                "container: \"{}\" is not a valid container name: use 3-63 lower-case letters, digits and single \
                 hyphens, starting and ending with a letter or digit",
                self.container
            ));
        }
        if let Some(prefix) = &self.prefix
            && let Err(why) = normalize_prefix(prefix)
        {
            problems.push(format!("prefix: {why}"));
        }
        if let Some(endpoint) = &self.endpoint
            && let Err(why) = parse_endpoint(endpoint)
        {
            problems.push(format!("endpoint: {why}"));
        }
        let blank = |s: &Option<String>| s.as_deref().is_some_and(|s| s.trim().is_empty());
        for (key, value) in [
            ("connection_string", &self.connection_string),
            ("account", &self.account),
            ("access_key", &self.access_key),
            ("sas_token", &self.sas_token),
        ] {
            if blank(value) {
                problems.push(format!("{key}: is empty (if it comes from env:, is the variable set?)"));
            }
        }
        match (&self.connection_string, &self.account, &self.access_key, &self.sas_token) {
            (Some(cs), account, key, sas) => {
                if account.is_some() || key.is_some() || sas.is_some() {
                    problems.push(
                        "connection_string: set connection_string alone, or account with access_key or sas_token, \
                         not both"
                            .to_string(),
                    );
                }
                if !cs.trim().is_empty()
                    && let Err(why) = ConnectionString::parse(cs)
                {
                    problems.push(format!("connection_string: {why}"));
                }
            }
            (None, None, None, None) => problems.push(
                "set connection_string, or account with access_key or sas_token (the credentials for the container)"
                    .to_string(),
            ),
            (None, None, _, _) => {
                problems.push("account: required with access_key or sas_token (the storage account name)".to_string())
            }
            (None, Some(_), None, None) => {
                problems.push("account: needs access_key or sas_token to go with it".to_string())
            }
            (None, Some(_), Some(_), Some(_)) => {
                problems.push("access_key, sas_token: set one of them, not both".to_string())
            }
            (None, Some(_), _, _) => {}
        }
        if let Some(account) = &self.account
            && !account.trim().is_empty()
            && !valid_account_name(account)
        {
            problems.push(format!(
                "account: \"{account}\" is not a storage account name (3-24 lower-case letters and digits)"
            ));
        }
        if let Some(key) = &self.access_key
            && !key.trim().is_empty()
            && AzureAccessKey::try_new(key.trim()).is_err()
        {
            problems.push("access_key: not a base64 account key (copy key1 or key2 from the storage account)".into());
        }
        if let Some(sas) = &self.sas_token
            && !sas.trim().is_empty()
            && let Err(why) = parse_sas(sas)
        {
            problems.push(format!("sas_token: {why}"));
        }
        problems
    }
}

/// What went wrong, worded for the operator.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    /// The `[deadletter]` table cannot work as written.
    #[error("[deadletter] for azure-blob: {}", .0.join("; "))]
    Config(Vec<String>),
    /// The name handed to `put`/`get`/`list` is not a usable blob path.
    #[error("dead-letter blob name {name:?}: {reason}")]
    InvalidName { name: String, reason: String },
    /// Azure Storage turned the credentials down (HTTP 401/403).
    #[error(
        "Azure Storage refused the credentials for {target} ({detail}): check [deadletter] access_key, sas_token or \
         connection_string and that they belong to this account; a SAS token needs read, write, list (and create) \
         permissions and must not have expired"
    )]
    Unauthorized { target: String, detail: String },
    /// The container is missing.
    #[error(
        "container \"{container}\" does not exist at {endpoint}: create it, or set create_container = true in \
         [deadletter]"
    )]
    ContainerNotFound { container: String, endpoint: String },
    /// `get` of a blob that is not there.
    #[error("dead-letter blob {target} not found: list the container (gridfn replay) for the names it holds")]
    BlobNotFound { target: String },
    /// The call did not finish within [`OP_TIMEOUT`], retries included.
    #[error(
        "{op} {target} did not complete within {}s: Azure Storage at {endpoint} is unreachable or too slow; check \
         the endpoint and the network{}",
        OP_TIMEOUT.as_secs(), if *.op == "put" { " (the event was NOT dead-lettered)" } else { "" }
    )]
    Timeout { op: &'static str, target: String, endpoint: String },
    /// No connection to the endpoint (refused, DNS, TLS), after retries.
    #[error(
        "{op} {target} failed{}: cannot reach Azure Storage at {endpoint}: check [deadletter] endpoint (or the \
         account name) and the network ({detail})",
        if *.op == "put" { " (the event was NOT dead-lettered)" } else { "" }
    )]
    Unreachable { op: &'static str, target: String, endpoint: String, detail: String },
    /// Anything else Azure Storage or the network said, after retries.
    #[error("{op} {target} failed{}: {detail}", if *.op == "put" { " (the event was NOT dead-lettered)" } else { "" })]
    Storage { op: &'static str, target: String, detail: String },
}

/// Dead-letter blobs in an Azure Storage container.
pub struct AzureBlobDeadLetter {
    store: MicrosoftAzure,
    http: HttpClient,
    credentials: Arc<StaticCredentialProvider<AzureCredential>>,
    account: String,
    /// The blob service endpoint, no trailing slash, e.g. `https://acct.blob.core.windows.net`.
    endpoint: Url,
    container: String,
    /// Normalized: no leading or trailing `/`, may be empty.
    prefix: String,
    create_container: bool,
    timeout: Duration,
}

impl fmt::Debug for AzureBlobDeadLetter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AzureBlobDeadLetter")
            .field("endpoint", &self.endpoint.as_str())
            .field("account", &self.account)
            .field("container", &self.container)
            .field("prefix", &self.prefix)
            .field("create_container", &self.create_container)
            .finish_non_exhaustive()
    }
}

impl AzureBlobDeadLetter {
    /// Checks the table ([`AzureBlobConfig::problems`]) and builds the client;
    /// no request is made (see [`Self::ensure_container`] for the start-up check).
    pub fn new(config: &AzureBlobConfig) -> Result<Self, DeadLetterError> {
        let problems = config.problems();
        if !problems.is_empty() {
            return Err(DeadLetterError::Config(problems));
        }
        let invalid = |why: String| DeadLetterError::Config(vec![why]);
        let (account, credential, endpoint) = match &config.connection_string {
            Some(cs) => {
                let cs = ConnectionString::parse(cs).map_err(|why| invalid(format!("connection_string: {why}")))?;
                (cs.account, cs.credential, cs.blob_endpoint)
            }
            None => {
                let account = config.account.as_deref().unwrap_or_default().trim().to_string();
                let credential = match (&config.access_key, &config.sas_token) {
                    (Some(key), _) => AzureCredential::AccessKey(
                        AzureAccessKey::try_new(key.trim()).map_err(|e| invalid(format!("access_key: {e}")))?,
                    ),
                    (None, Some(sas)) => {
                        AzureCredential::SASToken(parse_sas(sas).map_err(|why| invalid(format!("sas_token: {why}")))?)
                    }
                    (None, None) => unreachable!("problems() requires access_key or sas_token with account"),
                };
                let endpoint = format!("https://{account}.blob.core.windows.net");
                (account, credential, endpoint)
            }
        };
        let endpoint = config.endpoint.as_deref().unwrap_or(&endpoint);
        let endpoint = parse_endpoint(endpoint).map_err(|why| invalid(format!("endpoint: {why}")))?;
        let prefix = normalize_prefix(config.prefix.as_deref().unwrap_or_default())
            .map_err(|why| invalid(format!("prefix: {why}")))?;

        let options = ClientOptions::new()
            .with_allow_http(endpoint.scheme() == "http")
            .with_timeout(REQUEST_TIMEOUT)
            .with_connect_timeout(CONNECT_TIMEOUT);
        let retry = RetryConfig { backoff: BackoffConfig::default(), max_retries: 5, retry_timeout: RETRY_TIMEOUT };
        let credentials = Arc::new(StaticCredentialProvider::new(credential));
        let store = MicrosoftAzureBuilder::new()
            .with_account(&account)
            .with_container_name(&config.container)
            .with_endpoint(endpoint.as_str().trim_end_matches('/').to_string())
            .with_credentials(Arc::clone(&credentials) as _)
            .with_client_options(options.clone())
            .with_retry(retry)
            .build()
            .map_err(|e| invalid(format!("cannot build the Azure client: {}", redact(&e.to_string()))))?;
        let http = ReqwestConnector::default()
            .connect(&options)
            .map_err(|e| invalid(format!("cannot build the HTTP client: {}", redact(&e.to_string()))))?;
        Ok(AzureBlobDeadLetter {
            store,
            http,
            credentials,
            account,
            endpoint,
            container: config.container.clone(),
            prefix,
            create_container: config.create_container,
            timeout: OP_TIMEOUT,
        })
    }

    /// The start-up check: with `create_container`, creates the container if
    /// it is missing; otherwise fails with [`DeadLetterError::ContainerNotFound`]
    /// if it is missing. Also surfaces wrong credentials before the first event.
    pub async fn ensure_container(&self) -> Result<(), DeadLetterError> {
        if self.create_container {
            self.create_container_now().await
        } else if self.container_exists().await? {
            Ok(())
        } else {
            Err(self.container_not_found())
        }
    }

    /// Uploads `body` at `blob_name` (relative to the container and prefix, e.g.
    /// `ORDERS/2026/1/9/7/<uuid>.json`) as `application/json`; returns the
    /// blob's URL. Ok means Azure acknowledged the Put Blob, i.e. it is committed.
    pub async fn put(&self, blob_name: &str, body: Bytes) -> Result<String, DeadLetterError> {
        let path = self.blob_path(blob_name)?;
        if !blob_name.ends_with(".json") {
            return Err(DeadLetterError::InvalidName {
                name: blob_name.to_string(),
                reason: "must end in .json, as Event Grid names dead-letter blobs".to_string(),
            });
        }
        let target = self.blob_url(&path);
        let payload = PutPayload::from(body);
        let attempt = || {
            let mut attributes = Attributes::new();
            attributes.insert(Attribute::ContentType, "application/json".into());
            let options = PutOptions { mode: PutMode::Overwrite, attributes, ..PutOptions::default() };
            self.store.put_opts(&path, payload.clone(), options)
        };
        match self.bounded("put", &target, attempt()).await {
            Err(DeadLetterError::ContainerNotFound { .. }) if self.create_container => {
                self.create_container_now().await?;
                self.bounded("put", &target, attempt()).await?;
            }
            result => {
                result?;
            }
        }
        Ok(target)
    }

    /// Every `*.json` blob under `prefix` (whole path segments, e.g. a
    /// subscription `ORDERS` or `ORDERS/2026/1`; empty for all), relative to
    /// the container and configured prefix, sorted.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, DeadLetterError> {
        let relative = prefix.trim_matches('/');
        let full = self.full_name(relative);
        let target = format!("{}/{}", self.container_url(), full);
        let list_prefix = if full.is_empty() {
            None
        } else {
            Some(Path::parse(&full).map_err(|e| DeadLetterError::InvalidName {
                name: prefix.to_string(),
                reason: format!("not a blob path prefix: {e}"),
            })?)
        };
        let mut stream = self.store.list(list_prefix.as_ref());
        let mut names = Vec::new();
        loop {
            let next = match self.bounded("list", &target, async { stream.next().await.transpose() }).await {
                Ok(next) => next,
                Err(failure @ DeadLetterError::Storage { .. }) => return Err(self.explain_list_failure(failure).await),
                Err(failure) => return Err(failure),
            };
            let Some(meta) = next else { break };
            let location = meta.location.as_ref();
            let name = if self.prefix.is_empty() {
                Some(location)
            } else {
                location.strip_prefix(self.prefix.as_str()).and_then(|rest| rest.strip_prefix('/'))
            };
            if let Some(name) = name.filter(|name| name.ends_with(".json")) {
                names.push(name.to_string());
            }
        }
        names.sort();
        Ok(names)
    }

    /// The blob's bytes, exactly as stored.
    pub async fn get(&self, blob_name: &str) -> Result<Bytes, DeadLetterError> {
        let path = self.blob_path(blob_name)?;
        let target = self.blob_url(&path);
        let result = self.bounded("get", &target, self.store.get(&path)).await;
        let fetched = match result {
            // A 404 on a blob read does not say whether the container is there.
            Err(DeadLetterError::ContainerNotFound { .. }) => {
                return Err(match self.container_exists().await {
                    Ok(false) => self.container_not_found(),
                    _ => DeadLetterError::BlobNotFound { target },
                });
            }
            other => other?,
        };
        self.bounded("get", &target, fetched.bytes()).await
    }

    /// Copies blob `from` to `to` (both relative, as for `get`), overwriting
    /// `to`, inside Azure (Copy Blob: within one account it completes before
    /// the answer, so Ok means `to` is there).
    pub async fn copy(&self, from: &str, to: &str) -> Result<(), DeadLetterError> {
        let (source, destination) = (self.blob_path(from)?, self.blob_path(to)?);
        let target = self.blob_url(&source);
        match self.bounded("copy", &target, self.store.copy(&source, &destination)).await {
            // As for `get`: a 404 does not say whether the blob or the container is missing.
            Err(DeadLetterError::ContainerNotFound { .. }) => Err(match self.container_exists().await {
                Ok(false) => self.container_not_found(),
                _ => DeadLetterError::BlobNotFound { target },
            }),
            other => other,
        }
    }

    /// Deletes one blob; Ok(false) when it was not there (so a repeated
    /// delete, e.g. after an interrupted replay, is not an error).
    pub async fn delete(&self, blob_name: &str) -> Result<bool, DeadLetterError> {
        let path = self.blob_path(blob_name)?;
        let target = self.blob_url(&path);
        // A single Delete Blob: `object_store`'s delete goes through the Blob
        // Batch API, which a SAS limited to the container need not allow.
        let mut url = self.container_url();
        url.path_segments_mut().expect("http(s) URL").extend(path.parts().map(|p| p.as_ref().to_string()));
        match self.container_request(http::Method::DELETE, url, "delete", &target).await? {
            s if s.is_success() => Ok(true),
            http::StatusCode::NOT_FOUND => match self.container_exists().await? {
                true => Ok(false),
                false => Err(self.container_not_found()),
            },
            s => Err(self.status_error("delete", target, s)),
        }
    }

    /// Whether a blob is there.
    pub async fn exists(&self, blob_name: &str) -> Result<bool, DeadLetterError> {
        let path = self.blob_path(blob_name)?;
        let target = self.blob_url(&path);
        match self.bounded("head", &target, self.store.head(&path)).await {
            Ok(_) => Ok(true),
            Err(DeadLetterError::ContainerNotFound { .. }) => match self.container_exists().await? {
                true => Ok(false),
                false => Err(self.container_not_found()),
            },
            Err(other) => Err(other),
        }
    }

    /// Where the blobs are, without credentials: `<endpoint>/<container>[/<prefix>]`;
    /// stable, so it can name this store in ledgers and locks.
    pub fn location(&self) -> String {
        let container = self.container_url().to_string();
        if self.prefix.is_empty() { container } else { format!("{container}/{}", self.prefix) }
    }

    /// `container/prefix/name` as an object_store path, checked.
    fn blob_path(&self, blob_name: &str) -> Result<Path, DeadLetterError> {
        let invalid = |reason: String| DeadLetterError::InvalidName { name: blob_name.to_string(), reason };
        if blob_name.is_empty() || blob_name.starts_with('/') || blob_name.ends_with('/') {
            return Err(invalid("must be a relative path like SUBSCRIPTION/2026/1/9/7/<uuid>.json".to_string()));
        }
        if blob_name.split('/').any(|segment| segment.is_empty() || segment == "." || segment == "..") {
            return Err(invalid("empty, . and .. path segments are not allowed".to_string()));
        }
        Path::parse(self.full_name(blob_name)).map_err(|e| invalid(e.to_string()))
    }

    fn full_name(&self, relative: &str) -> String {
        match (self.prefix.is_empty(), relative.is_empty()) {
            (true, _) => relative.to_string(),
            (false, true) => self.prefix.clone(),
            (false, false) => format!("{}/{relative}", self.prefix),
        }
    }

    fn container_url(&self) -> Url {
        let mut url = self.endpoint.clone();
        url.path_segments_mut().expect("http(s) URL").pop_if_empty().push(&self.container);
        url
    }

    /// The blob's URL (no credentials in it), for logs.
    fn blob_url(&self, path: &Path) -> String {
        let mut url = self.container_url();
        url.path_segments_mut().expect("http(s) URL").extend(path.parts().map(|p| p.as_ref().to_string()));
        url.to_string()
    }

    fn container_request_url(&self, query: &[(&str, &str)]) -> Url {
        let mut url = self.container_url();
        url.query_pairs_mut().extend_pairs(query);
        url
    }

    /// Runs one signed request on the container; the status, or a transport error.
    async fn container_request(
        &self,
        method: http::Method,
        url: Url,
        op: &'static str,
        target: &str,
    ) -> Result<http::StatusCode, DeadLetterError> {
        let mut request = http::Request::builder()
            .method(method)
            .uri(url.as_str())
            .header(http::header::CONTENT_LENGTH, "0")
            .body(HttpRequestBody::empty())
            .map_err(|e| DeadLetterError::Storage { op, target: target.to_string(), detail: e.to_string() })?;
        let credential = self.credentials.get_credential().await.expect("a static credential is always there");
        AzureAuthorizer::new(&credential, &self.account).authorize(&mut request);
        let send = async {
            let response = self
                .http
                .execute(request)
                .await
                .map_err(|e| object_store::Error::Generic { store: "MicrosoftAzure", source: Box::new(e) })?;
            let status = response.status();
            // Drain the (small) XML error body so the connection can be reused.
            let _ = response.into_body().bytes().await;
            Ok(status)
        };
        self.bounded(op, target, send).await
    }

    /// A failed List Blobs carries its status only in `object_store`'s text,
    /// so ask the container the way [`Self::container_exists`] does, whose
    /// status is read directly.
    async fn explain_list_failure(&self, failure: DeadLetterError) -> DeadLetterError {
        match self.container_exists().await {
            Ok(false) => self.container_not_found(),
            Err(unauthorized @ DeadLetterError::Unauthorized { .. }) => unauthorized,
            _ => failure,
        }
    }

    /// Asks with a one-result List Blobs: a permission the store needs anyway
    /// (replay), which a SAS scoped to the container also grants.
    pub(crate) async fn container_exists(&self) -> Result<bool, DeadLetterError> {
        let target = self.container_url().to_string();
        let url = self.container_request_url(&[("restype", "container"), ("comp", "list"), ("maxresults", "1")]);
        match self.container_request(http::Method::GET, url, "check container", &target).await? {
            s if s.is_success() => Ok(true),
            http::StatusCode::NOT_FOUND => Ok(false),
            s => Err(self.status_error("check container", target, s)),
        }
    }

    /// Create Container; "already exists" (409) is success, and so is a
    /// refusal (403) from credentials that may not create containers (a SAS
    /// scoped to the container) when the container is there.
    async fn create_container_now(&self) -> Result<(), DeadLetterError> {
        let target = self.container_url().to_string();
        let url = self.container_request_url(&[("restype", "container")]);
        match self.container_request(http::Method::PUT, url, "create container", &target).await? {
            s if s.is_success() || s == http::StatusCode::CONFLICT => Ok(()),
            s @ http::StatusCode::FORBIDDEN => match self.container_exists().await? {
                true => Ok(()),
                false => Err(self.status_error("create container", target, s)),
            },
            s => Err(self.status_error("create container", target, s)),
        }
    }

    fn status_error(&self, op: &'static str, target: String, status: http::StatusCode) -> DeadLetterError {
        match status {
            http::StatusCode::UNAUTHORIZED | http::StatusCode::FORBIDDEN => {
                DeadLetterError::Unauthorized { target, detail: format!("{op}: HTTP {status}") }
            }
            _ => DeadLetterError::Storage { op, target, detail: format!("HTTP {status}") },
        }
    }

    pub(crate) fn container_not_found(&self) -> DeadLetterError {
        DeadLetterError::ContainerNotFound {
            container: self.container.clone(),
            endpoint: self.endpoint.as_str().trim_end_matches('/').to_string(),
        }
    }

    /// Bounds `fut` by the whole-call timeout and words its error.
    async fn bounded<T>(
        &self,
        op: &'static str,
        target: &str,
        fut: impl Future<Output = object_store::Result<T>>,
    ) -> Result<T, DeadLetterError> {
        let endpoint = self.endpoint.as_str().trim_end_matches('/').to_string();
        match tokio::time::timeout(self.timeout, fut).await {
            Err(_elapsed) => Err(DeadLetterError::Timeout { op, target: target.to_string(), endpoint }),
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(self.storage_error(op, target, e)),
        }
    }

    /// Words an `object_store` failure by its variant. `object_store` gives a
    /// status its own variant only for blob requests (Put, Get): a failed
    /// List Blobs arrives as `Generic`, which [`Self::list`] explains by asking
    /// about the container.
    fn storage_error(&self, op: &'static str, target: &str, error: object_store::Error) -> DeadLetterError {
        let target = target.to_string();
        match error {
            // Put Blob answers 404 only for a missing container; `get` tells
            // a missing blob from a missing container itself.
            object_store::Error::NotFound { .. } => self.container_not_found(),
            object_store::Error::Unauthenticated { .. } => {
                self.status_error(op, target, http::StatusCode::UNAUTHORIZED)
            }
            object_store::Error::PermissionDenied { .. } => self.status_error(op, target, http::StatusCode::FORBIDDEN),
            error => match transport_failure(&error) {
                Some(cause) => DeadLetterError::Unreachable {
                    op,
                    target,
                    endpoint: self.endpoint.as_str().trim_end_matches('/').to_string(),
                    detail: last_cause(cause),
                },
                None => DeadLetterError::Storage { op, target, detail: redact(&error.to_string()) },
            },
        }
    }
}

/// A parsed storage connection string.
#[derive(Debug)]
struct ConnectionString {
    account: String,
    credential: AzureCredential,
    blob_endpoint: String,
}

impl ConnectionString {
    /// The standard `Key=Value;...` format, including `UseDevelopmentStorage=true`.
    fn parse(text: &str) -> Result<Self, String> {
        let mut protocol = None;
        let mut account = None;
        let mut key = None;
        let mut sas = None;
        let mut blob_endpoint = None;
        let mut suffix = None;
        let mut development = false;
        for part in text.trim().split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((name, value)) = part.split_once('=') else {
                return Err(format!("\"{}\" is not Key=Value", name_only(part)));
            };
            let value = value.trim();
            match name.trim().to_ascii_lowercase().as_str() {
                "defaultendpointsprotocol" => match value.to_ascii_lowercase().as_str() {
                    p @ ("http" | "https") => protocol = Some(p.to_string()),
                    _ => return Err(format!("DefaultEndpointsProtocol must be http or https, not \"{value}\"")),
                },
                "accountname" => account = Some(value.to_string()),
                "accountkey" => key = Some(value.to_string()),
                "sharedaccesssignature" => sas = Some(value.to_string()),
                "blobendpoint" => blob_endpoint = Some(value.to_string()),
                "endpointsuffix" => suffix = Some(value.to_string()),
                "usedevelopmentstorage" => match value.to_ascii_lowercase().as_str() {
                    "true" => development = true,
                    "false" => {}
                    _ => return Err(format!("UseDevelopmentStorage must be true or false, not \"{value}\"")),
                },
                "developmentstorageproxyuri" => {
                    return Err("DevelopmentStorageProxyUri is not supported: set endpoint instead".to_string());
                }
                // Other services' endpoints are not ours to use.
                other if other.ends_with("endpoint") => {}
                _ => {
                    return Err(format!(
                        "unknown key \"{}\" (expected DefaultEndpointsProtocol, AccountName, AccountKey, \
                         SharedAccessSignature, BlobEndpoint, EndpointSuffix or UseDevelopmentStorage)",
                        name.trim()
                    ));
                }
            }
        }
        if development {
            account.get_or_insert_with(|| DEV_ACCOUNT.to_string());
            if sas.is_none() {
                key.get_or_insert_with(|| DEV_ACCOUNT_KEY.to_string());
            }
            blob_endpoint.get_or_insert_with(|| DEV_BLOB_ENDPOINT.to_string());
        }
        let account = account
            .filter(|a| !a.is_empty())
            .ok_or("AccountName is missing (or use UseDevelopmentStorage=true for Azurite)")?;
        let credential = match (key, sas) {
            (Some(_), Some(_)) => return Err("has both AccountKey and SharedAccessSignature: keep one".to_string()),
            (Some(key), None) => AzureCredential::AccessKey(
                AzureAccessKey::try_new(&key).map_err(|_| "AccountKey is not a base64 account key".to_string())?,
            ),
            (None, Some(sas)) => {
                AzureCredential::SASToken(parse_sas(&sas).map_err(|why| format!("SharedAccessSignature: {why}"))?)
            }
            (None, None) => return Err("needs AccountKey or SharedAccessSignature".to_string()),
        };
        let blob_endpoint = match blob_endpoint {
            Some(endpoint) => endpoint,
            None => {
                let protocol = protocol.unwrap_or_else(|| "https".to_string());
                let suffix = suffix.unwrap_or_else(|| "core.windows.net".to_string());
                format!("{protocol}://{account}.blob.{suffix}")
            }
        };
        parse_endpoint(&blob_endpoint).map_err(|why| format!("BlobEndpoint: {why}"))?;
        Ok(ConnectionString { account, credential, blob_endpoint })
    }
}

/// The key of a `Key=Value` part, never its value (it may be a secret).
fn name_only(part: &str) -> String {
    if part.len() > 24 { format!("{}...", &part[..part.floor_char_boundary(24)]) } else { part.to_string() }
}

/// A SAS token's query pairs; a leading `?` is dropped.
fn parse_sas(sas: &str) -> Result<Vec<(String, String)>, String> {
    let sas = sas.trim().trim_start_matches('?');
    let pairs: Vec<(String, String)> =
        url::form_urlencoded::parse(sas.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    if !pairs.iter().any(|(k, v)| k == "sig" && !v.is_empty()) {
        return Err("not a SAS token (expected a query string such as sv=...&sig=...)".to_string());
    }
    Ok(pairs)
}

/// An http(s) blob service URL without query, normalized to no trailing slash.
fn parse_endpoint(text: &str) -> Result<Url, String> {
    let url = Url::parse(text.trim()).map_err(|e| format!("\"{text}\" is not a URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!("\"{text}\" must be an http:// or https:// URL"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("\"{url}\" must not have a query (put a SAS in sas_token)"));
    }
    let mut url = url;
    let path = url.path().trim_end_matches('/').to_string();
    url.set_path(&path);
    Ok(url)
}

/// `a/b` from `/a/b/`; rejects empty, `.` and `..` segments inside.
fn normalize_prefix(prefix: &str) -> Result<String, String> {
    let trimmed = prefix.trim().trim_matches('/');
    if trimmed.split('/').any(|s| s == "." || s == "..") || (!trimmed.is_empty() && trimmed.contains("//")) {
        return Err(format!("\"{prefix}\" must be a folder path like gridfn/deadletter (no empty, . or .. parts)"));
    }
    Path::parse(trimmed).map_err(|e| format!("\"{prefix}\" is not a blob path: {e}"))?;
    Ok(trimmed.to_string())
}

fn valid_container_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    (3..=63).contains(&bytes.len())
        && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
        && !name.contains("--")
}

fn valid_account_name(name: &str) -> bool {
    (3..=24).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// Hides SAS signatures (`sig=...`) that request URLs in error messages carry.
fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("sig=") {
        let (before, after) = rest.split_at(at + 4);
        out.push_str(before);
        out.push_str("REDACTED");
        let end = after.find(|c: char| c == '&' || c.is_whitespace()).unwrap_or(after.len());
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// The innermost cause of `error` (e.g. "Connection refused"), redacted.
fn last_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    redact(&cause.to_string())
}

/// The failure to reach the endpoint at all (connect, send, no answer)
/// behind `error`, if that is what it is: an `HttpError` somewhere in its
/// causes. An HTTP status is never one: `object_store` keeps it outside.
fn transport_failure<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a HttpError> {
    std::iter::successors(Some(error), |cause| cause.source())
        .find_map(|cause| cause.downcast_ref::<HttpError>())
        .filter(|http| {
            matches!(
                http.kind(),
                HttpErrorKind::Connect | HttpErrorKind::Request | HttpErrorKind::Timeout | HttpErrorKind::Interrupted
            )
        })
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io::{BufRead, BufReader};
    use std::process::{Child, Command, Stdio};
    use std::sync::OnceLock;
    use std::time::Instant;

    use chrono::{TimeZone, Utc};

    use crate::deadletter::blob_name as event_grid_name;

    use super::*;

    /// The blob endpoint of the Azurite the tests use: `GRIDFN_TEST_AZURITE_BLOB`,
    /// or one started here (once per test binary) and stopped when it exits.
    pub(crate) fn azurite() -> &'static str {
        static AZURITE: OnceLock<String> = OnceLock::new();
        AZURITE.get_or_init(|| match std::env::var("GRIDFN_TEST_AZURITE_BLOB") {
            Ok(url) if !url.trim().is_empty() => url.trim().trim_end_matches('/').to_string(),
            _ => start_azurite(),
        })
    }

    fn find_azurite_bin() -> Option<std::path::PathBuf> {
        if let Some(bin) = std::env::var_os("GRIDFN_AZURITE_BIN").filter(|b| !b.is_empty()) {
            let bin = std::path::PathBuf::from(bin);
            assert!(bin.is_file(), "GRIDFN_AZURITE_BIN={} does not exist: run `npm install azurite`", bin.display());
            return Some(bin);
        }
        let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let local = [
            manifest.join("node_modules/.bin"),
            manifest.join("../node_modules/.bin"),
            // Where scripts/test installs it.
            manifest.join("../target/azurite/node_modules/.bin"),
        ];
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path).chain(local).map(|dir| dir.join("azurite-blob")).find(|bin| bin.is_file())
    }

    fn start_azurite() -> String {
        let bin = find_azurite_bin().unwrap_or_else(|| {
            panic!(
                "these tests need Azurite and it was not found: `npm install azurite` (then put node_modules/.bin on \
                 PATH or set GRIDFN_AZURITE_BIN=/path/to/node_modules/.bin/azurite-blob), or point \
                 GRIDFN_TEST_AZURITE_BLOB at a running one, e.g. http://127.0.0.1:10000/devstoreaccount1"
            )
        });
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        // A shell in between stops Azurite when this test binary exits, however it
        // exits: `read` returns when our end of its stdin closes.
        let script = format!(
            "\"$0\" --blobHost 127.0.0.1 --blobPort {port} --inMemoryPersistence --skipApiVersionCheck --loose \
             --disableTelemetry --silent >&2 & pid=$!; echo started; read -r _; kill $pid"
        );
        let mut child: Child = Command::new("sh")
            .args(["-c", &script])
            .arg(&bin)
            .current_dir(std::env::temp_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("{} exited ({status}) before listening; is `npm install azurite` complete?", bin.display());
            }
            assert!(Instant::now() < deadline, "{} did not listen on port {port} within 60 s", bin.display());
            std::thread::sleep(Duration::from_millis(100));
        }
        // Keep the stdin pipe open for the life of the process.
        std::mem::forget(child);
        format!("http://127.0.0.1:{port}/{DEV_ACCOUNT}")
    }

    pub(crate) fn unique_container() -> String {
        format!("dl-{}", uuid::Uuid::new_v4().simple())
    }

    pub(crate) fn key_config(container: &str) -> AzureBlobConfig {
        key_config_at(container, azurite())
    }

    fn key_config_at(container: &str, endpoint: &str) -> AzureBlobConfig {
        AzureBlobConfig {
            container: container.to_string(),
            prefix: None,
            connection_string: None,
            account: Some(DEV_ACCOUNT.to_string()),
            access_key: Some(DEV_ACCOUNT_KEY.to_string()),
            sas_token: None,
            endpoint: Some(endpoint.to_string()),
            create_container: true,
        }
    }

    fn record(id: &str) -> Bytes {
        let record = serde_json::json!([{
            "id": id, "eventType": "Contoso.Orders.Created", "subject": "orders/ü/1",
            "data": {"total": 12.5}, "deadLetterReason": "Rejected", "deliveryAttempts": 1,
        }]);
        Bytes::from(serde_json::to_vec_pretty(&record).unwrap())
    }

    /// For tests that make no request.
    fn offline_config() -> AzureBlobConfig {
        key_config_at("dlq", DEV_BLOB_ENDPOINT)
    }

    fn store(config: &AzureBlobConfig) -> AzureBlobDeadLetter {
        AzureBlobDeadLetter::new(config).unwrap_or_else(|e| panic!("{e}"))
    }

    #[tokio::test]
    async fn put_then_list_and_get_round_trip_under_event_grid_naming() {
        let dl = store(&key_config(&unique_container()));
        dl.ensure_container().await.unwrap();
        let name = event_grid_name("orders-sub", Utc.with_ymd_and_hms(2026, 1, 9, 7, 5, 0).unwrap());
        assert!(name.starts_with("ORDERS-SUB/2026/1/9/7/"), "{name}");
        let body = record("e1");
        let url = dl.put(&name, body.clone()).await.unwrap();
        assert!(url.starts_with(azurite()) && url.ends_with(&name), "{url}");

        assert_eq!(dl.list("").await.unwrap(), vec![name.clone()]);
        assert_eq!(dl.get(&name).await.unwrap(), body, "bytes come back exactly");
        // And it is an Event Grid dead-letter blob: a JSON array of one record.
        let parsed: serde_json::Value = serde_json::from_slice(&dl.get(&name).await.unwrap()).unwrap();
        assert_eq!(parsed[0]["id"], "e1");
    }

    #[tokio::test]
    async fn list_by_subscription_prefix_is_sorted_and_whole_segment() {
        let mut config = key_config(&unique_container());
        config.prefix = Some("/gridfn/deadletter/".to_string());
        let dl = store(&config);
        let now = Utc::now();
        let mut orders = Vec::new();
        for i in 0..3 {
            let name = event_grid_name("orders", now);
            dl.put(&name, record(&format!("o{i}"))).await.unwrap();
            orders.push(name);
        }
        let audit = event_grid_name("orders-audit", now);
        dl.put(&audit, record("a")).await.unwrap();
        let billing = "BILLING/2025/12/31/23/0b5c3f2e-2a9e-4d7e-9a51-3b0c1d2e3f40.json";
        dl.put(billing, record("b")).await.unwrap();
        // Something that is not a dead-letter blob, beside them.
        dl.store.put(&Path::from("gridfn/deadletter/ORDERS/notes.txt"), PutPayload::from_static(b"x")).await.unwrap();

        orders.sort();
        assert_eq!(dl.list("ORDERS").await.unwrap(), orders, "not ORDERS-AUDIT, not notes.txt, sorted");
        assert_eq!(dl.list("ORDERS/").await.unwrap(), orders);
        assert_eq!(dl.list("ORDERS-AUDIT").await.unwrap(), vec![audit.clone()]);
        assert_eq!(dl.list("BILLING/2025/12").await.unwrap(), vec![billing.to_string()]);
        assert_eq!(dl.list("NOSUCH").await.unwrap(), Vec::<String>::new());
        let mut all: Vec<String> = orders.iter().cloned().chain([audit, billing.to_string()]).collect();
        all.sort();
        assert_eq!(dl.list("").await.unwrap(), all);
        // Names are relative to the configured prefix, and get takes them back.
        assert_eq!(dl.get(billing).await.unwrap(), record("b"));
        let url = dl.put(billing, record("b2")).await.unwrap();
        assert!(url.ends_with(&format!("/gridfn/deadletter/{billing}")), "{url}");
        assert_eq!(dl.get(billing).await.unwrap(), record("b2"), "a put overwrites");
    }

    #[tokio::test]
    async fn well_known_development_connection_string_works() {
        // Azurite's published connection string, with the test instance's port.
        let connection_string = format!(
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={DEV_ACCOUNT_KEY};BlobEndpoint={};",
            azurite()
        );
        let config = AzureBlobConfig {
            account: None,
            access_key: None,
            endpoint: None,
            connection_string: Some(connection_string),
            ..key_config(&unique_container())
        };
        let dl = store(&config);
        dl.ensure_container().await.unwrap();
        let name = event_grid_name("cs", Utc::now());
        dl.put(&name, record("cs")).await.unwrap();
        assert_eq!(dl.get(&name).await.unwrap(), record("cs"));

        // `UseDevelopmentStorage=true`, with the endpoint moved to the test port.
        let config = AzureBlobConfig {
            connection_string: Some("UseDevelopmentStorage=true".to_string()),
            endpoint: Some(azurite().to_string()),
            ..config
        };
        assert_eq!(store(&config).list("CS").await.unwrap(), vec![name]);
    }

    #[tokio::test]
    async fn account_and_access_key_work() {
        let config = AzureBlobConfig { create_container: false, ..key_config(&unique_container()) };
        // Created out of band, as an operator would.
        store(&AzureBlobConfig { create_container: true, ..config.clone() }).ensure_container().await.unwrap();
        let dl = store(&config);
        dl.ensure_container().await.unwrap();
        let name = event_grid_name("key", Utc::now());
        dl.put(&name, record("k")).await.unwrap();
        assert_eq!(dl.list("KEY").await.unwrap(), vec![name.clone()]);
        assert_eq!(dl.get(&name).await.unwrap(), record("k"));
    }

    #[tokio::test]
    async fn a_wrong_key_is_a_clear_error() {
        let container = unique_container();
        store(&key_config(&container)).ensure_container().await.unwrap();
        // A valid key, just not this account's.
        let config = AzureBlobConfig {
            access_key: Some("dGhpcyBpcyBub3QgdGhlIGtleSBvZiBkZXZzdG9yZWFjY291bnQx".to_string()),
            ..key_config(&container)
        };
        let dl = store(&config);
        let name = event_grid_name("wrong", Utc::now());
        let err = dl.put(&name, record("w")).await.unwrap_err();
        assert!(matches!(err, DeadLetterError::Unauthorized { .. }), "{err:?}");
        let message = err.to_string();
        assert!(message.contains("refused the credentials") && message.contains("access_key"), "{message}");
        assert!(message.contains("(put: HTTP 403 Forbidden)"), "{message}");
        assert!(message.contains(&container), "{message}");
        assert!(matches!(dl.list("").await, Err(DeadLetterError::Unauthorized { .. })));
        assert!(matches!(dl.get(&name).await, Err(DeadLetterError::Unauthorized { .. })));
        assert!(matches!(dl.ensure_container().await, Err(DeadLetterError::Unauthorized { .. })));
        // Nothing was written.
        assert!(store(&key_config(&container)).list("").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_missing_container_without_create_container_is_a_clear_error() {
        let container = unique_container();
        let dl = store(&AzureBlobConfig { create_container: false, ..key_config(&container) });
        let name = event_grid_name("missing", Utc::now());
        let err = dl.put(&name, record("m")).await.unwrap_err();
        assert!(matches!(err, DeadLetterError::ContainerNotFound { .. }), "{err:?}");
        let message = err.to_string();
        assert!(message.contains(&container) && message.contains("create_container = true"), "{message}");
        assert!(message.contains("does not exist"), "{message}");
        assert!(matches!(dl.ensure_container().await, Err(DeadLetterError::ContainerNotFound { .. })));
        let listed = dl.list("").await;
        assert!(matches!(listed, Err(DeadLetterError::ContainerNotFound { .. })), "{listed:?}");
        assert!(matches!(dl.get(&name).await, Err(DeadLetterError::ContainerNotFound { .. })));
    }

    #[tokio::test]
    async fn create_container_is_idempotent_and_a_put_creates_it_too() {
        let container = unique_container();
        let dl = store(&key_config(&container));
        // No ensure_container first: the put finds the container missing and creates it.
        let name = event_grid_name("lazy", Utc::now());
        dl.put(&name, record("l")).await.unwrap();
        dl.ensure_container().await.unwrap();
        dl.ensure_container().await.unwrap();
        assert_eq!(dl.list("LAZY").await.unwrap(), vec![name]);
    }

    #[tokio::test]
    async fn copy_delete_and_exists_for_archiving() {
        let dl = store(&AzureBlobConfig { prefix: Some("dl".into()), ..key_config(&unique_container()) });
        dl.ensure_container().await.unwrap();
        let name = event_grid_name("arch", Utc::now());
        let archived = format!("replayed/{name}");
        dl.put(&name, record("a")).await.unwrap();
        assert!(dl.exists(&name).await.unwrap() && !dl.exists(&archived).await.unwrap());
        dl.copy(&name, &archived).await.unwrap();
        assert_eq!(dl.get(&archived).await.unwrap(), record("a"), "the copy is complete when copy returns");
        assert!(dl.delete(&name).await.unwrap(), "deleted");
        assert!(!dl.delete(&name).await.unwrap(), "already gone is not an error");
        assert!(!dl.exists(&name).await.unwrap());
        assert_eq!(dl.list("").await.unwrap(), vec![archived.clone()]);
        let err = dl.copy(&name, &archived).await.unwrap_err();
        assert!(matches!(err, DeadLetterError::BlobNotFound { .. }), "{err:?}");
        assert!(dl.location().ends_with("/dl") && !dl.location().contains(DEV_ACCOUNT_KEY), "{}", dl.location());

        let gone = store(&key_config(&unique_container()));
        assert!(matches!(gone.delete(&name).await, Err(DeadLetterError::ContainerNotFound { .. })));
        assert!(matches!(gone.exists(&name).await, Err(DeadLetterError::ContainerNotFound { .. })));
        let copied = gone.copy(&name, &archived).await;
        assert!(matches!(copied, Err(DeadLetterError::ContainerNotFound { .. })), "{copied:?}");
    }

    #[tokio::test]
    async fn get_of_a_missing_blob_says_so() {
        let dl = store(&key_config(&unique_container()));
        dl.ensure_container().await.unwrap();
        let err = dl.get("NONE/2026/1/1/0/00000000-0000-0000-0000-000000000000.json").await.unwrap_err();
        assert!(matches!(err, DeadLetterError::BlobNotFound { .. }), "{err:?}");
        assert!(err.to_string().contains("not found"), "{err}");
    }

    #[tokio::test]
    async fn an_unreachable_endpoint_is_a_clear_error() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dl = store(&key_config_at(&unique_container(), &format!("http://127.0.0.1:{port}/{DEV_ACCOUNT}")));
        let started = Instant::now();
        let err = dl.put(&event_grid_name("down", Utc::now()), record("d")).await.unwrap_err();
        assert!(started.elapsed() < OP_TIMEOUT + Duration::from_secs(2), "took {:?}", started.elapsed());
        assert!(matches!(err, DeadLetterError::Unreachable { .. }), "{err:?}");
        let message = err.to_string();
        assert!(message.contains("NOT dead-lettered") && message.contains("cannot reach"), "{message}");
        assert!(matches!(dl.ensure_container().await, Err(DeadLetterError::Unreachable { .. })));
    }

    #[tokio::test]
    async fn a_silent_endpoint_times_out_within_the_bound() {
        // Accepts connections (the kernel does), never answers.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = silent.local_addr().unwrap().port();
        let mut dl = store(&key_config_at(&unique_container(), &format!("http://127.0.0.1:{port}/{DEV_ACCOUNT}")));
        dl.timeout = Duration::from_secs(2);
        let started = Instant::now();
        let err = dl.put(&event_grid_name("slow", Utc::now()), record("s")).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(4), "took {:?}", started.elapsed());
        assert!(matches!(err, DeadLetterError::Timeout { .. }), "{err:?}");
        assert!(err.to_string().contains("NOT dead-lettered"), "{err}");
        drop(silent);
    }

    /// An account SAS (all services' blob part, read/write/delete/list/add/create) for the dev account.
    fn account_sas(key: &str) -> String {
        use base64::Engine as _;
        let (version, expiry) = ("2021-08-06", "2099-01-01T00:00:00Z");
        let to_sign = format!("{DEV_ACCOUNT}\nrwdlac\nb\nsco\n\n{expiry}\n\nhttps,http\n{version}\n\n");
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &base64::prelude::BASE64_STANDARD.decode(key).unwrap());
        let sig = base64::prelude::BASE64_STANDARD.encode(ring::hmac::sign(&key, to_sign.as_bytes()).as_ref());
        let sig: String = url::form_urlencoded::byte_serialize(sig.as_bytes()).collect();
        format!("?sv={version}&ss=b&srt=sco&sp=rwdlac&se={expiry}&spr=https,http&sig={sig}")
    }

    #[tokio::test]
    async fn account_and_sas_token_work_and_a_bad_one_is_refused() {
        let config = AzureBlobConfig {
            access_key: None,
            sas_token: Some(account_sas(DEV_ACCOUNT_KEY)),
            ..key_config(&unique_container())
        };
        let dl = store(&config);
        dl.ensure_container().await.unwrap();
        let name = event_grid_name("sas", Utc::now());
        dl.put(&name, record("s")).await.unwrap();
        assert_eq!(dl.list("SAS").await.unwrap(), vec![name.clone()]);
        assert_eq!(dl.get(&name).await.unwrap(), record("s"));

        let forged = AzureBlobConfig {
            sas_token: Some(account_sas("dGhpcyBpcyBub3QgdGhlIGtleSBvZiBkZXZzdG9yZWFjY291bnQx")),
            ..config
        };
        let err = store(&forged).put(&name, record("x")).await.unwrap_err();
        assert!(matches!(err, DeadLetterError::Unauthorized { .. }), "{err:?}");
        assert!(!err.to_string().contains("sig=") || err.to_string().contains("sig=REDACTED"), "{err}");
        assert_eq!(dl.get(&name).await.unwrap(), record("s"), "the forged put changed nothing");
    }

    #[tokio::test]
    async fn bad_blob_names_are_refused_before_any_request() {
        let dl = store(&offline_config());
        for name in ["", "/ORDERS/2026/1/1/0/x.json", "ORDERS//x.json", "ORDERS/../x.json", "ORDERS/x.txt"] {
            let err = dl.put(name, record("x")).await.unwrap_err();
            assert!(matches!(err, DeadLetterError::InvalidName { .. }), "{name:?}: {err:?}");
        }
    }

    fn parse(toml_text: &str) -> AzureBlobConfig {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn problems_name_their_keys() {
        let ok = parse("container = \"deadletters\"\naccount = \"acct\"\naccess_key = \"a2V5\"");
        assert!(ok.problems().is_empty(), "{:?}", ok.problems());
        let ok = parse("container = \"deadletters\"\naccount = \"acct\"\nsas_token = \"?sv=2024-01-01&sig=abc%3D\"");
        assert!(ok.problems().is_empty(), "{:?}", ok.problems());
        let ok = parse("container = \"dead-letters\"\nconnection_string = \"UseDevelopmentStorage=true\"");
        assert!(ok.problems().is_empty(), "{:?}", ok.problems());

        let cases: &[(&str, &str)] = &[
            ("container = \"\"\nconnection_string = \"UseDevelopmentStorage=true\"", "container: required"),
            ("container = \"Dead_Letters\"\nconnection_string = \"UseDevelopmentStorage=true\"", "container: "),
            ("container = \"dl\"\nconnection_string = \"UseDevelopmentStorage=true\"", "container: "),
            ("container = \"a--b\"\nconnection_string = \"UseDevelopmentStorage=true\"", "container: "),
            ("container = \"dlq\"", "set connection_string, or account with access_key or sas_token"),
            ("container = \"dlq\"\naccount = \"acct\"", "account: needs access_key or sas_token"),
            ("container = \"dlq\"\naccess_key = \"a2V5\"", "account: required"),
            ("container = \"dlq\"\naccount = \"acct\"\naccess_key = \"a2V5\"\nsas_token = \"sig=x\"", "not both"),
            ("container = \"dlq\"\naccount = \"Acct!\"\naccess_key = \"a2V5\"", "account: "),
            ("container = \"dlq\"\naccount = \"acct\"\naccess_key = \"not base64!\"", "access_key: not a base64"),
            ("container = \"dlq\"\naccount = \"acct\"\naccess_key = \"\"", "access_key: is empty"),
            ("container = \"dlq\"\naccount = \"acct\"\nsas_token = \"sv=2024\"", "sas_token: not a SAS token"),
            (
                "container = \"dlq\"\nconnection_string = \"UseDevelopmentStorage=true\"\naccount = \"acct\"",
                "connection_string: set connection_string alone",
            ),
            ("container = \"dlq\"\nconnection_string = \"AccountName=acct\"", "connection_string: needs AccountKey"),
            ("container = \"dlq\"\nconnection_string = \"garbage\"", "connection_string: \"garbage\" is not Key=Value"),
            ("container = \"dlq\"\nconnection_string = \"\"", "connection_string: is empty"),
            (
                "container = \"dlq\"\nconnection_string = \"UseDevelopmentStorage=true\"\nendpoint = \"ftp://x\"",
                "endpoint: ",
            ),
            (
                "container = \"dlq\"\nconnection_string = \"UseDevelopmentStorage=true\"\nendpoint = \"https://x/?sv=1\"",
                "endpoint: ",
            ),
            (
                "container = \"dlq\"\nconnection_string = \"UseDevelopmentStorage=true\"\nprefix = \"a/../b\"",
                "prefix: ",
            ),
        ];
        for (text, expected) in cases {
            let problems = parse(text).problems();
            assert!(problems.iter().any(|p| p.starts_with(expected) || p.contains(expected)), "{text}: {problems:?}");
            let err = AzureBlobDeadLetter::new(&parse(text)).unwrap_err();
            assert!(matches!(err, DeadLetterError::Config(_)), "{text}: {err:?}");
            assert!(err.to_string().contains(expected), "{text}: {err}");
        }
        // Unknown keys (gridfn's own `store` included) are refused by serde.
        let unknown = toml::from_str::<AzureBlobConfig>("container = \"dlq\"\nstore = \"azure-blob\"");
        assert!(unknown.unwrap_err().to_string().contains("unknown field"));
    }

    #[test]
    fn connection_strings_parse_into_endpoint_account_and_credential() {
        let dev = ConnectionString::parse(&format!(
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={DEV_ACCOUNT_KEY};\
             BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;QueueEndpoint=http://127.0.0.1:10001/devstoreaccount1;"
        ))
        .unwrap();
        assert_eq!((dev.account.as_str(), dev.blob_endpoint.as_str()), (DEV_ACCOUNT, DEV_BLOB_ENDPOINT));
        assert!(matches!(dev.credential, AzureCredential::AccessKey(_)));

        let short = ConnectionString::parse("UseDevelopmentStorage=true").unwrap();
        assert_eq!((short.account.as_str(), short.blob_endpoint.as_str()), (DEV_ACCOUNT, DEV_BLOB_ENDPOINT));

        let portal = ConnectionString::parse(
            "DefaultEndpointsProtocol=https;AccountName=contoso;AccountKey=a2V5;EndpointSuffix=core.windows.net",
        )
        .unwrap();
        assert_eq!(portal.blob_endpoint, "https://contoso.blob.core.windows.net");
        let china = ConnectionString::parse("AccountName=contoso;AccountKey=a2V5;EndpointSuffix=core.chinacloudapi.cn");
        assert_eq!(china.unwrap().blob_endpoint, "https://contoso.blob.core.chinacloudapi.cn");

        let sas = ConnectionString::parse(
            "BlobEndpoint=https://contoso.blob.core.windows.net/;SharedAccessSignature=sv=2024-01-01&ss=b&sig=a%2Bb%3D",
        )
        .unwrap_err();
        assert!(sas.contains("AccountName"), "{sas}");
        let sas = ConnectionString::parse(
            "AccountName=contoso;BlobEndpoint=https://contoso.blob.core.windows.net/;\
             SharedAccessSignature=sv=2024-01-01&ss=b&sig=a%2Bb%3D",
        )
        .unwrap();
        match sas.credential {
            AzureCredential::SASToken(pairs) => assert!(pairs.contains(&("sig".to_string(), "a+b=".to_string()))),
            other => panic!("{other:?}"),
        }

        let typo = ConnectionString::parse("AccountName=contoso;AcountKey=a2V5").unwrap_err();
        assert!(typo.contains("unknown key \"AcountKey\""), "{typo}");
        let both = ConnectionString::parse("AccountName=contoso;AccountKey=a2V5;SharedAccessSignature=sig=x");
        assert!(both.unwrap_err().contains("both"));
    }

    #[test]
    fn secrets_stay_out_of_debug_and_errors() {
        let config = AzureBlobConfig {
            access_key: Some("c2VjcmV0LWtleQ==".to_string()),
            connection_string: Some("AccountKey=c2VjcmV0LWtleQ==".to_string()),
            sas_token: Some("sv=1&sig=topsecret".to_string()),
            ..offline_config()
        };
        let debug = format!("{config:?}");
        assert!(!debug.contains("c2VjcmV0") && !debug.contains("topsecret"), "{debug}");
        let text = "Error performing PUT http://x/c/b?sv=1&sig=abc%2B%3D&se=2 in 1s sig=zzz";
        assert_eq!(redact(text), "Error performing PUT http://x/c/b?sv=1&sig=REDACTED&se=2 in 1s sig=REDACTED");
    }
}
