//! HTTP semantics of the repository and operations endpoints: one request in, one response out.
//!
//! This is the one place where a request becomes a route, where errors become status codes,
//! where requests are logged and counted, and where conditional requests (`If-None-Match`) and
//! HEAD are answered. Bodies are sent exactly as stored: `application/octet-stream`, never a
//! `Content-Encoding`, whatever the client's `Accept-Encoding` says.
//!
//! [`Service`] is the hyper service of `listen` (repository and operations endpoints) and of
//! `metrics_listen` (operations endpoints only). The admin listener runs `admin::AdminService`,
//! which hands the operations endpoints to an operations [`Service`]; this module knows nothing
//! of the admin routes.
//!
//! With `access_log = true` every request is one JSON object on one line of stdout
//! ([`AccessLog`]), written once its body has been handed to the connection (so `bytes` is what
//! was sent), by tracing-appender's worker thread: a slow reader of stdout never stalls a
//! request (a full buffer drops lines instead).

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};

use crate::body::{full, streaming, text, Answer, Body};
use crate::metrics::{CacheStatus, NO_REPO, NO_RESOURCE};
use crate::mirror::{ClientCredentials, Mirror, MirrorError, Reply};
use crate::route::{route, Route, RouteError};

/// The request handler shared by every connection.
#[derive(Clone)]
pub struct Service {
    mirror: Mirror,
    ready: Arc<AtomicBool>,
    role: Role,
    access_log: Option<AccessLog>,
}

/// What a listener serves.
#[derive(Clone)]
enum Role {
    /// `listen`: the repository and the operations endpoints.
    Repository,
    /// `metrics_listen`: `/healthz`, `/readyz` and `/metrics`, nothing of the repository. The
    /// admin listener's service (`admin::AdminService`) hands these paths to this role too.
    Operations,
}

/// The paths every listener serves.
pub fn is_operations_path(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/metrics")
}

/// What the access log and the metrics need to know about a finished request.
struct Outcome {
    repo: String,
    resource: &'static str,
    cache: CacheStatus,
    /// The repository's upstreams (`host:port`, comma-separated) when the answer involved asking
    /// one (`miss`, `revalidated`, `stale`, `refused`, `error`); `None` for anything else.
    upstream: Option<String>,
}

impl Service {
    pub fn new(mirror: Mirror, ready: Arc<AtomicBool>) -> Service {
        Service { mirror, ready, role: Role::Repository, access_log: None }
    }

    /// The service of the `metrics_listen` address: the operations endpoints only, so that
    /// address, often opened wider for a scraper, never serves repository content.
    pub fn operations(mirror: Mirror, ready: Arc<AtomicBool>) -> Service {
        Service { mirror, ready, role: Role::Operations, access_log: None }
    }

    /// Logs every request to `log`.
    pub fn with_access_log(mut self, log: Option<AccessLog>) -> Service {
        self.access_log = log;
        self
    }

    pub async fn handle(&self, req: Request<hyper::body::Incoming>) -> Response<Body> {
        if matches!(self.role, Role::Operations) && !is_operations_path(req.uri().path()) {
            return text(StatusCode::NOT_FOUND, "this address serves /healthz, /readyz and /metrics only");
        }
        let started = Instant::now();
        let arrived = SystemTime::now();
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let (response, outcome) = self.dispatch(&req).await;
        let status = response.status().as_u16();
        let method_label = if method == Method::HEAD { "HEAD" } else { "GET" };
        let elapsed = started.elapsed().as_secs_f64();
        self.mirror.metrics().observe_request(
            &outcome.repo,
            outcome.resource,
            method_label,
            status,
            outcome.cache,
            elapsed,
        );
        tracing::debug!(method = %method, path = %path, status, cache = outcome.cache.as_str(), "served");
        let Some(log) = &self.access_log else { return response };
        let line = AccessLine {
            time: arrived,
            client: req.extensions().get::<crate::server::Peer>().map(|peer| peer.0.ip()),
            method,
            path,
            status,
            cache: outcome.cache.as_str(),
            repo: outcome.repo,
            upstream: outcome.upstream,
            user_agent: req
                .headers()
                .get(header::USER_AGENT)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
            started,
        };
        response.map(|body| {
            use http_body_util::{BodyExt, Either};
            let body = match body {
                Either::Left(whole) => whole.boxed(),
                Either::Right(stream) => stream,
            };
            streaming(Logged { body, sent: 0, line: Some(line), log: log.clone() })
        })
    }

