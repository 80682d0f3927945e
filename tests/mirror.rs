//! The verified pull-through mirror against a local upstream serving the demo repository.

mod common;

use std::time::Duration;

use common::*;

/// A mirror in front of an upstream serving hex.pm and the organization `acme`.
async fn setup() -> (TestUpstream, TestMirror) {
    setup_with(|site| site).await
}

async fn setup_with(configure: impl FnOnce(MirrorBuilder) -> MirrorBuilder) -> (TestUpstream, TestMirror) {
    let upstream = TestUpstream::start(hexpm_and_acme_files()).await;
    let mirror = configure(TestMirror::builder().upstream(&upstream.url())).start().await;
    (upstream, mirror)
}

#[tokio::test]
async fn responses_are_byte_identical_to_the_upstream() {
    let (upstream, mirror) = setup().await;
    for path in HEXPM_PATHS {
        let got = mirror.get(path).await;
        assert_eq!(got.status, 200, "{path}");
        let want = upstream.state.lock().unwrap().files[*path].clone();
        assert_eq!(got.body, want, "{path}");
        assert_eq!(got.header("content-type"), "application/octet-stream");
        assert!(got.header("etag").starts_with('"'), "{path} needs a strong etag");
        assert_eq!(got.header("x-cache"), "miss", "{path}");
        assert_eq!(got.header("content-encoding"), "");
    }
}

#[tokio::test]
async fn organization_under_repos_is_fetched_from_the_upstream_repos_path() {
    // As on hex.pm: an organization's files need one of its keys, and are private.
    let upstream = TestUpstream::start(hexpm_and_acme_files()).await;
    {
        let mut s = upstream.state.lock().unwrap();
        s.protected_prefix = Some("/repos/acme/".into());
        s.allowed = vec!["acme-member-key".into()];
    }
    let hexpm = RepoSpec::demo(&upstream.url()).trusted().allow_http();
    let mirror = TestMirror::builder().repo(hexmirror::config::HEXPM, hexpm).start().await;
    let member = [("authorization", "acme-member-key")];
    for rel in ["/names", "/packages/hexdemo_mid", "/tarballs/hexdemo_mid-0.2.0.tar"] {
        let got = get(&mirror.url(&format!("/repos/acme{rel}")), &member).await;
        assert_eq!(got.status, 200, "{rel}");
        assert_eq!(got.body, demo_file("acme", rel.trim_start_matches('/')));
        assert_eq!(upstream.requests_for(&format!("/repos/acme{rel}")), 1);
    }
    // The hexpm flavour's record says repository "hexpm": served under the org it is refused.
    upstream.set_file("/repos/acme/packages/hexdemo_top", demo_file("hexpm", "packages/hexdemo_top"));
    assert_eq!(get(&mirror.url("/repos/acme/packages/hexdemo_top"), &member).await.status, 502);
}

#[tokio::test]
async fn configured_repository_is_served_under_repos_name() {
    let corp = TestUpstream::start(demo_files("acme", "")).await;
    let (hexpm, mirror) = setup_with(|site| site.repo("corp", RepoSpec::acme(&corp.url()))).await;
    let got = mirror.get("/repos/corp/tarballs/hexdemo_top-2.0.1.tar").await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body, demo_file("acme", "tarballs/hexdemo_top-2.0.1.tar"));
    assert_eq!(corp.requests_for("/tarballs/hexdemo_top-2.0.1.tar"), 1);
    assert_eq!(hexpm.total_requests(), 0, "a configured repository wins over a hex.pm organization");
}

#[tokio::test]
async fn a_hit_does_not_touch_the_upstream() {
    let (upstream, mirror) = setup().await;
    for path in HEXPM_PATHS {
        mirror.get(path).await;
    }
    let before = upstream.total_requests();
    for path in HEXPM_PATHS {
        let got = mirror.get(path).await;
        assert_eq!(got.header("x-cache"), "hit", "{path}");
    }
    assert_eq!(upstream.total_requests(), before);
    let metrics = mirror.metrics().await;
    assert!(metric_sum(&metrics, "hexmirror_requests_total", &["cache=\"hit\""]) >= HEXPM_PATHS.len() as f64);
}

