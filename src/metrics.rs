//! Every Prometheus metric family hexmirror exports, registered once at start-up.
//!
//! Labels come from closed sets only: configured repository names (hex.pm organizations count
//! under their parent repository), resource kinds, cache outcomes, status classes, verification
//! reasons. Never a package name, a path or a credential. Every label combination is touched at
//! start-up so each family shows zeros before its first event.

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::route::Kind;
use crate::verify::VerifyError;

/// The outcome of a request as far as the cache is concerned; also the `x-cache` header value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    /// Served from cache without asking the upstream.
    Hit,
    /// Fetched from the upstream (and verified) for this request.
    Miss,
    /// The upstream confirmed the cached copy (304).
    Revalidated,
    /// The upstream could not be asked; the last verified copy was served.
    Stale,
    /// A recent upstream 404 was remembered.
    Negative,
    /// The upstream's answer failed verification and was not served.
    Refused,
    /// The upstream failed and nothing was cached.
    Error,
    /// Answered by hexmirror itself (the configured public key).
    Local,
    /// The client was not authorized for private content.
    Denied,
    /// Not a repository request (bad path, method, operations endpoints).
    None,
}

impl CacheStatus {
    pub const ALL: [CacheStatus; 10] = [
        CacheStatus::Hit,
        CacheStatus::Miss,
        CacheStatus::Revalidated,
        CacheStatus::Stale,
        CacheStatus::Negative,
        CacheStatus::Refused,
        CacheStatus::Error,
        CacheStatus::Local,
        CacheStatus::Denied,
        CacheStatus::None,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "hit",
            CacheStatus::Miss => "miss",
            CacheStatus::Revalidated => "revalidated",
            CacheStatus::Stale => "stale",
            CacheStatus::Negative => "negative",
            CacheStatus::Refused => "refused",
            CacheStatus::Error => "error",
            CacheStatus::Local => "local",
            CacheStatus::Denied => "denied",
            CacheStatus::None => "none",
        }
    }
}

/// `2xx`, `3xx`, `4xx`, `5xx`.
pub fn status_class(status: u16) -> &'static str {
    match status {
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

pub const STATUS_CLASSES: [&str; 4] = ["2xx", "3xx", "4xx", "5xx"];
pub const UPSTREAM_STATUS_CLASSES: [&str; 5] = ["2xx", "3xx", "4xx", "5xx", "error"];
/// The repository label for requests that name no valid repository.
pub const NO_REPO: &str = "none";
/// The resource label for requests that name no valid resource.
pub const NO_RESOURCE: &str = "none";

/// Why a stale copy was served: `revalidating` (within `stale_while_revalidate`, a background
/// revalidation runs) or `error` (the upstream was down, timed out, or answered 5xx or 429).
pub const STALE_REASONS: [&str; 2] = ["revalidating", "error"];

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub upstream_requests: IntCounterVec,
    pub upstream_duration: HistogramVec,
    pub upstream_inflight: IntGauge,
    pub upstream_up: IntGaugeVec,
    pub breaker_openings: IntCounterVec,
    pub pending_fetches: IntGauge,
    pub fetches_rejected: IntCounter,
    pub fetches_cancelled: IntCounter,
    pub verification_failures: IntCounterVec,
    pub cache_bytes: IntGaugeVec,
    pub cache_entries: IntGaugeVec,
    pub cache_evictions: IntCounterVec,
    pub served_bytes: IntCounterVec,
    pub coalesced_waiters: IntCounter,
    pub stale_served: IntCounterVec,
    pub store_write_errors: IntCounter,
    pub store_degraded: IntGauge,
    pub sync_last_success: Gauge,
    pub sync_items: IntGaugeVec,
    pub build_info: IntGaugeVec,
    pub start_time: Gauge,
    pub connections: IntGauge,
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry.register(Box::new(c.clone())).expect("metric registered once");
    c
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry.register(Box::new(g.clone())).expect("metric registered once");
    g
}

const LATENCY_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

