//! `[namespace]` in the manifest: the namespace topics gridfn serves and
//! their event subscriptions, parsed into settings that can only hold valid
//! values. The limits are the ones Azure enforces when a namespace
//! subscription is created, so an app that works against gridfn is not
//! refused by Azure for its settings.
//!
//! ```toml
//! [namespace]
//! name = "contoso"                # dead-letter blobs go under <name>/<topic>/
//! keys = ["env:NAMESPACE_KEY"]    # default: [server] keys
//!
//! [[namespace.topic]]
//! name = "moderation-events"
//!
//! [[namespace.topic.subscription]]
//! name = "sub-flagged"
//! filter = { includedEventTypes = ["com.contoso.ai.ContentFlagged"] }
//! lock_duration = "60s"           # 60s to 300s; default 60s
//! max_delivery_count = 10         # 1 to 10; default 10
//! event_ttl = "7d"                # 1m to 7d; default 7d
//! deadletter = true               # default true: to gridfn's [deadletter] store
//!
//! [[namespace.topic.subscription]]
//! name = "sub-quarantine"
//! delivery = "push"               # default "queue" (pull); "push" runs a handler
//! handler = "quarantine"          # with push: the [[handler]] each event runs in
//!
//! [namespace.entra]               # also accept Entra ID bearer tokens
//! tenant_id = "<tenant id>"
//! jwks_file = "keys.json"         # or jwks_url = "https://login.microsoftonline.com/<tenant>/discovery/v2.0/keys"
//! # audiences = ["https://eventgrid.azure.net"]   (the default: what Azure's SDKs ask tokens for)
//! # allowed_app_ids = []          (default: any application of the tenant)
//! ```

use std::time::Duration;

use serde::Deserialize;

use crate::entra::EntraConfig;
use crate::filter::Filter;

/// The audience of the tokens Azure's SDKs ask for a namespace
/// (`https://eventgrid.azure.net/.default`), the default of
/// `[namespace.entra] audiences`.
pub const ENTRA_AUDIENCE: &str = "https://eventgrid.azure.net";

/// The namespace name unless `namespace.name` says otherwise.
pub const DEFAULT_NAME: &str = "gridfn";

/// `receiveLockDurationInSeconds`: Azure allows 60 to 300, default 60.
const LOCK_DURATION: (Duration, Duration, Duration) =
    (Duration::from_secs(60), Duration::from_secs(300), Duration::from_secs(60));
/// `maxDeliveryCount`: Azure allows 1 to 10, default 10.
const MAX_DELIVERY_COUNT: (u32, u32, u32) = (1, 10, 10);
/// `eventTimeToLive`: Azure allows one minute to seven days, default seven days.
const EVENT_TTL: (Duration, Duration, Duration) =
    (Duration::from_secs(60), Duration::from_secs(7 * 24 * 3600), Duration::from_secs(7 * 24 * 3600));

/// `[namespace]`: one Event Grid namespace, served on gridfn's port.
#[derive(Debug, Clone)]
pub struct Namespace {
    /// `name`: the namespace's name; dead-letter blobs are written under
    /// `<name>/<topic>/<SUBSCRIPTION>/…` as Azure names them. Default `gridfn`.
    pub name: String,
    /// `keys`: the access keys clients present (`Authorization:
    /// SharedAccessKey KEY` or `aeg-sas-key`); literal or `env:NAME`.
    /// Empty here means the manifest's `[server] keys` (resolved by
    /// `crate::config`).
    pub keys: Vec<String>,
    /// `[namespace.entra]`: Entra ID bearer tokens (`Authorization: Bearer
    /// <JWT>`) are accepted too, checked as `[server.entra]` checks them;
    /// `allowed_app_ids` empty means any application of the tenant.
    pub entra: Option<EntraConfig>,
    /// `[[namespace.topic]]`: at least one.
    pub topics: Vec<Topic>,
}

/// `[[namespace.topic]]`: a namespace topic and its event subscriptions.
#[derive(Debug, Clone)]
pub struct Topic {
    pub name: Name,
    /// `[[namespace.topic.subscription]]`: events published while a topic
    /// has no subscription are accepted and kept by none, as in Azure.
    pub subscriptions: Vec<Subscription>,
}

