#!/usr/bin/env bash
# hexmirror against nginx proxy_cache under upstream pressure, both in front of the same origin:
#   1. stale answers while the upstream hangs (accepts connections, never answers);
#   2. a flood of cold misses from clients that give up at once, then one legitimate cold miss;
#   3. the size of /metrics on the default configuration after that.
#
#   bench/pressure.sh            full run (~5 min)
#   QUICK=1 bench/pressure.sh    smoke run (under 2 min)
#
# Env: HEXMIRROR_BIN (skip `cargo build --release`), RECORDS (20 registry records),
#      PASSES and KA_PASSES (sequential passes over the stale records on a new connection per
#      request, and on one keep-alive connection), SWR0_RECORDS (records timed with
#      stale_while_revalidate = "0"), FLOOD (clients), FLOOD_CONCURRENCY (256), FLOOD_HOLD
#      (seconds a flood client waits after sending its request before it closes, 0.1),
#      FLOOD_DELAY (seconds the origin takes to answer a flood name, 1), KEEP=1, RUST_LOG.
# See bench/README.md. Exit status is non-zero if any answer was wrong (status, bytes, x-cache).
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/../tests/lib/harness.sh" pressure   # root, harness_start, stop_pid, die, need_hexmirror, free_port, wait_http
keys=$root/tests/fixtures/demo-repo/keys

if [ "${QUICK:-0}" = 1 ]; then passes=${PASSES:-2} ka_passes=${KA_PASSES:-1} swr0_records=${SWR0_RECORDS:-3} flood_n=${FLOOD:-1000}
else passes=${PASSES:-10} ka_passes=${KA_PASSES:-2} swr0_records=${SWR0_RECORDS:-21} flood_n=${FLOOD:-5000}; fi
records=${RECORDS:-20} flood_conc=${FLOOD_CONCURRENCY:-256} flood_hold=${FLOOD_HOLD:-0.1} flood_delay=${FLOOD_DELAY:-1}
ttl=2 read_timeout=3   # seconds: registry_ttl / proxy_cache_valid, and the upstream read timeouts

if tool=$(missing_tool nginx curl escript rebar3 python3); then
  echo "pressure: $tool not found (apt-get install -y --no-install-recommends erlang-nox erlang-dev rebar3 nginx curl)" >&2; exit 2
fi

harness_start
chmod 755 "$work"   # nginx workers run as an unprivileged user when started as root
need_hexmirror --release
unset_hexmirror_env   # hexmirror reads HEXMIRROR_* variables as configuration: none reach it

# ---- the signed repository: bench/make_bench_repo.escript plus RECORDS small records ------------
repo=$work/repo
BENCH_RECORDS=$records escript "$here/make_bench_repo.escript" "$repo" "$keys/priv.pem" "$keys/pub.pem" > "$work/manifest" \
  || die "make_bench_repo.escript failed"
stale_paths=(/names)
for i in $(seq "$records"); do stale_paths+=("$(printf '/packages/bench_rec_%02d' "$i")"); done
legit=/packages/bench_medium
sha_of() { awk -v p="${1#/}" '$1 == p { print $3 }' "$work/manifest"; }

# ---- origin: pressure.py, switchable to hanging; its log counts upstream requests ---------------
o_dir=$work/origin o_port=$(free_port)
mkdir -p "$o_dir"; : > "$o_dir/access.log"
python3 "$here/pressure.py" origin "$o_port" "$repo" "$o_dir/access.log" "$flood_delay" 2> "$o_dir/stderr.log" &
o_pid=$!; pids+=($o_pid)
wait_http "http://127.0.0.1:$o_port/names" $o_pid 10 || die "origin did not start"
origin="http://127.0.0.1:$o_port"
origin_lines() { wc -l < "$o_dir/access.log"; }
flood_lines() {  # from to: flood requests the origin logged between those line counts
  sed -n "$(( $1 + 1 )),$2p" "$o_dir/access.log" | grep -c ' /packages/flood_'
}
origin_quiet() {  # waits until the origin logs nothing new for 3 s (at most 600 s); prints the line count
  local n m still=0 waited=0
  n=$(origin_lines)
  while [ "$still" -lt 3 ] && [ "$waited" -lt 600 ]; do
    sleep 1; waited=$((waited + 1)); m=$(origin_lines)
    if [ "$m" = "$n" ]; then still=$((still + 1)); else still=0 n=$m; fi
  done
  echo "$n"
}

