//! Sockets, TLS and the hyper connection loop; no HTTP semantics (that is `service`, or `admin`
//! for the admin listener: `run` takes any hyper service answering with a `body::Body`).
//!
//! `tls_acceptor` loads hexmirror's own certificate and key ([`TlsError`]). `run` accepts
//! connections until the shutdown future resolves, then stops accepting and lets in-flight
//! requests finish within the grace period. An accept error backs off instead
//! of ending the loop. Slow clients are bounded by a header read timeout, and the number of
//! open connections by a limit.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::{service_fn, Service};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::body::Body;

/// The address of the client a request came from, in the request's extensions (for the
/// access log).
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub std::net::SocketAddr);

/// Limits applied to client connections.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub max_connections: usize,
    pub max_header_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { header_read_timeout: Duration::from_secs(10), max_connections: 4096, max_header_bytes: 64 << 10 }
    }
}

/// Why hexmirror's own TLS certificate or key (`tls_cert`, `tls_key`) cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: std::path::PathBuf, source: std::io::Error },
    #[error("tls_cert: {0}")]
    Certificate(std::io::Error),
    #[error("tls_key: {0}")]
    Key(std::io::Error),
    #[error("tls_key: no private key found")]
    NoKey,
    #[error("{0}")]
    Protocols(rustls::Error),
    #[error("tls_cert/tls_key: {0}")]
    Pair(rustls::Error),
}

/// Loads a TLS acceptor for serving hexmirror itself over https.
pub fn tls_acceptor(cert: &std::path::Path, key: &std::path::Path) -> Result<TlsAcceptor, TlsError> {
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_path_buf(), source })
    };
    let certs =
        rustls_pemfile::certs(&mut &read(cert)?[..]).collect::<Result<Vec<_>, _>>().map_err(TlsError::Certificate)?;
    let key = rustls_pemfile::private_key(&mut &read(key)?[..]).map_err(TlsError::Key)?.ok_or(TlsError::NoKey)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Protocols)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(TlsError::Pair)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Waits until a new connection has sent enough to choose HTTP/1 or HTTP/2. hyper's header
/// timeout starts only after that choice, so without this a client that sends nothing (or the
/// start of the HTTP/2 preface, then nothing) would hold a connection slot forever.
async fn first_bytes(stream: &tokio::net::TcpStream, limit: Duration) -> bool {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let deadline = tokio::time::Instant::now() + limit;
    let mut buf = [0u8; 24];
    loop {
        match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return false,
            Ok(Ok(n)) if n >= PREFACE.len() || buf[..n] != PREFACE[..n] => return true,
            Ok(Ok(_)) => {
                // Part of the preface is there: wait for the rest, within the same deadline.
                if tokio::time::timeout_at(deadline, tokio::time::sleep(Duration::from_millis(10))).await.is_err() {
                    return false;
                }
            }
        }
    }
}

/// Serves `service` on `listener` until `shutdown` resolves, then drains for up to `grace`.
/// `connections` counts the connections open on it.
///
/// `service` is any hyper service answering every request: the repository's or the operations'
/// `service::Service`, or the admin listener's `admin::AdminService`.
pub async fn run<S>(
    listener: TcpListener,
    service: S,
    tls: Option<TlsAcceptor>,
    limits: Limits,
    connections: prometheus::IntGauge,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) where
    S: Service<Request<Incoming>, Response = Response<Body>, Error = Infallible> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
{
    let graceful = GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192));
    builder.http2().timer(TokioTimer::new()).max_header_list_size(limits.max_header_bytes as u32);
    let builder = Arc::new(builder);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed; backing off");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "connection limit reached; closing new connection");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = service.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let tls = tls.clone();
        let connections = connections.clone();
        tokio::spawn(async move {
            connections.inc();
            // Set when the connection's first request arrives: a connection that opens no
            // request in time (an idle HTTP/2 connection with no stream, a stalled TLS client)
            // is closed, so that idle sockets cannot hold every connection slot.
            let seen = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let seen_by_handler = seen.clone();
            let handler = service_fn(move |mut req: Request<Incoming>| {
                seen_by_handler.store(true, std::sync::atomic::Ordering::Relaxed);
                req.extensions_mut().insert(Peer(peer));
                service.call(req)
            });
            if tls.is_none() && !first_bytes(&stream, limits.header_read_timeout).await {
                tracing::debug!(%peer, "connection sent no request in time; closed");
                connections.dec();
                drop(permit);
                return;
            }
            let serve = async {
                match tls {
                    Some(acceptor) => {
                        match tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream)).await {
                            Ok(Ok(stream)) => {
                                watcher
                                    .watch(builder.serve_connection(TokioIo::new(stream), handler).into_owned())
                                    .await
                            }
                            Ok(Err(e)) => Err(e.into()),
                            Err(_) => Err("tls handshake timed out".into()),
                        }
                    }
                    None => watcher.watch(builder.serve_connection(TokioIo::new(stream), handler).into_owned()).await,
                }
            };
            let no_request = async {
                tokio::time::sleep(limits.header_read_timeout).await;
                if seen.load(std::sync::atomic::Ordering::Relaxed) {
                    std::future::pending::<()>().await;
                }
            };
            let result = tokio::select! {
                result = serve => result,
                _ = no_request => {
                    tracing::debug!(%peer, "connection opened no request in time; closed");
                    Ok(())
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            connections.dec();
            drop(permit);
        });
    }
    drop(listener);
    tracing::info!(open_connections = graceful.count(), "shutting down: no longer accepting, draining");
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("all connections drained"),
        _ = tokio::time::sleep(grace) => tracing::warn!(grace_seconds = grace.as_secs(), "grace period ended with requests still in flight"),
    }
}
