//! The Grafana board and hexmirror's `/metrics` never drift apart: every metric a dashboard
//! query names exists in the live exposition, with every label the query filters or groups on.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;

const DASHBOARD: &str = include_str!("../grafana/hexmirror.json");

/// Every `expr` string anywhere in the dashboard JSON.
fn exprs(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                    _ => exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
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

/// Label names used in `{label=...}` selectors and `by (...)` / `without (...)` clauses.
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
    for keyword in ["by (", "by(", "without (", "without("] {
        let mut rest = expr;
        while let Some(at) = rest.find(keyword) {
            let after = &rest[at + keyword.len()..];
            let close = after.find(')').unwrap_or(after.len());
            for name in after[..close].split(',') {
                let name = name.trim();
                if !name.is_empty() {
                    labels.insert(name.to_string());
                }
            }
            rest = &after[close..];
        }
    }
    labels
}

#[tokio::test]
async fn every_metric_and_label_the_dashboard_queries_exists() {
    let dashboard: serde_json::Value = serde_json::from_str(DASHBOARD).expect("the dashboard is valid JSON");
    let mut queries = Vec::new();
    exprs(&dashboard, &mut queries);
    assert!(queries.len() >= 10, "the dashboard has {} queries", queries.len());

    let upstream = TestUpstream::start(demo_files("hexpm", "")).await;
    let mirror = TestMirror::builder().upstream(&upstream.url()).start().await;
    mirror.get("/packages/hexdemo_mid").await;
    let text = mirror.metrics().await;
    // Each exported series name with the labels it carries.
    let mut exported: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = exported.entry(line[..name_end].to_string()).or_default();
        if let Some(open) = line.find('{') {
            let close = line.find('}').unwrap();
            for pair in line[open + 1..close].split(',') {
                if let Some((k, _)) = pair.split_once('=') {
                    labels.insert(k.to_string());
                }
            }
        }
    }
    // Labels Prometheus adds at scrape time, and dashboard variables.
    let scrape_labels: BTreeSet<&str> = ["job", "instance", "le"].into();
    for query in &queries {
        for name in metric_names(query) {
            let labels = exported.get(&name).unwrap_or_else(|| panic!("{name} (in `{query}`) is not exported"));
            for label in label_names(query) {
                if !scrape_labels.contains(label.as_str()) && !label.starts_with("__") {
                    assert!(labels.contains(&label), "{name} has no label {label:?} (in `{query}`)");
                }
            }
        }
    }
}

#[test]
fn the_query_parser_finds_names_and_labels() {
    let expr = r#"sum by (repo, cache) (rate(hexmirror_requests_total{job=~"$job", cache!="none"}[5m]))"#;
    assert_eq!(metric_names(expr), ["hexmirror_requests_total".to_string()].into());
    let labels = label_names(expr);
    for l in ["repo", "cache", "job"] {
        assert!(labels.contains(l), "{l} in {labels:?}");
    }
}
