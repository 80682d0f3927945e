#!/usr/bin/env python3
"""manifests.py STRICT_MANIFEST... -- OPTIONAL_MANIFEST...: the structure and cross-references of
the Kubernetes manifests that schema validation cannot see. Run by deploy/check.sh from the
repository's top directory, with an interpreter that has PyYAML (kubernetes-validate's).

- deploy/config/hexmirror.toml and every hexmirror.toml embedded in a ConfigMap parse (tomllib,
  Python >= 3.11; noted and skipped before), use only keys hexmirror knows (top level, [store],
  [repos.NAME], [repos.NAME.access]), name key files that are provided beside the config, and
  do not listen on loopback only;
- config/hexmirror.toml, which documents every key, names no key missing from those lists;
- in the STRICT manifests: volumes use ConfigMaps defined beside them (a projected volume's
  too, with the keys it projects), mounts name defined volumes, probes name declared ports;
  every hexmirror container (serve or a command such as sync) is hardened, memory-limited,
  keeps data_dir on a writable volume and finds the files its --config, --requirements and
  --lockfile name (the key exists where a ConfigMap is mounted), in a pod with no
  service-account token and a RuntimeDefault seccomp profile; serve containers are probed on
  /readyz (and, in a StatefulSet, Deployment or DaemonSet, on /healthz for liveness); a Job has
  a native sidecar; a CronJob runs a hexmirror command, never serve, on the S3 store (a sled
  store is opened by the serving pod alone), with concurrencyPolicy Forbid,
  startingDeadlineSeconds, both history limits, backoffLimit and activeDeadlineSeconds; a
  podFailurePolicy comes with restartPolicy Never and names a container of the pod; the grace
  period of a long-running workload exceeds the shutdown_grace of its configuration; workload
  selectors select their pods, and Services select pods of their folder, every workload of
  which declares the target port (a batch pod with the mirror's labels would get traffic);
- several replicas (a Deployment or StatefulSet with replicas > 1): topologySpreadConstraints on
  kubernetes.io/hostname and topology.kubernetes.io/zone whose labelSelectors select the pods,
  and a PodDisruptionBudget selecting them; every PodDisruptionBudget selects the pods of
  exactly one workload and allows an eviction;
- Secrets: every Secret key a container reads (secretKeyRef, envFrom, secret volume) is in the
  example Secret under the folder (a subfolder, so that applying the folder leaves the real
  Secret alone), or the Secret is created by a `kubectl create secret generic NAME
  --from-literal=KEY=...` in deploy/README.md; every key of an example Secret is read;
- an S3 store ([store] kind = "s3", in the file or by HEXMIRROR_STORE__KIND) has, in every
  container using it, a bucket from the file or the environment, and credentials: both static
  AWS keys, or a serviceAccountName for IRSA; disk_cache_bytes, which does not apply to it, is
  not set;
- OPTIONAL manifests (CRD-based, no schema): a ServiceMonitor selects exactly one Service of
  its own example (the folder above optional/) and scrapes one of its ports on /metrics. A
  PrometheusRule is left to alerts.py.

Env: CONFIG_OUT=DIR also writes every configuration checked to DIR/NAME.toml (check.sh then
starts hexmirror with each); for an S3 configuration an empty DIR/NAME.env marks it, and
DIR/NAME@CONTAINER.env holds the HEXMIRROR_* variables of each container using it, with the
example Secret's values, one VAR=VALUE a line (check.sh runs `hexmirror check-config` with each
instead). Prints notes and errors; exit status 1 on an error."""
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
            "admin_listen", "admin_token", "admin_token_file", "store", "repos", "policy",
            "policy_rescan"}
REPO_KEYS = {"upstream", "public_key", "repository", "trusted", "allow_http", "auth_key",
             "auth_key_file", "oauth_token_url", "oauth_client_id", "oauth_scope", "strip_headers",
             "access", "policy"}
ACCESS_KEYS = {"tokens", "tokens_file", "allow_all_clients"}
STORE_KEYS = {"kind", "bucket", "prefix", "endpoint", "region", "allow_http", "timeout"}
POLICY_KEYS = {"deny", "allow", "exempt", "block_retired", "licenses_allowed", "allow_unknown_licenses",
               "cooldown", "advisories", "enforce"}
