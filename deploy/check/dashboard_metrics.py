#!/usr/bin/env python3
"""dashboard_metrics.py DASHBOARD METRICS: every hexmirror_* name the dashboard's panels use
appears in METRICS, a /metrics page a running hexmirror served. Prints the missing names, or
"N names" when none is missing; exit status 1 when one is. Run by deploy/check.sh."""
import json, re, sys
with open(sys.argv[1]) as f:
    dash = json.load(f)
with open(sys.argv[2]) as f:
    exported = set(re.findall(r"^(hexmirror_[a-z_]+)[{ ]", f.read(), re.M))
used = set()
def walk(panels):
    for p in panels:
        walk(p.get("panels", []))
        for t in p.get("targets", []):
            used.update(re.findall(r"hexmirror_[a-z_]+", t.get("expr", "")))
walk(dash["panels"])
missing = sorted(used - exported)
print("\n".join(missing) if missing else f"{len(used)} names")
sys.exit(1 if missing else 0)
