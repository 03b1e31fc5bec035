//! NATS servers for cluster-mode tests: a cluster started by scripts/nats.sh (the pinned
//! server it installs), stopped on drop.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use async_nats::jetstream;

/// A NATS cluster started by scripts/nats.sh, stopped on drop.
pub struct Cluster {
    dir: tempfile::TempDir,
    /// The servers as scripts/nats.sh describes them (name, pid, client_url, ...).
    pub servers: Vec<serde_json::Value>,
}

impl Cluster {
    pub fn up(n: usize) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let out = Command::new("bash")
            .arg(root.join("scripts/nats.sh"))
            .arg("up")
            .arg(dir.path())
            .arg(n.to_string())
            .output()
            .expect("run scripts/nats.sh");
        assert!(
            out.status.success(),
            "scripts/nats.sh up failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let json = std::fs::read_to_string(dir.path().join("nats.json")).unwrap();
        let servers: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
        assert_eq!(servers.len(), n);
        Cluster { dir, servers }
    }

    pub fn urls(&self) -> Vec<String> {
        self.servers
            .iter()
            .map(|s| s["client_url"].as_str().unwrap().to_string())
            .collect()
    }

    pub fn pid_of(&self, name: &str) -> i32 {
        let s = self
            .servers
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("no server {name}"));
        s["pid"].as_i64().unwrap() as i32
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let _ = Command::new("bash")
            .arg(root.join("scripts/nats.sh"))
            .arg("down")
            .arg(self.path())
            .status();
    }
}

/// A JetStream context on `c` (5 s request timeout).
pub async fn connect(c: &Cluster) -> jetstream::Context {
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(c.urls())
        .await
        .expect("connect to NATS");
    let mut js = jetstream::new(client);
    js.set_timeout(Duration::from_secs(5));
    js
}

/// Waits until the stream `name` has a Raft leader: a stream (or KV bucket) just created
/// answers "no responders" to appends until its replicas elected one.
pub async fn until_led(js: &jetstream::Context, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let led = match js.get_stream(name).await {
            Ok(mut s) => s
                .info()
                .await
                .ok()
                .and_then(|i| i.cluster.as_ref().and_then(|c| c.leader.clone()))
                .is_some(),
            Err(_) => false,
        };
        if led {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "stream {name} has no leader after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