STORE_KINDS = {"local", "s3"}
outdir = os.environ.get("CONFIG_OUT")

def load(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]

def out_name(where):
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", where)

def is_s3(cfg, text):
    if cfg is not None:
        return cfg.get("store", {}).get("kind") == "s3"
    return re.search(r'^\s*\[store\][^\[]*?^\s*kind\s*=\s*"s3"', text, re.M | re.S) is not None

def check_toml(where, text, files):
    """files: names that exist beside the config (ConfigMap keys or deploy/config/). Returns the
    parsed configuration, or None."""
    cfg = None
    if tomllib is None:
        notes.append("tomllib missing (Python < 3.11): hexmirror.toml contents not checked")
    else:
        try:
            cfg = tomllib.loads(text)
        except Exception as e:
            errors.append(f"{where}: hexmirror.toml does not parse: {e}")
    if outdir:  # for the load test with a hexmirror binary in check.sh
        with open(os.path.join(outdir, out_name(where) + ".toml"), "w") as f:
            f.write(text)
        if is_s3(cfg, text):  # NAME.env marks an S3 configuration; workloads add their variables
            open(os.path.join(outdir, out_name(where) + ".env"), "a").close()
    if cfg is None:
        return None
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
        unknown = set(repo.get("policy") or {}) - POLICY_KEYS
        if unknown:
            errors.append(f"{where}: [repos.{name}.policy] unknown keys {sorted(unknown)}")
        if "upstream" not in repo:
            errors.append(f"{where}: [repos.{name}] has no upstream")
        for key in ("public_key", "auth_key_file"):
            path = repo.get(key)
            if key == "public_key" and isinstance(path, str) and path.lstrip().startswith("-----BEGIN"):
                continue
            if isinstance(path, str) and path.startswith("/etc/hexmirror/") and \
                    path[len("/etc/hexmirror/"):] not in files:
                errors.append(f"{where}: [repos.{name}] {key} {path} is not provided beside the config")
    unknown = set(cfg.get("policy") or {}) - POLICY_KEYS
    if unknown:
        errors.append(f"{where}: [policy] unknown keys {sorted(unknown)}")
    store = cfg.get("store", {})
    unknown = set(store) - STORE_KEYS
    if unknown:
        errors.append(f"{where}: [store] unknown keys {sorted(unknown)}")
    if store.get("kind", "local") not in STORE_KINDS:
        errors.append(f"{where}: [store] kind {store.get('kind')!r} is not one of {sorted(STORE_KINDS)}")
    if store.get("kind") == "s3" and "disk_cache_bytes" in cfg:
        errors.append(f"{where}: disk_cache_bytes does not apply to the S3 store (drop it)")
    if cfg.get("listen", "").startswith("127."):
        errors.append(f"{where}: listen {cfg['listen']} is not reachable by the kubelet's probes")
    return cfg

UNITS = {"ms": 0.001, "s": 1, "sec": 1, "secs": 1, "m": 60, "min": 60, "mins": 60, "h": 3600,
         "hr": 3600, "hour": 3600, "hours": 3600, "d": 86400, "day": 86400, "days": 86400}

def seconds(value):
    """A duration as hexmirror reads it ("30s", "1m 30s", "500ms", or an integer of seconds), in
    seconds; None when it does not parse."""
    if isinstance(value, int):
        return value
    parts = re.findall(r"(\d+)\s*([a-z]+)\s*", str(value))
    if not parts or "".join(f"{n}{u}" for n, u in parts) != re.sub(r"\s+", "", str(value)):
        return int(value) if str(value).strip().isdigit() else None
    if any(u not in UNITS for _, u in parts):
        return None
    return sum(int(n) * UNITS[u] for n, u in parts)

def selects(selector, labels):
    """A label selector (matchLabels, matchExpressions) against a set of labels."""
    if not selector or not (selector.get("matchLabels") or selector.get("matchExpressions")):
        return False
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for e in selector.get("matchExpressions", []):
        key, op, values = e["key"], e["operator"], e.get("values", [])
        if (op == "In" and labels.get(key) not in values) or \
                (op == "NotIn" and key in labels and labels[key] in values) or \
                (op == "Exists" and key not in labels) or (op == "DoesNotExist" and key in labels):
            return False
    return True

