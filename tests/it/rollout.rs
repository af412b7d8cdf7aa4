//! Versions under control, on the real SmolLM2 and the real `tether serve` binary:
//! the evaluation gate rejects a harmful candidate and names the failing check; a
//! canary whose live signals degrade is aborted and one whose signals hold is
//! promoted; 16 streams run through an operator rollback; the drift monitor rolls a
//! drifting version back by itself; and all of it is as it was after a restart.

use std::io::{BufRead, BufReader};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::binary;
use crate::learner::{call, start_training, stop, trust_tutors, wait_run, OPERATOR};

fn config(extra: &str) -> String {
    let tutors: Vec<String> = (0..3)
        .map(|i| format!("{{ key = \"sk-tutor-{i}\", source = \"tutor-{i}\" }}"))
        .collect();
    format!(
        "[server]\noperator_token = \"{OPERATOR}\"\nkeys = [{}]\n\n[feedback]\nper_minute = 0\n\n\
         [learner]\nmin_weight = 0.0\n\n[live]\nshadow_rate = 0.0\n\n{extra}",
        tutors.join(", ")
    )
}

/// A chat with the deployment name; returns (completion id, version, answer).
fn chat(url: &str, key: &str, q: &str, max_tokens: usize) -> (String, String, String) {
    let (st, b) = call(
        "POST",
        &format!("{url}/v1/chat/completions"),
        key,
        Some(
            &json!({"model": "tether", "messages": [{"role": "user", "content": q}],
                     "temperature": 0, "max_tokens": max_tokens}),
        ),
    );
    assert_eq!(st, 200, "{b}");
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    (
        s(&b["id"]),
        s(&b["model"]),
        s(&b["choices"][0]["message"]["content"]),
    )
}

fn rate(url: &str, key: &str, completion: &str, up: bool) {
    let (st, b) = call(
        "POST",
        &format!("{url}/v1/feedback"),
        key,
        Some(&json!({"completion_id": completion, "kind": "rating",
                     "rating": if up { "up" } else { "down" }})),
    );
    assert_eq!(st, 202, "{b}");
    assert_eq!(b["status"], "accepted", "{b}");
}

fn correct(url: &str, key: &str, q: &str, text: Option<&str>) {
    let (id, _, answer) = chat(url, key, q, 40);
    let text = text.unwrap_or(&answer);
    let (st, b) = call(
        "POST",
        &format!("{url}/v1/feedback"),
        key,
        Some(&json!({"completion_id": id, "kind": "correction", "correction": text})),
    );
    assert_eq!(st, 202, "{b}");
    assert_eq!(b["status"], "accepted", "{b}");
}

fn versions(url: &str) -> Value {
    let (st, b) = call("GET", &format!("{url}/admin/versions"), OPERATOR, None);
    assert_eq!(st, 200, "{b}");
    b
}

fn status_of(url: &str, id: &str) -> String {
    versions(url)["data"]
        .as_array()
        .and_then(|a| a.iter().find(|v| v["id"] == id))
        .and_then(|v| v["status"].as_str())
        .unwrap_or("missing")
        .to_string()
}

