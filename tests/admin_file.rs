//! `DATA_DIR/admin.json` names the admin endpoint of a running server and carries its bearer
//! token. Another local user who can write in DATA_DIR must neither learn the token (through a
//! planted temporary file) nor point the client commands at an endpoint of their own.

mod common;

use std::path::Path;

use common::*;

async fn admin_ping(url: &str, token: &str) -> u16 {
    get(&format!("{url}/_admin/ping"), &[("authorization", &format!("Bearer {token}"))]).await.status
}

fn read_endpoint(data: &Path) -> (String, String) {
    let endpoint: serde_json::Value = serde_json::from_slice(&std::fs::read(data.join("admin.json")).unwrap()).unwrap();
    (endpoint["url"].as_str().unwrap().to_string(), endpoint["token"].as_str().unwrap().to_string())
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
