//! Elixir-style version requirements as Hex uses them (`~> 1.2`, `>= 1.0.0 and < 2.0.0`,
//! `== 1.0.0 or ~> 2.0-rc`), Hex version parsing, and `name requirement` package specs.
//!
//! Provides [`Requirement`] (parse a requirement, match a [`semver::Version`] against it),
//! [`parse_version`] (a full `MAJOR.MINOR.PATCH[-PRE][+BUILD]` Hex version) and
//! [`PackageSpec`] (`"ecto ~> 3.10"` or a bare `"phoenix"`). It does not resolve
//! dependencies, pick the newest matching version, or look anything up: it answers
//! "does this one version satisfy this one requirement".
//!
//! Semantics follow Elixir's `Version.match?/3`: `~> 1.2` means `>= 1.2.0 and < 2.0.0`,
//! `~> 1.2.3` means `>= 1.2.3 and < 1.3.0`, and `~>` never admits a pre-release of its
//! upper bound; only `~>` may omit the patch number. A `>`, `>=` or `~>` comparator
//! whose operand has no pre-release does not match a pre-release version unless
//! `allow_pre` is set (so `~> 2.1-dev` admits `2.2.0-dev` but `~> 2.1` does not);
//! `==`, `!=`, `<` and `<=` compare by precedence alone, exactly as Elixir does.
//! `and` binds tighter than `or`, as in Hex's solver. Ordering is SemVer 2.0
//! precedence (Elixir's `Version.compare/2`) and build metadata never affects it.
//!
//! Invariant: a parsed [`Requirement`] holds at least one alternative and every
//! alternative at least one comparator, each with a valid version; matching is a pure
//! function of the requirement, the version and `allow_pre`, and never panics.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use semver::{BuildMetadata, Prerelease, Version};

/// Why a requirement, version or package spec could not be parsed.
///
/// Every `column` is 1-based and counted in characters from the start of the text
/// that was handed to the parsing function.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequirementError {
    /// The requirement text is empty or only whitespace.
    #[error("column {column}: empty requirement")]
    Empty {
        /// Where the requirement was expected.
        column: usize,
    },
    /// An operator or conjunction came where a version was expected.
    #[error("column {column}: expected a version, found {found}")]
    ExpectedVersion {
        /// Where the version was expected.
        column: usize,
        /// What was there instead.
        found: String,
    },
    /// Something other than `and` / `or` followed a complete comparator.
    #[error("column {column}: expected `and` or `or`, found {found}")]
    ExpectedConjunction {
        /// Where the conjunction was expected.
        column: usize,
        /// What was there instead.
        found: String,
    },
    /// A character that cannot start an operator or a version.
    #[error("column {column}: unexpected character {found:?}")]
    UnexpectedChar {
        /// Where the character is.
        column: usize,
        /// The character.
        found: char,
    },
    /// The version text is not a valid Hex version.
    #[error("column {column}: invalid version {version:?}: {reason}")]
    InvalidVersion {
        /// Where the version starts.
        column: usize,
        /// The version text.
        version: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A two-part version was used with an operator other than `~>`.
    #[error("column {column}: version {version:?} lacks a patch number, which only `~>` may omit")]
    MissingPatch {
        /// Where the version starts.
        column: usize,
        /// The version text.
        version: String,
    },
    /// The package name of a spec is not `[A-Za-z][A-Za-z0-9_]*`.
    #[error("column {column}: invalid package name {name:?}: {reason}")]
    InvalidPackageName {
        /// Where the offending character (or the empty name) is.
        column: usize,
        /// The name as written.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// A comparison operator of a requirement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
    Tilde,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Eq => "==",
            Op::Ne => "!=",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Tilde => "~>",
        }
    }
}

/// One `op version` term.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Comparator {
    op: Op,
    /// The operand; for a two-part `~>` operand the patch is 0.
    version: Version,
    /// Whether the operand was written with a patch number (only `~>` may omit it).
    has_patch: bool,
    /// The operand as written, for display.
    text: String,
}

impl Comparator {
    fn matches(&self, version: &Version, allow_pre: bool) -> bool {
        let lower_bound = matches!(self.op, Op::Gt | Op::Ge | Op::Tilde);
        if lower_bound && !allow_pre && !version.pre.is_empty() && self.version.pre.is_empty() {
            return false;
        }
        let ord = precedence(version, &self.version);
        match self.op {
            Op::Eq => ord == Ordering::Equal,
            Op::Ne => ord != Ordering::Equal,
            Op::Gt => ord == Ordering::Greater,
            Op::Ge => ord != Ordering::Less,
            Op::Lt => ord == Ordering::Less,
            Op::Le => ord != Ordering::Greater,
            Op::Tilde => {
                // The upper bound is `< UPPER-0`: every pre-release of UPPER is excluded,
                // so comparing the numeric triple is enough.
                let v = (version.major, version.minor, version.patch);
                let below_upper = if self.has_patch {
                    let upper_minor = u128::from(self.version.minor) + 1;
                    (v.0, u128::from(v.1)) < (self.version.major, upper_minor)
                } else {
                    u128::from(v.0) < u128::from(self.version.major) + 1
                };
                ord != Ordering::Less && below_upper
            }
        }
    }
}

