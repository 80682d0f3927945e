//! The admin endpoint, and the client the command line uses to find it.
//!
//! sled allows one process per data directory, so while `hexmirror serve` runs, the other
//! commands (`sync`, `import`, `export`, `verify`, `cache`, `refusals`) hand their work to it.
//! At start-up the server binds `admin_listen` (loopback, an ephemeral port by default) and
//! writes `DATA_DIR/admin.json` (mode 0600) with the endpoint's URL and a bearer token (random
//! per start, or `admin_token`). A command given the same configuration reads that file, checks
//! that the endpoint answers, and calls it; when there is no such file or no server answers, it
//! opens the store itself. Admin routes are served only on the admin listener, never on the
//! public one: [`AdminService`] is that listener's hyper service (`/_admin/...`, and the
//! operations endpoints through an operations `service::Service`). Query strings are
//! form-urlencoded by [`request_path`] and decoded by the endpoint, so values travel intact.
//! The client's failures are [`AdminError`]s.
//!
//! The file decides where a command sends the token, its bundle or its trust, so a command uses
//! it only when nobody but the user running it (or root) could have written it: it refuses an
//! `admin.json` that is a symlink, not a regular file, writable by group or others, or owned by
//! another user, and the same for the directory holding it ([`Untrusted`]).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::TryStreamExt;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use serde::{Deserialize, Serialize};

use crate::body::{full, streaming, text, Answer, Body};
use crate::cache::{CacheKey, StoreError};
use crate::config::Secret;
use crate::mirror::Mirror;
use crate::service::{is_operations_path, Service};
use crate::sync::{self, Event, SyncRequest};

/// What `admin.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Endpoint {
    pub url: String,
    pub token: String,
    pub pid: u32,
}

pub fn endpoint_file(data_dir: &Path) -> PathBuf {
    data_dir.join("admin.json")
}

/// `bytes` random bytes from the operating system's random source, as lowercase hex.
fn random_hex(bytes: usize) -> Result<String, getrandom::Error> {
    let mut buf = vec![0u8; bytes];
    getrandom::getrandom(&mut buf)?;
    Ok(hex::encode(buf))
}

/// A fresh admin token: 32 bytes from the operating system's random source, as 64 hex digits.
/// Fails when that source cannot be read; there is no fallback.
pub fn random_token() -> Result<String, getrandom::Error> {
    random_hex(32)
}

/// Writes `admin.json`, readable by its owner only, so that another user who can write in
/// `data_dir` can neither read the token nor make this process write through a file of theirs.
///
/// The contents go to a new file with an unpredictable name, created exclusively (`create_new`,
/// O_CREAT|O_EXCL: an existing file *or symlink* of that name makes the open fail instead of
/// being reused or followed; O_NOFOLLOW is added as a second guard against symlinks), with mode
/// 0600 from the moment it exists. It is fsynced and then renamed over `admin.json`; a rename
/// replaces a symlink of that name rather than following it.
pub fn write_endpoint(data_dir: &Path, endpoint: &Endpoint) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = data_dir.join(format!(".admin.json.{}.tmp", random_hex(16)?));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600).custom_flags(libc::O_NOFOLLOW);
    }
    // Until the open succeeds the name is not ours: never remove it on failure.
    let mut file = options.open(&tmp)?;
    let written = file
        .write_all(&serde_json::to_vec(endpoint).expect("endpoint serializes"))
        .and_then(|()| file.sync_all())
        .and_then(|()| std::fs::rename(&tmp, endpoint_file(data_dir)));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// What makes `admin.json`, or the directory holding it, unfit to be trusted by a command:
/// something another user could have written, and so pointed the command at their own endpoint.
#[derive(Debug, thiserror::Error)]
pub enum Untrusted {
    #[error("it is a symbolic link")]
    Symlink,
    #[error("it is not a regular file")]
    NotAFile,
    #[error("it is writable by group or others (mode {mode:04o})")]
    Writable { mode: u32 },
    #[error("it is owned by uid {owner}, not by the user running this command (uid {euid}) or root")]
    Owner { owner: u32, euid: u32 },
    #[error("its directory {} is writable by group or others (mode {mode:04o})", dir.display())]
    DirectoryWritable { dir: PathBuf, mode: u32 },
    #[error("its directory {} is owned by uid {owner}, not by the user running this command (uid {euid}) or root", dir.display())]
    DirectoryOwner { dir: PathBuf, owner: u32, euid: u32 },
    #[error("it was replaced while being checked")]
    Replaced,
    #[error("cannot check it: {0}")]
    Unreadable(std::io::Error),
}