    async fn dispatch<B>(&self, req: &Request<B>) -> (Response<Body>, Outcome) {
        let none = |cache| Outcome { repo: NO_REPO.into(), resource: NO_RESOURCE, cache, upstream: None };
        if req.method() != Method::GET && req.method() != Method::HEAD {
            let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD are supported");
            resp.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return (resp, none(CacheStatus::None));
        }
        let head = req.method() == Method::HEAD;
        let route = match route(req.uri().path()) {
            Ok(route) => route,
            Err(RouteError::NotFound) => return (text(StatusCode::NOT_FOUND, "not found"), none(CacheStatus::None)),
            Err(e @ RouteError::BadRequest(_)) => {
                return (text(StatusCode::BAD_REQUEST, &e.to_string()), none(CacheStatus::None))
            }
        };
        let (repo, resource) = match route {
            Route::Healthz => return (text(StatusCode::OK, "ok"), none(CacheStatus::None)),
            Route::Readyz => {
                let resp = if self.ready.load(Ordering::Relaxed) {
                    text(StatusCode::OK, "ready")
                } else {
                    text(StatusCode::SERVICE_UNAVAILABLE, "starting")
                };
                return (resp, none(CacheStatus::None));
            }
            Route::Metrics => {
                self.mirror.update_gauges();
                let mut resp = Response::new(full(Bytes::from(self.mirror.metrics().render())));
                resp.headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
                return (resp, none(CacheStatus::None));
            }
            Route::Repo { repo, resource } => (repo, resource),
        };
        let target = self.mirror.target(repo.as_deref());
        let outcome = |cache| Outcome {
            repo: target.label().to_string(),
            resource: resource.kind().as_str(),
            cache,
            upstream: matches!(
                cache,
                CacheStatus::Miss
                    | CacheStatus::Revalidated
                    | CacheStatus::Stale
                    | CacheStatus::Refused
                    | CacheStatus::Error
            )
            .then(|| target.repo.upstreams.iter().map(crate::upstream::upstream_label).collect::<Vec<_>>().join(",")),
        };
        let client = ClientCredentials::from_header(req.headers().get(header::AUTHORIZATION).cloned());
        match self.mirror.get(&target, &resource, &client).await {
            Ok(reply) => {
                let source = if reply.status == CacheStatus::Miss { "upstream" } else { "cache" };
                let resp = self.reply(req, reply.clone(), head);
                if resp.status() == StatusCode::OK && !head {
                    self.mirror.metrics().served_bytes.with_label_values(&[source]).inc_by(reply.body.len() as u64);
                }
                (resp, outcome(reply.status))
            }
            Err(e) => {
                let status = e.status();
                match &e {
                    MirrorError::Refused(_) | MirrorError::Upstream(_) | MirrorError::Internal(_) => {
                        tracing::warn!(repo = target.label(), path = %req.uri().path(), status = status.as_u16(), error = %e, "request failed")
                    }
                    _ => {
                        tracing::debug!(repo = target.label(), path = %req.uri().path(), status = status.as_u16(), error = %e, "request refused")
                    }
                }
                let mut resp = text(status, &e.to_string());
                let h = resp.headers_mut();
                h.insert("x-cache", HeaderValue::from_static(e.cache_status().as_str()));
                if let Some(seconds) = e.retry_after() {
                    h.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
                }
                if status == StatusCode::UNAUTHORIZED {
                    h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"hexmirror\""));
                }
                if head {
                    *resp.body_mut() = full(Bytes::new());
                }
                (resp, outcome(e.cache_status()))
            }
        }
    }

    fn reply<B>(&self, req: &Request<B>, reply: Reply, head: bool) -> Response<Body> {
        let not_modified = req
            .headers()
            .get_all(header::IF_NONE_MATCH)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|tag| {
                let tag = tag.trim();
                tag == "*" || tag.trim_start_matches("W/") == reply.etag
            });
        let mut resp = if not_modified {
            let mut resp = Response::new(full(Bytes::new()));
            *resp.status_mut() = StatusCode::NOT_MODIFIED;
            resp
        } else {
            let len = reply.body.len();
            let mut resp = Response::new(full(if head { Bytes::new() } else { reply.body }));
            resp.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(len));
            resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
            resp
        };
        let h = resp.headers_mut();
        if let Ok(etag) = HeaderValue::from_str(&reply.etag) {
            h.insert(header::ETAG, etag);
        }
        let cache_control = match (&reply.cache_control, reply.private, reply.stale_age) {
            // A stale copy is not fresh for anyone downstream (a sidecar hexmirror included).
            (_, private, Some(_)) => {
                format!("{}, max-age=0, must-revalidate", if private { "private" } else { "public" })
            }
            (Some(cc), false, None) => cc.clone(),
            (Some(cc), true, None) if cc.contains("private") => cc.clone(),
            (_, true, None) => "private, max-age=0".to_string(),
            (None, false, None) => format!("public, max-age={}", self.mirror.config().registry_ttl.as_secs()),
        };
        if let Some(age) = reply.stale_age {
            h.insert(header::AGE, HeaderValue::from(age));
        }
        if let Ok(cc) = HeaderValue::from_str(&cache_control) {
            h.insert(header::CACHE_CONTROL, cc);
        }
        if reply.private {
            h.insert(header::VARY, HeaderValue::from_static("authorization"));
        }
        if let Some(modified) = reply.last_modified.as_deref().and_then(|v| HeaderValue::from_str(v).ok()) {
            h.insert(header::LAST_MODIFIED, modified);
        }
        if reply.docs {
            h.insert("x-hexmirror-verified", HeaderValue::from_static("no (docs are not signed)"));
        }
        h.insert("x-cache", HeaderValue::from_static(reply.status.as_str()));
        resp
    }
}

