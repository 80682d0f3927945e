//! Test support: a scriptable local upstream that serves the demo repository, records every
//! request it receives, and can be told to tamper, fail, stall or go away; a hexmirror in front
//! of it, configured as data ([`TestMirror::builder`]) and started on port 0 in this process or
//! as the binary; and a small HTTP client.

#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;

pub const DEMO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/demo-repo");

pub fn demo_key_path() -> PathBuf {
    Path::new(DEMO).join("keys/pub.pem")
}

/// Reads every file of a demo repository flavour into `prefix/relative/path`.
pub fn demo_files(flavour: &str, prefix: &str) -> HashMap<String, Vec<u8>> {
    let mut files = HashMap::new();
    let root = Path::new(DEMO).join(flavour);
    for sub in ["names", "versions", "public_key"] {
        files.insert(format!("{prefix}/{sub}"), std::fs::read(root.join(sub)).unwrap());
    }
    for dir in ["packages", "tarballs"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().into_string().unwrap();
            files.insert(format!("{prefix}/{dir}/{name}"), std::fs::read(entry.path()).unwrap());
        }
    }
    files
}

pub fn demo_file(flavour: &str, rel: &str) -> Vec<u8> {
    std::fs::read(Path::new(DEMO).join(flavour).join(rel)).unwrap()
}

/// The hex.pm flavour at the root and the organization `acme` under `/repos/acme`, as hex.pm
/// serves them.
pub fn hexpm_and_acme_files() -> HashMap<String, Vec<u8>> {
    let mut files = demo_files("hexpm", "");
    files.extend(demo_files("acme", "/repos/acme"));
    files
}

/// A test upstream serving [`hexpm_and_acme_files`] with every file marked public, for tests
/// whose anonymous clients fetch the organization's files (hex.pm marks those private).
pub async fn public_hexpm_and_acme() -> TestUpstream {
    let upstream = TestUpstream::start(hexpm_and_acme_files()).await;
    upstream.state.lock().unwrap().cache_control = Some("public, max-age=3600".into());
    upstream
}

/// Every path of the hex.pm flavour: its registry records, then its tarballs.
pub const HEXPM_PATHS: &[&str] = &[
    "/names",
    "/versions",
    "/packages/hexdemo_base",
    "/packages/hexdemo_mid",
    "/packages/hexdemo_top",
    "/tarballs/hexdemo_base-1.0.0.tar",
    "/tarballs/hexdemo_base-1.1.0.tar",
    "/tarballs/hexdemo_mid-0.1.0.tar",
    "/tarballs/hexdemo_mid-0.2.0.tar",
    "/tarballs/hexdemo_top-2.0.0.tar",
    "/tarballs/hexdemo_top-2.0.1.tar",
];

pub const HEXPM_RECORDS: &[&str] = HEXPM_PATHS.split_at(5).0;

pub const HEXPM_TARBALLS: &[&str] = HEXPM_PATHS.split_at(5).1;

/// The hex.pm flavour's file at `path` (`/names`, `/tarballs/...`).
pub fn fixture(path: &str) -> Vec<u8> {
    demo_file("hexpm", path.trim_start_matches('/'))
}

/// A scripted answer for one path.
#[derive(Clone)]
pub struct Scripted {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

#[derive(Default)]
pub struct UpstreamState {
    pub files: HashMap<String, Vec<u8>>,
    pub scripted: HashMap<String, Scripted>,
    /// Every request: path and headers.
    pub requests: Vec<(String, HeaderMap)>,
    pub delay: Duration,
    /// A delay for paths starting with a prefix, instead of `delay`.
    pub delays: Vec<(String, Duration)>,
    /// `Cache-Control` of every file; unset: what repo.hex.pm sends (see [`hexpm_cache_control`]).
    pub cache_control: Option<String>,
    /// Answer every request with this status (an outage that still accepts connections).
    pub fail_all: Option<u16>,
    /// Open connections, so that `stop` can cut them too.
    pub connections: Vec<tokio::task::AbortHandle>,
    /// Paths under this prefix need one of `allowed` as `Authorization` (401 without, 403 wrong).
    pub protected_prefix: Option<String>,
    pub allowed: Vec<String>,
    /// The stand-in of hex.pm's OAuth token endpoint (`POST /api/oauth/token`, the
    /// client-credentials grant): see [`token_endpoint`]. The lifetime of the tokens it issues
    /// (`expires_in`; 0: an hour).
    pub token_lifetime: u64,
    /// Registered OAuth clients besides the Hex client's (which may use the grant), and whether
    /// each may use the client-credentials grant.
    pub oauth_clients: Vec<(String, bool)>,
    /// Keys the endpoint exchanges, each with the organization it belongs to (the key may read
    /// `repository:ORG`, which `repositories` expands to, and nothing else).
    pub oauth_keys: Vec<(String, String)>,
    /// Tokens issued (`tok-1`, `tok-2`, ...), accepted under `protected_prefix` unless revoked.
    pub issued: Vec<String>,
    /// Issued tokens the repository now answers 401 (a revoked or expired token).
    pub revoked: Vec<String>,
    /// Every body the token endpoint received, as sent (see [`form_fields`]).
    pub token_requests: Vec<String>,
    pub in_flight: usize,
    pub max_in_flight: usize,
}

/// A local upstream repository on 127.0.0.1.
pub struct TestUpstream {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<UpstreamState>>,
    task: tokio::task::JoinHandle<()>,
}

impl TestUpstream {
    pub async fn start(files: HashMap<String, Vec<u8>>) -> TestUpstream {
        Self::start_on(
            "127.0.0.1:0".parse().unwrap(),
            Arc::new(Mutex::new(UpstreamState { files, ..Default::default() })),
        )
        .await
    }

