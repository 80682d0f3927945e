//! hexmirror's own key exchanged for tokens as hex.pm's token endpoint wants it: the Hex
//! client's id and a scope by default, the configured ones otherwise; every refusal explained
//! in the log and to the client; a token the repository refuses replaced once.

mod common;

use std::sync::{Arc, Mutex};

use common::*;

/// The lines logged so far that mention `needle`.
fn logged(logs: &Arc<Mutex<Vec<u8>>>, needle: &str) -> Vec<String> {
    let text = String::from_utf8_lossy(&logs.lock().unwrap()).to_string();
    text.lines().filter(|l| l.contains(needle)).map(str::to_string).collect()
}

const KEY: &str = "acme-read-key-5e1f";

/// An organization upstream (everything needs a token) whose token endpoint knows `KEY`, a key
/// of `acme`.
async fn acme_upstream() -> TestUpstream {
    let upstream = protected_upstream(&[]).await;
    upstream.state.lock().unwrap().oauth_keys = vec![(KEY.into(), "acme".into())];
    upstream
}

/// The repository `name` at `upstream`, exchanging `key` at its token endpoint; every client of
/// the mirror may read it.
fn exchanging(upstream: &TestUpstream, key: &str) -> RepoSpec {
    RepoSpec::acme(&upstream.url())
        .allow_http()
        .auth_key(key)
        .oauth_token_url(&format!("{}/api/oauth/token", upstream.url()))
        .allow_all_clients()
}

async fn mirror_of(name: &str, spec: RepoSpec) -> TestMirror {
    let hexpm = TestUpstream::start(Default::default()).await;
    let site = TestMirror::builder().upstream(&hexpm.url()).repo(name, spec);
    std::mem::forget(hexpm);
    site.start().await
}

/// The `Authorization` of every request the repository received for `path`.
fn sent_for(upstream: &TestUpstream, path: &str) -> Vec<String> {
    let s = upstream.state.lock().unwrap();
    s.requests
        .iter()
        .filter(|(p, _)| p == path)
        .map(|(_, h)| h.get("authorization").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default())
        .collect()
}

#[tokio::test]
async fn the_exchange_names_the_hex_client_and_asks_for_the_repositories_scope() {
    let upstream = acme_upstream().await;
    let mirror = mirror_of("corp", exchanging(&upstream, KEY)).await;
    let got = mirror.get("/repos/corp/packages/hexdemo_mid").await;
    assert_eq!(got.status, 200, "{}", String::from_utf8_lossy(&got.body));
    let forms = upstream.token_forms();
    assert_eq!(forms.len(), 1);
    let field = |name: &str| forms[0].get(name).map(String::as_str);
    assert_eq!(field("grant_type"), Some("client_credentials"));
    assert_eq!(field("client_id"), Some("78ea6566-89fd-481e-a1d6-7d9d78eacca8"));
    assert_eq!(field("client_secret"), Some(KEY));
    assert_eq!(field("scope"), Some("repositories"));
    assert_eq!(forms[0].len(), 4, "nothing else is sent: {:?}", forms[0].keys());
    let token_request = upstream.state.lock().unwrap().requests.iter().find(|(p, _)| p == "/api/oauth/token").cloned();
    let (_, headers) = token_request.unwrap();
    assert_eq!(headers.get("content-type").unwrap(), "application/x-www-form-urlencoded");
    assert_eq!(sent_for(&upstream, "/packages/hexdemo_mid"), vec!["Bearer tok-1"]);
}

#[tokio::test]
async fn a_configured_client_id_and_scope_are_sent_instead() {
    let upstream = acme_upstream().await;
    upstream.state.lock().unwrap().oauth_clients = vec![("corp-mirror".into(), true)];
    let spec = exchanging(&upstream, KEY).oauth_client_id("corp-mirror").oauth_scope("repository:acme");
    let mirror = mirror_of("corp", spec).await;
    let got = mirror.get("/repos/corp/packages/hexdemo_mid").await;
    assert_eq!(got.status, 200, "{}", String::from_utf8_lossy(&got.body));
    let forms = upstream.token_forms();
    assert_eq!(forms.len(), 1);
    assert_eq!(forms[0].get("client_id").map(String::as_str), Some("corp-mirror"));
    assert_eq!(forms[0].get("scope").map(String::as_str), Some("repository:acme"));
    assert_eq!(forms[0].get("client_secret").map(String::as_str), Some(KEY));
}

