//! Hostile and unusual clients: slow request heads, idle connections, oversized headers and
//! paths, connection floods beyond `max_connections`, pipelining, HTTP/2 with prior knowledge,
//! `Range` and `If-None-Match` lists with weak tags.
//!
//! For each: the abusive connection is cut or refused with a clear status, it costs nothing to
//! the other clients (they are served while it lasts), and no byte served is ever wrong.
//! Most tests speak HTTP on raw sockets, so that they can send what a well-behaved client never
//! would.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TARBALL: &str = "/tarballs/hexdemo_top-2.0.1.tar";

const PATHS: &[&str] = &[
    "/names",
    "/versions",
    "/packages/hexdemo_top",
    "/tarballs/hexdemo_base-1.1.0.tar",
    "/tarballs/hexdemo_mid-0.2.0.tar",
    TARBALL,
];

/// A mirror in front of an upstream serving hex.pm.
async fn setup() -> (TestUpstream, TestMirror) {
    setup_with(|site| site).await
}

async fn setup_with(configure: impl FnOnce(MirrorBuilder) -> MirrorBuilder) -> (TestUpstream, TestMirror) {
    let upstream = TestUpstream::start(demo_files("hexpm", "")).await;
    let mirror = configure(TestMirror::builder().upstream(&upstream.url())).start().await;
    (upstream, mirror)
}

