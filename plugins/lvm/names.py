"""LVM's naming rules, checked before any command runs.

The rules follow lvm(8) "VALID NAMES" and LVM's own ``apply_lvname_restrictions``:
characters ``[A-Za-z0-9+_.-]``, no leading ``-``, not ``.``/``..``, LV names
not starting with ``snapshot`` or ``pvmove`` and free of the infixes LVM uses
for hidden sub-volumes.  Snapshot LVs are named ``<lv>.snaptree.<id>``; the
helpers here build and recognise those names.
"""

from __future__ import annotations

import re

from snaptree.errors import InvalidInput

__all__ = [
    "check_vg_name",
    "check_lv_name",
    "dm_name",
    "parse_locator",
    "snapshot_lv_name",
    "revert_temp_name",
    "revert_old_name",
    "match_snapshot_lv",
    "made_from",
    "generated_names",
    "SNAPSHOT_SUFFIX_LENGTH",
]

_VALID = re.compile(r"^[A-Za-z0-9+_.-]+$")
_RESERVED_LV_PREFIXES = ("snapshot", "pvmove")
#: lvm2's lib/misc/lvm-string.c: the component suffixes and the two of non-component LVs.
_RESERVED_LV_INFIXES = ("_cdata", "_cmeta", "_corig", "_cpool", "_cvol", "_imeta", "_iorig",
                        "_mimage", "_mlog", "_pmspare", "_rimage", "_rmeta", "_tdata", "_tmeta",
                        "_vdata", "_vorigin", "_wcorig")
#: LVM's NAME_LEN is 128 including the NUL.
MAX_NAME = 127
#: LVM's metadata check refuses an LV once ``len(vg) + len(lv) + 3`` reaches NAME_LEN
#: ("LV name ... length 128 is not supported").
MAX_VG_LV = 127 - 3
#: A device-mapper name (``vg-lv`` with every hyphen doubled, plus a layer) must stay below
#: DM_NAME_LEN (128).
MAX_DM_NAME = 127
#: Characters kept free below both limits, for layers and partition suffixes nobody listed.
NAME_MARGIN = 2
#: Longest kpartx partition suffix counted for ``snaptree map`` (``p`` and three digits).
_PARTITION_SUFFIX = "p999"

#: ``.snaptree-old.`` is the longest suffix we add to an LV name, plus a 16-hex id.
SNAPSHOT_SUFFIX_LENGTH = len(".snaptree-old.") + 16


def _check_common(name: object, what: str) -> str:
    if not isinstance(name, str) or not name:
        raise InvalidInput(f"lvm: {what} must be a non-empty string")
    if len(name) > MAX_NAME:
        raise InvalidInput(f"lvm: {what} {name[:20]!r}... is longer than {MAX_NAME} characters")
    bad = sorted({c for c in name if not _VALID.match(c)})
    if bad:
        shown = ", ".join(repr(c) for c in bad[:5])
        raise InvalidInput(
            f"lvm: {what} {name!r} contains {shown}; LVM allows only A-Z a-z 0-9 + _ . -")
    if name.startswith("-"):
        raise InvalidInput(f"lvm: {what} {name!r} must not start with '-'")
    if name in (".", ".."):
        raise InvalidInput(f"lvm: {what} {name!r} is reserved")
    return name


def check_vg_name(name: object) -> str:
    """Return ``name`` if LVM accepts it as a volume group name, else raise InvalidInput."""
    return _check_common(name, "volume group name")


def check_lv_name(name: object) -> str:
    """Return ``name`` if LVM accepts it as a logical volume name, else raise InvalidInput."""
    name = _check_common(name, "logical volume name")
    for prefix in _RESERVED_LV_PREFIXES:
        if name.startswith(prefix):
            raise InvalidInput(f"lvm: logical volume name {name!r} must not start with {prefix!r} "
                               "(reserved by LVM)")
    for infix in _RESERVED_LV_INFIXES:
        if infix in name:
            raise InvalidInput(f"lvm: logical volume name {name!r} must not contain {infix!r} "
                               "(reserved by LVM)")
    return name


def dm_name(vg: str, lv: str) -> str:
    """The device-mapper name LVM gives ``vg/lv`` (hyphens doubled, joined by one)."""
    return f"{vg.replace('-', '--')}-{lv.replace('-', '--')}"


