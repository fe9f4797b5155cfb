#!/usr/bin/env python3
"""Generate vigil's SLO recording rules and burn-rate alerts from slo/slos.yml.

For every SLO in the spec this writes etc/prometheus/rules/slo-<name>.yml:

  slo:sli_error:ratio_rate<W>   error ratio over W in 5m 30m 1h 2h 6h 1d 3d 30d
  slo:sli_events:rate<W>        SLI events per second over the same windows
                                (the minimum-traffic guard reads these)
  slo:objective:ratio           the objective as a ratio (0.999)
  slo:error_budget:remaining    1 - error ratio over 30d / (1 - objective)
  VigilSLOBudgetBurnPage        14.4x over 1h and 5m, or 6x over 6h and 30m
  VigilSLOBudgetBurnTicket      3x over 1d and 2h, or 1x over 3d and 6h

every series and alert labelled slo=<name>, service=<job>, and each alert's
long window guarded by a minimum event rate from the spec so that a handful of
requests on an idle service cannot page.

  slo-gen.py [--spec FILE] [--out-dir DIR] [--windows-scale F] [--check | --list]

--windows-scale multiplies every window, `for` duration and group interval
(e.g. 1/60 turns 1h into 1m) while keeping the record names, so a test can
see an alert go pending and fire within seconds. Never ship scaled files.
--check compares instead of writing and exits 1 listing what differs.
--list prints the SLOs of the spec as JSON and writes nothing.
Installed as /usr/libexec/vigil/slo-gen, run by `vigilctl slo`.
Python 3 and PyYAML (Debian: python3-yaml).
"""

import argparse
import difflib
import fractions
import json
import os
import re
import sys
from decimal import Decimal

import yaml

TOP = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
RUNBOOK_BASE = "https://github.com/vigil-sre/vigil/blob/main/docs/runbooks/"

# (record suffix, seconds): every window any alert or dashboard reads.
WINDOWS = [("5m", 300), ("30m", 1800), ("1h", 3600), ("2h", 7200), ("6h", 21600),
           ("1d", 86400), ("3d", 259200), ("30d", 2592000)]
# Long windows are evaluated less often: a rate over days costs more and
# moves slowly. Kept well under the 5m lookback so no gap appears.
FAST_WINDOWS = ("5m", "30m", "1h", "2h", "6h")
SLOW_INTERVAL = 120

# (alert, severity, for seconds, [(burn factor, long window, short window)])
ALERTS = [
    ("VigilSLOBudgetBurnPage", "page", 120, [(Decimal("14.4"), "1h", "5m"),
                                             (Decimal("6"), "6h", "30m")]),
    ("VigilSLOBudgetBurnTicket", "ticket", 900, [(Decimal("3"), "1d", "2h"),
                                                 (Decimal("1"), "3d", "6h")]),
]

HEADER = """\
# Generated from the SLO file (/etc/vigil/slos.yml; slo/slos.yml in the
# source) -- do not edit by hand: edit that file, then `vigilctl slo apply`.
# SLO {name}: {description}
# Objective: {objective} % over 30 days. Good events: {what}.
# Minimum-traffic guard: {min_rate} events/s over each alert's long window.
"""


class SpecError(Exception):
    pass


def fail(msg):
    raise SpecError(msg)


def fmt_duration(seconds):
    """Prometheus duration for a positive number of seconds (a Fraction)."""
    ms = int(round(seconds * 1000))
    if ms <= 0:
        ms = 1
    if ms % 1000:
        return f"{ms}ms"
    s = ms // 1000
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if s % n == 0:
            return f"{s // n}{unit}"
    return f"{s}s"


def fmt_number(d):
    """A Decimal without exponent or trailing zeros."""
    s = format(d.normalize(), "f")
    return s


def label_matchers(pairs):
    return ",".join(f'{k}{op}"{v}"' for k, op, v in pairs)


