//! The `tether serve` binary driven by the official `openai` Python client, and its
//! graceful shutdown.

use std::io::{BufRead, BufReader};
use std::process::Command;
use std::time::Duration;

use serde_json::json;

fn spawn_server(data_dir: &std::path::Path) -> (std::process::Child, String) {
    let served = crate::binary::spawn(
        Some("[server]\nkeys = [{ key = \"sk-test-user\", source = \"openai-test\" }]\n"),
        &data_dir.join("data"),
        &[],
        None,
    );
    (served.child, served.url)
}

#[test]
fn the_official_openai_python_client_works_against_tether_serve() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut child, url) = spawn_server(dir.path());
    let out = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/py/openai_client.py"
        ))
        .arg(&url)
        .output()
        .expect("python3 is needed");
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        out.status.success(),
        "openai client checks failed (needs `pip install openai`; .ci/run installs it):\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn sigterm_lets_an_in_flight_stream_finish_then_exits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut child, url) = spawn_server(dir.path());
    let resp = ureq::post(&format!("{url}/v1/chat/completions"))
        .send_json(
            json!({"model": "tether", "messages": [{"role": "user", "content": "Tell me a story."}],
            "max_tokens": 40, "temperature": 0, "stream": true}),
        )
        .expect("stream");
    let mut reader = BufReader::new(resp.into_reader());
    let mut line = String::new();
    reader.read_line(&mut line).expect("first chunk");
    crate::binary::signal(&child, "TERM");
    let mut done = false;
    for l in reader.lines() {
        if l.expect("line").starts_with("data: [DONE]") {
            done = true;
            break;
        }
    }
    assert!(done, "the in-flight stream was cut off by shutdown");
    let mut exited = None;
    for _ in 0..200 {
        if let Some(s) = child.try_wait().expect("wait") {
            exited = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    assert!(
        exited.is_some_and(|s| s.success()),
        "server did not exit cleanly: {exited:?}"
    );
    // New connections are refused after shutdown.
    assert!(ureq::get(&format!("{url}/health")).call().is_err());
}
