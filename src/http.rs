//! The metrics endpoint: `/metrics` (Prometheus text), `/healthz` and
//! `/readyz`, served over HTTP/1.1 with hyper. At most
//! [`Limits::max_connections`] connections are served at once (further ones
//! wait in the listen backlog until one ends); each connection answers one
//! request within [`Limits::connection_timeout`]; on cancellation the endpoint
//! stops accepting, lets the requests in progress finish (for at most the
//! connection timeout) and then ends.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::metrics::Metrics;

/// Bounds on what the endpoint spends on its clients.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// How long a client may take to send its request head.
    pub header_timeout: Duration,
    /// How long one connection may last in all (read, answer, write); also
    /// the longest a graceful shutdown waits for requests in progress.
    pub connection_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 16,
            header_timeout: Duration::from_secs(5),
            connection_timeout: Duration::from_secs(10),
        }
    }
}

/// Largest request head read (hyper's minimum buffer size).
const MAX_REQUEST: usize = 8 * 1024;

/// Binds the endpoint with the default [`Limits`]; returns the bound address
/// (useful with port 0) and the serving future, which ends after `cancel`
/// once the requests in progress are answered.
pub async fn bind(
    addr: &str,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) -> Result<(SocketAddr, impl std::future::Future<Output = ()>)> {
    bind_with(addr, metrics, cancel, Limits::default()).await
}

/// [`bind`] with explicit limits.
pub async fn bind_with(
    addr: &str,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
    limits: Limits,
) -> Result<(SocketAddr, impl std::future::Future<Output = ()>)> {
    let error = |source| Error::Metrics {
        addr: addr.to_string(),
        source,
    };
    let listener = TcpListener::bind(addr).await.map_err(error)?;
    let local = listener.local_addr().map_err(error)?;
    Ok((local, serve(listener, metrics, cancel, limits)))
}

async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
    limits: Limits,
) {
    let max = limits.max_connections.max(1);
    let permits = Arc::new(Semaphore::new(max));
    loop {
        // A connection is accepted only with a permit: past the limit, clients
        // wait in the kernel's (bounded) listen backlog.
        let permit = tokio::select! {
            _ = cancel.cancelled() => break,
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
        };
        let stream = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics endpoint accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let (metrics, cancel) = (metrics.clone(), cancel.clone());
        tokio::spawn(async move {
            connection(stream, metrics, cancel, limits).await;
            drop(permit);
        });
    }
    drop(listener);
    // Every permit back means every connection ended.
    let all = permits.acquire_many(max as u32);
    if tokio::time::timeout(limits.connection_timeout, all)
        .await
        .is_err()
    {
        tracing::warn!("metrics endpoint stopped with connections still open");
    }
}

/// Serves one connection: one request, bounded in size and time; on
/// cancellation a request in progress is still answered.
async fn connection(
    stream: TcpStream,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
    limits: Limits,
) {
    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
        let response = answer(req.method(), req.uri().path(), &metrics);
        async move { Ok::<_, Infallible>(response) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(false)
        .max_buf_size(MAX_REQUEST)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let deadline = tokio::time::sleep(limits.connection_timeout);
    tokio::pin!(deadline);
    let ended = tokio::select! {
        ended = conn.as_mut() => Some(ended),
        _ = cancel.cancelled() => {
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                ended = conn.as_mut() => Some(ended),
                _ = &mut deadline => None,
            }
        }
        _ = &mut deadline => None,
    };
    match ended {
        Some(Ok(())) => {}
        Some(Err(e)) => tracing::debug!(error = %e, "metrics connection ended with an error"),
        None => tracing::debug!("metrics connection timed out"),
    }
}

