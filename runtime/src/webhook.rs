//! Event Grid's webhook protocol, as seen from the receiving end: who may
//! call (keys), what kind of request it is (`aeg-event-type`), which encoding
//! the body uses (Event Grid schema, CloudEvents structured, batched or
//! binary), the two handshakes (Event Grid's validation event and the
//! CloudEvents OPTIONS abuse protection), and the delivery metadata headers.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use percent_encoding::percent_decode_str;
use serde::Serialize;
use subtle::ConstantTimeEq;

use crate::config::Validation;
use crate::entra::EntraValidator;
use crate::error::RequestError;
use crate::event::{self, DecodeError, DeliveryInfo, Event, SUBSCRIPTION_VALIDATION_EVENT, ValidationRequest};

/// What `aeg-event-type` says the request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// Events to run. Also assumed when the header is absent, as it is from
    /// publishers that post events directly (the Azure SDKs, curl).
    Notification,
    /// The subscription handshake: answer with the validation code.
    SubscriptionValidation,
    /// The subscription is being deleted (`SubscriptionDeletion`, or
    /// `Unsubscribe` from older API versions): acknowledge and log.
    SubscriptionDeletion,
}

impl RequestKind {
    pub fn from_headers(headers: &HeaderMap) -> Result<Self, RequestError> {
        let Some(value) = headers.get("aeg-event-type") else { return Ok(RequestKind::Notification) };
        let kind = value.to_str().unwrap_or("");
        [
            ("Notification", RequestKind::Notification),
            ("SubscriptionValidation", RequestKind::SubscriptionValidation),
            ("SubscriptionDeletion", RequestKind::SubscriptionDeletion),
            ("Unsubscribe", RequestKind::SubscriptionDeletion),
        ]
        .into_iter()
        .find(|(name, _)| kind.eq_ignore_ascii_case(name))
        .map(|(_, kind)| kind)
        .ok_or_else(|| {
            RequestError::BadRequest(format!(
                "aeg-event-type {kind:?} is not supported; expected Notification, SubscriptionValidation or SubscriptionDeletion"
            ))
        })
    }
}

/// Decodes a pushed body by its encoding, told apart as the CloudEvents HTTP
/// binding says: a `Content-Type` of `application/cloudevents…` is structured
/// or batched mode (`+json` and `-batch+json` are read, one event or an
/// array, whatever the type says, as Event Grid sends both; other event
/// formats are 415), even when `ce-*` headers come along; otherwise
/// `ce-specversion` means binary mode; otherwise `application/json` (or no
/// type) is Event Grid schema, or CloudEvents if the events carry a
/// `specversion`. `aeg-metadata-version` must be 1 when sent;
/// `aeg-data-version` fills in the data version of events that lack one.
pub fn decode(headers: &HeaderMap, body: &[u8]) -> Result<Vec<Event>, RequestError> {
    if let Some(version) = header_text(headers, "aeg-metadata-version")
        && version != "1"
    {
        return Err(RequestError::BadRequest(format!(
            "aeg-metadata-version {version:?} is not supported; gridfn speaks metadata version 1"
        )));
    }
    let content_type = match headers.get(header::CONTENT_TYPE) {
        None => None,
        Some(value) => {
            let text = value.to_str().map_err(|_| {
                RequestError::UnsupportedMediaType(String::from_utf8_lossy(value.as_bytes()).into_owned())
            })?;
            Some(text.trim()).filter(|t| !t.is_empty())
        }
    };
    let essence = content_type.map(|t| t.split(';').next().unwrap_or("").trim().to_ascii_lowercase());
    let mut events = match essence.as_deref() {
        Some("application/cloudevents+json" | "application/cloudevents-batch+json") => event::decode_cloudevents(body)?,
        Some(other) if other.starts_with("application/cloudevents") => {
            return Err(RequestError::UnsupportedMediaType(other.to_owned()));
        }
        _ if headers.contains_key("ce-specversion") => {
            vec![event::decode_binary_cloud_event(binary_attributes(headers)?, content_type, body)?]
        }
        None | Some("application/json" | "text/json") => event::decode_json(body)?,
        Some(other) => return Err(RequestError::UnsupportedMediaType(other.to_owned())),
    };
    if let Some(version) = header_text(headers, "aeg-data-version") {
        for event in events.iter_mut().filter(|e| e.data_version.is_none()) {
            event.data_version = Some(version.to_owned());
        }
    }
    Ok(events)
}

