//! Times each stage of a cold registry-file miss on the real hex.pm `/versions` fixture, in a
//! loop, for a breakdown of where a cold miss's time goes and for a profiler to look at:
//!
//! ```sh
//! cargo run --release --example cold_path -- [ROUNDS] [DATA_DIR]
//! perf record -g target/release/examples/cold_path 200 /dev/shm/cold-path
//! COLD_PATH_ONLY=summary cargo run --release --example cold_path -- 2000   # the decode alone
//! COLD_PATH_ONLY=verify cargo run --release --example cold_path -- 500     # registry_file alone
//! ```
//!
//! The stages are those the mirror runs once the upstream has answered: gunzip under the
//! limit, the `Signed` envelope and its RSA-SHA512 signature (the sha512 of the payload is also
//! timed alone), the payload decode with the origin check and the facts (all three together are
//! `verify::registry_file`, timed on its own too), the entry (its sha256 ETag), the memory tier
//! insert and the store write (blob, fsync, rename, directory fsync, index insert and flush).
//! The store is opened in DATA_DIR (default: a temporary directory under $TMPDIR or /tmp), so a
//! tmpfs such as /dev/shm can be compared with a disk. Reported per stage: median, p90, minimum.

use std::time::{Duration, Instant};

use bytes::Bytes;
use hexmirror::cache::{CacheKey, Content, DiskStore, Entry, MemoryTier, Store, Validators};
use hexmirror::registry::{self, Versions, VersionsSummary};
use hexmirror::route::{Kind, Resource};
use hexmirror::verify::{self, PublicKey, RegistryFile};
use sha2::{Digest, Sha512};

const KEY: &str = include_str!("../tests/fixtures/hexpm-real/public_key");
const VERSIONS: &[u8] = include_bytes!("../tests/fixtures/hexpm-real/versions-2020-06");
const LIMIT: u64 = 64 << 20;

struct Stage {
    name: &'static str,
    times: Vec<Duration>,
}

impl Stage {
    fn new(name: &'static str) -> Stage {
        Stage { name, times: Vec::new() }
    }

    fn time<T>(&mut self, f: impl FnOnce() -> T) -> T {
        let start = Instant::now();
        let out = f();
        self.times.push(start.elapsed());
        out
    }

    fn report(&mut self) {
        self.times.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let median = self.times[self.times.len() / 2];
        let p90 = self.times[self.times.len() * 9 / 10];
        println!("{:<48} {:>8.3} {:>8.3} {:>8.3}", self.name, ms(median), ms(p90), ms(self.times[0]));
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let rounds: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(50).max(1);
    let tmp;
    let dir = match args.next() {
        Some(dir) => std::path::PathBuf::from(dir),
        None => {
            tmp = tempfile::tempdir().expect("a temporary directory");
            tmp.path().to_path_buf()
        }
    };
    let key = PublicKey::from_pem(KEY).expect("hex.pm's key");
    let body = Bytes::from_static(VERSIONS);
    let raw = verify::gunzip(&body, LIMIT).expect("gunzip");
    let payload = verify::signed_payload(&raw, &key).expect("signed by hex.pm");

    if std::env::var("COLD_PATH_ONLY").as_deref() == Ok("summary") {
        let mut stage = Stage::new("VersionsSummary decode");
        for _ in 0..rounds {
            let versions: VersionsSummary = stage.time(|| registry::decode(&payload).expect("decode"));
            assert_eq!(versions.repository, "hexpm");
        }
        stage.report();
        return;
    }

    if std::env::var("COLD_PATH_ONLY").as_deref() == Ok("verify") {
        let mut stage = Stage::new("verify::registry_file");
        for _ in 0..rounds {
            stage.time(|| {
                verify::registry_file(RegistryFile::Versions, "hexpm", body.clone(), &key, LIMIT).expect("verifies")
            });
        }
        stage.report();
        return;
    }

    // The store is async (its blocking work runs on the runtime's blocking pool).
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let (store, _) = runtime.block_on(DiskStore::open(&dir)).expect("open the store");
    let memory = MemoryTier::new(256 << 20, || {});
    let mut gunzip = Stage::new("gunzip (limit, one member, CRC)");
    let mut signed = Stage::new("Signed envelope + RSA-SHA512 verify");
    let mut sha512 = Stage::new("  of which: sha512 of the payload");
    let mut summary = Stage::new("VersionsSummary decode");
    let mut verify_all = Stage::new("verify::registry_file (the three above)");
    let mut entry_new = Stage::new("Entry::new (sha256 ETag of the body)");
    let mut mem_insert = Stage::new("memory tier insert");
    let mut put = Stage::new("store put (blob, fsyncs, index flush)");
    let mut total = Stage::new("total: registry_file + entry + insert + put");
    let mut owned = Stage::new("Versions decode, owned (for comparison)");

    for round in 0..rounds {
        gunzip.time(|| verify::gunzip(&body, LIMIT).expect("gunzip"));
        signed.time(|| verify::signed_payload(&raw, &key).expect("signed"));
        sha512.time(|| Sha512::digest(&payload));
        summary.time(|| {
            let versions: VersionsSummary = registry::decode(&payload).expect("decode");
            assert_eq!(versions.repository, "hexpm");
        });
        owned.time(|| {
            let versions: Versions = registry::decode(&payload).expect("decode");
            assert_eq!(versions.repository, "hexpm");
        });
        // The mirror's sequence, as one.
        let cache_key = CacheKey::new("hexpm", &Resource::Versions, round % 2 == 1);
        let start = Instant::now();
        let verified = verify_all.time(|| {
            verify::registry_file(RegistryFile::Versions, "hexpm", body.clone(), &key, LIMIT).expect("verifies")
        });
        let entry = entry_new.time(|| {
            let content = Content::Verified(verified);
            std::sync::Arc::new(Entry::new(content, Kind::Versions, Validators::default(), 1, false))
        });
        mem_insert.time(|| memory.insert(cache_key.clone(), entry.clone()));
        put.time(|| runtime.block_on(store.put(&cache_key, &entry.stored_meta(), entry.bytes().clone())).expect("put"));
        total.times.push(start.elapsed());
    }
    println!(
        "/versions fixture: {} bytes gzip, {} gunzipped, payload {}; {rounds} rounds; store in {}",
        VERSIONS.len(),
        raw.len(),
        payload.len(),
        dir.display()
    );
    println!("{:<48} {:>8} {:>8} {:>8}", "stage (ms)", "median", "p90", "min");
    for stage in [
        &mut gunzip,
        &mut signed,
        &mut sha512,
        &mut summary,
        &mut verify_all,
        &mut entry_new,
        &mut mem_insert,
        &mut put,
        &mut total,
        &mut owned,
    ] {
        stage.report();
    }
}
