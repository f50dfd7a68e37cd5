"""Wait for block device nodes to appear or go away, driven by events.

Loop devices, LVM volumes and kpartx maps show up a moment after the command
that makes them returns.  Rather than sleeping and polling, a
:class:`DeviceWatcher` listens to two event sources and re-checks the node on
every wake-up:

* device events from :mod:`pyudev`: udev's own (after its rules ran, so its
  symlinks exist) when a udev daemon runs (``/run/udev/control`` exists),
  otherwise the kernel's uevents (a bare guest, a container, a CI host);
* inotify on the node's directory, because without udev the
  ``/dev/mapper`` nodes are made by libdevmapper itself, after the kernel's
  last uevent for the device.

Open the watcher *before* the action that makes the device, then wait::

    with DeviceWatcher() as watcher:
        node = run_losetup(...)
        watcher.wait_for_add(node, timeout=10)

The state is checked after the watcher is open and again after every event,
so nothing is missed and a node already in the wanted state returns at once.

A node counts as *present* when it resolves (following symlinks) to a block
device whose kernel device exists and is live: a loop device with a backing
file, any other device with a non-zero size.  Loop device nodes stay in
``/dev`` after ``losetup -d``, so the node alone would not tell.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import select
import stat
import time
from typing import Callable, Iterable, TypeVar

import pyudev

from .errors import DeviceTimeout, InvalidInput

__all__ = [
    "DeviceWatcher",
    "DeviceTimeout",
    "UDEV_CONTROL",
    "udev_running",
    "kernel_has_device_mapper",
    "is_present",
    "wait_for_block_devices",
    "run_and_wait",
]

UDEV_CONTROL = "/run/udev/control"

T = TypeVar("T")

_IN_ATTRIB = 0x004
_IN_MOVED_FROM = 0x040
_IN_MOVED_TO = 0x080
_IN_CREATE = 0x100
_IN_DELETE = 0x200
_IN_DELETE_SELF = 0x400
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC
_WATCH_MASK = (_IN_ATTRIB | _IN_MOVED_FROM | _IN_MOVED_TO | _IN_CREATE | _IN_DELETE
               | _IN_DELETE_SELF)

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.inotify_init1.argtypes = [ctypes.c_int]
_libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]


def udev_running() -> bool:
    """True when a udev daemon runs (its control socket exists)."""
    return os.path.exists(UDEV_CONTROL)


def kernel_has_device_mapper() -> bool:
    """True when the running kernel has device-mapper, loaded or built in.

    A ``/dev/mapper/control`` node alone proves nothing (it may be left from
    another kernel); ``/sys/module/dm_mod`` or ``/proc/misc`` tell the truth.
    """
    if os.path.isdir("/sys/module/dm_mod"):
        return True
    try:
        with open("/proc/misc", encoding="ascii") as misc:
            return any(line.split()[-1:] == ["device-mapper"] for line in misc)
    except OSError:
        return False


def is_present(node: str) -> bool:
    """True when ``node`` is a live block device (see the module docstring)."""
    try:
        st = os.stat(node)
    except (FileNotFoundError, NotADirectoryError):
        return False
    if not stat.S_ISBLK(st.st_mode):
        return False
    sysfs = f"/sys/dev/block/{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    if os.path.isdir(os.path.join(sysfs, "loop")):
        return os.path.exists(os.path.join(sysfs, "loop", "backing_file"))
    try:
        with open(os.path.join(sysfs, "size"), encoding="ascii") as size:
            return int(size.read().strip() or 0) > 0
    except (FileNotFoundError, ValueError):
        return False


def _check_node(node: object) -> str:
    if not isinstance(node, str) or not os.path.isabs(node) or "\x00" in node:
        raise InvalidInput(f"device node {node!r} must be an absolute path")
    return os.path.normpath(node)


class DeviceWatcher:
    """Event sources for waiting on block device nodes; a context manager.

    :param source: ``"udev"`` or ``"kernel"``; by default ``"udev"`` when a
        udev daemon runs, else ``"kernel"``.
    """

    def __init__(self, source: str | None = None):
        if source is None:
            source = "udev" if udev_running() else "kernel"
        if source not in ("udev", "kernel"):
            raise InvalidInput(f"event source must be 'udev' or 'kernel', not {source!r}")
        self.source = source
        self._monitor: pyudev.Monitor | None = None
        self._inotify = -1
        self._watched: set[str] = set()
        #: how many wake-ups the last wait took (for tests and debugging)
        self.wakeups = 0

    # -- life ------------------------------------------------------------------

    def open(self) -> "DeviceWatcher":
        monitor = pyudev.Monitor.from_netlink(pyudev.Context(), source=self.source)
        monitor.filter_by("block")
        monitor.start()
        self._monitor = monitor
        fd = _libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            code = ctypes.get_errno()
            self.close()
            raise OSError(code, os.strerror(code))
        self._inotify = fd
        return self

    def close(self) -> None:
        if self._inotify >= 0:
            os.close(self._inotify)
            self._inotify = -1
        self._watched.clear()
        self._monitor = None  # pyudev closes the socket when the monitor is collected

    def __enter__(self) -> "DeviceWatcher":
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- waiting -----------------------------------------------------------------

    def wait_for_add(self, node: str, timeout: float = 10.0) -> str:
        """Return ``node`` once it is a live block device; raise :class:`DeviceTimeout`."""
        self.wait_for(node, present=True, timeout=timeout)
        return _check_node(node)

    def wait_for_remove(self, node: str, timeout: float = 10.0) -> None:
        """Return once ``node`` is gone (or no longer live); raise :class:`DeviceTimeout`."""
        self.wait_for(node, present=False, timeout=timeout)

    def wait_for(self, nodes: str | Iterable[str], *, present: bool, timeout: float) -> None:
        """Wait until every node in ``nodes`` is present (or absent)."""
        if self._monitor is None:
            raise RuntimeError("DeviceWatcher is not open; use it as a context manager")
        paths = [_check_node(nodes)] if isinstance(nodes, str) else [_check_node(n) for n in nodes]
        deadline = time.monotonic() + timeout
        self.wakeups = 0
        while True:
            self._watch_dirs(paths)
            waiting = [p for p in paths if is_present(p) != present]
            if not waiting:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                state = "appear" if present else "go away"
                raise DeviceTimeout(
                    f"device {waiting[0]} did not {state} within {timeout:g}s "
                    f"(watching {self.source} events)")
            ready, _, _ = select.select([self._monitor.fileno(), self._inotify], [], [], remaining)
            if ready:
                self.wakeups += 1
                self._drain()

    def _watch_dirs(self, paths: list[str]) -> None:
        # Watch each node's directory, or its nearest existing ancestor until
        # the directory itself appears (/dev/mapper before the first map).
        for path in paths:
            directory = os.path.dirname(path)
            while directory not in self._watched:
                raw = os.fsencode(directory)
                if _libc.inotify_add_watch(self._inotify, raw, _WATCH_MASK) >= 0:
                    self._watched.add(directory)
                    break
                code = ctypes.get_errno()
                if code not in (errno.ENOENT, errno.ENOTDIR) or directory == "/":
                    raise OSError(code, os.strerror(code), directory)
                directory = os.path.dirname(directory)

    def _drain(self) -> None:
        assert self._monitor is not None
        while self._monitor.poll(timeout=0) is not None:
            pass
        try:
            while os.read(self._inotify, 65536):
                pass
        except BlockingIOError:
            pass


def wait_for_block_devices(nodes: Iterable[str], *, timeout: float = 10.0,
                           present: bool = True) -> None:
    """Wait until every node is present (or, with ``present=False``, gone).

    Safe after the fact: the state is checked once the event sources are
    open, so a device that appeared before the call is seen at once.
    """
    with DeviceWatcher() as watcher:
        watcher.wait_for(list(nodes), present=present, timeout=timeout)


def run_and_wait(action: Callable[[], T], node: str | Callable[[T], str], *,
                 present: bool = True, timeout: float = 10.0) -> T:
    """Run ``action`` with the watcher already open, then wait for ``node``.

    ``node`` may be a function of the action's result, for actions that
    choose the device (``losetup --find --show``).  Returns that result.
    """
    with DeviceWatcher() as watcher:
        result = action()
        path = node(result) if callable(node) else node
        watcher.wait_for(path, present=present, timeout=timeout)
    return result
