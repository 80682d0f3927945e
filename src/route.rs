//! Request paths to routes: the pure, strict parser that every request passes first.
//!
//! `route` turns a request path into a [`Route`] or refuses it. Everything it accepts is a
//! well-formed Hex repository resource (or an operations endpoint); everything else is refused
//! here, before any cache or upstream is touched, so no client-chosen string ever becomes an
//! upstream URL or a storage key without passing these rules. It does no I/O.

/// Longest request path accepted.
pub const MAX_PATH_LEN: usize = 1024;
const MAX_NAME_LEN: usize = 128;
const MAX_VERSION_LEN: usize = 128;

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Healthz,
    Readyz,
    Metrics,
    /// A repository resource. `repo` is `None` for the root (the `hexpm` repository) and the name
    /// after `/repos/` otherwise (a configured repository or a hex.pm organization).
    Repo {
        repo: Option<String>,
        resource: Resource,
    },
}

/// A repository resource, with its validated parts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Resource {
    Names,
    Versions,
    Package(String),
    Tarball {
        name: String,
        version: String,
    },
    Docs {
        name: String,
        version: String,
    },
    PublicKey,
    Policy(String),
    RegistryV1,
    RegistryV1Signed,
    /// `/installs/LIST.csv`: a signed list of installer archives (`hex-1.x`, `rebar3-1.x`).
    InstallsList(String),
    /// `/installs/LIST.csv.signed`: that list's detached signature.
    InstallsListSignature(String),
    /// `/installs/ELIXIR/APP-VERSION` (`.ez` for Hex): an installer archive for one Elixir
    /// version, verified against the sha512 its list gives.
    Installer {
        elixir: String,
        app: String,
        version: String,
        ez: bool,
    },
}

/// The closed set of resource kinds, used as a metric label and in logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Names,
    Versions,
    Package,
    Tarball,
    Docs,
    PublicKey,
    Policy,
    RegistryV1,
    Installs,
}

impl Kind {
    pub const ALL: [Kind; 9] = [
        Kind::Names,
        Kind::Versions,
        Kind::Package,
        Kind::Tarball,
        Kind::Docs,
        Kind::PublicKey,
        Kind::Policy,
        Kind::RegistryV1,
        Kind::Installs,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Names => "names",
            Kind::Versions => "versions",
            Kind::Package => "package",
            Kind::Tarball => "tarball",
            Kind::Docs => "docs",
            Kind::PublicKey => "public_key",
            Kind::Policy => "policy",
            Kind::RegistryV1 => "registry_v1",
            Kind::Installs => "installs",
        }
    }
}

impl Resource {
    pub fn kind(&self) -> Kind {
        match self {
            Resource::Names => Kind::Names,
            Resource::Versions => Kind::Versions,
            Resource::Package(_) => Kind::Package,
            Resource::Tarball { .. } => Kind::Tarball,
            Resource::Docs { .. } => Kind::Docs,
            Resource::PublicKey => Kind::PublicKey,
            Resource::Policy(_) => Kind::Policy,
            Resource::RegistryV1 | Resource::RegistryV1Signed => Kind::RegistryV1,
            Resource::InstallsList(_) | Resource::InstallsListSignature(_) | Resource::Installer { .. } => {
                Kind::Installs
            }
        }
    }

    /// The path of this resource inside its repository, without a leading slash.
    pub fn path(&self) -> String {
        match self {
            Resource::Names => "names".into(),
            Resource::Versions => "versions".into(),
            Resource::Package(name) => format!("packages/{name}"),
            Resource::Tarball { name, version } => format!("tarballs/{name}-{version}.tar"),
            Resource::Docs { name, version } => format!("docs/{name}-{version}.tar.gz"),
            Resource::PublicKey => "public_key".into(),
            Resource::Policy(name) => format!("policies/{name}"),
            Resource::RegistryV1 => "registry.ets.gz".into(),
            Resource::RegistryV1Signed => "registry.ets.gz.signed".into(),
            Resource::InstallsList(list) => format!("installs/{list}.csv"),
            Resource::InstallsListSignature(list) => format!("installs/{list}.csv.signed"),
            Resource::Installer { elixir, app, version, ez } => {
                format!("installs/{elixir}/{app}-{version}{}", if *ez { ".ez" } else { "" })
            }
        }
    }

