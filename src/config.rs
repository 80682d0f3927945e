//! Configuration: built-in defaults < a TOML file < `HEXMIRROR_*` environment variables.
//!
//! `load` reads the layers with figment into a raw, serde-shaped [`RawConfig`] (unknown keys are
//! errors), then `validate` turns it into a [`Config`] of parsed types: socket addresses, URIs,
//! byte sizes, durations and RSA keys. Validation checks every key before it fails, so an
//! operator sees all mistakes at once, each naming its key. Nothing here opens sockets or the
//! store; reading a key file named in the config is the only I/O. The value parsers it shares
//! with the fuzzers, [`parse_size`] and [`upstream_uri`], fail with [`SizeError`] and
//! [`UrlError`], whose text goes into that list after the key's name.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::verify::PublicKey;

/// hex.pm's repository key (RSA 2048, in use since 2016).
pub const HEXPM_PUBLIC_KEY: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEApqREcFDt5vV21JVe2QNB
Edvzk6w36aNFhVGWN5toNJRjRJ6m4hIuG4KaXtDWVLjnvct6MYMfqhC79HAGwyF+
IqR6Q6a5bbFSsImgBJwz1oadoVKD6ZNetAuCIK84cjMrEFRkELtEIPNHblCzUkkM
3rS9+DPlnfG8hBvGi6tvQIuZmXGCxF/73hU0/MyGhbmEjIKRtG6b0sJYKelRLTPW
XgK7s5pESgiwf2YC/2MGDXjAJfpfCd0RpLdvd4eRiXtVlE9qO9bND94E7PgQ/xqZ
J1i2xWFndWa6nfFnRxZmCStCOZWYYPlaxr+FZceFbpMwzTNs4g3d4tLNUcbKAIH4
0wIDAQAB
-----END PUBLIC KEY-----
";

/// Mix's key for the installs CSVs (`mix local.hex`, `mix local.rebar`); not a repository key.
pub const MIX_INSTALLS_PUBLIC_KEY: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA+ynw5jnGF5S+rdUoa2R9
Z2iQMwN/oNpWre48XC/aQo4X9nWflzq63Mgmm/XJk3rV7oaNUu23gnP+KUwxkOSV
6hsk9PEdE9cg/DjVB8p4332Lay5EQk96oeEm2igYk0Mj7TnaUWLZs8FqIFbX+zfb
jAMhbz6tnjKHiVgchxDsc0gGOOMkIlY+Dwc/CHoE/c/vcGuclZyLXRt141gXmB7+
KDG4caWTs7SHwKJNaYrgZ77fSSF4Fk+jbQF1479ZWiI/mdhMweJ+4i7v+IVh2vyz
JAV/94hTL8xIK6grnjtxZytqPL5GMEs3vydbOMILDCqpvPnC/AhjL5LwqwpaVaRw
jwIDAQAB
-----END PUBLIC KEY-----
";

pub const HEXPM: &str = "hexpm";
pub const HEXPM_UPSTREAM: &str = "https://repo.hex.pm";

/// The OAuth client the Hex client registers at hex.pm (public, allowed the client-credentials
/// grant): the default `oauth_client_id`, since hex.pm's token endpoint refuses a request
/// without a registered client.
pub const HEX_CLIENT_ID: &str = "78ea6566-89fd-481e-a1d6-7d9d78eacca8";

/// The scope the Hex client asks for when it exchanges a repository key: hex.pm expands it to
/// every repository the key may read (`repository:ORG`). The default `oauth_scope`.
pub const HEX_REPOSITORIES_SCOPE: &str = "repositories";

/// An integer or a string such as `"256MiB"`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RawSize {
    Bytes(u64),
    Text(String),
}

/// Seconds as an integer, or a string such as `"5m"`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RawDuration {
    Seconds(u64),
    Text(String),
}

/// One URL or a list of URLs, tried in order.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RawUpstreams {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub listen: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<String>,
    pub data_dir: PathBuf,
    pub memory_cache_bytes: RawSize,
    pub disk_cache_bytes: RawSize,
    pub registry_ttl: RawDuration,
    pub negative_ttl: RawDuration,
    pub stale_while_revalidate: RawDuration,
    pub max_registry_bytes: RawSize,
    pub max_tarball_bytes: RawSize,
    pub connect_timeout: RawDuration,
    pub read_timeout: RawDuration,
    pub transfer_timeout: RawDuration,
    pub shutdown_grace: RawDuration,
    pub max_upstream_requests: u64,
    /// Upstream fetches started for clients that may be pending at once; beyond it a cold miss
    /// is answered 503 with `Retry-After` at once.
    pub max_pending_fetches: u64,
    /// Consecutive failures (no connection, timeout, 5xx) that open an upstream's circuit
    /// breaker; 0 turns the breaker off.
    pub breaker_failures: u64,
    /// How long an open breaker waits before its first probe; doubled after each failed probe.
    pub breaker_backoff: RawDuration,
    /// The longest an open breaker waits between probes.
    pub breaker_max_backoff: RawDuration,
    /// Open client connections beyond this are closed at once.
    pub max_connections: u64,
    /// How long a client may take to send its request head.
    pub client_header_timeout: RawDuration,
    #[serde(deserialize_with = "flexible_bool::plain")]
    pub offline: bool,
    #[serde(deserialize_with = "flexible_bool::plain")]
    pub access_log: bool,
    pub installs_public_key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// The admin endpoint (sync, import, export, verify, cache): loopback by default.
    pub admin_listen: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_token_file: Option<PathBuf>,
    /// Where the persistent tier lives: `data_dir` (the default) or a shared bucket.
    #[serde(default)]
    pub store: RawStore,
    /// The supply-chain policy every repository follows (see `policy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<crate::policy::RawPolicy>,
    /// How often a server reads the policy (this file's `[policy]` tables and the advisories)
    /// again; 0 turns the periodic rescan off (SIGHUP still rescans).
    pub policy_rescan: RawDuration,
    pub repos: BTreeMap<String, RawRepo>,
}

/// `[store]`: the persistent tier's backend.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    /// `local` (sled and files in `data_dir`) or `s3` (a bucket shared by several replicas).
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bucket: Option<String>,
    /// Every object under this prefix (a bucket shared with other data).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// The S3 endpoint (MinIO, Garage, R2, ...); AWS S3 when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    pub region: String,
    /// Allows a plain-http endpoint (a loopback test server).
    #[serde(default, deserialize_with = "flexible_bool::plain")]
    pub allow_http: bool,
    /// The longest one store call may take.
    pub timeout: RawDuration,
}

impl Default for RawStore {
    fn default() -> Self {
        RawStore {
            kind: "local".into(),
            bucket: None,
            prefix: None,
            endpoint: None,
            region: "us-east-1".into(),
            allow_http: false,
            timeout: RawDuration::Text("5s".into()),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRepo {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<RawUpstreams>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "flexible_bool::optional")]
    pub trusted: Option<bool>,
    #[serde(default, deserialize_with = "flexible_bool::plain")]
    pub allow_http: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_key_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oauth_token_url: Option<String>,
    /// The registered OAuth client the exchange names (default: the Hex client's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oauth_client_id: Option<String>,
    /// The scope the exchange asks for (default: `repositories`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oauth_scope: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub strip_headers: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access: Option<RawAccess>,
    /// This repository's policy: extends `[policy]` (lists add up, single values override).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<crate::policy::RawPolicy>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAccess {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tokens: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens_file: Option<PathBuf>,
    /// Every client of this hexmirror may read the repository's private content.
    #[serde(default, deserialize_with = "flexible_bool::plain")]
    pub allow_all_clients: bool,
}

/// Booleans as an operator writes them, in a file or in the environment: `true`/`false`,
/// `1`/`0`, `yes`/`no`, `on`/`off` (any case).
mod flexible_bool {
    use serde::de::{self, Deserializer, Visitor};

