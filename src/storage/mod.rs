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
CREATE TABLE IF NOT EXISTS reviews (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created INTEGER NOT NULL,
    completion_id TEXT,
    direction TEXT NOT NULL,
    categories TEXT NOT NULL,
    scores TEXT NOT NULL,
    text TEXT NOT NULL,
    held INTEGER NOT NULL,
    status TEXT NOT NULL,
    decision TEXT,
    note TEXT,
    decided INTEGER
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

/// An item in the human review queue.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ReviewRow {
    /// Queue id.
    pub id: i64,
    /// Unix seconds.
    pub created: i64,
    /// The completion it belongs to.
    pub completion_id: Option<String>,
    /// `input` or `output`.
    pub direction: String,
    /// Categories that escalated it.
    pub categories: Vec<String>,
    /// Score per category (JSON object).
    pub scores: serde_json::Value,
    /// The text, with personal data redacted before it was stored.
    pub text: String,
    /// Whether the answer was withheld pending this review.
    pub held: bool,
    /// `pending` or `decided`.
    pub status: String,
    /// The reviewer's decision (`approve` or `reject`).
    pub decision: Option<String>,
    /// The reviewer's note.
    pub note: Option<String>,
    /// When it was decided.
    pub decided: Option<i64>,
}

/// A new review item.
pub struct NewReview<'a> {
    /// The completion it belongs to.
    pub completion_id: Option<&'a str>,
    /// `input` or `output`.
    pub direction: &'a str,
    /// Categories that escalated it.
    pub categories: &'a [String],
    /// Scores (JSON).
    pub scores: &'a serde_json::Value,
    /// The text (redacted by the caller).
    pub text: &'a str,
    /// Whether the answer was withheld.
    pub held: bool,
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

    /// Queues an item for review; returns its id.
    pub fn insert_review(&self, r: &NewReview<'_>) -> Result<i64> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO reviews (created, completion_id, direction, categories, scores, text, held, status) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'pending')",
            params![
                now_unix(),
                r.completion_id,
                r.direction,
                r.categories.join(","),
                r.scores.to_string(),
                r.text,
                r.held
            ],
        )?;
        Ok(conn.last_insert_rowid())
    }

    fn review_from(r: &rusqlite::Row<'_>) -> rusqlite::Result<ReviewRow> {
        let cats: String = r.get(4)?;
        let scores: String = r.get(5)?;
        Ok(ReviewRow {
            id: r.get(0)?,
            created: r.get(1)?,
            completion_id: r.get(2)?,
            direction: r.get(3)?,
            categories: cats
                .split(',')
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect(),
            scores: serde_json::from_str(&scores).unwrap_or(serde_json::Value::Null),
            text: r.get(6)?,
            held: r.get(7)?,
            status: r.get(8)?,
            decision: r.get(9)?,
            note: r.get(10)?,
            decided: r.get(11)?,
        })
    }

    const REVIEW_COLUMNS: &'static str =
        "id, created, completion_id, direction, categories, scores, \
         text, held, status, decision, note, decided";

    /// Review items with `status` (`pending`, `decided`, or all with `None`), oldest first.
    pub fn reviews(&self, status: Option<&str>, limit: usize) -> Result<Vec<ReviewRow>> {
        let conn = self.conn();
        let sql = format!(
            "SELECT {} FROM reviews WHERE (?1 IS NULL OR status = ?1) ORDER BY id LIMIT ?2",
            Self::REVIEW_COLUMNS
        );
        let mut stmt = conn.prepare(&sql)?;
        let rows = stmt.query_map(params![status, limit as i64], Self::review_from)?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// One review item.
    pub fn review(&self, id: i64) -> Result<Option<ReviewRow>> {
        let sql = format!("SELECT {} FROM reviews WHERE id = ?1", Self::REVIEW_COLUMNS);
        Ok(self
            .conn()
            .query_row(&sql, [id], Self::review_from)
            .optional()?)
    }

    /// Records a decision on a pending item; false if it was not pending.
    pub fn decide_review(&self, id: i64, decision: &str, note: Option<&str>) -> Result<bool> {
        let n = self.conn().execute(
            "UPDATE reviews SET status = 'decided', decision = ?2, note = ?3, decided = ?4 \
             WHERE id = ?1 AND status = 'pending'",
            params![id, decision, note, now_unix()],
        )?;
        Ok(n == 1)
    }

    /// How many items wait for review.
    pub fn pending_reviews(&self) -> Result<i64> {
        Ok(self.conn().query_row(
            "SELECT COUNT(*) FROM reviews WHERE status = 'pending'",
            [],
            |r| r.get(0),
        )?)
    }
}