    pub async fn start_on(addr: SocketAddr, state: Arc<Mutex<UpstreamState>>) -> TestUpstream {
        Self::start_with(addr, state, None).await
    }

    /// Serves over TLS with the given acceptor.
    pub async fn start_tls(files: HashMap<String, Vec<u8>>, tls: tokio_rustls::TlsAcceptor) -> TestUpstream {
        let state = Arc::new(Mutex::new(UpstreamState { files, ..Default::default() }));
        Self::start_with("127.0.0.1:0".parse().unwrap(), state, Some(tls)).await
    }

    pub async fn start_with(
        addr: SocketAddr,
        state: Arc<Mutex<UpstreamState>>,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> TestUpstream {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let state = shared.clone();
                let registry = shared.clone();
                let tls = tls.clone();
                let conn = tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(answer(&state, req).await) }
                    });
                    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    match tls {
                        Some(tls) => {
                            if let Ok(stream) = tls.accept(stream).await {
                                let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                            }
                        }
                        None => {
                            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                        }
                    }
                });
                registry.lock().unwrap().connections.push(conn.abort_handle());
            }
        });
        TestUpstream { addr, state, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting connections: the upstream is gone (connection refused).
    pub fn stop(&self) {
        self.task.abort();
        for conn in self.state.lock().unwrap().connections.drain(..) {
            conn.abort();
        }
    }

    pub fn requests_for(&self, path: &str) -> usize {
        self.state.lock().unwrap().requests.iter().filter(|(p, _)| p == path).count()
    }

    pub fn total_requests(&self) -> usize {
        self.state.lock().unwrap().requests.len()
    }

    pub fn script(&self, path: &str, status: u16, body: Vec<u8>) {
        self.state.lock().unwrap().scripted.insert(path.into(), Scripted { status, headers: vec![], body });
    }

    pub fn unscript(&self, path: &str) {
        self.state.lock().unwrap().scripted.remove(path);
    }

    pub fn set_file(&self, path: &str, body: Vec<u8>) {
        self.state.lock().unwrap().files.insert(path.into(), body);
    }
}

impl Drop for TestUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An organization-style upstream of the `acme` flavour: everything needs one of `allowed` as
/// `Authorization` (401 without, 403 with another) and is marked private.
pub async fn protected_upstream(allowed: &[&str]) -> TestUpstream {
    let upstream = TestUpstream::start(demo_files("acme", "")).await;
    {
        let mut s = upstream.state.lock().unwrap();
        s.protected_prefix = Some("/".into());
        s.allowed = allowed.iter().map(|a| a.to_string()).collect();
        s.cache_control = Some("private, max-age=3600".into());
    }
    upstream
}

/// The strong ETag the test upstreams give `body`.
pub fn etag_of(body: &[u8]) -> String {
    format!("\"{}\"", hex::encode(&Sha256::digest(body)[..8]))
}

fn status(code: u16, body: &'static [u8]) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body)));
    *resp.status_mut() = StatusCode::from_u16(code).unwrap();
    resp
}

