//! Microsoft Entra ID bearer-token validation for Event Grid webhook deliveries.
//!
//! When an Event Grid subscription is configured with Entra authentication,
//! every delivery carries `Authorization: Bearer <JWT>`, an access token that
//! Entra issued to Event Grid's own application for *our* application. This
//! module owns everything needed to decide whether such a token is
//! acceptable:
//!
//! * the `[server.entra]` configuration table ([`EntraConfig`]) and its
//!   checks ([`EntraConfig::problems`]);
//! * the tenant's signing keys, loaded once from a local JWKS file or fetched
//!   from a JWKS URL and cached: refetched when a token names an unknown key
//!   id (at most once every 5 minutes, so random key ids cannot turn us into
//!   a request amplifier) and refreshed once the cached set is 24 hours old;
//! * the token checks themselves ([`EntraValidator::validate`]).
//!
//! `jsonwebtoken` does the JOSE work: it decodes the header, reads the JWKS
//! (`JwkSet`, `DecodingKey::from_jwk`), verifies the RS256 signature and
//! checks `iss`, `aud`, `exp` and `nbf` (with the clock skew as leeway) as
//! one [`Validation`]. This module adds what is Entra's: the key cache, the
//! calling application (`appid` in v1 tokens, `azp` in v2 tokens, Event
//! Grid's app id by default) and the optional required role.
//!
//! Errors ([`EntraError`]) are worded for the sender: they say which check
//! failed and with what value, so an operator can fix the subscription or
//! the app registration. They never contain the token itself, and this
//! module never logs it. Failures to obtain the signing keys are the
//! server's problem, not the sender's: [`EntraError::is_server_side`] tells
//! the caller to answer 5xx (so Event Grid retries) instead of 401.
//!
//! The JWKS URL is fetched with `reqwest` (rustls, no system TLS library).

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind as JwtErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};

/// The application id Event Grid uses when it requests tokens for webhook
/// deliveries (the same in every tenant).
pub const EVENT_GRID_APP_ID: &str = "4962773b-9cdb-44cf-a8bf-237846a00ab7";

/// Clock skew tolerated on `exp` and `nbf` unless `clock_skew` says otherwise.
pub const DEFAULT_CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// Largest accepted `clock_skew`; more would make expiry meaningless.
const MAX_CLOCK_SKEW: Duration = Duration::from_secs(60 * 60);

/// Minimum time between two fetches of the JWKS URL caused by unknown key ids.
const UNKNOWN_KID_REFETCH_INTERVAL: Duration = Duration::from_secs(5 * 60);

/// Age after which the cached key set is fetched again.
const KEYS_MAX_AGE: Duration = Duration::from_secs(24 * 60 * 60);

/// Whole-request timeout for one JWKS fetch.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest JWKS document accepted (Entra's is a few kilobytes).
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// Longest token accepted; Entra access tokens are one to three kilobytes.
const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Smallest accepted RSA modulus, in bytes (2048 bits). `jsonwebtoken`
/// verifies with any modulus size, so short keys are left out of the cache.
const MIN_RSA_MODULUS_BYTES: usize = 256;

/// Longest token-supplied value repeated in an error message.
const MAX_ECHO_CHARS: usize = 128;

/// The `[server.entra]` table of `gridfn.toml`.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntraConfig {
    /// Directory (tenant) id of the app registration that Event Grid gets tokens for.
    pub tenant_id: String,
    /// Accepted `aud` values: the app's client id and/or its App ID URI.
    pub audiences: Vec<String>,
    /// Accepted `iss` values; empty means the v1 and v2 issuers of `tenant_id`.
    #[serde(default)]
    pub issuers: Vec<String>,
    /// URL of the tenant's signing keys, e.g.
    /// `https://login.microsoftonline.com/<tenant>/discovery/v2.0/keys`.
    pub jwks_url: Option<String>,
    /// Local JWKS document (offline use), read once at start.
    pub jwks_file: Option<PathBuf>,
    /// Application role that the token's `roles` claim must contain.
    #[serde(default)]
    pub required_role: Option<String>,
    /// Accepted calling applications (`appid`/`azp`); empty means Event Grid's.
    #[serde(default)]
    pub allowed_app_ids: Vec<String>,
    /// Tolerated clock difference on `exp`/`nbf`, humantime syntax ("5m").
    #[serde(default)]
    pub clock_skew: Option<String>,
}

impl EntraConfig {
    /// Everything wrong with this table, one message per problem, each
    /// starting with the offending key (relative to the table). Empty when
    /// the configuration is usable.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();

        let tenant = self.tenant_id.trim();
        if tenant.is_empty() {
            problems.push("tenant_id: must not be empty".to_owned());
        } else if tenant.len() != self.tenant_id.len() || tenant.contains(|c: char| c.is_whitespace() || c == '/') {
            problems.push("tenant_id: must be a bare tenant id or domain (no spaces or slashes)".to_owned());
        }

        if self.audiences.is_empty() {
            problems.push("audiences: at least one is required (the app's client id and/or App ID URI)".to_owned());
        }
        blank_entries("audiences", &self.audiences, &mut problems);
        blank_entries("issuers", &self.issuers, &mut problems);
        blank_entries("allowed_app_ids", &self.allowed_app_ids, &mut problems);

        match (&self.jwks_url, &self.jwks_file) {
            (Some(_), Some(_)) | (None, None) => {
                problems.push("jwks_url / jwks_file: set exactly one".to_owned());
            }
            (Some(url), None) => {
                if let Err(problem) = check_jwks_url(url) {
                    problems.push(format!("jwks_url: {problem}"));
                }
            }
            (None, Some(path)) => {
                if path.as_os_str().is_empty() {
                    problems.push("jwks_file: must not be empty".to_owned());
                }
            }
        }

        if let Some(role) = &self.required_role
            && role.trim().is_empty()
        {
            problems.push("required_role: must not be empty (leave it out to require no role)".to_owned());
        }

        if let Err(problem) = self.clock_skew() {
            problems.push(format!("clock_skew: {problem}"));
        }

        problems
    }

    /// The accepted issuers: the configured ones, or those derived from the tenant.
    pub fn effective_issuers(&self) -> Vec<String> {
        if self.issuers.is_empty() {
            let tenant = self.tenant_id.trim();
            vec![
                format!("https://sts.windows.net/{tenant}/"),
                format!("https://login.microsoftonline.com/{tenant}/v2.0"),
            ]
        } else {
            self.issuers.clone()
        }
    }

    /// The accepted calling applications: the configured ones, or Event Grid's.
    pub fn effective_app_ids(&self) -> Vec<String> {
        if self.allowed_app_ids.is_empty() { vec![EVENT_GRID_APP_ID.to_owned()] } else { self.allowed_app_ids.clone() }
    }

    /// The tolerated clock skew; an error describes an unusable `clock_skew`.
    pub fn clock_skew(&self) -> Result<Duration, String> {
        let Some(text) = &self.clock_skew else {
            return Ok(DEFAULT_CLOCK_SKEW);
        };
        let skew = humantime::parse_duration(text.trim())
            .map_err(|err| format!("{text:?} is not a duration like \"5m\" or \"90s\" ({err})"))?;
        if skew > MAX_CLOCK_SKEW {
            return Err(format!("{text:?} is too large (at most {})", humantime::format_duration(MAX_CLOCK_SKEW)));
        }
        Ok(skew)
    }
}

fn blank_entries(key: &str, values: &[String], problems: &mut Vec<String>) {
    for (index, value) in values.iter().enumerate() {
        if value.trim().is_empty() {
            problems.push(format!("{key}[{index}]: must not be empty"));
        }
    }
}

/// A JWKS URL must be https, except on loopback addresses (tests, local proxies).
fn check_jwks_url(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|err| format!("{url:?} is not a valid URL ({err})"))?;
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if is_loopback_host(parsed.host_str().unwrap_or("")) => Ok(()),
        "http" => Err(format!("{url:?} must use https (plain http is allowed only for loopback addresses)")),
        other => Err(format!("{url:?} has scheme {other:?}; use https")),
    }
}

