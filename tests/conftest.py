"""Shared fixtures and the skip rules for tests that need root, QEMU, btrfs."""

from __future__ import annotations

import os
import shutil

import pytest

pytest_plugins = ["snaptree.testing", "btrfs_fixtures", "qemu_fixtures"]


def is_root() -> bool:
    return os.geteuid() == 0


def pytest_collection_modifyitems(config, items):
    reasons = {
        "root": None if is_root() else "needs root for loop devices and mounts",
        "btrfs": None if shutil.which("mkfs.btrfs") else "needs btrfs-progs (mkfs.btrfs)",
        "qemu": None if all(shutil.which(t) for t in (
            "qemu-img", "qemu-io", "qemu-storage-daemon", "qemu-system-x86_64"))
        else "needs qemu-utils and qemu-system-x86 (qemu-img, qemu-io, qemu-storage-daemon)",
    }
    for item in items:
        for marker, reason in reasons.items():
            if reason and item.get_closest_marker(marker):
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def disks(tmp_path):
    """Two 64 KiB raw images filled with ``A`` and ``B`` bytes (for the raw backend)."""
    paths = []
    for i in range(2):
        path = tmp_path / f"disk{i}.img"
        path.write_bytes(bytes([65 + i]) * 65536)
        paths.append(path)
    return paths


@pytest.fixture
def state_dir(tmp_path):
    path = tmp_path / "state"
    return str(path)


_CRASH_STATS: list = []
_FUZZ_COUNTS: dict[str, int] = {}
_GUEST_RESULTS: list[dict] = []


@pytest.fixture
def guest_results():
    """The guest harness appends the inner run's junit counts here."""
    return _GUEST_RESULTS


@pytest.fixture
def crash_totals():
    """Tests of the crash harness append their KillPointStats here."""
    return _CRASH_STATS


@pytest.fixture
def fuzz_counter():
    """Property tests count the cases they tried: ``fuzz_counter[name] += 1``."""
    return _FUZZ_COUNTS


def pytest_terminal_summary(terminalreporter):
    for run in _GUEST_RESULTS:
        terminalreporter.section("devmapper tests inside the virtme-ng guest")
        passed = run["tests"] - run["failures"] - run["errors"] - run["skipped"]
        terminalreporter.write_line(
            f"{passed} passed, {run['failures'] + run['errors']} failed, {run['skipped']} skipped "
            f"in the guest ({run['seconds']}s)")
    if _CRASH_STATS:
        tried = sum(s.tried for s in _CRASH_STATS)
        survived = sum(s.survived for s in _CRASH_STATS)
        terminalreporter.section("crash kill points")
        for s in _CRASH_STATS:
            terminalreporter.write_line(f"{s.backend:<8} {s.operation:<7} tried {s.tried:>3}  survived {s.survived:>3}")
        terminalreporter.write_line(f"total: {tried} kill points tried, {survived} survived")
    if _FUZZ_COUNTS:
        terminalreporter.section("property-based input cases")
        for name, count in sorted(_FUZZ_COUNTS.items()):
            terminalreporter.write_line(f"{name:<40} {count:>6} cases")
        terminalreporter.write_line(f"total: {sum(_FUZZ_COUNTS.values())} cases")
