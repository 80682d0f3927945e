#!/usr/bin/env bash
# Hits from the shared tier against hits from memory, on one replica, in the same run:
#
#   bench/shared.sh                 ROUNDS=15 rounds per object
#   QUICK=1 bench/shared.sh         ROUNDS=5
#
# Env: HEXMIRROR_BIN (skip `cargo build --release`), ROUNDS, S3=garage|moto (default: garage
#      when installed, else moto), KEEP=1 (keep the scratch dir), RUST_LOG (default warn).
#
# An nginx origin serves the benchmark repository (bench/make_bench_repo.escript); a local S3
# server on 127.0.0.1 holds the shared bucket (Garage 2.5, or moto's server). A first replica
# fills the bucket. Then, for each measurement, a second replica is started with an empty memory
# tier and asked for the object once (x-cache: hit, loaded from the bucket and verified again)
# and once more (x-cache: hit, from memory); both timed with curl (time_total). A tarball is
# measured with its package record already in memory (loaded by a request before), so the row
# is the tarball's own cost. Exit status is non-zero if an answer is not a 200 hit with the
# exact expected bytes.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/../tests/lib/harness.sh" shared   # root, harness_start, stop_pid, die, need_hexmirror, free_port, wait_http
keys=$root/tests/fixtures/demo-repo/keys
if [ "${QUICK:-0}" = 1 ]; then rounds=${ROUNDS:-5}; else rounds=${ROUNDS:-15}; fi
export PATH="$HOME/.cargo/bin:$PATH"
s3=${S3:-}
if [ -z "$s3" ]; then if command -v garage >/dev/null; then s3=garage; else s3=moto; fi; fi
if tool=$(missing_tool nginx curl escript python3 sha256sum); then
  echo "shared: $tool not found" >&2; exit 2
fi

harness_start
chmod 755 "$work"
need_hexmirror --release
unset_hexmirror_env

repo=$work/repo
escript "$here/make_bench_repo.escript" "$repo" "$keys/priv.pem" "$keys/pub.pem" > "$work/manifest" \
  || die "make_bench_repo.escript failed"
obj_sha() { awk -v p="${1#/}" '$1 == p { print $3 }' "$work/manifest"; }

# ---- origin ---------------------------------------------------------------------------------
o_dir=$work/origin o_port=$(free_port)
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
    server { listen 127.0.0.1:$o_port; root $repo; location / { try_files \$uri =404; } }
}
EOF
nginx -c "$o_dir/nginx.conf" -p "$o_dir" > "$o_dir/stdout.log" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$o_port/names" $! 10 || die "origin nginx did not start"

# ---- the S3 server --------------------------------------------------------------------------
bucket=hexmirror-bench s3_port=$(free_port)
export AWS_ACCESS_KEY_ID=GK31c2f218a2e44f485b94239e
export AWS_SECRET_ACCESS_KEY=b892c0665f0ada8a4755dae98baa3b133590e11dae3bcc1f9d769d67f16c3835
if [ "$s3" = garage ]; then
  g=$work/garage; mkdir -p "$g"
  cat > "$g/garage.toml" <<EOF
metadata_dir = "$g/meta"
data_dir = "$g/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$(free_port)"
rpc_secret = "4425f5c26c5e11581d3223904324dcb5b5d5dfb14e5e7f35e38c595424f5f1e6"
[s3_api]
s3_region = "us-east-1"
api_bind_addr = "127.0.0.1:$s3_port"
root_domain = ".s3.garage.localhost"
EOF
  GARAGE_DEFAULT_ACCESS_KEY=$AWS_ACCESS_KEY_ID GARAGE_DEFAULT_SECRET_KEY=$AWS_SECRET_ACCESS_KEY \
    GARAGE_DEFAULT_BUCKET=$bucket RUST_LOG=warn garage -c "$g/garage.toml" server --single-node --default-bucket \
    > "$g/log" 2>&1 &
  pids+=($!)
else
  python3 -m moto.server -H 127.0.0.1 -p "$s3_port" > "$work/moto.log" 2>&1 &
  pids+=($!)
fi
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$s3_port/" && break; sleep 0.2; done
[ "$s3" = moto ] && curl -sf -X PUT "http://127.0.0.1:$s3_port/$bucket" > /dev/null