/// The `ce-*` headers of a binary-mode CloudEvent, names without the prefix,
/// values decoded as the HTTP binding requires: double-quoted strings
/// unquoted first (older senders quote), then one round of percent-decoding
/// that must yield UTF-8. A `%` not followed by two hex digits is kept as
/// it is.
fn binary_attributes(headers: &HeaderMap) -> Result<Vec<(String, String)>, RequestError> {
    headers
        .iter()
        .filter_map(|(name, value)| name.as_str().strip_prefix("ce-").map(|attribute| (attribute, name, value)))
        .map(|(attribute, name, value)| {
            let invalid = |message: &str| DecodeError {
                message: message.into(),
                event_index: Some(0),
                field: Some(name.as_str().to_owned()),
            };
            let text = value.to_str().map_err(|_| invalid("is not visible ASCII (percent-encode the value)"))?;
            let unquoted = unquote(text).ok_or_else(|| invalid("has a double-quoted string that never closes"))?;
            let decoded = percent_decode_str(&unquoted)
                .decode_utf8()
                .map_err(|_| invalid("is not valid percent-encoded UTF-8"))?;
            Ok((attribute.to_owned(), decoded.into_owned()))
        })
        .collect()
}

/// A header value with its RFC 7230 quoted strings unquoted (quotes dropped,
/// `\x` read as `x`); `None` if a quoted string never closes.
fn unquote(value: &str) -> Option<std::borrow::Cow<'_, str>> {
    if !value.contains('"') {
        return Some(value.into());
    }
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', _) => quoted = !quoted,
            ('\\', true) => out.push(chars.next()?),
            (c, _) => out.push(c),
        }
    }
    (!quoted).then_some(out.into())
}

fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim).filter(|v| !v.is_empty())
}

/// Who may deliver: a configured key, a valid Entra ID token when Entra is
/// configured (both, when both are), or anyone when anonymous access was
/// explicitly allowed.
pub struct Authenticator {
    keys: Vec<Vec<u8>>,
    allow_anonymous: bool,
    entra: Option<EntraValidator>,
}

impl Authenticator {
    pub fn new(keys: &[String], allow_anonymous: bool, entra: Option<EntraValidator>) -> Self {
        Authenticator { keys: keys.iter().map(|k| k.as_bytes().to_vec()).collect(), allow_anonymous, entra }
    }

    pub async fn authenticate(&self, headers: &HeaderMap, code: Option<&str>) -> Result<(), RequestError> {
        if let Some(entra) = &self.entra {
            let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
            match entra.validate(authorization).await {
                Ok(_) => {}
                Err(e) if e.is_server_side() => return Err(RequestError::AuthUnavailable(e.to_string())),
                Err(e) => return Err(RequestError::Unauthorized(e.to_string())),
            }
            if self.keys.is_empty() {
                return Ok(());
            }
        }
        self.check_key(headers, code)
    }

    /// Accepts a key sent as `?code=`, `aeg-sas-key` or `x-functions-key`,
    /// comparing in constant time so timing reveals nothing about the key.
    fn check_key(&self, headers: &HeaderMap, code: Option<&str>) -> Result<(), RequestError> {
        if self.allow_anonymous && self.keys.is_empty() {
            return Ok(());
        }
        let presented = [
            code.map(str::as_bytes),
            headers.get("aeg-sas-key").map(|v| v.as_bytes()),
            headers.get("x-functions-key").map(|v| v.as_bytes()),
        ];
        let accepted =
            presented.iter().flatten().fold(false, |found, candidate| found | is_one_of(&self.keys, candidate));
        if accepted || (self.allow_anonymous && presented.iter().all(Option::is_none)) {
            Ok(())
        } else {
            Err(RequestError::Unauthorized(
                "missing or wrong key: send it as ?code=KEY, an aeg-sas-key header or an x-functions-key header".into(),
            ))
        }
    }
}

/// Whether `presented` equals one of `keys`, compared in constant time: every
/// key is compared in full, so timing says nothing about how close a guess was.
pub fn is_one_of(keys: &[impl AsRef<[u8]>], presented: &[u8]) -> bool {
    let mut accepted = subtle::Choice::from(0);
    for key in keys {
        accepted |= key.as_ref().ct_eq(presented);
    }
    bool::from(accepted)
}

/// The domains Event Grid calls from, and the checks that use them.
pub struct EventGridDomains(Vec<String>);

impl EventGridDomains {
    pub fn new(domains: &[String]) -> Self {
        EventGridDomains(domains.iter().map(|d| d.trim_start_matches('.').to_ascii_lowercase()).collect())
    }

