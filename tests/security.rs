//! Attacks on the promises of the README's security section: one test per break an attack
//! review found, each named after the bug it pins. The threat model: the upstream, the store,
//! bundles, other local users and every client are untrusted.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use hexmirror::cache::{CacheKey, Class, DiskStore, Store};

/// A site whose hex.pm repository is `hexpm_upstream`, plus the repository `corp`.
fn corp_site(hexpm_upstream: &str, corp: RepoSpec) -> MirrorBuilder {
    TestMirror::builder().upstream(hexpm_upstream).repo("corp", corp)
}

/// Item 1: a new flight looked at the memory tier and handed out an entry another client's
/// fetch had just stored, to a client whose own credentials the upstream refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn private_record_fetched_for_one_client_never_reaches_concurrent_wrong_tokens() {
    let upstream = protected_upstream(&["Bearer alice-key"]).await;
    upstream.state.lock().unwrap().delay = Duration::from_millis(200);
    let mirror = corp_site(&upstream.url(), RepoSpec::acme(&upstream.url()).trusted().allow_http()).start().await;
    let url = mirror.url("/repos/corp/packages/hexdemo_mid");
    let leaks = Arc::new(AtomicUsize::new(0));
    let strangers_answered = Arc::new(AtomicUsize::new(0));
    for cycle in 0..12 {
        mirror.mirror.purge("hexdemo_mid", None, false).await.unwrap();
        let alice = {
            let url = url.clone();
            tokio::spawn(async move { get(&url, &[("authorization", "Bearer alice-key")]).await })
        };
        let mut strangers = Vec::new();
        for n in 0..48u64 {
            let (url, leaks, answered) = (url.clone(), leaks.clone(), strangers_answered.clone());
            strangers.push(tokio::spawn(async move {
                // Spread over the whole of alice's fetch, densest around its end.
                tokio::time::sleep(Duration::from_millis(if n < 16 { n * 12 } else { 185 + n - 16 })).await;
                let token = format!("Bearer BAD-{cycle}-{n}");
                let got = get(&url, &[("authorization", token.as_str())]).await;
                answered.fetch_add(1, Ordering::Relaxed);
                if got.status == 200 {
                    leaks.fetch_add(1, Ordering::Relaxed);
                } else {
                    assert_eq!(got.status, 401, "a wrong token gets exactly 401");
                    assert!(got.body.len() < 100, "no byte of the content");
                }
            }));
        }
        assert_eq!(alice.await.unwrap().status, 200, "the right token is served");
        for stranger in strangers {
            stranger.await.unwrap();
        }
    }
    assert_eq!(strangers_answered.load(Ordering::Relaxed), 12 * 48);
    assert_eq!(leaks.load(Ordering::Relaxed), 0, "private records handed to wrong tokens");
}

/// Item 3: a cached tarball was served (after a 304, or as a stale copy) although the verified
/// record held now gives its release another checksum.
#[tokio::test]
async fn tarball_is_never_served_once_the_verified_record_gives_it_another_checksum() {
    use prost::Message;
    let upstream = TestUpstream::start(demo_files("hexpm", "")).await;
    // The record is refreshed on the request that finds it expired (no stale answer meanwhile).
    let site = TestMirror::builder().upstream(&upstream.url()).registry_ttl("1s");
    let mirror = site.without_stale_while_revalidate().start().await;
    let tarball = "/tarballs/hexdemo_mid-0.2.0.tar";
    let got = mirror.get(tarball).await;
    assert_eq!((got.status, got.header("x-cache")), (200, "miss"));

    // The upstream now serves a validly signed record that gives 0.2.0 another checksum.
    let mut record = demo_package("hexpm", "hexdemo_mid");
    let release = record.releases.iter_mut().find(|r| r.version == "0.2.0").unwrap();
    release.outer_checksum = Some(sha2::Sha256::digest(b"other bytes").to_vec());
    upstream.set_file("/packages/hexdemo_mid", sign_registry_file(&record.encode_to_vec()));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let got = mirror.get("/packages/hexdemo_mid").await;
    assert_eq!((got.status, got.header("x-cache")), (200, "miss"), "the new record is verified and held");

    // The upstream still has the old tarball (it would answer a conditional request with 304).
    let got = mirror.get(tarball).await;
    assert_ne!(got.status, 200, "served as {} after the record changed", got.header("x-cache"));
    assert_eq!(got.status, 502);
    // Nor as a stale copy when the upstream fails.
    upstream.script(tarball, 500, b"down".to_vec());
    let got = mirror.get(tarball).await;
    assert_ne!(got.status, 200, "served as {} after the record changed", got.header("x-cache"));
    // Nor from the store after a restart.
    let mirror = mirror.restart().await;
    let got = mirror.get(tarball).await;
    assert_ne!(got.status, 200, "served as {} after a restart", got.header("x-cache"));
}

