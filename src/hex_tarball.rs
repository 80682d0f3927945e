//! Hex release tarballs: what hexmirror reads from inside one.
//!
//! A Hex tarball (format 3) is an uncompressed tar of `VERSION`, `CHECKSUM`, `metadata.config`
//! (the release's metadata as Erlang terms, each ended by `.`) and `contents.tar.gz`. This
//! module owns reading those members: the inner checksum over `VERSION`, `metadata.config` and
//! `contents.tar.gz` ([`inner_checksum`], which `verify` checks old releases against), and the
//! licences `metadata.config` declares ([`licenses`], which bundle manifests list). The terms
//! are read by [`crate::term`] with [`Literals::All`], everything Erlang's printer writes.
//!
//! It is pure: bytes in, values out, no I/O and no clock. Tarballs are hostile input: reading
//! one never panics, `metadata.config` is read only up to [`MAX_METADATA_BYTES`], and a
//! licence list that is too long, or holds anything but short printable text, is not taken.

use std::collections::HashMap;
use std::io::Read;

use sha2::{Digest as _, Sha256};

use crate::term::{self, Literals, Term, Value};

/// Largest `metadata.config` read from a tarball for its licences.
pub const MAX_METADATA_BYTES: u64 = 1 << 20;
/// More licences than this, or a longer one, makes the metadata unreadable (empty list).
const MAX_LICENSES: usize = 16;
const MAX_LICENSE_LEN: usize = 128;

/// sha256(VERSION ‖ metadata.config ‖ contents.tar.gz) of a Hex tarball; `None` when the bytes
/// are not a tar archive holding those three members.
pub fn inner_checksum(tarball: &[u8]) -> Option<[u8; 32]> {
    let mut members: HashMap<String, Vec<u8>> = HashMap::new();
    let mut archive = tar::Archive::new(tarball);
    for entry in archive.entries().ok()? {
        let mut entry = entry.ok()?;
        let path = entry.path().ok()?.to_string_lossy().into_owned();
        if matches!(path.as_str(), "VERSION" | "metadata.config" | "contents.tar.gz") {
            let mut data = Vec::new();
            entry.read_to_end(&mut data).ok()?;
            members.insert(path, data);
        }
    }
    let mut hasher = Sha256::new();
    for name in ["VERSION", "metadata.config", "contents.tar.gz"] {
        hasher.update(members.get(name)?);
    }
    Some(hasher.finalize().into())
}

/// The licences a Hex tarball declares; empty when its metadata cannot be read.
pub fn licenses(tarball: &[u8]) -> Vec<String> {
    metadata_config(tarball).and_then(|text| licenses_in(&text)).unwrap_or_default()
}

/// The text of the tarball's `metadata.config` member (UTF-8, or Latin-1 as older tools wrote).
fn metadata_config(tarball: &[u8]) -> Option<String> {
    let mut archive = tar::Archive::new(tarball);
    for entry in archive.entries().ok()? {
        let entry = entry.ok()?;
        if entry.path_bytes().as_ref() != b"metadata.config" {
            continue;
        }
        if !entry.header().entry_type().is_file() || entry.size() > MAX_METADATA_BYTES {
            return None;
        }
        let mut data = Vec::new();
        entry.take(MAX_METADATA_BYTES).read_to_end(&mut data).ok()?;
        return Some(text_of(data));
    }
    None
}

/// Bytes as text: UTF-8, or else Latin-1 (every byte one character).
fn text_of(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| e.into_bytes().iter().map(|&b| char::from(b)).collect())
}

/// The text of a binary (UTF-8, else Latin-1) or a string; atoms and the rest are not text.
fn text(term: &Term) -> Option<String> {
    match &term.value {
        Value::Binary(bytes) => Some(text_of(bytes.clone())),
        Value::Str(s) => Some(s.clone()),
        _ => None,
    }
}

/// Finds `{<<"licenses">>, [<<"MIT">>, ...]}.` among the metadata terms. `None` when the text
/// does not parse, or the licence list is not a list of at most 16 printable strings of at most
/// 128 bytes each; `Some(vec![])` when there is no licence term.
fn licenses_in(metadata: &str) -> Option<Vec<String>> {
    let terms = term::parse_erlang(metadata, Literals::All).ok()?;
    for term in &terms {
        let Value::Tuple(pair) = &term.value else { continue };
        if pair.len() != 2 || text(&pair[0]).as_deref() != Some("licenses") {
            continue;
        }
        let Value::List(items) = &pair[1].value else { return None };
        if items.len() > MAX_LICENSES {
            return None;
        }
        return items
            .iter()
            .map(|item| text(item).filter(|s| s.len() <= MAX_LICENSE_LEN && !s.chars().any(char::is_control)))
            .collect();
    }
    Some(Vec::new())
}