#[tokio::test]
async fn tampered_registry_file_is_refused_and_never_cached() {
    let (upstream, mirror) = setup().await;
    let good = demo_file("hexpm", "packages/hexdemo_mid");
    upstream.set_file("/packages/hexdemo_mid", tamper_signed(&good));
    let got = mirror.get("/packages/hexdemo_mid").await;
    assert_eq!(got.status, 502);
    assert_eq!(got.header("x-cache"), "refused");
    assert!(String::from_utf8_lossy(&got.body).contains("signature"), "{:?}", got.body);
    // Refusals are not remembered: the repaired upstream is picked up at once.
    upstream.set_file("/packages/hexdemo_mid", good.clone());
    let got = mirror.get("/packages/hexdemo_mid").await;
    assert_eq!((got.status, got.header("x-cache")), (200, "miss"));
    assert_eq!(got.body, good);
    let metrics = mirror.metrics().await;
    assert_eq!(metric_sum(&metrics, "hexmirror_verification_failures_total", &["reason=\"bad_signature\""]), 1.0);
    assert_eq!(mirror.mirror.refusals().len(), 1);
}

#[tokio::test]
async fn refusals_name_the_url_and_time_and_are_kept_across_restarts() {
    let (upstream, mirror) = setup().await;
    upstream.set_file("/packages/hexdemo_mid", tamper_signed(&demo_file("hexpm", "packages/hexdemo_mid")));
    assert_eq!(mirror.get("/packages/hexdemo_mid").await.status, 502);
    let refusal = mirror.mirror.refusals().remove(0);
    assert_eq!(refusal.upstream, format!("{}/packages/hexdemo_mid", upstream.url()));
    // RFC 3339 with milliseconds, in UTC.
    let time = humantime::parse_rfc3339(&refusal.time).unwrap();
    assert!(refusal.time.ends_with('Z') && refusal.time.contains('.'), "{}", refusal.time);
    assert!(time.elapsed().unwrap() < std::time::Duration::from_secs(60));
    let site = mirror.site().clone();
    // Saved in the background: wait for it, then read it without a server, and after a restart.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let saved = mirror.mirror.saved_refusals().await.unwrap();
        if saved.len() == 1 {
            assert_eq!(saved[0].upstream, refusal.upstream);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the refusal was not saved");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    mirror.stop().await;
    let out = run_hexmirror(&site.write_config(), &["refusals"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("/packages/hexdemo_mid") && text.contains(&refusal.time), "{text}");
    let again = site.start().await;
    let kept = again.mirror.refusals();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(kept[0].reason, refusal.reason);
    again.stop().await;
}

#[tokio::test]
async fn refusals_saved_in_the_background_land_in_order_before_the_store_closes() {
    let (upstream, mirror) = setup().await;
    upstream.set_file("/packages/hexdemo_mid", tamper_signed(&demo_file("hexpm", "packages/hexdemo_mid")));
    for _ in 0..12 {
        assert_eq!(mirror.get("/packages/hexdemo_mid").await.status, 502);
    }
    let refused = mirror.mirror.refusals().len();
    assert!(refused > 1, "{refused} refusals");
    // Stopped at once: every save must have landed (the newest last) and the store be closed,
    // so the same store opens again at once and holds all of them.
    let site = mirror.site().clone();
    mirror.stop().await;
    let again = site.try_start().await.expect("the store is closed once the server has stopped");
    assert_eq!(again.mirror.refusals().len(), refused, "the newest save landed last");
    again.stop().await;
}

#[tokio::test]
async fn wrong_origin_and_another_packages_record_are_refused() {
    let (upstream, mirror) = setup().await;
    // Validly signed, but for the organization `acme`.
    upstream.set_file("/packages/hexdemo_mid", demo_file("acme", "packages/hexdemo_mid"));
    let got = mirror.get("/packages/hexdemo_mid").await;
    assert_eq!(got.status, 502);
    assert!(String::from_utf8_lossy(&got.body).contains("repository"));
    // Validly signed, right repository, but another package's record.
    upstream.set_file("/packages/hexdemo_top", demo_file("hexpm", "packages/hexdemo_base"));
    let got = mirror.get("/packages/hexdemo_top").await;
    assert_eq!(got.status, 502);
    assert!(String::from_utf8_lossy(&got.body).contains("hexdemo_base"));
    let metrics = mirror.metrics().await;
    assert_eq!(metric_sum(&metrics, "hexmirror_verification_failures_total", &["reason=\"wrong_repository\""]), 1.0);
    assert_eq!(metric_sum(&metrics, "hexmirror_verification_failures_total", &["reason=\"wrong_name\""]), 1.0);
    // Neither reached the store.
    assert!(mirror.stored().await.iter().all(|(k, _)| !k.as_str().contains("packages/hexdemo_")));
}

#[tokio::test]
async fn tampered_truncated_and_swapped_tarballs_are_refused_and_never_cached() {
    let (upstream, mirror) = setup().await;
    let path = "/tarballs/hexdemo_mid-0.2.0.tar";
    let good = demo_file("hexpm", "tarballs/hexdemo_mid-0.2.0.tar");
    let mut flipped = good.clone();
    flipped[700] ^= 1;
    let truncated = good[..good.len() - 1024].to_vec();
    let swapped = demo_file("hexpm", "tarballs/hexdemo_mid-0.1.0.tar");
    for bad in [flipped, truncated, swapped] {
        upstream.set_file(path, bad);
        let got = mirror.get(path).await;
        assert_eq!(got.status, 502);
        assert_eq!(got.header("x-cache"), "refused");
        assert!(String::from_utf8_lossy(&got.body).contains("checksum mismatch"));
    }
    upstream.set_file(path, good.clone());
    let got = mirror.get(path).await;
    assert_eq!((got.status, got.header("x-cache")), (200, "miss"));
    assert_eq!(got.body, good);
}

#[tokio::test]
async fn tarball_of_an_unknown_release_is_404_without_fetching_it() {
    let (upstream, mirror) = setup().await;
    upstream.set_file("/tarballs/hexdemo_mid-9.9.9.tar", b"anything".to_vec());
    // With the record held, the record alone answers. (With the record cold, the tarball is
    // asked for alongside it and then discarded: tests/pressure.rs.)
    assert_eq!(mirror.get("/packages/hexdemo_mid").await.status, 200);
    let got = mirror.get("/tarballs/hexdemo_mid-9.9.9.tar").await;
    assert_eq!(got.status, 404);
    assert_eq!(upstream.requests_for("/tarballs/hexdemo_mid-9.9.9.tar"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hundred_concurrent_cold_requests_make_one_upstream_request() {
    let (upstream, mirror) = setup().await;
    upstream.state.lock().unwrap().delay = Duration::from_millis(200);
    let path = "/tarballs/hexdemo_top-2.0.1.tar";
    let want = demo_file("hexpm", "tarballs/hexdemo_top-2.0.1.tar");
    let url = mirror.url(path);
    let tasks: Vec<_> = (0..100).map(|_| tokio::spawn(get_owned(url.clone()))).collect();
    for task in tasks {
        let got = task.await.unwrap();
        assert_eq!(got.status, 200);
        assert_eq!(got.body, want);
    }
    assert_eq!(upstream.requests_for(path), 1);
    assert_eq!(upstream.requests_for("/packages/hexdemo_top"), 1);
    let metrics = mirror.metrics().await;
    assert!(metric_sum(&metrics, "hexmirror_coalesced_waiters_total", &[]) >= 1.0);
}

async fn get_owned(url: String) -> Fetched {
    get(&url, &[]).await
}

#[tokio::test]
async fn restart_serves_from_disk_with_the_upstream_gone() {
    let (upstream, mirror) = setup().await;
    for path in HEXPM_PATHS {
        assert_eq!(mirror.get(path).await.status, 200);
    }
    let site = mirror.site().clone();
    mirror.stop().await;
    upstream.stop();
    let mirror = site.start().await;
    for path in HEXPM_PATHS {
        let got = mirror.get(path).await;
        assert_eq!(got.status, 200, "{path}");
        assert_eq!(got.header("x-cache"), "hit", "{path}");
        assert_eq!(got.body, upstream.state.lock().unwrap().files[*path]);
    }
}

#[tokio::test]
async fn stale_copy_is_served_when_the_upstream_dies_after_the_ttl() {
    let upstream = TestUpstream::start(demo_files("hexpm", "")).await;
    let mirror = TestMirror::builder().upstream(&upstream.url()).registry_ttl("1s").start().await;
    assert_eq!(mirror.get("/packages/hexdemo_mid").await.status, 200);
    upstream.stop();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let got = mirror.get("/packages/hexdemo_mid").await;
    assert_eq!(got.status, 200);
    assert_eq!(got.header("x-cache"), "stale");
    assert_eq!(got.body, demo_file("hexpm", "packages/hexdemo_mid"));
    let metrics = mirror.metrics().await;
    assert_eq!(metric_sum(&metrics, "hexmirror_stale_served_total", &["repo=\"hexpm\""]), 1.0);
}

#[tokio::test]
async fn expired_registry_file_is_revalidated_with_the_upstream_etag() {
    let upstream = TestUpstream::start(demo_files("hexpm", "")).await;
    let mirror = TestMirror::builder()
        .upstream(&upstream.url())
        .registry_ttl("1s")
        .without_stale_while_revalidate()
        .start()
        .await;
    assert_eq!(mirror.get("/names").await.header("x-cache"), "miss");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let got = mirror.get("/names").await;
    assert_eq!((got.status, got.header("x-cache")), (200, "revalidated"));
    let requests = upstream.state.lock().unwrap().requests.clone();
    let (_, headers) = requests.iter().filter(|(p, _)| p == "/names").nth(1).unwrap();
    assert!(headers.get("if-none-match").is_some(), "revalidation must be conditional");
    assert_eq!(mirror.get("/names").await.header("x-cache"), "hit");
}

#[tokio::test]
async fn rate_limited_upstream_is_respected_and_stale_served_meanwhile() {
    let upstream = TestUpstream::start(demo_files("hexpm", "")).await;
    let mirror = TestMirror::builder().upstream(&upstream.url()).registry_ttl("1s").start().await;
    assert_eq!(mirror.get("/names").await.status, 200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    upstream.state.lock().unwrap().scripted.insert(
        "/names".into(),
        Scripted { status: 429, headers: vec![("retry-after".into(), "60".into())], body: vec![] },
    );
    let got = mirror.get("/names").await;
    assert_eq!((got.status, got.header("x-cache")), (200, "stale"));
    let asked = upstream.total_requests();
    let got = mirror.get("/names").await;
    assert_eq!((got.status, got.header("x-cache")), (200, "stale"));
    assert_eq!(upstream.total_requests(), asked, "no request while Retry-After runs");
    let got = mirror.get("/versions").await;
    assert_eq!(got.status, 503, "nothing cached: 503 with Retry-After");
    assert!(!got.header("retry-after").is_empty());
}

#[tokio::test]
async fn if_none_match_gets_304_for_registry_files_and_tarballs() {
    let (_upstream, mirror) = setup().await;
    for path in ["/packages/hexdemo_mid", "/tarballs/hexdemo_mid-0.2.0.tar"] {
        let first = mirror.get(path).await;
        let etag = first.header("etag").to_string();
        let again = get(&mirror.url(path), &[("if-none-match", &etag)]).await;
        assert_eq!(again.status, 304, "{path}");
        assert!(again.body.is_empty());
        assert_eq!(again.header("etag"), etag);
        let other = get(&mirror.url(path), &[("if-none-match", "\"nope\"")]).await;
        assert_eq!(other.status, 200);
    }
}

#[tokio::test]
async fn head_sends_the_same_headers_as_get() {
    let (_upstream, mirror) = setup().await;
    let head = request("HEAD", &mirror.url("/tarballs/hexdemo_base-1.1.0.tar"), &[]).await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    let get = mirror.get("/tarballs/hexdemo_base-1.1.0.tar").await;
    assert_eq!(head.header("content-length"), get.body.len().to_string());
    assert_eq!(head.header("etag"), get.header("etag"));
    assert_eq!(head.header("content-type"), get.header("content-type"));
}

#[tokio::test]
async fn never_content_encoding_even_when_the_client_accepts_gzip() {
    let (_upstream, mirror) = setup().await;
    let got = get(&mirror.url("/packages/hexdemo_mid"), &[("accept-encoding", "gzip, deflate")]).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.header("content-encoding"), "");
    assert_eq!(got.body, demo_file("hexpm", "packages/hexdemo_mid"));
}

#[tokio::test]
async fn bad_paths_are_refused_without_touching_the_upstream() {
    let (upstream, mirror) = setup().await;
    for (path, status) in [
        ("/packages/..%2Fnames", 400),
        ("/packages/a%2Fb", 400),
        ("/tarballs/hexdemo_mid-..tar", 400),
        ("/packages/1bad", 400),
        ("/repos/a.b/names", 400),
        ("/api/packages/x", 404),
        ("/", 404),
        ("/packages", 404),
        ("/tarballs/x.zip", 404),
    ] {
        assert_eq!(mirror.get(path).await.status, status, "{path}");
    }
    assert_eq!(upstream.total_requests(), 0);
    let post = request("POST", &mirror.url("/names"), &[]).await;
    assert_eq!(post.status, 405);
}

#[tokio::test]
async fn doubled_slash_from_a_trailing_slash_base_url_is_tolerated() {
    let (_upstream, mirror) = setup().await;
    let got = mirror.get("//packages/hexdemo_mid").await;
    assert_eq!(got.status, 200);
}

#[tokio::test]
async fn upstream_404_is_remembered_briefly() {
    let (upstream, mirror) = setup().await;
    let got = mirror.get("/packages/nothere").await;
    // The upstream was asked: a miss; the remembered answer after it: negative.
    assert_eq!((got.status, got.header("x-cache")), (404, "miss"));
    let got = mirror.get("/packages/nothere").await;
    assert_eq!((got.status, got.header("x-cache")), (404, "negative"));
    assert_eq!(upstream.requests_for("/packages/nothere"), 1);
}

#[tokio::test]
async fn gzip_bomb_is_refused_without_a_memory_spike() {
    let (upstream, mirror) = setup().await;
    // 512 MiB of zeros compresses to about 500 KiB.
    let bomb = gzip(&vec![0u8; 512 << 20]);
    assert!(bomb.len() < 1 << 20);
    upstream.set_file("/names", bomb);
    let rss_before = rss_kib();
    let got = mirror.get("/names").await;
    assert_eq!(got.status, 502);
    assert!(String::from_utf8_lossy(&got.body).contains("size limit"));
    let grown_mib = rss_kib().saturating_sub(rss_before) / 1024;
    assert!(grown_mib < 200, "resident memory grew by {grown_mib} MiB");
}

#[tokio::test]
async fn public_key_is_the_configured_key() {
    let (upstream, mirror) = setup().await;
    let got = mirror.get("/public_key").await;
    assert_eq!(got.status, 200);
    let want = std::fs::read_to_string(demo_key_path()).unwrap();
    assert_eq!(String::from_utf8_lossy(&got.body).trim(), want.trim());
    assert_eq!(upstream.total_requests(), 0);
}

#[tokio::test]
async fn upstream_5xx_without_a_copy_is_502_and_next_good_answer_is_served() {
    let (upstream, mirror) = setup().await;
    upstream.state.lock().unwrap().fail_all = Some(500);
    let got = mirror.get("/names").await;
    assert_eq!((got.status, got.header("x-cache")), (502, "error"));
    upstream.state.lock().unwrap().fail_all = None;
    assert_eq!(mirror.get("/names").await.status, 200);
}

#[tokio::test]
async fn operations_endpoints() {
    let (_upstream, mirror) = setup().await;
    assert_eq!(mirror.get("/healthz").await.status, 200);
    assert_eq!(mirror.get("/readyz").await.status, 200);
    let metrics = mirror.metrics().await;
    for family in [
        "hexmirror_requests_total",
        "hexmirror_upstream_requests_total",
        "hexmirror_upstream_request_duration_seconds_bucket",
        "hexmirror_verification_failures_total",
    ] {
        assert!(metrics.contains(family), "{family}");
    }
}

#[tokio::test]
async fn graceful_shutdown_finishes_an_in_flight_slow_transfer() {
    let (upstream, mirror) = setup().await;
    upstream.state.lock().unwrap().delay = Duration::from_millis(1500);
    let url = mirror.url("/packages/hexdemo_top");
    let pending = tokio::spawn(get_owned(url));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let addr = mirror.addr;
    mirror.stop().await;
    let got = pending.await.unwrap();
    assert_eq!(got.status, 200);
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "no longer accepting");
}

#[tokio::test]
async fn policies_are_verified_and_a_private_policy_needs_authorization() {
    use prost::Message;
    let (upstream, mirror) = setup().await;
    // An upstream that calls an organization's policies public (hex.pm marks everything of an
    // organization private): what a policy says of itself decides, not that.
    upstream.state.lock().unwrap().cache_control = Some("public, max-age=3600".into());
    let policy = |name: &str, visibility: i32| hexmirror::registry::Policy {
        repository: "acme".into(),
        name: name.into(),
        description: None,
        visibility: Some(visibility),
    };
    upstream.set_file("/repos/acme/policies/open.v1", sign_registry_file(&policy("open.v1", 1).encode_to_vec()));
    upstream.set_file("/repos/acme/policies/strict", sign_registry_file(&policy("strict", 0).encode_to_vec()));
    upstream.set_file("/repos/acme/policies/other", sign_registry_file(&policy("strict", 1).encode_to_vec()));
    let open = mirror.get("/repos/acme/policies/open.v1").await;
    assert_eq!(open.status, 200);
    assert_eq!(open.body, upstream.state.lock().unwrap().files["/repos/acme/policies/open.v1"]);
    // Signed, but private: the upstream's `public` does not make it readable by anyone.
    assert_eq!(mirror.get("/repos/acme/policies/strict").await.status, 401);
    // Signed for another policy name: refused.
    assert_eq!(mirror.get("/repos/acme/policies/other").await.status, 502);
}

#[tokio::test]
async fn a_second_server_on_the_same_store_refuses_to_start() {
    let (_upstream, mirror) = setup().await;
    let err = match mirror.site().try_start().await {
        Ok(_) => panic!("two servers on one store"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("another hexmirror"), "{err}");
}

#[tokio::test]
async fn registry_v1_is_verified_with_its_hex_signature() {
    let (upstream, mirror) = setup().await;
    let ets = gzip(b"a frozen registry v1 table");
    upstream.set_file("/registry.ets.gz", ets.clone());
    upstream.set_file("/registry.ets.gz.signed", hex::encode(test_signature(&ets)).into_bytes());
    let got = mirror.get("/registry.ets.gz").await;
    assert_eq!((got.status, &got.body[..]), (200, &ets[..]));
    let signed = mirror.get("/registry.ets.gz.signed").await;
    assert_eq!(signed.status, 200);
    // A registry that does not match its signature is refused.
    let (upstream, mirror) = setup().await;
    upstream.set_file("/registry.ets.gz", gzip(b"another table"));
    upstream.set_file("/registry.ets.gz.signed", hex::encode(test_signature(&ets)).into_bytes());
    assert_eq!(mirror.get("/registry.ets.gz").await.status, 502);
}

#[tokio::test]
async fn installers_are_verified_against_the_signed_csv() {
    use base64::Engine;
    use sha2::Digest;
    let mut files = demo_files("hexpm", "");
    let archive = b"pretend hex archive".to_vec();
    let csv = format!("2.0.6,{},1.14.0,1.15.0\n", hex::encode(sha2::Sha512::digest(&archive)));
    let signature = base64::engine::general_purpose::STANDARD.encode(test_signature(csv.as_bytes()));
    files.insert("/installs/hex-1.x.csv".into(), csv.clone().into_bytes());
    files.insert("/installs/hex-1.x.csv.signed".into(), signature.into_bytes());
    files.insert("/installs/1.14.0/hex-2.0.6.ez".into(), archive.clone());
    files.insert("/installs/1.15.0/hex-2.0.6.ez".into(), b"a different archive".to_vec());
    let upstream = TestUpstream::start(files).await;
    let mirror =
        TestMirror::builder().upstream(&upstream.url()).set("installs_public_key", demo_key_path()).start().await;
    let got = mirror.get("/installs/hex-1.x.csv").await;
    assert_eq!((got.status, got.body.to_vec()), (200, csv.into_bytes()));
    assert_eq!(mirror.get("/installs/hex-1.x.csv.signed").await.status, 200);
    let got = mirror.get("/installs/1.14.0/hex-2.0.6.ez").await;
    assert_eq!((got.status, got.body.to_vec()), (200, archive));
    assert_eq!(mirror.get("/installs/1.15.0/hex-2.0.6.ez").await.status, 502, "digest mismatch");
    assert_eq!(mirror.get("/installs/1.14.0/hex-9.9.9.ez").await.status, 404, "not listed");
    // With the built-in Mix key (not the test key) the CSV is refused.
    let mirror = TestMirror::builder().upstream(&upstream.url()).start().await;
    assert_eq!(mirror.get("/installs/hex-1.x.csv").await.status, 502);
}

#[tokio::test]
async fn fetched_content_is_served_even_when_no_cache_tier_keeps_it() {
    // A memory budget too small for any entry, and a store that refuses every write.
    let upstream = TestUpstream::start(demo_files("hexpm", "")).await;
    let site = TestMirror::builder().upstream(&upstream.url()).set("memory_cache_bytes", 1);
    let config = site.config();
    let metrics = hexmirror::metrics_for(&config);
    let store = std::sync::Arc::new(hexmirror::cache::NullStore { reason: "test".into() });
    let mirror = hexmirror::Mirror::with_store(config, metrics, store).unwrap();
    let target = mirror.target(None);
    let client = hexmirror::mirror::ClientCredentials::from_header(None);
    let resource = hexmirror::route::Resource::Tarball { name: "hexdemo_mid".into(), version: "0.2.0".into() };
    let reply = mirror.get(&target, &resource, &client).await.unwrap();
    assert_eq!(reply.body, demo_file("hexpm", "tarballs/hexdemo_mid-0.2.0.tar"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_is_one_json_line_per_request_on_stdout() {
    use std::io::BufRead;
    let upstream = TestUpstream::start(demo_files("hexpm", "")).await;
    let site = TestMirror::builder().upstream(&upstream.url()).set("access_log", true);
    let mut served = tokio::task::block_in_place(|| site.serve_binary("warn", std::process::Stdio::piped()));
    assert_eq!(get(&served.url("/packages/hexdemo_mid"), &[("authorization", "Bearer s3cret")]).await.status, 200);
    let stdout = served.child.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        std::io::BufReader::new(stdout).read_line(&mut line).unwrap();
        line
    })
    .await
    .unwrap();
    served.stop();
    let record: serde_json::Value = serde_json::from_str(line.trim()).expect("a JSON line");
    assert_eq!(record["path"], "/packages/hexdemo_mid");
    assert_eq!(record["status"], 200);
    assert_eq!(record["cache"], "miss");
    assert!(!line.contains("s3cret"), "no credential in the access log");
}
