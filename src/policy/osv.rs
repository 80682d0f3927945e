//! Security advisories in the OSV format (<https://ossf.github.io/osv-schema/>), as the GitHub
//! Advisory Database exports them: one JSON file per advisory. Only what concerns the `Hex`
//! ecosystem is kept: each `affected[]` entry whose `package.ecosystem` is `Hex`, with its
//! `ranges[]` of type `SEMVER` or `ECOSYSTEM` (`events`: `introduced`, `fixed`,
//! `last_affected`; `limit` is ignored) and its explicit `versions` list. A withdrawn advisory
//! affects nothing. Parsing is pure; [`load_dir`] reads a directory of such files.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use semver::Version;
use serde::Deserialize;

/// The largest advisory file read (GHSA's are a few kilobytes).
pub const MAX_FILE_BYTES: u64 = 4 << 20;
/// The most files a directory may hold (GHSA has about 30 000 advisories, ~100 for Hex).
pub const MAX_FILES: usize = 200_000;

/// One advisory, as far as it concerns Hex packages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advisory {
    pub id: String,
    /// One line: the summary, else the first line of the details, else nothing.
    pub summary: String,
    pub affected: Vec<Affected>,
}

/// The versions of one package an advisory affects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Affected {
    pub name: String,
    /// Each range's events, sorted by version (`introduced: "0"` first).
    pub ranges: Vec<Vec<Event>>,
    /// Versions listed one by one, as written.
    pub versions: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `None` for `"0"`: every version from the first.
    Introduced(Option<Version>),
    Fixed(Version),
    LastAffected(Version),
}

impl Event {
    fn version(&self) -> Option<&Version> {
        match self {
            Event::Introduced(v) => v.as_ref(),
            Event::Fixed(v) | Event::LastAffected(v) => Some(v),
        }
    }
}

/// Why an advisory file cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OsvError {
    #[error("not an OSV advisory: {0}")]
    Json(String),
    #[error("advisory {id}: {what} {version:?} is not a version")]
    Version { id: String, what: &'static str, version: String },
    #[error("advisory {id}: a range event names none of introduced, fixed, last_affected, limit")]
    Event { id: String },
}

#[derive(Deserialize)]
struct RawAdvisory {
    id: String,
    #[serde(default)]
    summary: Option<String>,
    #[serde(default)]
    details: Option<String>,
    #[serde(default)]
    withdrawn: Option<String>,
    #[serde(default)]
    affected: Vec<RawAffected>,
}

#[derive(Deserialize)]
struct RawAffected {
    #[serde(default)]
    package: Option<RawPackage>,
    #[serde(default)]
    ranges: Vec<RawRange>,
    #[serde(default)]
    versions: Vec<String>,
}

#[derive(Deserialize)]
struct RawPackage {
    #[serde(default)]
    ecosystem: String,
    #[serde(default)]
    name: String,
}

#[derive(Deserialize)]
struct RawRange {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    events: Vec<RawEvent>,
}

#[derive(Deserialize)]
struct RawEvent {
    #[serde(default)]
    introduced: Option<String>,
    #[serde(default)]
    fixed: Option<String>,
    #[serde(default)]
    last_affected: Option<String>,
    #[serde(default)]
    limit: Option<String>,
}

/// A version as advisories write them: a full Hex version, or `1.2` / `1` (missing parts 0).
fn version_of(text: &str) -> Option<Version> {
    let text = text.trim();
    if let Ok(v) = crate::requirement::parse_version(text) {
        return Some(v);
    }
    let parts: Vec<&str> = text.split('.').collect();
    if parts.len() < 3 && parts.iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())) {
        let mut numbers = parts.iter().map(|p| p.parse::<u64>().ok());
        let major = numbers.next()??;
        let minor = numbers.next().flatten().unwrap_or(0);
        return Some(Version::new(major, minor, 0));
    }
    None
}

