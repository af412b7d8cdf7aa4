//! Durable state in one SQLite file in the data directory: model versions, completion
//! records (so later feedback can refer to an answer by id) and API keys (hashed).
//!
//! One connection behind a mutex: writes are small and rare next to generation.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};

/// Storage errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database could not be opened or created.
    #[error("cannot open the database {path}: {source}")]
    Open {
        /// Database file.
        path: PathBuf,
        /// Cause.
        source: rusqlite::Error,
    },
    /// The data directory could not be created.
    #[error("cannot create the data directory {path}: {source}")]
    CreateDir {
        /// Directory.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A query failed.
    #[error("database: {0}")]
    Sql(#[from] rusqlite::Error),
}

/// Result alias for storage.
pub type Result<T, E = Error> = std::result::Result<T, E>;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS versions (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    number INTEGER NOT NULL,
    parent TEXT,
    status TEXT NOT NULL,
    created INTEGER NOT NULL,
    content_hash TEXT NOT NULL,
    adapter_path TEXT,
    UNIQUE (name, number)
);
CREATE TABLE IF NOT EXISTS completions (
    id TEXT PRIMARY KEY,
    version TEXT NOT NULL,
    source TEXT NOT NULL,
    created INTEGER NOT NULL,
    choices INTEGER NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER,
    finish_reasons TEXT
);
CREATE TABLE IF NOT EXISTS api_keys (
    key_hash TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    created INTEGER NOT NULL
);
";

/// A row of the `versions` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionRow {
    /// `name@vN`.
    pub id: String,
    /// Model name.
    pub name: String,
    /// N.
    pub number: i64,
    /// Parent version id.
    pub parent: Option<String>,
    /// `serving`, `candidate`, `canary`, `retired` or `rejected`.
    pub status: String,
    /// Unix seconds.
    pub created: i64,
    /// Hash of the weights (base) or adapter.
    pub content_hash: String,
    /// Adapter file, for versions other than a base.
    pub adapter_path: Option<String>,
}

/// The database.
pub struct Store {
    conn: Mutex<Connection>,
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Store {
    /// Opens (creating if needed) `tether.db` in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let path = dir.join("tether.db");
        let open = |source| Error::Open {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(|source| Error::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
        let conn = Connection::open(&path).map_err(open)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open)?;
        conn.execute_batch(SCHEMA).map_err(open)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every version, oldest first.
    pub fn versions(&self) -> Result<Vec<VersionRow>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT id, name, number, parent, status, created, content_hash, adapter_path \
             FROM versions ORDER BY name, number",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(VersionRow {
                id: r.get(0)?,
                name: r.get(1)?,
                number: r.get(2)?,
                parent: r.get(3)?,
                status: r.get(4)?,
                created: r.get(5)?,
                content_hash: r.get(6)?,
                adapter_path: r.get(7)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// Inserts a version; ids are unique and never reused.
    pub fn insert_version(&self, v: &VersionRow) -> Result<()> {
        self.conn().execute(
            "INSERT INTO versions (id, name, number, parent, status, created, content_hash, adapter_path) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![v.id, v.name, v.number, v.parent, v.status, v.created, v.content_hash, v.adapter_path],
        )?;
        Ok(())
    }

    /// Records a completion id before its answer is sent.
    pub fn insert_completion(
        &self,
        id: &str,
        version: &str,
        source: &str,
        choices: usize,
        prompt_tokens: usize,
    ) -> Result<()> {
        self.conn().execute(
            "INSERT INTO completions (id, version, source, created, choices, prompt_tokens) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![id, version, source, now_unix(), choices as i64, prompt_tokens as i64],
        )?;
        Ok(())
    }

    /// Completes a completion record with its outcome.
    pub fn finish_completion(
        &self,
        id: &str,
        completion_tokens: usize,
        finish_reasons: &str,
    ) -> Result<()> {
        self.conn().execute(
            "UPDATE completions SET completion_tokens = ?2, finish_reasons = ?3 WHERE id = ?1",
            params![id, completion_tokens as i64, finish_reasons],
        )?;
        Ok(())
    }

    /// The version that produced completion `id`, if it exists.
    pub fn completion_version(&self, id: &str) -> Result<Option<String>> {
        Ok(self
            .conn()
            .query_row("SELECT version FROM completions WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .optional()?)
    }

    /// Stores an API key's hash for `source`.
    pub fn insert_key(&self, key_hash: &str, source: &str) -> Result<()> {
        self.conn().execute(
            "INSERT INTO api_keys (key_hash, source, created) VALUES (?1, ?2, ?3)",
            params![key_hash, source, now_unix()],
        )?;
        Ok(())
    }

    /// The source of a key hash, if the key exists.
    pub fn key_source(&self, key_hash: &str) -> Result<Option<String>> {
        Ok(self
            .conn()
            .query_row(
                "SELECT source FROM api_keys WHERE key_hash = ?1",
                [key_hash],
                |r| r.get(0),
            )
            .optional()?)
    }
}
