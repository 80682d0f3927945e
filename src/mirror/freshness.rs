//! Freshness and privacy, decided without I/O and without reading the clock (`now` is passed
//! in): what must hold for a cached copy to be served, how long it is fresh, the validators
//! kept for revalidation, and whether an upstream answer is private.

use bytes::Bytes;
use http::header::HeaderMap;

use crate::cache::{Entry, Validators};
use crate::upstream::UpstreamResponse;
use crate::verify::ReleaseChecksum;

/// What must hold for a cached copy to be served, decided before lookup.
#[derive(Debug, Clone)]
pub(super) enum Check {
    /// Registry files, installs CSVs and signatures: fresh for `ttl` seconds (`None`: any age).
    Ttl(Option<u64>),
    /// A tarball: its checksum must match the verified package record.
    Tarball(ReleaseChecksum),
    /// An installer archive: its sha512 must match the verified installs CSV.
    Installer(String),
    /// Docs: fresh per the upstream's max-age.
    Docs,
    /// A detached signature (`registry.ets.gz.signed`, an installs CSV's `.signed`): verified
    /// against the verified bytes it signs, resolved before (so verifying never fetches);
    /// fresh for `ttl` seconds like `Ttl`.
    Signature { signed: Bytes, ttl: Option<u64> },
}

/// Whether an expired registry file (or signature) may still be answered at `now` while it is
/// revalidated in the background: within `window` seconds past its TTL. A TTL of 0 asks for a
/// copy confirmed now (a record that does not list a requested release), never a stale one.
/// Tarballs, installers
/// and docs never are (a tarball is valid exactly while it matches its record).
pub(super) fn within_stale_window(entry: &Entry, check: &Check, now: u64, window: u64) -> bool {
    let age = now.saturating_sub(entry.fetched_at);
    match check {
        Check::Ttl(Some(ttl)) | Check::Signature { ttl: Some(ttl), .. } => {
            *ttl > 0 && window > 0 && age < ttl.saturating_add(window)
        }
        _ => false,
    }
}

/// Whether a cached entry may be served as it is, at `now` (Unix seconds); `default_ttl` is the
/// lifetime of docs without a max-age.
pub(super) fn is_fresh(entry: &Entry, check: &Check, now: u64, default_ttl: u64) -> bool {
    let age = now.saturating_sub(entry.fetched_at);
    match check {
        Check::Ttl(None) | Check::Signature { ttl: None, .. } => true,
        Check::Ttl(Some(ttl)) | Check::Signature { ttl: Some(ttl), .. } => age < *ttl,
        Check::Tarball(_) | Check::Installer(_) => content_matches(entry, check),
        Check::Docs => age < max_age(entry.upstream.cache_control.as_deref()).unwrap_or(default_ttl),
    }
}

/// False when `entry`'s bytes are not what the verified listing held now says (a tarball's
/// checksum, an installer's digest): such a copy is never served, revalidated or used as stale.
pub(super) fn content_matches(entry: &Entry, check: &Check) -> bool {
    match check {
        Check::Tarball(ReleaseChecksum::Outer(sum)) => entry.sha256 == *sum,
        Check::Tarball(ReleaseChecksum::Inner(sum)) => entry.inner_checksum() == Some(*sum),
        Check::Installer(digest) => entry.sha512_hex().eq_ignore_ascii_case(digest),
        Check::Ttl(_) | Check::Docs | Check::Signature { .. } => true,
    }
}

