//! hexmirror in front of a misbehaving upstream: refused connections, resets, truncated and
//! over-long bodies, slow and silent peers, 5xx storms, redirect loops and HTML error pages.
//!
//! For every fault: the client gets a clear status (the last verified copy where one exists,
//! 502 or 504 otherwise), nothing the fault produced is cached, the next good answer is served
//! normally, no upstream request stays counted in flight and no upstream connection is left
//! open. A last test runs 1,000 fast faults and checks that resident memory stays flat.
//!
//! The upstream here is a raw TCP server (not hyper), so that it can break HTTP on purpose.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

// ------------------------------------------------------------------------------------------
// A misbehaving upstream
// ------------------------------------------------------------------------------------------

/// How the upstream answers a request for one path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Fault {
    /// A correct answer (304 to a matching `If-None-Match`), then the connection is closed.
    Good,
    /// Headers and half the body, then a TCP reset.
    Reset,
    /// A correct `Content-Length`, half the body, then a clean close.
    Truncated,
    /// A `Content-Length` 100 bytes larger than the body sent, then a clean close.
    LengthTooLarge,
    /// A body of 64 KiB with a matching `Content-Length` (over the test's size limits).
    OverLimit,
    /// A chunked body of 64 KiB without a `Content-Length`.
    OverLimitChunked,
    /// A never-ending body, one byte per interval.
    Dribble(Duration),
    /// Headers and a few bytes, then silence with the connection held open.
    Stall,
    /// Accepts and reads the request, never answers.
    Silent,
    /// This status with a short body.
    Status(u16),
    /// `302` to the very same URL.
    RedirectSelf,
    /// `302` to this base URL plus the same path.
    RedirectTo(String),
    /// `200` with an HTML error page, as a misconfigured proxy sends.
    Html,
    /// Something that is not HTTP at all, then a close.
    Garbage,
}

#[derive(Default)]
struct FaultState {
    files: HashMap<String, Vec<u8>>,
    faults: HashMap<String, Fault>,
    /// Every request line's path, in order.
    requests: Vec<String>,
}

struct FaultyUpstream {
    addr: SocketAddr,
    state: Arc<Mutex<FaultState>>,
    /// Connections being handled right now.
    open: Arc<AtomicUsize>,
    listener: tokio::sync::Mutex<Option<Listening>>,
}

struct Listening {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
    connections: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

/// Decrements the open-connection count however a handler ends (even when aborted).
struct OpenGuard(Arc<AtomicUsize>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl FaultyUpstream {
    async fn start(files: HashMap<String, Vec<u8>>) -> FaultyUpstream {
        let state = Arc::new(Mutex::new(FaultState { files, ..Default::default() }));
        let open = Arc::new(AtomicUsize::new(0));
        let listening = listen("127.0.0.1:0".parse().unwrap(), state.clone(), open.clone()).await;
        let addr = listening.0;
        FaultyUpstream { addr, state, open, listener: tokio::sync::Mutex::new(Some(listening.1)) }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn set(&self, path: &str, fault: Fault) {
        self.state.lock().unwrap().faults.insert(path.to_string(), fault);
    }

    fn heal(&self) {
        self.state.lock().unwrap().faults.clear();
    }

    fn file(&self, path: &str) -> Vec<u8> {
        self.state.lock().unwrap().files[path].clone()
    }

    fn requests_for(&self, path: &str) -> usize {
        self.state.lock().unwrap().requests.iter().filter(|p| *p == path).count()
    }

    fn total_requests(&self) -> usize {
        self.state.lock().unwrap().requests.len()
    }

    fn open_connections(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Closes the listening socket and cuts open connections: connections are refused.
    async fn refuse(&self) {
        if let Some(listening) = self.listener.lock().await.take() {
            let _ = listening.stop.send(());
            let _ = listening.task.await;
            for conn in listening.connections.lock().unwrap().drain(..) {
                conn.abort();
            }
        }
        assert!(TcpStream::connect(self.addr).await.is_err(), "the port still accepts connections");
    }

    /// Listens again on the same port.
    async fn resume(&self) {
        let mut slot = self.listener.lock().await;
        if slot.is_none() {
            *slot = Some(listen(self.addr, self.state.clone(), self.open.clone()).await.1);
        }
    }
}

async fn listen(addr: SocketAddr, state: Arc<Mutex<FaultState>>, open: Arc<AtomicUsize>) -> (SocketAddr, Listening) {
    let listener = TcpListener::bind(addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let connections = Arc::new(Mutex::new(Vec::new()));
    let conns = connections.clone();
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = &mut stopped => break,
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    open.fetch_add(1, Ordering::SeqCst);
                    let guard = OpenGuard(open.clone());
                    let state = state.clone();
                    let handle = tokio::spawn(async move {
                        let _guard = guard;
                        serve(stream, addr, state).await;
                    });
                    let mut conns = conns.lock().unwrap();
                    conns.retain(|c: &tokio::task::AbortHandle| !c.is_finished());
                    conns.push(handle.abort_handle());
                }
            }
        }
        // The listener is dropped here: the port refuses connections from now on.
    });
    (addr, Listening { stop, task, connections })
}