/// The inner checksum a tarball's own `CHECKSUM` member lists (upper-case hex), for tests that
/// recompute it.
#[cfg(test)]
pub(crate) fn listed_checksum(tarball: &[u8]) -> String {
    use std::io::Read;
    let mut listed = String::new();
    for entry in tar::Archive::new(tarball).entries().expect("a tar archive") {
        let mut entry = entry.expect("a tar entry");
        if entry.path().expect("a path").to_str() == Some("CHECKSUM") {
            entry.read_to_string(&mut listed).expect("text");
        }
    }
    listed.trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GLEAM: &[u8] = include_bytes!("../tests/fixtures/hexpm-real/gleam_stdlib-0.14.0.tar");
    const DEMO: &[u8] = include_bytes!("../tests/fixtures/demo-repo/hexpm/tarballs/hexdemo_top-2.0.1.tar");

    #[test]
    fn licences_are_read_from_erlang_terms() {
        let cases: [(&str, Option<&[&str]>); 13] = [
            ("{<<\"licenses\">>,[<<\"MIT\">>]}.\n", Some(&["MIT"])),
            ("{<<\"licenses\">>, [<<\"MIT\">>, <<\"Apache-2.0\">>]}.", Some(&["MIT", "Apache-2.0"])),
            ("% a comment\n{<<\"name\">>,<<\"x\">>}.\n{<<\"licenses\">>,[]}.", Some(&[])),
            ("{<<\"name\">>,<<\"x\">>}.", Some(&[])),
            ("", Some(&[])),
            // What ~p prints for non-ASCII text, in both spellings.
            ("{<<\"licenses\">>,[<<\"Licence \\303\\251\">>]}.", Some(&["Licence é"])),
            ("{<<\"licenses\">>,[<<\"Licence é\"/utf8>>]}.", Some(&["Licence é"])),
            // Erlang semantics: `/utf8` encodes each character, here U+00C3 and U+00A9.
            ("{<<\"licenses\">>,[<<\"\\303\\251\"/utf8>>]}.", Some(&["\u{c3}\u{a9}"])),
            ("{<<\"licenses\">>,[<<76,105,99,195,169>>]}.", Some(&["Lic\u{e9}"])),
            ("{\"licenses\", [\"MIT\" \" or later\"]}.", Some(&["MIT or later"])),
            ("{<<\"licenses\">>,[<<\"MIT\\n\">>]}.", None),
            ("{<<\"licenses\">>,<<\"MIT\">>}.", None),
            ("{<<\"licenses\">>,[<<\"MIT\">>]}", None),
        ];
        for (text, expected) in cases {
            let expected = expected.map(|list| list.iter().map(|s| s.to_string()).collect::<Vec<_>>());
            assert_eq!(licenses_in(text), expected, "{text:?}");
        }
        let many = format!("{{<<\"licenses\">>,[{}]}}.", vec!["<<\"MIT\">>"; MAX_LICENSES + 1].join(","));
        assert_eq!(licenses_in(&many), None);
        let long = format!("{{<<\"licenses\">>,[<<\"{}\">>]}}.", "x".repeat(MAX_LICENSE_LEN + 1));
        assert_eq!(licenses_in(&long), None);
    }

    #[test]
    fn metadata_with_every_printed_literal_still_gives_its_licences() {
        // `extra` may hold any term a package author wrote: floats, characters, improper lists,
        // binaries that are not text.
        let text =
            "{<<\"extra\">>,#{<<\"ratio\">> => 0.5,<<\"c\">> => $a,<<\"l\">> => [a|b],<<\"raw\">> => <<255,0>>}}.\n\
                    {<<\"licenses\">>,[<<\"ISC\">>]}.\n";
        assert_eq!(licenses_in(text), Some(vec!["ISC".to_string()]));
        // A binary that is not UTF-8 is Latin-1, as `text_of` reads the whole file.
        assert_eq!(licenses_in("{<<\"licenses\">>,[<<\"\\374\">>]}."), Some(vec!["ü".to_string()]));
    }

    #[test]
    fn real_and_demo_tarballs() {
        assert_eq!(licenses(GLEAM), ["Apache 2.0"]);
        assert_eq!(licenses(DEMO), ["Apache-2.0"]);
        assert!(licenses(b"not a tarball").is_empty());
        assert_eq!(inner_checksum(GLEAM).map(hex::encode_upper), Some(listed_checksum(GLEAM)));
        assert_eq!(inner_checksum(b"not a tarball"), None);
        assert_eq!(inner_checksum(&DEMO[..1024]), None, "a truncated tarball");
    }
}
