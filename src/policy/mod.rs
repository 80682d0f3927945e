//! Supply-chain policy: which releases this mirror refuses to hand out.
//!
//! Registry files are signed by the repository and reach clients unchanged, so a policy cannot
//! hide a release from a resolver; it acts where tarball bytes are handed out (the mirror's
//! tarball path, `sync`'s selection, `export` and `import`). The rules come from `[policy]`
//! (global) and `[repos.NAME.policy]` (which extends it: lists add up, single values override),
//! and are checked in this order, the first that blocks deciding:
//!
//! 1. `deny`: a matching release is blocked (nothing lifts it).
//! 2. `allow`: when set, a release that matches none of it is blocked.
//! 3. `exempt`: a matching release skips the rules below.
//! 4. `block_retired`: retired for one of these reasons (from the verified record).
//! 5. `advisories`: an OSV advisory (directory of files) affects it.
//! 6. `licenses_allowed`: none of its declared licences is allowed (read from the tarball).
//! 7. `cooldown`: first seen listed less than this long ago (`seen.rs`).
//!
//! `enforce = false` reports what would be blocked without blocking. Evaluation is pure: the
//! release's facts, its first-seen time and the clock are passed in ([`Policy::evaluate`]).
//! Loading ([`Policy::from_raw`]) reads the advisory directories, the only I/O.

pub mod osv;
pub mod rules;
pub mod seen;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use rules::{Rule, RuleError};

use crate::verify::{Retirement, RetirementReason};

/// The repository whose packages the OSV `Hex` ecosystem names: the global `advisories` apply
/// to it (and not to organizations or other repositories, whose names are their own).
const HEXPM: &str = "hexpm";

/// `[policy]` and `[repos.NAME.policy]` as written.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exempt: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub block_retired: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub licenses_allowed: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_unknown_licenses: Option<bool>,
    /// Seconds as an integer, or a duration such as `"7d"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cooldown: Option<crate::config::RawDuration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advisories: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enforce: Option<bool>,
}

/// One table of rules, parsed.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    pub deny: Vec<Rule>,
    pub allow: Option<Vec<Rule>>,
    pub exempt: Vec<Rule>,
    pub block_retired: BTreeSet<RetirementReason>,
    /// Normalised licence ids (see [`normalise_license`]) and how they were written.
    pub licenses_allowed: Option<BTreeMap<String, String>>,
    pub allow_unknown_licenses: Option<bool>,
    pub cooldown: Option<Duration>,
    pub advisories: Option<PathBuf>,
    pub enforce: Option<bool>,
}

impl Rules {
    /// Parses a table; every mistake is reported, each naming `at` (`policy`,
    /// `repos.NAME.policy`) and the key.
    pub fn from_raw(at: &str, raw: &RawPolicy, errors: &mut Vec<String>) -> Rules {
        let mut rules = |key: &str, list: &[String]| -> Vec<Rule> {
            list.iter()
                .filter_map(|text| Rule::parse(text).map_err(|e| errors.push(format!("{at}.{key}: {e}"))).ok())
                .collect()
        };
        let deny = rules("deny", &raw.deny);
        let allow = raw.allow.as_ref().map(|list| rules("allow", list));
        let exempt = rules("exempt", &raw.exempt);
        let mut block_retired = BTreeSet::new();
        for reason in &raw.block_retired {
            match RetirementReason::parse(reason.trim()) {
                Some(reason) => {
                    block_retired.insert(reason);
                }
                None => errors.push(format!(
                    "{at}.block_retired: {reason:?} is not a retirement reason (other, invalid, security, deprecated, renamed)"
                )),
            }
        }
        let licenses_allowed = raw.licenses_allowed.as_ref().map(|list| {
            let mut map = BTreeMap::new();
            for id in list {
                let normal = normalise_license(id);
                if normal.is_empty() {
                    errors.push(format!("{at}.licenses_allowed: an empty licence id"));
                } else {
                    map.insert(normal, id.trim().to_string());
                }
            }
            map
        });
        let cooldown = raw.cooldown.as_ref().and_then(|raw| match raw {
            crate::config::RawDuration::Seconds(n) => Some(Duration::from_secs(*n)),
            crate::config::RawDuration::Text(text) => humantime::parse_duration(text.trim())
                .map_err(|e| errors.push(format!("{at}.cooldown: {text:?} is not a duration such as \"7d\": {e}")))
                .ok(),
        });
        Rules {
            deny,
            allow,
            exempt,
            block_retired,
            licenses_allowed,
            allow_unknown_licenses: raw.allow_unknown_licenses,
            cooldown,
            advisories: raw.advisories.clone(),
            enforce: raw.enforce,
        }
    }

