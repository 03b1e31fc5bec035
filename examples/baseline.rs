//! The benchmark baseline: a bare hyper 1.x HTTP/1.1 server that reads the whole request
//! body and answers `200 OK` with an empty body.
//!
//! It mirrors meterd's own server (`src/main.rs` and `src/http/mod.rs`) so that a ratio
//! `meterd / baseline` measured with the same load generator, bodies and core pinning
//! isolates meterd's work per request:
//!
//! - the process: jemalloc as the global allocator;
//! - the runtime: `tokio::runtime::Builder::new_multi_thread().enable_all()` with the
//!   default worker count (one per CPU the process may run on, so `taskset -c 1` gives
//!   one worker, as it does to meterd) and at most 16 blocking threads;
//! - the connection: `http1::Builder` with the tokio timer, a 10 s header read timeout,
//!   a 64 KiB limit on the request head and on the read buffer, half-close, keep-alive,
//!   `TCP_NODELAY`, one task per connection watched by a `GracefulShutdown`;
//! - the request: the body is collected in full (`BodyExt::collect`), as meterd does
//!   before parsing.
//!
//! ```text
//! cargo run --release --example baseline -- 127.0.0.1:0
//! ```
//!
//! Prints `baseline listening on http://ADDR` once bound; SIGTERM or SIGINT stop it.
//!
//! # The durable floor (`--durable buffered|buffered-thread|fsync --data DIR`)
//!
//! With `--durable`, the same server does the least that any exactly-once, durable
//! meter must do per event, and nothing else, so that its rate bounds what a design on
//! RocksDB can reach on the same machine (benches/README.md, "The durable floor"):
//!
//! - parses the body (one event object or an array of them) with serde_json into
//!   borrowed `id`, `contract`, `lever` and an `f64` value;
//! - looks every id up in an embedded RocksDB (`multi_get`; no hashing, no tenant);
//! - writes one record per new id (`id -> contract, lever, value`) in one `WriteBatch`:
//!   `buffered` writes it from the request's own task (the write-ahead log in the page
//!   cache, no handoff to another thread); `buffered-thread` hands it to one writer
//!   thread that writes every queued group as one batch, without fsync, as meterd's
//!   journal writer does; `fsync` hands it to that thread, which commits each group with
//!   one fsync, paced like meterd's `group_commit_interval` (at most one fsync per
//!   millisecond);
//! - adds the value to an in-memory sum per contract (one mutex);
//! - answers `{"accepted":N,"duplicates":D,"rejected":0}`, which the load generator checks.
//!
//! It leaves out what meterd does beyond that: API keys, levers and contracts, time
//! windows and lateness, exact decimals, quotas, balances, per-minute counters and their
//! flushes into windows, metrics, and dedupe records that outlive the memtable in a
//! compact form. It even skips parts of exactly-once that a real meter cannot: an id
//! repeated within one request, or sent by two requests at once, is counted twice (meterd
//! claims ids in memory for that). RocksDB runs with its defaults (LZ4), one column
//! family.
//!
//! ```text
//! cargo run --release --example baseline -- 127.0.0.1:0 --durable fsync --data /tmp/floor
//! ```

use std::borrow::Cow;
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

/// meterd's allocator (`src/main.rs`).
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// meterd's `http::MAX_HEAD_BYTES`.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// meterd's default `header_read_timeout`.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads the whole body, then answers 200 with an empty body (or, with a floor, does the
/// floor's work first). A body that fails to arrive in full gets a 400, as a truncated
/// body does in meterd.
async fn handle(
    req: Request<Incoming>,
    floor: Option<Arc<Floor>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, body) = match req.into_body().collect().await {
        Ok(body) => {
            let body = body.to_bytes();
            match floor {
                None => {
                    std::hint::black_box(body);
                    (StatusCode::OK, Bytes::new())
                }
                Some(f) => match f.ingest(&body).await {
                    Ok((accepted, duplicates)) => (
                        StatusCode::OK,
                        Bytes::from(format!(
                            "{{\"accepted\":{accepted},\"duplicates\":{duplicates},\"rejected\":0}}"
                        )),
                    ),
                    Err(e) => (StatusCode::BAD_REQUEST, Bytes::from(e)),
                },
            }
        }
        Err(_) => (StatusCode::BAD_REQUEST, Bytes::new()),
    };
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    Ok(resp)
}

/// One event as the floor reads it (the load generator's fields).
#[derive(serde::Deserialize)]
struct FloorEvent<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(borrow)]
    contract: Cow<'a, str>,
    #[serde(borrow)]
    lever: Cow<'a, str>,
    value: f64,
}