/// The access log: JSON lines on stdout, written by a worker thread (tracing-appender's
/// non-blocking writer). Lines beyond 10,000 waiting are dropped rather than block a request.
#[derive(Clone)]
pub struct AccessLog {
    writer: tracing_appender::non_blocking::NonBlocking,
}

impl AccessLog {
    /// The access log on stdout, and the guard that flushes what is buffered when dropped.
    pub fn stdout() -> (AccessLog, tracing_appender::non_blocking::WorkerGuard) {
        let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
            .buffered_lines_limit(10_000)
            .lossy(true)
            .thread_name("hexmirror-access-log")
            .finish(std::io::stdout());
        (AccessLog { writer }, guard)
    }

    /// Writes `line` and a newline in one piece (so lines of concurrent requests never mix).
    fn write(&self, line: &serde_json::Value) {
        use std::io::Write;
        let mut bytes = serde_json::to_vec(line).expect("a JSON value serializes");
        bytes.push(b'\n');
        let _ = self.writer.clone().write_all(&bytes);
    }
}

/// What the access log says of a request, less what is known only once its body is sent.
struct AccessLine {
    /// When the request arrived.
    time: SystemTime,
    client: Option<std::net::IpAddr>,
    method: Method,
    path: String,
    status: u16,
    cache: &'static str,
    repo: String,
    upstream: Option<String>,
    user_agent: Option<String>,
    started: Instant,
}

