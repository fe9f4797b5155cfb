#!/usr/bin/env python3
"""`vigilctl slo list|check|apply` from the build tree, with the real
promtool and the tree's generator, a copy of slo/slos.yml as the installed
/etc/vigil/slos.yml, an empty rules directory, and a stand-in systemctl
that records what it is asked (and fails when told to). Prometheus's
POST /-/reload is answered by a recorder on a free loopback port.

Asserts: the SLOs are listed; apply writes exactly the committed rule files
and reloads Prometheus once; check then passes; an edited objective
changes only its file; --dry-run writes nothing; a spec error, a rule
promtool refuses, and a failed reload each leave the previous rules in
place (the reload is never asked for when a check failed); a renamed SLO's
old file is removed."""

import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import obslib  # noqa: E402

TOP = obslib.TOP_SRCDIR
VIGILCTL = os.path.join(obslib.TOP_BUILDDIR, "src", "vigilctl", "vigilctl")
MODULES = os.path.join(TOP, "src", "vigilctl", "modules")
GENERATOR = os.path.join(TOP, "scripts", "slo-gen.py")
SHIPPED_RULES = obslib.RULES_DIR

runner = obslib.TapRunner("test-vigilctl-slo")

FAKE_SYSTEMCTL = """#!/bin/sh
# Stand-in for systemctl: records its arguments, exits as told.
echo "$*" >>"$FAKE_SYSTEMCTL_LOG"
exit "${FAKE_SYSTEMCTL_STATUS:-0}"
"""


class Env:
    def __init__(self, tmp):
        self.tmp = tmp
        self.spec = os.path.join(tmp, "etc", "vigil", "slos.yml")
        self.rules = os.path.join(tmp, "etc", "prometheus", "rules")
        self.bin = os.path.join(tmp, "bin")
        self.log = os.path.join(tmp, "systemctl.log")
        os.makedirs(os.path.dirname(self.spec))
        os.makedirs(self.rules)
        os.makedirs(self.bin)
        shutil.copy(os.path.join(TOP, "slo", "slos.yml"), self.spec)
        with open(os.path.join(self.bin, "systemctl"), "w", encoding="utf-8") as f:
            f.write(FAKE_SYSTEMCTL)
        os.chmod(os.path.join(self.bin, "systemctl"), 0o755)
        open(self.log, "w", encoding="utf-8").close()

    def vigilctl(self, *args, systemctl_status=0):
        env = dict(os.environ, VIGILCTL_MODULES=MODULES, FAKE_SYSTEMCTL_LOG=self.log,
                   FAKE_SYSTEMCTL_STATUS=str(systemctl_status),
                   PATH=self.bin + os.pathsep + os.environ.get("PATH", ""))
        for k in list(env):
            if k.startswith("VIGILCTL_") and k != "VIGILCTL_MODULES":
                del env[k]
        argv = [sys.executable, VIGILCTL, "slo", *args, "--file", self.spec,
                "--rules-dir", self.rules, "--generator", GENERATOR,
                "--promtool", obslib.PROMTOOL]
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120,
                              check=False)

    def reloads(self):
        with open(self.log, encoding="utf-8") as f:
            return [line.strip() for line in f if line.strip()]

    def rules_now(self):
        out = {}
        for name in sorted(os.listdir(self.rules)):
            with open(os.path.join(self.rules, name), encoding="utf-8") as f:
                out[name] = f.read()
        return out

    def edit_spec(self, old, new):
        with open(self.spec, encoding="utf-8") as f:
            text = f.read()
        assert old in text, f"{old!r} not in the spec"
        with open(self.spec, "w", encoding="utf-8") as f:
            f.write(text.replace(old, new, 1))


def shipped_rules():
    out = {}
    for path in sorted(obslib.rule_files(SHIPPED_RULES)):
        name = os.path.basename(path)
        if re.fullmatch(r"slo-.*\.yml", name):
            with open(path, encoding="utf-8") as f:
                out[name] = f.read()
    return out


def expect(r, code, *texts):
    out = r.stdout + r.stderr
    assert r.returncode == code, f"exit {r.returncode}, expected {code}:\n{out}"
    for t in texts:
        assert t in out, f"{t!r} not in:\n{out}"


def check_list(tmp):
    e = Env(tmp)
    r = e.vigilctl("list")
    expect(r, 0, "NAME", "auth-availability", "payment-latency", "notify-freshness",
           "99.9 %", "latency <= 0.2 s")
    r = e.vigilctl("list", "--json")
    expect(r, 0)
    names = [s["name"] for s in json.loads(r.stdout)["slos"]]
    assert len(names) == 7 and "inventory-latency" in names, names


def check_apply_writes_the_shipped_rules_then_check_passes(tmp):
    e = Env(tmp)
    r = e.vigilctl("check")
    expect(r, 1, "added", "slo-auth-availability.yml", "promtool     rules OK",
               "vigilctl slo apply")
    assert e.rules_now() == {} and e.reloads() == []
    r = e.vigilctl("apply")
    expect(r, 0, "applied", "systemctl reload prometheus")
    assert e.rules_now() == shipped_rules(), "the applied rules are not the shipped ones"
    assert e.reloads() == ["reload prometheus"], e.reloads()
    r = e.vigilctl("check")
    expect(r, 0, "none: the rules in place are current")
    r = e.vigilctl("apply")
    expect(r, 0)
    assert e.reloads() == ["reload prometheus"], "reloaded although nothing changed"