impl fmt::Display for Comparator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.op.as_str(), self.text)
    }
}

/// SemVer 2.0 precedence: numeric triple, then pre-release (a release outranks any of
/// its pre-releases); build metadata is ignored.
fn precedence(a: &Version, b: &Version) -> Ordering {
    (a.major, a.minor, a.patch).cmp(&(b.major, b.minor, b.patch)).then_with(|| {
        match (a.pre.is_empty(), b.pre.is_empty()) {
            (true, true) => Ordering::Equal,
            (true, false) => Ordering::Greater,
            (false, true) => Ordering::Less,
            (false, false) => a.pre.cmp(&b.pre),
        }
    })
}

/// A parsed Hex version requirement: alternatives joined by `or`, each a conjunction of
/// comparators joined by `and`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    alternatives: Vec<Vec<Comparator>>,
}

impl Requirement {
    /// Parses a requirement such as `~> 1.2`, `>= 1.0.0 and < 2.0.0` or `1.0.0`
    /// (a bare version means `==`).
    pub fn parse(text: &str) -> Result<Requirement, RequirementError> {
        parse_requirement_at(text, 0)
    }

    /// Whether `version` satisfies this requirement. Pre-release versions are only
    /// matched by `>`, `>=` and `~>` comparators whose operand is itself a
    /// pre-release, unless `allow_pre` is true.
    pub fn matches(&self, version: &Version, allow_pre: bool) -> bool {
        self.alternatives.iter().any(|all| all.iter().all(|c| c.matches(version, allow_pre)))
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, group) in self.alternatives.iter().enumerate() {
            if i > 0 {
                f.write_str(" or ")?;
            }
            for (j, comparator) in group.iter().enumerate() {
                if j > 0 {
                    f.write_str(" and ")?;
                }
                write!(f, "{comparator}")?;
            }
        }
        Ok(())
    }
}

impl FromStr for Requirement {
    type Err = RequirementError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Requirement::parse(text)
    }
}

/// Parses a full Hex version, `MAJOR.MINOR.PATCH[-PRE][+BUILD]`, with Elixir's rules:
/// no leading zeros in numbers or numeric pre-release identifiers, identifiers made of
/// `[0-9A-Za-z-]`, no surrounding whitespace.
pub fn parse_version(text: &str) -> Result<Version, RequirementError> {
    parse_version_at(text, 1, false).map(|(version, _)| version)
}

/// Parses a version whose first character is at `column`; returns it and whether the
/// patch number was present (it may be missing only when `allow_no_patch`).
fn parse_version_at(text: &str, column: usize, allow_no_patch: bool) -> Result<(Version, bool), RequirementError> {
    let invalid = |reason: String| RequirementError::InvalidVersion { column, version: text.to_string(), reason };
    let (rest, build) = match text.split_once('+') {
        Some((rest, build)) => (rest, Some(build)),
        None => (text, None),
    };
    let (core, pre) = match rest.split_once('-') {
        Some((core, pre)) => (core, Some(pre)),
        None => (rest, None),
    };
    let parts: Vec<&str> = core.split('.').collect();
    if parts.len() > 3 || parts.len() < 2 {
        return Err(invalid(format!("expected MAJOR.MINOR.PATCH, found {} dot-separated part(s)", parts.len())));
    }
    let mut numbers = [0u64; 3];
    for (slot, part) in numbers.iter_mut().zip(&parts) {
        *slot = parse_number(part).map_err(|reason| invalid(reason.to_string()))?;
    }
    let has_patch = parts.len() == 3;
    if !has_patch && !allow_no_patch {
        return Err(RequirementError::MissingPatch { column, version: text.to_string() });
    }
    let pre = match pre {
        None => Prerelease::EMPTY,
        Some(pre) => {
            check_identifiers(pre, "pre-release").map_err(|e| invalid(e.to_string()))?;
            Prerelease::new(pre).map_err(|e| invalid(e.to_string()))?
        }
    };
    let build = match build {
        None => BuildMetadata::EMPTY,
        Some(build) => {
            check_identifiers(build, "build").map_err(|e| invalid(e.to_string()))?;
            BuildMetadata::new(build).map_err(|e| invalid(e.to_string()))?
        }
    };
    let version = Version { major: numbers[0], minor: numbers[1], patch: numbers[2], pre, build };
    Ok((version, has_patch))
}

