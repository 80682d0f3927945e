#!/usr/bin/env bash
# Benchmark hexmirror against nginx proxy_cache, both in front of the same nginx origin.
#
#   bench/run.sh                 full run (ROUNDS=3 rounds of 5 s per object and server)
#   QUICK=1 bench/run.sh         smoke run (1 round of 2 s)
#
# Env: HEXMIRROR_BIN (skip `cargo build --release`), ROUNDS, DURATION (wrk -d), WRK_THREADS (2),
#      WRK_CONNS (32), HERD (200 simultaneous clients), KEEP=1 (keep the scratch dir),
#      RUST_LOG (hexmirror log filter, default warn: nginx's cache runs with access_log off).
# See bench/README.md for what is measured. Exit status is non-zero if any response was not a
# 200 with the exact expected body.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/../tests/lib/harness.sh" bench   # root, harness_start, stop_pid, die, need_hexmirror, free_port, wait_http
keys=$root/tests/fixtures/demo-repo/keys

if [ "${QUICK:-0}" = 1 ]; then rounds=${ROUNDS:-1} duration=${DURATION:-2s}
else rounds=${ROUNDS:-3} duration=${DURATION:-5s}; fi
wrk_threads=${WRK_THREADS:-2} wrk_conns=${WRK_CONNS:-32} herd_n=${HERD:-200}
cold_rounds=${COLD_ROUNDS:-$rounds}

if tool=$(missing_tool wrk nginx curl escript rebar3 python3 sha256sum); then
  echo "bench: $tool not found (apt-get install -y --no-install-recommends erlang-nox erlang-dev rebar3 nginx wrk curl)" >&2; exit 2
fi

harness_start
chmod 755 "$work"   # nginx workers run as an unprivileged user when started as root
need_hexmirror --release
unset_hexmirror_env   # hexmirror reads HEXMIRROR_* variables as configuration: none reach it

# ---- the signed benchmark repository ------------------------------------------------------
repo=$work/repo
escript "$here/make_bench_repo.escript" "$repo" "$keys/priv.pem" "$keys/pub.pem" > "$work/manifest" \
  || die "make_bench_repo.escript failed"
# label|path, in table order
objects=("registry record ~1 KB|/packages/bench_small"
         "tarball ~5 KB|/tarballs/bench_small-1.0.0.tar"
         "tarball ~84 KB|/tarballs/bench_medium-1.0.0.tar"
         "/versions ~150 KB|/versions"
         "tarball ~5 MB|/tarballs/bench_large-1.0.0.tar")
obj_size() { awk -v p="${1#/}" '$1 == p { print $2 }' "$work/manifest"; }
obj_sha() { awk -v p="${1#/}" '$1 == p { print $3 }' "$work/manifest"; }

ngx_common() {  # dir
  cat <<EOF
daemon off;
error_log $1/error.log warn;
pid $1/nginx.pid;
worker_rlimit_nofile 8192;
events { worker_connections 4096; }
EOF
}
ngx_temp() { echo "client_body_temp_path $1/tmp; proxy_temp_path $1/tmp; fastcgi_temp_path $1/tmp; uwsgi_temp_path $1/tmp; scgi_temp_path $1/tmp;"; }

# ---- origin: plain nginx serving the repository files; its access log counts upstream requests
o_dir=$work/origin o_port=$(free_port)
mkdir -p "$o_dir/tmp"
{ echo "worker_processes 1;"; ngx_common "$o_dir"; cat <<EOF
http {
    access_log $o_dir/access.log;
    $(ngx_temp "$o_dir")
    default_type application/octet-stream;
    sendfile on;
    server { listen 127.0.0.1:$o_port; root $repo; location / { try_files \$uri =404; } }
}
EOF
} > "$o_dir/nginx.conf"
nginx -c "$o_dir/nginx.conf" -p "$o_dir" > "$o_dir/stdout.log" 2>&1 &
o_pid=$!; pids+=($o_pid)
wait_http "http://127.0.0.1:$o_port/names" $o_pid 10 || die "origin nginx did not start"
origin="http://127.0.0.1:$o_port"
origin_lines() { wc -l < "$o_dir/access.log"; }
origin_count() {  # from-line path: requests for path logged after line from-line (and all of them)
  tail -n +"$(( $1 + 1 ))" "$o_dir/access.log" > "$work/origin.delta"
  echo "$(grep -c -E "\"[A-Z]+ $2 HTTP" "$work/origin.delta") $(wc -l < "$work/origin.delta")"
}

