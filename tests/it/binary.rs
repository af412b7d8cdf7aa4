//! The real `tether serve` binary on a free loopback port, for tests that need a
//! separate process (signals, `kill -9`, log files).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `tether serve`.
pub struct Served {
    /// The process (the test stops it).
    pub child: Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// Copies stderr to the log file; ends when the process does.
    pub logger: std::thread::JoinHandle<()>,
}

/// Starts `tether [--config FILE] serve --port 0 --data-dir DATA` with `envs`,
/// copying stderr to `log` if given, and waits until `/ready` answers 200.
pub fn spawn(
    config: Option<&str>,
    data: &Path,
    envs: &[(&str, &str)],
    log: Option<PathBuf>,
) -> Served {
    spawn_in(None, config, data, envs, log)
}

/// [`spawn`], with the process's working directory set to `cwd` when given.
pub fn spawn_in(
    cwd: Option<&Path>,
    config: Option<&str>,
    data: &Path,
    envs: &[(&str, &str)],
    log: Option<PathBuf>,
) -> Served {
    std::fs::create_dir_all(data).expect("data dir");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tether"));
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    if let Some(toml) = config {
        let path = data.with_extension("toml");
        std::fs::write(&path, toml).expect("config");
        cmd.arg("--config").arg(path);
    }
    cmd.args(["serve", "--port", "0", "--data-dir"])
        .arg(data)
        .env("TETHER_LOG", "tether=info")
        .env("NO_COLOR", "1")
        // Tests about the learner turn it on through `envs`.
        .env("TETHER_LEARNER", "off")
        .stderr(Stdio::piped())
        .stdout(Stdio::null());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn tether serve");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    let logger = std::thread::spawn(move || {
        let mut file = log.map(|p| std::fs::File::create(p).expect("log file"));
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(f) = file.as_mut() {
                let _ = writeln!(f, "{line}");
            }
            if let Some(at) = line.find("listening on http://") {
                let _ = tx.send(line[at + "listening on ".len()..].trim().to_string());
            }
        }
    });
    let url = match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(u) => u,
        Err(_) => {
            let _ = child.kill();
            panic!("tether serve did not log its address");
        }
    };
    let url: String = url.chars().filter(|c| !c.is_control()).collect();
    let url = url.trim_end_matches("[0m").to_string();
    let start = Instant::now();
    while !ureq::get(&format!("{url}/ready"))
        .call()
        .is_ok_and(|r| r.status() == 200)
    {
        if start.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            panic!("tether serve never became ready");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Served { child, url, logger }
}

/// Sends `signal` (`TERM`, `KILL`) to the process.
pub fn signal(child: &Child, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(child.id().to_string())
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{signal} failed");
}
