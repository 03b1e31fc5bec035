//! Black-box tests of slow and broken clients (SPEC 2.4: "memory stays bounded under any
//! load; the daemon sheds load rather than dying"), each over raw TCP against the real
//! daemon and each with a concurrent well-behaved client whose requests must all succeed.
//!
//! The promises:
//!
//! - **Slowloris.** A request head (request line and headers) must arrive completely
//!   within `header_read_timeout`, counted from when the server starts waiting for it,
//!   however it trickles in; otherwise the connection is closed (without a response). The
//!   same timer closes keep-alive connections that stay idle between requests. Hundreds of
//!   such connections cost the other clients nothing.
//! - **Trickled bodies.** The whole body must arrive within `body_read_timeout`, or the
//!   request gets `408 request_timeout` (problem+json) and the connection is closed.
//!   meterd has no separate minimum transfer rate: a total deadline already bounds how
//!   long any body, at any rate, holds a connection and an in-flight permit (a minimum
//!   rate alone would let a large slow body take longer). A body the handler does not
//!   read is not waited for: the response is sent and the connection closed. A chunked
//!   body is charged to the request memory budget as its bytes arrive, so slow chunked
//!   uploads do not lock other ingest out.
//! - **Dropped connections.** A connection closed (or half-closed) in the middle of a
//!   body counts nothing of it, leaks no in-flight permit, and leaves the ids free. A
//!   complete request whose connection is dropped before the response is read counts at
//!   most once: its retry is either accepted or a duplicate. A client that abandons a large
//!   response costs nothing afterwards.
//! - **Pipelining.** Requests written back to back on one connection (in one write or in
//!   fragments) are answered in order, each exactly as if sent alone, including when the
//!   client half-closes after the last one. A malformed request or `Connection: close`
//!   ends the pipeline: the requests after it are not processed.
//! - **Oversized heads.** A head of exactly `MAX_HEAD_BYTES` (64 KiB) and exactly 100 header
//!   lines is served; one byte or one header more gets 431 (or the connection is closed
//!   when the client is still writing), at once rather than after a timeout.
//! - **Connections.** At most `max_connections` connections are open per listener; the
//!   next one is answered `429 overloaded` with `Retry-After` and closed, and a slot frees
//!   as soon as a connection closes. The metrics listener has its own cap, so health
//!   checks and scrapes keep working. Thousands of idle connections are held and then
//!   closed by the idle timeout.
//! - **Slow readers.** A client that stops reading its response is disconnected once the
//!   socket has accepted no bytes for `send_timeout`.
//! - **Reads on their own thread.** A connection whose first request is a `GET` is served
//!   by the reads thread (`meterd-reads`), any other on the main workers; either serves
//!   every request that follows on it, reads and writes alike, pipelined or not.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{time_at, Daemon, ADMIN, INGEST, READ};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

/// meterd's limit on the request head (`http::MAX_HEAD_BYTES`).
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// meterd's limit on header lines (`http::MAX_HEADERS`).
const MAX_HEADERS: usize = 100;

/// Settings of every daemon here but one: a body limit below the default, so that
/// these tests are about connections and not about body sizes (see
/// `slow_chunked_uploads_do_not_starve_other_ingest` for the defaults).
const BASE: &str = "max_body_bytes = 262144\n";

/// Starts a daemon with [`BASE`] and `top` settings, lever `calls` and contracts `ctr`
/// and `good`.
fn start(top: &str) -> Daemon {
    setup(Daemon::start_with(&format!("{BASE}{top}"), ""))
}

fn setup(d: Daemon) -> Daemon {
    d.lever("calls", "sum");
    d.contract("ctr");
    d.contract("good");
    d
}

fn addr(d: &Daemon) -> String {
    d.base.trim_start_matches("http://").to_string()
}

/// One parsed HTTP/1.1 response.
#[derive(Debug)]
struct Resp {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Parses one complete response at the start of `buf`: the response and the bytes it
/// took, or `None` when more bytes are needed. Handles content-length, chunked and
/// body-less (1xx, 204, 304) responses.
fn parse_one(buf: &[u8]) -> Option<(Resp, usize)> {
    let head_end = find(buf, b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let status: u16 = head.split_whitespace().nth(1)?.parse().ok()?;
    let mut r = Resp {
        status,
        head,
        body: Vec::new(),
    };
    if status < 200 || status == 204 || status == 304 {
        return Some((r, head_end));
    }
    if r.header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        let mut at = head_end;
        loop {
            let line_end = at + find(&buf[at..], b"\r\n")?;
            let size_text = String::from_utf8_lossy(&buf[at..line_end]).to_string();
            let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
            at = line_end + 2;
            if size == 0 {
                // No trailers from meterd: the final CRLF follows.
                if buf.len() < at + 2 {
                    return None;
                }
                return Some((r, at + 2));
            }
            if buf.len() < at + size + 2 {
                return None;
            }
            r.body.extend_from_slice(&buf[at..at + size]);
            at += size + 2;
        }
    }
    let len: usize = r
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if buf.len() < head_end + len {
        return None;
    }
    r.body = buf[head_end..head_end + len].to_vec();
    Some((r, head_end + len))
}

/// A raw client connection that keeps unread bytes between responses (pipelining).
struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    fn open(d: &Daemon) -> Conn {
        Self::open_addr(&addr(d))
    }

    fn open_addr(a: &str) -> Conn {
        let s = TcpStream::connect(a).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.set_nodelay(true).unwrap();
        Conn { s, buf: Vec::new() }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).expect("write");
    }

    /// Next response, or `None` when the connection ended (EOF, reset or read timeout)
    /// before a whole one arrived.
    fn read_resp(&mut self) -> Option<Resp> {
        let mut chunk = [0u8; 16384];
        loop {
            if let Some((r, used)) = parse_one(&self.buf) {
                self.buf.drain(..used);
                return Some(r);
            }
            match self.s.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Sends one request and reads its response.
    fn roundtrip(&mut self, req: &[u8]) -> Resp {
        self.send(req);
        self.read_resp().expect("a response")
    }

    /// True when the server closes the connection (EOF or reset) within `limit`; any bytes
    /// still arriving are discarded.
    fn closes_within(&mut self, limit: Duration) -> bool {
        self.s.set_read_timeout(Some(limit)).unwrap();
        let started = Instant::now();
        let mut chunk = [0u8; 16384];
        loop {
            match self.s.read(&mut chunk) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return false
                }
                Err(_) => return true,
            }
            if started.elapsed() > limit {
                return false;
            }
        }
    }
}

/// State of a socket polled without blocking.
#[derive(Debug, PartialEq)]
enum Poll {
    Open,
    /// The peer closed (EOF or reset).
    Closed,
}

/// Reads what is available from a non-blocking socket, appending it to `into`.
fn poll_read(s: &mut TcpStream, into: &mut Vec<u8>) -> Poll {
    let mut chunk = [0u8; 8192];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => return Poll::Closed,
            Ok(n) => into.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Poll::Open,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return Poll::Closed,
        }
    }
}

/// A GET request with the read key, keep-alive, and `extra` header lines.
fn get(path: &str, extra: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: meterd\r\nAuthorization: Bearer {READ}\r\n{extra}\r\n")
        .into_bytes()
}

