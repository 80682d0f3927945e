//! Every Prometheus metric family hexmirror exports, registered once at start-up.
//!
//! Labels come from closed sets only: configured repository names (hex.pm organizations count
//! under their parent repository), resource kinds, cache outcomes, status classes, verification
//! reasons. Never a package name, a path or a credential.
//!
//! Only label sets that can occur are touched at start-up, so that a counter's first event is
//! an increase from zero: for each repository and resource kind, every cache outcome the kind
//! can have ([`outcomes`]) with every status class an unconditional GET can then be answered
//! with ([`possible`]), and every reason verification can refuse the kind for
//! ([`refusal_reasons`]). A HEAD request or a 304 (only a conditional request gets one) adds
//! its series when it first happens, as does a histogram's label set (a latency distribution
//! loses nothing by starting at its first observation): those present from the start are the
//! operations endpoints' request latency and each repository's upstream latency. The default
//! configuration exports fewer than 400 series, and each further repository fewer than 150
//! (`tests/metrics_series.rs` holds that budget).

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::route::Kind;

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
    /// The supply-chain policy blocks the release (403).
    Blocked,
    /// Not a repository request (bad path, method, operations endpoints).
    None,
}

impl CacheStatus {
    pub const ALL: [CacheStatus; 11] = [
        CacheStatus::Hit,
        CacheStatus::Miss,
        CacheStatus::Revalidated,
        CacheStatus::Stale,
        CacheStatus::Negative,
        CacheStatus::Refused,
        CacheStatus::Error,
        CacheStatus::Local,
        CacheStatus::Denied,
        CacheStatus::Blocked,
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
            CacheStatus::Blocked => "blocked",
            CacheStatus::None => "none",
        }
    }
}

/// Whether a request counted under `cache` can be answered with a status of `class`: what
/// `service.rs` answers for each outcome (its tests check the mapping against this table, and
/// debug builds check every request). `Metrics::initialise` touches nothing else.
pub fn possible(cache: CacheStatus, class: &str) -> bool {
    match cache {
        // Content: 200, or 304 when the client's If-None-Match names the same bytes.
        CacheStatus::Hit | CacheStatus::Revalidated | CacheStatus::Stale | CacheStatus::Local => {
            matches!(class, "2xx" | "3xx")
        }
        // Content, or the upstream's own 404 (or hex.pm's 403 for a missing object), as 404.
        CacheStatus::Miss => matches!(class, "2xx" | "3xx" | "4xx"),
        // 404: remembered, not in the verified record, not in an offline mirror's store.
        CacheStatus::Negative => class == "4xx",
        // 401.
        CacheStatus::Denied => class == "4xx",
        // 403.
        CacheStatus::Blocked => class == "4xx",
        // 502.
        CacheStatus::Refused => class == "5xx",
        // 500, 502, 503, 504.
        CacheStatus::Error => class == "5xx",
        // The operations endpoints (200; 503 while starting) and refused requests (400, 404, 405).
        CacheStatus::None => matches!(class, "2xx" | "4xx" | "5xx"),
    }
}

/// Every outcome of [`Mirror::get`](crate::mirror::Mirror::get) but `local`.
const FETCHED: &[CacheStatus] = &[
    CacheStatus::Hit,
    CacheStatus::Miss,
    CacheStatus::Revalidated,
    CacheStatus::Stale,
    CacheStatus::Negative,
    CacheStatus::Refused,
    CacheStatus::Error,
    CacheStatus::Denied,
];

/// The cache outcomes a request can have, by the kind of resource it names (`None`: it names
/// none, and its repository label is `none` too).
pub fn outcomes(kind: Option<Kind>) -> &'static [CacheStatus] {
    match kind {
        None => &[CacheStatus::None],
        // Answered by hexmirror itself, to anyone.
        Some(Kind::PublicKey) => &[CacheStatus::Local],
        // Docs are not signed, so never refused.
        Some(Kind::Docs) => &[
            CacheStatus::Hit,
            CacheStatus::Miss,
            CacheStatus::Revalidated,
            CacheStatus::Stale,
            CacheStatus::Negative,
            CacheStatus::Error,
            CacheStatus::Denied,
        ],
        // A tarball is valid exactly while it matches its verified record: never served stale.
        // The only resource the supply-chain policy blocks.
        Some(Kind::Tarball) => &[
            CacheStatus::Hit,
            CacheStatus::Miss,
            CacheStatus::Revalidated,
            CacheStatus::Negative,
            CacheStatus::Refused,
            CacheStatus::Error,
            CacheStatus::Denied,
            CacheStatus::Blocked,
        ],
        Some(_) => FETCHED,
    }
}

