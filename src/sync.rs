//! Pre-fetching for air-gapped sites: select releases, resolve their dependency closure from
//! verified package records, and fill the store through the mirror's own verified data path.
//!
//! `run` never writes to the store itself: every record and tarball is requested through
//! [`Mirror::get`], so it is verified exactly as a client request would be, coalesced with
//! concurrent client requests, and stored crash-safely. What a sync selects is pinned (never
//! evicted) and recorded in the store's selection (`Store::select`), which `audit` checks for
//! completeness. A second run finds what is already stored (a hit, or a cheap 304 for records
//! past their TTL), so sync is incremental and resumes after an interruption without
//! refetching what is done.
//!
//! It decodes no registry file itself: the releases, dependencies, package names and counts it
//! works from are the facts `verify` decoded while verifying each reply
//! ([`crate::mirror::Reply::facts`], [`crate::verify::Facts`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{self, StreamExt};
use futures::FutureExt;
use serde::{Deserialize, Serialize};

use crate::lockfile::{self, LockedPackage};
use crate::metrics::CacheStatus;
use crate::mirror::{ClientCredentials, Mirror, MirrorError, Reply, Target};
use crate::registry::Package;
use crate::requirement::{parse_version, PackageSpec, Requirement};
use crate::route::Resource;
use crate::upstream::UpstreamError;
use crate::verify::{Facts, Release, Releases};

/// What to sync. Built by the command line and sent as JSON to a running server.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SyncRequest {
    /// `/repos/NAME` repository or organization; `None` is the root (hexpm).
    pub repo: Option<String>,
    /// `name` or `name requirement` (`"ecto ~> 3.10"`, `and`/`or` allowed), each optionally
    /// `REPO/` first for another repository or a hex.pm organization (`"acme/secret ~> 1.0"`).
    pub packages: Vec<String>,
    /// Lockfiles as (file name, content): mix.lock or rebar.lock.
    pub lockfiles: Vec<(String, String)>,
    /// Every package of the repository.
    pub all: bool,
    pub include_prereleases: bool,
    pub include_retired: bool,
    /// Follow dependencies (default true on the command line).
    pub dependencies: bool,
    pub include_optional: bool,
    /// Also `/installs/` (mix local.hex, mix local.rebar).
    pub installers: bool,
    /// Requests at once, for records and tarballs alike.
    pub concurrency: usize,
    /// At most this many requests a second (`None`: no limit). A 429's `Retry-After` is
    /// honoured either way.
    pub rate: Option<f64>,
    /// How many releases of verified package records the plan keeps for dependencies still to
    /// be resolved (default [`RECENT_RELEASES`]); not part of the request a server is sent.
    #[doc(hidden)]
    #[serde(skip)]
    pub recent_releases: Option<u64>,
}

/// One step of a sync, reported as it happens.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// `--all`: what a full mirror of the repository holds, before anything is downloaded.
    Estimate {
        packages: usize,
        releases: usize,
        approx_bytes: u64,
    },
    /// Every record is resolved: `releases` tarballs are planned, of which `landed` were
    /// fetched (or found) already, as each is fetched as soon as its record is resolved.
    Planned {
        releases: usize,
        packages: usize,
        #[serde(default)]
        landed: usize,
    },
    Item {
        resource: String,
        outcome: Outcome,
        detail: Option<String>,
        /// The object's size, when it was fetched or found stored.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bytes: Option<u64>,
    },
    Finished {
        summary: Summary,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Fetched,
    Present,
    Skipped,
    Failed,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub fetched: usize,
    pub present: usize,
    pub skipped: usize,
    pub failed: usize,
    pub failures: Vec<String>,
}

impl Summary {
    pub fn ok(&self) -> bool {
        self.failed == 0
    }
}

/// A rough size of one release tarball, for the `--all` estimate (hex.pm's tarballs are mostly
/// tens of kilobytes).
const TYPICAL_RELEASE_BYTES: u64 = 100 << 10;

/// The last row of an installs CSV: (installer version, Elixir versions).
fn newest_install_row(csv: &[u8]) -> Option<(String, Vec<String>)> {
    let text = std::str::from_utf8(csv).ok()?;
    let line = text.lines().rev().find(|l| !l.trim().is_empty())?;
    let mut cells = line.split(',').map(str::trim);
    let version = cells.next()?.to_string();
    let _digest = cells.next()?;
    Some((version, cells.map(String::from).collect()))
}