    /// Whether `host` is one of the domains or a subdomain of one.
    pub fn contains(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.0.iter().any(|domain| {
            domain == "*"
                || host == *domain
                || host.strip_suffix(domain.as_str()).is_some_and(|prefix| prefix.ends_with('.'))
        })
    }
}

/// The CloudEvents webhook abuse-protection handshake (`OPTIONS`): allow the
/// requesting origin when it is one of Event Grid's, and any rate.
pub fn abuse_protection(headers: &HeaderMap, domains: &EventGridDomains) -> Response {
    let mut response = StatusCode::OK.into_response();
    let out = response.headers_mut();
    out.insert(header::ALLOW, HeaderValue::from_static("POST"));
    if let Some(origin) = header_text(headers, "webhook-request-origin") {
        if domains.contains(origin) {
            out.insert("webhook-allowed-origin", HeaderValue::from_str(origin).expect("came from a header"));
            tracing::info!(origin, "answered the CloudEvents abuse-protection handshake");
        } else {
            tracing::warn!(origin, "refused the CloudEvents handshake from an origin outside event_grid_domains");
        }
    }
    if headers.contains_key("webhook-request-rate") {
        out.insert("webhook-allowed-rate", HeaderValue::from_static("*"));
    }
    response
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ValidationResponse {
    validation_response: String,
}

/// Answers Event Grid's subscription validation as configured. The first
/// event must be the validation event.
pub fn validate_subscription(
    events: &[Event],
    mode: Validation,
    domains: &EventGridDomains,
) -> Result<Response, RequestError> {
    let Some(event) = events.first() else {
        return Err(RequestError::BadRequest("aeg-event-type is SubscriptionValidation but the batch is empty".into()));
    };
    if event.event_type != SUBSCRIPTION_VALIDATION_EVENT {
        return Err(RequestError::BadRequest(format!(
            "aeg-event-type is SubscriptionValidation but the event type is {:?}, not {SUBSCRIPTION_VALIDATION_EVENT}",
            event.event_type
        )));
    }
    let request = ValidationRequest::from_event(event)?;
    let topic = &event.source;
    match (mode, request.url) {
        (Validation::Manual, Some(url)) => {
            tracing::warn!(
                topic,
                "SUBSCRIPTION VALIDATION NEEDED: open this URL (a GET) within 5 minutes to confirm the subscription: {url}"
            );
            Ok(StatusCode::OK.into_response())
        }
        (Validation::AutoUrl, Some(url)) => {
            let allowed =
                url::Url::parse(&url).ok().and_then(|u| u.host_str().map(|h| domains.contains(h))).unwrap_or(false);
            if allowed {
                tokio::spawn(confirm_validation_url(url));
            } else {
                tracing::error!(
                    topic,
                    url,
                    "refused to GET the validation URL: its host is not in event_grid_domains; validate by hand if it is genuine"
                );
            }
            Ok(StatusCode::OK.into_response())
        }
        (mode, url) => {
            if mode != Validation::Sync {
                tracing::warn!(
                    topic,
                    "validation is {mode:?} but the event has no validationUrl; answering synchronously"
                );
            }
            tracing::info!(
                topic,
                validation_url = url.as_deref().unwrap_or("-"),
                "answered Event Grid's subscription validation"
            );
            Ok(axum::Json(ValidationResponse { validation_response: request.code }).into_response())
        }
    }
}

/// GETs a validation URL (after the handshake's answer went out) and logs
/// what came of it.
async fn confirm_validation_url(url: String) {
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .redirect(reqwest::redirect::Policy::none())
        .build();
    let result = match client {
        Ok(client) => client.get(&url).send().await.map(|r| r.status()),
        Err(e) => Err(e),
    };
    match result {
        Ok(status) if status.is_success() => tracing::info!(url, "subscription validated through its validation URL"),
        Ok(status) => tracing::error!(url, %status, "the validation URL refused; validate by hand"),
        Err(e) => tracing::error!(url, "could not GET the validation URL ({e}); validate by hand"),
    }
}

/// Set (to `true`) by `gridfn replay --to`: the events are replays of
/// dead-lettered ones, so a pair gridfn rejected before may run again.
pub const REPLAY_HEADER: &str = "gridfn-replay";

/// The delivery metadata Event Grid sends in headers (and `gridfn replay`'s).
pub fn delivery_info(headers: &HeaderMap) -> DeliveryInfo {
    DeliveryInfo {
        attempt: header_text(headers, "aeg-delivery-count").and_then(|n| n.parse().ok()).unwrap_or(0),
        subscription: header_text(headers, "aeg-subscription-name").map(str::to_owned),
        replay: header_text(headers, REPLAY_HEADER) == Some("true"),
        traceparent: crate::trace::TraceParent::from_headers(headers),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn a_key_is_accepted_in_any_of_the_three_places() {
        let keys = Authenticator::new(&["k1".into(), "k2".into()], false, None);
        assert!(keys.check_key(&headers(&[]), Some("k2")).is_ok());
        assert!(keys.check_key(&headers(&[("aeg-sas-key", "k1")]), None).is_ok());
        assert!(keys.check_key(&headers(&[("x-functions-key", "k1")]), None).is_ok());
        assert!(keys.check_key(&headers(&[]), None).is_err());
        assert!(keys.check_key(&headers(&[("aeg-sas-key", "k3")]), Some("k")).is_err());
        assert!(keys.check_key(&headers(&[]), Some("k1x")).is_err());
    }

    #[test]
    fn anonymous_access_is_only_what_was_allowed() {
        let open = Authenticator::new(&[], true, None);
        assert!(open.check_key(&headers(&[]), None).is_ok());
        let mixed = Authenticator::new(&["k".into()], true, None);
        assert!(mixed.check_key(&headers(&[]), None).is_ok(), "no key at all is anonymous");
        assert!(mixed.check_key(&headers(&[]), Some("wrong")).is_err(), "a wrong key is still wrong");
    }

    #[test]
    fn request_kind_comes_from_aeg_event_type() {
        assert_eq!(RequestKind::from_headers(&headers(&[])).unwrap(), RequestKind::Notification);
        let validation = headers(&[("aeg-event-type", "SubscriptionValidation")]);
        assert_eq!(RequestKind::from_headers(&validation).unwrap(), RequestKind::SubscriptionValidation);
        let unsubscribe = headers(&[("aeg-event-type", "Unsubscribe")]);
        assert_eq!(RequestKind::from_headers(&unsubscribe).unwrap(), RequestKind::SubscriptionDeletion);
        assert!(RequestKind::from_headers(&headers(&[("aeg-event-type", "Gossip")])).is_err());
    }

    #[test]
    fn delivery_metadata_comes_from_headers() {
        let info = delivery_info(&headers(&[("aeg-delivery-count", "3"), ("aeg-subscription-name", "SUB")]));
        assert_eq!(info.attempt, 3);
        assert_eq!(info.subscription.as_deref(), Some("SUB"));
        assert_eq!(delivery_info(&headers(&[])).attempt, 0);
    }

    #[test]
    fn event_grid_domains_match_themselves_and_subdomains_only() {
        let domains = EventGridDomains::new(&["eventgrid.azure.net".into()]);
        assert!(domains.contains("eventgrid.azure.net"));
        assert!(domains.contains("rp-eastus2.EventGrid.azure.net"));
        assert!(!domains.contains("evileventgrid.azure.net"));
        assert!(!domains.contains("eventgrid.azure.net.evil.com"));
    }

    /// Headers as sent, repeats kept, values as raw bytes (not only visible ASCII).
    fn headers_multi(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_bytes(value.as_bytes()).unwrap());
        }
        map
    }

    const CE_HEADERS: [(&str, &str); 4] =
        [("ce-specversion", "1.0"), ("ce-id", "b-1"), ("ce-source", "/s"), ("ce-type", "t")];

    fn binary_with(extra: &[(&'static str, &str)]) -> Result<Vec<Event>, RequestError> {
        decode(&headers_multi(&[CE_HEADERS.as_slice(), extra].concat()), b"hi")
    }

    fn refused_header(result: Result<Vec<Event>, RequestError>) -> String {
        match result {
            Err(RequestError::Decode(e)) => e.field.unwrap_or_default(),
            other => panic!("expected a decode error, got {:?}", other.map(|e| e.len())),
        }
    }

    #[test]
    fn a_cloudevents_content_type_means_structured_mode_even_with_ce_headers() {
        let body = br#"[{"specversion":"1.0","id":"from-body","source":"/s","type":"t"}]"#;
        for content_type in ["application/cloudevents+json", "application/cloudevents-batch+json; charset=UTF-8"] {
            let headers = headers_multi(&[CE_HEADERS.as_slice(), &[("content-type", content_type)]].concat());
            let events = decode(&headers, body).unwrap();
            assert_eq!(events[0].id, "from-body", "{content_type}");
        }
        // Another event format gridfn cannot read: 415, not binary mode.
        let headers =
            headers_multi(&[CE_HEADERS.as_slice(), &[("content-type", "application/cloudevents+avro")]].concat());
        assert!(
            matches!(decode(&headers, body), Err(RequestError::UnsupportedMediaType(t)) if t == "application/cloudevents+avro")
        );
        // Any other type with ce-specversion is binary mode.
        let events = binary_with(&[("content-type", "application/xml")]).unwrap();
        assert_eq!((events[0].id.as_str(), events[0].data_content_type.as_deref()), ("b-1", Some("application/xml")));
    }

    #[test]
    fn an_empty_cloudevents_batch_decodes_to_no_events() {
        let batch = headers(&[("content-type", "application/cloudevents-batch+json")]);
        assert!(decode(&batch, b"[]").unwrap().is_empty());
        let event_grid = headers(&[("content-type", "application/json")]);
        assert!(matches!(decode(&event_grid, b"[]"), Err(RequestError::Decode(_))));
        let validation = event::decode_cloudevents(b"[]").unwrap();
        let domains = EventGridDomains::new(&[]);
        assert!(matches!(
            validate_subscription(&validation, Validation::Sync, &domains),
            Err(RequestError::BadRequest(m)) if m.contains("empty")
        ));
    }

    #[test]
    fn binary_header_values_are_unquoted_then_percent_decoded() {
        let cases = [
            ("Euro%20%E2%82%AC%20%F0%9F%98%80", "Euro \u{20ac} \u{1f600}"),
            ("lower%e2%82%ac", "lower\u{20ac}"),
            ("%41%42c", "ABc"),
            (r#""quoted value""#, "quoted value"),
            (r#""esc\"aped\\" and %22"#, "esc\"aped\\ and \""),
            ("50%", "50%"),
        ];
        for (raw, expected) in cases {
            let events = binary_with(&[("ce-subject", raw)]).unwrap();
            assert_eq!(events[0].subject.as_deref(), Some(expected), "{raw}");
        }
        // %C0%A0 is an overlong encoding of a space: invalid UTF-8.
        assert_eq!(refused_header(binary_with(&[("ce-subject", "%C0%A0")])), "ce-subject");
        assert_eq!(refused_header(binary_with(&[("ce-subject", "\"open")])), "ce-subject");
        assert_eq!(refused_header(binary_with(&[("ce-subject", "caf\u{e9}")])), "ce-subject");
        // Decoded control characters are no more allowed than sent ones.
        assert_eq!(refused_header(binary_with(&[("ce-subject", "a%0Ab")])), "ce-subject");
    }

    #[test]
    fn a_binary_attribute_sent_twice_is_refused() {
        assert_eq!(refused_header(binary_with(&[("ce-id", "b-2")])), "ce-id");
        assert_eq!(refused_header(binary_with(&[("ce-ext", "1"), ("ce-ext", "2")])), "ce-ext");
    }

    #[test]
    fn the_body_encoding_follows_content_type_and_ce_headers() {
        let eg = br#"[{"id":"1","eventType":"t","subject":"s"}]"#;
        let ce = br#"{"specversion":"1.0","id":"1","source":"/s","type":"t"}"#;
        let decoded = |pairs: &[(&'static str, &str)], body: &[u8]| decode(&headers(pairs), body);
        assert_eq!(decoded(&[("content-type", "application/json")], eg).unwrap()[0].schema, event::Schema::EventGrid);
        assert_eq!(decoded(&[], eg).unwrap()[0].schema, event::Schema::EventGrid);
        let structured = decoded(&[("content-type", "application/cloudevents+json; charset=utf-8")], ce).unwrap();
        assert_eq!(structured[0].schema, event::Schema::CloudEvents);
        assert_eq!(decoded(&[("content-type", "application/json")], ce).unwrap()[0].schema, event::Schema::CloudEvents);
        assert!(matches!(
            decoded(&[("content-type", "text/xml")], eg),
            Err(RequestError::UnsupportedMediaType(t)) if t == "text/xml"
        ));
        let binary = decoded(
            &[
                ("ce-specversion", "1.0"),
                ("ce-id", "b%2F1"),
                ("ce-source", "/s"),
                ("ce-type", "t"),
                ("content-type", "text/plain"),
            ],
            b"hi",
        )
        .unwrap();
        assert_eq!(binary[0].id, "b/1", "ce- headers are percent-decoded");
        assert_eq!(binary[0].data, b"hi");
        let versioned = decoded(&[("aeg-data-version", "2.0")], eg).unwrap();
        assert_eq!(versioned[0].data_version.as_deref(), Some("2.0"));
        assert!(decoded(&[("aeg-metadata-version", "2")], eg).is_err());
    }
}
