//! The `hexmirror` command line: parses arguments, loads the configuration, sets up logging and
//! calls into the library. A bad configuration exits with status 64 and one line per mistake.
//!
//! Every command but `serve` and `inspect` works on the store of the configured `data_dir`:
//! through the admin endpoint of a running server when one answers (see `admin`), otherwise by
//! opening the store itself. A command that finds a `DATA_DIR/admin.json` another user could
//! have written refuses it, with one line saying why and exit status 77, and contacts nothing.
//!
//! Every command first says on stderr which configuration file and data directory it uses. A
//! data directory that can be neither opened nor created ends `serve` and the commands with
//! exit status 73. `serve`, `sync` and `import` create the store they fill; the others never
//! create one: a data directory named by `--config`, `--data-dir` or `HEXMIRROR_DATA_DIR` that
//! holds no store is an empty store, and when nothing names one they refuse to fall back on an
//! absent `./data`.

use std::path::PathBuf;
use std::process::ExitCode;

mod allocator;

use bytes::Bytes;
use clap::{Parser, Subcommand};
use hexmirror::admin::{AdminClient, CacheRow, Refused};
use hexmirror::audit::AuditReport;
use hexmirror::sync::{Event, Outcome, SyncRequest};
use hexmirror::transfer::{ExportRequest, ImportReport};
use hexmirror::{Config, Mirror};
use http::Method;

