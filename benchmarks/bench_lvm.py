"""LVM benchmark: thick against thin snapshots, measured in a device-mapper kernel.

Measured in one run on one loop-backed volume group (inside a virtme-ng
guest when this kernel has no device-mapper, see ``tests/guest/vng.py``):

* snapshot latency: ``LvmBackend.snapshot`` of a thick and of a thin LV,
  against the bare primitive, ``lvcreate`` of a plain LV of the same size;
* write throughput to the origin (O_DIRECT, 1 MiB blocks, blocks never
  written since the snapshot) before and after a snapshot: the
  copy-on-write penalty, reported as after/before per kind.

``measure(quick)`` returns medians and ratios; ``python benchmarks/bench_lvm.py
[--quick]`` prints them as JSON.  ``pytest benchmarks/bench_lvm.py`` runs the
snapshot methods under pytest-benchmark where device-mapper is available.
Guest numbers come from an emulated CPU (TCG): only the ratios mean
something.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any, Callable

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

from guest.lvm_env import LoopVG  # noqa: E402
from guest.vng import find_kernel, find_vng, host_has_devmapper, run_pytest_in_guest  # noqa: E402

from snaptree import Group, OpContext, Volume  # noqa: E402
from snaptree_lvm import LvmBackend  # noqa: E402

__all__ = ["measure", "unavailable"]

MIB = 1024 * 1024
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def skip_reason(quick: bool) -> str | None:
    """Decline ``--quick`` runs that would need minutes of an emulated guest."""
    if quick and not host_has_devmapper():
        return ("this kernel has no device-mapper: LVM figures come from a TCG guest that takes "
                "minutes to boot; run './dev.sh bench' (full) or 'python -m benchmarks.bench_lvm'")
    return None


def unavailable() -> str | None:
    """Why this benchmark cannot run here, or ``None``."""
    if os.geteuid() != 0:
        return "needs root (loop devices, LVM)"
    if shutil.which("lvm") is None:
        return "needs lvm2"
    if not host_has_devmapper() and (find_vng() is None or find_kernel() is None):
        return "no device-mapper here and no virtme-ng guest to borrow one from"
    return None


def _direct_write_mibps(device: str, offset: int, length: int, seed: int) -> float:
    """Write ``length`` bytes at ``offset`` with O_DIRECT; MiB/s."""
    buffer = mmap.mmap(-1, MIB)  # page-aligned, as O_DIRECT wants
    buffer.write(bytes([seed % 251]) * MIB)
    fd = os.open(device, os.O_WRONLY | os.O_DIRECT)
    try:
        started = time.perf_counter()
        for position in range(offset, offset + length, MIB):
            os.pwritev(fd, [buffer], position)
        os.fsync(fd)
        elapsed = time.perf_counter() - started
    finally:
        os.close(fd)
        buffer.close()
    return (length / MIB) / elapsed


def _timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def _measure_here(quick: bool) -> dict[str, Any]:
    rounds = 3 if quick else 7
    size_mib = 16 if quick else 64
    write_mib = size_mib // 4
    directory = tempfile.mkdtemp(prefix="bench-lvm-")
    loop_vg = LoopVG(directory, f"snbench{os.getpid()}").setup(pool_mib=size_mib * 4)
    backend = LvmBackend(loop_vg.cmds)
    group = Group("bench", ())
    latency: dict[str, list[float]] = {"lvcreate": [], "thick": [], "thin": []}
    write: dict[str, dict[str, list[float]]] = {k: {"before": [], "after": []}
                                                for k in ("thick", "thin")}
    try:
        for index in range(rounds):
            plain = f"plain{index}"
            latency["lvcreate"].append(_timed(
                lambda: loop_vg.cmds.lvm("lvcreate", "-y", "-L", f"{size_mib}M", "-n", plain,
                                         loop_vg.vg)))
            loop_vg.cmds.remove(loop_vg.vg, plain)
            for kind in ("thick", "thin"):
                name = f"{kind}{index}"
                device = loop_vg.create(name, size_mib, thin=kind == "thin", zero=False)
                # provision everything first so "before" does not pay thin allocation
                _direct_write_mibps(device, 0, size_mib * MIB, 1)
                write[kind]["before"].append(_direct_write_mibps(device, 0, write_mib * MIB, 2))
                ctx = OpContext(group=group, snapshot_id=f"{index:016x}", snapshot_name="b",
                                options={"lvm.snapshot_size": "50%ORIGIN"})
                volume = Volume("lvm", f"{loop_vg.vg}/{name}")
                latency[kind].append(_timed(lambda: backend.snapshot([volume], ctx)))
                # blocks not yet copied since the snapshot: every write pays the COW
                write[kind]["after"].append(
                    _direct_write_mibps(device, write_mib * MIB, write_mib * MIB, 3))
                loop_vg.remove_family(name)
    finally:
        loop_vg.teardown()
        shutil.rmtree(directory, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in latency.items()}
    out: dict[str, Any] = {
        "where": "host" if not os.environ.get("SNAPTREE_IN_GUEST") else "virtme-ng guest (TCG)",
        "rounds": rounds,
        "volume_mib": size_mib,
        "snapshot_seconds": med,
        "snapshot_ratio_to_lvcreate": {k: med[k] / med["lvcreate"] for k in ("thick", "thin")},
        "thick_to_thin_snapshot_ratio": med["thick"] / med["thin"],
        "write_mibps": {k: {p: statistics.median(v) for p, v in d.items()}
                        for k, d in write.items()},
    }
    out["cow_write_ratio"] = {k: v["after"] / v["before"] for k, v in out["write_mibps"].items()}
    return out


def measure(quick: bool = False) -> dict[str, Any]:
    """Run the LVM benchmark; in a guest when this kernel lacks device-mapper."""
    reason = unavailable()
    if reason:
        return {"skipped": reason}
    if host_has_devmapper():
        return _measure_here(quick)
    out_dir = tempfile.mkdtemp(prefix="bench-lvm-guest-")
    result_file = os.path.join(out_dir, "result.json")
    env = {"SNAPTREE_LVM_BENCH_OUT": result_file, "SNAPTREE_LVM_BENCH_QUICK": "1" if quick else "0"}
    result = run_pytest_in_guest(
        ["-q", "-p", "no:cacheprovider", "-o", "addopts=",
         os.path.join(REPO, "benchmarks", "bench_lvm.py") + "::test_write_result"],
        out_dir, repo=REPO, env=env)
    try:
        with open(result_file, encoding="utf-8") as f:
            return json.load(f)
    except OSError:
        return {"skipped": f"guest run failed (exit {result.returncode}): {result.output[-2000:]}"}


# -- pytest entry points -----------------------------------------------------------


def test_write_result():
    """Inside the guest: run the measurement and write it where ``measure`` looks."""
    out = os.environ.get("SNAPTREE_LVM_BENCH_OUT")
    if not out or not host_has_devmapper():
        pytest.skip("only run by measure() inside a device-mapper kernel")
    quick = os.environ.get("SNAPTREE_LVM_BENCH_QUICK") == "1"
    with open(out, "w", encoding="utf-8") as f:
        json.dump(_measure_here(quick), f, indent=2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.quick), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