#[tokio::test]
async fn every_refusal_of_the_token_endpoint_is_explained_in_the_log_and_the_502() {
    let logs = captured_logs();
    let upstream = acme_upstream().await;
    upstream.state.lock().unwrap().oauth_clients = vec![("device-only".into(), false)];
    let cases = [
        (
            "unknownclient",
            exchanging(&upstream, KEY).oauth_client_id("not-registered"),
            "invalid_client: Invalid client",
        ),
        (
            "grantless",
            exchanging(&upstream, KEY).oauth_client_id("device-only"),
            "unauthorized_client: Client not authorized for this grant type",
        ),
        ("wrongkey", exchanging(&upstream, "not-a-key-9d3b"), "invalid_client: Invalid API key"),
        (
            "otherorg",
            exchanging(&upstream, KEY).oauth_scope("repository:other"),
            "invalid_scope: Requested scopes exceed API key permissions",
        ),
        (
            "apiscope",
            exchanging(&upstream, KEY).oauth_scope("api"),
            "invalid_scope: Requested scopes exceed API key permissions",
        ),
    ];
    for (name, spec, reason) in cases {
        let mirror = mirror_of(name, spec).await;
        let got = mirror.get(&format!("/repos/{name}/packages/hexdemo_mid")).await;
        let body = String::from_utf8_lossy(&got.body).to_string();
        assert_eq!(got.status, 502, "{name}: {body}");
        assert!(body.contains("token endpoint refused") && body.contains(reason), "{name}: {body}");
        assert!(!body.contains(KEY) && !body.contains("not-a-key-9d3b"), "{name}: the key in {body}");
        let lines = logged(&logs, &format!("repo={name}"));
        let refused = lines.iter().find(|l| l.contains("token exchange failed"));
        let refused = refused.unwrap_or_else(|| panic!("{name}: no log line of the refusal in {lines:?}"));
        let (error, description) = reason.split_once(": ").unwrap();
        assert!(refused.contains(&format!("error=\"{error}\"")), "{name}: {refused}");
        assert!(refused.contains(&format!("error_description=\"{description}\"")), "{name}: {refused}");
        mirror.stop().await;
    }
    assert_eq!(upstream.requests_for("/packages/hexdemo_mid"), 0, "without a token, the repository is not asked");
    let all = String::from_utf8_lossy(&logs.lock().unwrap()).to_string();
    assert!(!all.contains(KEY) && !all.contains("not-a-key-9d3b"), "a key was logged");
}

#[tokio::test]
async fn the_stand_in_token_endpoint_refuses_what_hexpm_refuses() {
    let upstream = acme_upstream().await;
    upstream.state.lock().unwrap().oauth_clients = vec![("device-only".into(), false)];
    let url = format!("{}/api/oauth/token", upstream.url());
    let hex = "78ea6566-89fd-481e-a1d6-7d9d78eacca8";
    let form = "application/x-www-form-urlencoded";
    let cases: &[(&str, &str, u16, &str)] = &[
        (form, "grant_type=client_credentials&client_secret=K&scope=repositories", 401, "invalid_client"),
        (
            form,
            &format!("grant_type=client_credentials&client_id=nobody&client_secret={KEY}&scope=repositories"),
            401,
            "invalid_client",
        ),
        (
            form,
            &format!("grant_type=client_credentials&client_id=device-only&client_secret={KEY}&scope=repositories"),
            400,
            "unauthorized_client",
        ),
        (form, &format!("grant_type=client_credentials&client_id={hex}&scope=repositories"), 400, "invalid_request"),
        (
            form,
            &format!("grant_type=client_credentials&client_id={hex}&client_secret=wrong&scope=repositories"),
            401,
            "invalid_client",
        ),
        (form, &format!("grant_type=client_credentials&client_id={hex}&client_secret={KEY}"), 400, "invalid_scope"),
        (
            form,
            &format!("grant_type=client_credentials&client_id={hex}&client_secret={KEY}&scope=repository%3Aother"),
            400,
            "invalid_scope",
        ),
        (
            form,
            &format!("grant_type=client_credentials&client_id={hex}&client_secret={KEY}&scope=api+repositories"),
            400,
            "invalid_scope",
        ),
        (
            form,
            &format!("grant_type=password&client_id={hex}&client_secret={KEY}&scope=repositories"),
            400,
            "unsupported_grant_type",
        ),
    ];
    for (content_type, body, status, error) in cases {
        let got = post(&url, content_type, body).await;
        let answer: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
        assert_eq!((got.status, answer["error"].as_str()), (*status, Some(*error)), "{body}: {answer}");
        assert!(answer["error_description"].as_str().is_some_and(|d| !d.is_empty()), "{body}: {answer}");
    }
    // Granted: as a form or as JSON, `repositories` expanded to the key's organization.
    let granted = [
        (form, format!("grant_type=client_credentials&client_id={hex}&client_secret={KEY}&scope=repositories")),
        (
            "application/json",
            serde_json::json!({"grant_type": "client_credentials", "client_id": hex, "client_secret": KEY, "scope": "repository:acme"})
                .to_string(),
        ),
    ];
    for (content_type, body) in granted {
        let got = post(&url, content_type, &body).await;
        let answer: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
        assert_eq!(got.status, 200, "{answer}");
        assert_eq!(answer["token_type"], "bearer");
        assert_eq!(answer["scope"], "repository:acme");
        assert_eq!(answer["expires_in"], 3600);
        assert!(answer["access_token"].as_str().is_some_and(|t| t.starts_with("tok-")));
    }
}

