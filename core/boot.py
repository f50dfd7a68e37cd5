"""Which boot of this machine we run in.

A catalog write that skips its fsync survives the process being killed (it
sits in the kernel's page cache) but not a power cut.  snaptree writes a
create's journal entry that way, so a create costs one fsync instead of two,
and makes up for it after a reboot: every group records, durably, the boot
during which it began unsynced creates (see :mod:`snaptree.coordinator`), and
``recover`` removes what such a create made if its journal entry did not
survive the reboot.  Linux names each boot with a random
``/proc/sys/kernel/random/boot_id``.
"""

from __future__ import annotations

import os

__all__ = ["boot_id"]

_BOOT_ID = "/proc/sys/kernel/random/boot_id"
_read: list[str | None] = []  # the boot id, once read: it cannot change under a process


def boot_id() -> str | None:
    """This boot's id, or ``None`` when the kernel does not say (then every
    journal entry is synced)."""
    override = os.environ.get("SNAPTREE_BOOT_ID")  # tests: act as after a reboot
    if override:
        return override
    if not _read:
        try:
            with open(_BOOT_ID, encoding="ascii") as handle:
                _read.append(handle.read().strip() or None)
        except (OSError, ValueError):
            _read.append(None)
    return _read[0]
