//! The Grafana board, the alert rules and hexmirror's `/metrics` never drift apart. A mirror is
//! started and scraped, and the families it exports are read from the `# TYPE` lines of that
//! scrape (a family is there however few of its label sets have occurred): every family is on
//! some panel of the board, or on [`NOT_ON_THE_BOARD`] with the reason; every metric a board
//! query or an alert rule names exists, with every label it filters or groups on; and the
//! Repository variable never selects the requests that name no repository (`repo="none"`).
//!
//! The alert rules are read from `deploy/prometheus/hexmirror-alerts.yaml`; `deploy/check.sh`
//! checks that the PrometheusRule is generated from that file, and runs `promtool` on both.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;

const DASHBOARD: &str = include_str!("../grafana/hexmirror.json");
const ALERTS: &str = include_str!("../deploy/prometheus/hexmirror-alerts.yaml");

/// Families deliberately not shown on the board, each with the reason, e.g.
/// `("hexmirror_example_total", "only useful while debugging X")`. Every family hexmirror exports
/// has a panel today. An entry must name a family that is exported and on no panel.
const NOT_ON_THE_BOARD: &[(&str, &str)] = &[];

/// Labels Prometheus adds at scrape time.
const SCRAPE_LABELS: &[&str] = &["job", "instance"];

/// The repositories the scraped mirror is configured with.
const REPOS: &[&str] = &["corp", "hexpm"];

/// One sample line of the exposition.
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
}

/// One scrape of `/metrics`.
struct Exposition {
    /// Family name → type (`counter`, `gauge`, `histogram`, `summary`, `untyped`), from `# TYPE`.
    families: BTreeMap<String, String>,
    samples: Vec<Sample>,
}

impl Exposition {
    fn parse(text: &str) -> Exposition {
        let mut families = BTreeMap::new();
        let mut samples = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap_or_else(|| panic!("bad TYPE line {line:?}"));
                families.insert(name.to_string(), kind.trim().to_string());
            } else if !line.starts_with('#') && !line.trim().is_empty() {
                samples.push(parse_sample(line));
            }
        }
        Exposition { families, samples }
    }

    /// The family a series name belongs to: a histogram's series are its `_bucket`, `_sum` and
    /// `_count`, a summary's its own name (the quantiles), `_sum` and `_count`.
    fn family_of(&self, series: &str) -> Option<&str> {
        self.families.iter().find_map(|(family, kind)| {
            let suffixes: &[&str] = match kind.as_str() {
                "histogram" => &["_bucket", "_sum", "_count"],
                "summary" => &["", "_sum", "_count"],
                _ => &[""],
            };
            suffixes.iter().any(|s| series.strip_prefix(family.as_str()) == Some(s)).then_some(family.as_str())
        })
    }

    /// The label names a family's samples carry (with `le` for a histogram's buckets).
    fn labels_of(&self, family: &str) -> BTreeSet<String> {
        self.samples
            .iter()
            .filter(|s| self.family_of(&s.name) == Some(family))
            .flat_map(|s| s.labels.keys().cloned())
            .collect()
    }
}

/// `name{label="value",...} value` (label values may hold commas, braces and escaped quotes).
fn parse_sample(line: &str) -> Sample {
    let name_end = line.find(['{', ' ']).unwrap_or(line.len());
    let mut labels = BTreeMap::new();
    if line[name_end..].starts_with('{') {
        let mut chars = line[name_end + 1..].chars();
        loop {
            let key: String = chars.by_ref().take_while(|c| *c != '=').collect::<String>().trim().to_string();
            if key.is_empty() || key.starts_with('}') {
                break;
            }
            assert_eq!(chars.next(), Some('"'), "{line}");
            let mut value = String::new();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.push(chars.next().unwrap()),
                    '"' => break,
                    c => value.push(c),
                }
            }
            labels.insert(key, value);
            match chars.next() {
                Some(',') => continue,
                Some('}') => break,
                other => panic!("{line}: {other:?} after a label"),
            }
        }
    }
    Sample { name: line[..name_end].to_string(), labels }
}

/// Starts a mirror with two repositories, sends it a few requests (so that the latency
/// histograms have their label sets) and scrapes it.
async fn scrape() -> Exposition {
    let upstream = TestUpstream::start(demo_files("hexpm", "")).await;
    let mirror =
        TestMirror::builder().upstream(&upstream.url()).repo("corp", RepoSpec::demo(&upstream.url())).start().await;
    for path in ["/packages/hexdemo_mid", "/packages/hexdemo_mid", "/tarballs/hexdemo_mid-0.2.0.tar", "/healthz"] {
        mirror.get(path).await;
    }
    let text = mirror.metrics().await;
    let exposition = Exposition::parse(&text);
    assert!(exposition.families.len() >= 20, "{} families in\n{text}", exposition.families.len());
    exposition
}

