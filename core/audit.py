"""An audit log of every backend operation, as a ``wrapper=True`` plugin.

Each call of a snapshot, revert or delete hook appends one JSON line to
``STATE_DIR/audit.jsonl``: time, operation, backend, volumes, snapshot,
duration and outcome.  It shows how a cross-cutting plugin wraps the steps
without any backend knowing about it.
"""

from __future__ import annotations

import json
import os
import time

from .markers import hookimpl

__all__ = ["AuditLog"]


class AuditLog:
    def __init__(self, path: str):
        self.path = path

    def _write(self, record: dict) -> None:
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8", "surrogateescape")
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line)  # one O_APPEND write: lines of parallel callers never mix
            finally:
                os.close(fd)
        except OSError:
            pass  # an audit log must never break the operation it records

    def _wrap(self, operation: str, backend: str, specs: list[str], ctx):
        started = time.time()
        t0 = time.perf_counter()
        outcome = "ok"
        error = None
        try:
            result = yield
            if result is None:
                outcome = "not-handled"
            return result
        except BaseException as err:
            outcome, error = "error", str(err)
            raise
        finally:
            self._write({"time": started, "operation": operation, "backend": backend,
                         "group": ctx.group.name, "snapshot": ctx.snapshot_name,
                         "snapshot_id": ctx.snapshot_id, "volumes": specs,
                         "duration_s": round(time.perf_counter() - t0, 6),
                         "outcome": outcome, "error": error})

    @hookimpl(wrapper=True)
    def snaptree_snapshot(self, backend, volumes, ctx):
        return (yield from self._wrap("snapshot", backend, [v.spec for v in volumes], ctx))

    @hookimpl(wrapper=True)
    def snaptree_revert(self, backend, members, ctx):
        return (yield from self._wrap("revert", backend, [m.volume.spec for m in members], ctx))

    @hookimpl(wrapper=True)
    def snaptree_delete(self, backend, members, ctx):
        return (yield from self._wrap("delete", backend, [m.volume.spec for m in members], ctx))
