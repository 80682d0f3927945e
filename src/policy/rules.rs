//! `NAME [REQUIREMENT]` rules, as `deny`, `allow` and `exempt` list them: a package name, where
//! `*` stands for any run of characters and `?` for one, and an optional Hex requirement
//! (`plug < 1.5.0`, `cowboy ~> 2.0 or == 1.2.3`, `acme_*`). Pure.

use std::fmt;

use semver::Version;

use crate::requirement::{Requirement, RequirementError};

/// The longest rule text accepted (a requirement is short; this bounds the glob's work).
const MAX_RULE: usize = 512;

/// One parsed rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// As written (trimmed), for reasons and reports.
    text: String,
    name: String,
    requirement: Option<Requirement>,
}

/// Why a rule cannot be read; each message quotes it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("an empty rule; write NAME or NAME REQUIREMENT, such as \"plug < 1.5.0\"")]
    Empty,
    #[error("{0:?}: longer than {MAX_RULE} characters")]
    TooLong(String),
    #[error("{rule:?}: {name:?} is not a package name (letters, digits, `_`, and the globs `*` and `?`)")]
    Name { rule: String, name: String },
    #[error("{rule:?}: the requirement: {source}")]
    Requirement { rule: String, source: RequirementError },
}

impl Rule {
    /// Parses `NAME` or `NAME REQUIREMENT`.
    pub fn parse(text: &str) -> Result<Rule, RuleError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(RuleError::Empty);
        }
        if text.len() > MAX_RULE {
            return Err(RuleError::TooLong(text.chars().take(40).collect::<String>() + "..."));
        }
        let (name, rest) = match text.find(char::is_whitespace) {
            Some(at) => (&text[..at], text[at..].trim()),
            None => (text, ""),
        };
        let valid = name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '*' | '?'));
        if !valid {
            return Err(RuleError::Name { rule: text.into(), name: name.into() });
        }
        let requirement = match rest {
            "" => None,
            rest => {
                Some(Requirement::parse(rest).map_err(|source| RuleError::Requirement { rule: text.into(), source })?)
            }
        };
        Ok(Rule { text: text.to_string(), name: name.to_string(), requirement })
    }

    /// The rule as written.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Whether the release `name` `version` matches. Pre-releases are matched like any
    /// version. `version` is `None` when the release's version is not a valid Hex version:
    /// then a rule with a requirement matches exactly when `unparsed` says so (a `deny`
    /// fails closed, an `allow` or `exempt` does not match).
    pub fn matches(&self, name: &str, version: Option<&Version>, unparsed: bool) -> bool {
        if !glob(self.name.as_bytes(), name.as_bytes()) {
            return false;
        }
        match (&self.requirement, version) {
            (None, _) => true,
            (Some(requirement), Some(version)) => requirement.matches(version, true),
            (Some(_), None) => unparsed,
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// `*` (any run, also empty) and `?` (one character) against ASCII names; linear in the
/// pattern times the name at worst (backtracking to the last `*` only).
pub fn glob(pattern: &[u8], name: &[u8]) -> bool {
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, n));
                p += 1;
            }
            Some(&c) if c == b'?' || c == name[n] => {
                p += 1;
                n += 1;
            }
            _ => match star {
                Some((sp, sn)) => {
                    p = sp + 1;
                    n = sn + 1;
                    star = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(text: &str) -> Version {
        crate::requirement::parse_version(text).unwrap()
    }

    #[test]
    fn names_with_globs_and_requirements() {
        let rule = Rule::parse("  plug < 1.5.0 ").unwrap();
        assert_eq!(rule.text(), "plug < 1.5.0");
        assert!(rule.matches("plug", Some(&v("1.4.9")), false));
        assert!(rule.matches("plug", Some(&v("1.5.0-rc.1")), false), "pre-releases match like any version");
        assert!(!rule.matches("plug", Some(&v("1.5.0")), false));
        assert!(!rule.matches("plug_cowboy", Some(&v("1.0.0")), false));
        let any = Rule::parse("acme_*").unwrap();
        assert!(any.matches("acme_", None, false) && any.matches("acme_web", Some(&v("9.9.9")), false));
        assert!(!any.matches("acme", None, false));
        let one = Rule::parse("h?x ~> 1.0").unwrap();
        assert!(one.matches("hex", Some(&v("1.2.0")), false) && !one.matches("heex", Some(&v("1.2.0")), false));
        assert!(one.matches("hex", None, true) && !one.matches("hex", None, false));
        assert!(Rule::parse("*").unwrap().matches("anything", None, false));
    }

    #[test]
    fn bad_rules_say_what_is_wrong() {
        assert_eq!(Rule::parse(" "), Err(RuleError::Empty));
        let e = Rule::parse("pl/ug").unwrap_err().to_string();
        assert!(e.contains("\"pl/ug\" is not a package name"), "{e}");
        let e = Rule::parse("plug <<< 1").unwrap_err().to_string();
        assert!(e.starts_with("\"plug <<< 1\": the requirement: column"), "{e}");
        assert!(matches!(Rule::parse(&"a".repeat(600)), Err(RuleError::TooLong(_))));
    }

    #[test]
    fn globs() {
        for (pattern, name, expected) in [
            ("*", "", true),
            ("a*b*c", "aXbYc", true),
            ("a*b*c", "aXbY", false),
            ("*_test", "my_test", true),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("**a", "a", true),
            ("abc", "abcd", false),
        ] {
            assert_eq!(glob(pattern.as_bytes(), name.as_bytes()), expected, "{pattern} {name}");
        }
        // No exponential backtracking.
        let long = "a".repeat(400);
        assert!(!glob("*a*a*a*a*a*a*a*a*b".as_bytes(), long.as_bytes()));
    }
}
