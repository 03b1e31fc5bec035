//! A local meterd cluster for tests: 3 NATS servers and 3 meterd nodes started by
//! scripts/cluster.sh (the real binary, the pinned NATS), stopped on drop; processes can
//! be killed, paused and restarted.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// One process of the cluster.
#[derive(Debug, Clone)]
pub struct Proc {
    /// `nats` or `meterd`.
    pub kind: String,
    /// Its name (`n1`, `meterd-1`).
    pub name: String,
    /// Its pid (updated on restart).
    pub pid: i32,
    /// NATS: client URL; meterd: API URL.
    pub url: String,
    /// NATS: monitoring URL; meterd: metrics URL.
    pub side_url: String,
    /// meterd: config file; NATS: its nats.conf.
    pub config: PathBuf,
    /// Its log file.
    pub log: PathBuf,
}

/// A running local cluster.
pub struct LocalCluster {
    dir: tempfile::TempDir,
    /// Every process.
    pub procs: Vec<Proc>,
    /// The plain keys of the tenant `default`: admin, ingest, read.
    pub keys: (String, String, String),
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

impl LocalCluster {
    /// Starts 3 NATS + 3 meterd with `partitions` and the lease timing given.
    pub fn up(partitions: u32, lease_ttl: &str, lease_renew: &str) -> LocalCluster {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("bash")
            .arg(root().join("scripts/cluster.sh"))
            .arg("up")
            .arg(dir.path())
            .env("METERD", env!("CARGO_BIN_EXE_meterd"))
            .env("PARTITIONS", partitions.to_string())
            .env("LEASE_TTL", lease_ttl)
            .env("LEASE_RENEW", lease_renew)
            .output()
            .expect("run scripts/cluster.sh");
        assert!(
            out.status.success(),
            "scripts/cluster.sh up failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let json: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("cluster.json")).unwrap(),
        )
        .unwrap();
        let procs = json["processes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                let kind = p["kind"].as_str().unwrap().to_string();
                let name = p["name"].as_str().unwrap().to_string();
                let s = |k: &str| p[k].as_str().unwrap_or("").to_string();
                let (url, side_url, config, log) = if kind == "nats" {
                    let d = dir.path().join("nats").join(format!("nats-{name}"));
                    (
                        s("client_url"),
                        s("monitor_url"),
                        d.join("nats.conf"),
                        d.join("log"),
                    )
                } else {
                    (
                        s("api_url"),
                        s("metrics_url"),
                        PathBuf::from(s("config")),
                        PathBuf::from(s("log")),
                    )
                };
                Proc {
                    kind,
                    name,
                    pid: p["pid"].as_i64().unwrap() as i32,
                    url,
                    side_url,
                    config,
                    log,
                }
            })
            .collect();
        let k = |r: &str| json["keys"][r].as_str().unwrap().to_string();
        LocalCluster {
            dir,
            procs,
            keys: (k("admin"), k("ingest"), k("read")),
        }
    }

    /// The meterd nodes.
    pub fn nodes(&self) -> Vec<&Proc> {
        self.procs.iter().filter(|p| p.kind == "meterd").collect()
    }

    /// The process named `name`.
    pub fn proc(&self, name: &str) -> &Proc {
        self.procs.iter().find(|p| p.name == name).unwrap()
    }

    /// Sends `signal` (`KILL`, `STOP`, `CONT`) to the process named `name`.
    pub fn signal(&self, name: &str, signal: &str) {
        let pid = self.proc(name).pid;
        let ok = Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{signal} {name} ({pid})");
    }

