//! The version registry: every model version is immutable and content-hashed, with a
//! snapshot folder (`versions/<id>/manifest.json`) and a row in SQLite. The base model
//! is version 1. Exactly one version serves; requests resolve their version once and
//! finish on it even if the serving version changes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use serde::Serialize;

use crate::model::LoraAdapter;
use crate::storage::{self, now_unix, Store, VersionRow};

/// Registry errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Storage failed.
    #[error(transparent)]
    Storage(#[from] storage::Error),
    /// The snapshot folder could not be written.
    #[error("cannot write snapshot {path}: {source}")]
    Snapshot {
        /// Folder or file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The data directory holds a different base model under this name.
    #[error(
        "the data directory already has {id} with content hash {stored}, but the loaded model hashes to {loaded}; \
         use another --data-dir for a different base model"
    )]
    BaseMismatch {
        /// Version id.
        id: String,
        /// Hash on record.
        stored: String,
        /// Hash of the loaded weights.
        loaded: String,
    },
    /// No version serves.
    #[error("no version of {0} is serving")]
    NothingServing(String),
}

/// Lifecycle state of a version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Answers requests that do not pin a version.
    Serving,
    /// Trained, not yet evaluated.
    Candidate,
    /// Serving a share of traffic under observation.
    Canary,
    /// Served once, no longer.
    Retired,
    /// Failed evaluation.
    Rejected,
}

impl Status {
    fn parse(s: &str) -> Self {
        match s {
            "serving" => Self::Serving,
            "canary" => Self::Canary,
            "retired" => Self::Retired,
            "rejected" => Self::Rejected,
            _ => Self::Candidate,
        }
    }
}

/// One immutable model version.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Version {
    /// `name@vN`.
    pub id: String,
    /// Model name.
    pub name: String,
    /// Version number.
    pub number: i64,
    /// The version it was trained from.
    pub parent: Option<String>,
    /// Lifecycle state.
    pub status: Status,
    /// Unix seconds.
    pub created: i64,
    /// sha256 of the weights (base) or adapter.
    pub content_hash: String,
}

impl From<VersionRow> for Version {
    fn from(r: VersionRow) -> Self {
        Self {
            status: Status::parse(&r.status),
            id: r.id,
            name: r.name,
            number: r.number,
            parent: r.parent,
            created: r.created,
            content_hash: r.content_hash,
        }
    }
}

/// Versions of one base model.
pub struct Registry {
    store: Arc<Store>,
    name: String,
    versions: RwLock<Vec<Version>>,
    adapters: RwLock<HashMap<String, Arc<LoraAdapter>>>,
}

impl Registry {
    /// Opens the registry for base model `name` with weights hashing to `content_hash`,
    /// creating version 1 (serving) on first use.
    pub fn open(
        store: Arc<Store>,
        data_dir: &Path,
        name: &str,
        content_hash: &str,
    ) -> Result<Self, Error> {
        let rows = store.versions()?;
        let id = format!("{name}@v1");
        match rows.iter().find(|r| r.id == id) {
            Some(v1) if v1.content_hash != content_hash => {
                return Err(Error::BaseMismatch {
                    id,
                    stored: v1.content_hash.clone(),
                    loaded: content_hash.to_string(),
                })
            }
            Some(_) => {}
            None => {
                let row = VersionRow {
                    id: id.clone(),
                    name: name.to_string(),
                    number: 1,
                    parent: None,
                    status: "serving".into(),
                    created: now_unix(),
                    content_hash: content_hash.to_string(),
                    adapter_path: None,
                };
                write_manifest(data_dir, &row)?;
                store.insert_version(&row)?;
            }
        }
        let versions = store
            .versions()?
            .into_iter()
            .filter(|r| r.name == name)
            .map(Version::from)
            .collect();
        Ok(Self {
            store,
            name: name.to_string(),
            versions: RwLock::new(versions),
            adapters: RwLock::new(HashMap::new()),
        })
    }

    /// The base model's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Every version, oldest first.
    pub fn list(&self) -> Vec<Version> {
        self.versions.read().map(|v| v.clone()).unwrap_or_default()
    }

    /// The version answering unpinned requests.
    pub fn serving(&self) -> Result<Version, Error> {
        self.list()
            .into_iter()
            .rev()
            .find(|v| v.status == Status::Serving)
            .ok_or_else(|| Error::NothingServing(self.name.clone()))
    }

    /// Resolves what a request names: `deployment` or the model name mean the serving
    /// version; `NAME@vN` pins one (if it can serve).
    pub fn resolve(&self, requested: &str, deployment: &str) -> Option<Version> {
        if requested == deployment || requested == self.name {
            return self.serving().ok();
        }
        self.list()
            .into_iter()
            .find(|v| v.id == requested && v.status != Status::Rejected)
    }

    /// The adapter a version applies on top of the base (`None` for the base).
    pub fn adapter(&self, version: &Version) -> Option<Arc<LoraAdapter>> {
        self.adapters.read().ok()?.get(&version.id).cloned()
    }

    /// The store this registry writes to.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }
}

fn write_manifest(data_dir: &Path, row: &VersionRow) -> Result<(), Error> {
    let dir = data_dir.join("versions").join(&row.id);
    let err = |source| Error::Snapshot {
        path: dir.clone(),
        source,
    };
    std::fs::create_dir_all(&dir).map_err(err)?;
    let manifest = serde_json::json!({
        "id": row.id,
        "name": row.name,
        "number": row.number,
        "parent": row.parent,
        "created": row.created,
        "content_hash": row.content_hash,
        "adapter": row.adapter_path,
    });
    let text = serde_json::to_string_pretty(&manifest).unwrap_or_default();
    std::fs::write(dir.join("manifest.json"), text).map_err(err)
}
