"""The one place a backend runs programs.

Every subprocess of a backend goes through a :class:`CommandRunner`: argument
lists only (never a shell string), a timeout, timing in the debug log, and
every failure mapped once to the error tree with the command and its stderr.
Tests can make the N-th call fail (:meth:`CommandRunner.fail_on_call`) to
inject faults; otherwise they run the real tools.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import subprocess
import time
from typing import Mapping, Sequence

from .errors import CommandFailed, OutOfSpace, PermissionDenied, ToolMissing

__all__ = ["CommandRunner", "ENOSPC_MARKERS"]

log = logging.getLogger("snaptree.runner")

#: (program, PATH) -> where :meth:`CommandRunner.which` found it
_found: dict[tuple[str, str | None], str] = {}

#: stderr fragments that mean the storage is full.
ENOSPC_MARKERS = ("No space left on device", "Insufficient free space", "ENOSPC",
                  "insufficient free space", "not enough free space")


class CommandRunner:
    """Runs one backend's programs and maps their failures."""

    def __init__(self, backend: str, *, default_timeout: float = 600.0,
                 env: Mapping[str, str] | None = None):
        self.backend = backend
        self.default_timeout = default_timeout
        self.env = dict(env) if env else None
        self.calls = 0
        self._fail_on: set[int] = set()
        self.history: list[tuple[list[str], float, int]] = []
        spec = os.environ.get("SNAPTREE_FAIL_COMMAND", "")
        # "BACKEND:N[,N...]" - make this backend's N-th command fail (tests).
        if spec.startswith(backend + ":"):
            self._fail_on = {int(n) for n in spec.split(":", 1)[1].split(",") if n.isdigit()}

    def fail_on_call(self, *numbers: int) -> None:
        """Make the given 1-based call numbers fail (fault injection)."""
        self._fail_on.update(numbers)

    def which(self, tool: str) -> str:
        """The path of ``tool`` on ``PATH``; raise :class:`ToolMissing` if absent.

        Backends ask before every operation: the answer is kept while
        ``PATH`` stays the same and the program is still there.
        """
        key = (tool, os.environ.get("PATH"))
        path = _found.get(key)
        if path is None or not os.access(path, os.X_OK):
            path = shutil.which(tool)
            if path is None:
                _found.pop(key, None)
                raise ToolMissing(f"{self.backend}: required program {tool!r} not found on PATH")
            _found[key] = path
        return path

    def run(self, argv: Sequence[str], *, input: bytes | None = None,
            timeout: float | None = None, check: bool = True,
            env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess:
        """Run ``argv`` and return the completed process (stdout/stderr as text)."""
        argv = [str(a) for a in argv]
        if not argv or not isinstance(argv, list):
            raise ValueError("argv must be a non-empty list")
        self.calls += 1
        if self.calls in self._fail_on:
            raise CommandFailed(
                f"{self.backend}: injected failure of {' '.join(argv[:2])}",
                argv=argv, returncode=-1, stderr="injected")
        run_env = None
        if self.env or env:
            run_env = dict(os.environ)
            run_env.update(self.env or {})
            run_env.update(env or {})
        started = time.perf_counter()
        try:
            proc = subprocess.run(
                argv, input=input, capture_output=True, timeout=timeout or self.default_timeout,
                env=run_env, check=False)
        except FileNotFoundError as err:
            raise ToolMissing(
                f"{self.backend}: required program {argv[0]!r} not found on PATH") from err
        except PermissionError as err:
            raise PermissionDenied(f"{self.backend}: cannot run {argv[0]!r}: {err.strerror}") from err
        except subprocess.TimeoutExpired as err:
            raise CommandFailed(
                f"{self.backend}: {' '.join(argv[:2])} timed out after {err.timeout:.0f}s",
                argv=argv, returncode=None, stderr="timeout") from err
        elapsed = time.perf_counter() - started
        self.history.append((argv, elapsed, proc.returncode))
        stdout = proc.stdout.decode("utf-8", "replace")
        stderr = proc.stderr.decode("utf-8", "replace")
        log.debug("%s: %s -> %d in %.3fs", self.backend, argv, proc.returncode, elapsed)
        completed = subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)
        if check and proc.returncode != 0:
            raise self.failure(argv, proc.returncode, stderr)
        return completed

    def failure(self, argv: Sequence[str], returncode: int | None, stderr: str) -> CommandFailed:
        """Build the error for a failed command (also usable by callers)."""
        last = _last_line(stderr) or f"exit status {returncode}"
        message = f"{self.backend}: {os.path.basename(argv[0])} failed: {last}"
        cls = OutOfSpace if any(m in stderr for m in ENOSPC_MARKERS) else CommandFailed
        if cls is OutOfSpace:
            err = OutOfSpace(message, detail=stderr)
            err.argv, err.returncode, err.stderr = list(argv), returncode, stderr
            return err
        return CommandFailed(message, argv=argv, returncode=returncode, stderr=stderr)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def oserror_message(err: OSError) -> str:
    """A short message for an OSError, with its errno name."""
    name = errno.errorcode.get(err.errno or 0, "")
    return f"{err.strerror or err}{f' ({name})' if name else ''}"