use sha2::Digest;

/// Item 5: import trusted the bundle's public/private label, so an organization's records
/// relabelled `public/...` were served to anonymous clients.
#[tokio::test]
async fn bundle_relabelling_an_organizations_content_as_public_is_refused() {
    let upstream = TestUpstream::start(hexpm_and_acme_files()).await;
    {
        let mut s = upstream.state.lock().unwrap();
        s.protected_prefix = Some("/repos/acme".into());
    }
    let mirror = TestMirror::builder().upstream(&upstream.url()).start().await;
    let object = |key: &str, kind: &str, rel: &str| hexmirror::bundle::Object {
        key: key.into(),
        kind: kind.into(),
        pinned: true,
        bytes: demo_file("acme", rel).into(),
    };
    for scope in ["public", "private"] {
        let objects = vec![
            object(&format!("{scope}/hexpm~acme/packages/hexdemo_mid"), "package", "packages/hexdemo_mid"),
            object(
                &format!("{scope}/hexpm~acme/tarballs/hexdemo_mid-0.2.0.tar"),
                "tarball",
                "tarballs/hexdemo_mid-0.2.0.tar",
            ),
        ];
        let mut bundle = Vec::new();
        hexmirror::bundle::write(&objects, None, &mut bundle).unwrap();
        let result = hexmirror::transfer::import(&mirror.mirror, &bundle).await;
        if scope == "private" {
            // The honest label imports (the content verifies as acme's).
            assert!(result.is_ok(), "{result:?}");
            continue;
        }
        let err = result.expect_err("an organization's content labelled public was imported").to_string();
        assert!(err.contains("private"), "{err}");
        assert!(mirror.stored().await.is_empty(), "the store is unchanged");
        for path in ["/repos/acme/packages/hexdemo_mid", "/repos/acme/tarballs/hexdemo_mid-0.2.0.tar"] {
            assert_eq!(mirror.get(path).await.status, 401, "{path}");
        }
    }
}

/// Item 6: one request carrying `Authorization` for a public package stored the answer as
/// private and deleted the public copy, so anonymous clients got 401 from then on.
#[tokio::test]
async fn an_authenticated_request_never_hides_public_content_from_anonymous_clients() {
    let upstream = TestUpstream::start(demo_files("acme", "")).await;
    // An upstream that marks nothing `public` (RFC 9111: an answer to credentials is private).
    upstream.state.lock().unwrap().cache_control = Some("max-age=3600".into());
    let mirror = corp_site(&upstream.url(), RepoSpec::acme(&upstream.url()).trusted().allow_http()).start().await;
    let key = [("authorization", "Bearer someones-key")];
    for path in ["/repos/corp/packages/hexdemo_mid", "/repos/corp/tarballs/hexdemo_mid-0.2.0.tar"] {
        assert_eq!(get(&mirror.url(path), &key).await.status, 200, "{path}");
        let got = mirror.get(path).await;
        assert_eq!(got.status, 200, "{path}: anonymous after an authenticated request");
        let got = get(&mirror.url(path), &key).await;
        assert_eq!(got.status, 200, "{path}: authenticated again");
        let got = mirror.get(path).await;
        assert_eq!(got.status, 200, "{path}: anonymous again");
    }
    assert!(upstream.requests_for("/packages/hexdemo_mid") >= 1);
}