/// A request body: one event or an array of them.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum FloorBody<'a> {
    #[serde(borrow)]
    Many(Vec<FloorEvent<'a>>),
    #[serde(borrow)]
    One(FloorEvent<'a>),
}

/// A group of records for the fsync writer and where to say it is durable.
type FloorCommit = (
    Vec<(Vec<u8>, Vec<u8>)>,
    tokio::sync::oneshot::Sender<Result<(), String>>,
);

/// The durable floor's state (see the module docs).
struct Floor {
    db: Arc<rocksdb::DB>,
    /// The writer thread's queue (`buffered-thread` and `fsync`); `None` writes inline.
    writer: Option<crossbeam_channel::Sender<FloorCommit>>,
    /// Sum of the values per contract.
    sums: Mutex<HashMap<String, f64>>,
}

impl Floor {
    fn open(dir: &str, mode: &str) -> Result<Floor, String> {
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(true);
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        let db = Arc::new(rocksdb::DB::open(&opts, dir).map_err(|e| e.to_string())?);
        let fsync = mode == "fsync";
        let tx = (mode != "buffered").then(|| {
            let (tx, rx) = crossbeam_channel::bounded::<FloorCommit>(65_536);
            let db = db.clone();
            std::thread::Builder::new()
                .name("floor-writer".into())
                .spawn(move || floor_writer(&db, &rx, fsync))
                .expect("spawn the writer");
            tx
        });
        Ok(Floor {
            db,
            writer: tx,
            sums: Mutex::new(HashMap::new()),
        })
    }

    /// Parses, dedupes and durably records `body`'s events: (accepted, duplicates).
    async fn ingest(&self, body: &[u8]) -> Result<(usize, usize), String> {
        let events = match serde_json::from_slice::<FloorBody<'_>>(body) {
            Ok(FloorBody::Many(v)) => v,
            Ok(FloorBody::One(e)) => vec![e],
            Err(e) => return Err(e.to_string()),
        };
        let found = self.db.multi_get(events.iter().map(|e| e.id.as_bytes()));
        let mut records = Vec::with_capacity(events.len());
        let mut fresh = Vec::with_capacity(events.len());
        for (e, r) in events.iter().zip(found) {
            if r.map_err(|e| e.to_string())?.is_some() {
                continue;
            }
            let mut v = Vec::with_capacity(e.contract.len() + e.lever.len() + 10);
            v.extend_from_slice(e.contract.as_bytes());
            v.push(0);
            v.extend_from_slice(e.lever.as_bytes());
            v.push(0);
            v.extend_from_slice(&e.value.to_le_bytes());
            records.push((e.id.as_bytes().to_vec(), v));
            fresh.push(e);
        }
        let accepted = fresh.len();
        if accepted > 0 {
            match &self.writer {
                None => {
                    let mut batch = rocksdb::WriteBatch::default();
                    for (k, v) in &records {
                        batch.put(k, v);
                    }
                    self.db.write(batch).map_err(|e| e.to_string())?;
                }
                Some(tx) => {
                    let (done, wait) = tokio::sync::oneshot::channel();
                    tx.send((records, done)).map_err(|e| e.to_string())?;
                    wait.await.map_err(|e| e.to_string())??;
                }
            }
            let mut sums = self.sums.lock().expect("sums lock");
            for e in fresh {
                match sums.get_mut(e.contract.as_ref()) {
                    Some(s) => *s += e.value,
                    None => {
                        sums.insert(e.contract.to_string(), e.value);
                    }
                }
            }
        }
        Ok((accepted, events.len() - accepted))
    }
}

/// The floor's writer thread: takes every queued group and writes them as one batch; with
/// `fsync`, with one fsync, at most one per `GROUP_COMMIT_INTERVAL` (meterd's default
/// pacing).
fn floor_writer(db: &rocksdb::DB, rx: &crossbeam_channel::Receiver<FloorCommit>, fsync: bool) {
    const GROUP_COMMIT_INTERVAL: Duration = Duration::from_millis(1);
    let mut sync = rocksdb::WriteOptions::default();
    sync.set_sync(fsync);
    let mut last: Option<Instant> = None;
    while let Ok(first) = rx.recv() {
        if let Some(at) = last.filter(|_| fsync) {
            let wait = (at + GROUP_COMMIT_INTERVAL).saturating_duration_since(Instant::now());
            if !wait.is_zero() {
                std::thread::sleep(wait);
            }
        }
        let mut group = vec![first];
        group.extend(rx.try_iter().take(4096));
        let mut batch = rocksdb::WriteBatch::default();
        for (records, _) in &group {
            for (k, v) in records {
                batch.put(k, v);
            }
        }
        last = Some(Instant::now());
        let r = db.write_opt(batch, &sync).map_err(|e| e.to_string());
        for (_, done) in group {
            let _ = done.send(r.clone());
        }
    }
}

async fn serve(listener: TcpListener, floor: Option<Arc<Floor>>) {
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_header_size(MAX_HEAD_BYTES)
        .max_buf_size(MAX_HEAD_BYTES.max(8192))
        .half_close(true)
        .keep_alive(true);
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        eprintln!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let floor = floor.clone();
                let service = service_fn(move |req| handle(req, floor.clone()));
                let conn = builder.serve_connection(TokioIo::new(stream), service);
                let fut = graceful.watch(conn);
                tokio::spawn(async move {
                    let _ = fut.await;
                });
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(Duration::from_secs(5), graceful.shutdown()).await;
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let addr = args
        .first()
        .filter(|a| !a.starts_with("--"))
        .cloned()
        .unwrap_or_else(|| "127.0.0.1:0".to_string());
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let floor = match (flag("--durable").as_deref(), flag("--data")) {
        (None, _) => None,
        (Some(mode @ ("buffered" | "buffered-thread" | "fsync")), Some(dir)) => {
            match Floor::open(&dir, mode) {
                Ok(f) => Some(Arc::new(f)),
                Err(e) => {
                    eprintln!("cannot open {dir}: {e}");
                    return std::process::ExitCode::FAILURE;
                }
            }
        }
        _ => {
            eprintln!(
                "usage: baseline [ADDR] [--durable buffered|buffered-thread|fsync --data DIR]"
            );
            return std::process::ExitCode::FAILURE;
        }
    };
    // The same builder calls as meterd's `main` (the thread name aside).
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("baseline-worker")
        .max_blocking_threads(16)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    rt.block_on(async {
        let listener = match TcpListener::bind(&addr).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("cannot bind {addr}: {e}");
                return std::process::ExitCode::FAILURE;
            }
        };
        match listener.local_addr() {
            Ok(a) => println!("baseline listening on http://{a}"),
            Err(e) => {
                eprintln!("no local address: {e}");
                return std::process::ExitCode::FAILURE;
            }
        }
        serve(listener, floor).await;
        std::process::ExitCode::SUCCESS
    })
}
