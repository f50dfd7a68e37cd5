"""qcow2 benchmark: snaptree's group create against the bare primitives.

Measured in one run, on the same kind of disks (16 MiB empty qcow2 images
served by a ``qemu-storage-daemon`` with NBD exports, through the host's page
cache; and again for 16 disks of 1 GiB holding 64 MiB each, through the page
cache (``VM_DISKS``) and opened with O_DIRECT as a ``cache=none`` VM opens
them (``CACHE_NONE``)):

* ``snaptree``: ``Snaptree.create`` of a group of 1, 4 and 16 disks
  (internal mode; one QMP connection per operation, plus catalog work).
  One ``Snaptree`` makes every snapshot, as a long-lived caller would: its
  first create asks QEMU for the block nodes (``snaptree_first``, timed
  before the rounds), later ones reuse them and check the result in the
  images;
* ``transaction``: one bare QMP ``transaction`` over the same disks;
* ``separate``: one ``blockdev-snapshot-internal-sync`` per disk;
* ``qemu_img``: ``qemu-img snapshot -c`` per disk, QEMU not running (for
  the O_DIRECT set also ``qemu_img_direct``, the images opened that way);
* ``memory``: ``create --memory`` of an OS-less VM with 128 MiB (and 1 GiB
  unless ``quick``) of RAM, every page dirtied first, with the time the guest
  stayed paused, and the ``revert`` to that snapshot.

Each figure is the median of 30 rounds (60 in a full run; 24 and 48 for the
1 GiB sets; always a multiple of the six orders; a 16-disk round takes a
fraction of a second, and this machine is noisy), snapshots deleted between
rounds (untimed); ``qemu_img`` of 8.  ``ratio_vs_transaction`` divides
snaptree's median by the transaction's.  A create's time depends on its
place in the round (how many snapshots the images already hold, what ran
just before it: the last place took up to 1.4x the first), so one round's
pair compares unlike places; over the whole run each method holds every
place equally often, and the medians shrug off the slow outliers a sum
would not.  ``snaptree_first`` is a create timed before the
rounds, by a ``Snaptree`` that has not met this QEMU yet.  ``targets``
checks the issue's two targets (at most 1.15x the transaction, at least 3x
faster than ``qemu-img``) on every 16-disk set: snaptree's own part is a few
fixed milliseconds, so on the small empty images, where QEMU is quickest,
it weighs most.
``measure(quick)`` returns plain numbers and ratios; run
``python -m benchmarks.bench_qcow2`` to print them.
"""

from __future__ import annotations

import itertools
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

from qemu_fixtures import RecipeVM, make_images, start_daemon, write_recipe  # noqa: E402

from snaptree import Snaptree  # noqa: E402
from snaptree_qcow2.qmp import QMPSession  # noqa: E402

__all__ = ["measure"]


def _median(rounds: int, action: Callable[[int], Any], cleanup: Callable[[int], Any]) -> float:
    times = []
    for index in range(rounds):
        started = time.perf_counter()
        action(index)
        times.append(time.perf_counter() - started)
        cleanup(index)
    return statistics.median(times)


#: the orders in which a round can run the three methods
ORDERS = 6