/// Selected keys held before they are added to the store's selection: a sync of a whole
/// repository adds them in batches instead of holding every key to the end.
const SELECTION_BATCH: usize = 16_384;

/// A package to visit: where, which, and which versions.
#[derive(Debug, Clone)]
struct Want {
    repo: Option<String>,
    name: String,
    pick: Pick,
    /// The `--package` spec this want comes from, as given: selecting nothing for it fails.
    requested: Option<String>,
}

#[derive(Debug, Clone)]
enum Pick {
    /// Every version matching (or every version when `None`).
    All(Option<Requirement>),
    /// The highest version matching (for dependencies).
    Highest(Requirement),
    /// Exactly this version, with the lockfile's checksums to compare.
    Locked(LockedPackage),
}

/// A package record's identity: its repository (`None`: the root) and the package's name.
type PackageId = (Option<String>, String);

/// Planned tarballs held before they are fetched: past this many, tarballs are fetched before
/// more records are asked for, so a whole repository's plan is never held at once.
const TARBALL_BACKLOG: usize = 4_096;

/// Releases of verified package records kept for dependencies resolved later (a few hundred
/// bytes each). A record pushed out is read again (from the store, verified again) when a
/// dependency on it still has to be resolved.
pub const RECENT_RELEASES: u64 = 32_768;

/// 128 bits of the sha256 of a repository and two names (a release, or a dependency and its
/// requirement): what the plan keeps of each instead of the names, a few MiB for a whole
/// repository. Length-prefixed, so no two different triples are hashed alike.
fn plan_digest(repo: &Option<String>, first: &str, second: &str) -> [u8; 16] {
    use sha2::Digest;
    let mut hash = sha2::Sha256::new();
    match repo {
        None => hash.update([0]),
        Some(repo) => {
            hash.update([1]);
            hash.update((repo.len() as u64).to_le_bytes());
            hash.update(repo.as_bytes());
        }
    }
    for part in [first, second] {
        hash.update((part.len() as u64).to_le_bytes());
        hash.update(part.as_bytes());
    }
    hash.finalize()[..16].try_into().expect("16 of 32 bytes")
}

struct Planner<'a> {
    mirror: &'a Mirror,
    request: &'a SyncRequest,
    summary: Summary,
    selected: BTreeSet<String>,
    /// Every package record asked for so far.
    visited: HashSet<PackageId>,
    /// The records that could not be had: what needs them is resolved as missing at once.
    unavailable: HashSet<PackageId>,
    /// The releases of recently verified records, for the dependencies on them still to come.
    recent: moka::sync::Cache<PackageId, Arc<Releases>>,
    /// What waits for a record being fetched, in the order it was asked for.
    waiting: HashMap<PackageId, Vec<Want>>,
    /// Records to fetch; `true` for one fetched before and pushed out of `recent` (it is not
    /// reported or selected again).
    to_fetch: VecDeque<(PackageId, bool)>,
    /// Every release planned ([`plan_digest`]): each tarball is fetched once.
    planned: HashSet<[u8; 16]>,
    /// Every dependency (repository, package, requirement) resolved: each is resolved once.
    followed: HashSet<[u8; 16]>,
    /// Planned tarballs not yet asked for, with the sha256 the verified record lists.
    backlog: VecDeque<(Option<String>, Resource, Option<[u8; 32]>)>,
    /// What a spec or a lockfile asked for by name: blocked when fetched, the sync fails.
    explicit_releases: BTreeSet<(Option<String>, String, String)>,
    /// Planned tarballs done so far (whatever their outcome).
    landed: usize,
    events: &'a (dyn Fn(Event) + Send + Sync),
    pace: Option<&'a Pace>,
}

/// What one of the plan's requests came back with.
enum Done {
    Record { id: PackageId, again: bool, result: Result<Reply, MirrorError> },
    Tarball { repo: Option<String>, resource: Resource, landed: Landed },
}

