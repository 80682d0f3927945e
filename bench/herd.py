#!/usr/bin/env python3
"""herd.py URL N SHA256: N clients, each on its own already-open connection, ask for URL at
the same instant (a barrier releases them together). Prints "ok=K bad=B" where ok counts
200 responses whose body has the expected sha256. Exit 0 when all N are ok."""
import hashlib
import http.client
import sys
import threading
import urllib.parse

url, n, want = sys.argv[1], int(sys.argv[2]), sys.argv[3]
u = urllib.parse.urlsplit(url)
path = u.path or '/'
barrier = threading.Barrier(n)
results = [None] * n


def worker(i):
    try:
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
        conn.connect()
    except OSError as e:
        barrier.wait()
        results[i] = 'connect: %s' % e
        return
    barrier.wait()
    try:
        conn.request('GET', path)
        r = conn.getresponse()
        body = r.read()
        if r.status != 200:
            results[i] = 'status %d' % r.status
        elif hashlib.sha256(body).hexdigest() != want:
            results[i] = 'wrong bytes (%d)' % len(body)
        else:
            results[i] = 'ok'
    except Exception as e:  # noqa: BLE001 - any failure counts as bad
        results[i] = 'error: %s' % e
    finally:
        conn.close()


threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
for t in threads:
    t.start()
for t in threads:
    t.join()
ok = results.count('ok')
bad = [r for r in results if r != 'ok']
print('ok=%d bad=%d%s' % (ok, len(bad), (' first=%s' % bad[0]) if bad else ''))
sys.exit(0 if ok == n else 1)
