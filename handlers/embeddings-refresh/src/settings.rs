//! The handler's `[handler.capabilities] config`, parsed once per event into
//! values that can only be valid; a bad or missing key is a [`ConfigError`]
//! that names it (the event is rejected with that text, and can be replayed
//! once the manifest is fixed).
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `embeddings_url` | — | OpenAI's `…/v1/embeddings`, or Azure OpenAI's `…/openai/deployments/D/embeddings?api-version=…` |
//! | `embeddings_key` | none | sent as `api-key` to an Azure OpenAI URL, as `Authorization: Bearer` to any other |
//! | `model` | — | sent as `model`, and kept in each vector's metadata |
//! | `batch_size` | `64` | chunks per embeddings request |
//! | `chroma_url` | — | e.g. `http://127.0.0.1:8000` (default tenant and database) |
//! | `collection` | — | the Chroma collection, created when missing |
//! | `storage_sas` | none | a SAS token appended to the blob URL as its query |
//! | `storage_account_key` | none | the account key, for Shared Key authorization (not with `storage_sas`); neither: anonymous reads |
//! | `chunk_size` | `800` | characters per chunk at most |
//! | `chunk_overlap` | `100` | characters a chunk repeats from the end of the one before, at most |
//! | `content_types` | `text/plain,text/markdown` | the blobs' `data.contentType`s that are embedded |

use std::fmt;
use std::num::NonZeroUsize;

use base64::Engine;

use crate::chunk::ChunkSpec;

#[derive(Debug, Clone)]
pub struct Settings {
    pub embeddings: EmbeddingsApi,
    pub chroma: ChromaLocation,
    pub storage: StorageAuth,
    pub chunking: ChunkSpec,
    pub content_types: ContentTypes,
}

/// An OpenAI-compatible embeddings endpoint.
#[derive(Debug, Clone)]
pub struct EmbeddingsApi {
    pub url: String,
    /// The header that carries the key, and its value; `None` sends no key
    /// (a local server).
    pub auth: Option<(&'static str, String)>,
    pub model: String,
    pub batch_size: NonZeroUsize,
}

#[derive(Debug, Clone)]
pub struct ChromaLocation {
    pub url: String,
    pub collection: String,
}

/// How the handler proves it may read the blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageAuth {
    /// A public container (or Azurite with a public one).
    Anonymous,
    /// The SAS token, without a leading `?`.
    Sas(String),
    /// The account key, decoded from base64.
    SharedKey(Vec<u8>),
}

/// Media types (lower case, without parameters) whose blobs are embedded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentTypes(Vec<String>);

impl ContentTypes {
    /// Whether `content_type` (e.g. `text/plain; charset=utf-8`) is one of them.
    pub fn accepts(&self, content_type: &str) -> bool {
        let media_type = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
        self.0.contains(&media_type)
    }

    pub fn list(&self) -> String {
        self.0.join(", ")
    }
}

/// A config key that is missing or holds something unusable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: &'static str,
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "config key {:?} {} (in [handler.capabilities] config of gridfn.toml)", self.key, self.problem)
    }
}

impl std::error::Error for ConfigError {}

impl Settings {
    /// Reads every key through `lookup` (`gridfn_sdk::config::get` in the
    /// handler); the first problem found is the error.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Settings, ConfigError> {
        let config = Lookup(lookup);
        let url = config.url("embeddings_url")?;
        let auth = config.optional("embeddings_key").map(|key| {
            if url.contains("/openai/deployments/") {
                ("api-key", key)
            } else {
                ("authorization", format!("Bearer {key}"))
            }
        });
        let embeddings = EmbeddingsApi {
            url,
            auth,
            model: config.required("model")?,
            batch_size: config.positive("batch_size", 64)?,
        };
        let chroma = ChromaLocation {
            url: config.url("chroma_url")?.trim_end_matches('/').to_owned(),
            collection: config.required("collection")?,
        };
        let storage = match (config.optional("storage_sas"), config.optional("storage_account_key")) {
            (Some(_), Some(_)) => {
                return Err(ConfigError {
                    key: "storage_sas",
                    problem: "is set together with storage_account_key: set one of them".into(),
                });
            }
            (Some(sas), None) => StorageAuth::Sas(sas.trim_start_matches('?').to_owned()),
            (None, Some(key)) => {
                let decoded =
                    base64::engine::general_purpose::STANDARD.decode(key.trim()).map_err(|e| ConfigError {
                        key: "storage_account_key",
                        problem: format!("is not base64 ({e}): copy the key from the storage account's access keys"),
                    })?;
                StorageAuth::SharedKey(decoded)
            }
            (None, None) => StorageAuth::Anonymous,
        };
        let size = config.positive("chunk_size", 800)?.get();
        let overlap = config.number("chunk_overlap", 100)?;
        let chunking = ChunkSpec::new(size, overlap).ok_or_else(|| ConfigError {
            key: "chunk_overlap",
            problem: format!("is {overlap}: it must be less than chunk_size ({size})"),
        })?;
        let types = config.optional("content_types").unwrap_or_else(|| "text/plain,text/markdown".into());
        let types: Vec<String> =
            types.split(',').map(|t| t.trim().to_ascii_lowercase()).filter(|t| !t.is_empty()).collect();
        if types.is_empty() {
            return Err(ConfigError { key: "content_types", problem: "lists no content type".into() });
        }
        Ok(Settings { embeddings, chroma, storage, chunking, content_types: ContentTypes(types) })
    }
}

