//! The `tether serve` binary driven by the official `openai` Python client, and its
//! graceful shutdown.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;

/// Starts `tether serve --port 0` and returns it with its base URL (read from the
/// "listening on" log line) once `/ready` answers 200.
fn spawn_server(data_dir: &std::path::Path) -> (Child, String) {
    let config = data_dir.join("test.toml");
    std::fs::write(
        &config,
        "[server]\nkeys = [{ key = \"sk-test-user\", source = \"openai-test\" }]\n",
    )
    .expect("config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_tether"))
        .arg("--config")
        .arg(&config)
        .args(["serve", "--port", "0", "--data-dir"])
        .arg(data_dir)
        .env("TETHER_LOG", "tether=info")
        .env("NO_COLOR", "1")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn tether serve");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(at) = line.find("listening on http://") {
                let _ = tx.send(line[at + "listening on ".len()..].trim().to_string());
            }
        }
    });
    let url = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("server logs its address");
    let url: String = url.chars().filter(|c| !c.is_control()).collect();
    let url = url.trim_end_matches("[0m").to_string();
    for _ in 0..600 {
        if ureq::get(&format!("{url}/ready"))
            .call()
            .is_ok_and(|r| r.status() == 200)
        {
            return (child, url);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("tether serve never became ready");
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
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .expect("kill");
    assert!(status.success());
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
