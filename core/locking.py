"""Per-group locks so concurrent callers never interleave on one group.

A lock is an ``flock`` on a file in ``STATE_DIR/locks``; the kernel drops it
when its holder dies, so a lock that is held always has a live owner.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import os
import time
from typing import Iterator

from .errors import Busy, StateError
from .names import normal_name

__all__ = ["group_lock", "try_group_lock"]


@functools.lru_cache(maxsize=256)  # asked at every operation, the same few each time
def _lock_path(state_dir: str, group: str) -> str:
    # every spelling of one name (see snaptree.names.normal_name) shares the lock
    digest = hashlib.sha256(normal_name(group).encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return os.path.join(state_dir, "locks", f"group-{digest}.lock")


def _open(state_dir: str, group: str) -> int:
    path = _lock_path(state_dir, group)
    try:
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except FileNotFoundError:  # the first lock of this state directory
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            return os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as err:
        raise StateError(f"cannot open lock file {path}: {err.strerror}") from err


@contextlib.contextmanager
def group_lock(state_dir: str, group: str, timeout: float = 30.0) -> Iterator[None]:
    """Hold the group's lock; wait up to ``timeout`` seconds, then raise Busy."""
    fd = _open(state_dir, group)
    deadline = time.monotonic() + max(timeout, 0.0)
    delay = 0.005
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise Busy(
                        f"group {group!r} is busy: another snaptree operation holds its lock"
                        + (f" (waited {timeout:g}s)" if timeout > 0 else "")) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.1)
        yield
    finally:
        os.close(fd)  # closing drops the flock


@contextlib.contextmanager
def try_group_lock(state_dir: str, group: str) -> Iterator[bool]:
    """Take the group's lock if free; yields whether it was taken."""
    fd = _open(state_dir, group)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            taken = True
        except BlockingIOError:
            taken = False
        yield taken
    finally:
        os.close(fd)