    /// These rules extended by a repository's: lists add up, single values override.
    fn extended_by(&self, repo: &Rules) -> Rules {
        let join = |a: &[Rule], b: &[Rule]| a.iter().chain(b).cloned().collect::<Vec<_>>();
        let allow = match (&self.allow, &repo.allow) {
            (None, None) => None,
            (a, b) => Some(join(a.as_deref().unwrap_or_default(), b.as_deref().unwrap_or_default())),
        };
        let licenses_allowed = match (&self.licenses_allowed, &repo.licenses_allowed) {
            (None, None) => None,
            (a, b) => Some(a.iter().chain(b).flatten().map(|(k, v)| (k.clone(), v.clone())).collect()),
        };
        Rules {
            deny: join(&self.deny, &repo.deny),
            allow,
            exempt: join(&self.exempt, &repo.exempt),
            block_retired: self.block_retired.union(&repo.block_retired).copied().collect(),
            licenses_allowed,
            allow_unknown_licenses: repo.allow_unknown_licenses.or(self.allow_unknown_licenses),
            cooldown: repo.cooldown.or(self.cooldown),
            advisories: repo.advisories.clone().or_else(|| self.advisories.clone()),
            enforce: repo.enforce.or(self.enforce),
        }
    }

    fn is_empty(&self) -> bool {
        self.deny.is_empty()
            && self.allow.is_none()
            && self.block_retired.is_empty()
            && self.licenses_allowed.is_none()
            && self.cooldown.is_none()
            && self.advisories.is_none()
    }
}

/// A licence id as compared: lower case, without spaces, `-` or `_` (`Apache 2.0` and
/// `apache-2.0` are the same).
pub fn normalise_license(id: &str) -> String {
    id.chars()
        .filter(|c| !c.is_whitespace() && !matches!(c, '-' | '_' | '(' | ')'))
        .flat_map(char::to_lowercase)
        .collect()
}

/// Which rule decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleKind {
    Deny,
    Allow,
    Retired,
    Advisory,
    License,
    Cooldown,
}

impl RuleKind {
    pub const ALL: [RuleKind; 6] =
        [RuleKind::Deny, RuleKind::Allow, RuleKind::Retired, RuleKind::Advisory, RuleKind::License, RuleKind::Cooldown];

    /// The metric label and the word reports use.
    pub fn as_str(self) -> &'static str {
        match self {
            RuleKind::Deny => "deny",
            RuleKind::Allow => "allow",
            RuleKind::Retired => "retired",
            RuleKind::Advisory => "advisory",
            RuleKind::License => "license",
            RuleKind::Cooldown => "cooldown",
        }
    }
}

/// A rule's verdict on a release: which rule, and why (one line, for the client and the log).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub rule: RuleKind,
    pub reason: String,
    /// False under `enforce = false`: reported, not blocked.
    pub enforced: bool,
}

/// What the licence rule may know of a release.
#[derive(Debug, Clone, Copy)]
pub enum Licenses<'a> {
    /// Its tarball has not been read (selection by `sync`): the licence rule is not applied.
    Unread,
    /// What its tarball's metadata declares (empty: none, or unreadable metadata).
    Declared(&'a [String]),
}

/// What is known of one release, for [`Policy::evaluate`].
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    /// The cache namespace: `hexpm`, `hexpm~ORG` or a configured repository.
    pub namespace: &'a str,
    pub name: &'a str,
    pub version: &'a str,
    /// From the verified package record.
    pub retirement: Option<&'a Retirement>,
    pub licenses: Licenses<'a>,
    /// When this store first saw it listed (Unix seconds); `None`: never, it counts from now.
    pub first_seen: Option<u64>,
}

/// Every rule's verdict on one release, for `policy explain`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Explanation {
    /// The `exempt` rule that matches, if one does.
    pub exempt: Option<String>,
    /// Every rule that blocks, in the order they are checked (the first decides); rules an
    /// exemption lifts are not listed.
    pub blocking: Vec<Decision>,
    /// What each rule said, in order, one line each (`deny: no rule matches`).
    pub checks: Vec<String>,
}

/// The effective rules of one repository.
#[derive(Debug)]
struct Effective {
    rules: Rules,
    advisories: Option<Arc<osv::Advisories>>,
}

/// Why a policy cannot be loaded (each line names a key, a rule or a file).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", .0.join("\n"))]
pub struct PolicyError(pub Vec<String>);

