//! Sync at a repository's full size: package records fetched with bounded concurrency while
//! planning, a re-run over a synced store that needs neither the upstream nor the memory tier
//! for tarballs, a request-rate limit, and a 429's `Retry-After` honoured.

mod common;

use std::time::{Duration, Instant};

use common::*;
use hexmirror::sync::{collect_events, Event, SyncRequest};

fn all() -> SyncRequest {
    SyncRequest { all: true, dependencies: true, concurrency: 8, ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn package_records_are_fetched_at_once_while_planning() {
    let upstream = TestUpstream::start(demo_files("hexpm", "")).await;
    upstream.state.lock().unwrap().delays = vec![("/packages/".into(), Duration::from_millis(400))];
    let mirror = TestMirror::builder().upstream(&upstream.url()).start().await;
    let (events, sink) = collect_events();
    let sync = {
        let mirror = mirror.mirror.clone();
        tokio::spawn(async move { hexmirror::sync::run(&mirror, &all(), &sink).await })
    };
    // The most package records the upstream had in flight at once before the plan was made.
    let mut most = 0;
    while !events.lock().unwrap().iter().any(|e| matches!(e, Event::Planned { .. })) {
        let in_flight = upstream.state.lock().unwrap().in_flight;
        most = most.max(in_flight);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!sync.is_finished() || events.lock().unwrap().iter().any(|e| matches!(e, Event::Planned { .. })));
    }
    let summary = sync.await.unwrap();
    assert!(summary.ok(), "{summary:?}");
    assert_eq!(most, 3, "the three package records were not asked for at once (at most {most} in flight)");
    mirror.stop().await;
}

fn memory_entries(metrics: &str) -> f64 {
    metric_sum(metrics, "hexmirror_cache_entries", &["tier=\"memory\""])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rerun_over_a_synced_store_fetches_nothing_and_leaves_tarballs_out_of_memory() {
    let upstream = TestUpstream::start(demo_files("hexpm", "")).await;
    let site = TestMirror::builder().upstream(&upstream.url());
    let mirror = site.start().await;
    let (_events, sink) = collect_events();
    let first = hexmirror::sync::run(&mirror.mirror, &all(), &sink).await;
    assert!(first.ok(), "{first:?}");
    assert!(first.fetched >= HEXPM_RECORDS.len() + 2, "{first:?}");
    let mirror = mirror.restart().await;
    let asked = upstream.total_requests();
    let (_events, sink) = collect_events();
    let again = hexmirror::sync::run(&mirror.mirror, &all(), &sink).await;
    assert!(again.ok(), "{again:?}");
    assert_eq!((again.fetched, again.present), (0, first.fetched), "{again:?}");
    assert_eq!(upstream.total_requests(), asked, "the re-run asked the upstream");
    // The records were verified again (the plan comes from them); the tarballs were not loaded.
    mirror.mirror.update_gauges();
    let entries = memory_entries(&mirror.metrics().await);
    assert!(entries <= HEXPM_RECORDS.len() as f64, "{entries} entries in memory after the re-run");
    // And `verify` agrees that everything selected is there.
    let report = hexmirror::audit::run(&mirror.mirror, false).await.unwrap();
    assert!(report.ok() && report.missing.is_empty(), "{report:?}");
    mirror.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_429_is_waited_out_as_its_retry_after_says() {
    let upstream = TestUpstream::start(demo_files("hexpm", "")).await;
    let path = "/tarballs/hexdemo_top-2.0.1.tar";
    upstream.state.lock().unwrap().scripted.insert(
        path.into(),
        Scripted { status: 429, headers: vec![("retry-after".into(), "5".into())], body: b"slow down".to_vec() },
    );
    let mirror = TestMirror::builder().upstream(&upstream.url()).set("breaker_failures", 0).start().await;
    // The upstream relents after 4 s: retries at 1 s and 3 s (what a transient error gets)
    // would both be too early.
    let state = upstream.state.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(4)).await;
        state.lock().unwrap().scripted.remove(path);
    });
    let (_events, sink) = collect_events();
    let request = SyncRequest { packages: vec!["hexdemo_top".into()], all: false, ..all() };
    let summary = hexmirror::sync::run(&mirror.mirror, &request, &sink).await;
    assert!(summary.ok(), "{summary:?}");
    assert_eq!(upstream.requests_for(path), 2, "one 429, then one request after Retry-After");
    mirror.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rate_limit_spaces_the_requests() {
    let upstream = TestUpstream::start(demo_files("hexpm", "")).await;
    let mirror = TestMirror::builder().upstream(&upstream.url()).start().await;
    let (_events, sink) = collect_events();
    let started = Instant::now();
    let request = SyncRequest { rate: Some(4.0), ..all() };
    let summary = hexmirror::sync::run(&mirror.mirror, &request, &sink).await;
    assert!(summary.ok(), "{summary:?}");
    // N requests at 4 a second: the last starts (N - 1) / 4 s after the first, at the earliest.
    let took = started.elapsed();
    let n = upstream.total_requests();
    assert_eq!(n, summary.fetched);
    let least = Duration::from_millis(250 * (n as u64 - 1));
    assert!(took >= least, "{n} requests in {took:?} at 4 a second");
    mirror.stop().await;
}

/// Every tarball the upstream was asked for, with how many times.
fn tarball_requests(upstream: &TestUpstream) -> Vec<(&'static str, usize)> {
    HEXPM_TARBALLS.iter().map(|path| (*path, upstream.requests_for(path))).filter(|(_, n)| *n > 0).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tarballs_are_fetched_while_package_records_are_still_arriving() {
    let upstream = TestUpstream::start(demo_files("hexpm", "")).await;
    upstream.state.lock().unwrap().delays = vec![("/packages/hexdemo_top".into(), Duration::from_millis(600))];
    let mirror = TestMirror::builder().upstream(&upstream.url()).start().await;
    let (events, sink) = collect_events();
    let summary = hexmirror::sync::run(&mirror.mirror, &all(), &sink).await;
    assert!(summary.ok(), "{summary:?}");
    let events = events.lock().unwrap().clone();
    let position = |wanted: &dyn Fn(&str) -> bool| {
        events.iter().position(|e| matches!(e, Event::Item { resource, .. } if wanted(resource))).unwrap()
    };
    let first_tarball = position(&|r| r.contains("/tarballs/"));
    let slow_record = position(&|r| r == "/packages/hexdemo_top");
    let planned = events.iter().position(|e| matches!(e, Event::Planned { .. })).unwrap();
    assert!(first_tarball < slow_record, "no tarball was fetched before the last record arrived");
    assert!(slow_record < planned, "planned before every record was resolved");
    match &events[planned] {
        Event::Planned { releases, packages, landed } => {
            assert_eq!((*releases, *packages), (5, 3));
            let before = events[..planned]
                .iter()
                .filter(|e| matches!(e, Event::Item { resource, .. } if resource.contains("/tarballs/")))
                .count();
            assert!(*landed >= 1 && *landed == before, "{landed} landed before the plan, {before} reported");
        }
        _ => unreachable!(),
    }
    assert_eq!(tarball_requests(&upstream).len(), 5, "every release but the retired one");
    assert!(tarball_requests(&upstream).iter().all(|(_, n)| *n == 1), "{:?}", tarball_requests(&upstream));
    mirror.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_record_pushed_out_of_the_plan_is_read_again_for_a_dependency() {
    // hexdemo_mid arrives first and is resolved; hexdemo_top, later, depends on it. With room
    // for no release the plan has to read hexdemo_mid's record again (with a TTL of zero, a
    // revalidation the upstream sees), and still plans, reports and fetches each thing once.
    let mut asked_for_mid = Vec::new();
    for recent_releases in [None, Some(1)] {
        let upstream = TestUpstream::start(demo_files("hexpm", "")).await;
        upstream.state.lock().unwrap().delays = vec![("/packages/hexdemo_top".into(), Duration::from_millis(400))];
        let mirror = TestMirror::builder()
            .upstream(&upstream.url())
            .registry_ttl("0s")
            .set("stale_while_revalidate", "0s")
            .start()
            .await;
        let (events, sink) = collect_events();
        let request = SyncRequest {
            packages: vec!["hexdemo_top".into(), "hexdemo_mid".into()],
            recent_releases,
            ..SyncRequest { all: false, ..all() }
        };
        let summary = hexmirror::sync::run(&mirror.mirror, &request, &sink).await;
        assert!(summary.ok(), "{summary:?}");
        let reported = |path: &str| {
            events
                .lock()
                .unwrap()
                .iter()
                .filter(|e| matches!(e, Event::Item { resource, .. } if resource == path))
                .count()
        };
        for record in ["/packages/hexdemo_top", "/packages/hexdemo_mid", "/packages/hexdemo_base"] {
            assert_eq!(reported(record), 1, "{record} reported {} times", reported(record));
        }
        let tarballs = tarball_requests(&upstream);
        assert_eq!(
            tarballs.iter().map(|(path, _)| *path).collect::<Vec<_>>(),
            [
                "/tarballs/hexdemo_base-1.1.0.tar",
                "/tarballs/hexdemo_mid-0.1.0.tar",
                "/tarballs/hexdemo_mid-0.2.0.tar",
                "/tarballs/hexdemo_top-2.0.0.tar",
                "/tarballs/hexdemo_top-2.0.1.tar"
            ],
            "recent_releases {recent_releases:?}"
        );
        assert!(tarballs.iter().all(|(_, n)| *n == 1), "{tarballs:?}");
        asked_for_mid.push(upstream.requests_for("/packages/hexdemo_mid"));
        mirror.stop().await;
    }
    assert_eq!(asked_for_mid, [1, 2], "hexdemo_mid's record asked for (kept, then pushed out)");
}