/// A response is private when marked so, or when it answered a client's credentials and is not
/// marked public (RFC 9111 §3.5). hexmirror's own key makes nothing private by itself: where it
/// fetches for an open target (hex.pm's public repository), the operator chose to share it.
pub(super) fn is_private(response: &UpstreamResponse, client_credential: bool) -> bool {
    let cc = response
        .headers
        .get_all(http::header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(",")
        .to_ascii_lowercase();
    let has = |directive: &str| cc.split(',').any(|d| d.trim().split('=').next() == Some(directive));
    has("private") || (client_credential && response.sent_credentials && !has("public"))
}

pub(super) fn max_age(cache_control: Option<&str>) -> Option<u64> {
    cache_control?.split(',').find_map(|d| d.trim().strip_prefix("max-age=").and_then(|v| v.trim().parse().ok()))
}

pub(super) fn validators_of(headers: &HeaderMap) -> Validators {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    Validators {
        etag: text("etag"),
        last_modified: text("last-modified"),
        cache_control: text("cache-control"),
        signature: text("x-hex-signature").or_else(|| text("x-amz-meta-signature")),
    }
}

/// The `Age` an upstream (a cache itself) reports, in seconds; 0 when absent or malformed.
pub(super) fn age_of(headers: &HeaderMap) -> u64 {
    headers.get(http::header::AGE).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::{Content, Docs};
    use crate::route::{Kind, Resource};
    use sha2::Digest;

    fn entry(body: &'static [u8], fetched_at: u64, cache_control: Option<&str>) -> Entry {
        let docs = Resource::Docs { name: "a".into(), version: "1.0.0".into() };
        let content = Content::Docs(Docs::for_resource(&docs, Bytes::from_static(body)).unwrap());
        let validators = Validators { cache_control: cache_control.map(str::to_string), ..Validators::default() };
        Entry::new(content, Kind::Docs, validators, fetched_at, false)
    }

    #[test]
    fn freshness_at_a_given_time() {
        let sum: [u8; 32] = sha2::Sha256::digest(b"body").into();
        let other = [7u8; 32];
        let signed = || Bytes::from_static(b"signed");
        // (check, fetched_at, cache-control, now, default ttl, fresh)
        type Case = (Check, u64, Option<&'static str>, u64, u64, bool);
        let cases: Vec<Case> = vec![
            (Check::Ttl(None), 0, None, 1_000_000, 300, true),
            (Check::Ttl(Some(300)), 1000, None, 1299, 300, true),
            (Check::Ttl(Some(300)), 1000, None, 1300, 300, false),
            (Check::Signature { signed: signed(), ttl: Some(60) }, 1000, None, 1059, 300, true),
            (Check::Signature { signed: signed(), ttl: Some(60) }, 1000, None, 1060, 300, false),
            (Check::Tarball(ReleaseChecksum::Outer(sum)), 0, None, 1_000_000, 300, true),
            (Check::Tarball(ReleaseChecksum::Outer(other)), 1000, None, 1000, 300, false),
            (Check::Docs, 1000, Some("public, max-age=86400"), 1000 + 86399, 300, true),
            (Check::Docs, 1000, Some("public, max-age=86400"), 1000 + 86400, 300, false),
            (Check::Docs, 1000, None, 1299, 300, true),
            (Check::Docs, 1000, None, 1300, 300, false),
        ];
        for (check, fetched_at, cc, now, ttl, fresh) in cases {
            let e = entry(b"body", fetched_at, cc);
            assert_eq!(is_fresh(&e, &check, now, ttl), fresh, "{check:?} fetched at {fetched_at}, now {now}");
        }
        // Past the TTL, within the stale window: answered while revalidating; never with 0.
        let e = entry(b"body", 1000, None);
        assert!(within_stale_window(&e, &Check::Ttl(Some(300)), 1300, 3600));
        assert!(within_stale_window(&e, &Check::Ttl(Some(300)), 1000 + 300 + 3599, 3600));
        assert!(!within_stale_window(&e, &Check::Ttl(Some(300)), 1000 + 300 + 3600, 3600));
        assert!(!within_stale_window(&e, &Check::Ttl(Some(300)), 1300, 0));
        assert!(!within_stale_window(&e, &Check::Docs, 1300, 3600));
        assert!(!within_stale_window(&e, &Check::Ttl(Some(0)), 1001, 3600), "confirmed now, never stale");
        assert!(!within_stale_window(&e, &Check::Tarball(ReleaseChecksum::Outer(sum)), 1300, 3600));
        // A copy whose bytes are not what the listing says is never usable, fresh or stale.
        assert!(!content_matches(&entry(b"body", 0, None), &Check::Tarball(ReleaseChecksum::Outer(other))));
        assert!(content_matches(&entry(b"body", 0, None), &Check::Ttl(Some(0))));
    }
    use http::{HeaderValue, StatusCode};

    #[test]
    fn privacy_follows_rfc_9111() {
        let response = |cc: Option<&str>, sent: bool| {
            let mut headers = HeaderMap::new();
            if let Some(cc) = cc {
                headers.insert("cache-control", HeaderValue::from_str(cc).unwrap());
            }
            UpstreamResponse {
                status: StatusCode::OK,
                headers,
                body: Bytes::new(),
                sent_credentials: sent,
                url: String::new(),
            }
        };
        assert!(is_private(&response(Some("private, max-age=3600"), false), false));
        assert!(!is_private(&response(Some("public, max-age=3600"), true), true));
        assert!(is_private(&response(None, true), true));
        assert!(is_private(&response(Some("max-age=60"), true), true));
        assert!(!is_private(&response(None, false), false));
        // hexmirror's own key: private only when the upstream says so.
        assert!(!is_private(&response(Some("max-age=60"), true), false));
        assert!(is_private(&response(Some("private"), true), false));
    }

    #[test]
    fn age_header_parsing() {
        let headers = |age: &str| {
            let mut h = HeaderMap::new();
            h.insert("age", HeaderValue::from_str(age).unwrap());
            h
        };
        assert_eq!(age_of(&headers("120")), 120);
        assert_eq!(age_of(&headers("soon")), 0);
        assert_eq!(age_of(&HeaderMap::new()), 0);
    }

    #[test]
    fn max_age_parsing() {
        assert_eq!(max_age(Some("public, max-age=86400")), Some(86400));
        assert_eq!(max_age(Some("private")), None);
        assert_eq!(max_age(None), None);
    }
}
