//! HTTP/1.1 server (hyper 1.x): accept loop, per-connection limits, graceful shutdown.
//!
//! Submodules: [`router`] maps method and path to handlers and applies authentication,
//! roles and the in-flight limit; [`error`] is the single error-to-response mapping;
//! [`handlers`] holds one file per API area; [`util`] has body and query helpers.
//!
//! Every way a slow or broken client can hold server resources is bounded here or in the
//! handlers (black-box tests: `tests/clients.rs`):
//!
//! - **Request head**: at most [`MAX_HEAD_BYTES`] bytes and [`MAX_HEADERS`] header lines
//!   (431 and close), received within `header_read_timeout` counted from when the server
//!   starts waiting for it (the connection is closed without a response). The same timer
//!   runs while a keep-alive connection is idle between requests, so it is also the idle
//!   timeout.
//! - **Request body**: the whole body within `body_read_timeout` (408, see
//!   [`util::read_body`]), however it trickles in. A total deadline is a tighter bound on
//!   the time a request holds a permit than a minimum rate would be, so there is none.
//! - **Keep-alive after any answer**: a connection stays usable after every answer, or
//!   the answer says `Connection: close`. A body the handler did not read (an early
//!   401/403/404/405/415/429/503) is read and discarded up to `max_body_bytes` within
//!   `body_read_timeout` ([`router::route`]); a body read partway (413, 408) or past that
//!   bound closes. hyper's own answers to a head it cannot parse (400, 414, 431) get the
//!   `Connection: close` they lack ([`Guarded`]). A connection closed after an answer
//!   first reads and discards what the client still sends, for at most [`LINGER`], so
//!   the client reads the answer instead of a reset.
//! - **Response**: a client that stops reading is cut off when the socket accepts no
//!   bytes for `send_timeout` (see [`Guarded`]), which also stops any producer (e.g. a
//!   usage export) feeding that response.
//! - **Connections**: at most `max_connections` open per listener (lowered at start to half
//!   the process's open-file limit if that is smaller, so the store keeps file
//!   descriptors); a connection past it gets `429 overloaded` with `Retry-After: 1` and
//!   is closed. Shown by `meterd_http_open_connections` and
//!   `meterd_http_refused_connections_total`.
//! - **Half-closed clients** (request sent, then write side shut) still get their
//!   responses; a client that disconnects mid-body has the body fail, so nothing of it is
//!   counted.

pub mod error;
pub mod handlers;
pub mod router;
pub mod util;

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::state::State;

/// Largest request head (request line + headers) accepted, in bytes; larger gets 431.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Most header lines accepted in one request head; more gets 431. This is hyper's
/// built-in default (setting it explicitly would allocate the header array per request).
pub const MAX_HEADERS: usize = 100;

/// Open connections the metrics listener accepts (scrapers and probes need few).
pub const METRICS_MAX_CONNECTIONS: usize = 256;

/// Refused connections at once that are answered before being closed; past this they
/// are closed at once.
const MAX_REFUSING: usize = 256;

/// How long a refused connection, or one closed after an answer that said
/// `Connection: close`, is kept reading and discarding what the client still sends, so
/// that closing does not reset the connection before the client has read the answer.
pub const LINGER: Duration = Duration::from_secs(1);

/// Most bytes read and discarded while lingering.
const LINGER_BYTES: usize = 16 * 1024 * 1024;

pub use crate::telemetry::names::{OPEN_CONNECTIONS, REFUSED_CONNECTIONS_TOTAL};

/// Which routes a listener serves.
#[derive(Clone)]
pub enum Surface {
    /// The API.
    Api,
    /// `/metrics`, `/healthz`, `/readyz`.
    Metrics(PrometheusHandle),
}

impl Surface {
    fn label(&self) -> &'static str {
        match self {
            Surface::Api => "api",
            Surface::Metrics(_) => "metrics",
        }
    }
}