def secret_keys(doc):
    return set(doc.get("data") or {}) | set(doc.get("stringData") or {})

def secret_value(doc, key):
    if key in (doc.get("stringData") or {}):
        return str(doc["stringData"][key])
    if key in (doc.get("data") or {}):
        import base64
        return base64.b64decode(doc["data"][key]).decode()
    return None

with open("deploy/README.md") as f:
    deploy_readme = f.read()

def documented(secret, key=None):
    """A Secret with no example manifest must be documented in deploy/README.md by the
    `kubectl create secret generic NAME --from-...=KEY=...` that creates it."""
    m = re.search(r"create secret generic " + re.escape(secret) + r"\b([^`]*)", deploy_readme)
    if not m:
        return False
    return key is None or re.search(r"--from-(?:literal|file)=" + re.escape(key) + r"=", m.group(1)) is not None

def check_documented_keys(path):
    """Every key config/hexmirror.toml sets or shows commented out is one this script knows."""
    known = {None: TOP_KEYS, "repos": REPO_KEYS, "access": ACCESS_KEYS, "store": STORE_KEYS, "policy": POLICY_KEYS}
    table = header = None
    with open(path) as f:
        for n, line in enumerate(f, 1):
            m = re.match(r"^#?\s*\[([^\]]+)\]\s*(#.*)?$", line)
            if m:
                header = m.group(1)
                parts = header.split(".")
                nested = parts[-1] if parts[-1] in ("access", "policy") and len(parts) > 2 else "repos"
                table = {"repos": nested}.get(parts[0], parts[0])
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

def under(d):
    """The documents of folder d and its subfolders (an example Secret kept out of the applied set)."""
    return [(p, doc) for sub, docs in by_dir.items() if sub == d or sub.startswith(d + os.sep)
            for p, doc in docs]

LONG_RUNNING = ("StatefulSet", "Deployment", "DaemonSet")
# hexmirror's subcommands: a container of a hexmirror image running one of these is a hexmirror.
SUBCOMMANDS = {"serve", "sync", "verify", "export", "import", "inspect", "cache", "refusals", "missing",
               "check-config"}
# Arguments naming a file the command reads, which must be provided in the pod (only --config
# has a default in the image: /etc/hexmirror/hexmirror.toml).
FILE_ARGS = ("--config", "--requirements", "--lockfile")

def pod_template(doc):
    """A workload's pod template (a CronJob's is in its jobTemplate); None for other kinds."""
    if doc["kind"] in LONG_RUNNING + ("Job",):
        return doc["spec"]["template"]
    if doc["kind"] == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]
    return None

def hexmirror_command(c):
    """The subcommand a container of a hexmirror image runs, or None."""
    if "hexmirror" not in c.get("image", ""):
        return None
    argv = list(c.get("command", [])) + list(c.get("args", []))
    if argv and argv[0].rsplit("/", 1)[-1] == "hexmirror":
        argv = argv[1:]
    return argv[0] if argv and argv[0] in SUBCOMMANDS else None

def configmap_sources(vol):
    """(ConfigMap name, {file path in the volume: key} or None for every key, optional) of each
    ConfigMap a volume holds (a configMap volume, or the configMap sources of a projected one)."""
    sources = [vol["configMap"]] if "configMap" in vol else \
        [src["configMap"] for src in vol.get("projected", {}).get("sources", []) if "configMap" in src]
    for src in sources:
        items = src.get("items")
        yield src.get("name"), ({i["path"]: i["key"] for i in items} if items else None), src.get("optional", False)

def secret_names(vol):
    """The Secrets a volume holds (a secret volume, or the secret sources of a projected one)."""
    if "secret" in vol:
        return [vol["secret"].get("secretName")]
    return [src["secret"].get("name") for src in vol.get("projected", {}).get("sources", []) if "secret" in src]

