//! The fetch path under pressure: a sick upstream's circuit breaker, fallbacks taken at once,
//! abandoned fetches cancelled, the bound on pending fetches, and a cold tarball fetched in
//! one round trip with its cold record.

mod common;

use std::time::{Duration, Instant};

use common::*;

const RECORD: &str = "/packages/hexdemo_mid";

/// A mirror whose breaker opens after 3 failures and probes after 1 s (then 2 s, 4 s).
fn breaker_site(upstream: &str) -> MirrorBuilder {
    TestMirror::builder()
        .upstream(upstream)
        .registry_ttl("2s")
        .without_stale_while_revalidate()
        .set("read_timeout", "1s")
        .set("breaker_failures", 3)
        .set("breaker_backoff", "1s")
        .set("breaker_max_backoff", "4s")
}

async fn timed_get(mirror: &TestMirror, path: &str) -> (Fetched, Duration) {
    let started = Instant::now();
    let got = mirror.get(path).await;
    (got, started.elapsed())
}

fn upstream_up(metrics: &str) -> f64 {
    metric_sum(metrics, "hexmirror_upstream_up", &["repo=\"hexpm\""])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hung_upstream_opens_the_breaker_then_answers_come_at_once_until_a_probe_closes_it() {
    let upstream = TestUpstream::start(demo_files("hexpm", "")).await;
    let mirror = breaker_site(&upstream.url()).start().await;
    for path in ["/names", RECORD] {
        assert_eq!(mirror.get(path).await.header("x-cache"), "miss");
    }
    assert_eq!(upstream_up(&mirror.metrics().await), 1.0);
    tokio::time::sleep(Duration::from_millis(2100)).await;

    // The upstream accepts connections and never answers.
    upstream.state.lock().unwrap().delay = Duration::from_secs(30);
    for _ in 0..3 {
        let (got, took) = timed_get(&mirror, "/names").await;
        assert_eq!((got.status, got.header("x-cache")), (200, "stale"));
        assert!(took >= Duration::from_millis(900), "waited read_timeout before the breaker opened: {took:?}");
    }
    let metrics = mirror.metrics().await;
    assert_eq!(upstream_up(&metrics), 0.0, "three timeouts in a row open the breaker");
    assert_eq!(metric_sum(&metrics, "hexmirror_upstream_breaker_openings_total", &[]), 1.0);

    // Open: a cached entry is answered at once, an uncached one fails fast naming the upstream.
    let asked = upstream.total_requests();
    for _ in 0..5 {
        let (got, took) = timed_get(&mirror, RECORD).await;
        assert_eq!((got.status, got.header("x-cache")), (200, "stale"));
        assert!(took < Duration::from_millis(100), "a cached answer waited {took:?}");
        let (got, took) = timed_get(&mirror, "/packages/hexdemo_top").await;
        assert_eq!(got.status, 502, "{}", String::from_utf8_lossy(&got.body));
        let text = String::from_utf8_lossy(&got.body).to_string();
        assert!(text.contains(&upstream.addr.to_string()) && text.contains("circuit breaker open"), "{text}");
        assert!(took < Duration::from_millis(100), "an uncached answer waited {took:?}");
    }
    assert!(upstream.total_requests() - asked <= 1, "at most one probe within the back-off");

    // The upstream recovers: after the back-off, the probe (a background revalidation of an
    // expired copy, answered stale meanwhile) closes the breaker.
    upstream.state.lock().unwrap().delay = Duration::ZERO;
    tokio::time::sleep(Duration::from_millis(4100)).await;
    let (got, took) = timed_get(&mirror, RECORD).await;
    assert_eq!(got.header("x-cache"), "stale");
    assert!(took < Duration::from_millis(100), "{took:?}");
    let closed = async {
        loop {
            if upstream_up(&mirror.metrics().await) == 1.0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(3), closed).await.expect("the probe closes the breaker");
    let got = mirror.get("/packages/hexdemo_top").await;
    assert_eq!((got.status, got.header("x-cache")), (200, "miss"));
    assert_eq!(metric_sum(&mirror.metrics().await, "hexmirror_upstream_breaker_openings_total", &[]), 1.0);
}

#[tokio::test]
async fn a_failed_probe_keeps_the_breaker_open_and_backs_off() {
    let upstream = TestUpstream::start(demo_files("hexpm", "")).await;
    let mirror = breaker_site(&upstream.url()).start().await;
    upstream.state.lock().unwrap().fail_all = Some(503);
    for _ in 0..3 {
        assert_eq!(mirror.get("/names").await.status, 502);
    }
    assert_eq!(upstream.total_requests(), 3);
    // Within the first back-off (1 s): nobody asks.
    for _ in 0..10 {
        assert_eq!(mirror.get("/names").await.status, 502);
    }
    assert_eq!(upstream.total_requests(), 3);
    // After it, one probe; it fails, and the next back-off is 2 s.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for _ in 0..5 {
        assert_eq!(mirror.get("/names").await.status, 502);
    }
    assert_eq!(upstream.total_requests(), 4, "one probe");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(mirror.get("/names").await.status, 502);
    assert_eq!(upstream.total_requests(), 4, "the back-off doubled after a failed probe");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    upstream.state.lock().unwrap().fail_all = None;
    let got = mirror.get("/names").await;
    assert_eq!((got.status, got.header("x-cache")), (200, "miss"), "the probe succeeds and is answered");
    assert_eq!(upstream_up(&mirror.metrics().await), 1.0);
    assert_eq!(metric_sum(&mirror.metrics().await, "hexmirror_upstream_breaker_openings_total", &[]), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_the_first_upstream_open_the_fallback_is_asked_at_once() {
    let hung = TestUpstream::start(demo_files("acme", "")).await;
    hung.state.lock().unwrap().delay = Duration::from_secs(30);
    let good = TestUpstream::start(demo_files("acme", "")).await;
    let hexpm = TestUpstream::start(Default::default()).await;
    let corp = RepoSpec::acme(&hung.url()).or_upstream(&good.url());
    let mirror = breaker_site(&hexpm.url()).repo("corp", corp).start().await;
    let names = ["hexdemo_base", "hexdemo_mid", "hexdemo_top"];
    for name in names {
        let (got, took) = timed_get(&mirror, &format!("/repos/corp/packages/{name}")).await;
        assert_eq!(got.status, 200);
        assert!(took >= Duration::from_millis(900), "the first upstream was waited for: {took:?}");
    }
    let metrics = mirror.metrics().await;
    let hung_label = format!("upstream=\"{}\"", hung.addr);
    assert_eq!(metric_sum(&metrics, "hexmirror_upstream_up", &["repo=\"corp\"", &hung_label]), 0.0);
    let good_label = format!("upstream=\"{}\"", good.addr);
    assert_eq!(metric_sum(&metrics, "hexmirror_upstream_up", &["repo=\"corp\"", &good_label]), 1.0);
    let asked = hung.total_requests();
    for path in ["/repos/corp/names", "/repos/corp/versions"] {
        let (got, took) = timed_get(&mirror, path).await;
        assert_eq!((got.status, got.header("x-cache")), (200, "miss"), "{path}");
        assert!(took < Duration::from_millis(200), "{path}: the fallback waited {took:?}");
    }
    assert_eq!(hung.total_requests(), asked, "the open upstream is skipped");
}

#[tokio::test]
async fn private_content_needing_a_recheck_gets_503_at_once_while_the_breaker_is_open() {
    let upstream = protected_upstream(&["Bearer alice-key"]).await;
    let hexpm = TestUpstream::start(Default::default()).await;
    let corp = RepoSpec::acme(&upstream.url()).trusted().allow_http();
    let mirror = breaker_site(&hexpm.url()).repo("corp", corp).start().await;
    let alice = [("authorization", "Bearer alice-key")];
    let path = "/repos/corp/packages/hexdemo_mid";
    assert_eq!(get(&mirror.url(path), &alice).await.header("x-cache"), "miss");
    upstream.state.lock().unwrap().fail_all = Some(500);
    for other in ["hexdemo_base", "hexdemo_top", "hexdemo_base"] {
        let got = get(&mirror.url(&format!("/repos/corp/packages/{other}")), &alice).await;
        assert_eq!(got.status, 502);
    }
    let asked = upstream.total_requests();
    let started = Instant::now();
    let got = get(&mirror.url(path), &alice).await;
    assert_eq!(got.status, 503, "{}", String::from_utf8_lossy(&got.body));
    assert!(started.elapsed() < Duration::from_millis(100));
    assert_eq!(upstream.total_requests(), asked, "the cached private copy is never served without the re-check");
}

/// Fires `n` requests for distinct uncached names whose clients give up after `patience`.
async fn flood(mirror: &TestMirror, n: usize, patience: Duration) {
    let mut clients = Vec::new();
    for i in 0..n {
        let url = mirror.url(&format!("/packages/flood_{i}"));
        clients.push(tokio::spawn(async move {
            let _ = tokio::time::timeout(patience, get(&url, &[])).await;
        }));
    }
    for client in clients {
        client.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fetches_abandoned_by_their_clients_are_cancelled_and_a_legitimate_miss_is_quick() {
    let upstream = TestUpstream::start(demo_files("hexpm", "")).await;
    upstream.state.lock().unwrap().delays = vec![("/packages/flood_".into(), Duration::from_secs(1))];
    let mirror = TestMirror::builder().upstream(&upstream.url()).set("max_upstream_requests", 8).start().await;
    flood(&mirror, 400, Duration::from_millis(200)).await;
    // Give queued fetches time to run, if they were not cancelled.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Only fetches whose clients were still there when a slot came free reach the upstream
    // (how many depends on how fast the clients connect); never the whole queue.
    let flooded = upstream.total_requests();
    assert!(flooded <= 150, "{flooded} upstream requests ran for 400 clients that had gone");
    let (got, took) = timed_get(&mirror, RECORD).await;
    assert_eq!((got.status, got.header("x-cache")), (200, "miss"));
    assert!(took < Duration::from_secs(2), "a legitimate cold miss took {took:?}");
    let metrics = mirror.metrics().await;
    let cancelled = metric_sum(&metrics, "hexmirror_fetches_cancelled_total", &[]);
    println!("400 abandoned cold misses: {flooded} upstream requests, {cancelled} fetches cancelled; then a cold miss in {took:?}");
    assert!(cancelled >= 1.0, "nothing was cancelled");
    assert_eq!(metric_sum(&metrics, "hexmirror_pending_fetches", &[]), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn beyond_max_pending_fetches_a_cold_miss_gets_503_with_retry_after_at_once() {
    let upstream = TestUpstream::start(demo_files("hexpm", "")).await;
    upstream.state.lock().unwrap().delays = vec![("/packages/flood_".into(), Duration::from_secs(2))];
    let mirror = TestMirror::builder()
        .upstream(&upstream.url())
        .registry_ttl("2s")
        .without_stale_while_revalidate()
        .set("max_pending_fetches", 4)
        .start()
        .await;
    assert_eq!(mirror.get("/names").await.header("x-cache"), "miss");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let mut held = Vec::new();
    for i in 0..4 {
        let url = mirror.url(&format!("/packages/flood_{i}"));
        held.push(tokio::spawn(async move { get(&url, &[]).await.status }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (got, took) = timed_get(&mirror, RECORD).await;
    assert_eq!(got.status, 503);
    assert_eq!(got.header("retry-after"), "1");
    assert!(took < Duration::from_millis(100), "{took:?}");
    // A copy, however expired, is answered rather than refused.
    let got = mirror.get("/names").await;
    assert_eq!((got.status, got.header("x-cache")), (200, "stale"));
    // Joining a pending fetch is not a new one.
    let got = mirror.get("/packages/flood_0").await;
    assert_eq!(got.status, 404);
    for status in held {
        assert_eq!(status.await.unwrap(), 404);
    }
    assert_eq!(mirror.get(RECORD).await.status, 200, "room again once they ended");
    assert_eq!(metric_sum(&mirror.metrics().await, "hexmirror_fetches_rejected_total", &[]), 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cold_tarball_with_a_cold_record_is_one_round_trip() {
    let upstream = TestUpstream::start(demo_files("hexpm", "")).await;
    upstream.state.lock().unwrap().delay = Duration::from_millis(200);
    let mirror = TestMirror::builder().upstream(&upstream.url()).start().await;
    let tarball = "/tarballs/hexdemo_mid-0.2.0.tar";
    let (got, took) = timed_get(&mirror, tarball).await;
    assert_eq!((got.status, got.header("x-cache")), (200, "miss"));
    assert_eq!(got.body, demo_file("hexpm", "tarballs/hexdemo_mid-0.2.0.tar"));
    let s = upstream.state.lock().unwrap();
    assert_eq!(s.max_in_flight, 2, "the record and the tarball were asked for at the same time");
    assert_eq!(s.requests.len(), 2);
    drop(s);
    // Two round trips one after the other take at least 400 ms (bench/cold.sh measures the
    // release build against an upstream answering after 50 ms).
    assert!(took < Duration::from_millis(350), "the cold tarball took {took:?}");
    println!("cold tarball with a cold record, upstream answering after 200 ms: {took:?}");
}

#[tokio::test]
async fn a_tarball_asked_for_early_is_still_verified_against_the_record() {
    let upstream = TestUpstream::start(demo_files("hexpm", "")).await;
    let tarball = "/tarballs/hexdemo_mid-0.2.0.tar";
    let mut forged = demo_file("hexpm", "tarballs/hexdemo_mid-0.2.0.tar");
    let at = forged.len() / 2;
    forged[at] ^= 1;
    upstream.set_file(tarball, forged);
    let mirror = TestMirror::builder().upstream(&upstream.url()).start().await;
    let got = mirror.get(tarball).await;
    assert_eq!((got.status, got.header("x-cache")), (502, "refused"));
    // A release the verified record does not list is a 404 from the record; the early request
    // for it is not trusted for anything.
    upstream.set_file("/tarballs/hexdemo_mid-9.9.9.tar", demo_file("hexpm", "tarballs/hexdemo_mid-0.2.0.tar"));
    let mirror = mirror.restart().await;
    let got = mirror.get("/tarballs/hexdemo_mid-9.9.9.tar").await;
    assert_eq!(got.status, 404);
}
