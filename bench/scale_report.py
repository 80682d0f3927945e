#!/usr/bin/env python3
"""scale_report.py RESULTS NOTES LOAD TIER_MIB QUICK DELAY_MS: the markdown tables of
bench/scale.sh, one per size, from the rows it wrote (size step wall_s rss_kib releases bytes
status) and its notes (size step key value)."""
import collections
import sys

results, notes_path, load_path = sys.argv[1:4]
tier, quick, delay = int(sys.argv[4]), sys.argv[5] == '1', sys.argv[6]
# The time targets assume a 50 ms upstream and full sizes.
untimed = 'n/a (QUICK)' if quick else (None if delay == '50' else f'n/a (delay {delay} ms, not 50)')
bound = tier + 128
RESYNC_BOUND = 100

rows = collections.OrderedDict()
for line in open(results):
    size, step, wall, rss, releases, nbytes, status = line.rstrip('\n').split('\t')
    rows.setdefault(size, []).append((step, wall, rss, releases, nbytes, status))
notes = collections.defaultdict(dict)
for line in open(notes_path):
    size, step, key, value = line.rstrip('\n').split('\t', 3)
    notes[(size, step)][key] = value
load = [line.split() for line in open(load_path)]


def num(text):
    try:
        return float(text)
    except ValueError:
        return None


def mib(kib):
    return kib / 1024


def memory_cells(rss_kib, limit=bound):
    """peak RSS MiB, ratio to the bound, target, pass/FAIL."""
    if rss_kib is None:
        return ['', '', '', '']
    m = mib(rss_kib)
    return [f'{m:.0f}', f'{m / bound:.2f}', f'≤ {limit} MiB', 'pass' if m <= limit else 'FAIL']


print()
print(f'Upstream delay {delay} ms per request; memory tier {tier} MiB (`memory_cache_bytes`), '
      f'so the bound for every process is {bound} MiB; ratio = peak RSS / {bound} MiB.')
for size, steps in rows.items():
    gen = notes[(size, 'generate')]
    packages, per_package, tarball = int(gen['packages']), int(gen['per_package']), int(gen['tarball'])
    total = packages * per_package
    tar_bytes = next(int(b) for s, _, _, _, b, _ in steps if s == 'generate')
    bundle = int(notes[(size, 'export')].get('bundle_bytes', 0) or 0)
    loads = {parts[1]: ' '.join(parts[2:]) for parts in load if len(parts) > 2 and parts[0] == size}
    print()
    print(f'### {size}: {packages:,} packages × {per_package} release(s), {total:,} releases, '
          f'tarballs of {tarball:,} bytes ({tar_bytes / 2**20:,.0f} MiB of tarballs, bundle {bundle / 2**20:,.0f} MiB)')
    print()
    print(f'Load average at start {loads.get("start", "?")}, at end {loads.get("end", "?")}.')
    print()
    print('| step | wall s | releases/s | MiB/s | peak RSS MiB | ratio | target | result | notes |')
    print('|---|---:|---:|---:|---:|---:|---|---|---|')
    for step, wall, rss, releases, nbytes, status in steps:
        w = num(wall)
        r = num(rss)
        n = notes[(size, step)]
        moved = bundle if step.startswith(('export', 'import')) and bundle else int(nbytes or 0)
        rate = f'{total / w:,.0f}' if w and step not in ('offline start',) else ''
        # A re-sync moves no tarball: its rate is releases checked a second, no MiB/s.
        mibs = f'{moved / 2**20 / w:,.1f}' if w and step != 'offline start' and not step.startswith('re-sync') else ''
        failed = '' if status in ('0', '-') else f'exit status {status}; '
        if step == 'generate':
            print(f'| generate (escript, not hexmirror) | {w:.1f} | {rate} | {mibs} | | | | | |')
            continue
        if n.get('unsupported'):
            print(f'| {step} | | | | | | | not supported by this build (`export --help` has no `--max-size`) | |')
            continue
        extra = []
        if step == 'sync':
            extra.append(n.get('summary', ''))
            extra.append(f'{n.get("upstream_requests", "?")} upstream requests')
        if step.startswith('re-sync'):
            extra.append(n.get('summary', ''))
            extra.append(f'{n.get("upstream_requests", "?")} upstream requests, {n.get("upstream_304", "?")} of them 304')
        if step == 'export volumes':
            extra.append(f'{n.get("files", "?")} volumes of ≤ {n.get("volume_mib", "?")} MiB')
        if step == 'export via server':
            extra.append(f'bundle identical to the standalone export: {n.get("identical", "?")}')
        if step == 'offline start':
            extra.append('/names and a tarball served with the right bytes' if status == '0' else 'WRONG ANSWERS')
        if failed:
            extra.insert(0, failed.rstrip('; '))
        limit = RESYNC_BOUND if step.startswith('re-sync') else bound
        mem = memory_cells(r, limit)
        label = step
        if step == 'offline start':
            label = 'offline start (to /readyz)'
        if 'server_rss_kib' in n:
            label = f'{step}: client'
        print(f'| {label} | {w if w is not None else 0:.2f} | {rate} | {mibs} | {" | ".join(mem)} | {"; ".join(e for e in extra if e)} |')
        if 'server_rss_kib' in n:
            srv = int(n['server_rss_kib'])
            idle = int(n.get('server_idle_kib', 0))
            print(f'| {step}: server | | | | {" | ".join(memory_cells(srv))} | idle after start {mib(idle):.0f} MiB |')
        if step == 'sync':
            planned = num(n.get('planned_s', ''))
            if planned is not None:
                per_1000 = planned * 1000 / packages
                verdict = untimed or ('pass' if per_1000 < 10 else 'FAIL')
                print(f'| sync: time to `planned` | {planned:.2f} | | | | | < 10 s per 1,000 records | {verdict} '
                      f'({per_1000:.2f} s per 1,000) | {packages:,} records |')
            if size == 'small' and packages == 1000 and per_package == 1:
                verdict = untimed or ('pass' if w is not None and w < 30 else 'FAIL')
                print(f'| sync: whole `sync --all` | {w:.2f} | | | | | < 30 s | {verdict} | 1,000 single-release packages |')
print()
print('Load average: ' + '; '.join(f'{parts[0]} {" ".join(parts[1:])}' for parts in load if parts[0] in ('start', 'end')))
