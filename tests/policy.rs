//! The supply-chain policy against the demo repository: each rule kind blocks a tarball with
//! 403 and a reason naming the rule, whichever tier or flight the bytes come from; registry
//! files are served unchanged; `enforce = false` reports; the policy is rescanned without a
//! restart; sync, export and import leave blocked releases out.

mod common;

use std::collections::BTreeMap;

use common::*;
use prost::Message;

const BASE_OLD: &str = "/tarballs/hexdemo_base-1.0.0.tar";
const BASE_NEW: &str = "/tarballs/hexdemo_base-1.1.0.tar";

/// The demo upstream with hexdemo_base 1.0.0 retired for `reason` (the registry's enum value)
/// with `message`, signed with the demo key as hex_core signs records.
async fn upstream_with_retired(reason: i32, message: &str) -> TestUpstream {
    let upstream = TestUpstream::start(demo_files("hexpm", "")).await;
    upstream.set_file("/packages/hexdemo_base", retired_record(reason, message));
    upstream
}

fn retired_record(reason: i32, message: &str) -> Vec<u8> {
    let mut package = demo_package("hexpm", "hexdemo_base");
    let release = package.releases.iter_mut().find(|r| r.version == "1.0.0").unwrap();
    release.retired = Some(hexmirror::registry::RetirementStatus { reason, message: Some(message.into()) });
    sign_registry_file(&package.encode_to_vec())
}

fn site(upstream: &TestUpstream, policy: &str) -> MirrorBuilder {
    TestMirror::builder().upstream(&upstream.url()).append(&format!("[policy]\n{policy}"))
}

fn blocks(text: &str, repo: &str, rule: &str) -> f64 {
    metric_sum(text, "hexmirror_policy_blocks_total", &[&format!("repo=\"{repo}\""), &format!("rule=\"{rule}\"")])
}

