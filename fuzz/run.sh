#!/usr/bin/env bash
# Fuzzes every target for FUZZ_SECONDS seconds each (default 30), on a scratch copy of the
# committed seed corpus, and fails on any crash, leak, timeout or out-of-memory.
#
#   bash fuzz/run.sh                       # about 4 minutes
#   FUZZ_SECONDS=1800 bash fuzz/run.sh     # the long run
#   FUZZ_TARGETS="route config" bash fuzz/run.sh
#
# Needs only a stable toolchain: cargo-fuzz's nightly flags are enabled with RUSTC_BOOTSTRAP.
set -euo pipefail

cd "$(dirname "$0")"
export RUSTC_BOOTSTRAP=1
seconds=${FUZZ_SECONDS:-30}
read -r -a targets <<<"${FUZZ_TARGETS:-route registry tarball lockfile term requirement config bundle osv policy_rules}"

# Longest input per target: a little above the largest seed that matters for it.
declare -A max_len=(
  [route]=2048
  [registry]=65536
  [tarball]=131072
  [lockfile]=16384
  [term]=16384
  [requirement]=512
  [config]=16384
  [bundle]=65536
  [osv]=16384
  [policy_rules]=512
)

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

echo "== building every target"
cargo fuzz build

scratch=target/fuzz-run
rm -rf "$scratch"
mkdir -p "$scratch"
failed=0
declare -A result execs
for target in "${targets[@]}"; do
  corpus="$scratch/corpus/$target"
  artifacts="$scratch/artifacts/$target"
  log="$scratch/$target.log"
  mkdir -p "$corpus" "$artifacts"
  cp -R "corpus/$target/." "$corpus/"
  # Known crashers are replayed first: a fixed bug must stay fixed.
  regressions=()
  if compgen -G "regressions/$target/*" >/dev/null; then
    regressions=("regressions/$target")
  fi
  echo "== $target: ${seconds}s"
  set +e
  cargo fuzz run "$target" "$corpus" "${regressions[@]}" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -max_len="${max_len[$target]:-65536}" \
    -artifact_prefix="$artifacts/" -print_final_stats=1 >"$log" 2>&1
  status=$?
  set -e
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | tail -1 | grep -o '[0-9]*$' || true)
  if [ -z "$runs" ]; then
    runs=$(grep -o 'Done [0-9]* runs' "$log" | tail -1 | grep -o '[0-9]\+' || true)
  fi
  execs[$target]=${runs:-?}
  found=$(find "$artifacts" -type f | head -1)
  if [ "$status" -ne 0 ] || [ -n "$found" ]; then
    failed=1
    result[$target]="FAILED (exit $status)"
    echo "-- $target failed; last lines of $log:"
    grep -E 'ERROR|panicked|SUMMARY|Test unit written|leak|timeout|out-of-memory' "$log" | tail -20 || true
    tail -5 "$log"
    [ -n "$found" ] && echo "-- reproduce: RUSTC_BOOTSTRAP=1 cargo fuzz run $target fuzz/$found"
  else
    result[$target]=ok
  fi
done

echo
printf '%-12s %14s  %s\n' target executions result
for target in "${targets[@]}"; do
  printf '%-12s %14s  %s\n' "$target" "${execs[$target]}" "${result[$target]}"
done
exit "$failed"