# ---- nginx proxy_cache --------------------------------------------------------------------------
n_dir=$work/ngxcache n_port=$(free_port) n_pid=""
start_ngxcache() {  # stale|plain: a fresh cache
  local extra=""
  [ "$1" = stale ] && extra="proxy_cache_valid 200 ${ttl}s;
            proxy_cache_use_stale updating error timeout;
            proxy_cache_background_update on;
            proxy_connect_timeout ${read_timeout}s; proxy_read_timeout ${read_timeout}s; proxy_send_timeout ${read_timeout}s;"
  [ "$1" = plain ] && extra="proxy_cache_valid 200 10m;"
  stop_pid "$n_pid"
  rm -rf "$n_dir"; mkdir -p "$n_dir/tmp" "$n_dir/cache"
  cat > "$n_dir/nginx.conf" <<EOF
worker_processes 2;
daemon off;
error_log $n_dir/error.log warn;
pid $n_dir/nginx.pid;
worker_rlimit_nofile 16384;
events { worker_connections 8192; }
http {
    access_log off;
    client_body_temp_path $n_dir/tmp; proxy_temp_path $n_dir/tmp; fastcgi_temp_path $n_dir/tmp; uwsgi_temp_path $n_dir/tmp; scgi_temp_path $n_dir/tmp;
    proxy_cache_path $n_dir/cache levels=1:2 keys_zone=hex:10m max_size=1g inactive=60m use_temp_path=off;
    upstream origin { server 127.0.0.1:$o_port; keepalive 32; }
    server {
        listen 127.0.0.1:$n_port backlog=4096;
        location / {
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache hex;
            proxy_cache_lock on;
            $extra
            add_header x-cache \$upstream_cache_status;
        }
    }
}
EOF
  nginx -c "$n_dir/nginx.conf" -p "$n_dir" > "$n_dir/stdout.log" 2>&1 &
  n_pid=$!; pids+=($n_pid)
  for _ in $(seq 50); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$n_port/no/such/thing")" = 404 ] && return 0
    sleep 0.1
  done
  die "nginx proxy_cache did not start"
}

# ---- hexmirror instances: NAME -> port, pid --------------------------------------------------
declare -A h_port h_pid
vm() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status" 2>/dev/null; }   # pid field -> kB
start_hexmirror() {  # name extra-toml-lines: a fresh data dir
  local name=$1 dir=$work/hexmirror-$1 port
  port=$(free_port)
  rm -rf "$dir"; mkdir -p "$dir/data"
  { echo "listen = \"127.0.0.1:$port\""; echo "data_dir = \"$dir/data\""; printf '%s' "$2"; cat <<EOF

[repos.hexpm]
upstream = "$origin"
public_key = "$keys/pub.pem"
EOF
  } > "$dir/config.toml"
  RUST_LOG="${RUST_LOG:-warn}" "$bin" serve --config "$dir/config.toml" > "$dir/stdout.log" 2>> "$dir/stderr.log" &
  h_pid[$name]=$!; h_port[$name]=$port; pids+=($!)
  wait_http "http://127.0.0.1:$port/readyz" $! 30 \
    || { tail -n 20 "$dir/stderr.log"; die "hexmirror ($name) did not become ready"; }
}

results=$work/results.tsv   # key value
: > "$results"
rec() { printf '%s\t%s\n' "$1" "$2" >> "$results"; }
failures=0
bad() { echo "  ERROR: $*"; failures=$((failures + 1)); }
seq_pass() {  # label new|keepalive url x-cache times-file path...: one sequential pass, checked
  local label=$1 mode=$2 url=$3 xc=$4 times=$5 out; shift 5
  out=$(python3 "$here/pressure.py" seq "$mode" "$url" "$work/manifest" "$times" "$xc" "$@") || bad "$label: $out"
  printf '  %-36s %s\n' "$label" "$out"
}

echo "hexmirror pressure benchmark: $bin"
echo "origin $origin (pressure.py); $(nproc) CPU(s); load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"

