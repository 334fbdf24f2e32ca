//! The admin API behind `gridfn deploy`, `gridfn handlers` and `gridfn
//! rollback`: HTTP in front of the [`Registry`], behind its own keys
//! (`server.admin_keys`, sent as `x-gridfn-admin-key`), separate from the
//! delivery keys. Off when no admin key is configured.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;

use crate::error::RequestError;
use crate::host::Host;
use crate::registry::HandlerVersion;

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
