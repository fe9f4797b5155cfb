"""vigilctl fault: set a daemon's [faults] for a while, and take them away.

The fault is a drop-in, /etc/vigil/<daemon>.conf.d/50-vigilctl-fault.conf,
applied with `systemctl reload`. Before the drop-in is written, a transient
systemd timer (vigil-fault-clear-<daemon>.timer, from `systemd-run
--on-active=`) is armed to remove it and reload again when the duration is
over, so the fault goes away even if vigilctl dies or the operator forgets.
Everything given is validated before anything is touched.
"""

import configparser
import datetime
import json
import os
import re
import shlex
import subprocess
import sys

from vigilctl.cli import EXIT_FAILED, EXIT_OK, UsageError, env_default, parse_span, replace_file

SUMMARY = "inject a fault into a daemon for a bounded time"
DESCRIPTION = """\
Set [faults] keys of one daemon for a bounded time:

  vigilctl fault inventoryd error_ratio=0.5 latency_ms=300 --for 5m
  vigilctl fault authd fail_dependency=redis --for 90s
  vigilctl fault inventoryd --clear
  vigilctl fault --list

The keys go into /etc/vigil/DAEMON.conf.d/50-vigilctl-fault.conf and the
unit is reloaded. A transient timer, vigil-fault-clear-DAEMON.timer, armed
before the file is written, removes it and reloads the unit when the time is
over, even if vigilctl is killed. A new fault on the same daemon replaces
the previous one (and its timer).

Keys (the daemon's [faults] section; see vigil.conf(5) and
docs/configuration.md):
  error_ratio=0..1            share of API requests answered 503
  latency_ms=0..60000         latency added to API requests
  routes=/a,/b/*              the routes those two apply to (default: all)
  fail_dependency=NAME        a dependency treated as down
  hang_seconds=0..3600        hang the main loop once (watchdog drill)
  leak_kib_per_second=0..65536  leak memory, up to 256 MiB"""
EPILOG = """\
DURATION is a systemd time span: 90, 90s, 5m, 1h, 1h30m (at most 24h).

Exit status: 0 done, 1 the unit refused the reload (nothing left behind),
2 usage or environment error (nothing touched)."""

DROPIN_NAME = "50-vigilctl-fault.conf"
MAX_DURATION_S = 24 * 3600

# The dependencies each daemon can fail: the `dependencies` of its
# faults_scope (src/<daemon>/<daemon>-manager.c).
DEPENDENCIES = {
    "authd": ("postgres", "redis"),
    "paymentd": ("postgres", "auth", "amqp"),
    "inventoryd": ("postgres", "redis", "auth"),
    "notifyd": ("postgres", "amqp"),
    "alertbotd": (),
}

# key -> (kind, min, max), as src/lib/faults.h declares them.
KEYS = {
    "error_ratio": ("float", 0.0, 1.0),
    "latency_ms": ("int", 0, 60000),
    "routes": ("routes", None, None),
    "fail_dependency": ("dependency", None, None),
    "hang_seconds": ("int", 0, 3600),
    "leak_kib_per_second": ("int", 0, 65536),
}
MAX_ROUTE_PATTERNS = 16
MAX_ROUTES_LENGTH = 1024

def add_arguments(p, paths):
    etc = os.path.join(paths["sysconfdir"], "vigil")
    p.add_argument("daemon", nargs="?", metavar="DAEMON",
                   help="authd, paymentd, inventoryd, notifyd or alertbotd")
    p.add_argument("settings", nargs="*", metavar="KEY=VALUE", help="[faults] keys to set")
    p.add_argument("--for", dest="duration", metavar="DURATION",
                   help="how long the fault lasts (required when setting one)")
    p.add_argument("--clear", action="store_true", help="remove DAEMON's fault now")
    p.add_argument("--list", action="store_true", help="show the faults set and when they end")
    p.add_argument("--dry-run", action="store_true",
                   help="print what would be written and run, change nothing")
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    p.add_argument("--etc", default=env_default("VIGILCTL_ETC", etc), metavar="DIR",
                   help=f"the daemons' configuration (default {etc})")


# --------------------------------------------------------------------------
# validation: nothing is touched before all of it passed

def parse_duration(text):
    """Seconds of a systemd time span such as 90, 90s, 5m, 1h30m."""
    if not (text or "").strip():
        raise UsageError("--for DURATION is required (e.g. --for 5m)")
    return parse_span(text, "--for", MAX_DURATION_S)


def _number(key, kind, lo, hi, value):
    try:
        v = float(value) if kind == "float" else int(value, 10)
    except ValueError:
        what = "a number" if kind == "float" else "an integer"
        raise UsageError(f"{key}={value!r}: expected {what}") from None
    if v != v or not lo <= v <= hi:
        raise UsageError(f"{key}={value}: out of range {lo}..{hi}")
    return value