async fn answer(state: &Arc<Mutex<UpstreamState>>, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let delay = {
        let mut s = state.lock().unwrap();
        s.requests.push((path.clone(), req.headers().clone()));
        s.in_flight += 1;
        s.max_in_flight = s.max_in_flight.max(s.in_flight);
        s.delays.iter().find(|(prefix, _)| path.starts_with(prefix.as_str())).map(|(_, d)| *d).unwrap_or(s.delay)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if req.method() == http::Method::POST && path == "/api/oauth/token" {
        let json = req.headers().get("content-type").is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
        let body = String::from_utf8(req.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
        let fields = if json { json_fields(&body) } else { form_fields(&body) };
        let mut s = state.lock().unwrap();
        s.in_flight -= 1;
        s.token_requests.push(body);
        let (code, answer) = token_endpoint(&mut s, &fields);
        let mut resp = Response::new(Full::new(Bytes::from(answer.to_string())));
        *resp.status_mut() = StatusCode::from_u16(code).unwrap();
        resp.headers_mut().insert("content-type", "application/json".parse().unwrap());
        return resp;
    }
    let mut s = state.lock().unwrap();
    s.in_flight -= 1;
    if let Some(prefix) = &s.protected_prefix {
        if path.starts_with(prefix.as_str()) {
            let presented = req.headers().get("authorization").and_then(|v| v.to_str().ok()).map(str::to_string);
            let bearer = |tokens: &[String]| tokens.iter().map(|t| format!("Bearer {t}")).collect::<Vec<_>>();
            let (issued, revoked) = (bearer(&s.issued), bearer(&s.revoked));
            match presented {
                None => return status(401, b"unauthorized"),
                Some(p) if revoked.contains(&p) => return status(401, b"token revoked or expired"),
                Some(p) if !s.allowed.contains(&p) && !issued.contains(&p) => return status(403, b"forbidden"),
                Some(_) => {}
            }
        }
    }
    if let Some(status) = s.fail_all {
        let mut resp = Response::new(Full::new(Bytes::from_static(b"outage")));
        *resp.status_mut() = StatusCode::from_u16(status).unwrap();
        return resp;
    }
    if let Some(scripted) = s.scripted.get(&path) {
        let mut resp = Response::new(Full::new(Bytes::from(scripted.body.clone())));
        *resp.status_mut() = StatusCode::from_u16(scripted.status).unwrap();
        for (k, v) in &scripted.headers {
            resp.headers_mut().insert(http::HeaderName::try_from(k.as_str()).unwrap(), v.parse().unwrap());
        }
        return resp;
    }
    match s.files.get(&path) {
        Some(body) => {
            let etag = etag_of(body);
            let matches = req.headers().get("if-none-match").and_then(|v| v.to_str().ok()) == Some(etag.as_str());
            let mut resp = if matches {
                let mut r = Response::new(Full::new(Bytes::new()));
                *r.status_mut() = StatusCode::NOT_MODIFIED;
                r
            } else {
                Response::new(Full::new(Bytes::from(body.clone())))
            };
            resp.headers_mut().insert("etag", etag.parse().unwrap());
            let cc = s.cache_control.clone().unwrap_or_else(|| hexpm_cache_control(&path).into());
            resp.headers_mut().insert("cache-control", cc.parse().unwrap());
            resp
        }
        None => {
            let mut resp = Response::new(Full::new(Bytes::from_static(b"missing")));
            *resp.status_mut() = StatusCode::NOT_FOUND;
            resp
        }
    }
}

/// What repo.hex.pm sends as `Cache-Control` for a file at `path`: the public repository's
/// registry files for an hour and its tarballs for a week, to anyone; an organization's
/// (`/repos/ORG/...`) registry files for an hour and its tarballs for a day, privately.
pub fn hexpm_cache_control(path: &str) -> &'static str {
    let tarball = path.contains("/tarballs/");
    match (path.starts_with("/repos/"), tarball) {
        (false, false) => "public, max-age=3600",
        (false, true) => "public, max-age=604800",
        (true, false) => "private, max-age=3600",
        (true, true) => "private, max-age=86400",
    }
}

/// The fields of a form-encoded body (`application/x-www-form-urlencoded`).
pub fn form_fields(body: &str) -> HashMap<String, String> {
    fn decode(text: &str) -> String {
        let bytes = text.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => {
                    out.push(u8::from_str_radix(&text[i + 1..i + 3], 16).unwrap());
                    i += 2;
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8(out).unwrap()
    }
    body.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(name), decode(value))
        })
        .collect()
}

/// The string fields of a JSON object body.
fn json_fields(body: &str) -> HashMap<String, String> {
    let value: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    let Some(object) = value.as_object() else { return HashMap::new() };
    object.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect()
}