/// Parses one OSV file; `Ok(None)` when it concerns no Hex package or was withdrawn.
pub fn parse(text: &[u8]) -> Result<Option<Advisory>, OsvError> {
    let raw: RawAdvisory = serde_json::from_slice(text).map_err(|e| OsvError::Json(e.to_string()))?;
    if raw.withdrawn.is_some() {
        return Ok(None);
    }
    let id = raw.id.chars().filter(|c| !c.is_control()).take(100).collect::<String>();
    let line = |text: &Option<String>| {
        text.as_deref().and_then(|t| t.lines().map(str::trim).find(|l| !l.is_empty())).map(str::to_string)
    };
    let summary: String = line(&raw.summary).or_else(|| line(&raw.details)).unwrap_or_default();
    let summary = summary.chars().filter(|c| !c.is_control()).take(200).collect();
    let mut affected = Vec::new();
    for entry in raw.affected {
        let Some(package) = entry.package else { continue };
        if package.ecosystem != "Hex" || package.name.is_empty() {
            continue;
        }
        let mut ranges = Vec::new();
        for range in entry.ranges {
            if range.kind != "SEMVER" && range.kind != "ECOSYSTEM" {
                continue;
            }
            let mut events = Vec::new();
            for event in range.events {
                let bad = |what, version: &str| OsvError::Version { id: id.clone(), what, version: version.into() };
                let parsed = match (&event.introduced, &event.fixed, &event.last_affected, &event.limit) {
                    (Some(v), _, _, _) if v.trim() == "0" => Event::Introduced(None),
                    (Some(v), _, _, _) => Event::Introduced(Some(version_of(v).ok_or_else(|| bad("introduced", v))?)),
                    (_, Some(v), _, _) => Event::Fixed(version_of(v).ok_or_else(|| bad("fixed", v))?),
                    (_, _, Some(v), _) => Event::LastAffected(version_of(v).ok_or_else(|| bad("last_affected", v))?),
                    (_, _, _, Some(_)) => continue,
                    _ => return Err(OsvError::Event { id }),
                };
                events.push(parsed);
            }
            // Sorted by version, `introduced: 0` first (OSV events need not come in order).
            events.sort_by(|a, b| match (a.version(), b.version()) {
                (None, None) => std::cmp::Ordering::Equal,
                (None, Some(_)) => std::cmp::Ordering::Less,
                (Some(_), None) => std::cmp::Ordering::Greater,
                (Some(x), Some(y)) => x.cmp_precedence(y),
            });
            ranges.push(events);
        }
        affected.push(Affected { name: package.name, ranges, versions: entry.versions });
    }
    Ok((!affected.is_empty()).then_some(Advisory { id, summary, affected }))
}

impl Affected {
    /// Whether `version` (as listed in the registry) is affected.
    pub fn affects(&self, version: &str) -> bool {
        if self.versions.iter().any(|v| v == version) {
            return true;
        }
        let Some(parsed) = version_of(version) else { return false };
        self.ranges.iter().any(|events| in_range(events, &parsed))
    }
}

/// OSV's evaluation of one range's sorted events: affected from an `introduced` at or below
/// the version until a `fixed` at or below it, or a `last_affected` below it.
fn in_range(events: &[Event], version: &Version) -> bool {
    let mut affected = false;
    for event in events {
        match event {
            Event::Introduced(None) => affected = true,
            Event::Introduced(Some(v)) if v.cmp_precedence(version).is_le() => affected = true,
            Event::Fixed(v) if v.cmp_precedence(version).is_le() => affected = false,
            Event::LastAffected(v) if v.cmp_precedence(version).is_lt() => affected = false,
            _ => {}
        }
    }
    affected
}

/// Every advisory of a directory, found by package name.
#[derive(Debug, Default)]
pub struct Advisories {
    by_name: HashMap<String, Vec<(Arc<Advisory>, usize)>>,
    /// How many advisory files concern Hex packages.
    pub count: usize,
}