/// Item 7: where hexmirror decides access itself, an unauthorized client got 401 for a package
/// that exists and 404 for one that does not.
#[tokio::test]
async fn a_closed_repository_answers_the_same_401_for_existing_and_missing_packages() {
    let upstream = protected_upstream(&["own-key-4e1"]).await;
    let corp = RepoSpec::acme(&upstream.url()).allow_http().auth_key("own-key-4e1").access_tokens(&["team-7c2"]);
    let mirror = corp_site(&upstream.url(), corp).start().await;
    let team = [("authorization", "Bearer team-7c2")];
    let probes = [
        ("/repos/corp/packages/hexdemo_mid", "/repos/corp/packages/nosuch"),
        ("/repos/corp/tarballs/hexdemo_mid-0.2.0.tar", "/repos/corp/tarballs/nosuch-1.0.0.tar"),
        ("/repos/corp/tarballs/hexdemo_mid-0.2.0.tar", "/repos/corp/tarballs/hexdemo_mid-9.9.9.tar"),
        ("/repos/corp/names", "/repos/corp/docs/nosuch-1.0.0.tar.gz"),
    ];
    for warm in [false, true] {
        for (existing, missing) in probes {
            for stranger in [&[][..], &[("authorization", "Bearer wrong")][..]] {
                let a = get(&mirror.url(existing), stranger).await;
                let b = get(&mirror.url(missing), stranger).await;
                assert_eq!((a.status, b.status), (401, 401), "{existing} / {missing} (warm: {warm})");
                assert_eq!(a.body, b.body);
            }
        }
        if !warm {
            assert_eq!(upstream.total_requests(), 0, "nothing is looked up or fetched for a stranger");
            // Fill the cache as the team.
            assert_eq!(get(&mirror.url("/repos/corp/packages/hexdemo_mid"), &team).await.status, 200);
            assert_eq!(get(&mirror.url("/repos/corp/tarballs/hexdemo_mid-0.2.0.tar"), &team).await.status, 200);
            assert_eq!(get(&mirror.url("/repos/corp/names"), &team).await.status, 200);
            assert_eq!(get(&mirror.url("/repos/corp/packages/nosuch"), &team).await.status, 404);
        }
    }
    // The public key is not private.
    assert_eq!(mirror.get("/repos/corp/public_key").await.status, 200);
    mirror.stop().await;

    // hex.pm with hexmirror's own key: its public repository stays open, its organizations close.
    let hexpm = TestUpstream::start(hexpm_and_acme_files()).await;
    let own_key = RepoSpec::demo(&hexpm.url()).allow_http().auth_key("own-key");
    let mirror = TestMirror::builder().repo("hexpm", own_key).start().await;
    assert_eq!(mirror.get("/names").await.status, 200);
    assert_eq!(mirror.get("/packages/hexdemo_mid").await.status, 200);
    assert_eq!(mirror.get("/packages/nosuch").await.status, 404);
    let a = mirror.get("/repos/acme/packages/hexdemo_mid").await;
    let b = mirror.get("/repos/acme/packages/nosuch").await;
    assert_eq!((a.status, b.status), (401, 401));
    assert_eq!(a.body, b.body);
    let asked_for_acme = hexpm.state.lock().unwrap().requests.iter().filter(|(p, _)| p.starts_with("/repos/")).count();
    assert_eq!(asked_for_acme, 0, "nothing is fetched for a stranger");
}

/// Item 9: `lookup` took "docs" (no verification) and privacy from the stored record, so an
/// edited store record was served without any check, or to anyone.
#[tokio::test]
async fn a_stored_record_edited_to_say_docs_or_public_is_not_trusted() {
    let hexpm = TestUpstream::start(demo_files("hexpm", "")).await;
    let corp = protected_upstream(&["Bearer alice-key"]).await;
    let site = corp_site(&hexpm.url(), RepoSpec::acme(&corp.url()).trusted().allow_http());
    let mirror = site.start().await;
    let record = demo_file("hexpm", "packages/hexdemo_mid");
    assert_eq!(mirror.get("/packages/hexdemo_mid").await.status, 200);
    let alice = [("authorization", "Bearer alice-key")];
    assert_eq!(get(&mirror.url("/repos/corp/packages/hexdemo_mid"), &alice).await.status, 200);
    mirror.stop().await;

    // Someone with write access to the store edits it.
    let (store, _) = DiskStore::open(&site.data_dir()).await.unwrap();
    let public = CacheKey::parse("public/hexpm/packages/hexdemo_mid").unwrap();
    let (mut meta, _) = store.get(&public).await.unwrap().unwrap();
    let forged = tamper_signed(&record);
    meta.class = Class::Docs;
    meta.sha256 = hex::encode(sha2::Sha256::digest(&forged));
    meta.len = forged.len() as u64;
    store.put(&public, &meta, forged.clone().into()).await.unwrap();
    let private = CacheKey::parse("private/corp/packages/hexdemo_mid").unwrap();
    let (mut meta, body) = store.get(&private).await.unwrap().unwrap();
    assert!(meta.private);
    meta.private = false;
    store.put(&private, &meta, body).await.unwrap();
    store.flush().await.unwrap();
    drop(store);

    let mirror = site.start().await;
    assert!(mirror.mirror.check_stored(&public).await.is_err(), "verify calls the forged record intact");
    let got = mirror.get("/packages/hexdemo_mid").await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body, record, "the forged record was served");
    assert_eq!(got.header("x-cache"), "miss", "refetched from the upstream");
    let got = mirror.get("/repos/corp/packages/hexdemo_mid").await;
    assert_eq!(got.status, 401, "a private entry relabelled public was served to anyone");
}
