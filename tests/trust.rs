//! Trust boundaries: credentials follow trust, private content stays private, egress over TLS.

mod common;

use std::time::Duration;

use common::*;

const CREDENTIAL_HEADERS: &[&str] = &["authorization", "proxy-authorization", "cookie"];

/// A mirror with one extra repository, `corp`; its hex.pm repository is an empty upstream.
async fn corp_mirror(corp: RepoSpec) -> TestMirror {
    corp_site(corp).await.start().await
}

async fn corp_site(corp: RepoSpec) -> MirrorBuilder {
    let hexpm = TestUpstream::start(Default::default()).await;
    let site = TestMirror::builder().upstream(&hexpm.url()).repo("corp", corp);
    std::mem::forget(hexpm);
    site
}

fn assert_no_credentials(upstream: &TestUpstream) {
    for (path, headers) in upstream.state.lock().unwrap().requests.iter() {
        for name in CREDENTIAL_HEADERS {
            assert!(headers.get(*name).is_none(), "{name} reached the untrusted upstream on {path}");
        }
        for (name, value) in headers {
            let value = value.to_str().unwrap_or("");
            for secret in ["s3cret", "Bearer", "Basic", "session="] {
                assert!(!value.contains(secret), "{name}: {value} reached the untrusted upstream");
            }
        }
    }
}

