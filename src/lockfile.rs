//! Reads the Hex packages pinned by a `mix.lock` (Elixir term syntax) or a `rebar.lock`
//! (Erlang term syntax), so that an air-gapped mirror can be filled with exactly them.
//!
//! Provides [`parse_mix_lock`], [`parse_rebar_lock`] and [`parse_lockfile`] (which picks
//! the format from the file name, or failing that from the content). Each returns a
//! [`Lockfile`]: the Hex packages with name, version, repository and, where the lock
//! records them, the inner and outer SHA-256 checksums; plus the git, path and other
//! non-Hex dependencies, which are skipped but reported. Both formats are read by
//! [`crate::term`], held to the literal subset lock files use ([`term::Literals::Lock`]:
//! maps, tuples, lists, keyword lists, atoms, strings, binaries, integers, comments);
//! nothing is evaluated. This module owns what the terms mean: the shape of lock entries,
//! package names, versions, repositories and checksums, and the lock file's own errors
//! ([`LockfileError`], which keeps the term parser's line and column). It does not read
//! files, fetch packages, verify checksums against tarballs, or resolve version
//! requirements, and it does not accept expressions (interpolation, variables, floats,
//! function calls).
//!
//! Invariant: every returned [`LockedPackage`] has a name of the form
//! `[A-Za-z][A-Za-z0-9_]*`, a non-empty version made of `[0-9A-Za-z.+-]` starting with
//! a digit, a non-empty repository name, and checksums that decoded from exactly 64 hex
//! digits. Input over [`MAX_INPUT_BYTES`] or nested deeper than [`MAX_DEPTH`] is
//! refused, so hostile input cannot exhaust memory or the stack; parsing never panics.

use crate::term::{self, Literals, Term, TermError, Value};

pub use crate::term::{Position, MAX_DEPTH};

/// The largest lock file accepted, in bytes.
pub const MAX_INPUT_BYTES: usize = 8 * 1024 * 1024;

/// The repository a package comes from when the lock file does not say.
pub const DEFAULT_REPO: &str = "hexpm";

/// Why a lock file could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LockfileError {
    /// The input is larger than [`MAX_INPUT_BYTES`].
    #[error("lock file is {size} bytes, over the limit of {limit} bytes")]
    TooLarge {
        /// Size of the input.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Neither the file name nor the content tells which format the file is in.
    #[error("cannot tell whether {hint:?} is a mix.lock or a rebar.lock")]
    UnknownFormat {
        /// The file name hint that was given.
        hint: String,
    },
    /// A version-control merge conflict marker.
    #[error("{at}: merge conflict marker in lock file")]
    MergeConflict {
        /// Where the marker starts.
        at: Position,
    },
    /// A character that cannot start any token.
    #[error("{at}: unexpected character {found:?}")]
    UnexpectedChar {
        /// Where the character is.
        at: Position,
        /// The character.
        found: char,
    },
    /// A string, quoted atom or similar was not closed.
    #[error("{at}: unterminated {what}")]
    Unterminated {
        /// Where it starts.
        at: Position,
        /// What kind of token it is.
        what: &'static str,
    },
    /// A backslash escape that is malformed or names no character.
    #[error("{at}: invalid escape sequence in {what}")]
    InvalidEscape {
        /// Where the backslash is.
        at: Position,
        /// What kind of token it is in.
        what: &'static str,
    },
    /// `#{...}` inside an Elixir string: an expression, not a literal.
    #[error("{at}: string interpolation is not allowed in a lock file")]
    Interpolation {
        /// Where the `#{` is.
        at: Position,
    },
    /// An integer that does not fit in 64 bits (or has a bad base).
    #[error("{at}: integer out of range")]
    IntegerOutOfRange {
        /// Where the integer starts.
        at: Position,
    },
    /// A token that does not fit the grammar at this point.
    #[error("{at}: expected {expected}, found {found}")]
    Unexpected {
        /// Where the token is.
        at: Position,
        /// What the grammar allows here.
        expected: &'static str,
        /// What was there.
        found: String,
    },
    /// Nesting deeper than [`MAX_DEPTH`].
    #[error("{at}: nesting deeper than {limit} levels")]
    TooDeep {
        /// Where the level over the limit opens.
        at: Position,
        /// The limit.
        limit: usize,
    },
    /// Well-formed terms that are not a lock entry of the expected shape.
    #[error("{at}: {message}")]
    InvalidEntry {
        /// Where the offending term starts.
        at: Position,
        /// What is wrong.
        message: String,
    },
    /// A checksum that is not 64 hex digits, or two checksums that disagree.
    #[error("{at}: invalid {which} checksum for package {package:?}: {reason}")]
    InvalidChecksum {
        /// Where the checksum is.
        at: Position,
        /// The package (or, in a rebar.lock hash list, the dependency) it belongs to.
        package: String,
        /// `inner` or `outer`.
        which: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

/// Which lock file syntax a file is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LockfileFormat {
    /// Mix's `mix.lock`, an Elixir map literal.
    Mix,
    /// rebar3's `rebar.lock`, Erlang terms each ending with `.`.
    Rebar,
}

/// A Hex package pinned by a lock file.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LockedPackage {
    /// The package name on the repository (which may differ from the application name
    /// the project uses for it).
    pub name: String,
    /// The exact version.
    pub version: String,
    /// The repository, `hexpm` unless the lock names another (e.g. `hexpm:acme`).
    pub repo: String,
    /// SHA-256 of the tarball's contents (Hex's "inner checksum", rebar3's `pkg_hash`).
    pub inner_checksum: Option<[u8; 32]>,
    /// SHA-256 of the whole tarball (Hex's "outer checksum", rebar3's `pkg_hash_ext`).
    pub outer_checksum: Option<[u8; 32]>,
}

/// A dependency that is not a Hex package (git, path, ...), so the mirror cannot serve it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SkippedDep {
    /// The dependency's name as the lock file keys it.
    pub name: String,
    /// The source kind: `git`, `git_subdir`, `hg`, `path`, ...
    pub kind: String,
    /// Where it comes from (a URL or path), when the lock records one as a string.
    pub source: Option<String>,
}

/// What a lock file pins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lockfile {
    /// The syntax the file was read as.
    pub format: LockfileFormat,
    /// Hex packages, in file order.
    pub packages: Vec<LockedPackage>,
    /// Non-Hex dependencies, in file order.
    pub skipped: Vec<SkippedDep>,
}

impl Lockfile {
    fn empty(format: LockfileFormat) -> Lockfile {
        Lockfile { format, packages: Vec::new(), skipped: Vec::new() }
    }
}

/// Tells the format from a file name (`mix.lock`, `rebar.lock`, or a name ending in
/// `.mix.lock` / `.rebar.lock`; any directory part is ignored), or else from the first
/// meaningful characters of the content (`%{` for Mix, `{` or `[` for rebar3).
pub fn detect_format(path_name_hint: &str, text: &str) -> Option<LockfileFormat> {
    let file = path_name_hint.rsplit(['/', '\\']).next().unwrap_or(path_name_hint).to_ascii_lowercase();
    if file == "mix.lock" || file.ends_with(".mix.lock") {
        return Some(LockfileFormat::Mix);
    }
    if file == "rebar.lock" || file.ends_with(".rebar.lock") {
        return Some(LockfileFormat::Rebar);
    }
    for line in text.trim_start_matches('\u{feff}').lines() {
        let line = line.trim_start();
        if line.starts_with("%{") {
            return Some(LockfileFormat::Mix);
        }
        if line.is_empty() || line.starts_with('%') || line.starts_with('#') {
            continue;
        }
        if line.starts_with('{') || line.starts_with('[') {
            return Some(LockfileFormat::Rebar);
        }
        return None;
    }
    None
}

/// Parses a lock file whose format is told by [`detect_format`].
pub fn parse_lockfile(path_name_hint: &str, text: &str) -> Result<Lockfile, LockfileError> {
    check_size(text)?;
    match detect_format(path_name_hint, text) {
        Some(LockfileFormat::Mix) => parse_mix_lock(text),
        Some(LockfileFormat::Rebar) => parse_rebar_lock(text),
        None => Err(LockfileError::UnknownFormat { hint: path_name_hint.to_string() }),
    }
}

