//! Configuration: `config::load_from` on arbitrary TOML (written to a file on tmpfs), plus
//! `config::parse_size` and `config::upstream_uri` on the raw text. Nothing may panic; a
//! configuration that loads keeps its documented guarantees.
//!
//! Loading reads the files a configuration names (keys, secrets). Inputs that could name a
//! device or kernel file (`/dev/zero` never ends) are skipped: that is the operator's own
//! choice, not hostile input.

#![no_main]

use std::path::PathBuf;
use std::sync::LazyLock;

use hexmirror::config;
use libfuzzer_sys::fuzz_target;

static FILE: LazyLock<PathBuf> = LazyLock::new(|| {
    let shm = std::path::Path::new("/dev/shm");
    let dir = if shm.is_dir() { shm.to_path_buf() } else { std::env::temp_dir() };
    dir.join(format!("hexmirror-fuzz-config-{}.toml", std::process::id()))
});

fn names_a_special_file(text: &str) -> bool {
    ["dev", "proc", "sys", "\\u", "\\U", "fifo", "pipe"].iter().any(|n| text.contains(n))
}

fuzz_target!(|text: &str| {
    if let Ok(size) = config::parse_size(text) {
        assert!(!text.trim().is_empty(), "an empty size parsed as {size}");
    }
    if let Ok(uri) = config::upstream_uri(text) {
        assert!(matches!(uri.scheme_str(), Some("http" | "https")), "{text:?} gave {uri}");
        assert!(uri.host().is_some() && uri.query().is_none(), "{text:?} gave {uri}");
    }
    if names_a_special_file(text) {
        return;
    }
    std::fs::write(&*FILE, text).expect("tmpfs is writable");
    let env = figment::providers::Env::prefixed("HEXMIRROR_FUZZ_NONE_");
    if let Ok(config) = config::load_from(Some(&FILE), env) {
        assert!(config.repos.contains_key("hexpm"), "loaded without the hexpm repository");
        assert!(config.max_registry_bytes > 0 && config.max_tarball_bytes > 0);
        assert!(config.max_upstream_requests >= 1);
        assert!(!config.timeouts.connect.is_zero() && !config.timeouts.read.is_zero());
        assert!(!config.timeouts.transfer.is_zero());
        for repo in config.repos.values() {
            assert!(!repo.upstreams.is_empty(), "repository {} has no upstream", repo.name);
        }
    }
});