pub(crate) fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Why a token was refused, or why tokens cannot be checked at all.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EntraError {
    /// The `[server.entra]` table is unusable (see [`EntraConfig::problems`]).
    #[error("invalid [server.entra] configuration: {}", .0.join("; "))]
    Config(Vec<String>),
    /// The signing keys could not be loaded or fetched. A server-side problem.
    #[error("signing keys unavailable: {0}")]
    KeySource(String),
    #[error("missing Authorization: Bearer token")]
    MissingToken,
    #[error("Authorization header must use the Bearer scheme (Authorization: Bearer <token>)")]
    NotBearer,
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("token algorithm {0} is not accepted; only RS256 is")]
    Algorithm(String),
    #[error("token header has no kid (key id)")]
    MissingKeyId,
    #[error("token signed by unknown key id {0}")]
    UnknownKey(String),
    #[error("token signature does not verify with key id {0}")]
    BadSignature(String),
    #[error("token has no {0} claim")]
    MissingClaim(String),
    #[error(
        "token expired at {} (server time {}, clock skew allowed {})",
        unix_time(*.expired_at), unix_time(*.now), humantime::format_duration(*.skew)
    )]
    Expired { expired_at: i64, now: i64, skew: Duration },
    #[error(
        "token not valid before {} (server time {}, clock skew allowed {})",
        unix_time(*.not_before), unix_time(*.now), humantime::format_duration(*.skew)
    )]
    NotYetValid { not_before: i64, now: i64, skew: Duration },
    #[error("token issuer {found} is not one of {}", list(.allowed))]
    Issuer { found: String, allowed: Vec<String> },
    #[error("token audience {found} is not one of {}", list(.allowed))]
    Audience { found: String, allowed: Vec<String> },
    #[error("{}", app_id_refusal(.found, .allowed))]
    AppId { found: String, allowed: Vec<String> },
    #[error("token lacks role {required} (it has {})", list(.found))]
    MissingRole { required: String, found: Vec<String> },
}

impl EntraError {
    /// True when the failure is ours, not the sender's: answer 500/503 (so
    /// Event Grid retries later) rather than 401.
    pub fn is_server_side(&self) -> bool {
        matches!(self, EntraError::Config(_) | EntraError::KeySource(_))
    }
}

fn app_id_refusal(found: &str, allowed: &[String]) -> String {
    if allowed.len() == 1 && allowed[0] == EVENT_GRID_APP_ID {
        format!("token app id {found} is not Event Grid's ({EVENT_GRID_APP_ID})")
    } else {
        format!("token app id {found} is not one of {} (Event Grid's is {EVENT_GRID_APP_ID})", list(allowed))
    }
}

fn list(items: &[String]) -> String {
    format!("[{}]", items.join(", "))
}

/// An RFC 3339 rendering of a `NumericDate`, or the raw number when out of range.
fn unix_time(seconds: i64) -> String {
    const YEAR_10000: i64 = 253_402_300_800;
    match u64::try_from(seconds) {
        Ok(secs) if seconds < YEAR_10000 => chrono::DateTime::from_timestamp(secs as i64, 0)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .unwrap_or_default(),
        _ => format!("{seconds} (seconds since 1970)"),
    }
}

/// A token-supplied value made safe to repeat in a message: short, no control characters.
fn echo(value: &str) -> String {
    let mut out: String = value.chars().take(MAX_ECHO_CHARS).map(|c| if c.is_control() { '?' } else { c }).collect();
    if value.chars().count() > MAX_ECHO_CHARS {
        out.push('…');
    }
    out
}

/// Checks Entra bearer tokens against one `[server.entra]` configuration.
/// Cheap to share: wrap it in an `Arc` and call [`validate`](Self::validate)
/// from any number of request handlers.
pub struct EntraValidator {
    /// The accepted issuers and audiences, in configuration order, for
    /// refusals (`validation` holds them too, as unordered sets).
    issuers: Vec<String>,
    audiences: Vec<String>,
    app_ids: Vec<String>,
    required_role: Option<String>,
    clock_skew: Duration,
    /// RS256 only; `iss`, `aud` and `exp` required; `exp` and `nbf` checked
    /// with `clock_skew` as leeway.
    validation: Validation,
    keys: KeyStore,
}

impl fmt::Debug for EntraValidator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EntraValidator")
            .field("issuers", &self.issuers)
            .field("audiences", &self.audiences)
            .field("app_ids", &self.app_ids)
            .field("required_role", &self.required_role)
            .field("clock_skew", &self.clock_skew)
            .field("key_source", &self.keys.source.describe())
            .finish_non_exhaustive()
    }
}

impl EntraValidator {
    /// Checks the configuration and loads the signing keys: reads the JWKS
    /// file, or fetches the JWKS URL once. Either failing is an error that
    /// names the file or URL.
    pub async fn new(config: &EntraConfig) -> Result<Self, EntraError> {
        let problems = config.problems();
        if !problems.is_empty() {
            return Err(EntraError::Config(problems));
        }
        let clock_skew =
            config.clock_skew().map_err(|problem| EntraError::Config(vec![format!("clock_skew: {problem}")]))?;

        let source = match (&config.jwks_url, &config.jwks_file) {
            (Some(url), None) => {
                let client = reqwest::Client::builder()
                    .timeout(FETCH_TIMEOUT)
                    .connect_timeout(FETCH_TIMEOUT / 2)
                    .user_agent(concat!("gridfn/", env!("CARGO_PKG_VERSION")))
                    .build()
                    .map_err(|err| EntraError::KeySource(format!("cannot create an HTTP client: {err}")))?;
                KeySource::Url { url: url.clone(), client }
            }
            (None, Some(path)) => KeySource::File(path.clone()),
            // `problems()` has already refused the other combinations.
            _ => {
                return Err(EntraError::Config(vec!["jwks_url / jwks_file: set exactly one".to_owned()]));
            }
        };
        let keys = source.load().await.map_err(EntraError::KeySource)?;

        let issuers = config.effective_issuers();
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_issuer(&issuers);
        validation.set_audience(&config.audiences);
        // `iss` and `aud` are checked only when present, unless required.
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.validate_nbf = true;
        validation.leeway = clock_skew.as_secs();

        let now = Instant::now();
        Ok(EntraValidator {
            issuers,
            audiences: config.audiences.clone(),
            app_ids: config.effective_app_ids(),
            required_role: config.required_role.clone(),
            clock_skew,
            validation,
            keys: KeyStore {
                source,
                state: RwLock::new(KeyState { keys, fetched_at: now, last_attempt: now, last_error: None }),
                fetch_lock: tokio::sync::Mutex::new(()),
                refetch_interval: UNKNOWN_KID_REFETCH_INTERVAL,
                max_age: KEYS_MAX_AGE,
            },
        })
    }

    /// Validates the raw `Authorization` header value of one request.
    pub async fn validate(&self, authorization: Option<&str>) -> Result<(), EntraError> {
        let token = bearer_token(authorization)?;
        let header = jsonwebtoken::decode_header(token).map_err(|err| {
            EntraError::Malformed(match err.kind() {
                JwtErrorKind::Base64(_) | JwtErrorKind::Utf8(_) => "the header is not base64url".to_owned(),
                // `alg: none` lands here too: jsonwebtoken's `Algorithm` has no such variant.
                _ => "the header is not a JOSE header with a known alg (only RS256 is accepted)".to_owned(),
            })
        })?;
        // Refused before the key lookup, so such tokens never cause a JWKS fetch.
        if !self.validation.algorithms.contains(&header.alg) {
            return Err(EntraError::Algorithm(format!("{:?}", header.alg)));
        }
        if header.crit.is_some() {
            return Err(EntraError::Malformed("critical header extensions (crit) are not supported".to_owned()));
        }
        let kid = header.kid.ok_or(EntraError::MissingKeyId)?;
        let key = self.keys.key(&kid).await?;
        match jsonwebtoken::decode::<CallerClaims>(token, &key, &self.validation) {
            Ok(data) => self.check_caller(data.claims),
            Err(err) => Err(self.refusal(err.into_kind(), token, &kid)),
        }
    }

    /// Words jsonwebtoken's verdict. Its claim errors carry no values, so
    /// those are read from the token again; by then the signature has been
    /// verified, so they are what the issuer signed.
    fn refusal(&self, kind: JwtErrorKind, token: &str, kid: &str) -> EntraError {
        let signed =
            || jsonwebtoken::dangerous::insecure_decode_claims::<Map<String, Value>>(token).unwrap_or_default();
        let (now, skew) = (unix_now(), self.clock_skew);
        match kind {
            JwtErrorKind::InvalidSignature => EntraError::BadSignature(echo(kid)),
            // jsonwebtoken counts a claim of the wrong type as missing.
            JwtErrorKind::MissingRequiredClaim(claim) if signed().contains_key(&claim) => {
                EntraError::Malformed(format!("the {claim} claim has the wrong type"))
            }
            JwtErrorKind::MissingRequiredClaim(claim) => EntraError::MissingClaim(claim),
            JwtErrorKind::ExpiredSignature => {
                EntraError::Expired { expired_at: numeric_date(&signed(), "exp"), now, skew }
            }
            JwtErrorKind::ImmatureSignature => {
                EntraError::NotYetValid { not_before: numeric_date(&signed(), "nbf"), now, skew }
            }
            JwtErrorKind::InvalidIssuer => {
                EntraError::Issuer { found: echo(&names(&signed(), "iss")), allowed: self.issuers.clone() }
            }
            JwtErrorKind::InvalidAudience => {
                EntraError::Audience { found: echo(&names(&signed(), "aud")), allowed: self.audiences.clone() }
            }
            JwtErrorKind::InvalidClaimFormat(claim) => {
                EntraError::Malformed(format!("the {claim} claim has the wrong type"))
            }
            JwtErrorKind::Json(_) => EntraError::Malformed("the claims are not JSON of the expected shape".to_owned()),
            JwtErrorKind::Base64(_) | JwtErrorKind::Utf8(_) => {
                EntraError::Malformed("the claims or signature are not base64url".to_owned())
            }
            other => EntraError::Malformed(format!("cannot be verified ({other:?})")),
        }
    }

