//! `gridfn send`: Event Grid on your laptop. Delivers events from files to a
//! webhook endpoint the way an Event Grid subscription does, so a handler
//! (in gridfn or anywhere) can be tried without Azure or a tunnel, and put
//! under load.
//!
//! Top to bottom:
//! 1. read the files with gridfn's own decoder ([`crate::event`]): one
//!    schema for all of them;
//! 2. [`handshake`]: the subscription validation (Event Grid schema) or the
//!    CloudEvents abuse-protection `OPTIONS`; no delivery without it;
//! 3. publish: events at `--rate` for `--duration` (or each file event
//!    once), `{{seq}}`/`{{uuid}}` filled into ids and subjects, grouped into
//!    deliveries by [`batch`];
//! 4. [`deliver`]: each batch POSTed with Event Grid's headers, retried on
//!    Event Grid's schedule ([`retry`]), dead-lettered in Event Grid's
//!    layout and format (which `gridfn replay` reads);
//! 5. [`report`]: the summary, with latency percentiles.

pub mod batch;
pub mod deliver;
pub mod handshake;
pub mod report;
pub mod retry;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use tokio::sync::Semaphore;

use crate::event::{Event, Schema, decode_json};
use batch::Batching;
use deliver::{Auth, Batch, Deliverer, Outgoing, Subscriber};
use handshake::{UrlValidation, Validated};
use report::Stats;
use retry::RetryPolicy;

/// `gridfn send --to URL [options] FILE…`.
#[derive(clap::Args, Debug)]
pub struct Options {
    /// Event files: Event Grid schema or CloudEvents JSON, one event or an
    /// array each, all of one schema. An event's `id` and `subject` may hold
    /// `{{seq}}` (the event's number in this run, from 0) and `{{uuid}}`.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// The subscription's webhook endpoint, e.g. http://127.0.0.1:7071/api/events
    #[arg(long)]
    pub to: String,
    /// The schema the subscription delivers in; default: the files'. (Event
    /// Grid can convert between them; `send` does not: the files must match.)
    #[arg(long, value_enum)]
    pub schema: Option<SchemaArg>,
    /// A delivery key, sent as `aeg-sas-key`.
    #[arg(long, env = "GRIDFN_SEND_KEY", hide_env_values = true, conflicts_with = "bearer")]
    pub key: Option<String>,
    /// A bearer token (e.g. Entra ID), sent as `Authorization: Bearer`.
    #[arg(long, env = "GRIDFN_SEND_BEARER", hide_env_values = true)]
    pub bearer: Option<String>,
    /// The subscription's name: `aeg-subscription-name`, and the dead-letter
    /// folder (upper-cased, as Event Grid names it).
    #[arg(long, default_value = "gridfn-send")]
    pub subscription: String,
    /// A custom delivery property, `NAME: VALUE`, sent on every delivery
    /// (not on the handshake). Repeatable.
    #[arg(long = "header", value_name = "NAME: VALUE")]
    pub headers: Vec<String>,

    /// Deliver without the handshake (an endpoint already validated).
    #[arg(long)]
    pub skip_handshake: bool,
    /// Where `send` serves the validation URL it puts in the validation event.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub validation_listen: SocketAddr,
    /// How long to wait for a GET of the validation URL when the endpoint
    /// answered the handshake without a code.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub validation_timeout: Duration,

    /// Output batching: events per delivery, 1 to 5,000 (Event Grid's default 1).
    #[arg(long, default_value_t = 1)]
    pub max_events_per_batch: u32,
    /// Output batching: preferred delivery size in KB, 1 to 1,024 (default
    /// 64); an event larger than that still goes, alone.
    #[arg(long, default_value_t = 64)]
    pub preferred_batch_size_kb: u32,
    /// Attempts per batch, the first included: 1 to 30 (default 30).
    #[arg(long, default_value_t = retry::MAX_ATTEMPTS)]
    pub max_delivery_attempts: u32,
    /// Event time to live in minutes, from publishing: 1 to 1,440 (default
    /// 1,440). Checked when an attempt comes due, as Event Grid does.
    #[arg(long, default_value_t = retry::MAX_TTL_MINUTES)]
    pub event_ttl: u32,
    /// Multiplies Event Grid's clock (the retry waits and the time to live):
    /// 0.001 turns the 10 s first retry into 10 ms. Default 1.
    #[arg(long, default_value_t = 1.0)]
    pub time_scale: f64,
    /// How long an answer may take before the attempt counts as failed
    /// (Event Grid: 30 s; not scaled).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// A folder to dead-letter to, in Event Grid's layout
    /// (`<SUBSCRIPTION>/<y>/<m>/<d>/<h>/<uuid>.json`) and format, which
    /// `gridfn replay` reads. Without it, undeliverable events are dropped,
    /// as Event Grid drops them.
    #[arg(long)]
    pub dead_letter: Option<PathBuf>,