impl Metrics {
    /// Registers every family and initialises every label set for the given repository names.
    pub fn new(repos: &[&str], upstreams: &[(&str, String)]) -> Metrics {
        let registry = Registry::new();
        let requests = counter_vec(
            &registry,
            "hexmirror_requests_total",
            "Client requests by repository, resource kind, method, status class and cache outcome.",
            &["repo", "resource", "method", "status_class", "cache"],
        );
        let request_duration = HistogramVec::new(
            HistogramOpts::new("hexmirror_request_duration_seconds", "Time to answer a client request.")
                .buckets(LATENCY_BUCKETS.to_vec()),
            &["resource", "cache"],
        )
        .expect("valid metric");
        registry.register(Box::new(request_duration.clone())).expect("metric registered once");
        let upstream_requests = counter_vec(
            &registry,
            "hexmirror_upstream_requests_total",
            "Requests to upstream repositories by repository, upstream and status class (error: no answer).",
            &["repo", "upstream", "status_class"],
        );
        let upstream_duration = HistogramVec::new(
            HistogramOpts::new(
                "hexmirror_upstream_request_duration_seconds",
                "Time for an upstream request, body included.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["repo"],
        )
        .expect("valid metric");
        registry.register(Box::new(upstream_duration.clone())).expect("metric registered once");
        let upstream_inflight =
            IntGauge::new("hexmirror_upstream_inflight", "Upstream requests in progress.").expect("valid metric");
        registry.register(Box::new(upstream_inflight.clone())).expect("metric registered once");
        let upstream_up = gauge_vec(
            &registry,
            "hexmirror_upstream_up",
            "1 while an upstream's circuit breaker is closed (requests go to it), 0 while it is open.",
            &["repo", "upstream"],
        );
        let breaker_openings = counter_vec(
            &registry,
            "hexmirror_upstream_breaker_openings_total",
            "Times an upstream's circuit breaker opened after consecutive failures.",
            &["repo", "upstream"],
        );
        let pending_fetches = IntGauge::new(
            "hexmirror_pending_fetches",
            "Upstream fetches started for clients and not finished (running or waiting for a connection).",
        )
        .expect("valid metric");
        registry.register(Box::new(pending_fetches.clone())).expect("metric registered once");
        let fetches_rejected = IntCounter::new(
            "hexmirror_fetches_rejected_total",
            "Cold misses answered 503 at once because max_pending_fetches fetches were already pending.",
        )
        .expect("valid metric");
        registry.register(Box::new(fetches_rejected.clone())).expect("metric registered once");
        let fetches_cancelled = IntCounter::new(
            "hexmirror_fetches_cancelled_total",
            "Upstream fetches cancelled because no client waited for them any more.",
        )
        .expect("valid metric");
        registry.register(Box::new(fetches_cancelled.clone())).expect("metric registered once");
        let verification_failures = counter_vec(
            &registry,
            "hexmirror_verification_failures_total",
            "Upstream answers refused by verification, by repository, resource kind and reason.",
            &["repo", "resource", "reason"],
        );
        let cache_bytes = gauge_vec(&registry, "hexmirror_cache_bytes", "Bytes held by each cache tier.", &["tier"]);
        let cache_entries =
            gauge_vec(&registry, "hexmirror_cache_entries", "Entries held by each cache tier.", &["tier"]);
        let cache_evictions = counter_vec(
            &registry,
            "hexmirror_cache_evictions_total",
            "Entries evicted to stay within a tier's size budget.",
            &["tier"],
        );
        let served_bytes = counter_vec(
            &registry,
            "hexmirror_served_bytes_total",
            "Body bytes sent to clients, by where they came from.",
            &["source"],
        );
        let coalesced_waiters = IntCounter::new(
            "hexmirror_coalesced_waiters_total",
            "Requests that waited for another request's upstream fetch instead of making their own.",
        )
        .expect("valid metric");
        registry.register(Box::new(coalesced_waiters.clone())).expect("metric registered once");
        let stale_served = counter_vec(
            &registry,
            "hexmirror_stale_served_total",
            "Responses served from a stale copy: while a background revalidation runs (reason=revalidating), or because the upstream could not be asked (reason=error).",
            &["repo", "reason"],
        );
        let store_write_errors = IntCounter::new(
            "hexmirror_store_write_errors_total",
            "Failed writes to the persistent tier (the entry was still served from memory).",
        )
        .expect("valid metric");
        registry.register(Box::new(store_write_errors.clone())).expect("metric registered once");
        let store_degraded = IntGauge::new(
            "hexmirror_store_degraded",
            "1 while the persistent tier refuses writes (full or read-only disk), else 0.",
        )
        .expect("valid metric");
        registry.register(Box::new(store_degraded.clone())).expect("metric registered once");
        let sync_last_success = Gauge::new(
            "hexmirror_sync_last_success_timestamp_seconds",
            "Unix time of the last sync or import that completed without failures.",
        )
        .expect("valid metric");
        registry.register(Box::new(sync_last_success.clone())).expect("metric registered once");
        let sync_items =
            gauge_vec(&registry, "hexmirror_sync_items", "Items of the current or last sync, by state.", &["state"]);
        let build_info =
            gauge_vec(&registry, "hexmirror_build_info", "Always 1; labelled with the version.", &["version"]);
        let start_time =
            Gauge::new("hexmirror_start_time_seconds", "Unix time the process started.").expect("valid metric");
        registry.register(Box::new(start_time.clone())).expect("metric registered once");
        let connections =
            IntGauge::new("hexmirror_client_connections", "Open client connections.").expect("valid metric");
        registry.register(Box::new(connections.clone())).expect("metric registered once");

        let metrics = Metrics {
            registry,
            requests,
            request_duration,
            upstream_requests,
            upstream_duration,
            upstream_inflight,
            upstream_up,
            breaker_openings,
            pending_fetches,
            fetches_rejected,
            fetches_cancelled,
            verification_failures,
            cache_bytes,
            cache_entries,
            cache_evictions,
            served_bytes,
            coalesced_waiters,
            stale_served,
            store_write_errors,
            store_degraded,
            sync_last_success,
            sync_items,
            build_info,
            start_time,
            connections,
        };
        metrics.initialise(repos, upstreams);
        metrics
    }

    fn initialise(&self, repos: &[&str], upstreams: &[(&str, String)]) {
        let mut resources: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
        resources.push(NO_RESOURCE);
        let mut repo_labels: Vec<&str> = repos.to_vec();
        repo_labels.push(NO_REPO);
        for repo in &repo_labels {
            for resource in &resources {
                for method in ["GET", "HEAD"] {
                    for class in STATUS_CLASSES {
                        for cache in CacheStatus::ALL {
                            self.requests.with_label_values(&[repo, resource, method, class, cache.as_str()]);
                        }
                    }
                }
            }
        }
        for resource in &resources {
            for cache in CacheStatus::ALL {
                self.request_duration.with_label_values(&[resource, cache.as_str()]);
            }
        }
        for (repo, upstream) in upstreams {
            for class in UPSTREAM_STATUS_CLASSES {
                self.upstream_requests.with_label_values(&[repo, upstream.as_str(), class]);
            }
            self.upstream_up.with_label_values(&[repo, upstream.as_str()]).set(1);
            self.breaker_openings.with_label_values(&[repo, upstream.as_str()]);
        }
        for repo in repos {
            self.upstream_duration.with_label_values(&[repo]);
            for reason in STALE_REASONS {
                self.stale_served.with_label_values(&[repo, reason]);
            }
            for kind in Kind::ALL {
                for reason in VerifyError::REASONS {
                    self.verification_failures.with_label_values(&[repo, kind.as_str(), reason]);
                }
            }
        }
        for tier in ["memory", "disk"] {
            self.cache_bytes.with_label_values(&[tier]);
            self.cache_entries.with_label_values(&[tier]);
            self.cache_evictions.with_label_values(&[tier]);
        }
        for source in ["cache", "upstream"] {
            self.served_bytes.with_label_values(&[source]);
        }
        for state in ["done", "failed", "pending"] {
            self.sync_items.with_label_values(&[state]);
        }
        self.build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        self.start_time.set(crate::cache::unix_now() as f64);
    }

    /// The text exposition of every family.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out).expect("text encoding cannot fail");
        String::from_utf8(out).expect("prometheus text is utf-8")
    }