/// A response read off a raw socket.
#[derive(Debug)]
struct RawResponse {
    status: u16,
    /// Lower-cased names.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Reads one HTTP/1.1 response (with `Content-Length`, as hexmirror always sends) from
/// `stream`, keeping whatever follows it in `buf` for the next call. `None` on EOF or error
/// before a whole response arrived.
async fn read_response(
    stream: &mut (impl AsyncRead + Unpin),
    buf: &mut Vec<u8>,
    head_only: bool,
) -> Option<RawResponse> {
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let mut chunk = [0u8; 8192];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = if head_only || status == 304 {
        0
    } else {
        headers.iter().find(|(k, _)| k == "content-length").and_then(|(_, v)| v.parse().ok()).unwrap_or(0)
    };
    buf.drain(..head_end);
    while buf.len() < len {
        let mut chunk = [0u8; 8192];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let body = buf.drain(..len).collect();
    Some(RawResponse { status, headers, body })
}

/// Reads until the peer closes (or resets) the connection; `None` if it is still open after
/// `limit`. Returns what was read and when the connection ended.
async fn wait_closed(stream: &mut TcpStream, limit: Duration) -> Option<(Vec<u8>, Duration)> {
    let started = Instant::now();
    let mut got = Vec::new();
    let result = tokio::time::timeout(limit, async {
        let mut chunk = [0u8; 8192];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    result.ok().map(|_| (got, started.elapsed()))
}

async fn connect(mirror: &TestMirror) -> TcpStream {
    TcpStream::connect(mirror.addr).await.unwrap()
}

/// One plain request on its own connection: the status, or `None` if the connection was
/// closed without an answer.
async fn raw_get(mirror: &TestMirror, path: &str) -> Option<RawResponse> {
    let mut stream = TcpStream::connect(mirror.addr).await.ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: mirror\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await.ok()?;
    tokio::time::timeout(Duration::from_secs(10), read_response(&mut stream, &mut Vec::new(), false)).await.ok()?
}

/// Every path of `PATHS` is served with the fixture's bytes, each within `within`.
async fn others_are_served(mirror: &TestMirror, within: Duration) {
    for path in PATHS {
        let started = Instant::now();
        let got = mirror.get(path).await;
        assert_eq!(got.status, 200, "{path}");
        assert_eq!(got.body, fixture(path), "{path}");
        assert!(
            started.elapsed() < within,
            "{path} took {:?} while an abusive client was connected",
            started.elapsed()
        );
    }
}

fn connections(mirror: &TestMirror) -> i64 {
    mirror.mirror.metrics().connections.get()
}

async fn wait_for_connections(mirror: &TestMirror, want: i64, limit: Duration) -> i64 {
    let started = Instant::now();
    loop {
        let now = connections(mirror);
        if now == want || started.elapsed() > limit {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ------------------------------------------------------------------------------------------
// Slow and idle clients
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_client_that_stalls_in_the_middle_of_its_request_head_is_cut_after_the_header_timeout() {
    let (_upstream, mirror) = setup_with(|site| site.set("client_header_timeout", "1s")).await;
    let mut slow = connect(&mirror).await;
    slow.write_all(b"GET /names HTTP/1.1\r\nHost: mirror\r\nUser-Agent: sl").await.unwrap();
    let started = Instant::now();
    // Other clients are served normally meanwhile.
    others_are_served(&mirror, Duration::from_millis(800)).await;
    let (answer, _) = wait_closed(&mut slow, Duration::from_secs(5) - started.elapsed())
        .await
        .expect("a stalled request head must be cut after client_header_timeout (1s)");
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(900), "cut too early: {elapsed:?}");
    assert!(elapsed < Duration::from_secs(3), "cut too late: {elapsed:?}");
    let answer = String::from_utf8_lossy(&answer);
    assert!(!answer.contains(" 200 "), "a half request head must never be answered as a request: {answer}");
    assert_eq!(wait_for_connections(&mirror, 0, Duration::from_secs(2)).await, 0);
}

#[tokio::test]
async fn a_client_trickling_its_request_head_byte_by_byte_is_cut_after_the_header_timeout() {
    // Slowloris: every byte arrives before any idle timer would fire, but the head as a whole
    // takes far longer than client_header_timeout.
    let (_upstream, mirror) = setup_with(|site| site.set("client_header_timeout", "1s")).await;
    let mut slow = connect(&mirror).await;
    let started = Instant::now();
    let head = format!("GET /names HTTP/1.1\r\nHost: mirror\r\nX-Slow: {}\r\n\r\n", "z".repeat(200));
    let mut cut_at = None;
    for byte in head.as_bytes() {
        if slow.write_all(&[*byte]).await.is_err() {
            cut_at = Some(started.elapsed());
            break;
        }
        let mut probe = [0u8; 256];
        if let Ok(read) = tokio::time::timeout(Duration::from_millis(100), slow.read(&mut probe)).await {
            // The server spoke or closed: the only acceptable reason is the timeout.
            assert!(!String::from_utf8_lossy(&probe[..read.unwrap_or(0)]).contains(" 200 "));
            cut_at = Some(started.elapsed());
            break;
        }
        if started.elapsed() > Duration::from_secs(5) {
            break;
        }
    }
    let cut_at = cut_at.expect("a head trickled over 5 s must be cut after client_header_timeout (1s)");
    assert!(cut_at >= Duration::from_millis(900) && cut_at < Duration::from_secs(3), "cut at {cut_at:?}");
    others_are_served(&mirror, Duration::from_millis(800)).await;
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_after_the_header_timeout() {
    let (_upstream, mirror) = setup_with(|site| site.set("client_header_timeout", "1s")).await;
    let mut silent = connect(&mirror).await;
    let mut preface_only = connect(&mirror).await;
    preface_only.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    let limit = Duration::from_secs(4);
    let silent_closed = wait_closed(&mut silent, limit).await;
    let preface_closed = wait_closed(&mut preface_only, Duration::from_millis(100)).await;
    assert!(silent_closed.is_some(), "a connection that sent no byte is still open after {limit:?}");
    assert!(preface_closed.is_some(), "a connection that sent half the HTTP/2 preface is still open");
}

#[tokio::test]
async fn idle_connections_holding_every_slot_are_released_after_the_header_timeout() {
    idle_connections_do_not_hold_every_slot(b"", "5 silent sockets still").await;
}

#[tokio::test]
async fn http2_connections_that_open_no_stream_do_not_hold_every_slot() {
    // The whole HTTP/2 preface and an empty SETTINGS frame, then nothing: the HTTP/2 twin of an
    // idle socket. With every slot held like this, new clients must still get in once
    // client_header_timeout has passed.
    idle_connections_do_not_hold_every_slot(
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0",
        "5 idle HTTP/2 connections",
    )
    .await;
}

/// Every one of 5 slots held by a connection that sends `preamble` (maybe nothing), then
/// nothing more: 3 s after client_header_timeout (1s) a new client is served.
async fn idle_connections_do_not_hold_every_slot(preamble: &[u8], idle_ones: &str) {
    let (_upstream, mirror) =
        setup_with(|site| site.set("max_connections", 5).set("client_header_timeout", "1s")).await;
    let mut idle = Vec::new();
    for _ in 0..5 {
        let mut stream = connect(&mirror).await;
        if !preamble.is_empty() {
            stream.write_all(preamble).await.unwrap();
        }
        idle.push(stream);
    }
    assert_eq!(wait_for_connections(&mirror, 5, Duration::from_secs(2)).await, 5);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let got = tokio::time::timeout(Duration::from_secs(3), raw_get(&mirror, "/names")).await;
    let status = got.ok().flatten().map(|r| r.status);
    assert_eq!(status, Some(200), "3 s after client_header_timeout (1s), {idle_ones} lock clients out");
    drop(idle);
}

// ------------------------------------------------------------------------------------------
// Oversized requests
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn an_oversized_request_header_is_refused_without_affecting_other_clients() {
    let (upstream, mirror) = setup().await;
    let mut big = connect(&mirror).await;
    let head = format!("GET /names HTTP/1.1\r\nHost: mirror\r\nCookie: c={}\r\n\r\n", "x".repeat(100 << 10));
    // The server may stop reading (and close) before the whole head is written.
    let (write, others) =
        tokio::join!(big.write_all(head.as_bytes()), others_are_served(&mirror, Duration::from_secs(2)));
    let _ = (write, others);
    let (answer, _) = wait_closed(&mut big, Duration::from_secs(5)).await.expect("the connection must be closed");
    let answer = String::from_utf8_lossy(&answer);
    // A clean refusal is a 431; a reset before the client read it is acceptable too, never a 200.
    assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 431"), "unexpected answer: {answer:.200}");
    assert!(!answer.contains(" 200 "));
    assert_eq!(upstream.requests_for("/names"), 1, "only the well-behaved client's request reached the upstream");
    others_are_served(&mirror, Duration::from_secs(1)).await;
    assert_eq!(wait_for_connections(&mirror, 0, Duration::from_secs(2)).await, 0);
}

#[tokio::test]
async fn an_oversized_request_header_is_answered_431_to_a_client_that_waits_for_the_answer() {
    // 100 KB is read only up to the 64 KiB limit; a client that sends a 70 KB head and then
    // waits for the answer must receive a 431, not just a closed socket.
    let head = format!("GET /names HTTP/1.1\r\nHost: mirror\r\nCookie: c={}\r\n\r\n", "x".repeat(70 << 10));
    answered_431_and_others_are_served(&head).await;
}

/// A client that sends `head` and waits gets a 431 (not just a closed socket), and other
/// clients are served normally afterwards.
async fn answered_431_and_others_are_served(head: &str) {
    let (_upstream, mirror) = setup().await;
    let mut stream = connect(&mirror).await;
    let _ = stream.write_all(head.as_bytes()).await;
    let answer = tokio::time::timeout(Duration::from_secs(5), read_response(&mut stream, &mut Vec::new(), false))
        .await
        .expect("answered or closed within 5 s");
    let answer = answer.expect("a 431 answer before the connection is closed");
    assert_eq!(answer.status, 431, "{answer:?}");
    others_are_served(&mirror, Duration::from_secs(1)).await;
}

#[tokio::test]
async fn an_oversized_header_over_http2_is_refused_and_the_connection_keeps_serving_other_streams() {
    use http_body_util::{BodyExt, Empty};
    let (_upstream, mirror) = setup().await;
    let client: hyper_util::client::legacy::Client<_, Empty<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).http2_only(true).build_http();
    let warm = client.get(mirror.url("/names").parse().unwrap()).await.unwrap();
    assert_eq!(warm.status(), 200);
    let cookie = format!("c={}", "x".repeat(100 << 10));
    let req = http::Request::get(mirror.url("/names")).header("cookie", cookie).body(Empty::new()).unwrap();
    let refused = client.request(req).await.expect("an answer on the same connection");
    assert_eq!(refused.status(), 431, "an oversized HTTP/2 header list");
    for path in PATHS {
        let resp = client.get(mirror.url(path).parse().unwrap()).await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), fixture(path), "{path}");
    }
}

#[tokio::test]
async fn too_many_request_headers_are_refused_without_affecting_other_clients() {
    let mut head = String::from("GET /names HTTP/1.1\r\nHost: mirror\r\n");
    for i in 0..500 {
        head.push_str(&format!("X-H{i}: v\r\n"));
    }
    head.push_str("\r\n");
    answered_431_and_others_are_served(&head).await;
}

#[tokio::test]
async fn an_over_long_path_is_answered_400_before_any_upstream_request() {
    let (upstream, mirror) = setup().await;
    for len in [1025, 4096, 16 << 10] {
        let path = format!("/packages/{}", "a".repeat(len));
        let got = raw_get(&mirror, &path).await.unwrap_or_else(|| panic!("no answer for a {len}-byte path"));
        assert_eq!(got.status, 400, "{len}-byte path");
        assert!(String::from_utf8_lossy(&got.body).contains("too long"), "{:?}", String::from_utf8_lossy(&got.body));
        let tarball = format!("/tarballs/{}-1.0.0.tar", "b".repeat(len));
        assert_eq!(raw_get(&mirror, &tarball).await.map(|r| r.status), Some(400), "{len}-byte tarball path");
    }
    assert_eq!(upstream.total_requests(), 0, "nothing over-long reaches the upstream");
    // A path just under the limit is routed normally (an unknown package: the upstream says 404).
    let name_ok = format!("/packages/{}", "c".repeat(100));
    assert_eq!(raw_get(&mirror, &name_ok).await.map(|r| r.status), Some(404));
    others_are_served(&mirror, Duration::from_secs(1)).await;
}

// ------------------------------------------------------------------------------------------
// Connection floods
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn connections_beyond_max_connections_are_closed_and_the_gauge_never_exceeds_the_limit() {
    let (_upstream, mirror) =
        setup_with(|site| site.set("max_connections", 20).set("client_header_timeout", "30s")).await;
    let sampler = {
        let gauge = mirror.mirror.metrics().connections.clone();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut max = 0;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                max = max.max(gauge.get());
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            max
        });
        (stop, task)
    };
    let mut idle = Vec::new();
    for _ in 0..50 {
        idle.push(connect(&mirror).await);
    }
    // Those beyond the limit are closed at once; the first 20 are held (they are within limits).
    let mut closed = 0;
    let mut open = Vec::new();
    for mut stream in idle {
        match wait_closed(&mut stream, Duration::from_millis(300)).await {
            Some((bytes, _)) => {
                assert!(bytes.is_empty(), "a refused connection gets no HTTP answer");
                closed += 1;
            }
            None => open.push(stream),
        }
    }
    assert_eq!(closed, 30, "50 connections with max_connections = 20");
    assert_eq!(open.len(), 20);
    assert_eq!(connections(&mirror), 20);
    let scraped = metric_sum(&mirror.mirror.metrics().render(), "hexmirror_client_connections", &[]);
    assert_eq!(scraped, 20.0, "hexmirror_client_connections while 20 idle connections are held");
    // While every slot is held, a new client is refused (closed), not queued forever.
    let refused = tokio::time::timeout(Duration::from_secs(3), raw_get(&mirror, "/names")).await;
    assert!(matches!(refused, Ok(None)), "a connection beyond the limit must be closed: {refused:?}");
    // Once the idle clients go away, their slots are free again.
    drop(open);
    assert_eq!(wait_for_connections(&mirror, 0, Duration::from_secs(3)).await, 0);
    let got = mirror.get("/names").await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body, fixture("/names"));
    sampler.0.store(true, std::sync::atomic::Ordering::Relaxed);
    let max = sampler.1.await.unwrap();
    assert!(max <= 20, "hexmirror_client_connections reached {max} with max_connections = 20");
}

#[tokio::test]
async fn a_flood_of_short_connections_beyond_the_limit_leaves_no_slot_leaked() {
    let (_upstream, mirror) =
        setup_with(|site| site.set("max_connections", 20).set("client_header_timeout", "2s")).await;
    let mut tasks = Vec::new();
    for i in 0..200 {
        let addr = mirror.addr;
        tasks.push(tokio::spawn(async move {
            let Ok(mut stream) = TcpStream::connect(addr).await else { return None };
            let path = PATHS[i % PATHS.len()];
            let req = format!("GET {path} HTTP/1.1\r\nHost: mirror\r\nConnection: close\r\n\r\n");
            if stream.write_all(req.as_bytes()).await.is_err() {
                return None;
            }
            let got = read_response(&mut stream, &mut Vec::new(), false).await?;
            Some((path, got))
        }));
    }
    let mut served = 0;
    for task in tasks {
        if let Some((path, got)) = task.await.unwrap() {
            assert_eq!(got.status, 200, "{path}");
            assert_eq!(got.body, fixture(path), "{path}: wrong bytes under a connection flood");
            served += 1;
        }
    }
    assert!(served >= 20, "only {served} of 200 served");
    assert_eq!(wait_for_connections(&mirror, 0, Duration::from_secs(3)).await, 0, "connection slots leaked");
    others_are_served(&mirror, Duration::from_secs(1)).await;
}

// ------------------------------------------------------------------------------------------
// Protocol features
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn pipelined_requests_on_one_connection_are_answered_in_order() {
    let (_upstream, mirror) = setup().await;
    let paths = ["/names", "/packages/hexdemo_top", TARBALL];
    // Cold and warm: the first round fetches from the upstream, the second is all hits.
    for round in ["miss", "hit"] {
        let mut stream = connect(&mirror).await;
        let batch: String =
            paths.iter().map(|p| format!("GET {p} HTTP/1.1\r\nHost: mirror\r\n\r\n")).collect::<Vec<_>>().concat();
        stream.write_all(batch.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        for path in paths {
            let got = tokio::time::timeout(Duration::from_secs(5), read_response(&mut stream, &mut buf, false))
                .await
                .unwrap_or_else(|_| panic!("{round}: no answer for pipelined {path}"))
                .unwrap_or_else(|| panic!("{round}: connection closed before the answer for {path}"));
            assert_eq!(got.status, 200, "{round} {path}");
            assert_eq!(got.body, fixture(path), "{round} {path}: answers out of order or wrong");
            assert_eq!(got.header("x-cache"), Some(round), "{path}");
        }
        assert!(buf.is_empty(), "nothing beyond three answers");
    }
    // A HEAD in the middle of a pipeline has no body, and the next answer is not shifted.
    let mut stream = connect(&mirror).await;
    let batch = format!(
        "GET /names HTTP/1.1\r\nHost: m\r\n\r\nHEAD {TARBALL} HTTP/1.1\r\nHost: m\r\n\r\nGET {TARBALL} HTTP/1.1\r\nHost: m\r\n\r\n"
    );
    stream.write_all(batch.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let first = read_response(&mut stream, &mut buf, false).await.unwrap();
    assert_eq!(first.body, fixture("/names"));
    let head = read_response(&mut stream, &mut buf, true).await.unwrap();
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("5120"));
    let last = read_response(&mut stream, &mut buf, false).await.unwrap();
    assert_eq!(last.body, fixture(TARBALL));
}

#[tokio::test]
async fn http2_prior_knowledge_gets_the_same_bytes_as_http1() {
    use http_body_util::{BodyExt, Empty};
    let (_upstream, mirror) = setup().await;
    let client: hyper_util::client::legacy::Client<_, Empty<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).http2_only(true).build_http();
    // Concurrent streams on one connection, cold: the fetches are coalesced and each stream
    // gets its own resource.
    let mut streams = Vec::new();
    for path in PATHS.iter().chain(PATHS.iter()) {
        let client = client.clone();
        let url = mirror.url(path);
        streams.push(tokio::spawn(async move {
            let resp = client.get(url.parse().unwrap()).await.unwrap();
            assert_eq!(resp.version(), http::Version::HTTP_2);
            let status = resp.status().as_u16();
            (path, status, resp.into_body().collect().await.unwrap().to_bytes())
        }));
    }
    for stream in streams {
        let (path, status, body) = stream.await.unwrap();
        assert_eq!(status, 200, "{path}");
        assert_eq!(body, fixture(path), "{path} over HTTP/2");
        assert_eq!(body, mirror.get(path).await.body, "{path}: HTTP/2 and HTTP/1.1 bytes differ");
    }
    // Conditional requests work the same over HTTP/2.
    let etag = mirror.get(TARBALL).await.header("etag").to_string();
    let req = http::Request::get(mirror.url(TARBALL)).header("if-none-match", &etag).body(Empty::new()).unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), 304);
    assert!(resp.into_body().collect().await.unwrap().to_bytes().is_empty());
}