def _disks(directory: str, count: int, rounds: int = ORDERS, *, size: str = "16M", written: str = "",
           direct: bool = False) -> dict[str, float]:
    """The methods take turns within each round, so a noisy neighbour slows
    them alike, and the rounds go through every order of the three.  What
    ran just before matters on this machine: a transaction measured right
    after snaptree's delete (which runs ``qemu-img`` processes) was up to 4 ms
    faster than one after a plain QMP delete.  So the three snapshots of a
    round are deleted together after it, the same way every round, and
    each method runs first after that, or after either other method, as
    often as the others."""
    if rounds % ORDERS:  # else the first orders would run once more than the rest
        raise ValueError(f"rounds must be a multiple of {ORDERS}, not {rounds}")
    images = make_images(directory, count, size, written)
    daemon = start_daemon(directory, images, direct=direct)
    nodes = [f"disk{i}" for i in range(count)]
    samples: dict[str, list[float]] = {"snaptree": [], "transaction": [], "separate": []}

    def qmp_delete(tag: str) -> None:
        with QMPSession(daemon.qmp_socket) as session:
            for node in nodes:
                session.execute("blockdev-snapshot-delete-internal-sync", {"device": node, "name": tag})

    try:
        with Snaptree(os.path.join(directory, "state")) as api:
            api.create_group("g", [f"qcow2:{p}" for p in images], qmp_socket=daemon.qmp_socket)
            started = time.perf_counter()
            api.create("g", "first")
            first = time.perf_counter() - started
            api.delete("g", "first")

            def snaptree(i: int) -> None:
                api.create("g", f"s{i}")

            def transaction(i: int) -> None:
                with QMPSession(daemon.qmp_socket) as session:
                    session.execute("transaction", {"actions": [
                        {"type": "blockdev-snapshot-internal-sync", "data": {"device": n, "name": f"t{i}"}}
                        for n in nodes]})

            def separate(i: int) -> None:
                for node in nodes:  # a separate command (and connection) per disk
                    with QMPSession(daemon.qmp_socket) as session:
                        session.execute("blockdev-snapshot-internal-sync", {"device": node, "name": f"p{i}"})

            methods = [("snaptree", snaptree, lambda i: api.delete("g", f"s{i}")),
                       ("transaction", transaction, lambda i: qmp_delete(f"t{i}")),
                       ("separate", separate, lambda i: qmp_delete(f"p{i}"))]
            orders = list(itertools.permutations(methods))
            for index in range(rounds):
                turn = orders[index % len(orders)]
                for name, action, _cleanup in turn:
                    started = time.perf_counter()
                    action(index)
                    samples[name].append(time.perf_counter() - started)
                for _name, _action, cleanup in methods:  # untimed, the same every round
                    cleanup(index)
    finally:
        daemon.quit()
    out = {name: statistics.median(times) for name, times in samples.items()}
    out["snaptree_first"] = first

    def opened(image: str, o_direct: bool) -> list[str]:
        if not o_direct:
            return [image]
        return ["--image-opts", f"driver=qcow2,file.driver=file,file.filename={image},"
                                "file.cache.direct=on"]

    def qemu_img_runs(o_direct: bool) -> float:
        def every_image(flag: str, i: int) -> None:
            for image in images:
                subprocess.run(["qemu-img", "snapshot", flag, f"q{i}", *opened(image, o_direct)],
                               check=True)
        return _median(min(rounds, 8), lambda i: every_image("-c", i),
                       lambda i: every_image("-d", i))

    # ``qemu-img snapshot -c`` as one types it (its default cache mode); for
    # O_DIRECT disks also opened the way QEMU had them, which costs it more.
    out["qemu_img"] = qemu_img_runs(False)
    if direct:
        out["qemu_img_direct"] = qemu_img_runs(True)
    # Each method held every place of the round equally often: compare
    # their medians, not one round's pair (unlike places, see above).
    out["ratio_vs_transaction"] = out["snaptree"] / out["transaction"]
    out["qemu_img_over_snaptree"] = out["qemu_img"] / out["snaptree"]
    if direct:
        out["qemu_img_direct_over_snaptree"] = out["qemu_img_direct"] / out["snaptree"]
    return out


#: guest RAM the firmware uses (its code below 1 MiB, its tables at the top):
#: left as it is so the guest keeps running while the rest is dirtied
_FIRMWARE_LOW_MIB, _FIRMWARE_HIGH_MIB = 2, 4


