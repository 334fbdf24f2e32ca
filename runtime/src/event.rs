//! The one event model every stage shares, and the decoder that turns a pushed
//! Event Grid body into it.
//!
//! Decoding is tolerant where Event Grid's own payloads are quirky (timestamps
//! without an offset, empty `dataVersion`, unknown properties) and strict where
//! gridfn depends on a field (`id`, `eventType`): a batch with one bad event is
//! refused whole, with the index and field of the first problem, before any
//! handler runs.

use std::collections::HashMap;

use serde_json::value::RawValue;

/// The envelope an event arrived in; it also decides which keys a
/// subscription filter can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schema {
    /// Event Grid's own schema (`eventType`, `topic`, `dataVersion`, …).
    #[serde(alias = "EventGridSchema")]
    EventGrid,
    /// CloudEvents 1.0 (`type`, `source`, `specversion`, …).
    #[serde(alias = "CloudEventSchemaV1_0")]
    CloudEvents,
}

/// One event, whatever schema it arrived in.
#[derive(Debug, Clone)]
pub struct Event {
    pub id: String,
    pub event_type: String,
    /// `topic` (Event Grid) or `source` (CloudEvents); empty when a
    /// publisher left it out.
    pub source: String,
    pub subject: Option<String>,
    /// As sent; not re-formatted.
    pub time: Option<String>,
    pub data_content_type: Option<String>,
    pub data_version: Option<String>,
    /// The payload byte for byte: JSON text for JSON data, empty when absent.
    pub data: Vec<u8>,
    /// CloudEvents extension attributes, values as text.
    pub extensions: Vec<(String, String)>,
    pub schema: Schema,
    /// The event exactly as it arrived (one JSON object): dead-letter records
    /// are written from it, and filters read it.
    pub raw: Box<RawValue>,
}

/// Why a body could not be decoded; becomes a 400 that names the place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    pub message: String,
    /// Which event of the batch (0-based), when the problem is in one.
    pub event_index: Option<usize>,
    /// Which attribute, when the problem is in one.
    pub field: Option<String>,
}

impl DecodeError {
    fn body(message: impl Into<String>) -> Self {
        DecodeError {
            message: message.into(),
            event_index: None,
            field: None,
        }
    }

    fn field(index: usize, field: &str, message: impl Into<String>) -> Self {
        DecodeError {
            message: message.into(),
            event_index: Some(index),
            field: Some(field.into()),
        }
    }
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(i) = self.event_index {
            write!(f, "event {i}: ")?;
        }
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for DecodeError {}

/// Splits a body into its events' raw JSON objects: an array of events, or one
/// bare event object (which Event Grid never sends but curl users do).
pub fn split_batch(body: &[u8]) -> Result<Vec<Box<RawValue>>, DecodeError> {
    let text = std::str::from_utf8(body)
        .map_err(|e| DecodeError::body(format!("body is not UTF-8: {e}")))?;
    let trimmed = text.trim_start();
    if trimmed.is_empty() {
        return Err(DecodeError::body(
            "body is empty; expected a JSON array of events",
        ));
    }
    let events = if trimmed.starts_with('[') {
        serde_json::from_str::<Vec<Box<RawValue>>>(text)
    } else {
        serde_json::from_str::<Box<RawValue>>(text).map(|one| vec![one])
    }
    .map_err(|e| DecodeError::body(format!("body is not valid JSON: {e}")))?;
    if events.is_empty() {
        return Err(DecodeError::body(
            "the batch is an empty array; expected at least one event",
        ));
    }
    Ok(events)
}

/// Decodes an Event Grid schema body (array or single object).
pub fn decode_event_grid(body: &[u8]) -> Result<Vec<Event>, DecodeError> {
    split_batch(body)?
        .into_iter()
        .enumerate()
        .map(|(index, raw)| decode_event_grid_event(index, raw))
        .collect()
}

fn decode_event_grid_event(index: usize, raw: Box<RawValue>) -> Result<Event, DecodeError> {
    let fields = Fields::parse(index, &raw)?;
    let id = fields.required_string("id")?;
    let event_type = fields.required_string("eventType")?;
    let source = fields.optional_string("topic")?.unwrap_or_default();
    let subject = fields.optional_string("subject")?;
    let time = fields.optional_string("eventTime")?;
    let data_version = fields.optional_string("dataVersion")?;
    let data = fields
        .raw("data")
        .map(|d| d.get().as_bytes().to_vec())
        .unwrap_or_default();
    let data = if data == b"null" { Vec::new() } else { data };
    Ok(Event {
        id,
        event_type,
        source,
        subject,
        time,
        data_content_type: Some("application/json".into()),
        data_version,
        data,
        extensions: Vec::new(),
        schema: Schema::EventGrid,
        raw,
    })
}

/// One event object's top-level attributes, values still as raw JSON, so each
/// attribute is checked on its own and a problem names it.
struct Fields<'a> {
    index: usize,
    map: HashMap<String, &'a RawValue>,
}