/// Reads a request head; returns the path and the `If-None-Match` value.
async fn read_head(stream: &mut TcpStream) -> Option<(String, Option<String>)> {
    let mut head = Vec::new();
    let mut buf = [0u8; 2048];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 || head.len() > 64 << 10 {
            return None;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut lines = text.split("\r\n");
    let path = lines.next()?.split(' ').nth(1)?.to_string();
    let inm = lines.find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("if-none-match").then(|| v.trim().to_string())
    });
    Some((path, inm))
}

/// Waits until the peer closes (or 30 s), holding the connection open meanwhile.
async fn hold_until_peer_closes(stream: &mut TcpStream) {
    let mut buf = [0u8; 512];
    let _ = tokio::time::timeout(Duration::from_secs(30), async {
        while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
    })
    .await;
}

async fn serve(mut stream: TcpStream, addr: SocketAddr, state: Arc<Mutex<FaultState>>) {
    let Some((path, if_none_match)) = read_head(&mut stream).await else { return };
    let (fault, body) = {
        let mut s = state.lock().unwrap();
        s.requests.push(path.clone());
        (s.faults.get(&path).cloned().unwrap_or(Fault::Good), s.files.get(&path).cloned())
    };
    let body = body.unwrap_or_default();
    let head = |status: &str, extra: &str| format!("HTTP/1.1 {status}\r\n{extra}connection: close\r\n\r\n");
    let ok_head = |len: usize| head("200 OK", &format!("content-length: {len}\r\netag: {}\r\n", etag_of(&body)));
    let _ = match fault {
        Fault::Good => {
            let etag = etag_of(&body);
            if body.is_empty() {
                stream.write_all(head("404 Not Found", "content-length: 7\r\n").as_bytes()).await.ok();
                stream.write_all(b"missing").await
            } else if if_none_match.as_deref() == Some(etag.as_str()) {
                stream.write_all(head("304 Not Modified", &format!("etag: {etag}\r\n")).as_bytes()).await
            } else {
                stream.write_all(ok_head(body.len()).as_bytes()).await.ok();
                stream.write_all(&body).await
            }
        }
        Fault::Reset => {
            stream.write_all(ok_head(body.len()).as_bytes()).await.ok();
            stream.write_all(&body[..body.len() / 2]).await.ok();
            let _ = stream.flush().await;
            tokio::time::sleep(Duration::from_millis(5)).await;
            // SO_LINGER 0: closing sends RST instead of FIN.
            let _ = stream.set_zero_linger();
            return;
        }
        Fault::Truncated => {
            stream.write_all(ok_head(body.len()).as_bytes()).await.ok();
            stream.write_all(&body[..body.len() / 2]).await
        }
        Fault::LengthTooLarge => {
            stream.write_all(ok_head(body.len() + 100).as_bytes()).await.ok();
            stream.write_all(&body).await
        }
        Fault::OverLimit => {
            let big = vec![0x1f; 64 << 10];
            stream.write_all(head("200 OK", &format!("content-length: {}\r\n", big.len())).as_bytes()).await.ok();
            stream.write_all(&big).await
        }
        Fault::OverLimitChunked => {
            stream.write_all(head("200 OK", "transfer-encoding: chunked\r\n").as_bytes()).await.ok();
            let chunk = vec![0x1f; 4 << 10];
            let mut result = Ok(());
            for _ in 0..16 {
                result = async {
                    stream.write_all(format!("{:x}\r\n", chunk.len()).as_bytes()).await?;
                    stream.write_all(&chunk).await?;
                    stream.write_all(b"\r\n").await
                }
                .await;
                if result.is_err() {
                    break;
                }
            }
            if result.is_ok() {
                result = stream.write_all(b"0\r\n\r\n").await;
            }
            result
        }
        Fault::Dribble(every) => {
            stream.write_all(ok_head(4096).as_bytes()).await.ok();
            let started = Instant::now();
            let mut result = Ok(());
            while result.is_ok() && started.elapsed() < Duration::from_secs(30) {
                result = stream.write_all(b"x").await;
                tokio::time::sleep(every).await;
            }
            result
        }
        Fault::Stall => {
            stream.write_all(ok_head(body.len()).as_bytes()).await.ok();
            stream.write_all(&body[..8]).await.ok();
            hold_until_peer_closes(&mut stream).await;
            Ok(())
        }
        Fault::Silent => {
            hold_until_peer_closes(&mut stream).await;
            Ok(())
        }
        Fault::Status(code) => {
            stream.write_all(head(&format!("{code} Upstream Trouble"), "content-length: 6\r\n").as_bytes()).await.ok();
            stream.write_all(b"outage").await
        }
        Fault::RedirectSelf => {
            let location = format!("location: http://{addr}{path}\r\ncontent-length: 0\r\n");
            stream.write_all(head("302 Found", &location).as_bytes()).await
        }
        Fault::RedirectTo(base) => {
            let location = format!("location: {base}{path}\r\ncontent-length: 0\r\n");
            stream.write_all(head("302 Found", &location).as_bytes()).await
        }
        Fault::Html => {
            let page = b"<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1></body></html>";
            let extra = format!("content-type: text/html\r\ncontent-length: {}\r\n", page.len());
            stream.write_all(head("200 OK", &extra).as_bytes()).await.ok();
            stream.write_all(page).await
        }
        Fault::Garbage => stream.write_all(b"SSH-2.0-OpenSSH_9.6\r\n\r\n").await,
    };
    let _ = stream.shutdown().await;
}