/// A command will not use `admin.json`; nothing was sent to the endpoint it names.
#[derive(Debug, thiserror::Error)]
#[error("refusing {}: {problem}; nothing was sent to the admin endpoint it names", path.display())]
pub struct Refused {
    pub path: PathBuf,
    pub problem: Untrusted,
}

/// The directory that holds `admin.json`, when it lets users other than the one running this
/// process (and root) add, replace or remove files: then nothing in it can be trusted. The
/// directory is checked where a symlink to it leads (the configuration names it, not another
/// user). A sticky bit is no excuse: others could still plant files in it.
pub fn directory_problem(data_dir: &Path) -> Option<Untrusted> {
    let dir = if data_dir.as_os_str().is_empty() { Path::new(".") } else { data_dir };
    let meta = match std::fs::metadata(dir) {
        Ok(meta) => meta,
        Err(e) => return Some(Untrusted::Unreadable(e)),
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let euid = rustix::process::geteuid().as_raw();
        if meta.mode() & 0o022 != 0 {
            return Some(Untrusted::DirectoryWritable { dir: dir.to_path_buf(), mode: meta.mode() & 0o7777 });
        }
        if meta.uid() != euid && meta.uid() != 0 {
            return Some(Untrusted::DirectoryOwner { dir: dir.to_path_buf(), owner: meta.uid(), euid });
        }
    }
    #[cfg(not(unix))]
    let _ = meta;
    None
}

/// The endpoint file itself (`meta` not following symlinks), by the same rules.
fn file_problem(meta: &std::fs::Metadata) -> Option<Untrusted> {
    if meta.file_type().is_symlink() {
        return Some(Untrusted::Symlink);
    }
    if !meta.file_type().is_file() {
        return Some(Untrusted::NotAFile);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let euid = rustix::process::geteuid().as_raw();
        if meta.mode() & 0o022 != 0 {
            return Some(Untrusted::Writable { mode: meta.mode() & 0o7777 });
        }
        if meta.uid() != euid && meta.uid() != 0 {
            return Some(Untrusted::Owner { owner: meta.uid(), euid });
        }
    }
    None
}

/// The largest `admin.json` a command reads.
const MAX_ENDPOINT_FILE: u64 = 64 << 10;

/// Reads `admin.json`: `None` when there is none, [`Refused`] when it cannot be trusted.
///
/// The checks run on the directory first (while only this user or root can change it, the
/// file cannot be swapped), then on the file without following a symlink, and again on the
/// file as opened (O_NOFOLLOW), which must be the one checked.
pub fn read_endpoint_file(data_dir: &Path) -> Result<Option<Vec<u8>>, Refused> {
    let path = endpoint_file(data_dir);
    let refuse = |problem| Refused { path: path.clone(), problem };
    let checked = match std::fs::symlink_metadata(&path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(refuse(Untrusted::Unreadable(e))),
    };
    if let Some(problem) = directory_problem(data_dir).or_else(|| file_problem(&checked)) {
        return Err(refuse(problem));
    }
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, libc::O_NOFOLLOW);
    let file = match options.open(&path) {
        Ok(file) => file,
        // The server removed it on its way out: there is no server.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(refuse(Untrusted::Unreadable(e))),
    };
    let opened = file.metadata().map_err(|e| refuse(Untrusted::Unreadable(e)))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if (opened.dev(), opened.ino()) != (checked.dev(), checked.ino()) {
            return Err(refuse(Untrusted::Replaced));
        }
    }
    if let Some(problem) = file_problem(&opened) {
        return Err(refuse(problem));
    }
    let mut text = Vec::new();
    file.take(MAX_ENDPOINT_FILE).read_to_end(&mut text).map_err(|e| refuse(Untrusted::Unreadable(e)))?;
    Ok(Some(text))
}

/// One row of `hexmirror cache list`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CacheRow {
    pub key: String,
    pub kind: String,
    pub class: String,
    pub size: u64,
    pub sha256: String,
    pub fetched_at: u64,
    pub pinned: bool,
    pub private: bool,
}

