//! Lock files: `parse_mix_lock`, `parse_rebar_lock` and `parse_lockfile` on arbitrary text.
//! Nothing may panic or overflow the stack; `parse_lockfile` with an explicit file name must
//! agree with the parser it picks.

#![no_main]

use hexmirror::lockfile::{self, LockfileFormat};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let mix = lockfile::parse_mix_lock(text);
    let rebar = lockfile::parse_rebar_lock(text);
    if let Ok(lock) = &mix {
        assert_eq!(lock.format, LockfileFormat::Mix);
    }
    if let Ok(lock) = &rebar {
        assert_eq!(lock.format, LockfileFormat::Rebar);
    }
    assert_eq!(lockfile::parse_lockfile("mix.lock", text), mix, "parse_lockfile(mix.lock) disagrees");
    assert_eq!(lockfile::parse_lockfile("deps/rebar.lock", text), rebar, "parse_lockfile(rebar.lock) disagrees");
    match lockfile::parse_lockfile("lock", text) {
        Ok(lock) if lock.format == LockfileFormat::Mix => assert_eq!(Ok(lock), mix),
        Ok(lock) => assert_eq!(Ok(lock), rebar),
        Err(_) => {}
    }
    // The module's documented invariant on every returned package.
    for lock in [mix, rebar].into_iter().flatten() {
        for package in &lock.packages {
            let mut name = package.name.chars();
            let name_ok = name.next().is_some_and(|c| c.is_ascii_alphabetic())
                && name.all(|c| c.is_ascii_alphanumeric() || c == '_');
            assert!(name_ok, "invalid package name in {package:?}");
            let version_ok = package.version.starts_with(|c: char| c.is_ascii_digit())
                && package.version.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '-'));
            assert!(version_ok, "invalid version in {package:?}");
            assert!(!package.repo.is_empty(), "empty repository in {package:?}");
        }
    }
});
