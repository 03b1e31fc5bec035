//! The CNCF CloudEvents JavaScript SDK for the tests: Node.js and npm, and the packages
//! pinned in `tests/js/package.json` and `tests/js/package-lock.json`.
//!
//! - `node` and `npm` come from the machine. When either is missing, Debian's `nodejs`
//!   and `npm` are installed with `apt-get update` and `apt-get install` (as root, or
//!   through `sudo`), under a lock so that concurrent test processes install once.
//! - The packages are installed with `npm ci` (exactly the lock file's versions, no
//!   install scripts) into `$HOME/.cache/meterd/node-sdk`, once, then reused; a marker
//!   holds the fingerprint of what was installed (the pins, Node.js's version and this
//!   procedure), and any change reinstalls. The installed `cloudevents` must be the pin.
//! - The driver scripts in `tests/js/` run with `NODE_PATH` pointing there.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::Value;

use super::{cache_dir, install_once, run_setup, DirLock};

/// Bump to force a reinstall of every existing cache when the procedure changes.
const LAYOUT: &str = "meterd-node-sdk-1";

/// `tests/js`: the driver scripts, `package.json` and `package-lock.json`.
pub fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js")
}

/// `node` running `script` with the pinned packages on its module path.
pub fn command(script: &Path) -> Command {
    let modules = node_modules();
    let mut c = Command::new("node");
    c.arg(script)
        .env("NODE_PATH", modules)
        .env_remove("NODE_OPTIONS");
    c
}

/// The exact version of npm package `name` pinned in `tests/js/package.json`.
pub fn pinned(name: &str) -> String {
    let p = js_dir().join("package.json");
    let text = std::fs::read(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()));
    let v: Value = serde_json::from_slice(&text).expect("tests/js/package.json is JSON");
    v["dependencies"][name]
        .as_str()
        .unwrap_or_else(|| panic!("tests/js/package.json does not pin {name}"))
        .to_string()
}

/// The installed `node_modules` (installed once per process; across processes under a
/// lock).
pub fn node_modules() -> &'static Path {
    static MODULES: OnceLock<PathBuf> = OnceLock::new();
    MODULES.get_or_init(ensure_node_modules)
}

fn version_of(tool: &str) -> Option<String> {
    let out = Command::new(tool).arg("--version").output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn tools_present() -> bool {
    version_of("node").is_some() && version_of("npm").is_some()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `apt-get ARGS`, through `sudo` unless root.
fn apt_get(args: &[&str]) -> Command {
    let mut c = if is_root() {
        Command::new("apt-get")
    } else {
        let mut c = Command::new("sudo");
        c.arg("apt-get");
        c
    };
    c.args(args).env("DEBIAN_FRONTEND", "noninteractive");
    c
}

/// Installs Debian's `nodejs` and `npm` when `node` or `npm` is missing.
fn ensure_tools(cache: &Path) {
    if tools_present() {
        return;
    }
    let _lock = DirLock::acquire(&cache.join("node-apt.lock"));
    if tools_present() {
        return;
    }
    run_setup(
        apt_get(&["update", "-qq"]),
        "`apt-get update` (node or npm is missing; the JavaScript SDK tests install \
         Debian's nodejs and npm)",
    );
    run_setup(
        apt_get(&["install", "-y", "-qq", "nodejs", "npm"]),
        "`apt-get install nodejs npm`",
    );
    assert!(
        tools_present(),
        "node and npm are still missing after `apt-get install nodejs npm`"
    );
}

fn ensure_node_modules() -> PathBuf {
    let cache = cache_dir();
    std::fs::create_dir_all(&cache).unwrap_or_else(|e| panic!("creating {}: {e}", cache.display()));
    ensure_tools(&cache);
    let dir = cache.join("node-sdk");
    let modules = dir.join("node_modules");
    let read = |name: &str| {
        let p = js_dir().join(name);
        std::fs::read(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
    };
    let (package, lock) = (read("package.json"), read("package-lock.json"));
    let node = version_of("node").expect("node runs");
    let want = {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        for part in [LAYOUT.as_bytes(), node.as_bytes(), &package, &lock] {
            h.update(part);
            h.update(b"\0");
        }
        hex::encode(h.finalize())
    };
    install_once(&dir, &modules, &want, || {
        install_modules(&dir, &modules, &package, &lock)
    });
    modules
}

/// Installs the pinned packages into `dir` with `npm ci` and checks them.
fn install_modules(dir: &Path, modules: &Path, package: &[u8], lock: &[u8]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("package.json"), package).unwrap();
    std::fs::write(dir.join("package-lock.json"), lock).unwrap();
    let mut c = Command::new("npm");
    c.args([
        "ci",
        "--no-audit",
        "--no-fund",
        "--ignore-scripts",
        "--no-update-notifier",
    ])
    .current_dir(dir);
    run_setup(
        c,
        "installing the pinned CloudEvents JavaScript SDK with `npm ci` (these tests need \
         the npm registry; they do not skip without it)",
    );
    // The installed versions must be exactly the pins.
    let pins: Value = serde_json::from_slice(package).expect("tests/js/package.json is JSON");
    let deps = pins["dependencies"]
        .as_object()
        .expect("tests/js/package.json has dependencies");
    for (name, pin) in deps {
        let pin = pin.as_str().unwrap_or_default();
        assert!(
            !pin.is_empty() && pin.chars().all(|c| c.is_ascii_digit() || c == '.'),
            "tests/js/package.json: {name} {pin:?} is not pinned to an exact version"
        );
        let p = modules.join(name).join("package.json");
        let text = std::fs::read(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()));
        let got: Value = serde_json::from_slice(&text).expect("an installed package.json");
        assert_eq!(
            got["version"].as_str(),
            Some(pin),
            "installed {name} is not the pinned version"
        );
    }
    // The SDK loads with this Node.js.
    let mut c = Command::new("node");
    c.args(["-e", "require('cloudevents')"])
        .env("NODE_PATH", modules);
    run_setup(c, "loading the installed SDK with node");
}