/// Lists stored entries whose key contains `filter` (every entry when empty).
pub async fn cache_rows(mirror: &Mirror, filter: &str, package: Option<&str>) -> Result<Vec<CacheRow>, StoreError> {
    mirror
        .store()
        .list("")
        .try_filter_map(|(key, meta)| {
            let wanted = key.as_str().contains(filter)
                && package.is_none_or(|name| crate::mirror::key_names_package(&key, name));
            futures::future::ready(Ok(wanted.then(|| CacheRow {
                key: key.to_string(),
                kind: meta.kind,
                class: format!("{:?}", meta.class).to_lowercase(),
                size: meta.len,
                sha256: meta.sha256,
                fetched_at: meta.fetched_at,
                pinned: meta.pinned,
                private: key.is_private(),
            })))
        })
        .try_collect()
        .await
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    let mut resp = Response::new(full(Bytes::from(serde_json::to_vec_pretty(value).expect("serializes"))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// `path` with `params` as its query string, names and values form-urlencoded, so that a value
/// holding `&`, `=`, `%`, `+`, spaces or `/` reaches the endpoint as it was given. How the
/// command line names an admin route.
pub fn request_path(path: &str, params: &[(&str, &str)]) -> String {
    if params.is_empty() {
        return path.to_string();
    }
    let query = form_urlencoded::Serializer::new(String::new()).extend_pairs(params).finish();
    format!("{path}?{query}")
}

/// The first value of the parameter `name` in a query string, decoded: the inverse of
/// [`request_path`]. A name without `=` has the empty value.
fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes()).find(|(key, _)| key == name).map(|(_, value)| value.into_owned())
}

fn query(req: &Request<hyper::body::Incoming>, name: &str) -> Option<String> {
    query_param(req.uri().query(), name)
}

/// The admin listener's hyper service: `/_admin/...` for a bearer of the token, the operations
/// endpoints (answered, logged and counted by an operations [`Service`]), and nothing else.
#[derive(Clone)]
pub struct AdminService {
    mirror: Mirror,
    token: Secret,
    operations: Service,
}

impl AdminService {
    pub fn new(mirror: Mirror, ready: std::sync::Arc<std::sync::atomic::AtomicBool>, token: Secret) -> AdminService {
        AdminService { operations: Service::operations(mirror.clone(), ready), mirror, token }
    }

    /// Logs the operations endpoints' requests to `log`, as the other listeners do.
    pub fn with_access_log(mut self, log: Option<crate::service::AccessLog>) -> AdminService {
        self.operations = self.operations.with_access_log(log);
        self
    }

    pub async fn handle(&self, req: Request<hyper::body::Incoming>) -> Response<Body> {
        if req.uri().path().starts_with("/_admin/") {
            return self.admin(req).await;
        }
        if !is_operations_path(req.uri().path()) {
            return text(StatusCode::NOT_FOUND, "the admin listener serves /_admin/ only");
        }
        self.operations.handle(req).await
    }

    /// Serves one `/_admin/` request.
    async fn admin(&self, req: Request<hyper::body::Incoming>) -> Response<Body> {
        let (mirror, token) = (&self.mirror, &self.token);
        let presented = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or_default();
        let expected = format!("Bearer {}", token.expose());
        let authorized: bool = subtle::ConstantTimeEq::ct_eq(presented.as_bytes(), expected.as_bytes()).into();
        if !authorized {
            return text(StatusCode::UNAUTHORIZED, "admin token required");
        }
        let path = req.uri().path().to_string();
        match (req.method().clone(), path.as_str()) {
            (Method::GET, "/_admin/ping") => text(StatusCode::OK, "ok"),
            (Method::GET, "/_admin/refusals") => json(StatusCode::OK, &mirror.refusals()),
            (Method::GET, "/_admin/missing") => match mirror.missing().await {
                Ok(missing) => json(StatusCode::OK, &missing),
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
            },
            (Method::GET, "/_admin/cache") => {
                let filter = query(&req, "filter").unwrap_or_default();
                let package = query(&req, "package");
                // The listing shows what is on disk: entries answered moments ago included.
                mirror.settle_writes().await;
                match cache_rows(mirror, &filter, package.as_deref()).await {
                    Ok(rows) => json(StatusCode::OK, &rows),
                    Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
                }
            }
            (Method::POST, "/_admin/purge") => match query(&req, "package") {
                Some(name) if crate::route::package_name(&name).is_ok() => match mirror
                    .purge(&name, query(&req, "repo").as_deref(), query(&req, "dry_run").is_some_and(|v| v == "1"))
                    .await
                {
                    Ok(removed) => json(StatusCode::OK, &removed),
                    Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
                },
                _ => text(StatusCode::BAD_REQUEST, "purge needs ?package=NAME"),
            },
            (Method::POST, "/_admin/verify") => {
                let flag = |name| query(&req, name).is_some_and(|v| v == "1" || v == "true");
                let options = crate::audit::Options { repair: flag("repair"), prune: flag("prune") };
                match crate::audit::run_with(mirror, options).await {
                    Ok(report) => json(StatusCode::OK, &report),
                    Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
                }
            }
            (Method::POST, "/_admin/sync") => {
                let body = match read_body(req, 64 << 20).await {
                    Ok(body) => body,
                    Err(resp) => return resp,
                };
                let request: SyncRequest = match serde_json::from_slice(&body) {
                    Ok(request) => request,
                    Err(e) => return text(StatusCode::BAD_REQUEST, &format!("bad sync request: {e}")),
                };
                stream_sync(mirror.clone(), request)
            }
            (Method::POST, "/_admin/import") => {
                // On disk as it arrives, then imported as any bundle file: memory does not grow
                // with the bundle.
                let spool = match crate::transfer::receive(mirror, req.into_body()).await {
                    Ok(spool) => spool,
                    Err(e) => return transfer_error(e),
                };
                match crate::transfer::import_file(mirror, spool.path()).await {
                    Ok(report) => json(StatusCode::OK, &report),
                    Err(e) => transfer_error(e),
                }
            }
            (Method::POST, "/_admin/export") => {
                let body = match read_body(req, 64 << 20).await {
                    Ok(body) => body,
                    Err(resp) => return resp,
                };
                let request: crate::transfer::ExportRequest = match serde_json::from_slice(&body) {
                    Ok(request) => request,
                    Err(e) => return text(StatusCode::BAD_REQUEST, &format!("bad export request: {e}")),
                };
                match crate::transfer::export_spooled(mirror, &request).await {
                    Ok((spool, exported)) => send_spool(spool, &exported).await,
                    Err(e @ crate::transfer::TransferError::Nothing(_)) => text(StatusCode::NOT_FOUND, &e.to_string()),
                    Err(e) => transfer_error(e),
                }
            }
            (Method::GET, "/_admin/policy/check") => match mirror.policy_check().await {
                Ok(report) => json(StatusCode::OK, &report),
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
            },
            (Method::GET, "/_admin/policy/explain") => {
                let (Some(name), Some(version)) = (query(&req, "name"), query(&req, "version")) else {
                    return text(StatusCode::BAD_REQUEST, "explain needs ?name=NAME&version=VERSION");
                };
                let repo = query(&req, "repo").filter(|r| !r.is_empty());
                let target = mirror.target(repo.as_deref());
                match mirror.policy_explain(&target, &name, &version).await {
                    Ok(explanation) => {
                        json(StatusCode::OK, &PolicyExplained { repo: target.namespace.clone(), explanation })
                    }
                    Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
                }
            }
            (Method::POST, "/_admin/policy/baseline") => match mirror.policy_baseline(0).await {
                Ok((covered, changed)) => json(StatusCode::OK, &PolicyBaseline { covered, changed }),
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
            },
            _ => text(StatusCode::NOT_FOUND, "no such admin route"),
        }
    }
}

/// What `server::run` calls for each request on the admin listener.
impl hyper::service::Service<Request<hyper::body::Incoming>> for AdminService {
    type Response = Response<Body>;
    type Error = std::convert::Infallible;
    type Future = Answer;

    fn call(&self, req: Request<hyper::body::Incoming>) -> Answer {
        let service = self.clone();
        Box::pin(async move { Ok(service.handle(req).await) })
    }
}

/// `policy explain` through the admin endpoint: the repository's namespace and every rule's verdict.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PolicyExplained {
    pub repo: String,
    pub explanation: crate::policy::Explanation,
}

