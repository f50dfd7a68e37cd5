"""Where snaptree keeps its catalog and locks."""

from __future__ import annotations

import os

from .errors import InvalidInput, PermissionDenied, StateError

__all__ = ["default_state_dir", "ensure_state_dir", "ENV_STATE_DIR"]

ENV_STATE_DIR = "SNAPTREE_STATE_DIR"


def default_state_dir() -> str:
    """``$SNAPTREE_STATE_DIR``, else /var/lib/snaptree for root, else XDG state."""
    env = os.environ.get(ENV_STATE_DIR)
    if env:
        return env
    if os.geteuid() == 0:
        return "/var/lib/snaptree"
    xdg = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(xdg, "snaptree")


def ensure_state_dir(path: str) -> str:
    """Create the state directory 0700 if needed and check it is usable."""
    if not isinstance(path, str) or not path or "\x00" in path:
        raise InvalidInput("state directory must be a non-empty path")
    path = os.path.abspath(path)
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except PermissionError as err:
        raise PermissionDenied(f"cannot create state directory {path}: permission denied") from err
    except OSError as err:
        raise StateError(f"cannot create state directory {path}: {err.strerror}") from err
    if not os.path.isdir(path):
        raise StateError(f"state directory {path} is not a directory")
    if not os.access(path, os.W_OK | os.X_OK):
        raise PermissionDenied(f"state directory {path} is not writable")
    return path
