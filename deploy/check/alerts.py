#!/usr/bin/env python3
"""alerts.py [--write] RULES PROMETHEUSRULE [GROUPS_OUT]: the alert rules and their Prometheus
Operator copy, for deploy/check.sh. Needs PyYAML.

RULES (deploy/prometheus/hexmirror-alerts.yaml) is the source. PROMETHEUSRULE
(deploy/kubernetes/standalone/optional/prometheusrule.yaml) is generated from it: a header, then
RULES from its `groups:` line on, indented under `spec:`, comments included. With --write, writes
PROMETHEUSRULE; without, fails when PROMETHEUSRULE is not exactly what --write would write, or
when its spec.groups differ from RULES' groups once parsed.

Also checks RULES: alerting rules only, unique names, a `severity` of warning or critical, a
summary and a description; and that HexmirrorDiskBudgetExceeded's threshold is the
disk_cache_bytes of the standalone ConfigMap beside PROMETHEUSRULE. GROUPS_OUT receives
PROMETHEUSRULE's spec (its groups) as a rules file for `promtool check rules`.

Prints the problems, then "N alerts"; exit status 1 on a problem."""
import os, re, sys
import yaml

HEADER = """\
# hexmirror's alerting rules for the Prometheus Operator (monitoring.coreos.com CRDs), the same
# as deploy/prometheus/hexmirror-alerts.yaml. GENERATED from that file: edit it, then run
#   python3 deploy/check/alerts.py --write deploy/prometheus/hexmirror-alerts.yaml \\
#     deploy/kubernetes/standalone/optional/prometheusrule.yaml
# (deploy/check.sh fails while this file differs). Not part of the plain
# `kubectl apply -f deploy/kubernetes/standalone/` set, as the CRD may be missing. Prometheus
# picks it up when its ruleSelector and ruleNamespaceSelector match: kube-prometheus-stack, for
# one, selects only rules labelled `release: <its Helm release>` unless told otherwise.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: hexmirror
  namespace: hexmirror
  labels:
    app.kubernetes.io/name: hexmirror
    app.kubernetes.io/component: mirror
spec:
"""
SIZE_UNITS = {"": 1, "B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "TiB": 1024**4,
              "KB": 1000, "MB": 1000**2, "GB": 1000**3, "TB": 1000**4}

args = [a for a in sys.argv[1:] if a != "--write"]
write = "--write" in sys.argv[1:]
rules_path, operator_path = args[:2]
groups_out = args[2] if len(args) > 2 else None
errors = []


def generate(text):
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("groups:")), None)
    if start is None:
        sys.exit(f"{rules_path}: no top-level `groups:`")
    return HEADER + "".join(f"  {line}\n" if line.strip() else "\n" for line in lines[start:])


with open(rules_path) as f:
    rules_text = f.read()
generated = generate(rules_text)
if write:
    with open(operator_path, "w") as f:
        f.write(generated)

rules = yaml.safe_load(rules_text)
names = set()
for group in rules.get("groups") or []:
    for rule in group.get("rules") or []:
        name = rule.get("alert")
        if not name:
            errors.append(f"{rules_path}: group {group.get('name')}: a rule without `alert` ({rule.get('record') or rule.get('expr')})")
            continue
        if name in names:
            errors.append(f"{rules_path}: {name} twice")
        names.add(name)
        if rule.get("labels", {}).get("severity") not in ("warning", "critical"):
            errors.append(f"{rules_path}: {name}: severity must be warning or critical")
        for key in ("summary", "description"):
            if not rule.get("annotations", {}).get(key):
                errors.append(f"{rules_path}: {name}: no {key} annotation")
if not names:
    errors.append(f"{rules_path}: no alerts")

with open(operator_path) as f:
    operator_text = f.read()
if operator_text != generated:
    errors.append(f"{operator_path} is not generated from {rules_path} as it stands: run "
                  f"python3 deploy/check/alerts.py --write {rules_path} {operator_path}")
operator = yaml.safe_load(operator_text)
if (operator.get("apiVersion"), operator.get("kind")) != ("monitoring.coreos.com/v1", "PrometheusRule"):
    errors.append(f"{operator_path}: not a monitoring.coreos.com/v1 PrometheusRule")
if operator.get("spec", {}).get("groups") != rules.get("groups"):
    errors.append(f"{operator_path}: spec.groups differ from the groups of {rules_path}")
if groups_out:
    with open(groups_out, "w") as f:
        yaml.safe_dump({"groups": operator.get("spec", {}).get("groups")}, f, sort_keys=False)

# The disk budget alert compares with a number written into the rule: the standalone
# ConfigMap's disk_cache_bytes, which the PrometheusRule is shipped beside.
configmap = os.path.join(os.path.dirname(os.path.dirname(operator_path)), "configmap.yaml")
budget_rule = next((r for g in rules.get("groups") or [] for r in g.get("rules") or []
                    if r.get("alert") == "HexmirrorDiskBudgetExceeded"), None)
if budget_rule and os.path.isfile(configmap):
    m = re.search(r'tier="disk"\}\s*>\s*([0-9*+ ()]+)$', budget_rule["expr"].strip())
    with open(configmap) as f:
        c = re.search(r'^\s*disk_cache_bytes\s*=\s*"?\s*(\d+)\s*([A-Za-z]*)"?', f.read(), re.M)
    if not m:
        errors.append(f"{rules_path}: HexmirrorDiskBudgetExceeded: no `hexmirror_cache_bytes{{tier=\"disk\"}} > N` in its expr")
    elif not c or c.group(2) not in SIZE_UNITS:
        errors.append(f"{configmap}: no disk_cache_bytes to compare HexmirrorDiskBudgetExceeded with")
    else:
        threshold = eval(m.group(1), {"__builtins__": {}})  # digits, *, +, parentheses only
        budget = int(c.group(1)) * SIZE_UNITS[c.group(2)]
        if threshold != budget:
            errors.append(f"{rules_path}: HexmirrorDiskBudgetExceeded fires above {threshold} bytes, "
                          f"but {configmap} has disk_cache_bytes = {budget}")

for e in errors:
    print(e)
print(f"{len(names)} alerts")
sys.exit(1 if errors else 0)