/// `policy baseline` through the admin endpoint: listed releases covered, times changed.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct PolicyBaseline {
    pub covered: usize,
    pub changed: usize,
}

/// A failed import or export: 422 for a bundle refused (the store is unchanged), 500 otherwise.
fn transfer_error(e: crate::transfer::TransferError) -> Response<Body> {
    use crate::transfer::TransferError as E;
    let status = match &e {
        E::Malformed(_) | E::NotAKey(_) | E::Refused { .. } | E::MissingBase { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    text(status, &e.to_string())
}

/// Sends an exported bundle from its spool file, with its length (a download that stops early
/// is incomplete to the client) and digest; the file is removed once sent.
async fn send_spool(spool: crate::transfer::Spool, exported: &crate::transfer::Exported) -> Response<Body> {
    let file = match tokio::fs::File::open(spool.path()).await {
        Ok(file) => file,
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, &format!("{}: {e}", spool.path().display())),
    };
    let stream = futures::stream::unfold(Some((file, spool)), |state| async move {
        use tokio::io::AsyncReadExt;
        let (mut file, spool) = state?;
        let mut chunk = bytes::BytesMut::with_capacity(256 << 10);
        match file.read_buf(&mut chunk).await {
            Ok(n) if n > 0 => {
                Some((Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(chunk.freeze())), Some((file, spool))))
            }
            Ok(_) => None,
            Err(e) => {
                // The length sent says what is missing.
                tracing::error!(file = %spool.path().display(), error = %e, "export: cannot read the bundle being sent");
                None
            }
        }
    });
    let mut resp = Response::new(streaming(http_body_util::StreamBody::new(stream)));
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-tar"));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(exported.len));
    if let Ok(digest) = HeaderValue::from_str(&exported.digest) {
        headers.insert(BUNDLE_SHA256, digest);
    }
    headers.insert(BUNDLE_OBJECTS, HeaderValue::from(exported.totals.objects));
    headers.insert(BUNDLE_PACKAGES, HeaderValue::from(exported.totals.packages));
    headers.insert(BUNDLE_BYTES, HeaderValue::from(exported.totals.bytes));
    resp
}