/// hex.pm's token endpoint for the client-credentials grant, as its `OAuthController` decides
/// (same order of checks, same errors and statuses): the client must be registered and allowed
/// the grant, the secret must be a known key, and every scope asked for must be one the key may
/// have (`repositories` expands to the key's organization). Answers hex.pm's success body or
/// its `{"error", "error_description"}`.
pub fn token_endpoint(s: &mut UpstreamState, fields: &HashMap<String, String>) -> (u16, serde_json::Value) {
    let refuse = |code: u16, error: &str, description: &str| {
        (code, serde_json::json!({ "error": error, "error_description": description }))
    };
    let field = |name: &str| fields.get(name).map(String::as_str).filter(|v| !v.is_empty());
    if field("grant_type") != Some("client_credentials") {
        let grant = fields.get("grant_type").map(|g| format!("{g:?}")).unwrap_or_else(|| "nil".into());
        return refuse(400, "unsupported_grant_type", &format!("Unsupported grant type: {grant}"));
    }
    let Some(client_id) = field("client_id") else { return refuse(401, "invalid_client", "Missing client_id") };
    let clients = std::iter::once((HEX_CLIENT_ID.to_string(), true)).chain(s.oauth_clients.iter().cloned());
    let Some((_, may_use_grant)) = clients.into_iter().find(|(id, _)| id == client_id) else {
        return refuse(401, "invalid_client", "Invalid client");
    };
    if !may_use_grant {
        return refuse(400, "unauthorized_client", "Client not authorized for this grant type");
    }
    let Some(secret) = field("client_secret") else {
        return refuse(400, "invalid_request", "Missing or invalid client_secret");
    };
    let Some((_, organization)) = s.oauth_keys.iter().find(|(key, _)| key == secret).cloned() else {
        return refuse(401, "invalid_client", "Invalid API key");
    };
    let requested: Vec<&str> = field("scope").unwrap_or("").split(' ').filter(|t| !t.is_empty()).collect();
    if requested.is_empty() {
        return refuse(400, "invalid_scope", "Missing scope");
    }
    let own = format!("repository:{organization}");
    let granted: Vec<String> =
        requested.iter().map(|scope| if *scope == "repositories" { own.clone() } else { scope.to_string() }).collect();
    if granted.iter().any(|scope| *scope != own) {
        return refuse(400, "invalid_scope", "Requested scopes exceed API key permissions");
    }
    let token = format!("tok-{}", s.issued.len() + 1);
    s.issued.push(token.clone());
    let lifetime = if s.token_lifetime == 0 { 3600 } else { s.token_lifetime };
    let answer = serde_json::json!({
        "access_token": token,
        "token_type": "bearer",
        "expires_in": lifetime,
        "scope": granted.join(" "),
    });
    (200, answer)
}

/// The Hex client's OAuth client id at hex.pm: registered at the stand-in endpoint too.
pub const HEX_CLIENT_ID: &str = "78ea6566-89fd-481e-a1d6-7d9d78eacca8";

impl TestUpstream {
    /// The fields of every request the token endpoint received, in order.
    pub fn token_forms(&self) -> Vec<HashMap<String, String>> {
        self.state.lock().unwrap().token_requests.iter().map(|body| form_fields(body)).collect()
    }
}

// ------------------------------------------------------------------------------------------
// A hexmirror in front of it: its configuration as data, rendered to TOML in one place
// ------------------------------------------------------------------------------------------

/// A value of a TOML setting: strings and paths are quoted, numbers and booleans are not.
pub trait TomlValue {
    fn to_toml(&self) -> String;
}

