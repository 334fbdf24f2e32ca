//! `[[pull]]` in the manifest: namespace event subscriptions gridfn pulls
//! events from and runs through its handlers, parsed into settings that can
//! only hold valid values.
//!
//! ```toml
//! [[pull]]
//! endpoint = "https://contoso.westus-1.eventgrid.azure.net"  # the namespace
//! topic = "moderation-events"
//! subscription = "sub-flagged"
//! key = "env:NAMESPACE_KEY"      # sent as Authorization: SharedAccessKey
//! handler = "quarantine"         # default: every handler whose filter matches
//! max_events = 10                # per receive, 1 to 100
//! max_wait = "60s"               # long-poll wait, 10s to 120s
//! lock_duration = "60s"          # the subscription's; renewals come at half
//! concurrency = 10               # events running at once (default max_events)
//! release_schedule = ["10s", "1m", "10m", "1h"]  # retry delay by deliveryCount
//!
//! # instead of `key`: Entra ID client credentials (an app registration
//! # with the "EventGrid Data Receiver" role on the namespace)
//! entra = { tenant_id = "<tenant id>", client_id = "<app id>", client_secret = "env:CLIENT_SECRET" }
//! # entra.authority_host = "https://login.microsoftonline.com"   (the default)
//! ```

use std::time::Duration;

use serde::Deserialize;
use url::Url;

/// `[[pull]]`: one namespace event subscription to pull from.
#[derive(Debug, Clone)]
pub struct Pull {
    /// The namespace's endpoint: `https://<namespace>.<region>-1.eventgrid.azure.net`
    /// (or a gridfn serving `[namespace]`); the data-plane paths go after it.
    pub endpoint: Url,
    pub topic: String,
    pub subscription: String,
    /// `key` or `entra`: how the consumer proves who it is.
    pub credential: Credential,
    /// `handler`: the one handler these events run in; absent, every handler
    /// whose filter matches (as for `/api/events`).
    pub handler: Option<String>,
    /// `max_events`: events per receive, 1 to 100 (Azure's limits); default 10.
    pub max_events: u32,
    /// `max_wait`: how long a receive waits for the first event, 10s to
    /// 120s (Azure's limits); default 60s.
    pub max_wait: Duration,
    /// `lock_duration`: the subscription's lock duration (Azure does not
    /// say it in a receive); locks of events still running are renewed at
    /// half of it. 60s to 300s, default 60s (Azure's default).
    pub lock_duration: Duration,
    /// `concurrency`: events running at once; default `max_events`.
    pub concurrency: usize,
    /// `release_schedule`: when a handler asks for a retry without saying
    /// when, the release delay for the event's `deliveryCount` n is entry
    /// n-1 (the last entry for every later one). Each entry is rounded to
    /// the nearest delay `:release` allows (0, 10s, 1m, 10m, 1h); default
    /// `["10s", "1m", "10m", "1h"]`, a short version of Event Grid's push
    /// retry schedule.
    pub release_schedule: Vec<Duration>,
}

/// How a `[[pull]]` authenticates.
#[derive(Clone)]
pub enum Credential {
    /// `key`: a namespace access key, literal or `env:NAME`, sent as
    /// `Authorization: SharedAccessKey`.
    Key(String),
    /// `entra`: a bearer token obtained with Entra client credentials.
    Entra(ClientCredentials),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Key(_) => f.write_str("Key(..)"),
            Credential::Entra(c) => write!(f, "Entra({} in {} at {})", c.client_id, c.tenant_id, c.authority_host),
        }
    }
}

/// `entra = { tenant_id, client_id, client_secret, authority_host }`: the
/// OAuth 2.0 client-credentials grant against
/// `{authority_host}/{tenant_id}/oauth2/v2.0/token` for the scope
/// `https://eventgrid.azure.net/.default`.
#[derive(Clone)]
pub struct ClientCredentials {
    pub tenant_id: String,
    pub client_id: String,
    /// Literal or `env:NAME` (never write a secret into a manifest).
    pub client_secret: String,
    /// `authority_host`: default `https://login.microsoftonline.com`
    /// (sovereign clouds have their own); http only on loopback.
    pub authority_host: Url,
}

