"""vigilctl slo: the SLOs of /etc/vigil/slos.yml as Prometheus rules.

The SLO file is the only thing an operator edits. The generator (slo-gen,
shipped by vigil-monitoring) turns it into slo-<name>.yml rule files; this
command lists the SLOs, shows what a regeneration would change, checks the
result with `promtool check rules` and only then puts it in place and
reloads Prometheus. When anything fails on the way the rules in place are
left exactly as they were.
"""

import difflib
import json
import os
import re
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request

from vigilctl.cli import EXIT_FAILED, EXIT_OK, UsageError, replace_file

SUMMARY = "list, check and apply the SLOs of /etc/vigil/slos.yml"
DESCRIPTION = """\
Turn the SLO file (/etc/vigil/slos.yml) into Prometheus rules without
editing a rule by hand.

  list   the SLOs the file declares
  check  generate the rules, check them with `promtool check rules` and
         show how they differ from those in place (exit 1 when they do not
         pass or differ)
  apply  the same, then put them in place (slo-*.yml of the rules
         directory, stale ones removed) and reload Prometheus; when the
         check or the reload fails, the previous rules are kept"""
EPILOG = """\
Paths can be overridden by option or environment variable (VIGILCTL_SLO_FILE,
VIGILCTL_RULES_DIR, VIGILCTL_SLO_GEN, VIGILCTL_PROMTOOL,
VIGILCTL_PROMETHEUS_RELOAD).

Exit status: 0 all good (check: the rules in place are current), 1 a check
or the reload failed, or the rules in place differ, 2 usage or environment
error."""

RULE_FILE = re.compile(r"slo-.*\.yml")


def _env(name, default):
    v = os.environ.get(name)
    return v if v else default


def add_arguments(p, paths):
    etc = paths["sysconfdir"]
    p.add_argument("action", choices=("list", "check", "apply"), help="what to do")
    p.add_argument("--file", default=_env("VIGILCTL_SLO_FILE", os.path.join(etc, "vigil", "slos.yml")),
                   metavar="PATH", help="the SLO file (default %(default)s)")
    p.add_argument("--rules-dir",
                   default=_env("VIGILCTL_RULES_DIR", os.path.join(etc, "prometheus", "rules")),
                   metavar="DIR", help="where Prometheus reads them (default %(default)s)")
    p.add_argument("--generator",
                   default=_env("VIGILCTL_SLO_GEN", os.path.join(paths["libexecdir"], "vigil", "slo-gen")),
                   metavar="PATH", help="the generator (default %(default)s)")
    p.add_argument("--promtool", default=_env("VIGILCTL_PROMTOOL", "promtool"), metavar="PATH",
                   help="promtool (default: from PATH)")
    p.add_argument("--reload", default=_env("VIGILCTL_PROMETHEUS_RELOAD", "systemctl"),
                   metavar="HOW",
                   help="how to reload Prometheus: 'systemctl' (systemctl reload prometheus), "
                        "a URL to POST (http://127.0.0.1:9090/-/reload, needs "
                        "--web.enable-lifecycle), or 'none' (default %(default)s)")
    p.add_argument("--dry-run", action="store_true",
                   help="apply: say what would change, change nothing")
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")


def _run(argv, what):
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    except FileNotFoundError:
        raise UsageError(f"{what} not found: {argv[0]}") from None
    except subprocess.TimeoutExpired:
        raise UsageError(f"{what} did not finish within 60 s: {' '.join(argv)}") from None


def _generate(args, out_dir):
    """Generate the rules of args.file into out_dir; {name: text}."""
    if not os.path.exists(args.generator):
        raise UsageError(f"the SLO generator {args.generator} is not installed "
                         "(it comes with vigil-monitoring)")
    r = _run([sys.executable, args.generator, "--spec", args.file, "--out-dir", out_dir],
             "the SLO generator")
    if r.returncode != 0:
        raise _SpecError((r.stderr or r.stdout).strip())
    files = {}
    for name in sorted(os.listdir(out_dir)):
        if RULE_FILE.fullmatch(name):
            with open(os.path.join(out_dir, name), encoding="utf-8") as f:
                files[name] = f.read()
    return files


class _SpecError(Exception):
    pass


def _in_place(rules_dir):
    files = {}
    if os.path.isdir(rules_dir):
        for name in sorted(os.listdir(rules_dir)):
            if RULE_FILE.fullmatch(name):
                with open(os.path.join(rules_dir, name), encoding="utf-8") as f:
                    files[name] = f.read()
    return files


def _promtool_check(args, out_dir, names):
    paths = [os.path.join(out_dir, n) for n in names]
    r = _run([args.promtool, "check", "rules", *paths], "promtool")
    return r.returncode == 0, (r.stdout + r.stderr).strip()


def _changes(old, new):
    """[(name, 'added'|'changed'|'removed', diff text)]."""
    out = []
    for name in sorted(set(old) | set(new)):
        if name not in old:
            out.append((name, "added", ""))
        elif name not in new:
            out.append((name, "removed", ""))
        elif old[name] != new[name]:
            diff = "".join(difflib.unified_diff(old[name].splitlines(True),
                                                new[name].splitlines(True),
                                                f"in place/{name}", f"generated/{name}"))
            out.append((name, "changed", diff))
    return out


