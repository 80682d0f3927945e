//! `DATA_DIR/admin.json` names the admin endpoint of a running server and carries its bearer
//! token. Another local user who can write in DATA_DIR must neither learn the token (through a
//! planted temporary file) nor point the client commands at an endpoint of their own.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use common::*;

fn mode_of(path: &Path) -> u32 {
    std::fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
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
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    chmod(&data, 0o777);
    let toml = config_toml(dir.path(), &upstream.url(), "");

    // A symlink planted under the old fixed temporary name, pointing at a file of the victim's.
    let outside = dir.path().join("precious.conf");
    std::fs::write(&outside, b"precious contents\n").unwrap();
    let planted = data.join("admin.json.tmp");
    std::os::unix::fs::symlink(&outside, &planted).unwrap();
    let mirror = TestMirror::start(load_config(dir.path(), &toml)).await;
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
    let mirror = TestMirror::start(load_config(dir.path(), &toml)).await;
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
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let outside = dir.path().join("precious.conf");
    std::fs::write(&outside, b"precious contents\n").unwrap();
    std::os::unix::fs::symlink(&outside, data.join("admin.json")).unwrap();
    let mirror = TestMirror::start(load_config(dir.path(), &config_toml(dir.path(), &upstream.url(), ""))).await;
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
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let toml = config_toml(dir.path(), &upstream.url(), "");
    let mut tokens = Vec::new();
    for _ in 0..2 {
        let mirror = TestMirror::start(load_config(dir.path(), &toml)).await;
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