    /// Publish this many events per second (the files' events in turn).
    /// Without --duration, each file event is published once.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Keep publishing for this long (e.g. `30s`); without --rate, as fast
    /// as deliveries complete.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Requests in flight at once (default 1).
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SchemaArg {
    Eventgrid,
    Cloudevents,
}

impl From<SchemaArg> for Schema {
    fn from(schema: SchemaArg) -> Schema {
        match schema {
            SchemaArg::Eventgrid => Schema::EventGrid,
            SchemaArg::Cloudevents => Schema::CloudEvents,
        }
    }
}

/// Runs `gridfn send`: Ok(true) when every event was delivered.
pub fn command(options: Options) -> anyhow::Result<bool> {
    let (schema, templates) = read_events(&options.files, options.schema.map(Schema::from))?;
    let batching = Batching::new(options.max_events_per_batch, options.preferred_batch_size_kb)
        .map_err(|e| anyhow::anyhow!("--max-events-per-batch/--preferred-batch-size-kb: {e}"))?;
    let policy = RetryPolicy::new(options.max_delivery_attempts, options.event_ttl, options.time_scale)
        .map_err(|e| anyhow::anyhow!("retry policy: {e}"))?;
    if options.concurrency == 0 {
        anyhow::bail!("--concurrency must be at least 1");
    }
    if let Some(rate) = options.rate
        && !(rate.is_finite() && rate > 0.0)
    {
        anyhow::bail!("--rate must be a positive number of events per second, not {rate}");
    }
    let auth = match (&options.key, &options.bearer) {
        (Some(key), _) => Auth::Key(key.clone()),
        (None, Some(token)) => Auth::Bearer(token.clone()),
        (None, None) => Auth::None,
    };
    let properties = options.headers.iter().map(|h| parse_header(h)).collect::<anyhow::Result<http::HeaderMap>>()?;
    let subscriber = Subscriber::new(&options.to, &options.subscription, auth, properties, options.timeout)?;

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        if !options.skip_handshake {
            let validated = match schema {
                Schema::EventGrid => {
                    let url = UrlValidation { listen: options.validation_listen, timeout: options.validation_timeout };
                    handshake::validate_event_grid(&subscriber, &url).await?
                }
                Schema::CloudEvents => handshake::validate_cloudevents(&subscriber).await?,
            };
            eprintln!("{}", describe(&validated, &subscriber.url));
        }
        let stats = Arc::new(Stats::default());
        let deliverer = Arc::new(Deliverer {
            subscriber,
            policy,
            dead_letter: options.dead_letter.clone(),
            requests: Arc::new(Semaphore::new(options.concurrency)),
            stats: stats.clone(),
        });
        let load = Load { rate: options.rate, duration: options.duration, concurrency: options.concurrency };
        let started = Instant::now();
        publish(&templates, schema, batching, &load, deliverer).await;
        let summary = stats.summary(&options.to, started.elapsed());
        let text = if options.json {
            format!("{}\n", serde_json::to_string_pretty(&summary)?)
        } else {
            let mut text = summary.render_text();
            if let Some(dir) = &options.dead_letter
                && summary.events.dead_lettered > 0
            {
                text.push_str(&format!("dead letters: {}\n", dir.display()));
            }
            text
        };
        print!("{text}");
        Ok(summary.all_delivered())
    })
}

