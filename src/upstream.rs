//! The HTTP client to upstream repositories, and the rules on what may be sent to them.
//!
//! `Upstream::get` asks a repository's upstreams in order (the next one on a connection error,
//! a timeout, a 5xx or a 429), under a global cap on concurrent upstream requests, with connect,
//! idle-read and whole-transfer timeouts, and a body size limit. It returns the upstream's
//! answer as bytes; it never decides whether they are trustworthy (that is `verify`).
//!
//! Credentials: requests are built from scratch, so nothing a client sent reaches an upstream
//! unless the caller passes it as `authorization`. This module still refuses to send any
//! credential over plain http (unless the repository allows it for a loopback upstream), and it
//! follows a redirect only to the same origin. Egress goes through `HTTPS_PROXY`/`HTTP_PROXY`
//! (an HTTP CONNECT tunnel) unless `NO_PROXY` exempts the host; TLS uses the platform's roots
//! plus `ca_file` (a bad one is an [`UpstreamSetupError`] when the client is built).

use std::collections::HashMap;
use std::future::Future;
use std::io::BufReader;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tower_service::Service;

use crate::breaker::{Admit, Breaker, Change};
use crate::cache::Validators;
use crate::config::{is_loopback, Config, RepoConfig, Timeouts};
use crate::metrics::{status_class, Metrics};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What went wrong talking to the upstreams (after every one of them was tried).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream unreachable: {0}")]
    Unreachable(String),
    /// hexmirror's own key could not be exchanged for a token: the repository was not asked.
    #[error("no upstream token: {0}")]
    NoToken(String),
    #[error("upstream timed out")]
    Timeout,
    #[error("upstream body exceeds the size limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("upstream answered {0}")]
    Status(u16),
    #[error("upstream is rate limiting; retry after {0} s")]
    RateLimited(u64),
    #[error("upstream redirected to another origin")]
    Redirect,
    #[error("upstream redirected too many times")]
    TooManyRedirects,
    /// The upstream's circuit breaker is open: it was not asked.
    #[error("upstream {upstream} is failing (circuit breaker open; next probe in {retry_in} s)")]
    CircuitOpen { upstream: String, retry_in: u64 },
}

/// One request to a repository's upstreams.
pub struct UpstreamRequest<'a> {
    pub repo: &'a RepoConfig,
    /// Path below the upstream base URL, starting with `/`.
    pub path: String,
    pub validators: Option<&'a Validators>,
    /// The `Authorization` value to send, already decided by the credential policy.
    pub authorization: Option<HeaderValue>,
    pub max_bytes: u64,
}

/// An upstream's answer, body read in full.
#[derive(Debug, Clone)]
pub struct UpstreamResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// Whether the request carried credentials (a response to one is private unless marked public).
    pub sent_credentials: bool,
    /// The URL that answered (after same-origin redirects), without any userinfo.
    pub url: String,
}

/// A base URL as a string without a trailing slash (`Uri` prints `/` for an empty path).
pub fn base_url(uri: &Uri) -> String {
    let scheme = uri.scheme_str().unwrap_or("https");
    let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
    // Userinfo never belongs in a label or a log line.
    let authority = authority.rsplit('@').next().unwrap_or_default();
    format!("{scheme}://{authority}{}", uri.path().trim_end_matches('/'))
}

/// The metric label of an upstream: its host and port, from configuration only.
pub fn upstream_label(uri: &Uri) -> String {
    let host = uri.host().unwrap_or_default();
    let port = uri.port_u16().unwrap_or(if uri.scheme_str() == Some("http") { 80 } else { 443 });
    format!("{host}:{port}")
}

/// A connector that tunnels through the environment's proxy when it applies to the destination.
#[derive(Clone)]
struct EgressConnector {
    direct: HttpConnector,
    proxy: Arc<Matcher>,
}

