#!/usr/bin/env bash
# Time to ready and idle memory of hexmirror with a populated store (a sidecar's concerns).
#   bench/startup.sh [ENTRIES=10000] [ROUNDS=5]
# Builds the release binary, fills a scratch data directory with ENTRIES synthetic entries,
# then ROUNDS times: starts `hexmirror serve`, measures the time until /readyz answers 200, and
# the resident memory (VmRSS) once idle. Prints medians. Listens on 127.0.0.1 only.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/../tests/lib/harness.sh" startup   # root, harness_start, stop_pid, free_port
cd "$root"
entries=${1:-10000}
rounds=${2:-5}
cargo build --release --quiet --bin hexmirror --example populate_store
harness_start
target/release/examples/populate_store "$work/data" "$entries"
port=$(free_port)
cat > "$work/hexmirror.toml" <<CONF
listen = "127.0.0.1:$port"
data_dir = "$work/data"
memory_cache_bytes = "32MiB"
CONF
ready_ms=() rss_kb=()
for _ in $(seq "$rounds"); do
  start=$(date +%s%N)
  env -u HEXMIRROR_BIN RUST_LOG=warn target/release/hexmirror --config "$work/hexmirror.toml" serve &
  pid=$!; pids+=("$pid")
  until curl -fs -o /dev/null "http://127.0.0.1:$port/readyz"; do sleep 0.005; done
  ready_ms+=($(( ($(date +%s%N) - start) / 1000000 )))
  sleep 1
  rss_kb+=($(awk '/VmRSS/ {print $2}' "/proc/$pid/status"))
  stop_pid "$pid"
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo "entries: $entries; rounds: $rounds"
echo "time to ready (ms), median: $(median "${ready_ms[@]}")  [all: ${ready_ms[*]}]"
echo "idle RSS (MiB), median: $(( $(median "${rss_kb[@]}") / 1024 ))  [KiB: ${rss_kb[*]}]"