/// Parses a `mix.lock`: a map from dependency name to a `{:hex, ...}`, `{:git, ...}` or
/// other tuple. `:hex` tuples of 3 to 8 (or more) elements are accepted, the forms
/// written by every Hex version: `{:hex, name, version}`, then inner checksum, managers,
/// deps, repository and outer checksum, any of which may be absent or `nil`.
pub fn parse_mix_lock(text: &str) -> Result<Lockfile, LockfileError> {
    check_size(text)?;
    let mut lock = Lockfile::empty(LockfileFormat::Mix);
    let Some(doc) = parse_elixir(text)? else {
        return Ok(lock);
    };
    let Value::Map(entries) = &doc.value else {
        return Err(invalid(doc.at, format!("expected a map `%{{...}}`, found {}", doc.describe())));
    };
    for (key, value) in entries {
        let app = key
            .text()
            .ok_or_else(|| invalid(key.at, format!("expected a dependency name, found {}", key.describe())))?;
        let elems = match &value.value {
            Value::Tuple(elems) if elems.first().and_then(Term::atom).is_some() => elems,
            _ => {
                return Err(invalid(
                    value.at,
                    format!("dependency {app:?}: expected a tuple such as `{{:hex, ...}}`, found {}", value.describe()),
                ))
            }
        };
        match elems[0].atom() {
            Some("hex") => lock.packages.push(mix_hex_entry(app, value.at, elems)?),
            kind => lock.skipped.push(SkippedDep {
                name: app.to_string(),
                kind: kind.unwrap_or_default().to_string(),
                source: elems.get(1).and_then(Term::string).map(str::to_string),
            }),
        }
    }
    Ok(lock)
}

fn mix_hex_entry(app: &str, at: Position, elems: &[Term]) -> Result<LockedPackage, LockfileError> {
    if elems.len() < 3 {
        return Err(invalid(at, format!("dependency {app:?}: a `:hex` entry needs a package name and a version")));
    }
    let name = package_name(app, &elems[1])?;
    let version = package_version(app, &elems[2])?;
    let inner_checksum = optional_checksum(elems.get(3), name, "inner")?;
    let repo = match elems.get(6) {
        None => DEFAULT_REPO.to_string(),
        Some(term) if term.is_absent() => DEFAULT_REPO.to_string(),
        Some(term) => repo_name(app, term)?,
    };
    let outer_checksum = optional_checksum(elems.get(7), name, "outer")?;
    Ok(LockedPackage { name: name.to_string(), version: version.to_string(), repo, inner_checksum, outer_checksum })
}

/// Parses a `rebar.lock`: either the versioned form `{"1.2.0", [Locks]}.` followed by
/// `[{pkg_hash, [...]}, {pkg_hash_ext, [...]}].`, or the older bare `[Locks].`. Each
/// lock is `{Name, Source, Level}`; a `{pkg, Name, Version}` source (optionally with
/// inner and outer checksums as 4th and 5th elements, and a repository name as 6th) is
/// a Hex package, anything else is skipped. Checksums in the lock entry and in the
/// hash lists must agree.
pub fn parse_rebar_lock(text: &str) -> Result<Lockfile, LockfileError> {
    check_size(text)?;
    let terms = parse_erlang(text)?;
    let mut lock = Lockfile::empty(LockfileFormat::Rebar);
    let Some(first) = terms.first() else {
        return Ok(lock);
    };
    let locks = match &first.value {
        Value::List(locks) => locks,
        Value::Tuple(items) if items.len() == 2 && items[0].string().is_some() => match &items[1].value {
            Value::List(locks) => locks,
            _ => {
                return Err(invalid(
                    items[1].at,
                    format!("expected the list of locked dependencies, found {}", items[1].describe()),
                ))
            }
        },
        _ => {
            return Err(invalid(
                first.at,
                format!("expected `{{\"1.2.0\", [...]}}` or a list of locked dependencies, found {}", first.describe()),
            ))
        }
    };
    let hashes = match terms.get(1) {
        Some(attrs) => rebar_hashes(attrs)?,
        None => RebarHashes::default(),
    };
    for entry in locks {
        let items = match &entry.value {
            Value::Tuple(items) if items.len() >= 2 => items,
            _ => {
                return Err(invalid(
                    entry.at,
                    format!("expected a lock entry `{{Name, Source, Level}}`, found {}", entry.describe()),
                ))
            }
        };
        let app = items[0].text().ok_or_else(|| {
            invalid(items[0].at, format!("expected a dependency name, found {}", items[0].describe()))
        })?;
        let source = &items[1];
        let src = match &source.value {
            Value::Tuple(src) if src.first().and_then(Term::atom).is_some() => src,
            _ => {
                return Err(invalid(
                    source.at,
                    format!(
                        "dependency {app:?}: expected a source such as `{{pkg, ...}}`, found {}",
                        source.describe()
                    ),
                ))
            }
        };
        if src[0].atom() != Some("pkg") {
            lock.skipped.push(SkippedDep {
                name: app.to_string(),
                kind: src[0].atom().unwrap_or_default().to_string(),
                source: src.get(1).and_then(Term::string).map(str::to_string),
            });
            continue;
        }
        if src.len() < 3 {
            return Err(invalid(
                source.at,
                format!("dependency {app:?}: a `pkg` source needs a package name and a version"),
            ));
        }
        let name = package_name(app, &src[1])?;
        let version = package_version(app, &src[2])?;
        let inner = optional_checksum(src.get(3), name, "inner")?;
        let outer = optional_checksum(src.get(4), name, "outer")?;
        let repo = match src.get(5) {
            Some(term) if term.string().is_some() => repo_name(app, term)?,
            _ => DEFAULT_REPO.to_string(),
        };
        let inner_checksum = merge_checksum(inner, find_hash(&hashes.inner, app), app, "inner")?;
        let outer_checksum = merge_checksum(outer, find_hash(&hashes.outer, app), app, "outer")?;
        lock.packages.push(LockedPackage {
            name: name.to_string(),
            version: version.to_string(),
            repo,
            inner_checksum,
            outer_checksum,
        });
    }
    Ok(lock)
}

/// Checksums from a rebar.lock's attribute list, keyed by dependency name.
#[derive(Default)]
struct RebarHashes {
    inner: Vec<(String, [u8; 32], Position)>,
    outer: Vec<(String, [u8; 32], Position)>,
}

/// The first checksum listed for `name`, as rebar3's `proplists:get_value/2` picks.
fn find_hash(list: &[(String, [u8; 32], Position)], name: &str) -> Option<([u8; 32], Position)> {
    list.iter().find(|(n, _, _)| n == name).map(|&(_, sum, at)| (sum, at))
}

fn rebar_hashes(attrs: &Term) -> Result<RebarHashes, LockfileError> {
    let Value::List(props) = &attrs.value else {
        return Err(invalid(
            attrs.at,
            format!("expected the attribute list `[{{pkg_hash, [...]}}, ...]`, found {}", attrs.describe()),
        ));
    };
    let mut hashes = RebarHashes::default();
    for prop in props {
        let Value::Tuple(items) = &prop.value else {
            continue;
        };
        let (which, list) = match items.first().and_then(Term::atom) {
            Some("pkg_hash") => ("inner", &mut hashes.inner),
            Some("pkg_hash_ext") => ("outer", &mut hashes.outer),
            _ => continue,
        };
        let pairs = match items.get(1).map(|t| &t.value) {
            Some(Value::List(pairs)) if items.len() == 2 => pairs,
            _ => {
                return Err(invalid(
                    prop.at,
                    format!("expected `{{pkg_hash{}, [...]}}`", if which == "outer" { "_ext" } else { "" }),
                ))
            }
        };
        for pair in pairs {
            let named = match &pair.value {
                Value::Tuple(kv) if kv.len() == 2 => kv[0].text().map(|name| (name, &kv[1])),
                _ => None,
            };
            let Some((name, hash)) = named else {
                return Err(invalid(pair.at, format!("expected `{{Name, Hash}}`, found {}", pair.describe())));
            };
            let sum = checksum(hash, name, which)?;
            list.push((name.to_string(), sum, hash.at));
        }
    }
    Ok(hashes)
}

fn merge_checksum(
    in_entry: Option<[u8; 32]>,
    in_list: Option<([u8; 32], Position)>,
    app: &str,
    which: &'static str,
) -> Result<Option<[u8; 32]>, LockfileError> {
    match (in_entry, in_list) {
        (Some(a), Some((b, at))) if a != b => Err(LockfileError::InvalidChecksum {
            at,
            package: app.to_string(),
            which,
            reason: "it disagrees with the checksum in the lock entry".to_string(),
        }),
        (Some(sum), _) => Ok(Some(sum)),
        (None, list) => Ok(list.map(|(sum, _)| sum)),
    }
}