fn describe(validated: &Validated, url: &str) -> String {
    match validated {
        Validated::Synchronously => format!("{url} validated the subscription (validation code in its answer)"),
        Validated::ThroughUrl => format!("{url} validated the subscription (GET of the validation URL)"),
        Validated::Origin { allowed_rate } => format!(
            "{url} allowed origin {} (CloudEvents handshake{})",
            handshake::ORIGIN,
            allowed_rate.as_ref().map(|r| format!(", rate {r}")).unwrap_or_default()
        ),
    }
}

/// `NAME: VALUE` as a header.
fn parse_header(text: &str) -> anyhow::Result<(http::HeaderName, http::HeaderValue)> {
    let (name, value) =
        text.split_once(':').ok_or_else(|| anyhow::anyhow!("--header {text:?}: expected `NAME: VALUE`"))?;
    let name = http::HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|e| anyhow::anyhow!("--header {text:?}: bad name: {e}"))?;
    let value =
        http::HeaderValue::from_str(value.trim()).map_err(|e| anyhow::anyhow!("--header {text:?}: bad value: {e}"))?;
    Ok((name, value))
}

/// An event from a file, to be published once or many times.
struct Template {
    raw: String,
    data_version: Option<String>,
    /// Whether its id or subject holds a placeholder.
    templated: bool,
}

const PLACEHOLDERS: [&str; 2] = ["{{seq}}", "{{uuid}}"];

impl Template {
    fn new(event: &Event) -> Template {
        let has = |text: &str| PLACEHOLDERS.iter().any(|p| text.contains(p));
        Template {
            raw: event.raw.get().to_owned(),
            data_version: event.data_version.clone(),
            templated: has(&event.id) || event.subject.as_deref().is_some_and(has),
        }
    }

    /// The event as published `seq`-th: placeholders in its id and subject
    /// filled in, every other member as in the file.
    fn instantiate(&self, seq: u64) -> Outgoing {
        let raw = if self.templated { self.fill(seq) } else { self.raw.clone() };
        Outgoing { raw, data_version: self.data_version.clone() }
    }

    fn fill(&self, seq: u64) -> String {
        let mut object: Map<String, Value> = serde_json::from_str(&self.raw).expect("decoded as an event object");
        for key in ["id", "subject"] {
            if let Some(Value::String(text)) = object.get_mut(key) {
                *text =
                    text.replace("{{seq}}", &seq.to_string()).replace("{{uuid}}", &uuid::Uuid::new_v4().to_string());
            }
        }
        serde_json::to_string(&object).expect("a JSON object serializes")
    }
}

/// Every event of every file, decoded by gridfn's own decoder, and their one schema.
fn read_events(files: &[PathBuf], wanted: Option<Schema>) -> anyhow::Result<(Schema, Vec<Template>)> {
    let mut schema = wanted;
    let mut templates = Vec::new();
    for file in files {
        let body = std::fs::read(file).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
        let events = decode_json(&body).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        for event in &events {
            match schema {
                None => schema = Some(event.schema),
                Some(s) if s != event.schema => anyhow::bail!(
                    "{}: event {:?} is {}, but the subscription delivers {} (send does not convert between schemas)",
                    file.display(),
                    event.id,
                    schema_name(event.schema),
                    schema_name(s)
                ),
                Some(_) => {}
            }
            templates.push(Template::new(event));
        }
    }
    match schema {
        Some(schema) if !templates.is_empty() => Ok((schema, templates)),
        _ => anyhow::bail!("the files hold no events"),
    }
}

fn schema_name(schema: Schema) -> &'static str {
    match schema {
        Schema::EventGrid => "Event Grid schema",
        Schema::CloudEvents => "CloudEvents",
    }
}

/// How much to publish, how fast.
struct Load {
    rate: Option<f64>,
    duration: Option<Duration>,
    concurrency: usize,
}