/// Entra's public-cloud authority, the default `authority_host`.
pub const DEFAULT_AUTHORITY_HOST: &str = "https://login.microsoftonline.com";

/// `release_schedule` when the manifest gives none.
const DEFAULT_RELEASE_SCHEDULE: [u64; 4] = [10, 60, 600, 3600];

/// The allowed release delay nearest `after` (the shorter one on a tie).
pub fn nearest_release_delay(after: Duration) -> Duration {
    let wanted = after.as_secs_f64();
    let nearest = (crate::namespace::api::RELEASE_DELAYS.into_iter())
        .min_by(|a, b| (*a as f64 - wanted).abs().total_cmp(&(*b as f64 - wanted).abs()))
        .expect("not empty");
    Duration::from_secs(nearest)
}

/// The schedule's delay for the `delivery_count`th delivery (1 = first).
pub fn scheduled_delay(schedule: &[Duration], delivery_count: u32) -> Duration {
    let index = (delivery_count.max(1) - 1) as usize;
    schedule.get(index).or(schedule.last()).copied().unwrap_or(Duration::from_secs(DEFAULT_RELEASE_SCHEDULE[0]))
}

/// The default `release_schedule`.
pub fn default_release_schedule() -> Vec<Duration> {
    DEFAULT_RELEASE_SCHEDULE.map(Duration::from_secs).to_vec()
}

impl Pull {
    /// How this source is named in logs: `topic/subscription`.
    pub fn label(&self) -> String {
        format!("{}/{}", self.topic, self.subscription)
    }
}

/// One `[[pull]]` table as written.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct RawPull {
    endpoint: String,
    topic: String,
    subscription: String,
    key: Option<String>,
    entra: Option<RawClientCredentials>,
    handler: Option<String>,
    max_events: Option<u64>,
    max_wait: Option<String>,
    lock_duration: Option<String>,
    concurrency: Option<u64>,
    release_schedule: Option<Vec<String>>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RawClientCredentials {
    tenant_id: String,
    client_id: String,
    client_secret: String,
    authority_host: Option<String>,
}