// ------------------------------------------------------------------------------------------
// The mirror in front of it
// ------------------------------------------------------------------------------------------

const NAMES: &str = "/names";
const RECORD: &str = "/packages/hexdemo_mid";
const TARBALL_RECORD: &str = "/packages/hexdemo_base";
const TARBALL: &str = "/tarballs/hexdemo_base-1.0.0.tar";

/// Short TTL and timeouts, small size limits; an expired file waits for the upstream (no
/// stale-while-revalidate) and the circuit breaker stays closed (tests/pressure.rs covers
/// it), so that every fault reaches the request that meets it.
fn fault_site(up: &FaultyUpstream) -> MirrorBuilder {
    TestMirror::builder()
        .upstream(&up.url())
        .registry_ttl("1s")
        .without_stale_while_revalidate()
        .set("breaker_failures", 0)
        .set("max_registry_bytes", "8KiB")
        .set("max_tarball_bytes", "16KiB")
        .set("read_timeout", "1s")
        .set("transfer_timeout", "3s")
}

struct Harness {
    up: FaultyUpstream,
    mirror: TestMirror,
}

/// What a client saw, for the report.
#[derive(Debug)]
struct Seen {
    status: u16,
    cache: String,
    elapsed: Duration,
}

impl Harness {
    async fn start() -> Harness {
        Self::start_with(|site| site).await
    }

