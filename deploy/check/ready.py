#!/usr/bin/env python3
"""ready.py PORT PID: waits (up to about 20 s) until the hexmirror with process id PID answers
200 on http://127.0.0.1:PORT/readyz; exit status 1 if PID exits first or time runs out. Run by
deploy/check.sh for every configuration it starts hexmirror with."""
import os, sys, time, urllib.request
port, pid = sys.argv[1], int(sys.argv[2])
for _ in range(100):
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit(1)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
            if r.status == 200:
                sys.exit(0)
    except Exception:
        pass
    time.sleep(0.2)
sys.exit(1)
