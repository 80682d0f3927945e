//! Air-gapped sites: sync from an upstream, serve offline, export, import, verify.

mod common;

use std::path::Path;

use common::*;
use hexmirror::sync::{collect_events, SyncRequest};

const TARBALLS: &[(&str, &str)] =
    &[("hexdemo_top", "2.0.0"), ("hexdemo_top", "2.0.1"), ("hexdemo_mid", "0.2.0"), ("hexdemo_base", "1.1.0")];

fn request(packages: &[&str]) -> SyncRequest {
    SyncRequest {
        packages: packages.iter().map(|p| p.to_string()).collect(),
        dependencies: true,
        include_optional: true,
        concurrency: 4,
        ..Default::default()
    }
}

/// A site whose store holds hexdemo_top and its dependencies, synced from the upstream.
async fn synced_store() -> (MirrorBuilder, TestUpstream) {
    let upstream = TestUpstream::start(demo_files("hexpm", "")).await;
    let site = TestMirror::builder().upstream(&upstream.url());
    let mirror = site.start().await;
    let (_events, sink) = collect_events();
    let summary = hexmirror::sync::run(&mirror.mirror, &request(&["hexdemo_top"]), &sink).await;
    assert!(summary.ok(), "{summary:?}");
    mirror.stop().await;
    (site, upstream)
}

#[tokio::test]
async fn sync_resolves_the_dependency_closure_and_offline_serving_needs_no_upstream() {
    let (site, upstream) = synced_store().await;
    for (name, version) in TARBALLS {
        assert_eq!(upstream.requests_for(&format!("/tarballs/{name}-{version}.tar")), 1, "{name} {version}");
    }
    // Retired 1.0.0 is skipped, and the older mid is not needed by the newest top.
    assert_eq!(upstream.requests_for("/tarballs/hexdemo_base-1.0.0.tar"), 0);
    let before = upstream.total_requests();
    let mirror = site.clone().offline().start().await;
    for (name, version) in TARBALLS {
        let path = format!("/tarballs/{name}-{version}.tar");
        let got = mirror.get(&path).await;
        assert_eq!(got.status, 200, "{path}");
        assert_eq!(got.body, demo_file("hexpm", &path[1..]));
    }
    for name in ["hexdemo_top", "hexdemo_mid", "hexdemo_base"] {
        assert_eq!(mirror.get(&format!("/packages/{name}")).await.status, 200);
    }
    let missing = mirror.get("/tarballs/hexdemo_mid-0.1.0.tar").await;
    assert_eq!(missing.status, 404);
    assert!(String::from_utf8_lossy(&missing.body).contains("hexdemo_mid-0.1.0.tar"), "names the missing resource");
    assert_eq!(upstream.total_requests(), before, "an offline mirror never contacts its upstream");
}

#[tokio::test]
async fn a_second_sync_fetches_nothing_that_is_already_stored() {
    let (site, upstream) = synced_store().await;
    let before = upstream.total_requests();
    let mirror = site.start().await;
    let (_events, sink) = collect_events();
    let summary = hexmirror::sync::run(&mirror.mirror, &request(&["hexdemo_top"]), &sink).await;
    assert!(summary.ok());
    assert_eq!(summary.fetched, 0, "{summary:?}");
    assert!(summary.present >= 7);
    assert_eq!(upstream.total_requests(), before);
}

fn inner_checksum_hex(name: &str, version: &str) -> String {
    hex::encode_upper(
        hexmirror::verify::inner_checksum(&demo_file("hexpm", &format!("tarballs/{name}-{version}.tar"))).unwrap(),
    )
}

fn outer_checksum_hex(name: &str, version: &str) -> String {
    use sha2::Digest;
    hex::encode_upper(sha2::Sha256::digest(demo_file("hexpm", &format!("tarballs/{name}-{version}.tar"))))
}