impl Planner<'_> {
    fn item(&mut self, resource: String, outcome: Outcome, detail: Option<String>) {
        self.item_of(resource, outcome, detail, None);
    }

    fn item_of(&mut self, resource: String, outcome: Outcome, detail: Option<String>, bytes: Option<u64>) {
        match outcome {
            Outcome::Fetched => self.summary.fetched += 1,
            Outcome::Present => self.summary.present += 1,
            Outcome::Skipped => self.summary.skipped += 1,
            Outcome::Failed => {
                self.summary.failed += 1;
                self.summary.failures.push(format!("{resource}: {}", detail.clone().unwrap_or_default()));
            }
        }
        (self.events)(Event::Item { resource, outcome, detail, bytes });
    }

    /// Adds what was selected so far to the store's selection (its entries are pinned and
    /// durable already), so that the set held here stays small.
    async fn save_selection(&mut self) {
        let selected = std::mem::take(&mut self.selected);
        if let Err(e) = self.mirror.store().select(selected.into_iter().collect()).await {
            self.item("store: selection".into(), Outcome::Failed, Some(e.to_string()));
        }
    }

    /// Fetches (with retries) and records one resource; returns the reply, whose facts are what
    /// verification decoded from it.
    async fn fetch(&mut self, repo: &Option<String>, resource: Resource) -> Option<Reply> {
        let result = fetch_one(self.mirror, repo, &resource, self.pace).await;
        self.note(repo, &resource, result)
    }

    /// Records the outcome of fetching `resource`.
    fn note(
        &mut self,
        repo: &Option<String>,
        resource: &Resource,
        result: Result<Reply, MirrorError>,
    ) -> Option<Reply> {
        let label = label_of(repo, resource);
        match result {
            Ok(reply) => {
                let target = self.mirror.target(repo.as_deref());
                let key = self.mirror.key_for(&target, resource, reply.private);
                self.selected.insert(key.to_string());
                let outcome = if reply.status == CacheStatus::Miss { Outcome::Fetched } else { Outcome::Present };
                self.item_of(label, outcome, None, Some(reply.body.len() as u64));
                Some(reply)
            }
            Err(e) => {
                self.item(label, Outcome::Failed, Some(e.to_string()));
                None
            }
        }
    }

    /// Resolves `wants` and what they depend on, and fetches what they plan: package records
    /// (`concurrency` requests at once) and tarballs as the records resolve. Records go first
    /// while fewer than [`TARBALL_BACKLOG`] tarballs wait; `Planned` is reported when the
    /// last record is resolved. Each result is reported as it lands, and dropped.
    async fn fetch_planned(&mut self, wants: VecDeque<Want>, concurrency: usize) {
        let (mirror, pace) = (self.mirror, self.pace);
        self.settle(wants);
        let mut in_flight = stream::FuturesUnordered::new();
        let mut records_in_flight = 0usize;
        let mut announced = false;
        loop {
            while in_flight.len() < concurrency {
                let tarball_first = self.backlog.len() >= TARBALL_BACKLOG || self.to_fetch.is_empty();
                if let Some((repo, resource, checksum)) = tarball_first.then(|| self.backlog.pop_front()).flatten() {
                    in_flight.push(
                        async move {
                            let landed = match already_synced(mirror, &repo, &resource, checksum).await {
                                Some(key) => Landed::Stored(key),
                                None => Landed::Fetched(fetch_one(mirror, &repo, &resource, pace).await),
                            };
                            Done::Tarball { repo, resource, landed }
                        }
                        .boxed(),
                    );
                } else if let Some((id, again)) = self.to_fetch.pop_front() {
                    records_in_flight += 1;
                    in_flight.push(
                        async move {
                            let resource = Resource::Package(id.1.clone());
                            let result = fetch_one(mirror, &id.0, &resource, pace).await;
                            Done::Record { id, again, result }
                        }
                        .boxed(),
                    );
                } else {
                    break;
                }
            }
            if !announced && self.to_fetch.is_empty() && records_in_flight == 0 {
                announced = true;
                (self.events)(Event::Planned {
                    releases: self.planned.len(),
                    packages: self.visited.len(),
                    landed: self.landed,
                });
            }
            let Some(done) = in_flight.next().await else { break };
            match done {
                Done::Record { id, again, result } => {
                    records_in_flight -= 1;
                    let resource = Resource::Package(id.1.clone());
                    let reply = match (again, result) {
                        // Read again for a dependency: reported and selected the first time.
                        (true, Ok(reply)) => Some(reply),
                        (_, result) => self.note(&id.0, &resource, result),
                    };
                    let releases = match reply.map(|r| r.facts) {
                        Some(Facts::Releases(releases)) => Some(releases),
                        _ => None,
                    };
                    self.arrived(id, releases);
                }
                Done::Tarball { repo, resource, landed } => self.landed(repo, resource, landed),
            }
            if self.selected.len() >= SELECTION_BATCH {
                self.save_selection().await;
            }
        }
    }

    /// A record came back (`None`: it could not be had): what waited for it is resolved.
    fn arrived(&mut self, id: PackageId, releases: Option<Arc<Releases>>) {
        let wants = self.waiting.remove(&id).unwrap_or_default();
        let mut next = VecDeque::new();
        match releases {
            Some(releases) => {
                self.recent.insert(id, releases.clone());
                for want in wants {
                    next.extend(self.resolve(&want, &releases));
                }
            }
            None => {
                self.unavailable.insert(id);
                wants.iter().for_each(|want| self.missing(want));
            }
        }
        self.settle(next);
    }

    /// Resolves each of `wants` whose record is at hand, with what it depends on in turn; the
    /// others wait for their record, which is asked for once.
    fn settle(&mut self, mut wants: VecDeque<Want>) {
        while let Some(want) = wants.pop_front() {
            let id = (want.repo.clone(), want.name.clone());
            if let Some(releases) = self.recent.get(&id) {
                wants.extend(self.resolve(&want, &releases));
            } else if self.unavailable.contains(&id) {
                self.missing(&want);
            } else if let Some(waiting) = self.waiting.get_mut(&id) {
                waiting.push(want);
            } else {
                let again = !self.visited.insert(id.clone());
                self.to_fetch.push_back((id.clone(), again));
                self.waiting.insert(id, vec![want]);
            }
        }
    }

    /// A want whose package has no verified record: a failure when it was asked for by name.
    fn missing(&mut self, want: &Want) {
        if let Some(spec) = &want.requested {
            self.item(spec.clone(), Outcome::Failed, Some("no verified registry record for this package".into()));
        }
    }

    /// Resolves one want from its package's verified releases: plans the releases it chooses
    /// (each once) and returns what they depend on, each dependency once.
    fn resolve(&mut self, want: &Want, record: &Releases) -> Vec<Want> {
        let (mirror, request) = (self.mirror, self.request);
        let mut releases: Vec<(semver::Version, &Release)> =
            record.iter().filter_map(|r| parse_version(&r.version).ok().map(|v| (v, r))).collect();
        releases.sort_by(|a, b| a.0.cmp(&b.0));
        let eligible = |(v, r): &(semver::Version, &Release)| {
            (request.include_prereleases || v.pre.is_empty()) && (request.include_retired || !r.retired)
        };
        // The supply-chain policy: a blocked release is never selected (the licence rule,
        // which needs the tarball, is applied when it is fetched).
        let namespace = mirror.target(want.repo.as_deref()).namespace;
        let verdict = |r: &Release| mirror.decide(&namespace, &want.name, r, None).filter(|d| d.enforced);
        let passes = |pair: &&(semver::Version, &Release)| verdict(pair.1).is_none();
        let blocked_text = |r: &Release| {
            verdict(r).map(|d| {
                format!("{} {} is blocked by policy ({}): {}", want.name, r.version, d.rule.as_str(), d.reason)
            })
        };
        // What the policy alone kept from being chosen, reported by name.
        let mut held_back: Vec<String> = Vec::new();
        let chosen: Vec<&Release> = match &want.pick {
            Pick::All(req) => {
                let matching: Vec<&(semver::Version, &Release)> = releases
                    .iter()
                    .filter(|pair| eligible(pair))
                    .filter(|(v, _)| req.as_ref().is_none_or(|req| req.matches(v, request.include_prereleases)))
                    .collect();
                held_back.extend(matching.iter().filter_map(|(_, r)| blocked_text(r)));
                matching.into_iter().filter(passes).map(|(_, r)| *r).collect()
            }
            Pick::Highest(req) => {
                let highest = releases
                    .iter()
                    .rev()
                    .filter(|pair| eligible(pair))
                    .find(|(v, _)| req.matches(v, request.include_prereleases))
                    .or_else(|| releases.iter().rev().find(|(v, _)| req.matches(v, true)));
                let allowed = releases
                    .iter()
                    .rev()
                    .filter(|pair| eligible(pair) && passes(pair))
                    .find(|(v, _)| req.matches(v, request.include_prereleases))
                    .or_else(|| releases.iter().rev().filter(passes).find(|(v, _)| req.matches(v, true)));
                if let (Some((_, wanted)), None) = (highest, allowed) {
                    held_back.extend(blocked_text(wanted));
                }
                allowed.map(|(_, r)| vec![*r]).unwrap_or_default()
            }
            Pick::Locked(locked) => match releases.iter().find(|(_, r)| r.version == locked.version) {
                Some((_, release)) if verdict(release).is_some() => {
                    // A lockfile asks for exactly this release: the sync fails, naming the rule.
                    let why = blocked_text(release).unwrap_or_default();
                    self.item(format!("{} {}", locked.name, locked.version), Outcome::Failed, Some(why));
                    vec![]
                }
                Some((_, release)) => match lock_mismatch(locked, release) {
                    None => vec![*release],
                    Some(why) => {
                        self.item(format!("{} {}", locked.name, locked.version), Outcome::Failed, Some(why));
                        vec![]
                    }
                },
                None => {
                    self.item(
                        format!("{} {}", locked.name, locked.version),
                        Outcome::Failed,
                        Some("version is not in the verified registry record".into()),
                    );
                    vec![]
                }
            },
        };
        let explicit = want.requested.is_some() || matches!(want.pick, Pick::Locked(_));
        if chosen.is_empty() && !held_back.is_empty() && (explicit || matches!(want.pick, Pick::Highest(_))) {
            // Asked for by name, or needed as a dependency, and only blocked releases match.
            let newest = held_back.last().cloned().unwrap_or_default();
            let label = want.requested.clone().unwrap_or_else(|| want.name.clone());
            self.item(label, Outcome::Failed, Some(format!("only blocked releases match; {newest}")));
        } else if !held_back.is_empty() {
            for text in &held_back {
                self.item(want.name.clone(), Outcome::Skipped, Some(text.clone()));
            }
        }
        if chosen.is_empty() && held_back.is_empty() && matches!(want.pick, Pick::All(_) | Pick::Highest(_)) {
            match &want.requested {
                // What the operator asked for by name matched nothing: a failure, not a skip.
                Some(spec) => {
                    let newest = releases.last().map(|(v, _)| format!("; newest release: {v}")).unwrap_or_default();
                    let filters = match (request.include_prereleases, request.include_retired) {
                        (false, false) => " (pre-releases and retired releases need --pre and --retired)",
                        (false, true) => " (pre-releases need --pre)",
                        (true, false) => " (retired releases need --retired)",
                        (true, true) => "",
                    };
                    self.item(spec.clone(), Outcome::Failed, Some(format!("no release matches{filters}{newest}")));
                }
                None => self.item(want.name.clone(), Outcome::Skipped, Some("no release matches".into())),
            }
        }
        let mut dependencies = Vec::new();
        for release in chosen {
            if explicit {
                self.explicit_releases.insert((want.repo.clone(), want.name.clone(), release.version.clone()));
            }
            if !self.planned.insert(plan_digest(&want.repo, &want.name, &release.version)) {
                continue;
            }
            let resource = Resource::Tarball { name: want.name.clone(), version: release.version.clone() };
            self.backlog.push_back((want.repo.clone(), resource, release.outer_checksum));
            if !request.dependencies || matches!(want.pick, Pick::Locked(_)) {
                // A lockfile already lists the whole closure.
                continue;
            }
            for dep in release.dependencies.iter() {
                if dep.optional && !request.include_optional {
                    continue;
                }
                let repo = dependency_repo(&want.repo, dep.repository.as_deref());
                if !self.followed.insert(plan_digest(&repo, &dep.package, &dep.requirement)) {
                    continue;
                }
                let Ok(requirement) = Requirement::parse(&dep.requirement) else {
                    self.item(
                        dep.package.clone(),
                        Outcome::Failed,
                        Some(format!("bad requirement {:?}", dep.requirement)),
                    );
                    continue;
                };
                dependencies.push(Want {
                    repo,
                    name: dep.package.clone(),
                    pick: Pick::Highest(requirement),
                    requested: None,
                });
            }
        }
        dependencies
    }

    /// A planned tarball was fetched, or found already synced: reported, and selected.
    fn landed(&mut self, repo: Option<String>, resource: Resource, landed: Landed) {
        self.landed += 1;
        match landed {
            // Blocked when its tarball was read (the licence rule): a failure when asked for by
            // name, otherwise left out like any release the policy blocks.
            Landed::Fetched(Err(MirrorError::Blocked { release, decision }))
                if !self.explicit_releases.contains(&(
                    repo.clone(),
                    resource_name(&resource),
                    resource_version(&resource),
                )) =>
            {
                let why = format!("{release} is blocked by policy ({}): {}", decision.rule.as_str(), decision.reason);
                self.item(label_of(&repo, &resource), Outcome::Skipped, Some(why));
            }
            Landed::Fetched(result) => {
                self.note(&repo, &resource, result);
            }
            // Present and pinned with the bytes the record names: selected as it is.
            Landed::Stored((key, len)) => {
                self.selected.insert(key.to_string());
                self.item_of(label_of(&repo, &resource), Outcome::Present, None, Some(len));
            }
        }
    }
}