impl RawPull {
    /// The settings, or every problem, each naming its field. `key`
    /// resolves `env:NAME`; `handler_exists` says whether a handler of that
    /// name is in the manifest.
    pub fn parse(
        self,
        key: &dyn Fn(&str) -> Result<String, String>,
        handler_exists: &dyn Fn(&str) -> bool,
    ) -> Result<Pull, Vec<String>> {
        let mut problems = Vec::new();
        let endpoint = match Url::parse(&self.endpoint) {
            Ok(url) if matches!(url.scheme(), "https" | "http") && url.host().is_some() => Some(url),
            _ => {
                problems.push(format!(
                    "endpoint: {:?} is not an http(s) URL (e.g. \"https://contoso.westus-1.eventgrid.azure.net\")",
                    self.endpoint
                ));
                None
            }
        };
        for (field, name) in [("topic", &self.topic), ("subscription", &self.subscription)] {
            if let Err(e) = crate::namespace::config::Name::parse(name) {
                problems.push(format!("{field}: {e}"));
            }
        }
        let credential = match (self.key, self.entra) {
            (Some(raw), None) => key(&raw).map(Credential::Key).map_err(|e| problems.push(format!("key: {e}"))).ok(),
            (None, Some(raw)) => client_credentials(raw, key, &mut problems).map(Credential::Entra),
            (Some(_), Some(_)) | (None, None) => {
                problems.push("key / entra: set exactly one (a namespace key, or Entra client credentials)".into());
                None
            }
        };
        if let Some(handler) = &self.handler
            && !handler_exists(handler)
        {
            problems.push(format!("handler: no [[handler]] is named {handler:?}"));
        }
        let max_events = match self.max_events.unwrap_or(10) {
            n @ 1..=100 => Some(n as u32),
            n => {
                problems.push(format!("max_events: {n} is out of range (1 to 100)"));
                None
            }
        };
        let mut within = |field: &str, text: Option<&str>, low: u64, high: u64, default: u64| {
            let Some(text) = text else { return Some(Duration::from_secs(default)) };
            match humantime::parse_duration(text) {
                Ok(d) if d >= Duration::from_secs(low) && d <= Duration::from_secs(high) => Some(d),
                Ok(_) => {
                    problems.push(format!("{field}: {text} is out of range ({low}s to {high}s)"));
                    None
                }
                Err(e) => {
                    problems.push(format!("{field}: {e} (write e.g. \"60s\")"));
                    None
                }
            }
        };
        let max_wait = within("max_wait", self.max_wait.as_deref(), 10, 120, 60);
        let lock_duration = within("lock_duration", self.lock_duration.as_deref(), 60, 300, 60);
        let concurrency = match self.concurrency {
            Some(0) => {
                problems.push("concurrency: must be at least 1".to_owned());
                None
            }
            Some(n) => Some(n as usize),
            None => max_events.map(|n| n as usize),
        };
        let release_schedule = match self.release_schedule {
            None => Some(default_release_schedule()),
            Some(entries) if entries.is_empty() => {
                problems.push("release_schedule: list at least one delay (e.g. [\"10s\", \"1m\"])".to_owned());
                None
            }
            Some(entries) => {
                let parsed: Vec<_> = (entries.iter().enumerate())
                    .map(|(i, text)| {
                        humantime::parse_duration(text)
                            .map(nearest_release_delay)
                            .map_err(|e| problems.push(format!("release_schedule[{i}]: {e} (write e.g. \"10s\")")))
                    })
                    .collect();
                parsed.into_iter().collect::<Result<Vec<_>, ()>>().ok()
            }
        };
        match (endpoint, credential, max_events, max_wait, lock_duration, concurrency, release_schedule) {
            (
                Some(endpoint),
                Some(credential),
                Some(max_events),
                Some(max_wait),
                Some(lock_duration),
                Some(concurrency),
                Some(release_schedule),
            ) if problems.is_empty() => Ok(Pull {
                endpoint,
                topic: self.topic,
                subscription: self.subscription,
                credential,
                handler: self.handler,
                max_events,
                max_wait,
                lock_duration,
                concurrency,
                release_schedule,
            }),
            _ => Err(problems),
        }
    }
}