impl Service<Uri> for EgressConnector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let direct = self.direct.clone();
        match self.proxy.intercept(&dst) {
            Some(intercept) => {
                let mut tunnel =
                    hyper_util::client::legacy::connect::proxy::Tunnel::new(intercept.uri().clone(), direct);
                if let Some(auth) = intercept.basic_auth() {
                    tunnel = tunnel.with_auth(auth.clone());
                }
                Box::pin(async move { tunnel.call(dst).await.map_err(|e| -> BoxError { Box::new(e) }) })
            }
            None => {
                let mut direct = direct;
                Box::pin(async move { direct.call(dst).await.map_err(|e| -> BoxError { Box::new(e) }) })
            }
        }
    }
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<EgressConnector>, Empty<Bytes>>;
type PostClient = Client<hyper_rustls::HttpsConnector<EgressConnector>, http_body_util::Full<Bytes>>;

/// The shared upstream client.
#[derive(Clone)]
pub struct Upstream {
    client: HttpsClient,
    post_client: PostClient,
    timeouts: Timeouts,
    permits: Arc<Semaphore>,
    metrics: Metrics,
    /// Upstreams that answered 429, by base URL, with the instant they may be asked again.
    blocked: Arc<Mutex<Vec<(String, Instant)>>>,
    /// One circuit breaker per repository and upstream base URL.
    breakers: Arc<HashMap<(String, String), Arc<Breaker>>>,
}

/// Releases a probe that ended without an outcome (its request was cancelled).
struct ProbeGuard(Option<Arc<Breaker>>);

impl Drop for ProbeGuard {
    fn drop(&mut self) {
        if let Some(breaker) = self.0.take() {
            breaker.abandon();
        }
    }
}

/// Why the upstream client could not be built: the TLS configuration, `ca_file` above all.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamSetupError {
    #[error("ca_file: cannot read {}: {source}", path.display())]
    ReadCaFile { path: std::path::PathBuf, source: std::io::Error },
    #[error("ca_file: {}: {source}", path.display())]
    CaFilePem { path: std::path::PathBuf, source: std::io::Error },
    #[error("ca_file: {}: {source}", path.display())]
    CaCertificate { path: std::path::PathBuf, source: rustls::Error },
    #[error("ca_file: {} holds no PEM certificate", path.display())]
    NoCaCertificate { path: std::path::PathBuf },
    #[error("{0}")]
    Tls(rustls::Error),
}