/// The kind a `resource` label names (`None` for `none`).
fn kind_of(resource: &str) -> Option<Kind> {
    Kind::ALL.into_iter().find(|k| k.as_str() == resource)
}

/// Whether a request can be counted under these labels: a repository exactly when a resource,
/// an outcome of [`outcomes`] for the resource, a status class [`possible`] for the outcome.
pub fn can_occur(repo: &str, resource: &str, status_class: &str, cache: CacheStatus) -> bool {
    (repo == NO_REPO) == (resource == NO_RESOURCE)
        && outcomes(kind_of(resource)).contains(&cache)
        && possible(cache, status_class)
}

/// The `reason`s verification can refuse an upstream answer for, by the kind of the resource
/// verified (the package record a tarball request needed counts as `package`): what the
/// `verify` function `Mirror::verify_content` calls for the kind can fail with.
pub fn refusal_reasons(kind: Kind) -> &'static [&'static str] {
    // `verify::registry_file`: the declared size, gunzip, the `Signed` envelope, the payload.
    const REGISTRY: &[&str] = &[
        "gzip",
        "trailing_data",
        "too_large",
        "size_mismatch",
        "decode",
        "missing_signature",
        "bad_signature",
        "wrong_repository",
    ];
    // The same, for a payload that names the package or policy it is for.
    const NAMED: &[&str] = &[
        "gzip",
        "trailing_data",
        "too_large",
        "size_mismatch",
        "decode",
        "missing_signature",
        "bad_signature",
        "wrong_repository",
        "wrong_name",
    ];
    match kind {
        Kind::Names | Kind::Versions => REGISTRY,
        Kind::Package | Kind::Policy => NAMED,
        // `verify::tarball`: the size, the outer checksum or the inner one (read from the tar).
        Kind::Tarball => &["too_large", "decode", "checksum_mismatch"],
        // `verify::registry_v1` and `registry_v1_signature`: the hex signature, header or file.
        Kind::RegistryV1 => &["decode", "missing_signature", "bad_signature"],
        // `verify::installs_csv`, `installs_signature` and `installer`.
        Kind::Installs => &["decode", "missing_signature", "bad_signature", "too_large", "checksum_mismatch"],
        // Docs are not verified; the public key is never fetched.
        Kind::Docs | Kind::PublicKey => &[],
    }
}

/// The status classes a request counted under `cache` is initialised with: those an
/// unconditional GET can get (a 304 answers a conditional request only).
fn initial_classes(cache: CacheStatus) -> impl Iterator<Item = &'static str> {
    STATUS_CLASSES.into_iter().filter(move |class| *class != "3xx" && possible(cache, class))
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
    pub shared_waits: IntCounter,
    pub disk_pinned_over_budget: IntGauge,
    pub offline_missing: IntCounterVec,
    pub policy_blocks: IntCounterVec,
    pub policy_reported: IntCounterVec,
    pub policy_reload_errors: IntCounter,
    pub sync_last_success: Gauge,
    pub sync_items: IntGaugeVec,
    pub build_info: IntGaugeVec,
    pub start_time: Gauge,
    pub connections: IntGauge,
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(registry, IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"))
}