/// `entra = {…}`, each field named `entra.<field>` in problems.
fn client_credentials(
    raw: RawClientCredentials,
    key: &dyn Fn(&str) -> Result<String, String>,
    problems: &mut Vec<String>,
) -> Option<ClientCredentials> {
    let before = problems.len();
    for (field, value) in [("tenant_id", &raw.tenant_id), ("client_id", &raw.client_id)] {
        if value.trim().is_empty() || value.contains(|c: char| c.is_whitespace() || c == '/') {
            problems.push(format!("entra.{field}: {value:?} must be a bare id (no spaces or slashes)"));
        }
    }
    let client_secret = key(&raw.client_secret).map_err(|e| problems.push(format!("entra.client_secret: {e}"))).ok();
    let authority = raw.authority_host.as_deref().unwrap_or(DEFAULT_AUTHORITY_HOST);
    let authority_host = match Url::parse(authority) {
        Ok(url) if url.scheme() == "https" && url.host().is_some() => Some(url),
        Ok(url) if url.scheme() == "http" && url.host_str().is_some_and(crate::entra::is_loopback_host) => Some(url),
        _ => {
            problems.push(format!(
                "entra.authority_host: {authority:?} must be an https URL (http only on loopback, for tests)"
            ));
            None
        }
    };
    let (Some(client_secret), Some(authority_host)) = (client_secret, authority_host) else { return None };
    (problems.len() == before).then_some(ClientCredentials {
        tenant_id: raw.tenant_id,
        client_id: raw.client_id,
        client_secret,
        authority_host,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Pull, Vec<String>> {
        let raw: RawPull = toml::from_str(text).map_err(|e| vec![e.to_string()])?;
        raw.parse(&|k| if k == "env:NOPE" { Err("not set".into()) } else { Ok(k.into()) }, &|h| h == "known")
    }

    const BASE: &str = "endpoint=\"http://127.0.0.1:7073\"\ntopic=\"orders\"\nsubscription=\"all\"\nkey=\"k\"\n";

    #[test]
    fn defaults_are_azures_and_concurrency_follows_max_events() {
        let pull = parse(BASE).unwrap();
        assert_eq!((pull.max_events, pull.concurrency, pull.handler.as_deref()), (10, 10, None));
        assert_eq!((pull.max_wait, pull.lock_duration), (Duration::from_secs(60), Duration::from_secs(60)));
        assert_eq!(pull.label(), "orders/all");
        assert!(matches!(&pull.credential, Credential::Key(k) if k == "k"));
        assert_eq!(pull.release_schedule, default_release_schedule());
    }

    #[test]
    fn a_release_schedule_is_rounded_to_the_allowed_delays_and_indexed_by_delivery_count() {
        let pull = parse(&format!("{BASE}release_schedule=[\"0s\", \"20s\", \"5m\", \"2h\"]\n")).unwrap();
        let seconds: Vec<u64> = pull.release_schedule.iter().map(Duration::as_secs).collect();
        assert_eq!(seconds, [0, 10, 60, 3600]);
        let by_count: Vec<u64> = (1..=6).map(|n| scheduled_delay(&pull.release_schedule, n).as_secs()).collect();
        assert_eq!(by_count, [0, 10, 60, 3600, 3600, 3600], "the last entry repeats");
    }

    #[test]
    fn entra_client_credentials_replace_the_key() {
        let text = "endpoint=\"http://127.0.0.1:7073\"\ntopic=\"orders\"\nsubscription=\"all\"\n\
                    entra={tenant_id=\"t1\", client_id=\"c1\", client_secret=\"s\"}\n";
        let pull = parse(text).unwrap();
        let Credential::Entra(entra) = &pull.credential else { panic!("{:?}", pull.credential) };
        assert_eq!((entra.tenant_id.as_str(), entra.client_id.as_str()), ("t1", "c1"));
        assert_eq!(entra.authority_host.as_str(), "https://login.microsoftonline.com/");
    }

    #[test]
    fn each_bad_pull_names_its_field() {
        for (extra, expected) in [
            ("handler=\"nobody\"", "handler: no [[handler]] is named \"nobody\""),
            ("max_events=101", "max_events: 101 is out of range (1 to 100)"),
            ("max_wait=\"5s\"", "max_wait: 5s is out of range (10s to 120s)"),
            ("lock_duration=\"30s\"", "lock_duration: 30s is out of range (60s to 300s)"),
            ("concurrency=0", "concurrency: must be at least 1"),
            ("release_schedule=[]", "release_schedule: list at least one delay"),
            ("release_schedule=[\"10s\", \"soon\"]", "release_schedule[1]: "),
            ("entra={tenant_id=\"t\", client_id=\"c\", client_secret=\"s\"}", "key / entra: set exactly one"),
        ] {
            let problems = parse(&format!("{BASE}{extra}\n")).unwrap_err();
            assert!(problems.iter().any(|p| p.contains(expected)), "{extra}: {problems:?}");
        }
        let problems =
            parse("endpoint=\"ftp://x\"\ntopic=\"o\"\nsubscription=\"all\"\nkey=\"env:NOPE\"\n").unwrap_err();
        let fields: Vec<&str> = problems.iter().map(|p| p.split(':').next().unwrap()).collect();
        assert_eq!(fields, ["endpoint", "topic", "key"]);
        let entra = "endpoint=\"http://127.0.0.1:1\"\ntopic=\"orders\"\nsubscription=\"all\"\n\
                     entra={tenant_id=\"a b\", client_id=\"c\", client_secret=\"env:NOPE\", authority_host=\"http://login.example\"}\n";
        let problems = parse(entra).unwrap_err();
        let fields: Vec<&str> = problems.iter().map(|p| p.split(':').next().unwrap()).collect();
        assert_eq!(fields, ["entra.tenant_id", "entra.client_secret", "entra.authority_host"]);
    }
}