/// Builds the TLS client configuration: platform roots (bundled roots when the platform has
/// none), plus the PEM certificates of `ca_file`.
pub fn tls_config(ca_file: Option<&std::path::Path>) -> Result<rustls::ClientConfig, UpstreamSetupError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    if let Some(path) = ca_file {
        let file = std::fs::File::open(path)
            .map_err(|source| UpstreamSetupError::ReadCaFile { path: path.to_path_buf(), source })?;
        let mut added = 0;
        for cert in rustls_pemfile::certs(&mut BufReader::new(file)) {
            let cert = cert.map_err(|source| UpstreamSetupError::CaFilePem { path: path.to_path_buf(), source })?;
            roots.add(cert).map_err(|source| UpstreamSetupError::CaCertificate { path: path.to_path_buf(), source })?;
            added += 1;
        }
        if added == 0 {
            return Err(UpstreamSetupError::NoCaCertificate { path: path.to_path_buf() });
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(UpstreamSetupError::Tls)?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

fn is_redirect(status: StatusCode) -> bool {
    matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308)
}

fn same_origin(a: &Uri, b: &Uri) -> bool {
    a.scheme() == b.scheme() && a.authority() == b.authority()
}

fn retry_after(headers: &HeaderMap) -> u64 {
    headers
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(30)
        .clamp(1, 3600)
}

impl Upstream {
    pub fn new(config: &Config, metrics: Metrics) -> Result<Upstream, UpstreamSetupError> {
        let mut direct = HttpConnector::new();
        direct.enforce_http(false);
        direct.set_connect_timeout(Some(config.timeouts.connect));
        direct.set_nodelay(true);
        let egress = EgressConnector { direct, proxy: Arc::new(Matcher::from_env()) };
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls_config(config.ca_file.as_deref())?)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(egress);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(32)
            .build(https.clone());
        let post_client = Client::builder(TokioExecutor::new()).build(https);
        let breakers = config
            .repos
            .values()
            .flat_map(|repo| repo.upstreams.iter().map(|uri| (repo.name.clone(), base_url(uri))))
            .map(|key| (key, Arc::new(Breaker::new(config.breaker))))
            .collect();
        Ok(Upstream {
            breakers: Arc::new(breakers),
            client,
            post_client,
            timeouts: config.timeouts,
            permits: Arc::new(Semaphore::new(config.max_upstream_requests)),
            metrics,
            blocked: Arc::new(Mutex::new(Vec::new())),
        })
    }

    fn blocked_for(&self, base: &str) -> Option<u64> {
        let now = Instant::now();
        let mut blocked = self.blocked.lock().expect("never poisoned: no panics while held");
        blocked.retain(|(_, until)| *until > now);
        blocked.iter().find(|(b, _)| b == base).map(|(_, until)| until.duration_since(now).as_secs().max(1))
    }

    fn block(&self, base: &str, seconds: u64) {
        let mut blocked = self.blocked.lock().expect("never poisoned: no panics while held");
        blocked.retain(|(b, _)| b != base);
        blocked.push((base.to_string(), Instant::now() + Duration::from_secs(seconds)));
    }

    fn breaker(&self, repo: &str, base: &str) -> Option<&Arc<Breaker>> {
        self.breakers.get(&(repo.to_string(), base.to_string()))
    }

    /// True while at least one upstream of `repo` has its circuit breaker closed.
    pub fn is_healthy(&self, repo: &RepoConfig) -> bool {
        repo.upstreams.iter().any(|uri| self.breaker(&repo.name, &base_url(uri)).is_none_or(|b| b.is_closed()))
    }

    /// Reports a request's outcome to the upstream's breaker, with the gauge, counter and log
    /// line that go with a change.
    fn report(&self, repo: &str, label: &str, breaker: &Breaker, probe: bool, failed: bool) {
        let change = match failed {
            true => breaker.failure(Instant::now(), probe),
            false => breaker.success(),
        };
        match change {
            Some(Change::Opened { backoff }) => {
                tracing::warn!(
                    repo,
                    upstream = label,
                    backoff_s = backoff.as_secs_f64(),
                    "upstream failing: circuit breaker open; requests stop waiting on it, one probe at a time tests it"
                );
                self.metrics.upstream_up.with_label_values(&[repo, label]).set(0);
                self.metrics.breaker_openings.with_label_values(&[repo, label]).inc();
            }
            Some(Change::Closed) => {
                tracing::info!(repo, upstream = label, "upstream answers again: circuit breaker closed");
                self.metrics.upstream_up.with_label_values(&[repo, label]).set(1);
            }
            None => {}
        }
    }

    /// Asks each upstream of the repository in turn; see the module docs for the rules.
    pub async fn get(&self, req: UpstreamRequest<'_>) -> Result<UpstreamResponse, UpstreamError> {
        let mut last = UpstreamError::Unreachable("no upstream configured".into());
        for uri in &req.repo.upstreams {
            let base = base_url(uri);
            if let Some(wait) = self.blocked_for(&base) {
                last = UpstreamError::RateLimited(wait);
                continue;
            }
            let label = upstream_label(uri);
            let breaker = self.breaker(&req.repo.name, &base).cloned();
            let admitted = breaker.as_ref().map(|b| b.admit(Instant::now())).unwrap_or(Admit::Closed);
            if let Admit::Open { retry_in } = admitted {
                last = UpstreamError::CircuitOpen { upstream: label, retry_in: retry_in.as_secs().max(1) };
                continue;
            }
            let mut probe = ProbeGuard(breaker.clone().filter(|_| admitted == Admit::Probe));
            let started = Instant::now();
            let _permit = self.permits.acquire().await.expect("the semaphore is never closed");
            self.metrics.upstream_inflight.inc();
            let result = tokio::time::timeout(self.timeouts.transfer, self.attempt(&req, uri, &base)).await;
            self.metrics.upstream_inflight.dec();
            let result = result.unwrap_or(Err(UpstreamError::Timeout));
            let class = match &result {
                Ok(resp) => status_class(resp.status.as_u16()),
                Err(_) => "error",
            };
            self.metrics.upstream_requests.with_label_values(&[&req.repo.name, &label, class]).inc();
            self.metrics
                .upstream_duration
                .with_label_values(&[&req.repo.name])
                .observe(started.elapsed().as_secs_f64());
            if let Some(breaker) = &breaker {
                // No connection, no answer in time, or a 5xx: the upstream is failing. Any
                // other outcome (an answer, a refused redirect, a body over the limit) is not.
                let failed = match &result {
                    Ok(resp) => resp.status.is_server_error(),
                    Err(e) => matches!(e, UpstreamError::Unreachable(_) | UpstreamError::Timeout),
                };
                self.report(&req.repo.name, &label, breaker, probe.0.take().is_some(), failed);
            }
            match result {
                Ok(resp) if resp.status == StatusCode::TOO_MANY_REQUESTS => {
                    let wait = retry_after(&resp.headers);
                    tracing::warn!(upstream = %label, retry_after = wait, "upstream is rate limiting");
                    self.block(&base, wait);
                    last = UpstreamError::RateLimited(wait);
                }
                Ok(resp) if resp.status.is_server_error() => {
                    tracing::warn!(upstream = %label, status = resp.status.as_u16(), "upstream error");
                    last = UpstreamError::Status(resp.status.as_u16());
                }
                Ok(resp) => return Ok(resp),
                Err(e) => {
                    tracing::warn!(upstream = %label, error = %e, "upstream request failed");
                    last = e;
                }
            }
        }
        Err(last)
    }

    async fn attempt(
        &self,
        req: &UpstreamRequest<'_>,
        base_uri: &Uri,
        base: &str,
    ) -> Result<UpstreamResponse, UpstreamError> {
        // Credentials go only over https, or plain http to a loopback upstream that allows it.
        let may_send_credentials =
            base_uri.scheme_str() == Some("https") || (req.repo.allow_http && is_loopback(base_uri));
        let authorization = req.authorization.clone().filter(|_| may_send_credentials);
        if req.authorization.is_some() && authorization.is_none() {
            tracing::warn!(repo = %req.repo.name, "credentials withheld: upstream is not https");
        }
        let mut uri: Uri = format!("{base}{}", req.path)
            .parse()
            .map_err(|_| UpstreamError::Unreachable("invalid upstream URL".into()))?;
        for _ in 0..5 {
            let mut builder = Request::get(uri.clone())
                .header(header::USER_AGENT, concat!("hexmirror/", env!("CARGO_PKG_VERSION")))
                .header(header::ACCEPT_ENCODING, "identity");
            if let Some(validators) = req.validators {
                if let Some(etag) = &validators.etag {
                    builder = builder.header(header::IF_NONE_MATCH, etag.as_str());
                }
                if let Some(modified) = &validators.last_modified {
                    builder = builder.header(header::IF_MODIFIED_SINCE, modified.as_str());
                }
            }
            if let Some(auth) = &authorization {
                let mut value = auth.clone();
                value.set_sensitive(true);
                builder = builder.header(header::AUTHORIZATION, value);
            }
            let request = builder.body(Empty::new()).map_err(|e| UpstreamError::Unreachable(e.to_string()))?;
            // Waiting for the response head is idle waiting too: `read_timeout` bounds it (or the
            // connect timeout, when longer, so that establishing a connection is not cut short).
            let pending = self.client.request(request);
            let response = tokio::time::timeout(self.timeouts.connect.max(self.timeouts.read), pending)
                .await
                .map_err(|_| UpstreamError::Timeout)?
                .map_err(|e| {
                    let text =
                        format!("{e}: {}", std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_default());
                    if text.contains("timed out") {
                        UpstreamError::Timeout
                    } else {
                        UpstreamError::Unreachable(text)
                    }
                })?;
            let (parts, body) = response.into_parts();
            if is_redirect(parts.status) {
                let location = parts
                    .headers
                    .get(header::LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .ok_or(UpstreamError::Status(parts.status.as_u16()))?;
                let next: Uri = if location.starts_with('/') {
                    format!(
                        "{}://{}{location}",
                        uri.scheme_str().unwrap_or("https"),
                        uri.authority().map(|a| a.as_str()).unwrap_or("")
                    )
                    .parse()
                    .map_err(|_| UpstreamError::Redirect)?
                } else {
                    location.parse().map_err(|_| UpstreamError::Redirect)?
                };
                if !same_origin(&uri, &next) {
                    return Err(UpstreamError::Redirect);
                }
                uri = next;
                continue;
            }
            if let Some(len) =
                parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            {
                if len > req.max_bytes {
                    return Err(UpstreamError::TooLarge { limit: req.max_bytes });
                }
            }
            let body = self.read_body(body, req.max_bytes).await?;
            // Userinfo never belongs in a log line or a refusal.
            let authority = uri.authority().map_or("", |a| a.as_str());
            let url = format!(
                "{}://{}{}",
                uri.scheme_str().unwrap_or("https"),
                authority.rsplit('@').next().unwrap_or_default(),
                uri.path_and_query().map_or("", |p| p.as_str())
            );
            return Ok(UpstreamResponse {
                status: parts.status,
                headers: parts.headers,
                body,
                sent_credentials: authorization.is_some(),
                url,
            });
        }
        Err(UpstreamError::TooManyRedirects)
    }

    /// POSTs a form to `uri` (the OAuth token endpoint) and returns the status and body.
    pub async fn post_form(
        &self,
        uri: &Uri,
        form: String,
        max_bytes: u64,
    ) -> Result<(StatusCode, Bytes), UpstreamError> {
        let request = Request::post(uri.clone())
            .header(header::USER_AGENT, concat!("hexmirror/", env!("CARGO_PKG_VERSION")))
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ACCEPT, "application/json")
            .body(http_body_util::Full::new(Bytes::from(form)))
            .map_err(|e| UpstreamError::Unreachable(e.to_string()))?;
        let exchange = async {
            let response =
                self.post_client.request(request).await.map_err(|e| UpstreamError::Unreachable(e.to_string()))?;
            let (parts, body) = response.into_parts();
            Ok((parts.status, self.read_body(body, max_bytes).await?))
        };
        tokio::time::timeout(self.timeouts.transfer, exchange).await.unwrap_or(Err(UpstreamError::Timeout))
    }

    async fn read_body(&self, mut body: hyper::body::Incoming, max: u64) -> Result<Bytes, UpstreamError> {
        let mut buf = BytesMut::new();
        loop {
            match tokio::time::timeout(self.timeouts.read, body.frame()).await {
                Err(_) => return Err(UpstreamError::Timeout),
                Ok(None) => return Ok(buf.freeze()),
                Ok(Some(Err(e))) => return Err(UpstreamError::Unreachable(format!("body: {e}"))),
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        if (buf.len() + data.len()) as u64 > max {
                            return Err(UpstreamError::TooLarge { limit: max });
                        }
                        buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_and_labels_hold_no_userinfo_or_trailing_slash() {
        let uri: Uri = "https://user:pw@repo.example:8443/repos/corp".parse().unwrap();
        assert_eq!(base_url(&uri), "https://repo.example:8443/repos/corp");
        assert_eq!(upstream_label(&uri), "repo.example:8443");
        let root: Uri = "https://repo.hex.pm".parse().unwrap();
        assert_eq!(base_url(&root), "https://repo.hex.pm");
        assert_eq!(upstream_label(&root), "repo.hex.pm:443");
        assert_eq!(upstream_label(&"http://127.0.0.1".parse().unwrap()), "127.0.0.1:80");
    }

    #[test]
    fn retry_after_is_bounded() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), 30);
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        assert_eq!(retry_after(&h), 5);
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("999999"));
        assert_eq!(retry_after(&h), 3600);
    }

    #[test]
    fn redirect_origin_check() {
        let a: Uri = "https://a.example/x".parse().unwrap();
        assert!(same_origin(&a, &"https://a.example/y".parse().unwrap()));
        assert!(!same_origin(&a, &"https://b.example/x".parse().unwrap()));
        assert!(!same_origin(&a, &"http://a.example/x".parse().unwrap()));
    }
}
