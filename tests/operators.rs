//! What an operator meets first: configuration mistakes reported all at once with a
//! suggestion, `check-config`, `HEXMIRROR_CONFIG`, and Kubernetes service links ignored; where
//! the store is (a data directory that cannot be used stops start-up with exit status 73, the
//! commands never create a store they only read, and every command says which config file and
//! data directory it uses).

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

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

// ------------------------------------------------------------------------------------------
// Where is my store?
// ------------------------------------------------------------------------------------------

/// EX_CANTCREAT: the data directory can be neither opened nor created.
const EXIT_CANTCREAT: i32 = 73;
/// The exit status of a configuration mistake (and of a command that nothing points at a store).
const EXIT_CONFIG: i32 = 64;

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Runs `cmd` to its end, or kills it after `limit` and fails: a server that should have
/// refused to start must not be found serving.
fn run_within(mut cmd: Command, limit: Duration) -> Output {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("still running after {limit:?} (serving without its store?):\n{}", text(&out));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// `hexmirror serve` on `data_dir` with no configuration file, on a free loopback port.
fn serve_on(data_dir: &Path) -> Command {
    let mut cmd = hexmirror();
    cmd.args(["serve", "--data-dir"]).arg(data_dir).env("HEXMIRROR_LISTEN", "127.0.0.1:0");
    cmd
}

/// Checks a refused start-up: exit status 73 and one line, besides the line naming the config
/// file and data directory, that names the data directory.
fn assert_refused_start(out: &Output, data_dir: &Path, why: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(EXIT_CANTCREAT), "{}", text(out));
    let reasons: Vec<&str> = stderr.lines().filter(|l| l.starts_with("hexmirror: cannot")).collect();
    assert_eq!(reasons.len(), 1, "one line says why: {stderr}");
    assert!(reasons[0].contains(&data_dir.display().to_string()), "names the path: {stderr}");
    assert!(reasons[0].contains(why), "says why ({why}): {stderr}");
}

#[test]
fn serve_on_a_data_dir_under_a_regular_file_fails_at_once_with_exit_73() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("FILE");
    std::fs::write(&file, b"not a directory").unwrap();
    let data = file.join("data");
    let started = Instant::now();
    let out = run_within(serve_on(&data), Duration::from_secs(20));
    assert_refused_start(&out, &data, "Not a directory");
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
}

#[test]
fn serve_on_a_data_dir_it_may_not_create_fails_with_exit_73() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let locked = dir.path().join("locked");
    std::fs::create_dir(&locked).unwrap();
    let data = locked.join("data");
    let mut cmd = serve_on(&data);
    cmd.current_dir(dir.path());
    if std::fs::metadata(dir.path()).unwrap().uid() == 0 {
        // Permission bits do not stop root: the server runs as nobody in a directory of root's.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755)).unwrap();
        cmd.uid(65534).gid(65534);
        if let Err(e) = Command::new(env!("CARGO_BIN_EXE_hexmirror")).arg("--version").uid(65534).gid(65534).output() {
            assert!(std::env::var("CI").is_err(), "the test binary cannot run as nobody under CI: {e}");
            eprintln!("SKIPPED (root, and nobody cannot run {}): {e}", env!("CARGO_BIN_EXE_hexmirror"));
            return;
        }
    } else {
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o555)).unwrap();
    }
    let out = run_within(cmd, Duration::from_secs(20));
    assert_refused_start(&out, &data, "Permission denied");
    assert!(!data.exists());
}

#[test]
fn serve_with_no_configuration_at_all_creates_data_and_says_where() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = hexmirror()
        .arg("serve")
        .current_dir(dir.path())
        .env("HEXMIRROR_LISTEN", format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Ready (the store is open once /readyz answers 200; the port accepts connections earlier).
    let deadline = Instant::now() + Duration::from_secs(20);
    while curl_status(&format!("http://127.0.0.1:{port}/readyz")) != Some(200) {
        if Instant::now() > deadline || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            panic!("did not start: {}", text(&child.wait_with_output().unwrap()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(dir.path().join("data").join("index").is_dir(), "serve creates ./data");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let data = std::path::absolute(dir.path().join("data")).unwrap();
    assert!(stderr.contains("hexmirror: config (none"), "{stderr}");
    assert!(stderr.contains(&format!("data directory {}", data.display())), "{stderr}");
}

/// The status `curl` got from `url`, if it got one.
fn curl_status(url: &str) -> Option<u16> {
    let out = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "2", url])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).parse().ok().filter(|code| *code != 0)
}

