"""Eight processes creating, deleting and listing at once: busy or success, never damage."""

from __future__ import annotations

import subprocess
import sys
import os

import pytest

from snaptree import Snaptree

WORKER = r"""
import sys, json, random
from snaptree import Snaptree
from snaptree.errors import Busy, Conflict, NotFound
state, group, worker, wait = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
random.seed(worker)
outcomes = {"ok": 0, "busy": 0, "other": []}
with Snaptree(state, lock_timeout=wait) as api:
    for i in range(6):
        action = random.choice(["create", "create", "delete", "list"])
        try:
            if action == "create":
                api.create(group, f"w{worker}-{i}")
            elif action == "delete":
                mine = [s.name for s in api.list(group) if s.name.startswith(f"w{worker}-")]
                if mine:
                    api.delete(group, mine[0])
            else:
                api.list(group); api.tree(group)
            outcomes["ok"] += 1
        except Busy:
            outcomes["busy"] += 1
        except Exception as err:
            outcomes["other"].append(f"{type(err).__name__}: {err}")
print(json.dumps(outcomes))
"""


def _run_workers(state, groups, wait):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, state, groups[i % len(groups)], str(i),
                               str(wait)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for i in range(8)]
    import json
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        results.append(json.loads(out))
    return results


@pytest.mark.parametrize("layout, wait", [("one-group", 60.0), ("one-group", 0.0), ("separate", 0.0)])
def test_eight_processes(tmp_path, layout, wait):
    state = str(tmp_path / "state")
    groups = ["shared"] if layout == "one-group" else [f"g{i}" for i in range(8)]
    with Snaptree(state) as api:
        for g in groups:
            disks = []
            for d in range(2):
                p = tmp_path / f"{g}-{d}.img"
                p.write_bytes(os.urandom(256 * 1024))
                disks.append(f"raw:{p}")
            api.create_group(g, disks)
    results = _run_workers(state, groups, wait)
    assert all(r["other"] == [] for r in results), results
    if wait > 0:
        assert sum(r["busy"] for r in results) == 0, "with a long wait, nobody should be turned away"
    if layout == "separate":
        assert sum(r["busy"] for r in results) == 0, "separate groups never contend"
    with Snaptree(state) as api:
        assert api.catalog.integrity_check() == "ok"
        for g in groups:
            assert api.check(g).clean, api.check(g).as_dict()
            assert api.catalog.journal_open(g) == []
