//! What an offline mirror was asked for and did not have: the other half of the air-gap loop.
//!
//! Every request an offline mirror answers 404 because its store lacks the package record or
//! the release is noted here (repository, package, version when one was asked for, first and
//! last time, count), bounded to [`KEPT`] entries (the least recently asked go first), counted in
//! `hexmirror_offline_missing_total`, and kept in the store as the document `missing.json`
//! (written at most every [`SAVE_EVERY`] and at shutdown), so it survives restarts. `hexmirror
//! missing --format requirements` turns it into lines that `sync --requirements FILE` takes
//! outside, so the next bundle carries exactly what the site lacked.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Entries kept; beyond it, the least recently asked for is dropped.
pub const KEPT: usize = 10_000;

/// How often a changed log is written to the store.
pub const SAVE_EVERY: Duration = Duration::from_secs(10);

/// The store document that holds the log.
pub const DOC: &str = "missing.json";

/// One thing clients asked for and the offline mirror lacked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Missing {
    /// The cache namespace: a repository's name, or `hexpm~ORG` for a hex.pm organization.
    pub repo: String,
    pub package: String,
    /// The release asked for (a tarball), or `None` for the package record itself.
    pub version: Option<String>,
    /// Unix milliseconds of the first and last request.
    pub first: u64,
    pub last: u64,
    pub count: u64,
}

impl Missing {
    /// `[REPO/]NAME [== VERSION]`, a line `sync --requirements` takes: a hex.pm organization's
    /// packages as `ORG/NAME`, a configured repository's as `REPO/NAME`, hex.pm's as `NAME`.
    pub fn requirement_line(&self) -> String {
        let repo = match self.repo.split_once('~') {
            Some((_, org)) => format!("{org}/"),
            None if self.repo == crate::config::HEXPM => String::new(),
            None => format!("{}/", self.repo),
        };
        match &self.version {
            Some(version) => format!("{repo}{} == {version}", self.package),
            None => format!("{repo}{}", self.package),
        }
    }
}

type Id = (String, String, Option<String>);

/// The log, in memory; saved by the mirror (see the module docs).
#[derive(Default)]
pub struct MissingLog {
    entries: Mutex<HashMap<Id, Missing>>,
    dirty: AtomicBool,
}

impl MissingLog {
    /// Notes one request for what is missing, at `now` (Unix milliseconds).
    pub fn note(&self, repo: &str, package: &str, version: Option<&str>, now: u64) {
        let mut entries = self.entries.lock().expect("never poisoned: no panics while held");
        let id = (repo.to_string(), package.to_string(), version.map(str::to_string));
        match entries.get_mut(&id) {
            Some(entry) => {
                entry.last = entry.last.max(now);
                entry.count += 1;
            }
            None => {
                if entries.len() >= KEPT {
                    let oldest = entries.iter().min_by_key(|(_, e)| e.last).map(|(id, _)| id.clone());
                    if let Some(oldest) = oldest {
                        entries.remove(&oldest);
                    }
                }
                let (repo, package, version) = id.clone();
                entries.insert(id, Missing { repo, package, version, first: now, last: now, count: 1 });
            }
        }
        self.dirty.store(true, Ordering::Relaxed);
    }

    /// Every entry, the most asked for first (then by name).
    pub fn entries(&self) -> Vec<Missing> {
        let entries = self.entries.lock().expect("never poisoned: no panics while held");
        let mut list: Vec<Missing> = entries.values().cloned().collect();
        list.sort_by(|a, b| {
            b.count
                .cmp(&a.count)
                .then_with(|| (&a.repo, &a.package, &a.version).cmp(&(&b.repo, &b.package, &b.version)))
        });
        list
    }

    /// Adds what earlier runs (or other replicas) saved: counts add up, times widen.
    pub fn merge(&self, saved: Vec<Missing>) {
        let mut entries = self.entries.lock().expect("never poisoned: no panics while held");
        for entry in saved {
            let id = (entry.repo.clone(), entry.package.clone(), entry.version.clone());
            let full = entries.len() >= KEPT;
            match entries.get_mut(&id) {
                Some(known) => {
                    known.first = known.first.min(entry.first);
                    known.last = known.last.max(entry.last);
                    known.count += entry.count;
                }
                None if !full => {
                    entries.insert(id, entry);
                }
                None => {}
            }
        }
    }

    /// The log as the store keeps it, when it changed since the last call.
    pub fn take_changes(&self) -> Option<Vec<u8>> {
        self.dirty
            .swap(false, Ordering::Relaxed)
            .then(|| serde_json::to_vec(&self.entries()).expect("the log serializes"))
    }
}

/// Merges every saved copy of the log (each replica keeps its own in a shared store).
pub fn merged(copies: &[bytes::Bytes]) -> Vec<Missing> {
    let log = MissingLog::default();
    for copy in copies {
        match serde_json::from_slice::<Vec<Missing>>(copy) {
            Ok(saved) => log.merge(saved),
            Err(e) => tracing::warn!(error = %e, "store: a saved log of missing requests is damaged; left out"),
        }
    }
    log.entries()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_count_and_widen_and_the_oldest_goes_first() {
        let log = MissingLog::default();
        log.note("hexpm", "a", Some("1.0.0"), 10);
        log.note("hexpm", "a", Some("1.0.0"), 30);
        log.note("hexpm~acme", "b", None, 20);
        let entries = log.entries();
        assert_eq!(
            entries[0],
            Missing {
                repo: "hexpm".into(),
                package: "a".into(),
                version: Some("1.0.0".into()),
                first: 10,
                last: 30,
                count: 2
            }
        );
        assert_eq!(entries[0].requirement_line(), "a == 1.0.0");
        assert_eq!(entries[1].requirement_line(), "acme/b");
        let corp = Missing { repo: "corp".into(), package: "c".into(), version: None, first: 1, last: 1, count: 1 };
        assert_eq!(corp.requirement_line(), "corp/c");
        assert!(log.take_changes().is_some());
        assert!(log.take_changes().is_none(), "nothing changed since");
        let copies = vec![bytes::Bytes::from(serde_json::to_vec(&log.entries()).unwrap()); 2];
        let both = merged(&copies);
        assert_eq!(both[0].count, 4);
        for i in 0..KEPT {
            log.note("hexpm", &format!("p{i}"), None, 100 + i as u64);
        }
        let entries = log.entries();
        assert_eq!(entries.len(), KEPT);
        assert!(!entries.iter().any(|e| e.package == "b"), "the least recently asked was dropped first");
    }
}
