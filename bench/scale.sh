#!/usr/bin/env bash
# Scale: a whole repository through sync, export, import, verify and an offline start, with
# wall time, throughput and peak RSS at each size.
#
#   bench/scale.sh                  SIZES="small 20k 1g" (~16 min on 2 busy CPUs)
#   SIZES=small bench/scale.sh      one size
#   SIZES=300x5x65536 bench/scale.sh   PACKAGESxRELEASESxTARBALL_BYTES
#   QUICK=1 bench/scale.sh          every size shrunk (a smoke run of a couple of minutes)
#
# Sizes: small = 1,000 packages of one release, 16 KiB tarballs (16 MiB);
#        20k   = 2,000 packages of 10 releases, 16 KiB tarballs (20,000 releases, 320 MiB);
#        1g    = 1,000 packages of one release, 1 MiB tarballs (1 GiB).
# QUICK=1: small 200x1x16384, 20k 200x10x16384, 1g 64x1x1048576.
#
# Env: HEXMIRROR_BIN (skip `cargo build --release`), UPSTREAM_DELAY_MS (50: every upstream
#      answer waits this long), MEMORY_TIER_MIB (256: `memory_cache_bytes`, written into the
#      config explicitly), SYNC_CONCURRENCY (unset: sync's default), VOLUME_MIB (volume size for
#      `export --max-size`; default a quarter of the bundle, at least 1), DATA_ROOT (where the
#      repositories, stores and bundles go: default the scratch dir, under $TMPDIR or /tmp),
#      KEEP=1 (keep the scratch dir), RUST_LOG (default warn).
#
# Per size: make_scale_repo.escript writes a signed repository (a fresh RSA key from openssl),
# scale_upstream.py serves it on 127.0.0.1 with UPSTREAM_DELAY_MS before every answer, and these
# steps run one after another, each a separate process timed by /usr/bin/time -v (wall time,
# "Maximum resident set size"); a server's peak is its VmHWM from /proc/PID/status:
#
#   sync --all          into an empty store A (no server); time to the `planned:` line too
#   re-sync             sync --all again over A, registry_ttl (1 s) past: with the default
#                       stale_while_revalidate the records are answered from the store at once
#                       and revalidated in the background
#   re-sync, swr 0      the same with stale_while_revalidate = "0": each record waits for its
#                       revalidation (a 304)
#   verify              verify A
#   export              A into one bundle
#   export volumes      export --max-size VOLUME_MIB (when this build has --max-size)
#   import              the bundle into an empty store B (no server)
#   offline start       serve --offline on B: time until /readyz answers, then /names and one
#                       tarball fetched and compared with the repository's bytes
#   import via server   serve on an empty store C; `import` hands the bundle to it
#   export via server   serve restarted on C; `export` through it; the bundle must be
#                       byte-identical to the one exported from A
#
# Targets checked (printed pass/FAIL, never enforced by the exit status): every process's peak
# RSS within MEMORY_TIER_MIB + 128 MiB; both re-syncs under 100 MiB; per 1,000 package records,
# planned in under 10 s; for `small` (1,000 single-release packages) sync --all under 30 s.
# Time targets are judged only at full size with UPSTREAM_DELAY_MS=50. Exit status non-zero if
# a step failed.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/../tests/lib/harness.sh" scale   # root, harness_start, stop_pid, die, need_hexmirror, free_port, wait_http

sizes=${SIZES:-small 20k 1g}
quick=${QUICK:-0}
delay_ms=${UPSTREAM_DELAY_MS:-50}
tier_mib=${MEMORY_TIER_MIB:-256}
if tool=$(missing_tool escript rebar3 openssl python3 curl sha256sum /usr/bin/time); then
  echo "scale: $tool not found (apt-get install -y --no-install-recommends erlang-nox erlang-dev rebar3 openssl curl time)" >&2
  exit 2
fi

harness_start
need_hexmirror --release
unset_hexmirror_env
data_root=${DATA_ROOT:-$work}
mkdir -p "$data_root"