#[tokio::test]
async fn no_client_credential_of_any_kind_reaches_an_untrusted_upstream() {
    let upstream = TestUpstream::start(demo_files("acme", "")).await;
    let mirror = corp_site(RepoSpec::acme(&upstream.url())).await.registry_ttl("1s").start().await;
    let presented: &[&[(&str, &str)]] = &[
        &[("authorization", "s3cret-raw-key")],
        &[("authorization", "Bearer s3cret-token")],
        &[("authorization", "Basic dXNlcjpzM2NyZXQ=")],
        &[("cookie", "session=s3cret"), ("proxy-authorization", "Basic cHJveHk6czNjcmV0")],
    ];
    for headers in presented {
        for path in
            ["/repos/corp/packages/hexdemo_mid", "/repos/corp/tarballs/hexdemo_mid-0.2.0.tar", "/repos/corp/names"]
        {
            // Cold, then warm; then warm after the TTL (a conditional revalidation).
            assert_eq!(get(&mirror.url(path), headers).await.status, 200);
            assert_eq!(get(&mirror.url(path), headers).await.status, 200);
        }
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for headers in presented {
        let got = get(&mirror.url("/repos/corp/names"), headers).await;
        assert_eq!(got.status, 200);
    }
    assert!(upstream.requests_for("/names") >= 2, "the revalidation path was exercised");
    assert_no_credentials(&upstream);
}

#[tokio::test]
async fn a_trusted_upstream_receives_exactly_the_clients_authorization() {
    let upstream = TestUpstream::start(demo_files("acme", "")).await;
    let mirror = corp_mirror(RepoSpec::acme(&upstream.url()).trusted().allow_http()).await;
    let cases =
        [("hexdemo_base", "rawkey123"), ("hexdemo_mid", "Bearer tok-abc"), ("hexdemo_top", "Basic dXNlcjpwYXNz")];
    for (package, value) in cases {
        let path = format!("/repos/corp/packages/{package}");
        let got = get(&mirror.url(&path), &[("authorization", value), ("cookie", "c=1")]).await;
        assert_eq!(got.status, 200);
        let requests = upstream.state.lock().unwrap().requests.clone();
        let (_, headers) = requests.iter().find(|(p, _)| *p == format!("/packages/{package}")).unwrap();
        assert_eq!(headers.get("authorization").unwrap(), value);
        assert!(headers.get("cookie").is_none(), "cookies are never forwarded");
    }
}

#[tokio::test]
async fn trusted_over_plain_http_to_a_remote_host_never_carries_credentials() {
    let upstream = TestUpstream::start(demo_files("acme", "")).await;
    // trusted, but allow_http is not set: the loopback http upstream gets no credentials.
    let mirror = corp_mirror(RepoSpec::acme(&upstream.url()).trusted()).await;
    let got = get(&mirror.url("/repos/corp/packages/hexdemo_base"), &[("authorization", "Bearer s3cret")]).await;
    assert_eq!(got.status, 200);
    assert_no_credentials(&upstream);
}

#[tokio::test]
async fn hexmirrors_own_key_goes_upstream_verbatim_and_the_clients_never_does() {
    let upstream = TestUpstream::start(demo_files("acme", "")).await;
    // A repository fetched with hexmirror's own key is closed: the client is on its access list.
    let corp = RepoSpec::acme(&upstream.url())
        .trusted()
        .allow_http()
        .auth_key("own-key-7f3a")
        .access_tokens(&["client-s3cret"]);
    let mirror = corp_mirror(corp).await;
    let got = get(&mirror.url("/repos/corp/packages/hexdemo_base"), &[("authorization", "Bearer client-s3cret")]).await;
    assert_eq!(got.status, 200);
    assert!(upstream.total_requests() > 0);
    for (_, headers) in upstream.state.lock().unwrap().requests.iter() {
        assert_eq!(headers.get("authorization").unwrap(), "own-key-7f3a");
    }
}

#[tokio::test]
async fn cached_private_package_is_refused_to_strangers_and_served_to_the_access_list() {
    let logs = captured_logs();
    let upstream = protected_upstream(&["own-key-91c2"]).await;
    let corp =
        RepoSpec::acme(&upstream.url()).allow_http().auth_key("own-key-91c2").access_tokens(&["team-token-5d1e"]);
    let mirror = corp_mirror(corp).await;
    let path = "/repos/corp/packages/hexdemo_mid";
    let member = [("authorization", "Bearer team-token-5d1e")];
    let got = get(&mirror.url(path), &member).await;
    assert_eq!((got.status, got.header("x-cache")), (200, "miss"));
    assert!(got.header("cache-control").contains("private"));
    assert_eq!(got.body, demo_file("acme", "packages/hexdemo_mid"));
    // Basic with the token as password (what ~/.netrc gives Hex) works too, from cache.
    let netrc = [("authorization", "Basic bWU6dGVhbS10b2tlbi01ZDFl")];
    let got = get(&mirror.url(path), &netrc).await;
    assert_eq!((got.status, got.header("x-cache")), (200, "hit"));
    for stranger in
        [&[][..], &[("authorization", "Bearer other-org-token")][..], &[("authorization", "team-token-5d1")][..]]
    {
        let got = get(&mirror.url(path), stranger).await;
        assert_eq!(got.status, 401, "{stranger:?}");
        assert!(!got.body.windows(4).any(|w| w == &demo_file("acme", "packages/hexdemo_mid")[..4]));
        assert!(got.body.len() < 100, "no byte of the content");
    }
    // Also for a cold private resource.
    let got = get(&mirror.url("/repos/corp/packages/hexdemo_top"), &[]).await;
    assert_eq!(got.status, 401);
    // Tarballs of a private package follow the same rule.
    assert_eq!(get(&mirror.url("/repos/corp/tarballs/hexdemo_mid-0.2.0.tar"), &member).await.status, 200);
    assert_eq!(get(&mirror.url("/repos/corp/tarballs/hexdemo_mid-0.2.0.tar"), &[]).await.status, 401);
    // Never a secret in logs or metrics.
    let metrics = mirror.metrics().await;
    let logs = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("hexmirror"), "logs were captured");
    for secret in ["own-key-91c2", "team-token-5d1e", "other-org-token", "bWU6dGVhbS10b2tlbi01ZDFl"] {
        assert!(!metrics.contains(secret), "{secret} in metrics");
        assert!(!logs.contains(secret), "{secret} in logs");
    }
}