#[tokio::test]
async fn a_retired_release_is_refused_with_the_reason_and_the_registry_is_unchanged() {
    let upstream = upstream_with_retired(2, "use 1.1.0").await;
    let mirror = site(&upstream, r#"block_retired = ["security", "invalid"]"#).start().await;

    let refused = mirror.get(BASE_OLD).await;
    assert_eq!(refused.status, 403);
    assert_eq!(refused.header("x-cache"), "blocked");
    let body = String::from_utf8(refused.body.to_vec()).unwrap();
    assert_eq!(body.trim(), "hexdemo_base 1.0.0 is blocked by policy (retired): retired (security): use 1.1.0");
    assert_eq!(body.trim().lines().count(), 1);

    // The registry reaches clients byte for byte: the retired release is still listed.
    let record = mirror.get("/packages/hexdemo_base").await;
    assert_eq!(record.status, 200);
    assert_eq!(record.body.to_vec(), retired_record(2, "use 1.1.0"));
    assert_eq!(mirror.get(BASE_NEW).await.status, 200, "the release it points to is served");

    let metrics = mirror.metrics().await;
    assert_eq!(blocks(&metrics, "hexpm", "retired"), 1.0);
    assert_eq!(blocks(&metrics, "hexpm", "deny"), 0.0, "every rule starts at zero");
    assert_eq!(metric_sum(&metrics, "hexmirror_requests_total", &["cache=\"blocked\"", "resource=\"tarball\""]), 1.0);
    let refusals = mirror.mirror.refusals();
    let listed = refusals.iter().find(|r| r.resource == "tarballs/hexdemo_base-1.0.0.tar").expect("listed");
    assert_eq!(
        (listed.upstream.as_str(), listed.reason.as_str()),
        ("policy (retired)", "retired (security): use 1.1.0")
    );
    mirror.stop().await;
}

#[tokio::test]
async fn a_retirement_reason_not_listed_is_served() {
    let upstream = upstream_with_retired(3, "superseded").await;
    let mirror = site(&upstream, r#"block_retired = ["security"]"#).start().await;
    assert_eq!(mirror.get(BASE_OLD).await.status, 200, "deprecated is not blocked");
    mirror.stop().await;
}

#[tokio::test]
async fn a_blocked_tarball_is_never_served_from_memory_disk_or_a_shared_flight() {
    let upstream = TestUpstream::start(demo_files("hexpm", "")).await;
    let open = TestMirror::builder().upstream(&upstream.url());
    // Cached in both tiers while nothing blocks it.
    let mirror = open.start().await;
    assert_eq!(mirror.get(BASE_OLD).await.status, 200);
    assert_eq!(mirror.stored().await.iter().filter(|(k, _)| k.as_str().ends_with("hexdemo_base-1.0.0.tar")).count(), 1);

    // The memory tier holds it: the rule takes effect there.
    mirror.mirror.set_policy(policy_of(r#"deny = ["hexdemo_base == 1.0.0"]"#));
    let from_memory = mirror.get(BASE_OLD).await;
    assert_eq!((from_memory.status, from_memory.header("x-cache")), (403, "blocked"));
    assert!(String::from_utf8_lossy(&from_memory.body)
        .contains("(deny): denied: matches deny rule \"hexdemo_base == 1.0.0\""));
    let before = upstream.requests_for(BASE_OLD);

    // A restart with the rule in the file: the copy comes from the disk tier.
    let site = open.clone().append("[policy]\ndeny = [\"hexdemo_base == 1.0.0\"]");
    mirror.stop().await;
    let mirror = site.start().await;
    assert_eq!(mirror.get(BASE_OLD).await.status, 403);
    assert_eq!(upstream.requests_for(BASE_OLD), before, "answered from the disk copy, and refused");

    // A cold store and many clients at once: the flight's waiters are refused too.
    let cold = TestMirror::builder().upstream(&upstream.url()).append("[policy]\ndeny = [\"hexdemo_*\"]").start().await;
    let url = cold.url(BASE_NEW);
    let answers = futures::future::join_all((0..16).map(|_| get(&url, &[]))).await;
    assert!(answers.iter().all(|a| a.status == 403 && a.header("x-cache") == "blocked"), "{answers:?}");
    assert!(answers.iter().all(|a| a.body.len() < 200 && !a.body.starts_with(b"\0")), "no tarball bytes");
    mirror.stop().await;
    cold.stop().await;
}

#[tokio::test]
async fn a_closed_repository_answers_401_before_the_policy() {
    let upstream = TestUpstream::start(demo_files("hexpm", "")).await;
    let spec =
        RepoSpec { repository: Some("hexpm".into()), ..RepoSpec::demo(&upstream.url()) }.access_tokens(&["sesame"]);
    let mirror = TestMirror::builder()
        .upstream(&upstream.url())
        .repo("corp", spec)
        .append("[policy]\ndeny = [\"hexdemo_base\"]")
        .start()
        .await;
    let path = "/repos/corp/tarballs/hexdemo_base-1.0.0.tar";
    assert_eq!(mirror.get(path).await.status, 401);
    let authorized = get(&mirror.url(path), &[("authorization", "sesame")]).await;
    assert_eq!(authorized.status, 403);
    mirror.stop().await;
}

#[tokio::test]
async fn exempt_skips_the_soft_rules_and_never_lifts_deny() {
    let upstream = upstream_with_retired(2, "use 1.1.0").await;
    let mirror = site(
        &upstream,
        r#"deny = ["hexdemo_mid"]
block_retired = ["security"]
cooldown = "30d"
licenses_allowed = ["MIT"]
exempt = ["hexdemo_base", "hexdemo_mid"]"#,
    )
    .start()
    .await;
    assert_eq!(mirror.get(BASE_OLD).await.status, 200, "retired, new and Apache-2.0, but exempt");
    let denied = mirror.get("/tarballs/hexdemo_mid-0.2.0.tar").await;
    assert_eq!(denied.status, 403);
    assert!(String::from_utf8_lossy(&denied.body).contains("(deny)"));
    let top = mirror.get("/tarballs/hexdemo_top-2.0.1.tar").await;
    assert_eq!(top.status, 403, "not exempt: the licence rule applies");
    assert!(String::from_utf8_lossy(&top.body).contains("(license): licence not allowed: Apache-2.0"));
    mirror.stop().await;
}

#[tokio::test]
async fn allow_lets_through_only_what_it_lists() {
    let upstream = TestUpstream::start(demo_files("hexpm", "")).await;
    let mirror = site(&upstream, r#"allow = ["hexdemo_base ~> 1.1", "hexdemo_m?d"]"#).start().await;
    assert_eq!(mirror.get(BASE_NEW).await.status, 200);
    assert_eq!(mirror.get("/tarballs/hexdemo_mid-0.1.0.tar").await.status, 200);
    let old = mirror.get(BASE_OLD).await;
    assert_eq!(old.status, 403);
    assert!(String::from_utf8_lossy(&old.body).contains("(allow): not allowed: matches no allow rule"));
    assert_eq!(mirror.get("/tarballs/hexdemo_top-2.0.1.tar").await.status, 403);
    mirror.stop().await;
}

#[tokio::test]
async fn licences_are_read_from_the_verified_tarball() {
    let upstream = TestUpstream::start(demo_files("hexpm", "")).await;
    let strict = site(&upstream, r#"licenses_allowed = ["MIT"]"#).start().await;
    let refused = strict.get(BASE_NEW).await;
    assert_eq!(refused.status, 403);
    assert!(String::from_utf8_lossy(&refused.body).trim().ends_with("(license): licence not allowed: Apache-2.0"));
    assert_eq!(blocks(&strict.metrics().await, "hexpm", "license"), 1.0);
    strict.stop().await;
    // Written another way, the same licence passes.
    let lenient = site(&upstream, r#"licenses_allowed = ["MIT", "apache 2.0"]"#).start().await;
    assert_eq!(lenient.get(BASE_NEW).await.status, 200);
    lenient.stop().await;
}

/// An OSV file for hexdemo_base in `dir`: affected from 1.0.0, fixed in 1.1.0.
fn advisory(dir: &std::path::Path, id: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let text = format!(
        r#"{{"schema_version":"1.4.0","id":"{id}","summary":"Denial of service in hexdemo_base",
        "affected":[{{"package":{{"ecosystem":"Hex","name":"hexdemo_base","purl":"pkg:hex/hexdemo_base"}},
        "ranges":[{{"type":"ECOSYSTEM","events":[{{"introduced":"1.0.0"}},{{"fixed":"1.1.0"}}]}}]}}]}}"#
    );
    std::fs::write(dir.join(format!("{id}.json")), text).unwrap();
}

#[tokio::test]
async fn advisories_block_affected_ranges_of_their_repository_only() {
    let upstream = TestUpstream::start(demo_files("hexpm", "")).await;
    let dir = tempfile::tempdir().unwrap();
    advisory(&dir.path().join("github-reviewed/2024/01"), "GHSA-demo-0001");
    let corp = RepoSpec { repository: Some("hexpm".into()), ..RepoSpec::demo(&upstream.url()) };
    let mirror = TestMirror::builder()
        .upstream(&upstream.url())
        .repo("corp", corp)
        .append(&format!("[policy]\nadvisories = {:?}", dir.path().display().to_string()))
        .start()
        .await;
    let refused = mirror.get(BASE_OLD).await;
    assert_eq!(refused.status, 403);
    assert!(String::from_utf8_lossy(&refused.body)
        .contains("(advisory): advisory GHSA-demo-0001: Denial of service in hexdemo_base"));
    assert_eq!(mirror.get(BASE_NEW).await.status, 200, "fixed in 1.1.0");
    // The same name in another repository is another package.
    assert_eq!(mirror.get("/repos/corp/tarballs/hexdemo_base-1.0.0.tar").await.status, 200);
    assert_eq!(blocks(&mirror.metrics().await, "corp", "advisory"), 0.0);
    assert_eq!(blocks(&mirror.metrics().await, "hexpm", "advisory"), 1.0);
    mirror.stop().await;
}

#[tokio::test]
async fn cooldown_holds_new_releases_until_they_were_seen_long_enough() {
    let upstream = TestUpstream::start(demo_files("hexpm", "")).await;
    let mirror = site(&upstream, r#"cooldown = "7d""#).start().await;
    let held = mirror.get(BASE_NEW).await;
    assert_eq!(held.status, 403, "a fresh store has seen everything just now");
    assert!(String::from_utf8_lossy(&held.body).contains("(cooldown): cooldown: first seen "));
    let seen = mirror.mirror.seen_export();
    let first = seen["hexpm/hexdemo_base/1.1.0"];
    assert!(seen.contains_key("hexpm/hexdemo_base/1.0.0"), "every release the record lists is noted");
    // Six days ago: still held; eight: served (the first-seen time is the clock's input).
    let now = hexmirror::cache::unix_now();
    let at = |days: u64| BTreeMap::from([("hexpm/hexdemo_base/1.1.0".to_string(), now - days * 86_400)]);
    assert_eq!(mirror.mirror.seen_merge_earlier(at(6)), 1);
    assert_eq!(mirror.get(BASE_NEW).await.status, 403);
    assert_eq!(mirror.mirror.seen_merge_earlier(at(8)), 1);
    assert_eq!(mirror.get(BASE_NEW).await.status, 200);
    assert_eq!(mirror.mirror.seen_merge_earlier(BTreeMap::from([("hexpm/hexdemo_base/1.1.0".into(), first)])), 0);
    // The times survive a restart (saved in the store at shutdown).
    let mirror = mirror.restart().await;
    assert_eq!(mirror.mirror.seen_export()["hexpm/hexdemo_base/1.1.0"], now - 8 * 86_400);
    assert_eq!(mirror.get(BASE_NEW).await.status, 200);
    assert_eq!(mirror.get(BASE_OLD).await.status, 403);
    mirror.stop().await;
}

#[tokio::test]
async fn enforce_false_serves_and_reports() {
    let upstream = TestUpstream::start(demo_files("hexpm", "")).await;
    let mirror = site(&upstream, "deny = [\"hexdemo_base\"]\nenforce = false").start().await;
    let served = mirror.get(BASE_OLD).await;
    assert_eq!(served.status, 200);
    assert_eq!(served.body.to_vec(), fixture(BASE_OLD));
    let metrics = mirror.metrics().await;
    assert_eq!(blocks(&metrics, "hexpm", "deny"), 0.0);
    assert_eq!(metric_sum(&metrics, "hexmirror_policy_reported_total", &["repo=\"hexpm\"", "rule=\"deny\""]), 1.0);
    mirror.stop().await;
}

#[tokio::test]
async fn a_policy_change_takes_effect_without_a_restart_and_a_bad_one_is_refused() {
    let upstream = TestUpstream::start(demo_files("hexpm", "")).await;
    let site = TestMirror::builder().upstream(&upstream.url()).set("policy_rescan", "1s");
    let mirror = site.start().await;
    assert_eq!(mirror.get(BASE_OLD).await.status, 200);
    let path = site.config_path();
    let original = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("{original}\n[policy]\ndeny = [\"hexdemo_base\"]\n")).unwrap();
    wait_for(|| async { mirror.get(BASE_OLD).await.status == 403 }).await;
    // A mistake: logged, counted, and the policy in force stays.
    std::fs::write(&path, format!("{original}\n[policy]\ndeny = [\"hexdemo_base <<\"]\n")).unwrap();
    assert!(mirror.mirror.rescan_policy().await.unwrap_err().contains("policy.deny: \"hexdemo_base <<\""));
    assert_eq!(mirror.get(BASE_OLD).await.status, 403);
    assert!(metric_sum(&mirror.metrics().await, "hexmirror_policy_reload_errors_total", &[]) >= 1.0);
    // Lifted: served again.
    std::fs::write(&path, &original).unwrap();
    wait_for(|| async { mirror.get(BASE_OLD).await.status == 200 }).await;
    mirror.stop().await;
}

#[tokio::test]
async fn a_new_advisory_file_takes_effect_on_sighup() {
    let upstream = TestUpstream::start(demo_files("hexpm", "")).await;
    let dir = tempfile::tempdir().unwrap();
    let site = TestMirror::builder()
        .upstream(&upstream.url())
        .set("policy_rescan", "0")
        .append(&format!("[policy]\nadvisories = {:?}", dir.path().display().to_string()));
    let mirror = site.start().await;
    assert_eq!(mirror.get(BASE_OLD).await.status, 200);
    advisory(dir.path(), "GHSA-demo-0002");
    // No periodic rescan: the signal does it.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(mirror.get(BASE_OLD).await.status, 200);
    // SIGHUP to this process, as an operator sends it to a server.
    let status = std::process::Command::new("kill").args(["-HUP", &std::process::id().to_string()]).status().unwrap();
    assert!(status.success());
    wait_for(|| async { mirror.get(BASE_OLD).await.status == 403 }).await;
    mirror.stop().await;
}

/// Polls `check` for up to 10 s.
async fn wait_for<F, Fut>(check: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !check().await {
        assert!(std::time::Instant::now() < deadline, "not within 10 s");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// A policy of one global table, as the configuration loads it.
fn policy_of(table: &str) -> std::sync::Arc<hexmirror::policy::Policy> {
    let raw: hexmirror::policy::RawPolicy = toml::from_str(table).unwrap();
    let repos = BTreeMap::from([("hexpm".to_string(), None)]);
    std::sync::Arc::new(hexmirror::policy::Policy::from_raw(&raw, &repos).unwrap())
}

fn sync_request(packages: &[&str]) -> hexmirror::sync::SyncRequest {
    hexmirror::sync::SyncRequest {
        packages: packages.iter().map(|p| p.to_string()).collect(),
        dependencies: true,
        include_optional: true,
        concurrency: 4,
        ..Default::default()
    }
}

async fn sync(mirror: &TestMirror, request: &hexmirror::sync::SyncRequest) -> hexmirror::sync::Summary {
    let (_events, sink) = hexmirror::sync::collect_events();
    hexmirror::sync::run(&mirror.mirror, request, &sink).await
}

#[tokio::test]
async fn sync_never_selects_a_blocked_release_and_fails_when_asked_for_one() {
    let upstream = TestUpstream::start(demo_files("hexpm", "")).await;
    let mirror = site(&upstream, r#"deny = ["hexdemo_mid == 0.1.0", "hexdemo_base == 1.1.0"]"#).start().await;

    // Every release of hexdemo_mid: the blocked one is left out, and said so.
    let summary = sync(&mirror, &sync_request(&["hexdemo_mid"])).await;
    assert_eq!(upstream.requests_for("/tarballs/hexdemo_mid-0.1.0.tar"), 0, "never fetched");
    assert_eq!(upstream.requests_for("/tarballs/hexdemo_mid-0.2.0.tar"), 1);
    assert!(summary.skipped >= 1, "{summary:?}");
    // hexdemo_mid 0.2.0 needs hexdemo_base; its only unretired match is blocked: a failure
    // naming the rule, and the blocked release is not fetched.
    assert!(!summary.ok());
    assert!(
        summary.failures.iter().any(|f| f.contains("hexdemo_base 1.1.0 is blocked by policy (deny)")),
        "{:?}",
        summary.failures
    );
    assert_eq!(upstream.requests_for(BASE_NEW), 0);

    // Asked for by name: fails, naming the rule.
    let summary = sync(&mirror, &sync_request(&["hexdemo_base == 1.1.0"])).await;
    assert!(!summary.ok());
    assert!(summary.failures[0].starts_with("hexdemo_base == 1.1.0: only blocked releases match"), "{summary:?}");

    // A lockfile asking for it: fails, naming the rule.
    let lock = "{\"1.2.0\",\n[{<<\"hexdemo_base\">>,{pkg,<<\"hexdemo_base\">>,<<\"1.1.0\">>},0}]}.\n[].\n";
    let request =
        hexmirror::sync::SyncRequest { lockfiles: vec![("rebar.lock".into(), lock.into())], ..sync_request(&[]) };
    let summary = sync(&mirror, &request).await;
    assert!(!summary.ok());
    assert!(
        summary
            .failures
            .iter()
            .any(|f| f.contains("hexdemo_base 1.1.0: hexdemo_base 1.1.0 is blocked by policy (deny)")),
        "{:?}",
        summary.failures
    );
    assert_eq!(upstream.requests_for(BASE_NEW), 0, "nothing blocked was fetched");
    mirror.stop().await;
}

#[tokio::test]
async fn sync_fails_on_a_licence_only_the_tarball_tells_and_does_not_pin_it() {
    let upstream = TestUpstream::start(demo_files("hexpm", "")).await;
    let mirror = site(&upstream, r#"licenses_allowed = ["MIT"]"#).start().await;
    let summary =
        sync(&mirror, &hexmirror::sync::SyncRequest { dependencies: false, ..sync_request(&["hexdemo_base"]) }).await;
    assert!(!summary.ok());
    assert!(summary.failures.iter().any(|f| f.contains("(license): licence not allowed: Apache-2.0")), "{summary:?}");
    let selected = mirror.mirror.store().selected().await.unwrap();
    assert!(!selected.iter().any(|k| k.ends_with("hexdemo_base-1.1.0.tar")), "{selected:?}");
    mirror.stop().await;
}

#[tokio::test]
async fn export_leaves_blocked_releases_out_and_import_applies_its_own_policy() {
    let upstream = TestUpstream::start(demo_files("hexpm", "")).await;
    let open = TestMirror::builder().upstream(&upstream.url());
    let mirror = open.start().await;
    assert!(sync(&mirror, &sync_request(&["hexdemo_top"])).await.ok());
    let mut full = Vec::new();
    hexmirror::transfer::export_to(&mirror.mirror, &Default::default(), |_| Ok(&mut full)).await.unwrap();
    mirror.stop().await;

    // Export under a rule: the blocked release is not carried, and is named.
    let mirror = open.clone().append("[policy]\ndeny = [\"hexdemo_base\"]").start().await;
    let mut bundle = Vec::new();
    let exported =
        hexmirror::transfer::export_to(&mirror.mirror, &Default::default(), |_| Ok(&mut bundle)).await.unwrap();
    assert_eq!(exported.blocked.len(), 1, "{:?}", exported.blocked);
    assert!(exported.blocked[0].starts_with("public/hexpm/tarballs/hexdemo_base-1.1.0.tar: deny: "));
    let (manifest, _) = hexmirror::bundle::read_manifest(&bundle[..], &hexmirror::transfer::limits()).unwrap();
    let keys: Vec<&str> = manifest.objects.iter().map(|o| o.key.as_str()).collect();
    assert!(!keys.iter().any(|k| k.ends_with("hexdemo_base-1.1.0.tar")), "{keys:?}");
    assert!(keys.iter().any(|k| k.ends_with("packages/hexdemo_base")), "the registry file is carried unchanged");
    assert!(keys.iter().any(|k| k.ends_with("hexdemo_top-2.0.1.tar")));
    mirror.stop().await;

    // Import of the full bundle at a site whose policy blocks hexdemo_mid: left out, listed.
    let other =
        TestMirror::builder().upstream(&upstream.url()).append("[policy]\ndeny = [\"hexdemo_mid\"]").start().await;
    let report = hexmirror::transfer::import(&other.mirror, &full).await.unwrap();
    assert_eq!(report.blocked.len(), 1, "{report:?}");
    assert!(report.blocked[0].starts_with("public/hexpm/tarballs/hexdemo_mid-0.2.0.tar: deny: denied"), "{report:?}");
    let stored: Vec<String> = other.stored().await.into_iter().map(|(k, _)| k.to_string()).collect();
    assert!(!stored.iter().any(|k| k.ends_with("hexdemo_mid-0.2.0.tar")), "{stored:?}");
    assert!(stored.iter().any(|k| k.ends_with("hexdemo_base-1.1.0.tar")));
    assert!(other.mirror.seen_export().contains_key("hexpm/hexdemo_mid/0.2.0"), "the import noted what it saw");
    other.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_check_explain_and_baseline_on_the_command_line() {
    let upstream = upstream_with_retired(2, "use 1.1.0").await;
    let open = TestMirror::builder().upstream(&upstream.url());
    let mirror = open.start().await;
    for path in [BASE_OLD, BASE_NEW, "/tarballs/hexdemo_mid-0.2.0.tar"] {
        assert_eq!(mirror.get(path).await.status, 200);
    }
    mirror.stop().await;

    let ruled =
        open.clone().append("[policy]\nblock_retired = [\"security\"]\ncooldown = \"1d\"\nexempt = [\"hexdemo_mid\"]");
    let config = ruled.write_config();
    // Through a running server first (its admin endpoint), then on the same store itself.
    let snapshot = tempfile::tempdir().unwrap();
    copy_dir(&ruled.data_dir(), snapshot.path());
    let served = tokio::task::block_in_place(|| ruled.serve_binary("warn", std::process::Stdio::null()));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !ruled.data_dir().join("admin.json").exists() {
        assert!(std::time::Instant::now() < deadline, "the server wrote no admin.json");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    tokio::task::block_in_place(|| check_explain_and_baseline(&config));
    served.stop();
    std::fs::remove_dir_all(ruled.data_dir()).unwrap();
    copy_dir(snapshot.path(), &ruled.data_dir());
    check_explain_and_baseline(&config);

    // Lifted: nothing blocks, exit 0.
    let lifted = open.write_config();
    assert_eq!(run_hexmirror(&lifted, &["policy", "check"]).status.code(), Some(0));
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    let status = std::process::Command::new("cp").arg("-a").arg(format!("{}/.", from.display())).arg(to).status();
    std::fs::create_dir_all(to).unwrap();
    assert!(status.unwrap().success());
}

/// `policy check`, `explain` and `baseline` on the command line, with the rules of
/// `policy_check_explain_and_baseline_on_the_command_line` and a store that has seen everything
/// just now.
fn check_explain_and_baseline(config: &std::path::Path) {
    let config = config.to_path_buf();
    let check = run_hexmirror(&config, &["policy", "check"]);
    let out = String::from_utf8_lossy(&check.stdout);
    assert_eq!(check.status.code(), Some(1), "{out}");
    assert!(out.contains("blocked: hexpm/hexdemo_base 1.0.0: retired: retired (security): use 1.1.0"), "{out}");
    assert!(out.contains("blocked: hexpm/hexdemo_base 1.1.0: cooldown: "), "{out}");
    assert!(!out.contains("hexdemo_mid"), "exempt: {out}");
    assert!(out.contains("policy check: 3 releases checked, 2 blocked"), "{out}");

    let json = run_hexmirror(&config, &["policy", "check", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(report["ok"], false);
    assert_eq!(report["blocked"][0]["decision"]["rule"], "retired");

    let explain = run_hexmirror(&config, &["policy", "explain", "hexdemo_base", "1.0.0"]);
    let out = String::from_utf8_lossy(&explain.stdout);
    assert!(explain.status.success(), "{out}");
    assert!(out.contains("decides: retired: retired (security): use 1.1.0"), "{out}");
    assert!(out.contains("deny: no rule matches"), "{out}");

    // Baseline: what is listed now is old news; only the retirement still blocks.
    let baseline = run_hexmirror(&config, &["policy", "baseline"]);
    assert!(baseline.status.success(), "{}", String::from_utf8_lossy(&baseline.stderr));
    let check = run_hexmirror(&config, &["policy", "check"]);
    let out = String::from_utf8_lossy(&check.stdout);
    assert!(out.contains("3 releases checked, 1 blocked") && !out.contains("cooldown"), "{out}");
    let explain = run_hexmirror(&config, &["policy", "explain", "hexdemo_base", "1.1.0", "--json"]);
    let verdict: serde_json::Value = serde_json::from_slice(&explain.stdout).unwrap();
    assert_eq!(verdict["blocked"], false, "{verdict}");
    assert_eq!(verdict["repo"], "hexpm", "{verdict}");
}

#[tokio::test]
async fn a_bundle_carries_first_seen_times_and_the_importing_site_keeps_the_earlier() {
    let upstream = TestUpstream::start(demo_files("hexpm", "")).await;
    let outside = TestMirror::builder().upstream(&upstream.url()).start().await;
    assert!(sync(&outside, &sync_request(&["hexdemo_top"])).await.ok());
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let month_ago = now - 30 * 86_400;
    let seen_outside: BTreeMap<String, u64> =
        outside.mirror.seen_export().into_keys().map(|release| (release, month_ago)).collect();
    assert!(seen_outside.contains_key("hexpm/hexdemo_top/2.0.1"), "{seen_outside:?}");
    outside.mirror.seen_merge_earlier(seen_outside.clone());
    let mut bundle = Vec::new();
    hexmirror::transfer::export_to(&outside.mirror, &Default::default(), |_| Ok(&mut bundle)).await.unwrap();
    outside.stop().await;
    let (manifest, _) = hexmirror::bundle::read_manifest(&bundle[..], &hexmirror::transfer::limits()).unwrap();
    assert_eq!(manifest.format, 2, "a bundle with first-seen times is format 2");
    assert_eq!(manifest.first_seen, seen_outside, "every release of the carried packages, with its time");

    // Inside, offline, with a week's cooldown: what the outside saw a month ago passes at once.
    let inside = TestMirror::builder().upstream("http://127.0.0.1:9").offline().append("[policy]\ncooldown = \"7d\"");
    let inside = inside.start().await;
    let report = hexmirror::transfer::import(&inside.mirror, &bundle).await.unwrap();
    assert!(report.blocked.is_empty(), "the bundle's times are older than the cooldown: {report:?}");
    assert_eq!(inside.mirror.seen_export()["hexpm/hexdemo_top/2.0.1"], month_ago);
    let got = inside.get("/tarballs/hexdemo_top-2.0.1.tar").await;
    assert_eq!(got.status, 200, "{}", String::from_utf8_lossy(&got.body));

    // A later bundle does not make a release newer than the site already knows it to be.
    let mut later = seen_outside.clone();
    later.values_mut().for_each(|t| *t = now);
    assert_eq!(inside.mirror.seen_merge_earlier(later), 0);
    assert_eq!(inside.mirror.seen_export()["hexpm/hexdemo_top/2.0.1"], month_ago);
    inside.stop().await;
}