# ---- nginx proxy_cache ------------------------------------------------------------------------
n_dir=$work/ngxcache n_port=$(free_port) n_pid=""
start_ngxcache() {  # fresh cache
  stop_pid "$n_pid"
  rm -rf "$n_dir"; mkdir -p "$n_dir/tmp" "$n_dir/cache"
  { echo "worker_processes 2;"; ngx_common "$n_dir"; cat <<EOF
http {
    access_log off;
    $(ngx_temp "$n_dir")
    sendfile on;
    proxy_cache_path $n_dir/cache levels=1:2 keys_zone=hex:10m max_size=1g inactive=60m use_temp_path=off;
    upstream origin { server 127.0.0.1:$o_port; keepalive 32; }
    server {
        listen 127.0.0.1:$n_port;
        location / {
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache hex;
            proxy_cache_lock on;
            proxy_cache_valid 200 10m;
            add_header x-cache \$upstream_cache_status;
        }
    }
}
EOF
  } > "$n_dir/nginx.conf"
  nginx -c "$n_dir/nginx.conf" -p "$n_dir" > "$n_dir/stdout.log" 2>&1 &
  n_pid=$!; pids+=($n_pid)
  for _ in $(seq 50); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$n_port/no/such/thing")" = 404 ] && return 0
    sleep 0.1
  done
  die "nginx proxy_cache did not start"
}

# ---- hexmirror --------------------------------------------------------------------------------
h_dir=$work/hexmirror h_port=$(free_port) h_pid="" h_hwm_max=0 h_starts=0
vm() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status" 2>/dev/null; }   # pid field -> kB
start_hexmirror() {  # fresh data dir
  if [ -n "$h_pid" ]; then
    local hwm; hwm=$(vm "$h_pid" VmHWM); [ "${hwm:-0}" -gt "$h_hwm_max" ] && h_hwm_max=$hwm
    stop_pid "$h_pid"
  fi
  h_starts=$((h_starts + 1))
  rm -rf "$h_dir/data"; mkdir -p "$h_dir/data"
  cat > "$h_dir/config.toml" <<EOF
listen = "127.0.0.1:$h_port"
data_dir = "$h_dir/data"
registry_ttl = "10m"

[repos.hexpm]
upstream = "$origin"
public_key = "$keys/pub.pem"
EOF
  RUST_LOG="${RUST_LOG:-warn}" "$bin" serve --config "$h_dir/config.toml" > "$h_dir/stdout.log" 2>> "$h_dir/stderr.log" &
  h_pid=$!; pids+=($h_pid)
  wait_http "http://127.0.0.1:$h_port/readyz" $h_pid 30 \
    || { tail -n 20 "$h_dir/stderr.log"; die "hexmirror did not become ready"; }
}
fresh_caches() { start_ngxcache; start_hexmirror; }

servers=(nginx hexmirror)
url_of() { if [ "$1" = nginx ]; then echo "http://127.0.0.1:$n_port$2"; else echo "http://127.0.0.1:$h_port$2"; fi; }
results=$work/results.tsv   # kind server label field value
: > "$results"
rec() { printf '%s\t%s\t%s\t%s\t%s\n' "$@" >> "$results"; }
for o in "${objects[@]}"; do rec size - "${o%%|*}" bytes "$(obj_size "${o#*|}")"; done
failures=0
bad() { echo "  ERROR: $*"; failures=$((failures + 1)); }

echo "hexmirror benchmark: $bin"
echo "origin $origin; nginx proxy_cache :$n_port (worker_processes 2); hexmirror :$h_port"
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg) (other work on the machine skews every number)"
echo "wrk -t$wrk_threads -c$wrk_conns -d$duration, $rounds round(s); $cold_rounds cold/herd round(s), herd of $herd_n; $(nproc) CPU(s)"

