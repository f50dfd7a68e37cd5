"""pytest wiring for the benchmarks: options, the shared lab, the case lists.

Run through ``python -m benchmarks.run``; ``pytest benchmarks/bench_ops.py
-o python_functions='bench_*'`` works too (quick plan, results only in
pytest-benchmark's own output).
"""

from __future__ import annotations

import json
import shutil
import tempfile

import attrs
import pytest

from .config import PLANS
from .lab import Case, Lab

OPS = ("create", "revert", "delete")
LAB = pytest.StashKey[Lab]()


def pytest_addoption(parser):
    group = parser.getgroup("snaptree-bench", "snaptree backend benchmarks")
    group.addoption("--bench-mode", default="quick", choices=sorted(PLANS),
                    help="how much work: smoke (seconds), quick (< 5 min), full")
    group.addoption("--bench-workdir", default=None,
                    help="scratch directory for loop files and volumes (default: a temp dir)")
    group.addoption("--bench-records", default=None,
                    help="write variants, non-timing results and failures to this JSON file")


def pytest_configure(config):
    workdir = config.getoption("--bench-workdir")
    config._bench_own_workdir = workdir is None
    if workdir is None:
        workdir = tempfile.mkdtemp(prefix="snaptree-bench-", dir="/var/tmp")
    lab = Lab(PLANS[config.getoption("--bench-mode")], workdir)
    lab.outcomes = []
    config.stash[LAB] = lab


def pytest_unconfigure(config):
    lab = config.stash.get(LAB, None)
    if lab is None:
        return
    try:
        lab.close()
    finally:
        path = config.getoption("--bench-records")
        if path:
            with open(path, "w", encoding="utf-8") as out:
                json.dump({"plan": attrs.asdict(lab.plan), "workdir": lab.workdir,
                           "variants": [_variant_dict(lab, v) for v in lab.variants],
                           "records": lab.records, "outcomes": lab.outcomes}, out, indent=2)
        if config._bench_own_workdir:
            shutil.rmtree(lab.workdir, ignore_errors=True)


def _variant_dict(lab: Lab, variant) -> dict:
    out = variant.as_dict()
    prov = variant.provisioner
    out["comparator_skips"] = dict(getattr(prov, "comparator_skips", {}) or {})
    return out


@pytest.fixture(scope="session")
def lab(request) -> Lab:
    return request.config.stash[LAB]


def operation_cases(lab: Lab) -> list:
    """Every (variant, key, actor, op), ordered so each volume set is made once."""
    plan, params = lab.plan, []
    for variant in lab.variants:
        if variant.skipped is not None:
            params.append(pytest.param(None, id=f"{variant.name}-skipped",
                                       marks=pytest.mark.skip(reason=variant.skipped)))
            continue
        prov = variant.provisioner
        actors = ["snaptree"] + (["primitive"] if prov.primitive is not None else [])
        actors += sorted(prov.comparators or {})
        keys = [(size, 1, 0) for size in plan.sizes_mib]
        keys += [(plan.group_volume_mib, count, 0) for count in plan.group_sizes]
        if prov.supports_files:
            keys += [(0, 1, files) for files in plan.file_counts]
        for size, count, files in dict.fromkeys(keys):
            for actor in actors:
                for op in OPS:
                    case = Case(variant.name, op, actor, size, count, files)
                    params.append(pytest.param(case, id=case.id))
    return params


def pytest_generate_tests(metafunc):
    lab = metafunc.config.stash[LAB]
    runnable = [v.name for v in lab.runnable()]
    if "case" in metafunc.fixturenames:
        metafunc.parametrize("case", operation_cases(lab))
    if "write_phase" in metafunc.fixturenames:
        metafunc.parametrize("write_phase", [(name, phase) for name in runnable
                                             for phase in ("before", "after")],
                             ids=lambda p: f"{p[0]}-{p[1]}")
    if "space_variant" in metafunc.fixturenames:
        metafunc.parametrize("space_variant", runnable)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Keep failures and skips for the report: nothing is silently dropped."""
    report = yield
    if report.failed or (report.skipped and call.when == "setup") or \
            (report.skipped and call.when == "call"):
        params = getattr(getattr(item, "callspec", None), "params", {})
        if report.failed and call.excinfo is not None:
            message = call.excinfo.exconly().strip().splitlines()[0][:400]
        elif isinstance(report.longrepr, tuple):
            message = str(report.longrepr[2])
        else:
            message = str(report.longrepr)[:400]
        item.config.stash[LAB].outcomes.append({
            "test": item.originalname, "id": getattr(item.callspec, "id", "") if params else "",
            "outcome": report.outcome, "when": call.when, "message": message,
        })
    return report
