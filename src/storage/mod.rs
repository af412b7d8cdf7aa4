//! Durable state in one SQLite file in the data directory: model versions, completion
//! records (so later feedback can refer to an answer by id) and API keys (hashed).
//!
//! One connection behind a mutex: writes are small and rare next to generation.

mod feedback;
mod learning;
mod rollout;

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
    eval TEXT,
    UNIQUE (name, number)
);
CREATE TABLE IF NOT EXISTS completions (
    id TEXT PRIMARY KEY,
    version TEXT NOT NULL,
    source TEXT NOT NULL,
    user_hash TEXT,
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
    user_hash TEXT,
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
CREATE TABLE IF NOT EXISTS conversations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    completion_id TEXT NOT NULL,
    source TEXT NOT NULL,
    user_hash TEXT,
    version TEXT NOT NULL,
    created INTEGER NOT NULL,
    expires INTEGER NOT NULL,
    messages TEXT NOT NULL,
    answers TEXT NOT NULL,
    safety TEXT,
    flagged INTEGER NOT NULL,
    latency_ms INTEGER,
    prompt_tokens INTEGER,
    completion_tokens INTEGER
);
CREATE INDEX IF NOT EXISTS conversations_user ON conversations (user_hash);
CREATE INDEX IF NOT EXISTS conversations_expires ON conversations (expires);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at INTEGER NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    subject TEXT,
    detail TEXT
);
CREATE TABLE IF NOT EXISTS api_keys (
    key_hash TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    created INTEGER NOT NULL
);
";

pub use feedback::{FeedbackRow, SourceRow};
pub use learning::{Consumed, RunRow};
pub use rollout::{now_ms, ServingEntry, Switch};

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
    /// Salted hash of the end user, for erasure.
    pub user_hash: Option<&'a str>,
}

/// A conversation to log (already anonymized by the caller).
pub struct NewConversation<'a> {
    /// The completion it belongs to.
    pub completion_id: &'a str,
    /// The API key's source.
    pub source: &'a str,
    /// Salted hash of the end user, for erasure.
    pub user_hash: Option<&'a str>,
    /// The version that answered.
    pub version: &'a str,
    /// Unix seconds after which retention deletes it.
    pub expires: i64,
    /// Anonymized messages (JSON).
    pub messages: &'a str,
    /// Anonymized answers (JSON array).
    pub answers: &'a str,
    /// Safety verdicts (JSON).
    pub safety: &'a str,
    /// Whether any safety check acted on it (kept out of training exports).
    pub flagged: bool,
    /// End-to-end latency.
    pub latency_ms: i64,
    /// Prompt tokens.
    pub prompt_tokens: i64,
    /// Completion tokens.
    pub completion_tokens: i64,
}

/// A logged conversation, as exported.
#[derive(Debug, Clone)]
pub struct ConversationRow {
    /// Row id.
    pub id: i64,
    /// The completion.
    pub completion_id: String,
    /// The version that answered.
    pub version: String,
    /// Anonymized messages (JSON).
    pub messages: String,
    /// Anonymized answers (JSON array).
    pub answers: String,
    /// Whether a safety check acted on it.
    pub flagged: bool,
}

/// What an erasure removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Erased {
    /// Conversation log rows.
    pub conversations: usize,
    /// Completion records.
    pub completions: usize,
    /// Review-queue items.
    pub reviews: usize,
    /// Feedback items.
    pub feedback: usize,
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