    /// Parses a resource path inside a repository (the inverse of [`Resource::path`]).
    pub fn parse(segments: &[&str]) -> Result<Resource, RouteError> {
        match segments {
            ["names"] => Ok(Resource::Names),
            ["versions"] => Ok(Resource::Versions),
            ["public_key"] => Ok(Resource::PublicKey),
            ["registry.ets.gz"] => Ok(Resource::RegistryV1),
            ["registry.ets.gz.signed"] => Ok(Resource::RegistryV1Signed),
            ["packages", name] => Ok(Resource::Package(package_name(name)?.to_string())),
            ["tarballs", file] => {
                let stem = file.strip_suffix(".tar").ok_or(RouteError::NotFound)?;
                let (name, version) = release(stem)?;
                Ok(Resource::Tarball { name, version })
            }
            ["docs", file] => {
                let stem = file.strip_suffix(".tar.gz").ok_or(RouteError::NotFound)?;
                let (name, version) = release(stem)?;
                Ok(Resource::Docs { name, version })
            }
            ["policies", name] => Ok(Resource::Policy(policy_name(name)?.to_string())),
            ["installs", file] => {
                let file = install_segment(file)?;
                if let Some(list) = file.strip_suffix(".csv.signed").filter(|l| !l.is_empty()) {
                    Ok(Resource::InstallsListSignature(list.to_string()))
                } else if let Some(list) = file.strip_suffix(".csv").filter(|l| !l.is_empty()) {
                    Ok(Resource::InstallsList(list.to_string()))
                } else {
                    Err(RouteError::NotFound)
                }
            }
            ["installs", dir, file] => {
                let (elixir, file) = (install_segment(dir)?, install_segment(file)?);
                let (stem, ez) = match file.strip_suffix(".ez") {
                    Some(stem) => (stem, true),
                    None => (file, false),
                };
                match stem.split_once('-') {
                    Some((app, version)) if !app.is_empty() && !version.is_empty() => Ok(Resource::Installer {
                        elixir: elixir.to_string(),
                        app: app.to_string(),
                        version: version.to_string(),
                        ez,
                    }),
                    _ => Err(RouteError::NotFound),
                }
            }
            _ => Err(RouteError::NotFound),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("not a repository resource")]
    NotFound,
    #[error("bad request path: {0}")]
    BadRequest(&'static str),
}

/// Parses a request path (without the query string).
pub fn route(path: &str) -> Result<Route, RouteError> {
    if path.len() > MAX_PATH_LEN {
        return Err(RouteError::BadRequest("path too long"));
    }
    if !path.starts_with('/') {
        return Err(RouteError::BadRequest("path must be absolute"));
    }
    if path.contains('%') {
        // Hex clients never percent-encode these paths; an encoded slash, dot or NUL is an attack.
        return Err(RouteError::BadRequest("encoded characters are not accepted"));
    }
    if path.bytes().any(|b| b.is_ascii_control() || b == b'\\' || !b.is_ascii()) {
        return Err(RouteError::BadRequest("invalid character"));
    }
    // Empty segments come from doubled slashes (a base URL ending in `/`): tolerate them.
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if segments.iter().any(|s| *s == "." || *s == "..") {
        return Err(RouteError::BadRequest("dot segments are not accepted"));
    }
    match segments.as_slice() {
        ["healthz"] => Ok(Route::Healthz),
        ["readyz"] => Ok(Route::Readyz),
        ["metrics"] => Ok(Route::Metrics),
        ["repos", repo, rest @ ..] => {
            let repo = repo_name(repo)?.to_string();
            Ok(Route::Repo { repo: Some(repo), resource: Resource::parse(rest)? })
        }
        rest => Ok(Route::Repo { repo: None, resource: Resource::parse(rest)? }),
    }
}

/// A package name as hex.pm has them: a letter, then letters, digits and underscores. New names
/// are lower case, but legacy packages with capitals (`yEnc`, `addressBook`) are still served.
pub fn package_name(name: &str) -> Result<&str, RouteError> {
    let mut bytes = name.bytes();
    let first_ok = bytes.next().is_some_and(|b| b.is_ascii_alphabetic());
    if first_ok && name.len() <= MAX_NAME_LEN && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        Ok(name)
    } else {
        Err(RouteError::BadRequest("invalid package name"))
    }
}

/// A version: semver, starting with a digit; `+build` metadata is taken literally.
pub fn version(version: &str) -> Result<&str, RouteError> {
    let mut bytes = version.bytes();
    let first_ok = bytes.next().is_some_and(|b| b.is_ascii_digit());
    if first_ok
        && version.len() <= MAX_VERSION_LEN
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'+'))
    {
        Ok(version)
    } else {
        Err(RouteError::BadRequest("invalid version"))
    }
}