/// `[[namespace.topic.subscription]]`: an event subscription, with queue
/// (pull) or push delivery.
#[derive(Debug, Clone)]
pub struct Subscription {
    pub name: Name,
    /// `delivery` (and `handler`): who takes the events.
    pub delivery: Delivery,
    /// `filter`: the same filter as a handler's (`includedEventTypes`,
    /// subject and advanced filters), on the CloudEvent; absent = every event.
    pub filter: Option<Filter>,
    /// `lock_duration`: how long a received event stays locked to its
    /// receiver before it is offered again; 60s to 300s, default 60s.
    pub lock_duration: Duration,
    /// `max_delivery_count`: receives after which a lock that expires or a
    /// release dead-letters (or drops) the event; 1 to 10, default 10.
    pub max_delivery_count: u32,
    /// `event_ttl`: how long after publishing an event not yet received
    /// for good is dead-lettered (or dropped); 1m to 7d, default 7d.
    pub event_ttl: Duration,
    /// `deadletter`: write events that are rejected, expire or run out of
    /// deliveries to gridfn's `[deadletter]` store (default true, so a
    /// rejected event can be read back with `gridfn replay`); false drops
    /// them, as Azure does for a subscription without a dead-letter
    /// destination.
    pub deadletter: bool,
}

/// How a subscription's events leave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// `"queue"` (the default): clients `:receive` them and settle each by
    /// lock token.
    Queue,
    /// `"push"`: gridfn runs each in the handler named `handler` and settles
    /// it by the verdict itself; clients cannot `:receive` from it.
    Push { handler: String },
}

/// A topic or subscription name: 3 to 50 ASCII letters, digits and `-`, as
/// Azure allows. Azure matches names ignoring case, so does gridfn: the
/// name is kept as written and compared by [`Name::key`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Name(String);

impl Name {
    pub fn parse(name: &str) -> Result<Name, String> {
        let valid = (3..=50).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        match valid {
            true => Ok(Name(name.to_owned())),
            false => Err(format!("{name:?}: use 3 to 50 letters, digits and '-' (Azure's rule for names)")),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name as requests are matched against it (lower case).
    pub fn key(&self) -> String {
        self.0.to_ascii_lowercase()
    }
}

impl std::fmt::Display for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// `[namespace]` as written.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct RawNamespace {
    name: Option<String>,
    #[serde(default)]
    keys: Vec<String>,
    entra: Option<RawEntra>,
    #[serde(default)]
    topic: Vec<RawTopic>,
}

/// `[namespace.entra]` as written: `[server.entra]`'s fields, with the
/// namespace audience as the default and any application allowed.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RawEntra {
    tenant_id: String,
    #[serde(default)]
    audiences: Vec<String>,
    #[serde(default)]
    issuers: Vec<String>,
    jwks_url: Option<String>,
    jwks_file: Option<std::path::PathBuf>,
    required_role: Option<String>,
    #[serde(default)]
    allowed_app_ids: Vec<String>,
    clock_skew: Option<String>,
}