/// A `POST /v1/events` with a content-length body.
fn post_events(body: &[u8], content_type: &str, extra: &str) -> Vec<u8> {
    let mut r = format!(
        "POST /v1/events HTTP/1.1\r\nHost: meterd\r\nAuthorization: Bearer {INGEST}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{extra}\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

/// A `POST /v1/events` with a chunked body in pieces of `piece` bytes.
fn post_events_chunked(body: &[u8], piece: usize, extra: &str) -> Vec<u8> {
    let mut r = format!(
        "POST /v1/events HTTP/1.1\r\nHost: meterd\r\nAuthorization: Bearer {INGEST}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n{extra}\r\n"
    )
    .into_bytes();
    for c in body.chunks(piece) {
        r.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        r.extend_from_slice(c);
        r.extend_from_slice(b"\r\n");
    }
    r.extend_from_slice(b"0\r\n\r\n");
    r
}

fn event(id: &str) -> Vec<u8> {
    json!({"id": id, "contract": "ctr", "lever": "calls"})
        .to_string()
        .into_bytes()
}

/// Total of lever `calls` for `contract` over the last hours, as the API's decimal string.
fn total(d: &Daemon, contract: &str) -> Option<String> {
    let from = time_at(-3_600_000 - 600_000);
    let to = time_at(3_600_000);
    let u = d.usage(contract, &format!("from={from}&to={to}&lever=calls"));
    u["items"][0]["value"].as_str().map(str::to_string)
}

fn usage_path(contract: &str) -> String {
    let from = time_at(-3_600_000 - 600_000);
    let to = time_at(3_600_000);
    format!("/v1/contracts/{contract}/usage?from={from}&to={to}&lever=calls")
}

#[track_caller]
fn assert_problem(r: &Resp, status: u16, code: &str) {
    let body = r.json();
    assert_eq!(r.status, status, "{r:?}");
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("application/problem+json")),
        "{r:?}"
    );
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["status"], status, "{body}");
}

/// Value of the sample `series` (name with labels, exactly as exported) in /metrics.
fn metric(d: &Daemon, series: &str) -> Option<f64> {
    common::sample(&d.metrics_text(), series)
}

fn open_api_connections(d: &Daemon) -> f64 {
    metric(d, "meterd_http_open_connections{listener=\"api\"}").unwrap_or(-1.0)
}

/// Waits until `cond` holds, polling every 20 ms, for at most `limit`.
fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The soft limit on open files of this process (and of the daemon, which inherits it).
fn open_file_limit() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|t| {
            let l = t.lines().find(|l| l.starts_with("Max open files"))?;
            l["Max open files".len()..]
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(1024)
}

/// What the well-behaved client did.
struct GoodStats {
    rounds: u64,
    accepted: u64,
    failures: Vec<String>,
    slowest: Duration,
}

/// A well-behaved client running beside the misbehaving ones: every ~20 ms it ingests
/// one event into contract `good` (ids `<tag>-<n>`), lists levers and checks health,
/// over its own keep-alive connection pool. Every request must succeed.
struct GoodClient {
    stop: Arc<AtomicBool>,
    rounds: Arc<AtomicU64>,
    handle: JoinHandle<GoodStats>,
}

/// Rounds the well-behaved client completes before it is stopped, so that it overlaps the
/// misbehaving clients however quickly they are dealt with.
const GOOD_MIN_ROUNDS: u64 = 10;

impl GoodClient {
    fn start(d: &Daemon, tag: &str) -> GoodClient {
        let stop = Arc::new(AtomicBool::new(false));
        let base = d.base.clone();
        let tag = tag.to_string();
        let flag = stop.clone();
        let rounds = Arc::new(AtomicU64::new(0));
        let done = rounds.clone();
        let handle = std::thread::spawn(move || {
            // Pooled connections are dropped before the server's idle timeout (>= 1 s in
            // these tests) could race with their reuse.
            let client = reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(20))
                .pool_idle_timeout(Duration::from_millis(300))
                .build()
                .unwrap();
            let mut st = GoodStats {
                rounds: 0,
                accepted: 0,
                failures: Vec::new(),
                slowest: Duration::ZERO,
            };
            while !flag.load(Ordering::SeqCst) {
                let started = Instant::now();
                let id = format!("{tag}-{}", st.rounds);
                match client
                    .post(format!("{base}/v1/events"))
                    .bearer_auth(INGEST)
                    .json(&json!({"id": id, "contract": "good", "lever": "calls"}))
                    .send()
                {
                    Ok(r) if r.status() == 200 => {
                        let v: Value = r.json().unwrap_or(Value::Null);
                        if v["accepted"] == 1 {
                            st.accepted += 1;
                        } else {
                            st.failures.push(format!("ingest {id}: {v}"));
                        }
                    }
                    Ok(r) => st.failures.push(format!("ingest {id}: {}", r.status())),
                    Err(e) => st.failures.push(format!("ingest {id}: {e}")),
                }
                for path in ["/v1/levers", "/healthz"] {
                    match client.get(format!("{base}{path}")).bearer_auth(READ).send() {
                        Ok(r) if r.status() == 200 => {
                            let _ = r.bytes();
                        }
                        Ok(r) => st.failures.push(format!("GET {path}: {}", r.status())),
                        Err(e) => st.failures.push(format!("GET {path}: {e}")),
                    }
                }
                st.slowest = st.slowest.max(started.elapsed());
                st.rounds += 1;
                done.store(st.rounds, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(20));
            }
            st
        });
        GoodClient {
            stop,
            rounds,
            handle,
        }
    }

    /// Stops the client and checks that every request succeeded and that exactly its
    /// accepted events are counted.
    #[track_caller]
    fn finish(self, d: &Daemon) -> GoodStats {
        wait_until(Duration::from_secs(20), || {
            self.rounds.load(Ordering::SeqCst) >= GOOD_MIN_ROUNDS || self.handle.is_finished()
        });
        self.stop.store(true, Ordering::SeqCst);
        let st = self.handle.join().expect("good client panicked");
        assert!(
            st.failures.is_empty(),
            "the well-behaved client was affected: {:?}",
            &st.failures[..st.failures.len().min(10)]
        );
        assert!(st.rounds > 0, "the well-behaved client made no requests");
        assert_eq!(
            total(d, "good"),
            Some(st.accepted.to_string()),
            "the well-behaved client's events are not all counted"
        );
        eprintln!(
            "well-behaved client: {} rounds, slowest {:?}",
            st.rounds, st.slowest
        );
        st
    }
}

// ------------------------------------------------------------------------------------
// 1. Slowloris
// ------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq)]
enum Slow {
    /// Connects and sends nothing.
    Silent,
    /// Sends a request head one byte every 100 ms, never finishing it.
    Bytes,
    /// Sends one complete header line every 300 ms, never the blank line.
    Lines,
    /// One request answered on a keep-alive connection, then the next head trickles.
    SecondHead,
}

