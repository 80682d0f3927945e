#!/usr/bin/env python3
"""soak.py WORK FIXTURES PORT HEXPM_PORT ACME_PORT MIRROR_PID DURATION OUT BUILD: the driver of
bench/soak.sh, which builds and starts hexmirror (pid MIRROR_PID, on 127.0.0.1:PORT, data dir
WORK/data) and then runs this; see soak.sh's header for what the soak does.

Starts the two upstreams (soak_upstream.py beside this file) on HEXPM_PORT and ACME_PORT from
the FIXTURES demo repository, flaps them, runs the load for DURATION seconds, samples /metrics
and hexmirror's VmRSS, and writes the report to OUT (- for stdout only; BUILD describes the
binary in it). Env: RATE, WORKERS, FLAP, INTERVAL, WARMUP (defaults as in soak.sh).
Exit status 1 on a violation."""
import collections
import hashlib
import http.client
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time

(work, fixtures, port, hexpm_port, acme_port, mirror_pid, duration, out, build) = sys.argv[1:10]
port, hexpm_port, acme_port, mirror_pid = int(port), int(hexpm_port), int(acme_port), int(mirror_pid)
duration = float(duration)
rate = float(os.environ.get('RATE', '300'))
workers = int(os.environ.get('WORKERS', '32'))
flap = float(os.environ.get('FLAP', '20'))
interval = float(os.environ.get('INTERVAL', '10'))
warmup = float(os.environ.get('WARMUP', '60'))
grace = 3.0  # read_timeout + 1 s
UPSTREAM = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'soak_upstream.py')
TOKEN = 'Bearer soak-client-token'
PACKAGES = ['hexdemo_base', 'hexdemo_mid', 'hexdemo_top']


def digests(flavour):
    root = os.path.join(fixtures, flavour)
    d = {}
    for rel in ['names', 'versions'] + ['packages/' + p for p in PACKAGES] + \
            ['tarballs/' + t for t in sorted(os.listdir(os.path.join(root, 'tarballs')))]:
        with open(os.path.join(root, rel), 'rb') as f:
            body = f.read()
        d['/' + rel] = (hashlib.sha256(body).hexdigest(), len(body))
    return d


HEXPM, ACME = digests('hexpm'), digests('acme')
# (prefix, digests, needs token)
REPOS = [('', HEXPM, False), ('/repos/mirror2', HEXPM, False), ('/repos/acme', ACME, True)]


def package_of(path):
    m = re.search(r'/(?:packages|tarballs)/(hexdemo_[a-z]+)', path)
    return m.group(1) if m else None