/// `NAME-VERSION`: package names hold no `-`, so the first `-` separates them.
fn release(stem: &str) -> Result<(String, String), RouteError> {
    let (name, ver) = stem.split_once('-').ok_or(RouteError::BadRequest("expected NAME-VERSION"))?;
    Ok((package_name(name)?.to_string(), version(ver)?.to_string()))
}

/// A repository or organization name.
pub fn repo_name(name: &str) -> Result<&str, RouteError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(name)
    } else {
        Err(RouteError::BadRequest("invalid repository name"))
    }
}

/// A policy name: `[a-z0-9][a-z0-9_.-]*[a-z0-9]`, 3 to 64 characters.
fn policy_name(name: &str) -> Result<&str, RouteError> {
    let b = name.as_bytes();
    let edge = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let ok = (3..=64).contains(&b.len())
        && edge(b[0])
        && edge(b[b.len() - 1])
        && b.iter().all(|&c| edge(c) || matches!(c, b'_' | b'.' | b'-'));
    if ok {
        Ok(name)
    } else {
        Err(RouteError::BadRequest("invalid policy name"))
    }
}

fn install_segment(segment: &str) -> Result<&str, RouteError> {
    let ok = !segment.is_empty()
        && segment.len() <= MAX_NAME_LEN
        && !segment.starts_with('.')
        && segment.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'+' | b'_'));
    if ok {
        Ok(segment)
    } else {
        Err(RouteError::BadRequest("invalid installs path"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(path: &str, expected: Result<Route, RouteError>) {
        assert_eq!(route(path), expected, "path {path:?}");
    }

    fn root(resource: Resource) -> Result<Route, RouteError> {
        Ok(Route::Repo { repo: None, resource })
    }

    fn repo(name: &str, resource: Resource) -> Result<Route, RouteError> {
        Ok(Route::Repo { repo: Some(name.into()), resource })
    }

    fn bad(reason: &'static str) -> Result<Route, RouteError> {
        Err(RouteError::BadRequest(reason))
    }

    #[test]
    fn repository_resources() {
        check("/names", root(Resource::Names));
        check("/versions", root(Resource::Versions));
        check("/packages/phoenix", root(Resource::Package("phoenix".into())));
        check("/packages/yEnc", root(Resource::Package("yEnc".into())));
        check("/public_key", root(Resource::PublicKey));
        check("/registry.ets.gz", root(Resource::RegistryV1));
        check("/registry.ets.gz.signed", root(Resource::RegistryV1Signed));
        check("/tarballs/ecto-3.10.1.tar", root(Resource::Tarball { name: "ecto".into(), version: "3.10.1".into() }));
        check(
            "/tarballs/pkg-1.0.0-rc.1+build.5.tar",
            root(Resource::Tarball { name: "pkg".into(), version: "1.0.0-rc.1+build.5".into() }),
        );
        check("/docs/ecto-3.10.1.tar.gz", root(Resource::Docs { name: "ecto".into(), version: "3.10.1".into() }));
        check("/installs/hex-1.x.csv", root(Resource::InstallsList("hex-1.x".into())));
        check("/installs/hex-1.x.csv.signed", root(Resource::InstallsListSignature("hex-1.x".into())));
        let installer = |app: &str, version: &str, ez| Resource::Installer {
            elixir: "1.14.0".into(),
            app: app.into(),
            version: version.into(),
            ez,
        };
        check("/installs/1.14.0/hex-2.0.6.ez", root(installer("hex", "2.0.6", true)));
        check("/installs/1.14.0/rebar3-3.22.0", root(installer("rebar3", "3.22.0", false)));
        check("/installs/hex.ez", Err(RouteError::NotFound));
        check("/installs/1.14.0/hex.ez", Err(RouteError::NotFound));
    }

    #[test]
    fn repos_prefix() {
        check("/repos/acme/names", repo("acme", Resource::Names));
        check("/repos/acme/packages/secret", repo("acme", Resource::Package("secret".into())));
        check("/repos/acme/policies/strict.v1-x", repo("acme", Resource::Policy("strict.v1-x".into())));
        check(
            "/repos/acme/tarballs/a-1.0.0.tar",
            repo("acme", Resource::Tarball { name: "a".into(), version: "1.0.0".into() }),
        );
        check("/repos/acme/public_key", repo("acme", Resource::PublicKey));
    }

    #[test]
    fn doubled_slashes_are_tolerated() {
        check("//packages/phoenix", root(Resource::Package("phoenix".into())));
        check("/repos//acme//names", repo("acme", Resource::Names));
    }

    #[test]
    fn operations_endpoints() {
        check("/healthz", Ok(Route::Healthz));
        check("/readyz", Ok(Route::Readyz));
        check("/metrics", Ok(Route::Metrics));
    }

    #[test]
    fn unknown_paths_are_not_found() {
        check("/", Err(RouteError::NotFound));
        check("/api/packages/x", Err(RouteError::NotFound));
        check("/packages", Err(RouteError::NotFound));
        check("/packages/a/b", Err(RouteError::NotFound));
        check("/tarballs/ecto-1.0.0.zip", Err(RouteError::NotFound));
        check("/repos/acme", Err(RouteError::NotFound));
        check("/installs/a/b/c", Err(RouteError::NotFound));
    }

    #[test]
    fn bad_paths_are_rejected() {
        check("/packages/../names", bad("dot segments are not accepted"));
        check("/packages/..", bad("dot segments are not accepted"));
        check("/packages/a%2Fb", bad("encoded characters are not accepted"));
        check("/tarballs/ecto%2D1.0.tar", bad("encoded characters are not accepted"));
        check("/packages/1abc", bad("invalid package name"));
        check("/packages/a-b", bad("invalid package name"));
        check("/packages/a.b", bad("invalid package name"));
        check("/tarballs/ecto-.tar", bad("invalid version"));
        check("/tarballs/ecto-v1.tar", bad("invalid version"));
        check("/tarballs/ecto.tar", bad("expected NAME-VERSION"));
        check("/tarballs/ecto-1.0/x.tar", Err(RouteError::NotFound));
        check("/repos/../names", bad("dot segments are not accepted"));
        check("/repos/a.b/names", bad("invalid repository name"));
        check("/repos/acme/policies/ab", bad("invalid policy name"));
        check("/repos/acme/policies/Abc", bad("invalid policy name"));
        check("/repos/acme/policies/abc-", bad("invalid policy name"));
        check("/installs/.hidden", bad("invalid installs path"));
        check("/packages/caf\u{e9}", bad("invalid character"));
        check("/packages/a\\b", bad("invalid character"));
        check("packages/a", bad("path must be absolute"));
        let long = format!("/packages/{}", "a".repeat(MAX_PATH_LEN));
        check(&long, bad("path too long"));
        let long_name = format!("/packages/{}", "a".repeat(MAX_NAME_LEN + 1));
        check(&long_name, bad("invalid package name"));
    }

    #[test]
    fn resource_paths_round_trip() {
        for path in [
            "names",
            "versions",
            "packages/yEnc",
            "tarballs/a_b-1.0.0+x.tar",
            "docs/a-1.0.0.tar.gz",
            "public_key",
            "policies/p.q-r",
            "registry.ets.gz",
            "registry.ets.gz.signed",
            "installs/1.0.0/hex-2.0.0.ez",
        ] {
            let segments: Vec<&str> = path.split('/').collect();
            assert_eq!(Resource::parse(&segments).unwrap().path(), path);
        }
    }
}