#[test]
fn slowloris_heads_are_cut_off_at_the_header_read_timeout() {
    let timeout = Duration::from_secs(1);
    let d = start("header_read_timeout = \"1s\"\n");
    let good = GoodClient::start(&d, "slowloris");
    const PER_STYLE: usize = 60;

    struct Attacker {
        style: Slow,
        s: TcpStream,
        opened: Instant,
        sent: usize,
        next_send: Instant,
        closed_after: Option<Duration>,
        received: Vec<u8>,
    }
    // An endless request head: the request line, then header lines.
    let endless = |i: usize| -> Vec<u8> {
        let mut h = format!(
            "POST /v1/events HTTP/1.1\r\nHost: meterd\r\nAuthorization: Bearer {INGEST}\r\n"
        )
        .into_bytes();
        for k in 0..200 {
            h.extend_from_slice(format!("X-Slow-{i}-{k}: {}\r\n", "z".repeat(k % 7)).as_bytes());
        }
        h
    };
    let heads: Vec<Vec<u8>> = (0..4 * PER_STYLE).map(endless).collect();
    let mut attackers: Vec<Attacker> = Vec::new();
    // The ones needing a round trip first, so that the trickles start together.
    for style in [Slow::SecondHead, Slow::Silent, Slow::Bytes, Slow::Lines] {
        for _ in 0..PER_STYLE {
            let mut c = Conn::open(&d);
            if style == Slow::SecondHead {
                let r = c.roundtrip(&get("/healthz", ""));
                assert_eq!(r.status, 200);
            }
            c.s.set_nonblocking(true).unwrap();
            let now = Instant::now();
            attackers.push(Attacker {
                style,
                s: c.s,
                opened: now,
                sent: 0,
                next_send: now,
                closed_after: None,
                received: Vec::new(),
            });
        }
    }
    let trickle_start = Instant::now();
    let deadline = Instant::now() + 4 * timeout;
    // Longest pause between two passes over the attackers (this process may be starved).
    let mut max_gap = Duration::ZERO;
    let mut last_pass = Instant::now();
    while attackers.iter().any(|a| a.closed_after.is_none()) && Instant::now() < deadline {
        max_gap = max_gap.max(last_pass.elapsed());
        last_pass = Instant::now();
        for (i, a) in attackers.iter_mut().enumerate() {
            if a.closed_after.is_some() {
                continue;
            }
            let now = Instant::now();
            if a.style != Slow::Silent && now >= a.next_send {
                let piece = match a.style {
                    Slow::Lines => {
                        let rest = &heads[i][a.sent..];
                        find(rest, b"\r\n").map_or(rest.len(), |p| p + 2)
                    }
                    _ => 1,
                };
                let end = (a.sent + piece).min(heads[i].len());
                // Errors mean the server closed it; the read below notices.
                let _ = a.s.write_all(&heads[i][a.sent..end]);
                a.sent = end;
                a.next_send = now
                    + if a.style == Slow::Lines {
                        Duration::from_millis(300)
                    } else {
                        Duration::from_millis(100)
                    };
            }
            if poll_read(&mut a.s, &mut a.received) == Poll::Closed {
                a.closed_after = Some(a.opened.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    for a in &attackers {
        let after = a
            .closed_after
            .unwrap_or_else(|| panic!("{:?} connection still open after 4 s", a.style));
        assert!(
            after >= timeout - Duration::from_millis(100) && after <= 3 * timeout,
            "{:?} connection closed after {after:?} (header_read_timeout 1 s)",
            a.style
        );
        assert!(
            a.received.is_empty(),
            "{:?}: unexpected bytes {:?}",
            a.style,
            String::from_utf8_lossy(&a.received)
        );
        // The trickled heads really were still arriving when they were cut.
        // (When it had at least half a second to, and this process was not starved.)
        let trickled_for = (a.opened + after).saturating_duration_since(trickle_start);
        if a.style == Slow::Bytes
            && trickled_for > Duration::from_millis(500)
            && max_gap < Duration::from_millis(200)
        {
            assert!(a.sent >= 3, "{} bytes in {trickled_for:?}", a.sent);
        }
    }
    let slowest = attackers.iter().filter_map(|a| a.closed_after).max();
    eprintln!(
        "{} slowloris connections, all closed, the last after {slowest:?} (longest pause \
         between sends {max_gap:?})",
        attackers.len()
    );
    good.finish(&d);
    // Their slots are free again and nothing of theirs was counted.
    assert!(
        wait_until(Duration::from_secs(5), || open_api_connections(&d) <= 2.0),
        "open connections: {}",
        open_api_connections(&d)
    );
    assert_eq!(total(&d, "ctr"), None);
}

// ------------------------------------------------------------------------------------
// 2. Idle keep-alive connections, thousands of them
// ------------------------------------------------------------------------------------

#[test]
fn thousands_of_idle_connections_are_held_then_closed_by_the_idle_timeout() {
    let timeout = Duration::from_secs(2);
    let d = start("header_read_timeout = \"2s\"\n");
    let good = GoodClient::start(&d, "idle");
    // This process and the daemon share the machine's file-descriptor budget.
    let n = 2000.min(open_file_limit() / 4);
    let mut conns: Vec<(Conn, Instant, Option<Duration>, Vec<u8>)> = Vec::with_capacity(n);
    for i in 0..n {
        // In steps, so that the listen backlog never overflows (a dropped SYN would delay
        // a connection by a second).
        if i % 250 == 249 {
            assert!(
                wait_until(Duration::from_secs(10), || open_api_connections(&d)
                    >= (i - 50) as f64),
                "connections are not being accepted"
            );
        }
        let mut c = Conn::open(&d);
        if i % 2 == 1 {
            // Used once, then left idle with keep-alive.
            let r = c.roundtrip(&get("/healthz", ""));
            assert_eq!(r.status, 200, "connection {i}");
        }
        c.s.set_nonblocking(true).unwrap();
        conns.push((c, Instant::now(), None, Vec::new()));
    }
    let peak = open_api_connections(&d);
    eprintln!("{n} idle connections opened; open connections: {peak}");
    let deadline = Instant::now() + 4 * timeout;
    while conns.iter().any(|c| c.2.is_none()) && Instant::now() < deadline {
        for (c, opened, closed, got) in conns.iter_mut() {
            if closed.is_none() && poll_read(&mut c.s, got) == Poll::Closed {
                *closed = Some(opened.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for (i, (_, _, closed, got)) in conns.iter().enumerate() {
        let after = closed.unwrap_or_else(|| panic!("idle connection {i} never closed"));
        assert!(
            after >= timeout - Duration::from_millis(100) && after <= 3 * timeout,
            "idle connection {i} closed after {after:?} (idle timeout {timeout:?})"
        );
        // Closed by the idle timeout, not refused: nothing was ever sent to them.
        assert!(
            got.is_empty(),
            "connection {i} got {:?}",
            String::from_utf8_lossy(got)
        );
    }
    good.finish(&d);
    assert!(
        wait_until(Duration::from_secs(5), || open_api_connections(&d) <= 2.0),
        "open connections: {}",
        open_api_connections(&d)
    );
}

// ------------------------------------------------------------------------------------
// 3. The connection cap
// ------------------------------------------------------------------------------------

#[test]
fn connection_cap_at_the_limit_and_one_past_it() {
    const CAP: usize = 40;
    let d = start(&format!(
        "max_connections = {CAP}\nheader_read_timeout = \"6s\"\n"
    ));
    // Start from zero: the harness's pooled connections close after the idle timeout.
    assert!(
        wait_until(Duration::from_secs(10), || open_api_connections(&d) == 0.0),
        "open connections: {}",
        open_api_connections(&d)
    );
    // The well-behaved client holds one keep-alive connection and uses it throughout.
    let mut good = Conn::open(&d);
    let good_round = |good: &mut Conn, i: &mut usize| {
        *i += 1;
        let r = good.roundtrip(&post_events(
            &json!({"id": format!("cap-good-{i}"), "contract": "good", "lever": "calls"})
                .to_string()
                .into_bytes(),
            "application/json",
            "",
        ));
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.json()["accepted"], 1, "{r:?}");
        let r = good.roundtrip(&get("/v1/levers", ""));
        assert_eq!(r.status, 200, "{r:?}");
    };
    let mut rounds = 0;
    good_round(&mut good, &mut rounds);
    let opened_at = Instant::now();
    // Fill the cap exactly: CAP - 1 idle connections beside the good one.
    let mut idle: Vec<Conn> = (0..CAP - 1).map(|_| Conn::open(&d)).collect();
    assert!(
        wait_until(Duration::from_secs(3), || open_api_connections(&d)
            == CAP as f64),
        "open connections: {}",
        open_api_connections(&d)
    );
    // The last idle connection (the CAP-th) is served.
    let r = idle.last_mut().unwrap().roundtrip(&get("/v1/levers", ""));
    assert_eq!(r.status, 200, "{r:?}");
    good_round(&mut good, &mut rounds);

    // One past the cap: 429 overloaded with Retry-After, then the connection is closed,
    // whether the client sent its request or not.
    for sends_request in [true, false] {
        let mut c = Conn::open(&d);
        if sends_request {
            c.send(&get("/v1/levers", ""));
        }
        let r = c.read_resp().expect("a 429 response");
        assert_problem(&r, 429, "overloaded");
        let retry = r.header("retry-after").expect("Retry-After");
        assert!(retry.parse::<u64>().is_ok_and(|s| s >= 1), "{retry}");
        assert_eq!(r.header("connection").as_deref(), Some("close"), "{r:?}");
        assert!(c.closes_within(Duration::from_secs(3)), "not closed");
    }
    // The cap is per listener: health checks and scrapes still work.
    for p in ["/healthz", "/readyz"] {
        let s = d
            .client
            .get(format!("{}{p}", d.metrics))
            .send()
            .unwrap()
            .status();
        assert_eq!(s, 200, "{p}");
    }
    assert!(
        metric(
            &d,
            "meterd_http_refused_connections_total{listener=\"api\"}"
        )
        .unwrap_or(0.0)
            >= 2.0,
        "{}",
        d.metrics_text()
    );
    // The connections inside the cap are unaffected.
    good_round(&mut good, &mut rounds);
    let r = idle[0].roundtrip(&get("/healthz", ""));
    assert_eq!(r.status, 200);

    // Closing one frees its slot for a new connection (as soon as the server has seen
    // the close).
    drop(idle.pop());
    let mut c = None;
    assert!(
        wait_until(Duration::from_secs(2), || {
            let mut n = Conn::open(&d);
            let r = n.roundtrip(&get("/v1/levers", ""));
            if r.status == 200 {
                c = Some(n);
                return true;
            }
            assert_problem(&r, 429, "overloaded");
            false
        }),
        "the closed connection's slot was not freed"
    );
    // And the cap is full again.
    let mut past = Conn::open(&d);
    let r = past.read_resp().expect("a 429 response");
    assert_problem(&r, 429, "overloaded");
    good_round(&mut good, &mut rounds);
    assert!(
        opened_at.elapsed() < Duration::from_secs(5),
        "too slow: the idle connections may have timed out meanwhile"
    );
    drop((idle, c, past));
    assert!(
        wait_until(Duration::from_secs(5), || open_api_connections(&d) <= 1.0),
        "open connections: {}",
        open_api_connections(&d)
    );
    assert_eq!(total(&d, "good"), Some(rounds.to_string()));
}

// ------------------------------------------------------------------------------------
// 4. Bodies trickled in
// ------------------------------------------------------------------------------------

#[test]
fn trickled_bodies_get_408_within_the_body_read_timeout() {
    let timeout = Duration::from_secs(1);
    let d = start("body_read_timeout = \"1s\"\n");
    let good = GoodClient::start(&d, "trickle");

    struct Trickler {
        what: &'static str,
        s: TcpStream,
        /// Bytes still to send, one at a time.
        rest: Vec<u8>,
        started: Instant,
        next_send: Instant,
        got: Vec<u8>,
        answered: Option<(Resp, Duration)>,
        closed: bool,
    }
    let padded = |id: &str| {
        let mut b = event(id);
        b.resize(400, b' ');
        b
    };
    let mut tricklers = Vec::new();
    for i in 0..40 {
        let (what, head, rest): (&'static str, Vec<u8>, Vec<u8>) = match i % 4 {
            0 => {
                let body = padded(&format!("tr-{i}"));
                let req = post_events(&body, "application/json", "");
                let split = req.len() - body.len();
                ("events, content-length", req[..split].to_vec(), body)
            }
            1 => {
                // One-byte chunks.
                let req = post_events_chunked(&padded(&format!("tr-{i}")), 1, "");
                let split = find(&req, b"\r\n\r\n").unwrap() + 4;
                (
                    "events, chunked",
                    req[..split].to_vec(),
                    req[split..].to_vec(),
                )
            }
            2 => {
                let mut body = json!({"specversion": "1.0", "id": format!("tr-{i}"), "source": "s",
                    "type": "calls", "subject": "ctr", "data": {"value": 1}})
                .to_string()
                .into_bytes();
                body.resize(400, b' ');
                let head = format!(
                    "POST /api/v1/events HTTP/1.1\r\nHost: meterd\r\nAuthorization: Bearer {INGEST}\r\nContent-Type: application/cloudevents+json\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                );
                ("cloudevents", head.into_bytes(), body)
            }
            _ => {
                let mut body = json!({"aggregation": "sum", "unit": "u"})
                    .to_string()
                    .into_bytes();
                body.resize(400, b' ');
                let head = format!(
                    "PUT /v1/levers/trickled HTTP/1.1\r\nHost: meterd\r\nAuthorization: Bearer {ADMIN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                );
                ("admin write", head.into_bytes(), body)
            }
        };
        let mut c = Conn::open(&d);
        c.send(&head);
        c.s.set_nonblocking(true).unwrap();
        let now = Instant::now();
        tricklers.push(Trickler {
            what,
            s: c.s,
            rest: rest.into_iter().rev().collect(),
            started: now,
            next_send: now,
            got: Vec::new(),
            answered: None,
            closed: false,
        });
    }
    let deadline = Instant::now() + 5 * timeout;
    while tricklers.iter().any(|t| !t.closed) && Instant::now() < deadline {
        for t in tricklers.iter_mut().filter(|t| !t.closed) {
            let now = Instant::now();
            // 10 bytes per second, steadily: each gap is short, the total is what counts.
            if t.answered.is_none() && now >= t.next_send {
                if let Some(b) = t.rest.pop() {
                    let _ = t.s.write_all(&[b]);
                }
                t.next_send = now + Duration::from_millis(100);
            }
            let state = poll_read(&mut t.s, &mut t.got);
            if t.answered.is_none() {
                if let Some((r, used)) = parse_one(&t.got) {
                    t.got.drain(..used);
                    t.answered = Some((r, t.started.elapsed()));
                }
            }
            if state == Poll::Closed {
                t.closed = true;
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    for t in &tricklers {
        let (r, after) = t
            .answered
            .as_ref()
            .unwrap_or_else(|| panic!("{}: no response", t.what));
        // A chunked body is charged `max_body_bytes` up front against the request memory
        // budget, so most of them are refused at once (429) rather than timed out.
        if t.what == "events, chunked" && r.status == 429 {
            assert_problem(r, 429, "overloaded");
            continue;
        }
        assert_problem(r, 408, "request_timeout");
        assert!(
            *after >= timeout - Duration::from_millis(100) && *after <= 3 * timeout,
            "{}: answered after {after:?}",
            t.what
        );
        assert!(t.closed, "{}: connection left open after the 408", t.what);
        assert!(t.rest.len() > 300, "{}: the body was not trickling", t.what);
    }
    let refused = tricklers
        .iter()
        .filter(|t| t.answered.as_ref().is_some_and(|(r, _)| r.status == 429))
        .count();
    eprintln!(
        "trickled bodies: {refused} of {} refused up front",
        tricklers.len()
    );
    for what in [
        "events, content-length",
        "events, chunked",
        "cloudevents",
        "admin write",
    ] {
        assert!(
            tricklers.iter().any(
                |t| t.what == what && t.answered.as_ref().is_some_and(|(r, _)| r.status == 408)
            ),
            "{what}: none timed out"
        );
    }

    // A body the route does not read is not waited for: the answer comes at once, and
    // the connection is then closed (its unread bytes could not be told from a request).
    for path in ["/v1/levers", "/healthz"] {
        let mut c = Conn::open(&d);
        c.send(&get(
            path,
            "Content-Type: application/json\r\nContent-Length: 100\r\n",
        ));
        let r = c.read_resp().expect("a response");
        assert_eq!(r.status, 200, "{path}: {r:?}");
        assert!(
            c.closes_within(Duration::from_secs(3)),
            "{path}: not closed"
        );
    }

    good.finish(&d);
    // Nothing of the trickled requests took effect.
    assert_eq!(total(&d, "ctr"), None);
    assert_eq!(d.req("GET", "/v1/levers/trickled", Some(READ), None).0, 404);
}

/// Two uploads that stream a chunked body slowly (as a client forwarding NDJSON as it
/// produces it would) must not lock every other client out of ingest.
#[test]
fn slow_chunked_uploads_do_not_starve_other_ingest() {
    // Default limits.
    let d = setup(Daemon::start_with("body_read_timeout = \"3s\"\n", ""));
    let mut slow = Vec::new();
    for i in 0..2 {
        let mut c = Conn::open(&d);
        c.send(
            format!(
                "POST /v1/events HTTP/1.1\r\nHost: meterd\r\nAuthorization: Bearer {INGEST}\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            .as_bytes(),
        );
        let line = format!(
            "{}\n",
            String::from_utf8(event(&format!("stream-{i}"))).unwrap()
        );
        c.send(format!("{:x}\r\n{line}\r\n", line.len()).as_bytes());
        slow.push(c);
    }
    // Give the server time to pick both up.
    std::thread::sleep(Duration::from_millis(300));
    let (s, b) =
        d.post_events(&json!({"id": "beside-streams", "contract": "good", "lever": "calls"}));
    assert_eq!(
        s, 200,
        "ingest refused while two slow chunked uploads run: {b}"
    );
    for mut c in slow {
        c.send(b"0\r\n\r\n");
        let r = c.read_resp().expect("answer");
        assert_eq!(r.status, 200, "{r:?}");
    }
}

// ------------------------------------------------------------------------------------
// 5. Connections dropped mid-body and mid-response
// ------------------------------------------------------------------------------------

/// Opens a `POST /v1/events` and sends part of its body, holding an in-flight permit.
fn hold(d: &Daemon, id: &str) -> (Conn, Vec<u8>) {
    let body = event(id);
    let req = post_events(&body, "application/json", "");
    let split = req.len() - body.len() + 3;
    let mut c = Conn::open(d);
    c.send(&req[..split]);
    (c, req[split..].to_vec())
}

#[test]
fn connections_dropped_mid_body_count_nothing() {
    const IN_FLIGHT: usize = 16;
    let d = start(&format!(
        "max_in_flight = {IN_FLIGHT}\nbody_read_timeout = \"5s\"\n"
    ));
    let good = GoodClient::start(&d, "good-drop");
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x636c_6965_6e74);
    let mut dropped_ids = Vec::new();
    let mut half_closed_answers = 0;
    for i in 0..120 {
        let ids: Vec<String> = (0..3).map(|k| format!("drop-{i}-{k}")).collect();
        let array = Value::Array(
            ids.iter()
                .map(|id| json!({"id": id, "contract": "ctr", "lever": "calls"}))
                .collect(),
        )
        .to_string()
        .into_bytes();
        let ndjson: Vec<u8> = ids
            .iter()
            .map(|id| {
                format!(
                    "{}\n",
                    json!({"id": id, "contract": "ctr", "lever": "calls"})
                )
            })
            .collect::<String>()
            .into_bytes();
        let req = match i % 3 {
            0 => post_events(&array, "application/json", ""),
            1 => post_events(&ndjson, "application/x-ndjson", ""),
            _ => post_events_chunked(&array, 1 + rng.random_range(0..40), ""),
        };
        let body_at = find(&req, b"\r\n\r\n").unwrap() + 4;
        // Anywhere from "head only" to "all but the last byte".
        let cut = rng.random_range(body_at..req.len());
        let mut c = Conn::open(&d);
        c.send(&req[..cut]);
        if i % 2 == 0 {
            drop(c);
        } else {
            // Half-close: the body can never complete; the client waits for an answer.
            c.s.shutdown(Shutdown::Write).unwrap();
            if let Some(r) = c.read_resp() {
                assert_problem(&r, 400, "malformed_body");
                half_closed_answers += 1;
            }
        }
        dropped_ids.extend(ids);
    }
    eprintln!("half-closed mid-body: {half_closed_answers} of 60 answered 400");

    // Complete requests whose connection is dropped before the answer is read: each
    // counts at most once, and its retry settles it (accepted or duplicate).
    // (Paced, so that they do not fill the in-flight limit the well-behaved client needs.)
    for i in 0..30 {
        let mut c = Conn::open(&d);
        c.send(&post_events(
            &event(&format!("lost-{i}")),
            "application/json",
            "",
        ));
        drop(c);
        std::thread::sleep(Duration::from_millis(30));
    }
    // Large responses abandoned part way, by close and by half-close.
    for i in 0..30 {
        let mut c = Conn::open(&d);
        let mut reqs = Vec::new();
        for _ in 0..20 {
            reqs.extend_from_slice(&get("/openapi.json", ""));
        }
        c.send(&reqs);
        let mut some = [0u8; 10_000];
        let _ = c.s.read(&mut some);
        if i % 2 == 1 {
            let _ = c.s.shutdown(Shutdown::Both);
        }
        drop(c);
    }
    let st = good.finish(&d);
    assert!(st.rounds > 0);

    // Retries of the lost requests: exactly once each.
    for i in 0..30 {
        let (s, b) =
            d.post_events(&json!({"id": format!("lost-{i}"), "contract": "ctr", "lever": "calls"}));
        assert_eq!(s, 200, "{b}");
        assert_eq!(
            b["accepted"].as_u64().unwrap() + b["duplicates"].as_u64().unwrap(),
            1,
            "{b}"
        );
    }
    assert_eq!(total(&d, "ctr").as_deref(), Some("30"));
    // No id of a dropped body was claimed: they are all accepted now.
    for ids in dropped_ids.chunks(90) {
        let batch: Vec<Value> = ids
            .iter()
            .map(|id| json!({"id": id, "contract": "ctr", "lever": "calls"}))
            .collect();
        let (s, b) = d.post_events(&Value::Array(batch));
        assert_eq!(s, 200, "{b}");
        assert_eq!(b["accepted"].as_u64(), Some(ids.len() as u64), "{b}");
    }
    assert_eq!(total(&d, "ctr"), Some((30 + dropped_ids.len()).to_string()));
    // No in-flight permit leaked: none is in use once the last request is answered (the
    // server may take a moment to see the dropped connections end), then all of them can
    // be held at once, and each completes.
    assert!(
        wait_until(Duration::from_secs(5), || metric(
            &d,
            "meterd_http_in_flight_requests"
        ) == Some(0.0)),
        "in-flight slots still in use: {:?}",
        metric(&d, "meterd_http_in_flight_requests")
    );
    let held: Vec<_> = (0..IN_FLIGHT)
        .map(|i| hold(&d, &format!("held-{i}")))
        .collect();
    for (mut c, rest) in held {
        c.send(&rest);
        let r = c.read_resp().expect("answer");
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.json()["accepted"], 1, "{r:?}");
    }
    assert!(
        wait_until(Duration::from_secs(5), || open_api_connections(&d) <= 2.0),
        "open connections: {}",
        open_api_connections(&d)
    );
}

/// Clients that request a large usage export and then stop reading hold no thread of
/// the daemon while `send_timeout` (30 s by default) runs: more of them than the
/// blocking thread pool has threads (16) must not hold back another client's export.
#[test]
fn slow_export_readers_do_not_hold_back_other_exports() {
    let d = start("");
    // 60,000 usage rows (600 contracts x 10 buckets x 10 minutes): about 9 MB of NDJSON
    // per export, produced a contract at a time.
    const CONTRACTS: usize = 600;
    const BUCKETS: usize = 10;
    const MINUTES: usize = 10;
    for c in 0..CONTRACTS {
        d.contract(&format!("x{c:03}"));
    }
    let events: Vec<Value> = (0..CONTRACTS * BUCKETS * MINUTES)
        .map(|n| {
            let (c, b, m) = (
                n % CONTRACTS,
                n / CONTRACTS % BUCKETS,
                n / CONTRACTS / BUCKETS,
            );
            json!({"id": format!("x-{n}"), "contract": format!("x{c:03}"), "lever": "calls",
                   "bucket": format!("b{b}"), "time": time_at(-((m as i64) + 2) * 60_000)})
        })
        .collect();
    for batch in events.chunks(1000) {
        let (s, b) = d.post_events(&Value::Array(batch.to_vec()));
        assert_eq!((s, b["accepted"].as_u64()), (200, Some(1000)), "{b}");
    }
    let path = format!(
        "/v1/usage?window=minute&group_by=bucket&from={}",
        time_at(-2 * 3_600_000).replace(':', "%3A")
    );
    let export = format!(
        "GET {path} HTTP/1.1\r\nHost: meterd\r\nAuthorization: Bearer {READ}\r\n\
         Accept: application/x-ndjson\r\n\r\n"
    );
    // Twenty exports whose clients read only the first bytes, then nothing. Their
    // receive buffers are small (fixed, so the kernel does not grow them), so what the
    // daemon cannot send stays with the daemon (its socket takes up to 4 MiB).
    let mut slow: Vec<Conn> = (0..20)
        .map(|_| {
            let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                .expect("socket");
            sock.set_recv_buffer_size(4096).expect("SO_RCVBUF");
            let a: std::net::SocketAddr = addr(&d).parse().unwrap();
            sock.connect(&a.into()).expect("connect");
            sock.set_read_timeout(Some(Duration::from_secs(20)))
                .expect("SO_RCVTIMEO");
            let mut c = Conn {
                s: sock.into(),
                buf: Vec::new(),
            };
            c.send(export.as_bytes());
            c
        })
        .collect();
    for c in &mut slow {
        let mut first = [0u8; 1024];
        assert!(c.s.read(&mut first).expect("export answered") > 0);
    }
    // Let their producers fill what the channels and sockets take.
    std::thread::sleep(Duration::from_secs(1));

    let started = Instant::now();
    let r = d
        .client
        .get(d.url(&path))
        .bearer_auth(READ)
        .header("accept", "application/x-ndjson")
        .timeout(Duration::from_secs(20))
        .send()
        .expect("export answered");
    assert_eq!(r.status().as_u16(), 200);
    let body = r
        .text()
        .expect("the export's body arrives while slow readers hold theirs");
    assert_eq!(body.lines().count(), CONTRACTS * BUCKETS * MINUTES);
    eprintln!(
        "export of {} bytes beside 20 stalled ones: {:?}",
        body.len(),
        started.elapsed()
    );
    drop(slow);
}

// ------------------------------------------------------------------------------------
// 6. Pipelining
// ------------------------------------------------------------------------------------

/// One pipelined request and what its answer must be.
struct Piped {
    req: Vec<u8>,
    status: u16,
    check: Box<dyn Fn(&Resp)>,
}

fn piped(req: Vec<u8>, status: u16, check: impl Fn(&Resp) + 'static) -> Piped {
    Piped {
        req,
        status,
        check: Box::new(check),
    }
}

/// Adds `X-Request-Id: <tag>-<i>` to each request (inserted after the request line).
fn tag_requests(reqs: &mut [Piped], tag: &str) {
    for (i, p) in reqs.iter_mut().enumerate() {
        let at = find(&p.req, b"\r\n").unwrap() + 2;
        let line = format!("X-Request-Id: {tag}-{i}\r\n");
        p.req.splice(at..at, line.into_bytes());
    }
}

/// Reads the answers of `reqs` in order and checks them.
#[track_caller]
fn check_answers(c: &mut Conn, reqs: &[Piped], tag: &str) {
    for (i, p) in reqs.iter().enumerate() {
        let r = c
            .read_resp()
            .unwrap_or_else(|| panic!("{tag}: no answer to request {i}"));
        assert_eq!(
            r.header("x-request-id"),
            Some(format!("{tag}-{i}")),
            "{tag}: answers out of order: {r:?}"
        );
        assert_eq!(r.status, p.status, "{tag}: request {i}: {r:?}");
        (p.check)(&r);
    }
}

/// A mixed pipeline of ingests, reads and admin writes; `n` makes the ids unique.
fn mixed_pipeline(n: usize) -> Vec<Piped> {
    let id = move |k: usize| format!("pipe-{n}-{k}");
    let accepted = |want: u64| {
        move |r: &Resp| {
            assert_eq!(r.json()["accepted"].as_u64(), Some(want), "{r:?}");
        }
    };
    // Usage of contract `ctr` is `base + added` at that point of the pipeline.
    let base = n as u64 * 6;
    let usage_is = move |added: u64| {
        move |r: &Resp| {
            let v = r.json();
            assert_eq!(
                v["items"][0]["value"].as_str(),
                Some((base + added).to_string().as_str()),
                "{v}"
            );
        }
    };
    let ndjson = format!(
        "{}\n{}\n",
        String::from_utf8(event(&id(2))).unwrap(),
        String::from_utf8(event(&id(3))).unwrap()
    );
    let ce = json!({"specversion": "1.0", "id": id(5), "source": "pipe", "type": "calls",
        "subject": "ctr", "data": {"value": 2}})
    .to_string();
    let lever = format!("piped-{n}");
    vec![
        piped(
            post_events(&event(&id(1)), "application/json", ""),
            200,
            accepted(1),
        ),
        piped(get(&usage_path("ctr"), ""), 200, usage_is(1)),
        piped(
            post_events(ndjson.as_bytes(), "application/x-ndjson", ""),
            200,
            accepted(2),
        ),
        piped(post_events_chunked(&event(&id(4)), 7, ""), 200, accepted(1)),
        piped(
            post_events(&event(&id(1)), "application/json", ""),
            200,
            |r: &Resp| assert_eq!(r.json()["duplicates"], 1, "{r:?}"),
        ),
        piped(get("/healthz", ""), 200, |_: &Resp| {}),
        piped(
            b"GET /v1/levers HTTP/1.1\r\nHost: meterd\r\n\r\n".to_vec(),
            401,
            |r: &Resp| assert_eq!(r.json()["code"], "unauthorized"),
        ),
        piped(get("/v1/nope", ""), 404, |_: &Resp| {}),
        piped(
            {
                let body = r#"{"aggregation":"max","unit":"u"}"#;
                format!(
                    "PUT /v1/levers/{lever} HTTP/1.1\r\nHost: meterd\r\nAuthorization: Bearer {ADMIN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .into_bytes()
            },
            201,
            |_: &Resp| {},
        ),
        piped(
            get(&format!("/v1/levers/{lever}"), ""),
            200,
            |r: &Resp| assert_eq!(r.json()["aggregation"], "max", "{r:?}"),
        ),
        piped(
            format!(
                "POST /api/v1/events HTTP/1.1\r\nHost: meterd\r\nAuthorization: Bearer {INGEST}\r\nContent-Type: application/cloudevents+json\r\nContent-Length: {}\r\n\r\n{ce}",
                ce.len()
            )
            .into_bytes(),
            204,
            |r: &Resp| assert!(r.body.is_empty()),
        ),
        piped(get(&usage_path("ctr"), ""), 200, usage_is(6)),
    ]
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let d = start("");
    let good = GoodClient::start(&d, "pipe");
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x7069_7065);

    // In one write.
    let mut reqs = mixed_pipeline(0);
    tag_requests(&mut reqs, "one-write");
    let mut c = Conn::open(&d);
    c.send(&reqs.iter().flat_map(|p| p.req.clone()).collect::<Vec<_>>());
    check_answers(&mut c, &reqs, "one-write");
    // The connection is still usable afterwards.
    assert_eq!(c.roundtrip(&get("/healthz", "")).status, 200);

    // In random fragments that cut across request boundaries.
    let mut reqs = mixed_pipeline(1);
    tag_requests(&mut reqs, "fragments");
    let all: Vec<u8> = reqs.iter().flat_map(|p| p.req.clone()).collect();
    let mut c = Conn::open(&d);
    let mut at = 0;
    while at < all.len() {
        let n = rng.random_range(1..200).min(all.len() - at);
        c.send(&all[at..at + n]);
        at += n;
        if rng.random_range(0..4) == 0 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    check_answers(&mut c, &reqs, "fragments");

    // 200 ingests in one write, then the client half-closes: every answer still arrives,
    // then the server closes.
    let mut c = Conn::open(&d);
    let mut all = Vec::new();
    for i in 0..200 {
        all.extend(post_events(
            &event(&format!("bulk-{i}")),
            "application/json",
            &format!("X-Request-Id: bulk-{i}\r\n"),
        ));
    }
    c.send(&all);
    c.s.shutdown(Shutdown::Write).unwrap();
    for i in 0..200 {
        let r = c
            .read_resp()
            .unwrap_or_else(|| panic!("no answer to bulk request {i}"));
        assert_eq!(r.header("x-request-id"), Some(format!("bulk-{i}")));
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.json()["accepted"], 1, "{r:?}");
    }
    assert!(c.closes_within(Duration::from_secs(5)));
    // A single request followed by a half-close is answered too.
    let mut c = Conn::open(&d);
    c.send(&get("/v1/levers", ""));
    c.s.shutdown(Shutdown::Write).unwrap();
    assert_eq!(c.read_resp().expect("answer").status, 200);

    // A malformed request ends the pipeline: answers before it, 400 for it, then close;
    // the request after it is not processed.
    let mut c = Conn::open(&d);
    let mut all = post_events(&event("before-bad"), "application/json", "");
    all.extend_from_slice(b"\x01\x02 nonsense\r\n\r\n");
    all.extend(post_events(&event("after-bad"), "application/json", ""));
    c.send(&all);
    let r = c.read_resp().expect("answer");
    assert_eq!((r.status, r.json()["accepted"].as_u64()), (200, Some(1)));
    let r = c.read_resp().expect("answer to the malformed request");
    assert_eq!(r.status, 400, "{r:?}");
    assert!(c.read_resp().is_none(), "the pipeline went on");
    // `Connection: close` in the middle ends it the same way.
    let mut c = Conn::open(&d);
    let mut all = post_events(
        &event("before-close"),
        "application/json",
        "Connection: close\r\n",
    );
    all.extend(post_events(&event("after-close"), "application/json", ""));
    c.send(&all);
    let r = c.read_resp().expect("answer");
    assert_eq!((r.status, r.json()["accepted"].as_u64()), (200, Some(1)));
    assert!(c.read_resp().is_none(), "the pipeline went on");

    good.finish(&d);
    // 6 from each mixed pipeline, 200 bulk, 2 before the pipelines ended, 2 retried here.
    let (s, b) = d.post_events(&json!({"id": "after-bad", "contract": "ctr", "lever": "calls"}));
    assert_eq!((s, b["accepted"].as_u64()), (200, Some(1)), "{b}");
    let (s, b) = d.post_events(&json!({"id": "after-close", "contract": "ctr", "lever": "calls"}));
    assert_eq!((s, b["accepted"].as_u64()), (200, Some(1)), "{b}");
    assert_eq!(total(&d, "ctr").as_deref(), Some("216"));
}

// ------------------------------------------------------------------------------------
// 7. Oversized heads
// ------------------------------------------------------------------------------------

/// The request head `start` (request line and header lines, each ending in CRLF) padded
/// with an `X-Pad` header to exactly `len` bytes.
fn head_exact(start: &str, len: usize) -> Vec<u8> {
    let pad = len - start.len() - "X-Pad: \r\n\r\n".len();
    format!("{start}X-Pad: {}\r\n\r\n", "p".repeat(pad)).into_bytes()
}

/// `GET /v1/levers` with the read key and a head of exactly `len` bytes.
fn head_of_len(len: usize) -> Vec<u8> {
    head_exact(
        &format!("GET /v1/levers HTTP/1.1\r\nHost: meterd\r\nAuthorization: Bearer {READ}\r\n"),
        len,
    )
}

/// Sends `req` (while reading, in case the server stops reading first) and returns the
/// answer, or `None` when the connection was closed without one.
fn send_oversized(d: &Daemon, req: Vec<u8>) -> Option<Resp> {
    let mut c = Conn::open(d);
    let mut w = c.s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        // Fails once the server has closed; that is fine.
        let _ = w.write_all(&req);
    });
    let r = c.read_resp();
    let _ = writer.join();
    if r.is_some() {
        assert!(c.closes_within(Duration::from_secs(5)), "left open");
    }
    r
}

#[test]
fn oversized_heads_get_431_and_harm_no_one() {
    let d = start("");
    let good = GoodClient::start(&d, "heads");

    // Exactly at the limit: served.
    let mut c = Conn::open(&d);
    let r = c.roundtrip(&head_of_len(MAX_HEAD_BYTES));
    assert_eq!(r.status, 200, "{r:?}");
    // With a body after it.
    let body = event("at-limit");
    let mut req = head_exact(
        &format!(
            "POST /v1/events HTTP/1.1\r\nHost: meterd\r\nAuthorization: Bearer {INGEST}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ),
        MAX_HEAD_BYTES,
    );
    req.extend_from_slice(&body);
    let r = c.roundtrip(&req);
    assert_eq!(
        (r.status, r.json()["accepted"].as_u64()),
        (200, Some(1)),
        "{r:?}"
    );

    // One byte over: 431, at once.
    let started = Instant::now();
    let r = send_oversized(&d, head_of_len(MAX_HEAD_BYTES + 1));
    if let Some(r) = &r {
        assert_eq!(r.status, 431, "{r:?}");
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    eprintln!("one byte over: {:?}", r.map(|r| r.status));

    // Exactly 100 header lines: served; 101: 431.
    let lines = |n: usize| {
        let mut h =
            format!("GET /v1/levers HTTP/1.1\r\nHost: meterd\r\nAuthorization: Bearer {READ}\r\n");
        for i in 0..n - 2 {
            h.push_str(&format!("X-H{i}: v\r\n"));
        }
        h.push_str("\r\n");
        h.into_bytes()
    };
    let r = c.roundtrip(&lines(MAX_HEADERS));
    assert_eq!(r.status, 200, "{r:?}");
    let r = send_oversized(&d, lines(MAX_HEADERS + 1)).expect("a 431");
    assert_eq!(r.status, 431, "{r:?}");

    // Hostile shapes, each on its own connection, many at once.
    let shapes: Vec<(&str, Vec<u8>)> = vec![
        ("1 MiB header line", head_of_len(1 << 20)),
        ("5000 headers", lines(5000)),
        (
            "70 KB URI",
            format!(
                "GET /v1/levers?{} HTTP/1.1\r\nHost: meterd\r\n\r\n",
                "q".repeat(70_000)
            )
            .into_bytes(),
        ),
        ("endless head", {
            let mut h = b"GET /v1/levers HTTP/1.1\r\n".to_vec();
            while h.len() < 4 << 20 {
                h.extend_from_slice(b"X-Endless: 0123456789abcdef\r\n");
            }
            h
        }),
    ];
    let shapes = Arc::new(shapes);
    let workers: Vec<_> = (0..8)
        .map(|w| {
            let shapes = shapes.clone();
            let a = addr(&d);
            std::thread::spawn(move || {
                let mut outcomes = Vec::new();
                for k in 0..12 {
                    let (what, req) = &shapes[(w + k) % shapes.len()];
                    let mut c = Conn::open_addr(&a);
                    let mut wr = c.s.try_clone().unwrap();
                    let req = req.clone();
                    let writer = std::thread::spawn(move || {
                        let _ = wr.write_all(&req);
                    });
                    let started = Instant::now();
                    let r = c.read_resp();
                    let _ = writer.join();
                    outcomes.push((*what, r.map(|r| r.status), started.elapsed()));
                }
                outcomes
            })
        })
        .collect();
    let mut answered = 0;
    let mut total_attempts = 0;
    for w in workers {
        for (what, status, took) in w.join().unwrap() {
            total_attempts += 1;
            if let Some(s) = status {
                assert!(s == 431 || s == 414, "{what}: {s}");
                answered += 1;
            }
            // Refused as soon as the limit is passed, not after a timeout.
            assert!(took < Duration::from_secs(5), "{what}: took {took:?}");
        }
    }
    eprintln!("hostile heads: {answered} of {total_attempts} answered 431/414, the rest closed");

    // A keep-alive connection: a good request, then an oversized one.
    let mut c = Conn::open(&d);
    let mut both = get("/v1/levers", "");
    both.extend(head_of_len(MAX_HEAD_BYTES + 1000));
    c.send(&both);
    assert_eq!(c.read_resp().expect("first answer").status, 200);
    if let Some(r) = c.read_resp() {
        assert_eq!(r.status, 431, "{r:?}");
    }
    assert!(c.closes_within(Duration::from_secs(5)));

    good.finish(&d);
    assert_eq!(total(&d, "ctr").as_deref(), Some("1"));
}

// ------------------------------------------------------------------------------------
// 8. Clients that stop reading
// ------------------------------------------------------------------------------------

#[test]
fn clients_that_stop_reading_are_cut_off_after_send_timeout() {
    let send_timeout = Duration::from_secs(1);
    let d = start("send_timeout = \"1s\"\n");
    let good = GoodClient::start(&d, "reader");
    let one = {
        let mut c = Conn::open(&d);
        c.roundtrip(&get("/openapi.json", "")).body.len()
    };
    // Far more than socket buffers hold (~120 KB each, 300 of them).
    let n = 300;
    let mut stalled = Vec::new();
    for _ in 0..4 {
        let mut c = Conn::open(&d);
        let mut all = Vec::new();
        for _ in 0..n {
            all.extend(get("/openapi.json", ""));
        }
        c.send(&all);
        stalled.push(c);
    }
    // Read nothing for a while, then everything the server still sends.
    std::thread::sleep(4 * send_timeout);
    for mut c in stalled {
        let mut answers = 0;
        c.s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        while let Some(r) = c.read_resp() {
            assert_eq!(r.status, 200);
            assert_eq!(r.body.len(), one);
            answers += 1;
        }
        eprintln!("stalled reader got {answers} of {n} answers before being cut off");
        assert!(
            answers < n,
            "a client that stopped reading was never cut off"
        );
    }
    good.finish(&d);
    assert!(
        wait_until(Duration::from_secs(5), || open_api_connections(&d) <= 2.0),
        "open connections: {}",
        open_api_connections(&d)
    );
}

/// The thread names of the daemon's process.
fn thread_names(d: &Daemon) -> Vec<String> {
    let pid = d.child.as_ref().expect("running").id();
    let mut names = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Ok(c) = std::fs::read_to_string(t.path().join("comm")) {
                names.push(c.trim().to_string());
            }
        }
    }
    names
}

#[test]
fn a_connection_opened_by_a_read_serves_writes_too_and_the_reverse() {
    let d = start("");
    if cfg!(target_os = "linux") {
        assert!(
            thread_names(&d).iter().any(|n| n == "meterd-reads"),
            "no reads thread: {:?}",
            thread_names(&d)
        );
    }
    let event = |id: &str| {
        format!(r#"{{"id":"{id}","contract":"ctr","lever":"calls","value":2}}"#).into_bytes()
    };
    let balance = get("/v1/contracts/ctr/balance", "");
    // Opened by a read (the reads thread): a read, a write, a read again.
    let mut a = Conn::open(&d);
    assert_eq!(a.roundtrip(&balance).status, 200);
    let r = a.roundtrip(&post_events(&event("rw-1"), "application/json", ""));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["accepted"], 1);
    assert_eq!(a.roundtrip(&balance).status, 200);
    // Opened by a write (the main workers): a write, then a read.
    let mut b = Conn::open(&d);
    let r = b.roundtrip(&post_events(&event("rw-2"), "application/json", ""));
    assert_eq!(r.json()["accepted"], 1);
    assert_eq!(b.roundtrip(&balance).status, 200);
    // Pipelined in one write, starting with a read: answered in order.
    let mut c = Conn::open(&d);
    let mut burst = balance.clone();
    burst.extend_from_slice(&post_events(&event("rw-3"), "application/json", ""));
    burst.extend_from_slice(&post_events(&event("rw-3"), "application/json", ""));
    c.send(&burst);
    assert_eq!(c.read_resp().expect("first").status, 200);
    assert_eq!(c.read_resp().expect("second").json()["accepted"], 1);
    assert_eq!(c.read_resp().expect("third").json()["duplicates"], 1);
    // Every write counted once, whichever thread served it.
    assert_eq!(d.day_total("ctr", "calls"), 6);
}
