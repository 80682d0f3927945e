//! Freshness under a sick upstream: stale-while-revalidate answers expired registry files at
//! once from the last verified copy while one background revalidation per file runs.

mod common;

use std::time::{Duration, Instant};

use common::*;

const PATHS: [&str; 3] = ["/names", "/versions", "/packages/hexdemo_mid"];

/// A mirror with a registry TTL of 2 s (TTLs count whole seconds: 1 s would make a copy
/// refreshed late in a second look expired a moment later).
fn site(upstream: &str) -> MirrorBuilder {
    TestMirror::builder().upstream(upstream).registry_ttl("2s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hung_upstream_never_delays_an_expired_registry_file_within_the_window() {
    let upstream = TestUpstream::start(demo_files("hexpm", "")).await;
    let mirror = site(&upstream.url()).start().await;
    for path in PATHS {
        assert_eq!(mirror.get(path).await.header("x-cache"), "miss", "{path}");
    }
    tokio::time::sleep(Duration::from_millis(2100)).await;
    // The upstream now accepts connections and does not answer (longer than read_timeout).
    upstream.state.lock().unwrap().delay = Duration::from_secs(20);
    let before: Vec<usize> = PATHS.iter().map(|p| upstream.requests_for(p)).collect();
    let mut slowest = Duration::ZERO;
    for round in 0..5 {
        let mut answers = Vec::new();
        for path in PATHS {
            for _ in 0..4 {
                let url = mirror.url(path);
                answers.push(tokio::spawn(async move {
                    let started = Instant::now();
                    let got = get(&url, &[]).await;
                    (path, started.elapsed(), got)
                }));
            }
        }
        for answer in answers {
            let (path, took, got) = answer.await.unwrap();
            slowest = slowest.max(took);
            assert_eq!((got.status, got.header("x-cache")), (200, "stale"), "{path} in round {round}");
            assert_eq!(got.body, demo_file("hexpm", path.trim_start_matches('/')), "{path}");
            let age: u64 = got.header("age").parse().expect("a stale answer carries Age");
            assert!(age >= 2, "{path}: Age {age}");
            assert!(got.header("cache-control").contains("max-age=0"), "{path}: {}", got.header("cache-control"));
        }
    }
    assert!(slowest < Duration::from_millis(100), "a stale answer took {slowest:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (path, before) in PATHS.iter().zip(before) {
        assert_eq!(upstream.requests_for(path) - before, 1, "{path}: one background revalidation per file");
    }
    let metrics = mirror.metrics().await;
    assert!(metric_sum(&metrics, "hexmirror_stale_served_total", &["reason=\"revalidating\""]) >= 60.0);
    assert_eq!(metric_sum(&metrics, "hexmirror_stale_served_total", &["reason=\"error\""]), 0.0);

    // The upstream recovers: the next expired request starts a revalidation that refreshes
    // the copy, and the one after is a hit.
    upstream.state.lock().unwrap().delay = Duration::ZERO;
    tokio::time::sleep(Duration::from_millis(3500)).await; // the hung revalidations time out
    let got = mirror.get("/names").await;
    assert_eq!(got.header("x-cache"), "stale");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = mirror.get("/names").await;
    assert_eq!((got.status, got.header("x-cache")), (200, "hit"));
}

#[tokio::test]
async fn without_the_window_an_expired_file_waits_for_the_upstream_then_falls_back() {
    let upstream = TestUpstream::start(demo_files("hexpm", "")).await;
    let mirror = site(&upstream.url()).without_stale_while_revalidate().start().await;
    assert_eq!(mirror.get("/names").await.header("x-cache"), "miss");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    upstream.state.lock().unwrap().fail_all = Some(503);
    let got = mirror.get("/names").await;
    assert_eq!((got.status, got.header("x-cache")), (200, "stale"));
    assert!(upstream.requests_for("/names") >= 2, "the upstream was asked first");
    let metrics = mirror.metrics().await;
    assert_eq!(metric_sum(&metrics, "hexmirror_stale_served_total", &["reason=\"error\""]), 1.0);
    assert_eq!(metric_sum(&metrics, "hexmirror_stale_served_total", &["reason=\"revalidating\""]), 0.0);
}

/// A downstream hexmirror (a sidecar) in front of a central one that answers stale: the Age it
/// is given counts, so the sidecar does not treat the copy as fresh for a new TTL.
#[tokio::test]
async fn a_sidecar_does_not_take_a_stale_answer_as_fresh() {
    let upstream = TestUpstream::start(demo_files("hexpm", "")).await;
    let central = site(&upstream.url()).start().await;
    assert_eq!(central.get("/names").await.header("x-cache"), "miss");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    upstream.state.lock().unwrap().delay = Duration::from_secs(20);
    let sidecar = site(&central.url("")).start().await;
    let got = sidecar.get("/names").await;
    assert_eq!((got.status, got.header("x-cache")), (200, "miss"));
    // Central answered stale with an Age of 2 s or more: with a TTL of 2 s, the sidecar holds
    // an expired copy, answered stale (while it revalidates) rather than as a fresh hit.
    let got = sidecar.get("/names").await;
    assert_eq!(got.header("x-cache"), "stale");
}

/// A request for a release that the fresh verified record does not list is a 404 from that
/// record, without asking the upstream again; once the record is older than its TTL, it is
/// asked once more (a release published since), and never answered from a stale copy.
#[tokio::test]
async fn an_unlisted_release_is_a_404_from_the_fresh_record_and_a_new_one_is_found_after_the_ttl() {
    use prost::Message;
    let upstream = TestUpstream::start(demo_files("hexpm", "")).await;
    let mirror = site(&upstream.url()).start().await;
    assert_eq!(mirror.get("/packages/hexdemo_mid").await.status, 200);
    for _ in 0..5 {
        assert_eq!(mirror.get("/tarballs/hexdemo_mid-9.9.9.tar").await.status, 404);
    }
    assert_eq!(upstream.requests_for("/packages/hexdemo_mid"), 1, "no revalidation while the record is fresh");
    assert_eq!(upstream.requests_for("/tarballs/hexdemo_mid-9.9.9.tar"), 0);

    // The upstream publishes 0.3.0 (same bytes as 0.2.0, so the tarball verifies).
    let mut record = demo_package("hexpm", "hexdemo_mid");
    let mut release = record.releases.iter().find(|r| r.version == "0.2.0").unwrap().clone();
    release.version = "0.3.0".into();
    record.releases.push(release);
    upstream.set_file("/packages/hexdemo_mid", sign_registry_file(&record.encode_to_vec()));
    upstream.set_file("/tarballs/hexdemo_mid-0.3.0.tar", demo_file("hexpm", "tarballs/hexdemo_mid-0.2.0.tar"));
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let got = mirror.get("/tarballs/hexdemo_mid-0.3.0.tar").await;
    assert_eq!((got.status, got.header("x-cache")), (200, "miss"), "the new release is found at once");
}
