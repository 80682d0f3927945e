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

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};

use crate::body::{full, text, Answer, Body};
use crate::metrics::{CacheStatus, NO_REPO, NO_RESOURCE};
use crate::mirror::{ClientCredentials, Mirror, MirrorError, Reply};
use crate::route::{route, Route, RouteError};

/// The request handler shared by every connection.
#[derive(Clone)]
pub struct Service {
    mirror: Mirror,
    ready: Arc<AtomicBool>,
    role: Role,
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
}

impl Service {
    pub fn new(mirror: Mirror, ready: Arc<AtomicBool>) -> Service {
        Service { mirror, ready, role: Role::Repository }
    }

    /// The service of the `metrics_listen` address: the operations endpoints only, so that
    /// address, often opened wider for a scraper, never serves repository content.
    pub fn operations(mirror: Mirror, ready: Arc<AtomicBool>) -> Service {
        Service { mirror, ready, role: Role::Operations }
    }

    pub async fn handle(&self, req: Request<hyper::body::Incoming>) -> Response<Body> {
        if matches!(self.role, Role::Operations) && !is_operations_path(req.uri().path()) {
            return text(StatusCode::NOT_FOUND, "this address serves /healthz, /readyz and /metrics only");
        }
        let started = Instant::now();
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
        if self.mirror.config().access_log {
            let line = serde_json::json!({
                "time": crate::cache::unix_now(),
                "method": method.as_str(),
                "path": path,
                "status": status,
                "cache": outcome.cache.as_str(),
                "repo": outcome.repo,
                "bytes": response.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).unwrap_or("0"),
                "duration_ms": (elapsed * 1000.0).round(),
            });
            access_log(line);
        }
        tracing::debug!(method = %method, path = %path, status, cache = outcome.cache.as_str(), "served");
        response
    }

    async fn dispatch<B>(&self, req: &Request<B>) -> (Response<Body>, Outcome) {
        let none = |cache| Outcome { repo: NO_REPO.into(), resource: NO_RESOURCE, cache };
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
        let outcome = |cache| Outcome { repo: target.label().to_string(), resource: resource.kind().as_str(), cache };
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

/// Writes one JSON line to standard output from a dedicated thread, so that a slow reader of
/// the log never stalls a request.
fn access_log(line: serde_json::Value) {
    use std::sync::OnceLock;
    static WRITER: OnceLock<std::sync::mpsc::SyncSender<serde_json::Value>> = OnceLock::new();
    let writer = WRITER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<serde_json::Value>(10_000);
        std::thread::spawn(move || {
            use std::io::Write;
            for line in rx {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{line}");
            }
        });
        tx
    });
    // A full buffer drops the line rather than blocking the request.
    let _ = writer.try_send(line);
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
            assert!(can_occur("hexpm", "package", class, e.cache_status()), "{e:?}: {class} as {:?}", e.cache_status());
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
