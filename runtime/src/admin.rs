//! The admin API behind `gridfn deploy`, `gridfn handlers`, `gridfn
//! rollback` and `gridfn kv list`: HTTP in front of the [`Registry`] and the
//! handlers' kv store, behind its own keys (`server.admin_keys`, sent as
//! `x-gridfn-admin-key`), separate from the delivery keys. Off when no admin
//! key is configured.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::error::RequestError;
use crate::host::Host;
use crate::registry::HandlerVersion;

/// How many kv entries one listing answers unless it asks for fewer.
pub const KV_LIST_LIMIT: usize = 1000;
/// The most kv entries one listing answers: a value may be 1 MiB.
pub const KV_LIST_MAX: usize = 10_000;

/// The largest module `gridfn deploy` accepts.
pub const MAX_MODULE: usize = 256 << 20;

/// The header that carries an admin key.
pub const ADMIN_KEY_HEADER: &str = "x-gridfn-admin-key";

/// Refuses the request unless it carries one of the admin keys.
fn check_admin_key(host: &Host, headers: &HeaderMap) -> Result<(), RequestError> {
    if host.admin_keys.is_empty() {
        return Err(RequestError::AdminDisabled);
    }
    let presented = headers.get(ADMIN_KEY_HEADER).map(|v| v.as_bytes()).unwrap_or_default();
    match crate::webhook::is_one_of(&host.admin_keys, presented) {
        true => Ok(()),
        false => Err(RequestError::Unauthorized(format!("missing or wrong {ADMIN_KEY_HEADER} header"))),
    }
}

/// `GET /admin/handlers`
pub async fn list(
    State(host): State<Arc<Host>>,
    headers: HeaderMap,
) -> Result<Json<Vec<HandlerVersion>>, RequestError> {
    check_admin_key(&host, &headers)?;
    Ok(Json(host.registry.list()))
}

/// `PUT /admin/handlers/{name}` with the module as the body.
pub async fn deploy(
    State(host): State<Arc<Host>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    module: Bytes,
) -> Result<Json<HandlerVersion>, RequestError> {
    check_admin_key(&host, &headers)?;
    Ok(Json(host.registry.deploy(&name, module.to_vec()).await?))
}

/// `POST /admin/handlers/{name}/rollback`
pub async fn rollback(
    State(host): State<Arc<Host>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Json<HandlerVersion>, RequestError> {
    check_admin_key(&host, &headers)?;
    Ok(Json(host.registry.rollback(&name)?))
}

/// `GET /admin/kv/{handler}?prefix=P&limit=N`: what to list.
#[derive(Debug, Deserialize)]
pub struct KvQuery {
    /// Only keys that start with it (default: every key).
    #[serde(default)]
    pub prefix: String,
    /// At most this many, in key order (default [`KV_LIST_LIMIT`], at most
    /// [`KV_LIST_MAX`]).
    pub limit: Option<usize>,
}

/// A handler's kv entries, in key order.
#[derive(Debug, Serialize, Deserialize)]
pub struct KvListing {
    pub handler: String,
    pub prefix: String,
    pub entries: Vec<KvEntry>,
    /// More keys match than were listed: ask with a longer prefix (or a
    /// larger `limit`).
    pub truncated: bool,
}

/// One key and its value. Values are bytes to the store; JSON cannot carry
/// bytes, so a value that is UTF-8 is sent as that text and any other as
/// standard base64, and `encoding` says which.
#[derive(Debug, Serialize, Deserialize)]
pub struct KvEntry {
    pub key: String,
    pub value: String,
    pub encoding: Encoding,
}

/// How a listed value is written in `value`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Encoding {
    /// The value is UTF-8 text, sent as it is.
    #[serde(rename = "utf-8")]
    Utf8,
    /// Any other bytes, in standard base64.
    #[serde(rename = "base64")]
    Base64,
}

impl KvEntry {
    fn new(key: String, value: Vec<u8>) -> KvEntry {
        match String::from_utf8(value) {
            Ok(text) => KvEntry { key, value: text, encoding: Encoding::Utf8 },
            Err(bytes) => KvEntry {
                key,
                value: base64::engine::general_purpose::STANDARD.encode(bytes.as_bytes()),
                encoding: Encoding::Base64,
            },
        }
    }
}

/// `GET /admin/kv/{handler}?prefix=P&limit=N`: read a handler's kv entries
/// (e.g. the audit log's trail) while gridfn runs, without going through a
/// handler.
pub async fn kv_list(
    State(host): State<Arc<Host>>,
    Path(name): Path<String>,
    Query(query): Query<KvQuery>,
    headers: HeaderMap,
) -> Result<Json<KvListing>, RequestError> {
    check_admin_key(&host, &headers)?;
    let route = host.registry.route(&name).ok_or_else(|| RequestError::UnknownHandler(name.clone()))?;
    let store = match (&host.kv, route.config.capabilities.kv) {
        (Some(store), true) => store,
        _ => return Err(RequestError::BadRequest(format!("handler {name} is not granted kv (capabilities.kv)"))),
    };
    let limit = query.limit.unwrap_or(KV_LIST_LIMIT);
    if !(1..=KV_LIST_MAX).contains(&limit) {
        return Err(RequestError::BadRequest(format!("limit must be 1 to {KV_LIST_MAX}, not {limit}")));
    }
    // One more than asked tells whether there are more.
    let mut entries = store
        .list(&name, &query.prefix, limit + 1)
        .await
        .map_err(|e| RequestError::Internal(format!("listing {name}'s kv entries: {e}")))?;
    let truncated = entries.len() > limit;
    entries.truncate(limit);
    let entries = entries.into_iter().map(|(key, value)| KvEntry::new(key, value)).collect();
    Ok(Json(KvListing { handler: name, prefix: query.prefix, entries, truncated }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_values_are_text_when_they_are_utf8_and_base64_otherwise() {
        let text = serde_json::to_value(KvEntry::new("trail/1".into(), "{\"id\":\"é\"}".into())).unwrap();
        assert_eq!(text, serde_json::json!({"key": "trail/1", "value": "{\"id\":\"é\"}", "encoding": "utf-8"}));
        let bytes = serde_json::to_value(KvEntry::new("raw".into(), vec![0xff, 0x00, 0x80])).unwrap();
        assert_eq!(bytes, serde_json::json!({"key": "raw", "value": "/wCA", "encoding": "base64"}));
    }
}
