//! A generated dead-letter set for `gridfn replay`'s tests: thousands of
//! events in a few hundred blobs, in every record shape `replay::read`
//! accepts, spread over hour folders (some outside any window a test picks),
//! with a few invalid records and one unreadable blob. Deterministic: the same
//! [`Spec`] gives the same bytes, and every record's expected parse is listed.
//!
//! Used by the end-to-end tests (`mod replay_data;`) and by `replay::read`'s
//! unit tests (through `#[path]`), so it needs only std, serde_json and chrono.
#![allow(dead_code)]

use std::path::Path;

use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use serde_json::{Value, json};

/// What to generate.
#[derive(Debug, Clone)]
pub struct Spec {
    pub seed: u64,
    /// Records in all (valid and invalid), spread over `blobs` blobs.
    pub records: usize,
    pub blobs: usize,
    /// The first hour folder; blobs spread over `hours` hours from it.
    pub start: DateTime<Utc>,
    pub hours: u32,
    /// The handler gridfn's own records name (`gridfnHandler`).
    pub handler: String,
}

impl Default for Spec {
    /// 10,200 records in 300 blobs over 72 hours from 2026-01-10T00:00Z.
    fn default() -> Self {
        Spec {
            seed: 12,
            records: 10_200,
            blobs: 300,
            start: NaiveDate::from_ymd_opt(2026, 1, 10).unwrap().and_hms_opt(0, 0, 0).unwrap().and_utc(),
            hours: 72,
            handler: "audit-log".to_string(),
        }
    }
}

/// The record shapes, each with its own subscription folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Event Grid schema, Event Grid's own dead-lettering (`ORDERS-SUB`).
    EventGrid,
    /// CloudEvents, Event Grid's own dead-lettering (`CE-ORDERS-SUB`).
    CloudEvents,
    /// A namespace topic's `{event, deadletterProperties}`
    /// (`contoso-ns/orders/NS-ORDERS-SUB`), the properties key spelled three ways.
    Namespace,
    /// gridfn's own records (`gridfnHandler`, `deadLetterDescription`), Event
    /// Grid schema (`AUDIT-SUB`).
    Gridfn,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::EventGrid, Kind::CloudEvents, Kind::Namespace, Kind::Gridfn];

    /// The folders above the hour folders.
    pub fn folder(self) -> &'static str {
        match self {
            Kind::EventGrid => "ORDERS-SUB",
            Kind::CloudEvents => "CE-ORDERS-SUB",
            Kind::Namespace => "contoso-ns/orders/NS-ORDERS-SUB",
            Kind::Gridfn => "AUDIT-SUB",
        }
    }

    /// The subscription folder `replay::read` reports.
    pub fn subscription(self) -> &'static str {
        self.folder().rsplit('/').next().unwrap()
    }
}

/// What one record is expected to parse as.
#[derive(Debug, Clone)]
pub struct Expected {
    pub blob: String,
    pub index: usize,
    pub kind: Kind,
    /// False for the records made invalid on purpose.
    pub valid: bool,
    pub id: String,
    pub event_type: String,
    pub subject: String,
    pub reason: String,
    pub outcome: String,
    pub handler: Option<String>,
    pub publish_time: DateTime<Utc>,
}

/// One blob: its name (relative to the source root) and bytes.
#[derive(Debug, Clone)]
pub struct Blob {
    pub name: String,
    pub body: Vec<u8>,
    /// Its records in order; empty for the unreadable blob.
    pub records: Vec<Expected>,
    /// The hour folder.
    pub hour: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct Generated {
    pub blobs: Vec<Blob>,
    /// The name of the one blob that is not JSON.
    pub unreadable: String,
}

impl Generated {
    /// Writes every blob under `root` in Event Grid's layout.
    pub fn write_to(&self, root: &Path) -> std::io::Result<()> {
        for blob in &self.blobs {
            let path = root.join(&blob.name);
            std::fs::create_dir_all(path.parent().unwrap())?;
            std::fs::write(path, &blob.body)?;
        }
        Ok(())
    }

    pub fn records(&self) -> impl Iterator<Item = &Expected> {
        self.blobs.iter().flat_map(|b| &b.records)
    }

    pub fn valid(&self) -> impl Iterator<Item = &Expected> {
        self.records().filter(|r| r.valid)
    }
}

const TYPES: [&str; 4] =
    ["Contoso.Orders.Created", "Contoso.Orders.Shipped", "Contoso.Items.Received", "Contoso.Audit.Note"];
/// (reason, outcome, lastHttpStatusCode) as Event Grid writes them.
const FAILURES: [(&str, &str, u16); 4] = [
    ("MaxDeliveryAttemptsExceeded", "Busy", 503),
    ("TimeToLiveExceeded", "TimedOut", 408),
    ("UndeliverableDueToHttpBadRequest", "BadRequest", 400),
    ("MaxDeliveryAttemptsExceeded", "NotFound", 404),
];
const PROPERTY_KEYS: [&str; 3] = ["deadletterProperties", "deadLetterProperties", "brokerProperties"];

/// splitmix64: small, seeded, the same everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn uuid(&mut self) -> String {
        let (a, b) = (self.next(), self.next());
        format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            b >> 52,
            b & 0xffff_ffff_ffff
        )
    }
}

