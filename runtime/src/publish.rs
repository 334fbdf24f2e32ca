//! The `publish` capability: events a handler emits, as CloudEvents 1.0, to
//! gridfn's local topic or to an Event Grid topic.
//!
//! A handler's events are collected during its call ([`Outbox`]) and leave
//! only after it returns success (the pipeline sends them; see
//! `Pipeline::publish`). The Event Grid topic gets exactly what Azure's SDKs
//! send: a `application/cloudevents-batch+json` array, the key in
//! `aeg-sas-key`. The local topic turns them into [`Event`]s with the same
//! decoder pushed CloudEvents go through, so filters and handlers see no
//! difference.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::value::RawValue;
use url::Url;

use crate::event::{Event, decode_cloudevents, is_json_media_type};
use crate::trace::TraceParent;

/// Events one handled event may publish, and their total data size: Event
/// Grid's own limit for one batch.
pub const MAX_EVENTS: usize = 100;
pub const MAX_BYTES: usize = 1024 * 1024;

/// How deep a chain of local publishes may go (a handler's event handled by
/// a handler that publishes, and so on); deeper is a loop, and is rejected.
pub const MAX_LOCAL_DEPTH: u32 = 8;

/// Where a handler's published events go (`capabilities.publish`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topic {
    /// `publish = "local"`: through this host's own routing, like a pushed
    /// delivery to `/api/events`.
    Local,
    /// `publish = { endpoint = "https://<topic>.<region>-1.eventgrid.azure.net/api/events", key = "env:…" }`.
    EventGrid { endpoint: Url, key: String },
}

/// One event a handler asked to publish, checked and completed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub id: String,
    pub event_type: String,
    pub source: String,
    pub subject: Option<String>,
    pub data_content_type: String,
    pub data: Vec<u8>,
    /// The CloudEvents distributed-tracing extension: the span of the
    /// (event, handler) pair that published it, set by the pipeline.
    pub traceparent: Option<TraceParent>,
}

/// What a handler published during one call, within the limits.
#[derive(Debug, Default)]
pub struct Outbox {
    pub events: Vec<Published>,
    bytes: usize,
}

/// Why a publish call was refused (the guest sees it as `publish.error`).
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    TooLarge,
    Invalid(String),
}

/// A publish request as the guest made it.
pub struct Draft {
    pub id: Option<String>,
    pub event_type: String,
    pub source: Option<String>,
    pub subject: Option<String>,
    pub data_content_type: Option<String>,
    pub data: Vec<u8>,
}

impl Outbox {
    /// Checks `draft`, fills in what it left out (a deterministic id, the
    /// handler's source, JSON content type), and keeps it.
    pub fn push(&mut self, draft: Draft, handler: &str, parent_id: &str) -> Result<(), Refused> {
        if self.events.len() >= MAX_EVENTS || self.bytes + draft.data.len() > MAX_BYTES {
            return Err(Refused::TooLarge);
        }
        let data_content_type = draft.data_content_type.unwrap_or_else(|| "application/json".into());
        if draft.event_type.trim().is_empty() {
            return Err(Refused::Invalid("event-type is empty".into()));
        }
        if draft.id.as_deref().is_some_and(str::is_empty) || draft.source.as_deref().is_some_and(str::is_empty) {
            return Err(Refused::Invalid("id and source may be absent, not empty".into()));
        }
        if is_json_media_type(&data_content_type)
            && !draft.data.is_empty()
            && let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&draft.data)
        {
            return Err(Refused::Invalid(format!(
                "data is not JSON, but its content type is {data_content_type}: {e}"
            )));
        }
        let n = self.events.len();
        let event = Published {
            id: draft.id.unwrap_or_else(|| format!("{parent_id}:{handler}:{n}")),
            event_type: draft.event_type,
            source: draft.source.unwrap_or_else(|| format!("/gridfn/handlers/{handler}")),
            subject: draft.subject,
            data_content_type,
            data: draft.data,
            traceparent: None,
        };
        // The CloudEvents rules pushed events must meet (a URI-reference
        // source, a media type, no control characters…), checked by the same
        // decoder: `local_events` relies on it.
        let encoded = cloudevents_batch(std::slice::from_ref(&event), DateTime::UNIX_EPOCH);
        decode_cloudevents(&encoded).map_err(|e| Refused::Invalid(e.to_string()))?;
        self.bytes += event.data.len();
        self.events.push(event);
        Ok(())
    }
}