/// A TOML basic string (JSON's string escapes are all valid in one).
fn toml_string(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

fn toml_array(items: &[String]) -> String {
    let items: Vec<String> = items.iter().map(|i| toml_string(i)).collect();
    format!("[{}]", items.join(", "))
}

impl TomlValue for &str {
    fn to_toml(&self) -> String {
        toml_string(self)
    }
}

impl TomlValue for String {
    fn to_toml(&self) -> String {
        toml_string(self)
    }
}

impl TomlValue for &Path {
    fn to_toml(&self) -> String {
        toml_string(&self.display().to_string())
    }
}

impl TomlValue for PathBuf {
    fn to_toml(&self) -> String {
        self.as_path().to_toml()
    }
}

impl TomlValue for bool {
    fn to_toml(&self) -> String {
        self.to_string()
    }
}

macro_rules! toml_integers {
    ($($t:ty),*) => {$(
        impl TomlValue for $t {
            fn to_toml(&self) -> String {
                self.to_string()
            }
        }
    )*};
}
toml_integers!(i32, i64, u32, u64, usize);

/// One `[repos.NAME]` table. `RepoSpec::demo(url)` or `RepoSpec::acme(url)`, then the
/// settings a test needs, chained (`.trusted().allow_http()`) or as struct fields.
#[derive(Clone, Debug, Default)]
pub struct RepoSpec {
    /// Tried in order; one is written as a string, more as an array.
    pub upstreams: Vec<String>,
    pub public_key: Option<PathBuf>,
    /// The repository name its records are signed for (the table's name when unset).
    pub repository: Option<String>,
    pub trusted: Option<bool>,
    pub allow_http: bool,
    pub auth_key: Option<String>,
    pub oauth_token_url: Option<String>,
    pub oauth_client_id: Option<String>,
    pub oauth_scope: Option<String>,
    /// `[repos.NAME.access] tokens`.
    pub access_tokens: Vec<String>,
    /// `[repos.NAME.access] allow_all_clients`.
    pub allow_all_clients: bool,
}

impl RepoSpec {
    /// A repository at `upstream` whose records are checked with the demo repository's key.
    pub fn demo(upstream: &str) -> RepoSpec {
        RepoSpec { upstreams: vec![upstream.into()], public_key: Some(demo_key_path()), ..Default::default() }
    }

    /// The demo organization: a repository at `upstream` whose records are signed as `acme`.
    pub fn acme(upstream: &str) -> RepoSpec {
        RepoSpec { repository: Some("acme".into()), ..RepoSpec::demo(upstream) }
    }

    /// Another upstream, tried after the ones before it.
    pub fn or_upstream(mut self, upstream: &str) -> RepoSpec {
        self.upstreams.push(upstream.into());
        self
    }

    pub fn trusted(mut self) -> RepoSpec {
        self.trusted = Some(true);
        self
    }

    pub fn allow_http(mut self) -> RepoSpec {
        self.allow_http = true;
        self
    }

    pub fn auth_key(mut self, key: &str) -> RepoSpec {
        self.auth_key = Some(key.into());
        self
    }

    pub fn oauth_token_url(mut self, url: &str) -> RepoSpec {
        self.oauth_token_url = Some(url.into());
        self
    }

    pub fn oauth_client_id(mut self, client_id: &str) -> RepoSpec {
        self.oauth_client_id = Some(client_id.into());
        self
    }

    pub fn oauth_scope(mut self, scope: &str) -> RepoSpec {
        self.oauth_scope = Some(scope.into());
        self
    }

    pub fn access_tokens(mut self, tokens: &[&str]) -> RepoSpec {
        self.access_tokens = tokens.iter().map(|t| t.to_string()).collect();
        self
    }

    pub fn allow_all_clients(mut self) -> RepoSpec {
        self.allow_all_clients = true;
        self
    }

    fn render(&self, name: &str, out: &mut String) {
        use std::fmt::Write;
        writeln!(out, "[repos.{name}]").unwrap();
        match &self.upstreams[..] {
            [] => {}
            [one] => writeln!(out, "upstream = {}", toml_string(one)).unwrap(),
            many => writeln!(out, "upstream = {}", toml_array(many)).unwrap(),
        }
        if let Some(key) = &self.public_key {
            writeln!(out, "public_key = {}", key.to_toml()).unwrap();
        }
        if let Some(repository) = &self.repository {
            writeln!(out, "repository = {}", toml_string(repository)).unwrap();
        }
        if let Some(trusted) = self.trusted {
            writeln!(out, "trusted = {trusted}").unwrap();
        }
        if self.allow_http {
            writeln!(out, "allow_http = true").unwrap();
        }
        if let Some(key) = &self.auth_key {
            writeln!(out, "auth_key = {}", toml_string(key)).unwrap();
        }
        if let Some(url) = &self.oauth_token_url {
            writeln!(out, "oauth_token_url = {}", toml_string(url)).unwrap();
        }
        if let Some(client_id) = &self.oauth_client_id {
            writeln!(out, "oauth_client_id = {}", toml_string(client_id)).unwrap();
        }
        if let Some(scope) = &self.oauth_scope {
            writeln!(out, "oauth_scope = {}", toml_string(scope)).unwrap();
        }
        if !self.access_tokens.is_empty() || self.allow_all_clients {
            writeln!(out, "[repos.{name}.access]").unwrap();
            if !self.access_tokens.is_empty() {
                writeln!(out, "tokens = {}", toml_array(&self.access_tokens)).unwrap();
            }
            if self.allow_all_clients {
                writeln!(out, "allow_all_clients = true").unwrap();
            }
        }
    }
}

/// A test site: a temporary directory that holds `hexmirror.toml` and `data/`, and the
/// configuration as data. Clones share the directory (it is removed when the last clone, or
/// the last [`TestMirror`] started from one, is dropped), so a clone with other settings
/// restarts on the same store:
///
/// ```ignore
/// let site = TestMirror::builder().upstream(&upstream.url()).registry_ttl("1s");
/// let mirror = site.start().await;
/// mirror.stop().await;
/// let mirror = site.clone().offline().start().await;
/// ```
#[derive(Clone)]
pub struct MirrorBuilder {
    dir: Arc<tempfile::TempDir>,
    /// Top-level settings: the key and its value as TOML, in the order first set.
    settings: Vec<(String, String)>,
    /// `hexpm` (set by [`MirrorBuilder::upstream`]) first, then the others in the order added.
    repos: Vec<(String, RepoSpec)>,
    /// TOML written after everything else (tables such as `[policy]`), as given.
    tail: Vec<String>,
}

impl Default for MirrorBuilder {
    fn default() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let site = MirrorBuilder { dir: Arc::new(dir), settings: Vec::new(), repos: Vec::new(), tail: Vec::new() };
        site.set("listen", "127.0.0.1:0")
            .set("data_dir", data)
            .registry_ttl("1h")
            .set("connect_timeout", "2s")
            .set("read_timeout", "3s")
            .set("transfer_timeout", "10s")
            .set("shutdown_grace", "5s")
    }
}

