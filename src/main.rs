//! The `hexmirror` command line: parses arguments, loads the configuration, sets up logging and
//! calls into the library. A bad configuration exits with status 64 and one line per mistake.
//!
//! Every command but `serve` and `inspect` works on the store of the configured `data_dir`:
//! through the admin endpoint of a running server when one answers (see `admin`), otherwise by
//! opening the store itself. A command that finds a `DATA_DIR/admin.json` another user could
//! have written refuses it, with one line saying why and exit status 77, and contacts nothing.

use std::path::PathBuf;
use std::process::ExitCode;

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
        /// A package, optionally with a requirement: `phoenix`, `"ecto ~> 3.10"`.
        #[arg(long = "package", value_name = "SPEC")]
        packages: Vec<String>,
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
    },
    /// Write the store (or a selection) into one portable bundle.
    Export {
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
    },
    /// Import a bundle, verifying every object before accepting any.
    Import { file: PathBuf },
    /// Show a bundle's manifest, and what it would change in the configured store.
    Inspect {
        file: PathBuf,
        /// Print every package release.
        #[arg(long)]
        packages: bool,
    },
    /// What the cache holds.
    Cache {
        #[command(subcommand)]
        action: CacheAction,
    },
    /// The last upstream answers refused by verification.
    Refusals,
    /// Validate the configuration and print it with every effective value, secrets redacted
    /// (exit 0), or print every mistake (exit 64).
    CheckConfig,
}

