//! JSON Lines for the offline commands (`tether safety classify`, `tether privacy
//! scan|redact`): one `{"text": ...}` object per input line, one JSON result per
//! output line, and `{"error": ...}` for a line that is not such an object, so one bad
//! line never stops a batch.

use std::io::{BufRead, Write};

/// Calls `f` on the text of every non-blank line and writes what it returns.
/// Returns how many lines were read.
pub fn map_texts(
    input: impl BufRead,
    mut out: impl Write,
    mut f: impl FnMut(&str) -> serde_json::Value,
) -> std::io::Result<usize> {
    let mut n = 0;
    for (i, line) in input.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        n += 1;
        let text = serde_json::from_str::<serde_json::Value>(&line)
            .ok()
            .and_then(|v| v.get("text")?.as_str().map(str::to_string));
        let v = match text {
            Some(t) => f(&t),
            None => serde_json::json!({
                "error": format!("line {}: expected a JSON object with a string field `text`", i + 1)
            }),
        };
        writeln!(out, "{v}")?;
    }
    Ok(n)
}