/// The loaded policy: every repository's effective rules with their advisories.
#[derive(Debug, Default)]
pub struct Policy {
    /// For a namespace of no configured repository (none is served).
    global: Rules,
    repos: BTreeMap<String, Effective>,
    /// Advisory files loaded, over every directory.
    pub advisory_count: usize,
}

impl Policy {
    /// Builds the policy of `global` and `repos` (the configured repositories' own tables;
    /// every configured repository should be named, with an empty table when it has none),
    /// reading the advisory directories. Every rule mistake and every bad advisory file is
    /// reported.
    pub fn from_raw(global: &RawPolicy, repos: &BTreeMap<String, Option<RawPolicy>>) -> Result<Policy, PolicyError> {
        let mut errors = Vec::new();
        let global_rules = Rules::from_raw("policy", global, &mut errors);

        let parsed: Vec<(String, Rules)> = repos
            .iter()
            .map(|(name, raw)| {
                let own = raw
                    .as_ref()
                    .map(|raw| Rules::from_raw(&format!("repos.{name}.policy"), raw, &mut errors))
                    .unwrap_or_default();
                (name.clone(), own)
            })
            .collect();
        let mut loaded: BTreeMap<PathBuf, Arc<osv::Advisories>> = BTreeMap::new();
        let mut load = |dir: &Option<PathBuf>, errors: &mut Vec<String>| -> Option<Arc<osv::Advisories>> {
            let dir = dir.as_ref()?;
            if let Some(known) = loaded.get(dir) {
                return Some(known.clone());
            }
            match osv::load_dir(dir) {
                Ok(advisories) => {
                    let advisories = Arc::new(advisories);
                    loaded.insert(dir.clone(), advisories.clone());
                    Some(advisories)
                }
                Err(e) => {
                    errors.push(e.to_string());
                    None
                }
            }
        };
        // The global advisories are hex.pm's (the `Hex` ecosystem); other repositories use
        // only the directory their own table names.
        let mut effective = BTreeMap::new();
        for (name, own) in parsed {
            let mut rules = global_rules.extended_by(&own);
            let dir = match (&own.advisories, name == HEXPM) {
                (Some(dir), _) => Some(dir.clone()),
                (None, true) => global_rules.advisories.clone(),
                (None, false) => None,
            };
            rules.advisories = dir.clone();
            let advisories = load(&dir, &mut errors);
            effective.insert(name, Effective { rules, advisories });
        }
        if !errors.is_empty() {
            return Err(PolicyError(errors));
        }
        let advisory_count = loaded.values().map(|a| a.count).sum();
        Ok(Policy { global: global_rules, repos: effective, advisory_count })
    }

    /// No rule at all: nothing is ever blocked.
    pub fn is_empty(&self) -> bool {
        self.global.is_empty() && self.repos.values().all(|e| e.rules.is_empty())
    }

    /// The rules and advisories that apply in a cache namespace. A hex.pm organization
    /// (`hexpm~ORG`) follows its parent's rules, without hex.pm's advisories.
    fn effective(&self, namespace: &str) -> (&Rules, Option<&osv::Advisories>) {
        let (repo, organization) = match namespace.split_once('~') {
            Some((parent, _)) => (parent, true),
            None => (namespace, false),
        };
        let (rules, advisories) = match self.repos.get(repo) {
            Some(e) => (&e.rules, e.advisories.as_deref()),
            None => (&self.global, None),
        };
        (rules, advisories.filter(|_| !organization))
    }

    /// Whether the licence rule applies in `namespace` (the tarball must then be read).
    pub fn reads_licenses(&self, namespace: &str) -> bool {
        self.effective(namespace).0.licenses_allowed.is_some()
    }

    /// The verdict on one release at `now` (Unix seconds): the first rule that blocks it.
    pub fn evaluate(&self, subject: &Subject<'_>, now: u64) -> Option<Decision> {
        self.explain(subject, now).blocking.into_iter().next()
    }

