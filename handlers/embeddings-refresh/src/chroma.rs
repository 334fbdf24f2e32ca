//! Chroma's REST API v2, the few calls used here: get-or-create a
//! collection, upsert records, delete records by id or by metadata. Always
//! in the default tenant and database. Chroma is only ever given vectors,
//! never asked to embed.

use gridfn_sdk::http::Request;

use crate::failure::{Failure, call};

const SERVICE: &str = "Chroma";

/// A collection, by the id Chroma gave it.
pub struct Collection {
    /// `…/collections/<id>`, the base of its record operations.
    url: String,
}

/// One chunk as stored: `<blob url>#<index>`, its vector, metadata and text.
pub struct Record<'a> {
    pub id: String,
    pub embedding: &'a [f32],
    pub metadata: serde_json::Value,
    pub document: &'a str,
}

/// The collection `name` at the Chroma server `base` (`http://host:port`),
/// created when missing.
pub fn collection(base: &str, name: &str) -> Result<Collection, Failure> {
    let collections = format!("{base}/api/v2/tenants/default_tenant/databases/default_database/collections");
    let response = post(&collections, &serde_json::json!({ "name": name, "get_or_create": true }))?;
    let id = serde_json::from_slice::<serde_json::Value>(&response)
        .ok()
        .and_then(|answer| answer["id"].as_str().map(str::to_owned))
        .ok_or_else(|| Failure::Permanent(format!("Chroma's answer for collection {name:?} has no id")))?;
    Ok(Collection { url: format!("{collections}/{id}") })
}

impl Collection {
    /// Inserts the records, or replaces those with the same ids.
    pub fn upsert(&self, records: &[Record]) -> Result<(), Failure> {
        let body = serde_json::json!({
            "ids": records.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            "embeddings": records.iter().map(|r| r.embedding).collect::<Vec<_>>(),
            "metadatas": records.iter().map(|r| &r.metadata).collect::<Vec<_>>(),
            "documents": records.iter().map(|r| r.document).collect::<Vec<_>>(),
        });
        post(&format!("{}/upsert", self.url), &body).map(drop)
    }

    /// Deletes the records with these ids (ids not there are no error).
    pub fn delete_ids(&self, ids: &[String]) -> Result<(), Failure> {
        post(&format!("{}/delete", self.url), &serde_json::json!({ "ids": ids })).map(drop)
    }

    /// Deletes the records whose metadata `key` equals `value`.
    pub fn delete_where(&self, key: &str, value: &str) -> Result<(), Failure> {
        post(&format!("{}/delete", self.url), &serde_json::json!({ "where": { key: value } })).map(drop)
    }
}

fn post(url: &str, body: &serde_json::Value) -> Result<Vec<u8>, Failure> {
    let headers = vec![("content-type".to_owned(), "application/json".to_owned())];
    let request = Request { method: "POST".into(), url: url.to_owned(), headers, body: body.to_string().into_bytes() };
    Ok(call(SERVICE, request)?.body)
}
