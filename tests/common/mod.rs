//! Test support: a scriptable local upstream that serves the demo repository, records every
//! request it receives, and can be told to tamper, fail, stall or go away; plus a hexmirror
//! started on port 0 in front of it and a small HTTP client.

#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
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
    pub cache_control: Option<String>,
    /// Answer every request with this status (an outage that still accepts connections).
    pub fail_all: Option<u16>,
    /// Open connections, so that `stop` can cut them too.
    pub connections: Vec<tokio::task::AbortHandle>,
    /// Paths under this prefix need one of `allowed` as `Authorization` (401 without, 403 wrong).
    pub protected_prefix: Option<String>,
    pub allowed: Vec<String>,
    /// Tokens the stand-in OAuth endpoint (`POST /api/oauth/token`) issues, with this lifetime.
    pub token_lifetime: u64,
    pub issued: Vec<String>,
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

fn etag_of(body: &[u8]) -> String {
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
        s.delay
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if req.method() == http::Method::POST && path == "/api/oauth/token" {
        let form = String::from_utf8(req.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
        let mut s = state.lock().unwrap();
        s.in_flight -= 1;
        s.token_requests.push(form);
        let token = format!("tok-{}", s.issued.len() + 1);
        s.issued.push(token.clone());
        let body =
            format!("{{\"access_token\":\"{token}\",\"token_type\":\"bearer\",\"expires_in\":{}}}", s.token_lifetime);
        return Response::new(Full::new(Bytes::from(body)));
    }
    let mut s = state.lock().unwrap();
    s.in_flight -= 1;
    if let Some(prefix) = &s.protected_prefix {
        if path.starts_with(prefix.as_str()) {
            let presented = req.headers().get("authorization").and_then(|v| v.to_str().ok()).map(str::to_string);
            let issued: Vec<String> = s.issued.iter().map(|t| format!("Bearer {t}")).collect();
            match presented {
                None => return status(401, b"unauthorized"),
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
            let cc = s.cache_control.clone().unwrap_or_else(|| "public, max-age=3600".into());
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

/// A hexmirror configuration (TOML) for a test, with `data_dir` in `dir`.
pub fn config_toml(dir: &Path, upstream: &str, extra: &str) -> String {
    format!(
        r#"
listen = "127.0.0.1:0"
data_dir = "{data}"
registry_ttl = "1h"
connect_timeout = "2s"
read_timeout = "3s"
transfer_timeout = "10s"
shutdown_grace = "5s"
[repos.hexpm]
upstream = "{upstream}"
public_key = "{key}"
{extra}
"#,
        data = dir.join("data").display(),
        key = demo_key_path().display(),
    )
}

pub fn load_config(dir: &Path, toml: &str) -> hexmirror::Config {
    let path = dir.join("hexmirror.toml");
    std::fs::write(&path, toml).unwrap();
    hexmirror::config::load_from(Some(&path), figment::providers::Env::prefixed("HEXMIRROR_TEST_UNUSED_")).unwrap()
}

/// A running hexmirror and the means to stop it.
pub struct TestMirror {
    pub addr: SocketAddr,
    /// The `metrics_listen` address, when configured.
    pub metrics_addr: Option<SocketAddr>,
    pub mirror: hexmirror::Mirror,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<()>>,
}

impl TestMirror {
    pub async fn start(config: hexmirror::Config) -> TestMirror {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let running = hexmirror::start(config, async move {
            let _ = rx.await;
        })
        .await
        .unwrap();
        TestMirror {
            addr: running.addr,
            metrics_addr: running.metrics_addr,
            mirror: running.mirror,
            stop: Some(tx),
            done: Some(running.done),
        }
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

    pub async fn get(&self, path: &str) -> Fetched {
        get(&self.url(path), &[]).await
    }

    pub async fn metrics(&self) -> String {
        String::from_utf8(self.get("/metrics").await.body.to_vec()).unwrap()
    }
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
