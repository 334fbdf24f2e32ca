//! The one event model every stage shares, and the decoders that turn pushed
//! bodies into it: Event Grid schema, and CloudEvents 1.0 in structured,
//! batched and binary mode.
//!
//! Decoding is tolerant where Event Grid's own payloads are quirky (timestamps
//! without an offset, empty `dataVersion`, unknown properties, `{placeholder}`
//! sources, `"subject": ""`, `"dataschema": "#"`) and otherwise holds
//! CloudEvents to every MUST of CloudEvents 1.0.2 and its JSON format that a
//! receiver can check (the README's "CloudEvents conformance" lists them, each
//! with its test): a batch with one bad event is refused whole, with the index
//! and attribute of the first problem, before any handler runs.

use base64::Engine as _;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

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
    /// The event as one JSON object: its members as they arrived (or, replayed,
    /// its dead-letter record's less the attributes). Dead-letter records are
    /// written from it, filters read it, a replay's `--to` sends it.
    pub raw: RawJson,
}

/// An event's JSON object as text, valid JSON by construction: written by
/// gridfn from the members it decoded, each checked ([`decode_members`]):
/// the object as it arrived, less whitespace between its members (and, for a
/// replayed record, less the dead-letter attributes). Never parsed again just
/// to be held: serde_json's `RawValue` can only be made by parsing or
/// serialising, which costs more than writing the members out.
#[derive(Debug, Clone)]
pub struct RawJson(Box<str>);

impl RawJson {
    pub fn get(&self) -> &str {
        &self.0
    }

    /// As serde_json's `RawValue`, to embed in JSON that serde writes (a
    /// namespace record): a copy, checked again.
    pub fn to_raw_value(&self) -> Box<RawValue> {
        RawValue::from_string(self.0.to_string()).expect("gridfn writes valid JSON")
    }
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

    fn field(field: &str, message: impl Into<String>) -> Self {
        DecodeError { message: message.into(), event_index: None, field: Some(field.into()) }
    }

    /// The same problem, in the batch's event `index`.
    fn at(self, index: usize) -> Self {
        DecodeError { event_index: Some(index), ..self }
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
    /// The request's W3C `traceparent`, the parent of each pair's span
    /// unless the event carries its own ([`crate::trace`]).
    pub traceparent: Option<crate::trace::TraceParent>,
}

/// Reads a body's events, each as its members, in one pass: an array of
/// events (possibly empty), or one bare event object (which Event Grid never
/// sends but curl users do). Values, and names without escapes, borrow the
/// body; each event's `raw` is written from its members once they are
/// checked ([`decode_members`]). An element that is no object is an error of
/// that event.
fn batch_members(body: &[u8]) -> Result<Vec<Members<'_>>, DecodeError> {
    let text = std::str::from_utf8(body).map_err(|e| DecodeError::body(format!("body is not UTF-8: {e}")))?;
    let trimmed = text.trim_start();
    if trimmed.is_empty() {
        return Err(DecodeError::body("body is empty; expected a JSON array of events"));
    }
    let invalid = |e: serde_json::Error| DecodeError::body(format!("body is not valid JSON: {e}"));
    let events: Vec<Result<Members<'_>, String>> = if trimmed.starts_with('[') {
        match serde_json::from_str::<Vec<MaybeMembers>>(text) {
            Ok(events) => events.into_iter().map(|MaybeMembers(members)| members.map_err(not_an_object)).collect(),
            // Valid JSON that one event fails to be read as (a name with a
            // lone surrogate, a whole event that is a number out of range):
            // each event is read again alone, so the error names it.
            Err(_) => {
                serde_json::from_str::<Vec<&RawValue>>(text).map_err(invalid)?.into_iter().map(object_members).collect()
            }
        }
    } else {
        vec![object_members(serde_json::from_str::<&RawValue>(text).map_err(invalid)?)]
    };
    events
        .into_iter()
        .enumerate()
        .map(|(index, members)| {
            members.map_err(|message| DecodeError { message, event_index: Some(index), field: None })
        })
        .collect()
}

/// Checks what reading an event's member as a [`RawValue`] skims over. That
/// reading checks JSON's syntax, but not what a value means: a `\u` escape
/// may be a lone surrogate, a number may be out of `f64`'s range (an
/// exponent, or 309 digits), and arrays may nest deeper than serde_json
/// parses (128 levels, counted from the outermost of the event, of the
/// dead-letter blob holding it, of a namespace record around it), which would
/// fail a filter, a handler's SDK or a replay later. A value where none of
/// these can occur is not parsed again: one scan finds no backslash, and
/// outside strings no exponent, no long run of digits and few brackets. Most
/// events pass it, and it costs a fraction of the parse.
fn check_skimmed(value: &RawValue) -> serde_json::Result<()> {
    if may_skim_a_problem(value.get().as_bytes()) {
        check_fully(value.get())?;
    }
    Ok(())
}

/// Parses a member's value as [`ValidJson`], keeping nothing.
fn check_fully(text: &str) -> serde_json::Result<()> {
    let mut deserializer = serde_json::Deserializer::from_str(text);
    serde::de::DeserializeSeed::deserialize(ValidJson { depth_left: MAX_MEMBER_DEPTH }, &mut deserializer)?;
    deserializer.end()
}

/// How deep a member's value may nest: serde_json reads 128 levels, and a
/// member is read inside its event, the event inside a dead-letter blob's
/// array, and in a namespace record inside its `event`.
const MAX_MEMBER_DEPTH: usize = 120;

/// Whether JSON text that reads as a [`RawValue`] could still fail
/// [`check_fully`]; false only when it certainly cannot. Without a backslash
/// every `"` opens or closes a string, so strings are skipped whole (they
/// are most of an event: ids, URLs, hex digests, where `0e5` is no exponent).
fn may_skim_a_problem(text: &[u8]) -> bool {
    // Well inside the limits: 300 digits are < 1e300; 100 brackets nest < MAX_MEMBER_DEPTH deep.
    const MAX_DIGITS: usize = 300;
    const MAX_OPENINGS: usize = 100;
    let (mut digits, mut openings) = (0usize, 0usize);
    let mut at = 0;
    while let Some(&byte) = text.get(at) {
        at += 1;
        match byte {
            b'"' => match memchr::memchr2(b'"', b'\\', &text[at..]) {
                Some(end) if text[at + end] == b'"' => at += end + 1,
                _ => return true,
            },
            b'0'..=b'9' => {
                digits += 1;
                if digits > MAX_DIGITS {
                    return true;
                }
                continue;
            }
            b'e' | b'E' if digits > 0 => return true,
            b'[' | b'{' => {
                openings += 1;
                if openings > MAX_OPENINGS {
                    return true;
                }
            }
            _ => {}
        }
        digits = 0;
    }
    false
}

