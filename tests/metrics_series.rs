//! `/metrics` stays small as repositories are added: a budget of series on the default
//! configuration and per additional repository, and the families the Grafana board queries are
//! there before and after real traffic.

mod common;

use std::collections::BTreeSet;

use common::*;

/// Series on the default configuration (one repository, one upstream).
const DEFAULT_BUDGET: usize = 400;
/// Series each additional repository (with one upstream) may add.
const PER_REPO_BUDGET: usize = 150;

const DASHBOARD: &str = include_str!("../grafana/hexmirror.json");

/// Series in a text exposition: its lines that are neither comments nor empty.
fn series(text: &str) -> usize {
    text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')).count()
}

/// The series and bytes of `/metrics` at rest on a mirror with `extra` repositories besides
/// hexpm. Scraped twice: the first scrape is itself a request, counted after it is answered.
async fn scrape_at_rest(extra: usize) -> (usize, usize) {
    let upstream = TestUpstream::start(demo_files("hexpm", "")).await;
    let mut site = TestMirror::builder().upstream(&upstream.url());
    for i in 0..extra {
        site = site.repo(&format!("corp{i}"), RepoSpec::demo(&upstream.url()));
    }
    let mirror = site.start().await;
    mirror.metrics().await;
    let text = mirror.metrics().await;
    (series(&text), text.len())
}

#[tokio::test]
async fn series_stay_within_budget_as_repositories_are_added() {
    let (base, base_bytes) = scrape_at_rest(0).await;
    println!("default configuration: {base} series, {base_bytes} bytes");
    let mut more = Vec::new();
    for extra in [1, 3] {
        let (count, bytes) = scrape_at_rest(extra).await;
        println!("{extra} more repositories: {count} series, {bytes} bytes");
        more.push((extra, count));
    }
    assert!(base <= DEFAULT_BUDGET, "{base} series on the default configuration (budget {DEFAULT_BUDGET})");
    for (extra, count) in more {
        assert!(count > base, "repositories add their own label sets");
        assert!(
            count <= base + extra * PER_REPO_BUDGET,
            "{count} series with {extra} more repositories, {} per repository (budget {PER_REPO_BUDGET})",
            (count - base) / extra
        );
    }
}

/// Every `hexmirror_` name in the dashboard's queries, histogram series reduced to the family.
fn dashboard_families() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = DASHBOARD;
    while let Some(at) = rest.find("hexmirror_") {
        let len = rest[at..].find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len() - at);
        let name = &rest[at..at + len];
        let family = ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name);
        names.insert(family.to_string());
        rest = &rest[at + len..];
    }
    names
}

#[tokio::test]
async fn the_board_families_are_there_after_a_hit_a_miss_and_a_404() {
    let families = dashboard_families();
    assert!(families.len() >= 10, "{families:?}");
    let upstream = TestUpstream::start(demo_files("hexpm", "")).await;
    let mirror = TestMirror::builder().upstream(&upstream.url()).start().await;

    let at_rest = mirror.metrics().await;
    assert_eq!(mirror.get("/packages/hexdemo_mid").await.status, 200);
    let hit = mirror.get("/packages/hexdemo_mid").await;
    assert_eq!((hit.status, hit.header("x-cache")), (200, "hit"));
    assert_eq!(mirror.get("/packages/no_such_package").await.status, 404);
    let text = mirror.metrics().await;

    for family in &families {
        for (when, text) in [("at rest", &at_rest), ("after traffic", &text)] {
            let present = text.lines().any(|l| {
                l.strip_prefix(family.as_str()).is_some_and(|rest| {
                    rest.starts_with(['{', ' ']) || ["_bucket{", "_sum", "_count"].iter().any(|s| rest.starts_with(s))
                })
            });
            assert!(present, "{family} is not exported {when}");
        }
    }
    let requests = |needles: &[&str]| metric_sum(&text, "hexmirror_requests_total", needles);
    assert_eq!(requests(&["repo=\"hexpm\"", "resource=\"package\"", "cache=\"miss\"", "status_class=\"2xx\""]), 1.0);
    assert_eq!(requests(&["repo=\"hexpm\"", "resource=\"package\"", "cache=\"hit\"", "status_class=\"2xx\""]), 1.0);
    assert_eq!(requests(&["repo=\"hexpm\"", "resource=\"package\"", "cache=\"miss\"", "status_class=\"4xx\""]), 1.0);
    let latency = |cache: &str| {
        metric_sum(
            &text,
            "hexmirror_request_duration_seconds_count",
            &["resource=\"package\"", &format!("cache=\"{cache}\"")],
        )
    };
    assert_eq!((latency("hit"), latency("miss")), (1.0, 2.0));
}
