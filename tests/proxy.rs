//! Egress through an HTTP CONNECT proxy named by the environment (its own test binary, since
//! the proxy variables are process-wide).

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A CONNECT proxy on 127.0.0.1 that records each request head it receives.
async fn connect_proxy() -> (std::net::SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else { continue };
            let record = record.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if client.read_exact(&mut byte).await.is_err() {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).to_string();
                record.lock().unwrap().push(head.clone());
                let target = head.split_whitespace().nth(1).unwrap_or_default().to_string();
                let Ok(mut server) = TcpStream::connect(&target).await else { return };
                if client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").await.is_err() {
                    return;
                }
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            });
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn upstream_traffic_goes_through_the_connect_proxy_from_the_environment() {
    let (proxy, seen) = connect_proxy().await;
    let proxy_url = format!("http://ops:pr0xy-pass@{proxy}");
    // This binary holds this one test, so nothing else reads the environment meanwhile.
    for var in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"] {
        std::env::set_var(var, &proxy_url);
    }
    for var in ["NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"] {
        std::env::remove_var(var);
    }
    let upstream = TestUpstream::start(demo_files("hexpm", "")).await;
    let mirror = TestMirror::builder().upstream(&upstream.url()).start().await;
    let got = mirror.get("/tarballs/hexdemo_mid-0.2.0.tar").await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body, demo_file("hexpm", "tarballs/hexdemo_mid-0.2.0.tar"));
    let heads = seen.lock().unwrap().clone();
    assert!(!heads.is_empty(), "the proxy saw no traffic");
    for head in &heads {
        assert!(head.starts_with(&format!("CONNECT {} ", upstream.addr)), "{head}");
        // base64("ops:pr0xy-pass")
        assert!(head.to_ascii_lowercase().contains("proxy-authorization: basic b3bzonbymhh5lxbhc3m="), "{head}");
    }
    assert!(upstream.requests_for("/tarballs/hexdemo_mid-0.2.0.tar") == 1);
    let metrics = mirror.metrics().await;
    assert!(!metrics.contains("pr0xy-pass"));
}