/// Deserializes any JSON value, keeping nothing: a check that every string
/// escape and number is valid, and that arrays and objects nest at most
/// `depth_left` deep, without building the value.
struct ValidJson {
    depth_left: usize,
}

impl<'de> serde::de::DeserializeSeed<'de> for ValidJson {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl ValidJson {
    /// The check one level down, or why there is none.
    fn inner<E: serde::de::Error>(&self) -> Result<ValidJson, E> {
        match self.depth_left.checked_sub(1) {
            Some(depth_left) => Ok(ValidJson { depth_left }),
            None => Err(E::custom(format_args!("nests deeper than {MAX_MEMBER_DEPTH} levels"))),
        }
    }
}

impl<'de> serde::de::Visitor<'de> for ValidJson {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(self.inner()?)?.is_some() {}
        Ok(())
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_key_seed(self.inner()?)?.is_some() {
            map.next_value_seed(self.inner()?)?;
        }
        Ok(())
    }
}

/// Refuses an empty Event Grid schema batch: Event Grid never pushes one, and
/// its own publishing endpoint refuses `[]`, so an empty array is a client's
/// mistake worth a 400 (CloudEvents batches, unlike these, may be empty).
fn non_empty(events: Vec<Members<'_>>) -> Result<Vec<Members<'_>>, DecodeError> {
    if events.is_empty() {
        return Err(DecodeError::body(
            "the batch is an empty array; an Event Grid schema batch holds at least one event",
        ));
    }
    Ok(events)
}

/// Decodes an Event Grid schema body (array or single object).
pub fn decode_event_grid(body: &[u8]) -> Result<Vec<Event>, DecodeError> {
    decode_all(non_empty(batch_members(body)?)?, Schema::EventGrid)
}

/// Decodes each event of a batch as `schema`, stopping at the first problem.
fn decode_all(events: Vec<Members<'_>>, schema: Schema) -> Result<Vec<Event>, DecodeError> {
    events
        .into_iter()
        .enumerate()
        .map(|(index, members)| decode_members(schema, members).map_err(|e| e.at(index)))
        .collect()
}

/// An Event Grid schema event from its attributes, checked, and its `raw` JSON.
fn event_grid_event(fields: &Fields<'_>, raw: RawJson) -> Result<Event, DecodeError> {
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
/// (an array, which may be empty: the JSON batch format allows `[]`),
/// whichever the body holds.
pub fn decode_cloudevents(body: &[u8]) -> Result<Vec<Event>, DecodeError> {
    decode_all(batch_members(body)?, Schema::CloudEvents)
}

/// Decodes a JSON body whose content type does not say which schema it is
/// (`application/json`): CloudEvents when the first event has a
/// `specversion`, Event Grid schema otherwise (so `[]`, with no event to
/// tell, is an empty Event Grid batch, and refused).
pub fn decode_json(body: &[u8]) -> Result<Vec<Event>, DecodeError> {
    let events = non_empty(batch_members(body)?)?;
    let cloudevents = events[0].iter().any(|(name, _)| name == "specversion");
    decode_all(events, if cloudevents { Schema::CloudEvents } else { Schema::EventGrid })
}

/// Decodes one event from its members, the way every event is decoded: a
/// pushed one (its body read by [`batch_members`]) and a replayed one (a
/// dead-letter record, its dead-letter attributes taken out). Every value is
/// checked to be valid JSON ([`check_skimmed`]), then the schema's own rules
/// apply, and the members are written back as one object for `raw`, without
/// parsing them a second time. A problem names no event index: the caller
/// knows where the members came from.
pub fn decode_members(schema: Schema, members: Members<'_>) -> Result<Event, DecodeError> {
    for (name, value) in &members {
        check_skimmed(value).map_err(|e| DecodeError {
            message: format!("is not valid JSON: {e}"),
            event_index: None,
            field: Some(name.to_string()),
        })?;
    }
    // Written out, not parsed again: every value was just checked.
    let raw = RawJson(object_text(&members));
    let fields = Fields { map: members };
    match schema {
        Schema::EventGrid => event_grid_event(&fields, raw),
        Schema::CloudEvents => cloud_event(&fields, raw),
    }
}

/// An object's members written back as one JSON object (`{"name":value,…}`,
/// values byte for byte). A name serde read without copying has no escapes
/// and goes in as it is; the text is allocated at its final length.
fn object_text(members: &[(std::borrow::Cow<'_, str>, &RawValue)]) -> Box<str> {
    let length = members.iter().map(|(name, value)| name.len() + value.get().len() + 4).sum::<usize>() + 1;
    let mut text = String::with_capacity(length.max(2));
    text.push('{');
    for (i, (name, value)) in members.iter().enumerate() {
        if i > 0 {
            text.push(',');
        }
        match name {
            std::borrow::Cow::Borrowed(name) => {
                text.push('"');
                text.push_str(name);
                text.push('"');
            }
            std::borrow::Cow::Owned(name) => text.push_str(&serde_json::to_string(name).expect("a string serialises")),
        }
        text.push(':');
        text.push_str(value.get());
    }
    text.push('}');
    text.into_boxed_str()
}

/// The members of a JSON-format CloudEvent that are not extension attributes:
/// the attributes CloudEvents 1.0 defines, and the format's two data members.
const CLOUDEVENT_MEMBERS: [&str; 10] =
    ["specversion", "id", "source", "type", "subject", "time", "datacontenttype", "dataschema", "data", "data_base64"];

/// A CloudEvent from its attributes, checked, and its `raw` JSON.
fn cloud_event(fields: &Fields<'_>, raw: RawJson) -> Result<Event, DecodeError> {
    fields.each_name_once()?;
    let specversion = fields.required_attribute("specversion")?;
    if specversion != "1.0" {
        return Err(DecodeError::field(
            "specversion",
            format!("{specversion:?} is not supported; gridfn accepts CloudEvents 1.0"),
        ));
    }
    let id = fields.required_attribute("id")?;
    let source = fields.required_attribute("source")?;
    uri_reference(&source).map_err(|why| DecodeError::field("source", why))?;
    let event_type = fields.required_attribute("type")?;
    // Azure's SDKs write `"subject": ""` for "no subject" (see the Java
    // vector); read it as absent, as the JSON format reads `null`.
    let subject = match fields.optional_string("subject")? {
        Some(subject) if subject.is_empty() => None,
        Some(subject) => Some(fields.checked("subject", subject)?),
        None => None,
    };
    let time = fields.optional_attribute("time")?;
    if let Some(time) = &time {
        chrono::DateTime::parse_from_rfc3339(time)
            .map_err(|_| DecodeError::field("time", format!("{time:?} is not an RFC 3339 timestamp")))?;
    }
    let data_content_type = fields.optional_attribute("datacontenttype")?;
    if let Some(media_type) = &data_content_type {
        check_media_type(media_type).map_err(|why| DecodeError::field("datacontenttype", why))?;
    }
    if let Some(schema) = fields.optional_attribute("dataschema")? {
        // 1.0 asks for an absolute URI, but Event Grid's own events carry
        // `"dataschema": "#"`: any URI-reference is accepted.
        uri_reference(&schema).map_err(|why| DecodeError::field("dataschema", why))?;
    }

    let data_base64 = fields.raw("data_base64").filter(|value| value.get() != "null");
    let data = match (fields.raw("data"), data_base64) {
        (Some(_), Some(_)) => {
            return Err(DecodeError::field("data_base64", "an event has data or data_base64, not both"));
        }
        (None, Some(encoded)) => {
            let encoded: String = serde_json::from_str(encoded.get())
                .map_err(|_| DecodeError::field("data_base64", "must be a string"))?;
            base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .map_err(|e| DecodeError::field("data_base64", format!("is not valid base64: {e}")))?
        }
        (Some(data), None) => cloud_event_data(data, data_content_type.as_deref()),
        (None, None) => Vec::new(),
    };

    let mut extensions = Vec::new();
    for (name, value) in &fields.map {
        if CLOUDEVENT_MEMBERS.contains(&name.as_ref()) {
            continue;
        }
        if let Some(value) = extension_value(name, value)? {
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

/// Whether a media type declares JSON data, as the CloudEvents JSON format
/// defines it: without parameters, `*/json` or `*/*+json`.
pub fn is_json_media_type(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    essence.split_once('/').is_some_and(|(_, subtype)| subtype == "json" || subtype.ends_with("+json"))
}

/// An extension attribute's value as text. The spec allows names of
/// lower-case letters and digits, and values of its types only: in JSON a
/// string, a boolean, or an `Integer` (a whole number within 32 bits).
fn extension_value(name: &str, value: &RawValue) -> Result<Option<String>, DecodeError> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) {
        return Err(DecodeError::field(
            name,
            "is not a valid CloudEvents attribute name (lower-case letters and digits only)",
        ));
    }
    let text = value.get();
    match text.as_bytes()[0] {
        b'n' => Ok(None),
        b't' | b'f' => Ok(Some(text.to_owned())),
        b'"' => {
            let string = serde_json::from_str::<String>(text)
                .map_err(|e| DecodeError::field(name, format!("is not a valid string: {e}")))?;
            check_string(&string).map_err(|why| DecodeError::field(name, why))?;
            Ok(Some(string))
        }
        b'-' | b'0'..=b'9' => match text.parse::<i32>() {
            Ok(number) => Ok(Some(number.to_string())),
            Err(_) => Err(DecodeError::field(
                name,
                format!(
                    "{text} is not a CloudEvents Integer (a whole number from {} to {}, no fraction or exponent)",
                    i32::MIN,
                    i32::MAX
                ),
            )),
        },
        _ => Err(DecodeError::field(name, "an extension attribute must be a string, integer or boolean")),
    }
}

/// CloudEvents' `String` type: any Unicode text but the control characters
/// (U+0000–U+001F, U+007F–U+009F) and the noncharacters (U+FDD0–U+FDEF, and
/// the last two code points of every plane). Unpaired surrogates cannot
/// reach here: the JSON parser refuses them.
fn check_string(text: &str) -> Result<(), String> {
    let forbidden = |c: &char| {
        let code = *c as u32;
        c.is_control() || (0xFDD0..=0xFDEF).contains(&code) || code & 0xFFFE == 0xFFFE
    };
    match text.chars().find(forbidden) {
        Some(c) => Err(format!("contains U+{:04X}, which a CloudEvents String may not hold", c as u32)),
        None => Ok(()),
    }
}

/// A media type as RFC 2045/2046 write it: `type/subtype`, then any number of
/// `; name=value` parameters whose value is a token or a quoted string.
/// Whitespace around the separators is allowed, as HTTP allows it.
fn check_media_type(text: &str) -> Result<(), String> {
    let mut rest = text.trim_start_matches([' ', '\t']);
    let not_media_type =
        || format!("{text:?} is not a media type (RFC 2046: type/subtype, then ;name=value parameters)");
    let (_, after_type) = token(rest).ok_or_else(not_media_type)?;
    rest = after_type.strip_prefix('/').ok_or_else(not_media_type)?;
    (_, rest) = token(rest).ok_or_else(not_media_type)?;
    loop {
        rest = rest.trim_start_matches([' ', '\t']);
        if rest.is_empty() {
            return Ok(());
        }
        rest = rest.strip_prefix(';').ok_or_else(not_media_type)?.trim_start_matches([' ', '\t']);
        (_, rest) = token(rest).ok_or_else(not_media_type)?;
        rest = rest.strip_prefix('=').ok_or_else(not_media_type)?;
        rest = match rest.strip_prefix('"') {
            Some(quoted) => after_quoted_string(quoted).ok_or_else(not_media_type)?,
            None => token(rest).ok_or_else(not_media_type)?.1,
        };
    }
}

/// Splits an RFC 2045 `token` (visible ASCII but the `tspecials`) off the
/// front of `text`; `None` if there is none.
fn token(text: &str) -> Option<(&str, &str)> {
    let end = text.find(|c: char| !c.is_ascii_graphic() || "()<>@,;:\\\"/[]?=".contains(c)).unwrap_or(text.len());
    (end > 0).then(|| text.split_at(end))
}

/// The text after a quoted string's closing quote (`text` starts just after
/// the opening one), or `None` if it never closes.
fn after_quoted_string(text: &str) -> Option<&str> {
    let mut chars = text.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some(&text[i + 1..]),
            '\\' => {
                chars.next()?;
            }
            c if c.is_ascii_control() && c != '\t' => return None,
            _ => {}
        }
    }
    None
}

/// An RFC 3986 `URI-reference` (absolute, or relative like `/orders` or
/// `#`), with one leniency: `{` and `}`, which Event Grid's documented
/// sources carry as placeholders (`/subscriptions/{subscription-id}/…`).
fn uri_reference(text: &str) -> Result<(), String> {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if bytes.len() > i + 2 && bytes[i + 1].is_ascii_hexdigit() && bytes[i + 2].is_ascii_hexdigit() => {
                i += 3;
                continue;
            }
            b'%' => return Err("has a % that is not followed by two hex digits (percent-encoding)".into()),
            b if b.is_ascii_alphanumeric() || b"-._~:/?#[]@!$&'()*+,;={}".contains(&b) => {}
            _ => {
                let c = text[i..].chars().next().expect("i is on a character boundary");
                return Err(format!("contains {c:?}, which a URI-reference cannot hold unless percent-encoded"));
            }
        }
        i += 1;
    }
    let (before_fragment, fragment) = text.split_once('#').unwrap_or((text, ""));
    if fragment.contains(['#', '[', ']']) {
        return Err("has a fragment (after #) holding #, [ or ]".into());
    }
    let (before_query, query) = before_fragment.split_once('?').unwrap_or((before_fragment, ""));
    if query.contains(['[', ']']) {
        return Err("has a query holding [ or ]".into());
    }
    // A colon before any slash ends a scheme; a relative reference cannot
    // have one in its first segment.
    let hierarchical = match before_query.split_once(':') {
        Some((scheme, rest)) if !scheme.contains('/') => {
            let mut chars = scheme.chars();
            let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
                && chars.all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
            if !valid {
                return Err(format!("{scheme:?} before the first ':' is not a URI scheme"));
            }
            rest
        }
        _ => before_query,
    };
    let path = match hierarchical.strip_prefix("//") {
        Some(after) => {
            let end = after.find('/').unwrap_or(after.len());
            check_authority(&after[..end])?;
            &after[end..]
        }
        None => hierarchical,
    };
    if path.contains(['[', ']']) {
        return Err("has [ or ] outside an IP-literal host".into());
    }
    Ok(())
}

/// `[userinfo@]host[:port]`, where only an IP-literal host may use brackets.
fn check_authority(authority: &str) -> Result<(), String> {
    let (userinfo, host_port) = authority.rsplit_once('@').unwrap_or(("", authority));
    if userinfo.contains(['[', ']']) {
        return Err("has [ or ] in its userinfo".into());
    }
    let port = match host_port.strip_prefix('[') {
        Some(literal) => {
            let (address, after) = literal.split_once(']').ok_or("has an IP-literal host without its closing ]")?;
            if address.is_empty() || address.contains('[') {
                return Err("has an empty or nested IP-literal host".into());
            }
            match after {
                "" => None,
                after => Some(after.strip_prefix(':').ok_or("has text after its IP-literal host")?),
            }
        }
        None if host_port.contains(['[', ']']) => return Err("has [ or ] outside an IP-literal host".into()),
        None => host_port.rsplit_once(':').map(|(_, port)| port),
    };
    if port.is_some_and(|port| !port.bytes().all(|b| b.is_ascii_digit())) {
        return Err("has a port that is not a number".into());
    }
    Ok(())
}

/// Decodes a CloudEvent in HTTP binary mode: attributes from `ce-*` headers
/// (already unquoted and percent-decoded, names without the prefix), the body
/// as data and `Content-Type` as its media type. The event is also rebuilt in
/// structured form, which filters and dead-letter records read, and checked
/// by the same rules as a structured one; a problem names its header.
pub fn decode_binary_cloud_event(
    attributes: Vec<(String, String)>,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<Event, DecodeError> {
    let mut structured = Map::new();
    for (name, value) in attributes {
        let header = format!("ce-{name}");
        if matches!(name.as_str(), "data" | "data_base64" | "datacontenttype") {
            let why = "is not a CloudEvents binary-mode header (the data is the body, its type Content-Type)";
            return Err(DecodeError::field(&header, why).at(0));
        }
        if structured.insert(name, Value::String(value)).is_some() {
            return Err(DecodeError::field(&header, "appears twice; each attribute may appear at most once").at(0));
        }
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
    let text = serde_json::to_string(&structured).expect("a JSON map serialises");
    let members = members_of(&text).expect("a JSON map serialises as an object");
    let mut event = decode_members(Schema::CloudEvents, members).map_err(|mut e| {
        e.field = e.field.map(|field| match field.as_str() {
            "datacontenttype" => "content-type".to_owned(),
            attribute => format!("ce-{attribute}"),
        });
        e.at(0)
    })?;
    event.data = body.to_vec();
    Ok(event)
}

/// One event object's top-level attributes, values still as raw JSON, so each
/// attribute is checked on its own and a problem names it.
struct Fields<'a> {
    /// In document order. A handful of names: a scan beats hashing, and names
    /// without escapes are borrowed, not copied (this runs for every event).
    map: Members<'a>,
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

/// An object's members, in order, values still raw, names borrowed from the
/// text unless they had escapes.
pub(crate) type Members<'a> = Vec<(std::borrow::Cow<'a, str>, &'a RawValue)>;

/// An object's [`Members`]; or, when the value is not an object, what it is
/// instead. An array of these is read in one pass over the text (dead-letter
/// blobs: records and their members at once, no raw copy of each first).
pub(crate) struct MaybeMembers<'a>(pub Result<Members<'a>, &'static str>);

impl<'de> serde::Deserialize<'de> for MaybeMembers<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = MaybeMembers<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<MaybeMembers<'de>, A::Error> {
                let mut members = Vec::with_capacity(20);
                while let Some((Name(name), value)) = map.next_entry::<Name, &RawValue>()? {
                    members.push((name, value));
                }
                Ok(MaybeMembers(Ok(members)))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<MaybeMembers<'de>, A::Error> {
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(MaybeMembers(Err("an array")))
            }
            fn visit_str<E>(self, _: &str) -> Result<MaybeMembers<'de>, E> {
                Ok(MaybeMembers(Err("a string")))
            }
            fn visit_bool<E>(self, _: bool) -> Result<MaybeMembers<'de>, E> {
                Ok(MaybeMembers(Err("a boolean")))
            }
            fn visit_unit<E>(self) -> Result<MaybeMembers<'de>, E> {
                Ok(MaybeMembers(Err("null")))
            }
            fn visit_i64<E>(self, _: i64) -> Result<MaybeMembers<'de>, E> {
                Ok(MaybeMembers(Err("a number")))
            }
            fn visit_u64<E>(self, _: u64) -> Result<MaybeMembers<'de>, E> {
                Ok(MaybeMembers(Err("a number")))
            }
            fn visit_f64<E>(self, _: f64) -> Result<MaybeMembers<'de>, E> {
                Ok(MaybeMembers(Err("a number")))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