#[tokio::test]
async fn a_range_request_gets_the_whole_body_or_exactly_the_range_never_other_bytes() {
    let (_upstream, mirror) = setup().await;
    let full = fixture(TARBALL);
    for warm in [false, true] {
        for (range, want) in [
            ("bytes=0-99", Some(0..100)),
            ("bytes=100-199", Some(100..200)),
            ("bytes=-100", Some(full.len() - 100..full.len())),
            ("bytes=5000-", Some(5000..full.len())),
            ("bytes=0-9,20-29", None),
            ("bytes=99999-", None),
            ("bytes=abc", None),
        ] {
            let got = get(&mirror.url(TARBALL), &[("range", range)]).await;
            match got.status {
                200 => {
                    assert_eq!(got.body, full, "{range} (warm {warm}): a 200 must carry the whole body");
                    assert_eq!(got.header("content-length"), full.len().to_string());
                }
                206 => {
                    let want = want.unwrap_or_else(|| panic!("{range}: 206 for a range that is not a single range"));
                    assert_eq!(got.body, full[want.clone()], "{range}: wrong bytes in a 206");
                    let content_range = format!("bytes {}-{}/{}", want.start, want.end - 1, full.len());
                    assert_eq!(got.header("content-range"), content_range);
                }
                416 => assert!(want.is_none(), "{range}: a satisfiable range answered 416"),
                other => panic!("{range}: unexpected status {other}"),
            }
        }
    }
}

