//! Feedback items and feedback sources.

use rusqlite::{params, OptionalExtension};

use super::{now_unix, Result, Store};

/// Tables for feedback (created with the rest of the schema).
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS sources (
    id TEXT PRIMARY KEY,
    first_seen INTEGER NOT NULL,
    reliability REAL NOT NULL,
    trusted INTEGER NOT NULL DEFAULT 0,
    banned INTEGER NOT NULL DEFAULT 0,
    notes TEXT,
    items INTEGER NOT NULL DEFAULT 0,
    quarantined INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS feedback (
    id TEXT PRIMARY KEY,
    created INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    completion_id TEXT NOT NULL,
    version TEXT NOT NULL,
    source TEXT NOT NULL,
    user_hash TEXT,
    kind TEXT NOT NULL,
    choice INTEGER,
    value REAL,
    chosen INTEGER,
    rejected INTEGER,
    ranking TEXT,
    text TEXT,
    reason TEXT,
    prompt TEXT,
    answer TEXT,
    item_key TEXT NOT NULL,
    simhash INTEGER,
    status TEXT NOT NULL,
    status_reason TEXT,
    diversity REAL NOT NULL,
    screening REAL NOT NULL,
    review_id INTEGER,
    decision TEXT
);
CREATE INDEX IF NOT EXISTS feedback_source ON feedback (source);
CREATE INDEX IF NOT EXISTS feedback_item ON feedback (item_key);
CREATE INDEX IF NOT EXISTS feedback_created ON feedback (created_ms);
";

/// A feedback row.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FeedbackRow {
    /// `fb-…`.
    pub id: String,
    /// Unix milliseconds.
    pub created_ms: i64,
    /// The completion it refers to.
    pub completion_id: String,
    /// The version that produced the completion.
    pub version: String,
    /// The key's source.
    pub source: String,
    /// Salted end-user hash.
    #[serde(skip)]
    pub user_hash: Option<String>,
    /// `correction`, `rating` or `preference`.
    pub kind: String,
    /// The choice a correction or rating is about.
    pub choice: Option<i64>,
    /// A rating normalised to 0..1 (down = 0, up = 1, 1–5 → 0, .25, …, 1).
    pub value: Option<f64>,
    /// Preference: the better choice.
    pub chosen: Option<i64>,
    /// Preference: the worse choice.
    pub rejected: Option<i64>,
    /// Preference: a full ranking, best first (JSON array).
    pub ranking: Option<String>,
    /// The correction text (anonymized).
    pub text: Option<String>,
    /// The free-text reason (anonymized).
    pub reason: Option<String>,
    /// The prompt it refers to (anonymized messages, JSON), when the server still had it.
    pub prompt: Option<String>,
    /// The answer it refers to (anonymized); for a preference, every choice's answer
    /// as a JSON array.
    pub answer: Option<String>,
    /// What the item is about: the same prompt and answer share a key.
    pub item_key: String,
    /// SimHash of a correction's text.
    pub simhash: Option<i64>,
    /// `accepted`, `quarantined` or `rejected`.
    pub status: String,
    /// Why, when not accepted.
    pub status_reason: Option<String>,
    /// Diversity factor (repeats from one source weigh less).
    pub diversity: f64,
    /// Screening factor (borderline items weigh less).
    pub screening: f64,
    /// Review-queue item, when quarantined.
    pub review_id: Option<i64>,
    /// A reviewer's decision (`approve`, `reject`).
    pub decision: Option<String>,
}

/// A source of feedback.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SourceRow {
    /// The API key's source id (plus `/user-hash` for end users).
    pub id: String,
    /// Unix seconds.
    pub first_seen: i64,
    /// Learned reliability in 0..1.
    pub reliability: f64,
    /// Marked trusted by an operator.
    pub trusted: bool,
    /// Marked banned by an operator.
    pub banned: bool,
    /// Operator notes.
    pub notes: Option<String>,
    /// Feedback items received.
    pub items: i64,
    /// Of those, quarantined.
    pub quarantined: i64,
}