/// The headers carrying an exported bundle's sha256 and its manifest's totals.
const BUNDLE_SHA256: &str = "x-bundle-sha256";
const BUNDLE_OBJECTS: &str = "x-bundle-objects";
const BUNDLE_PACKAGES: &str = "x-bundle-packages";
const BUNDLE_BYTES: &str = "x-bundle-bytes";

async fn read_body(req: Request<hyper::body::Incoming>, limit: u64) -> Result<Bytes, Response<Body>> {
    let limited = http_body_util::Limited::new(req.into_body(), limit as usize);
    match limited.collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) => Err(text(StatusCode::PAYLOAD_TOO_LARGE, &format!("cannot read the request body: {e}"))),
    }
}

/// Runs a sync in its own task and streams its events as JSON lines.
fn stream_sync(mirror: Mirror, request: SyncRequest) -> Response<Body> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
    tokio::spawn(async move {
        let sink = tx.clone();
        let emit = move |event: Event| {
            let mut line = serde_json::to_vec(&event).expect("events serialize");
            line.push(b'\n');
            let _ = sink.send(Bytes::from(line));
        };
        sync::run(&mirror, &request, &emit).await;
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(chunk)), rx))
    });
    let mut resp = Response::new(streaming(http_body_util::StreamBody::new(stream)));
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
    resp
}

/// Why a call to the admin endpoint failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0}")]
    Request(http::Error),
    #[error("admin endpoint {url}: {source}")]
    Unreachable { url: String, source: hyper_util::client::legacy::Error },
    #[error("{0}")]
    Body(hyper::Error),
    /// The server answered with a status other than 2xx; `message` is what it said.
    #[error("{message}")]
    Status { status: StatusCode, message: String },
}

impl AdminError {
    async fn from_answer(resp: Response<hyper::body::Incoming>) -> AdminError {
        let status = resp.status();
        match resp.into_body().collect().await {
            Ok(body) => {
                AdminError::Status { status, message: String::from_utf8_lossy(&body.to_bytes()).trim().to_string() }
            }
            Err(e) => AdminError::Body(e),
        }
    }
}

/// The command line's handle on a running server's admin endpoint.
pub struct AdminClient {
    endpoint: Endpoint,
    client: hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, ClientBody>,
}

/// What the command line sends: a buffer, or a bundle streamed from its files.
type ClientBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