    struct Flexible;

    impl Visitor<'_> for Flexible {
        type Value = bool;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a boolean: true/false, 1/0, yes/no or on/off")
        }
        fn visit_bool<E: de::Error>(self, v: bool) -> Result<bool, E> {
            Ok(v)
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<bool, E> {
            match v {
                0 => Ok(false),
                1 => Ok(true),
                _ => Err(E::invalid_value(de::Unexpected::Signed(v), &self)),
            }
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<bool, E> {
            self.visit_i64(i64::try_from(v).unwrap_or(i64::MAX))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
            match v.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => Ok(true),
                "false" | "0" | "no" | "off" => Ok(false),
                _ => Err(E::invalid_value(de::Unexpected::Str(v), &self)),
            }
        }
    }

    pub fn plain<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
        d.deserialize_any(Flexible)
    }

    pub fn optional<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
        d.deserialize_any(Flexible).map(Some)
    }
}

/// Environment variables with the `HEXMIRROR_` prefix that are not configuration keys:
/// `HEXMIRROR_CONFIG` (the file's path), and what Kubernetes sets in every pod of a namespace
/// with a Service named `hexmirror` (service links: `HEXMIRROR_SERVICE_HOST`,
/// `HEXMIRROR_PORT`, `HEXMIRROR_PORT_4000_TCP_ADDR`, ...). `name` is without the prefix.
pub fn is_not_a_key(name: &str) -> bool {
    let name = name.to_ascii_uppercase();
    name == "CONFIG" || name == "PORT" || name.starts_with("PORT_") || name.starts_with("SERVICE_")
}

/// The `HEXMIRROR_*` variables of this process that [`load`] ignores (see [`is_not_a_key`]),
/// for a debug line once logging is up.
pub fn ignored_environment() -> Vec<String> {
    std::env::vars_os()
        .filter_map(|(name, _)| name.into_string().ok())
        .filter(|name| name.strip_prefix("HEXMIRROR_").is_some_and(is_not_a_key))
        .collect()
}

/// The keys a table of the configuration may hold, from the structs themselves.
fn known_keys(table: Table) -> &'static [&'static str] {
    use serde_aux::serde_introspection::serde_introspect;
    match table {
        Table::Root => serde_introspect::<RawConfig>(),
        Table::Repo => serde_introspect::<RawRepo>(),
        Table::Access => serde_introspect::<RawAccess>(),
        Table::Store => serde_introspect::<RawStore>(),
        Table::Policy => serde_introspect::<crate::policy::RawPolicy>(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Table {
    Root,
    Repo,
    Access,
    Store,
    Policy,
}

impl Table {
    /// The table a key of this one opens, if it opens one.
    fn child(self, key: &str) -> Option<Table> {
        match (self, key) {
            (Table::Repo, "access") => Some(Table::Access),
            (Table::Root, "store") => Some(Table::Store),
            (Table::Root | Table::Repo, "policy") => Some(Table::Policy),
            _ => None,
        }
    }
}

/// `unknown key `PREFIX.KEY`` and, when a known key is close, `; did you mean `listen`?`.
fn unknown_key_text(table: Table, prefix: &str, key: &str) -> String {
    let best = known_keys(table)
        .iter()
        .map(|known| (strsim::jaro_winkler(key, known), *known))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0));
    match best {
        Some((_, known)) => format!("unknown key `{prefix}{key}`; did you mean `{known}`?"),
        None => format!("unknown key `{prefix}{key}`"),
    }
}

/// Every unknown key of a configuration file, each with the file and line, and every TOML
/// syntax error naming the file.
fn file_mistakes(path: &Path, text: &str) -> Vec<String> {
    let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
    let document = match text.parse::<toml_edit::ImDocument<String>>() {
        Ok(document) => document,
        Err(e) => {
            let at = e.span().map(|span| format!(", line {}", line_of(span.start))).unwrap_or_default();
            return vec![format!("config file {}{at}: {}", path.display(), e.message())];
        }
    };
    let mut mistakes = Vec::new();
    let check = |table: Table, prefix: &str, items: &toml_edit::Table, mistakes: &mut Vec<String>| {
        for (key, _) in items.iter() {
            if !known_keys(table).contains(&key) {
                let line = items.key(key).and_then(|k| k.span()).map(|span| line_of(span.start));
                let at = line.map(|line| format!(", line {line}")).unwrap_or_default();
                let text = unknown_key_text(table, prefix, key);
                mistakes.push(format!("config file {}{at}: {text}", path.display()));
            }
        }
    };
    let root = document.as_table();
    check(Table::Root, "", root, &mut mistakes);
    if let Some(store) = root.get("store").and_then(|s| s.as_table()) {
        check(Table::Store, "store.", store, &mut mistakes);
    }
    if let Some(policy) = root.get("policy").and_then(|p| p.as_table()) {
        check(Table::Policy, "policy.", policy, &mut mistakes);
    }
    if let Some(repos) = root.get("repos").and_then(|r| r.as_table_like()) {
        for (name, repo) in repos.iter() {
            let Some(repo) = repo.as_table() else { continue };
            check(Table::Repo, &format!("repos.{name}."), repo, &mut mistakes);
            if let Some(access) = repo.get("access").and_then(|a| a.as_table()) {
                check(Table::Access, &format!("repos.{name}.access."), access, &mut mistakes);
            }
            if let Some(policy) = repo.get("policy").and_then(|p| p.as_table()) {
                check(Table::Policy, &format!("repos.{name}.policy."), policy, &mut mistakes);
            }
        }
    }
    mistakes
}

/// Every `HEXMIRROR_*` variable (of `vars`) that names no configuration key.
fn environment_mistakes(vars: impl Iterator<Item = (String, String)>) -> Vec<String> {
    let mut mistakes = Vec::new();
    for (name, _) in vars {
        let Some(rest) = name.strip_prefix("HEXMIRROR_") else { continue };
        if is_not_a_key(rest) {
            continue;
        }
        let parts: Vec<String> = rest.split("__").map(|p| p.to_ascii_lowercase()).collect();
        // repos__NAME__KEY[__access__KEY]: the repository name itself is free.
        let mut table = Table::Root;
        let mut at = 0;
        while at < parts.len() {
            let key = parts[at].as_str();
            if !known_keys(table).contains(&key) {
                let prefix: String = parts[..at].iter().map(|p| format!("{p}.")).collect();
                mistakes.push(format!("environment variable {name}: {}", unknown_key_text(table, &prefix, key)));
                break;
            }
            match (table, key) {
                (Table::Root, "repos") => {
                    table = Table::Repo;
                    at += 2;
                }
                _ => match table.child(key) {
                    Some(child) => {
                        table = child;
                        at += 1;
                    }
                    None => break,
                },
            }
        }
    }
    mistakes
}

impl Default for RawConfig {
    fn default() -> Self {
        let mut repos = BTreeMap::new();
        repos.insert(
            HEXPM.to_string(),
            RawRepo { upstream: Some(RawUpstreams::One(HEXPM_UPSTREAM.into())), ..RawRepo::default() },
        );
        Self {
            listen: "127.0.0.1:4000".into(),
            metrics_listen: None,
            data_dir: PathBuf::from("./data"),
            memory_cache_bytes: RawSize::Text("256MiB".into()),
            disk_cache_bytes: RawSize::Bytes(0),
            registry_ttl: RawDuration::Text("5m".into()),
            negative_ttl: RawDuration::Text("10s".into()),
            stale_while_revalidate: RawDuration::Text("1h".into()),
            max_registry_bytes: RawSize::Text("64MiB".into()),
            max_tarball_bytes: RawSize::Text("16MiB".into()),
            connect_timeout: RawDuration::Text("10s".into()),
            read_timeout: RawDuration::Text("30s".into()),
            transfer_timeout: RawDuration::Text("300s".into()),
            shutdown_grace: RawDuration::Text("30s".into()),
            max_upstream_requests: 64,
            max_pending_fetches: 2048,
            breaker_failures: 5,
            breaker_backoff: RawDuration::Text("2s".into()),
            breaker_max_backoff: RawDuration::Text("60s".into()),
            max_connections: 4096,
            client_header_timeout: RawDuration::Text("10s".into()),
            offline: false,
            access_log: false,
            installs_public_key: MIX_INSTALLS_PUBLIC_KEY.into(),
            ca_file: None,
            tls_cert: None,
            tls_key: None,
            admin_listen: "127.0.0.1:0".into(),
            admin_token: None,
            admin_token_file: None,
            store: RawStore::default(),
            policy: None,
            policy_rescan: RawDuration::Text("30s".into()),
            repos,
        }
    }
}

/// A secret string (an upstream key or a client token). Its `Debug` never shows the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub metrics_listen: Option<SocketAddr>,
    pub data_dir: PathBuf,
    pub memory_cache_bytes: u64,
    /// 0 means unbounded.
    pub disk_cache_bytes: u64,
    pub registry_ttl: Duration,
    pub negative_ttl: Duration,
    /// How long past `registry_ttl` a registry file is still answered at once (`x-cache: stale`)
    /// while one background revalidation runs; zero turns it off.
    pub stale_while_revalidate: Duration,
    pub max_registry_bytes: u64,
    pub max_tarball_bytes: u64,
    pub timeouts: Timeouts,
    pub shutdown_grace: Duration,
    pub max_upstream_requests: usize,
    pub max_pending_fetches: usize,
    pub breaker: Breaker,
    pub max_connections: usize,
    pub client_header_timeout: Duration,
    pub offline: bool,
    pub access_log: bool,
    pub installs_public_key: PublicKey,
    pub ca_file: Option<PathBuf>,
    pub tls: Option<(PathBuf, PathBuf)>,
    pub admin_listen: SocketAddr,
    pub admin_token: Option<Secret>,
    pub store: StoreConfig,
    pub repos: BTreeMap<String, RepoConfig>,
    /// The supply-chain policy, loaded (advisories read).
    pub policy: std::sync::Arc<crate::policy::Policy>,
    pub policy_rescan: Duration,
    /// The configuration file it was loaded from, read again to rescan the policy.
    pub source: Option<PathBuf>,
}

