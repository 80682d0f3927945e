//! Fills a data directory with N synthetic entries, for measuring start-up and idle memory with
//! a populated store: `cargo run --release --example populate_store -- DATA_DIR 10000`.

use hexmirror::cache::{CacheKey, Class, DiskStore, Store, StoredMeta, Validators};
use sha2::{Digest, Sha256};

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let dir = args.next().expect("usage: populate_store DATA_DIR COUNT");
    let count: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(10_000);
    let (store, _) = DiskStore::open(std::path::Path::new(&dir)).await.expect("open the store");
    for i in 0..count {
        let body = format!("synthetic body {i} {}", "x".repeat(i % 4096)).into_bytes();
        let meta = StoredMeta {
            v: StoredMeta::VERSION,
            class: Class::Verified,
            kind: "tarball".into(),
            sha256: hex::encode(Sha256::digest(&body)),
            len: body.len() as u64,
            upstream: Validators::default(),
            fetched_at: 1,
            private: false,
            pinned: false,
        };
        let key = CacheKey::parse(&format!("public/hexpm/tarballs/pkg{i}-1.0.0.tar")).expect("a cache key");
        store.put(&key, &meta, body.into()).await.expect("put");
    }
    store.flush().await.expect("flush");
    let usage = store.usage();
    println!("{} entries, {} bytes", usage.entries, usage.bytes);
}