/// The board's PromQL: every panel target's `expr` (panels nested in rows included), then the
/// query of every query variable, each with where it is.
fn board_queries(board: &serde_json::Value) -> Vec<(String, String)> {
    fn walk(panels: &serde_json::Value, out: &mut Vec<(String, String)>) {
        for panel in panels.as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap_or("?");
            for target in panel["targets"].as_array().into_iter().flatten() {
                let expr = target["expr"].as_str().unwrap_or_else(|| panic!("panel {title:?}: a target without expr"));
                out.push((format!("panel {title:?}"), expr.to_string()));
            }
            walk(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&board["panels"], &mut out);
    for variable in board["templating"]["list"].as_array().expect("templating.list") {
        if variable["type"] == "query" {
            let query = variable["query"].as_str().or_else(|| variable["query"]["query"].as_str());
            out.push((format!("variable {}", variable["name"]), query.expect("a query variable's query").to_string()));
        }
    }
    out
}

fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(at) = expr[i..].find("hexmirror_") {
        let start = i + at;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        names.insert(expr[start..end].to_string());
        i = end;
    }
    names
}

/// Label names used in `{label=...}` selectors, in `by`, `without`, `on`, `ignoring`,
/// `group_left` and `group_right` clauses, and as the label of `label_values(..., label)`.
fn label_names(expr: &str) -> BTreeSet<String> {
    let mut labels = BTreeSet::new();
    let mut rest = expr;
    while let Some(open) = rest.find('{') {
        let close = rest[open..].find('}').map(|c| open + c).unwrap_or(rest.len());
        for matcher in rest[open + 1..close].split(',') {
            let name: String = matcher.trim().chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            if !name.is_empty() {
                labels.insert(name);
            }
        }
        rest = &rest[close.min(rest.len())..];
        if rest.is_empty() {
            break;
        }
        rest = &rest[1..];
    }
    for keyword in ["by", "without", "on", "ignoring", "group_left", "group_right"] {
        let mut rest = expr;
        while let Some(at) = rest.find(keyword) {
            let before = rest[..at].chars().next_back();
            let after = rest[at + keyword.len()..].trim_start();
            rest = &rest[at + keyword.len()..];
            // A whole word followed by a parenthesised list.
            if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') || !after.starts_with('(') {
                continue;
            }
            let close = after.find(')').unwrap_or(after.len());
            labels.extend(after[1..close].split(',').map(str::trim).filter(|n| !n.is_empty()).map(String::from));
        }
    }
    if let Some(args) = expr.trim().strip_prefix("label_values(").and_then(|a| a.strip_suffix(')')) {
        if let Some((_, label)) = args.rsplit_once(',') {
            labels.insert(label.trim().to_string());
        }
    }
    labels
}

/// Every metric `expr` names is a series of an exported family, with every label `expr` uses
/// (besides the scrape's own). Returns the families it names.
fn check_query(live: &Exposition, place: &str, expr: &str) -> BTreeSet<String> {
    let mut families = BTreeSet::new();
    for name in metric_names(expr) {
        let family = live.family_of(&name).unwrap_or_else(|| match live.families.get(&name) {
            Some(kind) => panic!("{place}: {name} (in `{expr}`) is a {kind}: query its series (_bucket, _sum, _count)"),
            None => panic!("{place}: {name} (in `{expr}`) is not exported; /metrics has {:?}", live.families.keys()),
        });
        let labels = live.labels_of(family);
        for label in label_names(expr) {
            if !SCRAPE_LABELS.contains(&label.as_str()) && !label.starts_with("__") {
                assert!(
                    labels.contains(&label),
                    "{place}: {name} has no label {label:?} (in `{expr}`); it has {labels:?}"
                );
            }
        }
        families.insert(family.to_string());
    }
    families
}

#[tokio::test]
async fn every_metric_and_label_the_board_queries_exists() {
    let board: serde_json::Value = serde_json::from_str(DASHBOARD).expect("the dashboard is valid JSON");
    let queries = board_queries(&board);
    assert!(queries.len() >= 10, "the dashboard has {} queries", queries.len());
    let live = scrape().await;
    for (place, expr) in &queries {
        assert!(!metric_names(expr).is_empty(), "{place}: `{expr}` names no hexmirror metric");
        check_query(&live, place, expr);
    }
}

