//! HTTP/1.1 server (hyper 1.x): accept loop, per-connection limits, graceful shutdown.
//!
//! Submodules: [`router`] maps method and path to handlers and applies authentication,
//! roles and the in-flight limit; [`error`] is the single error-to-response mapping;
//! [`handlers`] holds one file per API area; [`util`] has body and query helpers.

pub mod error;
pub mod handlers;
pub mod router;
pub mod util;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

use crate::state::State;

/// Largest request head (request line + headers) accepted, in bytes.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Which routes a listener serves.
#[derive(Clone)]
pub enum Surface {
    /// The API.
    Api,
    /// `/metrics`, `/healthz`, `/readyz`.
    Metrics(PrometheusHandle),
}

/// Serves `listener` until `shutdown` resolves, then drains open connections for at most
/// `grace`.
pub async fn serve(
    listener: TcpListener,
    state: Arc<State>,
    surface: Surface,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) {
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(state.cfg.header_read_timeout)
        .max_buf_size(MAX_HEAD_BYTES.max(8192))
        .keep_alive(true);
    tokio::pin!(shutdown);
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
                let _ = stream.set_nodelay(true);
                let io = TokioIo::new(stream);
                let state = state.clone();
                let surface = surface.clone();
                let svc = service_fn(move |req| {
                    let state = state.clone();
                    let surface = surface.clone();
                    async move { Ok::<_, Infallible>(router::route(state, surface, req).await) }
                });
                let conn = builder.serve_connection(io, svc);
                let fut = graceful.watch(conn);
                tokio::spawn(async move {
                    let _ = fut.await;
                });
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("grace period over; closing remaining connections");
    }
}
