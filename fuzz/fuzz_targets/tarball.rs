//! Tarballs: `verify::tarball` with outer and inner checksums, and `verify::inner_checksum`, on
//! hostile bytes. Nothing may panic, and the verdicts must be consistent with the hashes.

#![no_main]

use bytes::Bytes;
use hexmirror::verify::{self, ReleaseChecksum, VerifyError};
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};

const MAX_BYTES: u64 = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let body = Bytes::copy_from_slice(data);
    let outer: [u8; 32] = Sha256::digest(data).into();

    let ok = verify::tarball(body.clone(), &ReleaseChecksum::Outer(outer), MAX_BYTES);
    assert!(ok.is_ok(), "a body with its own outer checksum is refused: {ok:?}");
    let mut other = outer;
    other[0] ^= 1;
    let bad = verify::tarball(body.clone(), &ReleaseChecksum::Outer(other), MAX_BYTES);
    assert!(matches!(bad, Err(VerifyError::ChecksumMismatch { .. })), "a wrong outer checksum passed: {bad:?}");
    if !data.is_empty() {
        let limit = data.len() as u64 - 1;
        let small = verify::tarball(body.clone(), &ReleaseChecksum::Outer(outer), limit);
        assert!(matches!(small, Err(VerifyError::TooLarge { .. })), "size limit ignored: {small:?}");
    }

    match verify::inner_checksum(data) {
        Ok(inner) => {
            let ok = verify::tarball(body.clone(), &ReleaseChecksum::Inner(inner), MAX_BYTES);
            assert!(ok.is_ok(), "a tarball with its own inner checksum is refused: {ok:?}");
            let mut other = inner;
            other[31] ^= 0x80;
            let bad = verify::tarball(body, &ReleaseChecksum::Inner(other), MAX_BYTES);
            assert!(matches!(bad, Err(VerifyError::ChecksumMismatch { .. })), "a wrong inner checksum passed");
        }
        Err(e) => {
            assert!(matches!(e, VerifyError::Decode { .. }), "unexpected inner checksum error {e:?}");
            let refused = verify::tarball(body, &ReleaseChecksum::Inner([0; 32]), MAX_BYTES);
            assert!(refused.is_err(), "an undecodable tarball passed an inner checksum");
        }
    }
});
