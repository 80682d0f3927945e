//! Bundles larger than the memory bound: volumes, import and export through a running server
//! (the admin endpoint streams instead of buffering), and an import killed while it commits.
//!
//! The bundle is 128 MiB of objects; every process involved runs with a 1 MiB memory tier, so
//! the bound each must stay under is 1 + 128 MiB ([`STREAMING_PEAK_MIB`]).

mod common;

use std::path::{Path, PathBuf};

use common::*;

/// The volumes' payloads joined in order: the bundle a single-file export writes.
fn join_volumes(paths: &[PathBuf]) -> Vec<u8> {
    let mut out = Vec::new();
    for path in paths {
        let bytes = std::fs::read(path).unwrap();
        out.extend_from_slice(&bytes[hexmirror::volume::HEADER_LEN as usize..]);
    }
    out
}

/// `FILE.NNN` volumes in `dir`, in order, checked against their `.sha256` files; panics on any
/// other file.
fn volumes_in(dir: &Path, name: &str, max: u64) -> Vec<PathBuf> {
    use sha2::Digest;
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    let volumes: Vec<PathBuf> = names.iter().filter(|n| !n.ends_with(".sha256")).map(|n| dir.join(n)).collect();
    assert_eq!(names.len(), volumes.len() * 2, "only volumes and their .sha256 files: {names:?}");
    for (i, path) in volumes.iter().enumerate() {
        let file = format!("{name}.{:03}", i + 1);
        assert_eq!(path.file_name().unwrap().to_string_lossy(), file, "{names:?}");
        let bytes = std::fs::read(path).unwrap();
        assert!(bytes.len() as u64 <= max, "{file} is {} bytes, over {max}", bytes.len());
        let sums = std::fs::read_to_string(format!("{}.sha256", path.display())).unwrap();
        assert_eq!(sums, format!("{}  {file}\n", hex::encode(sha2::Sha256::digest(&bytes))));
    }
    volumes
}

/// A store holding the large bundle's objects, and its configuration file.
async fn store_with_large_bundle(bundle: &[u8]) -> MirrorBuilder {
    let site = TestMirror::builder().upstream("http://127.0.0.1:9").offline().set("memory_cache_bytes", "1MiB");
    let mirror = site.start().await;
    hexmirror::transfer::import(&mirror.mirror, bundle).await.unwrap();
    mirror.stop().await;
    site
}