pub fn generate(spec: &Spec) -> Generated {
    assert!(spec.blobs >= 2 && spec.records > spec.blobs, "{spec:?}");
    let mut rng = Rng(spec.seed);
    // Blob sizes: distinct cut points split the records into non-empty blobs.
    let mut cuts = std::collections::BTreeSet::new();
    while cuts.len() < spec.blobs - 2 {
        cuts.insert(1 + rng.below(spec.records as u64 - 1) as usize);
    }
    let mut bounds: Vec<usize> = std::iter::once(0).chain(cuts).chain([spec.records]).collect();
    bounds.dedup();
    let mut blobs = Vec::with_capacity(spec.blobs);
    let mut serial = 0usize;
    for (number, pair) in bounds.windows(2).enumerate() {
        let kind = Kind::ALL[number % Kind::ALL.len()];
        let hour = spec.start + TimeDelta::hours(rng.below(spec.hours as u64) as i64);
        let name = format!(
            "{}/{}/{}/{}/{}/{}.json",
            kind.folder(),
            hour.format("%Y"),
            hour.format("%-m"),
            hour.format("%-d"),
            hour.format("%-H"),
            rng.uuid()
        );
        let mut records = Vec::new();
        let mut bodies = Vec::new();
        for index in 0..pair[1] - pair[0] {
            serial += 1;
            let (expected, body) = record(spec, &mut rng, kind, &name, index, serial, hour);
            records.push(expected);
            bodies.push(body);
        }
        let body = serde_json::to_vec_pretty(&Value::Array(bodies)).unwrap();
        blobs.push(Blob { name, body, records, hour });
    }
    // One blob that is not JSON at all (a truncated download), besides the records.
    let hour = spec.start + TimeDelta::hours(1);
    let unreadable = format!("{}/{}/{}.json", Kind::EventGrid.folder(), hour.format("%Y/%-m/%-d/%-H"), rng.uuid());
    blobs.push(Blob { name: unreadable.clone(), body: b"[{\"id\": \"truncated".to_vec(), records: Vec::new(), hour });
    Generated { blobs, unreadable }
}

/// One record of `kind`, dead-lettered in `hour`; about one in a hundred is
/// made invalid in a way the decoders refuse.
fn record(
    spec: &Spec,
    rng: &mut Rng,
    kind: Kind,
    blob: &str,
    index: usize,
    serial: usize,
    hour: DateTime<Utc>,
) -> (Expected, Value) {
    let id = format!("gen-{}-{serial}", spec.seed);
    let event_type = TYPES[rng.below(TYPES.len() as u64) as usize].to_string();
    let subject = format!("/orders/{}", rng.below(500));
    let (mut reason, mut outcome, status) = FAILURES[rng.below(FAILURES.len() as u64) as usize];
    if kind == Kind::Gridfn {
        (reason, outcome) = ("HandlerRejected", "Rejected");
    }
    // Published up to 50 minutes before the dead-letter time (so some in the previous hour).
    let dead_lettered = hour + TimeDelta::seconds(rng.below(3600) as i64);
    let publish_time = dead_lettered - TimeDelta::seconds(rng.below(3000) as i64);
    let published = publish_time.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let attempted = dead_lettered.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let attempts = 1 + rng.below(30);
    let data = json!({"serial": serial, "blob": blob, "amount": 1.50});
    let valid = rng.below(100) != 0;
    let handler = (kind == Kind::Gridfn).then(|| spec.handler.clone());

    let mut value = match kind {
        Kind::EventGrid | Kind::Gridfn => json!({
            "id": id, "topic": "/subscriptions/0/resourceGroups/rg/providers/Microsoft.EventGrid/topics/orders",
            "subject": subject, "eventType": event_type, "eventTime": published, "data": data,
            "dataVersion": "1.0", "metadataVersion": "1",
            "deadLetterReason": reason, "deliveryAttempts": attempts, "lastDeliveryOutcome": outcome,
            "lastHttpStatusCode": status, "publishTime": published, "lastDeliveryAttemptTime": attempted,
        }),
        Kind::CloudEvents => json!({
            "specversion": "1.0", "id": id, "source": "/contoso/orders", "type": event_type, "subject": subject,
            "time": published, "datacontenttype": "application/json", "data": data,
            "deadletterreason": reason, "deliveryattempts": attempts, "lastdeliveryoutcome": outcome,
            "lasthttpstatuscode": status, "publishtime": published, "lastdeliveryattempttime": attempted,
        }),
        Kind::Namespace => json!({
            "event": {
                "specversion": "1.0", "id": id, "source": "/contoso/orders", "type": event_type,
                "subject": subject, "time": published, "datacontenttype": "application/json", "data": data,
            },
            "customDeliveryProperties": {"x-tenant": "contoso"},
            PROPERTY_KEYS[serial % PROPERTY_KEYS.len()]: {
                "deadletterreason": reason, "deliveryattempts": attempts, "deliveryresult": outcome,
                "publishutc": published, "deliveryattemptutc": attempted,
            },
        }),
    };
    if kind == Kind::Gridfn {
        value["gridfnHandler"] = json!(spec.handler);
        value["deadLetterDescription"] = json!(format!("order {serial} refused"));
    }
    if !valid {
        // The event loses an attribute its schema requires.
        let event = if kind == Kind::Namespace { &mut value["event"] } else { &mut value };
        let required = match kind {
            Kind::EventGrid | Kind::Gridfn => "eventType",
            Kind::CloudEvents | Kind::Namespace => "source",
        };
        event.as_object_mut().unwrap().remove(required);
    }
    let expected = Expected {
        blob: blob.to_string(),
        index,
        kind,
        valid,
        id,
        event_type,
        subject,
        reason: reason.to_string(),
        outcome: outcome.to_string(),
        handler,
        publish_time: published.parse().unwrap(),
    };
    (expected, value)
}