impl<'a> Fields<'a> {
    fn parse(index: usize, raw: &'a RawValue) -> Result<Self, DecodeError> {
        let map = serde_json::from_str(raw.get()).map_err(|_| DecodeError {
            message: format!("expected a JSON object, found {}", json_kind(raw.get())),
            event_index: Some(index),
            field: None,
        })?;
        Ok(Fields { index, map })
    }

    fn raw(&self, name: &str) -> Option<&'a RawValue> {
        self.map.get(name).copied()
    }

    fn optional_string(&self, name: &str) -> Result<Option<String>, DecodeError> {
        match self.raw(name) {
            None => Ok(None),
            Some(raw) if raw.get() == "null" => Ok(None),
            Some(raw) => serde_json::from_str(raw.get()).map(Some).map_err(|_| {
                DecodeError::field(
                    self.index,
                    name,
                    format!("must be a string, found {}", json_kind(raw.get())),
                )
            }),
        }
    }

    fn required_string(&self, name: &str) -> Result<String, DecodeError> {
        match self.optional_string(name)? {
            Some(value) if !value.is_empty() => Ok(value),
            Some(_) => Err(DecodeError::field(self.index, name, "must not be empty")),
            None => Err(DecodeError::field(self.index, name, "is required")),
        }
    }
}

/// Names the kind of a JSON value, for error messages.
fn json_kind(text: &str) -> &'static str {
    match text.trim_start().as_bytes().first() {
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b'"') => "a string",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    }
}

/// The Event Grid webhook handshake event, if `event` is one: its
/// `validationCode` (and `validationUrl`, for manual validation).
pub struct ValidationRequest {
    pub code: String,
    pub url: Option<String>,
}

pub const SUBSCRIPTION_VALIDATION_EVENT: &str = "Microsoft.EventGrid.SubscriptionValidationEvent";

