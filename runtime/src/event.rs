//! The one event model every stage shares, and the decoders that turn pushed
//! bodies into it: Event Grid schema, and CloudEvents 1.0 in structured,
//! batched and binary mode.
//!
//! Decoding is tolerant where Event Grid's own payloads are quirky (timestamps
//! without an offset, empty `dataVersion`, unknown properties, `{placeholder}`
//! sources) and strict where gridfn or the CloudEvents spec depends on an
//! attribute (`id`, `type`, `source`, `specversion`): a batch with one bad
//! event is refused whole, with the index and attribute of the first problem,
//! before any handler runs.

use base64::Engine as _;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

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
        DecodeError { message: message.into(), event_index: None, field: None }
    }

    fn field(index: usize, field: &str, message: impl Into<String>) -> Self {
        DecodeError { message: message.into(), event_index: Some(index), field: Some(field.into()) }
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

/// How an event reached gridfn; handlers see it as `delivery`. Every source
/// fills it in: Event Grid's push from its `aeg-*` headers, the local topic,
/// a replay.
#[derive(Debug, Clone, Default)]
pub struct DeliveryInfo {
    /// Attempts before this one: Event Grid's delivery count, plus local retries.
    pub attempt: u32,
    /// The Event Grid subscription it came through, if the source says.
    pub subscription: Option<String>,
    /// Whether it is a replay of a dead-lettered event.
    pub replay: bool,
}

/// Splits a body into its events' raw JSON objects: an array of events, or one
/// bare event object (which Event Grid never sends but curl users do).
pub fn split_batch(body: &[u8]) -> Result<Vec<Box<RawValue>>, DecodeError> {
    let text = std::str::from_utf8(body).map_err(|e| DecodeError::body(format!("body is not UTF-8: {e}")))?;
    let trimmed = text.trim_start();
    if trimmed.is_empty() {
        return Err(DecodeError::body("body is empty; expected a JSON array of events"));
    }
    let events = if trimmed.starts_with('[') {
        serde_json::from_str::<Vec<Box<RawValue>>>(text)
    } else {
        serde_json::from_str::<Box<RawValue>>(text).map(|one| vec![one])
    }
    .map_err(|e| DecodeError::body(format!("body is not valid JSON: {e}")))?;
    if events.is_empty() {
        return Err(DecodeError::body("the batch is an empty array; expected at least one event"));
    }
    Ok(events)
}

/// Decodes an Event Grid schema body (array or single object).
pub fn decode_event_grid(body: &[u8]) -> Result<Vec<Event>, DecodeError> {
    decode_all(split_batch(body)?, decode_event_grid_event)
}

/// Decodes each event of a batch with `decode`, stopping at the first problem.
fn decode_all(
    events: Vec<Box<RawValue>>,
    decode: fn(usize, Box<RawValue>) -> Result<Event, DecodeError>,
) -> Result<Vec<Event>, DecodeError> {
    events.into_iter().enumerate().map(|(index, raw)| decode(index, raw)).collect()
}

fn decode_event_grid_event(index: usize, raw: Box<RawValue>) -> Result<Event, DecodeError> {
    let fields = Fields::parse(index, &raw)?;
    let id = fields.required_string("id")?;
    let event_type = fields.required_string("eventType")?;
    let source = fields.optional_string("topic")?.unwrap_or_default();
    let subject = fields.optional_string("subject")?;
    let time = fields.optional_string("eventTime")?;
    let data_version = fields.optional_string("dataVersion")?;
    let data = fields.raw("data").map(|d| d.get().as_bytes().to_vec()).unwrap_or_default();
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

/// Decodes CloudEvents in the JSON format: one structured event or a batch
/// (an array), whichever the body holds.
pub fn decode_cloudevents(body: &[u8]) -> Result<Vec<Event>, DecodeError> {
    decode_all(split_batch(body)?, decode_cloud_event)
}

/// Decodes a JSON body whose content type does not say which schema it is
/// (`application/json`): CloudEvents when the first event has a
/// `specversion`, Event Grid schema otherwise.
pub fn decode_json(body: &[u8]) -> Result<Vec<Event>, DecodeError> {
    let events = split_batch(body)?;
    let cloudevents = Fields::parse(0, &events[0])?.raw("specversion").is_some();
    decode_all(events, if cloudevents { decode_cloud_event } else { decode_event_grid_event })
}

/// The CloudEvents attributes the spec defines; every other top-level member
/// is an extension attribute.
const CLOUDEVENT_ATTRIBUTES: [&str; 10] =
    ["specversion", "id", "source", "type", "subject", "time", "datacontenttype", "dataschema", "data", "data_base64"];

fn decode_cloud_event(index: usize, raw: Box<RawValue>) -> Result<Event, DecodeError> {
    let fields = Fields::parse(index, &raw)?;
    let specversion = fields.required_string("specversion")?;
    if specversion != "1.0" {
        return Err(DecodeError::field(
            index,
            "specversion",
            format!("{specversion:?} is not supported; gridfn accepts CloudEvents 1.0"),
        ));
    }
    let id = fields.required_string("id")?;
    let source = fields.required_string("source")?;
    let event_type = fields.required_string("type")?;
    let subject = fields.optional_string("subject")?;
    let time = fields.optional_string("time")?;
    if let Some(time) = &time {
        OffsetDateTime::parse(time, &Rfc3339)
            .map_err(|_| DecodeError::field(index, "time", format!("{time:?} is not an RFC 3339 timestamp")))?;
    }
    let data_content_type = fields.optional_string("datacontenttype")?;
    fields.optional_string("dataschema")?;

    let data = match (fields.raw("data"), fields.raw("data_base64")) {
        (Some(_), Some(_)) => {
            return Err(DecodeError::field(index, "data_base64", "an event has data or data_base64, not both"));
        }
        (None, Some(encoded)) => {
            let encoded: String = serde_json::from_str(encoded.get())
                .map_err(|_| DecodeError::field(index, "data_base64", "must be a string"))?;
            base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .map_err(|e| DecodeError::field(index, "data_base64", format!("is not valid base64: {e}")))?
        }
        (Some(data), None) => cloud_event_data(data, data_content_type.as_deref()),
        (None, None) => Vec::new(),
    };

    let mut extensions = Vec::new();
    for (position, (Name(name), value)) in fields.map.iter().enumerate() {
        let repeated_later = fields.map[position + 1..].iter().any(|(later, _)| later.0 == *name);
        if CLOUDEVENT_ATTRIBUTES.contains(&name.as_ref()) || repeated_later {
            continue;
        }
        if let Some(value) = extension_value(index, name, value)? {
            extensions.push((name.to_string(), value));
        }
    }
    extensions.sort();
    let data_version = extensions.iter().find(|(name, _)| name == "dataversion").map(|(_, v)| v.clone());

    Ok(Event {
        id,
        event_type,
        source,
        subject,
        time,
        data_content_type,
        data_version,
        data,
        extensions,
        schema: Schema::CloudEvents,
        raw,
    })
}

/// `data` in the JSON format: JSON text when the content type is JSON (or
/// unset); the string itself when it is a string of another media type.
fn cloud_event_data(data: &RawValue, content_type: Option<&str>) -> Vec<u8> {
    let text = data.get();
    if text == "null" {
        return Vec::new();
    }
    if !content_type.is_none_or(is_json_media_type)
        && text.starts_with('"')
        && let Ok(string) = serde_json::from_str::<String>(text)
    {
        return string.into_bytes();
    }
    text.as_bytes().to_vec()
}

/// `application/json`, `text/json` and any `…+json` type.
pub fn is_json_media_type(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    essence == "application/json" || essence == "text/json" || essence.ends_with("+json")
}

/// An extension attribute's value as text; the spec allows only scalar types
/// and names of lower-case letters and digits.
fn extension_value(index: usize, name: &str, value: &RawValue) -> Result<Option<String>, DecodeError> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) {
        return Err(DecodeError::field(
            index,
            name,
            "is not a valid CloudEvents attribute name (lower-case letters and digits only)",
        ));
    }
    match serde_json::from_str::<Value>(value.get()) {
        Ok(Value::Null) => Ok(None),
        Ok(Value::String(text)) => Ok(Some(text)),
        Ok(Value::Number(number)) => Ok(Some(number.to_string())),
        Ok(Value::Bool(flag)) => Ok(Some(flag.to_string())),
        _ => Err(DecodeError::field(index, name, "an extension attribute must be a string, number or boolean")),
    }
}