/// The events as a CloudEvents JSON batch, stamped with `time`. JSON data is
/// embedded byte for byte as the handler wrote it.
pub fn cloudevents_batch(events: &[Published], time: DateTime<Utc>) -> Vec<u8> {
    let time = time.to_rfc3339_opts(SecondsFormat::AutoSi, true);
    let batch: Vec<CloudEvent> = events.iter().map(|event| CloudEvent::new(event, &time)).collect();
    serde_json::to_vec(&batch).expect("CloudEvents serialize")
}

/// One event in the CloudEvents JSON format.
#[derive(Serialize)]
struct CloudEvent<'a> {
    specversion: &'static str,
    id: &'a str,
    source: &'a str,
    #[serde(rename = "type")]
    event_type: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<&'a str>,
    time: &'a str,
    datacontenttype: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<Box<RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data_base64: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    traceparent: Option<String>,
}

impl<'a> CloudEvent<'a> {
    fn new(event: &'a Published, time: &'a str) -> Self {
        let (data, data_base64) = if event.data.is_empty() {
            (None, None)
        } else if is_json_media_type(&event.data_content_type) {
            let data = std::str::from_utf8(&event.data)
                .ok()
                .and_then(|text| RawValue::from_string(text.to_owned()).ok())
                .expect("JSON data was checked when it was published");
            (Some(data), None)
        } else if let Ok(text) = std::str::from_utf8(&event.data)
            && event.data_content_type.starts_with("text/")
        {
            (Some(serde_json::value::to_raw_value(text).expect("a string serializes")), None)
        } else {
            use base64::Engine;
            (None, Some(base64::engine::general_purpose::STANDARD.encode(&event.data)))
        };
        CloudEvent {
            specversion: "1.0",
            id: &event.id,
            source: &event.source,
            event_type: &event.event_type,
            subject: event.subject.as_deref(),
            time,
            datacontenttype: &event.data_content_type,
            data,
            data_base64,
            traceparent: event.traceparent.map(|t| t.to_string()),
        }
    }
}

/// The events as gridfn's own [`Event`]s, for the local topic: encoded and
/// decoded exactly like a pushed CloudEvents batch.
pub fn local_events(events: &[Published]) -> Vec<Event> {
    decode_cloudevents(&cloudevents_batch(events, Utc::now()))
        .expect("published events were checked and encode as valid CloudEvents")
}