    /// With `configure` applied to the fault site's settings.
    async fn start_with(configure: impl FnOnce(MirrorBuilder) -> MirrorBuilder) -> Harness {
        let up = FaultyUpstream::start(demo_files("hexpm", "")).await;
        let mirror = configure(fault_site(&up)).start().await;
        Harness { up, mirror }
    }

    /// A GET that fails the test instead of hanging.
    async fn get(&self, path: &str) -> (Fetched, Duration) {
        let started = Instant::now();
        let got = tokio::time::timeout(Duration::from_secs(20), self.mirror.get(path))
            .await
            .unwrap_or_else(|_| panic!("GET {path}: the mirror did not answer within 20 s"));
        (got, started.elapsed())
    }

    /// Fetches from the good upstream; the copy is then cached.
    async fn warm(&self, path: &str) {
        let (got, _) = self.get(path).await;
        assert_eq!((got.status, got.header("x-cache")), (200, "miss"), "warming {path}");
        assert_eq!(got.body, self.up.file(path), "warming {path}");
    }

    /// What the persistent tier holds for `path`, once writes behind the answers have landed.
    async fn stored(&self, path: &str) -> Vec<(String, String)> {
        self.mirror.mirror.settle_writes().await;
        let suffix = format!("/hexpm{path}");
        self.mirror
            .mirror
            .store()
            .list_all("")
            .await
            .unwrap()
            .into_iter()
            .filter(|(key, _)| key.as_str().ends_with(&suffix))
            .map(|(key, meta)| (key.as_str().to_string(), meta.sha256))
            .collect()
    }

    /// With a cached copy past its TTL: the last verified copy is served, and kept as it was.
    async fn expect_stale(&self, path: &str) -> Seen {
        let good = self.up.file(path);
        let (got, elapsed) = self.get(path).await;
        assert_eq!(
            (got.status, got.header("x-cache")),
            (200, "stale"),
            "{path}: the last verified copy should be served; body {:?}",
            String::from_utf8_lossy(&got.body)
        );
        assert_eq!(got.body, good, "{path}: stale body");
        let stored = self.stored(path).await;
        assert_eq!(stored.len(), 1, "{path}: exactly the one good copy is stored: {stored:?}");
        assert_eq!(stored[0].1, hex::encode(Sha256::digest(&good)), "{path}: the stored copy changed");
        Seen { status: got.status, cache: got.header("x-cache").to_string(), elapsed }
    }

    /// Without a copy: an error status, and nothing stored for the path.
    async fn expect_error(&self, path: &str, status: u16, cache: &str) -> Seen {
        let (got, elapsed) = self.get(path).await;
        assert_eq!(
            (got.status, got.header("x-cache")),
            (status, cache),
            "{path}: body {:?}",
            String::from_utf8_lossy(&got.body)
        );
        assert!(
            self.stored(path).await.is_empty(),
            "{path}: the fault's answer was stored: {:?}",
            self.stored(path).await
        );
        Seen { status: got.status, cache: got.header("x-cache").to_string(), elapsed }
    }

    /// After the fault: the good answer is served, `miss` where nothing was cached.
    async fn expect_recovered(&self, path: &str, cache: &str) {
        let (got, _) = self.get(path).await;
        assert_eq!((got.status, got.header("x-cache")), (200, cache), "{path} after the fault");
        assert_eq!(got.body, self.up.file(path), "{path} after the fault");
        assert_eq!(self.stored(path).await.len(), 1, "{path}: one copy stored after the fault");
    }