# ---- 1+2. cold miss and thundering herd, each on freshly emptied caches, COLD_ROUNDS times ------
cold_miss() {  # round label path: one request per server with both caches empty
  local r=$1 label=$2 path=$3 s from out code t n_obj n_all ms
  for s in "${servers[@]}"; do
    from=$(origin_lines)
    out=$(curl -s -o "$work/cold.body" -w '%{http_code} %{time_total}' "$(url_of "$s" "$path")")
    code=${out%% *} t=${out#* }
    [ "$code" = 200 ] && [ "$(sha256sum < "$work/cold.body" | cut -d' ' -f1)" = "$(obj_sha "$path")" ] \
      || bad "cold $s $path: status $code or wrong bytes"
    read -r n_obj n_all < <(origin_count "$from" "$path")
    ms=$(python3 -c "print(f'{$t * 1000:.2f}')")
    rec cold "$s" "$label" "ms.$r" "$ms"
    rec cold "$s" "$label" "upstream.$r" "$n_all"
    printf '  cold  %d %-9s %-22s %8s ms  (%s upstream request(s))\n' "$r" "$s" "$label" "$ms" "$n_all"
  done
}
herd() {  # round label path: HERD clients ask both caches (empty) for the object at the same instant
  local r=$1 label=$2 path=$3 s from out n_obj n_all
  for s in "${servers[@]}"; do
    from=$(origin_lines)
    out=$(python3 "$here/herd.py" "$(url_of "$s" "$path")" "$herd_n" "$(obj_sha "$path")") \
      || bad "herd $s $path: $out"
    read -r n_obj n_all < <(origin_count "$from" "$path")
    rec herd "$s" "$label" "upstream.$r" "$n_obj"
    rec herd "$s" "$label" "upstream_all.$r" "$n_all"
    rec herd "$s" "$label" "correct.$r" "$(sed 's/^ok=\([0-9]*\).*/\1/' <<< "$out")"
    printf '  herd  %d %-9s %-22s %s; origin saw %s request(s) for it (%s in all)\n' "$r" "$s" "$label" "$out" "$n_obj" "$n_all"
  done
}
echo "== cold miss (one request) and herd ($herd_n simultaneous clients), caches emptied before each"
for r in $(seq "$cold_rounds"); do
  for o in "${objects[@]}"; do
    label=${o%%|*} path=${o#*|}
    fresh_caches; cold_miss "$r" "$label" "$path"
    fresh_caches; herd "$r" "$label" "$path"
  done
done

# ---- 3. warm hits: wrk over keep-alive connections ---------------------------------------------
echo "== warm hits"
for o in "${objects[@]}"; do   # prime both caches
  path=${o#*|}
  for s in "${servers[@]}"; do
    for _ in 1 2; do curl -s -o /dev/null "$(url_of "$s" "$path")"; done
  done
done
wrk_run() {  # server path duration [VAR=VALUE...] -> sets requests duration_us p50_us p99_us bad_len bad_status socket_errors
  local s=$1 path=$2 d=$3 out line; shift 3
  out=$(env "$@" EXPECT_LEN="$(obj_size "$path")" wrk -t"$wrk_threads" -c"$wrk_conns" -d"$d" \
          -s "$here/check.lua" "$(url_of "$s" "$path")" 2>&1)
  line=$(grep '^RESULT' <<< "$out")
  [ -n "$line" ] || { bad "wrk $s $path produced no result: $(tail -n 3 <<< "$out" | tr '\n' ' ')"; return 1; }
  eval "${line#RESULT }"
  [ "$bad_len" = 0 ] && [ "$bad_status" = 0 ] && [ "$requests" -gt 0 ] \
    || { bad "wrk $s $path: $bad_status non-200, $bad_len wrong length of $requests"; return 1; }
  [ "$socket_errors" = 0 ] || echo "  note: wrk $s $path: $socket_errors socket errors"
}
# verification pass: every response's status and body length checked in Lua
for o in "${objects[@]}"; do
  label=${o%%|*} path=${o#*|}
  for s in "${servers[@]}"; do
    wrk_run "$s" "$path" 1s CHECK_BODY=1 \
      && printf '  verify  %-9s %-22s %6s responses, all 200 with %s bytes\n' "$s" "$label" "$requests" "$(obj_size "$path")"
  done
done
for r in $(seq "$rounds"); do
  if [ $((r % 2)) = 1 ]; then order=(nginx hexmirror); else order=(hexmirror nginx); fi
  for o in "${objects[@]}"; do
    label=${o%%|*} path=${o#*|}
    for s in "${order[@]}"; do
      wrk_run "$s" "$path" "$duration" || continue
      rps=$(python3 -c "print(f'{$requests / ($duration_us / 1e6):.0f}')")
      rec warm "$s" "$label" "rps.$r" "$rps"
      rec warm "$s" "$label" "p50.$r" "$p50_us"
      rec warm "$s" "$label" "p99.$r" "$p99_us"
      printf '  round %d %-9s %-22s %8s req/s  p50 %6s us  p99 %7s us\n' "$r" "$s" "$label" "$rps" "$p50_us" "$p99_us"
    done
  done
done

# ---- memory -------------------------------------------------------------------------------------
h_hwm=$(vm "$h_pid" VmHWM) h_rss=$(vm "$h_pid" VmRSS)
[ "${h_hwm:-0}" -gt "$h_hwm_max" ] && h_hwm_max=$h_hwm
n_hwm=0
for p in "$n_pid" $(pgrep -P "$n_pid"); do n_hwm=$(( n_hwm + $(vm "$p" VmHWM || echo 0) )); done
rec mem hexmirror all hwm_last "$h_hwm"
rec mem hexmirror all hwm_max "$h_hwm_max"
rec mem hexmirror all rss "$h_rss"
rec mem nginx all hwm_sum "$n_hwm"

# ---- report ---------------------------------------------------------------------------------------
python3 - "$results" "$rounds" "$herd_n" "$wrk_threads" "$wrk_conns" "$duration" "$(nproc)" "$cold_rounds" <<'PY'
import collections, statistics, sys
path, rounds, herd_n, thr, conns, dur, ncpu, cold_rounds = sys.argv[1:]
rounds, cold_rounds, herd_n = int(rounds), int(cold_rounds), int(herd_n)
d = collections.defaultdict(dict)
labels = []
for line in open(path):
    kind, server, label, field, value = line.rstrip('\n').split('\t')
    d[(kind, server, label)][field] = value
    if kind == 'size' and label not in labels:
        labels.append(label)
med = lambda xs: statistics.median(xs) if xs else float('nan')
def series(server, label, f):
    w = d[('warm', server, label)]
    return [float(w[f'{f}.{r}']) for r in range(1, rounds + 1) if f'{f}.{r}' in w]
print()
print(f'### Warm hits (wrk -t{thr} -c{conns} -d{dur}, keep-alive; median of {rounds} round(s); {ncpu} CPUs shared by wrk and the server)')
print()
print('| object | bytes | nginx req/s | hexmirror req/s | hexmirror/nginx | nginx p50 / p99 | hexmirror p50 / p99 |')
print('|---|---:|---:|---:|---:|---:|---:|')
for label in labels:
    n, h = series('nginx', label, 'rps'), series('hexmirror', label, 'rps')
    ratios = [b / a for a, b in zip(n, h) if a > 0]
    lat = lambda s: '%.2f / %.2f ms' % (med(series(s, label, 'p50')) / 1000, med(series(s, label, 'p99')) / 1000)
    print(f'| {label} | {int(d[("size", "-", label)]["bytes"]):,} | {med(n):,.0f} | {med(h):,.0f} | {med(ratios):.2f} | {lat("nginx")} | {lat("hexmirror")} |')
print()
print(f'### Cold miss and thundering herd ({cold_rounds} round(s), caches emptied before each measurement)')
print()
print(f'Cold: one request, median time_total and (upstream requests). Herd: {herd_n} simultaneous clients on one cold object;')
print('origin requests for that object in each round (requests of any kind in all rounds), and clients that got a 200 with the right sha256.')
print()
print('| object | cold nginx | cold hexmirror | herd origin requests nginx | herd origin requests hexmirror | herd correct nginx | herd correct hexmirror |')
print('|---|---:|---:|---:|---:|---:|---:|')
def per_round(kind, s, label, f):
    x = d[(kind, s, label)]
    return [x[f'{f}.{r}'] for r in range(1, cold_rounds + 1) if f'{f}.{r}' in x]
for label in labels:
    def cold(s):
        ms = [float(v) for v in per_round('cold', s, label, 'ms')]
        up = sorted(set(per_round('cold', s, label, 'upstream')))
        return '%.2f ms (%s up)' % (med(ms), '/'.join(up))
    def herd(s):
        each = per_round('herd', s, label, 'upstream')
        total = sum(int(v) for v in per_round('herd', s, label, 'upstream_all'))
        return '%s (%d in all)' % (' / '.join(each), total)
    def ok(s):
        c = [int(v) for v in per_round('herd', s, label, 'correct')]
        return f'{sum(c)}/{herd_n * len(c)}'
    print(f'| {label} | {cold("nginx")} | {cold("hexmirror")} | {herd("nginx")} | {herd("hexmirror")} | {ok("nginx")} | {ok("hexmirror")} |')
m = d[('mem', 'hexmirror', 'all')]
n = d[('mem', 'nginx', 'all')]
print()
print(f"Memory: hexmirror peak RSS (VmHWM) {int(m['hwm_last'])/1024:.1f} MiB after the warm runs "
      f"(max over all its instances {int(m['hwm_max'])/1024:.1f} MiB, RSS now {int(m['rss'])/1024:.1f} MiB); "
      f"nginx proxy_cache master+workers VmHWM sum {int(n['hwm_sum'])/1024:.1f} MiB.")
PY
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
if [ "$failures" -gt 0 ]; then echo "BENCHMARK FAILED: $failures check(s) failed"; exit 1; fi
echo "all responses were 200 with the exact expected bytes"

# The fetch path under pressure and the cold path, each against its baseline in its own run
# (SKIP_MORE=1 leaves them out): cold-miss latency per size as a ratio to the origin fetch,
# stale answers with a hung upstream against nginx's use_stale updating, a flood of abandoned
# cold misses then one legitimate miss, and the /metrics scrape size.
if [ "${SKIP_MORE:-0}" != 1 ]; then
  export HEXMIRROR_BIN="$bin"
  for more in cold pressure; do
    printf '\n## bench/%s.sh\n\n' "$more"
    bash "$here/$more.sh" || { echo "BENCHMARK FAILED: bench/$more.sh"; exit 1; }
  done
fi