/// Decodes a CloudEvent in HTTP binary mode: attributes from `ce-*` headers
/// (already percent-decoded, names without the prefix), the body as data and
/// `Content-Type` as its media type. The event is also rebuilt in structured
/// form, which filters and dead-letter records read.
pub fn decode_binary_cloud_event(
    attributes: Vec<(String, String)>,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<Event, DecodeError> {
    let mut structured = Map::new();
    for (name, value) in attributes {
        if matches!(name.as_str(), "data" | "data_base64" | "datacontenttype") {
            return Err(DecodeError::field(0, &format!("ce-{name}"), "is not a CloudEvents binary-mode header"));
        }
        structured.insert(name, Value::String(value));
    }
    if let Some(content_type) = content_type {
        structured.insert("datacontenttype".into(), Value::String(content_type.to_owned()));
    }
    if !body.is_empty() {
        let json_data =
            content_type.is_none_or(is_json_media_type).then(|| serde_json::from_slice::<Value>(body).ok()).flatten();
        let text_data = content_type
            .filter(|t| t.trim_start().to_ascii_lowercase().starts_with("text/"))
            .and_then(|_| std::str::from_utf8(body).ok());
        match (json_data, text_data) {
            (Some(json), _) => structured.insert("data".into(), json),
            (None, Some(text)) => structured.insert("data".into(), Value::String(text.to_owned())),
            (None, None) => structured
                .insert("data_base64".into(), Value::String(base64::engine::general_purpose::STANDARD.encode(body))),
        };
    }
    let raw = serde_json::value::to_raw_value(&structured).expect("a JSON map serialises");
    let mut event = decode_cloud_event(0, raw)?;
    event.data = body.to_vec();
    Ok(event)
}

/// One event object's top-level attributes, values still as raw JSON, so each
/// attribute is checked on its own and a problem names it.
struct Fields<'a> {
    index: usize,
    /// In document order. A handful of names: a scan beats hashing, and names
    /// without escapes are borrowed, not copied (this runs for every event).
    map: Vec<(Name<'a>, &'a RawValue)>,
}