/// Serves `listener` until `shutdown` resolves, then drains open connections for at most
/// `grace`.
pub async fn serve(
    listener: TcpListener,
    state: Arc<State>,
    surface: Surface,
    reads: Option<tokio::runtime::Handle>,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) {
    describe_metrics();
    let listener_label = surface.label();
    let cap = connection_cap(&surface, state.cfg.max_connections);
    let slots = Arc::new(Semaphore::new(cap));
    let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
    let refusal = refusal_response().await;
    let send_timeout = state.cfg.send_timeout;
    metrics::gauge!(OPEN_CONNECTIONS, "listener" => listener_label).set(0.0);
    metrics::counter!(REFUSED_CONNECTIONS_TOTAL, "listener" => listener_label).absolute(0);

    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(state.cfg.header_read_timeout)
        .max_header_size(MAX_HEAD_BYTES)
        .max_buf_size(MAX_HEAD_BYTES.max(8192))
        .half_close(true)
        .keep_alive(true);
    tokio::pin!(shutdown);
    // Ends the wait for a new connection's first bytes when the listener stops.
    let closing = tokio_util::sync::CancellationToken::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    metrics::counter!(REFUSED_CONNECTIONS_TOTAL, "listener" => listener_label)
                        .increment(1);
                    match refusing.clone().try_acquire_owned() {
                        Ok(p) => {
                            tokio::spawn(refuse(stream, refusal.clone(), p));
                        }
                        Err(_) => {
                            let _ = stream.try_write(&refusal);
                        }
                    }
                    continue;
                };
                let open = OpenConnection::new(slot, listener_label);
                let _ = stream.set_nodelay(true);
                let conn = Connection {
                    builder: builder.clone(),
                    watcher: graceful.watcher(),
                    state: state.clone(),
                    surface: surface.clone(),
                    send_timeout,
                    open,
                };
                match &reads {
                    None => {
                        tokio::spawn(conn.serve(stream));
                    }
                    Some(reads) => {
                        let reads = reads.clone();
                        let wait = state.cfg.header_read_timeout;
                        let closing = closing.clone();
                        tokio::spawn(async move {
                            let first = tokio::select! {
                                f = first_request(&stream, wait) => f,
                                () = closing.cancelled() => First::Nothing,
                            };
                            match first {
                                First::Read => conn.move_to(stream, &reads),
                                First::Other => conn.serve(stream).await,
                                // What hyper does with a head that does not arrive in time.
                                First::Nothing => {}
                            }
                        });
                    }
                }
            }
            _ = &mut shutdown => break,
        }
    }
    closing.cancel();
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("grace period over; closing remaining connections");
    }
}

/// An accepted connection, ready to be served on one runtime or the other.
struct Connection {
    builder: http1::Builder,
    watcher: hyper_util::server::graceful::Watcher,
    state: Arc<State>,
    surface: Surface,
    send_timeout: Duration,
    open: OpenConnection,
}

impl Connection {
    /// Serves the connection on the current runtime until it closes.
    async fn serve(self, stream: tokio::net::TcpStream) {
        let Connection {
            builder,
            watcher,
            state,
            surface,
            send_timeout,
            open,
        } = self;
        let io = Guarded::new(TokioIo::new(stream), send_timeout);
        let closing = io.closing.clone();
        let svc = service_fn(move |req| {
            let state = state.clone();
            let surface = surface.clone();
            let closing = closing.clone();
            async move {
                let resp = router::route(state, surface, req).await;
                if resp.headers().contains_key(hyper::header::CONNECTION) {
                    closing.store(true, Ordering::Relaxed);
                }
                Ok::<_, Infallible>(resp)
            }
        });
        let conn = builder.serve_connection(io, svc);
        let _open = open;
        let _ = watcher.watch(conn).await;
    }

    /// Serves the connection on the `reads` runtime: the socket leaves this runtime's
    /// I/O driver and joins that one's.
    fn move_to(self, stream: tokio::net::TcpStream, reads: &tokio::runtime::Handle) {
        let Ok(std) = stream.into_std() else {
            return;
        };
        reads.spawn(async move {
            if let Ok(stream) = tokio::net::TcpStream::from_std(std) {
                self.serve(stream).await;
            }
        });
    }
}

/// What a new connection sends first.
#[derive(Debug, PartialEq, Eq)]
enum First {
    /// A read (`GET` or `HEAD`): served on the reads runtime.
    Read,
    /// Anything else: served where it was accepted.
    Other,
    /// Nothing within the header read timeout, the peer closed, or the listener is
    /// stopping: dropped.
    Nothing,
}

/// Looks at a new connection's first bytes without taking them off the socket, waiting
/// at most `wait` (the header read timeout) for them.
async fn first_request(stream: &tokio::net::TcpStream, wait: Duration) -> First {
    let mut head = [0u8; 5];
    match tokio::time::timeout(wait, stream.peek(&mut head)).await {
        Ok(Ok(0)) | Ok(Err(_)) | Err(_) => First::Nothing,
        Ok(Ok(n)) if head[..n].starts_with(b"GET ") || head[..n].starts_with(b"HEAD ") => {
            First::Read
        }
        Ok(Ok(_)) => First::Other,
    }
}

/// Connections a listener accepts at once: `max_connections` for the API (at most half the
/// open-file limit, which the store, the journal and webhooks share),
/// [`METRICS_MAX_CONNECTIONS`] for the metrics listener.
fn connection_cap(surface: &Surface, max_connections: usize) -> usize {
    let wanted = match surface {
        Surface::Api => max_connections,
        Surface::Metrics(_) => max_connections.min(METRICS_MAX_CONNECTIONS),
    };
    match open_file_limit() {
        Some(limit) if wanted as u64 > limit / 2 => {
            let cap = ((limit / 2) as usize).max(1);
            tracing::warn!(
                max_connections = wanted,
                open_file_limit = limit,
                cap,
                listener = surface.label(),
                "max_connections is more than half the open-file limit; capping connections \
                 (raise `ulimit -n` / LimitNOFILE to allow more)"
            );
            cap
        }
        _ => wanted,
    }
}