/// `/resource` or `/repos/NAME/resource`, as items are reported.
fn label_of(repo: &Option<String>, resource: &Resource) -> String {
    format!("{}{}", repo.as_ref().map(|r| format!("/repos/{r}/")).unwrap_or("/".into()), resource.path())
}

/// Spaces requests at least `every` apart (a requests-per-second limit), across every task.
pub struct Pace {
    every: Duration,
    next: tokio::sync::Mutex<tokio::time::Instant>,
}

impl Pace {
    pub fn per_second(rate: f64) -> Option<Pace> {
        (rate.is_finite() && rate > 0.0).then(|| Pace {
            every: Duration::from_secs_f64(1.0 / rate),
            next: tokio::sync::Mutex::new(tokio::time::Instant::now()),
        })
    }

    async fn wait(&self) {
        let at = {
            let mut next = self.next.lock().await;
            let at = (*next).max(tokio::time::Instant::now());
            *next = at + self.every;
            at
        };
        tokio::time::sleep_until(at).await;
    }
}

/// One resource, at the pace asked for, with retries.
async fn fetch_one(
    mirror: &Mirror,
    repo: &Option<String>,
    resource: &Resource,
    pace: Option<&Pace>,
) -> Result<Reply, MirrorError> {
    if let Some(pace) = pace {
        pace.wait().await;
    }
    let target = mirror.target(repo.as_deref());
    fetch_with_retries(mirror, &target, resource).await
}

