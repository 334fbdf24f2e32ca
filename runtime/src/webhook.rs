//! Event Grid's webhook protocol, as seen from the receiving end: who may
//! call (keys), what kind of request it is (`aeg-event-type`), the validation
//! handshake, and the delivery metadata headers.

use axum::http::HeaderMap;
use serde::Serialize;
use subtle::ConstantTimeEq;

use crate::error::RequestError;
use crate::event::{Event, SUBSCRIPTION_VALIDATION_EVENT, ValidationRequest};
use crate::sandbox::DeliveryInfo;

/// What `aeg-event-type` says the request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// Events to run. Also assumed when the header is absent, as it is from
    /// publishers that post events directly (the Azure SDKs, curl).
    Notification,
    /// The subscription handshake: answer with the validation code.
    SubscriptionValidation,
}

impl RequestKind {
    pub fn from_headers(headers: &HeaderMap) -> Result<Self, RequestError> {
        match headers
            .get("aeg-event-type")
            .map(|v| v.to_str().unwrap_or(""))
        {
            None => Ok(RequestKind::Notification),
            Some(kind) if kind.eq_ignore_ascii_case("Notification") => {
                Ok(RequestKind::Notification)
            }
            Some(kind) if kind.eq_ignore_ascii_case("SubscriptionValidation") => {
                Ok(RequestKind::SubscriptionValidation)
            }
            Some(other) => Err(RequestError::BadRequest(format!(
                "aeg-event-type {other:?} is not supported; expected Notification or SubscriptionValidation"
            ))),
        }
    }
}

/// Who may deliver: the configured keys, or anyone when anonymous access was
/// explicitly allowed.
pub struct Keys {
    keys: Vec<Vec<u8>>,
    allow_anonymous: bool,
}

impl Keys {
    pub fn new(keys: &[String], allow_anonymous: bool) -> Self {
        Keys {
            keys: keys.iter().map(|k| k.as_bytes().to_vec()).collect(),
            allow_anonymous,
        }
    }

    /// Accepts a key sent as `?code=`, `aeg-sas-key` or `x-functions-key`,
    /// comparing in constant time so timing reveals nothing about the key.
    pub fn authenticate(
        &self,
        headers: &HeaderMap,
        code: Option<&str>,
    ) -> Result<(), RequestError> {
        if self.allow_anonymous && self.keys.is_empty() {
            return Ok(());
        }
        let presented = [
            code.map(str::as_bytes),
            headers.get("aeg-sas-key").map(|v| v.as_bytes()),
            headers.get("x-functions-key").map(|v| v.as_bytes()),
        ];
        let mut accepted = subtle::Choice::from(0);
        for candidate in presented.into_iter().flatten() {
            for key in &self.keys {
                accepted |= key.as_slice().ct_eq(candidate);
            }
        }
        if bool::from(accepted) || (self.allow_anonymous && presented.iter().all(Option::is_none)) {
            Ok(())
        } else {
            Err(RequestError::Unauthorized)
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ValidationResponse {
    pub validation_response: String,
}

/// Answers the handshake: the first event must be Event Grid's validation
/// event, and its code goes back in the body of a 200.
pub fn validation_response(events: &[Event]) -> Result<ValidationResponse, RequestError> {
    let event = &events[0];
    if event.event_type != SUBSCRIPTION_VALIDATION_EVENT {
        return Err(RequestError::BadRequest(format!(
            "aeg-event-type is SubscriptionValidation but the event type is {:?}, not {SUBSCRIPTION_VALIDATION_EVENT}",
            event.event_type
        )));
    }
    let request = ValidationRequest::from_event(event)?;
    tracing::info!(
        topic = %event.source,
        validation_url = request.url.as_deref().unwrap_or("-"),
        "answered Event Grid's subscription validation handshake"
    );
    Ok(ValidationResponse {
        validation_response: request.code,
    })
}

/// The delivery metadata Event Grid sends in headers.
pub fn delivery_info(headers: &HeaderMap) -> DeliveryInfo {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    DeliveryInfo {
        attempt: text("aeg-delivery-count")
            .and_then(|n| n.parse().ok())
            .unwrap_or(0),
        subscription: text("aeg-subscription-name").map(str::to_owned),
        replay: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn a_key_is_accepted_in_any_of_the_three_places() {
        let keys = Keys::new(&["k1".into(), "k2".into()], false);
        assert!(keys.authenticate(&headers(&[]), Some("k2")).is_ok());
        assert!(
            keys.authenticate(&headers(&[("aeg-sas-key", "k1")]), None)
                .is_ok()
        );
        assert!(
            keys.authenticate(&headers(&[("x-functions-key", "k1")]), None)
                .is_ok()
        );
        assert!(keys.authenticate(&headers(&[]), None).is_err());
        assert!(
            keys.authenticate(&headers(&[("aeg-sas-key", "k3")]), Some("k"))
                .is_err()
        );
        assert!(keys.authenticate(&headers(&[]), Some("k1x")).is_err());
    }

    #[test]
    fn anonymous_access_is_only_what_was_allowed() {
        let open = Keys::new(&[], true);
        assert!(open.authenticate(&headers(&[]), None).is_ok());
        let mixed = Keys::new(&["k".into()], true);
        assert!(
            mixed.authenticate(&headers(&[]), None).is_ok(),
            "no key at all is anonymous"
        );
        assert!(
            mixed.authenticate(&headers(&[]), Some("wrong")).is_err(),
            "a wrong key is still wrong"
        );
    }

    #[test]
    fn request_kind_comes_from_aeg_event_type() {
        assert_eq!(
            RequestKind::from_headers(&headers(&[])).unwrap(),
            RequestKind::Notification
        );
        let validation = headers(&[("aeg-event-type", "SubscriptionValidation")]);
        assert_eq!(
            RequestKind::from_headers(&validation).unwrap(),
            RequestKind::SubscriptionValidation
        );
        assert!(RequestKind::from_headers(&headers(&[("aeg-event-type", "Gossip")])).is_err());
    }

    #[test]
    fn delivery_metadata_comes_from_headers() {
        let info = delivery_info(&headers(&[
            ("aeg-delivery-count", "3"),
            ("aeg-subscription-name", "SUB"),
        ]));
        assert_eq!(info.attempt, 3);
        assert_eq!(info.subscription.as_deref(), Some("SUB"));
        assert_eq!(delivery_info(&headers(&[])).attempt, 0);
    }
}
