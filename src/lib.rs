//! hexmirror: a caching reverse-proxy mirror for the Hex package repository that verifies
//! registry signatures and tarball checksums before anything is cached.
//!
//! # Layout
//! - `config`: figment layers (defaults < TOML < `HEXMIRROR_*`) into a validated `Config`.
//! - `route`: pure; a request path to a `Route` (repository, resource) or a refusal.
//! - `registry`: the Hex registry v2 protobuf messages (prost derive, no protoc).
//! - `verify`: pure; signatures, origins and checksums; the only constructor of `Verified<T>`;
//!   what it decodes is kept with the bytes as `Facts` (releases, dependencies, names, counts).
//! - `cache`: cache keys and entries, the moka memory tier and the sled + files disk tier.
//! - `upstream`: the HTTP client to upstreams: timeouts, fallbacks, proxy, TLS, credential rules.
//! - `mirror`: the data path: lookup, coalesced fetch, verify, store, stale-if-error.
//! - `budget`: a global byte budget; bounds the memory of registry files being verified at once.
//! - `service`: HTTP semantics: status codes, conditional requests, logs and request metrics.
//! - `body`: the response body type and its constructors, shared by `service` and `admin`.
//! - `server`: sockets, TLS, the hyper connection loop, graceful shutdown; runs any service.
//! - `metrics`: every Prometheus family, registered once.
//! - `oauth`: exchanges hexmirror's own key for short-lived upstream tokens.
//! - `term`: pure; the one parser of literal Erlang and Elixir terms, with positions and limits.
//! - `lockfile`, `requirement`: mix.lock / rebar.lock (read by `term`), Hex version requirements.
//! - `hex_tarball`: pure; what is read inside a Hex release tarball (inner checksum, licences).
//! - `sync`: selects releases (specs, lockfiles, all) and fills the store through `mirror`.
//! - `audit`: `verify`: re-verifies the whole store and the completeness of what was selected.
//! - `bundle`, `transfer`: the air-gap bundle format, and export/import with full verification.
//! - `admin`: the loopback admin endpoint (`AdminService`) and the command line's client for it.
//!
//! [`start`] wires them together and is the one function that opens sockets; it fails with a
//! [`StartError`]. Imports between the modules form no cycle.

#![forbid(unsafe_code)]

pub mod admin;
pub mod audit;
pub mod body;
pub mod breaker;
pub mod budget;
pub mod bundle;
pub mod cache;
pub mod config;
pub mod hex_tarball;
pub mod lockfile;
pub mod metrics;
pub mod mirror;
pub mod oauth;
pub mod policy;
pub mod registry;
pub mod requirement;
pub mod route;
pub mod server;
pub mod service;
pub mod sync;
pub mod term;
pub mod transfer;
pub mod upstream;
pub mod verify;
pub mod volume;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::net::TcpListener;

pub use config::Config;
pub use mirror::Mirror;

/// Builds the metrics registry with the label sets this configuration can produce.
pub fn metrics_for(config: &Config) -> metrics::Metrics {
    let repos: Vec<&str> = config.repos.keys().map(String::as_str).collect();
    let upstreams: Vec<(&str, String)> = config
        .repos
        .values()
        .flat_map(|r| r.upstreams.iter().map(move |u| (r.name.as_str(), upstream::upstream_label(u))))
        .collect();
    metrics::Metrics::new(&repos, &upstreams)
}

/// A running server, as tests and `main` use it.
pub struct Running {
    pub addr: SocketAddr,
    /// Where `metrics_listen` was bound (its port resolved), when it is set.
    pub metrics_addr: Option<SocketAddr>,
    pub mirror: Mirror,
    pub done: tokio::task::JoinHandle<()>,
}

/// Why the server did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Tls(#[from] server::TlsError),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    /// A bound socket could not say its own address.
    #[error("{0}")]
    LocalAddress(std::io::Error),
    #[error("cannot draw the admin token from the OS random source: {0}")]
    AdminToken(getrandom::Error),
    #[error(transparent)]
    Open(#[from] mirror::OpenError),
}

/// Binds `addr`, and returns the listener with its resolved address.
async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), StartError> {
    let listener = TcpListener::bind(addr).await.map_err(|source| StartError::Listen { addr, source })?;
    let local = listener.local_addr().map_err(StartError::LocalAddress)?;
    Ok((listener, local))
}