/// Registers one metric (a family without labels) and hands it back.
fn register<M: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: M) -> M {
    registry.register(Box::new(metric.clone())).expect("metric registered once");
    metric
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register(registry, IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"))
}

/// Client latency: from a hit in memory (under a millisecond) to a large tarball fetched cold
/// or a transfer timing out.
const LATENCY_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// Upstream latency: an HTTP exchange with its body takes a millisecond at least, even from a
/// hexmirror next door, so the two finest client buckets would only cost series per repository.
const UPSTREAM_BUCKETS: &[f64] = LATENCY_BUCKETS.split_at(2).1;

impl Metrics {
    /// Registers every family and initialises the label sets that can occur for the given
    /// repositories and their upstreams (see the module docs).
    pub fn new(repos: &[&str], upstreams: &[(&str, String)]) -> Metrics {
        let registry = Registry::new();
        let requests = counter_vec(
            &registry,
            "hexmirror_requests_total",
            "Client requests by repository, resource kind, method, status class and cache outcome.",
            &["repo", "resource", "method", "status_class", "cache"],
        );
        let request_duration = register(
            &registry,
            HistogramVec::new(
                HistogramOpts::new("hexmirror_request_duration_seconds", "Time to answer a client request.")
                    .buckets(LATENCY_BUCKETS.to_vec()),
                &["resource", "cache"],
            )
            .expect("valid metric"),
        );
        let upstream_requests = counter_vec(
            &registry,
            "hexmirror_upstream_requests_total",
            "Requests to upstream repositories by repository, upstream and status class (error: no answer).",
            &["repo", "upstream", "status_class"],
        );
        let upstream_duration = register(
            &registry,
            HistogramVec::new(
                HistogramOpts::new(
                    "hexmirror_upstream_request_duration_seconds",
                    "Time for an upstream request, body included.",
                )
                .buckets(UPSTREAM_BUCKETS.to_vec()),
                &["repo"],
            )
            .expect("valid metric"),
        );
        let upstream_inflight = register(
            &registry,
            IntGauge::new("hexmirror_upstream_inflight", "Upstream requests in progress.").expect("valid metric"),
        );
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
        let pending_fetches = register(
            &registry,
            IntGauge::new(
                "hexmirror_pending_fetches",
                "Upstream fetches started for clients and not finished (running or waiting for a connection).",
            )
            .expect("valid metric"),
        );
        let fetches_rejected = register(
            &registry,
            IntCounter::new(
                "hexmirror_fetches_rejected_total",
                "Cold misses answered 503 at once because max_pending_fetches fetches were already pending.",
            )
            .expect("valid metric"),
        );
        let fetches_cancelled = register(
            &registry,
            IntCounter::new(
                "hexmirror_fetches_cancelled_total",
                "Upstream fetches cancelled because no client waited for them any more.",
            )
            .expect("valid metric"),
        );
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
        let coalesced_waiters = register(
            &registry,
            IntCounter::new(
                "hexmirror_coalesced_waiters_total",
                "Requests that waited for another request's upstream fetch instead of making their own.",
            )
            .expect("valid metric"),
        );
        let stale_served = counter_vec(
            &registry,
            "hexmirror_stale_served_total",
            "Responses served from a stale copy: while a background revalidation runs (reason=revalidating), or because the upstream could not be asked (reason=error).",
            &["repo", "reason"],
        );
        let store_write_errors = register(
            &registry,
            IntCounter::new(
                "hexmirror_store_write_errors_total",
                "Failed writes to the persistent tier (the entry was still served from memory).",
            )
            .expect("valid metric"),
        );
        let store_degraded = register(
            &registry,
            IntGauge::new(
                "hexmirror_store_degraded",
                "1 while the persistent tier refuses writes (full or read-only disk) or a shared store does not answer, else 0.",
            )
            .expect("valid metric"),
        );
        let shared_waits = register(
            &registry,
            IntCounter::new(
                "hexmirror_shared_fetch_waits_total",
                "Cold fetches answered with the entry another replica fetched into the shared store (no upstream request).",
            )
            .expect("valid metric"),
        );
        let disk_pinned_over_budget = register(
            &registry,
            IntGauge::new(
                "hexmirror_disk_pinned_over_budget",
                "1 while pinned (synced or imported) entries alone exceed disk_cache_bytes, so every other entry is evicted as soon as it is written; else 0.",
            )
            .expect("valid metric"),
        );
        let policy_blocks = counter_vec(
            &registry,
            "hexmirror_policy_blocks_total",
            "Tarballs refused (403) because the supply-chain policy blocks the release, by repository and rule.",
            &["repo", "rule"],
        );
        let policy_reported = counter_vec(
            &registry,
            "hexmirror_policy_reported_total",
            "Tarballs served that the policy would block under enforce = true, by repository and rule.",
            &["repo", "rule"],
        );
        let policy_reload_errors = register(
            &registry,
            IntCounter::new(
                "hexmirror_policy_reload_errors_total",
                "Policy rescans that failed (a bad rule or advisory file); the previous policy stays.",
            )
            .expect("valid metric"),
        );
        let offline_missing = counter_vec(
            &registry,
            "hexmirror_offline_missing_total",
            "Requests an offline mirror answered 404 because its store lacks the package record or the release (see `hexmirror missing`).",
            &["repo"],
        );
        let sync_last_success = register(
            &registry,
            Gauge::new(
                "hexmirror_sync_last_success_timestamp_seconds",
                "Unix time of the last sync or import that completed without failures.",
            )
            .expect("valid metric"),
        );
        let sync_items =
            gauge_vec(&registry, "hexmirror_sync_items", "Items of the current or last sync, by state.", &["state"]);
        let build_info =
            gauge_vec(&registry, "hexmirror_build_info", "Always 1; labelled with the version.", &["version"]);
        let start_time = register(
            &registry,
            Gauge::new("hexmirror_start_time_seconds", "Unix time the process started.").expect("valid metric"),
        );
        let connections = register(
            &registry,
            IntGauge::new("hexmirror_client_connections", "Open client connections.").expect("valid metric"),
        );

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
            shared_waits,
            disk_pinned_over_budget,
            offline_missing,
            policy_blocks,
            policy_reported,
            policy_reload_errors,
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
        // HEAD requests and 304s add their series at first use.
        for cache in outcomes(None) {
            for class in initial_classes(*cache) {
                self.requests.with_label_values(&[NO_REPO, NO_RESOURCE, "GET", class, cache.as_str()]);
            }
        }
        for repo in repos {
            for kind in Kind::ALL {
                for cache in outcomes(Some(kind)) {
                    for class in initial_classes(*cache) {
                        self.requests.with_label_values(&[repo, kind.as_str(), "GET", class, cache.as_str()]);
                    }
                }
            }
        }
        // Each scrape observes this one anyway; other latency label sets start at their first
        // observation.
        self.request_duration.with_label_values(&[NO_RESOURCE, CacheStatus::None.as_str()]);
        for (repo, upstream) in upstreams {
            for class in UPSTREAM_STATUS_CLASSES {
                self.upstream_requests.with_label_values(&[repo, upstream.as_str(), class]);
            }
            self.upstream_up.with_label_values(&[repo, upstream.as_str()]).set(1);
            self.breaker_openings.with_label_values(&[repo, upstream.as_str()]);
        }
        for repo in repos {
            self.upstream_duration.with_label_values(&[repo]);
            self.offline_missing.with_label_values(&[repo]);
            // `policy_reported` (enforce = false, a trial) adds its series at first use.
            for rule in crate::policy::RuleKind::ALL {
                self.policy_blocks.with_label_values(&[repo, rule.as_str()]);
            }
            for reason in STALE_REASONS {
                self.stale_served.with_label_values(&[repo, reason]);
            }
            for kind in Kind::ALL {
                for reason in refusal_reasons(kind) {
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
        debug_assert!(
            can_occur(repo, resource, status_class(status), cache),
            "a request for {resource:?} of {repo:?} answered {status} is counted as {:?}, which metrics::outcomes \
             and metrics::possible say cannot happen",
            cache.as_str()
        );
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
    use crate::verify::VerifyError;

    /// The label values of one series line, by name.
    fn labels(line: &str) -> std::collections::HashMap<&str, &str> {
        let (open, close) = (line.find('{').expect("labelled"), line.rfind('}').expect("labelled"));
        line[open + 1..close]
            .split(',')
            .filter_map(|pair| pair.split_once('='))
            .map(|(k, v)| (k, v.trim_matches('"')))
            .collect()
    }

    #[test]
    fn families_show_zeros_before_any_event() {
        let m = Metrics::new(&["hexpm", "corp"], &[("hexpm", "repo.hex.pm:443".into())]);
        let text = m.render();
        for needle in [
            "hexmirror_requests_total{cache=\"hit\",method=\"GET\",repo=\"corp\",resource=\"tarball\",status_class=\"2xx\"} 0",
            "hexmirror_requests_total{cache=\"miss\",method=\"GET\",repo=\"hexpm\",resource=\"package\",status_class=\"4xx\"} 0",
            "hexmirror_requests_total{cache=\"refused\",method=\"GET\",repo=\"hexpm\",resource=\"names\",status_class=\"5xx\"} 0",
            "hexmirror_requests_total{cache=\"none\",method=\"GET\",repo=\"none\",resource=\"none\",status_class=\"4xx\"} 0",
            "hexmirror_verification_failures_total{reason=\"bad_signature\",repo=\"hexpm\",resource=\"package\"} 0",
            "hexmirror_verification_failures_total{reason=\"checksum_mismatch\",repo=\"corp\",resource=\"tarball\"} 0",
            "hexmirror_upstream_requests_total{repo=\"hexpm\",status_class=\"5xx\",upstream=\"repo.hex.pm:443\"} 0",
            "hexmirror_upstream_up{repo=\"hexpm\",upstream=\"repo.hex.pm:443\"} 1",
            "hexmirror_upstream_breaker_openings_total{repo=\"hexpm\",upstream=\"repo.hex.pm:443\"} 0",
            "hexmirror_upstream_request_duration_seconds_bucket{repo=\"corp\",le=\"0.1\"} 0",
            "hexmirror_pending_fetches 0",
            "hexmirror_fetches_rejected_total 0",
            "hexmirror_fetches_cancelled_total 0",
            "hexmirror_cache_bytes{tier=\"disk\"} 0",
            "hexmirror_coalesced_waiters_total 0",
            "hexmirror_stale_served_total{reason=\"revalidating\",repo=\"corp\"} 0",
            "hexmirror_stale_served_total{reason=\"error\",repo=\"corp\"} 0",
            "hexmirror_build_info{version=",
            "hexmirror_request_duration_seconds_bucket{cache=\"none\",resource=\"none\",le=\"0.001\"} 0",
            "hexmirror_sync_items{state=\"failed\"} 0",
        ] {
            assert!(text.contains(needle), "missing {needle}");
        }
    }

    #[test]
    fn only_label_sets_that_can_occur_are_initialised() {
        let m = Metrics::new(&["hexpm", "corp"], &[("hexpm", "repo.hex.pm:443".into())]);
        let text = m.render();
        let (mut requests, mut refusals) = (0, 0);
        for line in text.lines().filter(|l| l.starts_with("hexmirror_requests_total{")) {
            let l = labels(line);
            let cache = CacheStatus::ALL.into_iter().find(|c| c.as_str() == l["cache"]).expect("a cache outcome");
            assert!(can_occur(l["repo"], l["resource"], l["status_class"], cache), "{line}");
            // HEAD requests and 304s add their series at first use.
            assert_eq!(l["method"], "GET", "{line}");
            assert_ne!(l["status_class"], "3xx", "{line}");
            requests += 1;
        }
        for line in text.lines().filter(|l| l.starts_with("hexmirror_verification_failures_total{")) {
            let l = labels(line);
            let kind = kind_of(l["resource"]).expect("a resource kind");
            assert!(refusal_reasons(kind).contains(&l["reason"]), "{line}");
            refusals += 1;
        }
        assert!(requests > 100 && refusals > 60, "{requests} request and {refusals} refusal label sets");
        for absent in [
            "cache=\"hit\",method=\"GET\",repo=\"hexpm\",resource=\"package\",status_class=\"5xx\"",
            "cache=\"local\",method=\"GET\",repo=\"hexpm\",resource=\"package\"",
            "cache=\"miss\",method=\"GET\",repo=\"hexpm\",resource=\"public_key\"",
            "cache=\"stale\",method=\"GET\",repo=\"hexpm\",resource=\"tarball\"",
            "cache=\"refused\",method=\"GET\",repo=\"hexpm\",resource=\"docs\"",
            "repo=\"none\",resource=\"names\"",
            "reason=\"checksum_mismatch\",repo=\"hexpm\",resource=\"names\"",
            "reason=\"unknown_release\"",
        ] {
            assert!(!text.contains(absent), "{absent} is initialised");
        }
    }

    #[test]
    fn the_tables_speak_of_labels_that_exist() {
        for kind in Kind::ALL {
            for reason in refusal_reasons(kind) {
                assert!(VerifyError::REASONS.contains(reason), "{reason} ({kind:?}) is not a VerifyError reason");
            }
            assert!(!outcomes(Some(kind)).is_empty());
            for cache in outcomes(Some(kind)) {
                assert!(STATUS_CLASSES.iter().any(|c| possible(*cache, c)), "{cache:?} has no status class");
                assert_ne!(*cache, CacheStatus::None, "{kind:?}");
            }
        }
        // Every outcome but `none` belongs to some resource kind, and every class to some outcome.
        for cache in CacheStatus::ALL {
            let kinds = Kind::ALL.into_iter().filter(|k| outcomes(Some(*k)).contains(&cache)).count();
            assert_eq!(kinds == 0, cache == CacheStatus::None, "{cache:?}");
        }
        for class in STATUS_CLASSES {
            assert!(CacheStatus::ALL.into_iter().any(|c| possible(c, class)), "{class}");
        }
    }

    /// What the `verify` functions `Mirror::verify_content` calls for each kind fail with, on
    /// bodies that are wrong in many ways, is in [`refusal_reasons`] for the kind.
    #[test]
    fn refusal_reasons_cover_what_verification_reports() {
        use crate::verify::{self, PublicKey, RegistryFile, ReleaseChecksum};
        use bytes::Bytes;
        use std::io::Write;

        const DEMO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/demo-repo");
        let read = |rel: &str| Bytes::from(std::fs::read(format!("{DEMO}/{rel}")).unwrap());
        let key = PublicKey::from_pem(verify::tests::TEST_PUB).unwrap();
        let gzip = |data: &[u8]| {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(data).unwrap();
            Bytes::from(enc.finish().unwrap())
        };
        let names = read("hexpm/names");
        let package = read("hexpm/packages/hexdemo_mid");
        let tarball = read("hexpm/tarballs/hexdemo_mid-0.2.0.tar");
        let mut trailing = names.to_vec();
        trailing.extend_from_slice(&names);
        let mut huge = gzip(b"x").to_vec();
        let at = huge.len() - 4;
        huge[at..].copy_from_slice(&u32::MAX.to_le_bytes());
        let bodies: Vec<Bytes> = vec![
            Bytes::new(),
            Bytes::from_static(b"<html>not found</html>"),
            gzip(b""),
            gzip(b"\x0a\x03abc"),
            gzip(&[0xff; 64]),
            names.clone(),
            package.clone(),
            read("hexpm/versions"),
            Bytes::from(trailing),
            Bytes::from(huge),
            Bytes::copy_from_slice(&names[..names.len() - 1]),
            tarball.clone(),
        ];
        let limit = 1 << 20;
        let check = |kind: Kind, result: Result<verify::Verified<verify::Body>, VerifyError>| {
            if let Err(e) = result {
                assert!(refusal_reasons(kind).contains(&e.reason()), "{kind:?} refused for {e:?}");
            }
        };
        // `verify_content` refuses a registry file by its declared size before inflating it.
        let declared = |kind: Kind, body: &[u8]| match verify::declared_size(body) {
            Ok(size) if size > limit => check(kind, Err(VerifyError::TooLarge { limit })),
            Ok(_) => {}
            Err(e) => check(kind, Err(e)),
        };
        for body in &bodies {
            for origin in ["hexpm", "acme"] {
                for (kind, file) in [
                    (Kind::Names, RegistryFile::Names),
                    (Kind::Versions, RegistryFile::Versions),
                    (Kind::Package, RegistryFile::Package("hexdemo_mid")),
                    (Kind::Package, RegistryFile::Package("other")),
                    (Kind::Policy, RegistryFile::Policy("hexdemo_mid")),
                ] {
                    declared(kind, body);
                    check(kind, verify::registry_file(file, origin, body.clone(), &key, limit));
                }
            }
            for max in [1, limit] {
                for sum in [ReleaseChecksum::Outer([0; 32]), ReleaseChecksum::Inner([0; 32])] {
                    check(Kind::Tarball, verify::tarball(body.clone(), &sum, max));
                }
                check(Kind::Installs, verify::installer(body.clone(), "00", max));
            }
            for signature in ["zz", "00ff", &hex::encode(body)] {
                check(Kind::RegistryV1, verify::registry_v1(body.clone(), signature, &key));
                check(Kind::Installs, verify::installs_csv(body.clone(), signature.as_bytes(), &key));
            }
            check(Kind::RegistryV1, verify::registry_v1_signature(body.clone(), &names, &key));
            check(Kind::Installs, verify::installs_signature(body.clone(), &names, &key));
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