/// A version number: ASCII digits, no leading zero, fits in `u64`.
fn parse_number(part: &str) -> Result<u64, &'static str> {
    if part.is_empty() {
        return Err("empty version number");
    }
    if !part.bytes().all(|b| b.is_ascii_digit()) {
        return Err("version numbers must be ASCII digits");
    }
    if part.len() > 1 && part.starts_with('0') {
        return Err("version numbers must not have leading zeros");
    }
    part.parse().map_err(|_| "version number too large")
}

/// Why the pre-release or build part of a version is malformed; the `reason` of
/// [`RequirementError::InvalidVersion`]. `what` is `"pre-release"` or `"build"`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum IdentifierError {
    #[error("empty {what} identifier")]
    Empty { what: &'static str },
    #[error("{what} identifier {ident:?} has a character outside [0-9A-Za-z-]")]
    Character { what: &'static str, ident: String },
    #[error("numeric pre-release identifier {0:?} has a leading zero")]
    LeadingZero(String),
}

/// Dot-separated, non-empty identifiers of `[0-9A-Za-z-]`; numeric pre-release
/// identifiers may not have leading zeros.
fn check_identifiers(text: &str, what: &'static str) -> Result<(), IdentifierError> {
    for ident in text.split('.') {
        if ident.is_empty() {
            return Err(IdentifierError::Empty { what });
        }
        if !ident.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(IdentifierError::Character { what, ident: ident.to_string() });
        }
        let numeric = ident.bytes().all(|b| b.is_ascii_digit());
        if what == "pre-release" && numeric && ident.len() > 1 && ident.starts_with('0') {
            return Err(IdentifierError::LeadingZero(ident.to_string()));
        }
    }
    Ok(())
}

/// A lexical token of a requirement, with its 1-based column.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token<'a> {
    Op(Op),
    And,
    Or,
    Word(&'a str),
}

fn describe(token: Option<&(Token<'_>, usize)>) -> String {
    match token {
        None => "end of input".to_string(),
        Some((Token::Op(op), _)) => format!("`{}`", op.as_str()),
        Some((Token::And, _)) => "`and`".to_string(),
        Some((Token::Or, _)) => "`or`".to_string(),
        Some((Token::Word(word), _)) => format!("{word:?}"),
    }
}

fn is_op_char(c: char) -> bool {
    matches!(c, '<' | '>' | '=' | '~' | '!')
}

/// Splits `text` into tokens; `offset` is the number of characters before `text` in
/// the caller's input, so that columns refer to the caller's input.
fn tokenize(text: &str, offset: usize) -> Result<Vec<(Token<'_>, usize)>, RequirementError> {
    let mut tokens = Vec::new();
    let mut chars = text.char_indices().enumerate().peekable();
    while let Some((index, (byte, c))) = chars.next() {
        let column = offset + index + 1;
        if c.is_whitespace() {
            continue;
        }
        let next = chars.peek().map(|&(_, (_, c))| c);
        let op = match (c, next) {
            ('>', Some('=')) => Some((Op::Ge, true)),
            ('<', Some('=')) => Some((Op::Le, true)),
            ('=', Some('=')) => Some((Op::Eq, true)),
            ('!', Some('=')) => Some((Op::Ne, true)),
            ('~', Some('>')) => Some((Op::Tilde, true)),
            ('>', _) => Some((Op::Gt, false)),
            ('<', _) => Some((Op::Lt, false)),
            ('!', _) => Some((Op::Ne, false)),
            _ => None,
        };
        if let Some((op, two_chars)) = op {
            if two_chars {
                chars.next();
            }
            tokens.push((Token::Op(op), column));
            continue;
        }
        if is_op_char(c) {
            return Err(RequirementError::UnexpectedChar { column, found: c });
        }
        let mut end = byte + c.len_utf8();
        while let Some(&(_, (b, c))) = chars.peek() {
            if c.is_whitespace() || is_op_char(c) {
                break;
            }
            end = b + c.len_utf8();
            chars.next();
        }
        let token = match &text[byte..end] {
            "and" => Token::And,
            "or" => Token::Or,
            word => Token::Word(word),
        };
        tokens.push((token, column));
    }
    Ok(tokens)
}

fn parse_requirement_at(text: &str, offset: usize) -> Result<Requirement, RequirementError> {
    let tokens = tokenize(text, offset)?;
    if tokens.is_empty() {
        return Err(RequirementError::Empty { column: offset + 1 });
    }
    let end_column = offset + text.chars().count() + 1;
    let mut alternatives = Vec::new();
    let mut group = Vec::new();
    let mut i = 0;
    loop {
        // comparator := [op] version
        let op = match tokens.get(i) {
            Some((Token::Op(op), _)) => {
                i += 1;
                *op
            }
            _ => Op::Eq,
        };
        let (word, column) = match tokens.get(i) {
            Some((Token::Word(word), column)) => (*word, *column),
            other => {
                return Err(RequirementError::ExpectedVersion {
                    column: other.map_or(end_column, |t| t.1),
                    found: describe(other),
                })
            }
        };
        i += 1;
        let (version, has_patch) = parse_version_at(word, column, op == Op::Tilde)?;
        group.push(Comparator { op, version, has_patch, text: word.to_string() });
        match tokens.get(i) {
            None => break,
            Some((Token::And, _)) => {}
            Some((Token::Or, _)) => alternatives.push(std::mem::take(&mut group)),
            other => {
                return Err(RequirementError::ExpectedConjunction {
                    column: other.map_or(end_column, |t| t.1),
                    found: describe(other),
                })
            }
        }
        i += 1;
    }
    alternatives.push(group);
    Ok(Requirement { alternatives })
}

/// A package name with an optional requirement, as in `ecto ~> 3.10` or `phoenix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageSpec {
    /// The package name, `[A-Za-z][A-Za-z0-9_]*`.
    pub name: String,
    /// The requirement, or `None` when any version will do.
    pub requirement: Option<Requirement>,
}