/// How a planned tarball was had: fetched through the mirror, or found already synced.
enum Landed {
    Fetched(Result<Reply, MirrorError>),
    Stored((crate::cache::CacheKey, u64)),
}

/// The key under which the store holds `resource` pinned with exactly the bytes `checksum`
/// names (the tarball's sha256, as the verified record lists it): a re-run needs neither the
/// upstream nor the memory tier for it.
async fn already_synced(
    mirror: &Mirror,
    repo: &Option<String>,
    resource: &Resource,
    checksum: Option<[u8; 32]>,
) -> Option<(crate::cache::CacheKey, u64)> {
    let checksum = hex::encode(checksum?);
    let target = mirror.target(repo.as_deref());
    for private in [false, true] {
        let key = mirror.key_for(&target, resource, private);
        if let Ok(Some(meta)) = mirror.store().head(&key).await {
            if meta.pinned && meta.sha256 == checksum {
                return Some((key, meta.len));
            }
        }
    }
    None
}

/// Retries transient upstream failures with backoff (1 s, 2 s), and a 429 after the
/// `Retry-After` it gave (at most 5 minutes, up to 5 times); a refusal is not retried.
async fn fetch_with_retries(
    mirror: &Mirror,
    target: &Target,
    resource: &Resource,
) -> Result<crate::mirror::Reply, MirrorError> {
    let client = ClientCredentials::internal();
    let mut delay = Duration::from_secs(1);
    let mut attempt = 0;
    loop {
        attempt += 1;
        match mirror.get(target, resource, &client).await {
            // Done means durable and pinned (pinning waits for the entry's background write,
            // and disk eviction never takes a pinned entry): a sync killed after this point
            // never fetches it again, and an entry that cannot be stored is a failed item.
            Ok(reply) => {
                let key = mirror.key_for(target, resource, reply.private);
                return match mirror.pin(&key).await {
                    Ok(()) => Ok(reply),
                    Err(e) => Err(MirrorError::Internal(format!("verified but not stored: {e}"))),
                };
            }
            Err(MirrorError::Upstream(UpstreamError::RateLimited(seconds))) if attempt < 5 => {
                tracing::info!(seconds, "sync: the upstream asks to slow down (429); waiting as its Retry-After says");
                tokio::time::sleep(Duration::from_secs(seconds.clamp(1, 300))).await;
            }
            Err(MirrorError::Upstream(e)) if attempt < 3 => {
                tracing::debug!(error = %e, attempt, "sync: retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            result => return result,
        }
    }
}

/// The repository a dependency lives in, as a `/repos/NAME` value (`None` for hexpm).
fn dependency_repo(parent: &Option<String>, declared: Option<&str>) -> Option<String> {
    match declared {
        None => parent.clone(),
        Some("hexpm") => None,
        Some(other) => Some(other.to_string()),
    }
}

/// Runs a sync, reporting progress through `events`, and returns the summary.
pub async fn run(mirror: &Mirror, request: &SyncRequest, events: &(dyn Fn(Event) + Send + Sync)) -> Summary {
    let pace = request.rate.and_then(Pace::per_second);
    let concurrency = request.concurrency.clamp(1, 64);
    let mut planner = Planner {
        mirror,
        summary: Summary::default(),
        request,
        selected: BTreeSet::new(),
        visited: HashSet::new(),
        unavailable: HashSet::new(),
        recent: moka::sync::Cache::builder()
            .max_capacity(request.recent_releases.unwrap_or(RECENT_RELEASES))
            .weigher(|_, releases: &Arc<Releases>| releases.len().clamp(1, u32::MAX as usize) as u32)
            .build(),
        waiting: HashMap::new(),
        to_fetch: VecDeque::new(),
        planned: HashSet::new(),
        followed: HashSet::new(),
        backlog: VecDeque::new(),
        explicit_releases: BTreeSet::new(),
        landed: 0,
        events,
        pace: pace.as_ref(),
    };
    let mut queue: VecDeque<Want> = VecDeque::new();
    for text in &request.packages {
        // `REPO/NAME [REQUIREMENT]` names the repository (or hex.pm organization) itself.
        let (repo, spec) = match text.split_once('/') {
            Some((repo, rest)) if !repo.contains(char::is_whitespace) => (Some(repo.to_string()), rest),
            _ => (request.repo.clone(), text.as_str()),
        };
        match PackageSpec::parse(spec) {
            Ok(spec) => {
                let requested = Some(text.clone());
                queue.push_back(Want { repo, name: spec.name, pick: Pick::All(spec.requirement), requested })
            }
            Err(e) => planner.item(text.clone(), Outcome::Failed, Some(format!("bad package spec: {e}"))),
        }
    }
    for (file, text) in &request.lockfiles {
        match lockfile::parse_lockfile(file, text) {
            Ok(lock) => {
                for dep in lock.skipped {
                    planner.item(
                        format!("{file}: {}", dep.name),
                        Outcome::Skipped,
                        Some(format!("{} dependency", dep.kind)),
                    );
                }
                for package in lock.packages {
                    let repo = dependency_repo(&request.repo, Some(package.repo.as_str()));
                    queue.push_back(Want {
                        repo,
                        name: package.name.clone(),
                        pick: Pick::Locked(package),
                        requested: None,
                    });
                }
            }
            Err(e) => planner.item(file.clone(), Outcome::Failed, Some(format!("cannot parse lockfile: {e}"))),
        }
    }
    if request.all {
        let names = planner.fetch(&request.repo, Resource::Names).await;
        let versions = planner.fetch(&request.repo, Resource::Versions).await;
        if let Some(Facts::Versions(counts)) = versions.map(|r| r.facts) {
            let releases = if request.include_retired { counts.releases } else { counts.unretired_releases };
            (planner.events)(Event::Estimate {
                packages: counts.packages,
                releases,
                approx_bytes: releases as u64 * TYPICAL_RELEASE_BYTES,
            });
        }
        if let Some(Facts::Names(names)) = names.map(|r| r.facts) {
            tracing::info!(packages = names.len(), "sync --all: every package of the repository");
            for name in names.iter() {
                queue.push_back(Want {
                    repo: request.repo.clone(),
                    name: name.to_string(),
                    pick: Pick::All(None),
                    requested: None,
                });
            }
        }
    }
    if request.installers {
        for (app, ez) in [("hex", true), ("rebar3", false)] {
            let list = format!("{app}-1.x");
            let listing = planner.fetch(&request.repo, Resource::InstallsList(list.clone())).await;
            planner.fetch(&request.repo, Resource::InstallsListSignature(list)).await;
            // The newest installer for each Elixir version it supports: what `mix local.hex`
            // and `mix local.rebar` pick.
            let Some(last) = listing.and_then(|reply| newest_install_row(&reply.body)) else { continue };
            for elixir in &last.1 {
                let archive =
                    Resource::Installer { elixir: elixir.clone(), app: app.into(), version: last.0.clone(), ez };
                planner.fetch(&request.repo, archive).await;
            }
        }
    }

    // Resolve the closure from verified records, fetching each tarball as it is planned.
    planner.fetch_planned(queue, concurrency).await;

    // Every selected entry was pinned, durable, when it was fetched.
    mirror.save_seen().await;
    planner.save_selection().await;
    if let Err(e) = mirror.store().flush().await {
        planner.item("store: flush".into(), Outcome::Failed, Some(e.to_string()));
    }
    let summary = planner.summary;
    let metrics = mirror.metrics();
    metrics.sync_items.with_label_values(&["done"]).set((summary.fetched + summary.present) as i64);
    metrics.sync_items.with_label_values(&["failed"]).set(summary.failed as i64);
    metrics.sync_items.with_label_values(&["pending"]).set(0);
    if summary.ok() {
        metrics.sync_last_success.set(crate::cache::unix_now() as f64);
    }
    (planner.events)(Event::Finished { summary: summary.clone() });
    summary
}

/// A tarball's package name and version (empty for other resources).
fn resource_name(resource: &Resource) -> String {
    match resource {
        Resource::Tarball { name, .. } => name.clone(),
        _ => String::new(),
    }
}

fn resource_version(resource: &Resource) -> String {
    match resource {
        Resource::Tarball { version, .. } => version.clone(),
        _ => String::new(),
    }
}

/// Why a lockfile entry disagrees with the verified registry, if it does.
fn lock_mismatch(locked: &LockedPackage, release: &Release) -> Option<String> {
    if let (Some(lock), Some(registry)) = (&locked.outer_checksum, &release.outer_checksum) {
        if lock[..] != registry[..] {
            return Some(format!(
                "lockfile outer checksum {} differs from the registry's {}",
                hex::encode(lock),
                hex::encode(registry)
            ));
        }
    }
    if let Some(lock) = &locked.inner_checksum {
        if lock[..] != release.inner_checksum[..] {
            return Some(format!(
                "lockfile inner checksum {} differs from the registry's {}",
                hex::encode(lock),
                hex::encode(&release.inner_checksum)
            ));
        }
    }
    None
}

/// Collects events into a list (for tests and JSON answers).
pub fn collect_events() -> (Arc<std::sync::Mutex<Vec<Event>>>, impl Fn(Event) + Send + Sync) {
    let events = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = events.clone();
    (events, move |event| sink.lock().expect("never poisoned").push(event))
}

/// The packages and versions a verified package record lists, for reports.
pub fn versions_of(package: &Package) -> BTreeMap<String, bool> {
    package.releases.iter().map(|r| (r.version.clone(), r.retired.is_some())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release(version: &str, inner: u8, outer: Option<u8>) -> Release {
        Release {
            version: version.into(),
            checksum: match outer {
                Some(outer) => crate::verify::ReleaseChecksum::Outer([outer; 32]),
                None => crate::verify::ReleaseChecksum::Inner([inner; 32]),
            },
            inner_checksum: vec![inner; 32].into(),
            outer_checksum: outer.map(|o| [o; 32]),
            retired: false,
            retirement: None,
            dependencies: Arc::from([]),
        }
    }

    fn locked(inner: Option<u8>, outer: Option<u8>) -> LockedPackage {
        LockedPackage {
            name: "a".into(),
            version: "1.0.0".into(),
            repo: "hexpm".into(),
            inner_checksum: inner.map(|i| [i; 32]),
            outer_checksum: outer.map(|o| [o; 32]),
        }
    }

    #[test]
    fn lock_checksums_are_compared_with_the_registry() {
        assert_eq!(lock_mismatch(&locked(Some(1), Some(2)), &release("1.0.0", 1, Some(2))), None);
        assert!(lock_mismatch(&locked(Some(1), Some(3)), &release("1.0.0", 1, Some(2))).unwrap().contains("outer"));
        assert!(lock_mismatch(&locked(Some(9), None), &release("1.0.0", 1, Some(2))).unwrap().contains("inner"));
        assert_eq!(lock_mismatch(&locked(None, None), &release("1.0.0", 1, None)), None);
    }

    #[test]
    fn the_newest_installer_row_is_the_last() {
        let csv = b"1.0.0,aa,1.10.0\n2.0.6,bb,1.14.0,1.15.0\n\n";
        assert_eq!(newest_install_row(csv), Some(("2.0.6".into(), vec!["1.14.0".into(), "1.15.0".into()])));
        assert_eq!(newest_install_row(b""), None);
    }

    #[test]
    fn dependency_repositories() {
        assert_eq!(dependency_repo(&None, None), None);
        assert_eq!(dependency_repo(&Some("acme".into()), None), Some("acme".into()));
        assert_eq!(dependency_repo(&Some("acme".into()), Some("hexpm")), None);
        assert_eq!(dependency_repo(&None, Some("acme")), Some("acme".into()));
    }
}
