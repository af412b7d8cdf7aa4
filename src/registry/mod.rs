//! The version registry: every model version is immutable and content-hashed, with a
//! snapshot folder (`versions/<id>/manifest.json`) and a row in SQLite. The base model
//! is version 1. Exactly one version serves; requests resolve their version once and
//! finish on it even if the serving version changes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use serde::Serialize;

use candle_core::Device;

use crate::model::{LlamaConfig, LoraAdapter};
use crate::storage::{self, now_unix, Consumed, ServingEntry, Store, Switch, VersionRow};

/// The adapter file inside a version's snapshot folder.
pub const ADAPTER_FILE: &str = "adapter.safetensors";
/// The manifest file inside a version's snapshot folder.
pub const MANIFEST_FILE: &str = "manifest.json";

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
    /// A version's adapter could not be read.
    #[error("cannot load the adapter of {id}: {source}")]
    Adapter {
        /// Version id.
        id: String,
        /// Cause.
        source: crate::model::Error,
    },
    /// No such version.
    #[error("no version {0}")]
    Unknown(String),
    /// The change does not fit the version's state.
    #[error("{0}")]
    Conflict(String),
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
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Serving => "serving",
            Self::Candidate => "candidate",
            Self::Canary => "canary",
            Self::Retired => "retired",
            Self::Rejected => "rejected",
        }
    }

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
    /// Evaluation results (trained versions).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval: Option<serde_json::Value>,
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
            eval: None,
        }
    }
}

/// Versions of one base model.
pub struct Registry {
    store: Arc<Store>,
    data_dir: PathBuf,
    name: String,
    versions: RwLock<Vec<Version>>,
    adapters: RwLock<HashMap<String, Arc<LoraAdapter>>>,
}

impl Registry {
    /// Opens the registry for base model `name` with weights hashing to `content_hash`,
    /// creating version 1 (serving) on first use, loading every trained version's
    /// adapter, and removing snapshot folders that no committed version owns (left by
    /// a process killed while writing one).
    pub fn open(
        store: Arc<Store>,
        data_dir: &Path,
        name: &str,
        content_hash: &str,
        model: &LlamaConfig,
        device: &Device,
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
        remove_orphans(data_dir, &store.versions()?);
        let registry = Self {
            store,
            data_dir: data_dir.to_path_buf(),
            name: name.to_string(),
            versions: RwLock::new(Vec::new()),
            adapters: RwLock::new(HashMap::new()),
        };
        registry.refresh()?;
        let serving = registry.serving()?;
        registry
            .store
            .init_serving_log(name, &serving.id, serving.created * 1000)?;
        let mut adapters = HashMap::new();
        for v in registry.list() {
            if v.number == 1 || v.status == Status::Rejected {
                continue;
            }
            let path = registry.adapter_file(&v.id);
            let a = LoraAdapter::load(&path, model, device).map_err(|source| Error::Adapter {
                id: v.id.clone(),
                source,
            })?;
            adapters.insert(v.id.clone(), Arc::new(a));
        }
        if let Ok(mut m) = registry.adapters.write() {
            *m = adapters;
        }
        Ok(registry)
    }

    /// Re-reads versions (and their evaluations) from the store.
    fn refresh(&self) -> Result<(), Error> {
        let mut versions: Vec<Version> = self
            .store
            .versions()?
            .into_iter()
            .filter(|r| r.name == self.name)
            .map(Version::from)
            .collect();
        for v in &mut versions {
            if v.number > 1 {
                v.eval = self.store.version_eval(&v.id)?;
            }
        }
        if let Ok(mut w) = self.versions.write() {
            *w = versions;
        }
        Ok(())
    }

    /// The snapshot folder of version `id`.
    pub fn version_dir(&self, id: &str) -> PathBuf {
        self.data_dir.join("versions").join(id)
    }

    /// The adapter file of version `id`.
    pub fn adapter_file(&self, id: &str) -> PathBuf {
        self.version_dir(id).join(ADAPTER_FILE)
    }

    /// The number the next version gets.
    pub fn next_number(&self) -> i64 {
        self.list().iter().map(|v| v.number).max().unwrap_or(0) + 1
    }

    /// Commits a trained version whose snapshot folder is complete: its row and
    /// lineage go in one transaction, its adapter becomes available for serving.
    pub fn add_trained(
        &self,
        row: &VersionRow,
        adapter: LoraAdapter,
        consumed: &[Consumed],
    ) -> Result<Version, Error> {
        self.store.insert_trained_version(row, consumed)?;
        if let Ok(mut m) = self.adapters.write() {
            m.insert(row.id.clone(), Arc::new(adapter));
        }
        self.refresh()?;
        self.get(&row.id)
            .ok_or_else(|| Error::Unknown(row.id.clone()))
    }

    /// Records a new status (and evaluation, when given) with its audit entry.
    /// A rejected version's adapter leaves memory (requests holding it finish).
    pub fn mark(
        &self,
        id: &str,
        status: Status,
        eval: Option<&serde_json::Value>,
        actor: &str,
        action: &str,
        detail: &serde_json::Value,
    ) -> Result<(), Error> {
        self.get(id).ok_or_else(|| Error::Unknown(id.to_string()))?;
        self.store
            .change_status(id, status.as_str(), eval, actor, action, detail)?;
        if status == Status::Rejected {
            if let Ok(mut m) = self.adapters.write() {
                m.remove(id);
            }
        }
        self.refresh()
    }

    /// Replaces a version's stored evaluation (adding canary results, say).
    pub fn set_eval(&self, id: &str, eval: &serde_json::Value) -> Result<(), Error> {
        let v = self.get(id).ok_or_else(|| Error::Unknown(id.to_string()))?;
        self.store
            .set_version_status(id, v.status.as_str(), Some(eval))?;
        self.refresh()
    }

