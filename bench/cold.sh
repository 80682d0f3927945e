#!/usr/bin/env bash
# Cold-miss latency per object: one request through hexmirror with an empty cache, against the
# same request made to the origin directly, in the same run.
#
#   bench/cold.sh                 ROUNDS=15 rounds per object
#   QUICK=1 bench/cold.sh         ROUNDS=5 (under a minute)
#
# Env: HEXMIRROR_BIN (skip `cargo build --release`), ROUNDS, DATA_ROOT (where hexmirror's data
#      directories go: default the scratch dir, under $TMPDIR or /tmp like the tests' stores;
#      /dev/shm compares a tmpfs), KEEP=1 (keep the scratch dir), RUST_LOG (default warn).
#
# Each measurement restarts hexmirror on an empty data directory, sends it one request for a
# path the origin answers 404 (so the server, its blocking threads and its upstream connection
# are warm, as in a running mirror, while nothing measured is cached), then times one request
# with curl (time_total). A cold tarball also needs its package record: it is measured with
# the record fetched first (record warm) and alone (record cold too: two upstream requests).
# The origin is timed with one curl request for the same path, alternating which goes first.
# Objects: the benchmark repository's (bench/make_bench_repo.escript, signed by the test key)
# and the real hex.pm /versions and /packages/exfmt (tests/fixtures/hexpm-real, signed by
# hex.pm: served by a second origin, to a hexmirror configured with hex.pm's key).
#
# Exit status is non-zero if a response is not a 200 with the exact expected bytes (sha256), or
# hexmirror's answer was not a miss.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/../tests/lib/harness.sh" cold   # root, harness_start, stop_pid, die, need_hexmirror, free_port, wait_http
keys=$root/tests/fixtures/demo-repo/keys
real=$root/tests/fixtures/hexpm-real

if [ "${QUICK:-0}" = 1 ]; then rounds=${ROUNDS:-5}; else rounds=${ROUNDS:-15}; fi

if tool=$(missing_tool nginx curl escript rebar3 python3 sha256sum); then
  echo "cold: $tool not found (apt-get install -y --no-install-recommends erlang-nox erlang-dev rebar3 nginx curl)" >&2; exit 2
fi

harness_start
chmod 755 "$work"   # nginx workers run as an unprivileged user when started as root
need_hexmirror --release
unset_hexmirror_env   # hexmirror reads HEXMIRROR_* variables as configuration: none reach it
data_root=${DATA_ROOT:-$work}
mkdir -p "$data_root"

# ---- the two repositories ---------------------------------------------------------------------
repo=$work/repo
escript "$here/make_bench_repo.escript" "$repo" "$keys/priv.pem" "$keys/pub.pem" > "$work/manifest" \
  || die "make_bench_repo.escript failed"
hexpm=$work/hexpm
mkdir -p "$hexpm/packages"
cp "$real/versions-2020-06" "$hexpm/versions"
cp "$real/packages-exfmt" "$hexpm/packages/exfmt"
for p in versions packages/exfmt; do
  echo "$p $(stat -c %s "$hexpm/$p") $(sha256sum < "$hexpm/$p" | cut -d' ' -f1)"
done > "$work/manifest.hexpm"

# label|origin|path|record: the record to fetch first ("-": none), in table order
objects=("record ~1 KB|bench|/packages/bench_small|-"
         "tarball ~5 KB, record warm|bench|/tarballs/bench_small-1.0.0.tar|/packages/bench_small"
         "tarball ~5 KB, record cold too|bench|/tarballs/bench_small-1.0.0.tar|-"
         "tarball ~84 KB, record warm|bench|/tarballs/bench_medium-1.0.0.tar|/packages/bench_medium"
         "tarball ~84 KB, record cold too|bench|/tarballs/bench_medium-1.0.0.tar|-"
         "tarball ~5 MB, record warm|bench|/tarballs/bench_large-1.0.0.tar|/packages/bench_large"
         "tarball ~5 MB, record cold too|bench|/tarballs/bench_large-1.0.0.tar|-"
         "/versions ~150 KB (bench)|bench|/versions|-"
         "hex.pm record exfmt ~1 KB|hexpm|/packages/exfmt|-"
         "hex.pm /versions 2020-06 ~140 KB|hexpm|/versions|-")
manifest_of() { if [ "$1" = hexpm ]; then echo "$work/manifest.hexpm"; else echo "$work/manifest"; fi; }
obj_size() { awk -v p="${2#/}" '$1 == p { print $2 }' "$(manifest_of "$1")"; }
obj_sha() { awk -v p="${2#/}" '$1 == p { print $3 }' "$(manifest_of "$1")"; }

# ---- origin: one nginx, a server per repository -------------------------------------------------
o_dir=$work/origin o_bench=$(free_port) o_hexpm=$(free_port)
mkdir -p "$o_dir/tmp"
cat > "$o_dir/nginx.conf" <<EOF
worker_processes 1;
daemon off;
error_log $o_dir/error.log warn;
pid $o_dir/nginx.pid;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $o_dir/tmp; proxy_temp_path $o_dir/tmp; fastcgi_temp_path $o_dir/tmp;
    uwsgi_temp_path $o_dir/tmp; scgi_temp_path $o_dir/tmp;
    default_type application/octet-stream;
    sendfile on;
    server { listen 127.0.0.1:$o_bench; root $repo; location / { try_files \$uri =404; } }
    server { listen 127.0.0.1:$o_hexpm; root $hexpm; location / { try_files \$uri =404; } }
}
EOF
nginx -c "$o_dir/nginx.conf" -p "$o_dir" > "$o_dir/stdout.log" 2>&1 &
o_pid=$!; pids+=($o_pid)
wait_http "http://127.0.0.1:$o_bench/names" $o_pid 10 || die "origin nginx did not start"
wait_http "http://127.0.0.1:$o_hexpm/versions" $o_pid 10 || die "origin nginx (hex.pm files) did not start"
origin_url() { if [ "$1" = hexpm ]; then echo "http://127.0.0.1:$o_hexpm"; else echo "http://127.0.0.1:$o_bench"; fi; }

