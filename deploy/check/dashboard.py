#!/usr/bin/env python3
"""dashboard.py DASHBOARD RULES_OUT: checks grafana/hexmirror.json for deploy/check.sh.

Valid JSON, schemaVersion 36..41, datasource/job/instance variables, unique panel ids, every
target on ${datasource} with an expression. Writes the panels' PromQL (Grafana's variables
replaced) to RULES_OUT as recording rules for `promtool check rules`. Prints the problems, then
"N expressions in M panels"; exit status 1 on a problem.

Which metrics and labels the board may use is checked against a live hexmirror's /metrics by
tests/dashboard.rs (every exported family on a panel, every queried one exported)."""
import json, sys
dash_path, rules_path = sys.argv[1:3]
with open(dash_path) as f:
    dash = json.load(f)
errors = []
if not 36 <= dash.get("schemaVersion", 0) <= 41:
    errors.append(f"schemaVersion {dash.get('schemaVersion')}")
variables = {v["name"]: v for v in dash.get("templating", {}).get("list", [])}
if variables.get("datasource", {}).get("type") != "datasource":
    errors.append("no datasource variable")
for v in ("job", "instance"):
    if v not in variables:
        errors.append(f"no {v} variable")
ids, exprs = set(), []
def walk(panels):
    for p in panels:
        if p.get("id") in ids:
            errors.append(f"duplicate panel id {p.get('id')}")
        ids.add(p.get("id"))
        walk(p.get("panels", []))
        for t in p.get("targets", []):
            exprs.append((p.get("title"), t.get("expr", "")))
            if t.get("datasource", {}).get("uid") != "${datasource}":
                errors.append(f"panel {p.get('title')!r}: target not on ${{datasource}}")
walk(dash.get("panels", []))
queries = exprs + [(f"variable {n}", v.get("definition", "")) for n, v in variables.items() if v.get("type") == "query"]
for title, expr in queries:
    if not expr:
        errors.append(f"{title}: empty expr")
# PromQL with Grafana's variables replaced, as recording rules for `promtool check rules`.
subst = {"$__rate_interval": "5m", "$__range": "1h", "$__interval": "1m",
         "$job": ".+", "$instance": ".+", "$repo": ".*"}
with open(rules_path, "w") as f:
    f.write("groups:\n  - name: dashboard\n    rules:\n")
    for i, (_, expr) in enumerate(exprs):
        for k, v in subst.items():
            expr = expr.replace(k, v)
        f.write(f"      - record: dashboard:expr{i}\n        expr: {json.dumps(expr)}\n")
for e in errors:
    print(e)
print(f"{len(exprs)} expressions in {len(ids)} panels")
sys.exit(1 if errors else 0)
