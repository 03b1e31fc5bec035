//! HTTP/1.1 load generator for the meterd benchmarks (`benches/run.sh`).
//!
//! One tool drives meterd and the bare hyper baseline with byte-identical bodies, so a
//! ratio between the two measures the servers, not the clients. Raw keep-alive TCP
//! connections on a single-threaded tokio runtime (pin it with `taskset`); each request
//! is a pre-built buffer whose id digits are patched in place, so a 1,000-event batch
//! costs the generator a few microseconds, not a JSON serialisation.
//!
//! # Modes
//!
//! - **closed loop** (`--rate 0`, the default): every connection sends its next request
//!   as soon as the previous response arrived. Throughput = responses completed inside
//!   the measured window / its length; the `--warmup` before it is not counted.
//! - **fixed rate** (`--rate R`): request `i` is *intended* at `start + i / R`, whatever
//!   happened before. A pacing thread releases one permit per intended send (tokio
//!   semaphore, FIFO) every 200 us; a free connection takes the next index. Latency is
//!   measured from the **intended** send time, so time a request spent waiting for a
//!   free connection (because earlier responses were slow) is counted: this corrects
//!   coordinated omission the way wrk2 does. Requests still unanswered at the end of the
//!   grace period are counted with their latency so far (a lower bound).
//! - **count** (`--requests N`): sends exactly N requests (closed loop), e.g. to load a
//!   known number of events.
//!
//! # Bodies (`--body`)
//!
//! Events are shaped like `benches/common.lua`'s: `{"id":"<prefix>-<n>","contract":
//! "<contract-prefix><k>","lever":"<lever>","value":1}` with `n` a global 13-digit
//! event number (every id distinct) and `k = n mod contracts`, zero-padded to the width
//! of `contracts - 1`.
//! - `single`: one event object per request;
//! - `batch`: a JSON array of `--events` events;
//! - `keys`: like `batch`, plus `"bucket":"b<j>"` and `"time"`, so that event `n` lands
//!   in (contract `n mod K`, bucket `(n / K) mod B`, minute `(n / K / B) mod M` before
//!   the current minute): `K * B * M` events make that many distinct counter keys;
//! - `get`: a GET of `--path` (e.g. a balance), no body.
//!
//! # Flush tagging (`--flush-pid`)
//!
//! A sampler thread reads `/proc/PID/task/TID/schedstat` (cumulative on-CPU ns) and the
//! state letter of `/proc/PID/task/TID/stat` of meterd's flusher thread (named
//! `meterd-flush`) every millisecond. The flusher sleeps between flushes, so a sample
//! whose CPU time grew, or that finds it running (R) or in disk wait (D), marks the
//! millisecond before it as flush time. A request whose span [intended send, response]
//! overlaps such an interval counts as "during flush", the others as "between". The
//! sampler reads two small proc files per ms on the generator's core; it adds nothing to
//! the server.
//!
//! # Side stream (`--side-path`, `--side-rate`, `--side-conns`)
//!
//! A second fixed-rate stream of GET requests (e.g. `/v1/contracts/c/balance`) on its own
//! connections and histogram, paced by the same thread.
//!
//! # Output
//!
//! A human summary, then one line `LOADGEN key=value ...` that `benches/run.sh` parses.
//! `loadgen wait-ready --url URL --since-ns T0` polls URL every 2 ms until it answers 200
//! and prints `READY ms=<now - T0>` (T0 from `date +%s%N`).
//!
//! `loadgen stalls --seconds S` spins on its CPU and prints `STALLS ...`: how much time
//! the CPU was taken away (gaps over 1 ms). `benches/run.sh` runs it on the server core,
//! once alone and once while `dd oflag=dsync` fsyncs as fast as it can on the other core.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand, ValueEnum};
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

/// Width of the event number in ids.
const ID_DIGITS: usize = 13;
/// Pacing tick of the fixed-rate mode.
const TICK: Duration = Duration::from_micros(200);
/// Flush sampler period.
const SAMPLE: Duration = Duration::from_millis(1);
/// Largest latency the histograms hold (µs).
const MAX_LATENCY_US: u64 = 120_000_000;

#[derive(Parser, Debug)]
#[command(
    name = "loadgen",
    about = "HTTP/1.1 load generator for meterd's benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start: the size difference between the variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum Command {
    /// Drives load and prints a summary and a `LOADGEN` line.
    Run(RunArgs),
    /// Polls a URL until it answers 200; prints `READY ms=...` since `--since-ns`.
    WaitReady {
        /// e.g. http://127.0.0.1:9090/readyz
        #[arg(long)]
        url: String,
        /// Epoch nanoseconds to measure from (`date +%s%N` before the start).
        #[arg(long)]
        since_ns: Option<u128>,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 120.0)]
        timeout: f64,
    },
    /// Spins on the CPU it is pinned to and prints `STALLS ...`: how often and how long
    /// the CPU was taken from it (gaps of more than 1 ms between two clock reads).
    Stalls {
        /// Seconds to spin.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum BodyKind {
    Single,
    Batch,
    Keys,
    Get,
}

