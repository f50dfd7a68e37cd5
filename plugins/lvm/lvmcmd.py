"""The lvm backend's one I/O boundary: every lvm, kpartx and dmsetup call.

:class:`LvmCommands` builds argument lists, runs them through one
:class:`snaptree.runner.CommandRunner` (so fault-injection tests can fail the
N-th call), parses ``--reportformat json`` reports, and maps each failure
once to the error tree, keeping the command's stderr in ``detail``.

Without a udev daemon (a bare guest, a container) LVM would wait forever for
udev to create device nodes, so the runner passes
``--config 'activation{udev_sync=0 udev_rules=0}'`` and ``DM_DISABLE_UDEV=1``
(libdevmapper then makes the nodes itself).  Whether udevd runs is detected
from ``/run/udev/control`` unless ``use_udev`` is given.
"""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any, Sequence

import attrs

from snaptree.errors import (
    BackendError,
    CommandFailed,
    DeviceTimeout,
    OutOfSpace,
    PermissionDenied,
    VolumeInUse,
    VolumeNotFound,
)
from snaptree.devices import wait_for_block_devices
from snaptree.runner import CommandRunner

#: seconds to wait for an activated LV's device node
ACTIVATION_TIMEOUT = 20.0
#: seconds an active LV's node may be late before LVM is asked to make it again
NODE_GRACE = 2.0

__all__ = ["LvmCommands", "LvInfo", "LV_FIELDS", "udev_running", "map_lvm_failure"]

UDEV_CONTROL = "/run/udev/control"

#: The ``lvs`` columns :class:`LvInfo` is built from.
LV_FIELDS = ("lv_name", "vg_name", "lv_uuid", "lv_attr", "lv_size", "origin", "origin_size",
             "pool_lv", "data_percent", "snap_percent", "lv_snapshot_invalid", "lv_merging",
             "lv_device_open", "lv_active", "lv_skip_activation", "lv_layout", "lv_role",
             "lv_tags", "lv_path")

#: stderr fragments, most specific first, and the error class they mean.
_STDERR_CLASSES: tuple[tuple[str, type[BackendError]], ...] = (
    ("Insufficient free space", OutOfSpace),
    ("Insufficient suitable allocatable extents", OutOfSpace),
    ("reached threshold", OutOfSpace),
    ("out of data space", OutOfSpace),
    ("No space left on device", OutOfSpace),
    ("in use", VolumeInUse),
    ("used by another device", VolumeInUse),     # held by a kpartx partition map, say
    ("is open", VolumeInUse),
    ("busy", VolumeInUse),
    ("Failed to find logical volume", VolumeNotFound),
    ("not found", VolumeNotFound),
    ("Permission denied", PermissionDenied),
    ("must be root", PermissionDenied),
    ("Operation not permitted", PermissionDenied),
)