    /// Accepts tokens of any calling application unless `allowed_app_ids`
    /// lists some: a namespace's clients are the tenant's own applications,
    /// not Event Grid (whose app id is the default for webhooks).
    pub fn accept_any_app_unless_listed(mut self, config: &EntraConfig) -> Self {
        if config.allowed_app_ids.is_empty() {
            self.app_ids.clear();
        }
        self
    }

    /// The checks that are Entra's, not JWT's: the calling application and the role.
    fn check_caller(&self, claims: CallerClaims) -> Result<(), EntraError> {
        // v1 tokens name the caller in `appid`, v2 tokens in `azp`.
        let app_id = match claims.ver.as_deref() {
            Some("2.0") => claims.azp.or(claims.appid),
            _ => claims.appid.or(claims.azp),
        }
        .ok_or_else(|| EntraError::MissingClaim("appid (v1) or azp (v2)".to_owned()))?;
        // Empty only after `accept_any_app_unless_listed`.
        if !self.app_ids.is_empty() && !self.app_ids.contains(&app_id) {
            return Err(EntraError::AppId { found: echo(&app_id), allowed: self.app_ids.clone() });
        }

        let roles = claims.roles.unwrap_or_default();
        if let Some(required) = &self.required_role
            && !roles.contains(required)
        {
            return Err(EntraError::MissingRole {
                required: required.clone(),
                found: roles.iter().map(|role| echo(role)).collect(),
            });
        }
        Ok(())
    }

    /// Overrides the refetch limits (tests only: the real ones are minutes and hours).
    #[cfg(test)]
    fn set_refresh_policy(&mut self, refetch_interval: Duration, max_age: Duration) {
        self.keys.refetch_interval = refetch_interval;
        self.keys.max_age = max_age;
    }
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| i64::try_from(since.as_secs()).unwrap_or(i64::MAX))
}

/// A `NumericDate` claim as a whole number of seconds (jsonwebtoken accepts fractions too).
fn numeric_date(claims: &Map<String, Value>, name: &str) -> i64 {
    claims.get(name).and_then(Value::as_f64).map_or(0, |seconds| seconds as i64)
}

/// A string-or-array claim (`iss`, `aud`) as one comma-separated text.
fn names(claims: &Map<String, Value>, name: &str) -> String {
    match claims.get(name) {
        Some(Value::String(one)) => one.clone(),
        Some(Value::Array(many)) => many.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", "),
        _ => String::new(),
    }
}

/// The token from `Authorization: Bearer <token>`, checked for the JWS compact shape.
fn bearer_token(authorization: Option<&str>) -> Result<&str, EntraError> {
    let value = authorization.map(str::trim).unwrap_or("");
    if value.is_empty() || value.eq_ignore_ascii_case("bearer") {
        return Err(EntraError::MissingToken);
    }
    let (scheme, token) = value.split_once([' ', '\t']).ok_or(EntraError::NotBearer)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(EntraError::NotBearer);
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(EntraError::MissingToken);
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(EntraError::Malformed(format!("longer than {MAX_TOKEN_BYTES} bytes")));
    }
    // jsonwebtoken splits at the last two dots, so a JWE or other shape would
    // reach it as a garbled header; say what is wrong instead.
    if token.split('.').count() != 3 {
        return Err(EntraError::Malformed("not a JWT (expected three dot-separated parts)".to_owned()));
    }
    Ok(token)
}

/// The claims that name the caller; jsonwebtoken checks the registered ones.
#[derive(Deserialize)]
struct CallerClaims {
    ver: Option<String>,
    appid: Option<String>,
    azp: Option<String>,
    roles: Option<Vec<String>>,
}

/// Where the signing keys come from.
enum KeySource {
    Url { url: String, client: reqwest::Client },
    File(PathBuf),
}

type KeyMap = HashMap<String, Arc<DecodingKey>>;

impl KeySource {
    fn describe(&self) -> String {
        match self {
            KeySource::Url { url, .. } => url.clone(),
            KeySource::File(path) => path.display().to_string(),
        }
    }

    /// Reads or fetches the key set; the error names the file or URL.
    async fn load(&self) -> Result<KeyMap, String> {
        match self {
            KeySource::File(path) => {
                let bytes = tokio::fs::read(path)
                    .await
                    .map_err(|err| format!("cannot read signing keys file {}: {err}", path.display()))?;
                parse_jwks(&bytes).map_err(|err| format!("signing keys file {}: {err}", path.display()))
            }
            KeySource::Url { url, client } => {
                let bytes = fetch(client, url).await?;
                parse_jwks(&bytes).map_err(|err| format!("signing keys from {url}: {err}"))
            }
        }
    }
}