def mounted_file(c, volumes, path):
    """Where the file `path` of container c comes from: (volume, [(ConfigMap, key)]) when a
    volume is mounted there, the list holding the ConfigMap keys that provide it (empty when a
    ConfigMap-backed volume does not have it; None for other volumes); None when no volume is."""
    best = None
    for m in c.get("volumeMounts", []):
        mount = m["mountPath"].rstrip("/")
        if path == mount or path.startswith(mount + "/"):
            if best is None or len(mount) > len(best[0]):
                best = (mount, m)
    if best is None or best[1]["name"] not in volumes:
        return None
    mount, m = best
    rel = path[len(mount) + 1:]
    if m.get("subPath"):
        rel = m["subPath"].rstrip("/") + ("/" + rel if rel else "")
    vol = volumes[m["name"]]
    sources = list(configmap_sources(vol))
    if not sources:
        return vol["name"], None
    found = []
    for cm, items, _ in sources:
        key = rel if items is None else items.get(rel)
        if key is not None:
            found.append((cm, key))
    return vol["name"], found

def file_args(c):
    """(flag, path) for each file argument of a container (--flag PATH or --flag=PATH)."""
    argv = list(c.get("command", [])) + list(c.get("args", []))
    for i, a in enumerate(argv):
        for flag in FILE_ARGS:
            if a == flag and i + 1 < len(argv):
                yield flag, argv[i + 1]
            elif a.startswith(flag + "="):
                yield flag, a[len(flag) + 1:]