def _reload(args):
    """Reload Prometheus; (ok, message)."""
    how = args.reload
    if how == "none":
        return True, "not reloaded (--reload none)"
    if how == "systemctl":
        r = _run(["systemctl", "reload", "prometheus"], "systemctl")
        if r.returncode != 0:
            return False, f"systemctl reload prometheus failed: {(r.stderr or r.stdout).strip()}"
        return True, "reloaded (systemctl reload prometheus)"
    if how.startswith(("http://", "https://")):
        try:
            req = urllib.request.Request(how, data=b"", method="POST")
            with urllib.request.urlopen(req, timeout=30) as resp:
                resp.read()
            return True, f"reloaded (POST {how})"
        except urllib.error.HTTPError as e:
            body = e.read().decode("utf-8", "replace").strip()
            return False, f"POST {how} answered {e.code}: {body}"
        except (urllib.error.URLError, OSError) as e:
            return False, f"POST {how} failed: {getattr(e, 'reason', e)}"
    raise UsageError(f"--reload: expected systemctl, none or an http:// URL, got {how!r}")


def _write(rules_dir, new, old):
    """Put new in place (each file atomically), remove stale ones."""
    os.makedirs(rules_dir, exist_ok=True)
    for name, text in new.items():
        replace_file(os.path.join(rules_dir, name), text, f".{name}.")
    for name in old:
        if name not in new:
            os.unlink(os.path.join(rules_dir, name))


def _put_back(rules_dir, old, new):
    """Undo a _write of new over old, as far as the directory lets us."""
    try:
        _write(rules_dir, old, new)
    except OSError as e:
        print(f"vigilctl slo: could not put the previous rules back in {rules_dir}: {e}",
              file=sys.stderr)


def _list(args):
    if not os.path.exists(args.generator):
        raise UsageError(f"the SLO generator {args.generator} is not installed "
                         "(it comes with vigil-monitoring)")
    r = _run([sys.executable, args.generator, "--spec", args.file, "--list"], "the SLO generator")
    if r.returncode != 0:
        print(f"vigilctl slo: {args.file}: {(r.stderr or r.stdout).strip()}", file=sys.stderr)
        return EXIT_FAILED
    slos = json.loads(r.stdout)
    if args.json:
        json.dump({"file": args.file, "slos": slos}, sys.stdout, indent=1)
        print()
        return EXIT_OK
    rows = [("NAME", "SERVICE", "OBJECTIVE", "SLI", "RULE FILE")]
    for s in slos:
        sli = s["sli"] + (f" <= {s['le']} s" if s.get("le") else "")
        rows.append((s["name"], s["service"], s["objective"] + " %", sli, s["file"]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    return EXIT_OK


def run(args, paths):
    if args.dry_run and args.action != "apply":
        raise UsageError("--dry-run goes with apply")
    if not os.path.isfile(args.file):
        raise UsageError(f"no SLO file at {args.file}")
    if args.action == "list":
        return _list(args)

    result = {"file": args.file, "rules_dir": args.rules_dir, "action": args.action,
              "changes": [], "promtool": None, "applied": False, "reload": None}
    code = EXIT_OK
    with tempfile.TemporaryDirectory(prefix="vigilctl-slo-") as tmp:
        try:
            new = _generate(args, tmp)
        except _SpecError as e:
            result["error"] = f"{args.file}: {e}"
            return _report(args, result, EXIT_FAILED)
        old = _in_place(args.rules_dir)
        result["changes"] = [{"file": n, "change": c, "diff": d} for n, c, d in _changes(old, new)]
        ok, out = _promtool_check(args, tmp, sorted(new))
        result["promtool"] = {"ok": ok, "output": out}
        if not ok:
            result["error"] = "promtool check rules failed: the rules in place are unchanged"
            return _report(args, result, EXIT_FAILED)

        if args.action == "check":
            code = EXIT_FAILED if result["changes"] else EXIT_OK
            return _report(args, result, code)
        if args.dry_run or not result["changes"]:
            return _report(args, result, EXIT_OK)

        try:
            _write(args.rules_dir, new, old)
        except OSError as e:
            _put_back(args.rules_dir, old, new)
            raise UsageError(f"cannot write the rules in {args.rules_dir}: {e.strerror or e} "
                             "(as root?); the previous rules are in place") from None
        ok, message = _reload(args)
        result["reload"] = {"ok": ok, "message": message}
        if not ok:
            # Prometheus still runs the previous rules: put them back so the
            # files say what it runs.
            _put_back(args.rules_dir, old, new)
            result["error"] = f"{message}: the previous rules were put back"
            return _report(args, result, EXIT_FAILED)
        result["applied"] = True
    return _report(args, result, code)


def _report(args, result, code):
    if args.json:
        json.dump(result, sys.stdout, indent=1)
        print()
        return code
    changes = result["changes"]
    if result.get("promtool") is not None:
        print(f"SLO file     {result['file']}")
        print(f"rules        {result['rules_dir']}")
        if not changes:
            print("changes      none: the rules in place are current")
        for c in changes:
            print(f"{c['change']:<12} {c['file']}")
        for c in changes:
            if c["diff"]:
                sys.stdout.write(c["diff"])
        print("promtool     " + ("rules OK" if result["promtool"]["ok"] else "FAILED"))
        if not result["promtool"]["ok"]:
            print(result["promtool"]["output"])
    if result["action"] == "apply" and result["promtool"] and result["promtool"]["ok"]:
        if args.dry_run:
            print("dry run      nothing written, Prometheus not reloaded")
        elif result["applied"]:
            print(f"applied      {result['reload']['message']}")
    if result.get("error"):
        print(f"vigilctl slo: {result['error']}", file=sys.stderr)
    elif result["action"] == "check" and changes:
        print("vigilctl slo: the rules in place differ from the SLO file: "
              "`vigilctl slo apply` puts them in place", file=sys.stderr)
    return code
