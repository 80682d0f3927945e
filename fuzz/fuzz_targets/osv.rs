//! OSV advisories: `policy::osv::parse` on arbitrary bytes (seeded with GHSA-style files), and
//! `Affected::affects` on the versions the input names.
//!
//! Invariants: nothing panics; a parsed advisory concerns Hex packages only (at least one, each
//! named), and every version it lists one by one is affected.

#![no_main]

use hexmirror::policy::osv;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(Some(advisory)) = osv::parse(bytes) {
        assert!(!advisory.affected.is_empty());
        for affected in &advisory.affected {
            assert!(!affected.name.is_empty());
            for version in &affected.versions {
                assert!(affected.affects(version), "{version} is listed but not affected");
            }
            for version in ["0.0.0", "1.0.0", "1.2.3-rc.1", "99999999999999999999.0.0", "not a version"] {
                let _ = affected.affects(version);
            }
        }
        let all = osv::Advisories::from_list(vec![advisory.clone()]);
        for affected in &advisory.affected {
            for version in &affected.versions {
                assert!(all.affecting(&affected.name, version).is_some());
            }
        }
    }
});