pub(super) const FEEDBACK_COLUMNS: &str = "id, created_ms, completion_id, version, source, user_hash, kind, choice, value, \
     chosen, rejected, ranking, text, reason, prompt, answer, item_key, simhash, status, status_reason, \
     diversity, screening, review_id, decision";

pub(super) fn feedback_from(r: &rusqlite::Row<'_>) -> rusqlite::Result<FeedbackRow> {
    Ok(FeedbackRow {
        id: r.get(0)?,
        created_ms: r.get(1)?,
        completion_id: r.get(2)?,
        version: r.get(3)?,
        source: r.get(4)?,
        user_hash: r.get(5)?,
        kind: r.get(6)?,
        choice: r.get(7)?,
        value: r.get(8)?,
        chosen: r.get(9)?,
        rejected: r.get(10)?,
        ranking: r.get(11)?,
        text: r.get(12)?,
        reason: r.get(13)?,
        prompt: r.get(14)?,
        answer: r.get(15)?,
        item_key: r.get(16)?,
        simhash: r.get(17)?,
        status: r.get(18)?,
        status_reason: r.get(19)?,
        diversity: r.get(20)?,
        screening: r.get(21)?,
        review_id: r.get(22)?,
        decision: r.get(23)?,
    })
}

fn source_from(r: &rusqlite::Row<'_>) -> rusqlite::Result<SourceRow> {
    Ok(SourceRow {
        id: r.get(0)?,
        first_seen: r.get(1)?,
        reliability: r.get(2)?,
        trusted: r.get(3)?,
        banned: r.get(4)?,
        notes: r.get(5)?,
        items: r.get(6)?,
        quarantined: r.get(7)?,
    })
}

const SOURCE_COLUMNS: &str =
    "id, first_seen, reliability, trusted, banned, notes, items, quarantined";

