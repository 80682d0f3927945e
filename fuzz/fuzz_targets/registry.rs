//! Registry v2 files: `verify::registry_file` for every `RegistryFile` variant with hex.pm's
//! real key and the demo repository's key, `verify::gunzip`, `verify::signed_payload`, and
//! `registry::decode` of every message type, on hostile bytes. Nothing may panic, and the
//! summaries verification decodes (`VersionsSummary`, `NamesSummary`) must accept exactly what
//! the full messages accept, with the same contents.
//!
//! The input is tried both as the upstream body (gzip expected) and gzipped by the harness, so
//! that mutations reach the protobuf and signature checks behind gzip's CRC.

#![no_main]

use std::io::Write;
use std::sync::LazyLock;

use bytes::Bytes;
use hexmirror::registry::{self, Names, NamesSummary, Package, Policy, Signed, Versions, VersionsSummary};
use hexmirror::verify::{self, PublicKey, RegistryFile};
use libfuzzer_sys::fuzz_target;

/// Small on purpose: a 1 MiB output bound keeps a gzip bomb from slowing the run.
const MAX_UNCOMPRESSED: u64 = 1 << 20;

static KEYS: LazyLock<Vec<PublicKey>> = LazyLock::new(|| {
    [
        include_str!("../../tests/fixtures/hexpm-real/public_key"),
        include_str!("../../tests/fixtures/demo-repo/keys/pub.pem"),
    ]
    .iter()
    .map(|pem| PublicKey::from_pem(pem).expect("fixture keys parse"))
    .collect()
});

const FILES: &[RegistryFile<'static>] = &[
    RegistryFile::Names,
    RegistryFile::Versions,
    RegistryFile::Package("exfmt"),
    RegistryFile::Package("hexdemo_mid"),
    RegistryFile::Policy("acme-policy"),
];

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).expect("writing to a Vec");
    enc.finish().expect("writing to a Vec")
}

fn decode_all(bytes: &[u8]) {
    let names = registry::decode::<Names>(bytes);
    let versions = registry::decode::<Versions>(bytes);
    let _ = registry::decode::<Package>(bytes);
    let _ = registry::decode::<Policy>(bytes);
    // What verification decodes instead: the summaries accept exactly what the full messages
    // do, and say what they say.
    match (versions, registry::decode::<VersionsSummary>(bytes)) {
        (Ok(full), Ok(summary)) => {
            assert_eq!(summary.repository, full.repository);
            assert_eq!(summary.packages, full.packages.len());
            assert_eq!(summary.releases, full.packages.iter().map(|p| p.versions.len()).sum::<usize>());
            let unretired: usize = full.packages.iter().map(|p| p.versions.len().saturating_sub(p.retired.len())).sum();
            assert_eq!(summary.unretired_releases, unretired);
        }
        (full, summary) => assert_eq!(full.is_ok(), summary.is_ok(), "Versions and VersionsSummary disagree"),
    }
    match (names, registry::decode::<NamesSummary>(bytes)) {
        (Ok(full), Ok(summary)) => {
            assert_eq!(summary.repository, full.repository);
            assert_eq!(summary.ends.len(), full.packages.len());
            let mut start = 0;
            for (package, &end) in full.packages.iter().zip(&summary.ends) {
                assert_eq!(&summary.text[start..end], package.name);
                start = end;
            }
            assert_eq!(start, summary.text.len());
        }
        (full, summary) => assert_eq!(full.is_ok(), summary.is_ok(), "Names and NamesSummary disagree"),
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(raw) = verify::gunzip(data, MAX_UNCOMPRESSED) {
        assert!(raw.len() as u64 <= MAX_UNCOMPRESSED, "gunzip returned more than its limit");
    }
    // Which file and origin the error paths are checked as; every one is tried on a body whose
    // signature verifies (RSA is the cost here, so it runs once per body and key otherwise).
    let pick = data.first().copied().unwrap_or(0) as usize;
    for body in [Bytes::copy_from_slice(data), Bytes::from(gzip(data))] {
        let raw = verify::gunzip(&body, MAX_UNCOMPRESSED).ok();
        for key in KEYS.iter() {
            let signed = raw.as_deref().is_some_and(|raw| verify::signed_payload(raw, key).is_ok());
            let files: &[RegistryFile<'_>] = if signed { FILES } else { &FILES[pick % FILES.len()..][..1] };
            let origins: &[&str] = if signed { &["hexpm", "acme"] } else { &[["hexpm", "acme"][pick / 8 % 2]] };
            for file in files {
                for origin in origins {
                    let result = verify::registry_file(*file, origin, body.clone(), key, MAX_UNCOMPRESSED);
                    if let Ok(verified) = result {
                        assert!(signed, "verified without a valid signature");
                        assert_eq!(verified.get().bytes, body, "a verified body must be the upstream's bytes");
                    }
                }
            }
        }
    }
    // The decoders on the raw bytes, and on the payload of a `Signed` whatever its signature.
    if let Ok(signed) = registry::decode::<Signed>(data) {
        decode_all(&signed.payload);
    }
    decode_all(data);
});