/// The answer to one request.
fn answer(method: &Method, path: &str, metrics: &Metrics) -> Response<String> {
    const TEXT: &str = "text/plain";
    let (status, content_type, body) = match (method, path) {
        (&Method::GET, "/metrics") => (
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.render(),
        ),
        (&Method::GET, "/healthz") => (StatusCode::OK, TEXT, "ok\n".to_string()),
        (&Method::GET, "/readyz") if metrics.ready.get() != 1 => (
            StatusCode::SERVICE_UNAVAILABLE,
            TEXT,
            "not ready\n".to_string(),
        ),
        (&Method::GET, "/readyz") if metrics.dead_letters_blocked.get() > 0 => (
            StatusCode::SERVICE_UNAVAILABLE,
            TEXT,
            format!(
                "not ready: {} dead letters refused by the dead-letter topic\n",
                metrics.dead_letters_blocked.get()
            ),
        ),
        (&Method::GET, "/readyz") => (StatusCode::OK, TEXT, "ready\n".to_string()),
        (&Method::GET, _) => (
            StatusCode::NOT_FOUND,
            TEXT,
            "try /metrics, /healthz or /readyz\n".to_string(),
        ),
        _ => (
            StatusCode::METHOD_NOT_ALLOWED,
            TEXT,
            "GET only\n".to_string(),
        ),
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, path: &str) -> String {
        request(addr, &format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n")).await
    }

    async fn request(addr: SocketAddr, raw: &str) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(raw.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    async fn start(
        metrics: Arc<Metrics>,
    ) -> (SocketAddr, CancellationToken, tokio::task::JoinHandle<()>) {
        let cancel = CancellationToken::new();
        let (addr, serve) = bind("127.0.0.1:0", metrics, cancel.clone()).await.unwrap();
        (addr, cancel, tokio::spawn(serve))
    }

    #[tokio::test]
    async fn serves_metrics_health_and_readiness() {
        let metrics = Arc::new(Metrics::new());
        metrics.init_tier("delay-1s");
        let (addr, cancel, server) = start(metrics.clone()).await;
        let m = get(addr, "/metrics").await;
        assert!(m.starts_with("HTTP/1.1 200"), "{m}");
        assert!(m.contains("text/plain; version=0.0.4"), "{m}");
        assert!(m.contains("kafka_delay_router_records_delivered_total{tier=\"delay-1s\"} 0"));
        assert!(get(addr, "/metrics?x=1").await.starts_with("HTTP/1.1 200"));
        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 503"));
        metrics.ready.set(1);
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));
        metrics.dead_letters_blocked.set(2);
        let refused = get(addr, "/readyz").await;
        assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
        assert!(refused.contains("2 dead letters refused"), "{refused}");
        metrics.dead_letters_blocked.set(0);
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));
        assert!(get(addr, "/nope").await.starts_with("HTTP/1.1 404"));
        let post = request(
            addr,
            "POST /metrics HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n",
        )
        .await;
        assert!(post.starts_with("HTTP/1.1 405"), "{post}");
        cancel.cancel();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn connections_past_the_limit_wait_for_a_free_one() {
        let metrics = Arc::new(Metrics::new());
        let (addr, cancel, server) = start(metrics).await;
        // Clients that connect and send nothing hold every connection.
        let mut idle = Vec::new();
        for _ in 0..Limits::default().max_connections {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let waiting = tokio::spawn(get(addr, "/healthz"));
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!waiting.is_finished(), "answered past the connection limit");
        drop(idle.pop());
        let answered = tokio::time::timeout(Duration::from_secs(2), waiting)
            .await
            .expect("answered once a connection is free")
            .unwrap();
        assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");
        drop(idle);
        cancel.cancel();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn shutdown_answers_requests_in_progress_then_ends() {
        let metrics = Arc::new(Metrics::new());
        let (addr, cancel, server) = start(metrics).await;
        // A request whose head is half sent when the router stops.
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        cancel.cancel();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !server.is_finished(),
            "ended before answering a request in progress"
        );
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "still accepting after cancellation"
        );
        s.write_all(b"host: x\r\n\r\n").await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        tokio::time::timeout(Duration::from_secs(2), server)
            .await
            .expect("ended once the request in progress was answered")
            .unwrap();
    }
}