impl AdminClient {
    /// Finds a running server for this data directory: `Ok(Some(_))` for a trusted `admin.json`
    /// naming an endpoint that answers; `Ok(None)` when there is no such file, it cannot be
    /// parsed, or nothing answers; [`Refused`] when the file (or its directory) could have been
    /// written by another user, in which case the endpoint it names is not contacted at all.
    pub async fn discover(data_dir: &Path) -> Result<Option<AdminClient>, Refused> {
        let Some(text) = read_endpoint_file(data_dir)? else { return Ok(None) };
        let Ok(endpoint) = serde_json::from_slice::<Endpoint>(&text) else { return Ok(None) };
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
        let admin = AdminClient { endpoint, client };
        let ping =
            tokio::time::timeout(Duration::from_secs(3), admin.call(Method::GET, "/_admin/ping", Bytes::new())).await;
        match ping {
            Ok(Ok(resp)) if resp.status() == StatusCode::OK => Ok(Some(admin)),
            _ => Ok(None),
        }
    }

    pub fn url(&self) -> &str {
        &self.endpoint.url
    }

    pub async fn call(
        &self,
        method: Method,
        path_and_query: &str,
        body: Bytes,
    ) -> Result<Response<hyper::body::Incoming>, AdminError> {
        self.call_with(method, path_and_query, Full::new(body).map_err(|never| match never {}).boxed()).await
    }

    async fn call_with(
        &self,
        method: Method,
        path_and_query: &str,
        body: ClientBody,
    ) -> Result<Response<hyper::body::Incoming>, AdminError> {
        let request = Request::builder()
            .method(method)
            .uri(format!("{}{path_and_query}", self.endpoint.url))
            .header(header::AUTHORIZATION, format!("Bearer {}", self.endpoint.token))
            .body(body)
            .map_err(AdminError::Request)?;
        self.client
            .request(request)
            .await
            .map_err(|source| AdminError::Unreachable { url: self.endpoint.url.clone(), source })
    }

    /// Calls and reads the whole answer; a non-2xx status is an error with the server's message.
    pub async fn call_bytes(&self, method: Method, path_and_query: &str, body: Bytes) -> Result<Bytes, AdminError> {
        let resp = self.call(method, path_and_query, body).await?;
        if !resp.status().is_success() {
            return Err(AdminError::from_answer(resp).await);
        }
        Ok(resp.into_body().collect().await.map_err(AdminError::Body)?.to_bytes())
    }

