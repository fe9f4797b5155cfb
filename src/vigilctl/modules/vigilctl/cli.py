"""vigilctl's front door: one program, one subcommand per operator task.

A subcommand is a module of this package listed in SUBCOMMANDS with:
  SUMMARY                      one line for `vigilctl --help`
  add_arguments(parser, paths) its options (argparse)
  run(args, paths) -> int      0 all good, 1 a check failed, 2 usage or
                               environment error (raise UsageError for 2)
Adding one (fault, chaos, load, slo) is one module and one line here.
"""

import argparse
import importlib
import os
import re
import sys
import tempfile

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

# name -> module of this package, in the order `--help` lists them.
SUBCOMMANDS = {
    "validate": "vigilctl.validate",
    "fault": "vigilctl.fault",
    "slo": "vigilctl.slo",
    "load": "vigilctl.load",
    "chaos": "vigilctl.chaos",
}


class UsageError(Exception):
    """A usage or environment error: reported on stderr, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.print_usage(sys.stderr)
        print(f"{self.prog}: {message}", file=sys.stderr)
        sys.exit(EXIT_USAGE)



def replace_file(path, text, prefix):
    """Replace path with text (mode 0644): a temporary file beside it,
    synced, then renamed over it, so a reader sees the old file or the new
    one, never a part; nothing is left behind on failure."""
    fd, tmp = tempfile.mkstemp(prefix=prefix, dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise

def env_default(name, default):
    """An option's default from the environment (unset or empty: default)."""
    v = os.environ.get(name)
    return v if v else default


_SPAN_UNITS = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600}
_SPAN = re.compile(r"(\d+)\s*(sec|min|hr|s|m|h|)\s*")


def span_text(seconds):
    if seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    if seconds % 60 == 0:
        return f"{seconds // 60} min"
    return f"{seconds} s"


def parse_span(text, option, max_s, allow_zero=False, why=""):
    """Seconds of a systemd time span such as 90, 90s, 5m, 1h30m, at most
    max_s (and at least 1 unless allow_zero), or UsageError naming option."""
    s = (text or "").strip()
    if not s:
        raise UsageError(f"{option}: expected a time span such as 90s, 5m or 1h30m")
    total, pos = 0, 0
    while pos < len(s):
        m = _SPAN.match(s, pos)
        if not m or m.end() == pos:
            raise UsageError(f"{option} {text!r}: expected a time span such as 90s, 5m or 1h30m")
        total += int(m.group(1)) * _SPAN_UNITS[m.group(2)]
        pos = m.end()
    lo = 0 if allow_zero else 1
    if total < lo or total > max_s:
        raise UsageError(f"{option} {text!r}: must be between {lo} s and {span_text(max_s)}{why}")
    return total


def _front_door(paths):
    p = _Parser(
        prog="vigilctl",
        description="The vigil operator's front door.",
        epilog="Exit status: 0 all good, 1 a check failed, 2 usage or environment error. "
               "`vigilctl COMMAND --help` describes a command; see vigilctl(8).",
    )
    p.add_argument("--version", action="version", version=f"vigilctl {paths['version']}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    modules = {}
    for name, modname in SUBCOMMANDS.items():
        mod = importlib.import_module(modname)
        sp = sub.add_parser(name, help=mod.SUMMARY, description=mod.DESCRIPTION,
                            epilog=getattr(mod, "EPILOG", None),
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(sp, paths)
        modules[name] = mod
    return p, modules


def main(argv, paths):
    parser, modules = _front_door(paths)
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_usage(sys.stderr)
        print("vigilctl: a command is required (vigilctl --help lists them)", file=sys.stderr)
        return EXIT_USAGE
    try:
        return modules[args.command].run(args, paths)
    except UsageError as e:
        print(f"vigilctl {args.command}: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"vigilctl {args.command}: interrupted", file=sys.stderr)
        return 130
