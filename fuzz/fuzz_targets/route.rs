//! `hexmirror::route::route` on arbitrary UTF-8 request paths.
//!
//! Invariants: no accepted path has `.`/`..` segments, percent-encoding, backslashes or
//! non-ASCII; an accepted repository resource's `path()` is relative, has no dot or empty
//! segments, re-parses to the same resource, and routes back to the same route.

#![no_main]

use hexmirror::route::{route, Resource, Route, MAX_PATH_LEN};
use libfuzzer_sys::fuzz_target;

fn has_dot_segment(path: &str) -> bool {
    path.split('/').any(|s| s == "." || s == "..")
}

fuzz_target!(|path: &str| {
    let Ok(routed) = route(path) else { return };
    assert!(path.len() <= MAX_PATH_LEN, "accepted an over-long path");
    assert!(path.starts_with('/'), "accepted a relative path {path:?}");
    assert!(!has_dot_segment(path), "accepted a dot segment: {path:?}");
    assert!(!path.contains('%') && !path.contains('\\'), "accepted an encoded or backslashed path {path:?}");
    assert!(path.is_ascii(), "accepted a non-ASCII path {path:?}");
    let Route::Repo { repo, resource } = routed else { return };

    let rel = resource.path();
    assert!(!rel.starts_with('/'), "resource path {rel:?} of {path:?} is absolute");
    assert!(!has_dot_segment(&rel), "resource path {rel:?} of {path:?} has a dot segment");
    assert!(!rel.split('/').any(str::is_empty), "resource path {rel:?} of {path:?} has an empty segment");
    let segments: Vec<&str> = rel.split('/').collect();
    assert_eq!(Resource::parse(&segments), Ok(resource.clone()), "{rel:?} (from {path:?}) does not re-parse");

    if let Some(name) = &repo {
        assert!(!name.is_empty() && !name.contains('/') && name != "." && name != "..", "repo {name:?}");
    }
    let canonical = match &repo {
        Some(name) => format!("/repos/{name}/{rel}"),
        None => format!("/{rel}"),
    };
    assert_eq!(
        route(&canonical),
        Ok(Route::Repo { repo, resource }),
        "{canonical:?} (canonical form of {path:?}) routes elsewhere"
    );
});