fn invalid(at: Position, message: String) -> LockfileError {
    LockfileError::InvalidEntry { at, message }
}

fn check_size(text: &str) -> Result<(), LockfileError> {
    if text.len() > MAX_INPUT_BYTES {
        return Err(LockfileError::TooLarge { size: text.len(), limit: MAX_INPUT_BYTES });
    }
    Ok(())
}

fn package_name<'t>(app: &str, term: &'t Term) -> Result<&'t str, LockfileError> {
    let name = term.text().ok_or_else(|| {
        invalid(term.at, format!("dependency {app:?}: expected the package name, found {}", term.describe()))
    })?;
    let mut chars = name.chars();
    let valid =
        chars.next().is_some_and(|c| c.is_ascii_alphabetic()) && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(invalid(term.at, format!("dependency {app:?}: invalid package name {name:?}")));
    }
    Ok(name)
}

fn package_version<'t>(app: &str, term: &'t Term) -> Result<&'t str, LockfileError> {
    let version = term.string().ok_or_else(|| {
        invalid(term.at, format!("dependency {app:?}: expected the version as a string, found {}", term.describe()))
    })?;
    let valid = version.starts_with(|c: char| c.is_ascii_digit())
        && version.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '-'));
    if !valid {
        return Err(invalid(term.at, format!("dependency {app:?}: invalid version {version:?}")));
    }
    Ok(version)
}

fn repo_name(app: &str, term: &Term) -> Result<String, LockfileError> {
    let repo = term.string().ok_or_else(|| {
        invalid(term.at, format!("dependency {app:?}: expected the repository as a string, found {}", term.describe()))
    })?;
    let valid =
        !repo.is_empty() && repo.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'));
    if !valid {
        return Err(invalid(term.at, format!("dependency {app:?}: invalid repository name {repo:?}")));
    }
    Ok(repo.to_string())
}

/// A checksum that may be missing, `nil` or `undefined`.
fn optional_checksum(
    term: Option<&Term>,
    package: &str,
    which: &'static str,
) -> Result<Option<[u8; 32]>, LockfileError> {
    match term {
        None => Ok(None),
        Some(term) if term.is_absent() => Ok(None),
        Some(term) => checksum(term, package, which).map(Some),
    }
}

fn checksum(term: &Term, package: &str, which: &'static str) -> Result<[u8; 32], LockfileError> {
    let error =
        |reason: String| LockfileError::InvalidChecksum { at: term.at, package: package.to_string(), which, reason };
    let text = term.string().ok_or_else(|| error(format!("expected a string, found {}", term.describe())))?;
    decode_checksum(text).map_err(error)
}

/// Decodes 64 hex digits (either case) into 32 bytes.
fn decode_checksum(text: &str) -> Result<[u8; 32], String> {
    if let Some((offset, c)) = text.chars().enumerate().find(|(_, c)| !c.is_ascii_hexdigit()) {
        return Err(format!("{c:?} at offset {offset} is not a hex digit"));
    }
    if text.len() != 64 {
        return Err(format!("expected 64 hex digits, found {}", text.len()));
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(text.as_bytes().chunks_exact(2)) {
        *byte = (hex_value(pair[0]) << 4) | hex_value(pair[1]);
    }
    Ok(out)
}

/// The value of an ASCII hex digit (the caller has checked it is one).
fn hex_value(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        b'a'..=b'f' => digit - b'a' + 10,
        b'A'..=b'F' => digit - b'A' + 10,
        _ => 0,
    }
}

// ---------------------------------------------------------------------------------
// Terms
// ---------------------------------------------------------------------------------

impl From<TermError> for LockfileError {
    fn from(error: TermError) -> LockfileError {
        match error {
            TermError::MergeConflict { at } => LockfileError::MergeConflict { at },
            TermError::UnexpectedChar { at, found } => LockfileError::UnexpectedChar { at, found },
            TermError::Unterminated { at, what } => LockfileError::Unterminated { at, what },
            TermError::InvalidEscape { at, what } => LockfileError::InvalidEscape { at, what },
            TermError::Interpolation { at } => LockfileError::Interpolation { at },
            TermError::IntegerOutOfRange { at } => LockfileError::IntegerOutOfRange { at },
            TermError::Unexpected { at, expected, found } => LockfileError::Unexpected { at, expected, found },
            TermError::TooDeep { at, limit } => LockfileError::TooDeep { at, limit },
            TermError::SegmentOutOfRange { at } => invalid(at, "binary segment value out of range".to_string()),
            TermError::NotUtf8 { at } => invalid(at, "binary is not valid UTF-8".to_string()),
        }
    }
}

/// A `mix.lock` document: one Elixir term, or `None` when there is nothing but whitespace and
/// comments.
fn parse_elixir(text: &str) -> Result<Option<Term>, LockfileError> {
    Ok(term::parse_elixir(text)?)
}

