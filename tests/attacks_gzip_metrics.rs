//! Fixes from an attack review: a registry file must be exactly one gzip member (what follows
//! it would reach clients unverified), and the `metrics_listen` address serves the operations
//! endpoints only.

mod common;

use common::*;
use prost::Message;

/// hexdemo_mid's record without its newest release, signed with the demo repository's key: a
/// genuine signed record, as an older snapshot of the registry held it.
fn older_signed_record_of_hexdemo_mid() -> Vec<u8> {
    let raw = hexmirror::verify::gunzip(&demo_file("hexpm", "packages/hexdemo_mid"), 64 << 20).unwrap();
    let signed: hexmirror::registry::Signed = hexmirror::registry::decode(&raw).unwrap();
    let mut package: hexmirror::registry::Package = hexmirror::registry::decode(&signed.payload).unwrap();
    assert!(package.releases.iter().any(|r| r.version == "0.2.0"));
    package.releases.retain(|r| r.version != "0.2.0");
    sign_registry_file(&package.encode_to_vec())
}

/// The signed record of hexdemo_mid followed by a second gzip member holding an older signed
/// record: a client that decodes every member would read the older one.
fn record_with_a_second_member() -> Vec<u8> {
    [demo_file("hexpm", "packages/hexdemo_mid"), older_signed_record_of_hexdemo_mid()].concat()
}

#[tokio::test]
async fn second_gzip_member_is_refused_not_served() {
    let upstream = TestUpstream::start(demo_files("hexpm", "")).await;
    upstream.set_file("/packages/hexdemo_mid", record_with_a_second_member());
    let mirror = TestMirror::builder().upstream(&upstream.url()).start().await;
    let got = mirror.get("/packages/hexdemo_mid").await;
    assert_eq!((got.status, got.header("x-cache")), (502, "refused"), "served {} bytes", got.body.len());
    let metrics = mirror.metrics().await;
    // What follows the first member stands where its size field should be: the refusal is
    // found as trailing data, or as a member inflating past that false size.
    let framing = ["reason=\"trailing_data\"", "reason=\"size_mismatch\""]
        .iter()
        .map(|reason| metric_sum(&metrics, "hexmirror_verification_failures_total", &["resource=\"package\"", reason]))
        .sum::<f64>();
    assert_eq!(framing, 1.0, "one refusal for the gzip framing");
    assert!(
        mirror.stored().await.iter().all(|(key, _)| !key.as_str().contains("hexdemo_mid")),
        "nothing of hexdemo_mid was stored"
    );
    // Refusals are not remembered: the upstream's good record is fetched and served next.
    upstream.set_file("/packages/hexdemo_mid", demo_file("hexpm", "packages/hexdemo_mid"));
    let got = mirror.get("/packages/hexdemo_mid").await;
    assert_eq!((got.status, got.header("x-cache")), (200, "miss"));
    assert_eq!(got.body, demo_file("hexpm", "packages/hexdemo_mid"));
    assert_eq!(upstream.requests_for("/packages/hexdemo_mid"), 2);
}

#[tokio::test]
async fn bundle_record_with_a_second_gzip_member_is_refused_and_the_store_is_unchanged() {
    // A store holding the demo repository, exported as a bundle.
    let upstream = TestUpstream::start(demo_files("hexpm", "")).await;
    let mirror = TestMirror::builder().upstream(&upstream.url()).start().await;
    let (_events, sink) = hexmirror::sync::collect_events();
    let request = hexmirror::sync::SyncRequest {
        packages: vec!["hexdemo_top".into()],
        dependencies: true,
        concurrency: 2,
        ..Default::default()
    };
    let summary = hexmirror::sync::run(&mirror.mirror, &request, &sink).await;
    assert!(summary.ok(), "{summary:?}");
    let bundle = hexmirror::transfer::export(&mirror.mirror, &Default::default()).await.unwrap();
    mirror.stop().await;
    upstream.stop();
    // The same bundle with a second member appended to hexdemo_mid's record.
    let mut read = hexmirror::bundle::read(&bundle[..], &hexmirror::transfer::limits()).unwrap();
    let record = read.objects.iter_mut().find(|o| o.key == "public/hexpm/packages/hexdemo_mid").unwrap();
    assert_eq!(record.bytes, demo_file("hexpm", "packages/hexdemo_mid"));
    record.bytes = record_with_a_second_member().into();
    let mut forged = Vec::new();
    hexmirror::bundle::write(&read.objects, None, &mut forged).unwrap();

    let mirror = TestMirror::builder().upstream("http://127.0.0.1:9").offline().start().await;
    let err = hexmirror::transfer::import(&mirror.mirror, &forged).await.unwrap_err().to_string();
    assert!(err.starts_with("bundle refused: public/hexpm/packages/hexdemo_mid"), "{err}");
    assert!(mirror.stored().await.is_empty(), "nothing of a refused bundle is stored");
    // The unaltered bundle imports.
    let report = hexmirror::transfer::import(&mirror.mirror, &bundle).await.unwrap();
    assert_eq!(report.new, report.objects);
    assert_eq!(mirror.get("/packages/hexdemo_mid").await.status, 200);
}

#[tokio::test]
async fn metrics_listen_serves_only_operations_endpoints() {
    let upstream = TestUpstream::start(demo_files("hexpm", "")).await;
    let mirror = TestMirror::builder().upstream(&upstream.url()).set("metrics_listen", "127.0.0.1:0").start().await;
    let ops = mirror.metrics_addr.expect("metrics_listen is bound");
    assert_ne!(ops, mirror.addr);
    let url = |path: &str| format!("http://{ops}{path}");
    for path in ["/metrics", "/healthz", "/readyz"] {
        assert_eq!(get(&url(path), &[]).await.status, 200, "{path}");
    }
    let metrics = get(&url("/metrics"), &[]).await;
    assert!(String::from_utf8_lossy(&metrics.body).contains("hexmirror_requests_total"));
    for path in [
        "/names",
        "/versions",
        "/packages/hexdemo_mid",
        "/tarballs/hexdemo_mid-0.2.0.tar",
        "/repos/x/names",
        "/public_key",
        "/_admin/ping",
    ] {
        for method in ["GET", "HEAD"] {
            let got = request(method, &url(path), &[("authorization", "Bearer s3cret")]).await;
            assert_eq!(got.status, 404, "{method} {path} on the metrics_listen address");
        }
    }
    assert_eq!(upstream.total_requests(), 0, "the metrics address made upstream requests");
    // The repository is still served on `listen`.
    assert_eq!(mirror.get("/packages/hexdemo_mid").await.status, 200);
    assert_eq!(upstream.requests_for("/packages/hexdemo_mid"), 1);
}