    pub fn observe_request(
        &self,
        repo: &str,
        resource: &str,
        method: &str,
        status: u16,
        cache: CacheStatus,
        seconds: f64,
    ) {
        self.requests.with_label_values(&[repo, resource, method, status_class(status), cache.as_str()]).inc();
        self.request_duration.with_label_values(&[resource, cache.as_str()]).observe(seconds);
    }
}

/// A histogram timer that does not depend on a label set being known up front.
pub fn histogram(h: &HistogramVec, labels: &[&str]) -> Histogram {
    h.with_label_values(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_show_zeros_before_any_event() {
        let m = Metrics::new(&["hexpm", "corp"], &[("hexpm", "repo.hex.pm:443".into())]);
        let text = m.render();
        for needle in [
            "hexmirror_requests_total{cache=\"hit\",method=\"GET\",repo=\"corp\",resource=\"tarball\",status_class=\"2xx\"} 0",
            "hexmirror_verification_failures_total{reason=\"bad_signature\",repo=\"hexpm\",resource=\"package\"} 0",
            "hexmirror_upstream_requests_total{repo=\"hexpm\",status_class=\"5xx\",upstream=\"repo.hex.pm:443\"} 0",
            "hexmirror_cache_bytes{tier=\"disk\"} 0",
            "hexmirror_coalesced_waiters_total 0",
            "hexmirror_stale_served_total{reason=\"revalidating\",repo=\"corp\"} 0",
            "hexmirror_stale_served_total{reason=\"error\",repo=\"corp\"} 0",
            "hexmirror_build_info{version=",
            "hexmirror_request_duration_seconds_bucket{cache=\"miss\",resource=\"package\",le=\"0.001\"} 0",
            "hexmirror_sync_items{state=\"failed\"} 0",
        ] {
            assert!(text.contains(needle), "missing {needle}");
        }
    }

    #[test]
    fn every_family_name_is_prefixed() {
        let m = Metrics::new(&["hexpm"], &[]);
        for line in m.render().lines().filter(|l| !l.starts_with('#')) {
            assert!(line.starts_with("hexmirror_"), "{line}");
        }
    }

    #[test]
    fn status_classes() {
        assert_eq!(status_class(200), "2xx");
        assert_eq!(status_class(304), "3xx");
        assert_eq!(status_class(404), "4xx");
        assert_eq!(status_class(502), "5xx");
    }
}