#[tokio::test]
async fn every_exported_family_is_on_the_board() {
    let board: serde_json::Value = serde_json::from_str(DASHBOARD).expect("the dashboard is valid JSON");
    let live = scrape().await;
    let shown: BTreeSet<String> =
        board_queries(&board).iter().flat_map(|(place, expr)| check_query(&live, place, expr)).collect();
    let allowed: BTreeMap<&str, &str> = NOT_ON_THE_BOARD.iter().copied().collect();
    for (family, why) in &allowed {
        assert!(live.families.contains_key(*family), "NOT_ON_THE_BOARD names {family}, which is not exported");
        assert!(!shown.contains(*family), "NOT_ON_THE_BOARD names {family} ({why}), which is on the board");
    }
    let missing: Vec<&String> =
        live.families.keys().filter(|f| !shown.contains(*f) && !allowed.contains_key(f.as_str())).collect();
    assert!(
        missing.is_empty(),
        "exported but on no panel of grafana/hexmirror.json: {missing:?}; add a panel, or add the family to \
         NOT_ON_THE_BOARD in tests/dashboard.rs with the reason"
    );
}

/// Each alerting rule of a Prometheus rules file: its `alert` name and its `expr`, a plain,
/// quoted or block (`|`, `>`) scalar. Enough YAML for a rules file; promtool reads it in full in
/// deploy/check.sh.
fn alert_exprs(yaml: &str) -> Vec<(String, String)> {
    const RULE_KEYS: &[&str] = &["alert:", "record:", "expr:", "for:", "labels:", "annotations:"];
    // (alert, expr) of each rule, in order; a rule starts at a list item with a rule's key.
    let mut rules: Vec<(Option<String>, Option<String>)> = Vec::new();
    let lines: Vec<&str> = yaml.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        let item = line.trim_start().strip_prefix("- ");
        if item.is_some_and(|item| RULE_KEYS.iter().any(|k| item.starts_with(k))) {
            rules.push((None, None));
        }
        let entry = item.unwrap_or(line.trim_start());
        let Some(rule) = rules.last_mut() else { continue };
        if let Some(name) = entry.strip_prefix("alert:") {
            rule.0 = Some(name.trim().to_string());
        } else if let Some(value) = entry.strip_prefix("expr:") {
            let value = value.trim();
            let indent = line.len() - line.trim_start().len();
            rule.1 = Some(if value.starts_with(['|', '>']) {
                let block = lines[i + 1..]
                    .iter()
                    .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent);
                block.map(|l| l.trim()).collect::<Vec<_>>().join(if value.starts_with('|') { "\n" } else { " " })
            } else if value.len() >= 2 && (value.starts_with('"') || value.starts_with('\'')) {
                value[1..value.len() - 1].to_string()
            } else {
                value.to_string()
            });
        }
    }
    rules
        .into_iter()
        .filter_map(|(alert, expr)| {
            let alert = alert?;
            let expr = expr.unwrap_or_else(|| panic!("alert {alert} has no expr"));
            Some((alert, expr))
        })
        .collect()
}

#[tokio::test]
async fn every_metric_and_label_the_alert_rules_use_exists() {
    let alerts = alert_exprs(ALERTS);
    assert!(alerts.len() >= 6, "{} alerts in hexmirror-alerts.yaml", alerts.len());
    let live = scrape().await;
    for (name, expr) in &alerts {
        let place = format!("alert {name}");
        assert!(!check_query(&live, &place, expr).is_empty(), "{place}: `{expr}` names no hexmirror metric");
    }
}

