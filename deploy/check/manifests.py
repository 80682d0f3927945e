#!/usr/bin/env python3
"""manifests.py STRICT_MANIFEST... -- OPTIONAL_MANIFEST...: the structure and cross-references of
the Kubernetes manifests that schema validation cannot see. Run by deploy/check.sh from the
repository's top directory, with an interpreter that has PyYAML (kubernetes-validate's).

- deploy/config/hexmirror.toml and every hexmirror.toml embedded in a ConfigMap parse (tomllib,
  Python >= 3.11; noted and skipped before), use only keys hexmirror knows (top level, [store],
  [repos.NAME], [repos.NAME.access]), name key files that are provided beside the config, and
  do not listen on loopback only;
- config/hexmirror.toml, which documents every key, names no key missing from those lists;
- in the STRICT manifests: volumes use ConfigMaps defined beside them, mounts name defined
  volumes, probes name declared ports, hexmirror serve containers are hardened, probed on
  /readyz and memory-limited; a Job has a native sidecar; a StatefulSet's grace period
  exceeds hexmirror's shutdown_grace;
- OPTIONAL manifests (CRD-based, no schema): a ServiceMonitor selects exactly one Service of
  its own example (the folder above optional/) and scrapes one of its ports on /metrics. A PrometheusRule is left to alerts.py.

Env: CONFIG_OUT=DIR also writes every configuration checked to DIR/NAME.toml (check.sh then
starts hexmirror with each). Prints notes and errors; exit status 1 on an error."""
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

# The keys hexmirror's configuration accepts (it rejects unknown keys). config/hexmirror.toml
# documents every key; check_documented_keys() below fails when it names one missing here.
TOP_KEYS = {"listen", "metrics_listen", "data_dir", "memory_cache_bytes", "disk_cache_bytes",
            "registry_ttl", "negative_ttl", "stale_while_revalidate", "max_registry_bytes",
            "max_tarball_bytes", "connect_timeout", "read_timeout", "transfer_timeout",
            "shutdown_grace", "max_upstream_requests", "max_pending_fetches", "breaker_failures",
            "breaker_backoff", "breaker_max_backoff", "max_connections", "client_header_timeout",
            "offline", "access_log", "installs_public_key", "ca_file", "tls_cert", "tls_key",
            "admin_listen", "admin_token", "admin_token_file", "store", "repos"}
REPO_KEYS = {"upstream", "public_key", "repository", "trusted", "allow_http", "auth_key",
             "auth_key_file", "oauth_token_url", "strip_headers", "access"}
ACCESS_KEYS = {"tokens", "tokens_file", "allow_all_clients"}
STORE_KEYS = {"kind", "bucket", "prefix", "endpoint", "region", "allow_http", "timeout"}
STORE_KINDS = {"local", "s3"}
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
        unknown = set(repo.get("access") or {}) - ACCESS_KEYS
        if unknown:
            errors.append(f"{where}: [repos.{name}.access] unknown keys {sorted(unknown)}")
        if "upstream" not in repo:
            errors.append(f"{where}: [repos.{name}] has no upstream")
        for key in ("public_key", "auth_key_file"):
            path = repo.get(key)
            if key == "public_key" and isinstance(path, str) and path.lstrip().startswith("-----BEGIN"):
                continue
            if isinstance(path, str) and path.startswith("/etc/hexmirror/") and \
                    path[len("/etc/hexmirror/"):] not in files:
                errors.append(f"{where}: [repos.{name}] {key} {path} is not provided beside the config")
    store = cfg.get("store", {})
    unknown = set(store) - STORE_KEYS
    if unknown:
        errors.append(f"{where}: [store] unknown keys {sorted(unknown)}")
    if store.get("kind", "local") not in STORE_KINDS:
        errors.append(f"{where}: [store] kind {store.get('kind')!r} is not one of {sorted(STORE_KINDS)}")
    if cfg.get("listen", "").startswith("127."):
        errors.append(f"{where}: listen {cfg['listen']} is not reachable by the kubelet's probes")

def check_documented_keys(path):
    """Every key config/hexmirror.toml sets or shows commented out is one this script knows."""
    known = {None: TOP_KEYS, "repos": REPO_KEYS, "access": ACCESS_KEYS, "store": STORE_KEYS}
    table = header = None
    with open(path) as f:
        for n, line in enumerate(f, 1):
            m = re.match(r"^#?\s*\[([^\]]+)\]\s*(#.*)?$", line)
            if m:
                header = m.group(1)
                parts = header.split(".")
                table = {"repos": "access" if parts[-1] == "access" else "repos"}.get(parts[0], parts[0])
                if table not in known:
                    errors.append(f"{path}:{n}: table [{header}] unknown to deploy/check/manifests.py")
                continue
            m = re.match(r"^#?\s*([a-z_]+)\s*=\s*\S", line)
            if m and table in known and m.group(1) not in known[table]:
                where = f"[{header}] " if header else ""
                errors.append(f"{path}:{n}: {where}key {m.group(1)} unknown to deploy/check/manifests.py (add it to its key lists)")

if os.path.isfile("config/hexmirror.toml"):
    check_documented_keys("config/hexmirror.toml")
else:
    errors.append("config/hexmirror.toml is missing")

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

# CRD-based objects: no schema, so a structural check against the Services they select. An
# example's optional/ folder goes with the Services of that example (the examples are
# alternatives and may use the same namespace, names and labels).
for path in optional:
    base = os.path.dirname(path)
    if os.path.basename(base) == "optional":
        base = os.path.dirname(base)
    services = [doc for _, doc in by_dir.get(base, []) if doc["kind"] == "Service"]
    for doc in load(path):
        if (doc.get("apiVersion"), doc.get("kind")) == ("monitoring.coreos.com/v1", "PrometheusRule"):
            continue  # checked by alerts.py
        if doc.get("kind") != "ServiceMonitor" or doc.get("apiVersion") != "monitoring.coreos.com/v1":
            notes.append(f"{path}: {doc.get('apiVersion')} {doc.get('kind')} not checked")
            continue
        sel = doc["spec"]["selector"]["matchLabels"]
        matched = [s for s in services
                   if all(s["metadata"].get("labels", {}).get(k) == v for k, v in sel.items())]
        if len(matched) != 1:
            errors.append(f"{path}: selector {sel} matches {len(matched)} Services in {base} (want exactly 1)")
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