impl MirrorBuilder {
    /// The hex.pm repository (`hexpm`): `upstream`, checked with the demo key.
    pub fn upstream(self, upstream: &str) -> Self {
        self.repo(hexmirror::config::HEXPM, RepoSpec::demo(upstream))
    }

    /// Adds the repository `name`, or replaces it.
    pub fn repo(mut self, name: &str, spec: RepoSpec) -> Self {
        match self.repos.iter_mut().find(|(n, _)| n == name) {
            Some((_, existing)) => *existing = spec,
            None => self.repos.push((name.into(), spec)),
        }
        self
    }

    /// Sets a top-level key, or replaces its value.
    pub fn set(mut self, key: &str, value: impl TomlValue) -> Self {
        let value = value.to_toml();
        match self.settings.iter_mut().find(|(k, _)| k == key) {
            Some((_, existing)) => *existing = value,
            None => self.settings.push((key.into(), value)),
        }
        self
    }

    /// Appends TOML (whole tables, such as `[policy]` or `[repos.hexpm.policy]`) after the
    /// repositories.
    pub fn append(mut self, toml: &str) -> Self {
        self.tail.push(toml.to_string());
        self
    }

    pub fn registry_ttl(self, ttl: &str) -> Self {
        self.set("registry_ttl", ttl)
    }

    /// An expired registry file waits for the upstream (`stale_while_revalidate = "0"`), for
    /// tests of what happens on that request.
    pub fn without_stale_while_revalidate(self) -> Self {
        self.set("stale_while_revalidate", "0")
    }

    pub fn offline(self) -> Self {
        self.set("offline", true)
    }

    /// The site's directory (where `hexmirror.toml` is written).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir().join("data")
    }

    /// The configuration as TOML.
    pub fn toml(&self) -> String {
        assert!(
            self.repos.iter().any(|(name, _)| name == hexmirror::config::HEXPM),
            "a test site needs .upstream(url) for its hex.pm repository"
        );
        let mut out = String::new();
        for (key, value) in &self.settings {
            out.push_str(&format!("{key} = {value}\n"));
        }
        for (name, spec) in &self.repos {
            spec.render(name, &mut out);
        }
        for tail in &self.tail {
            out.push('\n');
            out.push_str(tail);
            out.push('\n');
        }
        out
    }

    /// Where the configuration is written (by `write_config`, `config`, `start`).
    pub fn config_path(&self) -> PathBuf {
        self.dir().join("hexmirror.toml")
    }

    /// Writes `hexmirror.toml` into the site's directory; returns its path.
    pub fn write_config(&self) -> PathBuf {
        let path = self.config_path();
        std::fs::write(&path, self.toml()).unwrap();
        path
    }

    /// The configuration, written and loaded as `hexmirror --config` loads it, without starting.
    pub fn config(&self) -> hexmirror::Config {
        let path = self.write_config();
        hexmirror::config::load_from(Some(&path), figment::providers::Env::prefixed("HEXMIRROR_TEST_UNUSED_")).unwrap()
    }

    /// Starts hexmirror (in this process) on the site; `Err` with what `hexmirror::start` said.
    pub async fn try_start(&self) -> Result<TestMirror, String> {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let running = hexmirror::start(self.config(), async move {
            let _ = rx.await;
        })
        .await
        .map_err(|e| e.to_string())?;
        Ok(TestMirror {
            addr: running.addr,
            metrics_addr: running.metrics_addr,
            mirror: running.mirror,
            site: self.clone(),
            stop: Some(tx),
            done: Some(running.done),
        })
    }

    pub async fn start(&self) -> TestMirror {
        self.try_start().await.unwrap()
    }

    /// Starts the binary (`hexmirror serve`) on the site, listening on a free port, with
    /// `RUST_LOG=rust_log`, its stdout to `stdout` and its stderr discarded; returns once it
    /// accepts connections. Blocks the calling thread (in an async test: `block_in_place`).
    pub fn serve_binary(&self, rust_log: &str, stdout: Stdio) -> ServedBinary {
        let port = free_port();
        let site = self.clone().set("listen", format!("127.0.0.1:{port}"));
        let child = hexmirror_command(&site.write_config())
            .arg("serve")
            .env("RUST_LOG", rust_log)
            .stdout(stdout)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let served = ServedBinary { child, port, _site: site };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "the server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        served
    }
}