impl AccessLine {
    fn to_json(&self, bytes: u64) -> serde_json::Value {
        let elapsed = self.started.elapsed();
        serde_json::json!({
            "time": humantime::format_rfc3339_millis(self.time).to_string(),
            "client": self.client.map(|ip| ip.to_string()),
            "method": self.method.as_str(),
            "path": self.path,
            "status": self.status,
            "cache": self.cache,
            "repo": self.repo,
            "upstream": self.upstream,
            "bytes": bytes,
            "duration_ms": (elapsed.as_secs_f64() * 1e6).round() / 1e3,
            "user_agent": self.user_agent,
        })
    }
}

/// A response body that counts the bytes it hands to the connection and writes the request's
/// access log line when it is dropped: once the last byte is sent, or when the client left.
struct Logged {
    body: http_body_util::combinators::BoxBody<Bytes, Infallible>,
    sent: u64,
    line: Option<AccessLine>,
    log: AccessLog,
}

impl hyper::body::Body for Logged {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                this.sent += data.len() as u64;
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        if let Some(line) = self.line.take() {
            self.log.write(&line.to_json(self.sent));
        }
    }
}

/// What `server::run` calls for each request.
impl hyper::service::Service<Request<hyper::body::Incoming>> for Service {
    type Response = Response<Body>;
    type Error = std::convert::Infallible;
    type Future = Answer;