    /// Hands a bundle to the server, streamed from its file or volumes (never read whole).
    pub async fn import(&self, source: &crate::volume::Source) -> Result<crate::transfer::ImportReport, AdminError> {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
        let source = source.clone();
        tokio::task::spawn_blocking(move || {
            let mut reader = match source.reader() {
                Ok(reader) => reader,
                Err(e) => return drop(tx.blocking_send(Err(e))),
            };
            loop {
                let mut chunk = vec![0u8; 256 << 10];
                match reader.read(&mut chunk) {
                    Ok(0) => return,
                    Ok(n) => {
                        chunk.truncate(n);
                        if tx.blocking_send(Ok(Bytes::from(chunk))).is_err() {
                            return;
                        }
                    }
                    Err(e) => return drop(tx.blocking_send(Err(e))),
                }
            }
        });
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|chunk| (chunk.map(hyper::body::Frame::data), rx))
        });
        let resp =
            self.call_with(Method::POST, "/_admin/import", http_body_util::StreamBody::new(stream).boxed()).await?;
        if !resp.status().is_success() {
            return Err(AdminError::from_answer(resp).await);
        }
        let body = resp.into_body().collect().await.map_err(AdminError::Body)?.to_bytes();
        serde_json::from_slice(&body).map_err(|e| AdminError::Status {
            status: StatusCode::BAD_GATEWAY,
            message: format!("unreadable import report: {e}"),
        })
    }

    /// Has the server export a bundle and writes it, as it arrives, to what `create` opens
    /// (told the bundle's length). Returns what the server exported (its digest, totals and
    /// length; what the policy left out is in the server's log); a bundle that arrives shorter
    /// or longer than announced is an error.
    pub async fn export<W: std::io::Write>(
        &self,
        request: &crate::transfer::ExportRequest,
        create: impl FnOnce(u64) -> std::io::Result<W>,
    ) -> Result<crate::transfer::Exported, AdminError> {
        let body = Bytes::from(serde_json::to_vec(request).expect("requests serialize"));
        let resp = self.call(Method::POST, "/_admin/export", body).await?;
        if !resp.status().is_success() {
            return Err(AdminError::from_answer(resp).await);
        }
        let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        let incomplete = |message: String| AdminError::Status { status: StatusCode::BAD_GATEWAY, message };
        let len: u64 = header(header::CONTENT_LENGTH.as_str())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| incomplete("the server sent a bundle without its length".into()))?;
        let digest = header(BUNDLE_SHA256).unwrap_or_default();
        let count = |name: &str| header(name).and_then(|v| v.parse::<u64>().ok()).unwrap_or_default();
        let totals = crate::bundle::Totals {
            bytes: count(BUNDLE_BYTES),
            objects: count(BUNDLE_OBJECTS),
            packages: count(BUNDLE_PACKAGES),
        };
        let mut out = create(len).map_err(|e| incomplete(e.to_string()))?;
        let mut body = resp.into_body();
        let mut received = 0u64;
        let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.map_err(AdminError::Body)?.into_data() {
                received += data.len() as u64;
                sha2::Digest::update(&mut hasher, &data);
                out.write_all(&data).map_err(|e| incomplete(e.to_string()))?;
            }
        }
        if received != len {
            return Err(incomplete(format!("the bundle arrived incomplete: {received} of {len} bytes")));
        }
        out.flush().map_err(|e| incomplete(e.to_string()))?;
        // The bytes written are the bundle the server made, checked as they passed.
        let written = hex::encode(sha2::Digest::finalize(hasher));
        if written != digest {
            return Err(incomplete(format!("the bundle arrived altered: sha256 {written}, the server sent {digest}")));
        }
        Ok(crate::transfer::Exported { digest, totals, len, blocked: Vec::new() })
    }

    /// Runs a sync on the server, passing each event to `on_event` as it arrives.
    pub async fn sync(
        &self,
        request: &SyncRequest,
        on_event: &(dyn Fn(Event) + Send + Sync),
    ) -> Result<(), AdminError> {
        let body = Bytes::from(serde_json::to_vec(request).expect("requests serialize"));
        let resp = self.call(Method::POST, "/_admin/sync", body).await?;
        if !resp.status().is_success() {
            return Err(AdminError::from_answer(resp).await);
        }
        let mut body = resp.into_body();
        let mut pending = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(AdminError::Body)?;
            if let Ok(data) = frame.into_data() {
                pending.extend_from_slice(&data);
                while let Some(at) = pending.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=at).collect();
                    if let Ok(event) = serde_json::from_slice::<Event>(&line) {
                        on_event(event);
                    }
                }
            }
        }
        Ok(())
    }
}

/// The key of a cache entry as text, validated.
pub fn parse_key(text: &str) -> Option<CacheKey> {
    CacheKey::parse(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_round_trip_through_the_encoding() {
        let values = [
            "a&b",
            "k=v",
            "100%",
            "%2F and %zz",
            "a b",
            "a+b",
            "public/hexpm~acme/tarballs/x-1.0.0.tar",
            "&filter=x&package=y",
            "",
            "tr\u{e9}s",
        ];
        for value in values {
            let path = request_path("/_admin/cache", &[("filter", value), ("package", "p&q=r")]);
            let uri: http::Uri = path.parse().expect("a valid request target");
            assert_eq!(uri.path(), "/_admin/cache", "{path}");
            assert_eq!(query_param(uri.query(), "filter").as_deref(), Some(value), "{path}");
            assert_eq!(query_param(uri.query(), "package").as_deref(), Some("p&q=r"), "{path}");
        }
        assert_eq!(request_path("/_admin/ping", &[]), "/_admin/ping");
        assert_eq!(query_param(Some("repair=true"), "repair").as_deref(), Some("true"));
        assert_eq!(query_param(Some("a=1&b"), "b").as_deref(), Some(""));
        assert_eq!(query_param(Some("a=1"), "b"), None);
        assert_eq!(query_param(None, "a"), None);
    }

    #[test]
    fn random_token_comes_from_the_os_random_source() {
        let token = random_token().expect("the OS random source is readable");
        assert_eq!(token.len(), 64);
        assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(token, "0".repeat(64));
        assert_ne!(token, random_token().unwrap());
    }
}