    async fn inflight(&self) -> f64 {
        let text = self.mirror.metrics().await;
        assert!(text.contains("hexmirror_upstream_inflight "), "the gauge is exported");
        metric_sum(&text, "hexmirror_upstream_inflight", &[])
    }

    /// No upstream request counted in flight, and no upstream connection left open.
    async fn expect_no_leftovers(&self) {
        assert_eq!(self.inflight().await, 0.0, "hexmirror_upstream_inflight did not return to 0");
        let deadline = Instant::now() + Duration::from_secs(3);
        while self.up.open_connections() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(self.up.open_connections(), 0, "hexmirror left upstream connections open");
    }
}

/// What each of the three standard scenarios of a fault saw.
#[derive(Debug)]
struct Matrix {
    stale: Seen,
    record: Seen,
    tarball: Seen,
    /// `hexmirror_upstream_inflight` 500 ms after the three requests started.
    inflight_during: f64,
}

impl Matrix {
    /// One line of the fault matrix, as `--nocapture` shows it.
    fn report(&self, name: &str) {
        let cell = |s: &Seen| format!("{} {} in {} ms", s.status, s.cache, s.elapsed.as_millis());
        println!(
            "fault {name:<22} | cached, past TTL: {:<24} | registry, no copy: {:<24} | tarball, no copy: {:<24} | in flight at 500 ms: {}",
            cell(&self.stale),
            cell(&self.record),
            cell(&self.tarball),
            self.inflight_during
        );
    }
}

/// The standard run of one fault:
/// - `/names` cached and past its TTL: served stale, store unchanged;
/// - `/packages/hexdemo_mid` never cached: `status`, nothing stored;
/// - a tarball whose package record is cached but which itself is not: `status`, nothing stored;
///
/// then the upstream heals and all three are served normally.
async fn run_fault(name: &str, fault: Fault, status: u16, cache: &str) -> Matrix {
    let h = Harness::start().await;
    run_fault_on(&h, name, fault, status, cache).await
}

async fn run_fault_on(h: &Harness, name: &str, fault: Fault, status: u16, cache: &str) -> Matrix {
    h.warm(NAMES).await;
    h.warm(TARBALL_RECORD).await;
    // Past the 1 s TTL: /names must be revalidated with the upstream.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for path in [NAMES, RECORD, TARBALL] {
        h.up.set(path, fault.clone());
    }
    // Half a second in, a slow fault still holds its three upstream requests.
    let sample = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        h.inflight().await
    };
    let (stale, record, tarball, inflight_during) = tokio::join!(
        h.expect_stale(NAMES),
        h.expect_error(RECORD, status, cache),
        h.expect_error(TARBALL, status, cache),
        sample
    );
    for path in [NAMES, RECORD, TARBALL] {
        assert!(h.up.requests_for(path) >= 1, "{path}: the fault was never exercised");
    }
    h.expect_no_leftovers().await;
    h.up.heal();
    h.expect_recovered(NAMES, "revalidated").await;
    h.expect_recovered(RECORD, "miss").await;
    h.expect_recovered(TARBALL, "miss").await;
    h.expect_no_leftovers().await;
    let matrix = Matrix { stale, record, tarball, inflight_during };
    matrix.report(name);
    matrix
}

// ------------------------------------------------------------------------------------------
// One test per fault
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn refused_connection_serves_the_stale_copy_or_502_and_recovers() {
    let h = Harness::start().await;
    h.warm(NAMES).await;
    h.warm(TARBALL_RECORD).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    h.up.refuse().await;
    let before = h.up.total_requests();
    let stale = h.expect_stale(NAMES).await;
    let record = h.expect_error(RECORD, 502, "error").await;
    let tarball = h.expect_error(TARBALL, 502, "error").await;
    assert_eq!(h.up.total_requests(), before, "nothing could have reached the upstream");
    h.expect_no_leftovers().await;
    h.up.resume().await;
    h.expect_recovered(NAMES, "revalidated").await;
    h.expect_recovered(RECORD, "miss").await;
    h.expect_recovered(TARBALL, "miss").await;
    h.expect_no_leftovers().await;
    Matrix { stale, record, tarball, inflight_during: 0.0 }.report("refused");
}

