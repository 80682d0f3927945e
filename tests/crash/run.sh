#!/usr/bin/env bash
# Crash safety: kill -9 hexmirror while it writes its store, again and again, and check that
# nothing it left behind is ever damaged or served wrong.
#
#   bash tests/crash/run.sh              50 rounds (about 3 minutes)
#   ROUNDS=10 bash tests/crash/run.sh    quick mode (CI; well under a minute)
#
# Env: ROUNDS (50), MAX_DELAY_MS (kill delays are 0..MAX_DELAY_MS; default: per writer, 1.2 x
#      its time for a complete run measured at set-up, at least 300), SEED (seed of the
#      random delays and store resets; printed, so a failing run can be repeated),
#      HEXMIRROR_BIN (skip `cargo build`), KEEP=1 (keep the scratch dir with every round's logs).
# Needs: cargo (unless HEXMIRROR_BIN), python3, curl, sha256sum. Everything listens on 127.0.0.1.
#
# Set-up: an upstream (`python3 -m http.server`, which sends Last-Modified but no ETag) serving
# tests/fixtures/demo-repo/hexpm, and a bundle exported once from a complete store.
#
# Each round runs one writer against a data directory, rotating among
#   sync    `hexmirror sync --all --retired` (names, versions, 3 records, 6 tarballs),
#   serve   `hexmirror serve` with 11 concurrent curl fetches (registry_ttl = 1s, so records
#           are revalidated and rewritten too); their 200 bodies are checked as well. serve
#           answers before its disk write lands (the write runs behind the answer), so a kill
#           may lose entries it answered, and must never leave one damaged,
#   import  `hexmirror import BUNDLE`,
# and kills it with SIGKILL after a random delay (for serve: counted from its first /healthz
# answer) spanning the writer's whole run, as timed once at set-up on an empty store.
# The summary counts how many kills landed before anything was stored, while the store was
# changing, and after the writer had finished.
# Half of the rounds start from an empty data directory, the others from what the previous
# round left (so the start-up sweep of a crashed store is exercised too) minus one package,
# purged with `hexmirror cache purge`, so that the writer has something left to write. Then:
#   1. `hexmirror verify` must not report a damaged entry, and no missing one but those of a
#      package purged since the last completed sync or import: sync and import record their
#      selection only after everything selected is stored, so a kill never leaves a selected
#      entry missing. Any other reason for a non-zero exit is a failure too.
#   2. a fresh `hexmirror serve --offline` on the same store must start, and every object
#      it answers with 200 must be byte-identical to the fixture (sha256); 404 is the only
#      other answer allowed (an object the killed writer never completed).
# The last line is "N passed, M failed"; the exit status is non-zero if any round failed.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/../lib/harness.sh" crash   # root, harness_start, die, need_hexmirror, free_port, wait_http
on_die() { echo "0 passed, 1 failed"; }
fixtures=$root/tests/fixtures/demo-repo
rounds=${ROUNDS:-50}
seed=${SEED:-$(( $$ + $(date +%s) ))}
RANDOM=$seed

if tool=$(missing_tool python3 curl sha256sum); then die "$tool not found"; fi

harness_start
cleanup_signal=KILL
need_hexmirror --bin hexmirror   # a debug build