impl Store {
    /// Inserts a feedback item (durably: it is committed when this returns) and
    /// counts it for its source, creating the source with `initial` reliability.
    pub fn insert_feedback(&self, f: &FeedbackRow, initial: f64) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT OR IGNORE INTO sources (id, first_seen, reliability) VALUES (?1, ?2, ?3)",
            params![f.source, now_unix(), initial],
        )?;
        tx.execute(
            &format!(
                "INSERT INTO feedback ({FEEDBACK_COLUMNS}, created) VALUES \
                 (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25)"
            ),
            params![
                f.id, f.created_ms, f.completion_id, f.version, f.source, f.user_hash, f.kind, f.choice,
                f.value, f.chosen, f.rejected, f.ranking, f.text, f.reason, f.prompt, f.answer,
                f.item_key, f.simhash, f.status, f.status_reason, f.diversity, f.screening,
                f.review_id, f.decision, f.created_ms / 1000
            ],
        )?;
        tx.execute(
            "UPDATE sources SET items = items + 1, quarantined = quarantined + ?2 WHERE id = ?1",
            params![f.source, i64::from(f.status == "quarantined")],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// One feedback item.
    pub fn feedback(&self, id: &str) -> Result<Option<FeedbackRow>> {
        Ok(self
            .conn()
            .query_row(
                &format!("SELECT {FEEDBACK_COLUMNS} FROM feedback WHERE id = ?1"),
                [id],
                feedback_from,
            )
            .optional()?)
    }

    /// Feedback items, oldest first, optionally with one status; `since_ms` bounds age.
    pub fn feedback_list(
        &self,
        status: Option<&str>,
        since_ms: i64,
        limit: usize,
    ) -> Result<Vec<FeedbackRow>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {FEEDBACK_COLUMNS} FROM feedback WHERE (?1 IS NULL OR status = ?1) AND created_ms >= ?2 \
             ORDER BY created_ms, id LIMIT ?3"
        ))?;
        let rows = stmt.query_map(params![status, since_ms, limit as i64], feedback_from)?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// Whether `source` already sent feedback of `kind` on this completion and choice.
    pub fn feedback_exists(
        &self,
        source: &str,
        completion_id: &str,
        kind: &str,
        choice: Option<i64>,
    ) -> Result<bool> {
        Ok(self.conn().query_row(
            "SELECT COUNT(*) FROM feedback WHERE source = ?1 AND completion_id = ?2 AND kind = ?3 \
             AND (choice IS ?4) AND status != 'rejected'",
            params![source, completion_id, kind, choice],
            |r| r.get::<_, i64>(0),
        )? > 0)
    }

    /// How many items `source` sent about `item_key` (for diminishing repeats).
    pub fn feedback_repeats(&self, source: &str, item_key: &str) -> Result<i64> {
        Ok(self.conn().query_row(
            "SELECT COUNT(*) FROM feedback WHERE source = ?1 AND item_key = ?2",
            params![source, item_key],
            |r| r.get(0),
        )?)
    }

    /// Sets an item's status (and reason, review item).
    pub fn set_feedback_status(
        &self,
        id: &str,
        status: &str,
        reason: Option<&str>,
        review_id: Option<i64>,
    ) -> Result<()> {
        let conn = self.conn();
        let before: Option<(String, String)> = conn
            .query_row(
                "SELECT status, source FROM feedback WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        conn.execute(
            "UPDATE feedback SET status = ?2, status_reason = ?3, review_id = COALESCE(?4, review_id) WHERE id = ?1",
            params![id, status, reason, review_id],
        )?;
        if let Some((old, source)) = before {
            let delta = i64::from(status == "quarantined") - i64::from(old == "quarantined");
            if delta != 0 {
                conn.execute(
                    "UPDATE sources SET quarantined = quarantined + ?2 WHERE id = ?1",
                    params![source, delta],
                )?;
            }
        }
        Ok(())
    }

    /// Records a reviewer's decision on a feedback item.
    pub fn decide_feedback(&self, id: &str, decision: &str) -> Result<()> {
        self.conn().execute(
            "UPDATE feedback SET decision = ?2 WHERE id = ?1",
            params![id, decision],
        )?;
        Ok(())
    }

    /// Every source.
    pub fn sources(&self) -> Result<Vec<SourceRow>> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare(&format!("SELECT {SOURCE_COLUMNS} FROM sources ORDER BY id"))?;
        let rows = stmt.query_map([], source_from)?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// Every source, by id.
    pub fn sources_by_id(&self) -> Result<std::collections::HashMap<String, SourceRow>> {
        Ok(self
            .sources()?
            .into_iter()
            .map(|s| (s.id.clone(), s))
            .collect())
    }

    /// One source.
    pub fn source(&self, id: &str) -> Result<Option<SourceRow>> {
        Ok(self
            .conn()
            .query_row(
                &format!("SELECT {SOURCE_COLUMNS} FROM sources WHERE id = ?1"),
                [id],
                source_from,
            )
            .optional()?)
    }

    /// Operator flags and notes; creates the source if needed.
    pub fn update_source(
        &self,
        id: &str,
        trusted: Option<bool>,
        banned: Option<bool>,
        notes: Option<&str>,
        initial: f64,
    ) -> Result<()> {
        let conn = self.conn();
        conn.execute(
            "INSERT OR IGNORE INTO sources (id, first_seen, reliability) VALUES (?1, ?2, ?3)",
            params![id, now_unix(), initial],
        )?;
        conn.execute(
            "UPDATE sources SET trusted = COALESCE(?2, trusted), banned = COALESCE(?3, banned), \
             notes = COALESCE(?4, notes) WHERE id = ?1",
            params![id, trusted, banned, notes],
        )?;
        Ok(())
    }

    /// Stores learned reliabilities.
    pub fn set_reliabilities(&self, values: &[(String, f64)]) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        for (id, r) in values {
            tx.execute(
                "UPDATE sources SET reliability = ?2 WHERE id = ?1",
                params![id, r],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The version and number of choices of a completion.
    pub fn completion_info(&self, id: &str) -> Result<Option<(String, i64, String)>> {
        Ok(self
            .conn()
            .query_row(
                "SELECT version, choices, source FROM completions WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?)
    }
}
