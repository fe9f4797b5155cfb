#!/usr/bin/env python3
"""Packages built after an in-tree build ship their own paths.

The README's "Building by hand" configures in the source tree (prefix
/usr/local). Afterwards that tree must be clean for git (every build product
ignored), and the .deb files built from it must not carry the in-tree
build's prefix: every unit's Exec*= names a program the packages ship (or
one of another package, never under /usr/local), and every path of vigil's
own that a shipped file names is a file the packages ship.

Works on a copy of the tree's sources (scripts/list-sources.sh) committed
to a scratch git repository, so the source tree itself is never configured.
Exit status: 0 passed, 1 failed, 77 skipped (no git work tree, or no
dpkg-buildpackage: apt-get install dpkg-dev debhelper).
"""

import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile

TOP = os.environ.get("top_srcdir") or os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
PREFIX = "/usr/local"
# Paths of vigil's own that are never made at run time: a shipped file that
# names one names a file some package must ship.
OWN_PATH = re.compile(
    r"(/usr/(?:s?bin/vigil[a-z-]*|libexec/vigil/[\w.@/-]+|lib/vigil/[\w.@/-]+|share/vigil/[\w.@/-]+)"
    r"|/etc/vigil/[\w-]+\.conf)(?![\w./${-])"  # not a prefix of one made by a shell
)
EXEC_KEY = re.compile(r"^(Exec(?:Start|StartPre|StartPost|Reload|Stop|StopPost|Condition))=(.*)$")

failures = []


def fail(msg):
    failures.append(msg)
    print(f"FAIL: {msg}", flush=True)


def run(cmd, cwd, log):
    """Run cmd in cwd, its output into log; on failure show the tail and exit 1."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKEOVERRIDES", "MAKELEVEL", "GNUMAKEFLAGS")}
    with open(log, "ab") as out:
        out.write(f"$ {' '.join(cmd)}\n".encode())
        out.flush()
        r = subprocess.run(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env)
    if r.returncode != 0:
        with open(log, errors="replace") as f:
            print("".join(f.readlines()[-60:]))
        print(f"FAIL: {' '.join(cmd)} exited {r.returncode}")
        sys.exit(1)


def copy_sources(dst):
    listing = subprocess.run([os.path.join(TOP, "scripts", "list-sources.sh"), TOP],
                             check=True, stdout=subprocess.PIPE).stdout
    for rel in listing.decode().split("\0"):
        if not rel:
            continue
        src = os.path.join(TOP, rel)
        os.makedirs(os.path.dirname(os.path.join(dst, rel)), exist_ok=True)
        shutil.copy2(src, os.path.join(dst, rel), follow_symlinks=False)


def exec_program(value):
    """The program of an Exec*= value: the first word, without systemd's prefixes."""
    word = value.strip().split()[0] if value.strip() else ""
    return word.lstrip("-@:+!|")


def check_units(root):
    units = [p for d in ("lib/systemd/system", "usr/lib/systemd/system")
             for p in glob.glob(os.path.join(root, d, "**", "*"), recursive=True)
             if os.path.isfile(p) and p.endswith((".service", ".socket", ".conf", ".target"))]
    services = [u for u in units if u.endswith(".service") and "/vigil-" in u]
    if len(services) < 5:
        fail(f"expected the five daemons' units in the packages, found {len(services)}")
    for unit in units:
        rel = os.path.relpath(unit, root)
        with open(unit) as f:
            for line in f:
                m = EXEC_KEY.match(line.strip())
                if not m or not m.group(2).strip():
                    continue
                prog = exec_program(m.group(2))
                if not prog.startswith("/"):
                    continue  # found in systemd's search path (kill, say)
                if prog.startswith(PREFIX + "/"):
                    fail(f"{rel}: {m.group(1)}={prog} is the in-tree build's prefix")
                elif OWN_PATH.fullmatch(prog) and not os.path.lexists(root + prog):
                    fail(f"{rel}: {m.group(1)}={prog} is not in the packages")
                else:
                    print(f"ok: {rel}: {m.group(1)}={prog}")