def udev_running() -> bool:
    """Whether LVM should sync with udev.

    ``$SNAPTREE_LVM_UDEV`` (``0``/``1``) decides when set; otherwise the
    answer is whether a udev daemon listens (its control socket exists).
    """
    forced = os.environ.get("SNAPTREE_LVM_UDEV", "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    return os.path.exists(UDEV_CONTROL)


def _reason(stderr: str) -> str:
    """The line of LVM's stderr that says what went wrong (not warnings, not usage hints)."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    useful = [line for line in lines
              if not line.startswith(("WARNING", "Run `", "File descriptor", "Udev is running"))]
    return (useful or lines or [""])[0]


def map_lvm_failure(err: BackendError) -> BackendError:
    """Turn a failed command into the most precise error of the tree.

    ``err`` is what the runner raised: a :class:`CommandFailed`, or an
    :class:`OutOfSpace` it recognised itself.  The message names the LVM
    command and the line of stderr that explains the failure; the whole
    stderr stays in ``detail``.
    """
    stderr = getattr(err, "stderr", "") or ""
    argv = getattr(err, "argv", None) or []
    reason = _reason(stderr)
    if reason and argv:
        command = argv[1] if os.path.basename(argv[0]) == "lvm" else argv[0]
        err.message = f"lvm: {os.path.basename(command)} failed: {reason}"
    for fragment, cls in _STDERR_CLASSES:
        if fragment in stderr:
            if isinstance(err, cls):
                return err
            mapped = cls(err.message, detail=stderr)
            mapped.argv, mapped.stderr = argv, stderr
            mapped.returncode = getattr(err, "returncode", None)
            return mapped
    return err


def _percent(text: str) -> float | None:
    try:
        return float(text) if text not in ("", None) else None
    except ValueError:
        return None


def _int(text: str) -> int | None:
    try:
        return int(float(text)) if text not in ("", None) else None
    except ValueError:
        return None


@attrs.frozen
class LvInfo:
    """One row of ``lvs``, with the columns snaptree needs typed."""

    name: str                  # without the [] LVM puts around hidden LVs
    vg: str
    uuid: str
    attr: str
    size_bytes: int | None
    origin: str
    pool: str
    data_percent: float | None
    is_invalid: bool
    is_merging: bool
    is_open: bool
    is_active: bool
    skips_activation: bool
    is_hidden: bool
    roles: tuple[str, ...]
    tags: tuple[str, ...]

    @property
    def is_thin(self) -> bool:
        """A thin volume (thin origin or thin snapshot); its attr type is 'V'."""
        return self.attr[:1] == "V"

    @property
    def is_writable(self) -> bool:
        """The LV's permission (attr[1]) is read-write."""
        return self.attr[1:2] == "w"

    @property
    def is_thick_snapshot(self) -> bool:
        return self.attr[:1] in ("s", "S")

    @property
    def is_thick_origin(self) -> bool:
        return self.attr[:1] in ("o", "O")

    @property
    def spec(self) -> str:
        return f"{self.vg}/{self.name}"

    @classmethod
    def from_report(cls, row: dict[str, str]) -> "LvInfo":
        raw_name = row.get("lv_name", "")
        attr = row.get("lv_attr", "") or "----------"
        return cls(
            name=raw_name.strip("[]"),
            vg=row.get("vg_name", ""),
            uuid=row.get("lv_uuid", ""),
            attr=attr,
            size_bytes=_int(row.get("lv_size", "")),
            origin=row.get("origin", "").strip("[]"),
            pool=row.get("pool_lv", "").strip("[]"),
            data_percent=_percent(row.get("data_percent", "")),
            # attr[4] is the state: 'I' invalid snapshot, 'm' merge failed
            is_invalid=row.get("lv_snapshot_invalid") == "snapshot invalid" or attr[4:5] == "I",
            is_merging=row.get("lv_merging") == "merging",
            is_open=row.get("lv_device_open") == "open",
            is_active=row.get("lv_active") == "active",
            skips_activation=row.get("lv_skip_activation") == "skip activation",
            is_hidden=raw_name.startswith("["),
            roles=tuple(r for r in row.get("lv_role", "").split(",") if r),
            tags=tuple(t for t in row.get("lv_tags", "").split(",") if t),
        )


class LvmCommands:
    """Runs LVM and friends for the lvm backend.

    :param use_udev: whether to let LVM sync with udev; ``None`` detects it.
    :param extra_config: more LVM ``--config`` text for every command (default:
        ``$SNAPTREE_LVM_CONFIG``), e.g. a device filter.
    :param runner: a :class:`CommandRunner` to share (tests inject faults).
    """

    def __init__(self, *, use_udev: bool | None = None, extra_config: str | None = None,
                 runner: CommandRunner | None = None):
        self.use_udev = udev_running() if use_udev is None else use_udev
        if extra_config is None:
            extra_config = os.environ.get("SNAPTREE_LVM_CONFIG", "")
        self.extra_config = extra_config.strip()
        env = {"LVM_SUPPRESS_FD_WARNINGS": "1"}
        if not self.use_udev:
            env["DM_DISABLE_UDEV"] = "1"
        self.runner = runner or CommandRunner("lvm", env=env)
        if runner is not None:
            runner.env = {**(runner.env or {}), **env}

    # -- raw calls --------------------------------------------------------------

    def config_args(self) -> list[str]:
        parts = [] if self.use_udev else ["activation{udev_sync=0 udev_rules=0}"]
        if self.extra_config:
            parts.append(self.extra_config)
        return ["--config", " ".join(parts)] if parts else []

    def _run(self, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess:
        """Run ``argv`` through the runner; every failure of the command is mapped once."""
        try:
            return self.runner.run(argv, **kwargs)
        except (CommandFailed, OutOfSpace) as err:  # the runner makes ENOSPC an OutOfSpace
            raise map_lvm_failure(err) from err

    def lvm(self, command: str, *args: str, timeout: float | None = None) -> str:
        """Run ``lvm COMMAND ARGS`` and return stdout; failures are mapped."""
        return self._run(["lvm", command, *self.config_args(), *args], timeout=timeout).stdout

    def tool(self, argv: Sequence[str], *, check: bool = True) -> str:
        """Run a non-lvm program (kpartx, dmsetup, blockdev) through the same runner."""
        return self._run(list(argv), check=check).stdout

    # -- reports ----------------------------------------------------------------

    def report(self, command: str, fields: Sequence[str], *targets: str,
               extra: Sequence[str] = ()) -> list[dict[str, str]]:
        """Rows of a ``lvs``/``vgs``/``pvs`` JSON report."""
        out = self.lvm(command, "--reportformat", "json", "--units", "b", "--nosuffix",
                       "-o", ",".join(fields), *extra, *targets)
        try:
            document: dict[str, Any] = json.loads(out)
            rows: list[dict[str, str]] = []
            for section in document.get("report", []):
                for key in ("lv", "vg", "pv"):
                    rows.extend(section.get(key, []))
            return rows
        except (ValueError, AttributeError, TypeError) as err:
            raise BackendError(f"lvm: cannot parse the {command} report",
                               detail=out[:2000]) from err

    def lvs(self, vg: str) -> list[LvInfo]:
        """Every LV of ``vg``, hidden ones included."""
        return [LvInfo.from_report(row) for row in self.report("lvs", LV_FIELDS, vg, extra=["-a"])]

    def lv(self, vg: str, lv: str) -> LvInfo | None:
        """One LV of ``vg`` or ``None`` when it does not exist (a missing VG raises)."""
        return self.lv_map(vg).get(lv)

    def lv_map(self, vg: str) -> dict[str, LvInfo]:
        """Every LV of ``vg`` by name: one ``lvs`` call for several look-ups."""
        return {info.name: info for info in self.lvs(vg)}

    def autoactivation(self, vg: str, lv: str) -> bool | None:
        """Whether ``vg/lv`` is autoactivated (``None``: this LVM predates the setting, 2.03.12)."""
        try:
            rows = self.report("lvs", ("lv_name", "lv_autoactivation"), f"{vg}/{lv}")
        except BackendError as err:
            if "Unrecognised field" in (err.detail or ""):
                return None
            raise
        return rows[0].get("lv_autoactivation") == "enabled" if rows else None

    def set_autoactivation(self, vg: str, lv: str, enabled: bool) -> None:
        self.lvm("lvchange", "--setautoactivation", "y" if enabled else "n", f"{vg}/{lv}")

    def vg_free_bytes(self, vg: str) -> int | None:
        rows = self.report("vgs", ("vg_name", "vg_free"), vg)
        return _int(rows[0].get("vg_free", "")) if rows else None

    # -- operations -------------------------------------------------------------

    def create_thick_snapshot(self, vg: str, origin: str, name: str, size: str,
                              tags: Sequence[str] = ()) -> None:
        """``lvcreate -s`` with ``-l N%ORIGIN`` or ``-L SIZE``."""
        size_args = ["-l", size] if "%" in size else ["-L", size]
        self.lvm("lvcreate", "-s", *size_args, "-n", name, *_tag_args(tags), f"{vg}/{origin}")

    def create_thin_snapshot(self, vg: str, origin: str, name: str, *, skip_activation: bool = True,
                             tags: Sequence[str] = ()) -> None:
        """``lvcreate -s`` of a thin LV; no size: the snapshot shares the pool.

        LVM activates it unless ``skip_activation``.
        """
        skip = "y" if skip_activation else "n"
        self.lvm("lvcreate", "-s", "-n", name, "--setactivationskip", skip, *_tag_args(tags),
                 f"{vg}/{origin}")

    def remove(self, vg: str, lv: str) -> None:
        self.lvm("lvremove", "-y", f"{vg}/{lv}")

    def rename(self, vg: str, old: str, new: str) -> None:
        self.lvm("lvrename", vg, old, new)

    def activate(self, vg: str, lv: str, *, ignore_skip: bool = True) -> None:
        """Activate ``vg/lv`` and return once its device node ``/dev/VG/LV`` is usable.

        The node is made by udev or by libdevmapper; either way a caller that
        opens the volume right after a revert must find it, so the device
        tracker waits for it instead of trusting the command's exit.
        """
        self.lvm("lvchange", "-ay", *(["-K"] if ignore_skip else []), f"{vg}/{lv}")
        self.wait_node(vg, lv)

    def wait_node(self, vg: str, lv: str) -> None:
        """Return once the node of active LV ``vg/lv`` is there (a rename moves it).

        udev or libdevmapper makes it within moments.  One still missing
        after ``NODE_GRACE`` seconds was lost (a process killed inside
        ``lvrename``, a node deleted by hand): ``vgmknodes`` makes it again.
        """
        path = f"/dev/{vg}/{lv}"
        try:
            wait_for_block_devices([path], timeout=NODE_GRACE)
            return
        except DeviceTimeout:
            pass
        self.lvm("vgmknodes", f"{vg}/{lv}")
        wait_for_block_devices([path], timeout=ACTIVATION_TIMEOUT)

    def deactivate(self, vg: str, lv: str) -> None:
        self.lvm("lvchange", "-an", f"{vg}/{lv}")

    def set_skip_activation(self, vg: str, lv: str, skip: bool) -> None:
        self.lvm("lvchange", "--setactivationskip", "y" if skip else "n", f"{vg}/{lv}")

    def add_tag(self, vg: str, lv: str, tag: str) -> None:
        self.lvm("lvchange", "--addtag", tag, f"{vg}/{lv}")

    def del_tag(self, vg: str, lv: str, tag: str) -> None:
        self.lvm("lvchange", "--deltag", tag, f"{vg}/{lv}")

    def change(self, vg: str, lv: str, *, writable: bool | None = None,
               add_tags: Sequence[str] = (), del_tags: Sequence[str] = ()) -> None:
        """One ``lvchange`` of permission and tags: one metadata commit, so a crash
        leaves all of the changes or none."""
        permission = [] if writable is None else ["-p", "rw" if writable else "r"]
        dels: list[str] = []
        for tag in del_tags:
            dels += ["--deltag", tag]
        self.lvm("lvchange", *permission, *_tag_args(add_tags), *dels, f"{vg}/{lv}")

    def merge(self, vg: str, snapshot: str, *, background: bool = False) -> str:
        """``lvconvert --merge``; returns stderr+stdout so callers can see a deferral.

        In the foreground LVM waits for the merge, checking every ``-i`` seconds
        (15 by default, which would make every small revert take 15 s).
        """
        proc = self._run(["lvm", "lvconvert", *self.config_args(), "--merge", "-y", "-i", "1",
                          *(["-b"] if background else []), f"{vg}/{snapshot}"])
        return proc.stdout + proc.stderr

    def poll(self, vg: str, lv: str) -> None:
        """Ask LVM to (re)start polling ``lv``'s pending merge (``lvchange --poll y``)."""
        self.lvm("lvchange", "--poll", "y", f"{vg}/{lv}")


def _tag_args(tags: Sequence[str]) -> list[str]:
    out: list[str] = []
    for tag in tags:
        out += ["--addtag", tag]
    return out
