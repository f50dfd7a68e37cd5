"""Render a benchmark result (``results.json``) as Markdown tables."""

from __future__ import annotations

from typing import Any, Iterable

__all__ = ["render_markdown", "render_summary", "fmt_seconds", "fmt_size"]

OPS = ("create", "revert", "delete")


def fmt_seconds(value: float | None) -> str:
    if value is None:
        return "–"
    if value >= 1:
        return f"{value:.2f} s"
    if value >= 0.01:
        return f"{value * 1000:.0f} ms"
    return f"{value * 1000:.1f} ms"


def fmt_size(mib: int) -> str:
    if mib == 0:
        return "empty"
    if mib % 1024 == 0:
        return f"{mib // 1024} GiB"
    return f"{mib} MiB"


def _fmt_bytes(value: int | None) -> str:
    if value is None:
        return "–"
    mib = value / (1024 * 1024)
    return f"{mib:.1f} MiB" if abs(mib) >= 0.1 else f"{value // 1024} KiB"


def _ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


def _table(header: list[str], rows: Iterable[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _cell(entry: dict | None) -> str:
    if entry is None or entry["snaptree_s"] is None:
        return "–"
    text = fmt_seconds(entry["snaptree_s"])
    return f"{text} ({_ratio(entry['ratio'])})" if entry["ratio"] is not None else text


def _pivot(results: dict, column: str, columns: list, fixed: dict[str, Any]) -> list[list[str]]:
    """Rows of variant × op, one column per value of ``column``.

    A variant measured at only one point of the sweep has no row.
    """
    index = {}
    for entry in results["comparisons"]:
        if all(entry[k] == v for k, v in fixed.items()):
            index[(entry["variant"], entry["op"], entry[column])] = entry
    points: dict[str, set] = {}
    for variant, _, value in index:
        points.setdefault(variant, set()).add(value)
    variants = [v for v in dict.fromkeys(v for v, _, _ in index) if len(points[v]) > 1]
    rows = []
    for variant in variants:
        for op in OPS:
            cells = [_cell(index.get((variant, op, value))) for value in columns]
            if any(c != "–" for c in cells):
                rows.append([variant, op, *cells])
    return rows


def _values(results: dict, column: str, fixed: dict[str, Any]) -> list:
    found = {e[column] for e in results["comparisons"] if all(e[k] == v for k, v in fixed.items())}
    return sorted(found)


def machine_line(machine: dict) -> str:
    ram = machine.get("ram_bytes")
    ram_text = f"{ram / 2**30:.0f} GiB RAM" if ram else "RAM unknown"
    return (f"{machine.get('cpu_model', '?')}, {machine.get('cores', '?')} cores, {ram_text}, "
            f"Linux {machine.get('kernel', '?')} ({machine.get('os', '?')}); scratch files on "
            f"{machine.get('workdir_filesystem', '?')}")


def render_markdown(results: dict, *, chart: str | None = None) -> str:
    """The full report; ``chart`` is a relative path to embed at the top."""
    out = ["# snaptree backend benchmarks", ""]
    out += [f"Machine: {machine_line(results['machine'])}.  ",
            f"Mode `{results['mode']}`, run {results['started']}, took {results['seconds']:.0f} s, "
            f"snaptree {results['snaptree_version']}.", ""]
    out += ["Each cell is the median snaptree time and, in brackets, snaptree ÷ the bare "
            "primitive the backend wraps, timed on the same volumes in the same run "
            "(1.00× = no framework cost).  Absolute times vary between runs on a shared "
            "machine; the ratios are the figures to compare.", ""]
    if chart:
        out += [f"![snapshot latency against data]({chart})", ""]

    out += ["## Backends", ""]
    out += _table(["variant", "backend", "storage", "bare primitive", "status"], (
        [v["name"], v["backend"], v["description"] or "–", v["primitive"] or "–",
         v["status"] if not v["skipped"] else f"skipped: {v['skipped']}"]
        for v in results["variants"]))
    out.append("")

    plan = results.get("plan") or {}
    sizes = _values(results, "size_mib", {"volumes": 1, "files": 0})
    sizes = [s for s in sizes if s in plan.get("sizes_mib", sizes)]
    if sizes:
        out += ["## Latency against the amount of data (one volume)", ""]
        out += _table(["variant", "operation", *map(fmt_size, sizes)],
                      _pivot(results, "size_mib", sizes, {"volumes": 1, "files": 0}))
        out.append("")

    group_entries = [e for e in results["comparisons"] if e["volumes"] > 1]
    if group_entries:
        each = plan.get("group_volume_mib", group_entries[0]["size_mib"])
        counts = _values(results, "volumes", {"size_mib": each, "files": 0})
        out += [f"## Groups: latency against the number of volumes ({fmt_size(each)} each)", ""]
        out += _table(["variant", "operation", *(f"{n} volume{'s' if n > 1 else ''}" for n in counts)],
                      _pivot(results, "volumes", counts, {"size_mib": each, "files": 0}))
        out.append("")

    if any(e["files"] for e in results["comparisons"]):
        counts = _values(results, "files", {"volumes": 1, "size_mib": 0})
        out += ["## Latency against the number of files (filesystem backends)", ""]
        out += _table(["variant", "operation", *(f"{n} files" for n in counts)],
                      _pivot(results, "files", counts, {"volumes": 1, "size_mib": 0}))
        out.append("")

    compared = [e for e in results["comparisons"] if e["comparators"]]
    if compared:
        out += ["## Against other tools", "",
                "snaptree's median beside the same operation by another tool on the same "
                "volumes (snapper: a temporary config per volume; revert is `undochange`).", ""]
        rows = []
        for e in compared:
            for tool, figures in sorted(e["comparators"].items()):
                files = f", {e['files']} files" if e["files"] else ""
                rows.append([e["variant"], e["op"], f"{fmt_size(e['size_mib'])} ×{e['volumes']}{files}",
                             fmt_seconds(e["snaptree_s"]), f"{tool}: {fmt_seconds(figures['median_s'])}",
                             _ratio(figures["ratio"])])
        out += _table(["variant", "operation", "volumes", "snaptree", "other tool", "snaptree ÷ other"],
                      rows)
        out.append("")

    if results["write"]:
        size = results["write"][0]["bytes"] // (1024 * 1024)
        out += [f"## Write throughput of the live volume ({size} MiB overwrite + fsync)", "",
                "Before: no snapshot.  After: a snapshot taken just before each timed write, "
                "so every block written is still shared (the copy-on-write penalty).", ""]
        out += _table(["variant", "before", "after snapshot", "after ÷ before"], (
            [w["variant"], f"{w['before_MBps']:.0f} MB/s" if w["before_MBps"] else "–",
             f"{w['after_MBps']:.0f} MB/s" if w["after_MBps"] else "–", _ratio(w["after_over_before"])]
            for w in results["write"]))
        out.append("")

    if results["space"]:
        first = results["space"][0]
        out += ["## Space used per snapshot", "",
                f"Volume with {_fmt_bytes(first['data_bytes'])} of data; growth of the space in "
                "use on its filesystem right after one snapshot, and after then overwriting "
                f"{_fmt_bytes(first['overwrite_bytes'])} of the live volume.  "
                "\"Reported\" is the backend's own `space_used` answer.", ""]
        rows = []
        for rec in results["space"]:
            ours, prim = rec.get("snaptree") or {}, rec.get("primitive") or {}
            rows.append([rec["variant"], _fmt_bytes(ours.get("snapshot_bytes")),
                         _fmt_bytes(ours.get("after_overwrite_bytes")),
                         _fmt_bytes(prim.get("snapshot_bytes")), _fmt_bytes(prim.get("after_overwrite_bytes")),
                         f"{_fmt_bytes(ours.get('reported_exclusive_bytes'))} / "
                         f"{_fmt_bytes(ours.get('reported_referenced_bytes'))}"])
        out += _table(["variant", "snapshot", "after overwrite", "primitive: snapshot",
                       "primitive: after overwrite", "reported exclusive / referenced"], rows)
        out.append("")

    if results["extras"]:
        out += ["## Backend-specific measurements", ""]
        for name, outcome in results["extras"].items():
            if outcome["status"] != "ok":
                out += [f"- `{name}`: {outcome['status']}: {outcome.get('reason', '')}"]
                continue
            out += [f"- `{name}` ({outcome.get('seconds', '?')} s):", ""]
            out += ["  " + line for line in _table(["measure", "value"], (
                [key, _plain(value)] for key, value in _flatten(outcome["result"])))]
            out.append("")
        out.append("")

    problems = results["failures"] + [s for s in results["skips"] if not s["id"].endswith("-skipped")]
    if problems:
        out += ["## Failed or skipped cases", ""]
        out += [f"- {p['outcome']}: `{p['test']}[{p['id']}]`: {p['message']}" for p in problems]
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def _flatten(value: Any, prefix: str = "") -> Iterable[tuple[str, Any]]:
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from _flatten(inner, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix or "value", value


def _plain(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")[:200]


def render_summary(results: dict, *, chart: str | None = None) -> str:
    """A short table for the top README: one row per variant that ran."""
    plan = results.get("plan") or {}
    largest = max(plan.get("sizes_mib") or [0])
    groups = max(plan.get("group_sizes") or [1])
    each = plan.get("group_volume_mib")
    index = {(e["variant"], e["op"], e["size_mib"], e["volumes"], e["files"]): e
             for e in results["comparisons"]}
    writes = {w["variant"]: w for w in results["write"]}
    space = {s["variant"]: s for s in results["space"]}
    rows = []
    for variant in results["variants"]:
        name = variant["name"]
        if variant["status"] != "ran":
            rows.append([name, *["–"] * 6, f"skipped: {variant['skipped']}" if variant["skipped"]
                         else "failed"])
            continue
        cells = [_cell(index.get((name, op, largest, 1, 0))) for op in OPS]
        cells.append(_cell(index.get((name, "create", each, groups, 0))))
        write = writes.get(name)
        cells.append(_ratio(write["after_over_before"]) if write else "–")
        held = (space.get(name) or {}).get("snaptree") or {}
        cells.append(_fmt_bytes(held.get("after_overwrite_bytes")))
        rows.append([name, *cells, "ran"])
    first_space = results["space"][0] if results["space"] else None
    overwrite = _fmt_bytes(first_space["overwrite_bytes"]) if first_space else "?"
    lines = _table(
        ["variant", f"create {fmt_size(largest)}", f"revert {fmt_size(largest)}",
         f"delete {fmt_size(largest)}", f"create, {groups} × {fmt_size(each or 0)}",
         "write after snapshot ÷ before", f"space held after {overwrite} overwritten", "status"],
        rows)
    out = [f"Machine: {machine_line(results['machine'])}; mode `{results['mode']}`, "
           f"{results['started']}.", "",
           "Median time, and in brackets snaptree ÷ the bare primitive (FICLONE, cp, the btrfs "
           "ioctl, qemu-img snapshot, lvcreate) timed in the same run.", "", *lines, ""]
    if chart:
        out += [f"![snapshot latency against data]({chart})", ""]
    return "\n".join(out)
