//! Storage faults under a running mirror: a disk that fills up, a read-only data directory,
//! damaged blob files and a damaged index at start-up, and the disk tier's size budget.
//!
//! The invariant in every case: clients get the right bytes or a clear error, never damaged
//! bytes; a store that cannot be written degrades (metrics say so) instead of failing requests.
//!
//! The disk-full and read-only tests need to mount file systems (root): they are `#[ignore]`d,
//! `.ci/run` (which runs as root) runs them with `cargo test --test storage -- --ignored`, and
//! they fail when `mount` is refused.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// A mount made for a test, undone when dropped (also when the test panics).
struct MountGuard {
    path: PathBuf,
}

impl MountGuard {
    /// `mount ARGS...` for each step; panics when a step fails (mounting needs root).
    fn mount(path: &Path, steps: &[&[&str]]) -> MountGuard {
        std::fs::create_dir_all(path).unwrap();
        // Held while the later steps run, so that a failure undoes the earlier ones.
        let mut guard = None;
        for args in steps {
            match Command::new("mount").args(*args).output() {
                Ok(out) if out.status.success() => {
                    guard.get_or_insert_with(|| MountGuard { path: path.to_path_buf() });
                }
                Ok(out) => panic!(
                    "`mount {}` failed (this test needs root): {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
                Err(e) => panic!("cannot run mount (this test needs root): {e}"),
            }
        }
        guard.expect("at least one mount step")
    }

    fn tmpfs(path: &Path, size: &str) -> MountGuard {
        let p = path.to_str().unwrap();
        Self::mount(path, &[&["-t", "tmpfs", "-o", &format!("size={size},mode=0755"), "tmpfs", p]])
    }

    /// Makes `path` read-only in place (a read-only bind mount of itself).
    fn read_only(path: &Path) -> MountGuard {
        let p = path.to_str().unwrap();
        Self::mount(path, &[&["--bind", p, p], &["-o", "remount,ro,bind", p]])
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        let p = self.path.to_str().unwrap();
        let ok = Command::new("umount").arg(p).status().is_ok_and(|s| s.success());
        if !ok {
            // Still busy (a panicking test left the store open): detach it now, the kernel
            // frees it when the last file is closed.
            let _ = Command::new("umount").args(["-l", p]).status();
        }
    }
}

fn site(upstream: &TestUpstream) -> MirrorBuilder {
    TestMirror::builder().upstream(&upstream.url())
}

async fn metric(mirror: &TestMirror, family: &str, needles: &[&str]) -> f64 {
    metric_sum(&mirror.metrics().await, family, needles)
}

/// Free bytes of the file system holding `path`.
fn free_bytes(path: &Path) -> u64 {
    let out = Command::new("df").args(["--output=avail", "-B1"]).arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().nth(1).unwrap().trim().parse().unwrap()
}

/// Fills the file system holding `path` up to `leave` free bytes with a filler file.
fn fill(path: &Path, leave: u64) -> PathBuf {
    let filler = path.join("filler");
    let free = free_bytes(path);
    let size = free.saturating_sub(leave);
    std::fs::write(&filler, vec![0u8; size as usize]).unwrap();
    filler
}

async fn expect_all_served(mirror: &TestMirror, what: &str) {
    for &path in HEXPM_PATHS {
        let got = mirror.get(path).await;
        assert_eq!(got.status, 200, "{what}: {path}");
        assert_eq!(got.body, fixture(path), "{what}: {path}");
    }
}

/// Every blob file under `data`: (path, length).
fn blobs(data: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for shard in std::fs::read_dir(data.join("blobs")).unwrap() {
        let shard = shard.unwrap().path();
        if shard.is_dir() {
            for blob in std::fs::read_dir(shard).unwrap() {
                out.push(blob.unwrap().path());
            }
        }
    }
    out
}

/// The blob file holding exactly `bytes`.
fn blob_of(data: &Path, bytes: &[u8]) -> PathBuf {
    use sha2::Digest;
    let sha = hex::encode(sha2::Sha256::digest(bytes));
    blobs(data)
        .into_iter()
        .find(|p| p.file_name().unwrap().to_str().unwrap().starts_with(&sha))
        .unwrap_or_else(|| panic!("no blob for {sha}"))
}

// ------------------------------------------------------------------------------------------
// A full disk
// ------------------------------------------------------------------------------------------

#[tokio::test]
#[ignore = "needs root to mount a filesystem; .ci/run runs them"]
async fn a_disk_that_fills_up_degrades_the_store_and_every_client_still_gets_the_right_bytes() {
    let upstream = public_hexpm_and_acme().await;
    let site = site(&upstream);
    let data = site.data_dir();
    let _tmpfs = MountGuard::tmpfs(&data, "1m");
    let mirror = site.start().await;
    assert_eq!(metric(&mirror, "hexmirror_store_degraded", &[]).await, 0.0);
    let filler = fill(&data, 0);
    // Concurrent clients, twice over: misses (nothing can be written), then hits from memory.
    let mut upstream_requests = 0;
    for round in 0..2 {
        let mut tasks = Vec::new();
        for client in 0..4 {
            let url = mirror.url("");
            tasks.push(tokio::spawn(async move {
                for &path in HEXPM_PATHS {
                    let got = get(&format!("{url}{path}"), &[]).await;
                    assert_eq!(got.status, 200, "round {round} client {client}: {path}");
                    assert_eq!(got.body, fixture(path), "round {round} client {client}: {path}");
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        if round == 0 {
            upstream_requests = upstream.total_requests();
            assert!(upstream_requests >= HEXPM_PATHS.len());
        }
    }
    assert_eq!(upstream.total_requests(), upstream_requests, "the memory tier serves what the disk could not keep");
    mirror.mirror.settle_writes().await; // the failed writes run behind the answers
    let text = mirror.metrics().await;
    assert_eq!(metric_sum(&text, "hexmirror_store_degraded", &[]), 1.0, "the disk refuses writes");
    let errors = metric_sum(&text, "hexmirror_store_write_errors_total", &[]);
    assert!(errors >= 11.0, "every one of the 11 new entries failed to be written: {errors}");
    assert_eq!(metric_sum(&text, "hexmirror_cache_bytes", &["disk"]), 0.0, "nothing half-written is counted");
    assert!(std::fs::read_dir(data.join("tmp")).unwrap().next().is_none(), "no temp file is left behind");

    // Space comes back: the next write succeeds and the store is no longer degraded.
    std::fs::remove_file(&filler).unwrap();
    let got = mirror.get("/repos/acme/packages/hexdemo_top").await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body, demo_file("acme", "packages/hexdemo_top"));
    mirror.mirror.settle_writes().await;
    assert_eq!(metric(&mirror, "hexmirror_store_degraded", &[]).await, 0.0, "writes succeed again");
    mirror.stop().await;

    // What the episode left on disk opens, verifies and serves correctly.
    upstream.stop();
    let mirror = site.clone().offline().start().await;
    let report = hexmirror::audit::run(&mirror.mirror, false).await.unwrap();
    assert!(report.damaged.is_empty(), "{report:?}");
    assert_eq!(report.intact, 1, "only the entry written after space came back: {report:?}");
    let got = mirror.get("/repos/acme/packages/hexdemo_top").await;
    assert_eq!((got.status, got.header("x-cache")), (200, "hit"));
    assert_eq!(got.body, demo_file("acme", "packages/hexdemo_top"));
    for path in HEXPM_PATHS {
        assert_eq!(mirror.get(path).await.status, 404, "{path} was never stored");
    }
    mirror.stop().await;
}

#[tokio::test]
#[ignore = "needs root to mount a filesystem; .ci/run runs them"]
async fn concurrent_clients_cause_one_upstream_fetch_per_object_while_the_disk_is_full() {
    let mut duplicates = Vec::new();
    for run in 0..20 {
        let upstream = TestUpstream::start(demo_files("hexpm", "")).await;
        let site = site(&upstream);
        let data = site.data_dir();
        let _tmpfs = MountGuard::tmpfs(&data, "1m");
        let mirror = site.start().await;
        fill(&data, 0);
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let url = mirror.url("");
            tasks.push(tokio::spawn(async move {
                for path in HEXPM_PATHS {
                    assert_eq!(get(&format!("{url}{path}"), &[]).await.status, 200, "{path}");
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        for path in HEXPM_PATHS {
            if upstream.requests_for(path) > 1 {
                duplicates.push(format!("run {run}: {path} x{}", upstream.requests_for(path)));
            }
        }
        mirror.stop().await;
    }
    assert!(duplicates.is_empty(), "{} objects fetched more than once: {duplicates:?}", duplicates.len());
}

#[tokio::test]
#[ignore = "needs root to mount a filesystem; .ci/run runs them"]
async fn a_store_on_a_nearly_full_disk_still_starts_and_serves_degraded() {
    let upstream = public_hexpm_and_acme().await;
    let site = site(&upstream);
    let data = site.data_dir();
    let _tmpfs = MountGuard::tmpfs(&data, "2m");
    let mirror = site.start().await;
    expect_all_served(&mirror, "first run").await;
    mirror.stop().await;
    // The disk fills up while hexmirror is down; 300 KiB are left.
    let _filler = fill(&data, 300 << 10);
    let mirror =
        site.try_start().await.unwrap_or_else(|e| panic!("hexmirror must start on a nearly full disk; it said: {e}"));
    expect_all_hits(&mirror, "stored before the disk filled").await;
    expect_new_objects_from_upstream(&mirror).await;
    mirror.stop().await;
}

/// Every demo path is served from the store (`hit`) with the right bytes.
async fn expect_all_hits(mirror: &TestMirror, what: &str) {
    for &path in HEXPM_PATHS {
        let got = mirror.get(path).await;
        assert_eq!((got.status, got.header("x-cache")), (200, "hit"), "{path}: {what}");
        assert_eq!(got.body, fixture(path), "{path}");
    }
}

/// An object that was never stored is fetched from the upstream and served.
async fn expect_new_objects_from_upstream(mirror: &TestMirror) {
    let got = mirror.get("/repos/acme/names").await;
    assert_eq!(got.status, 200, "a new object comes from the upstream");
    assert_eq!(got.body, demo_file("acme", "names"));
}

// ------------------------------------------------------------------------------------------
// A read-only data directory
// ------------------------------------------------------------------------------------------

#[tokio::test]
#[ignore = "needs root to mount a filesystem; .ci/run runs them"]
async fn a_read_only_data_dir_serves_what_is_stored_and_the_rest_from_upstream_degraded() {
    let upstream = public_hexpm_and_acme().await;
    let site = site(&upstream);
    let data = site.data_dir();
    let mirror = site.start().await;
    expect_all_served(&mirror, "first run").await;
    mirror.stop().await;
    let _ro = MountGuard::read_only(&data);
    let mirror =
        site.try_start().await.unwrap_or_else(|e| panic!("hexmirror must start on a read-only data_dir; it said: {e}"));
    expect_all_hits(&mirror, "stored before").await;
    expect_new_objects_from_upstream(&mirror).await;
    let text = mirror.metrics().await;
    assert_eq!(metric_sum(&text, "hexmirror_store_degraded", &[]), 1.0);
    mirror.stop().await;
}

#[tokio::test]
#[ignore = "needs root to mount a filesystem; .ci/run runs them"]
async fn an_offline_mirror_on_a_read_only_store_serves_what_is_stored() {
    let upstream = TestUpstream::start(demo_files("hexpm", "")).await;
    let site = site(&upstream);
    let data = site.data_dir();
    populated(&site).await;
    upstream.stop();
    let _ro = MountGuard::read_only(&data);
    let mirror = site
        .clone()
        .offline()
        .try_start()
        .await
        .unwrap_or_else(|e| panic!("hexmirror must start on a read-only data_dir; it said: {e}"));
    for &path in HEXPM_PATHS {
        let got = mirror.get(path).await;
        assert_eq!(got.status, 200, "{path}: {}", String::from_utf8_lossy(&got.body).trim());
        assert_eq!(got.body, fixture(path), "{path}");
    }
    mirror.stop().await;
}

#[tokio::test]
#[ignore = "needs root to mount a filesystem; .ci/run runs them"]
async fn a_data_dir_that_becomes_read_only_while_serving_degrades_and_keeps_serving() {
    let upstream = public_hexpm_and_acme().await;
    let site = site(&upstream);
    let data = site.data_dir();
    let mirror = site.start().await;
    for path in HEXPM_RECORDS {
        assert_eq!(mirror.get(path).await.status, 200);
    }
    // The file system is remounted read-only under the running server (as the kernel does
    // after an I/O error).
    let ro = MountGuard::read_only(&data);
    expect_all_served(&mirror, "read-only").await;
    for path in ["/repos/acme/names", "/repos/acme/packages/hexdemo_mid", "/repos/acme/tarballs/hexdemo_mid-0.2.0.tar"]
    {
        let got = mirror.get(path).await;
        assert_eq!(got.status, 200, "{path}");
        assert_eq!(got.body, demo_file("acme", path.trim_start_matches("/repos/acme/")), "{path}");
    }
    let text = mirror.metrics().await;
    assert_eq!(metric_sum(&text, "hexmirror_store_degraded", &[]), 1.0);
    assert!(metric_sum(&text, "hexmirror_store_write_errors_total", &[]) > 0.0);
    drop(ro);
    // Writable again: the next write clears the degraded state (once it lands, behind the answer).
    let got = mirror.get("/repos/acme/versions").await;
    assert_eq!(got.status, 200);
    mirror.mirror.settle_writes().await;
    assert_eq!(metric(&mirror, "hexmirror_store_degraded", &[]).await, 0.0);
    mirror.stop().await;
}

// ------------------------------------------------------------------------------------------
// Damage at rest
// ------------------------------------------------------------------------------------------

/// A store holding every demo path, written by a server that was then stopped.
async fn populated(site: &MirrorBuilder) {
    let mirror = site.start().await;
    expect_all_served(&mirror, "first run").await;
    mirror.stop().await;
}

#[tokio::test]
async fn damaged_blob_files_are_never_served_and_are_refetched() {
    let upstream = TestUpstream::start(demo_files("hexpm", "")).await;
    let site = site(&upstream);
    let data = site.data_dir();
    populated(&site).await;
    let flipped = "/tarballs/hexdemo_top-2.0.1.tar";
    let truncated = "/tarballs/hexdemo_mid-0.2.0.tar";
    let swapped = "/tarballs/hexdemo_base-1.1.0.tar";
    let record = "/packages/hexdemo_top";
    // One bit in a tarball, a truncated tarball, a tarball whose file holds another valid
    // release's bytes, and one bit in a signed registry record.
    let path = blob_of(&data, &fixture(flipped));
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[2600] ^= 0x04;
    std::fs::write(&path, bytes).unwrap();
    let path = blob_of(&data, &fixture(truncated));
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 512]).unwrap();
    std::fs::write(blob_of(&data, &fixture(swapped)), fixture("/tarballs/hexdemo_base-1.0.0.tar")).unwrap();
    let path = blob_of(&data, &fixture(record));
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[200] ^= 0x01;
    std::fs::write(&path, bytes).unwrap();

    let before: Vec<usize> = HEXPM_PATHS.iter().map(|p| upstream.requests_for(p)).collect();
    let mirror = site.start().await;
    let damaged = [flipped, truncated, swapped, record];
    for (&path, before) in HEXPM_PATHS.iter().zip(before) {
        let got = mirror.get(path).await;
        assert_eq!(got.status, 200, "{path}");
        assert_eq!(got.body, fixture(path), "{path}: damaged bytes must never be served");
        if damaged.contains(&path) {
            assert_eq!(got.header("x-cache"), "miss", "{path} was damaged: refetched");
            assert_eq!(upstream.requests_for(path), before + 1, "{path}");
        } else {
            assert_eq!(got.header("x-cache"), "hit", "{path} was intact");
            assert_eq!(upstream.requests_for(path), before, "{path}");
        }
    }
    // The refetched copies replaced the damaged files: the store verifies clean.
    let report = hexmirror::audit::run(&mirror.mirror, false).await.unwrap();
    assert!(report.damaged.is_empty() && report.intact == HEXPM_PATHS.len(), "{report:?}");
    mirror.stop().await;
}

#[tokio::test]
async fn a_blob_damaged_while_serving_is_detected_on_read_and_refetched() {
    let upstream = TestUpstream::start(demo_files("hexpm", "")).await;
    // A memory tier too small to hold a tarball: every read of one goes to disk.
    let mirror = site(&upstream).set("memory_cache_bytes", 1).start().await;
    let data = mirror.data_dir();
    let path = "/tarballs/hexdemo_top-2.0.1.tar";
    assert_eq!(mirror.get(path).await.body, fixture(path));
    mirror.mirror.update_gauges(); // runs the memory tier's pending evictions
    mirror.mirror.settle_writes().await;
    let blob = blob_of(&data, &fixture(path));
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[4000] ^= 0x80;
    std::fs::write(&blob, bytes).unwrap();
    let got = mirror.get(path).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body, fixture(path), "a damaged blob must never be served");
    assert_eq!(got.header("x-cache"), "miss");
    assert_eq!(upstream.requests_for(path), 2);
    mirror.stop().await;
}

#[tokio::test]
async fn a_damaged_index_is_detected_at_start_up_and_everything_lost_is_refetched() {
    // Bits flipped across the sled log, the log cut in half, emptied, overwritten.
    for damage in ["flipped", "truncated", "emptied", "overwritten"] {
        let upstream = TestUpstream::start(demo_files("hexpm", "")).await;
        let site = site(&upstream);
        let data = site.data_dir();
        populated(&site).await;
        let db = data.join("index").join("db");
        let mut bytes = std::fs::read(&db).unwrap();
        match damage {
            "flipped" => {
                for at in (64..bytes.len()).step_by(97) {
                    bytes[at] ^= 0x5a;
                }
            }
            "truncated" => bytes.truncate(bytes.len() / 2),
            "emptied" => bytes.clear(),
            _ => bytes = vec![0xab; bytes.len()],
        }
        std::fs::write(&db, bytes).unwrap();
        let before: Vec<usize> = HEXPM_PATHS.iter().map(|p| upstream.requests_for(p)).collect();
        let mirror = site.start().await;
        for (&path, before) in HEXPM_PATHS.iter().zip(before) {
            let got = mirror.get(path).await;
            assert_eq!(got.status, 200, "{damage}: {path}");
            assert_eq!(got.body, fixture(path), "{damage}: {path}");
            let refetched = upstream.requests_for(path) - before;
            match got.header("x-cache") {
                "hit" => assert_eq!(refetched, 0, "{damage}: {path}"),
                "miss" => assert_eq!(refetched, 1, "{damage}: {path}"),
                other => panic!("{damage}: {path}: x-cache {other}"),
            }
        }
        // Blobs the lost index no longer names were swept: one file per entry.
        let report = hexmirror::audit::run(&mirror.mirror, false).await.unwrap();
        assert!(report.damaged.is_empty(), "{damage}: {report:?}");
        assert_eq!(report.intact, HEXPM_PATHS.len(), "{damage}");
        assert_eq!(blobs(&data).len(), HEXPM_PATHS.len(), "{damage}: orphan blobs are swept");
        mirror.stop().await;
    }
}

// ------------------------------------------------------------------------------------------
// The disk tier's budget
// ------------------------------------------------------------------------------------------

fn disk_bytes_on_disk(data: &Path) -> u64 {
    blobs(data).iter().map(|p| std::fs::metadata(p).unwrap().len()).sum()
}

#[tokio::test]
async fn the_disk_tier_stays_within_its_budget_and_never_evicts_what_sync_pinned() {
    let budget = 12 << 10;
    let upstream = TestUpstream::start(demo_files("hexpm", "")).await;
    let site = site(&upstream).set("disk_cache_bytes", budget);
    let data = site.data_dir();
    let mirror = site.start().await;
    // Sync pins hexdemo_base's record and its one current release (~5.6 KB).
    let request =
        hexmirror::sync::SyncRequest { packages: vec!["hexdemo_base".into()], concurrency: 2, ..Default::default() };
    let (_events, sink) = hexmirror::sync::collect_events();
    let summary = hexmirror::sync::run(&mirror.mirror, &request, &sink).await;
    assert!(summary.ok(), "{summary:?}");
    let pinned: Vec<String> = mirror
        .mirror
        .store()
        .list_all("")
        .await
        .unwrap()
        .into_iter()
        .filter(|(_, meta)| meta.pinned)
        .map(|(key, _)| key.to_string())
        .collect();
    assert_eq!(pinned, ["public/hexpm/packages/hexdemo_base", "public/hexpm/tarballs/hexdemo_base-1.1.0.tar"]);
    // Clients fetch six 5 KB tarballs (and their records) through a 12 KB disk tier, twice.
    for round in 0..2 {
        for path in HEXPM_TARBALLS.iter().rev().chain(HEXPM_RECORDS) {
            let got = mirror.get(path).await;
            assert_eq!(got.status, 200, "round {round}: {path}");
            assert_eq!(got.body, fixture(path), "round {round}: {path}");
            mirror.mirror.settle_writes().await; // the write and its eviction run behind the answer
            let text = mirror.metrics().await;
            let disk = metric_sum(&text, "hexmirror_cache_bytes", &["disk"]);
            assert!(disk <= budget as f64, "round {round} after {path}: disk tier holds {disk} bytes");
            assert!(disk_bytes_on_disk(&data) <= budget, "after {path}: blob files exceed the budget");
        }
    }
    let evictions = metric(&mirror, "hexmirror_cache_evictions_total", &["disk"]).await;
    assert!(evictions >= 4.0, "six 5 KB tarballs through a 12 KB tier: {evictions} evictions");
    let stored: Vec<String> = mirror.stored().await.into_iter().map(|(k, _)| k.to_string()).collect();
    for key in &pinned {
        assert!(stored.contains(key), "{key} was pinned by sync and must never be evicted: {stored:?}");
    }
    // The pinned entries are still served from disk after a restart, with no upstream.
    mirror.stop().await;
    upstream.stop();
    let mirror = site.clone().offline().start().await;
    for path in ["/packages/hexdemo_base", "/tarballs/hexdemo_base-1.1.0.tar"] {
        let got = mirror.get(path).await;
        assert_eq!((got.status, got.header("x-cache")), (200, "hit"), "{path}");
        assert_eq!(got.body, fixture(path), "{path}");
    }
    mirror.stop().await;
}

#[tokio::test]
async fn the_entry_just_written_is_not_the_first_one_evicted() {
    // A budget of one tarball and its record: fetching a second tarball must evict the first,
    // not the one just stored (least recently used, not alphabetical).
    // Each ordering on a fresh store: an entry evicted from disk but still in memory is served
    // from memory and is not written back, which is not what this test is about.
    let upstream = TestUpstream::start(demo_files("hexpm", "")).await;
    for (older, newer) in [
        ("/tarballs/hexdemo_top-2.0.1.tar", "/tarballs/hexdemo_base-1.1.0.tar"),
        ("/tarballs/hexdemo_base-1.1.0.tar", "/tarballs/hexdemo_top-2.0.1.tar"),
    ] {
        let mirror = site(&upstream).set("disk_cache_bytes", 6000).start().await;
        assert_eq!(mirror.get(older).await.status, 200);
        assert_eq!(mirror.get(newer).await.status, 200);
        let stored: Vec<String> = mirror.stored().await.into_iter().map(|(k, _)| k.to_string()).collect();
        assert!(
            stored.contains(&format!("public/hexpm{newer}")),
            "after {older} then {newer}, the disk tier holds {stored:?}"
        );
        mirror.stop().await;
    }
}

#[tokio::test]
async fn purge_also_removes_entries_that_only_the_memory_tier_holds() {
    let upstream = TestUpstream::start(demo_files("hexpm", "")).await;
    let mirror = site(&upstream).set("disk_cache_bytes", 6000).start().await;
    let evicted = "/tarballs/hexdemo_base-1.1.0.tar";
    assert_eq!(mirror.get(evicted).await.status, 200);
    // A second tarball pushes the first out of the 6000-byte disk tier (the memory tier keeps it).
    assert_eq!(mirror.get("/tarballs/hexdemo_top-2.0.1.tar").await.status, 200);
    let stored: Vec<String> = mirror.stored().await.into_iter().map(|(k, _)| k.to_string()).collect();
    assert!(!stored.iter().any(|k| k.contains("hexdemo_base")), "evicted from disk: {stored:?}");
    let removed = mirror.mirror.purge("hexdemo_base", None, false).await.unwrap();
    let got = mirror.get(evicted).await;
    assert_eq!(got.body, fixture(evicted));
    assert_eq!(
        got.header("x-cache"),
        "miss",
        "purge of hexdemo_base removed {removed:?} from disk, but the memory tier still served it"
    );
    mirror.stop().await;
}

// ------------------------------------------------------------------------------------------
// An import that fills the disk
// ------------------------------------------------------------------------------------------

/// An import needs room twice: for its staged objects, then for the store's copies. A disk
/// that fills up at either step aborts the import with the store exactly as it was and the
/// space given back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root to mount a filesystem; .ci/run runs them"]
async fn an_import_that_fills_the_disk_is_aborted_with_the_store_unchanged() {
    let bundle = large_bundle();
    // 64m: the staging cannot hold the bundle; 200m: it can, and the commit cannot.
    for size in ["64m", "200m"] {
        let site = TestMirror::builder().upstream("http://127.0.0.1:9").offline().set("memory_cache_bytes", "1MiB");
        let data = site.data_dir();
        let _tmpfs = MountGuard::tmpfs(&data, size);
        let file = site.dir().join("large.hxb");
        std::fs::write(&file, &bundle).unwrap();
        let mirror = site.start().await;
        let free = free_bytes(&data);
        let err = hexmirror::transfer::import_file(&mirror.mirror, &file).await.unwrap_err().to_string();
        eprintln!("{size}: {err}");
        let expected = match size {
            "64m" => "cannot stage the import",
            _ => "cannot store",
        };
        assert!(err.contains(expected), "{size}: {err}");
        mirror.mirror.settle_writes().await;
        assert!(mirror.stored().await.is_empty(), "{size}: nothing of the import is stored");
        assert!(mirror.mirror.store().selected().await.unwrap().is_empty(), "{size}: nothing is selected");
        let staging = data.join("import-staging");
        assert_eq!(std::fs::read_dir(&staging).unwrap().count(), 0, "{size}: the staging is removed");
        let back = free_bytes(&data);
        assert!(back + (1 << 20) >= free, "{size}: the space is given back ({free} free before, {back} after)");
        mirror.stop().await;
    }
}
