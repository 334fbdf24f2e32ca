//! Outbound HTTP, to the hosts the manifest lists in
//! `[handler.capabilities] allowed_outbound_hosts` (e.g.
//! `["https://api.example.com", "https://*.blob.core.windows.net"]`).
//!
//! This is plain `wasi:http/outgoing-handler` (WASI 0.2) made blocking and
//! typed; any `wasi:http` client works the same way. A request to a host not
//! on the list fails with [`Error::Denied`] before anything reaches the
//! network. A call never outlives the handler's deadline.
//!
//! ```ignore
//! match http::get("https://api.example.com/v1/status") {
//!     Ok(response) if response.status == 200 => Outcome::Success,
//!     Ok(response) => Outcome::retry(format!("the API answered {}", response.status)),
//!     Err(http::Error::Denied) => Outcome::reject("api.example.com is not in allowed_outbound_hosts"),
//!     Err(error) => Outcome::retry(error.to_string()),
//! }
//! ```

use wasip2::http::outgoing_handler;
use wasip2::http::types::{ErrorCode, Fields, IncomingBody, Method, OutgoingBody, OutgoingRequest, Scheme};
use wasip2::io::streams::StreamError;

/// A request to send.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// What came back.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of header `name` (case-insensitive), if it is text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// The body as text, if it is UTF-8.
    pub fn text(&self) -> Option<&str> {
        std::str::from_utf8(&self.body).ok()
    }
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The host is not in `allowed_outbound_hosts`; nothing was sent.
    Denied,
    /// The URL or a header could not be used (says why).
    Invalid(String),
    /// The request was sent (or tried) and failed: DNS, connection, timeout…
    Failed(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Denied => write!(f, "gridfn denied the request: the host is not in allowed_outbound_hosts"),
            Error::Invalid(reason) => write!(f, "invalid request: {reason}"),
            Error::Failed(reason) => write!(f, "request failed: {reason}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<ErrorCode> for Error {
    fn from(code: ErrorCode) -> Self {
        match code {
            ErrorCode::HttpRequestDenied => Error::Denied,
            other => Error::Failed(format!("{other:?}")),
        }
    }
}

/// `GET url`.
pub fn get(url: &str) -> Result<Response, Error> {
    send(Request { method: "GET".into(), url: url.into(), headers: Vec::new(), body: Vec::new() })
}

/// `POST url` with `body` of `content_type`.
pub fn post(url: &str, content_type: &str, body: impl Into<Vec<u8>>) -> Result<Response, Error> {
    let headers = vec![("content-type".to_owned(), content_type.to_owned())];
    send(Request { method: "POST".into(), url: url.into(), headers, body: body.into() })
}

/// Sends `request` and reads the whole response.
pub fn send(request: Request) -> Result<Response, Error> {
    let (scheme, rest) = request
        .url
        .split_once("://")
        .ok_or_else(|| Error::Invalid(format!("{:?} is not an absolute URL", request.url)))?;
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        other => return Err(Error::Invalid(format!("scheme {other:?} is not http or https"))),
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let path = if path.starts_with('?') { format!("/{path}") } else { path.to_owned() };
    let method = match request.method.to_ascii_uppercase().as_str() {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        "PATCH" => Method::Patch,
        "OPTIONS" => Method::Options,
        other => Method::Other(other.to_owned()),
    };
    let entries: Vec<(String, Vec<u8>)> =
        request.headers.iter().map(|(name, value)| (name.to_ascii_lowercase(), value.as_bytes().to_vec())).collect();
    let headers = Fields::from_list(&entries).map_err(|e| Error::Invalid(format!("headers: {e:?}")))?;

    let outgoing = OutgoingRequest::new(headers);
    let invalid = |what: &str| Error::Invalid(format!("{what} of {:?}", request.url));
    outgoing.set_method(&method).map_err(|()| invalid("method"))?;
    outgoing.set_scheme(Some(&scheme)).map_err(|()| invalid("scheme"))?;
    outgoing.set_authority(Some(authority)).map_err(|()| invalid("host"))?;
    outgoing.set_path_with_query(Some(&path)).map_err(|()| invalid("path"))?;
    let body = outgoing.body().expect("a new request's body is available once");
    let pending = outgoing_handler::handle(outgoing, None)?;

    // A write fails when the request was refused; the response says why.
    if let Ok(stream) = body.write() {
        for chunk in request.body.chunks(4096) {
            if stream.blocking_write_and_flush(chunk).is_err() {
                break;
            }
        }
    }
    let _ = OutgoingBody::finish(body, None);

    pending.subscribe().block();
    let response = pending
        .get()
        .expect("the response is ready once its pollable is")
        .map_err(|()| Error::Failed("response already taken".into()))??;
    let status = response.status();
    let headers = response.headers().entries();
    let incoming = response.consume().map_err(|()| Error::Failed("response body already taken".into()))?;
    let mut body = Vec::new();
    {
        let stream = incoming.stream().map_err(|()| Error::Failed("response body stream already taken".into()))?;
        loop {
            match stream.blocking_read(64 * 1024) {
                Ok(chunk) => body.extend_from_slice(&chunk),
                Err(StreamError::Closed) => break,
                Err(StreamError::LastOperationFailed(e)) => {
                    return Err(Error::Failed(format!("reading the response: {}", e.to_debug_string())));
                }
            }
        }
    }
    let _ = IncomingBody::finish(incoming);
    Ok(Response { status, headers, body })
}
