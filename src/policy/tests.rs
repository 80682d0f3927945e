//! Unit tests of the policy engine: every rule kind, `exempt` (never lifting `deny`), repository
//! tables extending the global one, the clock passed in for the cooldown, `explain`, and bad
//! rules reported with where they are.

use super::*;

const DAY: u64 = 86_400;
const NOW: u64 = 1_700_000_000;

fn raw(text: &str) -> RawPolicy {
    toml::from_str(text).unwrap()
}

fn policy(global: &str, repos: &[(&str, &str)]) -> Policy {
    let mut map: BTreeMap<String, Option<RawPolicy>> =
        BTreeMap::from([("hexpm".to_string(), None), ("corp".to_string(), None)]);
    for (name, text) in repos {
        map.insert(name.to_string(), Some(raw(text)));
    }
    Policy::from_raw(&raw(global), &map).unwrap()
}

fn subject<'a>(name: &'a str, version: &'a str) -> Subject<'a> {
    Subject {
        namespace: "hexpm",
        name,
        version,
        retirement: None,
        licenses: Licenses::Unread,
        first_seen: Some(NOW - 365 * DAY),
    }
}

fn rule_of(policy: &Policy, subject: &Subject<'_>) -> Option<(RuleKind, String)> {
    policy.evaluate(subject, NOW).map(|d| (d.rule, d.reason))
}

#[test]
fn no_rules_block_nothing() {
    let p = policy("", &[]);
    assert!(p.is_empty());
    assert_eq!(rule_of(&p, &subject("plug", "1.0.0")), None);
}

#[test]
fn deny_blocks_what_matches_and_nothing_lifts_it() {
    let p = policy(
        r#"deny = ["plug < 1.5.0", "evil_*"]
exempt = ["plug", "evil_thing"]
allow = ["*"]"#,
        &[],
    );
    let (rule, reason) = rule_of(&p, &subject("plug", "1.4.0")).unwrap();
    assert_eq!((rule, reason.as_str()), (RuleKind::Deny, "denied: matches deny rule \"plug < 1.5.0\""));
    assert_eq!(rule_of(&p, &subject("plug", "1.5.0")), None);
    assert_eq!(rule_of(&p, &subject("evil_thing", "0.1.0")).unwrap().0, RuleKind::Deny, "exempt never lifts deny");
    // A version that is not a Hex version fails closed against a deny with a requirement.
    assert_eq!(rule_of(&p, &subject("plug", "not-a-version")).unwrap().0, RuleKind::Deny);
}