# ---- replicas -------------------------------------------------------------------------------
h_port=$(free_port) h_pid=""
start_replica() {  # name
  local dir=$work/$1; mkdir -p "$dir/data"
  cat > "$dir/config.toml" <<EOF
listen = "127.0.0.1:$h_port"
data_dir = "$dir/data"
registry_ttl = "10m"

[store]
kind = "s3"
bucket = "$bucket"
endpoint = "http://127.0.0.1:$s3_port"
region = "us-east-1"
allow_http = true

[repos.hexpm]
upstream = "http://127.0.0.1:$o_port"
public_key = "$keys/pub.pem"
EOF
  stop_pid "$h_pid"
  RUST_LOG="${RUST_LOG:-warn}" "$bin" serve --config "$dir/config.toml" > "$dir/stdout.log" 2>> "$dir/stderr.log" &
  h_pid=$!; pids+=($h_pid)
  wait_http "http://127.0.0.1:$h_port/readyz" $h_pid 60 || { tail -n 20 "$dir/stderr.log"; die "hexmirror did not become ready"; }
  curl -s -o /dev/null "http://127.0.0.1:$h_port/packages/shared_bench_warm_up"
}

# label|path|record to load first ("-": none)
objects=("record ~1 KB|/packages/bench_small|-"
         "tarball ~5 KB|/tarballs/bench_small-1.0.0.tar|/packages/bench_small"
         "tarball ~84 KB|/tarballs/bench_medium-1.0.0.tar|/packages/bench_medium"
         "tarball ~5 MB|/tarballs/bench_large-1.0.0.tar|/packages/bench_large"
         "/versions ~150 KB|/versions|-")

start_replica filler
for o in "${objects[@]}"; do
  IFS='|' read -r _ path _ <<< "$o"
  curl -sf -o /dev/null "http://127.0.0.1:$h_port$path" || die "filling the bucket: $path"
done
sleep 1   # the writes behind the answers

results=$work/results.tsv failures=0
: > "$results"
bad() { echo "  ERROR: $*"; failures=$((failures + 1)); }
fetch() {  # path -> ms; checks status, bytes, x-cache: hit
  local out code t cache
  out=$(curl -s -D "$work/headers" -o "$work/body" -w '%{http_code} %{time_total}' "http://127.0.0.1:$h_port$1")
  code=${out%% *} t=${out#* }
  cache=$(tr -d '\r' < "$work/headers" | awk -F': ' 'tolower($1) == "x-cache" { print $2 }')
  [ "$code" = 200 ] && [ "$(sha256sum < "$work/body" | cut -d' ' -f1)" = "$(obj_sha "$1")" ] || bad "$1: status $code or wrong bytes"
  [ "$cache" = hit ] || bad "$1: x-cache '${cache:-absent}', not hit"
  python3 -c "print(f'{$t * 1000:.3f}')"
}

echo "hexmirror shared-tier benchmark: $bin, bucket on $s3 (127.0.0.1:$s3_port)"
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg) ($(nproc) CPUs)"
for r in $(seq "$rounds"); do
  for o in "${objects[@]}"; do
    IFS='|' read -r label path record <<< "$o"
    start_replica reader
    [ "$record" = - ] || curl -sf -o /dev/null "http://127.0.0.1:$h_port$record" || bad "record $record"
    shared=$(fetch "$path"); memory=$(fetch "$path")
    printf '%s\tshared\t%s\n%s\tmemory\t%s\n' "$label" "$shared" "$label" "$memory" >> "$results"
    printf '  %2d %-20s shared %8s ms   memory %8s ms\n' "$r" "$label" "$shared" "$memory"
  done
done
stop_pid "$h_pid"

python3 - "$results" "$rounds" "$s3" <<'PY'
import collections, math, sys
path, rounds, s3 = sys.argv[1], int(sys.argv[2]), sys.argv[3]
ms, labels = collections.defaultdict(list), []
for line in open(path):
    label, tier, value = line.rstrip('\n').split('\t')
    ms[(label, tier)].append(float(value))
    if label not in labels:
        labels.append(label)
def pct(xs, p):
    xs = sorted(xs)
    return xs[max(0, math.ceil(p / 100 * len(xs)) - 1)]
print()
print(f'### Hit from the shared tier ({s3}) against a hit from memory ({rounds} round(s); curl time_total, ms)')
print()
print('| object | memory median | memory p90 | shared median | shared p90 | ratio (median) |')
print('|---|---:|---:|---:|---:|---:|')
for label in labels:
    m, s = ms[(label, 'memory')], ms[(label, 'shared')]
    print(f'| {label} | {pct(m, 50):.2f} | {pct(m, 90):.2f} | {pct(s, 50):.2f} | {pct(s, 90):.2f} | {pct(s, 50) / pct(m, 50):.1f}x |')
PY
echo
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
if [ "$failures" -gt 0 ]; then echo "BENCHMARK FAILED: $failures check(s) failed"; exit 1; fi
echo "every answer was a 200 hit with the exact expected bytes"