#[tokio::test]
async fn private_content_is_rechecked_with_the_clients_own_credentials() {
    let upstream = protected_upstream(&["Bearer alice-key"]).await;
    let mirror = corp_mirror(RepoSpec::acme(&upstream.url()).trusted().allow_http()).await;
    let path = "/repos/corp/packages/hexdemo_mid";
    let alice = [("authorization", "Bearer alice-key")];
    assert_eq!(get(&mirror.url(path), &alice).await.header("x-cache"), "miss");
    // Another client: the upstream is asked with its credentials and says no.
    let got = get(&mirror.url(path), &[("authorization", "Bearer mallory-key")]).await;
    assert_eq!(got.status, 401);
    // Anonymous: nothing to re-check with.
    assert_eq!(get(&mirror.url(path), &[]).await.status, 401);
    // Alice again: a conditional re-check proves access; the body comes from cache.
    let got = get(&mirror.url(path), &alice).await;
    assert_eq!((got.status, got.header("x-cache")), (200, "revalidated"));
    // With the upstream gone, only the access list or the opt-in could authorize: 503.
    upstream.stop();
    let got = get(&mirror.url(path), &alice).await;
    assert_eq!(got.status, 503);
}

#[tokio::test]
async fn allow_all_clients_opt_in_serves_private_content_offline() {
    let upstream = protected_upstream(&["own"]).await;
    let mirror = corp_mirror(RepoSpec::acme(&upstream.url()).allow_http().auth_key("own").allow_all_clients()).await;
    assert_eq!(get(&mirror.url("/repos/corp/packages/hexdemo_mid"), &[]).await.status, 200);
    upstream.stop();
    assert_eq!(get(&mirror.url("/repos/corp/packages/hexdemo_mid"), &[]).await.status, 200);
}

