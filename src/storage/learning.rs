//! Training runs, which feedback each version consumed, version evaluations and
//! status changes.

use rusqlite::{params, OptionalExtension};

use super::feedback::{feedback_from, FEEDBACK_COLUMNS};
use super::{now_unix, Result, Store, VersionRow};

/// Tables for the learner (created with the rest of the schema).
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS train_runs (
    id TEXT PRIMARY KEY,
    created INTEGER NOT NULL,
    trigger TEXT NOT NULL,
    status TEXT NOT NULL,
    version TEXT,
    detail TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS version_feedback (
    version TEXT NOT NULL,
    feedback_id TEXT NOT NULL,
    weight REAL NOT NULL,
    role TEXT NOT NULL,
    PRIMARY KEY (version, feedback_id)
);
CREATE INDEX IF NOT EXISTS version_feedback_item ON version_feedback (feedback_id);
";

/// A training run as stored.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RunRow {
    /// `train-…`.
    pub id: String,
    /// Unix seconds.
    pub created: i64,
    /// `operator`, `threshold` or `schedule`.
    pub trigger: String,
    /// `queued`, `running`, `promoted`, `rejected`, `failed`, `interrupted`.
    pub status: String,
    /// The version it produced.
    pub version: Option<String>,
    /// Progress and outcome (JSON).
    pub detail: serde_json::Value,
}

/// One feedback item a version trained on.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Consumed {
    /// Feedback id.
    pub feedback_id: String,
    /// Its weight in the run.
    pub weight: f64,
    /// `new`, `replay`, or `skipped` (could not be trained on).
    pub role: String,
}

fn run_from(r: &rusqlite::Row<'_>) -> rusqlite::Result<RunRow> {
    let detail: String = r.get(5)?;
    Ok(RunRow {
        id: r.get(0)?,
        created: r.get(1)?,
        trigger: r.get(2)?,
        status: r.get(3)?,
        version: r.get(4)?,
        detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::Null),
    })
}

impl Store {
    /// Records a new run.
    pub fn insert_run(&self, id: &str, trigger: &str, detail: &serde_json::Value) -> Result<()> {
        self.conn().execute(
            "INSERT INTO train_runs (id, created, trigger, status, detail) VALUES (?1, ?2, ?3, 'queued', ?4)",
            params![id, now_unix(), trigger, detail.to_string()],
        )?;
        Ok(())
    }

    /// Updates a run's status, version and detail.
    pub fn update_run(
        &self,
        id: &str,
        status: &str,
        version: Option<&str>,
        detail: &serde_json::Value,
    ) -> Result<()> {
        self.conn().execute(
            "UPDATE train_runs SET status = ?2, version = COALESCE(?3, version), detail = ?4 WHERE id = ?1",
            params![id, status, version, detail.to_string()],
        )?;
        Ok(())
    }

    /// One run.
    pub fn run(&self, id: &str) -> Result<Option<RunRow>> {
        Ok(self
            .conn()
            .query_row(
                "SELECT id, created, trigger, status, version, detail FROM train_runs WHERE id = ?1",
                [id],
                run_from,
            )
            .optional()?)
    }

    /// Recent runs, newest first.
    pub fn runs(&self, limit: usize) -> Result<Vec<RunRow>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT id, created, trigger, status, version, detail FROM train_runs \
             ORDER BY created DESC, rowid DESC LIMIT ?1",
        )?;
        let rows = stmt.query_map([limit as i64], run_from)?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// Marks runs that were queued or running when the process stopped.
    pub fn interrupt_runs(&self) -> Result<usize> {
        Ok(self.conn().execute(
            "UPDATE train_runs SET status = 'interrupted' WHERE status IN ('queued', 'running')",
            [],
        )?)
    }

    /// Inserts a trained version and the feedback it consumed in one transaction, so
    /// a version never exists without its lineage.
    pub fn insert_trained_version(&self, v: &VersionRow, consumed: &[Consumed]) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO versions (id, name, number, parent, status, created, content_hash, adapter_path) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![v.id, v.name, v.number, v.parent, v.status, v.created, v.content_hash, v.adapter_path],
        )?;
        for c in consumed {
            tx.execute(
                "INSERT INTO version_feedback (version, feedback_id, weight, role) VALUES (?1, ?2, ?3, ?4)",
                params![v.id, c.feedback_id, c.weight, c.role],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Records feedback no run could use (role `skipped`, no version), so it no
    /// longer counts as waiting.
    pub fn mark_skipped(&self, ids: &[String]) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        for id in ids {
            tx.execute(
                "INSERT OR IGNORE INTO version_feedback (version, feedback_id, weight, role) \
                 VALUES ('', ?1, 0, 'skipped')",
                [id],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The feedback a version consumed.
    pub fn consumed(&self, version: &str) -> Result<Vec<Consumed>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT feedback_id, weight, role FROM version_feedback WHERE version = ?1 ORDER BY rowid",
        )?;
        let rows = stmt.query_map([version], |r| {
            Ok(Consumed {
                feedback_id: r.get(0)?,
                weight: r.get(1)?,
                role: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// Accepted feedback no version has trained on yet (as new feedback), oldest first.
    pub fn untrained_feedback(&self) -> Result<Vec<super::FeedbackRow>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {FEEDBACK_COLUMNS} FROM feedback WHERE status = 'accepted' AND id NOT IN \
             (SELECT feedback_id FROM version_feedback WHERE role IN ('new', 'skipped')) \
             ORDER BY created_ms"
        ))?;
        let rows = stmt.query_map([], feedback_from)?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// Sets a version's status and its evaluation results.
    pub fn set_version_status(
        &self,
        id: &str,
        status: &str,
        eval: Option<&serde_json::Value>,
    ) -> Result<()> {
        self.conn().execute(
            "UPDATE versions SET status = ?2, eval = COALESCE(?3, eval) WHERE id = ?1",
            params![id, status, eval.map(|e| e.to_string())],
        )?;
        Ok(())
    }

    /// A version's stored evaluation results.
    pub fn version_eval(&self, id: &str) -> Result<Option<serde_json::Value>> {
        let text: Option<Option<String>> = self
            .conn()
            .query_row("SELECT eval FROM versions WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .optional()?;
        Ok(text.flatten().and_then(|t| serde_json::from_str(&t).ok()))
    }
}