/// An empty bundle in `dir`.
fn empty_bundle(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("empty.hxb");
    hexmirror::bundle::write(&[], None, std::fs::File::create(&path).unwrap()).unwrap();
    path
}

#[test]
fn commands_with_nothing_naming_a_store_refuse_an_absent_data_dir_and_create_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("out.hxb");
    let commands: &[&[&str]] = &[
        &["verify"],
        &["cache", "list"],
        &["cache", "show", "phoenix"],
        &["cache", "purge", "phoenix"],
        &["refusals"],
        &["export", "--out", out_file.to_str().unwrap()],
    ];
    for args in commands {
        let out = hexmirror().args(*args).current_dir(dir.path()).output().unwrap();
        assert_eq!(out.status.code(), Some(EXIT_CONFIG), "{args:?}: {}", text(&out));
        assert!(text(&out).contains("no store at ./data; pass --config or --data-dir"), "{args:?}: {}", text(&out));
        assert!(!text(&out).contains("verify: ok"), "{args:?}: {}", text(&out));
        assert!(!dir.path().join("data").exists(), "{args:?} created ./data");
        assert!(!out_file.exists());
    }
    // A bundle is looked at without a store: there is nothing to compare it with.
    let bundle = empty_bundle(dir.path());
    let out = hexmirror().arg("inspect").arg(&bundle).current_dir(dir.path()).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("no store to compare with"), "{}", text(&out));
    assert!(!dir.path().join("data").exists(), "inspect created ./data");
    // What fills a store creates it.
    let out = hexmirror().arg("import").arg(&bundle).current_dir(dir.path()).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(dir.path().join("data").join("index").is_dir(), "import creates ./data");
    let out = hexmirror().arg("verify").current_dir(dir.path()).output().unwrap();
    assert!(out.status.success() && text(&out).contains("verify: ok"), "./data holds a store now: {}", text(&out));
}

#[test]
fn a_named_data_dir_without_a_store_is_an_empty_store_and_stays_uncreated() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("nothing-here");
    let config = dir.path().join("hexmirror.toml");
    std::fs::write(&config, format!("data_dir = {:?}\n", data.to_str().unwrap())).unwrap();
    for way in ["--data-dir", "HEXMIRROR_DATA_DIR", "--config"] {
        let run = |args: &[&str]| {
            let mut cmd = hexmirror();
            cmd.current_dir(dir.path());
            match way {
                "--data-dir" => cmd.arg("--data-dir").arg(&data),
                "--config" => cmd.arg("--config").arg(&config),
                _ => cmd.env("HEXMIRROR_DATA_DIR", &data),
            };
            cmd.args(args).output().unwrap()
        };
        let out = run(&["verify"]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{way}: {}", text(&out));
        assert!(stdout.contains("verify: 0 entries checked"), "{way}: {stdout}");
        assert!(stdout.contains("holds no entries"), "{way}: says so: {stdout}");
        assert!(stdout.contains("verify: ok"), "{way}: {stdout}");
        let out = run(&["cache", "list"]);
        assert!(out.status.success(), "{way}: {}", text(&out));
        assert!(!String::from_utf8_lossy(&out.stdout).contains("hexpm"), "{way}: {}", text(&out));
        let out = run(&["refusals"]);
        assert!(out.status.success(), "{way}: {}", text(&out));
        assert!(!data.exists(), "{way}: the named data directory was created");
        assert!(!dir.path().join("data").exists(), "{way}: ./data was created");
    }
}

#[test]
fn commands_on_a_data_dir_that_cannot_be_a_directory_exit_73() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("FILE");
    std::fs::write(&file, b"").unwrap();
    let data = file.join("data");
    let bundle = empty_bundle(dir.path());
    for args in [&["verify"][..], &["cache", "list"], &["import", bundle.to_str().unwrap()]] {
        let out = hexmirror().arg("--data-dir").arg(&data).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(EXIT_CANTCREAT), "{args:?}: {}", text(&out));
        assert!(text(&out).contains(&data.display().to_string()), "{args:?}: {}", text(&out));
    }
}