/// Publishes the events and waits until every batch has its fate. Events
/// due at the same moment are batched together; a batch goes out at once.
async fn publish(templates: &[Template], schema: Schema, batching: Batching, load: &Load, deliverer: Arc<Deliverer>) {
    // Without --duration, each file event once.
    let total = if load.duration.is_some() { None } else { Some(templates.len() as u64) };
    // Batches published but not yet delivered or given up; bounds memory
    // when the endpoint is slower than the publishing.
    let outstanding = Arc::new(Semaphore::new(load.concurrency * 4));
    let mut tasks = tokio::task::JoinSet::new();
    let started = Instant::now();
    let mut seq: u64 = 0;
    loop {
        let elapsed = started.elapsed();
        if load.duration.is_some_and(|d| elapsed >= d) || total.is_some_and(|t| seq >= t) {
            break;
        }
        let mut due = match load.rate {
            Some(rate) => ((elapsed.as_secs_f64() * rate).floor() as u64 + 1).saturating_sub(seq),
            None => total.unwrap_or((load.concurrency * 100) as u64),
        };
        if let Some(total) = total {
            due = due.min(total - seq);
        }
        if due == 0 {
            let rate = load.rate.expect("only a rate makes nothing due");
            let next = started + Duration::from_secs_f64(seq as f64 / rate);
            tokio::time::sleep_until(next.into()).await;
            continue;
        }
        let events: Vec<Outgoing> =
            (seq..seq + due).map(|n| templates[(n % templates.len() as u64) as usize].instantiate(n)).collect();
        seq += due;
        let sizes: Vec<usize> = events.iter().map(|e| e.raw.len()).collect();
        let mut events = events.into_iter();
        for range in batching.split(&sizes) {
            let batch = Batch {
                events: events.by_ref().take(range.len()).collect(),
                schema,
                published: Instant::now(),
                published_at: chrono::Utc::now(),
            };
            let permit = outstanding.clone().acquire_owned().await.expect("the semaphore is never closed");
            let deliverer = deliverer.clone();
            deliverer.stats.published(batch.events.len());
            tasks.spawn(async move {
                let count = batch.events.len();
                let fate = deliverer.deliver(batch).await;
                deliverer.stats.fate(count, &fate);
                drop(permit);
            });
        }
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(json: &str) -> Template {
        Template::new(&decode_json(json.as_bytes()).unwrap()[0])
    }

    #[test]
    fn placeholders_fill_ids_and_subjects_only() {
        let t = template(
            r#"{"id":"order-{{seq}}","subject":"/orders/{{uuid}}","eventType":"t","data":{"note":"{{seq}}"},"dataVersion":"1"}"#,
        );
        let first: Value = serde_json::from_str(&t.instantiate(0).raw).unwrap();
        let eighth: Value = serde_json::from_str(&t.instantiate(7).raw).unwrap();
        assert_eq!(first["id"], "order-0");
        assert_eq!(eighth["id"], "order-7");
        let subject = first["subject"].as_str().unwrap().strip_prefix("/orders/").unwrap();
        assert!(uuid::Uuid::parse_str(subject).is_ok(), "{subject}");
        assert_ne!(first["subject"], eighth["subject"], "a fresh uuid each time");
        assert_eq!(first["data"]["note"], "{{seq}}", "data is the sender's, not a template");
        assert_eq!(t.instantiate(3).data_version.as_deref(), Some("1"));
    }

    #[test]
    fn an_event_without_placeholders_keeps_its_values_byte_for_byte() {
        // Whitespace between the event's members goes; its values (data's own spacing, 1.50) stay as written.
        let json = r#"{"id":"e1", "eventType":"t",  "subject":"s","data":{"b": 1.50}}"#;
        assert_eq!(
            template(json).instantiate(5).raw,
            r#"{"id":"e1","eventType":"t","subject":"s","data":{"b": 1.50}}"#
        );
    }

    #[test]
    fn files_of_mixed_schemas_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let grid = dir.path().join("grid.json");
        let cloud = dir.path().join("cloud.json");
        std::fs::write(&grid, r#"[{"id":"1","eventType":"t","subject":"s","data":{}}]"#).unwrap();
        std::fs::write(&cloud, r#"{"specversion":"1.0","id":"2","source":"/s","type":"t"}"#).unwrap();
        let (schema, events) = read_events(std::slice::from_ref(&grid), None).unwrap();
        assert_eq!((schema, events.len()), (Schema::EventGrid, 1));
        let error = read_events(&[grid.clone(), cloud], None).err().unwrap().to_string();
        assert!(error.contains("is CloudEvents, but the subscription delivers Event Grid schema"), "{error}");
        assert!(read_events(&[grid], Some(Schema::CloudEvents)).is_err());
    }
}