#[tokio::test]
async fn reset_mid_body_serves_the_stale_copy_or_502_and_caches_nothing() {
    run_fault("reset", Fault::Reset, 502, "error").await;
}

#[tokio::test]
async fn truncated_body_with_a_correct_length_is_502_and_never_cached() {
    run_fault("truncated", Fault::Truncated, 502, "error").await;
}

#[tokio::test]
async fn content_length_larger_than_the_body_is_502_and_never_cached() {
    run_fault("length-too-large", Fault::LengthTooLarge, 502, "error").await;
}

#[tokio::test]
async fn body_over_the_size_limit_is_502_and_never_cached() {
    let h = Harness::start().await;
    run_fault_on(&h, "over-limit", Fault::OverLimit, 502, "error").await;
    // Without a Content-Length the limit is enforced while reading.
    let h = Harness::start().await;
    run_fault_on(&h, "over-limit-chunked", Fault::OverLimitChunked, 502, "error").await;
}

#[tokio::test]
async fn never_ending_slow_body_is_cut_by_the_timeouts_with_504() {
    // One byte a second, read_timeout 1 s, transfer_timeout 3 s.
    let m = run_fault("dribble-1s", Fault::Dribble(Duration::from_secs(1)), 504, "error").await;
    for seen in [&m.stale, &m.record, &m.tarball] {
        assert!(seen.elapsed < Duration::from_millis(4500), "cut after {:?}", seen.elapsed);
    }
}

#[tokio::test]
async fn progressing_slow_body_is_cut_by_the_transfer_timeout() {
    // A byte every 300 ms never trips the 1 s read timeout: the 3 s transfer timeout ends it.
    let m = run_fault("dribble-300ms", Fault::Dribble(Duration::from_millis(300)), 504, "error").await;
    assert_eq!(m.inflight_during, 3.0, "the three slow transfers are counted in flight");
    for seen in [&m.stale, &m.record, &m.tarball] {
        assert!(seen.elapsed >= Duration::from_millis(2800), "cut before the transfer timeout: {:?}", seen.elapsed);
        assert!(seen.elapsed < Duration::from_millis(4500), "cut after {:?}", seen.elapsed);
    }
}

#[tokio::test]
async fn stalled_body_is_cut_by_the_read_timeout() {
    let m = run_fault("stall", Fault::Stall, 504, "error").await;
    assert_eq!(m.inflight_during, 3.0, "the three stalled transfers are counted in flight");
    for seen in [&m.stale, &m.record, &m.tarball] {
        assert!(seen.elapsed < Duration::from_millis(2500), "read timeout is 1 s, cut after {:?}", seen.elapsed);
    }
}

#[tokio::test]
async fn upstream_that_never_answers_is_504_within_the_transfer_timeout() {
    let m = run_fault("silent", Fault::Silent, 504, "error").await;
    assert_eq!(m.inflight_during, 3.0, "the three unanswered requests are counted in flight");
    for seen in [&m.stale, &m.record, &m.tarball] {
        assert!(seen.elapsed < Duration::from_millis(4500), "cut after {:?}", seen.elapsed);
    }
}

#[tokio::test]
async fn upstream_that_never_answers_is_cut_by_the_idle_timeout_not_the_transfer_timeout() {
    // Waiting for a response head is idle waiting: it is bounded by the read timeout (1 s), or
    // the connect timeout when longer (2 s here), well before the 6 s transfer timeout.
    let h = Harness::start_with(|site| site.set("transfer_timeout", "6s")).await;
    h.up.set(RECORD, Fault::Silent);
    let seen = h.expect_error(RECORD, 504, "error").await;
    println!("fault silent, transfer_timeout 6 s: 504 in {} ms", seen.elapsed.as_millis());
    assert!(seen.elapsed < Duration::from_millis(3000), "no answer at all, cut only after {:?}", seen.elapsed);
    h.expect_no_leftovers().await;
}