#[test]
fn every_command_says_which_config_and_data_directory_it_uses() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("hexmirror.toml");
    std::fs::write(&config, "data_dir = \"from-config\"\n").unwrap();
    let bundle = empty_bundle(dir.path());
    let out_file = dir.path().join("out.hxb");
    let commands: &[&[&str]] = &[
        &["import", bundle.to_str().unwrap()],
        &["verify"],
        &["cache", "list"],
        &["refusals"],
        &["inspect", bundle.to_str().unwrap()],
        &["export", "--out", out_file.to_str().unwrap()],
    ];
    let config_line = format!("hexmirror: config {}", std::path::absolute(&config).unwrap().display());
    for (dir_arg, expected) in [(None, "from-config"), (Some("from-the-command-line"), "from-the-command-line")] {
        let data = std::path::absolute(dir.path().join(expected)).unwrap();
        for args in commands {
            let mut cmd = hexmirror();
            cmd.current_dir(dir.path()).arg("--config").arg(&config);
            if let Some(d) = dir_arg {
                cmd.arg("--data-dir").arg(d);
            }
            let out = cmd.args(*args).output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            let first = stderr.lines().next().unwrap_or_default();
            assert_eq!(first, format!("{config_line}; data directory {}", data.display()), "{args:?}: {stderr}");
        }
        assert!(data.join("index").is_dir(), "import filled {}", data.display());
    }
    let out =
        hexmirror().arg("--config").arg(&config).args(["--data-dir", "elsewhere", "check-config"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("data_dir = \"elsewhere\""), "{}", text(&out));
}

