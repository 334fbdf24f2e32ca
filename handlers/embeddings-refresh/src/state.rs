//! What was last embedded for each document, in the handler's kv store
//! (`doc/<blob url>` → `{"hash", "chunks", "model"}`): how an unchanged
//! document under a new event id is recognised, and how many old chunks a
//! shorter new version leaves to delete.

use gridfn_sdk::kv;

use crate::failure::Failure;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Embedded {
    /// sha256 of the document's text, hex.
    pub hash: String,
    /// Chunks stored, with ids `<url>#0` … `<url>#<chunks - 1>`.
    pub chunks: usize,
    /// The model the vectors came from: a new model re-embeds everything.
    /// Absent in records written before it was kept.
    #[serde(default)]
    pub model: Option<String>,
}

fn key(document: &str) -> String {
    format!("doc/{document}")
}

pub fn load(document: &str) -> Result<Option<Embedded>, Failure> {
    match kv::get(&key(document)) {
        // A record this handler cannot read is treated as none: the document
        // is embedded again, which rewrites it.
        Ok(value) => Ok(value.and_then(|bytes| serde_json::from_slice(&bytes).ok())),
        Err(error) => Err(kv_failure(error)),
    }
}

pub fn save(document: &str, embedded: &Embedded) -> Result<(), Failure> {
    let value = serde_json::to_vec(embedded).expect("a record serializes");
    kv::set(&key(document), &value).map_err(kv_failure)
}

pub fn forget(document: &str) -> Result<(), Failure> {
    kv::delete(&key(document)).map_err(kv_failure)
}

fn kv_failure(error: kv::Error) -> Failure {
    match error {
        kv::Error::Denied => Failure::Permanent(
            "the kv capability is not granted: set kv = true in [handler.capabilities] (it remembers what was embedded)"
                .into(),
        ),
        kv::Error::TooLarge => {
            Failure::Permanent("the blob URL is too long for a kv key (512 bytes at most, with doc/)".into())
        }
        kv::Error::Store(problem) => Failure::Transient { reason: format!("kv store: {problem}"), after: None },
    }
}