# ---- the objects and their fixture digests ------------------------------------------------
paths=(/names /versions /packages/hexdemo_base /packages/hexdemo_mid /packages/hexdemo_top)
for f in "$fixtures"/hexpm/tarballs/*.tar; do paths+=("/tarballs/$(basename "$f")"); done
declare -A want
for p in "${paths[@]}"; do want[$p]=$(sha256sum < "$fixtures/hexpm$p" | cut -d' ' -f1); done

# ---- the upstream -------------------------------------------------------------------------
up_port=$(free_port)
python3 -m http.server "$up_port" --bind 127.0.0.1 --directory "$fixtures/hexpm" > "$work/upstream.log" 2>&1 &
up_pid=$!; pids+=("$up_pid")
wait_http "http://127.0.0.1:$up_port/names" "$up_pid" 5 || die "the upstream did not start"

write_config() {  # file data_dir listen_port
  cat > "$1" <<EOF
listen = "127.0.0.1:$3"
data_dir = "$2"
registry_ttl = "1s"
connect_timeout = "2s"
read_timeout = "3s"
transfer_timeout = "10s"
shutdown_grace = "2s"
[repos.hexpm]
upstream = "http://127.0.0.1:$up_port"
public_key = "$fixtures/keys/pub.pem"
EOF
}

# ---- the bundle, exported once from a complete store --------------------------------------
write_config "$work/source.toml" "$work/source" "$(free_port)"
"$bin" --config "$work/source.toml" sync --all --retired > "$work/source-sync.log" 2>&1 \
  || { tail -n 20 "$work/source-sync.log"; die "the source sync failed"; }
"$bin" --config "$work/source.toml" export --out "$work/bundle.hxb" > "$work/export.log" 2>&1 \
  || { tail -n 20 "$work/export.log"; die "the export failed"; }

# ---- how long each writer takes on an empty store (the range of kill delays) --------------
now_ms() { date +%s%3N; }
declare -A max_delay
t0=$(now_ms)
write_config "$work/timing.toml" "$work/timing-sync" "$(free_port)"
"$bin" --config "$work/timing.toml" sync --all --retired > /dev/null 2>&1 || die "the timing sync failed"
max_delay[sync]=$(( ($(now_ms) - t0) * 12 / 10 ))
t0=$(now_ms)
write_config "$work/timing.toml" "$work/timing-import" "$(free_port)"
"$bin" --config "$work/timing.toml" import "$work/bundle.hxb" > /dev/null 2>&1 || die "the timing import failed"
max_delay[import]=$(( ($(now_ms) - t0) * 12 / 10 ))
timing_port=$(free_port)
write_config "$work/timing.toml" "$work/timing-serve" "$timing_port"
"$bin" --config "$work/timing.toml" serve > /dev/null 2>&1 &
timing_pid=$!; pids+=("$timing_pid")
wait_http "http://127.0.0.1:$timing_port/healthz" "$timing_pid" 10 || die "the timing serve did not start"
t0=$(now_ms)
for p in "${paths[@]}"; do curl -s -o /dev/null "http://127.0.0.1:$timing_port$p" & done
wait_fetches() { local j; for j in $(jobs -p); do [ "$j" = "$timing_pid" ] || [ "$j" = "$up_pid" ] || wait "$j"; done; }
wait_fetches
max_delay[serve]=$(( ($(now_ms) - t0) * 12 / 10 ))
stop_pid "$timing_pid"
for k in sync import serve; do
  if [ -n "${MAX_DELAY_MS:-}" ]; then max_delay[$k]=$MAX_DELAY_MS
  elif [ "${max_delay[$k]}" -lt 300 ]; then max_delay[$k]=300; fi
done

# ---- rounds -------------------------------------------------------------------------------
echo "crash: $rounds rounds, SEED=$seed, kill delays up to ${max_delay[sync]} ms (sync)," \
  "${max_delay[serve]} ms (serve), ${max_delay[import]} ms (import)"
data=$work/data
passed=0 failed=0
failures=()
kinds=(sync serve import)
purged_since=""
before_write=0 mid_write=0 after_finish=0 held=0
for round in $(seq 1 "$rounds"); do
  kind=${kinds[$(( (round - 1) % 3 ))]}
  dir=$work/round-$round
  mkdir -p "$dir"
  start="continued"
  if [ $(( RANDOM % 2 )) -eq 0 ] || [ ! -d "$data" ]; then
    rm -rf "$data"; start="empty"; prev_intact=0; purged_since=""
  fi
  port=$(free_port)
  write_config "$dir/hexmirror.toml" "$data" "$port"
  cfg=$dir/hexmirror.toml
  if [ "$start" = continued ]; then
    victim=$(printf 'hexdemo_%s' "$(echo base mid top | cut -d' ' -f$(( RANDOM % 3 + 1 )))")
    # A package the killed writer never stored is "nothing stored" (exit 1), not a problem.
    "$bin" --config "$cfg" cache purge "$victim" > "$dir/purge.log" 2>&1 \
      || grep -q "nothing stored for package $victim" "$dir/purge.log" \
      || problems_purge="cache purge $victim failed: $(tail -n 1 "$dir/purge.log")"
    removed=$(sed -n 's/^purge: \([0-9]*\) entries removed$/\1/p' "$dir/purge.log")
    prev_intact=$(( prev_intact - ${removed:-0} ))
    purged_since="$purged_since $victim"
    start="continued, $victim purged,"
  fi
  delay=$(( RANDOM % (max_delay[$kind] + 1) ))
  problems=()
  [ -z "${problems_purge:-}" ] || problems+=("$problems_purge")
  problems_purge=

  case $kind in
    sync) "$bin" --config "$cfg" sync --all --retired > "$dir/writer.log" 2>&1 & ;;
    import) "$bin" --config "$cfg" import "$work/bundle.hxb" > "$dir/writer.log" 2>&1 & ;;
    serve) "$bin" --config "$cfg" serve > "$dir/writer.log" 2>&1 & ;;
  esac
  writer=$!; pids+=("$writer")
  fetchers=()
  if [ "$kind" = serve ]; then
    if wait_http "http://127.0.0.1:$port/healthz" "$writer" 10; then
      for i in "${!paths[@]}"; do
        curl -s -m 5 -o "$dir/live-$i" -w '%{http_code}' "http://127.0.0.1:$port${paths[$i]}" \
          > "$dir/live-$i.status" 2>/dev/null &
        fetchers+=($!)
      done
    else
      problems+=("serve did not start")
    fi
  fi
  sleep "$(printf '%d.%03d' $(( delay / 1000 )) $(( delay % 1000 )))"
  kill -9 "$writer" 2>/dev/null
  wait "$writer" 2>/dev/null
  writer_status=$?
  forget "$writer"
  for f in "${fetchers[@]}"; do wait "$f" 2>/dev/null; done
  finished=$([ "$writer_status" -eq 137 ] && echo "killed" || echo "finished ($writer_status)")
  # A completed sync or import selects (and stores) everything again.
  if [ "$writer_status" -eq 0 ] && [ "$kind" != serve ]; then purged_since=""; fi
  # Bytes a live server answered before it was killed.
  if [ "$kind" = serve ]; then
    for i in "${!paths[@]}"; do
      code=$(cat "$dir/live-$i.status" 2>/dev/null)
      if [ "$code" = 200 ] && [ "$(sha256sum < "$dir/live-$i" | cut -d' ' -f1)" != "${want[${paths[$i]}]}" ]; then
        problems+=("live serve answered wrong bytes for ${paths[$i]}")
      fi
    done
  fi

  # 1. verify
  "$bin" --config "$cfg" verify > "$dir/verify.out" 2> "$dir/verify.log"
  verify_status=$?
  damaged=$(grep -c '^  damaged: ' "$dir/verify.out")
  missing=$(grep -c '^  missing: ' "$dir/verify.out")
  intact=$(sed -n 's/^verify: .* entries checked, \([0-9]*\) intact$/\1/p' "$dir/verify.out")
  [ "$damaged" -eq 0 ] || problems+=("verify reports $damaged damaged: $(grep '^  damaged: ' "$dir/verify.out" | head -n 3 | tr '\n' ' ')")
  # Missing is expected only for a package purged since the last completed sync or import.
  unexpected=0
  while read -r key; do
    name=$(printf '%s' "$key" | sed -n 's#.*/\(packages\|tarballs\)/\(hexdemo_[a-z]*\).*#\2#p')
    case " $purged_since " in
      *" $name "*) ;;
      *) unexpected=$((unexpected + 1)); problems+=("verify reports a selected entry missing: $key") ;;
    esac
  done < <(sed -n 's/^  missing: //p' "$dir/verify.out")
  if [ "$verify_status" -ne 0 ] && [ "$damaged" -eq 0 ] && [ "$missing" -eq 0 ]; then
    problems+=("verify exited $verify_status: $(tail -n 2 "$dir/verify.out" "$dir/verify.log" | tr '\n' ' ')")
  fi

  # 2. serve --offline: every 200 is the fixture's bytes
  port=$(free_port)
  write_config "$dir/offline.toml" "$data" "$port"
  "$bin" --config "$dir/offline.toml" serve --offline > "$dir/offline.log" 2>&1 &
  offline=$!; pids+=("$offline")
  served=0
  if wait_http "http://127.0.0.1:$port/healthz" "$offline" 10; then
    for p in "${paths[@]}"; do
      code=$(curl -s -m 5 -o "$dir/body" -w '%{http_code}' "http://127.0.0.1:$port$p")
      case $code in
        200)
          if [ "$(sha256sum < "$dir/body" | cut -d' ' -f1)" = "${want[$p]}" ]; then served=$((served + 1))
          else problems+=("offline serve answered wrong bytes for $p"); fi ;;
        404) ;;
        *) problems+=("offline serve answered $code for $p: $(head -c 200 "$dir/body")") ;;
      esac
    done
  else
    problems+=("serve --offline did not start: $(tail -n 3 "$dir/offline.log" | tr '\n' ' ')")
  fi
  stop_pid "$offline"

  # Where the kill landed, as far as the store tells.
  if [ "$writer_status" -ne 137 ]; then after_finish=$((after_finish + 1))
  elif [ "${intact:-0}" = "${prev_intact:-0}" ] && [ "${intact:-0}" -eq 0 ]; then before_write=$((before_write + 1))
  elif [ "${intact:-0}" = "${prev_intact:-0}" ]; then held=$((held + 1))
  else mid_write=$((mid_write + 1)); fi
  prev_intact=${intact:-0}

  summary=$(printf 'round %2d %-6s %-38s store, %s at %3d ms: verify %s intact, %2d/%d served offline' \
    "$round" "$kind" "$start" "$finished" "$delay" "${intact:-?}" "$served" "${#paths[@]}")
  if [ ${#problems[@]} -eq 0 ]; then
    passed=$((passed + 1)); echo "PASS $summary"
  else
    failed=$((failed + 1)); failures+=("$round")
    echo "FAIL $summary"
    for p in "${problems[@]}"; do echo "     $p"; done
    KEEP=1
  fi
done

echo "kills: $before_write before anything was stored, $mid_write while the store changed," \
  "$held with the store unchanged (already complete, or only revalidations), $after_finish after the writer finished"
[ ${#failures[@]} -eq 0 ] || echo "failed rounds: ${failures[*]} (SEED=$seed; logs kept)"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