// ------------------------------------------------------------------------------------------
// Output you can use
// ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_has_typed_fields_client_user_agent_upstream_and_the_bytes_sent() {
    use std::io::BufRead;
    let upstream = TestUpstream::start(demo_files("hexpm", "")).await;
    let upstream_label = upstream.url().trim_start_matches("http://").to_string();
    let site = TestMirror::builder().upstream(&upstream.url()).set("access_log", true);
    let mut served = tokio::task::block_in_place(|| site.serve_binary("warn", Stdio::piped()));
    let agent = [("user-agent", "Hex/2.1.1 (Elixir/1.17.3) (OTP/27.1)")];
    let record = demo_file("hexpm", "packages/hexdemo_mid");
    let miss = get(&served.url("/packages/hexdemo_mid"), &agent).await;
    assert_eq!((miss.status, miss.body.len()), (200, record.len()));
    let hit = get(&served.url("/packages/hexdemo_mid"), &[]).await;
    assert_eq!(hit.header("x-cache"), "hit");
    let missing = get(&served.url("/packages/no_such_package"), &agent).await;
    assert_eq!(missing.status, 404);
    assert!(!missing.body.is_empty());
    let head = request("HEAD", &served.url("/packages/hexdemo_mid"), &agent).await;
    assert_eq!(head.status, 200);
    let stdout = served.child.stdout.take().unwrap();
    let lines = tokio::task::spawn_blocking(move || {
        let mut reader = std::io::BufReader::new(stdout);
        (0..4)
            .map(|_| {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                line
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    served.stop();
    let records: Vec<serde_json::Value> =
        lines.iter().map(|l| serde_json::from_str(l.trim()).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
    for (line, r) in lines.iter().zip(&records) {
        assert_eq!(line.matches('\n').count(), 1, "one object per line: {line}");
        let time = r["time"].as_str().unwrap_or_else(|| panic!("time is an RFC 3339 string: {line}"));
        humantime::parse_rfc3339(time).unwrap_or_else(|e| panic!("{time}: {e}"));
        assert!(time.len() == "2026-01-02T03:04:05.678Z".len() && time.ends_with('Z'), "milliseconds: {time}");
        assert_eq!(r["client"], "127.0.0.1", "{line}");
        assert!(r["status"].is_u64() && r["bytes"].is_u64() && r["duration_ms"].is_number(), "numbers: {line}");
        assert_eq!(r["method"], if r == &records[3] { "HEAD" } else { "GET" }, "{line}");
    }
    let fields = |r: &serde_json::Value| {
        (
            r["path"].clone(),
            r["cache"].clone(),
            r["bytes"].as_u64().unwrap(),
            r["upstream"].clone(),
            r["user_agent"].clone(),
        )
    };
    let ua = serde_json::json!(agent[0].1);
    let via = serde_json::json!(upstream_label);
    let null = serde_json::Value::Null;
    assert_eq!(
        fields(&records[0]),
        ("/packages/hexdemo_mid".into(), "miss".into(), record.len() as u64, via.clone(), ua.clone())
    );
    assert_eq!(
        fields(&records[1]),
        ("/packages/hexdemo_mid".into(), "hit".into(), record.len() as u64, null.clone(), null)
    );
    assert_eq!(
        fields(&records[2]),
        ("/packages/no_such_package".into(), "miss".into(), missing.body.len() as u64, via, ua.clone()),
        "an error's body is counted"
    );
    assert_eq!(fields(&records[3]), ("/packages/hexdemo_mid".into(), "hit".into(), 0, serde_json::Value::Null, ua));
}

/// Runs `hexmirror --config CONFIG ARGS...` off the runtime's threads.
async fn run_async(config: &Path, args: &[&str]) -> Output {
    let (config, args) = (config.to_path_buf(), args.iter().map(|a| a.to_string()).collect::<Vec<_>>());
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_hexmirror(&config, &args)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_list_has_a_header_resource_paths_organizations_by_name_and_is_stable() {
    let upstream = public_hexpm_and_acme().await;
    let site = TestMirror::builder().upstream(&upstream.url());
    let mirror = site.start().await;
    for path in ["/packages/hexdemo_mid", "/tarballs/hexdemo_mid-0.2.0.tar", "/repos/acme/packages/hexdemo_mid"] {
        assert_eq!(mirror.get(path).await.status, 200, "{path}");
    }
    mirror.mirror.settle_writes().await;
    let config = site.config_path();
    // Through the running server, then on the store itself: the same table.
    let through_server = run_async(&config, &["cache", "list"]).await;
    mirror.stop().await;
    let first = run_async(&config, &["cache", "list"]).await;
    let second = run_async(&config, &["cache", "list"]).await;
    assert!(first.status.success(), "{}", text(&first));
    let table = String::from_utf8_lossy(&first.stdout).to_string();
    assert_eq!(String::from_utf8_lossy(&second.stdout), table, "the same store prints the same table");
    assert_eq!(String::from_utf8_lossy(&through_server.stdout), table, "through the server too");
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "a header and one row per entry:\n{table}");
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(&header[..3], ["REPOSITORY", "RESOURCE", "SIZE"], "{table}");
    let row = |resource: &str| {
        lines[1..].iter().find(|l| l.split("  ").any(|cell| cell.trim() == resource)).copied().unwrap_or_default()
    };
    let tarball = row("tarballs/hexdemo_mid-0.2.0.tar");
    assert!(tarball.starts_with("hexpm "), "{table}");
    let size = demo_file("hexpm", "tarballs/hexdemo_mid-0.2.0.tar").len().to_string();
    assert!(tarball.split_whitespace().any(|cell| cell == size), "{table}");
    assert!(lines.iter().any(|l| l.starts_with("acme (hex.pm organization)")), "{table}");
    assert!(!table.contains("hexpm~acme"), "{table}");
    assert!(!table.contains(" ago"), "no relative times: {table}");
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert!(stderr.contains("3 entries, "), "the total on stderr: {stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_outputs_of_cache_list_verify_refusals_and_inspect_parse() {
    let upstream = public_hexpm_and_acme().await;
    let site = TestMirror::builder().upstream(&upstream.url());
    let mirror = site.start().await;
    for path in ["/packages/hexdemo_mid", "/tarballs/hexdemo_mid-0.2.0.tar", "/repos/acme/packages/hexdemo_mid"] {
        assert_eq!(mirror.get(path).await.status, 200, "{path}");
    }
    let config = site.config_path();
    let parse = |out: &Output| -> serde_json::Value {
        assert!(out.status.success(), "{}", text(out));
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(out)))
    };
    // Through the running server.
    let refusals = parse(&run_async(&config, &["refusals", "--json"]).await);
    assert_eq!(refusals, serde_json::json!([]));
    let listed = parse(&run_async(&config, &["cache", "list", "--json"]).await);
    mirror.stop().await;
    // And on the store.
    assert_eq!(parse(&run_async(&config, &["cache", "list", "--json"]).await), listed);
    let rows = listed.as_array().unwrap();
    assert_eq!(rows.len(), 3, "{listed:#}");
    let tarball = rows.iter().find(|r| r["resource"] == "tarballs/hexdemo_mid-0.2.0.tar").expect("the tarball");
    assert_eq!(tarball["repository"], "hexpm");
    assert_eq!(tarball["key"], "public/hexpm/tarballs/hexdemo_mid-0.2.0.tar");
    assert!(tarball["size"].is_u64() && tarball["pinned"].is_boolean(), "{tarball}");
    humantime::parse_rfc3339(tarball["fetched_at"].as_str().unwrap()).unwrap();
    assert!(rows.iter().any(|r| r["organization"] == "acme" && r["resource"] == "packages/hexdemo_mid"), "{listed:#}");
    let shown = parse(&run_async(&config, &["cache", "show", "hexdemo_mid", "--json"]).await);
    assert_eq!(shown.as_array().unwrap().len(), 3);

    let verify = parse(&run_async(&config, &["verify", "--json"]).await);
    assert_eq!((verify["ok"].clone(), verify["checked"].clone()), (true.into(), 3.into()), "{verify:#}");
    assert!(verify["damaged"].as_array().unwrap().is_empty());
    let refusals = parse(&run_async(&config, &["refusals", "--json"]).await);
    assert_eq!(refusals, serde_json::json!([]), "no server: nothing kept");

    let bundle = site.dir().join("site.hxb");
    let export = run_async(&config, &["export", "--out", bundle.to_str().unwrap()]).await;
    assert!(export.status.success(), "{}", text(&export));
    let inspect = parse(&run_async(&config, &["inspect", bundle.to_str().unwrap(), "--json"]).await);
    assert_eq!(inspect["totals"]["objects"], 3, "{inspect:#}");
    assert_eq!(inspect["store"]["same"], 3, "{inspect:#}");
    assert_eq!(inspect["packages"][0]["name"], "hexdemo_mid", "{inspect:#}");
    assert!(inspect["warnings"].as_array().unwrap().is_empty(), "{inspect:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incremental_bundle_without_its_base_says_to_import_the_base_first() {
    let upstream = TestUpstream::start(demo_files("hexpm", "")).await;
    let outside = TestMirror::builder().upstream(&upstream.url());
    let config = outside.write_config();
    let base = outside.dir().join("base.hxb");
    let next = outside.dir().join("next.hxb");
    for args in [
        &["sync", "--package", "hexdemo_base"][..],
        &["export", "--out", base.to_str().unwrap()],
        &["sync", "--package", "hexdemo_top"],
        &["export", "--out", next.to_str().unwrap(), "--base", base.to_str().unwrap()],
    ] {
        let out = run_async(&config, args).await;
        assert!(out.status.success(), "{args:?}: {}", text(&out));
    }
    let sums = format!("{}.sha256", base.display());
    let base_sha = std::fs::read_to_string(&sums).unwrap();
    // `sha256sum -c` form, naming the bundle as it lies beside it: checkable wherever carried.
    let check = std::process::Command::new("sha256sum")
        .arg("-c")
        .arg(&sums)
        .current_dir(base.parent().unwrap())
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stdout));
    let base_sha = base_sha.split_whitespace().next().unwrap().to_string();
    let says = format!("this bundle builds on {base_sha}");

    let inside = TestMirror::builder().upstream(&upstream.url()).offline();
    let config = inside.write_config();
    let inspect = run_async(&config, &["inspect", next.to_str().unwrap()]).await;
    assert!(inspect.status.success(), "{}", text(&inspect));
    let stdout = String::from_utf8_lossy(&inspect.stdout);
    assert!(stdout.contains(&format!("warning: {says}")) && stdout.contains("import that first"), "{stdout}");
    let import = run_async(&config, &["import", next.to_str().unwrap()]).await;
    assert!(!import.status.success(), "{}", text(&import));
    assert!(text(&import).contains(&format!("{says}; import that first")), "{}", text(&import));
    let list = run_async(&config, &["cache", "list"]).await;
    assert!(String::from_utf8_lossy(&list.stdout).is_empty(), "nothing was imported: {}", text(&list));

    for bundle in [&base, &next] {
        let import = run_async(&config, &["import", bundle.to_str().unwrap()]).await;
        assert!(import.status.success(), "{}", text(&import));
    }
    let inspect = run_async(&config, &["inspect", next.to_str().unwrap()]).await;
    assert!(!String::from_utf8_lossy(&inspect.stdout).contains("warning"), "{}", text(&inspect));
    let verify = run_async(&config, &["verify"]).await;
    assert!(verify.status.success(), "{}", text(&verify));
}