impl<'a> Fields<'a> {
    /// The attribute's raw value; the last one wins if a name repeats (as in
    /// any JSON object parsed into a map).
    fn raw(&self, name: &str) -> Option<&'a RawValue> {
        self.map.iter().rev().find(|(n, _)| n == name).map(|(_, value)| *value)
    }

    fn optional_string(&self, name: &str) -> Result<Option<String>, DecodeError> {
        match self.raw(name) {
            None => Ok(None),
            Some(raw) => json_string(raw).map(|text| text.map(std::borrow::Cow::into_owned)).map_err(|e| {
                let why = match json_kind(raw.get()) {
                    "a string" => format!("is not a valid string: {e}"),
                    kind => format!("must be a string, found {kind}"),
                };
                DecodeError::field(name, why)
            }),
        }
    }

    fn required_string(&self, name: &str) -> Result<String, DecodeError> {
        match self.optional_string(name)? {
            Some(value) if !value.is_empty() => Ok(value),
            Some(_) => Err(DecodeError::field(name, "must not be empty")),
            None => Err(DecodeError::field(name, "is required")),
        }
    }

    /// A CloudEvents attribute that may be absent (or `null`), but when
    /// present is a non-empty `String`.
    fn optional_attribute(&self, name: &str) -> Result<Option<String>, DecodeError> {
        match self.optional_string(name)? {
            Some(value) if value.is_empty() => {
                Err(DecodeError::field(name, "must not be empty (leave it out, or null, when unset)"))
            }
            Some(value) => self.checked(name, value).map(Some),
            None => Ok(None),
        }
    }

    /// A REQUIRED CloudEvents attribute: a non-empty `String`.
    fn required_attribute(&self, name: &str) -> Result<String, DecodeError> {
        let value = self.required_string(name)?;
        self.checked(name, value)
    }

    fn checked(&self, name: &str, value: String) -> Result<String, DecodeError> {
        check_string(&value).map_err(|why| DecodeError::field(name, why))?;
        Ok(value)
    }

    /// CloudEvents: each attribute appears at most once. (Event Grid schema
    /// events keep the JSON habit: the last one wins.)
    fn each_name_once(&self) -> Result<(), DecodeError> {
        let mut seen = std::collections::HashSet::with_capacity(self.map.len());
        match self.map.iter().find(|(name, _)| !seen.insert(name.as_ref())) {
            Some((name, _)) => Err(DecodeError::field(name, "appears twice; each attribute may appear at most once")),
            None => Ok(()),
        }
    }
}