#[test]
fn allow_when_set_passes_only_what_matches() {
    let p = policy(r#"allow = ["plug ~> 1.0", "cowboy"]"#, &[]);
    assert_eq!(rule_of(&p, &subject("plug", "1.9.0")), None);
    assert_eq!(rule_of(&p, &subject("cowboy", "2.0.0")), None);
    let (rule, reason) = rule_of(&p, &subject("plug", "2.0.0")).unwrap();
    assert_eq!((rule, reason.as_str()), (RuleKind::Allow, "not allowed: matches no allow rule"));
    assert_eq!(rule_of(&p, &subject("other", "1.0.0")).unwrap().0, RuleKind::Allow);
    // Exempt does not lift allow either: it skips the softer rules only.
    let p = policy(
        r#"allow = ["plug"]
exempt = ["other"]"#,
        &[],
    );
    assert_eq!(rule_of(&p, &subject("other", "1.0.0")).unwrap().0, RuleKind::Allow);
}

#[test]
fn retirement_by_reason_with_the_publishers_message() {
    let p = policy(r#"block_retired = ["security", "invalid"]"#, &[]);
    let security = Retirement { reason: RetirementReason::Security, message: Some("use 1.1.0".into()) };
    let deprecated = Retirement { reason: RetirementReason::Deprecated, message: None };
    let retired = |r| Subject { retirement: Some(r), ..subject("plug", "1.0.0") };
    assert_eq!(
        rule_of(&p, &retired(&security)),
        Some((RuleKind::Retired, "retired (security): use 1.1.0".to_string()))
    );
    assert_eq!(rule_of(&p, &retired(&deprecated)), None, "deprecated is not blocked");
    let exempt = policy(
        r#"block_retired = ["security"]
exempt = ["plug == 1.0.0"]"#,
        &[],
    );
    let e = exempt.explain(&retired(&security), NOW);
    assert!(e.blocking.is_empty() && e.exempt.as_deref() == Some("plug == 1.0.0"), "{e:?}");
    let bad = Policy::from_raw(&raw(r#"block_retired = ["sekurity"]"#), &BTreeMap::new()).unwrap_err().to_string();
    assert!(bad.contains("policy.block_retired: \"sekurity\" is not a retirement reason"), "{bad}");
}

#[test]
fn licences_allowed_normalised_with_alternatives_and_unknown() {
    let p = policy(r#"licenses_allowed = ["MIT", "Apache-2.0"]"#, &[]);
    let with = |l: &'static [String]| Subject { licenses: Licenses::Declared(l), ..subject("plug", "1.0.0") };
    static APACHE: std::sync::LazyLock<Vec<String>> = std::sync::LazyLock::new(|| vec!["Apache 2.0".into()]);
    static DUAL: std::sync::LazyLock<Vec<String>> = std::sync::LazyLock::new(|| vec!["GPL-3.0 OR MIT".into()]);
    static GPL: std::sync::LazyLock<Vec<String>> =
        std::sync::LazyLock::new(|| vec!["GPL-3.0".into(), "AGPL-3.0".into()]);
    assert_eq!(rule_of(&p, &with(&APACHE)), None);
    assert_eq!(rule_of(&p, &with(&DUAL)), None);
    assert_eq!(
        rule_of(&p, &with(&GPL)),
        Some((RuleKind::License, "licence not allowed: GPL-3.0, AGPL-3.0".to_string()))
    );
    assert_eq!(
        rule_of(&p, &with(&[])),
        Some((RuleKind::License, "licence unknown: the release declares none".to_string()))
    );
    assert_eq!(rule_of(&p, &subject("plug", "1.0.0")), None, "not read yet: not decided");
    let lenient = policy(
        r#"licenses_allowed = ["MIT"]
allow_unknown_licenses = true"#,
        &[],
    );
    assert_eq!(rule_of(&lenient, &with(&[])), None);
    assert_eq!(rule_of(&lenient, &with(&GPL)).unwrap().0, RuleKind::License, "a declared licence is still checked");
    assert!(p.reads_licenses("hexpm") && !policy("", &[]).reads_licenses("hexpm"));
}

#[test]
fn cooldown_counts_from_first_seen_with_the_clock_given() {
    let p = policy(r#"cooldown = "7d""#, &[]);
    let seen = |at| Subject { first_seen: at, ..subject("plug", "1.0.0") };
    let held = p.evaluate(&seen(Some(NOW - 6 * DAY)), NOW).unwrap();
    assert_eq!(held.rule, RuleKind::Cooldown);
    assert!(held.reason.starts_with("cooldown: first seen 2023-11-08T"), "{}", held.reason);
    assert!(held.reason.ends_with("(7days cooldown)"), "{}", held.reason);
    assert_eq!(p.evaluate(&seen(Some(NOW - 6 * DAY)), NOW + DAY), None, "a day later it has passed");
    assert_eq!(p.evaluate(&seen(Some(NOW - 7 * DAY)), NOW), None);
    assert_eq!(p.evaluate(&seen(None), NOW).unwrap().rule, RuleKind::Cooldown, "never seen: counts from now");
    let p = policy("cooldown = 60", &[]);
    assert!(p.evaluate(&seen(Some(NOW - 59)), NOW).is_some() && p.evaluate(&seen(Some(NOW - 60)), NOW).is_none());
}

#[test]
fn repository_tables_extend_the_global_one() {
    let p = policy(
        r#"deny = ["a"]
allow = ["a", "b", "c"]
cooldown = "1d"
enforce = false"#,
        &[(
            "corp",
            r#"deny = ["b"]
allow = ["d"]
cooldown = 0
enforce = true"#,
        )],
    );
    let corp = |name| Subject { namespace: "corp", first_seen: Some(NOW), ..subject(name, "1.0.0") };
    assert_eq!(rule_of(&p, &corp("a")).unwrap().0, RuleKind::Deny, "global deny");
    assert_eq!(rule_of(&p, &corp("b")).unwrap().0, RuleKind::Deny, "and the repository's");
    assert_eq!(rule_of(&p, &corp("d")), None, "allow lists add up; cooldown 0 overrides 1d");
    assert!(p.evaluate(&corp("b"), NOW).unwrap().enforced);
    let hexpm = Subject { first_seen: Some(NOW), ..subject("c", "1.0.0") };
    let d = p.evaluate(&hexpm, NOW).unwrap();
    assert_eq!((d.rule, d.enforced), (RuleKind::Cooldown, false), "enforce = false reports");
    assert_eq!(rule_of(&p, &subject("b", "1.0.0")), None, "corp's deny is corp's only");
    let org = Subject { namespace: "hexpm~acme", ..subject("a", "1.0.0") };
    assert_eq!(rule_of(&p, &org).unwrap().0, RuleKind::Deny, "an organization follows hexpm's rules");
}

#[test]
fn advisories_apply_to_their_repository_only() {
    let dir = tempfile::tempdir().unwrap();
    let file = |dir: &std::path::Path, name: &str, id: &str| {
        let text = format!(
            r#"{{"id":"{id}","summary":"Remote code execution","affected":[{{"package":{{"ecosystem":"Hex","name":"{name}"}},
            "ranges":[{{"type":"SEMVER","events":[{{"introduced":"1.0.0"}},{{"fixed":"1.1.0"}}]}}]}}]}}"#
        );
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(format!("{id}.json")), text).unwrap();
    };
    let global = dir.path().join("global");
    let corp = dir.path().join("corp");
    file(&global, "plug", "GHSA-aaaa-0001");
    file(&corp, "cowboy", "GHSA-bbbb-0002");
    let text = format!("advisories = {:?}", global.display().to_string());
    let p = policy(&text, &[("corp", &format!("advisories = {:?}", corp.display().to_string()))]);
    assert_eq!(p.advisory_count, 2);
    assert_eq!(
        rule_of(&p, &subject("plug", "1.0.5")),
        Some((RuleKind::Advisory, "advisory GHSA-aaaa-0001: Remote code execution".to_string()))
    );
    assert_eq!(rule_of(&p, &subject("plug", "1.1.0")), None, "fixed");
    let in_corp = |name| Subject { namespace: "corp", ..subject(name, "1.0.5") };
    assert_eq!(rule_of(&p, &in_corp("plug")), None, "hex.pm's advisory does not block corp's plug");
    assert_eq!(rule_of(&p, &in_corp("cowboy")).unwrap().0, RuleKind::Advisory);
    assert_eq!(rule_of(&p, &subject("cowboy", "1.0.5")), None, "corp's advisory does not block hex.pm's cowboy");
    let org = Subject { namespace: "hexpm~acme", ..subject("plug", "1.0.5") };
    assert_eq!(rule_of(&p, &org), None, "an organization's plug is not hex.pm's");
    let exempt = policy(&format!("{text}\nexempt = [\"plug\"]"), &[]);
    assert_eq!(rule_of(&exempt, &subject("plug", "1.0.5")), None);
    // A bad file fails the load, naming it.
    std::fs::write(global.join("bad.json"), "{\"id\": 1}").unwrap();
    let e = Policy::from_raw(&raw(&text), &BTreeMap::from([("hexpm".to_string(), None)])).unwrap_err().to_string();
    assert!(e.contains("bad.json") && e.starts_with("advisories "), "{e}");
}

