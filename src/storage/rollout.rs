//! Which version served when: the serving log, and status changes that write their
//! audit entry in the same transaction (so the audit never disagrees with the state).

use rusqlite::{params, OptionalExtension};

use super::{now_unix, Result, Store};

/// The serving log (created with the rest of the schema).
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS serving_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms INTEGER NOT NULL,
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    previous TEXT,
    action TEXT NOT NULL,
    actor TEXT NOT NULL,
    reason TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS serving_log_name_at ON serving_log (name, at_ms);
";

/// One change of the serving version.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ServingEntry {
    /// Unix milliseconds.
    pub at_ms: i64,
    /// The version that began serving.
    pub version: String,
    /// The version that served before (none for the first).
    pub previous: Option<String>,
    /// `initial`, `promote` or `rollback`.
    pub action: String,
    /// `operator`, `learner`, `canary`, `drift-monitor`, ...
    pub actor: String,
    /// Why.
    pub reason: String,
}

/// A change of the serving version, with its audit entry.
#[derive(Debug, Clone)]
pub struct Switch<'a> {
    /// Model name.
    pub name: &'a str,
    /// The version to serve.
    pub to: &'a str,
    /// `promote` or `rollback`.
    pub action: &'a str,
    /// Who decided.
    pub actor: &'a str,
    /// Why.
    pub reason: &'a str,
    /// Extra audit detail (checks, signals).
    pub detail: &'a serde_json::Value,
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn entry_from(r: &rusqlite::Row<'_>) -> rusqlite::Result<ServingEntry> {
    Ok(ServingEntry {
        at_ms: r.get(0)?,
        version: r.get(1)?,
        previous: r.get(2)?,
        action: r.get(3)?,
        actor: r.get(4)?,
        reason: r.get(5)?,
    })
}

const ENTRY_COLUMNS: &str = "at_ms, version, previous, action, actor, reason";

impl Store {
    /// Makes `s.to` the serving version of `s.name`: the version serving now is
    /// retired, the change goes into the serving log and the audit log, all in one
    /// transaction. Returns the version that served before.
    pub fn switch_serving(&self, s: &Switch<'_>) -> Result<Option<String>> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let previous: Option<String> = tx
            .query_row(
                "SELECT id FROM versions WHERE name = ?1 AND status = 'serving' AND id != ?2 \
                 ORDER BY number DESC LIMIT 1",
                params![s.name, s.to],
                |r| r.get(0),
            )
            .optional()?;
        tx.execute(
            "UPDATE versions SET status = 'retired' WHERE name = ?1 AND status = 'serving' AND id != ?2",
            params![s.name, s.to],
        )?;
        tx.execute(
            "UPDATE versions SET status = 'serving' WHERE id = ?1",
            params![s.to],
        )?;
        tx.execute(
            "INSERT INTO serving_log (at_ms, name, version, previous, action, actor, reason) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                now_ms(),
                s.name,
                s.to,
                previous,
                s.action,
                s.actor,
                s.reason
            ],
        )?;
        let mut detail = s.detail.clone();
        if !detail.is_object() {
            detail = serde_json::json!({});
        }
        detail["from"] = serde_json::json!(previous);
        detail["reason"] = serde_json::json!(s.reason);
        tx.execute(
            "INSERT INTO audit (at, actor, action, subject, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![now_unix(), s.actor, s.action, s.to, detail.to_string()],
        )?;
        tx.commit()?;
        Ok(previous)
    }

    /// Sets a version's status (and evaluation, when given) and writes the audit
    /// entry in the same transaction.
    pub fn change_status(
        &self,
        id: &str,
        status: &str,
        eval: Option<&serde_json::Value>,
        actor: &str,
        action: &str,
        detail: &serde_json::Value,
    ) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "UPDATE versions SET status = ?2, eval = COALESCE(?3, eval) WHERE id = ?1",
            params![id, status, eval.map(|e| e.to_string())],
        )?;
        tx.execute(
            "INSERT INTO audit (at, actor, action, subject, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![now_unix(), actor, action, id, detail.to_string()],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Records `version` as serving since `at_ms` if the log of `name` is empty (the
    /// base model's first start, or a database from before the log existed).
    pub fn init_serving_log(&self, name: &str, version: &str, at_ms: i64) -> Result<()> {
        let conn = self.conn();
        let n: i64 = conn.query_row(
            "SELECT COUNT(*) FROM serving_log WHERE name = ?1",
            [name],
            |r| r.get(0),
        )?;
        if n == 0 {
            conn.execute(
                "INSERT INTO serving_log (at_ms, name, version, previous, action, actor, reason) \
                 VALUES (?1, ?2, ?3, NULL, 'initial', 'tether', 'first version')",
                params![at_ms, name, version],
            )?;
        }
        Ok(())
    }

    /// Every change of `name`'s serving version, oldest first.
    pub fn serving_log(&self, name: &str) -> Result<Vec<ServingEntry>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {ENTRY_COLUMNS} FROM serving_log WHERE name = ?1 ORDER BY id"
        ))?;
        let rows = stmt.query_map([name], entry_from)?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// The change that made the version serving at `at_ms` serve (none before the
    /// first version existed).
    pub fn serving_at(&self, name: &str, at_ms: i64) -> Result<Option<ServingEntry>> {
        Ok(self
            .conn()
            .query_row(
                &format!(
                    "SELECT {ENTRY_COLUMNS} FROM serving_log WHERE name = ?1 AND at_ms <= ?2 \
                     ORDER BY at_ms DESC, id DESC LIMIT 1"
                ),
                params![name, at_ms],
                entry_from,
            )
            .optional()?)
    }
}
