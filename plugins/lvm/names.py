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
    "parse_locator",
    "snapshot_lv_name",
    "revert_temp_name",
    "revert_old_name",
    "match_snapshot_lv",
    "SNAPSHOT_SUFFIX_LENGTH",
]

_VALID = re.compile(r"^[A-Za-z0-9+_.-]+$")
_RESERVED_LV_PREFIXES = ("snapshot", "pvmove")
_RESERVED_LV_INFIXES = ("_cdata", "_cmeta", "_corig", "_iorig", "_mimage", "_mlog", "_pmspare",
                        "_rimage", "_rmeta", "_tdata", "_tmeta", "_vdata", "_vorigin", "_wcorig")
#: LVM's NAME_LEN is 128 including the NUL.
MAX_NAME = 127
#: The device-mapper name ``vg-lv`` (hyphens doubled) must fit DM_NAME_LEN (128).
MAX_DM_NAME = 127

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


def _dm_length(vg: str, lv: str) -> int:
    return len(vg.replace("-", "--")) + 1 + len(lv.replace("-", "--"))


def parse_locator(locator: object) -> tuple[str, str]:
    """Split and validate ``VG/LV`` (a leading ``/dev/`` is accepted and dropped).

    Also checks that the longest snapshot name snaptree derives from the LV
    still fits LVM's and device-mapper's length limits, so a volume that
    could never be snapshotted is refused when it is claimed.
    """
    if not isinstance(locator, str):
        raise InvalidInput("lvm: locator must be a string like VG/LV")
    text = locator[len("/dev/"):] if locator.startswith("/dev/") else locator
    parts = text.split("/")
    if len(parts) != 2:
        raise InvalidInput(f"lvm: locator {locator!r} must look like VG/LV, e.g. vg0/vm-disk")
    vg, lv = check_vg_name(parts[0]), check_lv_name(parts[1])
    longest = lv + "x" * SNAPSHOT_SUFFIX_LENGTH
    if len(longest) > MAX_NAME or _dm_length(vg, longest) > MAX_DM_NAME:
        raise InvalidInput(
            f"lvm: {vg}/{lv} is too long a name to snapshot: snapshot names add "
            f"{SNAPSHOT_SUFFIX_LENGTH} characters and device-mapper allows {MAX_DM_NAME}")
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