/// Where the persistent tier lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// sled and content-named files in `data_dir`.
    Local,
    /// A bucket on S3-compatible storage, shared by any number of replicas.
    S3(S3Config),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Config {
    pub bucket: String,
    /// Without leading or trailing slashes; empty for the bucket's root.
    pub prefix: String,
    pub endpoint: Option<String>,
    pub region: String,
    pub allow_http: bool,
    pub timeout: Duration,
}

/// When an upstream's circuit breaker opens and how it probes (see `upstream.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Breaker {
    /// Consecutive failures that open it; 0: never.
    pub failures: u32,
    pub backoff: Duration,
    pub max_backoff: Duration,
}

#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    /// Longest wait for the next bytes of a response: a slow but progressing transfer goes on.
    pub read: Duration,
    pub transfer: Duration,
}

/// One configured repository.
#[derive(Debug, Clone)]
pub struct RepoConfig {
    pub name: String,
    /// Base URLs without a trailing slash, tried in order.
    pub upstreams: Vec<http::Uri>,
    pub public_key: PublicKey,
    /// The repository name the signed payloads must carry.
    pub repository: String,
    pub trusted: bool,
    pub allow_http: bool,
    pub auth_key: Option<Secret>,
    pub oauth_token_url: Option<http::Uri>,
    /// The `client_id` and `scope` of the exchange at `oauth_token_url` (defaults applied).
    pub oauth_client_id: String,
    pub oauth_scope: String,
    pub strip_headers: Vec<http::HeaderName>,
    pub access: Access,
}

/// Who may read this repository's private content without asking the upstream.
#[derive(Debug, Clone, Default)]
pub struct Access {
    pub tokens: Vec<Secret>,
    pub allow_all_clients: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("{}", .0.join("\n"))]
pub struct ConfigError(pub Vec<String>);

/// The environment layer: `HEXMIRROR_*` with `__` for nesting, less what [`is_not_a_key`] names.
fn environment() -> Env {
    Env::prefixed("HEXMIRROR_").split("__").filter(|key| !is_not_a_key(key.as_str()))
}

/// Loads the configuration: defaults < `file` (when given) < `HEXMIRROR_*` variables.
pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
    let mut config = load_raw(file, environment(), true).and_then(validate)?;
    config.source = file.map(Path::to_path_buf);
    Ok(config)
}

/// Like [`load`], with the environment layer given (tests pass a fixed one).
pub fn load_from(file: Option<&Path>, env: Env) -> Result<Config, ConfigError> {
    let mut config = load_raw(file, env, false).and_then(validate)?;
    config.source = file.map(Path::to_path_buf);
    Ok(config)
}

/// The policy of the configuration file `file` as it is now (with the same environment layer
/// [`load`] reads), for a server's rescan. Only what `[policy]` and `[repos.NAME.policy]` say
/// (and the advisories they name) is taken; the rest of the configuration must still be valid.
pub fn load_policy(file: Option<&Path>) -> Result<std::sync::Arc<crate::policy::Policy>, ConfigError> {
    load_raw(file, environment(), false).and_then(validate).map(|config| config.policy)
}

/// The configuration as `hexmirror check-config` prints it: every key with its effective
/// value, secrets redacted.
pub fn effective(file: Option<&Path>) -> Result<String, ConfigError> {
    let mut raw = load_raw(file, environment(), true)?;
    validate(raw.clone())?;
    const REDACTED: &str = "<redacted>";
    if raw.admin_token.is_some() {
        raw.admin_token = Some(REDACTED.into());
    }
    for repo in raw.repos.values_mut() {
        if repo.auth_key.is_some() {
            repo.auth_key = Some(REDACTED.into());
        }
        if let Some(access) = &mut repo.access {
            for token in &mut access.tokens {
                *token = REDACTED.into();
            }
        }
    }
    toml::to_string_pretty(&raw).map_err(|e| ConfigError(vec![format!("config: cannot print: {e}")]))
}

