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
    /// `key`: a namespace access key, literal or `env:NAME`.
    pub key: String,
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
    key: String,
    handler: Option<String>,
    max_events: Option<u64>,
    max_wait: Option<String>,
    lock_duration: Option<String>,
    concurrency: Option<u64>,
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
        let key = key(&self.key).map_err(|e| problems.push(format!("key: {e}"))).ok();
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
        match (endpoint, key, max_events, max_wait, lock_duration, concurrency) {
            (Some(endpoint), Some(key), Some(max_events), Some(max_wait), Some(lock_duration), Some(concurrency))
                if problems.is_empty() =>
            {
                Ok(Pull {
                    endpoint,
                    topic: self.topic,
                    subscription: self.subscription,
                    key,
                    handler: self.handler,
                    max_events,
                    max_wait,
                    lock_duration,
                    concurrency,
                })
            }
            _ => Err(problems),
        }
    }
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
    }

    #[test]
    fn each_bad_pull_names_its_field() {
        for (extra, expected) in [
            ("handler=\"nobody\"", "handler: no [[handler]] is named \"nobody\""),
            ("max_events=101", "max_events: 101 is out of range (1 to 100)"),
            ("max_wait=\"5s\"", "max_wait: 5s is out of range (10s to 120s)"),
            ("lock_duration=\"30s\"", "lock_duration: 30s is out of range (60s to 300s)"),
            ("concurrency=0", "concurrency: must be at least 1"),
        ] {
            let problems = parse(&format!("{BASE}{extra}\n")).unwrap_err();
            assert!(problems.iter().any(|p| p.contains(expected)), "{extra}: {problems:?}");
        }
        let problems =
            parse("endpoint=\"ftp://x\"\ntopic=\"o\"\nsubscription=\"all\"\nkey=\"env:NOPE\"\n").unwrap_err();
        let fields: Vec<&str> = problems.iter().map(|p| p.split(':').next().unwrap()).collect();
        assert_eq!(fields, ["endpoint", "topic", "key"]);
    }
}