/// Opens the store, binds `config.listen` (and `metrics_listen`), and serves until `shutdown`.
pub async fn start(config: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<Running, StartError> {
    let metrics = metrics_for(&config);
    let tls = match &config.tls {
        Some((cert, key)) => Some(server::tls_acceptor(cert, key)?),
        None => None,
    };
    let (listener, addr) = bind(config.listen).await?;
    let (metrics_listener, metrics_addr) = match config.metrics_listen {
        Some(a) => bind(a).await.map(|(listener, addr)| (Some(listener), Some(addr)))?,
        None => (None, None),
    };
    let (admin_listener, admin_addr) = bind(config.admin_listen).await?;
    let admin_token = match config.admin_token.clone() {
        Some(token) => token,
        None => config::Secret::new(admin::random_token().map_err(StartError::AdminToken)?),
    };
    let data_dir = config.data_dir.clone();
    let grace = config.shutdown_grace;
    let offline = config.offline;
    let limits = server::Limits {
        header_read_timeout: config.client_header_timeout,
        max_connections: config.max_connections,
        ..server::Limits::default()
    };
    let access_log = config.access_log;
    let mirror = Mirror::open_for_serving(config, metrics).await?;
    // An import interrupted by a crash is completed (or undone) before anything is served.
    transfer::recover(&mirror).await;
    // Held until the server has stopped, then dropped: it flushes the access log's last lines.
    let (access_log, access_log_guard) = match access_log {
        true => {
            let (log, guard) = service::AccessLog::stdout();
            (Some(log), Some(guard))
        }
        false => (None, None),
    };
    let ready = Arc::new(AtomicBool::new(false));
    let service = service::Service::new(mirror.clone(), ready.clone()).with_access_log(access_log.clone());
    let operations_service =
        service::Service::operations(mirror.clone(), ready.clone()).with_access_log(access_log.clone());
    let admin_service =
        admin::AdminService::new(mirror.clone(), ready.clone(), admin_token.clone()).with_access_log(access_log);
    let endpoint = admin::Endpoint {
        url: format!("http://{admin_addr}"),
        token: admin_token.expose().to_string(),
        pid: std::process::id(),
    };
    match admin::write_endpoint(&data_dir, &endpoint) {
        Err(e) => {
            tracing::warn!(error = %e, "cannot write the admin endpoint file; commands will not find this server")
        }
        Ok(()) => {
            if let Some(problem) = admin::directory_problem(&data_dir) {
                tracing::warn!(
                    data_dir = %data_dir.display(),
                    %problem,
                    "commands will refuse the admin endpoint file in this data directory; make it writable by its owner only"
                );
            }
        }
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stop = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stopped| *stopped).await;
        }
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(address = %addr, scheme, offline, "listening");
    let connections = mirror.metrics().connections.clone();
    let mut tasks = vec![tokio::spawn(server::run(listener, service, tls, limits, connections.clone(), stop(), grace))];
    if let (Some(listener), Some(metrics_addr)) = (metrics_listener, metrics_addr) {
        tracing::info!(address = %metrics_addr, "operations endpoints listening");
        tasks.push(tokio::spawn(server::run(
            listener,
            operations_service,
            None,
            limits,
            connections.clone(),
            stop(),
            grace,
        )));
    }
    tracing::info!(address = %admin_addr, "admin endpoint listening");
    tasks.push(tokio::spawn(server::run(
        admin_listener,
        admin_service,
        None,
        server::Limits::default(),
        connections,
        stop(),
        grace,
    )));
    ready.store(true, Ordering::Relaxed);
    let writes_mirror = mirror.clone();
    let done = tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
        for task in tasks {
            let _ = task.await;
        }
        // Entries answered from memory may still be on their way to disk.
        writes_mirror.settle_writes().await;
        writes_mirror.save_missing().await;
        writes_mirror.save_seen().await;
        if let Err(e) = writes_mirror.store().flush().await {
            tracing::error!(error = %e, "store: final flush failed");
        }
        let _ = std::fs::remove_file(admin::endpoint_file(&data_dir));
        // Waits (briefly) for the access log's writer to write what it holds.
        let _ = tokio::task::spawn_blocking(move || drop(access_log_guard)).await;
    });
    Ok(Running { addr, metrics_addr, mirror, done })
}