async fn fetch(client: &reqwest::Client, url: &str) -> Result<Vec<u8>, String> {
    let cannot = |err: reqwest::Error| format!("cannot fetch signing keys from {url}: {err}");
    let mut response = client
        .get(url)
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|err| cannot(err.without_url()))?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("cannot fetch signing keys from {url}: it answered HTTP {status}"));
    }
    let too_large = || format!("signing keys from {url}: larger than {MAX_JWKS_BYTES} bytes");
    if response.content_length().is_some_and(|len| len > MAX_JWKS_BYTES as u64) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|err| cannot(err.without_url()))? {
        if body.len() + chunk.len() > MAX_JWKS_BYTES {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The usable keys of a JWKS document, by `kid`. Unusable entries are
/// skipped, not fatal, so that a new key type in the tenant's set does not
/// lock everyone out.
fn parse_jwks(bytes: &[u8]) -> Result<KeyMap, String> {
    let set: JwkSet =
        serde_json::from_slice(bytes).map_err(|err| format!("not a JWKS document ({{\"keys\": [...]}}): {err}"))?;
    let mut keys = KeyMap::new();
    for jwk in &set.keys {
        if let (Some(kid), Some(key)) = (&jwk.common.key_id, rs256_key(jwk)) {
            keys.entry(kid.clone()).or_insert_with(|| Arc::new(key));
        }
    }
    if keys.is_empty() {
        return Err("no usable signing key (RSA, use \"sig\", with kid, n, e, at least 2048 bits)".to_owned());
    }
    Ok(keys)
}

/// The RS256 verification key of `jwk`, or `None` for what this module does
/// not use: other key types, encryption keys, keys for other algorithms and
/// moduli under 2048 bits.
fn rs256_key(jwk: &Jwk) -> Option<DecodingKey> {
    let AlgorithmParameters::RSA(_) = jwk.algorithm else { return None };
    if jwk.common.public_key_use.as_ref().is_some_and(|use_| *use_ != PublicKeyUse::Signature)
        || jwk.common.key_algorithm.is_some_and(|alg| alg != KeyAlgorithm::RS256)
    {
        return None;
    }
    let key = DecodingKey::from_jwk(jwk).ok()?;
    let DecodingKeyKind::RsaModulusExponent { n, .. } = key.kind() else { return None };
    (n.iter().skip_while(|&&byte| byte == 0).count() >= MIN_RSA_MODULUS_BYTES).then_some(key)
}

/// The cached key set and the bookkeeping for refetching it.
struct KeyStore {
    source: KeySource,
    state: RwLock<KeyState>,
    /// Held while fetching, so that concurrent requests share one fetch.
    fetch_lock: tokio::sync::Mutex<()>,
    refetch_interval: Duration,
    max_age: Duration,
}

struct KeyState {
    keys: KeyMap,
    /// When `keys` was last loaded successfully.
    fetched_at: Instant,
    /// When a fetch was last tried, successful or not.
    last_attempt: Instant,
    /// Why the last fetch failed, while it is the latest attempt.
    last_error: Option<String>,
}

impl KeyStore {
    /// The key for `kid`, fetching the key set again when it is stale or
    /// lacks `kid` (the latter at most once per `refetch_interval`).
    async fn key(&self, kid: &str) -> Result<Arc<DecodingKey>, EntraError> {
        let KeySource::Url { url, .. } = &self.source else {
            return match self.read().keys.get(kid) {
                Some(key) => Ok(Arc::clone(key)),
                None => Err(EntraError::UnknownKey(echo(kid))),
            };
        };
        if let Some(answer) = self.lookup(kid) {
            return answer;
        }
        let _fetching = self.fetch_lock.lock().await;
        // Another request may have fetched while this one waited.
        if let Some(answer) = self.lookup(kid) {
            return answer;
        }
        tracing::info!(url = %url, "fetching Entra signing keys");
        let result = self.source.load().await;
        let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        state.last_attempt = now;
        match result {
            Ok(keys) => {
                state.keys = keys;
                state.fetched_at = now;
                state.last_error = None;
                match state.keys.get(kid) {
                    Some(key) => Ok(Arc::clone(key)),
                    None => Err(EntraError::UnknownKey(echo(kid))),
                }
            }
            Err(err) => {
                state.last_error = Some(err.clone());
                match state.keys.get(kid) {
                    // Stale but known: keep serving rather than fail everyone.
                    Some(key) => {
                        tracing::warn!(error = %err, "cannot refresh Entra signing keys; using the cached ones");
                        Ok(Arc::clone(key))
                    }
                    None => Err(EntraError::KeySource(err)),
                }
            }
        }
    }

    /// `None` means: fetch, then look again.
    fn lookup(&self, kid: &str) -> Option<Result<Arc<DecodingKey>, EntraError>> {
        let state = self.read();
        let stale = state.fetched_at.elapsed() >= self.max_age;
        let may_fetch = state.last_attempt.elapsed() >= self.refetch_interval;
        match state.keys.get(kid) {
            Some(key) if !stale || !may_fetch => Some(Ok(Arc::clone(key))),
            Some(_) => None,
            None if may_fetch => None,
            // Refetched recently: report why that fetch failed, if it did.
            None => Some(Err(match &state.last_error {
                Some(err) => EntraError::KeySource(err.clone()),
                None => EntraError::UnknownKey(echo(kid)),
            })),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, KeyState> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    use super::*;

    // Two RSA-2048 test key pairs, made once with `openssl genrsa -traditional
    // 2048`; they sign nothing but these tests. `*_N` is the base64url modulus.
    const KEY_A_PEM: &str = "\
    -----BEGIN RSA PRIVATE KEY-----\n\
    MIIEpAIBAAKCAQEAzAOOM6rkMymH/i36oCkWabYvEPkWxG8fw9DrhYO7AYHdPGWw\n\
    DTCfEED1zPG4SK4WeOnVg0qri17OQHO/uyBLc7GGv2yAfqMvVUwBLh8LosxpnjSd\n\
    OwFav7U9OD+Goj8iqpItBYUUoOnFHAlF3QgjMaqdrZOtli2l3RU9vkNSIOkVVyQb\n\
    bpnNsOm+p9TnshdUU+qbToKflyhsCYTSK0Ri4EYa48KiAeuDaIXnsFT5RaLpgDHR\n\
    dGgtYyNBq2VHZc+vyUlXJ2yL8W66t5LYZOfIRYT5DGKx1/nZgsVSmvetazKl+S+E\n\
    cpMpLhE5VKMIXtOEbBzApLPhBORDklapHbk8TQIDAQABAoIBAFKBfZjXm8I1IZJh\n\
    9eGfvDi0PQSYN+TpK+d9LkKoq5BIfLhYR4KOD0X7f2yKtQRvoxbzOi4GnKmYhcD7\n\
    DqcWwGzhdqUjtDOCuzm7qx6D36jPEkew74VVXuX43fFJf6FN9y8UPrDkyRrqb5SP\n\
    C3oAOHt1jJ8OAj2h6FoopPe1MhmscMdUJkcJoPp3cI+3RQxEvcjZ3euWw4bRDpr4\n\
    /AMFb6cBtZj0NBmz4qDzo9ky1VD1TojKSHhKIAbvMw7WOj18JDRWHpd+twCsdRLk\n\
    Zsr5IjzGyQce+PcTlTSf6SxAhQ3DXlOWlIkIxU9oB/0+sJIpfNe0y/I6Gesvp4oU\n\
    H+WywOECgYEA7KnIndgp4wn/tZ9I6MFaOVzErO1537ejUIxPW9fLhqK9XxCesl8o\n\
    A4b6aWDn1XTeuVvh3r7DJsu6n8WL4SzaCh5zBuQrMZsAK3A/Ves4nfOSH7EtxLQL\n\
    gObgjfVd+Z6OUdV7b+be2nWS2TzJoc4DrTRLstkz2A4jFpLIUnAx88MCgYEA3K7a\n\
    7yVQFKXn16pHBheqilYx/1N3aR7qW5Xcw7aY5vAsHj4k0IQCgtkP0BgJFnz6l4ye\n\
    6EDJB/ja+YrjbyZuGMwKmRNLuMTlgIasqh8fd7BdRd2QQp8OwjylWYIxmu9BYb/S\n\
    Sss/VaxjQkrwN3/K0+JC6qVY0YJeZYtN89SGXq8CgYEAo6Ryt9I0hGzxh6BwRaEM\n\
    xgVDaV97mhncr2GVrif070+wKf/P+/6YKHg4xozfQVXie8Dw2ZiGUFkm3js2kaj1\n\
    y3FqkCVNSKuo3mBrKvnO2EkHjSpyP0VPfv4l34L+TBA60JMRGztEdUI/HD9QHLXb\n\
    DPTQMwbFNmvwDzfHlFlH8QkCgYA/sih3BioLC6fTU86UL5iFvUNJEupQaR/zt1m1\n\
    E6smXQQe5ojxtmiTI9uwkH9vAjvCKlBjcO+VYXqytCfZGRqGBb65WBxvBEXJxxVn\n\
    NPx8K2eAlubgk9BKt/5xy2ZN9ejFMfycofVx4QP1SnPzUOtWJORzna35KsvcO00Q\n\
    p7Lw+QKBgQDVi7WsbgIo4KdQkJnebHglZcth4YdM03v5HuvM5a6Utq7CL0HrCZIb\n\
    e1chNmODCYeHJFCISuhbADuO2TurxuYepYGfde1tsFAd4FWaaeREJXyDI+5X/wY8\n\
    Fc8afOMivvCxAPAUypIqvHl+1m3O7PyfS6rmGrnDOZvWIwHC2WYgpA==\n\
    -----END RSA PRIVATE KEY-----\n\
    ";
    const KEY_A_N: &str = "zAOOM6rkMymH_i36oCkWabYvEPkWxG8fw9DrhYO7AYHdPGWwDTCfEED1zPG4SK4WeOnVg0qri17OQHO_uyBLc7GGv2yAfqMvVUwBLh8LosxpnjSdOwFav7U9OD-Goj8iqpItBYUUoOnFHAlF3QgjMaqdrZOtli2l3RU9vkNSIOkVVyQbbpnNsOm-p9TnshdUU-qbToKflyhsCYTSK0Ri4EYa48KiAeuDaIXnsFT5RaLpgDHRdGgtYyNBq2VHZc-vyUlXJ2yL8W66t5LYZOfIRYT5DGKx1_nZgsVSmvetazKl-S-EcpMpLhE5VKMIXtOEbBzApLPhBORDklapHbk8TQ";
    const KEY_B_PEM: &str = "\
    -----BEGIN RSA PRIVATE KEY-----\n\
    MIIEpAIBAAKCAQEAuQQENJV94wVCmG/6rc7vI5DEa+nkvKcVSrnbTNVmzQE+9I0S\n\
    G8zUg176VZa2o4AFnWBlEPHU0bFtHDYEO1/MimA62UhVXBDQ0d5ihamhrkof2DUs\n\
    mHH0P6UEpAHFojwj6MXzdq/UhWnBkcufLjBJp3R9R99VEoOqly0qiMFN62kNQcyi\n\
    m0spWJdudxwMF2c6aNEO/sIumDjGxM1ijoo4eUMBvhvWmvYzCIBpt2Brhqi81amw\n\
    pcULechKYRCN/lkpXjoCMGcPA9PrKbWA0WRs7da+s70Vq4KxLJW+oiUjYIy0VaXX\n\
    UleAsqIwRK7B5Sx94XWtVPNK3dQ9LjiJqmN6OQIDAQABAoIBAAapaBxbmJ+MwC/c\n\
    claBSbeKXiQzlQac7oWVCRosYen2RkXIcZM6Lhm32QQta9CZyrn2r1TrnDnbrV3T\n\
    bRYVNjhyTBQoSFiLC3XPD9WXvMhZh2mByqQHkF+dSbw9CxhzGWjnfcNzg8+09eER\n\
    x57CYtiKd3tXxYin4IPWfr5TVYKpIz+fQpwsffdD/aXkGtv9B1b7Cc5KMyTqIMXD\n\
    c4NsPU50xt64NtVfLHSb3KGFKISg+ZvNqwWNmkZ035E0N+gfJieEmY8Vy0kYiTo9\n\
    qRdA8Gs6EPD9CzOFj5efob5aeKKiPWMWLXXhaElYEniIlQs33LpUy23ntw5GMVd8\n\
    wSOzkd0CgYEA4jrkrbCYxcI5J++JUMt+ZAK929AJDDV9XMKfdqMlRSWlDcw4D3jR\n\
    PAcnq75YvnQpxI2E9ws2RFow0wAVSHE7v+NPR46Tt43PWA6XE1uCWH8St+6N7e/v\n\
    5HDWQoijnqOIN0k15H5jM4/M4XYfNiEV1jDNS+xnJ8aFEGZOMeRn/uUCgYEA0Vy3\n\
    tZ9Qp7BNFv+V56FM2mllpThS1tAOd43NxdrEvvX8B3kG8t79oVobqmBwqMh0eaX7\n\
    I7u9sIZWx2fyqYLpQSjR0rkcnGODYwsu/W5JLVbfkEwra0IYR4v2cob/0xuvZ/CT\n\
    lMOkOHEz35/TGOaf124ZXhriAg7m2l3AWFIRxMUCgYEAqaONzKyKsmgEoeydpCcj\n\
    fG0N3yFtV2lYutD58GU/0kz7KpCDTR7EjuWymrceJppGo6uXFASlSbXzvJToYK0A\n\
    J9CUp0zDebVt0FMIeCx7Xk7TQ3cvmEb+NOdj0vpQ7ukjgIl2TwNy8bwX3szLdLR0\n\
    gmuP1inL5GiZaQW+Bu2GCf0CgYBWqlPd2iIwGDoBMDHknY/Lxd9uwl8AT0X91XR9\n\
    166kAf2fNklbFlXVihBzudJI/BnDFaNdSmUegq2/g9cetnNKJtScr0YZstP7lvCP\n\
    tiySmSiYef9rOgQE8fpFtH6H7CjzFNJyvX3oY2v+wRFIeIdoTUow+13dTj/f2vk5\n\
    VlfGpQKBgQCa8EOdBiXfIsNcZuk5NXTNzgnIUxOohCohioIlXY8B2wwrWYvMsQLf\n\
    m2ZVAatd7wEFV4+8w3gIZzokRht2AI2C5egGzDg98PLHsZrrC0GZ6dqkioP8/VuQ\n\
    8/lIOjPUbaBFboa3NOcJzMmaMmOjyQZC21Y3K5LwNW+J6krDZzkt0A==\n\
    -----END RSA PRIVATE KEY-----\n\
    ";
    const KEY_B_N: &str = "uQQENJV94wVCmG_6rc7vI5DEa-nkvKcVSrnbTNVmzQE-9I0SG8zUg176VZa2o4AFnWBlEPHU0bFtHDYEO1_MimA62UhVXBDQ0d5ihamhrkof2DUsmHH0P6UEpAHFojwj6MXzdq_UhWnBkcufLjBJp3R9R99VEoOqly0qiMFN62kNQcyim0spWJdudxwMF2c6aNEO_sIumDjGxM1ijoo4eUMBvhvWmvYzCIBpt2Brhqi81amwpcULechKYRCN_lkpXjoCMGcPA9PrKbWA0WRs7da-s70Vq4KxLJW-oiUjYIy0VaXXUleAsqIwRK7B5Sx94XWtVPNK3dQ9LjiJqmN6OQ";

    const TENANT: &str = "72f988bf-0000-4000-8000-00000000c0de";
    const CLIENT_ID: &str = "0b0b0b0b-1111-4222-8333-444444444444";
    const APP_ID_URI: &str = "api://gridfn-tests";

    fn now() -> i64 {
        unix_now()
    }

    fn jwks(keys: &[(&str, &str)]) -> String {
        let keys: Vec<Value> =
            keys.iter().map(|(kid, n)| json!({"kty": "RSA", "use": "sig", "kid": kid, "n": n, "e": "AQAB"})).collect();
        json!({ "keys": keys }).to_string()
    }

    fn sign_with(pem: &str, kid: &str, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(kid.to_owned());
        let key = EncodingKey::from_rsa_pem(pem.as_bytes()).expect("test key");
        jsonwebtoken::encode(&header, claims, &key).expect("sign")
    }

    fn sign(claims: &Value) -> String {
        sign_with(KEY_A_PEM, "key-a", claims)
    }

    fn bearer(token: &str) -> String {
        format!("Bearer {token}")
    }

    /// An Entra v1 access token as Event Grid presents it.
    fn v1_claims() -> Value {
        let now = now();
        json!({
            "aud": APP_ID_URI,
            "iss": format!("https://sts.windows.net/{TENANT}/"),
            "iat": now - 60,
            "nbf": now - 60,
            "exp": now + 3600,
            "appid": EVENT_GRID_APP_ID,
            "appidacr": "2",
            "oid": "9e9e9e9e-0000-4000-8000-000000000001",
            "sub": "9e9e9e9e-0000-4000-8000-000000000001",
            "tid": TENANT,
            "roles": ["EventGrid.Deliver"],
            "ver": "1.0",
        })
    }

    /// An Entra v2 access token: `azp` instead of `appid`.
    fn v2_claims() -> Value {
        let now = now();
        json!({
            "aud": CLIENT_ID,
            "iss": format!("https://login.microsoftonline.com/{TENANT}/v2.0"),
            "iat": now - 60,
            "nbf": now - 60,
            "exp": now + 3600,
            "azp": EVENT_GRID_APP_ID,
            "azpacr": "2",
            "oid": "9e9e9e9e-0000-4000-8000-000000000002",
            "sub": "9e9e9e9e-0000-4000-8000-000000000002",
            "tid": TENANT,
            "ver": "2.0",
        })
    }

    /// `claims` with `key` set to `value`, or removed when `value` is null.
    fn with(mut claims: Value, key: &str, value: Value) -> Value {
        let object = claims.as_object_mut().expect("object");
        if value.is_null() {
            object.remove(key);
        } else {
            object.insert(key.to_owned(), value);
        }
        claims
    }

    fn config() -> EntraConfig {
        EntraConfig {
            tenant_id: TENANT.to_owned(),
            audiences: vec![CLIENT_ID.to_owned(), APP_ID_URI.to_owned()],
            issuers: Vec::new(),
            jwks_url: None,
            jwks_file: Some(PathBuf::from("/etc/gridfn/entra-keys.json")),
            required_role: None,
            allowed_app_ids: Vec::new(),
            clock_skew: None,
        }
    }

    /// A validator whose keys (key A only) come from a JWKS file.
    async fn file_validator_with(adjust: impl FnOnce(&mut EntraConfig)) -> (EntraValidator, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keys.json");
        std::fs::write(&path, jwks(&[("key-a", KEY_A_N)])).expect("write jwks");
        let mut config = config();
        config.jwks_file = Some(path);
        adjust(&mut config);
        let validator = EntraValidator::new(&config).await.expect("validator");
        (validator, dir)
    }

    async fn file_validator() -> (EntraValidator, tempfile::TempDir) {
        file_validator_with(|_| {}).await
    }

    async fn check(validator: &EntraValidator, token: &str) -> Result<(), EntraError> {
        validator.validate(Some(&bearer(token))).await
    }

    /// Refusal of `token`, asserting the message is client-side and does not echo it.
    async fn refusal(validator: &EntraValidator, token: &str) -> EntraError {
        let err = check(validator, token).await.expect_err("token must be refused");
        assert!(!err.is_server_side(), "{err}");
        let message = err.to_string();
        assert!(!message.contains(token), "message echoes the token: {message}");
        for part in token.split('.').filter(|part| part.len() > 8) {
            assert!(!message.contains(part), "message echoes a token part: {message}");
        }
        err
    }

    // ---- accepted tokens -------------------------------------------------

    #[tokio::test]
    async fn accepts_v1_token_with_appid() {
        let (validator, _dir) = file_validator().await;
        check(&validator, &sign(&v1_claims())).await.expect("valid");
    }

    #[tokio::test]
    async fn accepts_v2_token_with_azp() {
        let (validator, _dir) = file_validator().await;
        check(&validator, &sign(&v2_claims())).await.expect("valid");
        // Fractional NumericDates are valid JSON numbers, and accepted.
        let now = now() as f64;
        let claims = with(with(v2_claims(), "exp", json!(now + 60.5)), "nbf", json!(now - 0.5));
        check(&validator, &sign(&claims)).await.expect("valid");
    }

    #[tokio::test]
    async fn accepts_audience_array_and_lowercase_scheme() {
        let (validator, _dir) = file_validator().await;
        let token = sign(&with(v1_claims(), "aud", json!(["other", APP_ID_URI])));
        let header = format!("  bearer   {token} ");
        assert!(validator.validate(Some(&header)).await.is_ok());
    }

    // ---- signature and keys ----------------------------------------------

    #[tokio::test]
    async fn refuses_wrong_signature() {
        let (validator, _dir) = file_validator().await;
        // Signed by key B but claiming to be key A.
        let token = sign_with(KEY_B_PEM, "key-a", &v1_claims());
        let err = refusal(&validator, &token).await;
        assert!(matches!(err, EntraError::BadSignature(ref kid) if kid == "key-a"), "{err}");

        // A valid token whose claims were altered after signing.
        let token = sign(&v1_claims());
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged = URL_SAFE_NO_PAD.encode(with(v1_claims(), "roles", json!(["Admin"])).to_string().as_bytes());
        parts[1] = &forged;
        let err = refusal(&validator, &parts.join(".")).await;
        assert!(matches!(err, EntraError::BadSignature(_)), "{err}");
    }

    #[tokio::test]
    async fn refuses_unknown_kid() {
        let (validator, _dir) = file_validator().await;
        let token = sign_with(KEY_B_PEM, "key-b", &v1_claims());
        let err = refusal(&validator, &token).await;
        assert_eq!(err.to_string(), "token signed by unknown key id key-b");
    }

    #[tokio::test]
    async fn refuses_token_without_kid() {
        let (validator, _dir) = file_validator().await;
        let header = Header::new(Algorithm::RS256);
        let key = EncodingKey::from_rsa_pem(KEY_A_PEM.as_bytes()).unwrap();
        let token = jsonwebtoken::encode(&header, &v1_claims(), &key).unwrap();
        let err = refusal(&validator, &token).await;
        assert!(matches!(err, EntraError::MissingKeyId), "{err}");
    }

    #[tokio::test]
    async fn refuses_alg_none() {
        let (validator, _dir) = file_validator().await;
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT","kid":"key-a"}"#);
        let claims = URL_SAFE_NO_PAD.encode(v1_claims().to_string().as_bytes());
        let err = refusal(&validator, &format!("{header}.{claims}.")).await;
        assert_eq!(
            err.to_string(),
            "malformed token: the header is not a JOSE header with a known alg (only RS256 is accepted)"
        );
    }

    #[tokio::test]
    async fn refuses_critical_header_extensions() {
        let (validator, _dir) = file_validator().await;
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some("key-a".to_owned());
        header.crit = Some(vec!["exp".to_owned()]);
        let key = EncodingKey::from_rsa_pem(KEY_A_PEM.as_bytes()).unwrap();
        let token = jsonwebtoken::encode(&header, &v1_claims(), &key).unwrap();
        let err = refusal(&validator, &token).await;
        assert!(err.to_string().contains("crit"), "{err}");
    }

    #[tokio::test]
    async fn refuses_hs256_even_keyed_with_the_public_key() {
        let (validator, _dir) = file_validator().await;
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("key-a".to_owned());
        for secret in [KEY_A_N.as_bytes(), b"shared secret".as_slice()] {
            let token = jsonwebtoken::encode(&header, &v1_claims(), &EncodingKey::from_secret(secret)).unwrap();
            let err = refusal(&validator, &token).await;
            assert!(matches!(err, EntraError::Algorithm(ref alg) if alg == "HS256"), "{err}");
        }
    }

    #[tokio::test]
    async fn refuses_other_rsa_algorithms() {
        let (validator, _dir) = file_validator().await;
        let mut header = Header::new(Algorithm::PS256);
        header.kid = Some("key-a".to_owned());
        let key = EncodingKey::from_rsa_pem(KEY_A_PEM.as_bytes()).unwrap();
        let token = jsonwebtoken::encode(&header, &v1_claims(), &key).unwrap();
        let err = refusal(&validator, &token).await;
        assert!(matches!(err, EntraError::Algorithm(ref alg) if alg == "PS256"), "{err}");
    }

    #[tokio::test]
    async fn refuses_malformed_tokens() {
        let (validator, _dir) = file_validator().await;
        for token in ["abc", "a.b", "a.b.c.d.e", "!!!.e30.sig", "e30.e30.sig"] {
            let err = check(&validator, token).await.expect_err(token);
            assert!(matches!(err, EntraError::Malformed(_) | EntraError::Algorithm(_)), "{token}: {err}");
        }
        let err = check(&validator, &"a".repeat(MAX_TOKEN_BYTES + 1)).await.unwrap_err();
        assert!(matches!(err, EntraError::Malformed(_)), "{err}");
    }

    // ---- claims --------------------------------------------------------------

    #[tokio::test]
    async fn refuses_wrong_issuer() {
        let (validator, _dir) = file_validator().await;
        let other = "https://sts.windows.net/00000000-0000-0000-0000-000000000000/";
        let err = refusal(&validator, &sign(&with(v1_claims(), "iss", json!(other)))).await;
        let message = err.to_string();
        assert!(matches!(err, EntraError::Issuer { .. }), "{err}");
        assert!(message.starts_with(&format!("token issuer {other} is not one of [")));
        assert!(message.contains(&format!("https://login.microsoftonline.com/{TENANT}/v2.0")));

        let err = refusal(&validator, &sign(&with(v1_claims(), "iss", Value::Null))).await;
        assert_eq!(err.to_string(), "token has no iss claim");
    }

    #[tokio::test]
    async fn configured_issuers_replace_the_defaults() {
        let custom = "https://issuer.example/";
        let (validator, _dir) = file_validator_with(|config| config.issuers = vec![custom.to_owned()]).await;
        assert!(check(&validator, &sign(&with(v1_claims(), "iss", json!(custom)))).await.is_ok());
        let err = refusal(&validator, &sign(&v1_claims())).await;
        assert!(matches!(err, EntraError::Issuer { .. }), "{err}");
    }

    #[tokio::test]
    async fn refuses_wrong_audience() {
        let (validator, _dir) = file_validator().await;
        let token = sign(&with(v1_claims(), "aud", json!("api://someone-else")));
        let err = refusal(&validator, &token).await;
        assert_eq!(
            err.to_string(),
            format!("token audience api://someone-else is not one of [{CLIENT_ID}, {APP_ID_URI}]")
        );
        let err = refusal(&validator, &sign(&with(v1_claims(), "aud", Value::Null))).await;
        assert_eq!(err.to_string(), "token has no aud claim");
    }

    #[tokio::test]
    async fn refuses_expired_token() {
        let (validator, _dir) = file_validator().await;
        let exp = now() - 600;
        let err = refusal(&validator, &sign(&with(v1_claims(), "exp", json!(exp)))).await;
        assert!(matches!(err, EntraError::Expired { expired_at, .. } if expired_at == exp));
        let message = err.to_string();
        assert!(message.starts_with(&format!("token expired at {}", unix_time(exp))), "{message}");
        assert!(message.contains("clock skew allowed 5m"), "{message}");

        let err = refusal(&validator, &sign(&with(v1_claims(), "exp", Value::Null))).await;
        assert_eq!(err.to_string(), "token has no exp claim");
    }

    #[tokio::test]
    async fn refuses_token_not_yet_valid() {
        let (validator, _dir) = file_validator().await;
        let nbf = now() + 600;
        let err = refusal(&validator, &sign(&with(v1_claims(), "nbf", json!(nbf)))).await;
        assert!(matches!(err, EntraError::NotYetValid { not_before, .. } if not_before == nbf));
        assert!(err.to_string().starts_with("token not valid before "));
    }

    #[tokio::test]
    async fn accepts_times_within_clock_skew_only() {
        let (validator, _dir) = file_validator().await;
        let claims = with(with(v1_claims(), "exp", json!(now() - 120)), "nbf", json!(now() + 120));
        assert!(check(&validator, &sign(&claims)).await.is_ok());

        let (strict, _dir) = file_validator_with(|config| config.clock_skew = Some("30s".to_owned())).await;
        let err = refusal(&strict, &sign(&claims)).await;
        assert!(matches!(err, EntraError::Expired { .. }), "{err}");
        let claims = with(v1_claims(), "nbf", json!(now() + 120));
        let err = refusal(&strict, &sign(&claims)).await;
        assert!(matches!(err, EntraError::NotYetValid { .. }), "{err}");
    }

    #[tokio::test]
    async fn refuses_wrong_app_id() {
        let (validator, _dir) = file_validator().await;
        let intruder = "deadbeef-0000-4000-8000-000000000000";
        let err = refusal(&validator, &sign(&with(v1_claims(), "appid", json!(intruder)))).await;
        assert!(
            err.to_string().starts_with(&format!("token app id {intruder} is not Event Grid's ({EVENT_GRID_APP_ID})")),
            "{err}"
        );
        // v2 tokens are judged by azp, even when a stray appid looks right.
        let claims = with(with(v2_claims(), "azp", json!(intruder)), "appid", json!(EVENT_GRID_APP_ID));
        let err = refusal(&validator, &sign(&claims)).await;
        assert!(matches!(err, EntraError::AppId { ref found, .. } if found == intruder), "{err}");

        let err = refusal(&validator, &sign(&with(v1_claims(), "appid", Value::Null))).await;
        assert!(matches!(err, EntraError::MissingClaim(_)), "{err}");
    }

    #[tokio::test]
    async fn configured_app_ids_replace_the_default() {
        let other = "12121212-0000-4000-8000-000000000000";
        let (validator, _dir) = file_validator_with(|config| config.allowed_app_ids = vec![other.to_owned()]).await;
        assert!(check(&validator, &sign(&with(v1_claims(), "appid", json!(other)))).await.is_ok());
        let err = refusal(&validator, &sign(&v1_claims())).await;
        assert_eq!(
            err.to_string(),
            format!(
                "token app id {EVENT_GRID_APP_ID} is not one of [{other}] \
                 (Event Grid's is {EVENT_GRID_APP_ID})"
            )
        );
    }

    #[tokio::test]
    async fn required_role_must_be_granted() {
        let (validator, _dir) = file_validator_with(|config| {
            config.required_role = Some("EventGrid.Deliver".to_owned());
        })
        .await;
        assert!(check(&validator, &sign(&v1_claims())).await.is_ok());

        let claims = with(v1_claims(), "roles", json!(["Reader"]));
        let err = refusal(&validator, &sign(&claims)).await;
        assert_eq!(err.to_string(), "token lacks role EventGrid.Deliver (it has [Reader])");
        let err = refusal(&validator, &sign(&with(v1_claims(), "roles", Value::Null))).await;
        assert!(matches!(err, EntraError::MissingRole { .. }), "{err}");
    }

    #[tokio::test]
    async fn refuses_claims_of_the_wrong_shape() {
        let (validator, _dir) = file_validator().await;
        let err = refusal(&validator, &sign(&with(v1_claims(), "exp", json!("tomorrow")))).await;
        assert_eq!(err.to_string(), "malformed token: the exp claim has the wrong type");
        let err = refusal(&validator, &sign(&with(v1_claims(), "nbf", json!("yesterday")))).await;
        assert_eq!(err.to_string(), "malformed token: the nbf claim has the wrong type");
        let err = refusal(&validator, &sign(&with(v1_claims(), "aud", json!(42)))).await;
        assert_eq!(err.to_string(), "malformed token: the aud claim has the wrong type");
        let err = refusal(&validator, &sign(&with(v1_claims(), "roles", json!("EventGrid.Deliver")))).await;
        assert!(matches!(err, EntraError::Malformed(_)), "{err}");
    }

    // ---- the Authorization header ----------------------------------------

    #[tokio::test]
    async fn refuses_missing_token() {
        let (validator, _dir) = file_validator().await;
        for header in [None, Some(""), Some("   "), Some("Bearer"), Some("Bearer   ")] {
            let err = validator.validate(header).await.expect_err("refused");
            assert!(matches!(err, EntraError::MissingToken | EntraError::NotBearer), "{header:?}: {err}");
            assert!(!err.is_server_side());
        }
        let err = validator.validate(None).await.unwrap_err();
        assert_eq!(err.to_string(), "missing Authorization: Bearer token");
    }

    #[tokio::test]
    async fn refuses_other_schemes_without_echoing_the_credentials() {
        let (validator, _dir) = file_validator().await;
        let token = sign(&v1_claims());
        for header in [format!("Basic {token}"), format!("Token {token}"), token.clone()] {
            let err = validator.validate(Some(&header)).await.expect_err("refused");
            assert!(matches!(err, EntraError::NotBearer), "{err}");
            assert!(!err.to_string().contains(&token));
        }
    }

    #[test]
    fn validate_future_is_send() {
        fn assert_send<T: Send>(_: &T) {}
        fn probe(validator: &EntraValidator) {
            assert_send(&validator.validate(None));
        }
        let _ = probe;
    }

    // ---- key sources -----------------------------------------------------

    #[tokio::test]
    async fn file_source_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = config();

        let missing = dir.path().join("absent.json");
        config.jwks_file = Some(missing.clone());
        let err = EntraValidator::new(&config).await.unwrap_err();
        assert!(err.is_server_side());
        assert!(err.to_string().contains(&missing.display().to_string()), "{err}");

        // Only unusable keys: symmetric, too short, encryption-only, no kid.
        let path = dir.path().join("unusable.json");
        let body = json!({"keys": [
            {"kty": "oct", "kid": "h", "k": "c2VjcmV0"},
            {"kty": "RSA", "kid": "short", "n": URL_SAFE_NO_PAD.encode([0xc5u8; 128]), "e": "AQAB"},
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": KEY_A_N, "e": "AQAB"},
            {"kty": "RSA", "n": KEY_A_N, "e": "AQAB"},
        ]});
        std::fs::write(&path, body.to_string()).unwrap();
        config.jwks_file = Some(path.clone());
        let err = EntraValidator::new(&config).await.unwrap_err();
        assert!(matches!(err, EntraError::KeySource(_)), "{err}");
        assert!(err.to_string().contains("no usable signing key"), "{err}");

        std::fs::write(&path, "not json").unwrap();
        let err = EntraValidator::new(&config).await.unwrap_err();
        assert!(err.to_string().contains("not a JWKS document"), "{err}");
    }

    #[test]
    fn jwks_parsing_skips_unusable_entries() {
        let body = json!({"keys": [
            {"kty": "EC", "kid": "ec", "crv": "P-256", "x": "AA", "y": "AA"},
            {"kty": "RSA", "kid": "ps", "alg": "PS256", "n": KEY_B_N, "e": "AQAB"},
            {"kty": "RSA", "kid": "key-a", "use": "sig", "n": KEY_A_N, "e": "AQAB",
             "x5t": "abc", "x5c": ["MIIB"], "issuer": "https://login.microsoftonline.com/x/v2.0"},
        ]});
        let keys = parse_jwks(body.to_string().as_bytes()).expect("one usable key");
        assert_eq!(keys.keys().collect::<Vec<_>>(), vec!["key-a"]);
    }

    /// A one-route HTTP server on a loopback port that serves a JWKS document
    /// (or an error status) and counts the requests it gets.
    struct JwksServer {
        url: String,
        response: Arc<Mutex<(u16, String)>>,
        hits: Arc<AtomicUsize>,
    }

    impl JwksServer {
        fn start(body: String) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
            let url = format!("http://{}/{TENANT}/discovery/v2.0/keys", listener.local_addr().unwrap());
            let response = Arc::new(Mutex::new((200, body)));
            let hits = Arc::new(AtomicUsize::new(0));
            let (shared, counter) = (Arc::clone(&response), Arc::clone(&hits));
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    let Ok(mut stream) = stream else { continue };
                    let mut request = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16384 {
                        match stream.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    counter.fetch_add(1, Ordering::SeqCst);
                    let (status, body) = shared.lock().unwrap().clone();
                    let _ = write!(
                        stream,
                        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n\
                         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                }
            });
            JwksServer { url, response, hits }
        }

        fn set(&self, status: u16, body: String) {
            *self.response.lock().unwrap() = (status, body);
        }

        fn hits(&self) -> usize {
            self.hits.load(Ordering::SeqCst)
        }

        fn config(&self) -> EntraConfig {
            EntraConfig { jwks_url: Some(self.url.clone()), jwks_file: None, ..config() }
        }
    }

    #[tokio::test]
    async fn url_source_fetches_once_and_caches() {
        let server = JwksServer::start(jwks(&[("key-a", KEY_A_N)]));
        let validator = EntraValidator::new(&server.config()).await.expect("validator");
        assert_eq!(server.hits(), 1);
        for _ in 0..3 {
            assert!(check(&validator, &sign(&v1_claims())).await.is_ok());
        }
        assert_eq!(server.hits(), 1, "known keys are served from the cache");
    }

    #[tokio::test]
    async fn url_source_refetches_on_unknown_kid_after_rotation() {
        let server = JwksServer::start(jwks(&[("key-a", KEY_A_N)]));
        let mut validator = EntraValidator::new(&server.config()).await.unwrap();
        validator.set_refresh_policy(Duration::ZERO, KEYS_MAX_AGE);
        let rotated = sign_with(KEY_B_PEM, "key-b", &v2_claims());

        server.set(200, jwks(&[("key-a", KEY_A_N), ("key-b", KEY_B_N)]));
        assert!(check(&validator, &rotated).await.is_ok());
        assert_eq!(server.hits(), 2);
        assert!(check(&validator, &sign(&v1_claims())).await.is_ok());
        assert!(check(&validator, &rotated).await.is_ok());
        assert_eq!(server.hits(), 2, "both keys are cached now");

        // A kid that is still unknown after refetching is the sender's problem.
        let bogus = sign_with(KEY_B_PEM, "key-z", &v2_claims());
        let err = refusal(&validator, &bogus).await;
        assert!(matches!(err, EntraError::UnknownKey(_)), "{err}");
        assert_eq!(server.hits(), 3);
    }

    #[tokio::test]
    async fn unknown_kid_refetches_are_rate_limited() {
        let server = JwksServer::start(jwks(&[("key-a", KEY_A_N)]));
        let validator = EntraValidator::new(&server.config()).await.unwrap();
        server.set(200, jwks(&[("key-a", KEY_A_N), ("key-b", KEY_B_N)]));
        let rotated = sign_with(KEY_B_PEM, "key-b", &v1_claims());
        for _ in 0..3 {
            let err = refusal(&validator, &rotated).await;
            assert!(matches!(err, EntraError::UnknownKey(_)), "{err}");
        }
        assert_eq!(server.hits(), 1, "fetched less than 5 minutes ago: no refetch");
    }

    #[tokio::test]
    async fn url_source_refreshes_stale_keys() {
        let server = JwksServer::start(jwks(&[("key-a", KEY_A_N)]));
        let mut validator = EntraValidator::new(&server.config()).await.unwrap();
        validator.set_refresh_policy(Duration::ZERO, Duration::ZERO);
        // Key A was withdrawn: the refresh notices even though A is cached.
        server.set(200, jwks(&[("key-b", KEY_B_N)]));
        let err = refusal(&validator, &sign(&v1_claims())).await;
        assert!(matches!(err, EntraError::UnknownKey(_)), "{err}");
        assert_eq!(server.hits(), 2);
        assert!(check(&validator, &sign_with(KEY_B_PEM, "key-b", &v1_claims())).await.is_ok());
    }

    #[tokio::test]
    async fn failed_refresh_keeps_cached_keys_and_reports_unknown_kids_as_server_side() {
        let server = JwksServer::start(jwks(&[("key-a", KEY_A_N)]));
        let mut validator = EntraValidator::new(&server.config()).await.unwrap();
        validator.set_refresh_policy(Duration::ZERO, Duration::ZERO);
        server.set(503, "busy".to_owned());

        // Stale but known key: still accepted.
        assert!(check(&validator, &sign(&v1_claims())).await.is_ok());
        // Unknown kid while the key source fails: not the sender's fault.
        let rotated = sign_with(KEY_B_PEM, "key-b", &v1_claims());
        let err = check(&validator, &rotated).await.unwrap_err();
        assert!(err.is_server_side(), "{err}");
        assert!(err.to_string().contains(&server.url), "{err}");
        assert!(err.to_string().contains("503"), "{err}");

        // Within the refetch interval the last failure is reported without refetching.
        validator.set_refresh_policy(Duration::from_secs(300), Duration::ZERO);
        let hits = server.hits();
        let err = check(&validator, &rotated).await.unwrap_err();
        assert!(err.is_server_side(), "{err}");
        assert_eq!(server.hits(), hits);
    }

    #[tokio::test]
    async fn unreachable_url_at_start_is_an_error_naming_it() {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let url = format!("http://127.0.0.1:{port}/keys");
        let config = EntraConfig { jwks_url: Some(url.clone()), jwks_file: None, ..config() };
        let err = EntraValidator::new(&config).await.unwrap_err();
        assert!(err.is_server_side());
        assert!(err.to_string().contains(&url), "{err}");

        let server = JwksServer::start(String::new());
        server.set(404, "{}".to_owned());
        let err = EntraValidator::new(&server.config()).await.unwrap_err();
        assert!(err.to_string().contains(&server.url), "{err}");
        assert!(err.to_string().contains("404"), "{err}");
    }

    // ---- configuration -----------------------------------------------------

    #[test]
    fn a_complete_config_has_no_problems() {
        assert_eq!(config().problems(), Vec::<String>::new());
        let url_config = EntraConfig {
            jwks_url: Some(format!("https://login.microsoftonline.com/{TENANT}/discovery/v2.0/keys")),
            jwks_file: None,
            required_role: Some("EventGrid.Deliver".to_owned()),
            clock_skew: Some("90s".to_owned()),
            ..config()
        };
        assert_eq!(url_config.problems(), Vec::<String>::new());
        assert_eq!(url_config.clock_skew(), Ok(Duration::from_secs(90)));
    }

    #[test]
    fn problems_name_the_keys() {
        let empty = EntraConfig { tenant_id: " ".to_owned(), audiences: Vec::new(), jwks_file: None, ..config() };
        assert_eq!(
            empty.problems(),
            vec![
                "tenant_id: must not be empty".to_owned(),
                "audiences: at least one is required (the app's client id and/or App ID URI)".to_owned(),
                "jwks_url / jwks_file: set exactly one".to_owned(),
            ]
        );

        let both = EntraConfig {
            jwks_url: Some("https://login.microsoftonline.com/x/discovery/v2.0/keys".to_owned()),
            ..config()
        };
        assert_eq!(both.problems(), vec!["jwks_url / jwks_file: set exactly one"]);

        let blanks = EntraConfig {
            tenant_id: "contoso.onmicrosoft.com/".to_owned(),
            audiences: vec![CLIENT_ID.to_owned(), String::new()],
            issuers: vec![" ".to_owned()],
            allowed_app_ids: vec![String::new()],
            required_role: Some(String::new()),
            ..config()
        };
        let problems = blanks.problems();
        for key in ["tenant_id:", "audiences[1]:", "issuers[0]:", "allowed_app_ids[0]:", "required_role:"] {
            assert!(problems.iter().any(|p| p.starts_with(key)), "{key} in {problems:?}");
        }
        assert_eq!(problems.len(), 5, "{problems:?}");
    }

    #[test]
    fn problems_check_the_url_and_clock_skew() {
        let with_url = |url: &str| EntraConfig { jwks_url: Some(url.to_owned()), jwks_file: None, ..config() };
        assert!(with_url("http://127.0.0.1:8080/keys").problems().is_empty());
        assert!(with_url("http://localhost/keys").problems().is_empty());
        assert!(with_url("http://[::1]:9/keys").problems().is_empty());
        for bad in ["http://login.example/keys", "ftp://x/keys", "not a url"] {
            let problems = with_url(bad).problems();
            assert_eq!(problems.len(), 1, "{bad}: {problems:?}");
            assert!(problems[0].starts_with("jwks_url: "), "{problems:?}");
        }

        let skew = |text: &str| EntraConfig { clock_skew: Some(text.to_owned()), ..config() };
        assert!(skew("0s").problems().is_empty());
        let problems = skew("five minutes").problems();
        assert!(problems[0].starts_with("clock_skew: \"five minutes\" is not a duration"), "{problems:?}");
        let problems = skew("2h").problems();
        assert!(problems[0].starts_with("clock_skew: \"2h\" is too large"), "{problems:?}");
        assert_eq!(config().clock_skew(), Ok(DEFAULT_CLOCK_SKEW));
    }

    #[test]
    fn defaults_derive_from_the_tenant() {
        let config = config();
        assert_eq!(
            config.effective_issuers(),
            vec![
                format!("https://sts.windows.net/{TENANT}/"),
                format!("https://login.microsoftonline.com/{TENANT}/v2.0"),
            ]
        );
        assert_eq!(config.effective_app_ids(), vec![EVENT_GRID_APP_ID.to_owned()]);
    }

    #[tokio::test]
    async fn new_refuses_a_config_with_problems() {
        let config = EntraConfig { audiences: Vec::new(), ..config() };
        let err = EntraValidator::new(&config).await.unwrap_err();
        assert!(matches!(err, EntraError::Config(_)), "{err}");
        assert!(err.is_server_side());
        assert!(err.to_string().contains("audiences: at least one"), "{err}");
    }

    #[test]
    fn config_parses_from_toml_and_rejects_unknown_keys() {
        let parsed: EntraConfig = toml::from_str(&format!(
            r#"
            tenant_id = "{TENANT}"
            audiences = ["{CLIENT_ID}", "{APP_ID_URI}"]
            jwks_url = "https://login.microsoftonline.com/{TENANT}/discovery/v2.0/keys"
            required_role = "EventGrid.Deliver"
            clock_skew = "2m"
            "#
        ))
        .expect("parses");
        assert!(parsed.problems().is_empty(), "{:?}", parsed.problems());
        assert!(parsed.issuers.is_empty() && parsed.allowed_app_ids.is_empty());
        assert_eq!(parsed.clock_skew(), Ok(Duration::from_secs(120)));

        let typo = toml::from_str::<EntraConfig>(&format!(
            "tenant_id = \"{TENANT}\"\naudiences = []\njwks_file = \"k.json\"\naudience = \"x\"\n"
        ));
        assert!(typo.unwrap_err().to_string().contains("audience"));
    }

    #[test]
    fn echoed_values_are_bounded_and_printable() {
        assert_eq!(echo("a\nb"), "a?b");
        let long = "x".repeat(MAX_ECHO_CHARS + 10);
        assert_eq!(echo(&long).chars().count(), MAX_ECHO_CHARS + 1);
        assert_eq!(unix_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(unix_time(-5), "-5 (seconds since 1970)");
    }
}
