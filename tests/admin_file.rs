//! `DATA_DIR/admin.json` names the admin endpoint of a running server and carries its bearer
//! token. Another local user who can write in DATA_DIR must neither learn the token (through a
//! planted temporary file) nor point the client commands at an endpoint of their own.

mod common;

use std::collections::HashMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Output;

use common::*;

/// The exit status of a client command that refuses an untrusted admin.json (EX_NOPERM).
const EXIT_REFUSED: i32 = 77;

/// A uid that is neither root nor the one running the tests (when they run as root).
const NOBODY: u32 = 65534;

fn mode_of(path: &Path) -> u32 {
    std::fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn running_as_root(dir: &Path) -> bool {
    let probe = dir.join("uid-probe");
    std::fs::write(&probe, b"").unwrap();
    let root = std::fs::metadata(&probe).unwrap().uid() == 0;
    std::fs::remove_file(probe).unwrap();
    root
}

async fn admin_ping(url: &str, token: &str) -> u16 {
    get(&format!("{url}/_admin/ping"), &[("authorization", &format!("Bearer {token}"))]).await.status
}

fn read_endpoint(data: &Path) -> (String, String) {
    let endpoint: serde_json::Value = serde_json::from_slice(&std::fs::read(data.join("admin.json")).unwrap()).unwrap();
    (endpoint["url"].as_str().unwrap().to_string(), endpoint["token"].as_str().unwrap().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_json_tmp_planted_by_another_user_does_not_get_the_token() {
    use std::io::Read;
    let upstream = TestUpstream::start(demo_files("hexpm", "")).await;
    let site = TestMirror::builder().upstream(&upstream.url());
    let data = site.data_dir();
    std::fs::create_dir(&data).unwrap();
    chmod(&data, 0o777);

    // A symlink planted under the old fixed temporary name, pointing at a file of the victim's.
    let outside = site.dir().join("precious.conf");
    std::fs::write(&outside, b"precious contents\n").unwrap();
    let planted = data.join("admin.json.tmp");
    std::os::unix::fs::symlink(&outside, &planted).unwrap();
    let mirror = site.start().await;
    assert_eq!(std::fs::read(&outside).unwrap(), b"precious contents\n", "the file the symlink names is unchanged");
    assert_eq!(std::fs::read_link(&planted).unwrap(), outside, "the planted symlink is left alone");
    let admin = data.join("admin.json");
    let meta = std::fs::symlink_metadata(&admin).unwrap();
    assert!(meta.file_type().is_file(), "admin.json is a regular file, not the planted symlink");
    assert_eq!(mode_of(&admin), 0o600);
    let (url, token) = read_endpoint(&data);
    assert_eq!(admin_ping(&url, &token).await, 200, "the token in admin.json works");
    mirror.stop().await;
    std::fs::remove_file(&planted).unwrap();

    // A world-writable regular file under that name, held open by its planter.
    std::fs::write(&planted, b"").unwrap();
    chmod(&planted, 0o666);
    let mut held = std::fs::File::open(&planted).unwrap();
    let mirror = site.start().await;
    let (url, token) = read_endpoint(&data);
    let mut seen = String::new();
    held.read_to_string(&mut seen).unwrap();
    assert!(!seen.contains(&token), "the planted file does not receive the token: {seen}");
    assert_eq!(std::fs::read(&planted).unwrap(), b"", "the planted file is left alone");
    assert!(std::fs::symlink_metadata(&admin).unwrap().file_type().is_file());
    assert_eq!(mode_of(&admin), 0o600, "admin.json is readable by its owner only");
    assert_eq!(admin_ping(&url, &token).await, 200);
    mirror.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_json_is_written_into_place_over_a_planted_symlink() {
    let upstream = TestUpstream::start(demo_files("hexpm", "")).await;
    let site = TestMirror::builder().upstream(&upstream.url());
    let data = site.data_dir();
    std::fs::create_dir(&data).unwrap();
    let outside = site.dir().join("precious.conf");
    std::fs::write(&outside, b"precious contents\n").unwrap();
    std::os::unix::fs::symlink(&outside, data.join("admin.json")).unwrap();
    let mirror = site.start().await;
    assert_eq!(std::fs::read(&outside).unwrap(), b"precious contents\n");
    assert!(std::fs::symlink_metadata(data.join("admin.json")).unwrap().file_type().is_file());
    assert_eq!(mode_of(&data.join("admin.json")), 0o600);
    let (url, token) = read_endpoint(&data);
    assert_eq!(admin_ping(&url, &token).await, 200);
    mirror.stop().await;
    let leftovers: Vec<String> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains("admin"))
        .collect();
    assert!(leftovers.is_empty(), "no temporary file is left behind: {leftovers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_token_comes_from_the_os_random_source() {
    let upstream = TestUpstream::start(demo_files("hexpm", "")).await;
    let site = TestMirror::builder().upstream(&upstream.url());
    let data = site.data_dir();
    let mut tokens = Vec::new();
    for _ in 0..2 {
        let mirror = site.start().await;
        let (url, token) = read_endpoint(&data);
        assert_eq!(admin_ping(&url, &token).await, 200);
        mirror.stop().await;
        assert_eq!(token.len(), 64, "{token}");
        assert!(token.bytes().all(|b| b.is_ascii_hexdigit()), "{token}");
        assert_ne!(token, "0".repeat(64));
        tokens.push(token);
    }
    assert_ne!(tokens[0], tokens[1], "each start draws a new token");
}

/// An endpoint of the attacker's: answers like a hexmirror admin endpoint and records requests.
async fn attacker_endpoint() -> TestUpstream {
    let attacker = TestUpstream::start(HashMap::new()).await;
    attacker.script("/_admin/ping", 200, b"ok".to_vec());
    let all_ok = serde_json::json!({
        "checked": 0, "intact": 0, "damaged": [], "missing": [], "repaired": [], "unselected_releases": 0
    });
    attacker.script("/_admin/verify", 200, serde_json::to_vec(&all_ok).unwrap());
    attacker.script("/_admin/export", 200, b"the attacker's bundle".to_vec());
    attacker.script("/_admin/import", 200, b"{}".to_vec());
    attacker.script("/_admin/cache", 200, b"[]".to_vec());
    attacker.script("/_admin/refusals", 200, b"[]".to_vec());
    attacker
}

/// A data directory with a store, and a configuration naming it: the site, its data
/// directory and its configuration file.
fn attacked_site(attacker: &TestUpstream) -> (MirrorBuilder, PathBuf, PathBuf) {
    let site = TestMirror::builder().upstream(&attacker.url());
    let data = site.data_dir();
    std::fs::create_dir(&data).unwrap();
    chmod(&data, 0o755);
    let config = site.write_config();
    (site, data, config)
}

fn write_admin_json(data: &Path, attacker: &TestUpstream, mode: u32) -> PathBuf {
    let path = data.join("admin.json");
    let _ = std::fs::remove_file(&path);
    let endpoint = serde_json::json!({ "url": attacker.url(), "token": "attacker", "pid": 1 });
    std::fs::write(&path, serde_json::to_vec(&endpoint).unwrap()).unwrap();
    chmod(&path, mode);
    path
}

fn empty_bundle(dir: &Path) -> PathBuf {
    let path = dir.join("empty.hxb");
    hexmirror::bundle::write(&[], None, std::fs::File::create(&path).unwrap()).unwrap();
    path
}

/// Runs every client command that looks for a running server, and checks that each one refuses
/// with one line naming admin.json and `problem`, while the attacker's endpoint hears nothing.
fn assert_every_command_refuses(dir: &Path, config: &Path, attacker: &TestUpstream, problem: &str) {
    let out = dir.join("export.hxb");
    let bundle = empty_bundle(dir);
    let commands: Vec<Vec<&str>> = vec![
        vec!["verify"],
        vec!["export", "--out", out.to_str().unwrap()],
        vec!["import", bundle.to_str().unwrap()],
        vec!["sync", "--package", "hexdemo_top"],
        vec!["cache", "list"],
        vec!["refusals"],
        vec!["inspect", bundle.to_str().unwrap()],
    ];
    for args in commands {
        let output: Output = run_hexmirror(config, &args);
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        // Besides the line every command starts with (its config file and data directory).
        let lines: Vec<&str> =
            stderr.lines().filter(|l| !l.trim().is_empty() && !l.starts_with("hexmirror: config ")).collect();
        assert_eq!(output.status.code(), Some(EXIT_REFUSED), "{args:?}: stdout {stdout}\nstderr {stderr}");
        assert_eq!(lines.len(), 1, "{args:?}: one line on stderr about admin.json: {stderr}");
        assert!(lines[0].contains("admin.json"), "{args:?}: names the file: {stderr}");
        assert!(lines[0].contains(problem), "{args:?}: says what is wrong ({problem}): {stderr}");
        assert!(!stdout.contains("verify: ok"), "{args:?}: {stdout}");
        assert_eq!(attacker.total_requests(), 0, "{args:?}: nothing is sent to the endpoint admin.json names");
        assert!(!out.exists(), "{args:?}: no export is written");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_json_writable_by_others_is_refused_by_client_commands() {
    let attacker = attacker_endpoint().await;
    let (site, data, config) = attacked_site(&attacker);

    // The control: an admin.json that passes every check is used, so the attacker's endpoint
    // would have seen the commands below had they not refused.
    write_admin_json(&data, &attacker, 0o600);
    let control = tokio::task::block_in_place(|| run_hexmirror(&config, &["verify"]));
    assert!(String::from_utf8_lossy(&control.stdout).contains("verify: ok"));
    assert!(attacker.total_requests() > 0);
    attacker.state.lock().unwrap().requests.clear();

    for mode in [0o666, 0o620, 0o602] {
        write_admin_json(&data, &attacker, mode);
        tokio::task::block_in_place(|| {
            assert_every_command_refuses(site.dir(), &config, &attacker, "writable by group or others")
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_json_in_a_directory_writable_by_others_is_refused_by_client_commands() {
    let attacker = attacker_endpoint().await;
    let (site, data, config) = attacked_site(&attacker);
    write_admin_json(&data, &attacker, 0o600);
    // The sticky bit does not help: the directory is the store, and others may still add files.
    for mode in [0o777, 0o1777, 0o775] {
        chmod(&data, mode);
        tokio::task::block_in_place(|| {
            assert_every_command_refuses(site.dir(), &config, &attacker, "writable by group or others")
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_json_symlink_is_refused_by_client_commands() {
    let attacker = attacker_endpoint().await;
    let (site, data, config) = attacked_site(&attacker);
    let elsewhere = site.dir().join("elsewhere.json");
    let endpoint = serde_json::json!({ "url": attacker.url(), "token": "attacker", "pid": 1 });
    std::fs::write(&elsewhere, serde_json::to_vec(&endpoint).unwrap()).unwrap();
    chmod(&elsewhere, 0o600);
    std::os::unix::fs::symlink(&elsewhere, data.join("admin.json")).unwrap();
    tokio::task::block_in_place(|| assert_every_command_refuses(site.dir(), &config, &attacker, "symbolic link"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_json_owned_by_another_user_is_refused_by_client_commands() {
    let attacker = attacker_endpoint().await;
    let (site, data, config) = attacked_site(&attacker);
    if !running_as_root(site.dir()) {
        // A skipped test tests nothing: under CI (which runs as root) this is a failure.
        assert!(std::env::var("CI").is_err(), "only root can give a file to another user, and CI must run as root");
        eprintln!("SKIPPED (not root): only root can give a file to another user");
        return;
    }
    let admin = write_admin_json(&data, &attacker, 0o600);
    std::os::unix::fs::chown(&admin, Some(NOBODY), Some(NOBODY)).unwrap();
    tokio::task::block_in_place(|| {
        assert_every_command_refuses(site.dir(), &config, &attacker, &format!("owned by uid {NOBODY}"))
    });

    // The same for the directory that holds it.
    std::os::unix::fs::chown(&admin, Some(0), Some(0)).unwrap();
    std::os::unix::fs::chown(&data, Some(NOBODY), Some(NOBODY)).unwrap();
    tokio::task::block_in_place(|| {
        assert_every_command_refuses(site.dir(), &config, &attacker, &format!("owned by uid {NOBODY}"))
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_admin_json_the_commands_open_the_store_themselves() {
    let attacker = attacker_endpoint().await;
    let (_site, _data, config) = attacked_site(&attacker);
    let verify = tokio::task::block_in_place(|| run_hexmirror(&config, &["verify"]));
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stderr));
    assert!(String::from_utf8_lossy(&verify.stdout).contains("verify: ok"));
    assert_eq!(attacker.total_requests(), 0);
}
