#!/usr/bin/env bash
# Run the real rebar3 client (and optionally a hex_core walk) against a Hex repository URL.
#
#   client.sh BASE_URL PUBLIC_KEY_PEM REPO_NAME
#
# The repository must hold the demo fixture (hexdemo_top -> hexdemo_mid -> hexdemo_base) whose
# payloads carry the repository name REPO_NAME and are signed by PUBLIC_KEY_PEM's private half.
#
# Env:
#   MODE=cdn     HEX_CDN=BASE_URL, the hexpm repo's public key overridden in the global rebar3
#                config (REPO_NAME must be hexpm)
#   MODE=repos   rebar.config {hex, [{repos, replace, [#{name => REPO_NAME, repo_url => BASE_URL}]}]}
#   EXPECT=ok       get-deps, compile, run hexdemo_top:chain(); WARM=1 (default) then repeats
#                   get-deps with the warm rebar3 cache (tarballs revalidated, 304 path)
#   EXPECT=refused  rebar3 must fail because the server refused a registry file or a tarball,
#                   and must never have seen tampered bytes (no signature/origin/checksum error)
#   HEXCORE=1    also walk names/versions/packages/tarballs with hex_core (EXPECT=ok only)
#   WORK=dir     scratch dir (required; a fresh HOME and app are made inside it)
#   REUSE=1      keep the HOME and app an earlier run left in WORK (rebar3's cache included:
#                the caller removes what it wants fetched again); _build and rebar.lock go
# Prints one summary line; exit 0 when the expectation holds. Logs stay in WORK.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
base_url=${1:?usage: client.sh BASE_URL PUBLIC_KEY_PEM REPO_NAME}
base_url=${base_url%/}
pub=${2:?public key}
repo_name=${3:?repo name}
mode=${MODE:-cdn}
expect=${EXPECT:-ok}
work=${WORK:?WORK must be set}

fail() { echo "$*"; exit 1; }

home=$work/home app=$work/app
if [ "${REUSE:-0}" = 1 ]; then rm -rf "$app/_build" "$app/rebar.lock"; else rm -rf "$home" "$app"; fi
mkdir -p "$home/.config/rebar3" "$app/src"
pem=$(cat "$pub")
cat > "$app/src/hcapp.app.src" <<'APP'
{application, hcapp, [{description, "e2e client"}, {vsn, "0.1.0"},
                      {applications, [kernel, stdlib, hexdemo_top]}, {env, []}]}.
APP

case "$mode" in
  repos)
    cat > "$app/rebar.config" <<CFG
{deps, [{hexdemo_top, "~> 2.0"}]}.
{hex, [{repos, replace, [#{name => <<"$repo_name">>,
                          repo_url => <<"$base_url">>,
                          repo_public_key => <<"$pem">>}]}]}.
CFG
    renv=() ;;
  cdn)
    [ "$repo_name" = hexpm ] || fail "MODE=cdn needs REPO_NAME=hexpm"
    printf '{deps, [{hexdemo_top, "~> 2.0"}]}.\n' > "$app/rebar.config"
    # HEX_CDN replaces the hexpm repo's URL; its key is overridden in the global config.
    printf '{hex, [{repos, [#{name => <<"hexpm">>, repo_public_key => <<"%s">>}]}]}.\n' "$pem" \
      > "$home/.config/rebar3/rebar.config"
    renv=(HEX_CDN="$base_url") ;;
  *) fail "unknown MODE=$mode" ;;
esac

rebar() {  # log-file, rebar3 args...
  local log=$1; shift
  (cd "$app" && env -u REBAR_CACHE_DIR -u REBAR_GLOBAL_CONFIG_DIR -u HEX_CDN -u HEX_MIRROR \
     HOME="$home" DEBUG=1 "${renv[@]}" rebar3 "$@") > "$log" 2>&1
  local rc=$?
  sed -i 's/\x1b\[[0-9;]*m//g' "$log"
  return $rc
}
summary() {  # the interesting lines of a rebar3 log, on one line
  grep -v -E '^===> (Evaluating|Expanded|Running provider|Load global|Found top|	using)' "$1" \
    | grep -E '^===>|exception|bad_registry|checksum|Failed|not found|request failed' \
    | tail -n "${2:-4}" | tr -s '\n\t ' ' ' | cut -c1-300
}

log=$work/get-deps.log
start=$(date +%s%N)
rebar "$log" get-deps
rc=$?
ms=$(( ($(date +%s%N) - start) / 1000000 ))

if [ "$expect" = refused ]; then
  [ $rc -ne 0 ] || fail "rebar3 get-deps succeeded (rc=0) but should have been refused"
  # Any of these means bad bytes reached the client and only the client's own checks stopped them.
  if grep -q -e 'bad_registry_checksum' -e 'inner_checksum_mismatch' -e 'does not match outer checksum' \
        -e 'record format that has been deprecated' -e 'unverified' "$log"; then
    fail "rebar3 RECEIVED tampered bytes: $(summary "$log")"
  fi
  grep -q -e 'Failed to fetch and copy dep' -e 'request failed' "$log" \
    || fail "no refusal seen by rebar3: $(summary "$log")"
  echo "rebar3 refused cleanly: $(summary "$log" 2)"
  exit 0
fi
[ "$expect" = ok ] || fail "unknown EXPECT=$expect"

[ $rc -eq 0 ] || fail "rebar3 get-deps rc=$rc: $(summary "$log")"
for d in hexdemo_top:2.0.1 hexdemo_mid:0.2.0 hexdemo_base:1.1.0; do
  n=${d%%:*} v=${d##*:}
  grep -q "{vsn, \"$v\"}" "$app/_build/default/lib/$n/src/$n.app.src" 2>/dev/null \
    || fail "dep $n $v not unpacked"
  grep -q "<<\"$n\">>,{pkg,<<\"$n\">>,<<\"$v\">>}" "$app/rebar.lock" || fail "$n $v not in rebar.lock"
done
rebar "$work/compile.log" compile || fail "rebar3 compile: $(summary "$work/compile.log")"
out=$(cd "$app" && erl -noshell -pa _build/default/lib/*/ebin \
      -eval 'io:format("~p",[hexdemo_top:chain()]), halt().' 2>&1)
[ "$out" = '[{hexdemo_top,"2.0.1"},{hexdemo_mid,"0.2.0"},{hexdemo_base,"1.1.0"}]' ] \
  || fail "unexpected hexdemo_top:chain() output: $out"
msg="rebar3 get-deps+compile OK in ${ms} ms, chain() correct"

if [ "${WARM:-1}" = 1 ]; then
  # Same HOME: rebar3 has the tarballs and their ETags, and revalidates with If-None-Match.
  rm -rf "$app/_build" "$app/rebar.lock"
  rebar "$work/get-deps-warm.log" get-deps || fail "warm get-deps: $(summary "$work/get-deps-warm.log")"
  warm=$(grep -c 'is up to date, reusing it' "$work/get-deps-warm.log")
  [ "$warm" -eq 3 ] || fail "warm run reused $warm of 3 cached tarballs (304 path broken): $(summary "$work/get-deps-warm.log")"
  msg+="; warm run reused 3/3 tarballs via 304"
fi

if [ "${HEXCORE:-0}" = 1 ]; then
  escript "$here/hexcore_walk.escript" "$base_url" "$repo_name" "$pub" > "$work/hexcore.log" 2>&1 \
    || fail "hex_core walk: $(tail -n 2 "$work/hexcore.log" | tr '\n' ' ' | cut -c1-400)"
  msg+="; $(tail -n 1 "$work/hexcore.log")"
fi
echo "$msg"
