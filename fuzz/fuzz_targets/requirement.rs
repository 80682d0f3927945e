//! Hex requirements: `Requirement::parse` + `matches`, `parse_version`, `PackageSpec::parse` +
//! `matches`, on arbitrary text: `REQUIREMENT`, then optionally a newline and a `VERSION`.
//!
//! Invariants: nothing panics; a parsed requirement prints to text that parses back to the same
//! requirement; `allow_pre` only ever admits more versions.

#![no_main]

use hexmirror::requirement::{parse_version, PackageSpec, Requirement};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let (req_text, version_text) = text.split_once('\n').unwrap_or((text, "1.2.3-rc.1+build.5"));
    let mut versions = Vec::new();
    if let Ok(v) = parse_version(version_text) {
        versions.push(v);
    }
    if let Ok(v) = semver::Version::parse(version_text) {
        versions.push(v);
    }
    versions.push(semver::Version::new(u64::MAX, u64::MAX, u64::MAX));
    versions.push(semver::Version::new(0, 0, 0));

    if let Ok(requirement) = Requirement::parse(req_text) {
        let printed = requirement.to_string();
        assert_eq!(Requirement::parse(&printed).as_ref(), Ok(&requirement), "{req_text:?} printed as {printed:?}");
        for v in &versions {
            let strict = requirement.matches(v, false);
            let loose = requirement.matches(v, true);
            assert!(!strict || loose, "{req_text:?}: {v} matches without allow_pre but not with it");
        }
    }
    if let Ok(spec) = PackageSpec::parse(req_text) {
        assert!(!spec.name.is_empty(), "{req_text:?}: empty package name");
        let printed = spec.to_string();
        assert_eq!(PackageSpec::parse(&printed).as_ref(), Ok(&spec), "{req_text:?} printed as {printed:?}");
        for v in &versions {
            assert!(!spec.matches(v, false) || spec.matches(v, true), "{req_text:?}: allow_pre narrowed {v}");
        }
    }
});