#[tokio::test]
async fn non_http_answer_is_502_and_never_cached() {
    run_fault("garbage", Fault::Garbage, 502, "error").await;
}

#[tokio::test]
async fn storm_of_5xx_serves_stale_or_502_without_amplifying_requests() {
    let h = Harness::start().await;
    run_fault_on(&h, "500", Fault::Status(500), 502, "error").await;
    // A storm: every path answers 503 while 60 clients ask at once, several times over.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for path in [NAMES, "/versions", RECORD, TARBALL] {
        h.up.set(path, Fault::Status(503));
    }
    let before = h.up.total_requests();
    let mut clients = 0;
    for _round in 0..3 {
        let requests: Vec<_> = (0..60)
            .map(|i| {
                let path = [NAMES, "/versions", TARBALL][i % 3];
                let url = h.mirror.url(path);
                tokio::spawn(async move {
                    let got = tokio::time::timeout(Duration::from_secs(20), get(&url, &[])).await;
                    (path, got.unwrap_or_else(|_| panic!("GET {path}: no answer within 20 s")))
                })
            })
            .collect();
        clients += requests.len();
        for request in requests {
            let (path, got) = request.await.unwrap();
            // /names was revalidated above; the tarball was stored: both are served from cache.
            let want = match path {
                "/versions" => (502, "error"),
                NAMES => (200, "stale"),
                _ => (200, "hit"),
            };
            assert_eq!((got.status, got.header("x-cache")), want, "{path} during the storm");
        }
    }
    let asked = h.up.total_requests() - before;
    assert!(asked <= clients, "{asked} upstream requests for {clients} client requests");
    println!("fault 503 storm: {clients} client requests caused {asked} upstream requests");
    h.expect_no_leftovers().await;
    assert!(h.stored("/versions").await.is_empty(), "an error answer was stored");
    h.up.heal();
    h.expect_recovered("/versions", "miss").await;
    h.expect_recovered(NAMES, "revalidated").await;
}

#[tokio::test]
async fn redirect_loop_is_bounded_and_answered_502() {
    let h = Harness::start().await;
    run_fault_on(&h, "redirect-self", Fault::RedirectSelf, 502, "error").await;
    for path in [NAMES, RECORD, TARBALL] {
        let hops = h.up.requests_for(path);
        // Warm-up, the looping fetch (at most a few hops) and the recovery.
        assert!(hops <= 10, "{path}: {hops} requests: the redirect loop is not bounded");
    }
}

#[tokio::test]
async fn redirect_loop_is_reported_as_a_loop() {
    let h = Harness::start().await;
    h.up.set(RECORD, Fault::RedirectSelf);
    let (got, _) = h.get(RECORD).await;
    assert_eq!(got.status, 502);
    let text = String::from_utf8_lossy(&got.body);
    assert!(!text.contains("another origin"), "a loop within the origin is reported as {text:?}");
    assert!(text.contains("redirect"), "{text:?}");
}

#[tokio::test]
async fn same_origin_redirect_is_followed() {
    // The control for the redirect tests: a redirect within the origin to the right bytes works.
    let h = Harness::start().await;
    let moved = h.up.file(RECORD);
    h.up.state.lock().unwrap().files.insert(format!("/moved{RECORD}"), moved.clone());
    h.up.set(RECORD, Fault::RedirectTo(format!("{}/moved", h.up.url())));
    let (got, _) = h.get(RECORD).await;
    assert_eq!((got.status, got.header("x-cache")), (200, "miss"));
    assert_eq!(got.body, moved);
    assert_eq!(h.up.requests_for(&format!("/moved{RECORD}")), 1);
}

