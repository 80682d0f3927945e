#!/usr/bin/env python3
"""units.py DIR: what `systemd-analyze verify` cannot see in the systemd units of DIR
(deploy/systemd). Run by deploy/check.sh from the repository's top directory; stdlib only.

- hexmirror-sync.service is a Type=oneshot running `hexmirror sync` with the configuration of
  hexmirror.service, bounded by TimeoutStartSec;
- it runs as the server's user with the server's state directory (DynamicUser, the same User=
  named in both, StateDirectory, WorkingDirectory): otherwise it would not find, or would
  refuse, the admin.json of the running server;
- every other setting of hexmirror.service (the sandbox) is in it with the same values, except
  those that concern only a long-running server (SERVER_ONLY);
- its export for an air-gapped site (ExecStartPost=, commented out or not) uses the same
  configuration and writes under a StateDirectory the unit declares;
- hexmirror-sync.timer has OnCalendar, RandomizedDelaySec and Persistent=true, and starts a
  service that exists in DIR.

Prints one line per mistake; exit status 1 when there is one."""
import os, re, shlex, sys

d = sys.argv[1]
errors = []

# hexmirror.service settings that a oneshot does not share with the server.
SERVER_ONLY = {"Type", "ExecStart", "Restart", "RestartSec", "KillSignal", "TimeoutStopSec", "LimitNOFILE",
               "Environment", "LoadCredential"}
# Settings whose values must name the same user and directories in both units.
IDENTITY = ("DynamicUser", "User", "WorkingDirectory")

def parse(name, commented=False):
    """{section: {key: [values]}} of a unit file; with commented=True, also `#Key=value` lines."""
    units, section = {}, None
    path = os.path.join(d, name)
    if not os.path.isfile(path):
        errors.append(f"{path} is missing")
        return {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            m = re.match(r"^\[(.+)\]$", line)
            if m:
                section = units.setdefault(m.group(1), {})
                continue
            if commented and re.match(r"^#[A-Z][A-Za-z]+=", line):
                line = line[1:]
            m = re.match(r"^([A-Z][A-Za-z]+)=(.*)$", line)
            if m and section is not None:
                section.setdefault(m.group(1), []).append(m.group(2).strip())
    return units

def argv(value):
    """A command line of Exec*= without its prefixes (-, @, :, +, !)."""
    return shlex.split(value.lstrip("-@:+!"))

def option(args, flag):
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(flag + "="):
            return a[len(flag) + 1:]
    return None

server = parse("hexmirror.service").get("Service", {})
sync_unit = parse("hexmirror-sync.service")
sync = sync_unit.get("Service", {})
sync_all = parse("hexmirror-sync.service", commented=True).get("Service", {})
timer_unit = parse("hexmirror-sync.timer")
timer = timer_unit.get("Timer", {})

if server and sync:
    where = "hexmirror-sync.service"
    if sync.get("Type") != ["oneshot"]:
        errors.append(f"{where}: Type={sync.get('Type')}, not oneshot")
    if not sync.get("TimeoutStartSec"):
        errors.append(f"{where}: no TimeoutStartSec (a oneshot has no start timeout otherwise)")
    server_cmd = argv(server["ExecStart"][0]) if server.get("ExecStart") else []
    config = option(server_cmd, "--config")
    for value in sync.get("ExecStart", []) or [""]:
        cmd = argv(value)
        if len(cmd) < 2 or cmd[1] != "sync" or os.path.basename(cmd[0]) != "hexmirror":
            errors.append(f"{where}: ExecStart={value!r} does not run hexmirror sync")
        elif cmd[0] != server_cmd[0]:
            errors.append(f"{where}: runs {cmd[0]}, hexmirror.service runs {server_cmd[0]}")
        elif option(cmd, "--config") != config:
            errors.append(f"{where}: --config {option(cmd, '--config')}, hexmirror.service uses {config}")
    # The same user and state directory, or the sync cannot use the running server.
    if server.get("User") is None or sync.get("User") is None:
        errors.append(f"{where}: User= must name the dynamic user in both units (hexmirror.service: "
                      f"{server.get('User')}, hexmirror-sync.service: {sync.get('User')})")
    for key in IDENTITY:
        if server.get(key) != sync.get(key):
            errors.append(f"{where}: {key}={sync.get(key)}, hexmirror.service has {server.get(key)}")
    server_dirs = " ".join(server.get("StateDirectory", [])).split()
    sync_dirs = " ".join(sync.get("StateDirectory", [])).split()
    if not server_dirs or server_dirs[0] not in sync_dirs:
        errors.append(f"{where}: StateDirectory {sync_dirs} lacks hexmirror.service's {server_dirs}")
    # The sandbox: everything else hexmirror.service sets.
    for key, values in server.items():
        if key in SERVER_ONLY or key in IDENTITY or key == "StateDirectory":
            continue
        if sync.get(key) != values:
            errors.append(f"{where}: {key}={sync.get(key)}, hexmirror.service has {values} (the same hardening)")
    # The export for an air-gapped site, commented out or not.
    all_dirs = " ".join(sync_all.get("StateDirectory", [])).split()
    for value in sync_all.get("ExecStartPost", []):
        cmd = argv(value)
        if len(cmd) < 2 or cmd[1] != "export":
            continue
        if cmd[0] != server_cmd[0]:
            errors.append(f"{where}: export runs {cmd[0]}, hexmirror.service runs {server_cmd[0]}")
        if option(cmd, "--config") != config:
            errors.append(f"{where}: export --config {option(cmd, '--config')}, hexmirror.service uses {config}")
        for flag in ("--out", "--base"):
            target = option(cmd, flag)
            if target is None:
                if flag == "--out":
                    errors.append(f"{where}: export without --out")
                continue
            parts = target.split("/")
            if target.startswith("/var/lib/") and (len(parts) < 4 or parts[3] not in all_dirs):
                errors.append(f"{where}: export {flag} {target} is in no StateDirectory of the unit ({all_dirs}): "
                              f"not writable under ProtectSystem=strict")

if timer_unit:
    where = "hexmirror-sync.timer"
    for key in ("OnCalendar", "RandomizedDelaySec"):
        if not timer.get(key):
            errors.append(f"{where}: no {key}")
    if timer.get("Persistent") != ["true"]:
        errors.append(f"{where}: Persistent={timer.get('Persistent')}, not true (a run missed while the host "
                      f"was off would wait a day)")
    unit = (timer.get("Unit") or ["hexmirror-sync.service"])[0]
    if not os.path.isfile(os.path.join(d, unit)):
        errors.append(f"{where}: starts {unit}, which is not in {d}")
    if "timers.target" not in " ".join(timer_unit.get("Install", {}).get("WantedBy", [])):
        errors.append(f"{where}: not WantedBy=timers.target")

for e in errors:
    print(e)
sys.exit(1 if errors else 0)