#[tokio::test]
async fn a_refused_token_is_replaced_by_one_new_exchange_and_the_request_retried_once() {
    let upstream = acme_upstream().await;
    let mirror = mirror_of("corp", exchanging(&upstream, KEY)).await;
    assert_eq!(mirror.get("/repos/corp/packages/hexdemo_mid").await.status, 200);
    // The repository stops accepting the cached token long before its hour is up.
    upstream.state.lock().unwrap().revoked.push("tok-1".into());
    let got = mirror.get("/repos/corp/packages/hexdemo_top").await;
    assert_eq!(got.status, 200, "{}", String::from_utf8_lossy(&got.body));
    assert_eq!(upstream.token_forms().len(), 2, "one new exchange");
    assert_eq!(sent_for(&upstream, "/packages/hexdemo_top"), vec!["Bearer tok-1", "Bearer tok-2"]);
    // The new token serves what follows, with no exchange of its own.
    assert_eq!(mirror.get("/repos/corp/packages/hexdemo_base").await.status, 200);
    assert_eq!(upstream.token_forms().len(), 2);
    assert_eq!(sent_for(&upstream, "/packages/hexdemo_base"), vec!["Bearer tok-2"]);
}

#[tokio::test]
async fn a_repository_that_refuses_the_new_token_too_is_not_asked_again_in_a_loop() {
    let upstream = acme_upstream().await;
    let mirror = mirror_of("corp", exchanging(&upstream, KEY)).await;
    assert_eq!(mirror.get("/repos/corp/packages/hexdemo_mid").await.status, 200);
    upstream.state.lock().unwrap().revoked.extend(["tok-1".to_string(), "tok-2".to_string()]);
    let got = mirror.get("/repos/corp/packages/hexdemo_top").await;
    assert_ne!(got.status, 200);
    assert_eq!(upstream.token_forms().len(), 2, "one new exchange, not more");
    assert_eq!(sent_for(&upstream, "/packages/hexdemo_top"), vec!["Bearer tok-1", "Bearer tok-2"], "one retry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_refused_with_one_token_share_one_new_exchange() {
    let upstream = acme_upstream().await;
    let mirror = mirror_of("corp", exchanging(&upstream, KEY)).await;
    assert_eq!(mirror.get("/repos/corp/names").await.status, 200);
    upstream.state.lock().unwrap().revoked.push("tok-1".into());
    let paths =
        ["/repos/corp/packages/hexdemo_base", "/repos/corp/packages/hexdemo_mid", "/repos/corp/packages/hexdemo_top"];
    let tasks: Vec<_> = paths.iter().map(|p| tokio::spawn(fetch(mirror.url(p)))).collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), 200);
    }
    assert_eq!(upstream.token_forms().len(), 2, "the first to renew exchanges; the others take its token");
}

async fn fetch(url: String) -> u16 {
    get(&url, &[]).await.status
}

#[tokio::test]
async fn a_failing_token_endpoint_is_asked_once_per_backoff_however_many_requests_come() {
    let upstream = acme_upstream().await;
    let mirror = mirror_of("wrongkey", exchanging(&upstream, "not-a-key-9d3b")).await;
    let mut bodies = Vec::new();
    for _ in 0..10 {
        let got = mirror.get("/repos/wrongkey/packages/hexdemo_mid").await;
        assert_eq!(got.status, 502);
        bodies.push(String::from_utf8_lossy(&got.body).to_string());
    }
    assert_eq!(upstream.token_forms().len(), 1, "one exchange for ten requests within the first back-off");
    assert!(bodies[0].contains("invalid_client: Invalid API key"), "{}", bodies[0]);
    let last = bodies.last().unwrap();
    assert!(last.contains("invalid_client: Invalid API key") && last.contains("not asked again for 1s"), "{last}");
    // Once the back-off is over the endpoint is asked again; the next wait is twice as long.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let got = mirror.get("/repos/wrongkey/packages/hexdemo_mid").await;
    assert_eq!(got.status, 502);
    assert_eq!(upstream.token_forms().len(), 2);
    let got = mirror.get("/repos/wrongkey/packages/hexdemo_mid").await;
    let body = String::from_utf8_lossy(&got.body).to_string();
    assert!(body.contains("not asked again for 2s"), "{body}");
    assert_eq!(upstream.token_forms().len(), 2);
    mirror.stop().await;
}