for d, docs in by_dir.items():
    configmaps = {doc["metadata"]["name"]: doc.get("data", {}) for _, doc in docs if doc["kind"] == "ConfigMap"}
    configs = {}  # ConfigMap name -> (name of the file written to CONFIG_OUT, parsed config or None, text)
    for name, data in configmaps.items():
        if "hexmirror.toml" in data:
            where = f"{d} ConfigMap {name}"
            configs[name] = (out_name(where), check_toml(where, data["hexmirror.toml"], set(data)),
                             data["hexmirror.toml"])
    secrets = {doc["metadata"]["name"]: doc for _, doc in under(d) if doc["kind"] == "Secret"}
    used_keys = {name: set() for name in secrets}  # example Secret -> keys some workload reads
    workloads = []  # (path, kind, pod labels, replicas, pod spec)
    for path, doc in docs:
        kind = doc["kind"]
        template = pod_template(doc)
        if template is not None:
            pod = template["spec"]
            labels = template.get("metadata", {}).get("labels", {})
            replicas = doc["spec"].get("replicas", 1) if kind in ("StatefulSet", "Deployment") else None
            workloads.append((path, kind, labels, replicas, pod))
            volumes = {v["name"]: v for v in pod.get("volumes", [])}
            for vol in pod.get("volumes", []):
                for cm, items, may_lack in configmap_sources(vol):
                    if cm not in configmaps:
                        if not may_lack:
                            errors.append(f"{path}: volume {vol['name']} uses ConfigMap {cm}, not defined in {d}")
                        continue
                    for key in sorted(set((items or {}).values()) - set(configmaps[cm])):
                        errors.append(f"{path}: volume {vol['name']} projects key {key} of ConfigMap {cm}, "
                                      f"which has no such key")
                for secret in secret_names(vol):
                    if secret and secret not in secrets and not documented(secret):
                        errors.append(f"{path}: volume {vol['name']} uses Secret {secret}: no example of it under {d} "
                                      f"and no `kubectl create secret generic {secret}` in deploy/README.md")
            names = {v["name"] for v in pod.get("volumes", [])}
            names |= {t["metadata"]["name"] for t in doc["spec"].get("volumeClaimTemplates", [])}
            if kind in ("StatefulSet", "Deployment") and not selects(doc["spec"].get("selector"), labels):
                errors.append(f"{path}: spec.selector does not select the pod template's labels {labels}")
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
                # Secrets the container reads: in the example Secret, or documented.
                env = {}  # literal values, and example values of Secret keys
                for e in c.get("env", []):
                    ref = e.get("valueFrom", {}).get("secretKeyRef")
                    if ref is None:
                        if "value" in e:
                            env[e["name"]] = str(e["value"])
                        continue
                    if ref["name"] in secrets:
                        used_keys[ref["name"]].add(ref["key"])
                        value = secret_value(secrets[ref["name"]], ref["key"])
                        if value is None:
                            errors.append(f"{path}: {c['name']} env {e['name']} reads key {ref['key']} "
                                          f"of Secret {ref['name']}, missing from its example")
                        else:
                            env[e["name"]] = value
                    elif not documented(ref["name"], ref["key"]):
                        errors.append(f"{path}: {c['name']} env {e['name']} reads Secret {ref['name']} key "
                                      f"{ref['key']}: no example of it under {d} and not in a `kubectl create "
                                      f"secret generic {ref['name']} --from-literal={ref['key']}=...` in deploy/README.md")
                for e in c.get("envFrom", []):
                    ref = e.get("secretRef")
                    if ref is None:
                        continue
                    if ref["name"] in secrets:
                        keys = secret_keys(secrets[ref["name"]])
                        used_keys[ref["name"]] |= keys
                        env.update({e.get("prefix", "") + k: secret_value(secrets[ref["name"]], k) for k in keys})
                    elif not documented(ref["name"]):
                        errors.append(f"{path}: {c['name']} envFrom Secret {ref['name']}: no example of it under "
                                      f"{d} and no `kubectl create secret generic {ref['name']}` in deploy/README.md")
                command = hexmirror_command(c)
                if command is None:
                    continue
                # Every hexmirror container, serving or running a command: hardened, memory-limited,
                # and the files it is told to read provided.
                hexmirrors.append((c, env, command))
                sc = c.get("securityContext", {})
                if not (sc.get("readOnlyRootFilesystem") and sc.get("allowPrivilegeEscalation") is False
                        and "ALL" in sc.get("capabilities", {}).get("drop", [])
                        and (sc.get("runAsNonRoot") or pod.get("securityContext", {}).get("runAsNonRoot"))):
                    errors.append(f"{path}: {c['name']} is not hardened (non-root, read-only root, drop ALL, no escalation)")
                if not c.get("resources", {}).get("limits", {}).get("memory"):
                    errors.append(f"{path}: {c['name']} has no memory limit")
                for flag, file in file_args(c):
                    where = mounted_file(c, volumes, file)
                    if where is None:
                        if flag != "--config":  # the image has a default configuration, nothing else
                            errors.append(f"{path}: {c['name']} {flag} {file}: no volume is mounted there")
                    elif where[1] is not None and not any(key in configmaps.get(cm, {}) for cm, key in where[1]):
                        what = " or ".join(f"key {key} of ConfigMap {cm}" for cm, key in where[1])
                        errors.append(f"{path}: {c['name']} {flag} {file}: " +
                                      (f"{what} does not exist" if what else f"volume {where[0]} does not provide it"))
                if command == "serve":
                    paths = {c.get(p, {}).get("httpGet", {}).get("path") for p in ("readinessProbe", "startupProbe")}
                    if "/readyz" not in paths:
                        errors.append(f"{path}: {c['name']} has no /readyz readiness or startup probe")
                    if kind in LONG_RUNNING and c.get("livenessProbe", {}).get("httpGet", {}).get("path") != "/healthz":
                        errors.append(f"{path}: {c['name']} has no liveness probe on /healthz")
            if hexmirrors:
                if pod.get("automountServiceAccountToken") is not False:
                    errors.append(f"{path}: automountServiceAccountToken is not false (hexmirror needs no API token)")
                seccomp = [pod.get("securityContext", {}).get("seccompProfile", {}).get("type")] + \
                    [c.get("securityContext", {}).get("seccompProfile", {}).get("type") for c, _, _ in hexmirrors]
                if seccomp[0] not in ("RuntimeDefault", "Localhost") and \
                        not all(t in ("RuntimeDefault", "Localhost") for t in seccomp[1:]):
                    errors.append(f"{path}: no RuntimeDefault seccomp profile")
            serving = [c for c, _, command in hexmirrors if command == "serve"]
            if kind == "CronJob":
                if serving:
                    errors.append(f"{path}: a CronJob runs hexmirror serve ({serving[0]['name']}); schedule a command")
                if not hexmirrors:
                    errors.append(f"{path}: no hexmirror command container")
                spec = doc["spec"]
                job = spec["jobTemplate"]["spec"]
                if spec.get("concurrencyPolicy") != "Forbid":
                    errors.append(f"{path}: concurrencyPolicy is {spec.get('concurrencyPolicy', 'Allow')}, not Forbid "
                                  f"(two runs at once would do the same work twice)")
                for key in ("startingDeadlineSeconds", "successfulJobsHistoryLimit", "failedJobsHistoryLimit"):
                    if key not in spec:
                        errors.append(f"{path}: no {key}")
                for key in ("backoffLimit", "activeDeadlineSeconds"):
                    if key not in job:
                        errors.append(f"{path}: jobTemplate has no {key}")
            elif not serving:
                errors.append(f"{path}: no hexmirror serve container")
            job = {"CronJob": doc["spec"].get("jobTemplate", {}).get("spec", {}), "Job": doc["spec"]}.get(kind, {})
            if "podFailurePolicy" in job:
                if pod.get("restartPolicy") != "Never":
                    errors.append(f"{path}: podFailurePolicy needs restartPolicy: Never")
                names = {c["name"] for c in pod.get("containers", []) + pod.get("initContainers", [])}
                for rule in job["podFailurePolicy"].get("rules", []):
                    name = rule.get("onExitCodes", {}).get("containerName")
                    if name is not None and name not in names:
                        errors.append(f"{path}: podFailurePolicy names container {name}, which the pod does not have")
            if kind == "Job":
                sidecars = [c for c in pod.get("initContainers", []) if c.get("restartPolicy") == "Always"]
                if not sidecars:
                    errors.append(f"{path}: no native sidecar (init container with restartPolicy: Always)")

            # What each hexmirror container runs with: the configuration its --config names (without
            # one, the first mounted), overridden by its HEXMIRROR_* variables.
            mounted = [configs[cm] for v in pod.get("volumes", []) for cm, _, _ in configmap_sources(v) if cm in configs]
            for c, env, command in hexmirrors:
                named = [configs[cm] for flag, file in file_args(c) if flag == "--config"
                         for cm, key in (mounted_file(c, volumes, file) or (None, None))[1] or []
                         if key == "hexmirror.toml" and cm in configs]
                if not (named or mounted):
                    continue
                name, cfg, text = (named or mounted)[0]
                cfg = cfg or {}
                store = dict(cfg.get("store", {}))
                for key in STORE_KEYS:
                    if f"HEXMIRROR_STORE__{key.upper()}" in env:
                        store[key] = env[f"HEXMIRROR_STORE__{key.upper()}"]
                grace = seconds(env.get("HEXMIRROR_SHUTDOWN_GRACE", cfg.get("shutdown_grace", "30s")))
                if grace is None:
                    errors.append(f"{path}: shutdown_grace does not parse")
                elif kind in LONG_RUNNING and pod.get("terminationGracePeriodSeconds", 30) <= grace:
                    errors.append(f"{path}: terminationGracePeriodSeconds ({pod.get('terminationGracePeriodSeconds', 30)}) "
                                  f"must exceed shutdown_grace ({grace}s)")
                data_dir = env.get("HEXMIRROR_DATA_DIR", cfg.get("data_dir", "./data")).rstrip("/")
                if tomllib is not None and not any(
                        not m.get("readOnly") and (data_dir + "/").startswith(m["mountPath"].rstrip("/") + "/")
                        for m in c.get("volumeMounts", [])):
                    errors.append(f"{path}: {c['name']} data_dir {data_dir} is on no writable volume (read-only root)")
                # The kind after HEXMIRROR_STORE__KIND (without tomllib, as the text says).
                s3 = store.get("kind") == "s3" if tomllib else \
                    env.get("HEXMIRROR_STORE__KIND", "s3" if is_s3(None, text) else "local") == "s3"
                if kind == "CronJob" and not s3:
                    errors.append(f"{path}: {c['name']}: a CronJob on the local (sled) store: a pod of its own cannot "
                                  f"open the store the serving pod holds (one process per store, a ReadWriteOnce "
                                  f"volume); only the S3 store is shared")
                if s3:
                    if tomllib is not None and not store.get("bucket"):
                        errors.append(f"{path}: {c['name']}: [store] kind = \"s3\" without a bucket (file or HEXMIRROR_STORE__BUCKET)")
                    static = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} & {e["name"] for e in c.get("env", [])}
                    if static and len(static) != 2:
                        errors.append(f"{path}: {c['name']}: only one of AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY is set")
                    if not static and not pod.get("serviceAccountName"):
                        errors.append(f"{path}: {c['name']}: S3 store without credentials (AWS_ACCESS_KEY_ID and "
                                      f"AWS_SECRET_ACCESS_KEY, or a serviceAccountName for IRSA)")
                    if outdir:  # the variables check.sh passes to `hexmirror check-config`, per container
                        user = out_name(f"{kind}-{doc['metadata']['name']}-{c['name']}")
                        with open(os.path.join(outdir, f"{name}@{user}.env"), "w") as f:
                            for k, v in sorted(env.items()):
                                if k.startswith("HEXMIRROR_") and k not in ("HEXMIRROR_LISTEN", "HEXMIRROR_DATA_DIR") \
                                        and "\n" not in v:
                                    f.write(f"{k}={v}\n")

    # Several replicas: spread over nodes and zones, and covered by a PodDisruptionBudget.
    pdbs = [(p, doc) for p, doc in docs if doc["kind"] == "PodDisruptionBudget"]
    for path, kind, labels, replicas, pod in workloads:
        if kind not in ("Deployment", "StatefulSet") or replicas is None or replicas < 2:
            continue
        spread = pod.get("topologySpreadConstraints", [])
        keys = {t.get("topologyKey") for t in spread}
        for key in ("kubernetes.io/hostname", "topology.kubernetes.io/zone"):
            if key not in keys:
                errors.append(f"{path}: {replicas} replicas without a topologySpreadConstraint on {key}")
        for t in spread:
            if not selects(t.get("labelSelector"), labels):
                errors.append(f"{path}: topologySpreadConstraint on {t.get('topologyKey')}: labelSelector "
                              f"does not select the pods {labels}")
        if not any(selects(doc["spec"].get("selector"), labels) for _, doc in pdbs):
            errors.append(f"{path}: {replicas} replicas and no PodDisruptionBudget in {d} selects the pods {labels}")
    for path, doc in pdbs:
        spec = doc["spec"]
        matched = [w for w in workloads if selects(spec.get("selector"), w[2])]
        if len(matched) != 1:
            errors.append(f"{path}: PodDisruptionBudget selector {spec.get('selector')} selects the pods of "
                          f"{len(matched)} workloads in {d} (want exactly 1)")
            continue
        replicas = matched[0][3] or 1
        if spec.get("maxUnavailable") == 0 or \
                (isinstance(spec.get("minAvailable"), int) and spec["minAvailable"] >= replicas):
            errors.append(f"{path}: PodDisruptionBudget allows no eviction of {matched[0][0]}'s {replicas} replicas")
    # Services select pods of this folder's workloads, on a port they declare.
    for path, doc in docs:
        if doc["kind"] != "Service" or not doc["spec"].get("selector"):
            continue
        matched = [w for w in workloads if selects({"matchLabels": doc["spec"]["selector"]}, w[2])]
        if not matched:
            errors.append(f"{path}: Service {doc['metadata']['name']} selects no pods of {d}")
            continue
        # Each workload it selects must serve the port: a Job's or CronJob's pod carrying the
        # mirror's labels would be sent traffic it does not answer.
        for w in matched:
            declared = {p.get(k) for c in w[4].get("containers", []) + w[4].get("initContainers", [])
                        for p in c.get("ports", []) for k in ("name", "containerPort")}
            for port in doc["spec"].get("ports", []):
                if port.get("targetPort", port.get("port")) not in declared:
                    errors.append(f"{path}: Service {doc['metadata']['name']} targetPort {port.get('targetPort')!r} "
                                  f"is not a port of the {w[1]} {w[0]} pods it selects")
    # Every key of an example Secret is read by some workload (a typo shows on both sides).
    for name, keys in used_keys.items() if workloads else ():
        for key in sorted(secret_keys(secrets[name]) - keys):
            errors.append(f"{d}: key {key} of the example Secret {name} is read by no workload")

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