fn rebar_lock(outer_override: Option<&str>) -> String {
    let deps = [("hexdemo_base", "1.1.0", 1), ("hexdemo_mid", "0.2.0", 1), ("hexdemo_top", "2.0.1", 0)];
    let entries: Vec<String> =
        deps.iter().map(|(n, v, l)| format!("{{<<\"{n}\">>,{{pkg,<<\"{n}\">>,<<\"{v}\">>}},{l}}}")).collect();
    let inner: Vec<String> =
        deps.iter().map(|(n, v, _)| format!("{{<<\"{n}\">>, <<\"{}\">>}}", inner_checksum_hex(n, v))).collect();
    let outer: Vec<String> = deps
        .iter()
        .map(|(n, v, _)| {
            let sum = match (n, outer_override) {
                (&"hexdemo_mid", Some(o)) => o.to_string(),
                _ => outer_checksum_hex(n, v),
            };
            format!("{{<<\"{n}\">>, <<\"{sum}\">>}}")
        })
        .collect();
    format!(
        "{{\"1.2.0\",\n[{}]}}.\n[\n{{pkg_hash,[\n{}]}},\n{{pkg_hash_ext,[\n{}]}}\n].\n",
        entries.join(",\n"),
        inner.join(",\n"),
        outer.join(",\n")
    )
}

#[tokio::test]
async fn lockfile_sync_takes_exact_versions_and_checks_the_locks_checksums() {
    let upstream = TestUpstream::start(demo_files("hexpm", "")).await;
    let mirror = TestMirror::builder().upstream(&upstream.url()).start().await;
    let mut req = request(&[]);
    req.lockfiles = vec![("rebar.lock".into(), rebar_lock(None))];
    let (_events, sink) = collect_events();
    let summary = hexmirror::sync::run(&mirror.mirror, &req, &sink).await;
    assert!(summary.ok(), "{summary:?}");
    assert_eq!(upstream.requests_for("/tarballs/hexdemo_top-2.0.1.tar"), 1);
    assert_eq!(upstream.requests_for("/tarballs/hexdemo_top-2.0.0.tar"), 0, "exactly the locked versions");
    // A lock whose checksum disagrees with the signed registry fails that package.
    let mut req = request(&[]);
    req.lockfiles = vec![("rebar.lock".into(), rebar_lock(Some(&"AB".repeat(32))))];
    let summary = hexmirror::sync::run(&mirror.mirror, &req, &sink).await;
    assert_eq!(summary.failed, 1, "{summary:?}");
    assert!(summary.failures[0].contains("outer checksum"), "{:?}", summary.failures);
}

#[tokio::test]
async fn sync_reports_and_fails_when_a_package_cannot_be_verified() {
    let upstream = TestUpstream::start(demo_files("hexpm", "")).await;
    upstream.set_file("/tarballs/hexdemo_base-1.1.0.tar", b"not the tarball".to_vec());
    let mirror = TestMirror::builder().upstream(&upstream.url()).start().await;
    let (_events, sink) = collect_events();
    let summary = hexmirror::sync::run(&mirror.mirror, &request(&["hexdemo_top"]), &sink).await;
    assert_eq!(summary.failed, 1, "{summary:?}");
    assert!(summary.failures[0].contains("hexdemo_base-1.1.0.tar"));
}

async fn export_bundle(site: &MirrorBuilder) -> Vec<u8> {
    let mirror = site.start().await;
    let bytes = hexmirror::transfer::export(&mirror.mirror, &Default::default()).await.unwrap();
    mirror.stop().await;
    bytes
}

async fn store_snapshot(mirror: &hexmirror::Mirror) -> Vec<(String, String)> {
    let mut rows: Vec<(String, String)> =
        mirror.store().list_all("").await.unwrap().into_iter().map(|(k, m)| (k.to_string(), m.sha256)).collect();
    rows.sort();
    rows
}

#[tokio::test]
async fn export_then_import_into_an_empty_store_serves_offline() {
    let (site, upstream) = synced_store().await;
    let bundle = export_bundle(&site).await;
    assert_eq!(bundle, export_bundle(&site).await, "deterministic bytes for the same content");
    upstream.stop();
    let mirror = TestMirror::builder().upstream("http://127.0.0.1:9").offline().start().await;
    let report = hexmirror::transfer::import(&mirror.mirror, &bundle).await.unwrap();
    assert_eq!(report.new, report.objects);
    for (name, version) in TARBALLS {
        let path = format!("/tarballs/{name}-{version}.tar");
        let got = mirror.get(&path).await;
        assert_eq!((got.status, got.header("x-cache")), (200, "hit"), "{path}");
        assert_eq!(got.body, demo_file("hexpm", &path[1..]));
    }
    let audit = hexmirror::audit::run(&mirror.mirror, false).await.unwrap();
    assert!(audit.ok(), "{audit:?}");
    assert!(mirror.stored().await.iter().all(|(_, m)| m.pinned), "imported entries are pinned");
    // Importing the same bundle again changes nothing.
    let again = hexmirror::transfer::import(&mirror.mirror, &bundle).await.unwrap();
    assert_eq!((again.new, again.unchanged), (0, again.objects));
}