/// Sends the events to an Event Grid topic; any answer but 200 is a failure
/// (the event being handled is then retried, and publishes again).
pub async fn send_to_event_grid(
    client: &reqwest::Client,
    endpoint: &Url,
    key: &str,
    events: &[Published],
) -> anyhow::Result<()> {
    let response = client
        .post(endpoint.clone())
        .header("aeg-sas-key", key)
        .header(reqwest::header::CONTENT_TYPE, "application/cloudevents-batch+json; charset=utf-8")
        .timeout(Duration::from_secs(10))
        .body(cloudevents_batch(events, Utc::now()))
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("sending to {endpoint}: {e}"))?;
    let status = response.status();
    if status != reqwest::StatusCode::OK {
        let body = response.text().await.unwrap_or_default();
        anyhow::bail!("{endpoint} answered {status}: {}", body.chars().take(300).collect::<String>());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draft(event_type: &str, data: &str) -> Draft {
        Draft {
            id: None,
            event_type: event_type.into(),
            source: None,
            subject: Some("docs/a.md".into()),
            data_content_type: None,
            data: data.as_bytes().to_vec(),
        }
    }

    #[test]
    fn a_draft_gets_a_deterministic_id_and_the_handlers_source() {
        let mut outbox = Outbox::default();
        outbox.push(draft("Contoso.Indexed", r#"{"n":1}"#), "indexer", "evt-1").unwrap();
        outbox.push(draft("Contoso.Indexed", r#"{"n":2}"#), "indexer", "evt-1").unwrap();
        assert_eq!(outbox.events[0].id, "evt-1:indexer:0");
        assert_eq!(outbox.events[1].id, "evt-1:indexer:1");
        assert_eq!(outbox.events[0].source, "/gridfn/handlers/indexer");
        assert_eq!(outbox.events[0].data_content_type, "application/json");
    }

    #[test]
    fn drafts_that_break_the_cloudevents_rules_are_refused_not_published() {
        // `local_events` decodes what was kept and would panic on a refusal.
        let mut outbox = Outbox::default();
        type Spoil = fn(&mut Draft);
        let cases: [(Spoil, &str); 3] = [
            (|d| d.source = Some("not a uri".into()), "source"),
            (|d| d.data_content_type = Some("nonsense".into()), "datacontenttype"),
            (|d| d.subject = Some("line\nbreak".into()), "subject"),
        ];
        for (spoil, field) in cases {
            let mut bad = draft("T", "{}");
            spoil(&mut bad);
            let refused = outbox.push(bad, "h", "p");
            assert!(matches!(&refused, Err(Refused::Invalid(r)) if r.contains(field)), "{field}: {refused:?}");
        }
        assert!(outbox.events.is_empty());
        outbox.push(draft("T", "{}"), "h", "p").unwrap();
        assert_eq!(local_events(&outbox.events).len(), 1);
    }

    #[test]
    fn bad_drafts_are_refused_with_a_reason() {
        let mut outbox = Outbox::default();
        assert!(
            matches!(outbox.push(draft(" ", "{}"), "h", "p"), Err(Refused::Invalid(r)) if r.contains("event-type"))
        );
        assert!(
            matches!(outbox.push(draft("T", "{nope"), "h", "p"), Err(Refused::Invalid(r)) if r.contains("not JSON"))
        );
        let mut text = draft("T", "plain words");
        text.data_content_type = Some("text/plain".into());
        assert_eq!(outbox.push(text, "h", "p"), Ok(()));
        for _ in 1..MAX_EVENTS {
            outbox.push(draft("T", "{}"), "h", "p").unwrap();
        }
        assert_eq!(outbox.push(draft("T", "{}"), "h", "p"), Err(Refused::TooLarge));
        let mut big = Outbox::default();
        let mut huge = draft("T", "");
        huge.data = vec![b' '; MAX_BYTES + 1];
        assert_eq!(big.push(huge, "h", "p"), Err(Refused::TooLarge));
    }

    #[test]
    fn the_batch_is_what_a_cloudevents_subscriber_decodes_back() {
        let mut outbox = Outbox::default();
        outbox.push(draft("Contoso.Indexed", r#"{"url":"https://x/a.md","chunks":[1,2]}"#), "indexer", "e").unwrap();
        let mut binary = draft("Contoso.Thumbnail", "");
        binary.data_content_type = Some("image/png".into());
        binary.data = vec![0x89, b'P', b'N', b'G', 0];
        outbox.push(binary, "indexer", "e").unwrap();
        let mut text = draft("Contoso.Note", "");
        text.data_content_type = Some("text/plain".into());
        text.data = b"hello".to_vec();
        outbox.push(text, "indexer", "e").unwrap();

        let events = local_events(&outbox.events);
        assert_eq!(events.len(), 3);
        assert_eq!(events[0].id, "e:indexer:0");
        assert_eq!(events[0].event_type, "Contoso.Indexed");
        assert_eq!(events[0].subject.as_deref(), Some("docs/a.md"));
        assert_eq!(events[0].data, br#"{"url":"https://x/a.md","chunks":[1,2]}"#);
        assert!(events[0].time.is_some());
        assert_eq!(events[1].data, vec![0x89, b'P', b'N', b'G', 0]);
        assert_eq!(events[2].data, b"hello");
        let batch: serde_json::Value =
            serde_json::from_slice(&cloudevents_batch(&outbox.events, DateTime::UNIX_EPOCH)).unwrap();
        assert_eq!(batch[0]["specversion"], "1.0");
        assert_eq!(batch[0]["data"]["chunks"][1], 2);
        assert_eq!(batch[1]["data_base64"], "iVBORwA=");
        assert_eq!(batch[0]["time"], "1970-01-01T00:00:00Z");
    }
}