results=$work/results.tsv   # size step wall_s rss_kib releases bytes status
notes=$work/notes.tsv       # size step key value
: > "$results"; : > "$notes"
failures=0
bad() { echo "  ERROR: $*"; failures=$((failures + 1)); }

# Prefixes each line of stdin with the seconds since $1 (epoch seconds).
cat > "$work/stamp.py" <<'PY'
import sys, time
t0 = float(sys.argv[1])
out = open(sys.argv[2], 'w')
while True:
    line = sys.stdin.readline()
    if not line:
        break
    out.write(f'{time.time() - t0:.3f} {line}')
PY
# Polls URL every 10 ms until it answers 200; prints the seconds since $2 (epoch seconds).
cat > "$work/ready.py" <<'PY'
import sys, time, urllib.request, os
url, t0, pid, limit = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
while time.time() - t0 < limit:
    try:
        if urllib.request.urlopen(url, timeout=1).status == 200:
            print(f'{time.time() - t0:.3f}')
            sys.exit(0)
    except Exception:
        pass
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit(1)
    time.sleep(0.01)
sys.exit(1)
PY

size_spec() {  # NAME -> "PACKAGES RELEASES TARBALL_BYTES"
  case "$1:$quick" in
    small:1) echo "200 1 16384" ;;
    20k:1) echo "200 10 16384" ;;
    1g:1) echo "64 1 1048576" ;;
    small:*) echo "1000 1 16384" ;;
    20k:*) echo "2000 10 16384" ;;
    1g:*) echo "1000 1 1048576" ;;
    *x*x*) echo "${1//x/ }" ;;
    *) die "unknown size $1 (small, 20k, 1g or PACKAGESxRELEASESxTARBALL_BYTES)" ;;
  esac
}

vm_hwm_kib() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
now() { date +%s.%N; }
secs_since() { python3 -c "import sys; print(f'{$(now) - $1:.3f}')"; }
field() {  # FILE "label" -> value of a /usr/bin/time -v line
  awk -F': ' -v l="$2" 'index($0, l) { print $NF }' "$1" | tr -d ' \t'
}
wall_of() {  # /usr/bin/time -v file -> seconds
  field "$1" "Elapsed (wall clock) time" | awk -F: '{ s = 0; for (i = 1; i <= NF; i++) s = s * 60 + $i; print s }'
}
upstream_requests() { sleep 0.5; wc -l < "$up_log"; }   # after answers to clients gone settle

# measure SIZE STEP RELEASES BYTES -- CMD...: runs CMD under /usr/bin/time -v, its stderr
# timestamped into $d/STEP.err and stdout into $d/STEP.out; appends a results row.
measure() {
  local size=$1 step=$2 releases=$3 bytes=$4 t0 status
  shift 5
  t0=$(now)
  { /usr/bin/time -v -o "$d/$step.time" "$@" 2>&1 > "$d/$step.out"; echo $? > "$d/$step.status"; } \
    | python3 "$work/stamp.py" "$t0" "$d/$step.err"
  status=$(cat "$d/$step.status")
  if [ "$status" != 0 ]; then
    bad "$size $step: exit status $status"; tail -n 5 "$d/$step.err" | sed 's/^/    /'; tail -n 5 "$d/$step.out" | sed 's/^/    /'
  fi
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$size" "$step" "$(wall_of "$d/$step.time")" \
    "$(field "$d/$step.time" "Maximum resident set size")" "$releases" "$bytes" "$status" >> "$results"
  printf '  %-6s %-18s %8ss  peak RSS %6s MiB  status %s\n' "$size" "$step" "$(wall_of "$d/$step.time")" \
    "$(( $(field "$d/$step.time" "Maximum resident set size") / 1024 ))" "$status"
}
row() {  # SIZE STEP WALL RSS_KIB RELEASES BYTES STATUS: a row measured otherwise
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >> "$results"
  printf '  %-6s %-18s %8ss  peak RSS %6s MiB  status %s\n' "$1" "$2" "$3" "$(( ${4:-0} / 1024 ))" "$7"
}
note() { printf '%s\t%s\t%s\t%s\n' "$@" >> "$notes"; }   # SIZE STEP KEY VALUE