/// The soft limit on open files (`/proc/self/limits`, Linux); `None` when unknown or
/// unlimited.
fn open_file_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// An accepted connection: holds its slot under the connection cap and keeps the gauge
/// right however the connection ends.
struct OpenConnection {
    _slot: OwnedSemaphorePermit,
    listener: &'static str,
}

impl OpenConnection {
    fn new(slot: OwnedSemaphorePermit, listener: &'static str) -> OpenConnection {
        metrics::gauge!(OPEN_CONNECTIONS, "listener" => listener).increment(1.0);
        OpenConnection {
            _slot: slot,
            listener,
        }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        metrics::gauge!(OPEN_CONNECTIONS, "listener" => self.listener).decrement(1.0);
    }
}

/// The raw bytes of the `429 overloaded` answer to a connection past the cap.
async fn refusal_response() -> Bytes {
    let resp = error::ApiError::new(
        error::ErrorCode::Overloaded,
        "too many open connections; retry after the indicated delay",
    )
    .into_response();
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let mut out = format!(
        "HTTP/1.1 {} {}\r\n",
        parts.status.as_u16(),
        parts.status.canonical_reason().unwrap_or("")
    );
    for (k, v) in &parts.headers {
        if let Ok(v) = v.to_str() {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    out.push_str(&format!(
        "connection: close\r\ncontent-length: {}\r\n\r\n",
        body.len()
    ));
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(&body);
    Bytes::from(bytes)
}

/// Answers a connection past the cap with `refusal` and closes it. What the client sent is
/// read and discarded first (for at most [`LINGER`]), so that closing does not reset
/// the connection before the client has read the answer.
async fn refuse(mut stream: TcpStream, refusal: Bytes, _permit: OwnedSemaphorePermit) {
    let _ = tokio::time::timeout(LINGER, async {
        stream.write_all(&refusal).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        let mut seen = 0;
        while seen < MAX_HEAD_BYTES {
            let n = stream.read(&mut sink).await?;
            if n == 0 {
                break;
            }
            seen += n;
        }
        Ok::<_, io::Error>(())
    })
    .await;
}

/// Describes the metrics of this module (idempotent).
fn describe_metrics() {
    metrics::describe_gauge!(
        OPEN_CONNECTIONS,
        metrics::Unit::Count,
        "Open client connections by listener (api, metrics)."
    );
    metrics::describe_counter!(
        REFUSED_CONNECTIONS_TOTAL,
        metrics::Unit::Count,
        "Connections refused with 429 because max_connections were open, by listener."
    );
}

/// A connection's transport with a send timeout: when the socket accepts no bytes for
/// `send_timeout` (the client stopped reading), writes fail with `TimedOut` and hyper drops
/// the connection, and with it the response body and whatever produces it.
///
/// It also closes connections politely. hyper's automatic answers to a request head it
/// cannot parse (`400`, `414`, `431`, always followed by a close) are written with a
/// `connection: close` line, which hyper leaves out. And when the last answer said
/// `Connection: close` (`closing`), shutting the connection down sends FIN and then reads
/// and discards what the client still sends until it closes, for at most [`LINGER`]
/// and [`LINGER_BYTES`], before the socket is dropped: a socket closed with unread bytes
/// sends a reset, which can make the client lose the answer it has not yet read.
pub struct Guarded<T> {
    io: T,
    send_timeout: Duration,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Set when an answer said `Connection: close`.
    pub closing: Arc<AtomicBool>,
    /// An automatic answer being written with its `connection: close` line.
    rewritten: Option<Rewritten>,
    /// The write side is shut; lingering until this deadline.
    linger: Option<(Pin<Box<tokio::time::Sleep>>, usize)>,
}

/// hyper's automatic answer head, rewritten: `bytes[written..]` is still to be sent;
/// hyper is told `reported` bytes were written once all of it is.
struct Rewritten {
    bytes: Vec<u8>,
    written: usize,
    reported: usize,
}

/// The status lines of hyper's automatic answers to a head it cannot parse.
const AUTOMATIC: [&[u8]; 3] = [
    b"HTTP/1.1 400 Bad Request\r\n",
    b"HTTP/1.1 414 URI Too Long\r\n",
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n",
];

/// `buf` with a `connection: close` line after its status line when it is the head of one
/// of hyper's automatic answers: one of [`AUTOMATIC`] followed by `content-length: 0`.
/// meterd's own error answers always carry a problem+json body, so they never match.
fn close_automatic(buf: &[u8]) -> Option<Vec<u8>> {
    let status = AUTOMATIC.iter().find(|s| buf.starts_with(s))?;
    let rest = &buf[status.len()..];
    if !rest.starts_with(b"content-length: 0\r\n") {
        return None;
    }
    let mut out = Vec::with_capacity(buf.len() + 19);
    out.extend_from_slice(status);
    out.extend_from_slice(b"connection: close\r\n");
    out.extend_from_slice(rest);
    Some(out)
}

impl<T> Guarded<T> {
    /// Wraps `io`.
    pub fn new(io: T, send_timeout: Duration) -> Guarded<T> {
        Guarded {
            io,
            send_timeout,
            stalled: None,
            closing: Arc::new(AtomicBool::new(false)),
            rewritten: None,
            linger: None,
        }
    }

    /// Starts (or checks) the stall timer on `Pending`; clears it when `r` is progress
    /// (bytes written: a TCP flush is always ready and says nothing about the client).
    fn watch<R>(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<io::Result<R>>,
        progress: bool,
    ) -> Poll<io::Result<R>> {
        match r {
            Poll::Pending => {
                let timeout = self.send_timeout;
                let sleep = self
                    .stalled
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                if sleep.as_mut().poll(cx).is_ready() {
                    self.stalled = None;
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client accepted no response bytes within send_timeout",
                    )));
                }
                Poll::Pending
            }
            ready => {
                if progress {
                    self.stalled = None;
                }
                ready
            }
        }
    }
}