struct Lookup<F>(F);

impl<F: Fn(&str) -> Option<String>> Lookup<F> {
    /// The value, with an empty one counted as unset.
    fn optional(&self, key: &str) -> Option<String> {
        (self.0)(key).filter(|value| !value.trim().is_empty())
    }

    fn required(&self, key: &'static str) -> Result<String, ConfigError> {
        self.optional(key).ok_or(ConfigError { key, problem: "is missing".into() })
    }

    fn url(&self, key: &'static str) -> Result<String, ConfigError> {
        let url = self.required(key)?;
        if url.starts_with("http://") || url.starts_with("https://") {
            Ok(url)
        } else {
            Err(ConfigError { key, problem: format!("is {url:?}, not an http:// or https:// URL") })
        }
    }

    fn number(&self, key: &'static str, default: usize) -> Result<usize, ConfigError> {
        match self.optional(key) {
            None => Ok(default),
            Some(text) => text
                .trim()
                .parse()
                .map_err(|_| ConfigError { key, problem: format!("is {text:?}, not a whole number") }),
        }
    }

    fn positive(&self, key: &'static str, default: usize) -> Result<NonZeroUsize, ConfigError> {
        let value = self.number(key, default)?;
        NonZeroUsize::new(value).ok_or(ConfigError { key, problem: "is 0: it must be at least 1".into() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let base = [
            ("embeddings_url", "http://127.0.0.1:8100/v1/embeddings"),
            ("model", "wordllama-l2-supercat-256"),
            ("chroma_url", "http://127.0.0.1:8000/"),
            ("collection", "documents"),
        ];
        Settings::from_lookup(|key| {
            pairs.iter().chain(base.iter()).find(|(k, _)| *k == key).map(|(_, v)| v.to_string())
        })
    }

    fn error(pairs: &[(&str, &str)]) -> String {
        parse(pairs).unwrap_err().to_string()
    }

    #[test]
    fn the_minimal_config_takes_the_documented_defaults() {
        let settings = parse(&[]).unwrap();
        assert_eq!(settings.embeddings.batch_size.get(), 64);
        assert_eq!(settings.embeddings.auth, None);
        assert_eq!(settings.chroma.url, "http://127.0.0.1:8000", "a trailing slash is dropped");
        assert_eq!(settings.storage, StorageAuth::Anonymous);
        assert_eq!(settings.chunking, ChunkSpec::new(800, 100).unwrap());
        assert!(settings.content_types.accepts("text/plain"));
        assert!(settings.content_types.accepts("Text/Markdown; charset=utf-8"));
        assert!(!settings.content_types.accepts("application/pdf"));
    }

    #[test]
    fn the_url_shape_decides_how_the_key_is_sent() {
        let openai = parse(&[("embeddings_key", "k1")]).unwrap();
        assert_eq!(openai.embeddings.auth, Some(("authorization", "Bearer k1".to_owned())));
        let azure = parse(&[
            ("embeddings_url", "https://x.openai.azure.com/openai/deployments/d/embeddings?api-version=2024-02-01"),
            ("embeddings_key", "k2"),
        ])
        .unwrap();
        assert_eq!(azure.embeddings.auth, Some(("api-key", "k2".to_owned())));
    }

    #[test]
    fn storage_credentials_are_one_or_the_other() {
        let sas = parse(&[("storage_sas", "?sv=2024&sig=abc")]).unwrap();
        assert_eq!(sas.storage, StorageAuth::Sas("sv=2024&sig=abc".into()));
        let key = parse(&[("storage_account_key", "AAEC")]).unwrap();
        assert_eq!(key.storage, StorageAuth::SharedKey(vec![0, 1, 2]));
        assert!(error(&[("storage_sas", "sv=1"), ("storage_account_key", "AAEC")]).contains("set one of them"));
        assert!(
            error(&[("storage_account_key", "not base64!")])
                .starts_with("config key \"storage_account_key\" is not base64")
        );
    }

    #[test]
    fn each_bad_key_is_named() {
        let missing = Settings::from_lookup(|_| None).unwrap_err();
        assert_eq!(missing, ConfigError { key: "embeddings_url", problem: "is missing".into() });
        assert!(
            error(&[("chroma_url", "127.0.0.1:8000")])
                .starts_with("config key \"chroma_url\" is \"127.0.0.1:8000\", not an http")
        );
        assert!(error(&[("batch_size", "0")]).starts_with("config key \"batch_size\" is 0"));
        assert!(
            error(&[("chunk_size", "big")]).starts_with("config key \"chunk_size\" is \"big\", not a whole number")
        );
        assert!(
            error(&[("chunk_size", "100"), ("chunk_overlap", "100")])
                .starts_with("config key \"chunk_overlap\" is 100: it must be less than chunk_size (100)")
        );
        assert!(error(&[("content_types", " , ")]).starts_with("config key \"content_types\" lists no content type"));
        assert!(error(&[("model", "")]).starts_with("config key \"model\" is missing"), "empty counts as unset");
    }
}
