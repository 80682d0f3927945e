//! What an operator meets first: configuration mistakes reported all at once with a
//! suggestion, `check-config`, `HEXMIRROR_CONFIG`, and Kubernetes service links ignored.

mod common;

use std::process::Command;

use common::*;

fn hexmirror() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hexmirror"));
    cmd.env("RUST_LOG", "warn");
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("HEXMIRROR_")) {
        cmd.env_remove(key);
    }
    cmd
}

#[test]
fn check_config_prints_the_effective_configuration_with_secrets_redacted() {
    let site = TestMirror::builder().upstream("https://repo.example").set("admin_token", "admin-s3cret-77").repo(
        "corp",
        RepoSpec::demo("https://repo.example/repos/corp").auth_key("corp-key-s3cret").access_tokens(&["client-s3cret"]),
    );
    let config = site.write_config();
    let out = run_hexmirror(&config, &["check-config"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    for secret in ["admin-s3cret-77", "corp-key-s3cret", "client-s3cret"] {
        assert!(!stdout.contains(secret), "{secret} printed:\n{stdout}");
    }
    assert!(stdout.contains("<redacted>"));
    assert!(stdout.contains("breaker_failures = 5") && stdout.contains("[repos.corp]"), "{stdout}");
}

#[test]
fn every_mistake_is_reported_at_once_with_the_file_line_and_a_suggestion() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hexmirror.toml");
    std::fs::write(&path, "lisen = \"127.0.0.1:4000\"\n[repos.hexpm]\nupstrem = \"https://repo.hex.pm\"\n").unwrap();
    for args in [&["check-config"][..], &["serve"][..]] {
        let out = hexmirror().arg("--config").arg(&path).args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {stderr}");
        let file = path.display().to_string();
        assert!(stderr.contains(&format!("{file}, line 1: unknown key `lisen`; did you mean `listen`?")), "{stderr}");
        assert!(
            stderr.contains(&format!("{file}, line 3: unknown key `repos.hexpm.upstrem`; did you mean `upstream`?")),
            "{stderr}"
        );
    }
}

#[test]
fn the_config_path_comes_from_hexmirror_config_and_service_links_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hexmirror.toml");
    std::fs::write(&path, "listen = \"localhost:4999\"\noffline = \"yes\"\n").unwrap();
    let out = hexmirror()
        .arg("check-config")
        .env("HEXMIRROR_CONFIG", &path)
        .env("HEXMIRROR_PORT", "tcp://10.96.0.12:4000")
        .env("HEXMIRROR_PORT_4000_TCP", "tcp://10.96.0.12:4000")
        .env("HEXMIRROR_PORT_4000_TCP_ADDR", "10.96.0.12")
        .env("HEXMIRROR_SERVICE_HOST", "10.96.0.12")
        .env("HEXMIRROR_SERVICE_PORT", "4000")
        .env("HEXMIRROR_ACCESS_LOG", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(&path.display().to_string()), "names the file it read: {stdout}");
    assert!(stdout.contains("listen = \"localhost:4999\""), "{stdout}");
    assert!(stdout.contains("offline = true") && stdout.contains("access_log = true"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_whose_package_spec_matches_nothing_fails_naming_it() {
    let upstream = TestUpstream::start(demo_files("hexpm", "")).await;
    let site = TestMirror::builder().upstream(&upstream.url());
    let config = site.write_config();
    let cases: &[(&[&str], bool, &str)] = &[
        (&["--package", "hexdemo_top >= 9.0.0"], false, "hexdemo_top >= 9.0.0"),
        (&["--package", "no_such_package"], false, "no_such_package"),
        (&["--package", "hexdemo_top ~> 2.0"], true, "0 failed"),
    ];
    for (args, succeeds, says) in cases {
        let config = config.clone();
        let owned: Vec<String> = ["sync"].iter().chain(args.iter()).map(|a| a.to_string()).collect();
        let out = tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = owned.iter().map(String::as_str).collect();
            run_hexmirror(&config, &args)
        })
        .await
        .unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.status.success(), *succeeds, "{args:?}: {text}");
        assert!(text.contains(says), "{args:?}: {text}");
        if !succeeds {
            assert!(text.contains("no release matches") || text.contains("no verified registry record"), "{text}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_and_export_that_match_nothing_fail_and_purge_can_be_scoped_and_dry_run() {
    let upstream = TestUpstream::start(demo_files("hexpm", "")).await;
    let mirror = TestMirror::builder().upstream(&upstream.url()).start().await;
    assert_eq!(mirror.get("/tarballs/hexdemo_mid-0.2.0.tar").await.status, 200);
    let config = mirror.site().config_path();
    let run = move |args: &'static [&'static str]| {
        let config = config.clone();
        async move { tokio::task::spawn_blocking(move || run_hexmirror(&config, args)).await.unwrap() }
    };
    let text = |out: &std::process::Output| {
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    };
    let out = run(&["cache", "purge", "nosuch"]).await;
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("nothing stored for package nosuch"), "{}", text(&out));
    let out = run(&["cache", "purge", "hexdemo_mid", "--repo", "corp"]).await;
    assert!(!out.status.success() && text(&out).contains("in repository corp"), "{}", text(&out));
    let out = run(&["cache", "purge", "hexdemo_mid", "--dry-run"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("would remove public/hexpm/tarballs/hexdemo_mid-0.2.0.tar"), "{}", text(&out));
    assert_eq!(
        mirror.get("/tarballs/hexdemo_mid-0.2.0.tar").await.header("x-cache"),
        "hit",
        "a dry run removes nothing"
    );
    let out = run(&["cache", "purge", "hexdemo_mid", "--repo", "hexpm"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("removed public/hexpm/packages/hexdemo_mid"), "{}", text(&out));
    let out = run(&["export", "--filter", "no-such-key", "--out", "/dev/null/never"]).await;
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("no stored entry's key contains \"no-such-key\""), "{}", text(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_says_when_pinned_content_exceeds_the_disk_budget() {
    let upstream = TestUpstream::start(demo_files("hexpm", "")).await;
    for (budget, noted) in [("4KiB", true), ("1GiB", false)] {
        let site = TestMirror::builder().upstream(&upstream.url()).set("disk_cache_bytes", budget);
        let config = site.write_config();
        let out = tokio::task::spawn_blocking(move || {
            let sync = run_hexmirror(&config, &["sync", "--package", "hexdemo_top"]);
            assert!(sync.status.success(), "{}", String::from_utf8_lossy(&sync.stderr));
            run_hexmirror(&config, &["verify"])
        })
        .await
        .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{budget}: {stdout}");
        assert_eq!(stdout.contains("note: pinned entries (synced or imported) hold"), noted, "{budget}: {stdout}");
        if noted {
            assert!(stdout.contains("more than disk_cache_bytes (4096)"), "{stdout}");
        }
        drop(site);
    }
}