    fn call(&self, req: Request<hyper::body::Incoming>) -> Answer {
        let service = self.clone();
        Box::pin(async move { Ok(service.handle(req).await) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{can_occur, status_class};
    use crate::upstream::UpstreamError;
    use crate::verify::{Facts, VerifyError};

    /// One error of each kind `Mirror::get` can fail with. The matches have no wildcard: a new
    /// variant does not compile until it is listed here, and so checked against the table.
    fn every_error() -> Vec<MirrorError> {
        let upstream = vec![
            UpstreamError::Unreachable("connection refused".into()),
            UpstreamError::NoToken("the token endpoint refused hexmirror's key (HTTP 401)".into()),
            UpstreamError::Timeout,
            UpstreamError::TooLarge { limit: 1 },
            UpstreamError::Status(304),
            UpstreamError::Status(500),
            UpstreamError::RateLimited(1),
            UpstreamError::Redirect,
            UpstreamError::TooManyRedirects,
            UpstreamError::CircuitOpen { upstream: "repo.hex.pm:443".into(), retry_in: 2 },
        ];
        for e in &upstream {
            match e {
                UpstreamError::Unreachable(_)
                | UpstreamError::NoToken(_)
                | UpstreamError::Timeout
                | UpstreamError::TooLarge { .. }
                | UpstreamError::Status(_)
                | UpstreamError::RateLimited(_)
                | UpstreamError::Redirect
                | UpstreamError::TooManyRedirects
                | UpstreamError::CircuitOpen { .. } => {}
            }
        }
        let mut errors = vec![
            MirrorError::NotFound("remembered".into()),
            MirrorError::NotFoundUpstream("packages/none".into()),
            MirrorError::Refused(VerifyError::BadSignature),
            MirrorError::Unauthorized,
            MirrorError::Blocked {
                release: "plug 1.0.0".into(),
                decision: crate::policy::Decision {
                    rule: crate::policy::RuleKind::Retired,
                    reason: "retired (security): use 1.1.0".into(),
                    enforced: true,
                },
            },
            MirrorError::Unavailable("busy".into()),
            MirrorError::Busy { pending: 2048 },
            MirrorError::Internal("bug".into()),
        ];
        errors.extend(upstream.into_iter().map(MirrorError::Upstream));
        for e in &errors {
            match e {
                MirrorError::NotFound(_)
                | MirrorError::NotFoundUpstream(_)
                | MirrorError::Refused(_)
                | MirrorError::Upstream(_)
                | MirrorError::Unauthorized
                | MirrorError::Blocked { .. }
                | MirrorError::Unavailable(_)
                | MirrorError::Busy { .. }
                | MirrorError::Internal(_) => {}
            }
        }
        errors
    }

    fn service() -> Service {
        let config = crate::config::load_from(None, figment::providers::Env::prefixed("HEXMIRROR_UNIT_TEST_UNUSED_"))
            .expect("the default configuration");
        let metrics = crate::metrics_for(&config);
        let store = Arc::new(crate::cache::NullStore { reason: "unit test".into() });
        Service::new(Mirror::with_store(config, metrics, store).expect("a mirror"), Arc::new(AtomicBool::new(false)))
    }

    fn request(method: &str, path: &str, etag: Option<&str>) -> Request<()> {
        let mut builder = Request::builder().method(method).uri(path);
        if let Some(etag) = etag {
            builder = builder.header(header::IF_NONE_MATCH, etag);
        }
        builder.body(()).unwrap()
    }

    /// Every status `service.rs` answers with, and the outcome it counts it under, is a label
    /// set `metrics::can_occur` allows (and so one `Metrics::initialise` may touch).
    #[tokio::test]
    async fn every_answer_is_counted_under_labels_that_can_occur() {
        for e in every_error() {
            let class = status_class(e.status().as_u16());
            // Only a tarball is ever blocked by the policy.
            let resource = if matches!(e, MirrorError::Blocked { .. }) { "tarball" } else { "package" };
            assert!(can_occur("hexpm", resource, class, e.cache_status()), "{e:?}: {class} as {:?}", e.cache_status());
        }

        let service = service();
        let mut answers = Vec::new();
        // What `Mirror::get` answers with content; `local` comes from the public key below.
        for cache in [CacheStatus::Hit, CacheStatus::Miss, CacheStatus::Revalidated, CacheStatus::Stale] {
            for (method, etag) in [("GET", None), ("HEAD", None), ("GET", Some("\"e\"")), ("GET", Some("\"other\""))] {
                let reply = Reply {
                    body: Bytes::from_static(b"body"),
                    etag: "\"e\"".into(),
                    cache_control: None,
                    last_modified: None,
                    status: cache,
                    private: false,
                    docs: false,
                    facts: Facts::None,
                    stale_age: (cache == CacheStatus::Stale).then_some(1),
                };
                let resp = service.reply(&request(method, "/packages/a", etag), reply, method == "HEAD");
                answers.push((resp.status(), "hexpm".to_string(), "package", cache));
            }
        }
        let long = format!("/{}", "a".repeat(crate::route::MAX_PATH_LEN));
        let mut requests = vec![
            request("POST", "/names", None),
            request("DELETE", "/healthz", None),
            request("GET", "/nothing/here", None),
            request("GET", &long, None),
            request("GET", "/healthz", None),
            request("GET", "/readyz", None),
            request("GET", "/metrics", None),
            request("HEAD", "/metrics", None),
            request("GET", "/public_key", None),
            request("HEAD", "/public_key", None),
            request("GET", "/repos/acme/public_key", None),
        ];
        let (first, outcome) = service.dispatch(&request("GET", "/public_key", None)).await;
        let etag = first.headers().get(header::ETAG).unwrap().to_str().unwrap().to_string();
        answers.push((first.status(), outcome.repo, outcome.resource, outcome.cache));
        requests.push(request("GET", "/public_key", Some(&etag)));
        requests.push(request("HEAD", "/public_key", Some(&etag)));
        for req in &requests {
            let (resp, outcome) = service.dispatch(req).await;
            answers.push((resp.status(), outcome.repo, outcome.resource, outcome.cache));
        }
        service.ready.store(true, Ordering::Relaxed);
        let (resp, outcome) = service.dispatch(&request("GET", "/readyz", None)).await;
        answers.push((resp.status(), outcome.repo, outcome.resource, outcome.cache));

        let statuses: std::collections::BTreeSet<u16> = answers.iter().map(|(s, ..)| s.as_u16()).collect();
        assert_eq!(statuses, [200, 304, 400, 404, 405, 503].into(), "the answers this test reaches");
        for (status, repo, resource, cache) in answers {
            let class = status_class(status.as_u16());
            assert!(can_occur(&repo, resource, class, cache), "{status} for {resource} of {repo} as {cache:?}");
        }
    }
}