#[derive(Parser)]
#[command(name = "hexmirror", version, about = "A verifying, caching mirror for the Hex package repository")]
struct Cli {
    /// Configuration file (TOML); also HEXMIRROR_CONFIG. Environment variables HEXMIRROR_*
    /// override it.
    #[arg(long, global = true, value_name = "PATH", env = "HEXMIRROR_CONFIG")]
    config: Option<PathBuf>,
    /// The data directory (the store), over `data_dir` of the configuration file and
    /// HEXMIRROR_DATA_DIR.
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the mirror.
    Serve {
        /// Never contact an upstream; serve only what the store holds.
        #[arg(long)]
        offline: bool,
    },
    /// Fill the store from the upstream: packages, lockfiles or everything, with dependencies.
    Sync {
        /// A package, optionally with a requirement: `phoenix`, `"ecto ~> 3.10"`; `REPO/NAME`
        /// for another repository or a hex.pm organization.
        #[arg(long = "package", value_name = "SPEC")]
        packages: Vec<String>,
        /// A file of package specs, one `[REPO/]NAME [REQUIREMENT]` a line (`#` comments):
        /// what `hexmirror missing --format requirements` writes at an offline site.
        #[arg(long = "requirements", value_name = "FILE")]
        requirements: Vec<PathBuf>,
        /// A mix.lock or rebar.lock: exactly its versions, its checksums checked too.
        #[arg(long = "lockfile", value_name = "PATH")]
        lockfiles: Vec<PathBuf>,
        /// Every package of the repository.
        #[arg(long)]
        all: bool,
        /// A repository or organization served at /repos/NAME (default: hexpm).
        #[arg(long)]
        repo: Option<String>,
        /// Include pre-release versions.
        #[arg(long)]
        pre: bool,
        /// Include retired versions.
        #[arg(long)]
        retired: bool,
        /// Do not follow dependencies.
        #[arg(long)]
        no_deps: bool,
        /// Skip optional dependencies.
        #[arg(long)]
        no_optional: bool,
        /// Also the installers (mix local.hex, mix local.rebar).
        #[arg(long)]
        installers: bool,
        /// Requests at once (package records and tarballs).
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// At most this many requests a second to the upstream (default: no limit; a 429's
        /// Retry-After is honoured either way).
        #[arg(long, value_name = "PER_SECOND")]
        rate: Option<f64>,
    },
    /// Check every stored entry and the completeness of what sync and import selected.
    Verify {
        /// Refetch what is damaged or missing from an upstream.
        #[arg(long)]
        repair: bool,
        /// First remove every entry that is not pinned (not selected by sync or import) and
        /// stored bytes that no record names: how a shared store is kept to what was selected.
        #[arg(long)]
        prune: bool,
        /// Print the report as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Write the store (or a selection) into one portable bundle.
    Export {
        /// Where to write the bundle; FILE.sha256 beside it receives its digest.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// A previous bundle: write only what is new or changed since.
        #[arg(long, value_name = "FILE")]
        base: Option<PathBuf>,
        /// Only keys containing this text.
        #[arg(long)]
        filter: Option<String>,
        /// Only what sync or import selected.
        #[arg(long)]
        selected: bool,
        /// Split the bundle into volumes of at most SIZE (e.g. 4GiB, 700MB): FILE.001,
        /// FILE.002, ..., each with a FILE.NNN.sha256.
        #[arg(long, value_name = "SIZE")]
        max_size: Option<String>,
    },
    /// Import a bundle, verifying every object before accepting any.
    Import {
        /// The bundle (written by `hexmirror export`): its file, or all its volumes (in any
        /// order) or their directory.
        #[arg(value_name = "FILE", required = true, num_args = 1..)]
        files: Vec<PathBuf>,
    },
    /// Show a bundle's manifest, and what it would change in the configured store.
    Inspect {
        /// The bundle (written by `hexmirror export`): its file, or all its volumes (in any
        /// order) or their directory.
        #[arg(value_name = "FILE", required = true, num_args = 1..)]
        files: Vec<PathBuf>,
        /// Print every package release.
        #[arg(long)]
        packages: bool,
        /// Print the manifest's summary, every package release and the comparison with the
        /// store as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// What the cache holds.
    Cache {
        #[command(subcommand)]
        action: CacheAction,
    },
    /// The last upstream answers refused by verification.
    Refusals {
        /// Print them as a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// What clients asked this offline mirror for and it did not have (kept in the store).
    Missing {
        /// `text` (a table), `requirements` (lines `sync --requirements FILE` takes outside, so
        /// the next bundle carries what the site lacked) or `json`.
        #[arg(long, value_enum, default_value_t = MissingFormat::Text)]
        format: MissingFormat,
        /// Write to FILE instead of standard output.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Validate the configuration and print it with every effective value, secrets redacted
    /// (exit 0), or print every mistake (exit 64).
    CheckConfig,
    /// The supply-chain policy: what it blocks in the store, and why.
    Policy {
        #[command(subcommand)]
        action: PolicyAction,
    },
}

#[derive(Subcommand)]
enum PolicyAction {
    /// List every stored or selected release the current rules block, with the rule (exit 1
    /// when any).
    Check {
        /// Print the report as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Say which rule decides on one release, and why.
    Explain {
        /// The package name.
        name: String,
        /// The release's version.
        version: String,
        /// A repository or organization served at /repos/NAME (default: hexpm).
        #[arg(long)]
        repo: Option<String>,
        /// Print the explanation as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Mark every release the stored package records list as first seen long ago, so that a
    /// new `cooldown` holds back only what is listed from now on.
    Baseline,
}

#[derive(Subcommand)]
enum CacheAction {
    /// List entries, one row each under a header (the total goes to stderr).
    List {
        /// Only entries whose key (`public/hexpm/tarballs/NAME-VERSION.tar`) contains this text.
        filter: Option<String>,
        /// Print the entries as a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Show the entries of one package.
    Show {
        /// The package name.
        name: String,
        /// Print the entries as a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Remove the entries of one package (in every repository and organization, unless --repo).
    Purge {
        /// The package name.
        name: String,
        /// Only in this repository: `hexpm`, a configured repository, or a hex.pm organization.
        #[arg(long, value_name = "REPO")]
        repo: Option<String>,
        /// Print what would be removed, and remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

const EXIT_CONFIG: u8 = 64;
/// EX_CANTCREAT: the data directory can be neither opened nor created (not a directory, no
/// permission).
const EXIT_CANTCREAT: u8 = 73;
/// EX_NOPERM: `admin.json`, or its directory, could have been written by another user.
const EXIT_REFUSED: u8 = 77;

/// Why a command failed.
enum Failure {
    /// `admin.json` was not trusted, so nothing was sent to the endpoint it names.
    Refused(Refused),
    /// The configuration names something that cannot be used (a bucket that does not exist,
    /// credentials the store refuses): exit status 64, like any configuration mistake.
    Config(String),
    /// The data directory can be neither opened nor created: exit status 73.
    CantCreate(String),
    Other(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Refused(refused) => refused.fmt(f),
            Failure::Config(message) | Failure::CantCreate(message) | Failure::Other(message) => f.write_str(message),
        }
    }
}

impl From<Refused> for Failure {
    fn from(refused: Refused) -> Failure {
        Failure::Refused(refused)
    }
}

/// The library's errors end a command with their message and the generic failure status.
macro_rules! fails_with_message {
    ($($error:ty),*) => {$(
        impl From<$error> for Failure {
            fn from(e: $error) -> Failure {
                Failure::Other(e.to_string())
            }
        }
    )*};
}

fails_with_message!(hexmirror::transfer::TransferError, hexmirror::admin::AdminError);

impl From<hexmirror::StartError> for Failure {
    fn from(e: hexmirror::StartError) -> Failure {
        match &e {
            hexmirror::StartError::Open(open) if open.is_configuration() => Failure::Config(e.to_string()),
            hexmirror::StartError::Open(open) if open.is_unusable_data_dir() => Failure::CantCreate(e.to_string()),
            _ => Failure::Other(e.to_string()),
        }
    }
}

impl From<String> for Failure {
    fn from(message: String) -> Failure {
        Failure::Other(message)
    }
}

impl From<&str> for Failure {
    fn from(message: &str) -> Failure {
        Failure::Other(message.to_string())
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Whether anything names the data directory; when nothing does, the commands that only
    // read or maintain a store do not fall back on an absent `./data`.
    let named = cli.config.is_some() || cli.data_dir.is_some() || std::env::var_os("HEXMIRROR_DATA_DIR").is_some();
    if let Some(dir) = &cli.data_dir {
        // The top layer of the configuration, for `load` and `check-config` alike; set before
        // any thread starts.
        std::env::set_var("HEXMIRROR_DATA_DIR", dir);
    }
    if let Command::CheckConfig = cli.command {
        return match hexmirror::config::effective(cli.config.as_deref()) {
            Ok(text) => {
                let file = cli.config.as_deref().map(|p| p.display().to_string());
                println!(
                    "# hexmirror: configuration valid ({})",
                    file.as_deref().unwrap_or("no file: defaults and environment")
                );
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("hexmirror: invalid configuration:\n{e}");
                ExitCode::from(EXIT_CONFIG)
            }
        };
    }
    let mut config = match hexmirror::config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("hexmirror: invalid configuration:\n{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    eprintln!("hexmirror: {}", where_it_works(cli.config.as_deref(), &config));
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(|| LogWriter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    for name in hexmirror::config::ignored_environment() {
        tracing::debug!(variable = %name, "environment: not a configuration key (the config path or a Kubernetes service link); ignored");
    }
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if !matches!(cli.command, Command::Serve { .. }) {
        allocator::run_lean(&mut runtime);
    }
    let runtime = match runtime.enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("hexmirror: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve { offline } => {
                config.offline |= offline;
                serve(config).await
            }
            Command::Sync {
                mut packages,
                requirements,
                lockfiles,
                all,
                repo,
                pre,
                retired,
                no_deps,
                no_optional,
                installers,
                concurrency,
                rate,
            } => {
                for path in requirements {
                    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                    let before = packages.len();
                    packages.extend(
                        text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(String::from),
                    );
                    if packages.len() == before {
                        return Err(format!("{}: no package specs in it", path.display()).into());
                    }
                }
                let mut request = SyncRequest {
                    repo,
                    packages,
                    all,
                    include_prereleases: pre,
                    include_retired: retired,
                    dependencies: !no_deps,
                    include_optional: !no_optional,
                    installers,
                    concurrency,
                    rate,
                    ..Default::default()
                };
                for path in lockfiles {
                    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                    request.lockfiles.push((name, text));
                }
                if request.packages.is_empty() && request.lockfiles.is_empty() && !request.all && !request.installers {
                    return Err("nothing to sync: give --package, --lockfile, --all or --installers".into());
                }
                sync(config, request).await
            }
            Command::Verify { repair, prune, json } => {
                verify(config, named, hexmirror::audit::Options { repair, prune }, json).await
            }
            Command::Export { out, base, filter, selected, max_size } => {
                export(config, named, out, base, ExportOptions { filter, selected, max_size }).await
            }
            Command::Import { files } => import(config, files).await,
            Command::Inspect { files, packages, json } => inspect(config, named, files, packages, json).await,
            Command::Cache { action } => cache(config, named, action).await,
            Command::Refusals { json } => refusals(config, named, json).await,
            Command::Missing { format, out } => missing(config, named, format, out).await,
            Command::Policy { action } => policy(config, named, action).await,
            Command::CheckConfig => unreachable!("answered before the configuration is loaded"),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("hexmirror: {e}");
            match e {
                Failure::Refused(_) => ExitCode::from(EXIT_REFUSED),
                Failure::Config(_) => ExitCode::from(EXIT_CONFIG),
                Failure::CantCreate(_) => ExitCode::from(EXIT_CANTCREAT),
                Failure::Other(_) => ExitCode::FAILURE,
            }
        }
    }
}

/// `hexmirror policy ...`: through a running server's admin endpoint, or on the store itself.
async fn policy(config: Config, named: bool, action: PolicyAction) -> Result<ExitCode, Failure> {
    let need = match action {
        PolicyAction::Baseline => Need::Create,
        _ => Need::Existing { named },
    };
    let store = open(config, need).await?;
    let from_json = |bytes: Bytes| -> Result<serde_json::Value, Failure> {
        Ok(serde_json::from_slice(&bytes).map_err(|e| format!("unreadable answer: {e}"))?)
    };
    match action {
        PolicyAction::Check { json } => {
            let report: hexmirror::mirror::PolicyCheck = match &store {
                Store::Remote(admin) => serde_json::from_value(from_json(
                    admin.call_bytes(Method::GET, "/_admin/policy/check", Bytes::new()).await?,
                )?)
                .map_err(|e| e.to_string())?,
                Store::Local(mirror) => mirror.policy_check().await.map_err(|e| e.to_string())?,
            };
            let any = !report.blocked.is_empty();
            if json {
                print_json(&serde_json::json!({
                    "ok": !any,
                    "checked": report.checked,
                    "blocked": report.blocked,
                    "unlisted": report.unlisted,
                }))?;
                return Ok(ok_or_failure(!any));
            }
            for row in &report.blocked {
                let enforced = if row.decision.enforced { "" } else { " (enforce = false: served)" };
                println!(
                    "blocked: {}/{} {}: {}: {}{enforced}",
                    row.repo,
                    row.name,
                    row.version,
                    row.decision.rule.as_str(),
                    row.decision.reason
                );
            }
            for key in &report.unlisted {
                println!("  not listed in a stored verified record (not decided): {key}");
            }
            println!("policy check: {} releases checked, {} blocked", report.checked, report.blocked.len());
            Ok(ok_or_failure(!any))
        }
        PolicyAction::Explain { name, version, repo, json } => {
            let explained: hexmirror::admin::PolicyExplained = match &store {
                Store::Remote(admin) => {
                    let path = hexmirror::admin::request_path(
                        "/_admin/policy/explain",
                        &[("name", &name), ("version", &version), ("repo", repo.as_deref().unwrap_or(""))],
                    );
                    serde_json::from_value(from_json(admin.call_bytes(Method::GET, &path, Bytes::new()).await?)?)
                        .map_err(|e| e.to_string())?
                }
                Store::Local(mirror) => {
                    let target = mirror.target(repo.as_deref());
                    let explanation =
                        mirror.policy_explain(&target, &name, &version).await.map_err(|e| e.to_string())?;
                    hexmirror::admin::PolicyExplained { repo: target.namespace.clone(), explanation }
                }
            };
            let (namespace, explanation) = (explained.repo, explained.explanation);
            let decides = explanation.blocking.first();
            if json {
                print_json(&serde_json::json!({
                    "repo": namespace,
                    "name": name,
                    "version": version,
                    "blocked": decides.is_some_and(|d| d.enforced),
                    "decision": decides,
                    "exempt": explanation.exempt,
                    "checks": explanation.checks,
                }))?;
                return Ok(ExitCode::SUCCESS);
            }
            println!("{namespace}/{name} {version}");
            for line in &explanation.checks {
                println!("  {line}");
            }
            match decides {
                Some(d) if d.enforced => println!("decides: {}: {}", d.rule.as_str(), d.reason),
                Some(d) => println!("decides: {}: {} (enforce = false: served)", d.rule.as_str(), d.reason),
                None => println!("decides: nothing blocks it"),
            }
            Ok(ExitCode::SUCCESS)
        }
        PolicyAction::Baseline => {
            let (covered, changed) = match &store {
                Store::Remote(admin) => {
                    let answer: hexmirror::admin::PolicyBaseline = serde_json::from_value(from_json(
                        admin.call_bytes(Method::POST, "/_admin/policy/baseline", Bytes::new()).await?,
                    )?)
                    .map_err(|e| e.to_string())?;
                    (answer.covered, answer.changed)
                }
                Store::Local(mirror) => mirror.policy_baseline(0).await.map_err(|e| e.to_string())?,
            };
            println!("policy baseline: {covered} listed releases marked as seen long ago ({changed} changed)");
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn serve(config: Config) -> Result<ExitCode, Failure> {
    for repo in config.repos.values() {
        let upstreams: Vec<String> = repo.upstreams.iter().map(hexmirror::upstream::base_url).collect();
        tracing::info!(
            repo = %repo.name,
            upstreams = %upstreams.join(", "),
            repository = %repo.repository,
            trusted = repo.trusted,
            own_credentials = repo.auth_key.is_some(),
            "repository configured"
        );
    }
    let running = hexmirror::start(config, shutdown_signal()).await?;
    let _ = running.done.await;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// Where a command's work runs: a running server, or this process on the store.
enum Store {
    Remote(Box<AdminClient>),
    Local(Mirror),
}

/// What a command needs of the store it opens.
#[derive(Debug, Clone, Copy)]
enum Need {
    /// `sync`, `import`: they fill a store, so they create one where there is none.
    Create,
    /// `verify`, `cache`, `export`, `inspect`, `refusals`: a store that exists; they create
    /// nothing. A data directory that something named (`named`) but that holds no store is an
    /// empty store; when nothing names one, an absent `./data` is refused.
    Existing { named: bool },
}

/// The line every command starts with on stderr: the configuration file and the data
/// directory (as absolute paths) it works with.
fn where_it_works(file: Option<&std::path::Path>, config: &Config) -> String {
    let absolute = |path: &std::path::Path| std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let file = match file {
        Some(path) => format!("config {}", absolute(path).display()),
        None => "config (none: defaults and HEXMIRROR_* variables)".to_string(),
    };
    let mut line = format!("{file}; data directory {}", absolute(&config.data_dir).display());
    if let hexmirror::config::StoreConfig::S3(s3) = &config.store {
        line.push_str(&format!("; store: S3 bucket {}", s3.bucket));
        if !s3.prefix.is_empty() {
            line.push_str(&format!(", prefix {}", s3.prefix));
        }
    }
    line
}

/// The largest memory tier of a command that opens the store itself (no server).
const ONE_SHOT_MEMORY_TIER: u64 = 8 << 20;

async fn open(mut config: Config, need: Need) -> Result<Store, Failure> {
    let data_dir = config.data_dir.display().to_string();
    if config.store == hexmirror::config::StoreConfig::Local {
        // Looked at before admin.json, which an unusable directory cannot hold anyway.
        let holds = hexmirror::cache::disk::holds_store(&config.data_dir)
            .map_err(|e| Failure::CantCreate(format!("cannot use {data_dir} as the data directory: {e}")))?;
        if let (false, Need::Existing { named: false }) = (holds, need) {
            return Err(Failure::Config(format!("no store at {data_dir}; pass --config or --data-dir")));
        }
    }
    if let Some(admin) = AdminClient::discover(&config.data_dir).await? {
        tracing::debug!(url = admin.url(), "using the running server's admin endpoint");
        return Ok(Store::Remote(Box::new(admin)));
    }
    // A command on the store itself reads each entry about once and exits: a memory tier the
    // size of a server's would only fill with what is dropped at exit (a whole-repository sync
    // held the configured 256 MiB in tarballs on top of everything else).
    config.memory_cache_bytes = config.memory_cache_bytes.min(ONE_SHOT_MEMORY_TIER);
    let metrics = hexmirror::metrics_for(&config);
    let opened = match need {
        Need::Create => Mirror::open(config, metrics).await,
        Need::Existing { .. } => Mirror::open_existing(config, metrics).await,
    };
    opened.map(Store::Local).map_err(|e| match e {
        e if e.is_configuration() => Failure::Config(e.to_string()),
        e if e.is_unusable_data_dir() => Failure::CantCreate(e.to_string()),
        hexmirror::mirror::OpenError::Locked { .. } => Failure::Other(format!(
            "{e}\n(no running hexmirror answered at the admin endpoint recorded in {data_dir}/admin.json)"
        )),
        e => Failure::Other(e.to_string()),
    })
}

fn ok_or_failure(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The progress bar on screen, if any: log lines are written around it
/// (`ProgressBar::suspend`), so that they never break it.
static SCREEN_BAR: std::sync::Mutex<Option<indicatif::ProgressBar>> = std::sync::Mutex::new(None);

/// Where log lines go: stderr, around the progress bar while one is shown. The subscriber
/// writes each event in one call, so a line is never split by a redraw.
struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let bar = SCREEN_BAR.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match bar {
            Some(bar) => bar.suspend(|| std::io::stderr().write_all(buf)).map(|()| buf.len()),
            None => std::io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// A size as an operator reads it: MiB below a GiB, GiB above, to one decimal.
fn mib_or_gib(bytes: u64) -> String {
    const MIB: f64 = (1u64 << 20) as f64;
    const GIB: f64 = (1u64 << 30) as f64;
    match bytes as f64 {
        b if b >= GIB => format!("{:.1} GiB", b / GIB),
        b => format!("{:.1} MiB", b / MIB),
    }
}

/// Shows sync progress: a bar on a terminal, a line per item otherwise. The bar counts the
/// release tarballs planned, never more; until they are planned, a spinner counts what was
/// resolved.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    /// Items before the plan (records, lockfiles, skipped dependencies).
    resolved: std::sync::atomic::AtomicU64,
    counts: std::sync::Mutex<Counts>,
}

/// What a sync has done so far, for the counts, bytes and ETA every progress line shows.
#[derive(Default)]
struct Counts {
    /// Releases planned, and when the plan was made.
    planned: Option<(u64, std::time::Instant)>,
    /// Releases done (fetched, present or failed): those the plan found done (tarballs are
    /// fetched while it is made), then one an item.
    done: u64,
    /// What `done` was when the plan was made (the ETA is from what was done since).
    done_at_plan: u64,
    /// Bytes of what was fetched or found stored, from the start.
    bytes: u64,
    items: u64,
}

impl Counts {
    fn note(&mut self, bytes: Option<u64>) {
        self.items += 1;
        self.bytes += bytes.unwrap_or(0);
        if let Some((planned, _)) = self.planned {
            self.done = (self.done + 1).min(planned);
        }
    }

    /// `[12/1000 releases, 3.2 MiB, 0.8 MiB/s, ETA 2m 3s]`, or `[34 resolved, 1.1 MiB]`
    /// before the plan.
    fn line(&self) -> String {
        let bytes = mib_or_gib(self.bytes);
        match self.planned {
            None => format!("[{} resolved, {bytes}]", self.items),
            Some((planned, since)) => {
                let elapsed = since.elapsed().as_secs_f64();
                let rate = if elapsed > 0.0 { self.bytes as f64 / elapsed } else { 0.0 };
                let eta = match self.done - self.done_at_plan {
                    0 => "ETA unknown".to_string(),
                    since_plan => {
                        let left = elapsed / since_plan as f64 * (planned - self.done) as f64;
                        format!(
                            "ETA {}",
                            humantime::format_duration(std::time::Duration::from_secs(left.round() as u64))
                        )
                    }
                };
                format!("[{}/{planned} releases, {bytes}, {}/s, {eta}]", self.done, mib_or_gib(rate as u64))
            }
        }
    }
}

impl Progress {
    fn new() -> Progress {
        let bar = std::io::IsTerminal::is_terminal(&std::io::stderr()).then(indicatif::ProgressBar::new_spinner);
        if let Some(bar) = &bar {
            *SCREEN_BAR.lock().unwrap_or_else(|e| e.into_inner()) = Some(bar.clone());
        }
        Progress::with_bar(bar)
    }

    fn with_bar(bar: Option<indicatif::ProgressBar>) -> Progress {
        if let Some(bar) = &bar {
            bar.set_style(
                indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}").expect("valid template"),
            );
            bar.set_message("resolving");
        }
        Progress { bar, resolved: Default::default(), counts: Default::default() }
    }

    fn event(&self, event: &Event) {
        let counted = {
            let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
            match event {
                Event::Planned { releases, landed, .. } => {
                    counts.planned = Some((*releases as u64, std::time::Instant::now()));
                    counts.done = (*landed as u64).min(*releases as u64);
                    counts.done_at_plan = counts.done;
                }
                Event::Item { bytes, .. } => counts.note(*bytes),
                _ => {}
            }
            counts.line()
        };
        match (event, &self.bar) {
            (Event::Estimate { packages, releases, approx_bytes }, bar) => {
                let line = format!(
                    "--all: {packages} packages, {releases} releases, roughly {} at about 100 KiB a release",
                    mib_or_gib(*approx_bytes)
                );
                match bar {
                    Some(bar) => bar.println(line),
                    None => eprintln!("{line}"),
                }
            }
            (Event::Planned { releases, packages, landed }, Some(bar)) => {
                bar.set_style(
                    indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {msg}")
                        .expect("valid template"),
                );
                bar.set_length(*releases as u64);
                bar.set_position((*landed).min(*releases) as u64);
                bar.set_message(format!("({packages} package records)"));
            }
            (Event::Planned { releases, packages, landed }, None) => {
                eprintln!("planned: {packages} package records, {releases} releases ({landed} done already)")
            }
            (Event::Item { resource, outcome, detail, .. }, Some(bar)) => {
                match bar.length() {
                    // Past the plan (the selection's own steps): the bar is full already.
                    Some(length) if bar.position() < length => {
                        bar.inc(1);
                        bar.set_message(counted);
                    }
                    Some(_) => {}
                    None => {
                        let resolved = self.resolved.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                        bar.set_message(format!("resolving: {resolved} done {counted}"));
                        bar.tick();
                    }
                }
                if *outcome == Outcome::Failed {
                    bar.println(format!("failed  {resource}: {}", detail.clone().unwrap_or_default()));
                }
            }
            (Event::Item { resource, outcome, detail, .. }, None) => {
                let word = match outcome {
                    Outcome::Fetched => "fetched",
                    Outcome::Present => "present",
                    Outcome::Skipped => "skipped",
                    Outcome::Failed => "FAILED ",
                };
                match detail {
                    Some(detail) => eprintln!("{word} {resource} {counted}: {detail}"),
                    None => eprintln!("{word} {resource} {counted}"),
                }
            }
            (Event::Finished { .. }, Some(bar)) => {
                SCREEN_BAR.lock().unwrap_or_else(|e| e.into_inner()).take();
                bar.finish_and_clear();
            }
            (Event::Finished { .. }, None) => {}
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            SCREEN_BAR.lock().unwrap_or_else(|e| e.into_inner()).take();
            bar.finish_and_clear();
        }
    }
}

async fn sync(mut config: Config, request: SyncRequest) -> Result<ExitCode, Failure> {
    // On the store itself, a stale record is revalidated before it is used: answered at once
    // and revalidated behind, it would be planned from and then left stale when the command
    // exits (a running server, which lives on, keeps its own setting).
    config.stale_while_revalidate = std::time::Duration::ZERO;
    let progress = std::sync::Arc::new(Progress::new());
    let summary = std::sync::Arc::new(std::sync::Mutex::new(None));
    let (p, s) = (progress.clone(), summary.clone());
    let on_event = move |event: Event| {
        p.event(&event);
        if let Event::Finished { summary } = event {
            *s.lock().expect("never poisoned") = Some(summary);
        }
    };
    match open(config, Need::Create).await? {
        Store::Remote(admin) => admin.sync(&request, &on_event).await?,
        Store::Local(mirror) => {
            hexmirror::sync::run(&mirror, &request, &on_event).await;
        }
    }
    let summary = summary.lock().expect("never poisoned").clone().ok_or("the sync ended without a summary")?;
    println!(
        "sync: {} fetched, {} already present, {} skipped, {} failed",
        summary.fetched, summary.present, summary.skipped, summary.failed
    );
    for failure in &summary.failures {
        println!("  failed: {failure}");
    }
    Ok(ok_or_failure(summary.ok()))
}

async fn verify(
    config: Config,
    named: bool,
    options: hexmirror::audit::Options,
    json: bool,
) -> Result<ExitCode, Failure> {
    let data_dir = config.data_dir.clone();
    let report: AuditReport = match open(config, Need::Existing { named }).await? {
        Store::Remote(admin) => {
            let path = hexmirror::admin::request_path(
                "/_admin/verify",
                &[("repair", &options.repair.to_string()), ("prune", &options.prune.to_string())],
            );
            serde_json::from_slice(&admin.call_bytes(Method::POST, &path, Bytes::new()).await?)
                .map_err(|e| e.to_string())?
        }
        Store::Local(mirror) => hexmirror::audit::run_with(&mirror, options).await.map_err(|e| e.to_string())?,
    };
    if json {
        let damaged: Vec<_> =
            report.damaged.iter().map(|(key, reason)| serde_json::json!({ "key": key, "reason": reason })).collect();
        print_json(&serde_json::json!({
            "ok": report.ok(),
            "data_dir": data_dir,
            "checked": report.checked,
            "intact": report.intact,
            "damaged": damaged,
            "missing": report.missing,
            "repaired": report.repaired,
            "unselected_releases": report.unselected_releases,
            "pinned_over_budget": report.pinned_over_budget.map(|(pinned, budget)| {
                serde_json::json!({ "pinned_bytes": pinned, "disk_cache_bytes": budget })
            }),
            "pruned": report.pruned,
            "swept": report.swept,
        }))?;
        return Ok(ok_or_failure(report.ok()));
    }
    if options.prune {
        println!("verify: pruned {} entries not pinned, {} unreferenced objects", report.pruned, report.swept);
    }
    println!("verify: {} entries checked, {} intact", report.checked, report.intact);
    if report.checked == 0 {
        println!("  note: the store in {} holds no entries", data_dir.display());
    }
    for (key, reason) in &report.damaged {
        println!("  damaged: {key}: {reason}");
    }
    for key in &report.missing {
        println!("  missing: {key}");
    }
    for key in &report.repaired {
        println!("  repaired: {key}");
    }
    match report.unselected_releases {
        0 => {}
        1 => println!(
            "  note: 1 release listed by synced records was not selected (offline clients cannot resolve to it)"
        ),
        n => println!(
            "  note: {n} releases listed by synced records were not selected (offline clients cannot resolve to them)"
        ),
    }
    if let Some((pinned, budget)) = report.pinned_over_budget {
        println!(
            "  note: pinned entries (synced or imported) hold {pinned} bytes, more than disk_cache_bytes ({budget}): every entry that is not pinned is evicted as soon as it is written; raise disk_cache_bytes"
        );
    }
    println!("verify: {}", if report.ok() { "ok" } else { "FAILED" });
    Ok(ok_or_failure(report.ok()))
}

/// `export`'s choices besides where the bundle goes and what it follows.
struct ExportOptions {
    filter: Option<String>,
    selected: bool,
    max_size: Option<String>,
}

/// Where an export writes: one file (renamed into place when complete), or volumes.
enum Sink {
    File(std::io::BufWriter<std::fs::File>),
    Volumes(Box<hexmirror::volume::VolumeWriter>),
}

impl std::io::Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Sink::File(file) => file.write(buf),
            Sink::Volumes(volumes) => volumes.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Sink::File(file) => file.flush(),
            Sink::Volumes(volumes) => volumes.flush(),
        }
    }
}

/// A bundle named on the command line: one file, or volumes (or their directory).
fn bundle_source(files: &[PathBuf]) -> Result<hexmirror::volume::Source, Failure> {
    Ok(hexmirror::volume::Source::open(files).map_err(|e| e.to_string())?)
}

fn read_manifest(source: &hexmirror::volume::Source) -> Result<(hexmirror::bundle::Manifest, String), Failure> {
    let reader = source.reader().map_err(|e| format!("{}: {e}", source.describe()))?;
    Ok(hexmirror::bundle::read_manifest(reader, &hexmirror::transfer::limits())
        .map_err(|e| format!("{}: {e}", source.describe()))?)
}

async fn export(
    config: Config,
    named: bool,
    out: PathBuf,
    base: Option<PathBuf>,
    options: ExportOptions,
) -> Result<ExitCode, Failure> {
    let max_size = match &options.max_size {
        Some(text) => Some(
            hexmirror::config::parse_size(text).map_err(|e| Failure::Config(format!("--max-size: {e}"))).and_then(
                |size| match size < hexmirror::volume::MIN_VOLUME {
                    true => Err(Failure::Config(format!(
                        "--max-size: {text} is below the smallest volume ({} bytes)",
                        hexmirror::volume::MIN_VOLUME
                    ))),
                    false => Ok(size),
                },
            )?,
        ),
        None => None,
    };
    let mut request = ExportRequest { filter: options.filter, selected_only: options.selected, ..Default::default() };
    if let Some(base) = base {
        let (manifest, digest) = read_manifest(&bundle_source(&[base])?)?;
        request.base = Some(manifest);
        request.base_digest = Some(digest);
    }
    let tmp = out.with_extension("partial");
    let create = |len: u64| -> std::io::Result<Sink> {
        if let Some(max_size) = max_size {
            return hexmirror::volume::VolumeWriter::create(&out, max_size, len).map(|v| Sink::Volumes(Box::new(v)));
        }
        let file = std::fs::File::create(&tmp)
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", tmp.display())))?;
        Ok(Sink::File(std::io::BufWriter::new(file)))
    };
    let mut created: Option<Sink> = None;
    let mut exported = None;
    let written: Result<(), Failure> = async {
        match open(config, Need::Existing { named }).await? {
            // Streamed from the server to the file or volumes as it arrives.
            Store::Remote(admin) => {
                exported = Some(admin.export(&request, |len| Ok(created.insert(create(len)?))).await?);
            }
            // Streamed to the file: one object in memory at a time, whatever the bundle's size.
            Store::Local(mirror) => {
                exported = Some(
                    hexmirror::transfer::export_to(&mirror, &request, |len| Ok(created.insert(create(len)?))).await?,
                );
            }
        }
        Ok(())
    }
    .await;
    if let Err(e) = written {
        drop(created);
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    let source = match created.ok_or("export: nothing written")? {
        Sink::File(writer) => {
            let file = writer.into_inner().map_err(|e| format!("{}: {e}", tmp.display()))?;
            file.sync_all().map_err(|e| format!("{}: {e}", tmp.display()))?;
            drop(file);
            std::fs::rename(&tmp, &out).map_err(|e| format!("{}: {e}", out.display()))?;
            hexmirror::volume::Source::File(out.clone())
        }
        Sink::Volumes(volumes) => {
            let paths = volumes.finish().map_err(|e| format!("{}: {e}", out.display()))?;
            bundle_source(&paths)?
        }
    };
    // What was written is known: the bundle is not read again for its digest or counts.
    let exported = exported.ok_or("export: nothing written")?;
    let (digest, totals, size) = (&exported.digest, exported.totals, exported.len);
    let place = match &source {
        hexmirror::volume::Source::File(path) => {
            // FILE.sha256 beside FILE, in `sha256sum -c` form: checkable wherever both are carried.
            let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let mut sums = path.clone().into_os_string();
            sums.push(".sha256");
            std::fs::write(&sums, format!("{digest}  {name}\n")).map_err(|e| e.to_string())?;
            out.display().to_string()
        }
        hexmirror::volume::Source::Volumes(volumes) => format!(
            "{} volumes, {} to {} (each with its .sha256)",
            volumes.len(),
            volumes[0].0.display(),
            volumes[volumes.len() - 1].0.display()
        ),
    };
    println!(
        "export: {} objects ({} packages, {} bytes) to {place}\nsha256: {digest}",
        totals.objects, totals.packages, size,
    );
    for blocked in &exported.blocked {
        println!("  left out, blocked by policy: {blocked}");
    }
    Ok(ExitCode::SUCCESS)
}

async fn import(config: Config, files: Vec<PathBuf>) -> Result<ExitCode, Failure> {
    let source = bundle_source(&files)?;
    let report: ImportReport = match open(config, Need::Create).await? {
        // Streamed to the server, which holds it on disk while verifying.
        Store::Remote(admin) => admin.import(&source).await?,
        // Read as a stream: memory does not grow with the bundle.
        Store::Local(mirror) => hexmirror::transfer::import_source(&mirror, &source).await?,
    };
    println!(
        "import: {} objects verified; {} new, {} already present\nsha256: {}",
        report.objects, report.new, report.unchanged, report.digest
    );
    if report.resumed > 0 {
        println!("  resumed: {} objects verified by an interrupted import of this bundle were kept", report.resumed);
    }
    for blocked in &report.blocked {
        println!("  left out, blocked by policy: {blocked}");
    }
    Ok(ExitCode::SUCCESS)
}

async fn inspect(
    config: Config,
    named: bool,
    files: Vec<PathBuf>,
    packages: bool,
    json: bool,
) -> Result<ExitCode, Failure> {
    let source = bundle_source(&files)?;
    let (manifest, digest) = read_manifest(&source)?;
    let file = source.describe();
    if !json {
        println!("bundle: {file}\nsha256: {digest}");
        let totals = &manifest.totals;
        println!("holds: {} objects, {} packages, {} bytes", totals.objects, totals.packages, totals.bytes);
        if let Some(base) = &manifest.base {
            println!("incremental to: {} ({} objects)", base.sha256, base.objects);
        }
        if packages {
            for p in &manifest.packages {
                println!(
                    "  {} {} {} {} bytes [{}] {}",
                    repository_display(&p.repo),
                    p.name,
                    p.version,
                    p.size,
                    p.licenses.join(", "),
                    p.outer_checksum
                );
            }
        }
    }
    let rows = match open(config, Need::Existing { named }).await {
        Ok(Store::Remote(admin)) => Ok(serde_json::from_slice::<Vec<CacheRow>>(
            &admin.call_bytes(Method::GET, "/_admin/cache", Bytes::new()).await?,
        )
        .map_err(|e| e.to_string())?),
        Ok(Store::Local(mirror)) => {
            Ok(hexmirror::admin::cache_rows(&mirror, "", None).await.map_err(|e| e.to_string())?)
        }
        Err(Failure::Refused(refused)) => return Err(Failure::Refused(refused)),
        Err(e) => Err(e.to_string()),
    };
    let compared = rows.as_ref().ok().map(|rows| {
        let store: std::collections::BTreeMap<String, String> =
            rows.iter().map(|r| (r.key.clone(), r.sha256.clone())).collect();
        let pinned = rows.iter().filter(|r| r.pinned).count() as u64;
        let missing_base = hexmirror::bundle::missing_base(&manifest, pinned, |key| store.contains_key(key));
        (hexmirror::bundle::diff(&manifest, &store), missing_base)
    });
    let base = manifest.base.as_ref().map(|b| b.sha256.as_str()).unwrap_or_default();
    let warning = |why: &str| {
        format!("this bundle builds on {base}, which the store does not seem to hold ({why}); import that first")
    };
    if json {
        let store = match (&rows, &compared) {
            (Ok(_), Some((diff, _))) => {
                serde_json::json!({ "new": diff.new, "changed": diff.changed, "same": diff.same })
            }
            _ => serde_json::Value::Null,
        };
        let warnings: Vec<String> =
            compared.iter().filter_map(|(_, missing)| missing.as_deref().map(warning)).collect();
        print_json(&serde_json::json!({
            "bundle": file,
            "sha256": digest,
            "totals": manifest.totals,
            "base": manifest.base,
            "packages": manifest.packages,
            "store": store,
            "no_store": rows.as_ref().err(),
            "warnings": warnings,
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    let Some((diff, missing_base)) = compared else {
        println!("(no store to compare with: {})", rows.err().unwrap_or_default());
        return Ok(ExitCode::SUCCESS);
    };
    println!(
        "against the store: {} new, {} changed, {} already present",
        diff.new.len(),
        diff.changed.len(),
        diff.same
    );
    for key in &diff.changed {
        println!("  changed: {key}");
    }
    if let Some(why) = missing_base {
        println!("warning: {}", warning(&why));
    }
    Ok(ExitCode::SUCCESS)
}

async fn cache(config: Config, named: bool, action: CacheAction) -> Result<ExitCode, Failure> {
    let store = open(config, Need::Existing { named }).await?;
    let rows: Vec<CacheRow> = match (&action, &store) {
        (CacheAction::List { filter, .. }, Store::Remote(admin)) => {
            let path = hexmirror::admin::request_path("/_admin/cache", &[("filter", filter.as_deref().unwrap_or(""))]);
            serde_json::from_slice(&admin.call_bytes(Method::GET, &path, Bytes::new()).await?)
                .map_err(|e| e.to_string())?
        }
        (CacheAction::List { filter, .. }, Store::Local(mirror)) => {
            hexmirror::admin::cache_rows(mirror, filter.as_deref().unwrap_or(""), None)
                .await
                .map_err(|e| e.to_string())?
        }
        (CacheAction::Show { name, .. }, Store::Remote(admin)) => {
            let path = hexmirror::admin::request_path("/_admin/cache", &[("package", name)]);
            serde_json::from_slice(&admin.call_bytes(Method::GET, &path, Bytes::new()).await?)
                .map_err(|e| e.to_string())?
        }
        (CacheAction::Show { name, .. }, Store::Local(mirror)) => {
            hexmirror::admin::cache_rows(mirror, "", Some(name)).await.map_err(|e| e.to_string())?
        }
        (CacheAction::Purge { name, repo, dry_run }, _) => {
            hexmirror::route::package_name(name).map_err(|e| e.to_string())?;
            let removed: Vec<String> = match &store {
                Store::Remote(admin) => {
                    let mut query = vec![("package", name.as_str())];
                    if let Some(repo) = repo {
                        query.push(("repo", repo.as_str()));
                    }
                    if *dry_run {
                        query.push(("dry_run", "1"));
                    }
                    let path = hexmirror::admin::request_path("/_admin/purge", &query);
                    serde_json::from_slice(&admin.call_bytes(Method::POST, &path, Bytes::new()).await?)
                        .map_err(|e| e.to_string())?
                }
                Store::Local(mirror) => {
                    mirror.purge(name, repo.as_deref(), *dry_run).await.map_err(|e| e.to_string())?
                }
            };
            let scope = repo.as_ref().map(|r| format!(" in repository {r}")).unwrap_or_default();
            if removed.is_empty() {
                return Err(format!("purge: nothing stored for package {name}{scope}; nothing removed").into());
            }
            let verb = if *dry_run { "would remove" } else { "removed" };
            for key in &removed {
                println!("{verb} {key}");
            }
            println!("purge: {} entries {verb}{scope}", removed.len());
            if !*dry_run {
                println!(
                    "note: entries that sync or import selected are reported missing by `hexmirror verify` until the next sync or import brings them back"
                );
            }
            return Ok(ExitCode::SUCCESS);
        }
    };
    match action {
        CacheAction::List { json: true, .. } | CacheAction::Show { json: true, .. } => {
            print_json(&rows.iter().map(cache_row_json).collect::<Vec<_>>())?;
        }
        _ => print!("{}", cache_table(&rows)),
    }
    let bytes: u64 = rows.iter().map(|r| r.size).sum();
    let entries = if rows.len() == 1 { "entry" } else { "entries" };
    eprintln!("{} {entries}, {bytes} bytes", rows.len());
    Ok(ExitCode::SUCCESS)
}

/// How a cache namespace is shown: `hexpm~acme` is `acme (hex.pm organization)`.
fn repository_display(namespace: &str) -> String {
    match namespace.split_once('~') {
        Some((_, org)) => format!("{org} (hex.pm organization)"),
        None => namespace.to_string(),
    }
}

/// `cache list` and `cache show`: a header row, then one row per entry in key order, each
/// column as wide as its widest cell (the same store prints the same table every time).
fn cache_table(rows: &[CacheRow]) -> String {
    if rows.is_empty() {
        return String::new();
    }
    let header = ["REPOSITORY", "RESOURCE", "SIZE", "CLASS", "FETCHED (UTC)", "PINNED", "PRIVATE"];
    let yes_no = |b: bool| if b { "yes" } else { "no" }.to_string();
    let cells: Vec<[String; 7]> = rows
        .iter()
        .map(|row| {
            let key = hexmirror::cache::CacheKey::parse(&row.key);
            let (repo, resource) = match &key {
                Some(key) => (repository_display(key.namespace()), key.resource().path()),
                None => (String::new(), row.key.clone()),
            };
            [
                repo,
                resource,
                row.size.to_string(),
                row.class.clone(),
                fetched_text(row.fetched_at),
                yes_no(row.pinned),
                yes_no(row.private),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: [&str; 7]| {
        let mut text = String::new();
        for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
            match i {
                2 => text.push_str(&format!("{cell:>width$}  ")),
                6 => text.push_str(cell),
                _ => text.push_str(&format!("{cell:<width$}  ")),
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(header);
    for row in &cells {
        line(row.each_ref().map(String::as_str));
    }
    out
}

/// A time as RFC 3339 in UTC to the second.
fn fetched_text(unix_seconds: u64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix_seconds);
    humantime::format_rfc3339_seconds(time).to_string()
}

/// One entry of `cache list --json`.
fn cache_row_json(row: &CacheRow) -> serde_json::Value {
    let key = hexmirror::cache::CacheKey::parse(&row.key);
    let namespace = key.as_ref().map(|k| k.namespace().to_string());
    let (repository, organization) = match namespace.as_deref().and_then(|n| n.split_once('~')) {
        Some((repo, org)) => (Some(repo.to_string()), Some(org.to_string())),
        None => (namespace.clone(), None),
    };
    serde_json::json!({
        "key": row.key,
        "repository": repository,
        "organization": organization,
        "resource": key.as_ref().map(|k| k.resource().path()),
        "kind": row.kind,
        "class": row.class,
        "size": row.size,
        "sha256": row.sha256,
        "fetched_at": fetched_text(row.fetched_at),
        "pinned": row.pinned,
        "private": row.private,
    })
}

/// Prints `value` as pretty JSON on stdout.
fn print_json(value: &impl serde::Serialize) -> Result<(), Failure> {
    println!("{}", serde_json::to_string_pretty(value).map_err(|e| e.to_string())?);
    Ok(())
}

async fn refusals(config: Config, named: bool, json: bool) -> Result<ExitCode, Failure> {
    let (refusals, whose): (Vec<hexmirror::mirror::Refusal>, &str) =
        match open(config, Need::Existing { named }).await? {
            Store::Remote(admin) => {
                let bytes = admin.call_bytes(Method::GET, "/_admin/refusals", Bytes::new()).await?;
                (serde_json::from_slice(&bytes).map_err(|e| e.to_string())?, "the running server's")
            }
            Store::Local(mirror) => {
                (mirror.saved_refusals().await.map_err(|e| e.to_string())?, "kept in the store (no running server)")
            }
        };
    if json {
        print_json(&refusals)?;
        return Ok(ExitCode::SUCCESS);
    }
    for r in &refusals {
        println!("{} {} {} from {}: {}", r.time, repository_display(&r.repo), r.resource, r.upstream, r.reason);
    }
    println!("{} refusals, {whose}", refusals.len());
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum MissingFormat {
    Text,
    Requirements,
    Json,
}

async fn missing(
    config: Config,
    named: bool,
    format: MissingFormat,
    out: Option<PathBuf>,
) -> Result<ExitCode, Failure> {
    let missing: Vec<hexmirror::mirror::missing::Missing> = match open(config, Need::Existing { named }).await? {
        Store::Remote(admin) => {
            serde_json::from_slice(&admin.call_bytes(Method::GET, "/_admin/missing", Bytes::new()).await?)
                .map_err(|e| e.to_string())?
        }
        Store::Local(mirror) => mirror.missing().await.map_err(|e| e.to_string())?,
    };
    let text = match format {
        MissingFormat::Json => serde_json::to_string_pretty(&missing).map_err(|e| e.to_string())? + "\n",
        MissingFormat::Requirements => {
            let mut lines: Vec<String> = missing.iter().map(|m| m.requirement_line()).collect();
            lines.sort();
            lines.dedup();
            lines.iter().map(|l| format!("{l}\n")).collect()
        }
        MissingFormat::Text => {
            let mut text = format!(
                "{:<24} {:<32} {:<14} {:>7}  {:<24} {:<24}\n",
                "REPOSITORY", "PACKAGE", "VERSION", "ASKED", "FIRST", "LAST"
            );
            for m in &missing {
                let repo = repository_display(&m.repo);
                let time = |ms: u64| {
                    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
                        .to_string()
                };
                text.push_str(&format!(
                    "{:<24} {:<32} {:<14} {:>7}  {:<24} {:<24}\n",
                    repo,
                    m.package,
                    m.version.as_deref().unwrap_or("(record)"),
                    m.count,
                    time(m.first),
                    time(m.last)
                ));
            }
            text
        }
    };
    match out {
        Some(path) => std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?,
        None => print!("{text}"),
    }
    if format == MissingFormat::Text {
        eprintln!("{} things asked for and missing", missing.len());
    }
    Ok(ExitCode::SUCCESS)
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT received"),
        _ = term => tracing::info!("SIGTERM received"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_argument_has_help_text() {
        use clap::CommandFactory;
        fn undocumented(command: &clap::Command, path: &str, out: &mut Vec<String>) {
            for arg in command.get_arguments() {
                let id = arg.get_id().as_str();
                if id != "help" && id != "version" && arg.get_help().is_none() && arg.get_long_help().is_none() {
                    out.push(format!("{path} {id}"));
                }
            }
            for sub in command.get_subcommands() {
                undocumented(sub, &format!("{path} {}", sub.get_name()), out);
            }
        }
        Cli::command().debug_assert();
        let mut missing = Vec::new();
        undocumented(&Cli::command(), "hexmirror", &mut missing);
        assert!(missing.is_empty(), "arguments without help text: {missing:?}");
    }

    #[test]
    fn the_progress_bar_never_counts_past_its_length() {
        let bar = indicatif::ProgressBar::hidden();
        let progress = Progress::with_bar(Some(bar.clone()));
        let item = |outcome| Event::Item { resource: "r".into(), outcome, detail: None, bytes: Some(1 << 20) };
        // Records, a skipped dependency and a failure before the plan; then the releases, and
        // the selection's own steps after them.
        for outcome in [Outcome::Fetched, Outcome::Present, Outcome::Skipped, Outcome::Failed] {
            progress.event(&item(outcome));
            assert_eq!(bar.length(), None, "a spinner until the plan");
        }
        // Three tarballs landed while the plan was made: the bar starts there.
        progress.event(&Event::Planned { releases: 8, packages: 2, landed: 3 });
        assert_eq!(bar.position(), 3);
        for _ in 0..12 {
            progress.event(&item(Outcome::Fetched));
            assert!(bar.position() <= bar.length().unwrap(), "{}/{:?}", bar.position(), bar.length());
        }
        assert_eq!((bar.position(), bar.length()), (8, Some(8)));
        let line = progress.counts.lock().unwrap().line();
        assert!(line.starts_with("[8/8 releases, 16.0 MiB, "), "{line}");
        assert!(line.ends_with("ETA 0s]"), "{line}");
    }

    #[test]
    fn progress_lines_count_releases_and_bytes_and_estimate_what_is_left() {
        let mut counts = Counts::default();
        counts.note(Some(512 << 10));
        assert_eq!(counts.line(), "[1 resolved, 0.5 MiB]");
        counts.planned = Some((4, std::time::Instant::now() - std::time::Duration::from_secs(10)));
        assert!(counts.line().ends_with("ETA unknown]"), "{}", counts.line());
        counts.note(Some(1 << 20));
        // One of four releases took 10 s: three more take about 30 s.
        let line = counts.line();
        assert!(line.starts_with("[1/4 releases, 1.5 MiB, 0.1 MiB/s, ETA 30s"), "{line}");
    }

    #[test]
    fn the_all_estimate_is_in_mib_or_gib_as_it_comes() {
        assert_eq!(mib_or_gib(8 * (100 << 10)), "0.8 MiB");
        assert_eq!(mib_or_gib(300 << 20), "300.0 MiB");
        assert_eq!(mib_or_gib(17_000 * (100 << 10) * 10), "16.2 GiB");
    }
}
