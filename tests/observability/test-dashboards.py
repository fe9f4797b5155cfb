#!/usr/bin/env python3
"""Structural checks of vigil's Grafana dashboards and provisioning: valid
JSON, unique uids and panel ids, no overlapping grid positions, every
datasource uid provisioned, every $variable defined (instance and service
everywhere, as query variables on vigil_build_info), and every PromQL
expression -- panels and variable queries -- accepted by promtool."""

import os
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import yaml  # noqa: E402

import obslib  # noqa: E402

BUILTIN_UIDS = {"-- Grafana --", "grafana", "-- Mixed --", "-- Dashboard --"}
EXPECTED = {"vigil-overview", "vigil-slo", "vigil-business", "vigil-service-map",
            "vigil-infrastructure"}

runner = obslib.TapRunner("test-dashboards")


def provisioned_uids():
    with open(obslib.DATASOURCES, encoding="utf-8") as f:
        doc = yaml.safe_load(f)
    return {d["uid"]: d for d in doc["datasources"]}


def check_provisioning():
    ds = provisioned_uids()
    assert set(ds) == {"prometheus", "loki", "tempo"}, sorted(ds)
    with open(os.path.join(obslib.DASHBOARD_DIR, "vigil.yml"), encoding="utf-8") as f:
        prov = yaml.safe_load(f)
    assert prov["apiVersion"] == 1
    (p,) = prov["providers"]
    assert p["type"] == "file" and p["options"]["path"], p


def check_set_of_dashboards():
    boards = obslib.dashboards()
    uids = [d.get("uid") for _, d in boards]
    assert len(uids) == len(set(uids)), f"duplicate dashboard uids: {uids}"
    assert EXPECTED <= set(uids), f"missing dashboards: {EXPECTED - set(uids)}"
    for name, d in boards:
        for key in ("uid", "title", "tags", "panels", "templating", "schemaVersion"):
            assert key in d, f"{name}: no {key}"
        assert d["uid"] + ".json" == name, f"{name}: file name is not uid.json"
        assert "vigil" in d["tags"], f"{name}: not tagged vigil"
        assert 36 <= d["schemaVersion"] <= 39, f"{name}: schemaVersion {d['schemaVersion']}"
        assert "id" not in d or d["id"] is None, f"{name}: provisioned dashboards carry no id"


def check_panel_ids(name, d):
    ids = [p.get("id") for p in obslib.panels(d)]
    assert all(isinstance(i, int) for i in ids), f"{name}: panel without integer id"
    dup = {i for i in ids if ids.count(i) > 1}
    assert not dup, f"{name}: duplicate panel ids {sorted(dup)}"


def check_grid(name, d):
    rects = []
    for p in obslib.panels(d):
        g = p.get("gridPos")
        assert g, f"{name}: panel {p.get('id')} has no gridPos"
        x, y, w, h = g["x"], g["y"], g["w"], g["h"]
        assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= 24, \
            f"{name}: panel {p['id']} {p.get('title')!r} outside the 24-column grid: {g}"
        for (ox, oy, ow, oh, oid) in rects:
            if x < ox + ow and ox < x + w and y < oy + oh and oy < y + h:
                raise AssertionError(f"{name}: panels {oid} and {p['id']} overlap: {g}")
        rects.append((x, y, w, h, p["id"]))


def check_datasources(name, d):
    known = set(provisioned_uids()) | BUILTIN_UIDS
    seen = set()

    def visit(o):
        if isinstance(o, dict):
            ds = o.get("datasource")
            if ds is not None:
                uid = obslib.datasource_uid(ds)
                assert uid in known, f"{name}: datasource uid {uid!r} is not provisioned"
                seen.add(uid)
            for v in o.values():
                visit(v)
        elif isinstance(o, list):
            for v in o:
                visit(v)
    visit(d)
    assert "prometheus" in seen, f"{name}: uses no Prometheus datasource"
    for p in obslib.panels(d):
        if p.get("type") == "row" or p.get("type") == "text":
            continue
        assert p.get("datasource"), f"{name}: panel {p['id']} {p.get('title')!r} has no datasource"
        assert p.get("targets"), f"{name}: panel {p['id']} {p.get('title')!r} has no query"


def check_variables(name, d):
    variables = {v["name"]: v for v in d["templating"]["list"]}
    for required in ("service", "instance"):
        v = variables.get(required)
        assert v, f"{name}: no ${required} variable"
        assert v["type"] == "query", f"{name}: ${required} is not a query variable"
        q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
        assert q.startswith("label_values(vigil_build_info"), f"{name}: ${required}: {q}"
    used = set()
    texts = []
    for p in obslib.panels(d):
        texts.append(p.get("title", ""))
        for t in p.get("targets", []) or []:
            texts.extend(str(t.get(k, "")) for k in ("expr", "legendFormat", "query"))
    for v in variables.values():
        q = v.get("query")
        texts.append(q["query"] if isinstance(q, dict) else str(q or ""))
    for t in texts:
        used |= obslib.used_variables(t)
    undefined = used - set(variables)
    assert not undefined, f"{name}: undefined variables {sorted(undefined)}"


def check_promql_syntax():
    exprs = []
    where = []
    for uid, title, ref, e in obslib.dashboard_exprs():
        exprs.append(obslib.grafana_to_promql(e))
        where.append(f"{uid} / {title} / {ref}")
    for uid, name, q in obslib.variable_queries():
        exprs.append(obslib.grafana_to_promql(obslib.variable_query_to_promql(q)))
        where.append(f"{uid} / ${name}")
    assert len(exprs) > 50, f"only {len(exprs)} expressions found"
    with obslib.tempdir() as tmp:
        ok, out = obslib.promtool_check_exprs(exprs, tmp)
        if ok:
            return
        # Find the culprits one by one for a useful message.
        bad = []
        for w, e in zip(where, exprs):
            good, o = obslib.promtool_check_exprs([e], tmp)
            if not good:
                bad.append(f"{w}: {e}\n    {o.strip().splitlines()[-1]}")
        raise AssertionError("PromQL rejected by promtool:\n" + "\n".join(bad or [out]))


def main():
    if not os.path.exists(obslib.PROMTOOL) and not obslib.find_binary(obslib.PROMTOOL):
        print(f"SKIP: {obslib.PROMTOOL} not found", file=sys.stderr)
        return obslib.SKIP
    runner.check("provisioning: datasources prometheus/loki/tempo and the dashboard provider",
                 check_provisioning)
    runner.check("dashboards: the five exist, unique uids, required keys", check_set_of_dashboards)
    for name, d in obslib.dashboards():
        runner.check(f"{name}: panel ids are unique", check_panel_ids, name, d)
        runner.check(f"{name}: grid positions do not overlap", check_grid, name, d)
        runner.check(f"{name}: every datasource uid is provisioned", check_datasources, name, d)
        runner.check(f"{name}: every variable used is defined", check_variables, name, d)
    runner.check("every PromQL expression passes promtool", check_promql_syntax)
    return runner.finish()


if __name__ == "__main__":
    sys.exit(main())
