//! Several replicas on one shared store (`[store] kind = "s3"`), against real S3-compatible
//! servers started here on 127.0.0.1: Garage 2.5 (which ignores create-only writes:
//! `If-None-Match: *` and `If-Match` are answered 200) and moto's server (which honours them).
//!
//! A server binary that is missing skips its tests with a loud line on stderr; under
//! `CI=true` a missing server fails them (`.ci/run` installs both).

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

use common::*;
use object_store::{ObjectStore, ObjectStoreExt};

const BUCKET: &str = "hexmirror-test";
const REGION: &str = "us-east-1";
/// Garage wants its own key format; moto takes any.
const ACCESS_KEY: &str = "GK31c2f218a2e44f485b94239e";
const SECRET_KEY: &str = "b892c0665f0ada8a4755dae98baa3b133590e11dae3bcc1f9d769d67f16c3835";

/// The credentials every store in this test process uses, from the usual AWS variables (set
/// once, before any store reads them).
fn credentials() {
    static SET: Once = Once::new();
    SET.call_once(|| {
        std::env::set_var("AWS_ACCESS_KEY_ID", ACCESS_KEY);
        std::env::set_var("AWS_SECRET_ACCESS_KEY", SECRET_KEY);
    });
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Garage,
    Moto,
}

/// An S3-compatible server on 127.0.0.1, killed when dropped.
struct S3Server {
    kind: Kind,
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

/// A binary on PATH or in ~/.cargo/bin.
fn find(binary: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.into_iter().map(|d| d.join(binary)).find(|p| p.is_file())
}

/// moto's server can be started with `python3 -m moto.server`.
fn moto_present() -> bool {
    Command::new("python3").args(["-c", "import moto.server"]).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// `None` (with a loud line) when the server's binary is missing; a failure under `CI=true`.
fn server(kind: Kind) -> Option<S3Server> {
    credentials();
    let (binary, present) = match kind {
        Kind::Garage => ("garage", find("garage").is_some()),
        Kind::Moto => ("moto's server", moto_present()),
    };
    if !present {
        let message = format!(
            "SKIPPED: {binary} is not installed, so the shared-store tests against {kind:?} did not run \
             (cargo install garage --version 2.5.0 --locked; pip install 'moto[server]')"
        );
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{message}");
        eprintln!("{message}");
        return None;
    }
    let mut server = S3Server { kind, child: None, port: free_port(), dir: tempfile::tempdir().unwrap() };
    server.start();
    Some(server)
}

impl S3Server {
    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn start(&mut self) {
        let dir = self.dir.path();
        let child = match self.kind {
            Kind::Garage => {
                let config = dir.join("garage.toml");
                let rpc = free_port();
                let admin = free_port();
                std::fs::write(
                    &config,
                    format!(
                        "metadata_dir = \"{meta}\"\ndata_dir = \"{data}\"\ndb_engine = \"sqlite\"\n\
                         replication_factor = 1\nrpc_bind_addr = \"127.0.0.1:{rpc}\"\n\
                         rpc_public_addr = \"127.0.0.1:{rpc}\"\nrpc_secret = \"{secret}\"\n\
                         [s3_api]\ns3_region = \"{REGION}\"\napi_bind_addr = \"127.0.0.1:{port}\"\n\
                         root_domain = \".s3.garage.localhost\"\n[admin]\napi_bind_addr = \"127.0.0.1:{admin}\"\n",
                        meta = dir.join("meta").display(),
                        data = dir.join("data").display(),
                        secret = "4425f5c26c5e11581d3223904324dcb5b5d5dfb14e5e7f35e38c595424f5f1e6",
                        port = self.port,
                    ),
                )
                .unwrap();
                Command::new(find("garage").unwrap())
                    .arg("-c")
                    .arg(&config)
                    .args(["server", "--single-node", "--default-bucket"])
                    .env("GARAGE_DEFAULT_ACCESS_KEY", ACCESS_KEY)
                    .env("GARAGE_DEFAULT_SECRET_KEY", SECRET_KEY)
                    .env("GARAGE_DEFAULT_BUCKET", BUCKET)
                    .env("RUST_LOG", "warn")
                    .stdout(Stdio::null())
                    .stderr(std::fs::File::create(dir.join("garage.log")).unwrap())
                    .spawn()
                    .unwrap()
            }
            Kind::Moto => Command::new("python3")
                .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &self.port.to_string()])
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.join("moto.log")).unwrap())
                .spawn()
                .unwrap(),
        };
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "{:?} did not start: {}", self.kind, self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        // The bucket: Garage makes it (--default-bucket), moto is asked (it checks no signature).
        let ready = Instant::now() + Duration::from_secs(60);
        loop {
            let ok = match self.kind {
                Kind::Moto => curl(&["-X", "PUT", &format!("{}/{BUCKET}", self.endpoint())]).is_some(),
                Kind::Garage => self.bucket_answers(),
            };
            if ok {
                break;
            }
            assert!(Instant::now() < ready, "{:?}'s bucket did not become ready: {}", self.kind, self.log());
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn log(&self) -> String {
        let name = match self.kind {
            Kind::Garage => "garage.log",
            Kind::Moto => "moto.log",
        };
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }

    /// A signed listing of the bucket succeeds (Garage is up and has made the bucket).
    fn bucket_answers(&self) -> bool {
        let bucket = self.client();
        // On a thread of its own: this may be called from within a test's runtime.
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                use futures::StreamExt;
                let mut listing = bucket.list(None);
                !matches!(listing.next().await, Some(Err(_)))
            })
        })
        .join()
        .unwrap()
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// An object store client on the bucket, to look at or tamper with what replicas wrote.
    fn client(&self) -> object_store::aws::AmazonS3 {
        let _ = rustls::crypto::ring::default_provider().install_default();
        object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(BUCKET)
            .with_region(REGION)
            .with_endpoint(self.endpoint())
            .with_allow_http(true)
            .with_access_key_id(ACCESS_KEY)
            .with_secret_access_key(SECRET_KEY)
            .build()
            .unwrap()
    }

    /// A replica's site on this server's bucket, in front of `upstream`.
    fn site(&self, upstream: &str) -> MirrorBuilder {
        TestMirror::builder()
            .upstream(upstream)
            .set("store.kind", "s3")
            .set("store.bucket", BUCKET)
            .set("store.endpoint", self.endpoint().as_str())
            .set("store.region", REGION)
            .set("store.allow_http", true)
            .set("store.timeout", "2s")
    }

    /// Every object name in the bucket.
    async fn objects(&self) -> Vec<String> {
        use futures::TryStreamExt;
        let listed: Vec<object_store::ObjectMeta> = self.client().list(None).try_collect().await.unwrap();
        listed.into_iter().map(|o| o.location.to_string()).collect()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `curl -sf ARGS`: `Some(stdout)` on success.
fn curl(args: &[&str]) -> Option<String> {
    let out = Command::new("curl").args(["-sf", "--max-time", "5"]).args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

async fn start_replicas(s3: &S3Server, upstream: &TestUpstream, n: usize) -> Vec<TestMirror> {
    let mut replicas = Vec::new();
    for _ in 0..n {
        replicas.push(s3.site(&upstream.url()).start().await);
    }
    replicas
}

async fn stop_all(replicas: Vec<TestMirror>) {
    for replica in replicas {
        replica.stop().await;
    }
}

const TARBALL: &str = "/tarballs/hexdemo_top-2.0.1.tar";
const RECORD: &str = "/packages/hexdemo_top";

async fn served_by_the_others_without_the_upstream(kind: Kind) {
    let Some(s3) = server(kind) else { return };
    let upstream = TestUpstream::start(demo_files("hexpm", "")).await;
    let replicas = start_replicas(&s3, &upstream, 3).await;
    let first = replicas[0].get(TARBALL).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.body, fixture(TARBALL));
    replicas[0].mirror.settle_writes().await;
    let asked = upstream.total_requests();
    for replica in &replicas[1..] {
        let got = replica.get(TARBALL).await;
        assert_eq!(got.status, 200, "{kind:?}");
        assert_eq!(got.body, fixture(TARBALL), "{kind:?}");
        assert_eq!(got.header("x-cache"), "hit", "{kind:?}");
    }
    assert_eq!(upstream.total_requests(), asked, "{kind:?}: the other replicas asked the upstream");
    // Tarballs are stored as the upstream's bytes, named by their sha256.
    let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(fixture(TARBALL)));
    let objects = s3.objects().await;
    assert!(objects.contains(&format!("public/blobs/{sha}")), "{kind:?}: {objects:?}");
    let blob = s3.client().get(&format!("public/blobs/{sha}").as_str().into()).await.unwrap().bytes().await.unwrap();
    assert_eq!(blob, fixture(TARBALL));
    stop_all(replicas).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn garage_a_tarball_fetched_through_one_replica_is_served_by_the_others_without_the_upstream() {
    served_by_the_others_without_the_upstream(Kind::Garage).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn moto_a_tarball_fetched_through_one_replica_is_served_by_the_others_without_the_upstream() {
    served_by_the_others_without_the_upstream(Kind::Moto).await;
}

/// 3 replicas, 8 concurrent clients each, all for one cold tarball (its record cold too):
/// returns (record requests, tarball requests) the upstream saw.
async fn cold_stampede(kind: Kind) -> Option<(usize, usize, bool)> {
    let s3 = server(kind)?;
    let upstream = TestUpstream::start(demo_files("hexpm", "")).await;
    // A slow upstream: every replica's clients arrive while the first fetch is running.
    upstream.state.lock().unwrap().delay = Duration::from_millis(300);
    let replicas = start_replicas(&s3, &upstream, 3).await;
    let coordinates = replicas[0].mirror.store().coordinates();
    let mut clients = Vec::new();
    for replica in &replicas {
        for _ in 0..8 {
            let url = replica.url(TARBALL);
            clients.push(tokio::spawn(async move { get(&url, &[]).await }));
        }
    }
    for client in clients {
        let got = client.await.unwrap();
        assert_eq!(got.status, 200, "{kind:?}");
        assert_eq!(got.body, fixture(TARBALL), "{kind:?}");
    }
    let counts = (upstream.requests_for(RECORD), upstream.requests_for(TARBALL), coordinates);
    eprintln!(
        "cold stampede on {kind:?} (3 replicas x 8 clients): upstream requests: record {}, tarball {}; claims: {}",
        counts.0, counts.1, counts.2
    );
    stop_all(replicas).await;
    Some(counts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn garage_ignores_create_only_writes_so_each_replica_fetches_a_cold_object_at_most_once() {
    let Some((record, tarball, coordinates)) = cold_stampede(Kind::Garage).await else { return };
    assert!(!coordinates, "Garage 2.5 answers a second create-only PUT with 200: leases cannot work there");
    assert!((1..=3).contains(&record), "record requests: {record}");
    assert!((1..=3).contains(&tarball), "tarball requests: {tarball}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_honouring_create_only_writes_lets_one_replica_fetch_for_all() {
    let Some((record, tarball, coordinates)) = cold_stampede(Kind::Moto).await else { return };
    assert!(coordinates, "moto refuses a second create-only PUT: replicas take leases");
    // One each, as a rule (every run on a quiet machine). moto checks `If-None-Match: *` and
    // then writes, in two steps of a threaded server, so two replicas taking a lease at the
    // same instant can both win under load; AWS S3 decides it atomically. Without leases
    // (the Garage test) it is one per replica: 3.
    assert!(record <= 2 && tarball <= 2, "record {record}, tarball {tarball} for 24 clients on 3 replicas");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_object_corrupted_in_the_bucket_is_refused_counted_and_replaced_from_the_upstream() {
    let Some(s3) = server(Kind::Garage) else { return };
    let upstream = TestUpstream::start(demo_files("hexpm", "")).await;
    let first = s3.site(&upstream.url()).start().await;
    assert_eq!(first.get(TARBALL).await.status, 200);
    assert_eq!(first.get(RECORD).await.status, 200);
    first.mirror.settle_writes().await;
    first.stop().await;

    // Planted bytes under the tarball's name, and a record whose signature no longer holds
    // (with a blob and a record that agree with each other, as an attacker would write them).
    let bucket = s3.client();
    let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(fixture(TARBALL)));
    bucket.put(&format!("public/blobs/{sha}").as_str().into(), b"planted".to_vec().into()).await.unwrap();
    let forged = tamper_signed(&fixture(RECORD));
    let forged_sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&forged));
    bucket.put(&format!("public/blobs/{forged_sha}").as_str().into(), forged.clone().into()).await.unwrap();
    let record_path: object_store::path::Path = "public/records/hexpm/packages/hexdemo_top".into();
    let mut meta: serde_json::Value =
        serde_json::from_slice(&bucket.get(&record_path).await.unwrap().bytes().await.unwrap()).unwrap();
    meta["sha256"] = forged_sha.clone().into();
    meta["len"] = forged.len().into();
    bucket.put(&record_path, serde_json::to_vec(&meta).unwrap().into()).await.unwrap();

    let before = (upstream.requests_for(RECORD), upstream.requests_for(TARBALL));
    let second = s3.site(&upstream.url()).start().await;
    let record = second.get(RECORD).await;
    assert_eq!(record.status, 200);
    assert_eq!(record.body, fixture(RECORD), "the forged record was served");
    let tarball = second.get(TARBALL).await;
    assert_eq!(tarball.status, 200);
    assert_eq!(tarball.body, fixture(TARBALL), "the planted tarball was served");
    assert_eq!(
        (upstream.requests_for(RECORD), upstream.requests_for(TARBALL)),
        (before.0 + 1, before.1 + 1),
        "both were fetched again from the upstream"
    );
    let metrics = second.metrics().await;
    for (resource, reason) in [("package", "bad_signature"), ("tarball", "checksum_mismatch")] {
        let needles = [format!("resource=\"{resource}\""), format!("reason=\"{reason}\"")];
        let needles: Vec<&str> = needles.iter().map(String::as_str).collect();
        assert!(
            metric_sum(&metrics, "hexmirror_verification_failures_total", &needles) >= 1.0,
            "{resource}: {metrics}"
        );
    }
    second.mirror.settle_writes().await;
    // Replaced: the bucket holds the upstream's bytes again.
    let repaired = bucket.get(&format!("public/blobs/{sha}").as_str().into()).await.unwrap().bytes().await.unwrap();
    assert_eq!(repaired, fixture(TARBALL));
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn within_registry_ttl_of_one_replicas_revalidation_the_others_do_not_ask_the_upstream() {
    let Some(s3) = server(Kind::Garage) else { return };
    let upstream = TestUpstream::start(demo_files("hexpm", "")).await;
    let site = |s3: &S3Server| s3.site(&upstream.url()).registry_ttl("2s").without_stale_while_revalidate();
    let a = site(&s3).start().await;
    let b = site(&s3).start().await;
    assert_eq!(a.get("/names").await.status, 200);
    a.mirror.settle_writes().await;
    assert_eq!(b.get("/names").await.header("x-cache"), "hit");
    assert_eq!(upstream.requests_for("/names"), 1);
    tokio::time::sleep(Duration::from_millis(2300)).await;
    // A revalidates (the upstream's answer refreshes the shared record) ...
    assert_eq!(a.get("/names").await.header("x-cache"), "revalidated");
    a.mirror.settle_writes().await;
    assert_eq!(upstream.requests_for("/names"), 2);
    // ... so B, whose copy expired too, takes A's confirmation instead of asking again.
    let got = b.get("/names").await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body, fixture("/names"));
    assert_eq!(upstream.requests_for("/names"), 2, "B asked the upstream although A had just confirmed");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_purge_reaches_the_other_replicas_memory_within_registry_ttl() {
    let Some(s3) = server(Kind::Moto) else { return };
    let upstream = TestUpstream::start(demo_files("hexpm", "")).await;
    let site = s3.site(&upstream.url()).registry_ttl("2s");
    let (a, b) = (site.clone().start().await, site.start().await);
    assert_eq!(a.get(TARBALL).await.status, 200);
    a.mirror.settle_writes().await;
    assert_eq!(b.get(TARBALL).await.header("x-cache"), "hit");
    let removed = a.mirror.purge("hexdemo_top", None, false).await.unwrap();
    assert!(removed.iter().any(|k| k.ends_with("tarballs/hexdemo_top-2.0.1.tar")), "{removed:?}");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let asked = upstream.requests_for(TARBALL);
    let got = b.get(TARBALL).await;
    assert_eq!(got.status, 200);
    assert_eq!(upstream.requests_for(TARBALL), asked + 1, "B still served the purged tarball from memory");
    a.stop().await;
    b.stop().await;
}

fn degraded(metrics: &str) -> f64 {
    metric_sum(metrics, "hexmirror_store_degraded", &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn when_the_store_goes_away_replicas_serve_on_degraded_and_recover_when_it_returns() {
    let Some(mut s3) = server(Kind::Garage) else { return };
    let upstream = TestUpstream::start(demo_files("hexpm", "")).await;
    let replica = s3.site(&upstream.url()).start().await;
    assert_eq!(replica.get(TARBALL).await.status, 200);
    replica.mirror.settle_writes().await;
    assert_eq!(degraded(&replica.metrics().await), 0.0);

    s3.stop();
    let gone = Instant::now();
    // Served on: from memory, and what memory lacks from the upstream, quickly.
    let started = Instant::now();
    assert_eq!(replica.get(TARBALL).await.status, 200);
    let other = replica.get("/tarballs/hexdemo_base-1.0.0.tar").await;
    assert_eq!(other.status, 200);
    assert_eq!(other.body, fixture("/tarballs/hexdemo_base-1.0.0.tar"));
    assert!(started.elapsed() < Duration::from_secs(5), "serving waited for the store: {:?}", started.elapsed());
    while degraded(&replica.metrics().await) != 1.0 {
        assert!(gone.elapsed() < Duration::from_secs(15), "not degraded within 15 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let degraded_after = gone.elapsed();
    assert_eq!(get(&replica.url("/readyz"), &[]).await.status, 200, "a degraded replica stays ready");

    s3.start();
    let back = Instant::now();
    while degraded(&replica.metrics().await) != 0.0 {
        assert!(back.elapsed() < Duration::from_secs(35), "not back within 35 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("degraded {degraded_after:?} after the store went away; back {:?} after it returned", back.elapsed());
    // And writes land again.
    assert_eq!(replica.get("/tarballs/hexdemo_mid-0.2.0.tar").await.status, 200);
    replica.mirror.settle_writes().await;
    let objects = s3.objects().await;
    assert!(objects.iter().any(|o| o.ends_with("records/hexpm/tarballs/hexdemo_mid-0.2.0.tar")), "{objects:?}");
    replica.stop().await;
}

#[test]
fn a_missing_bucket_or_refused_credentials_are_configuration_errors() {
    let Some(s3) = server(Kind::Garage) else { return };
    let site = s3.site("http://127.0.0.1:9");
    let config = site.clone().set("store.bucket", "no-such-bucket").write_config();
    let out = hexmirror_command(&config)
        .arg("serve")
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("no-such-bucket"), "{stderr}");

    let config = site.write_config();
    let out = hexmirror_command(&config)
        .arg("serve")
        .env("AWS_ACCESS_KEY_ID", "GK000000000000000000000000")
        .env("AWS_SECRET_ACCESS_KEY", "0000000000000000000000000000000000000000000000000000000000000000")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("credentials were refused"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unreachable_store_at_start_up_starts_degraded_and_ready() {
    credentials();
    let upstream = TestUpstream::start(demo_files("hexpm", "")).await;
    let site = TestMirror::builder()
        .upstream(&upstream.url())
        .set("store.kind", "s3")
        .set("store.bucket", BUCKET)
        .set("store.endpoint", format!("http://127.0.0.1:{}", free_port()).as_str())
        .set("store.allow_http", true)
        .set("store.timeout", "1s");
    let started = Instant::now();
    let replica = site.start().await;
    assert!(started.elapsed() < Duration::from_secs(10), "start-up waited {:?}", started.elapsed());
    assert_eq!(degraded(&replica.metrics().await), 1.0);
    assert_eq!(get(&replica.url("/readyz"), &[]).await.status, 200);
    let got = replica.get(TARBALL).await;
    assert_eq!((got.status, got.body), (200, fixture(TARBALL).into()));
    replica.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_killed_mid_write_leaves_nothing_half_written_and_verify_passes() {
    let Some(s3) = server(Kind::Garage) else { return };
    let upstream = TestUpstream::start(demo_files("hexpm", "")).await;
    for round in 0..3 {
        let site = s3.site(&upstream.url());
        let served = tokio::task::block_in_place(|| site.serve_binary("warn", Stdio::null()));
        // Kill -9 at a different moment each round: while the answers' writes run.
        let urls: Vec<String> = HEXPM_PATHS.iter().map(|p| served.url(p)).collect();
        // curl, which reports a connection cut by the kill as its own failure, quietly.
        let fetches: Vec<_> = urls
            .into_iter()
            .map(|u| tokio::process::Command::new("curl").args(["-s", "-o", "/dev/null", &u]).status())
            .map(tokio::spawn)
            .collect();
        tokio::time::sleep(Duration::from_millis(20 * round)).await;
        let pid = served.pid();
        Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
        for fetch in fetches {
            let _ = fetch.await;
        }
        drop(served);
    }
    // Everything a record names is there and verifies: `verify` with a replica's config.
    let site = s3.site(&upstream.url());
    let out = run_hexmirror(&site.write_config(), &["verify"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("verify: ok"), "{stdout}");
    // A fresh replica serves every path correctly.
    let fresh = site.start().await;
    for path in HEXPM_PATHS {
        let got = fresh.get(path).await;
        assert_eq!(got.status, 200, "{path}");
        assert_eq!(got.body, fixture(path), "{path}");
    }
    fresh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn commands_work_on_the_shared_store_while_replicas_serve() {
    let Some(s3) = server(Kind::Moto) else { return };
    let upstream = TestUpstream::start(demo_files("hexpm", "")).await;
    let replica = s3.site(&upstream.url()).start().await;
    for path in [TARBALL, "/tarballs/hexdemo_base-1.0.0.tar"] {
        assert_eq!(replica.get(path).await.status, 200);
    }
    replica.mirror.settle_writes().await;
    // Another site (its own data_dir, so no admin endpoint to hand the work to) on the bucket.
    let operator = s3.site(&upstream.url());
    let config = operator.write_config();
    let out = run_hexmirror(&config, &["sync", "--package", "hexdemo_mid", "--no-deps"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = run_hexmirror(&config, &["cache", "list"]);
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(list.contains("hexdemo_mid") && list.contains("hexdemo_top"), "{list}");
    // Pruning keeps what sync pinned and removes what was only cached.
    let out = run_hexmirror(&config, &["verify", "--prune"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let objects = s3.objects().await;
    assert!(objects.iter().any(|o| o.ends_with("records/hexpm/tarballs/hexdemo_mid-0.2.0.tar")), "{objects:?}");
    assert!(!objects.iter().any(|o| o.ends_with("records/hexpm/tarballs/hexdemo_top-2.0.1.tar")), "{objects:?}");
    let blobs = objects.iter().filter(|o| o.starts_with("public/blobs/")).count();
    let records = objects.iter().filter(|o| o.starts_with("public/records/")).count();
    assert_eq!(blobs, records, "every blob is named by a record after pruning: {objects:?}");
    // A bundle of the shared store, imported into another prefix of the bucket (another
    // site's store), verifies there and serves with no upstream.
    let bundle = operator.dir().join("bundle.tar");
    let out = run_hexmirror(&config, &["export", "--out", bundle.to_str().unwrap(), "--selected"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let site_b = s3.site(&upstream.url()).set("store.prefix", "site-b");
    let config_b = site_b.write_config();
    let out = run_hexmirror(&config_b, &["import", bundle.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = run_hexmirror(&config_b, &["verify"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("verify: ok"), "{}", String::from_utf8_lossy(&out.stdout));
    let objects = s3.objects().await;
    assert!(
        objects.iter().any(|o| o.starts_with("site-b/public/records/hexpm/tarballs/hexdemo_mid-0.2.0.tar")),
        "{objects:?}"
    );
    let offline_b = site_b.offline().start().await;
    let got = offline_b.get("/tarballs/hexdemo_mid-0.2.0.tar").await;
    assert_eq!((got.status, got.body), (200, fixture("/tarballs/hexdemo_mid-0.2.0.tar").into()));
    offline_b.stop().await;
    // The replica still serves everything (what was pruned comes from the upstream again).
    for path in HEXPM_TARBALLS {
        let got = replica.get(path).await;
        assert_eq!((got.status, got.body.clone()), (200, fixture(path).into()), "{path}");
    }
    replica.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bucket_behind_an_internal_ca_is_trusted_through_ca_file_only() {
    credentials();
    if !moto_present() {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "moto's server is not installed");
        eprintln!("SKIPPED: moto's server is not installed (pip install 'moto[server]')");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = test_pki();
    for (name, pem) in [("ca.pem", &ca), ("cert.pem", &cert), ("key.pem", &key)] {
        std::fs::write(dir.path().join(name), pem).unwrap();
    }
    let port = free_port();
    let moto = Command::new("python3")
        .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string(), "-s"])
        .arg("-c")
        .arg(dir.path().join("cert.pem"))
        .arg("-k")
        .arg(dir.path().join("key.pem"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Killed however the test ends.
    let _moto = Killed(moto);
    let endpoint = format!("https://localhost:{port}");
    let ca_file = dir.path().join("ca.pem");
    let deadline = Instant::now() + Duration::from_secs(60);
    while curl(&["--cacert", ca_file.to_str().unwrap(), "-X", "PUT", &format!("{endpoint}/{BUCKET}")]).is_none() {
        assert!(Instant::now() < deadline, "moto with TLS did not start");
        std::thread::sleep(Duration::from_millis(200));
    }
    let upstream = TestUpstream::start(demo_files("hexpm", "")).await;
    let site = TestMirror::builder()
        .upstream(&upstream.url())
        .set("store.kind", "s3")
        .set("store.bucket", BUCKET)
        .set("store.endpoint", endpoint.as_str())
        .set("store.timeout", "2s");
    // Without the CA the bucket's certificate is not trusted: the store never answers.
    let untrusting = site.clone().start().await;
    assert_eq!(degraded(&untrusting.metrics().await), 1.0);
    untrusting.stop().await;
    let trusting = site.set("ca_file", ca_file).start().await;
    assert_eq!(degraded(&trusting.metrics().await), 0.0);
    assert_eq!(trusting.get(TARBALL).await.status, 200);
    trusting.mirror.settle_writes().await;
    let listed = trusting.mirror.store().list_all("public/hexpm/tarballs/").await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    trusting.stop().await;
}

/// A child process killed and reaped when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