#[tokio::test]
async fn if_none_match_lists_and_weak_tags_are_compared_weakly_and_exactly() {
    let (_upstream, mirror) = setup().await;
    for path in ["/packages/hexdemo_top", TARBALL] {
        let first = mirror.get(path).await;
        let etag = first.header("etag").to_string();
        assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");
        let weak = format!("W/{etag}");
        let last = if etag.as_bytes()[etag.len() - 2] == b'0' { '1' } else { '0' };
        let near = format!("{}{last}\"", &etag[..etag.len() - 2]);
        let unquoted = etag.trim_matches('"').to_string();
        let not_modified: &[&[&str]] = &[
            &[&etag],
            &[&weak],
            &["*"],
            &[&format!("\"a\", {etag}")],
            &[&format!("W/\"a\",{weak}, \"b\"")],
            &[&format!("\"a\" , {etag} ")],
            // The list may also arrive as separate header lines.
            &["\"a\"", &weak],
        ];
        for values in not_modified {
            let headers: Vec<(&str, &str)> = values.iter().map(|v| ("if-none-match", *v)).collect();
            let got = get(&mirror.url(path), &headers).await;
            assert_eq!(got.status, 304, "{path} {values:?}");
            assert!(got.body.is_empty());
            assert_eq!(got.header("etag"), etag, "a 304 carries the current ETag");
        }
        let modified: &[&[&str]] =
            &[&["\"a\""], &["\"a\", W/\"b\""], &[&near], &[&unquoted], &[&format!("W/{near}")], &[""]];
        for values in modified {
            let headers: Vec<(&str, &str)> = values.iter().map(|v| ("if-none-match", *v)).collect();
            let got = get(&mirror.url(path), &headers).await;
            assert_eq!(got.status, 200, "{path} {values:?}");
            assert_eq!(got.body, fixture(path), "{path} {values:?}");
        }
    }
}