impl PackageSpec {
    /// Parses `NAME` or `NAME REQUIREMENT` (whitespace between them; surrounding
    /// whitespace is ignored).
    pub fn parse(text: &str) -> Result<PackageSpec, RequirementError> {
        let leading = text.chars().take_while(|c| c.is_whitespace()).count();
        let body = text.trim_start();
        let name_end = body.find(char::is_whitespace).unwrap_or(body.len());
        let name = &body[..name_end];
        check_package_name(name).map_err(|(index, reason)| RequirementError::InvalidPackageName {
            column: leading + index + 1,
            name: name.to_string(),
            reason,
        })?;
        let rest = &body[name_end..];
        let requirement = if rest.trim().is_empty() {
            None
        } else {
            let offset = leading + name.chars().count();
            Some(parse_requirement_at(rest, offset)?)
        };
        Ok(PackageSpec { name: name.to_string(), requirement })
    }

    /// Whether `version` is wanted by this spec. Without a requirement every release
    /// matches, and pre-releases only when `allow_pre` is true.
    pub fn matches(&self, version: &Version, allow_pre: bool) -> bool {
        match &self.requirement {
            Some(requirement) => requirement.matches(version, allow_pre),
            None => allow_pre || version.pre.is_empty(),
        }
    }
}

impl fmt::Display for PackageSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.requirement {
            Some(requirement) => write!(f, "{} {requirement}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

impl FromStr for PackageSpec {
    type Err = RequirementError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        PackageSpec::parse(text)
    }
}

/// Whether `name` is a valid Hex package name, `[A-Za-z][A-Za-z0-9_]*`.
pub fn is_valid_package_name(name: &str) -> bool {
    check_package_name(name).is_ok()
}

/// Checks a package name; on failure gives the character index of the problem.
fn check_package_name(name: &str) -> Result<(), (usize, &'static str)> {
    let mut chars = name.chars();
    match chars.next() {
        None => return Err((0, "name is empty")),
        Some(c) if !c.is_ascii_alphabetic() => return Err((0, "name must start with an ASCII letter")),
        Some(_) => {}
    }
    match chars.position(|c| !(c.is_ascii_alphanumeric() || c == '_')) {
        Some(index) => Err((index + 1, "name may only contain ASCII letters, digits and `_`")),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(text: &str) -> Version {
        parse_version(text).unwrap_or_else(|e| panic!("bad test version {text:?}: {e}"))
    }

    /// `requirement` matched against `version` with `allow_pre` gives `expected`.
    #[track_caller]
    fn check(requirement: &str, version: &str, allow_pre: bool, expected: bool) {
        let parsed = Requirement::parse(requirement)
            .unwrap_or_else(|e| panic!("requirement {requirement:?} failed to parse: {e}"));
        assert_eq!(
            parsed.matches(&v(version), allow_pre),
            expected,
            "{requirement:?} vs {version:?} (allow_pre: {allow_pre})"
        );
    }

    #[track_caller]
    fn check_err(requirement: &str, expected: &str) {
        match Requirement::parse(requirement) {
            Ok(parsed) => panic!("{requirement:?} parsed as {parsed}, expected an error"),
            Err(e) => assert_eq!(e.to_string(), expected, "error for {requirement:?}"),
        }
    }

    #[track_caller]
    fn check_display(requirement: &str, expected: &str) {
        assert_eq!(Requirement::parse(requirement).unwrap().to_string(), expected);
    }

    #[track_caller]
    fn check_version(text: &str, expected: Option<(u64, u64, u64, &str, &str)>) {
        let got = parse_version(text).ok().map(|v| (v.major, v.minor, v.patch, v.pre.to_string(), v.build.to_string()));
        let expected = expected.map(|(a, b, c, p, m)| (a, b, c, p.to_string(), m.to_string()));
        assert_eq!(got, expected, "parse_version({text:?})");
    }

    #[track_caller]
    fn check_spec(text: &str, name: &str, requirement: Option<&str>) {
        let spec = PackageSpec::parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert_eq!(spec.name, name, "{text:?}");
        assert_eq!(spec.requirement.as_ref().map(ToString::to_string).as_deref(), requirement, "{text:?}");
    }

    #[track_caller]
    fn check_spec_err(text: &str, expected: &str) {
        match PackageSpec::parse(text) {
            Ok(spec) => panic!("{text:?} parsed as {spec}, expected an error"),
            Err(e) => assert_eq!(e.to_string(), expected, "error for {text:?}"),
        }
    }

    #[test]
    fn tilde_two_part_allows_minor_and_patch_bumps() {
        check("~> 1.2", "1.2.0", false, true);
        check("~> 1.2", "1.2.9", false, true);
        check("~> 1.2", "1.9.0", false, true);
        check("~> 1.2", "1.1.9", false, false);
        check("~> 1.2", "2.0.0", false, false);
        check("~> 1.2", "0.9.0", false, false);
        check("~> 0.5", "0.5.1", false, true);
        check("~> 0.5", "0.9.0", false, true);
        check("~> 0.5", "1.0.0", false, false);
    }

    #[test]
    fn tilde_three_part_allows_patch_bumps_only() {
        check("~> 1.2.3", "1.2.3", false, true);
        check("~> 1.2.3", "1.2.10", false, true);
        check("~> 1.2.3", "1.2.2", false, false);
        check("~> 1.2.3", "1.3.0", false, false);
        check("~> 1.2.3", "2.0.0", false, false);
        check("~> 2.0.0", "2.0.1", false, true);
        check("~> 2.0.0", "2.1.0", false, false);
        check("~> 0.0.1", "0.0.5", false, true);
        check("~> 0.0.1", "0.1.0", false, false);
    }

    #[test]
    fn tilde_excludes_pre_releases_of_the_upper_bound_even_when_allowed() {
        check("~> 2.0", "3.0.0-rc.1", true, false);
        check("~> 2.0", "3.0.0-0", true, false);
        check("~> 2.1.2", "2.2.0-dev", true, false);
        check("~> 2.1.2", "2.1.9", true, true);
    }

    #[test]
    fn tilde_at_u64_max_does_not_overflow() {
        let max = u64::MAX;
        check(&format!("~> {max}.0"), &format!("{max}.7.0"), false, true);
        check(&format!("~> 1.{max}.0"), &format!("1.{max}.3"), false, true);
        check(&format!("~> 1.{max}.0"), "2.0.0", false, false);
    }

    #[test]
    fn comparison_operators() {
        check(">= 1.0.0", "1.0.0", false, true);
        check(">= 1.0.0", "0.9.9", false, false);
        check(">= 1.0.0", "10.0.0", false, true);
        check("> 1.0.0", "1.0.0", false, false);
        check("> 1.0.0", "1.0.1", false, true);
        check("< 1.0.0", "0.9.9", false, true);
        check("< 1.0.0", "1.0.0", false, false);
        check("<= 1.0.0", "1.0.0", false, true);
        check("<= 1.0.0", "1.0.1", false, false);
        check("== 1.0.0", "1.0.0", false, true);
        check("== 1.0.0", "1.0.1", false, false);
        check("!= 1.0.0", "1.0.0", false, false);
        check("!= 1.0.0", "1.0.1", false, true);
        check("! 1.0.0", "1.0.0", false, false);
        check(">= 0.0.0", "0.0.0", false, true);
    }

    #[test]
    fn numbers_compare_numerically_not_lexically() {
        check("> 1.9.0", "1.10.0", false, true);
        check("< 1.10.0", "1.9.0", false, true);
        check("~> 1.9", "1.10.0", false, true);
    }

    #[test]
    fn bare_version_means_equality() {
        check("1.0.0", "1.0.0", false, true);
        check("1.0.0", "1.0.1", false, false);
        check("1.0.0-rc.1", "1.0.0-rc.1", false, true);
        check("1.0.0 or 2.0.0", "2.0.0", false, true);
    }

    #[test]
    fn whitespace_is_optional_around_operators() {
        check(">=1.0.0", "1.0.0", false, true);
        check("~>1.2", "1.3.0", false, true);
        check("  ==  1.0.0  ", "1.0.0", false, true);
        check(">= 1.0.0\tand\t< 2.0.0", "1.5.0", false, true);
    }

    #[test]
    fn build_metadata_is_ignored() {
        check("== 1.0.0", "1.0.0+build.7", false, true);
        check("== 1.0.0+abc", "1.0.0", false, true);
        check("> 1.0.0", "1.0.0+zzz", false, false);
        check("<= 1.0.0", "1.0.0+20130417140000", false, true);
        check("!= 1.0.0+a", "1.0.0+b", false, false);
    }

    #[test]
    fn and_requires_every_comparator() {
        check(">= 1.0.0 and < 2.0.0", "1.5.0", false, true);
        check(">= 1.0.0 and < 2.0.0", "2.0.0", false, false);
        check(">= 1.0.0 and < 2.0.0", "0.5.0", false, false);
        check("~> 1.0 and != 1.3.0", "1.3.0", false, false);
        check("~> 1.0 and != 1.3.0", "1.3.1", false, true);
        check("> 1.0.0 and > 2.0.0 and > 3.0.0", "2.5.0", false, false);
        check("> 1.0.0 and > 2.0.0 and > 3.0.0", "3.0.1", false, true);
    }

    #[test]
    fn or_accepts_any_alternative() {
        check("~> 1.0 or ~> 2.0", "1.4.0", false, true);
        check("~> 1.0 or ~> 2.0", "2.4.0", false, true);
        check("~> 1.0 or ~> 2.0", "3.0.0", false, false);
        check("== 1.0.0 or == 1.0.2", "1.0.1", false, false);
        check("== 1.0.0 or == 1.0.2", "1.0.2", false, true);
        check("~> 0.9 or ~> 1.0 or ~> 2.0", "2.9.9", false, true);
    }

    #[test]
    fn and_binds_tighter_than_or() {
        // == 1.0.0 or (== 2.0.0 and == 3.0.0)
        check("== 1.0.0 or == 2.0.0 and == 3.0.0", "1.0.0", false, true);
        // (>= 1.0.0 and < 1.1.0) or (>= 2.0.0 and < 2.1.0)
        let req = ">= 1.0.0 and < 1.1.0 or >= 2.0.0 and < 2.1.0";
        check(req, "1.0.5", false, true);
        check(req, "2.0.5", false, true);
        check(req, "1.5.0", false, false);
        check(req, "2.1.0", false, false);
        // (> 3.0.0 and < 1.0.0) can never hold; the other side can
        check("> 3.0.0 and < 1.0.0 or == 0.5.0", "0.5.0", false, true);
        check("> 3.0.0 and < 1.0.0 or == 0.5.0", "0.4.0", false, false);
    }

    #[test]
    fn pre_releases_need_allow_pre_or_a_pre_release_operand() {
        // The table of Elixir's `Version` documentation.
        check("~> 2.0", "2.1.0", false, true);
        check("~> 2.0", "3.0.0", false, false);
        check("~> 2.0.0", "2.0.1", false, true);
        check("~> 2.0.0", "2.1.0", false, false);
        check("~> 2.1.2", "2.1.3-dev", true, true);
        check("~> 2.1.2", "2.1.3-dev", false, false);
        check("~> 2.1-dev", "2.2.0-dev", false, true);
        check("~> 2.1.2-dev", "2.1.3-dev", false, true);
        check(">= 2.1.0", "2.2.0-dev", false, false);
        check(">= 2.1.0-dev", "2.2.3-dev", true, true);
    }

    #[test]
    fn pre_release_lower_bounds() {
        check(">= 2.1.0-dev", "2.2.3-dev", false, true);
        check(">= 1.0.0-rc.1", "1.0.0-rc.1", false, true);
        check(">= 1.0.0-rc.1", "1.0.0-rc.2", false, true);
        check(">= 1.0.0-rc.1", "1.0.0-beta.9", false, false);
        check(">= 1.0.0-rc.1", "1.0.0", false, true);
        check("> 1.0.0-rc.1", "1.0.0-rc.1", false, false);
        check("> 1.0.0", "1.0.1-rc.1", false, false);
        check("> 1.0.0", "1.0.1-rc.1", true, true);
        check(">= 1.0.0", "1.0.0-rc.1", true, false);
        check("~> 1.0-rc", "1.0.0-rc.1", false, true);
        check("~> 1.0-rc", "1.0.0-beta", false, false);
        check("~> 1.0", "1.0.0-rc.1", true, false);
    }

    #[test]
    fn equality_and_upper_bounds_compare_by_precedence_alone() {
        check("== 1.0.0-rc.1", "1.0.0-rc.1", false, true);
        check("== 1.0.0-rc.1", "1.0.0", false, false);
        check("== 1.0.0", "1.0.0-rc.1", true, false);
        // As in Elixir, upper bounds and `!=` do not filter pre-releases on their own.
        check("< 2.0.0", "2.0.0-rc.1", false, true);
        check("<= 1.0.0", "1.0.0-rc.1", false, true);
        check("!= 1.0.0", "2.0.0-dev", false, true);
        // ...but a lower bound beside them does.
        check(">= 1.0.0 and < 2.0.0", "1.5.0-rc.1", false, false);
        check(">= 1.0.0 and < 2.0.0", "1.5.0-rc.1", true, true);
        check(">= 1.0.0-rc.1 and < 2.0.0", "1.5.0-rc.1", false, true);
    }

    #[test]
    fn pre_release_operand_counts_per_alternative() {
        let req = "~> 1.0 or ~> 2.0-rc";
        check(req, "2.0.0-rc.2", false, true);
        check(req, "2.3.0-beta", false, true);
        check(req, "1.5.0-rc.1", false, false);
        check(req, "1.5.0-rc.1", true, true);
        check(req, "1.5.0", false, true);
    }

    #[test]
    fn pre_release_precedence_follows_semver() {
        check("> 1.0.0-alpha", "1.0.0-alpha.1", false, true);
        check("> 1.0.0-alpha.1", "1.0.0-alpha.beta", false, true);
        check("> 1.0.0-alpha.beta", "1.0.0-beta", false, true);
        check("> 1.0.0-beta", "1.0.0-beta.2", false, true);
        check("> 1.0.0-beta.2", "1.0.0-beta.11", false, true);
        check("> 1.0.0-beta.11", "1.0.0-rc.1", false, true);
        check("> 1.0.0-rc.1", "1.0.0", false, true);
        check("< 1.0.0-beta.11", "1.0.0-beta.2", false, true);
        check("> 1.0.0-alpha.1", "1.0.0-alpha", false, false);
        check("> 1.0.0-10", "1.0.0-2", false, false);
        check("< 1.0.0-10", "1.0.0-2", false, true);
    }

    #[test]
    fn display_normalises_spacing() {
        check_display("~>1.2", "~> 1.2");
        check_display("1.0.0", "== 1.0.0");
        check_display(">= 1.0.0   and <2.0.0 or  ==3.0.0-rc.1+b", ">= 1.0.0 and < 2.0.0 or == 3.0.0-rc.1+b");
        check_display("! 1.0.0", "!= 1.0.0");
    }

    #[test]
    fn display_round_trips() {
        for text in ["~> 1.2", ">= 1.0.0 and < 2.0.0 or == 3.0.0", "~> 2.1-dev", "!= 0.1.0"] {
            let once = Requirement::parse(text).unwrap();
            let twice = Requirement::parse(&once.to_string()).unwrap();
            assert_eq!(once, twice, "{text:?}");
        }
    }

    #[test]
    fn from_str_parses() {
        let req: Requirement = "~> 3.10".parse().unwrap();
        assert!(req.matches(&v("3.11.0"), false));
        assert!("nonsense".parse::<Requirement>().is_err());
    }

    #[test]
    fn requirement_errors_name_the_column() {
        check_err("", "column 1: empty requirement");
        check_err("   ", "column 1: empty requirement");
        check_err(">=", "column 3: expected a version, found end of input");
        check_err(">= >= 1.0.0", "column 4: expected a version, found `>=`");
        check_err("== == 1.0.0", "column 4: expected a version, found `==`");
        check_err("~> 1.0 and", "column 11: expected a version, found end of input");
        check_err("and 1.0.0", "column 1: expected a version, found `and`");
        check_err("~> 1.0 or or ~> 2.0", "column 11: expected a version, found `or`");
        check_err("1.0.0 2.0.0", "column 7: expected `and` or `or`, found \"2.0.0\"");
        check_err("1.0.0 >= 2.0.0", "column 7: expected `and` or `or`, found `>=`");
        check_err("= 1.0.0", "column 1: unexpected character '='");
        check_err("~ 1.0.0", "column 1: unexpected character '~'");
        check_err(">= 1.0", "column 4: version \"1.0\" lacks a patch number, which only `~>` may omit");
        check_err("~> 1.0 and < 2.0", "column 14: version \"2.0\" lacks a patch number, which only `~>` may omit");
        check_err("~> 1", "column 4: invalid version \"1\": expected MAJOR.MINOR.PATCH, found 1 dot-separated part(s)");
        check_err(">= 01.0.0", "column 4: invalid version \"01.0.0\": version numbers must not have leading zeros");
        check_err(">= 1.0.x", "column 4: invalid version \"1.0.x\": version numbers must be ASCII digits");
        check_err(
            "~> 1.0 or >= é",
            "column 14: invalid version \"é\": expected MAJOR.MINOR.PATCH, found 1 dot-separated part(s)",
        );
    }

    #[test]
    fn parse_version_accepts_hex_versions() {
        check_version("1.2.3", Some((1, 2, 3, "", "")));
        check_version("0.0.0", Some((0, 0, 0, "", "")));
        check_version("1.0.0-rc.1", Some((1, 0, 0, "rc.1", "")));
        check_version("1.0.0-alpha-2.x", Some((1, 0, 0, "alpha-2.x", "")));
        check_version("1.0.0+build.5", Some((1, 0, 0, "", "build.5")));
        check_version("1.0.0-rc.1+0017", Some((1, 0, 0, "rc.1", "0017")));
        check_version("1.0.0+a-b+c", None);
        check_version("18446744073709551615.0.0", Some((u64::MAX, 0, 0, "", "")));
    }

    #[test]
    fn parse_version_rejects_malformed_versions() {
        for bad in [
            "",
            "1",
            "1.2",
            "1.2.3.4",
            "v1.2.3",
            " 1.2.3",
            "1.2.3 ",
            "01.2.3",
            "1.02.3",
            "1.2.03",
            "1.2.3-",
            "1.2.3+",
            "1.2.3-01",
            "1.2.3-rc..1",
            "1.2.3-rc_1",
            "1.2.3+b_1",
            "1..3",
            "-1.2.3",
            "1.2.-3",
            "18446744073709551616.0.0",
            "1.2.3-é",
            "1.2.3+",
        ] {
            check_version(bad, None);
        }
    }

    #[test]
    fn parse_version_error_message() {
        assert_eq!(
            parse_version("1.2").unwrap_err().to_string(),
            "column 1: version \"1.2\" lacks a patch number, which only `~>` may omit"
        );
        assert_eq!(
            parse_version("1.2.3-01").unwrap_err().to_string(),
            "column 1: invalid version \"1.2.3-01\": numeric pre-release identifier \"01\" has a leading zero"
        );
    }

    #[test]
    fn package_spec_with_and_without_requirement() {
        check_spec("ecto ~> 3.10", "ecto", Some("~> 3.10"));
        check_spec("phoenix", "phoenix", None);
        check_spec("  phoenix  ", "phoenix", None);
        check_spec("plug_cowboy >= 2.0.0 and < 3.0.0", "plug_cowboy", Some(">= 2.0.0 and < 3.0.0"));
        check_spec("jason\t1.4.1", "jason", Some("== 1.4.1"));
        check_spec("Elixir_Pkg2 ~>1.0", "Elixir_Pkg2", Some("~> 1.0"));
        check_spec("a", "a", None);
    }

    #[test]
    fn package_spec_errors_name_the_column() {
        check_spec_err("", "column 1: invalid package name \"\": name is empty");
        check_spec_err("   ", "column 4: invalid package name \"\": name is empty");
        check_spec_err(
            "1ecto ~> 3.0",
            "column 1: invalid package name \"1ecto\": name must start with an ASCII letter",
        );
        check_spec_err("_ecto", "column 1: invalid package name \"_ecto\": name must start with an ASCII letter");
        check_spec_err(
            "  ec-to ~> 3.0",
            "column 5: invalid package name \"ec-to\": name may only contain ASCII letters, digits and `_`",
        );
        check_spec_err(
            "ecto~>3.0",
            "column 5: invalid package name \"ecto~>3.0\": name may only contain ASCII letters, digits and `_`",
        );
        check_spec_err(
            "../etc ~> 1.0",
            "column 1: invalid package name \"../etc\": name must start with an ASCII letter",
        );
        check_spec_err("ecto ~>", "column 8: expected a version, found end of input");
        check_spec_err("ecto >= 3.0", "column 9: version \"3.0\" lacks a patch number, which only `~>` may omit");
    }

    #[test]
    fn package_spec_matches() {
        let spec = PackageSpec::parse("ecto ~> 3.10").unwrap();
        assert!(spec.matches(&v("3.10.3"), false));
        assert!(spec.matches(&v("3.12.0"), false));
        assert!(!spec.matches(&v("4.0.0"), false));
        assert!(!spec.matches(&v("3.11.0-rc.0"), false));
        let any = PackageSpec::parse("phoenix").unwrap();
        assert!(any.matches(&v("1.7.14"), false));
        assert!(any.matches(&v("0.0.1"), false));
        assert!(!any.matches(&v("1.8.0-rc.0"), false));
        assert!(any.matches(&v("1.8.0-rc.0"), true));
    }

    #[test]
    fn package_spec_display_and_from_str() {
        let spec: PackageSpec = "telemetry  ~>1.0".parse().unwrap();
        assert_eq!(spec.to_string(), "telemetry ~> 1.0");
        let any: PackageSpec = "telemetry".parse().unwrap();
        assert_eq!(any.to_string(), "telemetry");
    }

    #[test]
    fn package_name_validation() {
        assert!(is_valid_package_name("phoenix_live_view"));
        assert!(is_valid_package_name("X"));
        assert!(is_valid_package_name("a1_"));
        assert!(!is_valid_package_name(""));
        assert!(!is_valid_package_name("9lives"));
        assert!(!is_valid_package_name("pl ug"));
        assert!(!is_valid_package_name("plüg"));
        assert!(!is_valid_package_name("plug/"));
    }
}