/// A running hexmirror and the means to stop it.
pub struct TestMirror {
    pub addr: SocketAddr,
    /// The `metrics_listen` address, when configured.
    pub metrics_addr: Option<SocketAddr>,
    pub mirror: hexmirror::Mirror,
    site: MirrorBuilder,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<()>>,
}

impl TestMirror {
    /// A new test site in a directory of its own; `.upstream(url)` is required.
    pub fn builder() -> MirrorBuilder {
        MirrorBuilder::default()
    }

    /// The site this server runs on (to restart it, or start another on the same store).
    pub fn site(&self) -> &MirrorBuilder {
        &self.site
    }

    pub fn data_dir(&self) -> PathBuf {
        self.site.data_dir()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Stops the server and waits for it to drain and flush.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(done) = self.done.take() {
            let _ = done.await;
        }
    }

    /// Stops the server and starts it again with the same configuration on the same store.
    pub async fn restart(self) -> TestMirror {
        let site = self.site.clone();
        self.stop().await;
        site.start().await
    }

    pub async fn get(&self, path: &str) -> Fetched {
        get(&self.url(path), &[]).await
    }

    /// Every entry of the persistent tier, once the writes behind earlier answers have landed.
    pub async fn stored(&self) -> Vec<(hexmirror::cache::CacheKey, hexmirror::cache::StoredMeta)> {
        self.mirror.settle_writes().await;
        self.mirror.store().list_all("").await.unwrap()
    }

    pub async fn metrics(&self) -> String {
        String::from_utf8(self.get("/metrics").await.body.to_vec()).unwrap()
    }
}

// ------------------------------------------------------------------------------------------
// The binary
// ------------------------------------------------------------------------------------------

/// `hexmirror --config CONFIG`: the binary under test, with `RUST_LOG=warn` and none of the
/// test environment's `HEXMIRROR_*` variables.
pub fn hexmirror_command(config: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hexmirror"));
    cmd.arg("--config").arg(config).env("RUST_LOG", "warn");
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("HEXMIRROR_")) {
        cmd.env_remove(key);
    }
    cmd
}

/// Runs `hexmirror --config CONFIG ARGS...` to its end: its exit status, stdout and stderr.
pub fn run_hexmirror(config: &Path, args: &[&str]) -> Output {
    hexmirror_command(config).args(args).output().unwrap()
}

/// `hexmirror serve` in a process of its own (see [`MirrorBuilder::serve_binary`]); killed
/// when dropped.
pub struct ServedBinary {
    pub child: Child,
    pub port: u16,
    /// Keeps the site's directory while the process runs.
    _site: MirrorBuilder,
}