/// Reads the layers. Unknown keys (in the file: with its path and line; in the environment:
/// with the variable) are all reported at once, with the closest known key.
fn load_raw(file: Option<&Path>, env: Env, check_environment: bool) -> Result<RawConfig, ConfigError> {
    let mut figment = Figment::from(Serialized::defaults(RawConfig::default()));
    let mut mistakes = Vec::new();
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(vec![format!("config file {}: cannot read: {e}", path.display())]))?;
        mistakes.extend(file_mistakes(path, &text));
        figment = figment.merge(Toml::file_exact(path));
    }
    if check_environment {
        mistakes.extend(environment_mistakes(
            std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().unwrap_or_default()))),
        ));
    }
    if !mistakes.is_empty() {
        return Err(ConfigError(mistakes));
    }
    figment = figment.merge(env);
    figment.extract().map_err(|errors| ConfigError(errors.into_iter().map(|e| format!("config: {e}")).collect()))
}

/// Why a size in the configuration cannot be read; each message quotes the text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("{0:?} is not a size such as \"256MiB\"")]
    NotASize(String),
    #[error("unknown size unit {0:?}")]
    UnknownUnit(String),
    #[error("{0:?} is too large")]
    TooLarge(String),
}

/// Parses `"256MiB"`, `"64 MB"`, `"1024"`; units are B, KB/KiB, MB/MiB, GB/GiB, TB/TiB.
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| SizeError::NotASize(text.to_string()))?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "kib" => 1 << 10,
        "m" | "mb" => 1000 * 1000,
        "mib" => 1 << 20,
        "g" | "gb" => 1000 * 1000 * 1000,
        "gib" => 1 << 30,
        "tb" => 1000u64.pow(4),
        "tib" => 1 << 40,
        other => return Err(SizeError::UnknownUnit(other.to_string())),
    };
    number.checked_mul(factor).ok_or_else(|| SizeError::TooLarge(text.to_string()))
}

fn size(key: &str, raw: &RawSize, errors: &mut Vec<String>) -> u64 {
    match raw {
        RawSize::Bytes(n) => *n,
        RawSize::Text(text) => parse_size(text).unwrap_or_else(|e| {
            errors.push(format!("{key}: {e}"));
            0
        }),
    }
}

fn duration(key: &str, raw: &RawDuration, errors: &mut Vec<String>) -> Duration {
    match raw {
        RawDuration::Seconds(n) => Duration::from_secs(*n),
        RawDuration::Text(text) => humantime::parse_duration(text.trim()).unwrap_or_else(|e| {
            errors.push(format!("{key}: {text:?} is not a duration such as \"30s\" or \"5m\": {e}"));
            Duration::ZERO
        }),
    }
}

fn address(key: &str, text: &str, errors: &mut Vec<String>) -> Option<SocketAddr> {
    // `localhost:PORT` is the loopback address, without asking a resolver.
    let text = &match text.strip_prefix("localhost:") {
        Some(port) => format!("127.0.0.1:{port}"),
        None => text.to_string(),
    };
    match text.parse() {
        Ok(addr) => Some(addr),
        Err(_) => {
            errors.push(format!("{key}: {text:?} is not an address such as \"127.0.0.1:4000\""));
            None
        }
    }
}

/// A key given inline as PEM text, or as the path of a PEM file.
fn public_key(key: &str, value: &str, errors: &mut Vec<String>) -> Option<PublicKey> {
    let text = if value.trim_start().starts_with("-----BEGIN") {
        value.to_string()
    } else {
        match std::fs::read_to_string(value) {
            Ok(text) => text,
            Err(e) => {
                errors.push(format!("{key}: cannot read key file {value:?}: {e}"));
                return None;
            }
        }
    };
    PublicKey::from_pem(&text).map_err(|e| errors.push(format!("{key}: {e}"))).ok()
}

fn secret_file(key: &str, path: &Path, errors: &mut Vec<String>) -> Option<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => Some(text.trim().to_string()),
        Err(e) => {
            errors.push(format!("{key}: cannot read {}: {e}", path.display()));
            None
        }
    }
}

/// Why an upstream (or token endpoint) URL cannot be used; each message quotes the text.
#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    #[error("{text:?} is not a URL: {source}")]
    NotAUrl { text: String, source: http::uri::InvalidUri },
    #[error("{0:?} must start with http:// or https://")]
    Scheme(String),
    #[error("{0:?} has no host")]
    NoHost(String),
    #[error("{0:?} must not have a query")]
    Query(String),
}

/// Parses an upstream base URL: http or https, a host, no query, no trailing slash kept.
pub fn upstream_uri(text: &str) -> Result<http::Uri, UrlError> {
    let not_a_url = |source| UrlError::NotAUrl { text: text.to_string(), source };
    let uri: http::Uri = text.trim().parse().map_err(not_a_url)?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err(UrlError::Scheme(text.to_string())),
    }
    if uri.host().is_none() {
        return Err(UrlError::NoHost(text.to_string()));
    }
    if uri.query().is_some() {
        return Err(UrlError::Query(text.to_string()));
    }
    let trimmed = text.trim().trim_end_matches('/');
    trimmed.parse().map_err(not_a_url)
}

/// True for 127.0.0.0/8, ::1 and `localhost`.
pub fn is_loopback(uri: &http::Uri) -> bool {
    match uri.host() {
        Some("localhost") => true,
        Some(host) => host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => false,
    }
}