impl RawEntra {
    fn parse(self) -> Result<EntraConfig, Vec<String>> {
        let audiences = match self.audiences.is_empty() {
            true => vec![ENTRA_AUDIENCE.to_owned()],
            false => self.audiences,
        };
        let config = EntraConfig {
            tenant_id: self.tenant_id,
            audiences,
            issuers: self.issuers,
            jwks_url: self.jwks_url,
            jwks_file: self.jwks_file,
            required_role: self.required_role,
            allowed_app_ids: self.allowed_app_ids,
            clock_skew: self.clock_skew,
        };
        let problems = config.problems();
        match problems.is_empty() {
            true => Ok(config),
            false => Err(problems),
        }
    }
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RawTopic {
    name: String,
    #[serde(default)]
    subscription: Vec<RawSubscription>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RawSubscription {
    name: String,
    filter: Option<Filter>,
    delivery: Option<String>,
    handler: Option<String>,
    lock_duration: Option<String>,
    max_delivery_count: Option<u64>,
    event_ttl: Option<String>,
    deadletter: Option<bool>,
}

impl RawNamespace {
    /// The settings, or every problem, each named relative to `[namespace]`
    /// (e.g. `topic[0] (orders).subscription[1] (audit).lock_duration: …`).
    /// `key` resolves a key as the manifest resolves keys (`env:NAME`);
    /// `handler_exists` says whether the manifest has a handler of that name.
    pub fn parse(
        self,
        key: &dyn Fn(&str) -> Result<String, String>,
        handler_exists: &dyn Fn(&str) -> bool,
    ) -> Result<Namespace, Vec<String>> {
        let mut problems = Vec::new();
        let name = self.name.unwrap_or_else(|| DEFAULT_NAME.to_owned());
        if Name::parse(&name).is_err() {
            problems.push(format!("name: {name:?}: use 3 to 50 letters, digits and '-'"));
        }
        let mut keys = Vec::new();
        for (i, raw) in self.keys.iter().enumerate() {
            match key(raw) {
                Ok(resolved) => keys.push(resolved),
                Err(problem) => problems.push(format!("keys[{i}]: {problem}")),
            }
        }
        let entra = match self.entra.map(RawEntra::parse).transpose() {
            Ok(entra) => entra,
            Err(found) => {
                problems.extend(found.into_iter().map(|p| format!("entra.{p}")));
                None
            }
        };
        if self.topic.is_empty() {
            problems.push("topic: no [[namespace.topic]] listed; the namespace would serve nothing".to_owned());
        }
        let mut topics = Vec::new();
        for (i, raw) in self.topic.into_iter().enumerate() {
            let at = format!("topic[{i}] ({})", raw.name);
            if let Some(topic) = topic(&at, raw, handler_exists, &mut problems) {
                if topics.iter().any(|t: &Topic| t.name.key() == topic.name.key()) {
                    problems.push(format!("{at}.name: another topic has this name (names ignore case)"));
                }
                topics.push(topic);
            }
        }
        match problems.is_empty() {
            true => Ok(Namespace { name, keys, entra, topics }),
            false => Err(problems),
        }
    }
}

fn topic(at: &str, raw: RawTopic, handler_exists: &dyn Fn(&str) -> bool, problems: &mut Vec<String>) -> Option<Topic> {
    let name = Name::parse(&raw.name).map_err(|e| problems.push(format!("{at}.name: {e}"))).ok();
    let mut subscriptions: Vec<Subscription> = Vec::new();
    for (i, raw) in raw.subscription.into_iter().enumerate() {
        let at = format!("{at}.subscription[{i}] ({})", raw.name);
        if let Some(subscription) = subscription(&at, raw, handler_exists, problems) {
            if subscriptions.iter().any(|s| s.name.key() == subscription.name.key()) {
                problems.push(format!("{at}.name: another subscription of this topic has this name"));
            }
            subscriptions.push(subscription);
        }
    }
    Some(Topic { name: name?, subscriptions })
}

fn subscription(
    at: &str,
    raw: RawSubscription,
    handler_exists: &dyn Fn(&str) -> bool,
    problems: &mut Vec<String>,
) -> Option<Subscription> {
    let mut check = |field: &str, result: Result<(), String>| {
        if let Err(problem) = result {
            problems.push(format!("{at}.{field}: {problem}"));
        }
    };
    let name = Name::parse(&raw.name);
    check("name", name.as_ref().map(|_| ()).map_err(Clone::clone));
    if let Some(filter) = &raw.filter {
        for problem in filter.problems() {
            check("filter", Err(problem.to_string()));
        }
    }
    let delivery = match (raw.delivery.as_deref(), raw.handler) {
        (None | Some("queue"), None) => Some(Delivery::Queue),
        (None | Some("queue"), Some(_)) => {
            check("handler", Err("only a push subscription runs a handler; add delivery = \"push\"".into()));
            None
        }
        (Some("push"), Some(handler)) if handler_exists(&handler) => Some(Delivery::Push { handler }),
        (Some("push"), Some(handler)) => {
            check("handler", Err(format!("no [[handler]] is named {handler:?}")));
            None
        }
        (Some("push"), None) => {
            check("handler", Err("a push subscription names the handler its events run in".into()));
            None
        }
        (Some(other), _) => {
            check("delivery", Err(format!("{other:?} is not a delivery mode; use \"queue\" or \"push\"")));
            None
        }
    };
    let lock_duration = within(raw.lock_duration.as_deref(), LOCK_DURATION);
    check("lock_duration", lock_duration.as_ref().map(|_| ()).map_err(Clone::clone));
    let event_ttl = within(raw.event_ttl.as_deref(), EVENT_TTL);
    check("event_ttl", event_ttl.as_ref().map(|_| ()).map_err(Clone::clone));
    let (low, high, default) = MAX_DELIVERY_COUNT;
    let max_delivery_count = match raw.max_delivery_count.unwrap_or(default.into()) {
        n if (u64::from(low)..=u64::from(high)).contains(&n) => Ok(n as u32),
        n => Err(format!("{n} is out of range ({low} to {high})")),
    };
    check("max_delivery_count", max_delivery_count.as_ref().map(|_| ()).map_err(Clone::clone));
    Some(Subscription {
        name: name.ok()?,
        delivery: delivery?,
        filter: raw.filter,
        lock_duration: lock_duration.ok()?,
        max_delivery_count: max_delivery_count.ok()?,
        event_ttl: event_ttl.ok()?,
        deadletter: raw.deadletter.unwrap_or(true),
    })
}

/// A duration like `60s` or `7d` within `(low, high)`, or `default` when absent.
fn within(text: Option<&str>, (low, high, default): (Duration, Duration, Duration)) -> Result<Duration, String> {
    let Some(text) = text else { return Ok(default) };
    let duration = humantime::parse_duration(text).map_err(|e| format!("{e} (write e.g. \"60s\", \"5m\", \"7d\")"))?;
    match duration >= low && duration <= high {
        true => Ok(duration),
        false => Err(format!(
            "{text} is out of range ({} to {})",
            humantime::format_duration(low),
            humantime::format_duration(high)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Namespace, Vec<String>> {
        let raw: RawNamespace = toml::from_str(text).map_err(|e| vec![e.to_string()])?;
        raw.parse(
            &|key| match key.strip_prefix("env:") {
                Some("NS_KEY") => Ok("secret".into()),
                Some(name) => Err(format!("environment variable {name} is not set")),
                None => Ok(key.to_owned()),
            },
            &|handler| handler == "quarantine",
        )
    }

    #[test]
    fn a_minimal_subscription_gets_azures_defaults() {
        let ns =
            parse("keys=[\"env:NS_KEY\"]\n[[topic]]\nname=\"orders\"\n[[topic.subscription]]\nname=\"all\"\n").unwrap();
        assert_eq!((ns.name.as_str(), ns.keys.as_slice()), ("gridfn", ["secret".to_owned()].as_slice()));
        let sub = &ns.topics[0].subscriptions[0];
        assert_eq!(sub.lock_duration, Duration::from_secs(60));
        assert_eq!(sub.max_delivery_count, 10);
        assert_eq!(sub.event_ttl, Duration::from_secs(7 * 24 * 3600));
        assert!(sub.deadletter && sub.filter.is_none());
        assert_eq!(sub.delivery, Delivery::Queue);
        assert!(ns.entra.is_none());
    }

    #[test]
    fn a_push_subscription_names_its_handler_and_entra_defaults_to_the_namespace_audience() {
        let ns = parse(
            "keys=[\"k\"]\n[entra]\ntenant_id=\"t1\"\njwks_file=\"keys.json\"\n\
             [[topic]]\nname=\"orders\"\n[[topic.subscription]]\nname=\"run\"\ndelivery=\"push\"\nhandler=\"quarantine\"\n",
        )
        .unwrap();
        assert_eq!(ns.topics[0].subscriptions[0].delivery, Delivery::Push { handler: "quarantine".into() });
        let entra = ns.entra.unwrap();
        assert_eq!(entra.audiences, [ENTRA_AUDIENCE]);
        assert!(entra.allowed_app_ids.is_empty(), "any application of the tenant");
    }

    #[test]
    fn a_manifest_may_serve_a_namespace_without_handlers_and_lend_it_the_server_keys() {
        let dir = tempfile::tempdir().unwrap();
        let env = |_: &str| None;
        let text = "[server]\nkeys=[\"k1\"]\n[namespace]\n[[namespace.topic]]\nname=\"orders\"\n";
        let manifest = crate::config::Manifest::parse(text, dir.path(), &env).unwrap();
        assert!(manifest.handlers.is_empty());
        assert_eq!(manifest.namespace.unwrap().keys, ["k1"]);

        let problems = crate::config::Manifest::parse("[server]\nkeys=[\"k1\"]\n", dir.path(), &env).unwrap_err();
        assert!(problems.iter().any(|p| p.starts_with("handler: no [[handler]] listed")), "{problems:?}");
        let text = "[server]\nallow_anonymous=true\n[namespace]\n[[namespace.topic]]\nname=\"orders\"\nlock=1\n";
        let problems = crate::config::Manifest::parse(text, dir.path(), &env).unwrap_err();
        assert!(problems.iter().any(|p| p.contains("unknown field `lock`")), "{problems:?}");
        let text = "[server]\nallow_anonymous=true\n[namespace]\n[[namespace.topic]]\nname=\"orders\"\n";
        let problems = crate::config::Manifest::parse(text, dir.path(), &env).unwrap_err();
        assert!(problems.iter().any(|p| p.starts_with("namespace.keys: no key")), "{problems:?}");
        let text = "[server]\nkeys=[\"k1\"]\n[namespace]\n[[namespace.topic]]\nname=\"o\"\n";
        let problems = crate::config::Manifest::parse(text, dir.path(), &env).unwrap_err();
        assert!(problems.iter().any(|p| p.starts_with("namespace.topic[0] (o).name:")), "{problems:?}");
    }

    #[test]
    fn each_bad_namespace_names_its_key() {
        let topic = "[[topic]]\nname=\"orders\"\n[[topic.subscription]]\nname=\"all\"\n";
        let cases = [
            ("name=\"x\"\n[[topic]]\nname=\"orders\"\n", "name: \"x\""),
            ("keys=[\"env:NOPE\"]\n[[topic]]\nname=\"orders\"\n", "keys[0]: environment variable NOPE"),
            ("", "topic: no [[namespace.topic]] listed"),
            ("[[topic]]\nname=\"a b\"\n", "topic[0] (a b).name:"),
            ("[[topic]]\nname=\"orders\"\n[[topic]]\nname=\"ORDERS\"\n", "topic[1] (ORDERS).name: another topic"),
            (
                &format!("{topic}lock_duration=\"30s\"\n"),
                "topic[0] (orders).subscription[0] (all).lock_duration: 30s is out of range (1m to 5m)",
            ),
            (&format!("{topic}lock_duration=\"soon\"\n"), ".lock_duration: "),
            (&format!("{topic}max_delivery_count=11\n"), ".max_delivery_count: 11 is out of range (1 to 10)"),
            (&format!("{topic}max_delivery_count=0\n"), ".max_delivery_count: 0 is out of range"),
            (&format!("{topic}event_ttl=\"8d\"\n"), ".event_ttl: 8d is out of range"),
            (&format!("{topic}delivery=\"push\"\n"), "(all).handler: a push subscription names the handler"),
            (
                &format!("{topic}delivery=\"push\"\nhandler=\"nobody\"\n"),
                "(all).handler: no [[handler]] is named \"nobody\"",
            ),
            (&format!("{topic}handler=\"quarantine\"\n"), "(all).handler: only a push subscription"),
            (&format!("{topic}delivery=\"webhook\"\n"), "(all).delivery: \"webhook\" is not a delivery mode"),
            (&format!("[entra]\ntenant_id=\"t\"\n{topic}"), "entra.jwks_url / jwks_file: set exactly one"),
            (&format!("[entra]\ntenant=\"t\"\n{topic}"), "unknown field `tenant`"),
            (&format!("{topic}filter={{includedEventTypes=[\"\"]}}\n"), "(all).filter: includedEventTypes[0]"),
            (
                &format!("{topic}[[topic.subscription]]\nname=\"ALL\"\n"),
                "subscription[1] (ALL).name: another subscription",
            ),
            (&format!("{topic}lock=\"60s\"\n"), "unknown field `lock`"),
        ];
        for (text, expected) in cases {
            let problems = parse(text).expect_err(text);
            assert!(problems.iter().any(|p| p.contains(expected)), "{text}\nexpected {expected:?} in {problems:#?}");
        }
    }
}
