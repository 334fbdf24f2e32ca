//! Outbound HTTP for handlers: `wasi:http/outgoing-handler`, allowed only to
//! the hosts the manifest lists in `allowed_outbound_hosts`.
//!
//! The check sits in wasmtime-wasi-http's `send_request` hook, the one place
//! every guest request passes before any DNS lookup or connection, so a
//! denied request never reaches the network: the guest gets
//! `HTTP-request-denied` and the host log says which host was refused.

use std::fmt;
use std::time::{Duration, Instant};

use http::uri::{Scheme, Uri};
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

/// One `allowed_outbound_hosts` entry: `scheme://host[:port]`, where the
/// scheme may be `*` (http or https), the host may start with `*.` (any
/// subdomain, not the domain itself), and the port may be `*`. Without a port
/// only the scheme's default port (80, 443) is allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedHost {
    scheme: Option<String>,
    host: HostPattern,
    port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Exact(String),
    /// `*.example.com`, kept as `.example.com`.
    SubdomainOf(String),
}

impl AllowedHost {
    /// Parses one entry; the error says what is wrong with it.
    pub fn parse(entry: &str) -> Result<AllowedHost, String> {
        let (scheme, rest) =
            entry.split_once("://").ok_or_else(|| format!("{entry:?} needs a scheme, e.g. \"https://{entry}\""))?;
        let scheme = match scheme {
            "*" => None,
            "http" | "https" => Some(scheme.to_owned()),
            other => return Err(format!("{entry:?}: scheme {other:?} is not http, https or *")),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains('/') || rest.contains('?') || rest.contains('@') {
            return Err(format!("{entry:?}: list a host (and port), not a path or user"));
        }
        // The last ':' starts the port unless it is inside an IPv6 `[…]`.
        let (host, port) = match rest.rfind(':') {
            Some(i) if !rest[i..].contains(']') => (&rest[..i], Some(&rest[i + 1..])),
            _ => (rest, None),
        };
        let port = match port {
            None => default_port(scheme.as_deref()).map(Some).ok_or_else(|| {
                format!("{entry:?}: with scheme * give a port (e.g. \"*://{host}:8080\" or \"*://{host}:*\")")
            })?,
            Some("*") => None,
            Some(port) => Some(port.parse::<u16>().map_err(|_| format!("{entry:?}: {port:?} is not a port"))?),
        };
        let host = host.to_ascii_lowercase();
        let host = match host.strip_prefix("*.") {
            Some(domain) if valid_host(domain) => HostPattern::SubdomainOf(format!(".{domain}")),
            None if valid_host(&host) => HostPattern::Exact(host),
            _ => return Err(format!("{entry:?}: {host:?} is not a host name (\"*.\" may start it)")),
        };
        Ok(AllowedHost { scheme, host, port })
    }

    fn allows(&self, scheme: &str, host: &str, port: u16) -> bool {
        self.scheme.as_deref().is_none_or(|s| s == scheme)
            && self.port.is_none_or(|p| p == port)
            && match &self.host {
                HostPattern::Exact(allowed) => allowed == host,
                HostPattern::SubdomainOf(domain) => host.ends_with(domain.as_str()),
            }
    }
}

impl fmt::Display for AllowedHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = match &self.host {
            HostPattern::Exact(host) => host.clone(),
            HostPattern::SubdomainOf(domain) => format!("*{domain}"),
        };
        let port = self.port.map_or("*".to_owned(), |p| p.to_string());
        write!(f, "{}://{host}:{port}", self.scheme.as_deref().unwrap_or("*"))
    }
}

fn default_port(scheme: Option<&str>) -> Option<u16> {
    match scheme? {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

fn valid_host(host: &str) -> bool {
    !host.is_empty()
        && !host.contains('*')
        && host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '[' | ']' | ':'))
}

/// Whether `uri` is on the list, and if not, the reason the guest's request
/// was refused (for the host log).
pub fn check(allowed: &[AllowedHost], uri: &Uri) -> Result<(), String> {
    let scheme = uri.scheme().map_or("https", Scheme::as_str);
    let Some(host) = uri.host() else { return Err(format!("{uri} names no host")) };
    let host = host.to_ascii_lowercase();
    let port = uri.port_u16().or(default_port(Some(scheme))).unwrap_or(0);
    if allowed.iter().any(|entry| entry.allows(scheme, &host, port)) {
        return Ok(());
    }
    Err(format!("{scheme}://{host}:{port} is not in the handler's allowed_outbound_hosts"))
}

