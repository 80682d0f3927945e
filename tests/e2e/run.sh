#!/usr/bin/env bash
# End-to-end test of hexmirror with real Hex clients (Debian's rebar3 and its bundled hex_core).
#
#   tests/e2e/run.sh
#
# Needs: erlang-nox erlang-dev rebar3 nginx curl python3 (and cargo unless HEXMIRROR_BIN is set).
# Env:
#   HEXMIRROR_BIN=path   use this binary instead of building with `cargo build --release`
#   KEEP=1               keep the scratch dir (logs of every client run and server) on exit
#   REGISTRY_TTL=2s      registry_ttl of the main mirror; kept short so that warm runs revalidate
#                        and the upstream-down run is served from stale entries
#
# Everything listens on 127.0.0.1 on free ports. The last line printed is "N passed, M failed";
# the exit status is non-zero when anything failed.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/../lib/harness.sh" e2e   # root, harness_start, stop_pid, hexmirror_bin, free_port, wait_http
fixtures=$root/tests/fixtures/demo-repo
registry_ttl=${REGISTRY_TTL:-2s}

passed=0 failed=0
failures=()
pass() { passed=$((passed + 1)); printf 'PASS %-34s %s\n' "$1" "${2:-}"; }
fail() { failed=$((failed + 1)); failures+=("$1"); printf 'FAIL %-34s %s\n' "$1" "${2:-}"; }
finish() {
  [ ${#failures[@]} -eq 0 ] || echo "failed: ${failures[*]}"
  echo "$passed passed, $failed failed"
  [ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
  exit $?
}

if tool=$(missing_tool rebar3 escript erl nginx curl python3 sha256sum); then
  fail "prerequisites" "$tool not found (apt-get install -y --no-install-recommends erlang-nox erlang-dev rebar3 nginx curl)"; finish
fi

# ---- build --------------------------------------------------------------------------------
harness_start
chmod 755 "$work"   # nginx workers run as an unprivileged user when started as root
hexmirror_bin --release
case $? in
  1) fail "cargo build --release"; finish ;;
  2) fail "hexmirror binary" "$bin is not executable"; finish ;;
esac
unset_hexmirror_env   # hexmirror reads HEXMIRROR_* variables as configuration: none reach it

# ---- sites: the good repositories and the tampered variants ----------------------------------
sites=$work/sites
mkdir -p "$sites"
# hexpm: the hex.pm-like upstream, which also serves the "acme" organization under /repos/acme/
cp -a "$fixtures/hexpm" "$sites/hexpm"
mkdir -p "$sites/hexpm/repos"
cp -a "$fixtures/acme" "$sites/hexpm/repos/acme"
# acme: a separately configured repository served at its own root
cp -a "$fixtures/acme" "$sites/acme"
pub=$fixtures/keys/pub.pem

tamper() {  # variant base mode file [other]
  local v=$1 base=$2 mode=$3 file=$4
  cp -a "$sites/$base" "$sites/$v"
  python3 "$here/tamper.py" "$mode" "$sites/$v/$file" ${5:+"$5"}
}
tamper t_signature    hexpm signed  packages/hexdemo_mid
tamper t_origin       acme  replace packages/hexdemo_mid "$fixtures/hexpm/packages/hexdemo_mid"
tamper t_origin_org   hexpm replace repos/acme/packages/hexdemo_mid "$fixtures/hexpm/packages/hexdemo_mid"
tamper t_origin_cdn   hexpm replace packages/hexdemo_mid "$fixtures/acme/packages/hexdemo_mid"
tamper t_other_pkg    hexpm replace packages/hexdemo_mid "$fixtures/hexpm/packages/hexdemo_base"
tamper t_tar_outer    hexpm tarpad  tarballs/hexdemo_mid-0.2.0.tar
tamper t_tar_inner    acme  tarbody tarballs/hexdemo_mid-0.2.0.tar
tamper t_tar_swap     hexpm replace tarballs/hexdemo_mid-0.2.0.tar "$fixtures/hexpm/tarballs/hexdemo_mid-0.1.0.tar"

# ---- process helpers ----------------------------------------------------------------------
declare -A NPORT NPID
# ngx_start NAME VARIANT: an nginx origin whose document root is the symlink $work/ngx/NAME/root,
# so that ngx_point can switch it to another variant without a restart.
ngx_start() {
  local name=$1 dir=$work/ngx/$1 port
  port=${NPORT[$name]:-$(free_port)}
  mkdir -p "$dir/tmp"
  ln -sfn "$sites/$2" "$dir/root"
  cat > "$dir/nginx.conf" <<EOF
worker_processes 1;
daemon off;
error_log $dir/error.log warn;
pid $dir/nginx.pid;
events { worker_connections 256; }
http {
    access_log $dir/access.log;
    client_body_temp_path $dir/tmp; proxy_temp_path $dir/tmp; fastcgi_temp_path $dir/tmp;
    uwsgi_temp_path $dir/tmp; scgi_temp_path $dir/tmp;
    default_type application/octet-stream;
    server { listen 127.0.0.1:$port; root $dir/root; location / { try_files \$uri =404; } }
}
EOF
  nginx -c "$dir/nginx.conf" -p "$dir" > "$dir/stdout.log" 2>&1 &
  NPID[$name]=$! NPORT[$name]=$port
  pids+=($!)
  wait_http "http://127.0.0.1:$port/names" $! 10 || { tail -n 3 "$dir/error.log"; return 1; }
}
ngx_point() { ln -sfn "$sites/$2" "$work/ngx/$1/root"; }
ngx_stop() { stop_pid "${NPID[$1]:-}"; }
ngx_url() { echo "http://127.0.0.1:${NPORT[$1]}"; }

declare -A MPORT MPID
# mirror_start NAME CONFIG_TAIL: hexmirror with a fresh data dir; CONFIG_TAIL holds the [repos.*]
mirror_start() {
  local name=$1 dir=$work/mirror/$1 port
  port=$(free_port)
  rm -rf "$dir"; mkdir -p "$dir/data"
  {
    printf 'listen = "127.0.0.1:%s"\ndata_dir = "%s"\nregistry_ttl = "%s"\n\n' "$port" "$dir/data" "${3:-$registry_ttl}"
    printf '%s\n' "$2"
  } > "$dir/config.toml"
  RUST_LOG="${RUST_LOG:-info}" "$bin" serve --config "$dir/config.toml" 2> "$dir/stderr.log" > "$dir/stdout.log" &
  MPID[$name]=$! MPORT[$name]=$port
  pids+=($!)
  if ! wait_http "http://127.0.0.1:$port/readyz" $! 30; then
    echo "  hexmirror $name did not become ready; config and log:"
    sed 's/^/  | /' "$dir/config.toml"; tail -n 15 "$dir/stderr.log" | sed 's/^/  | /'
    return 1
  fi
}
mirror_stop() { stop_pid "${MPID[$1]:-}"; }
mirror_url() { echo "http://127.0.0.1:${MPORT[$1]}"; }
mirror_log() { tail -n "${2:-8}" "$work/mirror/$1/stderr.log" | cut -c1-300 | sed 's/^/  | /'; }
repo_toml() {  # name upstream-url [payload repository name]
  printf '[repos.%s]\nupstream = "%s"\npublic_key = "%s"\n' "$1" "$2" "$pub"
  [ -z "${3:-}" ] || printf 'repository = "%s"\n' "$3"
  echo
}
upstream_requests() {  # sum of hexmirror_upstream_requests_total over all label sets
  curl -s -m 5 "$(mirror_url "$1")/metrics" \
    | awk '/^hexmirror_upstream_requests_total[{ ]/ { s += $NF; n++ } END { if (n) printf "%d\n", s; else print "none" }'
}

runs=0
# client TESTNAME MODE EXPECT URL REPO [VAR=VALUE...]: one real-client run with a fresh HOME
client() {
  local name=$1 mode=$2 expect=$3 url=$4 repo=$5 out
  shift 5
  runs=$((runs + 1))
  local w=$work/client/$runs-$name
  mkdir -p "$w"
  if out=$(env "$@" MODE="$mode" EXPECT="$expect" WORK="$w" "$here/client.sh" "$url" "$pub" "$repo"); then
    pass "$name" "$out"; return 0
  else
    fail "$name" "$out"; return 1
  fi
}

# ---- raw HTTP checks through the mirror -----------------------------------------------------
# fetch URL [curl args...] -> sets STATUS, HDRS (file), BODY (file)
fetch() {
  local url=$1; shift
  HDRS=$work/last.hdrs BODY=$work/last.body
  STATUS=$(curl -s -m 20 -o "$BODY" -D "$HDRS" -w '%{http_code}' "$@" "$url")
}
hdr() { grep -i "^$1:" "$HDRS" | head -n 1 | cut -d: -f2- | tr -d '\r' | sed 's/^ *//'; }

# check_bytes TEST MIRROR PATH_PREFIX SITE: every registry file and tarball is served unchanged,
# as 200 with a strong ETag, an x-cache header and no Content-Encoding.
check_bytes() {
  local test=$1 m=$2 prefix=$3 site=$4 f n=0 bad=""
  for f in names versions $(cd "$site" && ls packages/* tarballs/*); do
    fetch "$(mirror_url "$m")$prefix/$f"
    if [ "$STATUS" != 200 ]; then bad+=" $f:status=$STATUS"; continue; fi
    cmp -s "$BODY" "$site/$f" || bad+=" $f:bytes-differ"
    case "$(hdr etag)" in \"*\") ;; *) bad+=" $f:etag='$(hdr etag)'" ;; esac
    [ -n "$(hdr x-cache)" ] || bad+=" $f:no-x-cache"
    [ -z "$(hdr content-encoding)" ] || bad+=" $f:content-encoding=$(hdr content-encoding)"
    n=$((n + 1))
  done
  if [ -z "$bad" ]; then pass "$test" "$n files byte-identical, strong ETag, x-cache set"
  else fail "$test" "${bad:0:400}"; fi
}

# check_conditional TEST MIRROR PATH: If-None-Match with the ETag gives 304; a second GET is a hit
check_conditional() {
  local test=$1 url etag xc
  url=$(mirror_url "$2")$3
  fetch "$url"; etag=$(hdr etag)
  fetch "$url"; xc=$(hdr x-cache)
  fetch "$url" -H "If-None-Match: $etag"
  if [ "$STATUS" = 304 ] && [ -n "$etag" ]; then pass "$test" "304 for If-None-Match $etag; repeat GET x-cache: $xc"
  else fail "$test" "If-None-Match $etag -> $STATUS"; fi
}

echo "hexmirror e2e: $bin"
echo "scratch: $work"

# =============================================================================================
# 1. good upstreams, main mirror: hexpm at the root, [repos.acme] under /repos/acme
# =============================================================================================
ngx_start up_hexpm hexpm || { fail "start nginx upstream"; finish; }
ngx_start up_acme acme || { fail "start nginx upstream"; finish; }
main_cfg="$(repo_toml hexpm "$(ngx_url up_hexpm)")
$(repo_toml acme "$(ngx_url up_acme)")"
if mirror_start main "$main_cfg"; then pass "mirror starts, /readyz 200"; else fail "mirror starts"; finish; fi
M=$(mirror_url main)

# a. HEX_CDN (hexpm at the root), cold then warm (304 path)
client cdn_cold_and_warm cdn ok "$M" hexpm HEXCORE=0 || mirror_log main
# b. a separately configured repository under /repos/NAME
client repos_acme_cold_and_warm repos ok "$M/repos/acme" acme HEXCORE=0 || mirror_log main
# c. hex_core walk of names, versions, every package and tarball
client cdn_hexcore_walk cdn ok "$M" hexpm WARM=0 HEXCORE=1 || mirror_log main
client repos_acme_hexcore_walk repos ok "$M/repos/acme" acme WARM=0 HEXCORE=1 || mirror_log main
# raw HTTP behaviour
check_bytes http_bytes_hexpm main "" "$fixtures/hexpm"
check_bytes http_bytes_repos_acme main /repos/acme "$fixtures/acme"
check_conditional http_304_tarball main /tarballs/hexdemo_base-1.1.0.tar
check_conditional http_304_package main /packages/hexdemo_base
fetch "$M/packages/no_such_package"
[ "$STATUS" = 404 ] && pass http_missing_package_404 || fail http_missing_package_404 "status $STATUS"
fetch "$M/tarballs/hexdemo_base-1.1.0.tar" -I
if [ "$STATUS" = 200 ] && [ "$(hdr content-length)" = "$(stat -c %s "$fixtures/hexpm/tarballs/hexdemo_base-1.1.0.tar")" ]; then
  pass http_head_tarball "200, content-length $(hdr content-length)"
else fail http_head_tarball "status $STATUS, content-length '$(hdr content-length)'"; fi
ups=$(upstream_requests main)
case "$ups" in ''|none|0) fail metrics_upstream_requests "hexmirror_upstream_requests_total: $ups" ;;
  *) pass metrics_upstream_requests "sum of hexmirror_upstream_requests_total = $ups" ;; esac

# hex.pm organization style: no [repos.acme], /repos/acme/* fetched from the hexpm upstream; and
# a repository configured under another name (corp) whose payloads say "acme"
org_cfg="$(repo_toml hexpm "$(ngx_url up_hexpm)")
$(repo_toml corp "$(ngx_url up_acme)" acme)"
if mirror_start org "$org_cfg"; then
  O=$(mirror_url org)
  client org_style_repos_acme repos ok "$O/repos/acme" acme HEXCORE=1 || mirror_log org
  client renamed_repo_corp repos ok "$O/repos/corp" acme HEXCORE=1 || mirror_log org
  check_bytes http_bytes_org_acme org /repos/acme "$fixtures/acme"
else
  fail "org mirror starts"
fi

# =============================================================================================
# d. upstreams stopped: fresh clients are served from hexmirror's cache (after the registry TTL)
# =============================================================================================
ngx_stop up_hexpm; ngx_stop up_acme
before=$(upstream_requests main)
# let the registry entries expire, so that they are served stale (only for a TTL in seconds)
[[ $registry_ttl =~ ^([0-9]+)s$ ]] && sleep $(( BASH_REMATCH[1] + 1 ))
client offline_cdn cdn ok "$M" hexpm HEXCORE=1 || mirror_log main
client offline_repos_acme repos ok "$M/repos/acme" acme HEXCORE=1 || mirror_log main
if [ -n "${MPID[org]:-}" ]; then
  client offline_org_style_acme repos ok "$O/repos/acme" acme WARM=0 HEXCORE=1 || mirror_log org
fi
fetch "$M/packages/hexdemo_top"
echo "     (upstream down: /packages/hexdemo_top -> $STATUS, x-cache: $(hdr x-cache); upstream requests counted $before -> $(upstream_requests main))"
mirror_stop main; mirror_stop org

# =============================================================================================
# e. tampered upstreams: hexmirror answers 502 and caches nothing; after the upstream is fixed,
#    the same data dir serves the client correctly
# =============================================================================================
ngx_start up_th hexpm || { fail "start tamper upstream"; finish; }
ngx_start up_ta acme || { fail "start tamper upstream"; finish; }

# tamper_case NAME VARIANT ROLE(th|ta) CLIENT_MODE BAD_PATH GOOD_FILE
tamper_case() {
  local name=$1 variant=$2 role=$3 mode=$4 path=$5 good=$6 cfg url url_suffix repo s1 s2
  ngx_point up_th hexpm; ngx_point up_ta acme
  ngx_point "up_$role" "$variant"
  cfg=$(repo_toml hexpm "$(ngx_url up_th)")
  case "$mode" in
    cdn) repo=hexpm; url_suffix="" ;;
    repos) repo=acme; url_suffix=/repos/acme
           cfg+=$'\n'$(repo_toml acme "$(ngx_url up_ta)") ;;
    org) repo=acme; url_suffix=/repos/acme; mode=repos ;;   # /repos/acme from the hexpm upstream
  esac
  # a long TTL: anything wrongly cached would still be served in the recovery run below
  mirror_start "t_$name" "$cfg" 5m || { fail "tamper_$name" "mirror did not start"; return; }
  url=$(mirror_url "t_$name")$url_suffix
  client "tamper_${name}_refused" "$mode" refused "$url" "$repo" || mirror_log "t_$name"
  fetch "$(mirror_url "t_$name")$path"; s1=$STATUS
  fetch "$(mirror_url "t_$name")$path"; s2=$STATUS
  if [ "$s1" = 502 ] && [ "$s2" = 502 ]; then pass "tamper_${name}_502" "GET $path -> 502 twice"
  else fail "tamper_${name}_502" "GET $path -> $s1 then $s2 (want 502, 502)"; mirror_log "t_$name" 4; fi
  # the upstream is fixed; the same hexmirror (same data dir) must now serve the good bytes
  ngx_point up_th hexpm; ngx_point up_ta acme
  client "tamper_${name}_recovers" "$mode" ok "$url" "$repo" WARM=0 || mirror_log "t_$name"
  fetch "$(mirror_url "t_$name")$path"
  if [ "$STATUS" = 200 ] && cmp -s "$BODY" "$good"; then pass "tamper_${name}_good_bytes" "GET $path -> 200, the good bytes"
  else fail "tamper_${name}_good_bytes" "GET $path -> $STATUS, bytes $(cmp -s "$BODY" "$good" && echo equal || echo differ)"; fi
  mirror_stop "t_$name"
}

tamper_case signature  t_signature  th cdn   /packages/hexdemo_mid "$fixtures/hexpm/packages/hexdemo_mid"
tamper_case origin     t_origin     ta repos /repos/acme/packages/hexdemo_mid "$fixtures/acme/packages/hexdemo_mid"
tamper_case origin_org t_origin_org th org   /repos/acme/packages/hexdemo_mid "$fixtures/acme/packages/hexdemo_mid"
tamper_case origin_cdn t_origin_cdn th cdn   /packages/hexdemo_mid "$fixtures/hexpm/packages/hexdemo_mid"
tamper_case other_pkg  t_other_pkg  th cdn   /packages/hexdemo_mid "$fixtures/hexpm/packages/hexdemo_mid"
tamper_case tar_outer  t_tar_outer  th cdn   /tarballs/hexdemo_mid-0.2.0.tar "$fixtures/hexpm/tarballs/hexdemo_mid-0.2.0.tar"
tamper_case tar_inner  t_tar_inner  ta repos /repos/acme/tarballs/hexdemo_mid-0.2.0.tar "$fixtures/acme/tarballs/hexdemo_mid-0.2.0.tar"
tamper_case tar_swap   t_tar_swap   th cdn   /tarballs/hexdemo_mid-0.2.0.tar "$fixtures/hexpm/tarballs/hexdemo_mid-0.2.0.tar"

# =============================================================================================
# f. air-gapped site: sync outside (through the running server), serve offline with the upstream
#    still up and receiving nothing, export, import into an empty store, real client inside
# =============================================================================================
hm() { RUST_LOG=warn "$bin" "$@"; }
ngx_point up_th hexpm
ag=$work/airgap
mkdir -p "$ag"
ag_config() {  # NAME DATA_DIR OFFLINE -> writes $ag/NAME.toml, sets AG_PORT
  AG_PORT=$(free_port)
  {
    printf 'listen = "127.0.0.1:%s"\ndata_dir = "%s"\noffline = %s\n\n' "$AG_PORT" "$2" "$3"
    repo_toml hexpm "$(ngx_url up_th)"
  } > "$ag/$1.toml"
}
ag_serve() {  # NAME: starts hexmirror with $ag/NAME.toml, sets AG_PID
  RUST_LOG=warn "$bin" serve --config "$ag/$1.toml" 2> "$ag/$1.log" &
  AG_PID=$!; pids+=($AG_PID)
  wait_http "http://127.0.0.1:$AG_PORT/readyz" $AG_PID 30
}
access_lines() { wc -l < "$work/ngx/up_th/access.log"; }

ag_config outside "$ag/outside" false
if ag_serve outside; then
  if out=$(hm sync --config "$ag/outside.toml" --package hexdemo_top 2>&1); then
    pass airgap_sync_through_running_server "$(echo "$out" | tail -n 1)"
  else fail airgap_sync_through_running_server "$(echo "$out" | tail -n 3)"; fi
  stop_pid "$AG_PID"
else fail airgap_outside_server "did not start"; fi
# the same store, offline, with the upstream still running: it must receive nothing
ag_config offline_same "$ag/outside" true
before=$(access_lines)
if ag_serve offline_same; then
  client airgap_offline_synced_store cdn ok "http://127.0.0.1:$AG_PORT" hexpm HEXCORE=0
  after=$(access_lines)
  [ "$before" = "$after" ] && pass airgap_offline_upstream_untouched "upstream access log: $before -> $after lines" \
    || fail airgap_offline_upstream_untouched "upstream access log grew: $before -> $after lines"
  stop_pid "$AG_PID"
else fail airgap_offline_server "did not start"; fi
# carry it across: export (no server running: the command opens the store), import inside
if out=$(hm export --config "$ag/outside.toml" --out "$ag/site.hxb" 2>&1); then
  pass airgap_export "$(echo "$out" | head -n 1)"
else fail airgap_export "$out"; fi
ag_config inside "$ag/inside" true
cp "$ag/site.hxb" "$ag/forged.hxb"
python3 - "$ag/forged.hxb" <<'PY'
import sys
p = sys.argv[1]; b = bytearray(open(p, 'rb').read()); b[len(b) // 2] ^= 1; open(p, 'wb').write(bytes(b))
PY
if hm import --config "$ag/inside.toml" "$ag/forged.hxb" > "$ag/forged.out" 2>&1; then
  fail airgap_altered_bundle_refused "import accepted an altered bundle"
else pass airgap_altered_bundle_refused "$(tail -n 1 "$ag/forged.out" | cut -c1-120)"; fi
if out=$(hm import --config "$ag/inside.toml" "$ag/site.hxb" 2>&1); then
  pass airgap_import "$(echo "$out" | head -n 1)"
else fail airgap_import "$out"; fi
before=$(access_lines)
if ag_serve inside; then
  client airgap_inside_offline cdn ok "http://127.0.0.1:$AG_PORT" hexpm HEXCORE=0
  if out=$(hm verify --config "$ag/inside.toml" 2>&1); then pass airgap_verify "$(echo "$out" | tail -n 1)"
  else fail airgap_verify "$(echo "$out" | tail -n 3)"; fi
  [ "$before" = "$(access_lines)" ] && pass airgap_inside_upstream_untouched "no upstream request" \
    || fail airgap_inside_upstream_untouched "the upstream was contacted"
  stop_pid "$AG_PID"
else fail airgap_inside_server "did not start"; fi


# =============================================================================================
# g. supply-chain policy: a denied release's tarball is refused (403, x-cache: blocked) and the
#    real rebar3 build fails on it, saying so; lifting the rule in the configuration file and
#    sending SIGHUP (the periodic rescan is off) lets the same build through, no restart
# =============================================================================================
ngx_point up_th hexpm
denied=hexdemo_base-1.1.0   # the project's hexdemo_top 2.0.1 -> hexdemo_mid 0.2.0 -> hexdemo_base 1.1.0
pol_cfg="policy_rescan = \"0\"

[policy]
deny = [\"hexdemo_base\"]

$(repo_toml hexpm "$(ngx_url up_th)")"
if mirror_start pol "$pol_cfg"; then
  P=$(mirror_url pol) pcfg=$work/mirror/pol/config.toml
  runs=$((runs + 1)); pw=$work/client/$runs-policy
  mkdir -p "$pw"
  # the build fails on the denied tarball (client.sh runs rebar3 with DEBUG=1) ...
  if out=$(MODE=cdn EXPECT=refused WORK="$pw" "$here/client.sh" "$P" "$pub" hexpm); then
    pass policy_deny_rebar3_fails "$out"
  else fail policy_deny_rebar3_fails "$out"; mirror_log pol; fi
  # ... and rebar3 says which request the mirror refused, and why the dep is missing
  want1="===> Request for package $denied failed: status code 403"
  want2="===> Failed to fetch and copy dep: $denied"
  if grep -qxF "$want1" "$pw/get-deps.log" && grep -qxF "$want2" "$pw/get-deps.log"; then
    pass policy_deny_rebar3_message "rebar3 printed \"$want1\" and \"$want2\""
  else fail policy_deny_rebar3_message "rebar3 printed: $(grep -E '^===> (Request|Failed)' "$pw/get-deps.log" | tr '\n' ' ' | cut -c1-300)"; fi
  # without DEBUG (what a user sees), the same HOME and app: only the dep line, and exit 1
  rm -rf "$pw/app/_build"
  (cd "$pw/app" && env -u REBAR_CACHE_DIR -u REBAR_GLOBAL_CONFIG_DIR -u HEX_MIRROR -u DEBUG \
     HOME="$pw/home" HEX_CDN="$P" rebar3 get-deps) > "$pw/get-deps-quiet.log" 2>&1
  rc=$?
  sed -i 's/\x1b\[[0-9;]*m//g' "$pw/get-deps-quiet.log"
  if [ $rc -ne 0 ] && grep -qxF "$want2" "$pw/get-deps-quiet.log"; then
    pass policy_deny_rebar3_plain_message "rc=$rc, \"$want2\""
  else fail policy_deny_rebar3_plain_message "rc=$rc: $(tail -n 3 "$pw/get-deps-quiet.log" | tr '\n' ' ' | cut -c1-300)"; fi
  # hexmirror's side: 403, x-cache: blocked, the rule in the body and in `hexmirror refusals`
  fetch "$P/tarballs/$denied.tar"
  if [ "$STATUS" = 403 ] && [ "$(hdr x-cache)" = blocked ] && grep -q 'blocked by policy (deny)' "$BODY"; then
    pass policy_deny_403_blocked "403, x-cache: blocked, $(head -c 200 "$BODY")"
  else fail policy_deny_403_blocked "status $STATUS, x-cache: '$(hdr x-cache)', body: $(head -c 200 "$BODY")"; fi
  out=$(RUST_LOG=warn "$bin" refusals --config "$pcfg" 2>&1)
  if echo "$out" | grep -q "tarballs/$denied.tar from policy (deny): denied: matches deny rule \"hexdemo_base\""; then
    pass policy_deny_refusals "$(echo "$out" | grep -m 1 "tarballs/$denied.tar" | cut -c1-200)"
  else fail policy_deny_refusals "$(echo "$out" | tail -n 3 | tr '\n' ' ' | cut -c1-300)"; fi

  # lift the rule: the file is rewritten without the deny, then SIGHUP; no restart
  grep -vxF 'deny = ["hexdemo_base"]' "$pcfg" > "$pcfg.new" && mv "$pcfg.new" "$pcfg"
  kill -HUP "${MPID[pol]}"
  for _ in $(seq 50); do
    fetch "$P/tarballs/$denied.tar"; [ "$STATUS" = 200 ] && break; sleep 0.2
  done
  if [ "$STATUS" = 200 ] && cmp -s "$BODY" "$fixtures/hexpm/tarballs/$denied.tar" && kill -0 "${MPID[pol]}" 2>/dev/null; then
    pass policy_lifted_by_sighup "GET /tarballs/$denied.tar -> 200 (x-cache: $(hdr x-cache)), same process"
  else fail policy_lifted_by_sighup "GET /tarballs/$denied.tar -> $STATUS, x-cache: '$(hdr x-cache)'"; mirror_log pol; fi
  # the same project and HOME, rebar3's package cache cleared: the same build now succeeds
  rm -rf "$pw/home/.cache/rebar3/hex"
  if out=$(REUSE=1 WARM=0 HEXCORE=0 MODE=cdn EXPECT=ok WORK="$pw" "$here/client.sh" "$P" "$pub" hexpm); then
    pass policy_lifted_rebar3_builds "$out"
  else fail policy_lifted_rebar3_builds "$out"; mirror_log pol; fi
  mirror_stop pol
else
  fail "policy mirror starts"
fi

finish