    /// Kills `name` with SIGKILL and waits until it is gone.
    pub fn kill9(&self, name: &str) {
        self.signal(name, "KILL");
        let pid = self.proc(name).pid;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
            // A zombie until reaped by its parent (the shell that started it is gone, so
            // init reaps it): `stat` says Z.
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            if stat.split_whitespace().nth(2) == Some("Z") {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Adds a meterd node named `name`: the configuration of the first node with its own
    /// name, free ports and data dir, started like the others.
    pub fn add_node(&mut self, name: &str) {
        let first = self.nodes()[0].clone();
        let dir = self.dir.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let ports: Vec<u16> = (0..2)
            .map(|_| {
                std::net::TcpListener::bind("127.0.0.1:0")
                    .unwrap()
                    .local_addr()
                    .unwrap()
                    .port()
            })
            .collect();
        let text = std::fs::read_to_string(&first.config).unwrap();
        let mut out = String::new();
        for line in text.lines() {
            let line = if line.starts_with("listen =") {
                format!("listen = \"127.0.0.1:{}\"", ports[0])
            } else if line.starts_with("metrics_listen =") {
                format!("metrics_listen = \"127.0.0.1:{}\"", ports[1])
            } else if line.starts_with("data_dir =") {
                format!("data_dir = \"{}\"", dir.join("data").display())
            } else if line.starts_with("node =") {
                format!("node = \"{name}\"")
            } else {
                line.to_string()
            };
            out.push_str(&line);
            out.push('\n');
        }
        let config = dir.join("meterd.toml");
        std::fs::write(&config, out).unwrap();
        self.procs.push(Proc {
            kind: "meterd".into(),
            name: name.into(),
            pid: 0,
            url: format!("http://127.0.0.1:{}", ports[0]),
            side_url: format!("http://127.0.0.1:{}", ports[1]),
            config,
            log: dir.join("log"),
        });
        self.restart(name);
    }

    /// Starts `name` again with its original configuration (after a kill).
    pub fn restart(&mut self, name: &str) {
        let p = self.proc(name).clone();
        let log = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&p.log)
            .unwrap();
        let child = if p.kind == "nats" {
            let bin = Command::new("bash")
                .arg(root().join("scripts/nats.sh"))
                .arg("install")
                .output()
                .unwrap();
            let bin = String::from_utf8(bin.stdout).unwrap().trim().to_string();
            Command::new(bin)
                .arg("-c")
                .arg(&p.config)
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .stdin(Stdio::null())
                .spawn()
                .unwrap()
        } else {
            Command::new(env!("CARGO_BIN_EXE_meterd"))
                .args(["serve", "--config"])
                .arg(&p.config)
                .env("RUST_LOG", "info")
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .stdin(Stdio::null())
                .spawn()
                .unwrap()
        };
        let pid = child.id() as i32;
        // Reaped by a thread, so a later kill leaves no zombie behind.
        std::thread::spawn(move || {
            let mut child = child;
            let _ = child.wait();
        });
        // scripts/cluster.sh down stops what the pid file names.
        std::fs::write(p.config.parent().unwrap().join("pid"), pid.to_string()).unwrap();
        self.procs.iter_mut().find(|q| q.name == name).unwrap().pid = pid;
    }

    /// Per partition, the node that owns it and its epoch, from every live node's
    /// metrics (a node that cannot be scraped is skipped).
    pub fn owners(&self) -> BTreeMap<u32, (String, u64)> {
        let mut out: BTreeMap<u32, (String, u64)> = BTreeMap::new();
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        for n in self.nodes() {
            let Ok(resp) = client.get(format!("{}/metrics", n.side_url)).send() else {
                continue;
            };
            let Ok(text) = resp.text() else { continue };
            for line in text.lines() {
                let Some(rest) = line.strip_prefix("meterd_cluster_partition_epoch{partition=\"")
                else {
                    continue;
                };
                let (p, rest) = rest.split_once('"').unwrap();
                let epoch: f64 = rest.rsplit(' ').next().unwrap().parse().unwrap();
                if epoch > 0.0 {
                    let p: u32 = p.parse().unwrap();
                    let newer = out.get(&p).is_none_or(|(_, e)| *e < epoch as u64);
                    if newer {
                        out.insert(p, (n.name.clone(), epoch as u64));
                    }
                }
            }
        }
        out
    }

    /// The directory everything runs in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        // Continue paused processes so they can stop.
        for p in &self.procs {
            let _ = Command::new("kill")
                .args(["-CONT", &p.pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
        let _ = Command::new("bash")
            .arg(root().join("scripts/cluster.sh"))
            .arg("down")
            .arg(self.dir.path())
            .status();
        // METERD_KEEP_CLUSTER=1 keeps the logs and data for a look after the test.
        if std::env::var_os("METERD_KEEP_CLUSTER").is_some() {
            let kept = self.dir.path().to_path_buf();
            std::mem::forget(std::mem::replace(
                &mut self.dir,
                tempfile::tempdir().unwrap(),
            ));
            eprintln!("cluster kept in {}", kept.display());
        }
    }
}