# ---- 1. stale answers with a hung upstream ------------------------------------------------------
echo "== 1. stale answers while the upstream hangs (${#stale_paths[@]} registry files, registry_ttl ${ttl}s, read_timeout ${read_timeout}s)"
start_ngxcache stale
start_hexmirror swr "registry_ttl = \"${ttl}s\"
read_timeout = \"${read_timeout}s\"
connect_timeout = \"${read_timeout}s\"
"
start_hexmirror swr0 "registry_ttl = \"${ttl}s\"
read_timeout = \"${read_timeout}s\"
connect_timeout = \"${read_timeout}s\"
stale_while_revalidate = \"0\"
"
nginx_url="http://127.0.0.1:$n_port"
swr_url="http://127.0.0.1:${h_port[swr]}" swr0_url="http://127.0.0.1:${h_port[swr0]}"
swr0_paths=("${stale_paths[@]:0:$swr0_records}")
seq_pass "warm nginx" new "$nginx_url" '*' /dev/null "${stale_paths[@]}"
seq_pass "warm hexmirror" new "$swr_url" '*' /dev/null "${stale_paths[@]}"
seq_pass "warm hexmirror swr=0" new "$swr0_url" '*' /dev/null "${swr0_paths[@]}"
sleep $((ttl + 1))   # every copy has expired
kill -USR1 "$o_pid"
[ "$(curl -s -o /dev/null -m 1 -w '%{http_code}' "$origin/names")" = 000 ] || bad "the origin still answers after SIGUSR1"
echo "  origin now hangs (accepts, reads, never answers)"
first=1
for mode in new keepalive; do
  if [ "$mode" = new ]; then n=$passes; else n=$ka_passes; fi
  for p in $(seq "$n"); do
    # Each round starts with no revalidation in flight (those the last one started have timed
    # out), like a build started a while after the previous one.
    [ "$first" = 1 ] || sleep $((read_timeout + 1))
    first=0
    if [ $((p % 2)) = 1 ]; then order=(nginx hexmirror); else order=(hexmirror nginx); fi
    for s in "${order[@]}"; do
      if [ "$s" = nginx ]; then url=$nginx_url xc=STALE,UPDATING; else url=$swr_url xc=stale; fi
      seq_pass "stale $mode pass $p $s" "$mode" "$url" "$xc" "$work/stale.$mode.$s" "${stale_paths[@]}"
    done
  done
done
seq_pass "stale keepalive hexmirror swr=0" keepalive "$swr0_url" stale "$work/stale.swr0" "${swr0_paths[@]}"
rec stale_records "${#stale_paths[@]}"
rec swr0_records "${#swr0_paths[@]}"
kill -USR2 "$o_pid"
stop_pid "${h_pid[swr]}"; stop_pid "${h_pid[swr0]}"

# ---- 2. a flood of abandoned cold misses, then one legitimate cold miss -------------------------
echo "== 2. flood: $flood_n clients ($flood_conc at a time) ask for a cold /packages/flood_* and leave ${flood_hold}s later;"
echo "   the origin answers those 404 after ${flood_delay}s; then one legitimate cold miss ($legit)"
start_ngxcache plain
start_hexmirror default ""
h=${h_pid[default]} hd_url="http://127.0.0.1:${h_port[default]}"
metrics_size() { curl -s "$hd_url/metrics" > "$work/metrics.txt"; echo "$(wc -c < "$work/metrics.txt") $(grep -vc '^#' "$work/metrics.txt")"; }
read -r mb ms < <(metrics_size); rec metrics_bytes_start "$mb"; rec metrics_series_start "$ms"
rec rss_before "$(vm "$h" VmRSS)"; rec hwm_before "$(vm "$h" VmHWM)"
for s in nginx hexmirror; do
  if [ "$s" = nginx ]; then port=$n_port; else port=${h_port[default]}; fi
  l0=$(origin_lines)
  out=$(python3 "$here/pressure.py" flood 127.0.0.1 "$port" "$flood_n" "$flood_conc" "$flood_hold" "$s")
  l1=$(origin_lines)
  res=$(curl -s -o "$work/legit.body" -m 900 -w '%{http_code} %{time_total}' "http://127.0.0.1:$port$legit")
  code=${res%% *} t=${res#* }
  if [ "$code" = 200 ] && [ "$(sha256sum < "$work/legit.body" | cut -d' ' -f1)" = "$(sha_of "$legit")" ]; then ok=yes
  else ok=no; bad "legitimate miss on $s after the flood: status $code or wrong bytes"; fi
  l2=$(origin_quiet)
  during=$(flood_lines "$l0" "$l1") after=$(flood_lines "$l1" "$l2")
  rec "flood_$s" "$out"; rec "legit_ms_$s" "$(python3 -c "print(f'{$t * 1000:.1f}')")"; rec "legit_ok_$s" "$ok"
  rec "during_$s" "$during"; rec "after_$s" "$after"
  printf '  %-9s flood %s; origin saw %s flood request(s) by then and %s after; legitimate miss: %s in %.1f ms\n' \
    "$s" "$out" "$during" "$after" "$code" "$(python3 -c "print($t * 1000)")"
done
rec rss_after "$(vm "$h" VmRSS)"; rec hwm_after "$(vm "$h" VmHWM)"

# ---- 3. scrape size -----------------------------------------------------------------------------
read -r mb ms < <(metrics_size); rec metrics_bytes_end "$mb"; rec metrics_series_end "$ms"

# ---- report -------------------------------------------------------------------------------------
python3 - "$work" "$flood_n" "$flood_conc" "$flood_hold" "$flood_delay" "$ttl" "$read_timeout" "$(nproc)" <<'PY'
import os, sys
work, flood_n, conc, hold, delay, ttl, rt, ncpu = sys.argv[1:]
r = dict(line.rstrip('\n').split('\t', 1) for line in open(os.path.join(work, 'results.tsv')))
def times(name):
    p = os.path.join(work, 'stale.' + name)
    return sorted(float(x) for x in open(p)) if os.path.exists(p) else []
def pct(xs, q):
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))] if xs else float('nan')
print()
print(f'### Stale answers while the upstream hangs ({r["stale_records"]} registry files, sequential requests; '
      f'registry_ttl / proxy_cache_valid {ttl}s, read timeouts {rt}s; {ncpu} CPUs)')