# ---- hexmirror, restarted on an empty data directory for each measurement -----------------------
h_dir=$work/hexmirror h_port=$(free_port) h_pid=""
mkdir -p "$h_dir"
start_hexmirror() {  # origin: bench | hexpm
  local key=$keys/pub.pem
  [ "$1" = hexpm ] && key=$real/public_key
  stop_pid "$h_pid"
  rm -rf "$data_root/hexmirror-data"; mkdir -p "$data_root/hexmirror-data"
  cat > "$h_dir/config.toml" <<EOF
listen = "127.0.0.1:$h_port"
data_dir = "$data_root/hexmirror-data"
registry_ttl = "10m"

[repos.hexpm]
upstream = "$(origin_url "$1")"
public_key = "$key"
EOF
  RUST_LOG="${RUST_LOG:-warn}" "$bin" serve --config "$h_dir/config.toml" > "$h_dir/stdout.log" 2>> "$h_dir/stderr.log" &
  h_pid=$!; pids+=($h_pid)
  wait_http "http://127.0.0.1:$h_port/readyz" $h_pid 30 \
    || { tail -n 20 "$h_dir/stderr.log"; die "hexmirror did not become ready"; }
  # Warm the server and its upstream connection with a path the origin does not have.
  curl -s -o /dev/null "http://127.0.0.1:$h_port/packages/cold_bench_warm_up"
}

results=$work/results.tsv   # label server ms
: > "$results"
failures=0
bad() { echo "  ERROR: $*"; failures=$((failures + 1)); }

fetch() {  # server origin path -> prints time_total in ms; checks status, bytes and x-cache
  local server=$1 origin=$2 path=$3 url out code t cache
  if [ "$server" = origin ]; then url=$(origin_url "$origin")$path; else url=http://127.0.0.1:$h_port$path; fi
  out=$(curl -s -D "$work/headers" -o "$work/body" -w '%{http_code} %{time_total}' "$url")
  code=${out%% *} t=${out#* }
  if [ "$code" != 200 ] || [ "$(sha256sum < "$work/body" | cut -d' ' -f1)" != "$(obj_sha "$origin" "$path")" ]; then
    bad "$server $path: status $code or wrong bytes ($(stat -c %s "$work/body") of $(obj_size "$origin" "$path"))"
  fi
  if [ "$server" = hexmirror ]; then
    cache=$(tr -d '\r' < "$work/headers" | awk -F': ' 'tolower($1) == "x-cache" { print $2 }')
    [ "$cache" = miss ] || bad "hexmirror $path: x-cache is '${cache:-absent}', not miss"
  fi
  python3 -c "print(f'{$t * 1000:.3f}')"
}

echo "hexmirror cold-miss benchmark: $bin"
echo "origin nginx :$o_bench (bench repo) :$o_hexpm (hex.pm files); hexmirror :$h_port; data in $data_root"
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg) ($(nproc) CPUs; other work on the machine skews every number)"
echo "$rounds round(s); hexmirror restarted on an empty data directory before each measurement"
for r in $(seq "$rounds"); do
  for o in "${objects[@]}"; do
    IFS='|' read -r label origin path record <<< "$o"
    start_hexmirror "$origin"
    if [ "$record" != - ]; then
      curl -s -o /dev/null -w '' "http://127.0.0.1:$h_port$record" || bad "record $record"
    fi
    if [ $((r % 2)) = 1 ]; then order=(origin hexmirror); else order=(hexmirror origin); fi
    line=""
    for s in "${order[@]}"; do
      ms=$(fetch "$s" "$origin" "$path")
      printf '%s\t%s\t%s\n' "$label" "$s" "$ms" >> "$results"
      line+=$(printf ' %-9s %8s ms' "$s" "$ms")
    done
    printf '  %2d %-34s%s\n' "$r" "$label" "$line"
  done
done
stop_pid "$h_pid"
rm -rf "$data_root/hexmirror-data"

python3 - "$results" "$rounds" <<'PY'
import collections, math, sys
path, rounds = sys.argv[1], int(sys.argv[2])
ms = collections.defaultdict(list)
labels = []
for line in open(path):
    label, server, value = line.rstrip('\n').split('\t')
    ms[(label, server)].append(float(value))
    if label not in labels:
        labels.append(label)
def pct(xs, p):  # nearest rank
    xs = sorted(xs)
    return xs[max(0, math.ceil(p / 100 * len(xs)) - 1)]
print()
print(f'### Cold miss: one request, empty cache ({rounds} round(s); curl time_total, ms)')
print()
print('| object | origin median | origin p90 | hexmirror median | hexmirror p90 | ratio (median) | hexmirror - origin (median) |')
print('|---|---:|---:|---:|---:|---:|---:|')
for label in labels:
    o, h = ms[(label, 'origin')], ms[(label, 'hexmirror')]
    om, hm = pct(o, 50), pct(h, 50)
    print(f'| {label} | {om:.2f} | {pct(o, 90):.2f} | {hm:.2f} | {pct(h, 90):.2f} | {hm / om:.1f}x | {hm - om:+.2f} |')
PY
echo
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
if [ "$failures" -gt 0 ]; then echo "BENCHMARK FAILED: $failures check(s) failed"; exit 1; fi
echo "all responses were 200 with the exact expected bytes, and every hexmirror answer a miss"