/// An object's [`Members`]: for events and for the envelopes around them
/// (dead-letter records), so every reader parses objects one way.
pub(crate) fn object_members(raw: &RawValue) -> Result<Members<'_>, String> {
    members_of(raw.get())
}

/// The [`Members`] of an object's JSON text.
fn members_of(text: &str) -> Result<Members<'_>, String> {
    match serde_json::from_str::<MaybeMembers>(text) {
        Ok(MaybeMembers(members)) => members.map_err(not_an_object),
        Err(e) => match json_kind(text) {
            "an object" => Err(format!("is not valid JSON: {e}")),
            kind => Err(not_an_object(kind)),
        },
    }
}

fn not_an_object(kind: &str) -> String {
    format!("expected a JSON object, found {kind}")
}

/// A JSON string or null, read from its text, which serde_json has checked
/// (as a [`RawValue`]): without a backslash the string is the text between
/// the quotes (no parse, no copy); with one, serde unescapes it.
pub(crate) fn json_string(value: &RawValue) -> serde_json::Result<Option<std::borrow::Cow<'_, str>>> {
    let text = value.get();
    match text.strip_prefix('"').and_then(|rest| rest.strip_suffix('"')) {
        Some(inner) if !inner.contains('\\') => Ok(Some(std::borrow::Cow::Borrowed(inner))),
        _ => serde_json::from_str::<Option<String>>(text).map(|text| text.map(std::borrow::Cow::Owned)),
    }
}

