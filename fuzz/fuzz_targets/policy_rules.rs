//! Policy rules: `policy::Rule::parse` and `matches`, `policy::rules::glob`, and a whole
//! `[policy]` table through `Policy::from_raw` + `evaluate`, on arbitrary text: `RULE`, then
//! optionally a newline and `NAME VERSION`.
//!
//! Invariants: nothing panics; a rule without a requirement matches a name regardless of the
//! version; `*` matches every name; a deny rule that matches blocks, and `exempt` never lifts it.

#![no_main]

use std::collections::BTreeMap;

use hexmirror::policy::{rules::glob, Licenses, Policy, RawPolicy, Rule, RuleKind, Subject};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let (rule_text, release) = text.split_once('\n').unwrap_or((text, "plug 1.2.3"));
    let (name, version) = release.split_once(' ').unwrap_or((release, "1.0.0"));
    let _ = glob(rule_text.as_bytes(), name.as_bytes());
    assert!(glob(b"*", name.as_bytes()));
    let Ok(rule) = Rule::parse(rule_text) else { return };
    let parsed = hexmirror::requirement::parse_version(version).ok();
    let matched = rule.matches(name, parsed.as_ref(), true);
    if !rule.text().contains(char::is_whitespace) {
        assert_eq!(matched, rule.matches(name, None, false), "{rule_text:?}: a bare name ignores the version");
    }
    let raw = RawPolicy {
        deny: vec![rule_text.to_string()],
        exempt: vec![rule_text.to_string(), "*".into()],
        block_retired: vec!["security".into()],
        ..Default::default()
    };
    let Ok(policy) = Policy::from_raw(&raw, &BTreeMap::from([("hexpm".to_string(), None)])) else { return };
    let subject =
        Subject { namespace: "hexpm", name, version, retirement: None, licenses: Licenses::Unread, first_seen: None };
    let decision = policy.evaluate(&subject, 1_700_000_000);
    assert_eq!(decision.map(|d| d.rule), matched.then_some(RuleKind::Deny), "{rule_text:?} on {name} {version}");
});