#[tokio::test]
async fn oauth_token_is_obtained_refreshed_and_sent_instead_of_the_key() {
    let upstream = protected_upstream(&[]).await;
    {
        let mut s = upstream.state.lock().unwrap();
        s.token_lifetime = 1;
        s.oauth_keys = vec![("exchange-key-44".into(), "acme".into())];
    }
    let corp = RepoSpec::acme(&upstream.url())
        .allow_http()
        .auth_key("exchange-key-44")
        .oauth_token_url(&format!("{}/api/oauth/token", upstream.url()))
        .allow_all_clients();
    let mirror = corp_mirror(corp).await;
    assert_eq!(get(&mirror.url("/repos/corp/packages/hexdemo_mid"), &[]).await.status, 200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(get(&mirror.url("/repos/corp/packages/hexdemo_top"), &[]).await.status, 200);
    let s = upstream.state.lock().unwrap();
    assert_eq!(s.token_requests.len(), 2, "a token is refreshed once it expires");
    assert!(s.token_requests[0].contains("grant_type=client_credentials"));
    assert!(s.token_requests[0].contains("client_secret=exchange-key-44"));
    let sent: Vec<String> = s
        .requests
        .iter()
        .filter(|(p, _)| p.starts_with("/packages/"))
        .map(|(_, h)| h.get("authorization").unwrap().to_str().unwrap().to_string())
        .collect();
    assert_eq!(sent, vec!["Bearer tok-1", "Bearer tok-2"]);
}

#[tokio::test]
async fn upstreams_are_tried_in_order_and_a_bad_mirror_cannot_inject() {
    let dead = TestUpstream::start(Default::default()).await;
    dead.stop();
    let failing = TestUpstream::start(demo_files("acme", "")).await;
    failing.state.lock().unwrap().fail_all = Some(503);
    let good = TestUpstream::start(demo_files("acme", "")).await;
    let hexpm = TestUpstream::start(Default::default()).await;
    let corp = RepoSpec::acme(&dead.url()).or_upstream(&failing.url()).or_upstream(&good.url());
    let mirror = TestMirror::builder().upstream(&hexpm.url()).repo("corp", corp).start().await;
    let got = mirror.get("/repos/corp/packages/hexdemo_mid").await;
    assert_eq!(got.status, 200);
    assert_eq!(failing.requests_for("/packages/hexdemo_mid"), 1);
    assert_eq!(good.requests_for("/packages/hexdemo_mid"), 1);
    let metrics = mirror.metrics().await;
    let good_label = format!("upstream=\"{}\"", good.addr);
    assert_eq!(metric_sum(&metrics, "hexmirror_upstream_requests_total", &[&good_label, "status_class=\"2xx\""]), 1.0);
    assert_eq!(metric_sum(&metrics, "hexmirror_upstream_requests_total", &["status_class=\"error\""]), 1.0);
    // A mirror answering 200 with forged bytes is refused, not served.
    failing.state.lock().unwrap().fail_all = None;
    failing.set_file("/packages/hexdemo_top", tamper_signed(&demo_file("acme", "packages/hexdemo_top")));
    assert_eq!(mirror.get("/repos/corp/packages/hexdemo_top").await.status, 502);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn global_cap_on_concurrent_upstream_requests() {
    let upstream = TestUpstream::start(demo_files("hexpm", "")).await;
    upstream.state.lock().unwrap().delay = Duration::from_millis(100);
    let mirror = TestMirror::builder().upstream(&upstream.url()).set("max_upstream_requests", 2).start().await;
    let paths = ["/names", "/versions", "/packages/hexdemo_base", "/packages/hexdemo_mid", "/packages/hexdemo_top"];
    let tasks: Vec<_> = paths.iter().map(|p| tokio::spawn(get_url(mirror.url(p)))).collect();
    for task in tasks {
        assert_eq!(task.await.unwrap().status, 200);
    }
    assert_eq!(upstream.state.lock().unwrap().max_in_flight, 2);
}

async fn get_url(url: String) -> Fetched {
    get(&url, &[]).await
}

fn acceptor(cert: &str, key: &str) -> tokio_rustls::TlsAcceptor {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("c.pem"), cert).unwrap();
    std::fs::write(dir.path().join("k.pem"), key).unwrap();
    hexmirror::server::tls_acceptor(&dir.path().join("c.pem"), &dir.path().join("k.pem")).unwrap()
}

#[tokio::test]
async fn tls_to_an_upstream_signed_by_a_configured_ca() {
    let (ca, cert, key) = test_pki();
    let upstream = TestUpstream::start_tls(demo_files("hexpm", ""), acceptor(&cert, &key)).await;
    let https = format!("https://localhost:{}", upstream.addr.port());
    let site = TestMirror::builder().upstream(&https);
    let ca_file = site.dir().join("ca.pem");
    std::fs::write(&ca_file, &ca).unwrap();
    let mirror = site.set("ca_file", ca_file).start().await;
    let got = mirror.get("/packages/hexdemo_mid").await;
    assert_eq!(got.status, 200);
    mirror.stop().await;
    // Without the CA, the upstream's certificate is not trusted.
    let mirror = TestMirror::builder().upstream(&https).start().await;
    assert_eq!(mirror.get("/packages/hexdemo_mid").await.status, 502);
}

#[tokio::test]
async fn hexmirror_serves_over_tls_when_configured() {
    let (ca, cert, key) = test_pki();
    let upstream = TestUpstream::start(demo_files("hexpm", "")).await;
    let site = TestMirror::builder().upstream(&upstream.url());
    let dir = site.dir().to_path_buf();
    for (name, text) in [("ca.pem", &ca), ("cert.pem", &cert), ("key.pem", &key)] {
        std::fs::write(dir.join(name), text).unwrap();
    }
    let mirror = site.set("tls_cert", dir.join("cert.pem")).set("tls_key", dir.join("key.pem")).start().await;
    let url = format!("https://localhost:{}/packages/hexdemo_mid", mirror.addr.port());
    let ca_path = dir.join("ca.pem");
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .args(["-sS", "--cacert"])
            .arg(&ca_path)
            .args(["-o", "/dev/null", "-w", "%{http_code}", &url])
            .output()
    })
    .await
    .unwrap();
    match output {
        Ok(out) => assert_eq!(String::from_utf8_lossy(&out.stdout), "200", "{}", String::from_utf8_lossy(&out.stderr)),
        Err(e) => panic!("curl is needed for this test: {e}"),
    }
}