fn validate_repo(name: &str, raw: &RawRepo, errors: &mut Vec<String>) -> Option<RepoConfig> {
    let at = |field: &str| format!("repos.{name}.{field}");
    if crate::route::repo_name(name).is_err() {
        errors.push(format!("repos.{name}: a repository name holds letters, digits, `_` and `-` only"));
    }
    let texts = match &raw.upstream {
        Some(RawUpstreams::One(one)) => vec![one.clone()],
        Some(RawUpstreams::Many(many)) => many.clone(),
        None => vec![],
    };
    if texts.is_empty() {
        errors.push(format!("{}: every repository needs at least one upstream URL", at("upstream")));
    }
    let upstreams: Vec<http::Uri> = texts
        .iter()
        .filter_map(|text| upstream_uri(text).map_err(|e| errors.push(format!("{}: {e}", at("upstream")))).ok())
        .collect();
    let key = match &raw.public_key {
        Some(value) => public_key(&at("public_key"), value, errors),
        None if name == HEXPM => PublicKey::from_pem(HEXPM_PUBLIC_KEY).ok(),
        None => {
            errors.push(format!("{}: required for every repository but hexpm", at("public_key")));
            None
        }
    };
    let trusted =
        raw.trusted.unwrap_or(name == HEXPM && texts.len() == 1 && texts[0].trim_end_matches('/') == HEXPM_UPSTREAM);
    let mut auth_key = raw.auth_key.clone().map(Secret::new);
    if let Some(path) = &raw.auth_key_file {
        if auth_key.is_some() {
            errors.push(format!("{}: set auth_key or auth_key_file, not both", at("auth_key_file")));
        }
        auth_key = secret_file(&at("auth_key_file"), path, errors).map(Secret::new);
    }
    let oauth_token_url = raw
        .oauth_token_url
        .as_deref()
        .and_then(|url| upstream_uri(url).map_err(|e| errors.push(format!("{}: {e}", at("oauth_token_url")))).ok());
    let strip_headers = raw
        .strip_headers
        .iter()
        .filter_map(|h| {
            http::HeaderName::try_from(h.as_str())
                .map_err(|_| errors.push(format!("{}: {h:?} is not a header name", at("strip_headers"))))
                .ok()
        })
        .collect();
    let mut access = Access::default();
    if let Some(raw_access) = &raw.access {
        access.tokens = raw_access.tokens.iter().cloned().map(Secret::new).collect();
        if let Some(path) = &raw_access.tokens_file {
            if let Some(text) = secret_file(&at("access.tokens_file"), path, errors) {
                access.tokens.extend(
                    text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(Secret::new),
                );
            }
        }
        access.allow_all_clients = raw_access.allow_all_clients;
    }
    if access.tokens.iter().any(|t| t.expose().is_empty()) {
        errors.push(format!("{}: empty token", at("access.tokens")));
    }
    if oauth_token_url.is_some() && auth_key.is_none() {
        errors.push(format!("{}: needs auth_key or auth_key_file to exchange", at("oauth_token_url")));
    }
    if let Some(url) = &oauth_token_url {
        if url.scheme_str() == Some("http") && !(raw.allow_http && is_loopback(url)) {
            errors.push(format!("{}: credentials go only over https", at("oauth_token_url")));
        }
    }
    for (key, value) in [("oauth_client_id", &raw.oauth_client_id), ("oauth_scope", &raw.oauth_scope)] {
        if value.is_some() && raw.oauth_token_url.is_none() {
            errors.push(format!("{}: used only with oauth_token_url", at(key)));
        }
    }
    let oauth_client_id = raw.oauth_client_id.clone().unwrap_or_else(|| HEX_CLIENT_ID.to_string());
    if oauth_client_id.trim().is_empty() || oauth_client_id.chars().any(|c| c.is_control()) {
        errors.push(format!("{}: a client id, not empty, without control characters", at("oauth_client_id")));
    }
    let oauth_scope = raw.oauth_scope.clone().unwrap_or_else(|| HEX_REPOSITORIES_SCOPE.to_string());
    if let Err(e) = scope(&oauth_scope) {
        errors.push(format!("{}: {e}", at("oauth_scope")));
    }
    for uri in &upstreams {
        if uri.scheme_str() == Some("http") && auth_key.is_some() && !(raw.allow_http && is_loopback(uri)) {
            errors.push(format!(
                "{}: credentials go only over https (plain http is allowed for a loopback upstream with allow_http = true)",
                at("upstream")
            ));
        }
    }
    Some(RepoConfig {
        name: name.to_string(),
        upstreams,
        public_key: key?,
        repository: raw.repository.clone().unwrap_or_else(|| name.to_string()),
        trusted,
        allow_http: raw.allow_http,
        auth_key,
        oauth_token_url,
        oauth_client_id,
        oauth_scope,
        strip_headers,
        access,
    })
}

/// An OAuth scope (RFC 6749 §3.3): space-separated scope tokens of printable ASCII without `"`
/// or `\`, at least one (hex.pm: `repositories`, `repository:ORG`).
fn scope(text: &str) -> Result<(), &'static str> {
    let token = |t: &str| t.bytes().all(|b| matches!(b, 0x21 | 0x23..=0x5B | 0x5D..=0x7E));
    if text.split(' ').all(str::is_empty) {
        return Err("at least one scope, such as \"repositories\" or \"repository:ORG\"");
    }
    if !text.split(' ').filter(|t| !t.is_empty()).all(token) {
        return Err("scopes separated by spaces, each of printable ASCII without '\"' or '\\'");
    }
    Ok(())
}