#[tokio::test]
async fn altered_truncated_and_forged_bundles_are_refused_and_the_store_is_unchanged() {
    let (site, _upstream) = synced_store().await;
    let bundle = export_bundle(&site).await;
    // A populated store inside: half of the content already imported.
    let mirror = TestMirror::builder().upstream("http://127.0.0.1:9").offline().start().await;
    let read = hexmirror::bundle::read(&bundle[..], &hexmirror::transfer::limits()).unwrap();
    let partial: Vec<_> = read.objects.iter().filter(|o| !o.key.contains("hexdemo_top")).cloned().collect();
    let mut partial_bytes = Vec::new();
    hexmirror::bundle::write(&partial, None, &mut partial_bytes).unwrap();
    hexmirror::transfer::import(&mirror.mirror, &partial_bytes).await.unwrap();
    let before = store_snapshot(&mirror.mirror).await;

    let mut flipped = bundle.clone();
    let at = flipped.len() / 2;
    flipped[at] ^= 1;
    let truncated = bundle[..bundle.len() - 1536].to_vec();
    // Well-formed, correct digests, but a record whose signed payload was altered.
    let mut forged_objects = read.objects.clone();
    for object in forged_objects.iter_mut().filter(|o| o.key == "public/hexpm/packages/hexdemo_top") {
        object.bytes = tamper_signed(&object.bytes).into();
    }
    let mut forged = Vec::new();
    hexmirror::bundle::write(&forged_objects, None, &mut forged).unwrap();
    // Well-formed, but a tarball swapped for another release's.
    let mut swapped_objects = read.objects.clone();
    let other = demo_file("hexpm", "tarballs/hexdemo_top-2.0.0.tar");
    for object in swapped_objects.iter_mut().filter(|o| o.key.ends_with("hexdemo_top-2.0.1.tar")) {
        object.bytes = other.clone().into();
    }
    let mut swapped = Vec::new();
    hexmirror::bundle::write(&swapped_objects, None, &mut swapped).unwrap();

    for (what, bad) in [("altered", flipped), ("truncated", truncated), ("forged", forged), ("swapped", swapped)] {
        let err = hexmirror::transfer::import(&mirror.mirror, &bad).await.unwrap_err().to_string();
        assert!(err.starts_with("bundle refused"), "{what}: {err}");
        assert_eq!(store_snapshot(&mirror.mirror).await, before, "{what}: the store must be unchanged");
        let staging = mirror.data_dir().join("import-staging");
        let left = std::fs::read_dir(&staging).map(|d| d.count()).unwrap_or(0);
        assert_eq!(left, 0, "{what}: what a refused import staged is removed");
        assert_eq!(mirror.get("/tarballs/hexdemo_top-2.0.1.tar").await.status, 404, "{what}: nothing new served");
    }
}