def _routes(value):
    patterns = [p.strip() for p in value.split(",") if p.strip()]
    if len(value) > MAX_ROUTES_LENGTH or len(patterns) > MAX_ROUTE_PATTERNS:
        raise UsageError(f"routes: at most {MAX_ROUTE_PATTERNS} patterns and "
                         f"{MAX_ROUTES_LENGTH} characters")
    for p in patterns:
        if not p.startswith("/") or any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in p):
            raise UsageError(f"routes: {p!r} is not a route pattern (e.g. /login, /product/*)")
    return ",".join(patterns)


def validate_settings(daemon, settings):
    """[(key, value)] in the order given, or UsageError."""
    out = {}
    for item in settings:
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise UsageError(f"{item!r}: expected KEY=VALUE")
        if key not in KEYS:
            raise UsageError(f"unknown key {key!r} (expected one of: {', '.join(KEYS)})")
        if key in out:
            raise UsageError(f"{key} given twice")
        if "\n" in value or "\r" in value or ";" in value or "#" in value:
            raise UsageError(f"{key}: the value may not contain a newline, ';' or '#'")
        kind, lo, hi = KEYS[key]
        if kind in ("float", "int"):
            value = _number(key, kind, lo, hi, value)
        elif kind == "routes":
            value = _routes(value)
        elif value and value not in DEPENDENCIES[daemon]:
            names = ", ".join(DEPENDENCIES[daemon]) or "none"
            raise UsageError(f"fail_dependency={value}: vigil-{daemon} can fail: {names}")
        out[key] = value
    if not out:
        raise UsageError("give at least one KEY=VALUE, or --clear, or --list")
    return list(out.items())


def validate_daemon(name):
    if name and name.startswith("vigil-"):
        name = name[len("vigil-"):]
    if name and name.endswith(".service"):
        name = name[:-len(".service")]
    if name not in DEPENDENCIES:
        raise UsageError(f"unknown daemon {name!r} (expected one of: {', '.join(DEPENDENCIES)})")
    return name


# --------------------------------------------------------------------------
# systemd

def unit(daemon):
    return f"vigil-{daemon}.service"


def clear_unit(daemon):
    return f"vigil-fault-clear-{daemon}"


def dropin_path(etc, daemon):
    return os.path.join(etc, f"{daemon}.conf.d", DROPIN_NAME)


def _run(cmd, dry_run, log):
    log.append(cmd)
    if dry_run:
        return subprocess.CompletedProcess(cmd, 0, "", "")
    try:
        return subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=60, check=False)
    except FileNotFoundError:
        raise UsageError(f"{cmd[0]} not found: vigilctl fault needs systemd") from None
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(cmd, 124, "", f"{cmd[0]} timed out")


def disarm(daemon, dry_run, log):
    """Stop a previous clear timer and forget its units (they may not exist)."""
    name = clear_unit(daemon)
    _run(["systemctl", "stop", f"{name}.timer", f"{name}.service"], dry_run, log)
    _run(["systemctl", "reset-failed", f"{name}.timer", f"{name}.service"], dry_run, log)


def clear_command(etc, daemon):
    """What the timer runs: remove the drop-in, reload the daemon."""
    return ["/bin/sh", "-c",
            f"rm -f -- {shlex.quote(dropin_path(etc, daemon))} && "
            f"systemctl reload {unit(daemon)}"]


def arm(etc, daemon, seconds, dry_run, log):
    cmd = ["systemd-run", f"--on-active={seconds}s", f"--unit={clear_unit(daemon)}",
           f"--description=Clear the vigilctl fault of vigil-{daemon}",
           "--timer-property=AccuracySec=1s", "--quiet", *clear_command(etc, daemon)]
    r = _run(cmd, dry_run, log)
    if r.returncode != 0:
        raise UsageError(f"could not arm the clear timer ({' '.join(cmd[:3])} …): "
                         f"{(r.stderr or r.stdout).strip()}; nothing changed")


def reload(daemon, dry_run, log):
    return _run(["systemctl", "reload", unit(daemon)], dry_run, log)


# --------------------------------------------------------------------------
# the drop-in

def dropin_text(daemon, settings, now, ends):
    lines = [
        f"# Written by vigilctl fault at {now:%Y-%m-%dT%H:%M:%SZ}; removed at",
        f"# {ends:%Y-%m-%dT%H:%M:%SZ} by {clear_unit(daemon)}.timer, or now by",
        f"# `vigilctl fault {daemon} --clear`.",
        f"# ends={int(ends.timestamp())}",
        "[faults]",
    ]
    lines += [f"{k} = {v}" for k, v in settings]
    return "\n".join(lines) + "\n"


def write_atomically(path, text):
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o755, exist_ok=True)
    replace_file(path, text, ".vigilctl-fault.")


