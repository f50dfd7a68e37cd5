"""One command for the backend comparison: ``python -m benchmarks.run``.

Runs ``benchmarks/bench_ops.py`` under pytest-benchmark, then the
backend-specific modules (``bench_btrfs`` ...), and writes into ``--out``
(default ``results/``)::

    results.json   everything, machine included
    results.md     the tables
    charts/*.png   the charts

A full or ``--quick`` run also refreshes ``benchmarks/latest/`` (the table
and the README chart), unless ``--no-latest``.  ``--smoke`` is a seconds-long
run with tiny volumes for the test suite; it never touches ``latest``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from typing import Sequence

import pytest

import snaptree

from .charts import LATENCY_CHART, draw_charts
from .extras import run_extras
from .machine import describe_machine
from .markdown import render_markdown, render_summary
from .results import build_results

__all__ = ["main"]

HERE = os.path.dirname(os.path.abspath(__file__))
LATEST = os.path.join(HERE, "latest")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="a smaller run, under five minutes")
    size.add_argument("--smoke", action="store_true", help="tiny volumes, 1-2 rounds (for tests)")
    parser.add_argument("--out", default="results", help="results folder (default: results/)")
    parser.add_argument("--workdir", default=None,
                        help="scratch folder for loop files and volumes (default: under /var/tmp)")
    parser.add_argument("--no-extras", action="store_true",
                        help="skip the backend-specific modules bench_btrfs/bench_qcow2/bench_lvm")
    parser.add_argument("--extras", action="store_true", help="run them even with --smoke")
    parser.add_argument("--extras-timeout", type=float, default=None, metavar="SECONDS",
                        help="time limit per backend-specific module (default: 60 with --quick, "
                             "600 otherwise)")
    parser.add_argument("--no-latest", action="store_true", help="do not refresh benchmarks/latest/")
    parser.add_argument("--strict", action="store_true", help="exit 1 if any benchmark failed")
    return parser.parse_args(argv)


def _run_pytest(mode: str, workdir: str, bench_json: str, records_json: str, quiet: bool) -> int:
    args = [os.path.join(HERE, "bench_ops.py"), "-o", "python_functions=bench_*",
            "--rootdir", os.path.dirname(HERE), "-p", "no:cacheprovider", "-q", "-rfs",
            "--bench-mode", mode, "--bench-workdir", workdir, "--bench-records", records_json,
            "--benchmark-json", bench_json, "--benchmark-sort", "name"]
    if quiet:
        args.append("--benchmark-quiet")
    return pytest.main(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmarks and write the results; returns the exit status."""
    options = parse_args(argv)
    mode = "smoke" if options.smoke else "quick" if options.quick else "full"
    out = os.path.abspath(options.out)
    os.makedirs(out, exist_ok=True)
    own_workdir = options.workdir is None
    workdir = options.workdir or tempfile.mkdtemp(prefix="snaptree-bench-", dir="/var/tmp")
    os.makedirs(workdir, exist_ok=True)
    started, clock = time.strftime("%Y-%m-%d %H:%M:%S %Z"), time.perf_counter()
    bench_json = os.path.join(out, "pytest-benchmark.json")
    records_json = os.path.join(out, "records.json")
    try:
        status = _run_pytest(mode, workdir, bench_json, records_json, quiet=mode == "smoke")
        if status not in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED):
            print(f"benchmarks: pytest stopped with {status!r}; no results written", file=sys.stderr)
            return 2
        machine = describe_machine(workdir)
    finally:
        if own_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    if options.no_extras or (mode == "smoke" and not options.extras):
        reason = "--no-extras" if options.no_extras else "not run with --smoke"
        extras = {name: {"status": "skipped", "reason": reason}
                  for name in ("bench_btrfs", "bench_qcow2", "bench_lvm")}
    else:
        # --quick promises minutes: a module that boots a guest gets a bounded slot
        timeout = options.extras_timeout or (120.0 if mode == "quick" else 600.0)
        extras = run_extras(quick=mode != "full", timeout=timeout)
    with open(bench_json, encoding="utf-8") as f:
        bench = json.load(f)
    with open(records_json, encoding="utf-8") as f:
        records = json.load(f)
    results = build_results(bench=bench, records=records, machine=machine, extras=extras, mode=mode,
                            started=started, seconds=time.perf_counter() - clock,
                            version=snaptree.__version__)
    write_outputs(results, out)
    if mode != "smoke" and not options.no_latest:
        refresh_latest(results, out)
    print(f"benchmarks: wrote {out}/results.json, results.md and charts/ "
          f"({len(results['failures'])} failed case(s))")
    return 1 if options.strict and results["failures"] else 0


def write_outputs(results: dict, out: str) -> None:
    charts = draw_charts(results, os.path.join(out, "charts"))
    results["charts"] = [f"charts/{name}" for name in charts]
    with open(os.path.join(out, "results.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    chart = f"charts/{LATENCY_CHART}" if LATENCY_CHART in charts else None
    with open(os.path.join(out, "results.md"), "w", encoding="utf-8") as f:
        f.write(render_markdown(results, chart=chart))
    with open(os.path.join(out, "summary.md"), "w", encoding="utf-8") as f:
        f.write(render_summary(results, chart=chart))


def refresh_latest(results: dict, out: str) -> None:
    """Copy the table, the JSON and the README chart to benchmarks/latest/."""
    os.makedirs(LATEST, exist_ok=True)
    chart = os.path.join(out, "charts", LATENCY_CHART)
    has_chart = os.path.exists(chart)
    if has_chart:
        shutil.copyfile(chart, os.path.join(LATEST, LATENCY_CHART))
    with open(os.path.join(LATEST, "results.md"), "w", encoding="utf-8") as f:
        f.write(render_markdown(results, chart=LATENCY_CHART if has_chart else None))
    with open(os.path.join(LATEST, "results.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    with open(os.path.join(LATEST, "summary.md"), "w", encoding="utf-8") as f:
        f.write(render_summary(results, chart=f"benchmarks/latest/{LATENCY_CHART}" if has_chart else None))


if __name__ == "__main__":
    sys.exit(main())
