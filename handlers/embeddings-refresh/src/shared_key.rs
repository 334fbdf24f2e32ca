//! Azure Storage Shared Key authorization for a bodiless request (the blob
//! GET): the canonical string Azure rebuilds from the request, signed with
//! HMAC-SHA256 under the account key.
//!
//! The account is the host's first label for a real account
//! (`ACCOUNT.blob.core.windows.net`), and the path's first segment for
//! path-style URLs (Azurite's `http://127.0.0.1:10000/devstoreaccount1/…`,
//! where it therefore appears twice in the signed resource, as Azure's
//! emulator rules require).

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The headers Shared Key needs besides `Authorization`.
pub const VERSION: &str = "2023-11-03";

/// Where a blob lives, as far as signing is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    pub account: String,
    /// The URL's path, as sent (percent-encoded).
    pub path: String,
    /// The query's parameters, as sent.
    pub query: Vec<(String, String)>,
}

impl Resource {
    /// `None` when no account can be found in `url`.
    pub fn from_url(url: &str) -> Option<Resource> {
        let rest = url.split_once("://")?.1;
        let (authority, path_and_query) = rest.find('/').map_or((rest, "/"), |i| (&rest[..i], &rest[i..]));
        let (path, query) = path_and_query.split_once('?').unwrap_or((path_and_query, ""));
        let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
        let host = match host.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or_default(),
            None => host.split(':').next().unwrap_or_default(),
        };
        let path_style = host.parse::<std::net::IpAddr>().is_ok() || host == "localhost" || !host.contains('.');
        let account =
            if path_style { path.trim_start_matches('/').split('/').next()? } else { host.split('.').next()? };
        if account.is_empty() {
            return None;
        }
        let query = query
            .split('&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| {
                let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                (name.to_owned(), value.to_owned())
            })
            .collect();
        Some(Resource { account: account.to_owned(), path: path.to_owned(), query })
    }
}

/// The `Authorization` header value for `method` on `resource` with the
/// given `x-ms-*` headers (which must also be sent, unchanged).
pub fn authorization(key: &[u8], method: &str, resource: &Resource, ms_headers: &[(&str, &str)]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(string_to_sign(method, resource, ms_headers).as_bytes());
    let signature = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    format!("SharedKey {}:{signature}", resource.account)
}

/// Azure's "string to sign" for the Blob service (version 2009-09-19 and
/// later), for a request with no body and no conditional or range headers.
fn string_to_sign(method: &str, resource: &Resource, ms_headers: &[(&str, &str)]) -> String {
    // The verb, then eleven standard headers, all empty here: Content-Encoding,
    // -Language, -Length, -MD5, -Type, Date, If-Modified-Since, If-Match,
    // If-None-Match, If-Unmodified-Since, Range.
    let mut text = format!("{}\n{}", method.to_ascii_uppercase(), "\n".repeat(11));
    let mut headers: Vec<(String, &str)> =
        ms_headers.iter().map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim())).collect();
    headers.sort();
    for (name, value) in headers {
        text.push_str(&format!("{name}:{value}\n"));
    }
    text.push_str(&format!("/{}{}", resource.account, resource.path));
    let mut query: Vec<(String, String)> = resource
        .query
        .iter()
        .map(|(name, value)| (percent_decode(name).to_ascii_lowercase(), percent_decode(value)))
        .collect();
    query.sort();
    for (name, value) in query {
        text.push_str(&format!("\n{name}:{value}"));
    }
    text
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEV_KEY: &str = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
    const DATE: &str = "Sun, 06 Nov 1994 08:49:37 GMT";

    #[test]
    fn the_account_comes_from_the_host_or_from_a_path_style_url() {
        let real = Resource::from_url("https://contoso.blob.core.windows.net/docs/guide%201.md").unwrap();
        assert_eq!(real, Resource { account: "contoso".into(), path: "/docs/guide%201.md".into(), query: vec![] });
        let azurite = Resource::from_url("http://127.0.0.1:10000/devstoreaccount1/docs/guide.md").unwrap();
        assert_eq!(azurite.account, "devstoreaccount1");
        assert_eq!(azurite.path, "/devstoreaccount1/docs/guide.md");
        assert_eq!(Resource::from_url("http://localhost:10000/acct/c/b").unwrap().account, "acct");
        assert_eq!(Resource::from_url("http://[::1]:10000/acct/c/b").unwrap().account, "acct");
        assert_eq!(Resource::from_url("http://127.0.0.1:10000/"), None);
        assert_eq!(Resource::from_url("no url"), None);
    }

    #[test]
    fn the_string_to_sign_follows_azures_layout() {
        let resource = Resource::from_url(
            "https://contoso.blob.core.windows.net/docs/a.md?snapshot=2024-01-01T00%3A00%3A00Z&Comp=x",
        )
        .unwrap();
        let text = string_to_sign("get", &resource, &[("x-ms-version", VERSION), ("X-MS-Date", DATE)]);
        assert_eq!(
            text,
            "GET\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:Sun, 06 Nov 1994 08:49:37 GMT\nx-ms-version:2023-11-03\n\
             /contoso/docs/a.md\ncomp:x\nsnapshot:2024-01-01T00:00:00Z"
        );
    }

    /// The expected signature was computed with Python's `hmac` and `hashlib`
    /// over the same string, under Azurite's published development key.
    #[test]
    fn the_signature_is_hmac_sha256_of_that_string() {
        let key = base64::engine::general_purpose::STANDARD.decode(DEV_KEY).unwrap();
        let resource = Resource::from_url("http://127.0.0.1:10000/devstoreaccount1/docs/guide.md").unwrap();
        let header = authorization(&key, "GET", &resource, &[("x-ms-date", DATE), ("x-ms-version", VERSION)]);
        assert_eq!(header, "SharedKey devstoreaccount1:8rTW7jnnIr70iwYJjAaHPiCYcWHwy6L+mwn5tJtnR20=");
    }
}