    /// Every rule's verdict on one release at `now`.
    pub fn explain(&self, subject: &Subject<'_>, now: u64) -> Explanation {
        let (rules, advisories) = self.effective(subject.namespace);
        let enforced = rules.enforce.unwrap_or(true);
        let version = crate::requirement::parse_version(subject.version).ok();
        let mut out = Explanation::default();
        let block = |out: &mut Explanation, rule: RuleKind, reason: String| {
            out.checks.push(format!("{}: blocks: {reason}", rule.as_str()));
            out.blocking.push(Decision { rule, reason, enforced });
        };
        let name = subject.name;

        match rules.deny.iter().find(|r| r.matches(name, version.as_ref(), true)) {
            Some(rule) => block(&mut out, RuleKind::Deny, format!("denied: matches deny rule \"{rule}\"")),
            None => out.checks.push("deny: no rule matches".into()),
        }
        match &rules.allow {
            None => out.checks.push("allow: not set".into()),
            Some(allow) => match allow.iter().find(|r| r.matches(name, version.as_ref(), false)) {
                Some(rule) => out.checks.push(format!("allow: matches \"{rule}\"")),
                None => block(&mut out, RuleKind::Allow, "not allowed: matches no allow rule".into()),
            },
        }
        if let Some(rule) = rules.exempt.iter().find(|r| r.matches(name, version.as_ref(), false)) {
            out.exempt = Some(rule.text().to_string());
            out.checks.push(format!(
                "exempt: matches \"{rule}\": the retirement, advisory, licence and cooldown rules do not apply"
            ));
            return out;
        }
        out.checks.push("exempt: no rule matches".into());

        match (subject.retirement, rules.block_retired.is_empty()) {
            (_, true) => out.checks.push("block_retired: not set".into()),
            (None, false) => out.checks.push("block_retired: not retired".into()),
            (Some(retirement), false) => {
                let why = match &retirement.message {
                    Some(message) => format!("retired ({}): {}", retirement.reason.as_str(), one_line(message)),
                    None => format!("retired ({})", retirement.reason.as_str()),
                };
                match rules.block_retired.contains(&retirement.reason) {
                    true => block(&mut out, RuleKind::Retired, why),
                    false => out.checks.push(format!("block_retired: {why}, a reason not blocked")),
                }
            }
        }

        match advisories {
            None => out.checks.push("advisories: none apply to this repository".into()),
            Some(advisories) => match advisories.affecting(name, subject.version) {
                Some(advisory) => {
                    let reason = match advisory.summary.is_empty() {
                        true => format!("advisory {}", advisory.id),
                        false => format!("advisory {}: {}", advisory.id, advisory.summary),
                    };
                    block(&mut out, RuleKind::Advisory, reason)
                }
                None => out.checks.push(format!("advisories: none of {} affects it", advisories.count)),
            },
        }

        match (&rules.licenses_allowed, subject.licenses) {
            (None, _) => out.checks.push("licenses_allowed: not set".into()),
            (Some(_), Licenses::Unread) => out.checks.push("licenses_allowed: the tarball was not read".into()),
            (Some(allowed), Licenses::Declared(declared)) => {
                let alternatives: Vec<&str> = declared.iter().flat_map(|l| split_or(l)).collect();
                if alternatives.is_empty() {
                    match rules.allow_unknown_licenses.unwrap_or(false) {
                        true => out.checks.push("licenses_allowed: declares no licence (allowed)".into()),
                        false => {
                            block(&mut out, RuleKind::License, "licence unknown: the release declares none".into())
                        }
                    }
                } else if let Some(ok) = alternatives.iter().find(|l| allowed.contains_key(&normalise_license(l))) {
                    out.checks.push(format!("licenses_allowed: {ok} is allowed"));
                } else {
                    let list = declared.iter().map(|l| one_line(l)).collect::<Vec<_>>().join(", ");
                    block(&mut out, RuleKind::License, format!("licence not allowed: {list}"));
                }
            }
        }

        match rules.cooldown {
            None => out.checks.push("cooldown: not set".into()),
            Some(cooldown) => {
                let seen = subject.first_seen.unwrap_or(now);
                let until = seen.saturating_add(cooldown.as_secs());
                if now < until {
                    let reason = format!(
                        "cooldown: first seen {}, held until {} ({} cooldown)",
                        rfc3339(seen),
                        rfc3339(until),
                        humantime::format_duration(cooldown)
                    );
                    block(&mut out, RuleKind::Cooldown, reason)
                } else {
                    out.checks.push(format!("cooldown: first seen {}, past its cooldown", rfc3339(seen)));
                }
            }
        }
        out
    }
}

/// `MIT OR Apache-2.0` as its alternatives; one id as itself.
fn split_or(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text.trim();
    while let Some(at) = rest.find(" OR ").or_else(|| rest.find(" or ")) {
        out.push(rest[..at].trim());
        rest = rest[at + 4..].trim();
    }
    out.push(rest);
    out.into_iter().filter(|l| !l.is_empty()).collect()
}

/// Control characters out, at most 200 characters: what a client and a log line can show.
fn one_line(text: &str) -> String {
    text.chars().map(|c| if c.is_control() { ' ' } else { c }).take(200).collect::<String>().trim().to_string()
}

fn rfc3339(unix: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(unix)).to_string()
}

#[cfg(test)]
mod tests;