/// The per-instance `wasi:http` hooks: the allow-list check, and timeouts
/// that end with the handler's deadline (a host call is not interrupted by
/// the epoch deadline, so a slow server must not hold the instance longer).
pub struct OutboundPolicy {
    pub allowed: std::sync::Arc<[AllowedHost]>,
    pub handler: std::sync::Arc<str>,
    /// When the event's deadline passes; set per event.
    pub deadline: Instant,
}

impl WasiHttpHooks for OutboundPolicy {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> Box<dyn Future<Output = Result<SentRequest, HttpError>> + Send> {
        if let Err(reason) = check(&self.allowed, request.uri()) {
            tracing::warn!(handler = %self.handler, "outbound request denied: {reason}");
            return Box::new(async { Err(HttpError::HttpRequestDenied) });
        }
        let left = self.deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
        let mut options = options.unwrap_or_default();
        for timeout in
            [&mut options.connect_timeout, &mut options.first_byte_timeout, &mut options.between_bytes_timeout]
        {
            *timeout = Some(timeout.map_or(left, |t| t.min(left)));
        }
        let send = WasiHttpHooks::send_request(&mut DefaultHooks, request, Some(options), fut);
        Box::new(async move {
            match tokio::time::timeout(left, Box::into_pin(send)).await {
                Ok(result) => result,
                Err(_) => Err(HttpError::ConnectionTimeout),
            }
        })
    }
}

/// A response, and the future that finishes sending the request body.
type SentRequest = (http::Response<WasiBody>, Box<dyn Future<Output = Result<(), HttpError>> + Send>);

/// wasmtime-wasi-http's own sending, used once a request passed the check.
struct DefaultHooks;

impl WasiHttpHooks for DefaultHooks {}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(entries: &[&str]) -> Vec<AllowedHost> {
        entries.iter().map(|e| AllowedHost::parse(e).unwrap()).collect()
    }

    fn ok(list: &[AllowedHost], uri: &str) -> bool {
        check(list, &uri.parse().unwrap()).is_ok()
    }

    #[test]
    fn exact_hosts_allow_their_scheme_and_default_port_only() {
        let list = allowed(&["https://api.example.com"]);
        assert!(ok(&list, "https://api.example.com/v1/things?x=1"));
        assert!(ok(&list, "https://API.example.com:443/"));
        assert!(!ok(&list, "http://api.example.com/"));
        assert!(!ok(&list, "https://api.example.com:8443/"));
        assert!(!ok(&list, "https://example.com/"));
        assert!(!ok(&list, "https://api.example.com.evil.net/"));
    }

    #[test]
    fn wildcards_cover_subdomains_schemes_and_ports() {
        let list = allowed(&["https://*.blob.core.windows.net", "*://127.0.0.1:*"]);
        assert!(ok(&list, "https://acct.blob.core.windows.net/c/b"));
        assert!(!ok(&list, "https://blob.core.windows.net/"));
        assert!(!ok(&list, "https://acctblob.core.windows.net/"));
        assert!(ok(&list, "http://127.0.0.1:8080/"));
        assert!(ok(&list, "https://127.0.0.1:9/"));
        assert!(!ok(&list, "http://127.0.0.2:8080/"));
        assert!(!ok(&[], "https://api.example.com/"));
    }

    #[test]
    fn bad_entries_say_what_is_wrong() {
        for (entry, says) in [
            ("api.example.com", "needs a scheme"),
            ("ftp://x.org", "is not http"),
            ("https://x.org/path", "not a path"),
            ("https://x.org:http", "is not a port"),
            ("*://x.org", "give a port"),
            ("https://a.*.org", "is not a host name"),
            ("https://", "is not a host name"),
        ] {
            let error = AllowedHost::parse(entry).unwrap_err();
            assert!(error.contains(says), "{entry}: {error}");
        }
        assert_eq!(AllowedHost::parse("http://localhost:*").unwrap().to_string(), "http://localhost:*");
        assert!(ok(&allowed(&["http://[::1]:8080"]), "http://[::1]:8080/"));
        assert!(ok(&allowed(&["https://[::1]"]), "https://[::1]/"));
    }
}