print()
print('nginx: `proxy_cache_use_stale updating error timeout` and `proxy_cache_background_update on`; '
      'hexmirror: `stale_while_revalidate` 1h (the default), or 0.')
print()
print('| server | connection | requests | p50 | p99 | max | took 1 s or more |')
print('|---|---|---:|---:|---:|---:|---:|')
rows = [('nginx', 'new per request', 'new.nginx'), ('hexmirror', 'new per request', 'new.hexmirror'),
        ('nginx', 'one keep-alive', 'keepalive.nginx'), ('hexmirror', 'one keep-alive', 'keepalive.hexmirror'),
        (f'hexmirror, stale_while_revalidate 0 (waits read_timeout {rt}s)', 'one keep-alive', 'swr0')]
t = {key: times(key) for _, _, key in rows}
for server, conn, key in rows:
    xs = t[key]
    print(f'| {server} | {conn} | {len(xs)} | {pct(xs, 50):.2f} ms | {pct(xs, 99):.2f} ms | {max(xs, default=float("nan")):.2f} ms | {sum(x >= 1000 for x in xs)} |')
print()
for mode, label in (('new', 'new connection per request'), ('keepalive', 'one keep-alive connection')):
    n, h = t[mode + '.nginx'], t[mode + '.hexmirror']
    if n and h:
        print(f'hexmirror/nginx, {label}: p50 {pct(h, 50) / pct(n, 50):.3g}, p99 {pct(h, 99) / pct(n, 99):.3g}')
print()
print(f'### A flood of {flood_n} abandoned cold misses ({conc} clients at a time, each gone {hold}s after its request), then one legitimate cold miss')
print()
print(f'The origin answers each flood name 404 after {delay}s. Origin requests for flood names while the flood ran and after its clients were gone (until the origin was quiet for 3 s).')
print()
print('| server | flood | origin requests during | after | legitimate miss | correct |')
print('|---|---|---:|---:|---:|---|')
for s in ('nginx', 'hexmirror'):
    print(f'| {s} | {r["flood_" + s]} | {r["during_" + s]} | {r["after_" + s]} | {float(r["legit_ms_" + s]):,.1f} ms | {r["legit_ok_" + s]} |')
mib = lambda k: int(r[k]) / 1024
counters = {}
for line in open(os.path.join(work, 'metrics.txt')):
    name, _, value = line.strip().rpartition(' ')
    if name in ('hexmirror_pending_fetches', 'hexmirror_fetches_cancelled_total', 'hexmirror_fetches_rejected_total'):
        counters[name] = value
if counters:
    print()
    print('hexmirror after the floods: ' + ', '.join(f'`{k}` {v}' for k, v in sorted(counters.items())) + '.')
print()
print(f'hexmirror memory (default configuration): VmRSS {mib("rss_before"):.1f} MiB before the floods, {mib("rss_after"):.1f} MiB after; '
      f'VmHWM {mib("hwm_before"):.1f} MiB before, {mib("hwm_after"):.1f} MiB after.')
print()
print('### /metrics on the default configuration')
print()
print(f'{int(r["metrics_bytes_start"]):,} bytes, {r["metrics_series_start"]} series (lines that are no comment) at start; '
      f'{int(r["metrics_bytes_end"]):,} bytes, {r["metrics_series_end"]} series after the run.')
PY
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
if [ "$failures" -gt 0 ]; then echo "PRESSURE BENCHMARK FAILED: $failures check(s) failed"; exit 1; fi
echo "all answers were right (status, bytes, x-cache)"