# ---- upstreams and the flapper ----------------------------------------------------------
class Upstreams:
    def __init__(self):
        self.specs = [(hexpm_port, os.path.join(fixtures, 'hexpm'), []),
                      (acme_port, os.path.join(fixtures, 'acme'), ['soak-upstream-key'])]
        self.procs = [None, None]
        self.lock = threading.Lock()
        self.state = 'up'
        # (start, end or None, kind) of every outage
        self.outages = []
        self.start_all()

    def start_all(self):
        for i, (p, root, extra) in enumerate(self.specs):
            self.procs[i] = subprocess.Popen([sys.executable, UPSTREAM, str(p), root] + extra,
                                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Each upstream must be ours and answering (another process may have taken its port).
        deadline = time.time() + 10
        for (p, _, extra), proc in zip(self.specs, self.procs):
            want = 200 if not extra else 401
            while True:
                if proc.poll() is not None:
                    sys.exit('soak: the upstream on port %d exited (%s); is the port taken?' % (p, proc.returncode))
                try:
                    c = http.client.HTTPConnection('127.0.0.1', p, timeout=1)
                    c.request('HEAD', '/names')
                    status = c.getresponse().status
                    c.close()
                    if status == want:
                        break
                    sys.exit('soak: the upstream on port %d answered %d, not %d: not ours' % (p, status, want))
                except OSError:
                    if time.time() > deadline:
                        sys.exit('soak: the upstream on port %d does not answer' % p)
                    time.sleep(0.05)

    def set(self, state):
        with self.lock:
            now = time.time()
            if state == 'down':
                for proc in self.procs:
                    proc.kill()
                    proc.wait()
                self.outages.append([now, None, 'down'])
            elif state == 'hung':
                for proc in self.procs:
                    os.kill(proc.pid, signal.SIGSTOP)
                self.outages.append([now, None, 'hung'])
            elif state == 'up':
                if self.state == 'down':
                    self.start_all()
                elif self.state == 'hung':
                    for proc in self.procs:
                        os.kill(proc.pid, signal.SIGCONT)
                if self.outages and self.outages[-1][1] is None:
                    self.outages[-1][1] = time.time()
            self.state = state

    def during_outage(self, start, end):
        with self.lock:
            for s, e, _ in self.outages:
                if start <= (e if e is not None else float('inf')) + grace and end >= s:
                    return True
        return False

    def stop(self):
        for proc in self.procs:
            try:
                os.kill(proc.pid, signal.SIGCONT)
            except OSError:
                pass
            proc.kill()
            proc.wait()


# ---- what the load knows about the cache ------------------------------------------------
class Knowledge:
    def __init__(self):
        self.lock = threading.Lock()
        self.gen = collections.Counter()      # package -> purges so far
        self.cached = set()                   # full paths known cached
        self.etags = {}                       # full path -> last ETag

    def snapshot(self, path):
        with self.lock:
            return self.gen[package_of(path)], path in self.cached

    def served(self, path, gen, etag):
        with self.lock:
            if self.gen[package_of(path)] == gen:
                self.cached.add(path)
            if etag:
                self.etags[path] = etag

    def purged(self, package):
        with self.lock:
            self.gen[package] += 1
            self.cached = {p for p in self.cached if package_of(p) != package}


# ---- load -------------------------------------------------------------------------------
class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.latencies = []                   # this interval, seconds
        self.kinds = collections.Counter()    # this interval
        self.totals = collections.Counter()
        self.violations = []
        self.allowed = collections.Counter()  # allowed errors by status
        self.all = []                         # (latency, during an outage) of every request

    def record(self, kind, latency, outage):
        with self.lock:
            self.all.append((latency, outage))
            self.latencies.append(latency)
            self.kinds[kind] += 1
            self.totals[kind] += 1

    def take(self):
        with self.lock:
            lat, kinds = self.latencies, self.kinds
            self.latencies, self.kinds = [], collections.Counter()
        return lat, kinds


def admin():
    with open(os.path.join(work, 'data', 'admin.json')) as f:
        return json.load(f)


def pick(rnd):
    r = rnd.random()
    prefix, dig, private = rnd.choice(REPOS)
    rel = rnd.choice(list(dig))
    if r < 0.40:
        return 'get', prefix, rel, dig, private
    if r < 0.58:
        return 'conditional', prefix, rel, dig, private
    if r < 0.66:
        return 'head', prefix, rel, dig, private
    if r < 0.72:
        return 'no_token', '/repos/acme', rel, ACME, True
    if r < 0.76:
        return 'not_found', rnd.choice(['', '/repos/mirror2']), '/packages/hexdemo_missing', None, False
    if r < 0.80:
        return 'purge', prefix, rnd.choice([t for t in dig if t.startswith('/tarballs/')]), dig, private
    return 'get', prefix, rel, dig, private


stop_at = None
purge_lock = threading.Lock()
last_purge = [0.0]


def worker(stats, know, ups, seed):
    rnd = random.Random(seed)
    conn = None
    per_worker = rate / workers
    next_at = time.time() + rnd.random() / per_worker
    while time.time() < stop_at:
        now = time.time()
        if next_at > now:
            time.sleep(next_at - now)
        elif next_at < now - 1.0:
            next_at = now  # a worker held up by a slow answer does not burst to catch up
        next_at += rnd.expovariate(per_worker)
        op, prefix, rel, dig, private = pick(rnd)
        path = prefix + rel
        headers = {}
        if op == 'purge':
            # At most one purge every 5 s, and only while the upstreams are up, so that hits
            # stay the common case and outages meet mostly cached objects.
            with purge_lock:
                if time.time() - last_purge[0] < 5.0 or ups.state != 'up':
                    op = 'get'
                else:
                    last_purge[0] = time.time()
                    a = admin()
                    try:
                        c = http.client.HTTPConnection(a['url'][len('http://'):], timeout=10)
                        c.request('POST', '/_admin/purge?package=' + package_of(rel),
                                  headers={'Authorization': 'Bearer ' + a['token']})
                        r = c.getresponse()
                        r.read()
                        c.close()
                        if r.status != 200:
                            stats.violations.append('purge answered %d' % r.status)
                    except OSError as e:
                        stats.violations.append('purge failed: %s' % e)
                    know.purged(package_of(rel))
                    op = 'miss'
        if private and op != 'no_token':
            headers['Authorization'] = TOKEN
        if op == 'conditional':
            etag = know.etags.get(path)
            if etag:
                headers['If-None-Match'] = etag
        gen, cached = know.snapshot(path)
        method = 'HEAD' if op == 'head' else 'GET'
        start = time.time()
        status, body, etag, xcache, err, clen = None, b'', None, '', None, None
        for attempt in range(2):
            try:
                if conn is None:
                    conn = http.client.HTTPConnection('127.0.0.1', port, timeout=30)
                conn.request(method, path, headers=headers)
                r = conn.getresponse()
                body = r.read()
                status, etag, xcache = r.status, r.getheader('ETag'), r.getheader('x-cache') or ''
                clen = r.getheader('Content-Length')
                if r.will_close:
                    conn.close()
                    conn = None
                break
            except (OSError, http.client.HTTPException) as e:
                if conn is not None:
                    conn.close()
                conn = None
                err = '%s: %s' % (type(e).__name__, e)
                # A keep-alive connection closed by the server between requests: retry once.
                if attempt == 0 and isinstance(e, (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)):
                    continue
        end = time.time()
        latency = end - start
        kind = classify(op, path, rel, dig, status, body, clen if status else None, xcache, err,
                        cached, start, end, ups, stats)
        if status == 200 and op not in ('no_token', 'not_found') and kind.startswith('ok'):
            know.served(path, gen, etag)
        stats.record(kind, latency, ups.during_outage(start, end))
    if conn is not None:
        conn.close()


def classify(op, path, rel, dig, status, body, clen, xcache, err, cached, start, end, ups, stats):
    def violation(why):
        stats.violations.append('%s %s %s: %s' % (time.strftime('%H:%M:%S', time.localtime(start)), op, path, why))
        return 'VIOLATION ' + why.split(':')[0]

    if status == 200 and op in ('get', 'conditional', 'miss', 'head'):
        want, size = dig[rel]
        if op == 'head':
            if clen != str(size):
                return violation('HEAD content-length %s, want %d' % (clen, size))
        elif hashlib.sha256(body).hexdigest() != want:
            return violation('wrong bytes (%d bytes)' % len(body))
        return 'ok 200 %s' % xcache
    if status == 304 and op == 'conditional':
        return 'ok 304'
    if status == 401 and op == 'no_token':
        return 'ok 401 (no token)'
    if status == 404 and op == 'not_found':
        return 'ok 404 (no such package)'
    what = 'status %s' % status if status else 'no answer (%s)' % err
    if op == 'no_token' and status == 200:
        return violation('private content served without a token')
    if op == 'not_found' and status == 200:
        return violation('a package that does not exist answered 200')
    outage = ups.during_outage(start, end)
    if cached and op != 'no_token':
        return violation('error on a cached object: ' + what)
    if outage:
        what = {'not_found': 'a package that does not exist (negative entry expired)',
                'no_token': 'a private object without a token, not cached'}.get(op, 'an object purged or never fetched')
        key = '%s: %s' % (what, status or 'no answer')
        with stats.lock:
            stats.allowed[key] += 1
        return 'allowed ' + str(status or 'no answer')
    return violation('error with the upstream up: ' + what)


# ---- sampling ---------------------------------------------------------------------------
def scrape():
    c = http.client.HTTPConnection('127.0.0.1', port, timeout=10)
    c.request('GET', '/metrics')
    text = c.getresponse().read().decode()
    c.close()
    counts = collections.Counter()
    for line in text.splitlines():
        if line.startswith('hexmirror_requests_total{'):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
            value = float(line.rsplit(' ', 1)[1])
            counts[(labels['status_class'], labels['cache'])] += value
    gauges = {}
    for name in ('hexmirror_store_degraded', 'hexmirror_client_connections', 'hexmirror_upstream_inflight'):
        m = re.search(r'^%s (\S+)$' % name, text, re.M)
        gauges[name] = float(m.group(1)) if m else None
    m = re.search(r'^hexmirror_cache_bytes\{tier="memory"\} (\S+)$', text, re.M)
    gauges['memory_bytes'] = float(m.group(1)) if m else None
    m = re.search(r'^hexmirror_cache_entries\{tier="memory"\} (\S+)$', text, re.M)
    gauges['memory_entries'] = float(m.group(1)) if m else None
    return counts, gauges


def rss_kib():
    with open('/proc/%d/status' % mirror_pid) as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1])
    return None