class Slo:
    def __init__(self, raw, defaults):
        if not isinstance(raw, dict):
            fail("every entry of slos must be a mapping")
        self.name = raw.get("name")
        if not isinstance(self.name, str) or not re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", self.name):
            fail(f"slo name {self.name!r}: must match [a-z0-9-]+")
        where = f"slo {self.name}"
        known = {"name", "service", "objective", "min_rate", "description", "sli",
                 "routes_excluded"}
        extra = set(raw) - known
        if extra:
            fail(f"{where}: unknown keys {sorted(extra)}")
        self.service = raw.get("service")
        if not isinstance(self.service, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", self.service):
            fail(f"{where}: service must be a Prometheus job name")
        try:
            self.objective = Decimal(str(raw.get("objective")))
        except ArithmeticError:
            fail(f"{where}: objective must be a number")
        if not Decimal(0) < self.objective < Decimal(100):
            fail(f"{where}: objective must be between 0 and 100 (percent), exclusive")
        self.budget = (Decimal(100) - self.objective) / Decimal(100)
        try:
            self.min_rate = Decimal(str(raw.get("min_rate", defaults.get("min_rate", 0))))
        except ArithmeticError:
            fail(f"{where}: min_rate must be a number")
        if self.min_rate < 0:
            fail(f"{where}: min_rate must not be negative")
        self.description = str(raw.get("description", "")).strip()
        self.routes_excluded = str(raw.get("routes_excluded", defaults.get("routes_excluded", "")))
        sli = raw.get("sli")
        if not isinstance(sli, dict) or len(sli) != 1:
            fail(f"{where}: sli must have exactly one of availability, latency, freshness")
        (self.kind, params), = sli.items()
        params = params or {}
        if self.kind == "availability":
            if params:
                fail(f"{where}: availability takes no parameters")
            self.what = "answers other than 5xx; 429 and other 4xx count as good"
        elif self.kind in ("latency", "freshness"):
            le = params.get("le")
            try:
                float(le)
            except (TypeError, ValueError):
                fail(f"{where}: {self.kind}.le must be a bucket bound given as a string, e.g. \"0.2\"")
            if not isinstance(le, str):
                fail(f"{where}: {self.kind}.le must be quoted (it is matched as a label value)")
            self.le = le
            default_metric = "vigil_http_request_duration_seconds"
            self.metric = params.get("metric", default_metric if self.kind == "latency" else None)
            if not isinstance(self.metric, str) or not re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*", self.metric):
                fail(f"{where}: {self.kind}.metric must be a histogram name")
            unknown = set(params) - {"le", "metric"}
            if unknown:
                fail(f"{where}: unknown {self.kind} keys {sorted(unknown)}")
            self.what = (f"requests served within {le} s" if self.kind == "latency"
                         else f"events processed within {le} s")
        else:
            fail(f"{where}: unknown sli kind {self.kind!r}")

    def selector(self, *extra):
        pairs = [("job", "=", self.service)]
        if self.kind != "freshness" and self.routes_excluded:
            pairs.append(("route", "!~", self.routes_excluded))
        pairs.extend(extra)
        return "{" + label_matchers(pairs) + "}"

    def le_matcher(self):
        """The bucket's label matcher. A whole-number bound is written "30"
        in the text format but "30.0" in OpenMetrics, which Prometheus
        negotiates once exemplar storage is on, and 2.42 does not
        normalise le: match both spellings."""
        if "." not in self.le and float(self.le).is_integer():
            return ("le", "=~", f"{self.le}|{self.le}.0")
        return ("le", "=", self.le)

    def total_expr(self, w):
        if self.kind == "availability":
            return f"sum(rate(vigil_http_requests_total{self.selector()}[{w}]))"
        return f"sum(rate({self.metric}_count{self.selector()}[{w}]))"

    def error_ratio_expr(self, w):
        total = self.total_expr(w)
        if self.kind == "availability":
            errors = (f"sum(rate(vigil_http_requests_total"
                      f"{self.selector(('code', '=~', '5..'))}[{w}]))")
            # No 5xx series at all is a ratio of 0, not "no data".
            return f"(\n  {errors}\n  or vector(0)\n)\n/\n{total}\n"
        good = f"sum(rate({self.metric}_bucket{self.selector(self.le_matcher())}[{w}]))"
        return f"1 - (\n  {good}\n  /\n  {total}\n)\n"


def load_spec(path):
    with open(path, encoding="utf-8") as f:
        doc = yaml.safe_load(f)
    if not isinstance(doc, dict) or not isinstance(doc.get("slos"), list) or not doc["slos"]:
        fail(f"{path}: expected a mapping with a non-empty list `slos`")
    defaults = doc.get("defaults") or {}
    slos = [Slo(raw, defaults) for raw in doc["slos"]]
    names = [s.name for s in slos]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        fail(f"{path}: duplicate slo names {sorted(dup)}")
    return slos


class Literal(str):
    pass


class Dumper(yaml.SafeDumper):
    pass


def _literal(dumper, data):
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|")


Dumper.add_representer(Literal, _literal)


def render(slo, scale):
    def window(name):
        return fmt_duration(fractions.Fraction(dict(WINDOWS)[name]) * scale)

    labels = {"slo": slo.name, "service": slo.service}
    sel = f'{{slo="{slo.name}"}}'
    fast, slow = [], []
    for name, _ in WINDOWS:
        group = fast if name in FAST_WINDOWS else slow
        group.append({"record": f"slo:sli_error:ratio_rate{name}",
                      "expr": Literal(slo.error_ratio_expr(window(name))),
                      "labels": dict(labels)})
        group.append({"record": f"slo:sli_events:rate{name}",
                      "expr": slo.total_expr(window(name)),
                      "labels": dict(labels)})
    budget = fmt_number(slo.budget)
    slow.append({"record": "slo:objective:ratio",
                 "expr": f"vector({fmt_number(slo.objective / 100)})",
                 "labels": dict(labels)})
    slow.append({"record": "slo:error_budget:remaining",
                 "expr": f"1 - slo:sli_error:ratio_rate30d{sel} / {budget}",
                 "labels": dict(labels)})

    alerts = []
    for alertname, severity, for_s, conditions in ALERTS:
        parts = []
        for factor, long_w, short_w in conditions:
            threshold = fmt_number(factor * slo.budget)
            parts.append(
                "(\n"
                f"  slo:sli_error:ratio_rate{long_w}{sel} > {threshold}\n"
                f"  and slo:sli_error:ratio_rate{short_w}{sel} > {threshold}\n"
                f"  and slo:sli_events:rate{long_w}{sel} > {fmt_number(slo.min_rate)}\n"
                ")\n")
        windows = " or ".join(f"{fmt_number(f)}x over {lw} and {sw}" for f, lw, sw in conditions)
        speed = "fast" if severity == "page" else "steadily"
        alerts.append({
            "alert": alertname,
            "expr": Literal("or\n".join(parts)),
            "for": fmt_duration(fractions.Fraction(for_s) * scale),
            "labels": {"severity": severity, **labels},
            "annotations": {
                "summary": f"SLO {slo.name} of {slo.service} is burning its error budget {speed}",
                "description": (f"The error ratio of SLO {slo.name} (good events: {slo.what}; objective "
                                f"{fmt_number(slo.objective)} %) is above {windows} the rate "
                                f"that spends the whole 30-day error budget, with at least "
                                f"{fmt_number(slo.min_rate)} events/s of traffic."),
                "runbook_url": RUNBOOK_BASE + alertname + ".md",
            },
        })

    groups = [
        {"name": f"slo-{slo.name}-short-windows", "rules": fast},
        {"name": f"slo-{slo.name}-long-windows",
         "interval": fmt_duration(fractions.Fraction(SLOW_INTERVAL) * scale), "rules": slow},
        {"name": f"slo-{slo.name}-alerts", "rules": alerts},
    ]
    header = HEADER.format(name=slo.name, description=slo.description or "-",
                           objective=fmt_number(slo.objective), what=slo.what,
                           min_rate=fmt_number(slo.min_rate))
    if scale != 1:
        header += f"# TEST ONLY: windows scaled by {scale}; never ship this file.\n"
    body = yaml.dump({"groups": groups}, Dumper=Dumper, sort_keys=False,
                     default_flow_style=False, width=100, allow_unicode=True)
    return header + body


def generate(slos, scale):
    return {f"slo-{s.name}.yml": render(s, scale) for s in slos}


def parse_scale(text):
    try:
        f = fractions.Fraction(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"not a number or fraction: {text!r}") from None
    if f <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return f


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--spec", default=os.path.join(TOP, "slo", "slos.yml"))
    ap.add_argument("--out-dir", default=os.path.join(TOP, "etc", "prometheus", "rules"))
    ap.add_argument("--windows-scale", type=parse_scale, default=fractions.Fraction(1),
                    help="multiply every window and duration (e.g. 1/60) -- tests only")
    ap.add_argument("--check", action="store_true",
                    help="compare with the files in --out-dir instead of writing them")
    ap.add_argument("--list", action="store_true",
                    help="print the SLOs of the spec as JSON, write nothing")
    args = ap.parse_args(argv)
    try:
        slos = load_spec(args.spec)
        files = generate(slos, args.windows_scale)
    except (SpecError, OSError, yaml.YAMLError) as e:
        print(f"slo-gen: {e}", file=sys.stderr)
        return 2
    if args.list:
        json.dump([{"name": s.name, "service": s.service, "objective": fmt_number(s.objective),
                    "sli": s.kind, "le": getattr(s, "le", None),
                    "min_rate": fmt_number(s.min_rate), "description": s.description,
                    "file": f"slo-{s.name}.yml"} for s in slos], sys.stdout, indent=1)
        print()
        return 0

    existing = set()
    if os.path.isdir(args.out_dir):
        existing = {n for n in os.listdir(args.out_dir) if re.fullmatch(r"slo-.*\.yml", n)}
    if args.check:
        bad = 0
        for name in sorted(existing - set(files)):
            print(f"slo-gen: {name} is not generated from the spec (stale?)")
            bad = 1
        for name, text in sorted(files.items()):
            path = os.path.join(args.out_dir, name)
            try:
                with open(path, encoding="utf-8") as f:
                    have = f.read()
            except FileNotFoundError:
                print(f"slo-gen: {path} is missing")
                bad = 1
                continue
            if have != text:
                bad = 1
                sys.stdout.writelines(difflib.unified_diff(
                    have.splitlines(True), text.splitlines(True), path, "generated"))
        if bad:
            print("slo-gen: generated SLO rules are out of date: run scripts/slo-gen.py")
        return bad

    os.makedirs(args.out_dir, exist_ok=True)
    for name in sorted(existing - set(files)):
        os.unlink(os.path.join(args.out_dir, name))
    for name, text in files.items():
        path = os.path.join(args.out_dir, name)
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
