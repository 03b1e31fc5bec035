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

use std::convert::Infallible;
use std::time::Duration;

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

/// Reads the whole body, then answers 200 with an empty body. A body that fails to
/// arrive in full gets a 400, as a truncated body does in meterd.
async fn handle(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let status = match req.into_body().collect().await {
        Ok(body) => {
            std::hint::black_box(body.to_bytes());
            StatusCode::OK
        }
        Err(_) => StatusCode::BAD_REQUEST,
    };
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = status;
    Ok(resp)
}

async fn serve(listener: TcpListener) {
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
                let conn = builder.serve_connection(TokioIo::new(stream), service_fn(handle));
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
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".to_string());
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
        serve(listener).await;
        std::process::ExitCode::SUCCESS
    })
}