#[derive(clap::Args, Debug, Clone)]
struct RunArgs {
    /// Server base URL, e.g. http://127.0.0.1:8080
    #[arg(long)]
    url: String,
    /// Request path.
    #[arg(long, default_value = "/v1/events")]
    path: String,
    /// Bearer key (omitted when empty).
    #[arg(long, default_value = "")]
    key: String,
    #[arg(long, value_enum, default_value = "single")]
    body: BodyKind,
    /// Events per request for `batch` and `keys`.
    #[arg(long, default_value_t = 1000)]
    events: usize,
    /// Contracts the events are spread over (round robin).
    #[arg(long, default_value_t = 8)]
    contracts: u64,
    #[arg(long, default_value = "bench-c")]
    contract_prefix: String,
    #[arg(long, default_value = "bench_calls")]
    lever: String,
    /// `keys`: buckets per contract.
    #[arg(long, default_value_t = 1)]
    buckets: u64,
    /// `keys`: minutes per (contract, bucket), counted back from the current minute.
    #[arg(long, default_value_t = 1)]
    minutes: u64,
    /// Id prefix (default: unique per run).
    #[arg(long)]
    prefix: Option<String>,
    /// Connections.
    #[arg(long, default_value_t = 64)]
    conns: usize,
    /// Requests per second (0: closed loop).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Seconds not measured at the start.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Measured seconds.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Count mode: send exactly this many requests (closed loop, no warm-up).
    #[arg(long)]
    requests: Option<u64>,
    /// Seconds allowed after the end for answers to arrive.
    #[arg(long, default_value_t = 5.0)]
    grace: f64,
    /// Server pid, for its CPU share over the measured window.
    #[arg(long)]
    server_pid: Option<u32>,
    /// meterd pid whose `meterd-flush` thread is sampled to tag latencies.
    #[arg(long)]
    flush_pid: Option<u32>,
    /// Side stream: GET path.
    #[arg(long)]
    side_path: Option<String>,
    /// Side stream: requests per second.
    #[arg(long, default_value_t = 200.0)]
    side_rate: f64,
    /// Side stream: connections.
    #[arg(long, default_value_t = 4)]
    side_conns: usize,
    /// Label echoed in the LOADGEN line.
    #[arg(long, default_value = "")]
    label: String,
    /// Fixed rate: writes every measured request as `intended_unix_us<TAB>latency_us`
    /// to this file, to place the tail in time against the server's logs.
    #[arg(long)]
    spans_out: Option<std::path::PathBuf>,
}

// ---------------------------------------------------------------------------------------
// Requests

/// Where the variable digits of one event sit in the request buffer.
#[derive(Clone, Copy)]
struct Slots {
    id: usize,
    contract: usize,
    bucket: usize,
    time: usize,
}

/// A request buffer (head + body) whose per-event digits are patched for each request.
#[derive(Clone)]
struct Template {
    buf: Vec<u8>,
    slots: Vec<Slots>,
    contracts: u64,
    contract_w: usize,
    buckets: u64,
    bucket_w: usize,
    /// `keys`: the `time` strings per minute offset (all the same width).
    times: Arc<Vec<String>>,
}

fn width(max: u64) -> usize {
    max.max(1).to_string().len()
}

