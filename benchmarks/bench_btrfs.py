"""btrfs benchmark: snaptree's snapshot against the bare ioctl and two CLIs.

Measured in one run, on one loop-mounted btrfs, for an empty subvolume and
one holding 10,000 small files:

* ``snaptree``: the backend's library call (``plugin.snapshot``: checks
  nothing, opens the two directories, one ``BTRFS_IOC_SNAP_CREATE_V2``);
* ``snaptree_api``: ``Snaptree.create`` of a one-volume group, for reference
  (prepare checks, catalog and journal writes included);
* ``ioctl``: the bare primitive: open source and target directories, one
  ``BTRFS_IOC_SNAP_CREATE_V2`` (read-only), close;
* ``btrfs_cli``: ``btrfs subvolume snapshot -r``;
* ``snapper``: ``snapper --no-dbus -c NAME create`` with a temporary config
  (made with ``create-config`` and removed with ``delete-config``) on a twin
  subvolume with the same contents (the config adds a nested ``.snapshots``
  subvolume, which snaptree refuses to snapshot).

Each round runs every method once, in a rotating order, so drift of this noisy machine
hits all of them alike; snapshots are deleted only after the last round,
because a deletion wakes btrfs's cleaner thread and would tax the next
measurement.  ``measure(quick)`` returns the medians and the ratios of
snaptree to each other method.  ``pytest benchmarks/bench_btrfs.py`` runs
the same methods under pytest-benchmark.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Iterator

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

from btrfs_fixtures import btrfs_filesystem, make_subvolume  # noqa: E402

from snaptree import Group, OpContext, Snaptree  # noqa: E402
from snaptree_btrfs import ioctl, plugin  # noqa: E402
from snaptree_btrfs.backend import snapshot_dir  # noqa: E402

__all__ = ["measure", "CONTENTS", "METHODS"]

CONTENTS = ("empty", "files10k")
METHODS = ("snaptree", "snaptree_api", "ioctl", "btrfs_cli", "snapper")
FILES = 10_000


def unavailable() -> str | None:
    """Why this benchmark cannot run here, or ``None``."""
    if os.geteuid() != 0:
        return "needs root (loop device, mount, subvolume ioctls)"
    for tool in ("mkfs.btrfs", "btrfs", "snapper", "losetup"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    return None


def _fill(subvolume: str, content: str) -> None:
    if content == "files10k":
        for index in range(FILES):
            directory = os.path.join(subvolume, f"d{index % 100:02d}")
            os.makedirs(directory, exist_ok=True)
            with open(os.path.join(directory, f"f{index}"), "wb") as handle:
                handle.write(index.to_bytes(8, "little") * 16)
    os.sync()


class _Bench:
    """One subvolume and a snapshot function per method; cleanup at close."""

    def __init__(self, mountpoint: str, content: str):
        self.content = content
        self.subvolume = make_subvolume(os.path.join(mountpoint, content))
        _fill(self.subvolume, content)
        self.volume = plugin.claim(self.subvolume)
        # snapper's create-config puts a .snapshots subvolume inside the one it manages, and
        # snaptree refuses to snapshot a subvolume with nested ones: snapper gets a twin
        self.snapper_subvolume = make_subvolume(os.path.join(mountpoint, f"snapper-{content}"))
        _fill(self.snapper_subvolume, content)
        self.cli_dir = os.path.join(mountpoint, f"cli-{content}")
        self.ioctl_dir = os.path.join(mountpoint, f"ioctl-{content}")
        os.makedirs(self.cli_dir)
        os.makedirs(self.ioctl_dir)
        self.counter = 0
        self.api = Snaptree(os.path.join(mountpoint, f"state-{content}"), auto_recover=False)
        self.api.create_group(content, [f"btrfs:{self.subvolume}"])
        self.snapper_config = f"snaptree-bench-{os.getpid()}-{content}"
        subprocess.run(["snapper", "--no-dbus", "-c", self.snapper_config, "create-config",
                        self.snapper_subvolume], check=True, capture_output=True)
        self.functions: dict[str, Callable[[], Any]] = {
            "snaptree": self.snaptree, "snaptree_api": self.snaptree_api, "ioctl": self.ioctl,
            "btrfs_cli": self.btrfs_cli, "snapper": self.snapper}

    def _next(self) -> str:
        self.counter += 1
        return f"{self.counter:016x}"

    def snaptree(self) -> None:
        ctx = OpContext(group=Group(self.content, (self.volume,)), snapshot_id=self._next(),
                        snapshot_name="bench")
        plugin.snapshot([self.volume], ctx)

    def snaptree_api(self) -> None:
        self.api.create(self.content, f"s{self._next()}")

    def ioctl(self) -> None:
        source = os.open(self.subvolume, os.O_RDONLY | os.O_DIRECTORY)
        dest = os.open(self.ioctl_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            ioctl.create_snapshot(source, dest, self._next(), readonly=True)
        finally:
            os.close(source)
            os.close(dest)

    def btrfs_cli(self) -> None:
        subprocess.run(["btrfs", "subvolume", "snapshot", "-r", self.subvolume,
                        os.path.join(self.cli_dir, self._next())], check=True, capture_output=True)

    def snapper(self) -> None:
        subprocess.run(["snapper", "--no-dbus", "-c", self.snapper_config, "create"],
                       check=True, capture_output=True)

    def close(self) -> None:
        """Remove every snapshot and the snapper config (best effort, then the fs goes)."""
        self.api.close()
        subprocess.run(["snapper", "--no-dbus", "-c", self.snapper_config, "delete-config"],
                       check=False, capture_output=True)
        for folder in (self.cli_dir, self.ioctl_dir, snapshot_dir(self.subvolume)):
            if os.path.isdir(folder):
                for name in os.listdir(folder):
                    subprocess.run(["btrfs", "subvolume", "delete", os.path.join(folder, name)],
                                   check=False, capture_output=True)


@contextlib.contextmanager
def _filesystem() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="bench-btrfs-", dir="/var/tmp") as directory:
        with btrfs_filesystem(directory, size="2G") as mountpoint:
            yield mountpoint


def _measure_content(mountpoint: str, content: str, rounds: int) -> dict[str, Any]:
    bench = _Bench(mountpoint, content)
    try:
        for function in bench.functions.values():  # warm-up: first commit, page cache
            function()
        times: dict[str, list[float]] = {name: [] for name in METHODS}
        for round_index in range(rounds):
            # rotate the order so no method always follows the same neighbour
            shift = round_index % len(METHODS)
            for name in METHODS[shift:] + METHODS[:shift]:
                started = time.perf_counter()
                bench.functions[name]()
                times[name].append(time.perf_counter() - started)
    finally:
        bench.close()
    medians = {name: statistics.median(values) for name, values in times.items()}
    ratios = {f"snaptree/{name}": medians["snaptree"] / medians[name]
              for name in METHODS if name != "snaptree"}
    return {"median_s": medians, "ratios": ratios, "rounds": rounds,
            "targets": {"snaptree <= 1.2x ioctl": ratios["snaptree/ioctl"] <= 1.2,
                        "snaptree faster than btrfs CLI": ratios["snaptree/btrfs_cli"] < 1.0,
                        "snaptree faster than snapper": ratios["snaptree/snapper"] < 1.0}}


def measure(quick: bool = False) -> dict[str, Any]:
    """Run the btrfs benchmark; return medians (seconds) and ratios per content."""
    reason = unavailable()
    if reason:
        return {"status": "skipped", "reason": reason}
    rounds = 25 if quick else 101
    with _filesystem() as mountpoint:
        return {content: _measure_content(mountpoint, content, rounds) for content in CONTENTS}


# -- pytest-benchmark -------------------------------------------------------------------


@pytest.fixture(scope="module")
def benches() -> Iterator[dict[str, _Bench]]:
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    with _filesystem() as mountpoint:
        made = {content: _Bench(mountpoint, content) for content in CONTENTS}
        try:
            yield made
        finally:
            for bench in made.values():
                bench.close()


@pytest.mark.parametrize("content", CONTENTS)
@pytest.mark.parametrize("method", METHODS)
def test_snapshot(benchmark, benches, content, method):
    bench = benches[content]
    benchmark.group = f"btrfs snapshot, {content}"
    benchmark.pedantic(bench.functions[method], rounds=15, iterations=1, warmup_rounds=1)


if __name__ == "__main__":
    import json

    print(json.dumps(measure(quick="--quick" in sys.argv), indent=2))