/// Turns the raw layers into a [`Config`], reporting every invalid key.
pub fn validate(raw: RawConfig) -> Result<Config, ConfigError> {
    let mut errors = Vec::new();
    let listen = address("listen", &raw.listen, &mut errors);
    let metrics_listen = raw.metrics_listen.as_deref().and_then(|a| address("metrics_listen", a, &mut errors));
    let memory_cache_bytes = size("memory_cache_bytes", &raw.memory_cache_bytes, &mut errors);
    let disk_cache_bytes = size("disk_cache_bytes", &raw.disk_cache_bytes, &mut errors);
    let max_registry_bytes = size("max_registry_bytes", &raw.max_registry_bytes, &mut errors);
    let max_tarball_bytes = size("max_tarball_bytes", &raw.max_tarball_bytes, &mut errors);
    let registry_ttl = duration("registry_ttl", &raw.registry_ttl, &mut errors);
    let negative_ttl = duration("negative_ttl", &raw.negative_ttl, &mut errors);
    let stale_while_revalidate = duration("stale_while_revalidate", &raw.stale_while_revalidate, &mut errors);
    let timeouts = Timeouts {
        connect: duration("connect_timeout", &raw.connect_timeout, &mut errors),
        read: duration("read_timeout", &raw.read_timeout, &mut errors),
        transfer: duration("transfer_timeout", &raw.transfer_timeout, &mut errors),
    };
    let shutdown_grace = duration("shutdown_grace", &raw.shutdown_grace, &mut errors);
    let client_header_timeout = duration("client_header_timeout", &raw.client_header_timeout, &mut errors);
    if raw.max_connections == 0 {
        errors.push("max_connections: must be at least 1".into());
    }
    for (key, value) in [
        ("connect_timeout", timeouts.connect),
        ("read_timeout", timeouts.read),
        ("transfer_timeout", timeouts.transfer),
    ] {
        if value.is_zero() && !errors.iter().any(|e| e.starts_with(key)) {
            errors.push(format!("{key}: must be longer than zero"));
        }
    }
    if max_registry_bytes == 0 {
        errors.push("max_registry_bytes: must be larger than zero".into());
    }
    if max_tarball_bytes == 0 {
        errors.push("max_tarball_bytes: must be larger than zero".into());
    }
    if raw.max_upstream_requests == 0 {
        errors.push("max_upstream_requests: must be at least 1".into());
    }
    if raw.max_pending_fetches == 0 {
        errors.push("max_pending_fetches: must be at least 1".into());
    }
    let breaker = Breaker {
        failures: u32::try_from(raw.breaker_failures).unwrap_or(u32::MAX),
        backoff: duration("breaker_backoff", &raw.breaker_backoff, &mut errors),
        max_backoff: duration("breaker_max_backoff", &raw.breaker_max_backoff, &mut errors),
    };
    if breaker.failures > 0 && breaker.backoff.is_zero() && !errors.iter().any(|e| e.starts_with("breaker_backoff")) {
        errors.push(
            "breaker_backoff: must be longer than zero (set breaker_failures = 0 to turn the breaker off)".into(),
        );
    }
    if breaker.max_backoff < breaker.backoff {
        errors.push("breaker_max_backoff: must be at least breaker_backoff".into());
    }
    let installs_public_key = public_key("installs_public_key", &raw.installs_public_key, &mut errors);
    let tls = match (&raw.tls_cert, &raw.tls_key) {
        (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
        (None, None) => None,
        _ => {
            errors.push("tls_cert, tls_key: set both to serve over TLS, or neither".into());
            None
        }
    };
    if let Some(ca) = &raw.ca_file {
        if let Err(e) = std::fs::metadata(ca) {
            errors.push(format!("ca_file: cannot read {}: {e}", ca.display()));
        }
    }
    let admin_listen = address("admin_listen", &raw.admin_listen, &mut errors);
    let mut admin_token = raw.admin_token.clone().map(Secret::new);
    if let Some(path) = &raw.admin_token_file {
        admin_token = secret_file("admin_token_file", path, &mut errors).map(Secret::new);
    }
    let store = validate_store(&raw.store, &mut errors);
    let mut repos = BTreeMap::new();
    for (name, raw_repo) in &raw.repos {
        if let Some(repo) = validate_repo(name, raw_repo, &mut errors) {
            repos.insert(name.clone(), repo);
        }
    }
    if !raw.repos.contains_key(HEXPM) {
        errors.push("repos.hexpm: the hexpm repository must stay configured".into());
    }
    let policy_rescan = duration("policy_rescan", &raw.policy_rescan, &mut errors);
    let repo_policies = raw.repos.iter().map(|(name, repo)| (name.clone(), repo.policy.clone())).collect();
    let policy = match crate::policy::Policy::from_raw(&raw.policy.clone().unwrap_or_default(), &repo_policies) {
        Ok(policy) => std::sync::Arc::new(policy),
        Err(e) => {
            errors.extend(e.0);
            Default::default()
        }
    };
    if !errors.is_empty() {
        return Err(ConfigError(errors));
    }
    Ok(Config {
        listen: listen.expect("checked above"),
        metrics_listen,
        data_dir: raw.data_dir,
        memory_cache_bytes,
        disk_cache_bytes,
        registry_ttl,
        negative_ttl,
        stale_while_revalidate,
        max_registry_bytes,
        max_tarball_bytes,
        timeouts,
        shutdown_grace,
        max_upstream_requests: raw.max_upstream_requests as usize,
        max_pending_fetches: usize::try_from(raw.max_pending_fetches).unwrap_or(usize::MAX),
        breaker,
        max_connections: raw.max_connections as usize,
        client_header_timeout,
        offline: raw.offline,
        access_log: raw.access_log,
        installs_public_key: installs_public_key.expect("checked above"),
        ca_file: raw.ca_file,
        tls,
        admin_listen: admin_listen.expect("checked above"),
        admin_token,
        store,
        repos,
        policy,
        policy_rescan,
        source: None,
    })
}

fn validate_store(raw: &RawStore, errors: &mut Vec<String>) -> StoreConfig {
    let timeout = duration("store.timeout", &raw.timeout, errors);
    if timeout.is_zero() && !errors.iter().any(|e| e.starts_with("store.timeout")) {
        errors.push("store.timeout: must be longer than zero".into());
    }
    match raw.kind.as_str() {
        "local" => {
            for (key, set) in [("bucket", raw.bucket.is_some()), ("endpoint", raw.endpoint.is_some())] {
                if set {
                    errors.push(format!("store.{key}: only for kind = \"s3\" (the store is local)"));
                }
            }
            StoreConfig::Local
        }
        "s3" => {
            let bucket = raw.bucket.clone().unwrap_or_default();
            if bucket.trim().is_empty() {
                errors.push("store.bucket: required with kind = \"s3\"".into());
            }
            let prefix = raw.prefix.clone().unwrap_or_default().trim_matches('/').to_string();
            if prefix.split('/').any(|part| part == "." || part == "..") || prefix.contains("//") {
                errors.push(format!("store.prefix: `{prefix}` is not a plain path"));
            }
            if let Some(endpoint) = &raw.endpoint {
                match endpoint.parse::<http::Uri>() {
                    Ok(uri) if uri.scheme_str() == Some("https") => {}
                    Ok(uri) if uri.scheme_str() == Some("http") && raw.allow_http => {}
                    Ok(uri) if uri.scheme_str() == Some("http") => errors.push(format!(
                        "store.endpoint: {endpoint} is plain http; set store.allow_http = true to allow it (a loopback test server)"
                    )),
                    _ => errors.push(format!("store.endpoint: {endpoint} is not an http(s) URL")),
                }
            }
            if raw.region.trim().is_empty() {
                errors.push("store.region: must not be empty".into());
            }
            StoreConfig::S3(S3Config {
                bucket,
                prefix,
                endpoint: raw.endpoint.clone(),
                region: raw.region.clone(),
                allow_http: raw.allow_http,
                timeout,
            })
        }
        other => {
            errors.push(format!("store.kind: `{other}` is not a store kind (local or s3)"));
            StoreConfig::Local
        }
    }
}

impl Config {
    /// The configuration with no file and no environment: hex.pm on 127.0.0.1:4000.
    pub fn defaults() -> Config {
        validate(RawConfig::default()).expect("built-in defaults are valid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hexmirror.toml");
        std::fs::write(&path, text).unwrap();
        load_from(Some(&path), Env::prefixed("HEXMIRROR_TEST_NOTHING_"))
    }

    fn errors_of(text: &str) -> String {
        from_toml(text).unwrap_err().to_string()
    }

    #[test]
    fn defaults_mirror_hexpm_on_loopback() {
        let config = Config::defaults();
        assert_eq!(config.listen, "127.0.0.1:4000".parse().unwrap());
        assert_eq!(config.data_dir, PathBuf::from("./data"));
        assert_eq!(config.memory_cache_bytes, 256 << 20);
        assert_eq!(config.registry_ttl, Duration::from_secs(300));
        let hexpm = &config.repos["hexpm"];
        assert_eq!(hexpm.upstreams[0].to_string(), "https://repo.hex.pm/");
        assert!(hexpm.trusted);
        assert_eq!(hexpm.repository, "hexpm");
        assert!(hexpm.public_key.pem().contains("MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEApqREcFDt5vV21JVe2QNB"));
        assert_eq!(config.timeouts.connect, Duration::from_secs(10));
        assert_eq!(config.timeouts.read, Duration::from_secs(30));
        assert_eq!(config.timeouts.transfer, Duration::from_secs(300));
    }

    #[test]
    fn file_overrides_defaults_and_keeps_hexpm() {
        let key = include_str!("../tests/fixtures/demo-repo/keys/pub.pem").replace('\n', "\\n");
        let config = from_toml(&format!(
            r#"
listen = "0.0.0.0:8080"
memory_cache_bytes = 1048576
registry_ttl = "1s"
[repos.corp]
upstream = ["https://a.example/repos/corp/", "https://b.example/repos/corp"]
public_key = "{key}"
repository = "corp_signed"
"#
        ))
        .unwrap();
        assert_eq!(config.listen.port(), 8080);
        assert_eq!(config.memory_cache_bytes, 1 << 20);
        assert_eq!(config.registry_ttl, Duration::from_secs(1));
        let corp = &config.repos["corp"];
        assert_eq!(corp.upstreams.len(), 2);
        assert_eq!(corp.upstreams[0].path(), "/repos/corp");
        assert_eq!(corp.repository, "corp_signed");
        assert!(!corp.trusted, "a non-hex.pm upstream is untrusted by default");
        assert!(config.repos.contains_key("hexpm"));
    }

    #[test]
    fn hexpm_pointed_elsewhere_is_untrusted_by_default() {
        let config = from_toml("[repos.hexpm]\nupstream = \"https://mirror.example\"\n").unwrap();
        assert!(!config.repos["hexpm"].trusted);
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn environment_overrides_file() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("h.toml", "listen = \"127.0.0.1:1\"\n")?;
            jail.set_env("HEXMIRROR_LISTEN", "127.0.0.1:2");
            jail.set_env("HEXMIRROR_REPOS__HEXPM__UPSTREAM", "http://127.0.0.1:9");
            jail.set_env("HEXMIRROR_MEMORY_CACHE_BYTES", "2MiB");
            let config = load(Some(Path::new("h.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(config.listen.port(), 2);
            assert_eq!(config.memory_cache_bytes, 2 << 20);
            assert_eq!(config.repos["hexpm"].upstreams[0].port_u16(), Some(9));
            Ok(())
        });
    }

    #[test]
    fn every_bad_key_is_reported_at_once() {
        let text = errors_of(
            r#"
listen = "nowhere"
registry_ttl = "soon"
memory_cache_bytes = "12 parsecs"
[repos.corp]
upstream = "ftp://x"
public_key = "/nonexistent/key.pem"
"#,
        );
        for needle in ["listen", "registry_ttl", "memory_cache_bytes", "repos.corp.upstream", "repos.corp.public_key"] {
            assert!(text.contains(needle), "{needle} missing from {text}");
        }
    }

    #[test]
    fn unknown_keys_are_errors() {
        assert!(errors_of("lisen = \"127.0.0.1:1\"\n").contains("lisen"));
        assert!(errors_of("[repos.hexpm]\nupstrem = \"https://x\"\n").contains("upstrem"));
    }

    #[test]
    fn the_store_table_is_checked_whole() {
        assert_eq!(Config::defaults().store, StoreConfig::Local);
        let ok = from_toml(
            "[store]\nkind = \"s3\"\nbucket = \"b\"\nprefix = \"/prod/\"\nendpoint = \"http://127.0.0.1:3900\"\nallow_http = \"yes\"\ntimeout = \"2s\"\n",
        )
        .unwrap();
        let StoreConfig::S3(s3) = ok.store else { panic!("not s3") };
        assert_eq!((s3.bucket.as_str(), s3.prefix.as_str(), s3.timeout), ("b", "prod", Duration::from_secs(2)));
        assert_eq!(s3.endpoint.as_deref(), Some("http://127.0.0.1:3900"));
        for (text, expected) in [
            ("[store]\nkind = \"s3\"\n", "store.bucket: required"),
            ("[store]\nkind = \"nfs\"\n", "store.kind: `nfs` is not a store kind"),
            ("[store]\nkind = \"s3\"\nbucket = \"b\"\nendpoint = \"http://x:1\"\n", "set store.allow_http = true"),
            ("[store]\nkind = \"s3\"\nbucket = \"b\"\ntimeout = \"0s\"\n", "store.timeout: must be longer than zero"),
            ("[store]\nbucket = \"b\"\n", "store.bucket: only for kind = \"s3\""),
            ("[store]\nkind = \"s3\"\nbucket = \"b\"\nprefix = \"a/../b\"\n", "store.prefix"),
            ("[store]\nbuckett = \"b\"\n", "unknown key `store.buckett`; did you mean `bucket`?"),
        ] {
            let errors = errors_of(text);
            assert!(errors.contains(expected), "{text}: {errors}");
        }
    }

    #[test]
    fn repo_without_key_is_an_error() {
        assert!(errors_of("[repos.corp]\nupstream = \"https://x\"\n").contains("repos.corp.public_key"));
    }

    #[test]
    fn credentials_over_plain_http_are_refused() {
        let key = include_str!("../tests/fixtures/demo-repo/keys/pub.pem").replace('\n', "\\n");
        let text = errors_of(&format!(
            "[repos.corp]\nupstream = \"http://example.com\"\npublic_key = \"{key}\"\nauth_key = \"k\"\n"
        ));
        assert!(text.contains("https"), "{text}");
        let ok = from_toml(&format!(
            "[repos.corp]\nupstream = \"http://127.0.0.1:9\"\npublic_key = \"{key}\"\nauth_key = \"k\"\nallow_http = true\n"
        ));
        assert!(ok.is_ok());
    }

    #[test]
    fn the_oauth_exchange_names_hexs_client_and_scope_unless_told_otherwise() {
        let repo = |extra: &str| {
            format!("[repos.hexpm]\nauth_key = \"k\"\noauth_token_url = \"https://hex.pm/api/oauth/token\"\n{extra}")
        };
        let config = from_toml(&repo("")).unwrap();
        let hexpm = &config.repos[HEXPM];
        assert_eq!((hexpm.oauth_client_id.as_str(), hexpm.oauth_scope.as_str()), (HEX_CLIENT_ID, "repositories"));
        let config = from_toml(&repo("oauth_client_id = \"mine\"\noauth_scope = \"repository:acme\"\n")).unwrap();
        let hexpm = &config.repos[HEXPM];
        assert_eq!((hexpm.oauth_client_id.as_str(), hexpm.oauth_scope.as_str()), ("mine", "repository:acme"));
        for (text, expected) in [
            (repo("oauth_scope = \"\"\n"), "repos.hexpm.oauth_scope: at least one scope"),
            (repo("oauth_scope = \"repository:\\\"x\"\n"), "repos.hexpm.oauth_scope: scopes separated by spaces"),
            (repo("oauth_client_id = \" \"\n"), "repos.hexpm.oauth_client_id: a client id"),
            (
                "[repos.hexpm]\noauth_scope = \"repositories\"\n".into(),
                "repos.hexpm.oauth_scope: used only with oauth_token_url",
            ),
            (
                "[repos.hexpm]\noauth_client_id = \"c\"\n".into(),
                "repos.hexpm.oauth_client_id: used only with oauth_token_url",
            ),
        ] {
            let errors = errors_of(&text);
            assert!(errors.contains(expected), "{text}: {errors}");
        }
    }

    #[test]
    fn missing_config_file_is_an_error() {
        let err = load_from(Some(Path::new("/nonexistent/hexmirror.toml")), Env::prefixed("X_NOTHING_")).unwrap_err();
        assert!(err.to_string().contains("cannot read"));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size("64 MB"), Ok(64_000_000));
        assert_eq!(parse_size("10"), Ok(10));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("1 parsec").is_err());
        assert!(parse_size("99999999999999999999TiB").is_err());
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let s = Secret::new("hunter2");
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn loopback_detection() {
        for (url, want) in [
            ("http://127.0.0.1:1", true),
            ("http://127.5.0.1", true),
            ("http://localhost:8", true),
            ("http://[::1]:8", true),
            ("http://10.0.0.1", false),
            ("https://repo.hex.pm", false),
        ] {
            assert_eq!(is_loopback(&url.parse().unwrap()), want, "{url}");
        }
    }

    /// Every key the configuration structs accept appears in config/hexmirror.toml, set or
    /// commented out: the file is the documented example "with every key".
    #[test]
    fn the_example_file_names_every_key() {
        let text = include_str!("../config/hexmirror.toml");
        let named = |key: &str| {
            text.lines().any(|line| {
                let line = line.trim_start_matches('#').trim_start();
                line.starts_with(&format!("{key} =")) || line.starts_with(&format!("{key}="))
            })
        };
        let mut missing = Vec::new();
        for table in [Table::Root, Table::Repo, Table::Access, Table::Store, Table::Policy] {
            for key in known_keys(table) {
                let opens_a_table = matches!(
                    (table, *key),
                    (Table::Root, "repos" | "store" | "policy") | (Table::Repo, "access" | "policy")
                );
                if !opens_a_table && !named(key) {
                    missing.push(format!("{table:?}: {key}"));
                }
            }
        }
        assert!(text.contains("[repos.hexpm]") && text.contains(".access]") && text.contains("[store]"));
        assert!(text.contains("# [policy]") && text.contains(".policy]"));
        assert!(missing.is_empty(), "keys missing from config/hexmirror.toml: {missing:?}");
        // The example itself is valid, with nothing unknown.
        assert!(file_mistakes(Path::new("hexmirror.toml"), text).is_empty());
    }

    #[test]
    fn policy_tables_load_and_their_mistakes_name_the_key() {
        let key = include_str!("../tests/fixtures/demo-repo/keys/pub.pem").replace('\n', "\\n");
        let corp = format!("[repos.corp]\nupstream = \"https://corp.example\"\npublic_key = \"{key}\"\n");
        let config = from_toml(&format!(
            "policy_rescan = \"5s\"\n[policy]\ndeny = [\"plug < 1.5.0\"]\ncooldown = \"1d\"\n{corp}[repos.corp.policy]\nenforce = false\n"
        ))
        .unwrap();
        assert_eq!(config.policy_rescan, Duration::from_secs(5));
        assert!(!config.policy.is_empty());
        assert!(Config::defaults().policy.is_empty());
        let errors = errors_of(&format!(
            "[policy]\ndeny = [\"plug >>\"]\nblock_retired = [\"old\"]\n{corp}[repos.corp.policy]\nadvisories = \"/nonexistent/advisories\"\n"
        ));
        assert!(errors.contains("policy.deny: \"plug >>\""), "{errors}");
        assert!(errors.contains("policy.block_retired: \"old\""), "{errors}");
        assert!(errors.contains("advisories /nonexistent/advisories"), "{errors}");
    }

    #[test]
    fn unknown_keys_are_all_reported_with_line_and_suggestion() {
        let cases: &[(&str, &[&str])] = &[
            (
                "lisen = \"x\"\n[repos.hexpm]\nupstrem = \"y\"\n",
                &[
                    "f.toml, line 1: unknown key `lisen`; did you mean `listen`?",
                    "f.toml, line 3: unknown key `repos.hexpm.upstrem`; did you mean `upstream`?",
                ],
            ),
            (
                "[repos.corp.access]\ntoken = []\n",
                &["line 2: unknown key `repos.corp.access.token`; did you mean `tokens`?"],
            ),
            ("zzzz = 1\n", &["line 1: unknown key `zzzz`"]),
            ("[policy]\ndenny = []\n", &["line 2: unknown key `policy.denny`; did you mean `deny`?"]),
            (
                "[repos.corp.policy]\ncooldwn = 1\n",
                &["line 2: unknown key `repos.corp.policy.cooldwn`; did you mean `cooldown`?"],
            ),
            ("listen = \"127.0.0.1:1\"\noffline = true\n", &[]),
            ("listen = \n", &["config file f.toml, line 1: "]),
        ];
        for (text, expected) in cases {
            let got = file_mistakes(Path::new("f.toml"), text);
            assert_eq!(got.len(), expected.len(), "{text:?}: {got:?}");
            for (line, want) in got.iter().zip(expected.iter()) {
                assert!(line.contains(want), "{text:?}: {line:?} lacks {want:?}");
            }
        }
        assert!(!unknown_key_text(Table::Root, "", "zzzz").contains("did you mean"));
    }

    #[test]
    fn environment_keys_service_links_and_the_config_path() {
        let cases: &[(&str, Option<&str>)] = &[
            ("HEXMIRROR_LISTEN", None),
            ("HEXMIRROR_REPOS__CORP__ACCESS__ALLOW_ALL_CLIENTS", None),
            ("HEXMIRROR_REPOS__HEXPM__UPSTREAM", None),
            ("HEXMIRROR_CONFIG", None),
            ("HEXMIRROR_PORT", None),
            ("HEXMIRROR_PORT_4000_TCP", None),
            ("HEXMIRROR_PORT_4000_TCP_ADDR", None),
            ("HEXMIRROR_SERVICE_HOST", None),
            ("HEXMIRROR_SERVICE_PORT_HTTP", None),
            ("OTHER_THING", None),
            ("HEXMIRROR_LISEN", Some("unknown key `lisen`; did you mean `listen`?")),
            ("HEXMIRROR_REPOS__HEXPM__TRUSTD", Some("unknown key `repos.hexpm.trustd`; did you mean `trusted`?")),
            ("HEXMIRROR_REPOS__X__ACCESS__TOKNS", Some("`repos.x.access.tokns`; did you mean `tokens`?")),
            ("HEXMIRROR_PORTS", Some("unknown key `ports`")),
        ];
        for (name, expected) in cases {
            let got = environment_mistakes(std::iter::once((name.to_string(), "1".to_string())));
            match expected {
                None => assert!(got.is_empty(), "{name}: {got:?}"),
                Some(want) => {
                    assert_eq!(got.len(), 1, "{name}: {got:?}");
                    assert!(got[0].contains(want) && got[0].contains(name), "{name}: {got:?}");
                }
            }
        }
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn booleans_and_localhost_as_operators_write_them() {
        for (value, expected) in [
            ("true", Some(true)),
            ("1", Some(true)),
            ("yes", Some(true)),
            ("On", Some(true)),
            ("false", Some(false)),
            ("0", Some(false)),
            ("no", Some(false)),
            ("off", Some(false)),
            ("maybe", None),
            ("2", None),
        ] {
            figment::Jail::expect_with(|jail| {
                jail.set_env("HEXMIRROR_OFFLINE", value);
                jail.set_env("HEXMIRROR_REPOS__HEXPM__ALLOW_HTTP", value);
                jail.set_env("HEXMIRROR_PORT", "tcp://10.0.0.9:4000");
                jail.set_env("HEXMIRROR_PORT_4000_TCP_PORT", "4000");
                jail.set_env("HEXMIRROR_SERVICE_HOST", "10.0.0.9");
                jail.set_env("HEXMIRROR_LISTEN", "localhost:4010");
                match (load(None), expected) {
                    (Ok(config), Some(b)) => {
                        assert_eq!(config.offline, b, "{value}");
                        assert_eq!(config.repos[HEXPM].allow_http, b, "{value}");
                        assert_eq!(config.listen, "127.0.0.1:4010".parse().unwrap());
                    }
                    (Err(e), None) => assert!(e.to_string().contains("boolean"), "{value}: {e}"),
                    (got, want) => panic!("{value}: {got:?}, wanted {want:?}"),
                }
                Ok(())
            });
        }
    }
}
