#!/usr/bin/env python3
"""ready.py PORT PID METRICS: waits (up to about 20 s) until the hexmirror with process id PID
answers 200 on http://127.0.0.1:PORT/readyz; exit status 1 if PID exits first or time runs
out. Then, unless the file METRICS exists, saves its /metrics there. Run by deploy/check.sh
for every configuration it starts hexmirror with."""
import os, sys, time, urllib.request
port, pid, metrics = sys.argv[1], int(sys.argv[2]), sys.argv[3]
for _ in range(100):
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit(1)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
            if r.status == 200:
                break
    except Exception:
        pass
    time.sleep(0.2)
else:
    sys.exit(1)
if not os.path.exists(metrics):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r, open(metrics, "wb") as f:
        f.write(r.read())
