"""What a file carries besides its data, for backends that replace or add
image files: extended attributes (an SELinux or sVirt label, POSIX ACLs,
``user.*`` notes).  Owner and mode stay with each backend, which knows what
its files need."""

from __future__ import annotations

import errno
import os

__all__ = ["copy_xattrs"]


def copy_xattrs(source: str, target: str | int) -> None:
    """Make ``target``'s extended attributes exactly ``source``'s.

    A fresh file gets its folder's default ACL or the security module's
    default label; those the source lacks are removed.  ``target`` may be a
    path or an open descriptor.  A filesystem without extended attributes
    has none to copy.  Other failures raise :class:`OSError` for the caller
    to map.
    """
    wanted = {name: os.getxattr(source, name) for name in _names(source)}
    for name in _names(target):
        if name not in wanted:
            os.removexattr(target, name)
    for name, value in wanted.items():
        os.setxattr(target, name, value)


def _names(path: str | int) -> list[str]:
    try:
        return os.listxattr(path)
    except OSError as err:
        if err.errno in (errno.ENOTSUP, errno.ENOSYS):
            return []
        raise