impl<T: hyper::rt::Write + Unpin> Guarded<T> {
    /// Writes the rewritten automatic answer to its end, then reports the original
    /// head's length as written.
    fn poll_rewritten(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        loop {
            let Some(rw) = self.rewritten.as_mut() else {
                return Poll::Ready(Ok(0));
            };
            if rw.written == rw.bytes.len() {
                let reported = rw.reported;
                self.rewritten = None;
                return Poll::Ready(Ok(reported));
            }
            let r = Pin::new(&mut self.io).poll_write(cx, &rw.bytes[rw.written..]);
            let r = self.watch(cx, r, true);
            match r {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) => {
                    if let Some(rw) = self.rewritten.as_mut() {
                        rw.written += n;
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Starts writing `buf` rewritten when it is an automatic answer's head.
    fn rewrite(&mut self, buf: &[u8]) -> bool {
        if self.rewritten.is_some() {
            return true;
        }
        match close_automatic(buf) {
            Some(bytes) => {
                self.closing.store(true, Ordering::Relaxed);
                self.rewritten = Some(Rewritten {
                    bytes,
                    written: 0,
                    reported: buf.len(),
                });
                true
            }
            None => false,
        }
    }
}

impl<T: hyper::rt::Read + Unpin> hyper::rt::Read for Guarded<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<T: hyper::rt::Write + hyper::rt::Read + Unpin> hyper::rt::Write for Guarded<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.rewrite(buf) {
            return this.poll_rewritten(cx);
        }
        let r = Pin::new(&mut this.io).poll_write(cx, buf);
        this.watch(cx, r, true)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_flush(cx);
        this.watch(cx, r, false)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.linger.is_none() {
            let r = Pin::new(&mut this.io).poll_shutdown(cx);
            match this.watch(cx, r, false) {
                Poll::Ready(Ok(())) if this.closing.load(Ordering::Relaxed) => {
                    this.linger = Some((Box::pin(tokio::time::sleep(LINGER)), 0));
                }
                other => return other,
            }
        }
        let Some((deadline, seen)) = this.linger.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let mut sink = [0u8; 8192];
        loop {
            if deadline.as_mut().poll(cx).is_ready() || *seen > LINGER_BYTES {
                return Poll::Ready(Ok(()));
            }
            let mut rb = hyper::rt::ReadBuf::new(&mut sink);
            match Pin::new(&mut this.io).poll_read(cx, rb.unfilled()) {
                // The client closed (or the socket failed): nothing is left to reset.
                Poll::Ready(Ok(())) if rb.filled().is_empty() => return Poll::Ready(Ok(())),
                Poll::Ready(Err(_)) => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => *seen += rb.filled().len(),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(first) = bufs.first() {
            if this.rewrite(first) {
                return this.poll_rewritten(cx);
            }
        }
        let r = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.watch(cx, r, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn automatic_answers_get_connection_close() {
        let head =
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        let out = close_automatic(head).unwrap();
        assert_eq!(
            out,
            b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\ndate: x\r\n\r\n"
        );
        let bad = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n";
        assert!(close_automatic(bad).is_some());
        // meterd's own error answers carry a body and are left alone.
        let own = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/problem+json\r\n";
        assert!(close_automatic(own).is_none());
        assert!(close_automatic(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n").is_none());
    }
}
