# Shared prologue of the shell harnesses that start servers: tests/e2e/run.sh,
# tests/crash/run.sh, bench/run.sh, bench/soak.sh and bench/startup.sh. Not run on its own:
# each of them sources it first, giving its own name (used in `die` messages and the scratch
# dir's name):
#
#   here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
#   . "$here/../lib/harness.sh" e2e           # from bench/: "$here/../tests/lib/harness.sh"
#
# Sourcing only defines `root` (the repository's top directory) and the functions below; it
# starts nothing and changes no option of the caller (set -e/-u safe).
#
#   missing_tool TOOL...    prints the first TOOL not on PATH (status 0), or nothing (status 1)
#   harness_start           scratch dir $work (mktemp, under $TMPDIR or /tmp), pid list `pids`,
#                           and traps: on exit, every pid in `pids` is killed (SIGTERM, or
#                           $cleanup_signal) and waited for, and $work removed unless KEEP=1
#                           ("scratch dir kept: ..." then); INT and TERM exit with status 130
#   forget PID              takes PID off `pids`
#   stop_pid [PID]          kills PID, waits for it, forgets it (nothing when PID is empty)
#   die MESSAGE             "NAME: MESSAGE" on stderr, then `on_die` if the caller defines
#                           it, exit 1
#   hexmirror_bin ARGS...   sets `bin`: $HEXMIRROR_BIN, or `cargo build ARGS` in $root (output
#                           in $work/build.log) and target/release or target/debug/hexmirror;
#                           then unsets HEXMIRROR_BIN. Status 1: the build failed (the log's
#                           last 20 lines are printed); 2: $bin is not executable
#   need_hexmirror ARGS...  hexmirror_bin, or die ("cargo build [--release] failed", or
#                           "BIN is not executable")
#   unset_hexmirror_env     unsets every HEXMIRROR_* variable, so none reaches hexmirror
#                           (which reads them as configuration) or anything else started later
#   free_port               prints a free TCP port on 127.0.0.1
#   wait_http URL PID SECS  polls URL (curl -f, 1 s timeout) every 0.1 s until it answers 2xx:
#                           status 0; 1 if PID exits first or SECS pass

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
harness_name=${1:-harness}

missing_tool() {
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null || { echo "$tool"; return 0; }
  done
  return 1
}

harness_start() {
  work=$(mktemp -d "${TMPDIR:-/tmp}/hexmirror-$harness_name.XXXXXX")
  pids=()
  trap harness_cleanup EXIT
  trap 'exit 130' INT TERM
}
harness_cleanup() {
  local p
  for p in "${pids[@]}"; do kill -s "${cleanup_signal:-TERM}" "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  if [ "${KEEP:-0}" = 1 ]; then echo "scratch dir kept: $work"; else rm -rf "$work"; fi
}
forget() { local p keep=(); for p in "${pids[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done; pids=("${keep[@]}"); }
stop_pid() { [ -n "${1:-}" ] || return 0; kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; forget "$1"; }

die() {
  echo "$harness_name: $*" >&2
  if declare -F on_die >/dev/null; then on_die; fi
  exit 1
}

hexmirror_bin() {
  local arg profile=debug
  for arg in "$@"; do [ "$arg" != --release ] || profile=release; done
  if [ -n "${HEXMIRROR_BIN:-}" ]; then
    bin=$HEXMIRROR_BIN
  elif (cd "$root" && cargo build "$@") > "$work/build.log" 2>&1; then
    bin=$root/target/$profile/hexmirror
  else
    tail -n 20 "$work/build.log"
    return 1
  fi
  unset HEXMIRROR_BIN   # hexmirror reads HEXMIRROR_* variables as configuration
  [ -x "$bin" ] || return 2
}
need_hexmirror() {
  local status=0 arg release=""
  for arg in "$@"; do [ "$arg" != --release ] || release=" --release"; done
  hexmirror_bin "$@" || status=$?
  case $status in
    1) die "cargo build$release failed" ;;
    2) die "$bin is not executable" ;;
  esac
}
unset_hexmirror_env() {
  local names
  names=$(compgen -e | grep '^HEXMIRROR_' || true)
  [ -z "$names" ] || unset -v $names
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
wait_http() {
  local i
  for i in $(seq $(( $3 * 10 ))); do
    curl -s -o /dev/null -m 1 -f "$1" && return 0
    kill -0 "$2" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}