impl Advisories {
    pub fn from_list(list: Vec<Advisory>) -> Advisories {
        let mut by_name: HashMap<String, Vec<(Arc<Advisory>, usize)>> = HashMap::new();
        let count = list.len();
        for advisory in list {
            let advisory = Arc::new(advisory);
            for (i, affected) in advisory.affected.iter().enumerate() {
                by_name.entry(affected.name.clone()).or_default().push((advisory.clone(), i));
            }
        }
        Advisories { by_name, count }
    }

    /// The first advisory (by id) that affects `name` `version`.
    pub fn affecting(&self, name: &str, version: &str) -> Option<&Advisory> {
        let mut found: Vec<&Advisory> = self
            .by_name
            .get(name)?
            .iter()
            .filter(|(advisory, i)| advisory.affected[*i].affects(version))
            .map(|(advisory, _)| advisory.as_ref())
            .collect();
        found.sort_by(|a, b| a.id.cmp(&b.id));
        found.first().copied()
    }
}

/// Why a directory of advisories cannot be read; names the file.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LoadError {
    #[error("advisories {}: {error}", path.display())]
    File { path: PathBuf, error: String },
    #[error("advisories {}: more than {MAX_FILES} files", dir.display())]
    TooMany { dir: PathBuf },
}

/// Reads every `*.json` file under `dir` (recursively, as the GitHub Advisory Database lays them
/// out: `advisories/github-reviewed/YEAR/MONTH/ID/ID.json`). Any file that cannot be read or
/// parsed fails the whole load, naming it.
pub fn load_dir(dir: &Path) -> Result<Advisories, LoadError> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(at) = pending.pop() {
        let entries = std::fs::read_dir(&at).map_err(|e| LoadError::File { path: at.clone(), error: e.to_string() })?;
        for entry in entries {
            let entry = entry.map_err(|e| LoadError::File { path: at.clone(), error: e.to_string() })?;
            let path = entry.path();
            let kind = entry.file_type().map_err(|e| LoadError::File { path: path.clone(), error: e.to_string() })?;
            if kind.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "json") {
                files.push(path);
                if files.len() > MAX_FILES {
                    return Err(LoadError::TooMany { dir: dir.to_path_buf() });
                }
            }
        }
    }
    files.sort();
    let mut list = Vec::new();
    for path in files {
        let fail = |error: String| LoadError::File { path: path.clone(), error };
        let size = std::fs::metadata(&path).map_err(|e| fail(e.to_string()))?.len();
        if size > MAX_FILE_BYTES {
            return Err(fail(format!("larger than {MAX_FILE_BYTES} bytes")));
        }
        let text = std::fs::read(&path).map_err(|e| fail(e.to_string()))?;
        if let Some(advisory) = parse(&text).map_err(|e| fail(e.to_string()))? {
            list.push(advisory);
        }
    }
    Ok(Advisories::from_list(list))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ghsa(name: &str, events: &str, versions: &str) -> String {
        format!(
            r#"{{"schema_version":"1.4.0","id":"GHSA-test-0001","summary":"Bad thing in {name}\nmore",
            "aliases":["CVE-2024-1"],"affected":[{{"package":{{"ecosystem":"Hex","name":"{name}","purl":"pkg:hex/{name}"}},
            "ranges":[{{"type":"ECOSYSTEM","events":{events}}}],"versions":{versions}}},
            {{"package":{{"ecosystem":"npm","name":"other"}},"ranges":[{{"type":"SEMVER","events":[{{"introduced":"0"}}]}}]}}],
            "database_specific":{{"severity":"HIGH"}}}}"#
        )
    }

    #[test]
    fn introduced_and_fixed_ranges() {
        let a = parse(ghsa("plug", r#"[{"fixed":"1.2.3"},{"introduced":"1.0.0"}]"#, "[]").as_bytes()).unwrap().unwrap();
        assert_eq!((a.id.as_str(), a.summary.as_str()), ("GHSA-test-0001", "Bad thing in plug"));
        assert_eq!(a.affected.len(), 1, "only the Hex package is kept");
        let plug = &a.affected[0];
        for (version, expected) in [
            ("0.9.9", false),
            ("1.0.0", true),
            ("1.2.2", true),
            ("1.2.3-rc.1", true),
            ("1.2.3", false),
            ("2.0.0", false),
        ] {
            assert_eq!(plug.affects(version), expected, "{version}");
        }
    }

    #[test]
    fn from_zero_last_affected_several_ranges_and_lists() {
        let a = parse(ghsa("p", r#"[{"introduced":"0"},{"last_affected":"1.1"}]"#, r#"["3.0.0"]"#).as_bytes())
            .unwrap()
            .unwrap();
        let p = &a.affected[0];
        assert!(p.affects("0.0.1") && p.affects("1.1.0") && !p.affects("1.1.1"));
        assert!(p.affects("3.0.0"), "listed on its own");
        let two = r#"[{"introduced":"1.0.0"},{"fixed":"1.0.5"},{"introduced":"2.0.0"},{"fixed":"2.0.1"}]"#;
        let p = parse(ghsa("p", two, "[]").as_bytes()).unwrap().unwrap().affected.remove(0);
        assert!(p.affects("1.0.4") && !p.affects("1.5.0") && p.affects("2.0.0") && !p.affects("2.0.1"));
        let open = parse(ghsa("p", r#"[{"introduced":"2.0.0"}]"#, "[]").as_bytes()).unwrap().unwrap();
        assert!(open.affected[0].affects("99.0.0") && !open.affected[0].affects("1.9.9"));
    }

    #[test]
    fn other_ecosystems_and_withdrawn_advisories_affect_nothing() {
        let npm = r#"{"id":"X","affected":[{"package":{"ecosystem":"npm","name":"plug"},"versions":["1.0.0"]}]}"#;
        assert_eq!(parse(npm.as_bytes()).unwrap(), None);
        let withdrawn =
            ghsa("plug", r#"[{"introduced":"0"}]"#, "[]").replacen("{", r#"{"withdrawn":"2024-01-01T00:00:00Z","#, 1);
        assert_eq!(parse(withdrawn.as_bytes()).unwrap(), None);
    }

    #[test]
    fn bad_files_say_why() {
        assert!(matches!(parse(b"{"), Err(OsvError::Json(_))));
        assert!(matches!(parse(b"[]"), Err(OsvError::Json(_))));
        let e = parse(ghsa("p", r#"[{"fixed":"one"}]"#, "[]").as_bytes()).unwrap_err().to_string();
        assert_eq!(e, "advisory GHSA-test-0001: fixed \"one\" is not a version");
        let e = parse(ghsa("p", r#"[{"nothing":"1"}]"#, "[]").as_bytes()).unwrap_err().to_string();
        assert!(e.contains("names none of"), "{e}");
    }

    #[test]
    fn a_directory_is_read_recursively_and_a_bad_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("advisories/github-reviewed/2024/01/GHSA-test-0001");
        std::fs::create_dir_all(&deep).unwrap();
        std::fs::write(deep.join("GHSA-test-0001.json"), ghsa("plug", r#"[{"introduced":"0"}]"#, "[]")).unwrap();
        std::fs::write(dir.path().join("README.md"), "not json, not read").unwrap();
        let all = load_dir(dir.path()).unwrap();
        assert_eq!(all.count, 1);
        assert_eq!(all.affecting("plug", "1.0.0").map(|a| a.id.as_str()), Some("GHSA-test-0001"));
        assert!(all.affecting("cowboy", "1.0.0").is_none());
        std::fs::write(deep.join("broken.json"), "{").unwrap();
        let e = load_dir(dir.path()).unwrap_err().to_string();
        assert!(e.contains("broken.json") && e.contains("not an OSV advisory"), "{e}");
    }
}