#[derive(Subcommand)]
enum CacheAction {
    /// List entries (optionally those whose key contains FILTER).
    List { filter: Option<String> },
    /// Show the entries of one package.
    Show { name: String },
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
/// EX_NOPERM: `admin.json`, or its directory, could have been written by another user.
const EXIT_REFUSED: u8 = 77;

/// Why a command failed.
enum Failure {
    /// `admin.json` was not trusted, so nothing was sent to the endpoint it names.
    Refused(Refused),
    /// The configuration names something that cannot be used (a bucket that does not exist,
    /// credentials the store refuses): exit status 64, like any configuration mistake.
    Config(String),
    Other(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Refused(refused) => refused.fmt(f),
            Failure::Config(message) | Failure::Other(message) => f.write_str(message),
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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    for name in hexmirror::config::ignored_environment() {
        tracing::debug!(variable = %name, "environment: not a configuration key (the config path or a Kubernetes service link); ignored");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
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
                packages,
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
            Command::Verify { repair, prune } => verify(config, hexmirror::audit::Options { repair, prune }).await,
            Command::Export { out, base, filter, selected } => export(config, out, base, filter, selected).await,
            Command::Import { file } => import(config, file).await,
            Command::Inspect { file, packages } => inspect(config, file, packages).await,
            Command::Cache { action } => cache(config, action).await,
            Command::Refusals => refusals(config).await,
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
                Failure::Other(_) => ExitCode::FAILURE,
            }
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

async fn open(config: Config) -> Result<Store, Failure> {
    if let Some(admin) = AdminClient::discover(&config.data_dir).await? {
        tracing::debug!(url = admin.url(), "using the running server's admin endpoint");
        return Ok(Store::Remote(Box::new(admin)));
    }
    let metrics = hexmirror::metrics_for(&config);
    let data_dir = config.data_dir.display().to_string();
    Mirror::open(config, metrics).await.map(Store::Local).map_err(|e| {
        if e.is_configuration() {
            return Failure::Config(e.to_string());
        }
        Failure::Other(format!(
            "{e}\n(no running hexmirror answered at the admin endpoint recorded in {data_dir}/admin.json)"
        ))
    })
}

fn ok_or_failure(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Shows sync progress: a bar on a terminal, a line per item otherwise.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    fn new() -> Progress {
        let bar = std::io::IsTerminal::is_terminal(&std::io::stderr()).then(|| {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.set_style(
                indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
                    .expect("valid template"),
            );
            bar.set_message("resolving");
            bar
        });
        Progress { bar }
    }

    fn event(&self, event: &Event) {
        match (event, &self.bar) {
            (Event::Estimate { packages, releases, approx_bytes }, bar) => {
                let line = format!(
                    "--all: {packages} packages, {releases} releases, roughly {} GiB at about 100 KiB a release",
                    approx_bytes.div_ceil(1 << 30)
                );
                match bar {
                    Some(bar) => bar.println(line),
                    None => eprintln!("{line}"),
                }
            }
            (Event::Planned { releases, packages }, Some(bar)) => {
                bar.set_length((*releases + *packages) as u64);
                bar.set_message(format!("{packages} records, {releases} releases"));
            }
            (Event::Planned { releases, packages }, None) => {
                eprintln!("planned: {packages} package records, {releases} releases")
            }
            (Event::Item { resource, outcome, detail }, Some(bar)) => {
                bar.inc(1);
                if *outcome == Outcome::Failed {
                    bar.println(format!("failed  {resource}: {}", detail.clone().unwrap_or_default()));
                }
            }
            (Event::Item { resource, outcome, detail }, None) => {
                let word = match outcome {
                    Outcome::Fetched => "fetched",
                    Outcome::Present => "present",
                    Outcome::Skipped => "skipped",
                    Outcome::Failed => "FAILED ",
                };
                match detail {
                    Some(detail) => eprintln!("{word} {resource}: {detail}"),
                    None => eprintln!("{word} {resource}"),
                }
            }
            (Event::Finished { .. }, Some(bar)) => bar.finish_and_clear(),
            (Event::Finished { .. }, None) => {}
        }
    }
}

async fn sync(config: Config, request: SyncRequest) -> Result<ExitCode, Failure> {
    let progress = std::sync::Arc::new(Progress::new());
    let summary = std::sync::Arc::new(std::sync::Mutex::new(None));
    let (p, s) = (progress.clone(), summary.clone());
    let on_event = move |event: Event| {
        p.event(&event);
        if let Event::Finished { summary } = event {
            *s.lock().expect("never poisoned") = Some(summary);
        }
    };
    match open(config).await? {
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

async fn verify(config: Config, options: hexmirror::audit::Options) -> Result<ExitCode, Failure> {
    let report: AuditReport = match open(config).await? {
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
    if options.prune {
        println!("verify: pruned {} entries not pinned, {} unreferenced objects", report.pruned, report.swept);
    }
    println!("verify: {} entries checked, {} intact", report.checked, report.intact);
    for (key, reason) in &report.damaged {
        println!("  damaged: {key}: {reason}");
    }
    for key in &report.missing {
        println!("  missing: {key}");
    }
    for key in &report.repaired {
        println!("  repaired: {key}");
    }
    if report.unselected_releases > 0 {
        println!(
            "  note: {} releases listed by synced records were not selected (offline clients cannot resolve to them)",
            report.unselected_releases
        );
    }
    if let Some((pinned, budget)) = report.pinned_over_budget {
        println!(
            "  note: pinned entries (synced or imported) hold {pinned} bytes, more than disk_cache_bytes ({budget}): every entry that is not pinned is evicted as soon as it is written; raise disk_cache_bytes"
        );
    }
    println!("verify: {}", if report.ok() { "ok" } else { "FAILED" });
    Ok(ok_or_failure(report.ok()))
}

async fn export(
    config: Config,
    out: PathBuf,
    base: Option<PathBuf>,
    filter: Option<String>,
    selected: bool,
) -> Result<ExitCode, Failure> {
    let mut request = ExportRequest { filter, selected_only: selected, ..Default::default() };
    if let Some(base) = base {
        let file = std::fs::File::open(&base).map_err(|e| format!("{}: {e}", base.display()))?;
        let (manifest, digest) =
            hexmirror::bundle::read_manifest(std::io::BufReader::new(file), &hexmirror::transfer::limits())
                .map_err(|e| format!("{}: {e}", base.display()))?;
        request.base = Some(manifest);
        request.base_digest = Some(digest);
    }
    let tmp = out.with_extension("partial");
    let create = || -> std::io::Result<std::io::BufWriter<std::fs::File>> {
        let file = std::fs::File::create(&tmp)
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", tmp.display())))?;
        Ok(std::io::BufWriter::new(file))
    };
    let mut created = None;
    let written: Result<(), Failure> = async {
        match open(config).await? {
            Store::Remote(admin) => {
                let body = Bytes::from(serde_json::to_vec(&request).map_err(|e| e.to_string())?);
                let bytes = admin.call_bytes(Method::POST, "/_admin/export", body).await?;
                let writer = created.insert(create().map_err(|e| e.to_string())?);
                std::io::Write::write_all(writer, &bytes).map_err(|e| format!("{}: {e}", tmp.display()))?;
            }
            // Streamed to the file: one object in memory at a time, whatever the bundle's size.
            Store::Local(mirror) => {
                hexmirror::transfer::export_to(&mirror, &request, || Ok(created.insert(create()?))).await?;
            }
        }
        Ok(())
    }
    .await;
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    let writer = created.ok_or("export: nothing written")?;
    let file = writer.into_inner().map_err(|e| format!("{}: {e}", tmp.display()))?;
    file.sync_all().map_err(|e| format!("{}: {e}", tmp.display()))?;
    drop(file);
    std::fs::rename(&tmp, &out).map_err(|e| format!("{}: {e}", out.display()))?;
    let reader = std::fs::File::open(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let size = reader.metadata().map_err(|e| format!("{}: {e}", out.display()))?.len();
    let (manifest, digest) =
        hexmirror::bundle::read_manifest(std::io::BufReader::new(reader), &hexmirror::transfer::limits())
            .map_err(|e| e.to_string())?;
    std::fs::write(out.with_extension("sha256"), format!("{digest}  {}\n", out.display()))
        .map_err(|e| e.to_string())?;
    println!(
        "export: {} objects ({} packages, {} bytes) to {}\nsha256: {digest}",
        manifest.objects.len(),
        manifest.packages.len(),
        size,
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}

async fn import(config: Config, file: PathBuf) -> Result<ExitCode, Failure> {
    let report: ImportReport = match open(config).await? {
        Store::Remote(admin) => {
            let bytes = std::fs::read(&file).map_err(|e| format!("{}: {e}", file.display()))?;
            serde_json::from_slice(&admin.call_bytes(Method::POST, "/_admin/import", Bytes::from(bytes)).await?)
                .map_err(|e| e.to_string())?
        }
        // Read as a stream: memory does not grow with the bundle.
        Store::Local(mirror) => hexmirror::transfer::import_file(&mirror, &file).await?,
    };
    println!(
        "import: {} objects verified; {} new, {} already present\nsha256: {}",
        report.objects, report.new, report.unchanged, report.digest
    );
    Ok(ExitCode::SUCCESS)
}

async fn inspect(config: Config, file: PathBuf, packages: bool) -> Result<ExitCode, Failure> {
    let reader = std::fs::File::open(&file).map_err(|e| format!("{}: {e}", file.display()))?;
    let (manifest, digest) =
        hexmirror::bundle::read_manifest(std::io::BufReader::new(reader), &hexmirror::transfer::limits())
            .map_err(|e| format!("{}: {e}", file.display()))?;
    println!("bundle: {}\nsha256: {digest}", file.display());
    println!("{}", serde_json::to_string_pretty(&manifest.totals).map_err(|e| e.to_string())?);
    if let Some(base) = &manifest.base {
        println!("incremental to: {}", base.sha256);
    }
    if packages {
        for p in &manifest.packages {
            println!(
                "  {} {} {} {} bytes [{}] {}",
                p.repo,
                p.name,
                p.version,
                p.size,
                p.licenses.join(", "),
                p.outer_checksum
            );
        }
    }
    let rows = match open(config).await {
        Ok(Store::Remote(admin)) => serde_json::from_slice::<Vec<CacheRow>>(
            &admin.call_bytes(Method::GET, "/_admin/cache", Bytes::new()).await?,
        )
        .map_err(|e| e.to_string())?,
        Ok(Store::Local(mirror)) => hexmirror::admin::cache_rows(&mirror, "", None).await.map_err(|e| e.to_string())?,
        Err(Failure::Refused(refused)) => return Err(Failure::Refused(refused)),
        Err(e) => {
            println!("(no store to compare with: {e})");
            return Ok(ExitCode::SUCCESS);
        }
    };
    let store: std::collections::BTreeMap<String, String> =
        rows.iter().map(|r| (r.key.clone(), r.sha256.clone())).collect();
    let diff = hexmirror::bundle::diff(&manifest, &store);
    println!(
        "against the store: {} new, {} changed, {} already present",
        diff.new.len(),
        diff.changed.len(),
        diff.same
    );
    for key in &diff.changed {
        println!("  changed: {key}");
    }
    Ok(ExitCode::SUCCESS)
}

async fn cache(config: Config, action: CacheAction) -> Result<ExitCode, Failure> {
    let store = open(config).await?;
    let rows: Vec<CacheRow> = match (&action, &store) {
        (CacheAction::List { filter }, Store::Remote(admin)) => {
            let path = hexmirror::admin::request_path("/_admin/cache", &[("filter", filter.as_deref().unwrap_or(""))]);
            serde_json::from_slice(&admin.call_bytes(Method::GET, &path, Bytes::new()).await?)
                .map_err(|e| e.to_string())?
        }
        (CacheAction::List { filter }, Store::Local(mirror)) => {
            hexmirror::admin::cache_rows(mirror, filter.as_deref().unwrap_or(""), None)
                .await
                .map_err(|e| e.to_string())?
        }
        (CacheAction::Show { name }, Store::Remote(admin)) => {
            let path = hexmirror::admin::request_path("/_admin/cache", &[("package", name)]);
            serde_json::from_slice(&admin.call_bytes(Method::GET, &path, Bytes::new()).await?)
                .map_err(|e| e.to_string())?
        }
        (CacheAction::Show { name }, Store::Local(mirror)) => {
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
    for row in &rows {
        println!(
            "{:<70} {:>10} {:<9} {}{}",
            row.key,
            row.size,
            row.class,
            if row.pinned { "pinned " } else { "" },
            if row.private { "private" } else { "" }
        );
    }
    println!("{} entries, {} bytes", rows.len(), rows.iter().map(|r| r.size).sum::<u64>());
    Ok(ExitCode::SUCCESS)
}

async fn refusals(config: Config) -> Result<ExitCode, Failure> {
    match open(config).await? {
        Store::Remote(admin) => {
            let bytes = admin.call_bytes(Method::GET, "/_admin/refusals", Bytes::new()).await?;
            let refusals: Vec<hexmirror::mirror::Refusal> =
                serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
            for r in &refusals {
                println!("{} {} {} from {}: {}", r.time, r.repo, r.resource, r.upstream, r.reason);
            }
            println!("{} refusals since the server started", refusals.len());
        }
        Store::Local(_) => println!("no running server: refusals are kept in the server's memory only"),
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