/// Grafana's `label_values(metric{matchers}, label)` over one scrape, with every `$variable`
/// matching anything (their "All").
fn label_values(live: &Exposition, query: &str) -> BTreeSet<String> {
    let args = query.trim().strip_prefix("label_values(").and_then(|a| a.strip_suffix(')')).expect("label_values(...)");
    let (selector, label) = args.rsplit_once(',').expect("label_values(selector, label)");
    let (metric, matchers) = match selector.split_once('{') {
        Some((metric, matchers)) => (metric.trim(), matchers.trim_end().strip_suffix('}').expect("a closed selector")),
        None => (selector.trim(), ""),
    };
    let matchers: Vec<(String, &str, String)> = matchers
        .split(',')
        .filter(|m| !m.trim().is_empty())
        .map(|m| {
            let at = m.find(['=', '!']).unwrap_or_else(|| panic!("matcher {m:?}"));
            let (name, rest) = m.split_at(at);
            let op = ["=~", "!~", "!=", "="].into_iter().find(|op| rest.starts_with(op)).unwrap();
            let value = rest[op.len()..].trim().trim_matches('"').to_string();
            (name.trim().to_string(), op, value)
        })
        .collect();
    live.samples
        .iter()
        .filter(|s| s.name == metric)
        .filter(|s| {
            matchers.iter().all(|(name, op, value)| {
                let actual = s.labels.get(name).map(String::as_str).unwrap_or("");
                match *op {
                    _ if value.starts_with('$') => true,
                    "=" => actual == value,
                    "!=" => actual != value,
                    _ => panic!("{op}{value:?}: this test evaluates no regular expression but a variable's"),
                }
            })
        })
        .filter_map(|s| s.labels.get(label.trim()).cloned())
        .collect()
}

#[tokio::test]
async fn the_repository_variable_never_selects_requests_without_a_repository() {
    let board: serde_json::Value = serde_json::from_str(DASHBOARD).expect("the dashboard is valid JSON");
    let variables = board["templating"]["list"].as_array().expect("templating.list");
    let repo = variables.iter().find(|v| v["name"] == "repo").expect("a repo variable");
    let query = repo["query"].as_str().or_else(|| repo["query"]["query"].as_str()).expect("the repo variable's query");
    let live = scrape().await;
    // Probes and scrapes are counted with repo="none"; they must not swell "All".
    let all: BTreeSet<String> = label_values(&live, &query.replace(r#"repo!="none""#, ""));
    assert!(all.contains("none"), "the scrape has requests without a repository: {all:?}");
    let listed = label_values(&live, query);
    assert_eq!(listed, REPOS.iter().map(|r| r.to_string()).collect(), "the Repository variable lists {listed:?}");
    // "All" must be the listed values: a custom allValue (such as `.*`) is sent instead of them and
    // would match repo="none" again.
    assert_eq!(repo["includeAll"], true, "the Repository variable has an All option");
    assert!(repo["allValue"].is_null() || repo["allValue"] == "", "allValue {} bypasses the list", repo["allValue"]);
}

#[test]
fn the_parsers_find_names_labels_and_samples() {
    let expr = r#"sum by (repo, cache) (rate(hexmirror_requests_total{job=~"$job", cache!="none"}[5m]))"#;
    assert_eq!(metric_names(expr), ["hexmirror_requests_total".to_string()].into());
    let labels = label_names(expr);
    for l in ["repo", "cache", "job"] {
        assert!(labels.contains(l), "{l} in {labels:?}");
    }
    let expr = "max by(instance) (hexmirror_a) / on (job, instance) group_left(version) hexmirror_b";
    assert_eq!(label_names(expr), ["instance", "job", "version"].map(String::from).into());
    assert_eq!(label_names("label_values(hexmirror_a{x=\"1\"}, repo)"), ["repo", "x"].map(String::from).into());
    let sample = parse_sample(r#"hexmirror_up{repo="a,b}",upstream="h:1",q="x\"y"} 1"#);
    assert_eq!(sample.name, "hexmirror_up");
    assert_eq!(sample.labels["repo"], "a,b}");
    assert_eq!(sample.labels["q"], "x\"y");
    let rules = "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: hexmirror_a == 0\n        for: 5m\n\
                 \x20     - alert: B\n        expr: |\n          sum(hexmirror_b)\n\n          > 1\n        labels: {}\n\
                 \x20     - expr: 'hexmirror_c{x=\"1\"}'\n        alert: C\n";
    let found = alert_exprs(rules);
    assert_eq!(found[0], ("A".into(), "hexmirror_a == 0".into()));
    assert_eq!(found[1], ("B".into(), "sum(hexmirror_b)\n\n> 1".into()));
    assert_eq!(found[2], ("C".into(), r#"hexmirror_c{x="1"}"#.into()));
    assert_eq!(found.len(), 3);
    let live = Exposition::parse("# TYPE hexmirror_d histogram\nhexmirror_d_bucket{le=\"1\"} 0\nhexmirror_d_sum 0\n");
    assert_eq!(live.family_of("hexmirror_d_bucket"), Some("hexmirror_d"));
    assert_eq!(live.family_of("hexmirror_d"), None);
    assert_eq!(live.labels_of("hexmirror_d"), ["le".to_string()].into());
}
