"""The qcow2 backend's one QMP boundary.

:class:`QMPSession` is a small synchronous wrapper over
:class:`qemu.qmp.QMPClient`: it runs its own asyncio loop, holds one
connection for the length of one snaptree operation, and maps every failure
once: a QMP ``ExecuteError`` becomes :class:`~snaptree.errors.QMPFailed`
keeping QEMU's error class; a refused connection, a QEMU that went away or a
protocol error becomes :class:`~snaptree.errors.BackendError`.

Jobs (``block-commit``, ``snapshot-save``, ``snapshot-load``) are run by
:meth:`QMPSession.run_job`, which opens the ``JOB_STATUS_CHANGE`` listener
*before* sending the command so no event can be missed, and reports progress
from ``query-jobs``.  Tests may make the N-th command of the process fail
with :func:`fail_on_command` (fault injection); otherwise QEMU is real.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
import time
from typing import Any, Callable

from qemu.qmp import EventListener, ExecuteError, QMPClient, QMPError

from snaptree.vm import answers
from snaptree.errors import BackendError, QMPFailed

__all__ = ["QMPSession", "fail_on_command", "reachable"]

log = logging.getLogger("snaptree.qcow2.qmp")


def _only_when_debugging(record: logging.LogRecord) -> bool:
    return log.isEnabledFor(logging.DEBUG)


#: command names -> exception to raise instead of sending them (tests only)
_injected: dict[str, BaseException] = {}


def fail_on_command(command: str, error: BaseException | None = None) -> None:
    """Make the next ``command`` sent by any session raise (fault injection).

    With ``error=None`` the injection for ``command`` is removed.
    """
    if error is None:
        _injected.pop(command, None)
    else:
        _injected[command] = error


def reachable(path: str | None) -> bool:
    """True when a QMP server listens on the unix socket ``path``."""
    return bool(path) and os.path.exists(path) and answers(path)


def _nobody_listens(err: BaseException) -> bool:
    """True when a failed connect found no socket file or no server behind it."""
    cause = err.__cause__
    cause = getattr(cause, "exc", None) or cause  # qemu.qmp's ConnectError wraps the OSError
    return isinstance(cause, (FileNotFoundError, ConnectionRefusedError))


class _QuietClient(QMPClient):
    """QMPClient that renders messages for its debug log only when it is on.

    The base class formats every message with ``str(msg)`` (a JSON dump)
    before asking the logger; a reply listing many block nodes costs
    milliseconds that way on every command.
    """

    def __init__(self, name: str):
        super().__init__(name)
        # qemu.qmp logs each failure (at ERROR) before raising it, and
        # QMPSession then reports it once in its own words; a connect
        # retried after QEMU's one-client-at-a-time EINVAL would print
        # errors for a command that succeeded.  (Added once per logger.)
        self.logger.addFilter(_only_when_debugging)

    def _cb_outbound(self, msg):
        if self.logger.isEnabledFor(logging.DEBUG):
            return super()._cb_outbound(msg)
        return msg

    def _cb_inbound(self, msg):
        if self.logger.isEnabledFor(logging.DEBUG):
            return super()._cb_inbound(msg)
        return msg

    def peer(self) -> tuple[int, int] | None:
        """Process id and user id at the other end of the connection (``SO_PEERCRED``)."""
        try:
            sock = self._writer.get_extra_info("socket")
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        except (AttributeError, OSError):
            return None
        pid, uid, _ = struct.unpack("3i", creds)
        return (pid, uid) if pid else None


class QMPSession:
    """One synchronous QMP connection; use as a context manager."""

    def __init__(self, socket_path: str, *, timeout: float = 120.0):
        self.socket_path = socket_path
        self.timeout = timeout
        self._loop = asyncio.new_event_loop()
        self._client = _QuietClient("snaptree")
        self.commands = 0
        self._peer: tuple[int, int] | None | bool = False  # False: not asked yet
        #: set once the connection failed under a command: QEMU went away
        self.broken = False

    @classmethod
    def open_if_listening(cls, socket_path: str) -> "QMPSession | None":
        """A connected session, or ``None`` when no QEMU listens on ``socket_path``."""
        if not os.path.exists(socket_path):
            return None
        try:
            return cls(socket_path).__enter__()
        except BackendError as err:
            if _nobody_listens(err):
                return None
            raise

    def close(self) -> None:
        self.__exit__(None, None, None)

    # -- connection -----------------------------------------------------------

    def __enter__(self) -> "QMPSession":
        for attempt in range(3):
            try:
                self._run(self._client.connect(self.socket_path), "connect")
                return self
            except BackendError as err:
                # QEMU serves one monitor client at a time; the previous
                # session may still be closing on its side (seen as EINVAL).
                if attempt == 2 or _nobody_listens(err):
                    self._loop.close()
                    raise
                self._client = _QuietClient("snaptree")
                time.sleep(0.05 * (attempt + 1))
            except BaseException:
                self._loop.close()
                raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._loop.run_until_complete(self._client.disconnect())
        except Exception:  # QEMU gone already: nothing left to close
            pass
        finally:
            self._loop.close()

    def _run(self, coro: Any, what: str, timeout: float | None = None) -> Any:
        """Run ``coro`` on our loop, mapping every lower-layer failure once."""
        try:
            return self._loop.run_until_complete(
                asyncio.wait_for(coro, timeout or self.timeout))
        except ExecuteError as err:
            raise QMPFailed(f"qcow2: QEMU refused {what}: {err}",
                            command=what, error_class=err.error_class) from err
        except asyncio.TimeoutError as err:
            raise BackendError(f"qcow2: QMP {what} on {self.socket_path} timed out") from err
        except (QMPError, OSError, EOFError) as err:
            self.broken = True
            raise BackendError(
                f"qcow2: lost QEMU at {self.socket_path} during {what}: "
                f"{err or type(err).__name__}") from err

    @property
    def peer_pid(self) -> int | None:
        """Process id of the QEMU this session talks to, ``None`` if unknown.

        With the socket path it names one QEMU instance: what was learnt
        about its block nodes stays true only while the same process runs.
        """
        peer = self._peer_credentials()
        return peer[0] if peer else None

    @property
    def peer_uid(self) -> int | None:
        """User id the QEMU this session talks to runs as, ``None`` if unknown."""
        peer = self._peer_credentials()
        return peer[1] if peer else None

    def _peer_credentials(self) -> tuple[int, int] | None:
        if self._peer is False:
            self._peer = self._client.peer()
        return self._peer  # type: ignore[return-value]

    # -- commands -------------------------------------------------------------

    def execute(self, command: str, arguments: dict[str, Any] | None = None, *,
                timeout: float | None = None) -> Any:
        """Send one command and return its ``return`` value."""
        self.commands += 1
        injected = _injected.pop(command, None)
        if injected is not None:
            raise injected
        started = time.perf_counter()
        result = self._run(self._client.execute(command, arguments), command, timeout)
        log.debug("qmp %s %s -> %.3fs", command, arguments, time.perf_counter() - started)
        return result

    def send_fd(self, fd: int, name: str) -> None:
        """Pass ``fd`` to QEMU over the socket and name it (``getfd``)."""
        try:
            self._client.send_fd_scm(fd)
        except (QMPError, OSError) as err:
            raise BackendError(f"qcow2: cannot pass a file descriptor to QEMU: {err}") from err
        self.execute("getfd", {"fdname": name})

    def run_job(self, command: str, arguments: dict[str, Any], job_id: str, *,
                progress: Callable[..., None] | None = None, label: str = "",
                complete_when_ready: bool = False, timeout: float = 3600.0) -> None:
        """Run a QMP job to its end; raise :class:`QMPFailed` if it fails.

        ``arguments`` must ask for ``auto-dismiss: false`` where the command
        allows it, so the job's error can be read before it disappears.
        """
        self._run(self._job(command, arguments, job_id, progress, label,
                            complete_when_ready, timeout), command, timeout + 5)

    async def _job(self, command, arguments, job_id, progress, label,
                   complete_when_ready, timeout) -> None:
        listener = EventListener("JOB_STATUS_CHANGE")
        deadline = time.monotonic() + timeout
        completing = False
        # The listener is registered before the command: a short job can
        # conclude before execute() even returns.
        with self._client.listen(listener):
            self.commands += 1
            injected = _injected.pop(command, None)
            if injected is not None:
                raise injected
            await self._client.execute(command, arguments)
            while True:
                try:
                    event = await asyncio.wait_for(listener.get(), 0.2)
                except asyncio.TimeoutError:
                    event = None
                if progress is not None:
                    await self._report(job_id, progress, label)
                if time.monotonic() > deadline:
                    raise asyncio.TimeoutError()
                if event is None or event["data"].get("id") != job_id:
                    continue
                status = event["data"]["status"]
                if status == "ready" and complete_when_ready and not completing:
                    # once: a job paused while ready (a stopped VM) reports
                    # "ready" again on resuming, maybe after it completed
                    completing = True
                    await self._client.execute("job-complete", {"id": job_id})
                elif status == "concluded":
                    break
                elif status == "null":
                    return  # auto-dismissed: success is all we can know
        jobs = await self._client.execute("query-jobs")
        error = next((j.get("error") for j in jobs if j["id"] == job_id), None)
        await self._client.execute("job-dismiss", {"id": job_id})
        if error:
            raise QMPFailed(f"qcow2: QEMU job {command} failed: {error}",
                            command=command, error_class="JobFailed")
        if progress is not None:
            progress(1, 1, label)

    async def _report(self, job_id: str, progress: Callable[..., None], label: str) -> None:
        for job in await self._client.execute("query-jobs"):
            if job["id"] == job_id and job.get("total-progress"):
                progress(job["current-progress"], job["total-progress"], label)