fn put_digits(dst: &mut [u8], mut v: u64) {
    for b in dst.iter_mut().rev() {
        *b = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

impl Template {
    fn new(a: &RunArgs, host: &str, prefix: &str) -> Template {
        let (n, keyed) = match a.body {
            BodyKind::Single => (1, false),
            BodyKind::Batch => (a.events.max(1), false),
            BodyKind::Keys => (a.events.max(1), true),
            BodyKind::Get => (0, false),
        };
        let array = matches!(a.body, BodyKind::Batch | BodyKind::Keys);
        let contract_w = width(a.contracts.saturating_sub(1));
        let bucket_w = width(a.buckets.saturating_sub(1));
        let times: Vec<String> = if keyed {
            let now_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .expect("clock after 1970")
                .as_millis() as i64;
            let minute = now_ms - now_ms.rem_euclid(60_000);
            (0..a.minutes.max(1) as i64)
                .map(|m| {
                    chrono::DateTime::from_timestamp_millis(minute - m * 60_000 + 30_000)
                        .expect("valid time")
                        .format("%Y-%m-%dT%H:%M:%SZ")
                        .to_string()
                })
                .collect()
        } else {
            Vec::new()
        };
        let mut body = String::new();
        let mut slots = Vec::with_capacity(n);
        if array {
            body.push('[');
        }
        for j in 0..n {
            if j > 0 {
                body.push(',');
            }
            let mut s = Slots {
                id: 0,
                contract: 0,
                bucket: 0,
                time: 0,
            };
            let _ = write!(body, r#"{{"id":"{prefix}-"#);
            s.id = body.len();
            body.push_str(&"0".repeat(ID_DIGITS));
            let _ = write!(body, r#"","contract":"{}"#, a.contract_prefix);
            s.contract = body.len();
            body.push_str(&"0".repeat(contract_w));
            let _ = write!(body, r#"","lever":"{}","value":1"#, a.lever);
            if keyed {
                body.push_str(r#","bucket":"b"#);
                s.bucket = body.len();
                body.push_str(&"0".repeat(bucket_w));
                body.push_str(r#"","time":""#);
                s.time = body.len();
                body.push_str(&times[0]);
                body.push('"');
            }
            body.push('}');
            slots.push(s);
        }
        if array {
            body.push(']');
        }
        let mut head = String::new();
        let method = if a.body == BodyKind::Get {
            "GET"
        } else {
            "POST"
        };
        let _ = write!(head, "{method} {} HTTP/1.1\r\nHost: {host}\r\n", a.path);
        if !a.key.is_empty() {
            let _ = write!(head, "Authorization: Bearer {}\r\n", a.key);
        }
        if a.body != BodyKind::Get {
            let _ = write!(
                head,
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            );
        }
        head.push_str("\r\n");
        let off = head.len();
        for s in &mut slots {
            s.id += off;
            s.contract += off;
            s.bucket += off;
            s.time += off;
        }
        let mut buf = head.into_bytes();
        buf.extend_from_slice(body.as_bytes());
        Template {
            buf,
            slots,
            contracts: a.contracts.max(1),
            contract_w,
            buckets: a.buckets.max(1),
            bucket_w,
            times: Arc::new(times),
        }
    }

    fn events(&self) -> u64 {
        self.slots.len() as u64
    }

    /// Fills in request number `r` (events `r * n .. r * n + n`).
    fn fill(&mut self, r: u64) -> &[u8] {
        let n = self.slots.len() as u64;
        for (j, s) in self.slots.iter().enumerate() {
            let e = r * n + j as u64;
            put_digits(&mut self.buf[s.id..s.id + ID_DIGITS], e);
            let k = e % self.contracts;
            put_digits(&mut self.buf[s.contract..s.contract + self.contract_w], k);
            if !self.times.is_empty() {
                let rest = e / self.contracts;
                put_digits(
                    &mut self.buf[s.bucket..s.bucket + self.bucket_w],
                    rest % self.buckets,
                );
                let m = (rest / self.buckets) % self.times.len() as u64;
                let t = self.times[m as usize].as_bytes();
                self.buf[s.time..s.time + t.len()].copy_from_slice(t);
            }
        }
        &self.buf
    }
}

// ---------------------------------------------------------------------------------------
// HTTP client

struct Response {
    status: u16,
    body: Vec<u8>,
    close: bool,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

async fn fill_more(s: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<()> {
    buf.reserve(16 * 1024);
    if s.read_buf(buf).await? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed",
        ));
    }
    Ok(())
}

/// Reads one response (Content-Length or chunked body). `buf` is scratch space.
async fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<Response> {
    buf.clear();
    let head_end = loop {
        if let Some(p) = find(buf, b"\r\n\r\n") {
            break p + 4;
        }
        fill_more(s, buf).await?;
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| bad("non-UTF-8 head"))?;
    let status: u16 = head
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let mut length: Option<usize> = None;
    let mut chunked = false;
    let mut close = false;
    for line in head.split("\r\n").skip(1) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse().map_err(|_| bad("bad content-length"))?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.eq_ignore_ascii_case("chunked");
        } else if name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close");
        }
    }
    if chunked {
        let mut body = Vec::new();
        let mut pos = head_end;
        loop {
            let line_end = loop {
                if let Some(p) = find(&buf[pos..], b"\r\n") {
                    break pos + p;
                }
                fill_more(s, buf).await?;
            };
            let size_text = std::str::from_utf8(&buf[pos..line_end])
                .map_err(|_| bad("bad chunk size"))?
                .split(';')
                .next()
                .unwrap_or("")
                .trim();
            let size = usize::from_str_radix(size_text, 16).map_err(|_| bad("bad chunk size"))?;
            pos = line_end + 2;
            while buf.len() < pos + size + 2 {
                fill_more(s, buf).await?;
            }
            body.extend_from_slice(&buf[pos..pos + size]);
            pos += size + 2;
            if size == 0 {
                return Ok(Response {
                    status,
                    body,
                    close,
                });
            }
        }
    }
    let len = length.unwrap_or(0);
    while buf.len() < head_end + len {
        fill_more(s, buf).await?;
    }
    Ok(Response {
        status,
        body: buf[head_end..head_end + len].to_vec(),
        close,
    })
}

async fn connect(addr: &str) -> io::Result<TcpStream> {
    let s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// A keep-alive connection that reconnects after errors.
struct Conn {
    addr: String,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
}

impl Conn {
    async fn roundtrip(&mut self, req: &[u8]) -> io::Result<Response> {
        if self.stream.is_none() {
            self.stream = Some(connect(&self.addr).await?);
        }
        let s = self.stream.as_mut().expect("connected");
        let r = async {
            s.write_all(req).await?;
            read_response(s, &mut self.buf).await
        }
        .await;
        match r {
            Ok(resp) => {
                if resp.close {
                    self.stream = None;
                }
                Ok(resp)
            }
            Err(e) => {
                self.stream = None;
                Err(e)
            }
        }
    }
}

fn json_count(body: &[u8], field: &str) -> u64 {
    let Some(p) = find(body, field.as_bytes()) else {
        return 0;
    };
    body[p + field.len()..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .fold(0u64, |acc, b| acc * 10 + u64::from(b - b'0'))
}

// ---------------------------------------------------------------------------------------
// Statistics

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("histogram bounds")
}

struct Stats {
    requests_ok: u64,
    non2xx: u64,
    errors: u64,
    unfinished: u64,
    accepted: u64,
    duplicates: u64,
    rejected: u64,
    statuses: BTreeMap<u16, u64>,
    sample: Option<String>,
    hist: Histogram<u64>,
    /// Fixed rate: (intended, done) in ns since the start, per measured request.
    spans: Vec<(u64, u64)>,
}

impl Stats {
    fn new() -> Stats {
        Stats {
            requests_ok: 0,
            non2xx: 0,
            errors: 0,
            unfinished: 0,
            accepted: 0,
            duplicates: 0,
            rejected: 0,
            statuses: BTreeMap::new(),
            sample: None,
            hist: histogram(),
            spans: Vec::new(),
        }
    }

    fn merge(&mut self, o: Stats) {
        self.requests_ok += o.requests_ok;
        self.non2xx += o.non2xx;
        self.errors += o.errors;
        self.unfinished += o.unfinished;
        self.accepted += o.accepted;
        self.duplicates += o.duplicates;
        self.rejected += o.rejected;
        for (k, v) in o.statuses {
            *self.statuses.entry(k).or_default() += v;
        }
        if self.sample.is_none() {
            self.sample = o.sample;
        }
        self.hist.add(&o.hist).expect("same bounds");
        self.spans.extend(o.spans);
    }

    fn record(&mut self, resp: &Response, latency: Duration, count_events: bool) {
        self.hist
            .saturating_record((latency.as_micros() as u64).clamp(1, MAX_LATENCY_US));
        if (200..300).contains(&resp.status) {
            self.requests_ok += 1;
            if count_events {
                self.accepted += json_count(&resp.body, "\"accepted\":");
                self.duplicates += json_count(&resp.body, "\"duplicates\":");
                self.rejected += json_count(&resp.body, "\"rejected\":");
            }
        } else {
            self.non2xx += 1;
            *self.statuses.entry(resp.status).or_default() += 1;
            if self.sample.is_none() {
                let text = String::from_utf8_lossy(&resp.body);
                self.sample = Some(text.chars().take(200).collect());
            }
        }
    }
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn percentiles(h: &Histogram<u64>) -> (f64, f64, f64, f64, f64) {
    if h.is_empty() {
        return (0.0, 0.0, 0.0, 0.0, 0.0);
    }
    (
        ms(h.value_at_quantile(0.50)),
        ms(h.value_at_quantile(0.90)),
        ms(h.value_at_quantile(0.99)),
        ms(h.value_at_quantile(0.999)),
        ms(h.max()),
    )
}

/// utime + stime of a process in clock ticks (USER_HZ = 100 on Linux).
fn cpu_ticks(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    // After the comm: state is field 3, utime 14 and stime 15 (1-based overall).
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

// ---------------------------------------------------------------------------------------
// Flush sampler

fn flush_tid(pid: u32) -> Option<u32> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    for entry in dir.flatten() {
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.trim() == "meterd-flush" {
            return entry.file_name().to_str()?.parse().ok();
        }
    }
    None
}

/// (on-CPU ns, state letter) of one thread.
fn thread_sample(pid: u32, tid: u32) -> Option<(u64, u8)> {
    let sched = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/schedstat")).ok()?;
    let cpu: u64 = sched.split(' ').next()?.parse().ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
    let state = *stat.as_bytes().get(stat.rfind(')')? + 2)?;
    Some((cpu, state))
}

/// Samples the flusher every ms until `stop`; returns merged active intervals (ns since
/// `start`) and the flusher's total on-CPU ns over the run.
fn sample_flushes(pid: u32, start: Instant, stop: Arc<AtomicBool>) -> (Vec<(u64, u64)>, u64) {
    let Some(tid) = flush_tid(pid) else {
        eprintln!("loadgen: no meterd-flush thread in process {pid}");
        return (Vec::new(), 0);
    };
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut prev_t = start.elapsed().as_nanos() as u64;
    let Some((first_cpu, _)) = thread_sample(pid, tid) else {
        return (out, 0);
    };
    let mut prev_cpu = first_cpu;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(SAMPLE);
        let Some((cpu, state)) = thread_sample(pid, tid) else {
            break;
        };
        let t = start.elapsed().as_nanos() as u64;
        if cpu > prev_cpu || state == b'R' || state == b'D' {
            match out.last_mut() {
                Some(last) if last.1 >= prev_t => last.1 = t,
                _ => out.push((prev_t, t)),
            }
        }
        prev_cpu = cpu;
        prev_t = t;
    }
    (out, prev_cpu - first_cpu)
}

/// Latency (ms) above which a 100 ms window of intended send times counts as slow.
const SLOW_MS: u64 = 20;

/// Runs of consecutive 100 ms windows (by intended send time) in which some request took
/// longer than `slow_ms`: (first window start ns, last window end ns, worst latency ns).
/// They locate a stall in time, to be matched with the server's logs.
fn slow_episodes(spans: &[(u64, u64)], slow_ms: u64) -> Vec<(u64, u64, u64)> {
    const WINDOW_NS: u64 = 100_000_000;
    let mut worst: BTreeMap<u64, u64> = BTreeMap::new();
    for &(i, d) in spans {
        let lat = d.saturating_sub(i);
        if lat > slow_ms * 1_000_000 {
            let w = worst.entry(i / WINDOW_NS).or_default();
            *w = (*w).max(lat);
        }
    }
    let mut out: Vec<(u64, u64, u64)> = Vec::new();
    for (w, lat) in worst {
        match out.last_mut() {
            Some(e) if e.1 == w * WINDOW_NS => {
                e.1 = (w + 1) * WINDOW_NS;
                e.2 = e.2.max(lat);
            }
            _ => out.push((w * WINDOW_NS, (w + 1) * WINDOW_NS, lat)),
        }
    }
    out
}

/// True when `[a, b]` overlaps one of the sorted, disjoint `intervals`.
fn overlaps(intervals: &[(u64, u64)], a: u64, b: u64) -> bool {
    // First interval ending at or after a.
    let i = intervals.partition_point(|iv| iv.1 < a);
    intervals.get(i).is_some_and(|iv| iv.0 <= b)
}

// ---------------------------------------------------------------------------------------
// Runs

struct Plan {
    start: Instant,
    warmup: Duration,
    end: Duration,
    hard_end: Instant,
}

async fn closed_conn(
    mut conn: Conn,
    mut tpl: Template,
    next: Arc<AtomicU64>,
    limit: Option<u64>,
    plan: Arc<Plan>,
    count_events: bool,
) -> Stats {
    let mut st = Stats::new();
    loop {
        let r = next.fetch_add(1, Ordering::Relaxed);
        if limit.is_some_and(|l| r >= l) {
            break;
        }
        let req = tpl.fill(r);
        let t0 = Instant::now();
        let res = tokio::time::timeout_at(plan.hard_end.into(), conn.roundtrip(req)).await;
        let t1 = Instant::now();
        let at = t1 - plan.start;
        let measured = limit.is_some() || (at >= plan.warmup && at <= plan.end);
        match res {
            Ok(Ok(resp)) => {
                if measured {
                    st.record(&resp, t1 - t0, count_events);
                }
            }
            Ok(Err(_)) => {
                if measured {
                    st.errors += 1;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(_) => {
                st.unfinished += 1;
                break;
            }
        }
        if limit.is_none() && at >= plan.end {
            break;
        }
    }
    st
}

#[allow(clippy::too_many_arguments)]
async fn paced_conn(
    mut conn: Conn,
    mut tpl: Template,
    next: Arc<AtomicU64>,
    planned: u64,
    rate: f64,
    sem: Arc<Semaphore>,
    plan: Arc<Plan>,
    count_events: bool,
) -> Stats {
    let mut st = Stats::new();
    let warm_ns = plan.warmup.as_nanos() as u64;
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= planned {
            break;
        }
        match sem.acquire().await {
            Ok(p) => p.forget(),
            Err(_) => break,
        }
        let intended_ns = (i as f64 * 1e9 / rate) as u64;
        let req = tpl.fill(i);
        let res = tokio::time::timeout_at(plan.hard_end.into(), conn.roundtrip(req)).await;
        let done_ns = plan.start.elapsed().as_nanos() as u64;
        let latency = Duration::from_nanos(done_ns.saturating_sub(intended_ns));
        if intended_ns < warm_ns {
            if res.is_err() {
                break;
            }
            continue;
        }
        match res {
            Ok(Ok(resp)) => {
                st.record(&resp, latency, count_events);
                st.spans.push((intended_ns, done_ns));
            }
            Ok(Err(_)) => st.errors += 1,
            Err(_) => {
                // Unanswered at the hard end: counted with its latency so far.
                st.unfinished += 1;
                st.hist
                    .saturating_record((latency.as_micros() as u64).clamp(1, MAX_LATENCY_US));
                st.spans.push((intended_ns, done_ns));
            }
        }
    }
    st
}

struct Stream {
    sem: Arc<Semaphore>,
    rate: f64,
    planned: u64,
}

fn pace(streams: Vec<Stream>, start: Instant) {
    let mut released = vec![0u64; streams.len()];
    loop {
        let t = start.elapsed().as_secs_f64();
        let mut done = true;
        for (s, rel) in streams.iter().zip(released.iter_mut()) {
            let due = ((t * s.rate).floor() as u64 + 1).min(s.planned);
            if due > *rel {
                s.sem.add_permits((due - *rel) as usize);
                *rel = due;
            }
            done &= *rel >= s.planned;
        }
        if done {
            return;
        }
        std::thread::sleep(TICK);
    }
}

fn host_of(url: &str) -> Result<String, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("only http:// URLs: {url}"))?;
    Ok(rest.split('/').next().unwrap_or(rest).to_string())
}

fn unique_prefix() -> String {
    let ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos();
    format!(
        "g{:x}{:x}",
        ns & 0xffff_ffff_ffff,
        std::process::id() & 0xffff
    )
}

async fn run(a: RunArgs) -> Result<(), String> {
    let host = host_of(&a.url)?;
    let prefix = a.prefix.clone().unwrap_or_else(unique_prefix);
    let tpl = Template::new(&a, &host, &prefix);
    let events_per_req = tpl.events();
    let count_events = a.body != BodyKind::Get;
    let fixed = a.rate > 0.0 && a.requests.is_none();
    let warmup = if a.requests.is_some() { 0.0 } else { a.warmup };
    let total = warmup + a.duration;
    // Connections are opened before the clock starts, so connecting is never measured.
    let mut conns = Vec::with_capacity(a.conns.max(1));
    for _ in 0..a.conns.max(1) {
        conns.push(Conn {
            addr: host.clone(),
            stream: connect(&host).await.ok(),
            buf: Vec::with_capacity(64 * 1024),
        });
    }
    let side_count = if a.side_path.is_some() && fixed {
        a.side_conns.max(1)
    } else {
        0
    };
    let mut side_conns = Vec::with_capacity(side_count);
    for _ in 0..side_count {
        side_conns.push(Conn {
            addr: host.clone(),
            stream: connect(&host).await.ok(),
            buf: Vec::with_capacity(16 * 1024),
        });
    }
    let start = Instant::now();
    let start_unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let plan = Arc::new(Plan {
        start,
        warmup: Duration::from_secs_f64(warmup),
        end: Duration::from_secs_f64(total),
        // Count mode has no duration: it ends when the requests are answered (each
        // request still gives up after an hour).
        hard_end: start
            + if a.requests.is_some() {
                Duration::from_secs(3600)
            } else {
                Duration::from_secs_f64(total + a.grace)
            },
    });
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = a.flush_pid.map(|pid| {
        let stop = stop.clone();
        std::thread::spawn(move || sample_flushes(pid, start, stop))
    });

    // CPU shares over the measured window.
    let cpu_pids: Vec<u32> = std::iter::once(std::process::id())
        .chain(a.server_pid)
        .collect();
    let cpu_task = {
        let plan = plan.clone();
        let pids = cpu_pids.clone();
        let count_mode = a.requests.is_some();
        tokio::spawn(async move {
            tokio::time::sleep_until((plan.start + plan.warmup).into()).await;
            let t0 = Instant::now();
            let c0: Vec<Option<u64>> = pids.iter().map(|p| cpu_ticks(*p)).collect();
            if count_mode {
                return (t0, c0);
            }
            tokio::time::sleep_until((plan.start + plan.end).into()).await;
            (t0, c0)
        })
    };

    let mut handles = Vec::new();
    let mut streams = Vec::new();
    let next = Arc::new(AtomicU64::new(0));
    let planned = (total * a.rate).ceil() as u64;
    let main_sem = Arc::new(Semaphore::new(0));
    for conn in conns {
        let tpl = tpl.clone();
        let next = next.clone();
        let plan = plan.clone();
        handles.push(if fixed {
            tokio::spawn(paced_conn(
                conn,
                tpl,
                next,
                planned,
                a.rate,
                main_sem.clone(),
                plan,
                count_events,
            ))
        } else {
            tokio::spawn(closed_conn(conn, tpl, next, a.requests, plan, count_events))
        });
    }
    if fixed {
        streams.push(Stream {
            sem: main_sem,
            rate: a.rate,
            planned,
        });
    }
    let mut side_handles = Vec::new();
    if let (Some(path), true) = (&a.side_path, fixed) {
        let side_args = RunArgs {
            path: path.clone(),
            body: BodyKind::Get,
            ..a.clone()
        };
        let side_tpl = Template::new(&side_args, &host, &prefix);
        let side_next = Arc::new(AtomicU64::new(0));
        let side_planned = (total * a.side_rate).ceil() as u64;
        let side_sem = Arc::new(Semaphore::new(0));
        for conn in side_conns {
            side_handles.push(tokio::spawn(paced_conn(
                conn,
                side_tpl.clone(),
                side_next.clone(),
                side_planned,
                a.side_rate,
                side_sem.clone(),
                plan.clone(),
                false,
            )));
        }
        streams.push(Stream {
            sem: side_sem,
            rate: a.side_rate,
            planned: side_planned,
        });
    }
    let pacer = (!streams.is_empty()).then(|| std::thread::spawn(move || pace(streams, start)));

    let mut st = Stats::new();
    for h in handles {
        st.merge(h.await.map_err(|e| e.to_string())?);
    }
    let finished = Instant::now();
    let mut side = Stats::new();
    for h in side_handles {
        side.merge(h.await.map_err(|e| e.to_string())?);
    }
    if let Some(p) = pacer {
        let _ = p.join();
    }
    let (cpu_t0, cpu_c0) = cpu_task.await.map_err(|e| e.to_string())?;
    let cpu_t1 = if a.requests.is_some() {
        finished
    } else {
        (plan.start + plan.end).min(Instant::now())
    };
    let cpu_c1: Vec<Option<u64>> = cpu_pids.iter().map(|p| cpu_ticks(*p)).collect();
    stop.store(true, Ordering::Relaxed);
    let (flushes, flush_cpu_ns) = sampler
        .map(|h| h.join().unwrap_or_default())
        .unwrap_or_default();

    let window = if a.requests.is_some() {
        (finished - start).as_secs_f64()
    } else {
        a.duration
    };
    let cpu_pct = |i: usize| -> String {
        match (
            cpu_c0.get(i).copied().flatten(),
            cpu_c1.get(i).copied().flatten(),
        ) {
            (Some(c0), Some(c1)) => {
                let secs = (cpu_t1 - cpu_t0).as_secs_f64().max(1e-3);
                format!("{:.0}", (c1 - c0) as f64 / 100.0 / secs * 100.0)
            }
            _ => "?".into(),
        }
    };
    let (p50, p90, p99, p999, max) = percentiles(&st.hist);
    let answered = st.requests_ok + st.non2xx;
    let rps = answered as f64 / window;
    let events_ok_ps = (st.requests_ok * events_per_req) as f64 / window;
    let mut line = format!(
        "LOADGEN label={} mode={} body={:?} events_per_request={} conns={} duration_s={:.3} \
         requests={} requests_2xx={} non2xx={} errors={} unfinished={} requests_per_s={:.1} \
         events_2xx_per_s={:.1} accepted={} duplicates={} rejected={} \
         p50_ms={:.3} p90_ms={:.3} p99_ms={:.3} p999_ms={:.3} max_ms={:.3} \
         gen_cpu_pct={} server_cpu_pct={}",
        if a.label.is_empty() { "-" } else { &a.label },
        if a.requests.is_some() {
            "count"
        } else if fixed {
            "fixed"
        } else {
            "closed"
        },
        a.body,
        events_per_req,
        a.conns,
        window,
        answered,
        st.requests_ok,
        st.non2xx,
        st.errors,
        st.unfinished,
        rps,
        events_ok_ps,
        st.accepted,
        st.duplicates,
        st.rejected,
        p50,
        p90,
        p99,
        p999,
        max,
        cpu_pct(0),
        cpu_pct(1),
    );
    if fixed {
        let _ = write!(
            line,
            " target_rate={:.1} achieved_rate={:.1}",
            a.rate,
            (answered + st.unfinished) as f64 / a.duration
        );
    }
    println!(
        "{} {:?} x{} over {} conns, {:.1} s: {:.1} req/s, {:.1} 2xx events/s; \
         latency ms p50 {:.3} p90 {:.3} p99 {:.3} p99.9 {:.3} max {:.3}; \
         non-2xx {} {:?} errors {} unfinished {}",
        if fixed { "fixed-rate" } else { "closed-loop" },
        a.body,
        events_per_req,
        a.conns,
        window,
        rps,
        events_ok_ps,
        p50,
        p90,
        p99,
        p999,
        max,
        st.non2xx,
        st.statuses,
        st.errors,
        st.unfinished,
    );
    if let Some(s) = &st.sample {
        println!("first non-2xx body: {s}");
    }
    if fixed {
        if let Some(path) = &a.spans_out {
            let mut out = String::with_capacity(st.spans.len() * 24);
            for &(i, d) in &st.spans {
                let unix_us = start_unix_ms * 1000 + u128::from(i / 1000);
                out.push_str(&format!("{unix_us}\t{}\n", d.saturating_sub(i) / 1000));
            }
            if let Err(e) = std::fs::write(path, out) {
                eprintln!("cannot write {}: {e}", path.display());
            }
        }
        let episodes = slow_episodes(&st.spans, SLOW_MS);
        if !episodes.is_empty() {
            let shown: Vec<String> = episodes
                .iter()
                .take(8)
                .map(|e| {
                    format!(
                        "{:.1}-{:.1} s (unix ms {}) max {:.1} ms",
                        e.0 as f64 / 1e9,
                        e.1 as f64 / 1e9,
                        start_unix_ms + u128::from(e.0 / 1_000_000),
                        e.2 as f64 / 1e6
                    )
                })
                .collect();
            println!(
                "slow episodes (100 ms windows of intended send time with a latency over \
                 {SLOW_MS} ms): {}",
                shown.join("; ")
            );
        }
        let worst = episodes.iter().map(|e| e.2).max().unwrap_or(0);
        let _ = write!(
            line,
            " slow_episodes={} worst_episode_ms={:.1}",
            episodes.len(),
            worst as f64 / 1e6
        );
    }
    if a.flush_pid.is_some() {
        let mut during = histogram();
        let mut between = histogram();
        for &(i, d) in &st.spans {
            let us = ((d.saturating_sub(i)) / 1000).clamp(1, MAX_LATENCY_US);
            if overlaps(&flushes, i, d) {
                during.saturating_record(us);
            } else {
                between.saturating_record(us);
            }
        }
        let measured: Vec<&(u64, u64)> = flushes
            .iter()
            .filter(|iv| iv.1 >= plan.warmup.as_nanos() as u64)
            .collect();
        let busy_ms: f64 = measured.iter().map(|iv| (iv.1 - iv.0) as f64 / 1e6).sum();
        let (dp50, _, dp99, dp999, dmax) = percentiles(&during);
        let (bp50, _, bp99, bp999, bmax) = percentiles(&between);
        println!(
            "flusher: {} active intervals in the measured window, {:.1} ms in all \
             (on-CPU {:.1} ms over the whole run); during flushes: {} requests, p50 {:.3} \
             p99 {:.3} p99.9 {:.3} max {:.3} ms; between: {} requests, p50 {:.3} p99 {:.3} \
             p99.9 {:.3} max {:.3} ms",
            measured.len(),
            busy_ms,
            flush_cpu_ns as f64 / 1e6,
            during.len(),
            dp50,
            dp99,
            dp999,
            dmax,
            between.len(),
            bp50,
            bp99,
            bp999,
            bmax
        );
        let _ = write!(
            line,
            " flushes={} flush_busy_ms={:.1} during_n={} during_p50_ms={:.3} \
             during_p99_ms={:.3} during_p999_ms={:.3} between_n={} between_p50_ms={:.3} \
             between_p99_ms={:.3} between_p999_ms={:.3}",
            measured.len(),
            busy_ms,
            during.len(),
            dp50,
            dp99,
            dp999,
            between.len(),
            bp50,
            bp99,
            bp999
        );
    }
    if a.side_path.is_some() && fixed {
        let (sp50, _, sp99, sp999, smax) = percentiles(&side.hist);
        println!(
            "side stream {}: {} requests ({} 2xx, non-2xx {:?}), p50 {:.3} p99 {:.3} \
             p99.9 {:.3} max {:.3} ms",
            a.side_path.as_deref().unwrap_or(""),
            side.hist.len(),
            side.requests_ok,
            side.statuses,
            sp50,
            sp99,
            sp999,
            smax
        );
        let _ = write!(
            line,
            " side_n={} side_2xx={} side_non2xx={} side_errors={} side_p50_ms={:.3} \
             side_p99_ms={:.3} side_p999_ms={:.3} side_max_ms={:.3}",
            side.hist.len(),
            side.requests_ok,
            side.non2xx,
            side.errors,
            sp50,
            sp99,
            sp999,
            smax
        );
    }
    println!("{line}");
    Ok(())
}

async fn wait_ready(url: &str, since_ns: Option<u128>, timeout: f64) -> Result<(), String> {
    let host = host_of(url)?;
    let path = url
        .strip_prefix("http://")
        .and_then(|r| r.find('/').map(|i| &r[i..]))
        .unwrap_or("/");
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let deadline = Instant::now() + Duration::from_secs_f64(timeout);
    loop {
        let mut conn = Conn {
            addr: host.clone(),
            stream: None,
            buf: Vec::new(),
        };
        if let Ok(Ok(resp)) =
            tokio::time::timeout(Duration::from_secs(1), conn.roundtrip(req.as_bytes())).await
        {
            if resp.status == 200 {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .expect("clock after 1970")
                    .as_nanos();
                match since_ns {
                    Some(t0) => println!("READY ms={:.1}", (now - t0) as f64 / 1e6),
                    None => println!("READY"),
                }
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            return Err(format!("{url} not ready within {timeout} s"));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Spins for `seconds`, reading the monotonic clock; a gap of more than 1 ms between two
/// reads is time the CPU was taken away (other threads, interrupts, or the hypervisor
/// not running the vCPU). Prints `STALLS` with their count, total, largest, and the
/// median spacing of their starts.
fn stalls(seconds: f64) {
    let start = Instant::now();
    let end = Duration::from_secs_f64(seconds);
    let mut prev = start;
    let mut gaps: Vec<(Duration, Duration)> = Vec::new();
    loop {
        let now = Instant::now();
        let d = now - prev;
        if d > Duration::from_millis(1) {
            gaps.push((prev - start, d));
        }
        prev = now;
        if now - start >= end {
            break;
        }
    }
    let total: Duration = gaps.iter().map(|g| g.1).sum();
    let max = gaps.iter().map(|g| g.1).max().unwrap_or_default();
    let mut spacing: Vec<f64> = gaps
        .windows(2)
        .map(|w| (w[1].0 - w[0].0).as_secs_f64() * 1e3)
        .collect();
    spacing.sort_by(f64::total_cmp);
    let median_spacing = spacing.get(spacing.len() / 2).copied().unwrap_or(f64::NAN);
    println!(
        "STALLS seconds={:.1} count={} total_ms={:.1} per_s_ms={:.1} max_ms={:.2} median_spacing_ms={:.1}",
        seconds,
        gaps.len(),
        total.as_secs_f64() * 1e3,
        total.as_secs_f64() * 1e3 / seconds,
        max.as_secs_f64() * 1e3,
        median_spacing
    );
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let r = rt.block_on(async {
        match cli.command {
            Command::Run(a) => run(a).await,
            Command::WaitReady {
                url,
                since_ns,
                timeout,
            } => wait_ready(&url, since_ns, timeout).await,
            Command::Stalls { seconds } => {
                stalls(seconds);
                Ok(())
            }
        }
    });
    match r {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