#[test]
fn explain_lists_every_rule_and_which_decides() {
    let p = policy(
        r#"deny = ["plug"]
block_retired = ["security"]
cooldown = "1d""#,
        &[],
    );
    let security = Retirement { reason: RetirementReason::Security, message: None };
    let s = Subject { retirement: Some(&security), first_seen: Some(NOW), ..subject("plug", "1.0.0") };
    let e = p.explain(&s, NOW);
    let rules: Vec<RuleKind> = e.blocking.iter().map(|d| d.rule).collect();
    assert_eq!(rules, [RuleKind::Deny, RuleKind::Retired, RuleKind::Cooldown]);
    assert_eq!(e.checks.len(), 7, "{:?}", e.checks);
    assert_eq!(e.checks[1], "allow: not set");
}

#[test]
fn bad_rules_are_all_reported_with_where_they_are() {
    let e = Policy::from_raw(
        &raw(r#"deny = ["pl ug <"]
cooldown = "soon"
licenses_allowed = [" "]"#),
        &BTreeMap::from([("corp".to_string(), Some(raw(r#"allow = ["x/y"]"#)))]),
    )
    .unwrap_err();
    let text = e.to_string();
    assert_eq!(e.0.len(), 4, "{text}");
    assert!(text.contains("policy.deny: \"pl ug <\": the requirement"), "{text}");
    assert!(text.contains("policy.cooldown: \"soon\""), "{text}");
    assert!(text.contains("policy.licenses_allowed: an empty licence id"), "{text}");
    assert!(text.contains("repos.corp.policy.allow: \"x/y\""), "{text}");
}