#[tokio::test]
async fn verify_reports_damage_and_repair_refetches_it() {
    let (site, _upstream) = synced_store().await;
    let mirror = site.start().await;
    let report = hexmirror::audit::run(&mirror.mirror, false).await.unwrap();
    assert!(report.ok());
    // The selected records also list hexdemo_mid 0.1.0 and the retired hexdemo_base 1.0.0.
    assert_eq!(report.unselected_releases, 2, "{report:?}");
    mirror.stop().await;
    // Flip a bit in one blob on disk.
    let blob =
        walk(&site.data_dir().join("blobs")).into_iter().find(|p| std::fs::metadata(p).unwrap().len() == 5120).unwrap();
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[100] ^= 4;
    std::fs::write(&blob, bytes).unwrap();
    let mirror = site.start().await;
    let report = hexmirror::audit::run(&mirror.mirror, false).await.unwrap();
    assert!(!report.ok());
    assert_eq!(report.damaged.len() + report.missing.len(), 1, "{report:?}");
    let report = hexmirror::audit::run(&mirror.mirror, true).await.unwrap();
    assert!(report.ok(), "{report:?}");
    assert_eq!(report.repaired.len(), 1);
    assert!(hexmirror::audit::run(&mirror.mirror, false).await.unwrap().ok());
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_find_and_use_a_running_server() {
    let upstream = TestUpstream::start(demo_files("hexpm", "")).await;
    let mirror = TestMirror::builder().upstream(&upstream.url()).start().await;
    let config = mirror.site().config_path();
    let run = |args: &[&str]| run_hexmirror(&config, args);
    let (c1, c2) = (config.clone(), config.clone());
    let sync = tokio::task::spawn_blocking(move || run_hexmirror(&c1, &["sync", "--package", "hexdemo_top ~> 2.0"]))
        .await
        .unwrap();
    assert!(sync.status.success(), "{}", String::from_utf8_lossy(&sync.stderr));
    let out = String::from_utf8_lossy(&sync.stdout);
    assert!(out.contains("0 failed"), "{out}");
    // The server (which holds the store's lock) did the work: its store has the tarballs.
    assert_eq!(mirror.get("/tarballs/hexdemo_base-1.1.0.tar").await.header("x-cache"), "hit");
    let verify = tokio::task::spawn_blocking(move || run_hexmirror(&c2, &["verify"])).await.unwrap();
    assert!(
        verify.status.success(),
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    let bundle = mirror.site().dir().join("site.hxb");
    let export = tokio::task::block_in_place(|| run(&["export", "--out", bundle.to_str().unwrap()]));
    assert!(export.status.success(), "{}", String::from_utf8_lossy(&export.stderr));
    let inspect = tokio::task::block_in_place(|| run(&["inspect", bundle.to_str().unwrap(), "--packages"]));
    let text = String::from_utf8_lossy(&inspect.stdout);
    assert!(text.contains("hexdemo_mid 0.2.0"), "{text}");
    assert!(text.contains("0 new, 0 changed"), "{text}");
    let list = tokio::task::block_in_place(|| run(&["cache", "show", "hexdemo_mid"]));
    assert!(String::from_utf8_lossy(&list.stdout).contains("tarballs/hexdemo_mid-0.2.0.tar"));
    let purge = tokio::task::block_in_place(|| run(&["cache", "purge", "hexdemo_mid"]));
    assert!(purge.status.success());
    assert_eq!(mirror.get("/tarballs/hexdemo_mid-0.2.0.tar").await.header("x-cache"), "miss", "purged from memory too");
    // Without the admin token the endpoint refuses.
    let endpoint: serde_json::Value =
        serde_json::from_slice(&std::fs::read(mirror.data_dir().join("admin.json")).unwrap()).unwrap();
    let url = format!("{}/_admin/cache", endpoint["url"].as_str().unwrap());
    assert_eq!(get(&url, &[]).await.status, 401);
    assert_eq!(get(&url, &[("authorization", "Bearer wrong")]).await.status, 401);
    // And admin routes are not on the public listener.
    assert_eq!(mirror.get("/_admin/cache").await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_filters_reach_the_admin_endpoint_as_given() {
    let upstream = TestUpstream::start(demo_files("hexpm", "")).await;
    let site = TestMirror::builder().upstream(&upstream.url());
    let mirror = site.start().await;
    assert_eq!(mirror.get("/tarballs/hexdemo_mid-0.2.0.tar").await.status, 200);
    let tarball = "public/hexpm/tarballs/hexdemo_mid-0.2.0.tar";
    let endpoint: serde_json::Value =
        serde_json::from_slice(&std::fs::read(site.data_dir().join("admin.json")).unwrap()).unwrap();
    let (url, token) = (endpoint["url"].as_str().unwrap(), endpoint["token"].as_str().unwrap());
    let bearer = format!("Bearer {token}");
    let keys = |query: &'static str| {
        let (url, bearer) = (url.to_string(), bearer.clone());
        async move {
            let got = get(&format!("{url}/_admin/cache?{query}"), &[("authorization", &bearer)]).await;
            assert_eq!(got.status, 200, "{query}");
            let rows: Vec<serde_json::Value> = serde_json::from_slice(&got.body).unwrap();
            rows.iter().map(|row| row["key"].as_str().unwrap().to_string()).collect::<Vec<_>>()
        }
    };
    // The endpoint decodes what it is sent: an escaped `/` matches the key's `/`.
    assert_eq!(keys("filter=hexpm%2Ftarballs%2Fhexdemo_mid-0.2.0.tar").await, vec![tarball.to_string()]);
    // An escaped `&` or `=` stays inside the value instead of starting a `package` parameter.
    assert!(keys("filter=%26package%3Dhexdemo_mid").await.is_empty());
    assert!(!keys("filter=&package=hexdemo_mid").await.is_empty(), "the same parameter unescaped is a package");

    // The command line escapes what it sends: a filter with a space, `&`, `=` and `%` is one
    // value that matches nothing (it used to make an invalid request), and one with `/` matches.
    let config = site.config_path();
    let run = |args: &[&str]| {
        let mut cmd = hexmirror_command(&config);
        cmd.args(args);
        tokio::task::block_in_place(|| cmd.output().unwrap())
    };
    let odd = run(&["cache", "list", "a b&package=hexdemo_mid=100%"]);
    assert!(odd.status.success(), "{}", String::from_utf8_lossy(&odd.stderr));
    assert!(String::from_utf8_lossy(&odd.stderr).contains("0 entries"), "{}", String::from_utf8_lossy(&odd.stderr));
    let slash = run(&["cache", "list", "hexpm/tarballs/hexdemo_mid-0.2.0.tar"]);
    assert!(slash.status.success(), "{}", String::from_utf8_lossy(&slash.stderr));
    let out = String::from_utf8_lossy(&slash.stdout);
    let resource = tarball.trim_start_matches("public/hexpm/");
    assert!(out.contains(resource), "{out}");
    assert!(String::from_utf8_lossy(&slash.stderr).contains("1 entry,"), "{}", String::from_utf8_lossy(&slash.stderr));

    // The admin listener still answers the operations endpoints, and nothing of the repository.
    assert_eq!(get(&format!("{url}/healthz"), &[]).await.status, 200);
    assert_eq!(get(&format!("{url}/tarballs/hexdemo_mid-0.2.0.tar"), &[]).await.status, 404);
    mirror.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_sync_resumes_without_refetching_what_is_done() {
    let upstream = TestUpstream::start(demo_files("hexpm", "")).await;
    upstream.state.lock().unwrap().delay = std::time::Duration::from_millis(250);
    let site = TestMirror::builder().upstream(&upstream.url());
    let config = site.write_config();
    let mut child = hexmirror_command(&config)
        .args(["sync", "--package", "hexdemo_top", "--concurrency", "1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Let it store some of the work, then kill it without warning.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while upstream.total_requests() < 6 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let first_run = upstream.total_requests();
    assert!(first_run < 11, "the sync must be interrupted before it finished ({first_run} requests)");
    upstream.state.lock().unwrap().delay = std::time::Duration::ZERO;
    let c = config.clone();
    let resumed =
        tokio::task::spawn_blocking(move || run_hexmirror(&c, &["sync", "--package", "hexdemo_top"])).await.unwrap();
    assert!(resumed.status.success(), "{}", String::from_utf8_lossy(&resumed.stdout));
    // Every tarball was downloaded at most once more than it was completed before the kill:
    // at most the one in flight at the kill is asked for twice.
    let twice: usize =
        TARBALLS.iter().filter(|(n, v)| upstream.requests_for(&format!("/tarballs/{n}-{v}.tar")) > 1).count();
    assert!(twice <= 1, "refetched {twice} tarballs");
    let verify = tokio::task::spawn_blocking(move || run_hexmirror(&config, &["verify"])).await.unwrap();
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stdout));
}

#[tokio::test]
async fn sync_all_estimates_first_then_mirrors_every_release() {
    let upstream = TestUpstream::start(demo_files("hexpm", "")).await;
    let mirror = TestMirror::builder().upstream(&upstream.url()).start().await;
    let (events, sink) = collect_events();
    let req = SyncRequest { all: true, concurrency: 4, ..Default::default() };
    let summary = hexmirror::sync::run(&mirror.mirror, &req, &sink).await;
    assert!(summary.ok(), "{summary:?}");
    let events = events.lock().unwrap().clone();
    let first_estimate = events.iter().position(|e| matches!(e, hexmirror::sync::Event::Estimate { .. })).unwrap();
    let first_tarball = events
        .iter()
        .position(|e| matches!(e, hexmirror::sync::Event::Item { resource, .. } if resource.contains("tarballs/")))
        .unwrap();
    assert!(first_estimate < first_tarball, "the estimate comes before any download");
    match &events[first_estimate] {
        hexmirror::sync::Event::Estimate { packages, releases, .. } => assert_eq!((*packages, *releases), (3, 5)),
        _ => unreachable!(),
    }
    // Every release but the retired one.
    assert_eq!(upstream.requests_for("/tarballs/hexdemo_mid-0.1.0.tar"), 1);
    assert_eq!(upstream.requests_for("/tarballs/hexdemo_base-1.0.0.tar"), 0);
}

#[tokio::test]
async fn sync_installers_fetches_the_signed_lists_and_the_newest_archives() {
    use base64::Engine;
    use sha2::Digest;
    let mut files = demo_files("hexpm", "");
    for (app, file) in [("hex", "hex-2.0.6.ez"), ("rebar3", "rebar3-3.22.0")] {
        let archive = format!("{app} archive").into_bytes();
        let version = file.trim_start_matches(&format!("{app}-")).trim_end_matches(".ez");
        let csv = format!("0.1.0,00,1.0.0\n{version},{},1.15.0\n", hex::encode(sha2::Sha512::digest(&archive)));
        let signature = base64::engine::general_purpose::STANDARD.encode(test_signature(csv.as_bytes()));
        files.insert(format!("/installs/{app}-1.x.csv"), csv.into_bytes());
        files.insert(format!("/installs/{app}-1.x.csv.signed"), signature.into_bytes());
        files.insert(format!("/installs/1.15.0/{file}"), archive);
    }
    let upstream = TestUpstream::start(files).await;
    let mirror =
        TestMirror::builder().upstream(&upstream.url()).set("installs_public_key", demo_key_path()).start().await;
    let (_events, sink) = collect_events();
    let req = SyncRequest { installers: true, concurrency: 2, ..Default::default() };
    let summary = hexmirror::sync::run(&mirror.mirror, &req, &sink).await;
    assert!(summary.ok(), "{summary:?}");
    assert_eq!(upstream.requests_for("/installs/1.15.0/hex-2.0.6.ez"), 1);
    assert_eq!(upstream.requests_for("/installs/1.15.0/rebar3-3.22.0"), 1);
    assert_eq!(summary.fetched, 6, "{summary:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_and_import_stream_a_bundle_larger_than_their_memory_bound() {
    let bundle = large_bundle();
    let site = TestMirror::builder().upstream("http://127.0.0.1:9").offline().set("memory_cache_bytes", "1MiB");
    let mirror = site.start().await;
    hexmirror::transfer::import(&mirror.mirror, &bundle).await.unwrap();
    mirror.stop().await;
    let config = site.write_config();
    let out = site.dir().join("large.hxb");
    let (status, text, peak_mib) =
        tokio::task::block_in_place(|| run_measuring_peak(&config, &["export", "--out", out.to_str().unwrap()]));
    assert!(status.success(), "{text}");
    assert!(std::fs::read(&out).unwrap() == bundle, "the streamed bundle is byte-identical to the one written whole");
    eprintln!("export of a {} MiB bundle: peak RSS {peak_mib} MiB", bundle.len() >> 20);
    assert!(
        peak_mib < STREAMING_PEAK_MIB,
        "export of a {} MiB bundle peaked at {peak_mib} MiB, over {STREAMING_PEAK_MIB} MiB",
        bundle.len() >> 20
    );

    // Imported from the file into an empty store by the binary: read as a stream, staged, stored.
    let empty = TestMirror::builder().upstream("http://127.0.0.1:9").offline().set("memory_cache_bytes", "1MiB");
    let config = empty.write_config();
    let (status, text, peak_mib) =
        tokio::task::block_in_place(|| run_measuring_peak(&config, &["import", out.to_str().unwrap()]));
    assert!(status.success(), "{text}");
    assert!(text.contains(&format!("{LARGE_OBJECTS} new")), "{text}");
    eprintln!("import of a {} MiB bundle: peak RSS {peak_mib} MiB", bundle.len() >> 20);
    assert!(
        peak_mib < STREAMING_PEAK_MIB,
        "import of a {} MiB bundle peaked at {peak_mib} MiB, over {STREAMING_PEAK_MIB} MiB",
        bundle.len() >> 20
    );
    let staging = empty.data_dir().join("import-staging");
    assert_eq!(std::fs::read_dir(&staging).map(|d| d.count()).unwrap_or(0), 0, "staged files are removed");
    let mirror = empty.start().await;
    assert_eq!(mirror.stored().await.len(), LARGE_OBJECTS);
    assert!(mirror.stored().await.iter().all(|(_, m)| m.pinned), "imported entries are pinned");
}