impl ServedBinary {
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process and reaps it.
    pub fn stop(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for ServedBinary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A `/proc/PID/status` field in KiB (`pid` may be `"self"`).
pub fn proc_status_kib(pid: &str, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}

/// This process's resident memory in KiB.
pub fn rss_kib() -> u64 {
    proc_status_kib("self", "VmRSS:")
}

#[derive(Debug)]
pub struct Fetched {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Fetched {
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(|v| v.to_str().unwrap()).unwrap_or("")
    }
}

pub async fn request(method: &str, url: &str, headers: &[(&str, &str)]) -> Fetched {
    let client: hyper_util::client::legacy::Client<_, Empty<Bytes>> =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
    let mut builder = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let resp = client.request(builder.body(Empty::new()).unwrap()).await.unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Fetched { status: parts.status.as_u16(), headers: parts.headers, body }
}

/// A POST of `body` with the given `Content-Type`.
pub async fn post(url: &str, content_type: &str, body: &str) -> Fetched {
    let client: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
    let request =
        Request::post(url).header("content-type", content_type).body(Full::new(Bytes::from(body.to_string()))).unwrap();
    let resp = client.request(request).await.unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Fetched { status: parts.status.as_u16(), headers: parts.headers, body }
}

pub async fn get(url: &str, headers: &[(&str, &str)]) -> Fetched {
    request("GET", url, headers).await
}

/// Sum of a counter family's samples whose label text contains every `needle`.
pub fn metric_sum(text: &str, family: &str, needles: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(family) && l[family.len()..].starts_with(['{', ' ']))
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Flips one byte inside the signed payload of a registry file, keeping the gzip valid.
pub fn tamper_signed(body: &[u8]) -> Vec<u8> {
    use prost::Message;
    let raw = hexmirror::verify::gunzip(body, 64 << 20).unwrap();
    let mut signed: hexmirror::registry::Signed = hexmirror::registry::decode(&raw).unwrap();
    let at = signed.payload.len() - 3;
    signed.payload[at] ^= 1;
    gzip(&signed.encode_to_vec())
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

/// Signs `data` with the demo repository's test key (RSA-SHA512, PKCS#1 v1.5).
pub fn test_signature(data: &[u8]) -> Vec<u8> {
    use rsa::pkcs8::DecodePrivateKey;
    use rsa::signature::{SignatureEncoding, Signer};
    let pem = std::fs::read_to_string(Path::new(DEMO).join("keys/priv.pem")).unwrap();
    let key = rsa::RsaPrivateKey::from_pkcs8_pem(&pem)
        .or_else(|_| {
            use rsa::pkcs1::DecodeRsaPrivateKey;
            rsa::RsaPrivateKey::from_pkcs1_pem(&pem)
        })
        .unwrap();
    rsa::pkcs1v15::SigningKey::<sha2::Sha512>::new(key).sign(data).to_vec()
}

/// Signs `payload` with the demo repository's test key and wraps it as a registry file.
pub fn sign_registry_file(payload: &[u8]) -> Vec<u8> {
    use prost::Message;
    let signature = test_signature(payload);
    gzip(&hexmirror::registry::Signed { payload: payload.to_vec(), signature: Some(signature) }.encode_to_vec())
}

/// The decoded payload of a demo repository's package record.
pub fn demo_package(flavour: &str, name: &str) -> hexmirror::registry::Package {
    let raw = hexmirror::verify::gunzip(&demo_file(flavour, &format!("packages/{name}")), 64 << 20).unwrap();
    let signed: hexmirror::registry::Signed = hexmirror::registry::decode(&raw).unwrap();
    hexmirror::registry::decode(&signed.payload).unwrap()
}

// ------------------------------------------------------------------------------------------
// Logs and certificates
// ------------------------------------------------------------------------------------------

/// Every log line of this test binary, at trace level (installed once as the global
/// subscriber), for checks of what is logged and what never is.
pub fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: std::sync::OnceLock<Arc<Mutex<Vec<u8>>>> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let sink = buffer.clone();
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || SharedWriter(sink.clone()))
            .init();
        buffer
    })
    .clone()
}

struct SharedWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for SharedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A test CA and a `localhost` certificate it signed: (ca pem, cert pem, key pem).
pub fn test_pki() -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "hexmirror test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, "localhost");
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}

// ------------------------------------------------------------------------------------------
// Bundles larger than the memory bound
// ------------------------------------------------------------------------------------------

/// Runs the binary to its end, sampling its peak resident memory (VmHWM) every 5 ms: the
/// status, stdout + stderr, and the last peak read before it exited, in MiB.
pub fn run_measuring_peak(config: &Path, args: &[&str]) -> (std::process::ExitStatus, String, u64) {
    let mut child = hexmirror_command(config)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id().to_string();
    let mut peak_kib = 0;
    while child.try_wait().unwrap().is_none() {
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            if let Some(kib) = status
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            {
                peak_kib = peak_kib.max(kib);
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let output = child.wait_with_output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status, text, peak_kib / 1024)
}

/// Pseudo-random bytes (gzip cannot shrink them), deterministic for a seed.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Objects of a bundle larger than the memory bound: docs archives, which hold any bytes.
pub const LARGE_OBJECTS: usize = 16;
pub const LARGE_OBJECT_MIB: usize = 8;
/// Peak resident memory allowed to `export` and `import` of that bundle (128 MiB of objects):
/// the goal's bound, the memory tier (1 MiB here) + 128 MiB. Alone they peak at about 75 and
/// 80 MiB (the process plus a few objects in flight); holding the bundle whole took twice its
/// size or more.
pub const STREAMING_PEAK_MIB: u64 = 1 + 128;

pub fn large_bundle() -> Vec<u8> {
    let objects: Vec<hexmirror::bundle::Object> = (0..LARGE_OBJECTS)
        .map(|i| hexmirror::bundle::Object {
            key: format!("public/hexpm/docs/big_docs-1.0.{i}.tar.gz"),
            kind: "docs".into(),
            pinned: true,
            bytes: noise(i as u64, LARGE_OBJECT_MIB << 20).into(),
        })
        .collect();
    let mut out = Vec::new();
    hexmirror::bundle::write(&objects, None, &mut out).unwrap();
    out
}