    /// Makes `id` the serving version atomically (the one serving now is retired),
    /// with its serving-log and audit entries: the next request that does not pin a
    /// version uses it; requests that already resolved theirs finish on them.
    /// Returns the version that served before.
    pub fn switch(
        &self,
        id: &str,
        action: &str,
        actor: &str,
        reason: &str,
        detail: &serde_json::Value,
    ) -> Result<Option<String>, Error> {
        let v = self.get(id).ok_or_else(|| Error::Unknown(id.to_string()))?;
        match v.status {
            Status::Serving => {
                return Err(Error::Conflict(format!("{id} is already serving")));
            }
            Status::Rejected => {
                return Err(Error::Conflict(format!(
                    "{id} was rejected ({}); it cannot serve",
                    rejection(&v)
                )));
            }
            _ => {}
        }
        if v.number > 1 && self.adapter(&v).is_none() {
            return Err(Error::Conflict(format!("{id} has no adapter loaded")));
        }
        let previous = self.store.switch_serving(&Switch {
            name: &self.name,
            to: id,
            action,
            actor,
            reason,
            detail,
        })?;
        self.refresh()?;
        Ok(previous)
    }

    /// Retires `id` (a candidate, canary or earlier version): it no longer serves
    /// any share of unpinned traffic, stays pinnable, and can be promoted again.
    pub fn retire(&self, id: &str, actor: &str, reason: &str) -> Result<(), Error> {
        let v = self.get(id).ok_or_else(|| Error::Unknown(id.to_string()))?;
        match v.status {
            Status::Serving => Err(Error::Conflict(format!(
                "{id} is serving; promote another version or roll back first"
            ))),
            Status::Retired => Err(Error::Conflict(format!("{id} is already retired"))),
            Status::Rejected => Err(Error::Conflict(format!("{id} was rejected"))),
            _ => self.mark(
                id,
                Status::Retired,
                None,
                actor,
                "retire",
                &serde_json::json!({"reason": reason, "was": v.status}),
            ),
        }
    }

    /// The version serving a share of traffic under observation, if any.
    pub fn canary(&self) -> Option<Version> {
        self.find(|v| v.status == Status::Canary)
    }

    /// The serving log, oldest first.
    pub fn serving_log(&self) -> Result<Vec<ServingEntry>, Error> {
        Ok(self.store.serving_log(&self.name)?)
    }

    /// The entry that made the version serving at `at_ms` serve.
    pub fn serving_at(&self, at_ms: i64) -> Result<Option<ServingEntry>, Error> {
        Ok(self.store.serving_at(&self.name, at_ms)?)
    }

    /// The last good version to roll back to: the most recent version that served
    /// before the current one, was never rolled back from, is not rejected, and can
    /// still be loaded.
    pub fn rollback_target(&self) -> Result<Option<Version>, Error> {
        let current = self.serving()?;
        let log = self.serving_log()?;
        let bad: std::collections::HashSet<String> = log
            .iter()
            .filter(|e| e.action == "rollback")
            .filter_map(|e| e.previous.clone())
            .collect();
        for e in log.iter().rev() {
            if e.version == current.id || bad.contains(&e.version) {
                continue;
            }
            if let Some(v) = self.get(&e.version) {
                if v.status != Status::Rejected && (v.number == 1 || self.adapter(&v).is_some()) {
                    return Ok(Some(v));
                }
            }
        }
        Ok(None)
    }

    /// `id` and its ancestors, newest first.
    pub fn lineage(&self, id: &str) -> Vec<Version> {
        let mut out = Vec::new();
        let mut cur = self.get(id);
        while let Some(v) = cur {
            cur = v.parent.as_deref().and_then(|p| self.get(p));
            out.push(v);
            if out.len() > 100_000 {
                break;
            }
        }
        out
    }

    /// One version by id.
    pub fn get(&self, id: &str) -> Option<Version> {
        self.find(|v| v.id == id)
    }

    /// The newest version matching `pred`, cloning only that one (requests call
    /// this; versions carry their evaluation reports).
    fn find(&self, pred: impl Fn(&Version) -> bool) -> Option<Version> {
        let versions = self.versions.read().ok()?;
        versions.iter().rev().find(|v| pred(v)).cloned()
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
        self.find(|v| v.status == Status::Serving)
            .ok_or_else(|| Error::NothingServing(self.name.clone()))
    }

    /// Resolves what a request names: `deployment` or the model name mean the serving
    /// version; `NAME@vN` pins one (if it can serve).
    pub fn resolve(&self, requested: &str, deployment: &str) -> Option<Version> {
        if requested == deployment || requested == self.name {
            return self.serving().ok();
        }
        self.find(|v| v.id == requested && v.status != Status::Rejected)
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
    std::fs::write(dir.join(MANIFEST_FILE), text).map_err(err)
}

/// What a rejected version's evaluation says failed.
fn rejection(v: &Version) -> String {
    v.eval
        .as_ref()
        .and_then(|e| e.get("failed"))
        .and_then(|f| f.as_array())
        .map(|f| {
            f.iter()
                .filter_map(|x| x.get("message").or(Some(x)).and_then(|m| m.as_str()))
                .collect::<Vec<_>>()
                .join("; ")
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "see its evaluation".into())
}

/// Removes snapshot folders that no committed version owns: temporary folders and
/// folders of versions whose commit never happened.
fn remove_orphans(data_dir: &Path, rows: &[VersionRow]) {
    let dir = data_dir.join("versions");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if rows.iter().any(|r| r.id == name) {
            continue;
        }
        tracing::warn!(folder = %e.path().display(), "removing an uncommitted version snapshot");
        let _ = std::fs::remove_dir_all(e.path());
    }
}
