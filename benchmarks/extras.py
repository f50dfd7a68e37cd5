"""Run the backend-specific benchmark modules, each in its own process.

``benchmarks/bench_btrfs.py``, ``bench_qcow2.py`` and ``bench_lvm.py`` are
written by each backend's engineer and expose ``measure(quick: bool) ->
dict``, and optionally ``skip_reason(quick: bool) -> str | None`` to decline
a run up front (LVM in ``--quick`` when only an emulated guest can run it).  A missing, broken, failing or hanging module must not stop the run:
each is imported and called in a child process with a timeout, and whatever
happens becomes ``{"status": "ok" | "skipped" | "failed", ...}``.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

__all__ = ["EXTRA_MODULES", "run_extras", "run_extra"]

EXTRA_MODULES = ("benchmarks.bench_btrfs", "benchmarks.bench_qcow2", "benchmarks.bench_lvm")
TIMEOUT = 600.0


def run_extra(module: str, quick: bool, timeout: float = TIMEOUT) -> dict:
    """Call ``module.measure(quick)`` in a child process; never raises."""
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError) as err:
        found, reason = False, f"{type(err).__name__}: {err}"
    else:
        reason = f"{module.replace('.', '/')}.py is not there"
    if not found:
        return {"status": "skipped", "reason": reason}
    handle, out_path = tempfile.mkstemp(prefix="snaptree-extra-", suffix=".json")
    os.close(handle)
    started = time.perf_counter()
    # its own session, so a timeout also stops what it started (a guest VM)
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.extras", module,
                             "quick" if quick else "full", out_path],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        try:
            _, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return {"status": "failed", "reason": f"did not finish within {timeout:.0f}s"}
        elapsed = time.perf_counter() - started
        with open(out_path, encoding="utf-8") as result_file:
            text = result_file.read()
        if proc.returncode != 0 or not text:
            tail = (stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
            return {"status": "failed", "reason": tail[:400], "seconds": round(elapsed, 2)}
        outcome = json.loads(text)
        outcome["seconds"] = round(elapsed, 2)
        return outcome
    finally:
        os.unlink(out_path)


def run_extras(quick: bool, modules=EXTRA_MODULES, timeout: float = TIMEOUT) -> dict[str, dict]:
    """Every backend-specific module's outcome, by short name (``bench_btrfs``)."""
    return {name.rsplit(".", 1)[-1]: run_extra(name, quick, timeout) for name in modules}


def _child(module: str, mode: str, out_path: str) -> int:
    try:
        imported = importlib.import_module(module)
    except Exception as err:
        outcome = {"status": "skipped", "reason": f"import failed: {type(err).__name__}: {err}"}
    else:
        measure = getattr(imported, "measure", None)
        skip_reason = getattr(imported, "skip_reason", None)
        reason = skip_reason(mode == "quick") if callable(skip_reason) else None
        if reason:
            outcome = {"status": "skipped", "reason": reason}
        elif not callable(measure):
            outcome = {"status": "skipped", "reason": "module has no measure(quick) function"}
        else:
            try:
                result = measure(mode == "quick")
            except Exception as err:
                outcome = {"status": "failed", "reason": f"{type(err).__name__}: {err}"[:400]}
            else:
                if isinstance(result, dict):
                    # round-trip so the parent only ever sees plain JSON
                    outcome = {"status": "ok", "result": json.loads(json.dumps(result, default=str))}
                else:
                    outcome = {"status": "failed",
                               "reason": f"measure() returned {type(result).__name__}, not a dict"}
    with open(out_path, "w", encoding="utf-8") as out:
        json.dump(outcome, out)
    return 0


if __name__ == "__main__":
    sys.exit(_child(*sys.argv[1:4]))