def pct(values, p):
    if not values:
        return float('nan')
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100.0 * len(values)))]


load_at_start = open('/proc/loadavg').read().split(' ', 3)[:3]


def main():
    global stop_at
    ups = Upstreams()
    stats, know = Stats(), Knowledge()
    t0 = time.time()
    stop_at = t0 + duration
    threads = [threading.Thread(target=worker, args=(stats, know, ups, 1000 + i), daemon=True) for i in range(workers)]
    for t in threads:
        t.start()

    def flapper():
        states = ['down', 'up', 'hung', 'up']
        i = 0
        while time.time() + flap < stop_at:
            time.sleep(flap)
            ups.set(states[i % 4])
            i += 1
        if ups.state != 'up':
            ups.set('up')
    threading.Thread(target=flapper, daemon=True).start()

    rows = []
    prev, _ = scrape()
    header = '%6s %6s %6s %6s %6s %6s %6s %6s %6s %6s %6s %7s %7s %8s %8s %5s %6s %s' % (
        't(s)', 'req/s', '2xx', '3xx', '4xx', '5xx', 'hit', 'miss', 'reval', 'stale', 'error',
        'p50ms', 'p99ms', 'RSS MiB', 'mem KiB', 'conns', 'degr', 'upstream')
    print(header, flush=True)
    next_sample = t0 + interval
    while True:
        time.sleep(max(0.0, next_sample - time.time()))
        now = time.time()
        counts, gauges = scrape()
        delta = {k: counts[k] - prev.get(k, 0) for k in counts}
        prev = counts
        lat, kinds = stats.take()
        by_class = collections.Counter()
        by_cache = collections.Counter()
        for (cls, cache), v in delta.items():
            by_class[cls] += v
            by_cache[cache] += v
        with ups.lock:
            states = set()
            for s, e, kind in ups.outages:
                if s < now and (e is None or e > now - interval):
                    states.add(kind)
        row = {
            't': round(now - t0), 'rps': sum(delta.values()) / interval,
            '2xx': by_class['2xx'], '3xx': by_class['3xx'], '4xx': by_class['4xx'], '5xx': by_class['5xx'],
            'hit': by_cache['hit'], 'miss': by_cache['miss'], 'revalidated': by_cache['revalidated'],
            'stale': by_cache['stale'], 'error': by_cache['error'],
            'p50': pct(lat, 50) * 1000, 'p99': pct(lat, 99) * 1000, 'n': len(lat),
            'rss': rss_kib(), 'degraded': gauges['hexmirror_store_degraded'],
            'mem': (gauges['memory_bytes'] or 0) / 1024, 'entries': gauges['memory_entries'] or 0,
            'conns': gauges['hexmirror_client_connections'] or 0,
            'upstream': '+'.join(sorted(states)) or 'up',
            'violations': sum(v for k, v in kinds.items() if k.startswith('VIOLATION')),
            'allowed': sum(v for k, v in kinds.items() if k.startswith('allowed')),
        }
        rows.append(row)
        print('%6d %6.0f %6d %6d %6d %6d %6d %6d %6d %6d %6d %7.1f %7.1f %8.1f %8.1f %5d %6d %s%s' % (
            row['t'], row['rps'], row['2xx'], row['3xx'], row['4xx'], row['5xx'], row['hit'], row['miss'],
            row['revalidated'], row['stale'], row['error'], row['p50'], row['p99'], (row['rss'] or 0) / 1024,
            row['mem'], row['conns'], row['degraded'] or 0, row['upstream'],
            ('  %d allowed errors' % row['allowed'] if row['allowed'] else '') +
            ('  %d VIOLATIONS' % row['violations'] if row['violations'] else '')), flush=True)
        next_sample += interval
        if now >= stop_at:
            break
    for t in threads:
        t.join(timeout=60)
    ups.stop()
    report(rows, stats, ups, t0)
    return 1 if stats.violations else 0