def check_an_edit_changes_only_its_file_and_dry_run_writes_nothing(tmp):
    e = Env(tmp)
    expect(e.vigilctl("apply"), 0)
    before = e.rules_now()
    e.edit_spec("objective: 99.9\n    description: Answers of vigil-authd",
                "objective: 99.5\n    description: Answers of vigil-authd")
    r = e.vigilctl("apply", "--dry-run")
    expect(r, 0, "changed      slo-auth-availability.yml", "dry run", "> 0.07")
    assert e.rules_now() == before and len(e.reloads()) == 1
    r = e.vigilctl("apply", "--json")
    expect(r, 0)
    doc = json.loads(r.stdout)
    assert doc["applied"] and [c["file"] for c in doc["changes"]] == ["slo-auth-availability.yml"]
    after = e.rules_now()
    assert [n for n in after if after[n] != before[n]] == ["slo-auth-availability.yml"]
    assert "> 0.07" in after["slo-auth-availability.yml"]  # 14.4 x 0.5 %
    assert len(e.reloads()) == 2


def check_bad_spec_keeps_the_rules(tmp):
    e = Env(tmp)
    expect(e.vigilctl("apply"), 0)
    before = e.rules_now()
    e.edit_spec("objective: 99.9", "objective: 100")
    r = e.vigilctl("apply")
    expect(r, 1, "objective must be between 0 and 100")
    assert e.rules_now() == before and len(e.reloads()) == 1


def check_rules_promtool_refuses_keep_the_rules(tmp):
    e = Env(tmp)
    expect(e.vigilctl("apply"), 0)
    before = e.rules_now()
    # The generator takes the regex as it is; PromQL does not.
    e.edit_spec('routes_excluded: "/health|/ready|/metrics"\n',
                'routes_excluded: "/health|(/ready"\n')
    r = e.vigilctl("apply")
    expect(r, 1, "promtool     FAILED", "the rules in place are unchanged")
    assert e.rules_now() == before and len(e.reloads()) == 1


def check_failed_reload_puts_the_previous_rules_back(tmp):
    e = Env(tmp)
    expect(e.vigilctl("apply"), 0)
    before = e.rules_now()
    e.edit_spec("objective: 99.9", "objective: 99.8")
    r = e.vigilctl("apply", systemctl_status=1)
    expect(r, 1, "systemctl reload prometheus failed", "previous rules were put back")
    assert e.rules_now() == before
    assert e.reloads() == ["reload prometheus"] * 2
    assert not [n for n in os.listdir(e.rules) if n.startswith(".")], "temporary files left"


def check_renamed_slo_removes_its_old_file(tmp):
    e = Env(tmp)
    expect(e.vigilctl("apply"), 0)
    e.edit_spec("name: notify-freshness", "name: notify-lag")
    r = e.vigilctl("apply")
    expect(r, 0, "removed      slo-notify-freshness.yml", "added        slo-notify-lag.yml")
    assert "slo-notify-freshness.yml" not in e.rules_now()
    assert "slo-notify-lag.yml" in e.rules_now()


def check_unwritable_rules_dir_is_an_environment_error(tmp):
    e = Env(tmp)
    shutil.rmtree(e.rules)
    with open(e.rules, "w", encoding="utf-8") as f:
        f.write("not a directory\n")
    r = e.vigilctl("apply")
    expect(r, 2, "cannot write the rules in")
    assert "Traceback" not in r.stderr, r.stderr
    assert e.reloads() == [], "reloaded although nothing was written"


class _Recorder(http.server.BaseHTTPRequestHandler):
    posts = []

    def do_POST(self):  # noqa: N802
        _Recorder.posts.append(self.path)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def check_reload_by_url(tmp):
    e = Env(tmp)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/-/reload"
        r = e.vigilctl("apply", "--reload", url)
        expect(r, 0, f"POST {url}")
        assert _Recorder.posts == ["/-/reload"] and e.reloads() == []
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def main():
    if not shutil.which(obslib.PROMTOOL) and not os.path.exists(obslib.PROMTOOL):
        print("SKIP: promtool not found")
        return obslib.SKIP
    for title, fn in (
            ("list: every SLO of the file", check_list),
            ("apply writes the shipped rules and reloads once; check then passes",
             check_apply_writes_the_shipped_rules_then_check_passes),
            ("an edited objective changes only its file; --dry-run writes nothing",
             check_an_edit_changes_only_its_file_and_dry_run_writes_nothing),
            ("a spec error keeps the rules and reloads nothing", check_bad_spec_keeps_the_rules),
            ("rules promtool refuses are never put in place",
             check_rules_promtool_refuses_keep_the_rules),
            ("a failed reload puts the previous rules back",
             check_failed_reload_puts_the_previous_rules_back),
            ("a renamed SLO's old rule file is removed", check_renamed_slo_removes_its_old_file),
            ("a rules directory that cannot be written: exit 2, no reload",
             check_unwritable_rules_dir_is_an_environment_error),
            ("--reload URL posts to Prometheus's /-/reload", check_reload_by_url)):
        with obslib.tempdir("vigil-slo-") as tmp:
            runner.check(title, fn, tmp)
    return runner.finish()


if __name__ == "__main__":
    sys.exit(main())
