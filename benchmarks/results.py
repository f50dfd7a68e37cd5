"""Turn pytest-benchmark's JSON and the lab's records into one result.

Timings are medians.  Every snaptree figure is paired with the bare
primitive (and any comparator, e.g. snapper) measured on the same volumes in
the same run, as a ratio: ratios within one run survive a noisy machine
better than absolute numbers across runs.
"""

from __future__ import annotations

from typing import Any

__all__ = ["build_results", "SCHEMA"]

SCHEMA = "snaptree-bench/1"


def _latency_rows(benchmarks: list[dict]) -> list[dict]:
    rows = []
    for bench in benchmarks:
        info = bench.get("extra_info", {})
        if info.get("kind") != "latency":
            continue
        stats = bench["stats"]
        rows.append({key: info[key] for key in
                     ("variant", "backend", "op", "actor", "label", "size_mib", "volumes", "files")}
                    | {"median_s": stats["median"], "min_s": stats["min"], "max_s": stats["max"],
                       "rounds": stats["rounds"]})
    return rows


def _comparisons(latency: list[dict]) -> list[dict]:
    """One row per (variant, op, size, volumes, files): snaptree beside the others."""
    by_key: dict[tuple, dict[str, dict]] = {}
    for row in latency:
        key = (row["variant"], row["op"], row["size_mib"], row["volumes"], row["files"])
        by_key.setdefault(key, {})[row["actor"]] = row
    out = []
    for (variant, op, size, volumes, files), actors in by_key.items():
        ours = actors.get("snaptree")
        entry: dict[str, Any] = {"variant": variant, "op": op, "size_mib": size,
                                 "volumes": volumes, "files": files,
                                 "snaptree_s": ours["median_s"] if ours else None,
                                 "primitive_s": None, "primitive_label": None, "ratio": None,
                                 "comparators": {}}
        prim = actors.get("primitive")
        if prim:
            entry["primitive_s"], entry["primitive_label"] = prim["median_s"], prim["label"]
            if ours and prim["median_s"] > 0:
                entry["ratio"] = ours["median_s"] / prim["median_s"]
        for actor, row in actors.items():
            if actor in ("snaptree", "primitive"):
                continue
            ratio = ours["median_s"] / row["median_s"] if ours and row["median_s"] > 0 else None
            entry["comparators"][actor] = {"median_s": row["median_s"], "ratio": ratio}
        out.append(entry)
    return out


def _writes(benchmarks: list[dict]) -> list[dict]:
    phases: dict[str, dict[str, float]] = {}
    for bench in benchmarks:
        info = bench.get("extra_info", {})
        if info.get("kind") == "write":
            mb_per_s = info["bytes"] / bench["stats"]["median"] / 1e6
            phases.setdefault(info["variant"], {"bytes": info["bytes"]})[info["phase"]] = mb_per_s
    out = []
    for variant, figures in phases.items():
        before, after = figures.get("before"), figures.get("after")
        out.append({"variant": variant, "bytes": figures["bytes"], "before_MBps": before,
                    "after_MBps": after,
                    "after_over_before": after / before if before and after else None})
    return out


def build_results(*, bench: dict, records: dict, machine: dict, extras: dict[str, dict],
                  mode: str, started: str, seconds: float, version: str) -> dict:
    """The one JSON document a run writes (``results.json``)."""
    benchmarks = bench.get("benchmarks", [])
    latency = _latency_rows(benchmarks)
    outcomes = records.get("outcomes", [])
    ran = {row["variant"] for row in latency}
    variants = []
    for variant in records.get("variants", []):
        status = "skipped" if variant["skipped"] else ("ran" if variant["name"] in ran else "failed")
        variants.append(variant | {"status": status})
    return {
        "schema": SCHEMA,
        "snaptree_version": version,
        "mode": mode,
        "plan": records.get("plan", {}),
        "started": started,
        "seconds": round(seconds, 1),
        "machine": machine,
        "variants": variants,
        "latency": latency,
        "comparisons": _comparisons(latency),
        "write": _writes(benchmarks),
        "space": [r for r in records.get("records", []) if r.get("kind") == "space"],
        "failures": [o for o in outcomes if o["outcome"] == "failed"],
        "skips": [o for o in outcomes if o["outcome"] == "skipped"],
        "extras": extras,
    }