def read_dropin(path):
    """(settings dict, end as a UTC datetime or None) of a drop-in, or None."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return None
    ends = None
    m = re.search(r"^# ends=(\d+)$", text, re.M)
    if m:
        ends = datetime.datetime.fromtimestamp(int(m.group(1)), datetime.timezone.utc)
    cp = configparser.ConfigParser(interpolation=None)
    try:
        cp.read_string(text)
        settings = dict(cp["faults"]) if cp.has_section("faults") else {}
    except configparser.Error:
        settings = {}
    return settings, ends


# --------------------------------------------------------------------------
# the three actions

def do_set(args, daemon, log):
    settings = validate_settings(daemon, args.settings)
    seconds = parse_duration(args.duration)
    path = dropin_path(args.etc, daemon)
    if not os.path.isdir(args.etc):
        raise UsageError(f"{args.etc} does not exist: is vigil installed?")
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    ends = now + datetime.timedelta(seconds=seconds)
    text = dropin_text(daemon, settings, now, ends)

    # The clear is armed first: from here on, whatever happens to us, the
    # fault ends on time.
    disarm(daemon, args.dry_run, log)
    arm(args.etc, daemon, seconds, args.dry_run, log)
    if not args.dry_run:
        try:
            write_atomically(path, text)
        except OSError as e:
            disarm(daemon, False, log)
            raise UsageError(f"cannot write {path}: {e.strerror}; nothing changed") from None
    r = reload(daemon, args.dry_run, log)
    if r.returncode != 0:
        # Refused: leave nothing behind.
        if not args.dry_run:
            os.unlink(path)
        reload(daemon, args.dry_run, log)
        disarm(daemon, args.dry_run, log)
        return EXIT_FAILED, {"daemon": daemon, "set": False, "path": path,
                             "error": (r.stderr or r.stdout).strip()
                             or f"systemctl reload {unit(daemon)} failed"}
    return EXIT_OK, {"daemon": daemon, "set": True, "path": path, "settings": dict(settings),
                     "ends": ends.isoformat(), "seconds": seconds, "text": text,
                     "timer": f"{clear_unit(daemon)}.timer"}


def do_clear(args, daemon, log):
    path = dropin_path(args.etc, daemon)
    existed = os.path.exists(path)
    if existed and not args.dry_run:
        try:
            os.unlink(path)
        except OSError as e:
            raise UsageError(f"cannot remove {path}: {e.strerror}") from None
    if existed:
        r = reload(daemon, args.dry_run, log)
        if r.returncode != 0:
            print(f"vigilctl fault: warning: systemctl reload {unit(daemon)} failed: "
                  f"{(r.stderr or r.stdout).strip()}", file=sys.stderr)
    disarm(daemon, args.dry_run, log)
    return EXIT_OK, {"daemon": daemon, "cleared": existed, "path": path}


def do_list(args):
    faults = []
    for daemon in DEPENDENCIES:
        found = read_dropin(dropin_path(args.etc, daemon))
        if found is None:
            continue
        settings, ends = found
        # Whether the timer that ends it is still armed.
        r = _run(["systemctl", "show", "-p", "ActiveState", "--value",
                  f"{clear_unit(daemon)}.timer"], False, [])
        timer = r.stdout.strip() if r.returncode == 0 and r.stdout.strip() else "unknown"
        faults.append({"daemon": daemon, "settings": settings,
                       "ends": ends.isoformat() if ends else None, "timer": timer})
    return EXIT_OK, {"faults": faults}


def run(args, paths):
    del paths
    log = []
    if args.list:
        if args.daemon or args.settings or args.clear or args.duration:
            raise UsageError("--list takes no daemon, keys, --clear or --for")
        code, doc = do_list(args)
        if args.json:
            print(json.dumps(doc, indent=2))
        elif not doc["faults"]:
            print("No fault set.")
        else:
            width = max(len(f["daemon"]) for f in doc["faults"])
            for f in doc["faults"]:
                keys = " ".join(f"{k}={v}" for k, v in f["settings"].items())
                print(f"{f['daemon']:<{width}}  until {f['ends'] or 'unknown'}  "
                      f"(timer {f['timer']})  {keys}")
        return code

    daemon = validate_daemon(args.daemon)
    if args.clear:
        if args.settings or args.duration:
            raise UsageError("--clear takes no keys and no --for")
        code, doc = do_clear(args, daemon, log)
    else:
        code, doc = do_set(args, daemon, log)
    doc["commands"] = [shlex.join(c) for c in log]
    doc["dry_run"] = args.dry_run

    if args.json:
        print(json.dumps(doc, indent=2))
        return code
    for c in doc["commands"] if args.dry_run else ():
        print(f"would run: {c}")
    if args.clear:
        print(f"{'Would clear' if args.dry_run else 'Cleared'} the fault of vigil-{daemon}"
              if doc["cleared"] else f"vigil-{daemon} had no fault set")
    elif doc.get("set"):
        if args.dry_run:
            print(f"would write {doc['path']}:\n{doc['text']}", end="")
        else:
            keys = " ".join(f"{k}={v}" for k, v in doc["settings"].items())
            print(f"vigil-{daemon}: {keys} until {doc['ends']} "
                  f"(cleared by {doc['timer']}; `vigilctl fault {daemon} --clear` ends it now)")
    else:
        print(f"vigil-{daemon} refused the fault ({doc['error']}); nothing left behind",
              file=sys.stderr)
    return code
