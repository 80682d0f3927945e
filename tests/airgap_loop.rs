//! The air-gap loop: an offline mirror notes what clients asked for and it lacked (kept across
//! restarts), `hexmirror missing --format requirements` writes it as lines that
//! `sync --requirements FILE` takes outside, and the next bundle carries exactly that.

mod common;

use common::*;
use hexmirror::sync::{collect_events, SyncRequest};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn what_an_offline_mirror_lacked_is_noted_kept_and_synced_outside() {
    // Inside: a site that synced hexdemo_base only, now offline.
    let upstream = TestUpstream::start(demo_files("hexpm", "")).await;
    let inside = TestMirror::builder().upstream(&upstream.url());
    let online = inside.start().await;
    let (_events, sink) = collect_events();
    let request = SyncRequest { packages: vec!["hexdemo_base".into()], concurrency: 4, ..Default::default() };
    assert!(hexmirror::sync::run(&online.mirror, &request, &sink).await.ok());
    online.stop().await;
    let offline = inside.clone().offline().start().await;
    for (path, status) in [
        ("/tarballs/hexdemo_top-2.0.1.tar", 404),
        ("/tarballs/hexdemo_top-2.0.1.tar", 404),
        ("/packages/hexdemo_mid", 404),
        ("/tarballs/hexdemo_base-1.1.0.tar", 200),
    ] {
        assert_eq!(offline.get(path).await.status, status, "{path}");
    }
    let metrics = offline.metrics().await;
    assert_eq!(metric_sum(&metrics, "hexmirror_offline_missing_total", &["repo=\"hexpm\""]), 3.0, "{metrics}");
    offline.stop().await;

    // Kept across a restart, and readable without a server.
    let config = inside.clone().offline().write_config();
    let out = run_hexmirror(&config, &["missing"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let top = table.lines().find(|l| l.contains("hexdemo_top")).unwrap_or_else(|| panic!("{table}"));
    assert!(top.contains("2.0.1") && top.split_whitespace().any(|w| w == "2"), "asked twice: {top}");
    let requirements = inside.dir().join("missing.txt");
    let out = run_hexmirror(&config, &["missing", "--format", "requirements", "--out", requirements.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read_to_string(&requirements).unwrap(), "hexdemo_mid\nhexdemo_top == 2.0.1\n");
    let out = run_hexmirror(&config, &["missing", "--format", "json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 2);

    // Outside: exactly what was missing (and its dependencies) is synced.
    let outside = TestMirror::builder().upstream(&upstream.url());
    let out = run_hexmirror(&outside.write_config(), &["sync", "--requirements", requirements.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let outside = outside.start().await;
    let stored: Vec<String> = outside.stored().await.into_iter().map(|(k, _)| k.to_string()).collect();
    assert!(stored.contains(&"public/hexpm/tarballs/hexdemo_top-2.0.1.tar".to_string()), "{stored:?}");
    assert!(
        !stored.contains(&"public/hexpm/tarballs/hexdemo_top-2.0.0.tar".to_string()),
        "only the release asked for: {stored:?}"
    );
    assert!(stored.iter().any(|k| k.starts_with("public/hexpm/tarballs/hexdemo_mid-")), "{stored:?}");
    outside.stop().await;
}

#[test]
fn a_requirements_file_with_no_specs_is_an_error() {
    let site = TestMirror::builder().upstream("http://127.0.0.1:9");
    let file = site.dir().join("empty.txt");
    std::fs::write(&file, "# nothing yet\n\n").unwrap();
    let out = run_hexmirror(&site.write_config(), &["sync", "--requirements", file.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no package specs"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
