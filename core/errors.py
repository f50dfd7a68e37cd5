"""The one error tree of snaptree.

Every failure a user can see is a :class:`SnaptreeError`; the CLI prints its
message on one line and exits with its ``exit_code``.  Lower-layer failures
(``CalledProcessError``, ``OSError``, QMP ``ExecuteError``, ``sqlite3.Error``)
are wrapped once, at the boundary where they happen, with ``raise ... from``
so the root cause stays reachable for a developer::

    SnaptreeError                     exit 1
    ├── InvalidInput                  exit 2  bad name, spec, path or option
    ├── NotFound                      exit 3
    │   ├── GroupNotFound
    │   ├── SnapshotNotFound
    │   ├── VolumeNotFound
    │   └── BackendNotFound
    ├── Conflict                      exit 4  name taken, volume in another group
    │   └── Busy                      exit 5  another caller holds the group lock
    ├── BackendError                  exit 6  a storage operation failed
    │   ├── CommandFailed                     a subprocess exited non-zero
    │   ├── QMPFailed                         QEMU answered a QMP command with an error
    │   ├── OutOfSpace
    │   ├── ToolMissing                       a required program is not on PATH
    │   ├── VolumeInUse                       e.g. an image a running QEMU holds
    │   └── DeviceTimeout                     a device node did not appear / go away in time
    ├── NotSupported                  exit 7  the backend cannot do what was asked
    ├── StateError                    exit 8  catalog / state directory problems, or an
    │   │                                     interrupted operation recover cannot finish
    │   └── CatalogCorrupt
    ├── PermissionDenied              exit 9  not root, read-only state dir, ...
    └── PluginError                   exit 10 broken or conflicting plugins
"""

from __future__ import annotations

__all__ = [
    "SnaptreeError",
    "InvalidInput",
    "NotFound",
    "GroupNotFound",
    "SnapshotNotFound",
    "VolumeNotFound",
    "BackendNotFound",
    "Conflict",
    "Busy",
    "BackendError",
    "CommandFailed",
    "QMPFailed",
    "OutOfSpace",
    "ToolMissing",
    "VolumeInUse",
    "DeviceTimeout",
    "NotSupported",
    "StateError",
    "CatalogCorrupt",
    "PermissionDenied",
    "PluginError",
    "EXIT_CODES",
]


class SnaptreeError(Exception):
    """Base of every error snaptree raises on purpose."""

    exit_code = 1

    def __init__(self, message: str, *, detail: str | None = None):
        super().__init__(message)
        self.message = message
        #: Extra text for developers (stderr of a command, QMP error class).
        self.detail = detail

    def __str__(self) -> str:
        return self.message

    def one_line(self) -> str:
        """The message squeezed onto one line, as the CLI prints it."""
        return " ".join(self.message.split())


class InvalidInput(SnaptreeError):
    exit_code = 2


class NotFound(SnaptreeError):
    exit_code = 3


class GroupNotFound(NotFound):
    pass


class SnapshotNotFound(NotFound):
    pass


class VolumeNotFound(NotFound):
    pass


class BackendNotFound(NotFound):
    pass


class Conflict(SnaptreeError):
    exit_code = 4


class Busy(Conflict):
    exit_code = 5


class BackendError(SnaptreeError):
    exit_code = 6


class CommandFailed(BackendError):
    """A subprocess failed; keeps the argument list, exit status and stderr."""

    def __init__(self, message: str, *, argv=(), returncode=None, stderr: str = ""):
        super().__init__(message, detail=stderr)
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr


class QMPFailed(BackendError):
    """QEMU refused a QMP command; ``error_class`` is QMP's own class name."""

    def __init__(self, message: str, *, command: str = "", error_class: str = ""):
        super().__init__(message, detail=error_class)
        self.command = command
        self.error_class = error_class


class OutOfSpace(BackendError):
    pass


class ToolMissing(BackendError):
    pass


class VolumeInUse(BackendError):
    pass


class DeviceTimeout(BackendError):
    """A block device node did not appear or go away in time (:mod:`snaptree.devices`)."""


class NotSupported(SnaptreeError):
    exit_code = 7


class StateError(SnaptreeError):
    exit_code = 8


class CatalogCorrupt(StateError):
    pass


class PermissionDenied(SnaptreeError):
    exit_code = 9


class PluginError(SnaptreeError):
    exit_code = 10


#: Exit status of each top-level class, for documentation and tests.
EXIT_CODES = {
    cls.__name__: cls.exit_code
    for cls in (
        SnaptreeError, InvalidInput, NotFound, Conflict, Busy, BackendError,
        NotSupported, StateError, PermissionDenied, PluginError,
    )
}