#[tokio::test]
async fn redirect_to_another_origin_is_not_followed() {
    let other = FaultyUpstream::start(demo_files("hexpm", "")).await;
    run_fault("redirect-other-origin", Fault::RedirectTo(other.url()), 502, "error").await;
    assert_eq!(other.total_requests(), 0, "hexmirror followed a redirect to another origin");
}

#[tokio::test]
async fn html_error_page_with_200_is_refused_and_never_cached() {
    let h = Harness::start().await;
    run_fault_on(&h, "html-200", Fault::Html, 502, "refused").await;
    let metrics = h.mirror.metrics().await;
    let refused = metric_sum(&metrics, "hexmirror_verification_failures_total", &[]);
    // /names (stale served), the record and the tarball were each refused once.
    assert_eq!(refused, 3.0, "verification failures counted: {refused}");
    assert_eq!(metric_sum(&metrics, "hexmirror_verification_failures_total", &["reason=\"gzip\""]), 2.0);
    assert_eq!(metric_sum(&metrics, "hexmirror_verification_failures_total", &["reason=\"checksum_mismatch\""]), 1.0);
}

// ------------------------------------------------------------------------------------------
// Leaks under many faults
// ------------------------------------------------------------------------------------------

const RSS_CHILD: &str = "HEXMIRROR_FAULTS_RSS_CHILD";
const RSS_TEST: &str = "thousand_fault_cycles_keep_resident_memory_flat";

/// Runs in a process of its own (this test binary, re-run on this one test), so that the other
/// tests' allocations do not blur the measurement.
#[test]
fn thousand_fault_cycles_keep_resident_memory_flat() {
    if std::env::var_os(RSS_CHILD).is_none() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", RSS_TEST, "--nocapture", "--test-threads=1"])
            .env(RSS_CHILD, "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        println!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "the measuring process failed");
        assert!(stdout.contains("1 passed"), "the measuring process did not run the test");
        return;
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(fault_cycles());
}

async fn fault_cycles() {
    // A second repository whose upstream port refuses connections.
    let gone = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gone_url = format!("http://{}", gone.local_addr().unwrap());
    drop(gone);
    let h = Harness::start_with(|site| site.repo("gone", RepoSpec::demo(&gone_url))).await;
    h.up.set(NAMES, Fault::Reset);
    h.up.set("/versions", Fault::Truncated);
    h.up.set(RECORD, Fault::Status(500));
    let cycle = |i: usize| match i % 4 {
        0 => NAMES,
        1 => "/versions",
        2 => RECORD,
        _ => "/repos/gone/names",
    };
    let mut rss_after_100 = 0;
    let started = Instant::now();
    for i in 0..1000 {
        let path = cycle(i);
        let (got, _) = h.get(path).await;
        assert_eq!((got.status, got.header("x-cache")), (502, "error"), "cycle {i}: {path}");
        if i == 99 {
            rss_after_100 = rss_kib();
        }
    }
    let rss_after_1000 = rss_kib();
    let elapsed = started.elapsed();
    h.expect_no_leftovers().await;
    assert!(h.mirror.mirror.store().list_all("").await.unwrap().is_empty(), "a fault's answer was stored");
    let metrics = h.mirror.metrics().await;
    let failed = metric_sum(&metrics, "hexmirror_upstream_requests_total", &["class=\"error\""])
        + metric_sum(&metrics, "hexmirror_upstream_requests_total", &["class=\"5xx\""]);
    assert_eq!(failed, 1000.0, "every cycle made exactly one failed upstream request");
    let grown = rss_after_1000 as i64 - rss_after_100 as i64;
    println!(
        "fault cycles: 1000 in {elapsed:?}; VmRSS after 100: {rss_after_100} KiB, after 1000: {rss_after_1000} KiB, grown {grown} KiB"
    );
    assert!(grown < 8 * 1024, "resident memory grew by {grown} KiB over 900 fault cycles");
    h.up.heal();
    h.expect_recovered(NAMES, "miss").await;
}
