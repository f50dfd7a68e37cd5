"""SIGKILL at every step boundary of create, revert and delete, then recover.

The runner's test-only hook (``SNAPTREE_KILL_AT=N``, :mod:`snaptree.faults`)
kills the ``snaptree`` process at its N-th checkpoint: each backend call and
each catalog write has one before and one after.  For every N the harness
rebuilds the scene, kills, runs ``recover`` and checks that nothing is lost:
the catalog is intact and matches storage, no orphan member remains, every
volume is byte-identical to before the operation or to its completed
result, and the operation can be retried.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import traceback
from typing import Callable

import attrs

from snaptree import Snaptree
from snaptree.testing import VolumeHandle, run_cli

__all__ = ["CrashScene", "walk_kill_points", "KillPointStats", "fork_cli"]

#: ``cli(args, state_dir, env) -> CompletedProcess``: how the walk runs ``snaptree``.
CliRunner = Callable[..., subprocess.CompletedProcess]


@attrs.define
class KillPointStats:
    backend: str
    operation: str
    tried: int = 0
    survived: int = 0
    failures: list[str] = attrs.field(factory=list)


@attrs.define
class CrashScene:
    """A group of fresh volumes with two snapshots: ``a`` (seed 1) and ``b`` (seed 2)."""

    state_dir: str
    volumes: list[VolumeHandle]
    digests: dict[str, list[str]]

    @classmethod
    def build(cls, state_dir: str, make_volumes: Callable[[], list[VolumeHandle]], *,
              memory: bool = False) -> "CrashScene":
        """Make the volumes and the snapshots ``a`` and ``b`` (with VM memory if asked)."""
        volumes = make_volumes()
        digests: dict[str, list[str]] = {}
        options: dict = {}
        for v in volumes:
            options.update(v.group_options)
        sockets = {v.qmp_socket for v in volumes if v.qmp_socket}
        with Snaptree(state_dir) as api:
            api.create_group("vm", [v.spec for v in volumes], options=options,
                             qmp_socket=next(iter(sockets), None))
            for i, v in enumerate(volumes):
                v.fill(100 + i)
            digests["a"] = [v.digest() for v in volumes]
            api.create("vm", "a", memory=memory)
            for i, v in enumerate(volumes):
                v.fill(200 + i)
            digests["b"] = [v.digest() for v in volumes]
            api.create("vm", "b", memory=memory)
        return cls(state_dir, volumes, digests)

    def now(self) -> list[str]:
        return [v.digest() for v in self.volumes]


#: operation -> (CLI args, expected digests key after completion, snapshot names after completion)
OPERATIONS = {
    "create": (["create", "vm", "c"], "b", ["a", "b", "c"]),
    "revert": (["revert", "vm", "a"], "a", ["a", "b"]),
    "delete": (["delete", "vm", "a"], "b", ["b"]),
}


def fork_cli(args: list[str], state_dir: str, env: dict[str, str] | None = None
             ) -> subprocess.CompletedProcess:
    """Run the CLI in a forked child of this process and wait for it.

    The child is a real process that SIGKILL ends just as it ends a fresh
    ``python -m snaptree``, but it starts with every module already
    imported: under an emulated CPU (the virtme-ng guest) a fresh
    interpreter spends about ten seconds importing before the first step.
    """
    from snaptree import cli, faults

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the child: never return into the caller
            code = 70
            try:
                os.dup2(out.fileno(), 1)
                os.dup2(err.fileno(), 2)
                sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115 - the child exits below
                sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
                os.environ.update(env or {})
                faults.reset()  # checkpoints count from 1 in every run, as in a new process
                code = cli.main(["--state-dir", state_dir, *args])
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else 1
            except BaseException:
                traceback.print_exc()
            finally:
                try:
                    sys.stdout.flush()
                    sys.stderr.flush()
                finally:
                    os._exit(code)
        _, status = os.waitpid(pid, 0)
        texts = []
        for f in (out, err):
            f.seek(0)
            texts.append(f.read().decode("utf-8", "replace"))
    argv = ["snaptree (forked)", "--state-dir", state_dir, *args]
    return subprocess.CompletedProcess(argv, os.waitstatus_to_exitcode(status), *texts)


def count_checkpoints(state_dir: str, args: list[str], log_path: str,
                      cli: CliRunner = run_cli) -> int:
    result = cli(args, state_dir, env={"SNAPTREE_CHECKPOINT_LOG": log_path})
    assert result.returncode == 0, result.stderr
    with open(log_path, encoding="utf-8") as log:
        return sum(1 for _ in log)


def walk_kill_points(backend: str, operation: str, workdir: str,
                     make_volumes: Callable[[str], list[VolumeHandle]],
                     cleanup: Callable[[str], None] = lambda d: None, *,
                     memory: bool = False,
                     extra_checks: Callable[[CrashScene], list[str]] | None = None,
                     build_scene: Callable[[str], CrashScene] | None = None,
                     cli: CliRunner = run_cli,
                     ) -> KillPointStats:
    """Try every kill point of ``operation``; return how many were survived.

    ``memory`` takes every snapshot of the scene (and the one ``create``
    makes) with VM memory; ``extra_checks`` returns more problems to report
    for a scene after ``recover`` (e.g. a VM left paused).  ``build_scene``
    replaces :meth:`CrashScene.build` for a backend that can restore a saved
    scene faster than it can build one (it gets a fresh directory per kill
    point); ``cli`` replaces :func:`run_cli` (e.g. :func:`fork_cli`).
    """
    args, done_key, done_names = OPERATIONS[operation]
    if memory and operation == "create":
        args = [*args, "--memory"]
    stats = KillPointStats(backend, operation)

    def scene(tag: str) -> CrashScene:
        base = os.path.join(workdir, tag)
        os.makedirs(base)
        if build_scene is not None:
            return build_scene(base)
        return CrashScene.build(os.path.join(base, "state"), lambda: make_volumes(base),
                                memory=memory)

    dry = scene("dry")
    total = count_checkpoints(dry.state_dir, args, os.path.join(workdir, "dry", "checkpoints.log"),
                              cli)
    cleanup(os.path.join(workdir, "dry"))
    for kill_at in range(1, total + 1):
        stats.tried += 1
        s = scene(f"kill{kill_at}")
        before = s.now()
        result = cli(args, s.state_dir, env={"SNAPTREE_KILL_AT": str(kill_at)})
        problems = []
        if result.returncode != -9:
            problems.append(f"expected SIGKILL, got exit {result.returncode}: {result.stderr.strip()}")
        with Snaptree(s.state_dir, auto_recover=False) as api:
            report = api.recover()
            if report.errors:
                problems.append(f"recover errors: {report.errors}")
            if api.catalog.integrity_check() != "ok":
                problems.append("catalog integrity_check failed")
            drift = api.check("vm")
            if not drift.clean:
                problems.append(f"drift after recover: {drift.as_dict()}")
            if extra_checks is not None:
                problems += extra_checks(s)
            names = [x.name for x in api.list("vm")]
            try:
                after = s.now()
            except OSError as err:  # a volume's node is missing: say which kill point
                stats.failures.append(f"kill point {kill_at}: volume unreadable after recover: "
                                      f"{err}; " + "; ".join(problems))
                cleanup(os.path.join(workdir, f"kill{kill_at}"))
                continue
            completed = names == done_names
            if operation == "revert":
                current = api.current("vm")
                completed = current is not None and current.name == "a"
            if completed:
                if after != s.digests[done_key]:
                    problems.append("operation completed but data differs from its result")
            elif after != before and after != s.digests[done_key]:
                problems.append("data is neither as before nor as the completed result")
            # the operation can be retried (or has completed)
            if not completed:
                retry = cli(args, s.state_dir)
                if retry.returncode != 0:
                    problems.append(f"retry failed: {retry.stderr.strip()}")
                elif [x.name for x in api.list("vm")] != done_names or s.now() != s.digests[done_key]:
                    problems.append("retry did not reach the completed result")
        if problems:
            stats.failures.append(f"kill point {kill_at}: " + "; ".join(problems))
        else:
            stats.survived += 1
        cleanup(os.path.join(workdir, f"kill{kill_at}"))
    return stats