/// A `rebar.lock`: Erlang terms, each followed by `.`, held to the lock-file literals.
fn parse_erlang(text: &str) -> Result<Vec<Term>, LockfileError> {
    Ok(term::parse_erlang(text, Literals::Lock)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PHOENIX_APP: &str = include_str!("../tests/fixtures/lockfiles/phoenix_app.mix.lock");
    const LEGACY_APP: &str = include_str!("../tests/fixtures/lockfiles/legacy_app.mix.lock");
    const COWBOY_SERVICE: &str = include_str!("../tests/fixtures/lockfiles/cowboy_service.rebar.lock");

    const SUM_A: &str = "2c21a71ecf65c3db7207bbd82fcc36f748c265a1bd4aa81df459310cda84a90f";
    const SUM_B: &str = "23bdffddcb742545ee8ea14447ce543c3612f751e1d377eb3ca930b40a673dde";

    /// Decodes hex independently of the code under test.
    fn hex32(text: &str) -> [u8; 32] {
        assert_eq!(text.len(), 64, "test checksum {text:?}");
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).expect("test checksum");
        }
        out
    }

    fn render(term: &Term) -> String {
        let join = |items: &[Term]| items.iter().map(render).collect::<Vec<_>>().join(", ");
        match &term.value {
            Value::Atom(atom) => format!(":{atom}"),
            Value::Str(text) => format!("{text:?}"),
            Value::Binary(bytes) => format!("{:?}", String::from_utf8_lossy(bytes)),
            Value::Int(n) => n.to_string(),
            Value::Float(x) => x.to_string(),
            Value::Tuple(items) => format!("{{{}}}", join(items)),
            Value::List(items) => format!("[{}]", join(items)),
            Value::ImproperList(items, tail) => format!("[{} | {}]", join(items), render(tail)),
            Value::Map(entries) => {
                let entries: Vec<String> =
                    entries.iter().map(|(k, v)| format!("{} => {}", render(k), render(v))).collect();
                format!("%{{{}}}", entries.join(", "))
            }
        }
    }

    /// `name version repo` plus `i`/`o` for each checksum present (`-` when absent).
    fn summary(lock: &Lockfile) -> (Vec<String>, Vec<String>) {
        let packages = lock
            .packages
            .iter()
            .map(|p| {
                format!(
                    "{} {} {} {}{}",
                    p.name,
                    p.version,
                    p.repo,
                    if p.inner_checksum.is_some() { "i" } else { "-" },
                    if p.outer_checksum.is_some() { "o" } else { "-" }
                )
            })
            .collect();
        let skipped = lock
            .skipped
            .iter()
            .map(|s| format!("{} {} {}", s.name, s.kind, s.source.as_deref().unwrap_or("-")))
            .collect();
        (packages, skipped)
    }

    #[track_caller]
    fn check_ex(input: &str, expected: &str) {
        let term = parse_elixir(input).unwrap_or_else(|e| panic!("{input:?}: {e}")).expect("a term");
        assert_eq!(render(&term), expected, "{input:?}");
    }

    #[track_caller]
    fn check_ex_err(input: &str, expected: &str) {
        match parse_elixir(input) {
            Ok(term) => panic!("{input:?} parsed as {:?}, expected an error", term.map(|t| render(&t))),
            Err(e) => assert_eq!(e.to_string(), expected, "{input:?}"),
        }
    }

    #[track_caller]
    fn check_erl(input: &str, expected: &str) {
        let terms = parse_erlang(input).unwrap_or_else(|e| panic!("{input:?}: {e}"));
        let rendered: Vec<String> = terms.iter().map(render).collect();
        assert_eq!(rendered.join(". "), expected, "{input:?}");
    }

    #[track_caller]
    fn check_erl_err(input: &str, expected: &str) {
        match parse_erlang(input) {
            Ok(terms) => panic!("{input:?} parsed as {} terms, expected an error", terms.len()),
            Err(e) => assert_eq!(e.to_string(), expected, "{input:?}"),
        }
    }

    #[track_caller]
    fn check_mix(input: &str, packages: &[&str], skipped: &[&str]) {
        let lock = parse_mix_lock(input).unwrap_or_else(|e| panic!("{input:?}: {e}"));
        assert_eq!(lock.format, LockfileFormat::Mix);
        assert_eq!(summary(&lock), (strings(packages), strings(skipped)), "{input:?}");
    }

    #[track_caller]
    fn check_mix_err(input: &str, expected: &str) {
        match parse_mix_lock(input) {
            Ok(lock) => panic!("{input:?} parsed as {:?}, expected an error", summary(&lock)),
            Err(e) => assert_eq!(e.to_string(), expected, "{input:?}"),
        }
    }

    #[track_caller]
    fn check_rebar(input: &str, packages: &[&str], skipped: &[&str]) {
        let lock = parse_rebar_lock(input).unwrap_or_else(|e| panic!("{input:?}: {e}"));
        assert_eq!(lock.format, LockfileFormat::Rebar);
        assert_eq!(summary(&lock), (strings(packages), strings(skipped)), "{input:?}");
    }

    #[track_caller]
    fn check_rebar_err(input: &str, expected: &str) {
        match parse_rebar_lock(input) {
            Ok(lock) => panic!("{input:?} parsed as {:?}, expected an error", summary(&lock)),
            Err(e) => assert_eq!(e.to_string(), expected, "{input:?}"),
        }
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn package<'a>(lock: &'a Lockfile, name: &str) -> &'a LockedPackage {
        lock.packages.iter().find(|p| p.name == name).unwrap_or_else(|| panic!("no package {name:?}"))
    }

    // --- Elixir terms -------------------------------------------------------------

    #[test]
    fn elixir_maps_in_both_key_styles() {
        check_ex("%{}", "%{}");
        check_ex(r#"%{"a": 1}"#, "%{:a => 1}");
        check_ex(r#"%{"a" => 1, "b" => 2}"#, r#"%{"a" => 1, "b" => 2}"#);
        check_ex(r#"%{"a" => 1, b: 2}"#, r#"%{"a" => 1, :b => 2}"#);
        check_ex(r#"%{"a": 1,}"#, "%{:a => 1}");
        check_ex("%{\n  \"x\": {:hex},\n  \"y\": [],\n}", "%{:x => {:hex}, :y => []}");
        check_ex("%{:a => %{1 => 2}}", "%{:a => %{1 => 2}}");
    }

    #[test]
    fn elixir_keyword_lists() {
        check_ex(
            r#"[hex: :dep, repo: "hexpm", optional: false]"#,
            r#"[{:hex, :dep}, {:repo, "hexpm"}, {:optional, :false}]"#,
        );
        check_ex("[1, a: 2]", "[1, {:a, 2}]");
        check_ex("{1, a: 2, b: 3}", "{1, [{:a, 2}, {:b, 3}]}");
        check_ex(r#"["quoted key": 1]"#, "[{:quoted key, 1}]");
        check_ex("[ok?: true, do!: nil]", "[{:ok?, :true}, {:do!, :nil}]");
        check_ex("[a:\n1]", "[{:a, 1}]");
    }

    #[test]
    fn elixir_atoms_and_literals() {
        check_ex(":hex", ":hex");
        check_ex(r#":"quoted atom""#, ":quoted atom");
        check_ex(":Foo", ":Foo");
        check_ex(":valid?", ":valid?");
        check_ex(":run!", ":run!");
        check_ex(":node@host", ":node@host");
        check_ex("true", ":true");
        check_ex("false", ":false");
        check_ex("nil", ":nil");
        check_ex("0", "0");
        check_ex("-42", "-42");
        check_ex("1_000_000", "1000000");
        check_ex("'charlist'", r#""charlist""#);
        check_ex("{}", "{}");
        check_ex("[]", "[]");
        check_ex("[1, 2,]", "[1, 2]");
        check_ex("{:a, :b,}", "{:a, :b}");
    }

    #[test]
    fn elixir_string_escapes() {
        check_ex(r#""plain""#, r#""plain""#);
        check_ex(r#""q\"uote\\back""#, r#""q\"uote\\back""#);
        check_ex(r#""\n\t\r\s\0""#, r#""\n\t\r \0""#);
        check_ex(r#""\a\b\d\e\f\v""#, r#""\u{7}\u{8}\u{7f}\u{1b}\u{c}\u{b}""#);
        check_ex(r#""\x41\x7""#, r#""A\u{7}""#);
        check_ex(r#""\u00e9\u{1F600}""#, r#""é😀""#);
        check_ex(r#""\#{not interpolated}""#, "\"#{not interpolated}\"");
        check_ex(r#""a#b""#, r#""a#b""#);
        check_ex("\"two\nlines\"", r#""two\nlines""#);
        check_ex("\"joined \\\nline\"", r#""joined line""#);
        check_ex(r#""\q""#, r#""q""#);
    }

    #[test]
    fn elixir_comments_whitespace_and_bom() {
        check_ex("# a comment\n[1] # trailing\n", "[1]");
        check_ex("\u{feff}%{}", "%{}");
        check_ex("\r\n[\r\n1\r\n]\r\n", "[1]");
    }

    #[test]
    fn elixir_syntax_errors_name_the_position() {
        check_ex_err(r#""a#{b}""#, "line 1, column 3: string interpolation is not allowed in a lock file");
        check_ex_err("\n  \"abc", "line 2, column 3: unterminated string");
        check_ex_err(r#":"abc"#, "line 1, column 2: unterminated quoted atom");
        check_ex_err(r#"%{"a" 1}"#, "line 1, column 7: expected `=>`, found integer 1");
        check_ex_err("[1 2]", "line 1, column 4: expected `,` or `]`, found integer 2");
        check_ex_err("{1 2}", "line 1, column 4: expected `,` or `}`, found integer 2");
        check_ex_err("%{1 => 2 3}", "line 1, column 10: expected `,` or `}`, found integer 3");
        check_ex_err(
            "{1, a: 2, 3}",
            "line 1, column 11: expected a `key: value` entry (keyword entries come last), found integer 3",
        );
        check_ex_err("foo", "line 1, column 1: expected a term, found identifier `foo`");
        check_ex_err("[1,,2]", "line 1, column 4: expected a term, found `,`");
        check_ex_err("[", "line 1, column 2: expected a term, found end of input");
        check_ex_err("[1", "line 1, column 3: expected `,` or `]`, found end of input");
        check_ex_err("1.5", "line 1, column 1: expected an integer, found a float");
        check_ex_err("99999999999999999999", "line 1, column 1: integer out of range");
        check_ex_err("%{} %{}", "line 1, column 5: expected end of input, found a map");
        check_ex_err(r#""\u{110000}""#, "line 1, column 2: invalid escape sequence in string");
        check_ex_err(r#""\u12""#, "line 1, column 2: invalid escape sequence in string");
        check_ex_err(r#""\x""#, "line 1, column 2: invalid escape sequence in string");
        check_ex_err("@", "line 1, column 1: unexpected character '@'");
        check_ex_err(r#""é" @"#, "line 1, column 5: unexpected character '@'");
        check_ex_err(r#"["a":1]"#, "line 1, column 5: unexpected character ':'");
        check_ex_err("x: 1", "line 1, column 1: expected a term, found keyword key `x:`");
        check_ex_err("<<1>>", "line 1, column 1: unexpected character '<'");
        check_ex_err("- 1", "line 1, column 1: unexpected character '-'");
    }

    #[test]
    fn merge_conflict_markers_are_reported() {
        check_ex_err(
            "%{\n<<<<<<< HEAD\n  \"a\": {:hex, :a, \"1.0.0\"},\n",
            "line 2, column 1: merge conflict marker in lock file",
        );
        check_erl_err("[].\n=======\n", "line 2, column 1: merge conflict marker in lock file");
    }

    // --- Erlang terms -------------------------------------------------------------

    #[test]
    fn erlang_terms() {
        check_erl("{a, 'Quoted Atom', \"str\", 42, -7}.", r#"{:a, :Quoted Atom, "str", 42, -7}"#);
        check_erl("[1,2,3].", "[1, 2, 3]");
        check_erl("[].", "[]");
        check_erl("{}.", "{}");
        check_erl("16#ff. 2#1010. 1_000.", "255. 10. 1000");
        check_erl("pkg_hash_ext. node@host. 'hello world'.", ":pkg_hash_ext. :node@host. :hello world");
        check_erl("#{a => 1, <<\"b\">> => [x]}.", r#"%{:a => 1, "b" => [:x]}"#);
        check_erl("\"ab\" \"cd\".", r#""abcd""#);
        check_erl("", "");
        check_erl("% only a comment\n", "");
        check_erl("% header\n{a, % inline\n b}. % done", "{:a, :b}");
        check_erl("{\"1.2.0\",\n[]}.\n[\n].\n", r#"{"1.2.0", []}. []"#);
    }

    #[test]
    fn erlang_binaries() {
        check_erl("<<\"cowboy\">>.", r#""cowboy""#);
        check_erl("<<>>.", r#""""#);
        check_erl("<<104,105>>.", r#""hi""#);
        check_erl("<<\"a\", \"b\", 99>>.", r#""abc""#);
        check_erl("<<\"ü\"/utf8>>.", r#""ü""#);
        check_erl("<<195,188>>.", r#""ü""#);
        check_erl("<<252/utf8>>.", r#""ü""#);
    }

    #[test]
    fn erlang_string_escapes() {
        check_erl(r#""\x41\101\x{263A}"."#, r#""AA☺""#);
        check_erl(r#""\^a\^Z\^?"."#, r#""\u{1}\u{1a}\u{7f}""#);
        check_erl(r#""\n\t\s\e\d\\\"\'"."#, r#""\n\t \u{1b}\u{7f}\\\"'""#);
        check_erl(r#"'a\'b'."#, ":a'b");
        check_erl(r#""\7\0\""."#, r#""\u{7}\0\"""#);
    }

    #[test]
    fn erlang_syntax_errors_name_the_position() {
        check_erl_err("{a, B}.", "line 1, column 5: expected a term, found identifier `B`");
        check_erl_err("{a, _}.", "line 1, column 5: expected a term, found identifier `_`");
        check_erl_err("[1,2]", "line 1, column 6: expected `.` after the term, found end of input");
        check_erl_err("[1,2] [3].", "line 1, column 7: expected `.` after the term, found `[`");
        check_erl_err("<<\"ü\">>.", "line 1, column 1: binary is not valid UTF-8");
        check_erl_err("<<256>>.", "line 1, column 3: binary segment value out of range");
        check_erl_err("<<-1>>.", "line 1, column 3: binary segment value out of range");
        check_erl_err("<<\"x\"/binary>>.", "line 1, column 7: expected the segment type `utf8`, found atom `binary`");
        check_erl_err("<<a>>.", "line 1, column 3: expected a string or integer segment, found atom `a`");
        check_erl_err("[H|T].", "line 1, column 3: unexpected character '|'");
        check_erl_err("'abc", "line 1, column 1: unterminated quoted atom");
        check_erl_err("\n\n  \"abc\\", "line 3, column 3: unterminated string");
        check_erl_err("37#1.", "line 1, column 1: integer out of range");
        check_erl_err("16#.", "line 1, column 4: expected a digit, found '.'");
        check_erl_err("1.5.", "line 1, column 1: expected an integer, found a float");
        check_erl_err(r#""\^1"."#, "line 1, column 2: invalid escape sequence in string");
        check_erl_err(r#""\x4"."#, "line 1, column 2: invalid escape sequence in string");
        check_erl_err("{a => 1}.", "line 1, column 4: expected `,` or `}`, found `=>`");
        check_erl_err("a: 1.", "line 1, column 2: unexpected character ':'");
    }

    // --- limits -------------------------------------------------------------------

    #[test]
    fn nesting_up_to_the_limit_is_accepted() {
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(parse_elixir(&ok).is_ok());
        assert!(parse_erlang(&format!("{ok}.")).is_ok());
    }

    #[test]
    fn nesting_past_the_limit_is_refused() {
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        let message = format!("line 1, column {}: nesting deeper than 64 levels", MAX_DEPTH + 1);
        check_ex_err(&deep, &message);
        check_erl_err(&format!("{deep}."), &message);
        check_ex_err(&"{".repeat(MAX_DEPTH + 1), &message);
        check_ex_err(
            &"%{1 => ".repeat(MAX_DEPTH + 1),
            &format!("line 1, column {}: nesting deeper than 64 levels", 7 * MAX_DEPTH + 1),
        );
    }

    #[test]
    fn hostile_nesting_does_not_overflow_the_stack() {
        let hostile = "[".repeat(1_000_000);
        assert!(matches!(parse_mix_lock(&hostile), Err(LockfileError::TooDeep { .. })));
        let hostile = "{[".repeat(300_000);
        assert!(matches!(parse_rebar_lock(&hostile), Err(LockfileError::TooDeep { .. })));
    }

    #[test]
    fn oversized_input_is_refused() {
        let big = " ".repeat(MAX_INPUT_BYTES + 1);
        let expected =
            format!("lock file is {} bytes, over the limit of {} bytes", MAX_INPUT_BYTES + 1, MAX_INPUT_BYTES);
        assert_eq!(parse_mix_lock(&big).unwrap_err().to_string(), expected);
        assert_eq!(parse_rebar_lock(&big).unwrap_err().to_string(), expected);
        assert_eq!(parse_lockfile("mix.lock", &big).unwrap_err().to_string(), expected);
        assert!(parse_mix_lock(&" ".repeat(MAX_INPUT_BYTES)).is_ok());
    }

    // --- checksums ----------------------------------------------------------------

    #[test]
    fn checksums_decode_in_either_case() {
        assert_eq!(decode_checksum(SUM_A), Ok(hex32(SUM_A)));
        assert_eq!(decode_checksum(&SUM_A.to_uppercase()), Ok(hex32(SUM_A)));
        assert_eq!(decode_checksum(&"0".repeat(64)), Ok([0u8; 32]));
        assert_eq!(decode_checksum(&"F".repeat(64)), Ok([0xff; 32]));
        assert_eq!(decode_checksum(&"aB".repeat(32)), Ok([0xab; 32]));
        let mut ascending = String::new();
        for i in 0..32u8 {
            ascending.push_str(&format!("{:02x}", i * 8));
        }
        let expected: Vec<u8> = (0..32u8).map(|i| i * 8).collect();
        assert_eq!(decode_checksum(&ascending).map(|b| b.to_vec()), Ok(expected));
    }

    #[test]
    fn malformed_checksums_are_rejected() {
        let check = |text: &str, reason: &str| {
            assert_eq!(decode_checksum(text), Err(reason.to_string()), "{text:?}");
        };
        check("", "expected 64 hex digits, found 0");
        check(&SUM_A[..62], "expected 64 hex digits, found 62");
        check(&format!("{SUM_A}00"), "expected 64 hex digits, found 66");
        check(&format!("{}g", &SUM_A[..63]), "'g' at offset 63 is not a hex digit");
        check(&format!(" {}", &SUM_A[..63]), "' ' at offset 0 is not a hex digit");
        check(&format!("{}é", &SUM_A[..62]), "'é' at offset 62 is not a hex digit");
        check(&format!("0x{}", &SUM_A[..62]), "'x' at offset 1 is not a hex digit");
    }

    // --- mix.lock -----------------------------------------------------------------

    #[test]
    fn mix_modern_entry() {
        let input = format!(
            r#"%{{"plug": {{:hex, :plug, "1.16.1", "{SUM_A}", [:mix], [{{:mime, "~> 1.0 or ~> 2.0", [hex: :mime, repo: "hexpm", optional: false]}}], "hexpm", "{SUM_B}"}}}}"#
        );
        check_mix(&input, &["plug 1.16.1 hexpm io"], &[]);
        let lock = parse_mix_lock(&input).unwrap();
        assert_eq!(lock.packages[0].inner_checksum, Some(hex32(SUM_A)));
        assert_eq!(lock.packages[0].outer_checksum, Some(hex32(SUM_B)));
    }

    #[test]
    fn mix_older_entry_shapes() {
        let six = format!(r#"%{{"cowboy": {{:hex, :cowboy, "1.0.4", "{SUM_A}", [:rebar, :make], []}}}}"#);
        check_mix(&six, &["cowboy 1.0.4 hexpm i-"], &[]);
        let seven = format!(r#"%{{"plug" => {{:hex, :plug, "1.1.6", "{SUM_A}", [:mix], [], "hexpm"}}}}"#);
        check_mix(&seven, &["plug 1.1.6 hexpm i-"], &[]);
        check_mix(r#"%{"ex_doc" => {:hex, :ex_doc, "0.11.5"}}"#, &["ex_doc 0.11.5 hexpm --"], &[]);
        check_mix(r#"%{"a": {:hex, :a, "1.0.0", nil, [:mix], [], nil, nil}}"#, &["a 1.0.0 hexpm --"], &[]);
        let newer = format!(
            r#"%{{"a": {{:hex, :a, "1.0.0", "{SUM_A}", [:mix], [], "hexpm", "{SUM_B}", %{{future: 1}}, :more}}}}"#
        );
        check_mix(&newer, &["a 1.0.0 hexpm io"], &[]);
    }

    #[test]
    fn mix_package_name_comes_from_the_tuple_not_the_key() {
        check_mix(r#"%{"my_json": {:hex, :jason, "1.4.4"}}"#, &["jason 1.4.4 hexpm --"], &[]);
        check_mix(r#"%{"x" => {:hex, "jason", "1.4.4"}}"#, &["jason 1.4.4 hexpm --"], &[]);
    }

    #[test]
    fn mix_organisation_repository() {
        let input =
            format!(r#"%{{"billing": {{:hex, :billing, "2.3.0", "{SUM_A}", [:mix], [], "hexpm:acme", "{SUM_B}"}}}}"#);
        check_mix(&input, &["billing 2.3.0 hexpm:acme io"], &[]);
    }

    #[test]
    fn mix_non_hex_dependencies_are_skipped() {
        check_mix(
            r#"%{"icons": {:git, "https://example.com/icons.git", "88ab3a0d790e6a47404cba02800a6b25d2afae50", [tag: "v2.1.1", sparse: "optimized", depth: 1]}}"#,
            &[],
            &["icons git https://example.com/icons.git"],
        );
        check_mix(r#"%{"local": {:path, "../local"}}"#, &[], &["local path ../local"]);
        check_mix(r#"%{"odd": {:custom_scm}}"#, &[], &["odd custom_scm -"]);
        check_mix(
            r#"%{"a": {:hex, :a, "1.0.0"}, "b": {:git, "u", "r", []}, "c": {:hex, :c, "2.0.0-rc.1+build.5"}}"#,
            &["a 1.0.0 hexpm --", "c 2.0.0-rc.1+build.5 hexpm --"],
            &["b git u"],
        );
    }

    #[test]
    fn mix_empty_files() {
        check_mix("", &[], &[]);
        check_mix("  \n# nothing locked yet\n", &[], &[]);
        check_mix("%{}\n", &[], &[]);
    }

    #[test]
    fn mix_shape_errors_name_the_position() {
        check_mix_err("[]", "line 1, column 1: expected a map `%{...}`, found a list");
        check_mix_err("%{1 => {:hex, :a, \"1.0.0\"}}", "line 1, column 3: expected a dependency name, found integer 1");
        check_mix_err(
            "%{\n  \"a\": \"1.0.0\"}",
            "line 2, column 8: dependency \"a\": expected a tuple such as `{:hex, ...}`, found string \"1.0.0\"",
        );
        check_mix_err(
            "%{\"a\": {\"hex\", :a, \"1.0.0\"}}",
            "line 1, column 8: dependency \"a\": expected a tuple such as `{:hex, ...}`, found a tuple of 3 element(s)",
        );
        check_mix_err(
            "%{\"a\": {:hex, :a}}",
            "line 1, column 8: dependency \"a\": a `:hex` entry needs a package name and a version",
        );
        check_mix_err(
            "%{\"a\": {:hex, 1, \"1.0.0\"}}",
            "line 1, column 15: dependency \"a\": expected the package name, found integer 1",
        );
        check_mix_err(
            "%{\"a\": {:hex, :\"../../etc\", \"1.0.0\"}}",
            "line 1, column 15: dependency \"a\": invalid package name \"../../etc\"",
        );
        check_mix_err(
            "%{\"a\": {:hex, :a, :\"1.0.0\"}}",
            "line 1, column 19: dependency \"a\": expected the version as a string, found atom `1.0.0`",
        );
        check_mix_err(
            "%{\"a\": {:hex, :a, \"1.0.0/../../x\"}}",
            "line 1, column 19: dependency \"a\": invalid version \"1.0.0/../../x\"",
        );
        check_mix_err("%{\"a\": {:hex, :a, \"\"}}", "line 1, column 19: dependency \"a\": invalid version \"\"");
        check_mix_err(
            "%{\"a\": {:hex, :a, \"v1.0.0\"}}",
            "line 1, column 19: dependency \"a\": invalid version \"v1.0.0\"",
        );
        check_mix_err(
            "%{\"a\": {:hex, :a, \"1.0.0\", nil, [], [], \"hex/pm\"}}",
            "line 1, column 41: dependency \"a\": invalid repository name \"hex/pm\"",
        );
        check_mix_err(
            "%{\"a\": {:hex, :a, \"1.0.0\", nil, [], [], :hexpm}}",
            "line 1, column 41: dependency \"a\": expected the repository as a string, found atom `hexpm`",
        );
    }

    #[test]
    fn mix_malformed_checksums_are_errors() {
        check_mix_err(
            "%{\"a\": {:hex, :a, \"1.0.0\", \"abc\", [:mix], []}}",
            "line 1, column 28: invalid inner checksum for package \"a\": expected 64 hex digits, found 3",
        );
        let bad_outer =
            format!("%{{\"a\": {{:hex, :a, \"1.0.0\", \"{SUM_A}\", [:mix], [], \"hexpm\",\n \"{}z\"}}}}", &SUM_B[..63]);
        check_mix_err(
            &bad_outer,
            "line 2, column 2: invalid outer checksum for package \"a\": 'z' at offset 63 is not a hex digit",
        );
        check_mix_err(
            "%{\"a\": {:hex, :a, \"1.0.0\", 42}}",
            "line 1, column 28: invalid inner checksum for package \"a\": expected a string, found integer 42",
        );
        check_mix_err(
            "%{\"a\": {:hex, :a, \"1.0.0\", \"\"}}",
            "line 1, column 28: invalid inner checksum for package \"a\": expected 64 hex digits, found 0",
        );
    }

    #[test]
    fn mix_fixture_phoenix_app() {
        let lock = parse_mix_lock(PHOENIX_APP).unwrap();
        let (packages, skipped) = summary(&lock);
        assert_eq!(packages.len(), 39);
        assert_eq!(packages[0], "acme_billing 2.3.0 hexpm:acme io");
        assert_eq!(packages[1], "bandit 1.5.7 hexpm io");
        assert_eq!(packages[38], "websock_adapter 0.5.7 hexpm io");
        assert!(packages.iter().all(|p| p.ends_with(" io")), "{packages:?}");
        assert_eq!(
            skipped,
            strings(&[
                "heroicons git https://github.com/tailwindlabs/heroicons.git",
                "ledger_tools git git@github.com:acme/ledger_tools.git",
            ])
        );
        let phoenix = package(&lock, "phoenix");
        assert_eq!(phoenix.version, "1.7.14");
        assert_eq!(phoenix.repo, "hexpm");
        assert_eq!(
            phoenix.inner_checksum,
            Some(hex32("f6e1377caa9f58a6c21657422bfc920f9a08a12a02cf1fb877ca6e6248b53b6a"))
        );
        assert_eq!(
            phoenix.outer_checksum,
            Some(hex32("82b76ac61f6d7afde701c07c0f1213029ddddc8d69189962d7233cadb5d1590e"))
        );
        assert_eq!(package(&lock, "acme_billing").inner_checksum, Some(hex32(SUM_A)));
        assert_eq!(package(&lock, "acme_billing").outer_checksum, Some(hex32(SUM_B)));
        assert_eq!(package(&lock, "telemetry").version, "1.3.0");
        assert_eq!(package(&lock, "phoenix_live_view").version, "0.20.17");
        let mut names: Vec<&str> = lock.packages.iter().map(|p| p.name.as_str()).collect();
        names.dedup();
        assert_eq!(names.len(), 39);
    }

    #[test]
    fn mix_fixture_legacy_app() {
        let lock = parse_mix_lock(LEGACY_APP).unwrap();
        let (packages, skipped) = summary(&lock);
        assert_eq!(
            packages,
            strings(&[
                "certifi 0.4.0 hexpm i-",
                "cowboy 1.0.4 hexpm i-",
                "cowlib 1.0.2 hexpm i-",
                "ex_doc 0.11.5 hexpm --",
                "hackney 1.6.1 hexpm i-",
                "httpoison 0.9.2 hexpm i-",
                "idna 1.2.0 hexpm i-",
                "metrics 1.0.1 hexpm i-",
                "mimerl 1.0.2 hexpm i-",
                "plug 1.1.6 hexpm i-",
                "poison 2.1.0 hexpm io",
                "ranch 1.2.1 hexpm i-",
                "ssl_verify_fun 1.1.0 hexpm i-",
            ])
        );
        assert_eq!(skipped, strings(&["oauth git https://github.com/tim/erlang-oauth.git"]));
        assert_eq!(
            package(&lock, "certifi").inner_checksum,
            Some(hex32("1d54c39db785f5638ecf146d1cff0e0542ad3c1e54085ddc77c7e85b59f4b27a"))
        );
        assert_eq!(
            package(&lock, "poison").outer_checksum,
            Some(hex32("5f851d3e426c9d7c60eeac523e897471bddffe06150ca0e1acb7d8664158a268"))
        );
    }

    // --- rebar.lock ---------------------------------------------------------------

    #[test]
    fn rebar_versioned_with_hash_lists() {
        let input = format!(
            "{{\"1.2.0\",\n[{{<<\"cowboy\">>,{{pkg,<<\"cowboy\">>,<<\"2.12.0\">>}},0}}]}}.\n[\n{{pkg_hash,[\n {{<<\"cowboy\">>, <<\"{}\">>}}]}},\n{{pkg_hash_ext,[\n {{<<\"cowboy\">>, <<\"{}\">>}}]}}\n].\n",
            SUM_A.to_uppercase(),
            SUM_B.to_uppercase()
        );
        check_rebar(&input, &["cowboy 2.12.0 hexpm io"], &[]);
        let lock = parse_rebar_lock(&input).unwrap();
        assert_eq!(lock.packages[0].inner_checksum, Some(hex32(SUM_A)));
        assert_eq!(lock.packages[0].outer_checksum, Some(hex32(SUM_B)));
    }

    #[test]
    fn rebar_older_formats() {
        check_rebar(
            "[{<<\"jsx\">>,{pkg,<<\"jsx\">>,<<\"2.8.0\">>},0},\n {<<\"goldrush\">>,{pkg,<<\"goldrush\">>,<<\"0.1.9\">>},1}].\n",
            &["jsx 2.8.0 hexpm --", "goldrush 0.1.9 hexpm --"],
            &[],
        );
        let v110 = format!(
            "{{\"1.1.0\",\n[{{<<\"jsx\">>,{{pkg,<<\"jsx\">>,<<\"2.9.0\">>}},0}}]}}.\n[\n{{pkg_hash,[\n {{<<\"jsx\">>, <<\"{SUM_A}\">>}}]}}\n].\n"
        );
        check_rebar(&v110, &["jsx 2.9.0 hexpm i-"], &[]);
        check_rebar("{\"1.2.0\",[]}.\n", &[], &[]);
        check_rebar("[].", &[], &[]);
        check_rebar("", &[], &[]);
    }

    #[test]
    fn rebar_checksums_inside_the_pkg_tuple() {
        let five = format!("[{{<<\"a\">>,{{pkg,<<\"a\">>,<<\"1.0.0\">>,<<\"{SUM_A}\">>,<<\"{SUM_B}\">>}},0}}].");
        check_rebar(&five, &["a 1.0.0 hexpm io"], &[]);
        let four = format!("[{{<<\"a\">>,{{pkg,<<\"a\">>,<<\"1.0.0\">>,<<\"{SUM_A}\">>}},0}}].");
        check_rebar(&four, &["a 1.0.0 hexpm i-"], &[]);
        check_rebar("[{<<\"a\">>,{pkg,<<\"a\">>,<<\"1.0.0\">>,undefined,undefined},0}].", &["a 1.0.0 hexpm --"], &[]);
        let six =
            format!("[{{<<\"a\">>,{{pkg,<<\"a\">>,<<\"1.0.0\">>,<<\"{SUM_A}\">>,undefined,<<\"hexpm:acme\">>}},0}}].");
        check_rebar(&six, &["a 1.0.0 hexpm:acme i-"], &[]);
        let same = format!(
            "{{\"1.2.0\",[{{<<\"a\">>,{{pkg,<<\"a\">>,<<\"1.0.0\">>,<<\"{SUM_A}\">>}},0}}]}}.\n[{{pkg_hash,[{{<<\"a\">>,<<\"{}\">>}}]}}].",
            SUM_A.to_uppercase()
        );
        check_rebar(&same, &["a 1.0.0 hexpm i-"], &[]);
    }

    #[test]
    fn rebar_hashes_are_keyed_by_the_dependency_name() {
        let input = format!(
            "{{\"1.2.0\",[{{<<\"my_json\">>,{{pkg,<<\"jsx\">>,<<\"3.1.0\">>}},0}}]}}.\n[{{pkg_hash,[{{<<\"jsx\">>,<<\"{SUM_B}\">>}},{{<<\"my_json\">>,<<\"{SUM_A}\">>}}]}}]."
        );
        check_rebar(&input, &["jsx 3.1.0 hexpm i-"], &[]);
        assert_eq!(parse_rebar_lock(&input).unwrap().packages[0].inner_checksum, Some(hex32(SUM_A)));
    }

    #[test]
    fn rebar_liberal_spellings() {
        check_rebar("[{\"a\",{pkg,\"a\",\"1.0.0\"},0}].", &["a 1.0.0 hexpm --"], &[]);
        check_rebar("[{a,{pkg,a,<<\"1.0.0\">>},0}].", &["a 1.0.0 hexpm --"], &[]);
        check_rebar("[{<<\"a\">>,{pkg,<<\"a\">>,<<\"1.0.0\">>}}].", &["a 1.0.0 hexpm --"], &[]);
        check_rebar(
            "{\"1.2.0\",[{<<\"a\">>,{pkg,<<\"a\">>,<<\"1.0.0\">>},0}]}.\n[{pkg_hash,[]},{future_attr,[x]},ignored].\nextra.",
            &["a 1.0.0 hexpm --"],
            &[],
        );
    }

    #[test]
    fn rebar_non_hex_dependencies_are_skipped() {
        check_rebar(
            "[{<<\"lager\">>,{git,\"https://example.com/lager.git\",{ref,\"459a3b2cdd9eadd29e5a7ce5c43932f5ccd6eb88\"}},0}].",
            &[],
            &["lager git https://example.com/lager.git"],
        );
        check_rebar(
            "[{<<\"sub\">>,{git_subdir,\"https://example.com/mono.git\",{ref,\"abc\"},\"apps/sub\"},1}].",
            &[],
            &["sub git_subdir https://example.com/mono.git"],
        );
        check_rebar(
            "[{<<\"m\">>,{hg,\"https://example.com/m\",{rev,\"1\"}},0}].",
            &[],
            &["m hg https://example.com/m"],
        );
        check_rebar("[{<<\"r\">>,{raw,{git,\"u\",{ref,\"x\"}}},0}].", &[], &["r raw -"]);
    }

    #[test]
    fn rebar_shape_errors_name_the_position() {
        check_rebar_err(
            "{\"1.2.0\", foo}.",
            "line 1, column 11: expected the list of locked dependencies, found atom `foo`",
        );
        check_rebar_err(
            "locks.",
            "line 1, column 1: expected `{\"1.2.0\", [...]}` or a list of locked dependencies, found atom `locks`",
        );
        check_rebar_err("[foo].", "line 1, column 2: expected a lock entry `{Name, Source, Level}`, found atom `foo`");
        check_rebar_err(
            "[{<<\"a\">>}].",
            "line 1, column 2: expected a lock entry `{Name, Source, Level}`, found a tuple of 1 element(s)",
        );
        check_rebar_err("[{1,{pkg,a,<<\"1\">>},0}].", "line 1, column 3: expected a dependency name, found integer 1");
        check_rebar_err(
            "[{<<\"a\">>,<<\"1.0.0\">>,0}].",
            "line 1, column 11: dependency \"a\": expected a source such as `{pkg, ...}`, found string \"1.0.0\"",
        );
        check_rebar_err(
            "[{<<\"a\">>,{pkg,<<\"a\">>},0}].",
            "line 1, column 11: dependency \"a\": a `pkg` source needs a package name and a version",
        );
        check_rebar_err(
            "[{<<\"a\">>,{pkg,<<\"a-b\">>,<<\"1.0.0\">>},0}].",
            "line 1, column 16: dependency \"a\": invalid package name \"a-b\"",
        );
        check_rebar_err(
            "[{<<\"a\">>,{pkg,<<\"a\">>,<<\"1.0.0 \">>},0}].",
            "line 1, column 24: dependency \"a\": invalid version \"1.0.0 \"",
        );
        check_rebar_err(
            "[].\nfoo.",
            "line 2, column 1: expected the attribute list `[{pkg_hash, [...]}, ...]`, found atom `foo`",
        );
        check_rebar_err("[].\n[{pkg_hash, foo}].", "line 2, column 2: expected `{pkg_hash, [...]}`");
        check_rebar_err("[].\n[{pkg_hash_ext, [a]}].", "line 2, column 18: expected `{Name, Hash}`, found atom `a`");
    }

    #[test]
    fn rebar_malformed_or_conflicting_checksums_are_errors() {
        check_rebar_err(
            "[].\n[{pkg_hash,[\n {<<\"cowboy\">>, <<\"F00\">>}]}].",
            "line 3, column 17: invalid inner checksum for package \"cowboy\": expected 64 hex digits, found 3",
        );
        check_rebar_err(
            "[].\n[{pkg_hash_ext,[{<<\"a\">>, 7}]}].",
            "line 2, column 27: invalid outer checksum for package \"a\": expected a string, found integer 7",
        );
        let conflict = format!(
            "{{\"1.2.0\",[{{<<\"a\">>,{{pkg,<<\"a\">>,<<\"1.0.0\">>,<<\"{SUM_A}\">>}},0}}]}}.\n[{{pkg_hash,[{{<<\"a\">>,<<\"{SUM_B}\">>}}]}}]."
        );
        check_rebar_err(
            &conflict,
            "line 2, column 22: invalid inner checksum for package \"a\": it disagrees with the checksum in the lock entry",
        );
        check_rebar_err(
            "[{<<\"a\">>,{pkg,<<\"a\">>,<<\"1.0.0\">>,<<\"xyz\">>},0}].",
            "line 1, column 36: invalid inner checksum for package \"a\": 'x' at offset 0 is not a hex digit",
        );
    }

    #[test]
    fn rebar_fixture_cowboy_service() {
        let lock = parse_rebar_lock(COWBOY_SERVICE).unwrap();
        let (packages, skipped) = summary(&lock);
        assert_eq!(
            packages,
            strings(&[
                "certifi 2.12.0 hexpm io",
                "cowboy 2.12.0 hexpm io",
                "cowlib 2.13.0 hexpm io",
                "hackney 1.20.1 hexpm io",
                "idna 6.1.1 hexpm io",
                "jsx 3.1.0 hexpm io",
                "metrics 1.0.1 hexpm io",
                "mimerl 1.3.0 hexpm io",
                "parse_trans 3.4.1 hexpm io",
                "ranch 1.8.0 hexpm io",
                "ssl_verify_fun 1.1.7 hexpm io",
                "telemetry 1.2.1 hexpm io",
                "unicode_util_compat 0.7.0 hexpm io",
            ])
        );
        assert_eq!(
            skipped,
            strings(&[
                "lager git https://github.com/erlang-lager/lager.git",
                "recon_ex git_subdir https://github.com/acme/observability.git",
            ])
        );
        let cowboy = package(&lock, "cowboy");
        assert_eq!(
            cowboy.inner_checksum,
            Some(hex32("056f2fad000e284993bbcab4235955bb394fe19765711c380d54677bd6969a7c"))
        );
        assert_eq!(
            cowboy.outer_checksum,
            Some(hex32("7d89632ba0c66116711c105a5ee388d4fce013840ec8679a95ce22bb7cfced34"))
        );
        let compat = package(&lock, "unicode_util_compat");
        assert_eq!(
            compat.inner_checksum,
            Some(hex32("78024a761612b1433afdb83e4d044ea2029e03b1b788284f786a8ae137f185c2"))
        );
        assert_eq!(
            compat.outer_checksum,
            Some(hex32("40f08a516e02053646f963d96b5685d853ed6ea7da7ffb38746e5a326052be9b"))
        );
    }

    #[test]
    fn truncated_and_corrupted_fixtures_never_panic() {
        for text in [PHOENIX_APP, LEGACY_APP, COWBOY_SERVICE] {
            let boundaries: Vec<usize> = text.char_indices().map(|(i, _)| i).step_by(53).collect();
            for &end in &boundaries {
                let prefix = &text[..end];
                let _ = parse_mix_lock(prefix);
                let _ = parse_rebar_lock(prefix);
            }
            for &at in boundaries.iter().step_by(6) {
                for junk in ["}", "]", "\"", "'", "<<", ">>", "%{", "#{", ":", "\\", "\n.", "-"] {
                    let corrupted = format!("{}{junk}{}", &text[..at], &text[at..]);
                    let _ = parse_lockfile("mix.lock", &corrupted);
                    let _ = parse_lockfile("rebar.lock", &corrupted);
                }
            }
        }
    }

    // --- format detection ---------------------------------------------------------

    #[test]
    fn format_is_picked_by_file_name() {
        let check = |hint: &str, text: &str, expected: Option<LockfileFormat>| {
            assert_eq!(detect_format(hint, text), expected, "{hint:?} {text:?}");
        };
        use LockfileFormat::{Mix, Rebar};
        check("mix.lock", "", Some(Mix));
        check("/srv/app/mix.lock", "", Some(Mix));
        check("MIX.LOCK", "", Some(Mix));
        check("umbrella.mix.lock", "", Some(Mix));
        check("rebar.lock", "", Some(Rebar));
        check("C:\\work\\svc\\rebar.lock", "%{}", Some(Rebar));
        check("svc.rebar.lock", "", Some(Rebar));
        check("lock.txt", "%{\"a\": {:hex, :a, \"1.0.0\"}}", Some(Mix));
        check("lock.txt", "\n  {\"1.2.0\",\n[]}.", Some(Rebar));
        check("lock.txt", "[].", Some(Rebar));
        check("lock.txt", "% generated\n[].", Some(Rebar));
        check("lock.txt", "# comment\n%{}", Some(Mix));
        check("lock.txt", "\u{feff}%{}", Some(Mix));
        check("lock.txt", "", None);
        check("lock.txt", "hello", None);
        check("remix.lock", "", None);
    }

    #[test]
    fn parse_lockfile_dispatches() {
        let lock = parse_lockfile("deps/mix.lock", PHOENIX_APP).unwrap();
        assert_eq!((lock.format, lock.packages.len()), (LockfileFormat::Mix, 39));
        let lock = parse_lockfile("rebar.lock", COWBOY_SERVICE).unwrap();
        assert_eq!((lock.format, lock.packages.len()), (LockfileFormat::Rebar, 13));
        let lock = parse_lockfile("upload.bin", LEGACY_APP).unwrap();
        assert_eq!((lock.format, lock.packages.len()), (LockfileFormat::Mix, 13));
        assert_eq!(
            parse_lockfile("upload.bin", "garbage").unwrap_err().to_string(),
            "cannot tell whether \"upload.bin\" is a mix.lock or a rebar.lock"
        );
        assert_eq!(
            parse_lockfile("mix.lock", COWBOY_SERVICE).unwrap_err().to_string(),
            "line 2, column 3: unexpected character '<'"
        );
        assert_eq!(
            parse_lockfile("rebar.lock", PHOENIX_APP).unwrap_err().to_string(),
            "line 2, column 17: unexpected character ':'"
        );
    }
}