fn empty_site() -> MirrorBuilder {
    TestMirror::builder().upstream("http://127.0.0.1:9").offline().set("memory_cache_bytes", "1MiB")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_carry_a_bundle_in_any_order_and_a_missing_or_foreign_volume_is_refused() {
    let bundle = large_bundle();
    let site = store_with_large_bundle(&bundle).await;
    let config = site.write_config();
    let out_dir = site.dir().join("carry");
    std::fs::create_dir_all(&out_dir).unwrap();
    let out = out_dir.join("site.hxb");
    let max = 20 << 20;
    let (status, text, peak_mib) = tokio::task::block_in_place(|| {
        run_measuring_peak(&config, &["export", "--out", out.to_str().unwrap(), "--max-size", "20MiB"])
    });
    assert!(status.success(), "{text}");
    assert!(text.contains("7 volumes"), "{text}");
    eprintln!("export of a {} MiB bundle in volumes: peak RSS {peak_mib} MiB", bundle.len() >> 20);
    assert!(peak_mib < STREAMING_PEAK_MIB, "export in volumes peaked at {peak_mib} MiB");
    let volumes = volumes_in(&out_dir, "site.hxb", max);
    assert_eq!(volumes.len(), 7);
    assert!(join_volumes(&volumes) == bundle, "the volumes join into the single-file bundle, byte for byte");

    // inspect takes the volumes in any order.
    let mut reversed: Vec<&str> = volumes.iter().map(|p| p.to_str().unwrap()).collect();
    reversed.reverse();
    let mut args = vec!["inspect"];
    args.extend(&reversed);
    let inspected = run_hexmirror(&config, &args);
    let stdout = String::from_utf8_lossy(&inspected.stdout);
    assert!(inspected.status.success(), "{stdout}{}", String::from_utf8_lossy(&inspected.stderr));
    assert!(stdout.contains(&format!("holds: {LARGE_OBJECTS} objects")), "{stdout}");
    assert!(stdout.contains("+6 more volumes"), "{stdout}");

    // A missing volume, and one of another export, are refused in one line, before anything.
    let empty = empty_site();
    let empty_config = empty.write_config();
    let mut args = vec!["import"];
    args.extend(volumes.iter().filter(|p| !p.ends_with("site.hxb.003")).map(|p| p.to_str().unwrap()));
    let refused = run_hexmirror(&empty_config, &args);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(stderr.contains("volume 003 of 7 missing"), "{stderr}");
    assert_eq!(stderr.trim().lines().filter(|l| l.contains("missing")).count(), 1, "{stderr}");
    let other_dir = site.dir().join("other");
    std::fs::create_dir_all(&other_dir).unwrap();
    let other = other_dir.join("site.hxb");
    let again = run_hexmirror(&config, &["export", "--out", other.to_str().unwrap(), "--max-size", "20MiB"]);
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    std::fs::copy(other_dir.join("site.hxb.004"), out_dir.join("site.hxb.004")).unwrap();
    let mixed = run_hexmirror(&empty_config, &["import", out_dir.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&mixed.stderr);
    assert!(!mixed.status.success());
    assert!(stderr.contains("is from another export"), "{stderr}");
    let staged = std::fs::read_dir(empty.data_dir().join("import-staging")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(staged, 0, "a refused set stages nothing");
    let overwrite = run_hexmirror(&config, &["export", "--out", other.to_str().unwrap(), "--max-size", "20MiB"]);
    assert!(!overwrite.status.success(), "an export never overwrites volumes that exist");
    let stderr = String::from_utf8_lossy(&overwrite.stderr);
    assert!(stderr.contains("site.hxb.001 already exists"), "{stderr}");

    // The directory of a complete set imports, read as a stream.
    std::fs::remove_dir_all(&out_dir).unwrap();
    std::fs::rename(&other_dir, &out_dir).unwrap();
    let (status, text, peak_mib) =
        tokio::task::block_in_place(|| run_measuring_peak(&empty_config, &["import", out_dir.to_str().unwrap()]));
    assert!(status.success(), "{text}");
    assert!(text.contains(&format!("{LARGE_OBJECTS} new")), "{text}");
    assert!(peak_mib < STREAMING_PEAK_MIB, "import of volumes peaked at {peak_mib} MiB");
    let mirror = empty.start().await;
    assert_eq!(mirror.stored().await.len(), LARGE_OBJECTS);
    mirror.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_server_imports_and_exports_a_bundle_larger_than_its_memory_bound() {
    let bundle = large_bundle();
    let site = empty_site();
    let config = site.write_config();
    let file = site.dir().join("large.hxb");
    std::fs::write(&file, &bundle).unwrap();
    let served = tokio::task::block_in_place(|| site.serve_binary("warn", std::process::Stdio::null()));
    let server = served.pid().to_string();
    // Commands find the server by its admin.json, written once its listeners are bound.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !site.data_dir().join("admin.json").exists() {
        assert!(std::time::Instant::now() < deadline, "the server wrote no admin.json");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let idle_mib = proc_status_kib(&server, "VmHWM:") / 1024;

    let (status, text, client_mib) =
        tokio::task::block_in_place(|| run_measuring_peak(&config, &["import", file.to_str().unwrap()]));
    assert!(status.success(), "{text}");
    assert!(text.contains(&format!("{LARGE_OBJECTS} new")), "{text}");
    let server_mib = proc_status_kib(&server, "VmHWM:") / 1024;
    eprintln!(
        "import of a {} MiB bundle through the server: client {client_mib} MiB, server {server_mib} MiB (idle {idle_mib})",
        bundle.len() >> 20
    );
    assert!(client_mib < STREAMING_PEAK_MIB, "the client peaked at {client_mib} MiB");
    assert!(server_mib < STREAMING_PEAK_MIB, "the server peaked at {server_mib} MiB");
    let staging = site.data_dir().join("import-staging");
    assert_eq!(std::fs::read_dir(&staging).unwrap().count(), 0, "the upload and the staging are removed");

    // Exported through the server into volumes, as it streams.
    let out = site.dir().join("back").join("large.hxb");
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    let (status, text, client_mib) = tokio::task::block_in_place(|| {
        run_measuring_peak(&config, &["export", "--out", out.to_str().unwrap(), "--max-size", "48MiB"])
    });
    assert!(status.success(), "{text}");
    let server_mib = proc_status_kib(&server, "VmHWM:") / 1024;
    eprintln!("export through the server: client {client_mib} MiB, server {server_mib} MiB");
    assert!(client_mib < STREAMING_PEAK_MIB, "the client peaked at {client_mib} MiB");
    assert!(server_mib < STREAMING_PEAK_MIB, "the server peaked at {server_mib} MiB");
    let volumes = volumes_in(out.parent().unwrap(), "large.hxb", 48 << 20);
    assert_eq!(volumes.len(), 3);
    assert!(join_volumes(&volumes) == bundle, "what the server exported is the bundle it imported");
    assert_eq!(std::fs::read_dir(&staging).unwrap().count(), 0, "the spooled export is removed once sent");
    served.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_killed_while_it_commits_is_completed_at_the_next_start() {
    killed_while_committing(false).await;
}

/// A journal left by an earlier version (one JSON document, `journal.json`) is completed too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_earlier_versions_interrupted_import_is_completed_at_the_next_start() {
    killed_while_committing(true).await;
}

/// Rewrites a journal as earlier versions wrote it: `{"digest": ..., "objects": [...]}`.
fn as_old_journal(journal: &std::path::Path) {
    let text = std::fs::read_to_string(journal).unwrap();
    let mut lines = text.lines();
    let head: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    let objects: Vec<serde_json::Value> = lines.map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(head["objects"].as_u64(), Some(objects.len() as u64));
    let old = serde_json::json!({ "digest": head["digest"], "objects": objects });
    std::fs::write(journal.with_file_name("journal.json"), serde_json::to_vec(&old).unwrap()).unwrap();
    std::fs::remove_file(journal).unwrap();
}

/// Runs `import FILE` and kills it the moment `when` finds what it looks for (returned), or
/// returns `None` if the import ended first.
fn import_killed_when(config: &Path, file: &Path, when: impl Fn() -> Option<PathBuf>) -> Option<PathBuf> {
    let mut child = hexmirror_command(config)
        .args(["import", file.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let found = loop {
        if let Some(found) = when() {
            child.kill().unwrap();
            break Some(found);
        }
        if child.try_wait().unwrap().is_some() {
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    };
    child.wait().unwrap();
    found
}

async fn killed_while_committing(old_journal: bool) {
    let bundle = large_bundle();
    for attempt in 0..5 {
        let site = empty_site();
        let config = site.write_config();
        let file = site.dir().join("large.hxb");
        std::fs::write(&file, &bundle).unwrap();
        let staging = site.data_dir().join("import-staging");
        // Killed the moment its journal exists: everything verified, the commit under way.
        let journal = import_killed_when(&config, &file, || {
            std::fs::read_dir(&staging)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path().join("journal.jsonl"))
                .find(|p| p.exists())
        });
        let Some(journal) = journal.filter(|j| j.exists()) else {
            eprintln!("attempt {attempt}: the import finished before it was killed; again");
            continue;
        };
        eprintln!("attempt {attempt}: killed with {} left", journal.display());
        if old_journal {
            as_old_journal(&journal);
        }
        let logs = captured_logs();
        let mirror = site.start().await;
        let stored = mirror.stored().await;
        assert_eq!(stored.len(), LARGE_OBJECTS, "the interrupted import is completed");
        assert!(stored.iter().all(|(_, meta)| meta.pinned));
        assert_eq!(std::fs::read_dir(&staging).unwrap().count(), 0, "nothing is left to recover");
        let report = hexmirror::audit::run(&mirror.mirror, false).await.unwrap();
        assert!(report.ok(), "{report:?}");
        let logged = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
        assert!(logged.contains("completed an interrupted import"), "{logged}");
        mirror.stop().await;
        return;
    }
    panic!("the import always finished before the kill landed: the commit was never interrupted");
}

/// The staging directory of an import that has passed at least one checkpoint holding
/// objects (everything listed before it is durable) and has not reached its journal.
fn checkpointed_staging(staging: &Path) -> Option<PathBuf> {
    std::fs::read_dir(staging).ok()?.flatten().map(|e| e.path()).find(|dir| {
        !dir.join("journal.jsonl").exists()
            && std::fs::read_to_string(dir.join("staged.jsonl")).is_ok_and(|index| {
                index
                    .lines()
                    .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                    .any(|line| line.get("checkpoint").and_then(|c| c.as_u64()).is_some_and(|c| c >= 1))
            })
    })
}

/// An import killed while it verifies and stages (before its commit) leaves the store as it
/// was, and the next import of the same bundle resumes it: the objects staged up to the last
/// checkpoint are kept, not verified and staged again. The staging of an interrupted import of
/// another bundle is removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_killed_while_it_verifies_is_resumed_by_the_next_import_of_the_same_bundle() {
    let bundle = large_bundle();
    for attempt in 0..5 {
        let site = empty_site();
        let config = site.write_config();
        let file = site.dir().join("large.hxb");
        std::fs::write(&file, &bundle).unwrap();
        let staging = site.data_dir().join("import-staging");
        let killed = import_killed_when(&config, &file, || checkpointed_staging(&staging));
        let Some(dir) = killed.filter(|dir| !dir.join("journal.jsonl").exists()) else {
            eprintln!("attempt {attempt}: the import reached its commit before it was killed; again");
            continue;
        };
        let mirror = site.start().await;
        assert_eq!(mirror.stored().await.len(), 0, "nothing was stored before the commit");
        mirror.stop().await;
        assert!(dir.join("bundle.sha256").exists(), "a server start keeps a resumable import's staging");

        // An interrupted import of another bundle: removed when this one resumes.
        let other = staging.join("other");
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(other.join("bundle.sha256"), "0".repeat(64)).unwrap();
        for name in ["objects", "staged.jsonl"] {
            std::fs::write(other.join(name), b"").unwrap();
        }

        let resumed = run_hexmirror(&config, &["import", file.to_str().unwrap()]);
        let stdout = String::from_utf8_lossy(&resumed.stdout);
        assert!(resumed.status.success(), "{stdout}{}", String::from_utf8_lossy(&resumed.stderr));
        let kept: usize = stdout
            .split("resumed: ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("the import says it resumed: {stdout}"));
        eprintln!("attempt {attempt}: resumed with {kept} of {LARGE_OBJECTS} objects kept");
        assert!((1..=LARGE_OBJECTS).contains(&kept), "{stdout}");
        assert!(stdout.contains(&format!("{LARGE_OBJECTS} objects verified; {LARGE_OBJECTS} new")), "{stdout}");
        assert_eq!(std::fs::read_dir(&staging).unwrap().count(), 0, "no staging is left, the other bundle's neither");
        let mirror = site.start().await;
        let stored = mirror.stored().await;
        assert_eq!(stored.len(), LARGE_OBJECTS);
        assert!(stored.iter().all(|(_, meta)| meta.pinned));
        let report = hexmirror::audit::run(&mirror.mirror, false).await.unwrap();
        assert!(report.ok(), "{report:?}");
        mirror.stop().await;
        return;
    }
    panic!("the import always reached its commit before the kill landed: it was never interrupted while verifying");
}
