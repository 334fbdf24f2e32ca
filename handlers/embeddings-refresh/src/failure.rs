//! Why a step failed, and whether trying again can help: the one place that
//! turns an HTTP answer or a transport error into retry or reject.
//!
//! Retry: 408, 429 and 5xx (honouring `Retry-After`), and anything that never
//! got an answer (connection refused, timeout). Reject: every other status,
//! and requests gridfn refused to send (host not allowed, invalid URL): those
//! stay wrong until a person changes something, and a dead-lettered event can
//! be replayed once they have.

use std::time::{Duration, SystemTime};

use gridfn_sdk::Outcome;
use gridfn_sdk::http::{self, Response};

/// A step that did not work out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Trying again later can work; `after` is the service's `Retry-After`.
    Transient { reason: String, after: Option<Duration> },
    /// Will not work until something changes: dead-letter the event.
    Permanent(String),
}

/// How much of an error body goes into a reason: enough to see the service's
/// message, not a whole HTML error page.
const BODY_EXCERPT: usize = 300;

impl Failure {
    /// `service` answered `response`, which was not the success it needed.
    pub fn from_response(service: &str, response: &Response) -> Failure {
        let status = response.status;
        let body = excerpt(response);
        let reason = if body.is_empty() {
            format!("{service} answered {status}")
        } else {
            format!("{service} answered {status}: {body}")
        };
        if status == 408 || status == 429 || status >= 500 {
            let after = response.header("retry-after").and_then(|value| retry_after(value, SystemTime::now()));
            Failure::Transient { reason, after }
        } else {
            Failure::Permanent(reason)
        }
    }

    /// The request to `service` got no answer at all.
    pub fn from_error(service: &str, error: http::Error) -> Failure {
        match error {
            http::Error::Failed(_) => Failure::Transient { reason: format!("{service}: {error}"), after: None },
            http::Error::Denied | http::Error::Invalid(_) => Failure::Permanent(format!("{service}: {error}")),
        }
    }
}

impl From<Failure> for Outcome {
    fn from(failure: Failure) -> Self {
        match failure {
            Failure::Transient { reason, after: Some(after) } => Outcome::retry_after(reason, after),
            Failure::Transient { reason, after: None } => Outcome::retry(reason),
            Failure::Permanent(reason) => Outcome::reject(reason),
        }
    }
}

/// Sends `request` to `service`; a 2xx answer is success, anything else a
/// [`Failure`] classified as above.
pub fn call(service: &str, request: http::Request) -> Result<Response, Failure> {
    let response = http::send(request).map_err(|error| Failure::from_error(service, error))?;
    if (200..300).contains(&response.status) { Ok(response) } else { Err(Failure::from_response(service, &response)) }
}

fn excerpt(response: &Response) -> String {
    let text = String::from_utf8_lossy(&response.body);
    let text = text.trim();
    match text.char_indices().nth(BODY_EXCERPT) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// `Retry-After` is either delay-seconds or an HTTP date (RFC 9110 §10.2.3).
fn retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u16, headers: &[(&str, &str)], body: &str) -> Response {
        Response {
            status,
            headers: headers.iter().map(|(n, v)| (n.to_string(), v.as_bytes().to_vec())).collect(),
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn throttling_and_server_errors_are_retried_with_the_asked_delay() {
        let throttled = Failure::from_response("the embeddings API", &response(429, &[("Retry-After", "2")], ""));
        assert_eq!(
            throttled,
            Failure::Transient {
                reason: "the embeddings API answered 429".into(),
                after: Some(Duration::from_secs(2))
            }
        );
        let unavailable = Failure::from_response("Chroma", &response(503, &[], "overloaded"));
        assert_eq!(unavailable, Failure::Transient { reason: "Chroma answered 503: overloaded".into(), after: None });
        assert!(matches!(Failure::from_response("x", &response(408, &[], "")), Failure::Transient { .. }));
    }

    #[test]
    fn client_errors_are_rejected_with_the_service_message() {
        let refused = Failure::from_response("the embeddings API", &response(401, &[], "{\"error\":\"bad key\"}"));
        assert_eq!(refused, Failure::Permanent("the embeddings API answered 401: {\"error\":\"bad key\"}".into()));
    }

    #[test]
    fn long_error_bodies_are_cut() {
        let page = "x".repeat(5000);
        let Failure::Permanent(reason) = Failure::from_response("s", &response(400, &[], &page)) else { panic!() };
        assert!(reason.len() < 400, "{}", reason.len());
        assert!(reason.ends_with('…'));
    }

    #[test]
    fn retry_after_takes_seconds_or_a_date() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(retry_after(" 7 ", now), Some(Duration::from_secs(7)));
        assert_eq!(retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now), Some(Duration::from_secs(30)));
        assert_eq!(retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now), Some(Duration::ZERO), "a past date: now");
        assert_eq!(retry_after("soon", now), None);
    }

    #[test]
    fn no_answer_is_transient_but_a_refused_request_is_not() {
        assert!(matches!(
            Failure::from_error("Chroma", http::Error::Failed("ConnectionRefused".into())),
            Failure::Transient { after: None, .. }
        ));
        let Failure::Permanent(reason) = Failure::from_error("Chroma", http::Error::Denied) else { panic!() };
        assert!(reason.contains("allowed_outbound_hosts"), "{reason}");
    }
}