impl ValidationRequest {
    pub fn from_event(event: &Event) -> Result<Self, DecodeError> {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Data {
            validation_code: Option<String>,
            validation_url: Option<String>,
        }
        let data: Data = serde_json::from_slice(&event.data).map_err(|e| {
            DecodeError::field(0, "data", format!("validation data is not an object: {e}"))
        })?;
        let code = data
            .validation_code
            .filter(|c| !c.is_empty())
            .ok_or_else(|| {
                DecodeError::field(
                    0,
                    "data.validationCode",
                    "is required in a validation event",
                )
            })?;
        Ok(ValidationRequest {
            code,
            url: data.validation_url,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vectors(dir: &str) -> Vec<(String, Vec<u8>)> {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/vectors/");
        let mut files: Vec<_> = std::fs::read_dir(format!("{root}{dir}"))
            .expect("shared/vectors beside the checkout")
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .map(|p| {
                (
                    p.file_name().unwrap().to_string_lossy().into_owned(),
                    std::fs::read(&p).unwrap(),
                )
            })
            .collect();
        files.sort();
        files
    }

    #[test]
    fn every_event_grid_vector_decodes_with_its_attributes() {
        let files = vectors("eventgrid");
        assert_eq!(files.len(), 52);
        let mut total = 0;
        for (name, body) in files {
            let expected: Vec<serde_json::Value> = serde_json::from_slice(&body).unwrap();
            let events = decode_event_grid(&body).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(events.len(), expected.len(), "{name}");
            for (event, json) in events.iter().zip(&expected) {
                assert_eq!(event.id, json["id"].as_str().unwrap(), "{name}");
                assert_eq!(
                    event.event_type,
                    json["eventType"].as_str().unwrap(),
                    "{name}"
                );
                assert_eq!(event.source, json["topic"].as_str().unwrap_or(""), "{name}");
                assert_eq!(event.subject.as_deref(), json["subject"].as_str(), "{name}");
                let data: serde_json::Value = serde_json::from_slice(&event.data).unwrap();
                assert_eq!(data, json["data"], "{name}: data must be kept as sent");
                let raw: serde_json::Value = serde_json::from_str(event.raw.get()).unwrap();
                assert_eq!(&raw, json, "{name}: raw must be the event as sent");
            }
            total += events.len();
        }
        assert_eq!(total, 55);
    }

    #[test]
    fn data_is_kept_byte_for_byte() {
        let body =
            br#"[{"id":"1","eventType":"t","subject":"s","data":{"b": 1.50, "a":"\u00e9"}}]"#;
        let events = decode_event_grid(body).unwrap();
        assert_eq!(events[0].data, br#"{"b": 1.50, "a":"\u00e9"}"#);
    }

    #[test]
    fn a_single_object_is_a_batch_of_one() {
        let events = decode_event_grid(br#"{"id":"1","eventType":"t","subject":"s"}"#).unwrap();
        assert_eq!(events.len(), 1);
        assert!(events[0].data.is_empty());
    }

    #[test]
    fn problems_name_the_event_and_field() {
        type Case<'a> = (&'a [u8], Option<usize>, Option<&'a str>, &'a str);
        let cases: [Case; 7] = [
            (b"", None, None, "body is empty"),
            (b"[{\"id\": ", None, None, "not valid JSON"),
            (b"[]", None, None, "empty array"),
            (
                b"[42]",
                Some(0),
                None,
                "expected a JSON object, found a number",
            ),
            (
                br#"[{"id":"1","eventType":"t"},{"eventType":"t"}]"#,
                Some(1),
                Some("id"),
                "is required",
            ),
            (
                br#"[{"id":7,"eventType":"t"}]"#,
                Some(0),
                Some("id"),
                "must be a string, found a number",
            ),
            (
                br#"[{"id":"1","eventType":""}]"#,
                Some(0),
                Some("eventType"),
                "must not be empty",
            ),
        ];
        for (body, index, field, message) in cases {
            let err = decode_event_grid(body).unwrap_err();
            assert_eq!(err.event_index, index, "{err}");
            assert_eq!(err.field.as_deref(), field, "{err}");
            assert!(
                err.message.contains(message),
                "{err} should contain {message:?}"
            );
        }
    }

    #[test]
    fn the_docs_validation_event_yields_its_code() {
        let root = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/vectors/eventgrid/handshake/"
        );
        let body = std::fs::read(format!("{root}docs-SubscriptionValidationEvent.json")).unwrap();
        let events = decode_event_grid(&body).unwrap();
        assert_eq!(events[0].event_type, SUBSCRIPTION_VALIDATION_EVENT);
        let request = ValidationRequest::from_event(&events[0]).unwrap();
        assert_eq!(request.code, "512d38b6-c7b8-40c8-89fe-f46f9e9622b6");
        assert!(
            request
                .url
                .unwrap()
                .starts_with("https://rp-eastus2.eventgrid.azure.net")
        );
    }
}
