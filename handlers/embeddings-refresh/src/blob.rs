//! The blob an event is about: what the event says of it, and its text,
//! read from Blob Storage with the configured credentials.

use std::time::SystemTime;

use gridfn_sdk::Event;
use gridfn_sdk::http::{self, Request};

use crate::failure::Failure;
use crate::settings::StorageAuth;
use crate::shared_key::{self, Resource};

/// The part of `Microsoft.Storage.BlobCreated` / `BlobDeleted` data used here.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BlobData {
    pub url: String,
    #[serde(default)]
    pub content_type: Option<String>,
}

impl BlobData {
    pub fn from_event(event: &Event) -> Result<BlobData, Failure> {
        event.data_json::<BlobData>().map_err(|error| {
            Failure::Permanent(format!("{} data is not a Blob Storage event's ({error})", event.event_type()))
        })
    }

    /// The blob's URL without any query: the document's identity, in ids,
    /// metadata and the kv key.
    pub fn document_url(&self) -> &str {
        self.url.split(['?', '#']).next().unwrap_or_default()
    }
}

/// GETs the blob at `url` and returns its text.
pub fn fetch(url: &str, auth: &StorageAuth) -> Result<String, Failure> {
    let service = "Blob Storage";
    let response = http::send(request(url, auth, SystemTime::now())?).map_err(|e| Failure::from_error(service, e))?;
    match response.status {
        200..=299 => {}
        404 => return Err(Failure::Permanent(format!("blob {url} not found (404): it was deleted or never written"))),
        401 | 403 => {
            let reason = match Failure::from_response(service, &response) {
                Failure::Permanent(reason) | Failure::Transient { reason, .. } => reason,
            };
            return Err(Failure::Permanent(format!(
                "{reason} (reading {url}: check storage_sas or storage_account_key in the handler's config)"
            )));
        }
        _ => return Err(Failure::from_response(service, &response)),
    }
    let text = String::from_utf8(response.body)
        .map_err(|_| Failure::Permanent(format!("blob {url} is not UTF-8 text, which is what this handler embeds")))?;
    Ok(text.strip_prefix('\u{feff}').map(str::to_owned).unwrap_or(text))
}

fn request(url: &str, auth: &StorageAuth, now: SystemTime) -> Result<Request, Failure> {
    let mut request = Request { method: "GET".into(), url: url.to_owned(), headers: Vec::new(), body: Vec::new() };
    match auth {
        StorageAuth::Anonymous => {}
        StorageAuth::Sas(sas) => {
            let separator = if url.contains('?') { '&' } else { '?' };
            request.url = format!("{url}{separator}{sas}");
        }
        StorageAuth::SharedKey(key) => {
            let resource = Resource::from_url(url).ok_or_else(|| {
                Failure::Permanent(format!(
                    "no storage account in blob URL {url}, to sign for with storage_account_key"
                ))
            })?;
            let date = httpdate::fmt_http_date(now);
            let ms_headers = [("x-ms-date", date.as_str()), ("x-ms-version", shared_key::VERSION)];
            let authorization = shared_key::authorization(key, "GET", &resource, &ms_headers);
            request.headers = ms_headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
            request.headers.push(("authorization".into(), authorization));
        }
    }
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sas_token_becomes_the_query() {
        let sas = StorageAuth::Sas("sv=2024&sig=abc".into());
        let plain = request("https://a.blob.core.windows.net/c/b.md", &sas, SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(plain.url, "https://a.blob.core.windows.net/c/b.md?sv=2024&sig=abc");
        assert!(plain.headers.is_empty());
        let queried =
            request("https://a.blob.core.windows.net/c/b.md?snapshot=1", &sas, SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(queried.url, "https://a.blob.core.windows.net/c/b.md?snapshot=1&sv=2024&sig=abc");
    }

    #[test]
    fn a_shared_key_request_carries_the_date_it_signed() {
        let auth = StorageAuth::SharedKey(b"key".to_vec());
        let at = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        let request = request("http://127.0.0.1:10000/devstoreaccount1/docs/a.md", &auth, at).unwrap();
        let header = |name: &str| request.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
        assert_eq!(header("x-ms-date"), Some("Sun, 06 Nov 1994 08:49:37 GMT"));
        assert_eq!(header("x-ms-version"), Some(shared_key::VERSION));
        assert!(header("authorization").unwrap().starts_with("SharedKey devstoreaccount1:"));
        assert_eq!(request.url, "http://127.0.0.1:10000/devstoreaccount1/docs/a.md");
    }

    #[test]
    fn the_document_is_the_url_without_its_query() {
        let data = BlobData { url: "https://a.blob.core.windows.net/c/b.md?sv=1".into(), content_type: None };
        assert_eq!(data.document_url(), "https://a.blob.core.windows.net/c/b.md");
    }
}