def check_paths(root):
    named = 0
    for path in glob.glob(os.path.join(root, "**", "*"), recursive=True):
        if not os.path.isfile(path) or os.path.islink(path):
            continue
        with open(path, "rb") as f:
            data = f.read()
        if b"\0" in data:
            continue  # a program: its paths come from configure, checked through the units
        text = data.decode(errors="replace")
        rel = os.path.relpath(path, root)
        if PREFIX + "/" in text:
            fail(f"/{rel} names {PREFIX}/")
        for m in OWN_PATH.finditer(text):
            named += 1
            if not os.path.lexists(root + m.group(1)):
                fail(f"/{rel} names {m.group(1)}, which no package ships")
    print(f"ok: {named} mentions of vigil's own paths checked")


def check_vigilctl(root):
    """The operator tool runs from the packages alone: its front door names
    the modules' installed directory, which the packages ship whole."""
    prog = os.path.join(root, "usr", "sbin", "vigilctl")
    if not os.path.isfile(prog):
        fail("no package ships /usr/sbin/vigilctl")
        return
    with open(prog) as f:
        m = re.search(r'or "(/[^"]+)"\)', f.read())
    moddir = m.group(1) if m else None
    if not moddir or not os.path.isdir(root + moddir):
        fail(f"/usr/sbin/vigilctl looks for its modules in {moddir}, which no package ships")
        return
    # `vigilctl load` runs the locustfile installed beside its package.
    if not os.path.isfile(root + moddir + "/load/locustfile.py"):
        fail(f"no package ships {moddir}/load/locustfile.py (vigilctl load)")
    env = dict(os.environ, VIGILCTL_MODULES=root + moddir)
    for args in (["--help"], ["validate", "--help"], ["load", "--help"]):
        r = subprocess.run([sys.executable, prog, *args], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, check=False)
        if r.returncode != 0:
            fail(f"vigilctl {' '.join(args)} from the packages exited {r.returncode}:\n{r.stdout}")
        else:
            print(f"ok: vigilctl {' '.join(args)} runs from the packages ({moddir})")


def main():
    if subprocess.run(["git", "-C", TOP, "rev-parse", "--is-inside-work-tree"],
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode != 0:
        print(f"SKIP: {TOP} is not a git work tree")
        return 77
    if not shutil.which("dpkg-buildpackage") or not shutil.which("dh"):
        print("SKIP: dpkg-buildpackage not installed (apt-get install dpkg-dev debhelper)")
        return 77

    work = tempfile.mkdtemp(prefix="vigil-packages.")
    try:
        src = os.path.join(work, "vigil")
        log = os.path.join(work, "build.log")
        copy_sources(src)
        git = ["git", "-c", "user.name=test", "-c", "user.email=test@localhost"]
        run(git + ["init", "-q"], src, log)
        run(git + ["add", "-A"], src, log)
        run(git + ["commit", "-q", "-m", "sources"], src, log)

        # Building by hand, as the README says, with a prefix of its own.
        jobs = str(os.cpu_count() or 2)
        run(["autoreconf", "-fi"], src, log)
        run(["./configure", "-q", f"--prefix={PREFIX}"], src, log)
        run(["make", "-s", f"-j{jobs}"], src, log)
        run(["make", "-s", f"-j{jobs}", "check", "TESTS=tests/unit/test-log tests/unit/test-conf"], src, log)
        with open(os.path.join(src, "units", "vigil-authd.service")) as f:
            if f"ExecStart={PREFIX}/sbin/vigil-authd" not in f.read():
                fail(f"the in-tree build did not make units/vigil-authd.service for {PREFIX}")
        status = subprocess.run(["git", "status", "--porcelain"], cwd=src, check=True,
                                stdout=subprocess.PIPE, text=True).stdout
        if status:
            fail("git status is not clean after an in-tree build and make check:\n" + status)
        else:
            print("ok: git status clean after an in-tree build and make check")

        out = os.path.join(work, "packages")
        run([os.path.join(src, "scripts", "build-packages.sh"), "--src", src, "--out", out,
             "--no-lintian", "--no-check"], src, log)
        root = os.path.join(work, "root")
        debs = sorted(glob.glob(os.path.join(out, "*.deb")))
        if not debs:
            fail("no .deb built")
        for deb in debs:
            run(["dpkg-deb", "-x", deb, root], work, log)
        check_units(root)
        check_paths(root)
        check_vigilctl(root)
    finally:
        if os.environ.get("VIGIL_TEST_KEEP"):
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    if failures:
        print(f"{len(failures)} failure(s)")
        return 1
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