def generated_names(vg: str, lv: str) -> tuple[list[str], list[str]]:
    """Every LV name and device-mapper name snaptree (and LVM beneath it) makes for ``vg/lv``.

    :returns: ``(lv_names, dm_names)``: the snapshot and the thin revert's two
        temporaries; their device-mapper names with the layers LVM adds (a
        thick origin's ``-real``, a thick snapshot's ``-cow``) and the partition
        maps of ``snaptree map``.
    """
    some_id = "f" * 16
    snapshot = snapshot_lv_name(lv, some_id)
    lv_names = [snapshot, revert_temp_name(lv, some_id), revert_old_name(lv, some_id)]
    dm_names = [dm_name(vg, name) for name in lv_names]
    dm_names += [dm_name(vg, lv) + "-real", dm_name(vg, snapshot) + "-cow",
                 dm_name(vg, snapshot) + _PARTITION_SUFFIX]
    return lv_names, dm_names


def _check_lengths(vg: str, lv: str) -> None:
    lv_names, dm_names = generated_names(vg, lv)
    longest_lv = max(lv_names, key=len)
    longest_dm = max(dm_names, key=len)
    if len(vg) + len(longest_lv) > MAX_VG_LV - NAME_MARGIN:
        added = len(longest_lv) - len(lv)
        allowed = MAX_VG_LV - NAME_MARGIN - len(vg) - added
        raise InvalidInput(
            f"lvm: {vg}/{lv} is too long a name to snapshot: snaptree adds {added} characters "
            f"to it, so LVM allows LV names of at most {allowed} characters in VG {vg!r}")
    if len(longest_dm) > MAX_DM_NAME - NAME_MARGIN:
        raise InvalidInput(
            f"lvm: {vg}/{lv} is too long a name to snapshot: the device-mapper name "
            f"{longest_dm!r} ({len(longest_dm)} characters, hyphens doubled) would exceed "
            f"{MAX_DM_NAME - NAME_MARGIN}")


def parse_locator(locator: object, *, room: bool = True) -> tuple[str, str]:
    """Split and validate ``VG/LV`` (a leading ``/dev/`` is accepted and dropped).

    With ``room`` (as when a volume is claimed) also checks that every name
    snaptree derives from the LV (see :func:`generated_names`) fits LVM's
    and device-mapper's length limits with ``NAME_MARGIN`` to spare, so a
    volume that could never be snapshotted or reverted is refused up front.
    Operations on a volume already in a group pass ``room=False``: a group
    an older, laxer check let in keeps working wherever LVM accepts it.
    """
    if not isinstance(locator, str):
        raise InvalidInput("lvm: locator must be a string like VG/LV")
    text = locator[len("/dev/"):] if locator.startswith("/dev/") else locator
    parts = text.split("/")
    if len(parts) != 2:
        raise InvalidInput(f"lvm: locator {locator!r} must look like VG/LV, e.g. vg0/vm-disk")
    vg, lv = check_vg_name(parts[0]), check_lv_name(parts[1])
    if room:
        _check_lengths(vg, lv)
    return vg, lv


def _check_id(snapshot_id: str) -> str:
    if not re.fullmatch(r"[0-9a-f]{16}", snapshot_id or ""):
        raise InvalidInput(f"lvm: snapshot id {snapshot_id!r} is not 16 hex digits")
    return snapshot_id


def snapshot_lv_name(lv: str, snapshot_id: str) -> str:
    """Name of the snapshot LV of ``lv`` for ``snapshot_id``."""
    return f"{lv}.snaptree.{_check_id(snapshot_id)}"


def revert_temp_name(lv: str, snapshot_id: str) -> str:
    """Thin revert: the new copy of the snapshot that will take the origin's name."""
    return f"{lv}.snaptree-new.{_check_id(snapshot_id)}"


def revert_old_name(lv: str, snapshot_id: str) -> str:
    """Thin revert: the name the old origin is parked under until it is removed."""
    return f"{lv}.snaptree-old.{_check_id(snapshot_id)}"


def match_snapshot_lv(lv: str, name: str, kind: str = "snaptree") -> str | None:
    """The snapshot id if ``name`` is a ``kind`` LV of ``lv`` (kinds: snaptree,
    snaptree-new, snaptree-old), else ``None``."""
    match = re.fullmatch(re.escape(lv) + r"\." + re.escape(kind) + r"\.([0-9a-f]{16})", name)
    return match[1] if match else None


_MADE_NAME = re.compile(r"(.+)\.snaptree(?:-new|-old)?\.[0-9a-f]{16}")


def made_from(lv: str) -> str | None:
    """The LV whose snapshot (or thin revert's temporary) snaptree named
    ``lv``, or ``None`` for a name snaptree does not make."""
    match = _MADE_NAME.fullmatch(lv)
    return match[1] if match else None