/// Brings databases written by earlier versions up to the current schema.
fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let has_table = |t: &str| -> rusqlite::Result<bool> {
        conn.query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
            [t],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n > 0)
    };
    let has_column = |t: &str, c: &str| -> rusqlite::Result<bool> {
        let mut stmt = conn.prepare(&format!("PRAGMA table_info({t})"))?;
        let names = stmt.query_map([], |r| r.get::<_, String>(1))?;
        for n in names {
            if n? == c {
                return Ok(true);
            }
        }
        Ok(false)
    };
    if has_table("versions")? && !has_column("versions", "eval")? {
        conn.execute_batch("ALTER TABLE versions ADD COLUMN eval TEXT;")?;
    }
    for table in ["completions", "reviews"] {
        if has_table(table)? && !has_column(table, "user_hash")? {
            conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN user_hash TEXT;"))?;
        }
    }
    Ok(())
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
        // Deleted rows are overwritten, so erased data does not linger in free pages.
        conn.pragma_update(None, "secure_delete", "ON")
            .map_err(open)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open)?;
        migrate(&conn).map_err(open)?;
        conn.execute_batch(SCHEMA).map_err(open)?;
        conn.execute_batch(feedback::SCHEMA).map_err(open)?;
        conn.execute_batch(learning::SCHEMA).map_err(open)?;
        conn.execute_batch(rollout::SCHEMA).map_err(open)?;
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
        user_hash: Option<&str>,
        choices: usize,
        prompt_tokens: usize,
    ) -> Result<()> {
        self.conn().execute(
            "INSERT INTO completions (id, version, source, user_hash, created, choices, prompt_tokens) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![id, version, source, user_hash, now_unix(), choices as i64, prompt_tokens as i64],
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
            "INSERT INTO reviews (created, completion_id, direction, categories, scores, text, held, status, user_hash) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'pending', ?8)",
            params![
                now_unix(),
                r.completion_id,
                r.direction,
                r.categories.join(","),
                r.scores.to_string(),
                r.text,
                r.held,
                r.user_hash
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

    /// Logs a conversation (the caller has anonymized it).
    pub fn insert_conversation(&self, c: &NewConversation<'_>) -> Result<i64> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO conversations (completion_id, source, user_hash, version, created, expires, messages, \
             answers, safety, flagged, latency_ms, prompt_tokens, completion_tokens) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
            params![
                c.completion_id,
                c.source,
                c.user_hash,
                c.version,
                now_unix(),
                c.expires,
                c.messages,
                c.answers,
                c.safety,
                c.flagged,
                c.latency_ms,
                c.prompt_tokens,
                c.completion_tokens
            ],
        )?;
        Ok(conn.last_insert_rowid())
    }

    /// Logged conversations, oldest first (`unflagged_only`: for training exports).
    pub fn conversations(&self, unflagged_only: bool) -> Result<Vec<ConversationRow>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT id, completion_id, version, messages, answers, flagged FROM conversations \
             WHERE (?1 = 0 OR flagged = 0) ORDER BY id",
        )?;
        let rows = stmt.query_map([unflagged_only], |r| {
            Ok(ConversationRow {
                id: r.get(0)?,
                completion_id: r.get(1)?,
                version: r.get(2)?,
                messages: r.get(3)?,
                answers: r.get(4)?,
                flagged: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// How many conversations are logged.
    pub fn conversation_count(&self) -> Result<i64> {
        Ok(self
            .conn()
            .query_row("SELECT COUNT(*) FROM conversations", [], |r| r.get(0))?)
    }

    /// Deletes conversations whose retention ran out; returns how many.
    pub fn delete_expired(&self, now: i64) -> Result<usize> {
        Ok(self
            .conn()
            .execute("DELETE FROM conversations WHERE expires <= ?1", [now])?)
    }

    /// Erases everything stored about one end user (by `user_hash`), restricted to
    /// `source` unless `None` (operators), and records the erasure in the audit log
    /// without the erased content. Deleted pages are zeroed (`secure_delete`) and the
    /// write-ahead log is truncated, so the content does not linger in the files.
    pub fn erase_user(&self, user_hash: &str, source: Option<&str>, actor: &str) -> Result<Erased> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let scoped = |table: &str| {
            format!("DELETE FROM {table} WHERE user_hash = ?1 AND (?2 IS NULL OR source = ?2)")
        };
        let conversations = tx.execute(&scoped("conversations"), params![user_hash, source])?;
        // Review items belong to the user's completions.
        let reviews = tx.execute(
            "DELETE FROM reviews WHERE user_hash = ?1 AND (?2 IS NULL OR completion_id IN \
             (SELECT id FROM completions WHERE source = ?2))",
            params![user_hash, source],
        )?;
        let feedback = if tx.query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'feedback'",
            [],
            |r| r.get::<_, i64>(0),
        )? > 0
        {
            tx.execute(
                "DELETE FROM feedback WHERE user_hash = ?1 AND (?2 IS NULL OR source = ?2 OR source LIKE ?2 || '/%')",
                params![user_hash, source],
            )?
        } else {
            0
        };
        let completions = tx.execute(&scoped("completions"), params![user_hash, source])?;
        let erased = Erased {
            conversations,
            completions,
            reviews,
            feedback,
        };
        tx.execute(
            "INSERT INTO audit (at, actor, action, subject, detail) VALUES (?1, ?2, 'erase_user', ?3, ?4)",
            params![
                now_unix(),
                actor,
                user_hash,
                serde_json::to_string(&erased).unwrap_or_default()
            ],
        )?;
        tx.commit()?;
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")?;
        Ok(erased)
    }

    /// Adds an audit entry (never with user content).
    pub fn audit_event(
        &self,
        actor: &str,
        action: &str,
        subject: Option<&str>,
        detail: &serde_json::Value,
    ) -> Result<()> {
        self.conn().execute(
            "INSERT INTO audit (at, actor, action, subject, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![now_unix(), actor, action, subject, detail.to_string()],
        )?;
        Ok(())
    }

    /// Audit entries, newest first.
    pub fn audit(&self, limit: usize) -> Result<Vec<serde_json::Value>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT id, at, actor, action, subject, detail FROM audit ORDER BY id DESC LIMIT ?1",
        )?;
        let rows = stmt.query_map([limit as i64], |r| {
            Ok(serde_json::json!({
                "id": r.get::<_, i64>(0)?,
                "at": r.get::<_, i64>(1)?,
                "actor": r.get::<_, String>(2)?,
                "action": r.get::<_, String>(3)?,
                "subject": r.get::<_, Option<String>>(4)?,
                "detail": r.get::<_, Option<String>>(5)?
                    .and_then(|d| serde_json::from_str::<serde_json::Value>(&d).ok()),
            }))
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }
}