/// Names the kind of a JSON value, for error messages.
pub(crate) fn json_kind(text: &str) -> &'static str {
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
            .map_err(|e| DecodeError::field("data", format!("validation data is not an object: {e}")).at(0))?;
        let code = data
            .validation_code
            .filter(|c| !c.is_empty())
            .ok_or_else(|| DecodeError::field("data.validationCode", "is required in a validation event").at(0))?;
        Ok(ValidationRequest { code, url: data.validation_url })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A replayed record's members, written back by hand: the same object
    /// (an escaped name re-escaped, values byte for byte), and serde_json
    /// accepts the text as it is.
    #[test]
    fn members_written_back_are_the_object_they_came_from() {
        let text =
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","ext\u0061":"v","data": {"a": [1, 2.5e3]}}"#;
        let members = object_members(serde_json::from_str::<&RawValue>(text).unwrap()).unwrap();
        let event = decode_members(Schema::CloudEvents, members).unwrap();
        let written: serde_json::Value = serde_json::from_str(event.raw.get()).unwrap();
        assert_eq!(written, serde_json::from_str::<serde_json::Value>(text).unwrap());
        assert_eq!(event.extensions, [("exta".to_owned(), "v".to_owned())]);
        assert_eq!(event.raw.to_raw_value().get(), event.raw.get());
        assert!(event.raw.get().contains(r#""data":{"a": [1, 2.5e3]}"#), "values byte for byte: {}", event.raw.get());
    }

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

    /// An accepted event's `raw` parses as JSON whatever its nesting: a value
    /// nested as deep as serde_json allows on its own, but one level too deep
    /// inside its event, is refused, not left to fail a filter or a handler.
    #[test]
    fn an_accepted_events_raw_parses_at_every_depth() {
        for depth in 120..135 {
            let data = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
            let body = format!(r#"[{{"id":"1","eventType":"t","subject":"s","data":{data}}}]"#);
            if let Ok(events) = decode_event_grid(body.as_bytes()) {
                let parsed = serde_json::from_str::<serde_json::Value>(events[0].raw.get());
                assert!(parsed.is_ok(), "depth {depth}: accepted, but its raw does not parse: {parsed:?}");
            }
        }
    }

    #[test]
    fn a_broken_escape_anywhere_in_an_event_is_refused() {
        // Found by fuzzing (event-grid target), when a body was first split
        // into raw events: the split skimmed over escapes in members nothing
        // reads, so `raw` could hold invalid JSON. Reading members skims too.
        for (member, field) in [(r#""data":{"a":"\ud800"}"#, "data"), (r#""other":"x\udc00""#, "other")] {
            let body = format!(r#"[{{"id":"1","eventType":"t"}},{{"id":"2","eventType":"t",{member}}}]"#);
            let err = decode_event_grid(body.as_bytes()).unwrap_err();
            assert_eq!((err.event_index, err.field.as_deref()), (Some(1), Some(field)), "{err}");
            assert!(err.message.contains("hex escape"), "{err}");
        }
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
                // `"subject": ""` (the Java vector) reads as no subject.
                let subject = json["subject"].as_str().filter(|s| !s.is_empty());
                assert_eq!(event.subject.as_deref(), subject, "{name}");
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
            (format!(r#"{{{base},"nested":{{"a":1}}}}"#), "nested", "string, integer or boolean"),
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

    // CloudEvents conformance: one test per receiver-side rule of CloudEvents
    // 1.0.2 and its JSON format (the README's "CloudEvents conformance" table
    // names them). `ce(members)` is a valid event plus `members`; a member
    // given again replaces the valid one.

    fn ce(members: &str) -> String {
        let mut event: Map<String, Value> =
            serde_json::from_str(r#"{"specversion":"1.0","id":"1","source":"/s","type":"t"}"#).unwrap();
        let extra: Map<String, Value> = serde_json::from_str(&format!("{{{members}}}")).unwrap();
        event.extend(extra);
        serde_json::to_string(&event).unwrap()
    }

    /// The problem decoding `body` reports: (attribute, message).
    fn refusal(body: &str) -> (String, String) {
        let err = decode_cloudevents(body.as_bytes()).expect_err(body);
        assert_eq!(err.event_index, Some(0), "{body}: {err}");
        (err.field.unwrap_or_default(), err.message)
    }

    fn assert_refused(body: &str, field: &str, says: &str) {
        let (got_field, message) = refusal(body);
        assert_eq!(got_field, field, "{body}: {message}");
        assert!(message.contains(says), "{body}: {message:?} should say {says:?}");
    }

    fn assert_accepted(body: &str) -> Event {
        decode_cloudevents(body.as_bytes()).unwrap_or_else(|e| panic!("{body}: {e}")).remove(0)
    }

    #[test]
    fn ce_specversion_is_required_and_must_be_1_0() {
        assert_refused(r#"{"id":"1","source":"/s","type":"t"}"#, "specversion", "is required");
        assert_refused(&ce(r#""specversion":"0.3""#), "specversion", "not supported");
        assert_refused(&ce(r#""specversion":"1.0.2""#), "specversion", "not supported");
        assert_refused(&ce(r#""specversion":1.0"#), "specversion", "must be a string");
    }

    #[test]
    fn ce_id_is_a_required_non_empty_string() {
        assert_refused(r#"{"specversion":"1.0","source":"/s","type":"t"}"#, "id", "is required");
        assert_refused(&ce(r#""id":"""#), "id", "must not be empty");
        assert_refused(&ce(r#""id":null"#), "id", "is required");
        assert_refused(&ce(r#""id":7"#), "id", "must be a string, found a number");
    }

    #[test]
    fn ce_type_is_a_required_non_empty_string() {
        assert_refused(r#"{"specversion":"1.0","id":"1","source":"/s"}"#, "type", "is required");
        assert_refused(&ce(r#""type":"""#), "type", "must not be empty");
    }

    #[test]
    fn ce_source_is_a_non_empty_uri_reference() {
        assert_refused(r#"{"specversion":"1.0","id":"1","type":"t"}"#, "source", "is required");
        assert_refused(&ce(r#""source":"""#), "source", "must not be empty");
        // The spec's own examples, and Event Grid's documented placeholders.
        for source in [
            "https://github.com/cloudevents",
            "mailto:cncf-wg-serverless@lists.cncf.io",
            "urn:uuid:6e8bc430-9c3a-11d9-9669-0800200c9a66",
            "/cloudevents/spec/pull/123",
            "1-555-123-4567",
            "contoso/items",
            "http://[2001:db8::1]:8080/a?b=c#d",
            "/subscriptions/{subscription-id}/resourceGroups/{resource-group}",
            "/caf%C3%A9",
        ] {
            assert_eq!(assert_accepted(&ce(&format!(r#""source":{source:?}"#))).source, source);
        }
        for (source, says) in [
            ("/a b", "' '"),
            ("/café", "'é'"),
            ("/100%", "two hex digits"),
            ("1http://example.com", "not a URI scheme"),
            (":no-scheme", "not a URI scheme"),
            ("http://[::1/x", "closing ]"),
            ("http://host:80a/", "port"),
            ("/a[1]", "IP-literal"),
            ("/a#b#c", "fragment"),
            ("/a<b>", "'<'"),
        ] {
            assert_refused(&ce(&format!(r#""source":{source:?}"#)), "source", says);
        }
    }

    #[test]
    fn ce_datacontenttype_must_be_an_rfc_2046_media_type() {
        for media_type in [
            "application/json",
            "text/plain; charset=utf-8",
            "application/vnd.apache.thrift.binary",
            r#"text/x;a="b; c""#,
        ] {
            let event = assert_accepted(&ce(&format!(r#""datacontenttype":{media_type:?}"#)));
            assert_eq!(event.data_content_type.as_deref(), Some(media_type));
        }
        assert_refused(&ce(r#""datacontenttype":"""#), "datacontenttype", "must not be empty");
        for media_type in
            ["json", "application/", "/json", "text/plain; charset", "text/plain;a=\"b", "a b/c", "text/plain,x"]
        {
            assert_refused(&ce(&format!(r#""datacontenttype":{media_type:?}"#)), "datacontenttype", "RFC 2046");
        }
    }

    #[test]
    fn ce_dataschema_must_be_a_non_empty_uri_reference() {
        assert_accepted(&ce(r#""dataschema":"https://example.com/schemas/order.json""#));
        assert_accepted(&ce(r##""dataschema":"#""##)); // as Event Grid's own events send it
        assert_refused(&ce(r#""dataschema":"""#), "dataschema", "must not be empty");
        assert_refused(&ce(r#""dataschema":"not a uri""#), "dataschema", "' '");
    }

    #[test]
    fn ce_subject_is_non_empty_or_absent() {
        assert_eq!(assert_accepted(&ce(r#""subject":"orders/42""#)).subject.as_deref(), Some("orders/42"));
        // The spec says a present subject is non-empty; Azure's SDKs send ""
        // for none, which is read as absent.
        assert_eq!(assert_accepted(&ce(r#""subject":"""#)).subject, None);
        assert_refused(&ce(r#""subject":["a"]"#), "subject", "must be a string, found an array");
    }

    #[test]
    fn ce_time_must_be_rfc_3339() {
        // RFC 3339 allows lower-case t and z, and (its §5.6 note) a space for the T.
        let accepted = [
            "2018-04-05T17:31:00Z",
            "2018-04-05T17:31:00.123456789+02:00",
            "2018-04-05t17:31:00z",
            "2018-04-05 17:31:00Z",
        ];
        for time in accepted {
            assert_eq!(assert_accepted(&ce(&format!(r#""time":{time:?}"#))).time.as_deref(), Some(time));
        }
        for time in
            ["yesterday", "2018-04-05T17:31:00", "2018-04-05", "2018-13-05T17:31:00Z", "2018-04-05T25:00:00Z", ""]
        {
            let (field, _) = refusal(&ce(&format!(r#""time":{time:?}"#)));
            assert_eq!(field, "time", "{time}");
        }
    }

    #[test]
    fn ce_null_attributes_are_unset() {
        let event = assert_accepted(&ce(
            r#""subject":null,"time":null,"datacontenttype":null,"dataschema":null,"unsetextension":null,"data_base64":null"#,
        ));
        assert_eq!((event.subject, event.time, event.data_content_type), (None, None, None));
        assert!(event.extensions.is_empty() && event.data.is_empty());
    }

    #[test]
    fn ce_each_attribute_appears_at_most_once() {
        let body = r#"{"specversion":"1.0","id":"1","id":"2","source":"/s","type":"t"}"#;
        assert_refused(body, "id", "at most once");
        let body = r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","ext":"a","ext":"b"}"#;
        assert_refused(body, "ext", "at most once");
    }

    #[test]
    fn ce_attribute_names_are_lower_case_letters_and_digits() {
        let event =
            assert_accepted(&ce(r#""abcdefghijklmnopqrstuvwxyz0123456789":"long names are only a SHOULD NOT""#));
        assert_eq!(event.extensions[0].0, "abcdefghijklmnopqrstuvwxyz0123456789");
        for name in ["Upper", "with-dash", "with_underscore", "ünï", ""] {
            assert_refused(&ce(&format!(r#"{name:?}:"x""#)), name, "attribute name");
        }
    }

    #[test]
    fn ce_extension_values_are_string_integer_or_boolean() {
        let event = assert_accepted(&ce(r#""s":"text","i":-5,"b":true,"f":false"#));
        let expected = [("b", "true"), ("f", "false"), ("i", "-5"), ("s", "text")];
        assert_eq!(event.extensions, expected.map(|(n, v)| (n.to_owned(), v.to_owned())));
        assert_refused(&ce(r#""obj":{"a":1}"#), "obj", "string, integer or boolean");
        assert_refused(&ce(r#""arr":[1]"#), "arr", "string, integer or boolean");
    }

    #[test]
    fn ce_integer_extensions_are_32_bit_whole_numbers() {
        // Written out: ce() re-serialises numbers, and would turn -0 into -0.0.
        let event = assert_accepted(
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","lo":-2147483648,"hi":2147483647,"zero":-0}"#,
        );
        let value = |name: &str| event.extensions.iter().find(|(n, _)| n == name).unwrap().1.clone();
        assert_eq!(
            (value("lo").as_str(), value("hi").as_str(), value("zero").as_str()),
            ("-2147483648", "2147483647", "0")
        );
        for number in ["2147483648", "-2147483649", "1.5", "5.0", "1e3", "12345678901234567890"] {
            let body = format!(r#"{{"specversion":"1.0","id":"1","source":"/s","type":"t","n":{number}}}"#);
            assert_refused(&body, "n", "not a CloudEvents Integer");
        }
    }

    #[test]
    fn ce_string_values_exclude_control_characters_and_noncharacters() {
        assert_accepted(&ce(r#""id":"emoji \ud83d\ude00 and \u20ac""#));
        for (member, field) in [
            (r#""id":"a\u0000b""#, "id"),
            (r#""type":"tab\tinside""#, "type"),
            (r#""subject":"c1 \u0085 control""#, "subject"),
            (r#""ext":"nonchar \ufdd0""#, "ext"),
            (r#""ext":"nonchar \uffff""#, "ext"),
            (r#""source":"/a\u007f""#, "source"),
        ] {
            assert_refused(&ce(member), field, "may not hold");
        }
        // An unpaired surrogate is not a string at all: not even JSON text.
        let raw = r#"{"specversion":"1.0","id":"\udead","source":"/s","type":"t"}"#;
        assert_refused(raw, "id", "lone leading surrogate");
    }

    #[test]
    fn ce_data_and_data_base64_are_mutually_exclusive() {
        assert_refused(&ce(r#""data":1,"data_base64":"AA==""#), "data_base64", "not both");
        assert_refused(&ce(r#""data":null,"data_base64":"AA==""#), "data_base64", "not both");
    }

    #[test]
    fn ce_data_base64_must_be_base64() {
        assert_eq!(assert_accepted(&ce(r#""data_base64":"AJ+S""#)).data, [0, 159, 146]);
        assert_refused(&ce(r#""data_base64":"%%%""#), "data_base64", "base64");
        assert_refused(&ce(r#""data_base64":5"#), "data_base64", "must be a string");
    }

    #[test]
    fn ce_json_data_is_recognised_by_any_json_subtype() {
        for media_type in
            ["application/json", "text/json", "application/ld+json", "foo/json; charset=utf-8", "APPLICATION/JSON"]
        {
            assert!(is_json_media_type(media_type), "{media_type}");
            let event = assert_accepted(&ce(&format!(r#""datacontenttype":{media_type:?},"data":"\"quoted\"""#)));
            assert_eq!(event.data, br#""\"quoted\"""#, "{media_type}: JSON data is kept as JSON text");
        }
        for media_type in ["text/plain", "application/jsonx", "application/json-seq", "application/xml"] {
            assert!(!is_json_media_type(media_type), "{media_type}");
        }
    }

    #[test]
    fn ce_batch_may_be_empty_but_event_grid_batch_may_not() {
        assert!(decode_cloudevents(b"[]").unwrap().is_empty());
        assert!(decode_cloudevents(b" [ ] ").unwrap().is_empty());
        assert!(decode_event_grid(b"[]").unwrap_err().message.contains("empty array"));
        assert!(decode_json(b"[]").unwrap_err().message.contains("empty array"), "no event says it is a CloudEvent");
        let err = decode_cloudevents(format!("[{}, 42]", ce("")).as_bytes()).unwrap_err();
        assert_eq!((err.event_index, err.message.as_str()), (Some(1), "expected a JSON object, found a number"));
    }

    #[test]
    fn ce_problems_name_the_event_of_the_batch() {
        let body = format!("[{}, {}]", ce(""), ce(r#""id":"2","datacontenttype":"nonsense""#));
        let err = decode_cloudevents(body.as_bytes()).unwrap_err();
        assert_eq!((err.event_index, err.field.as_deref()), (Some(1), Some("datacontenttype")));
    }

    fn binary(attributes: &[(&str, &str)], content_type: Option<&str>) -> Result<Event, DecodeError> {
        let attributes = attributes.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
        decode_binary_cloud_event(attributes, content_type, b"{}")
    }

    const BINARY_REQUIRED: [(&str, &str); 4] = [("specversion", "1.0"), ("id", "1"), ("source", "/s"), ("type", "t")];

    #[test]
    fn binary_mode_content_type_is_the_datacontenttype() {
        let event = binary(&BINARY_REQUIRED, Some("application/json; charset=utf-8")).unwrap();
        assert_eq!(event.data_content_type.as_deref(), Some("application/json; charset=utf-8"));
        assert_eq!(binary(&BINARY_REQUIRED, None).unwrap().data_content_type, None);
        let with_header = [BINARY_REQUIRED.as_slice(), &[("datacontenttype", "application/json")]].concat();
        let err = binary(&with_header, None).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("ce-datacontenttype"));
        let err = binary(&BINARY_REQUIRED, Some("not a type")).unwrap_err();
        assert_eq!((err.field.as_deref(), err.event_index), (Some("content-type"), Some(0)), "{err}");
    }

    #[test]
    fn binary_mode_problems_name_the_header() {
        let err = binary(&BINARY_REQUIRED[1..], None).unwrap_err();
        assert_eq!((err.field.as_deref(), err.message.as_str()), (Some("ce-specversion"), "is required"));
        let cases: [(&[(&str, &str)], &str); 4] = [
            (&[("time", "soon")], "ce-time"),
            (&[("my-ext", "x")], "ce-my-ext"),
            (&[("id", "2")], "ce-id"),
            (&[("data", "x")], "ce-data"),
        ];
        for (extra, header) in cases {
            let err = binary(&[BINARY_REQUIRED.as_slice(), extra].concat(), None).unwrap_err();
            assert_eq!(err.field.as_deref(), Some(header), "{err}");
        }
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

    /// What reading a value as a `RawValue` skims over is caught whether or
    /// not the value looks ordinary elsewhere: each problem in `data`, in an
    /// event that is otherwise plain.
    #[test]
    fn what_reading_skims_over_is_still_refused() {
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let digits = "9".repeat(400);
        for (data, says) in [
            (r#""\udead""#, "lone leading surrogate"),
            ("1e400", "number out of range"),
            ("-2.5E+999", "number out of range"),
            (digits.as_str(), "number out of range"),
            (deep.as_str(), "nests deeper than 120 levels"),
        ] {
            let body = format!(
                r#"[{{"id":"1","topic":"/t","subject":"s","eventType":"T","eventTime":"2026-01-01T00:00:00Z","dataVersion":"1","data":{{"ok":[1,2.5,"x"],"bad":{data}}}}}]"#
            );
            let err = decode_event_grid(body.as_bytes()).expect_err(data);
            assert!(err.message.contains(says), "{data:.40}: {err}");
        }
        // Near the limits, and things that only look suspicious, are fine.
        let nested = format!("{}{}", "[".repeat(90), "]".repeat(90));
        let body = format!(
            r#"[{{"id":"1","topic":"/t","subject":"s","eventType":"T","eventTime":"2026-01-01T00:00:00Z","dataVersion":"1","data":{{"n":[1e300,{},"\"quoted\" 2e5",{nested}]}}}}]"#,
            "9".repeat(300)
        );
        decode_event_grid(body.as_bytes()).unwrap();
        // An ordinary event is scanned, not parsed a second time: hex and
        // GUIDs (`0e37`, `2E48`) inside strings are not exponents.
        let blob_created = br#"{"id":"6d79dbfb-0e37-4fc4-981f-442c9ca65760","eventTime":"2026-11-30T01:00:00Z",
            "data":{"eTag":"0x8D4BCC2E4835CD0","contentLength":524288,"sequencer":"00000000000004420000000000028963",
            "url":"https://a.blob.core.windows.net/c/1.bin","nested":[[{"a":[]}]],"ratio":-0.25,"ok":true}}"#;
        assert!(!may_skim_a_problem(blob_created));
    }

    /// JSON text built from atoms that are fine, or fail only the full
    /// check (lone surrogates, numbers out of range), nested at any depth.
    fn json_text() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let atom = prop_oneof![
            proptest::sample::select(vec![
                "\"a\"",
                "\"\\ud800\"",
                "\"\\udc00x\"",
                "\"\\ud83d\\ude00\"",
                "\"\\u00e9\"",
                "\"\\n\\\\\"",
                "0",
                "-1.5",
                "1e5",
                "1E400",
                "-2.5e-999",
                "1.7976931348623157e308",
                "null",
                "true",
                "\"e5\"",
            ])
            .prop_map(str::to_owned),
            (1usize..420).prop_map(|n| "9".repeat(n)),
            (1usize..200).prop_map(|n| format!("{}{}", "[".repeat(n), "]".repeat(n))),
        ];
        atom.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..8).prop_map(|items| format!("[{}]", items.join(","))),
                proptest::collection::vec(inner, 0..8).prop_map(|items| {
                    let members: Vec<String> = items.iter().enumerate().map(|(i, v)| format!("\"k{i}\":{v}")).collect();
                    format!("{{{}}}", members.join(","))
                }),
            ]
        })
    }

    proptest::proptest! {
        /// The scan never passes a value the full check refuses.
        #[test]
        fn the_scan_never_passes_what_the_full_check_refuses(text in json_text()) {
            let raw = serde_json::from_str::<&RawValue>(&text).expect("the strategy writes JSON text");
            let full = check_fully(raw.get()).is_ok();
            proptest::prop_assert!(full || may_skim_a_problem(raw.get().as_bytes()), "{text:.200}");
        }
    }
}
