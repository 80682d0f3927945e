//! Air-gap bundles: `bundle::read` and `bundle::read_manifest` on hostile bytes. Nothing may
//! panic; a bundle that reads must have the digest of its bytes, list exactly the objects it
//! carries, and write back to a bundle that reads to the same objects.

#![no_main]

use hexmirror::bundle::{self, Limits};
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};

fuzz_target!(|data: &[u8]| {
    let limits = Limits { max_object_bytes: 1 << 20, max_total_bytes: 4 << 20, max_objects: 1000 };
    let manifest = bundle::read_manifest(data, &limits);
    let Ok(read) = bundle::read(data, &limits) else {
        return;
    };
    assert_eq!(read.digest, hex::encode(Sha256::digest(data)), "the digest is of the bytes read");
    let (listed, _) = manifest.expect("a bundle that reads has a readable manifest");
    assert_eq!(listed, read.manifest);
    assert_eq!(read.manifest.objects.len(), read.objects.len());
    for (info, object) in read.manifest.objects.iter().zip(&read.objects) {
        assert_eq!(info.key, object.key);
        assert_eq!(info.size, object.bytes.len() as u64);
        assert_eq!(info.sha256, hex::encode(Sha256::digest(&object.bytes)));
    }
    let mut again = Vec::new();
    bundle::write(&read.objects, read.manifest.base.as_ref(), &mut again).expect("what was read can be written");
    let mut reread = bundle::read(&again[..], &limits).expect("what was written reads back").manifest;
    // A bundle written by another hexmirror version says so; everything else must agree.
    reread.created_by = read.manifest.created_by.clone();
    assert_eq!(reread, read.manifest);
});