/// An attribute name: borrowed from the body unless it had escapes.
struct Name<'a>(std::borrow::Cow<'a, str>);

impl<'de> serde::Deserialize<'de> for Name<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Name<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an attribute name")
            }
            fn visit_borrowed_str<E>(self, name: &'de str) -> Result<Name<'de>, E> {
                Ok(Name(name.into()))
            }
            fn visit_str<E>(self, name: &str) -> Result<Name<'de>, E> {
                Ok(Name(name.to_owned().into()))
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

/// An object's members, in order.
struct Members<'a>(Vec<(Name<'a>, &'a RawValue)>);

impl<'de> serde::Deserialize<'de> for Members<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Members<'de>, A::Error> {
                let mut members = Vec::with_capacity(map.size_hint().unwrap_or(10));
                while let Some(member) = map.next_entry()? {
                    members.push(member);
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

impl<'a> Fields<'a> {
    fn parse(index: usize, raw: &'a RawValue) -> Result<Self, DecodeError> {
        let Members(map) = serde_json::from_str(raw.get()).map_err(|_| DecodeError {
            message: format!("expected a JSON object, found {}", json_kind(raw.get())),
            event_index: Some(index),
            field: None,
        })?;
        Ok(Fields { index, map })
    }

    /// The attribute's raw value; the last one wins if a name repeats (as in
    /// any JSON object parsed into a map).
    fn raw(&self, name: &str) -> Option<&'a RawValue> {
        self.map.iter().rev().find(|(n, _)| n.0 == name).map(|(_, value)| *value)
    }

    fn optional_string(&self, name: &str) -> Result<Option<String>, DecodeError> {
        match self.raw(name) {
            None => Ok(None),
            Some(raw) if raw.get() == "null" => Ok(None),
            Some(raw) => serde_json::from_str(raw.get()).map(Some).map_err(|_| {
                DecodeError::field(self.index, name, format!("must be a string, found {}", json_kind(raw.get())))
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

/// Sent when a subscription is deleted; a notice to log, not an event to run.
pub const SUBSCRIPTION_DELETED_EVENT: &str = "Microsoft.EventGrid.SubscriptionDeletedEvent";

impl ValidationRequest {
    pub fn from_event(event: &Event) -> Result<Self, DecodeError> {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Data {
            validation_code: Option<String>,
            validation_url: Option<String>,
        }
        let data: Data = serde_json::from_slice(&event.data)
            .map_err(|e| DecodeError::field(0, "data", format!("validation data is not an object: {e}")))?;
        let code = data
            .validation_code
            .filter(|c| !c.is_empty())
            .ok_or_else(|| DecodeError::field(0, "data.validationCode", "is required in a validation event"))?;
        Ok(ValidationRequest { code, url: data.validation_url })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vectors(dir: &str) -> Vec<(String, Vec<u8>)> {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/vectors/");
        let mut files: Vec<_> = std::fs::read_dir(format!("{root}{dir}"))
            .expect("tests/vectors in the repository")
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
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
                assert_eq!(event.event_type, json["eventType"].as_str().unwrap(), "{name}");
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
        let body = br#"[{"id":"1","eventType":"t","subject":"s","data":{"b": 1.50, "a":"\u00e9"}}]"#;
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
            (b"[42]", Some(0), None, "expected a JSON object, found a number"),
            (br#"[{"id":"1","eventType":"t"},{"eventType":"t"}]"#, Some(1), Some("id"), "is required"),
            (br#"[{"id":7,"eventType":"t"}]"#, Some(0), Some("id"), "must be a string, found a number"),
            (br#"[{"id":"1","eventType":""}]"#, Some(0), Some("eventType"), "must not be empty"),
        ];
        for (body, index, field, message) in cases {
            let err = decode_event_grid(body).unwrap_err();
            assert_eq!(err.event_index, index, "{err}");
            assert_eq!(err.field.as_deref(), field, "{err}");
            assert!(err.message.contains(message), "{err} should contain {message:?}");
        }
    }

    #[test]
    fn every_cloudevents_vector_decodes_into_the_same_model() {
        let files = vectors("cloudevents");
        assert_eq!(files.len(), 4);
        for (name, body) in files {
            let json: Value = serde_json::from_slice(&body).unwrap();
            let expected = match json {
                Value::Array(events) => events,
                one => vec![one],
            };
            let events = decode_cloudevents(&body).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(events.len(), expected.len(), "{name}");
            for (event, json) in events.iter().zip(&expected) {
                assert_eq!(event.schema, Schema::CloudEvents, "{name}");
                assert_eq!(event.id, json["id"].as_str().unwrap(), "{name}");
                assert_eq!(event.event_type, json["type"].as_str().unwrap(), "{name}");
                assert_eq!(event.source, json["source"].as_str().unwrap(), "{name}");
                assert_eq!(event.subject.as_deref(), json["subject"].as_str(), "{name}");
                assert_eq!(event.time.as_deref(), json["time"].as_str(), "{name}");
                if let Some(data) = json.get("data") {
                    assert_eq!(serde_json::from_slice::<Value>(&event.data).unwrap(), *data, "{name}");
                }
            }
            // The same files decode the same way when sent as plain JSON.
            let auto = decode_json(&body).unwrap();
            assert!(auto.iter().all(|e| e.schema == Schema::CloudEvents), "{name}");
        }
    }

    #[test]
    fn cloudevent_extensions_and_base64_data() {
        let body = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/vectors/cloudevents/java-CloudEventBinaryData.batch.json"
        ))
        .unwrap();
        let event = &decode_cloudevents(&body).unwrap()[0];
        assert_eq!(event.extensions, vec![("foo".to_owned(), "bar".to_owned())]);
        assert_eq!(event.data, base64::engine::general_purpose::STANDARD.decode("samplebinarydata").unwrap());

        let body = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/vectors/cloudevents/docs-event-filtering-extension-attributes.json"
        ))
        .unwrap();
        let event = &decode_cloudevents(&body).unwrap()[0];
        assert_eq!(event.subject, None, "subject: null is absent");
        assert_eq!(
            event.extensions,
            vec![("comexampleextension1".into(), "value".into()), ("comexampleothervalue".into(), "5".into())]
        );
    }

    #[test]
    fn cloudevents_are_validated_as_the_spec_says() {
        let invalid = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/vectors/cloudevents/invalid/docs-delivery-and-retry-event-no-specversion.json"
        ))
        .unwrap();
        let err = decode_cloudevents(&invalid).unwrap_err();
        assert_eq!((err.field.as_deref(), err.message.as_str()), (Some("specversion"), "is required"));

        let base = r#""specversion":"1.0","id":"1","source":"/s","type":"t""#;
        let cases = [
            (r#"{"specversion":"0.3","id":"1","source":"/s","type":"t"}"#.to_owned(), "specversion", "not supported"),
            (r#"{"specversion":"1.0","source":"/s","type":"t"}"#.to_owned(), "id", "is required"),
            (r#"{"specversion":"1.0","id":"1","type":"t"}"#.to_owned(), "source", "is required"),
            (r#"{"specversion":"1.0","id":"1","source":"/s"}"#.to_owned(), "type", "is required"),
            (format!(r#"{{{base},"time":"yesterday"}}"#), "time", "RFC 3339"),
            (format!(r#"{{{base},"data":1,"data_base64":"AA=="}}"#), "data_base64", "not both"),
            (format!(r#"{{{base},"data_base64":"%%%"}}"#), "data_base64", "base64"),
            (format!(r#"{{{base},"Bad-Name":"x"}}"#), "Bad-Name", "attribute name"),
            (format!(r#"{{{base},"nested":{{"a":1}}}}"#), "nested", "string, number or boolean"),
        ];
        for (body, field, message) in cases {
            let err = decode_cloudevents(body.as_bytes()).unwrap_err();
            assert_eq!(err.field.as_deref(), Some(field), "{body}: {err}");
            assert!(err.message.contains(message), "{body}: {err}");
        }
    }

    #[test]
    fn text_data_of_a_non_json_type_is_the_string_itself() {
        let body =
            br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","datacontenttype":"text/plain","data":"hello"}"#;
        assert_eq!(decode_cloudevents(body).unwrap()[0].data, b"hello");
    }

    #[test]
    fn binary_mode_keeps_the_body_and_rebuilds_the_structured_event() {
        let attributes = vec![
            ("specversion".to_owned(), "1.0".to_owned()),
            ("id".to_owned(), "b-1".to_owned()),
            ("source".to_owned(), "/orders".to_owned()),
            ("type".to_owned(), "Order.Created".to_owned()),
            ("traceparent".to_owned(), "00-abc".to_owned()),
        ];
        let event = decode_binary_cloud_event(attributes.clone(), Some("application/json"), br#"{"n": 1}"#).unwrap();
        assert_eq!(event.data, br#"{"n": 1}"#);
        assert_eq!(event.data_content_type.as_deref(), Some("application/json"));
        assert_eq!(event.extensions, vec![("traceparent".to_owned(), "00-abc".to_owned())]);
        let raw: Value = serde_json::from_str(event.raw.get()).unwrap();
        assert_eq!(raw["data"]["n"], 1);

        let binary = decode_binary_cloud_event(attributes, Some("application/octet-stream"), &[0, 159, 146]).unwrap();
        assert_eq!(binary.data, vec![0, 159, 146]);
        let raw: Value = serde_json::from_str(binary.raw.get()).unwrap();
        assert_eq!(raw["data_base64"], "AJ+S");
    }

    #[test]
    fn the_docs_validation_event_yields_its_code() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/vectors/eventgrid/handshake/");
        let body = std::fs::read(format!("{root}docs-SubscriptionValidationEvent.json")).unwrap();
        let events = decode_event_grid(&body).unwrap();
        assert_eq!(events[0].event_type, SUBSCRIPTION_VALIDATION_EVENT);
        let request = ValidationRequest::from_event(&events[0]).unwrap();
        assert_eq!(request.code, "512d38b6-c7b8-40c8-89fe-f46f9e9622b6");
        assert!(request.url.unwrap().starts_with("https://rp-eastus2.eventgrid.azure.net"));
    }
}