config() {  # FILE DATA_DIR PORT [LINE]
  cat > "$1" <<EOF
listen = "127.0.0.1:$3"
data_dir = "$2"
memory_cache_bytes = "${tier_mib}MiB"
registry_ttl = "1s"
${4:-}

[repos.hexpm]
upstream = "http://127.0.0.1:$up_port"
public_key = "$d/pub.pem"
EOF
}

s_pid=""
start_server() {  # CONFIG LOG [ARGS...]: starts serve, sets s_pid and s_ready (seconds to /readyz)
  local cfg=$1 log=$2 port t0
  shift 2
  port=$(awk -F'"' '/^listen/ { split($2, a, ":"); print a[2] }' "$cfg")
  t0=$(now)
  RUST_LOG="${RUST_LOG:-warn}" "$bin" serve --config "$cfg" "$@" > "$log.out" 2> "$log.err" &
  s_pid=$!; pids+=($s_pid)
  s_ready=$(python3 "$work/ready.py" "http://127.0.0.1:$port/readyz" "$t0" "$s_pid" 120) \
    || { tail -n 20 "$log.err"; die "hexmirror serve did not become ready"; }
  s_url=http://127.0.0.1:$port
}

run_size() {
  local name=$1 packages releases tarball_bytes spec total_releases tar_bytes gen_s before after
  spec=$(size_spec "$name") || exit 1
  read -r packages releases tarball_bytes <<< "$spec"
  total_releases=$((packages * releases))
  d=$data_root/scale-$name
  rm -rf "$d"; mkdir -p "$d"
  echo
  echo "== $name: $packages packages x $releases releases, tarballs of $tarball_bytes bytes; load average $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "$name start $(cut -d' ' -f1-3 /proc/loadavg)" >> "$work/load"
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$d/priv.pem" 2>/dev/null \
    && openssl pkey -in "$d/priv.pem" -pubout -out "$d/pub.pem" || die "openssl could not make a key"
  local t0; t0=$(now)
  escript "$here/make_scale_repo.escript" "$d/repo" "$d/priv.pem" "$d/pub.pem" "$packages" "$releases" "$tarball_bytes" \
    > "$d/gen.out" || die "make_scale_repo.escript failed"
  gen_s=$(secs_since "$t0")
  tar_bytes=$(sed -n 's/.*tarball_bytes=\([0-9]*\).*/\1/p' "$d/gen.out")
  echo "  generated in ${gen_s}s: $(cat "$d/gen.out")"
  printf '%s\tgenerate\t%s\t\t%s\t%s\t0\n' "$name" "$gen_s" "$total_releases" "$tar_bytes" >> "$results"
  note "$name" generate packages "$packages"; note "$name" generate per_package "$releases"
  note "$name" generate tarball "$tarball_bytes"

  up_port=$(free_port) up_log=$d/upstream.log
  : > "$up_log"
  python3 "$here/scale_upstream.py" "$up_port" "$d/repo" "$delay_ms" "$up_log" 2> "$d/upstream.err" &
  local up_pid=$!; pids+=($up_pid)
  wait_http "http://127.0.0.1:$up_port/names" $up_pid 10 || die "upstream did not start"
  : > "$up_log"

  local cfg_a=$d/a.toml cfg_a0=$d/a0.toml cfg_b=$d/b.toml cfg_c=$d/c.toml sync_args=(--all)
  config "$cfg_a" "$d/store-a" "$(free_port)"
  config "$cfg_a0" "$d/store-a" "$(free_port)" 'stale_while_revalidate = "0"'
  config "$cfg_b" "$d/store-b" "$(free_port)"
  config "$cfg_c" "$d/store-c" "$(free_port)"
  [ -n "${SYNC_CONCURRENCY:-}" ] && sync_args+=(--concurrency "$SYNC_CONCURRENCY")

  # -- sync --all, then again ----------------------------------------------------------------
  before=$(upstream_requests)
  measure "$name" sync "$total_releases" "$tar_bytes" -- "$bin" sync --config "$cfg_a" "${sync_args[@]}"
  after=$(upstream_requests)
  local planned
  planned=$(awk '$2 == "planned:" { print $1; exit }' "$d/sync.err")
  note "$name" sync planned_s "$planned"; note "$name" sync upstream_requests "$((after - before))"
  note "$name" sync summary "$(tail -n 1 "$d/sync.out")"
  echo "    planned after ${planned:-?}s; $(tail -n 1 "$d/sync.out"); upstream requests: $((after - before))"

  sleep 1.2   # past registry_ttl: the re-sync revalidates every record
  before=$(upstream_requests)
  local n304_before n304_after
  n304_before=$(grep -c '^304 ' "$up_log")
  measure "$name" re-sync "$total_releases" "$tar_bytes" -- "$bin" sync --config "$cfg_a" "${sync_args[@]}"
  after=$(upstream_requests); n304_after=$(grep -c '^304 ' "$up_log")
  note "$name" re-sync planned_s "$(awk '$2 == "planned:" { print $1; exit }' "$d/re-sync.err")"
  note "$name" re-sync upstream_requests "$((after - before))"; note "$name" re-sync upstream_304 "$((n304_after - n304_before))"
  note "$name" re-sync summary "$(tail -n 1 "$d/re-sync.out")"
  echo "    $(tail -n 1 "$d/re-sync.out"); upstream requests: $((after - before)), of which 304: $((n304_after - n304_before))"
  # The same with stale_while_revalidate = "0": every record waits for its revalidation.
  sleep 1.2
  before=$(upstream_requests); n304_before=$(grep -c '^304 ' "$up_log")
  measure "$name" "re-sync, swr 0" "$total_releases" "$tar_bytes" -- "$bin" sync --config "$cfg_a0" "${sync_args[@]}"
  after=$(upstream_requests); n304_after=$(grep -c '^304 ' "$up_log")
  note "$name" "re-sync, swr 0" planned_s "$(awk '$2 == "planned:" { print $1; exit }' "$d/re-sync, swr 0.err")"
  note "$name" "re-sync, swr 0" upstream_requests "$((after - before))"
  note "$name" "re-sync, swr 0" upstream_304 "$((n304_after - n304_before))"
  note "$name" "re-sync, swr 0" summary "$(tail -n 1 "$d/re-sync, swr 0.out")"
  echo "    $(tail -n 1 "$d/re-sync, swr 0.out"); upstream requests: $((after - before)), of which 304: $((n304_after - n304_before))"

  # -- verify, export, export in volumes ------------------------------------------------------
  measure "$name" verify "$total_releases" "$tar_bytes" -- "$bin" verify --config "$cfg_a"
  grep '^verify:' "$d/verify.out" | sed 's/^/    /'
  mkdir -p "$d/bundle"
  measure "$name" export "$total_releases" "$tar_bytes" -- "$bin" export --config "$cfg_a" --out "$d/bundle/all.hxb"
  local bundle_bytes=0
  [ -f "$d/bundle/all.hxb" ] && bundle_bytes=$(stat -c %s "$d/bundle/all.hxb")
  note "$name" export bundle_bytes "$bundle_bytes"
  echo "    bundle: $bundle_bytes bytes"
  if "$bin" export --help 2>/dev/null | grep -q -- '--max-size'; then
    local vol_mib=${VOLUME_MIB:-$(( bundle_bytes / 4 / 1048576 ))}
    [ "$vol_mib" -ge 1 ] || vol_mib=1
    mkdir -p "$d/volumes"
    note "$name" "export volumes" volume_mib "$vol_mib"
    measure "$name" "export volumes" "$total_releases" "$tar_bytes" -- \
      "$bin" export --config "$cfg_a" --out "$d/volumes/all.hxb" --max-size "${vol_mib}MiB"
    echo "    volumes: $(ls "$d/volumes" | grep -vc '\.sha256$') files: $(ls "$d/volumes" | tr '\n' ' ')"
    note "$name" "export volumes" files "$(ls "$d/volumes" | grep -vc '\.sha256$')"
    rm -rf "$d/volumes"
  else
    printf '%s\t%s\t\t\t%s\t%s\t-\n' "$name" "export volumes" "$total_releases" "$tar_bytes" >> "$results"
    note "$name" "export volumes" unsupported 1
    printf '  %-6s %-18s not supported by this build (export --help has no --max-size)\n' "$name" "export volumes"
  fi

  # -- import into an empty store, then an offline start on it ------------------------------
  measure "$name" import "$total_releases" "$tar_bytes" -- "$bin" import --config "$cfg_b" "$d/bundle/all.hxb"
  grep '^import:' "$d/import.out" | sed 's/^/    /'
  start_server "$cfg_b" "$d/offline" --offline
  local ok=0 t
  curl -sf -o "$d/names.got" "$s_url/names" && cmp -s "$d/names.got" "$d/repo/names" || { bad "$name offline: /names"; ok=1; }
  t=scale_00001-1.0.0.tar
  curl -sf -o "$d/tar.got" "$s_url/tarballs/$t" && cmp -s "$d/tar.got" "$d/repo/tarballs/$t" || { bad "$name offline: /tarballs/$t"; ok=1; }
  row "$name" "offline start" "$s_ready" "$(vm_hwm_kib "$s_pid")" "$total_releases" "$tar_bytes" "$ok"
  stop_pid "$s_pid"

  # -- import and export through a running server ---------------------------------------------
  start_server "$cfg_c" "$d/server-import"
  local base; base=$(vm_hwm_kib "$s_pid")
  measure "$name" "import via server" "$total_releases" "$tar_bytes" -- "$bin" import --config "$cfg_c" "$d/bundle/all.hxb"
  local server_kib; server_kib=$(vm_hwm_kib "$s_pid")
  note "$name" "import via server" server_rss_kib "$server_kib"; note "$name" "import via server" server_idle_kib "$base"
  echo "    $(grep '^import:' "$d/import via server.out"); server peak RSS $((server_kib / 1024)) MiB (idle $((base / 1024)) MiB)"
  stop_pid "$s_pid"
  start_server "$cfg_c" "$d/server-export"
  base=$(vm_hwm_kib "$s_pid")
  measure "$name" "export via server" "$total_releases" "$tar_bytes" -- "$bin" export --config "$cfg_c" --out "$d/bundle/via-server.hxb"
  server_kib=$(vm_hwm_kib "$s_pid")
  local same=yes
  cmp -s "$d/bundle/all.hxb" "$d/bundle/via-server.hxb" || { same=no; bad "$name: the bundle exported through the server differs from the one exported from store A"; }
  note "$name" "export via server" server_rss_kib "$server_kib"; note "$name" "export via server" server_idle_kib "$base"
  note "$name" "export via server" identical "$same"
  echo "    server peak RSS $((server_kib / 1024)) MiB (idle $((base / 1024)) MiB); identical to the first bundle: $same"
  stop_pid "$s_pid"
  stop_pid "$up_pid"
  echo "$name end $(cut -d' ' -f1-3 /proc/loadavg)" >> "$work/load"
  du -sh "$d" | sed 's/^/  disk used: /'
  [ "${KEEP:-0}" = 1 ] || rm -rf "$d"
}

echo "hexmirror scale benchmark: $bin"
echo "sizes: $sizes; upstream delay ${delay_ms} ms; memory tier ${tier_mib} MiB; $(nproc) CPUs; load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "start $(cut -d' ' -f1-3 /proc/loadavg)" > "$work/load"
for s in $sizes; do run_size "$s"; done
echo "end $(cut -d' ' -f1-3 /proc/loadavg)" >> "$work/load"

python3 "$here/scale_report.py" "$results" "$notes" "$work/load" "$tier_mib" "$quick" "$delay_ms"
echo
if [ "$failures" -gt 0 ]; then echo "BENCHMARK FAILED: $failures check(s) failed"; exit 1; fi
echo "every step exited 0; offline answers and the re-exported bundle matched"