def _memory(directory: str, mib: int, mode: str) -> dict[str, float]:
    """``create --memory`` and ``revert`` of a VM whose RAM is all in use.

    An OS-less guest leaves its RAM zero, which migration skips; here the
    RAM is a shared file filled with random bytes first, so every page is
    saved, as for a busy guest.
    """
    images = make_images(directory, 1)
    ram = os.path.join(directory, "guest.ram")
    recipe = write_recipe(directory, images, memory_mib=mib, ram_file=ram)
    vm = RecipeVM(recipe, images, os.path.join(directory, "vm.qmp"))
    try:
        chunk = os.urandom(1 << 20)
        with open(ram, "r+b") as handle:
            handle.seek(_FIRMWARE_LOW_MIB << 20)
            for _ in range(mib - _FIRMWARE_LOW_MIB - _FIRMWARE_HIGH_MIB):
                handle.write(chunk)
        with Snaptree(os.path.join(directory, "state")) as api:
            api.create_group("vm", [f"qcow2:{images[0]}"], qmp_socket=vm.qmp_socket,
                             options={"qcow2.mode": mode, "qemu.launch": recipe})
            real = api.coordinator.context

            def context(*args, **kwargs):
                ctx = real(*args, **kwargs)
                contexts.append(ctx)
                return ctx
            contexts: list = []
            api.coordinator.context = context
            started = time.perf_counter()
            api.create("vm", "ram", memory=True)
            total = time.perf_counter() - started
            paused = [c.scratch["qcow2.paused_seconds"] for c in contexts
                      if "qcow2.paused_seconds" in c.scratch]
            started = time.perf_counter()
            api.revert("vm", "ram")  # internal: snapshot-load; external: a new QEMU, -incoming
            revert = time.perf_counter() - started
    finally:
        vm.kill()
    return {"total_s": total, "paused_s": paused[0] if paused else float("nan"),
            "revert_s": revert}


#: VM-sized disks holding data, as QEMU opens them by default (through the
#: host's page cache).  A snapshot's cost grows with what the image holds
#: (every allocated cluster's refcount goes up), so a 16-disk transaction
#: takes about 1.3x as long as on the small empty images of the first set.
VM_DISKS = {"size": "1G", "written": "64M", "direct": False}
#: The same disks opened with O_DIRECT (``cache=none``, what libvirt advises
#: for migratable VMs).  QEMU's flushes then reach the disk: 2.5x as long as
#: on the small empty images.
CACHE_NONE = {"size": "1G", "written": "64M", "direct": True}
#: The issue's target: a 16-disk create at most this times the transaction.
TARGET_RATIO = 1.15
#: ... and at least this many times faster than ``qemu-img snapshot -c`` per disk.
TARGET_OVER_QEMU_IMG = 3.0


def targets(result: dict[str, Any]) -> dict[str, bool]:
    """The issue's two targets, checked on each 16-disk set that ran."""
    out = {}
    for key, label in (("disks", "small empty images"), ("disks_vm", "VM disks, page cache"),
                       ("disks_cache_none", "VM disks, cache=none")):
        figures = result.get(key, {}).get(16)
        if figures is None:
            continue
        out[f"16 disks, {label}: <= {TARGET_RATIO}x transaction"] = (
            figures["ratio_vs_transaction"] <= TARGET_RATIO)
        out[f"16 disks, {label}: >= {TARGET_OVER_QEMU_IMG:g}x faster than qemu-img"] = (
            figures["qemu_img_over_snaptree"] >= TARGET_OVER_QEMU_IMG)
        if "qemu_img_direct_over_snaptree" in figures:
            out[f"16 disks, {label}: >= {TARGET_OVER_QEMU_IMG:g}x faster than qemu-img "
                "opening them O_DIRECT"] = (
                figures["qemu_img_direct_over_snaptree"] >= TARGET_OVER_QEMU_IMG)
    return out


def measure(quick: bool = False) -> dict[str, Any]:
    """Run the qcow2 benchmark; return ``{"disks": {n: {...}}, "disks_vm": {16: {...}},
    "disks_cache_none": {16: {...}}, "memory": {...}, "targets": {...}}``."""
    result: dict[str, Any] = {"disks": {}, "memory": {}}
    for count in (1, 4, 16):
        with tempfile.TemporaryDirectory(prefix="bench-qcow2-") as directory:
            result["disks"][count] = _disks(directory, count, rounds=30 if quick else 60)
    for key, disk_set in (("disks_vm", VM_DISKS), ("disks_cache_none", CACHE_NONE)):
        with tempfile.TemporaryDirectory(prefix="bench-qcow2-") as directory:
            result[key] = {16: _disks(directory, 16, rounds=24 if quick else 48, **disk_set)}
    result["targets"] = targets(result)
    for mib in ((128,) if quick else (128, 1024)):
        for mode in ("internal", "external"):
            with tempfile.TemporaryDirectory(prefix="bench-qcow2-") as directory:
                result["memory"][f"{mib}MiB-{mode}"] = _memory(directory, mib, mode)
    return result


if __name__ == "__main__":
    import json
    print(json.dumps(measure(quick="--quick" in sys.argv), indent=2))