def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()
    except OSError:
        return '?'


def report(rows, stats, ups, t0):
    total = sum(stats.totals.values())
    after = [r for r in rows if r['t'] > warmup and r['rss']]
    rss = [r['rss'] / 1024 for r in after]
    slope = 0.0
    if len(after) >= 2:
        xs = [r['t'] for r in after]
        mx, my = sum(xs) / len(xs), sum(rss) / len(rss)
        den = sum((x - mx) ** 2 for x in xs)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, rss)) / den * 60 if den else 0.0
    p50s = [r['p50'] for r in rows if r['n']]
    p99s = [r['p99'] for r in rows if r['n']]
    cpu = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").strip() or '?'
    outages = collections.Counter(kind for _, _, kind in ups.outages)
    lines = []
    w = lines.append
    w('# Soak test results')
    w('')
    w('`bench/soak.sh` with DURATION=%d (%s). Produced by the script; rerun it to refresh.' % (
        int(duration), time.strftime('%Y-%m-%d', time.gmtime(t0))))
    w('')
    w('## Machine')
    w('')
    w('- `nproc`: %s; CPU: %s' % (sh('nproc'), cpu))
    w('- `free -g`:')
    w('')
    w('```')
    w(subprocess.run(['free', '-g'], capture_output=True, text=True).stdout.rstrip())
    w('```')
    w('')
    w('- kernel: `%s`' % sh('uname -srm'))
    w('- hexmirror: %s; load generator, upstreams and hexmirror share the same CPUs' % build)
    w('- load average (1/5/15 min) at the start: %s; at the end: %s (anything else running on the machine'
      ' shows here)' % (' / '.join(load_at_start), ' / '.join(open('/proc/loadavg').read().split(' ', 3)[:3])))
    w('')
    w('## Set-up')
    w('')
    w('- upstreams: the demo repository `hexpm` (public) and the demo organization `acme`'
      ' (`Cache-Control: private`, answers only hexmirror\'s own key), python3 servers with strong ETags')
    w('- hexmirror: `/` and `/repos/mirror2/` from the hexpm upstream, `/repos/acme/` for access-token'
      ' holders; registry_ttl 3s, negative_ttl 2s, connect/read/transfer timeouts 1s/2s/5s')
    w('- load: %d workers on keep-alive connections, paced to %.0f requests/s: 48%% GETs, 18%% conditional GETs'
      ' with the last ETag, 8%% HEAD, 6%% private without a token (401 expected), 4%% a package that does not'
      ' exist (404), purge + refetch of a package at most every 5 s while the upstreams are up; every 200 checked against the fixture\'s'
      ' sha256' % (workers, rate))
    w('- flapper: every %d s the upstreams go down (killed), up, hung (SIGSTOP), up, ...: %d outages'
      ' (%d down, %d hung)' % (flap, len(ups.outages), outages['down'], outages['hung']))
    w('')
    w('## Results')
    w('')
    w('- requests: %d in %d s (%.0f/s)' % (total, int(duration), total / duration if duration else 0))
    w('- violations (wrong bytes, an error for a cached object, an error with the upstream up): **%d**'
      % len(stats.violations))
    for v in stats.violations[:20]:
        w('  - %s' % v)
    w('- allowed errors (an uncached object while the upstream was down or hung): %d'
      % sum(stats.allowed.values()))
    for k, v in sorted(stats.allowed.items()):
        w('  - %s: %d' % (k, v))
    w('- answers by kind (client side):')
    w('')
    w('  | kind | count |')
    w('  |---|---:|')
    for k, v in sorted(stats.totals.items(), key=lambda kv: -kv[1]):
        w('  | %s | %d |' % (k, v))
    w('')
    mems = [r['mem'] for r in after]
    if mems:
        w('- memory tier after the warm-up: %.1f-%.1f KiB' % (min(mems), max(mems)))
    if rss:
        w('- hexmirror VmRSS after the %d s warm-up: min %.1f MiB, max %.1f MiB, last %.1f MiB,'
          ' trend %+.2f MiB/min (least squares)' % (warmup, min(rss), max(rss), rss[-1], slope))
    if p50s:
        w('- client-side latency per %d s interval: p50 %.1f-%.1f ms (median %.1f), p99 %.1f-%.1f ms (median %.1f)'
          % (interval, min(p50s), max(p50s), sorted(p50s)[len(p50s) // 2], min(p99s), max(p99s),
             sorted(p99s)[len(p99s) // 2]))
    everything = [l for l, _ in stats.all]
    calm = [l for l, o in stats.all if not o]
    if everything:
        w('- client-side latency over all %d requests: p50 %.2f ms, p99 %.1f ms, p99.9 %.1f ms, max %.0f ms'
          % (len(everything), pct(everything, 50) * 1000, pct(everything, 99) * 1000,
             pct(everything, 99.9) * 1000, max(everything) * 1000))
    if calm:
        w('- the same, for the %d requests outside outages (and their grace): p50 %.2f ms, p99 %.1f ms,'
          ' p99.9 %.1f ms, max %.0f ms' % (len(calm), pct(calm, 50) * 1000, pct(calm, 99) * 1000,
                                           pct(calm, 99.9) * 1000, max(calm) * 1000))
    w('')
    w('## Per interval')
    w('')
    w('Request counts are deltas of `hexmirror_requests_total` (status class, x-cache); latency is measured by'
      ' the load generator; "upstream" is the worst state seen during the interval.')
    w('')
    w('| t (s) | req/s | 2xx | 3xx | 4xx | 5xx | hit | miss | revalidated | stale | error | p50 ms | p99 ms |'
      ' RSS MiB | memory tier KiB (entries) | client conns | degraded | upstream | allowed errors | violations |')
    w('|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|')
    for r in rows:
        w('| %d | %.0f | %d | %d | %d | %d | %d | %d | %d | %d | %d | %.1f | %.1f | %.1f | %.1f (%d) | %d | %d | %s |'
          ' %d | %d |' % (
              r['t'], r['rps'], r['2xx'], r['3xx'], r['4xx'], r['5xx'], r['hit'], r['miss'], r['revalidated'],
              r['stale'], r['error'], r['p50'], r['p99'], (r['rss'] or 0) / 1024, r['mem'], r['entries'], r['conns'],
              r['degraded'] or 0, r['upstream'], r['allowed'], r['violations']))
    text = '\n'.join(lines) + '\n'
    print()
    print(text)
    if out != '-':
        with open(out, 'w') as f:
            f.write(text)
        print('report written to %s' % out)


if __name__ == '__main__':
    sys.exit(main())
