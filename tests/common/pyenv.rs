//! The pinned Python virtual environment that the tests' third-party clients run in
//! (`tests/python/requirements.txt`: the CloudEvents and OpenMeter SDKs, `requests`),
//! installed from PyPI into `$HOME/.cache/meterd/pyenv-sdk` by the first test that needs
//! it (once, then reused; rebuilt when the requirements or the interpreter change; a
//! lock keeps concurrent test processes from installing it twice).
//!
//! Without PyPI (or `python3 -m venv`) the tests that need it fail with a message saying
//! so; they never skip. `METERD_TEST_PYTHON` names another base interpreter than
//! `python3`.

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Bump to force a rebuild of every existing venv when the install procedure changes.
pub const VENV_LAYOUT: &str = "meterd-sdk-venv-1";

pub fn python_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python")
}

pub fn cache_dir() -> PathBuf {
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .expect("HOME must be set: the SDK venv lives in $HOME/.cache/meterd/pyenv-sdk");
    PathBuf::from(home).join(".cache/meterd")
}

pub fn base_python() -> String {
    std::env::var("METERD_TEST_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

/// A command with no Python or pip settings inherited from the caller's environment.
pub fn clean(mut c: Command) -> Command {
    for v in [
        "PYTHONPATH",
        "PYTHONHOME",
        "PYTHONSTARTUP",
        "PIP_USER",
        "PIP_TARGET",
        "PIP_PREFIX",
        "PIP_REQUIRE_VIRTUALENV",
        "VIRTUAL_ENV",
    ] {
        c.env_remove(v);
    }
    c.env("PYTHONNOUSERSITE", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1");
    c
}

pub fn tail(bytes: &[u8], n: usize) -> String {
    let s = String::from_utf8_lossy(bytes);
    let start = s.len().saturating_sub(n);
    let start = (start..=s.len())
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(s.len());
    s[start..].to_string()
}

/// Runs a setup command; panics with `what`, the exit status and the output on failure.
pub fn run_setup(mut c: Command, what: &str) -> Output {
    let out = match c.output() {
        Ok(o) => o,
        Err(e) => panic!("SDK setup: {what}: could not run {c:?}: {e}"),
    };
    assert!(
        out.status.success(),
        "SDK setup: {what} failed ({}).\ncommand: {c:?}\nstdout (end):\n{}\nstderr (end):\n{}",
        out.status,
        tail(&out.stdout, 4000),
        tail(&out.stderr, 4000)
    );
    out
}

/// What the venv is built from: the requirements, the base interpreter, the procedure.
pub fn fingerprint(requirements: &[u8]) -> String {
    use sha2::Digest;
    let mut c = Command::new(base_python());
    c.args([
        "-c",
        "import sys; print(sys.executable); print(sys.version)",
    ]);
    let out = run_setup(
        clean(c),
        "running the base interpreter (python3 with venv and pip is required; \
         set METERD_TEST_PYTHON to use another)",
    );
    let mut h = sha2::Sha256::new();
    h.update(VENV_LAYOUT.as_bytes());
    h.update(b"\0");
    h.update(&out.stdout);
    h.update(b"\0");
    h.update(requirements);
    hex::encode(h.finalize())
}

/// `name==version` pins of the requirements file.
pub fn pins(requirements: &str) -> BTreeMap<String, String> {
    requirements
        .lines()
        .map(|l| l.split('#').next().unwrap().trim())
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (n, v) = l
                .split_once("==")
                .unwrap_or_else(|| panic!("requirements.txt: `{l}` is not pinned with =="));
            (n.trim().to_ascii_lowercase(), v.trim().to_string())
        })
        .collect()
}

/// A lock across test processes: a directory holding the owner's pid. A lock whose owner
/// is gone (crashed or killed mid-install) is taken over.
pub struct DirLock(PathBuf);

impl DirLock {
    pub fn acquire(path: &Path) -> DirLock {
        let deadline = Instant::now() + Duration::from_secs(20 * 60);
        loop {
            match std::fs::create_dir(path) {
                Ok(()) => {
                    std::fs::write(path.join("pid"), std::process::id().to_string())
                        .unwrap_or_else(|e| panic!("writing {}/pid: {e}", path.display()));
                    return DirLock(path.to_path_buf());
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                    if lock_is_stale(path) {
                        let _ = std::fs::remove_dir_all(path);
                        continue;
                    }
                }
                Err(e) => panic!("creating lock {}: {e}", path.display()),
            }
            assert!(
                Instant::now() < deadline,
                "waited 20 minutes for {}: another test process is installing an SDK \
                 (remove that directory if none is)",
                path.display()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

pub fn lock_is_stale(path: &Path) -> bool {
    match std::fs::read_to_string(path.join("pid")) {
        Ok(pid) => match pid.trim().parse::<u32>() {
            Ok(p) => !Path::new(&format!("/proc/{p}")).exists(),
            Err(_) => true,
        },
        // Just created and the pid not written yet, or its owner died in between.
        Err(_) => std::fs::metadata(path)
            .and_then(|m| m.modified())
            .map(|t| t.elapsed().unwrap_or_default() > Duration::from_secs(60))
            .unwrap_or(false),
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The venv's interpreter, with the pinned SDKs installed (once per process; across
/// processes under a lock, with a marker holding the fingerprint of what was installed).
pub fn sdk_python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(ensure_venv)
}

pub fn ensure_venv() -> PathBuf {
    let cache = cache_dir();
    std::fs::create_dir_all(&cache).unwrap_or_else(|e| panic!("creating {}: {e}", cache.display()));
    let venv = cache.join("pyenv-sdk");
    let python = venv.join("bin/python");
    let req_path = python_dir().join("requirements.txt");
    let requirements = std::fs::read_to_string(&req_path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", req_path.display()));
    let want = fingerprint(requirements.as_bytes());
    install_once(&venv, &python, &want, || {
        install_venv(&venv, &python, &req_path, &requirements)
    });
    python
}

/// Creates the venv at `venv` and installs the pinned requirements into it.
fn install_venv(venv: &Path, python: &Path, req_path: &Path, requirements: &str) {
    let mut c = Command::new(base_python());
    c.args(["-m", "venv"]).arg(venv);
    run_setup(
        clean(c),
        "creating the venv with `python3 -m venv` (on Debian, `apt-get install python3-venv`)",
    );
    let mut c = Command::new(python);
    c.args([
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "--no-input",
        "--retries",
        "3",
        "--timeout",
        "60",
        "-r",
    ])
    .arg(req_path);
    run_setup(
        clean(c),
        "installing the pinned CloudEvents and OpenMeter SDKs from PyPI (these tests need \
         PyPI; they do not skip without it)",
    );
    // The installed versions must be exactly the pins.
    let mut c = Command::new(python);
    c.args([
        "-c",
        "import json, sys\n\
         from importlib.metadata import version\n\
         import cloudevents.http, openmeter, requests\n\
         print(json.dumps({n: version(n) for n in sys.argv[1:]}))",
    ])
    .args(["cloudevents", "openmeter", "requests"]);
    let out = run_setup(clean(c), "importing the installed SDKs");
    let got: BTreeMap<String, String> =
        serde_json::from_slice(&out.stdout).expect("version report");
    let pinned = pins(requirements);
    for (name, version) in &got {
        assert_eq!(
            Some(version),
            pinned.get(name),
            "installed {name} {version} is not the pinned version"
        );
    }
}

/// Installs into `dir` once for a fingerprint: `install` runs (after an outdated `dir`
/// is removed) only when `product` is missing or `dir`'s marker does not hold `want`,
/// under a lock across test processes (`dir` with extension `.lock`); the marker is
/// written once `install` has returned.
pub fn install_once(dir: &Path, product: &Path, want: &str, install: impl FnOnce()) {
    let marker = dir.join(".meterd-fingerprint");
    let ready =
        || product.exists() && std::fs::read_to_string(&marker).is_ok_and(|m| m.trim() == want);
    if ready() {
        return;
    }
    let _lock = DirLock::acquire(&dir.with_extension("lock"));
    if ready() {
        return; // another process installed it while we waited
    }
    if dir.exists() {
        std::fs::remove_dir_all(dir)
            .unwrap_or_else(|e| panic!("removing the outdated {}: {e}", dir.display()));
    }
    install();
    let tmp = dir.join(".meterd-fingerprint.tmp");
    std::fs::write(&tmp, want).unwrap();
    std::fs::rename(&tmp, &marker).unwrap();
}
