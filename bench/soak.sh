#!/usr/bin/env bash
# Soak: hexmirror under a steady mixed load for a long time while its upstreams come and go.
#
#   bench/soak.sh                  600 s, writes bench/SOAK.md
#   DURATION=60 bench/soak.sh      a quick look (also writes the report; OUT=- prints it only)
#
# Not for CI: it runs for DURATION seconds and its figures depend on the machine.
# Env: DURATION (600), RATE (target requests/s over all workers, 300), WORKERS (32),
#      FLAP (seconds between upstream state changes, 20), INTERVAL (sampling, 10),
#      WARMUP (seconds excluded from the RSS verdict, 60), OUT (report path, bench/SOAK.md),
#      HEXMIRROR_BIN (skip `cargo build --release`), KEEP=1 (keep the scratch dir and logs).
# Needs: cargo (unless HEXMIRROR_BIN), python3, curl. Everything listens on 127.0.0.1.
# Parts: this script builds and starts hexmirror; bench/soak.py drives the rest (upstreams,
# flapper, load, sampling, report), with bench/soak_upstream.py as the upstream server.
#
# Set-up: two local upstreams (python3, HTTP/1.1 keep-alive, strong ETags, 304 on a matching
# If-None-Match): the demo repository `hexpm` (public), and the demo organization `acme`
# answering `Cache-Control: private` and only to hexmirror's own key (401 otherwise).
# hexmirror serves hexpm at /, the same upstream under a second configured repository at
# /repos/mirror2/, and acme at /repos/acme/ to holders of an access token; registry_ttl = 3s,
# so records are revalidated all the time.
#
# Load (paced to RATE, keep-alive connections): plain GETs of every object of the three
# repositories, HEADs, conditional GETs with the last ETag seen (304), private GETs with the
# access token and without it (401 expected), GETs of a package that does not exist (404),
# and misses: a package is purged through the admin endpoint (at most every 5 s, while the
# upstreams are up), then fetched again.
# A flapper changes the upstreams' state every FLAP seconds: up, down (killed: connection
# refused), up, hung (SIGSTOP: connections accepted, never answered), up, ...
#
# Every answer is checked: a 200 must carry the fixture's exact bytes (sha256). An error is
# allowed only for an object that is not cached (never fetched, or purged since) while the
# upstreams are down or hung (plus a grace of read_timeout + 1 s after they come back);
# any other error, and any wrong byte, is a violation. Every INTERVAL seconds: requests by
# status class and x-cache (deltas of /metrics), client-side p50/p99 latency, hexmirror's
# VmRSS. The report (the per-interval table, totals, errors by kind, RSS after warm-up and
# the machine: nproc, free -g, kernel, CPU) goes to OUT. Exit status non-zero on a violation.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/../tests/lib/harness.sh" soak   # root, harness_start, die, need_hexmirror, free_port, wait_http
fixtures=$root/tests/fixtures/demo-repo
duration=${DURATION:-600}
out=${OUT:-$here/SOAK.md}

if tool=$(missing_tool python3 curl); then echo "soak: $tool not found" >&2; exit 2; fi

harness_start
if [ -n "${HEXMIRROR_BIN:-}" ]; then
  build="given binary"
else
  rev=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
  [ -z "$(git -C "$root" status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null)" ] || rev="$rev with local changes"
  build="cargo build --release of commit $rev"
fi
need_hexmirror --release --bin hexmirror

hexpm_port=$(free_port) acme_port=$(free_port) port=$(free_port)

# ---- hexmirror ----------------------------------------------------------------------------
data=$work/data
cat > "$work/hexmirror.toml" <<EOF
listen = "127.0.0.1:$port"
data_dir = "$data"
registry_ttl = "3s"
negative_ttl = "2s"
connect_timeout = "1s"
read_timeout = "2s"
transfer_timeout = "5s"
shutdown_grace = "5s"
[repos.hexpm]
upstream = "http://127.0.0.1:$hexpm_port"
public_key = "$fixtures/keys/pub.pem"
[repos.mirror2]
upstream = "http://127.0.0.1:$hexpm_port"
public_key = "$fixtures/keys/pub.pem"
repository = "hexpm"
[repos.acme]
upstream = "http://127.0.0.1:$acme_port"
public_key = "$fixtures/keys/pub.pem"
repository = "acme"
auth_key = "soak-upstream-key"
allow_http = true
[repos.acme.access]
tokens = ["soak-client-token"]
EOF
RUST_LOG=${RUST_LOG:-warn} "$bin" --config "$work/hexmirror.toml" serve > "$work/hexmirror.out" 2> "$work/hexmirror.log" &
mirror_pid=$!; pids+=("$mirror_pid")
# Not ready within 10 s is not fatal here (the driver finds out), a dead hexmirror is.
wait_http "http://127.0.0.1:$port/readyz" "$mirror_pid" 10 || kill -0 "$mirror_pid" 2>/dev/null \
  || { tail -n 20 "$work/hexmirror.log"; die "hexmirror did not start"; }

# ---- the driver: upstreams, flapper, load, sampler, report (bench/soak.py) -----------------
python3 "$here/soak.py" "$work" "$fixtures" "$port" "$hexpm_port" "$acme_port" "$mirror_pid" "$duration" "$out" "$build"
status=$?
kill -0 "$mirror_pid" 2>/dev/null || { echo "soak: hexmirror died; its log:"; tail -n 30 "$work/hexmirror.log"; status=1; }
exit $status
