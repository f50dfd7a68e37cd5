"""Test-only crash and failure points.

The coordinator calls :func:`checkpoint` at every step boundary (each backend
call, each catalog write).  Nothing happens unless the environment asks:

``SNAPTREE_KILL_AT=N``
    the process kills itself with SIGKILL at the N-th checkpoint (1-based),
    as a power cut would.  The crash harness in ``tests/`` walks N upwards.
``SNAPTREE_CHECKPOINT_LOG=PATH``
    each checkpoint appends its label to PATH, so a harness can count them.
``SNAPTREE_KILL_AT_LABEL=PREFIX``
    SIGKILL at the first checkpoint whose label starts with PREFIX.
``SNAPTREE_INTERRUPT_AT_LABEL=PREFIX``
    the process sends itself SIGINT (a Ctrl-C) at the first checkpoint whose
    label starts with PREFIX; Python raises KeyboardInterrupt right after.
``SNAPTREE_FAIL_AT=LABEL``
    the first checkpoint whose label starts with LABEL raises
    :class:`~snaptree.errors.BackendError` instead (an injected failure).
"""

from __future__ import annotations

import os
import signal

from .errors import BackendError

__all__ = ["checkpoint", "reset"]

_count = 0
_interrupted = False


def reset() -> None:
    global _count, _interrupted
    _count = 0
    _interrupted = False


def checkpoint(label: str) -> None:
    """Mark a step boundary; may kill or fail the process when a test asks."""
    global _count, _interrupted
    _count += 1
    log_path = os.environ.get("SNAPTREE_CHECKPOINT_LOG")
    if log_path:
        with open(log_path, "a", encoding="utf-8") as log:
            log.write(f"{_count}\t{label}\n")
    kill_at = os.environ.get("SNAPTREE_KILL_AT")
    if kill_at and kill_at.isdigit() and int(kill_at) == _count:
        os.kill(os.getpid(), signal.SIGKILL)
    kill_label = os.environ.get("SNAPTREE_KILL_AT_LABEL")
    if kill_label and label.startswith(kill_label):
        os.kill(os.getpid(), signal.SIGKILL)
    interrupt_label = os.environ.get("SNAPTREE_INTERRUPT_AT_LABEL")
    if interrupt_label and label.startswith(interrupt_label) and not _interrupted:
        _interrupted = True  # once: the cleanup the interrupt starts passes here too
        os.kill(os.getpid(), signal.SIGINT)
    fail_at = os.environ.get("SNAPTREE_FAIL_AT")
    if fail_at and label.startswith(fail_at):
        raise BackendError(f"injected failure at {label}")