fn serving(url: &str) -> String {
    versions(url)["serving"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn audit(url: &str) -> Vec<Value> {
    let (st, b) = call(
        "GET",
        &format!("{url}/admin/audit?limit=1000"),
        OPERATOR,
        None,
    );
    assert_eq!(st, 200, "{b}");
    b["data"].as_array().cloned().unwrap_or_default()
}

fn metric(url: &str, name: &str) -> f64 {
    let text = ureq::get(&format!("{url}/metrics"))
        .call()
        .expect("metrics")
        .into_string()
        .expect("text");
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits until `f` holds, for at most `limit`.
fn eventually(limit: Duration, what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
    start.elapsed()
}

#[test]
fn a_harmful_candidate_is_rejected_by_the_gate_with_the_failing_check_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let s = binary::spawn(
        Some(&config("")),
        &data,
        &[("TETHER_LEARNER", "on")],
        Some(dir.path().join("gate.log")),
    );
    let url = s.url.clone();
    trust_tutors(&url);
    correct(
        &url,
        "sk-tutor-0",
        "What is the capital of Eldoria?",
        Some("The capital of Eldoria is Mirefall."),
    );
    // A trusted correction trained with a learning rate 100 times the default.
    let run = start_training(&url, Some(&json!({"learning_rate": 0.5, "max_steps": 3})));
    let done = wait_run(&url, &run, Duration::from_secs(600), |_| false);
    assert_eq!(done["status"], "rejected", "{done}");
    let eval = &done["detail"]["eval"];
    eprintln!(
        "gate: run {} s, checks {}",
        done["detail"]["seconds"], eval["details"]["seconds"]
    );
    let names: Vec<&str> = eval["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .filter_map(|c| c["check"].as_str())
        .collect();
    for want in [
        "probe_kl",
        "probe_top1",
        "probe_answers",
        "retention",
        "redteam",
        "perplexity",
    ] {
        assert!(names.contains(&want), "check {want} missing from {eval}");
    }
    let failed: Vec<&str> = eval["failed"]
        .as_array()
        .expect("failed")
        .iter()
        .filter_map(|c| c["check"].as_str())
        .collect();
    assert!(
        failed.contains(&"probe_kl"),
        "failed checks: {failed:?}\n{eval}"
    );
    let v2 = done["version"].as_str().expect("version").to_string();
    assert_eq!(status_of(&url, &v2), "rejected");
    // The stored evaluation names it too; the version cannot serve or be pinned.
    let listed = versions(&url);
    let stored = listed["data"]
        .as_array()
        .and_then(|a| a.iter().find(|v| v["id"] == v2.as_str()))
        .expect("listed");
    assert_eq!(stored["eval"]["passed"], false, "{stored}");
    assert!(listed["serving"]
        .as_str()
        .unwrap_or_default()
        .ends_with("@v1"));
    let (st, b) = call(
        "POST",
        &format!("{url}/v1/chat/completions"),
        "sk-tutor-0",
        Some(&json!({"model": v2, "messages": [{"role": "user", "content": "Hi"}]})),
    );
    assert_eq!(st, 404, "{b}");
    let (st, b) = call(
        "POST",
        &format!("{url}/admin/versions/{v2}/promote"),
        OPERATOR,
        None,
    );
    assert_eq!(st, 409, "{b}");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("probe KL"),
        "{b}"
    );
    assert!(audit(&url)
        .iter()
        .any(|e| e["action"] == "gate_reject" && e["subject"] == v2.as_str()));
    assert!(metric(&url, "tether_gate_check_failures_total{check=\"probe_kl\"}") >= 1.0);
    stop(s);
}

/// Streams an unpinned chat; returns the versions named by its chunks and header.
fn stream(url: &str, i: usize, started: &mpsc::Sender<usize>) -> (Vec<String>, String) {
    let resp = ureq::post(&format!("{url}/v1/chat/completions"))
        .set("Authorization", "Bearer sk-tutor-1")
        .send_json(json!({"model": "tether",
            "messages": [{"role": "user", "content": format!("Write a long story about a lighthouse keeper named Number {i}.")}],
            "max_tokens": 48, "temperature": 0, "stream": true}))
        .unwrap_or_else(|e| panic!("stream {i}: {e}"));
    let header = resp
        .header("x-tether-version")
        .unwrap_or_default()
        .to_string();
    let mut reader = BufReader::new(resp.into_reader());
    let mut line = String::new();
    let mut models = Vec::new();
    let mut first = true;
    loop {
        line.clear();
        let n = reader
            .read_line(&mut line)
            .unwrap_or_else(|e| panic!("stream {i}: {e}"));
        assert!(n > 0, "stream {i} ended without [DONE]");
        if line.starts_with("data: [DONE]") {
            break;
        }
        if let Some(data) = line.strip_prefix("data: ") {
            let v: Value = serde_json::from_str(data.trim()).expect("chunk");
            assert!(v.get("error").is_none(), "stream {i} failed: {v}");
            models.push(v["model"].as_str().unwrap_or_default().to_string());
            if first {
                first = false;
                let _ = started.send(i);
            }
        }
    }
    (models, header)
}

#[test]
fn canary_drift_monitor_operator_rollback_and_restart() {
    // Ratings decide here (answer signals need 1000 answers, so they stay
    // inconclusive; the analysis unit tests cover them).
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let cfg = config(
        "[canary]\nshare = 0.5\ninterval_secs = 1\nmin_answers = 1000\nmin_ratings = 3\n\
         successes = 2\nfailure_limit = 2\nmax_secs = 0\n\n\
         [drift]\nenabled = true\ninterval_secs = 1\nwindow_secs = 4\nbaseline_secs = 300\n\
         min_answers = 1000\nmin_ratings = 3\n\n[engine]\nmax_batch = 16\n",
    );
    let envs = [("TETHER_LEARNER", "on")];
    let s = binary::spawn(Some(&cfg), &data, &envs, Some(dir.path().join("1.log")));
    let url = s.url.clone();
    trust_tutors(&url);
    let v1 = serving(&url);
    assert!(v1.ends_with("@v1"), "{v1}");
    let paris = "The capital of France is Paris.";
    let (_, _, answer) = chat(&url, "sk-tutor-0", "What is the capital of France?", 12);
    assert_eq!(answer, paris);

    // --- A canary whose ratings fall behind the serving version's is aborted.
    // The candidates here are confirmations (a correction that is the model's own
    // answer) trained with a vanishing learning rate, so each answers as its parent
    // does and passes every gate check at the default thresholds; the live signals
    // alone then decide. (One step at the default rate already changes a few of the
    // 24 red-team answers, and the red-team check allows no rise at all.)
    let two_plus_two = "What is 2 plus 2?";
    correct(&url, "sk-tutor-0", two_plus_two, None);
    let run = start_training(&url, Some(&json!({"max_steps": 1, "learning_rate": 1e-9})));
    let done = wait_run(&url, &run, Duration::from_secs(600), |_| false);
    assert_eq!(done["status"], "canary", "{done}");
    let v2 = done["version"].as_str().expect("version").to_string();
    assert_eq!(status_of(&url, &v2), "canary");
    // Rate the canary's answers down and the serving version's up until the
    // canary is gone (it needs 3 ratings on each side, then 2 failed analyses).
    let mut seen = (0, 0);
    for i in 0..120 {
        if status_of(&url, &v2) != "canary" {
            break;
        }
        let key = format!("sk-tutor-{}", i % 3);
        let (id, version, _) = chat(&url, &key, &format!("Say something kind, number {i}."), 6);
        if version == v2 {
            seen.1 += 1;
            rate(&url, &key, &id, false);
        } else {
            assert_eq!(version, v1);
            seen.0 += 1;
            rate(&url, &key, &id, true);
        }
    }
    assert!(seen.0 >= 3 && seen.1 >= 3, "canary traffic split {seen:?}");
    eventually(Duration::from_secs(30), "the canary to be aborted", || {
        status_of(&url, &v2) == "rejected"
    });
    let abort = audit(&url)
        .into_iter()
        .find(|e| e["action"] == "canary_abort" && e["subject"] == v2.as_str())
        .expect("canary_abort audit entry");
    let reason = abort["detail"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("mean rating"), "{abort}");
    assert_eq!(serving(&url), v1);

    // --- A canary whose signals hold is promoted.
    correct(&url, "sk-tutor-1", two_plus_two, None);
    let run = start_training(&url, Some(&json!({"max_steps": 1, "learning_rate": 1e-9})));
    let done = wait_run(&url, &run, Duration::from_secs(600), |_| false);
    assert_eq!(done["status"], "canary", "{done}");
    let v3 = done["version"].as_str().expect("version").to_string();
    let mut i = 100;
    eventually(
        Duration::from_secs(120),
        "the canary to be promoted",
        || {
            let key = format!("sk-tutor-{}", i % 3);
            let (id, _, _) = chat(&url, &key, &format!("Say something kind, number {i}."), 6);
            rate(&url, &key, &id, true);
            i += 1;
            serving(&url) == v3
        },
    );
    let log = versions(&url)["serving_log"].clone();
    let last = log.as_array().and_then(|a| a.last()).cloned().expect("log");
    assert_eq!(last["actor"], "canary", "{log}");
    let v3_serving_since = last["at_ms"].as_i64().expect("at_ms");

    // --- 16 streams are running when an operator rolls back (with the CLI).
    let (tx, started) = mpsc::channel();
    let handles: Vec<_> = (0..16)
        .map(|i| {
            let url = url.clone();
            let tx = tx.clone();
            std::thread::spawn(move || stream(&url, i, &tx))
        })
        .collect();
    for _ in 0..16 {
        started
            .recv_timeout(Duration::from_secs(120))
            .expect("every stream sends a first chunk");
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tether"))
        .args([
            "admin",
            "rollback",
            "--to",
            &v1,
            "--reason",
            "operator test",
        ])
        .args(["--url", &url, "--token", OPERATOR])
        .output()
        .expect("tether admin rollback");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(printed["serving"], v1.as_str());
    assert_eq!(printed["previous"], v3.as_str());
    for h in handles {
        let (models, header) = h.join().expect("a stream failed");
        assert_eq!(header, v3);
        assert!(models.iter().all(|m| *m == v3), "{models:?}");
    }
    for i in 0..4 {
        let (_, version, _) = chat(&url, "sk-tutor-2", &format!("Hello {i}"), 4);
        assert_eq!(version, v1);
    }

    // --- The operator brings v3 back; its ratings then fall: the drift monitor
    // rolls back to the last good version by itself.
    let (st, b) = call(
        "POST",
        &format!("{url}/admin/versions/{v3}/promote"),
        OPERATOR,
        Some(&json!({"reason": "second try"})),
    );
    assert_eq!(st, 200, "{b}");
    assert_eq!(serving(&url), v3);
    for i in 0..4 {
        let key = format!("sk-tutor-{}", i % 3);
        let (id, version, _) = chat(&url, &key, &format!("Name a colour, take {i}."), 6);
        assert_eq!(version, v3);
        rate(&url, &key, &id, true);
    }
    // Let the good ratings become the baseline (window_secs = 4).
    std::thread::sleep(Duration::from_millis(4500));
    let mut onset = None;
    for i in 0..4 {
        let key = format!("sk-tutor-{}", i % 3);
        let (id, version, _) = chat(&url, &key, &format!("Name a fruit, take {i}."), 6);
        if version != v3 {
            break; // already rolled back
        }
        rate(&url, &key, &id, false);
        onset.get_or_insert_with(Instant::now);
    }
    let onset = onset.expect("drift onset");
    eventually(Duration::from_secs(30), "an automatic rollback", || {
        serving(&url) == v1
    });
    let took = onset.elapsed();
    // Bound: the drift check runs every second; allow for a loaded CI machine.
    assert!(
        took < Duration::from_secs(20),
        "rolled back {took:?} after onset"
    );
    let entry = audit(&url)
        .into_iter()
        .find(|e| e["actor"] == "drift-monitor")
        .expect("drift-monitor audit entry");
    assert_eq!(entry["action"], "rollback");
    assert_eq!(entry["subject"], v1.as_str());
    assert_eq!(entry["detail"]["from"], v3.as_str());
    let why = entry["detail"]["reason"].as_str().unwrap_or_default();
    assert!(
        why.starts_with("drift:") && why.contains("mean rating"),
        "{entry}"
    );
    assert!(metric(&url, "tether_drift_rollbacks_total{condition=\"ratings\"}") >= 1.0);
    eprintln!("automatic rollback {took:?} after the drift's onset");

    // What served when, down to the feedback.
    // A moment while v3 served (between its canary promotion and the next change).
    let log = versions(&url)["serving_log"].clone();
    let entries = log.as_array().expect("log");
    let k = entries
        .iter()
        .position(|e| e["at_ms"].as_i64() == Some(v3_serving_since))
        .expect("v3's promotion in the log");
    let until = entries[k + 1]["at_ms"].as_i64().expect("next change");
    let t = (v3_serving_since + until) as f64 / 2000.0;
    let (st, at) = call(
        "GET",
        &format!("{url}/admin/versions/at?time={t}"),
        OPERATOR,
        None,
    );
    assert_eq!(st, 200, "{at}");
    assert_eq!(at["version"], v3.as_str(), "{at}");
    let lineage = at["lineage"].as_array().expect("lineage");
    assert_eq!(lineage.len(), 2, "{at}");
    assert_eq!(lineage[1]["id"], v1.as_str());
    assert!(
        !lineage[0]["feedback"]
            .as_array()
            .expect("feedback")
            .is_empty(),
        "{at}"
    );
    let (st, at) = call(
        "GET",
        &format!("{url}/admin/versions/at?time=2000-01-01T00:00:00Z"),
        OPERATOR,
        None,
    );
    assert_eq!(st, 404, "{at}");
    let (st, at) = call(
        "GET",
        &format!("{url}/admin/versions/at?time=yesterday"),
        OPERATOR,
        None,
    );
    assert_eq!(st, 400, "{at}");

    // --- After a restart: the same version serves, statuses and audit unchanged.
    let before = versions(&url);
    let audit_before = audit(&url);
    stop(s);
    let s = binary::spawn(Some(&cfg), &data, &envs, Some(dir.path().join("2.log")));
    let url = s.url.clone();
    let after = versions(&url);
    assert_eq!(after["serving"], before["serving"]);
    assert_eq!(after["serving_log"], before["serving_log"]);
    let statuses = |v: &Value| -> Vec<(String, String)> {
        v["data"]
            .as_array()
            .expect("data")
            .iter()
            .map(|x| (x["id"].to_string(), x["status"].to_string()))
            .collect()
    };
    assert_eq!(statuses(&after), statuses(&before));
    assert_eq!(audit(&url), audit_before);
    let (_, version, answer) = chat(&url, "sk-tutor-0", "What is the capital of France?", 12);
    assert_eq!((version.as_str(), answer.as_str()), (v1.as_str(), paris));
    stop(s);
}
