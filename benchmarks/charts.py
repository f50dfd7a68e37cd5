"""PNG charts of a benchmark result, drawn with matplotlib's Agg backend."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")  # no display on build machines; must precede pyplot

import matplotlib.pyplot as plt  # noqa: E402

from .markdown import fmt_size  # noqa: E402

__all__ = ["draw_charts", "LATENCY_CHART"]

OPS = ("create", "revert", "delete")
#: The chart the README shows.
LATENCY_CHART = "latency_vs_data.png"


def _series(results: dict, column: str, fixed: dict) -> dict[tuple[str, str], dict]:
    """(variant, op) -> {x: (snaptree_s, primitive_s)} for comparisons matching ``fixed``."""
    out: dict[tuple[str, str], dict] = {}
    for entry in results["comparisons"]:
        if all(entry[k] == v for k, v in fixed.items()) and entry["snaptree_s"] is not None:
            out.setdefault((entry["variant"], entry["op"]), {})[entry[column]] = (
                entry["snaptree_s"], entry["primitive_s"])
    return out


def _sweep_chart(results: dict, path: str, column: str, fixed: dict, xlabel: str,
                 label_of=str, title: str = "", only=None) -> bool:
    series = _series(results, column, fixed)
    if only is not None:
        series = {key: {x: v for x, v in points.items() if x in only}
                  for key, points in series.items()}
    if not any(series.values()):
        return False
    xs = sorted({x for points in series.values() for x in points})
    variants = list(dict.fromkeys(v for v, _ in series))
    colours = {v: plt.get_cmap("tab10")(i % 10) for i, v in enumerate(variants)}
    fig, axes = plt.subplots(1, len(OPS), figsize=(13, 4.2), sharey=True)
    for ax, op in zip(axes, OPS):
        for variant in variants:
            points = series.get((variant, op), {})
            if not points:
                continue
            positions = [xs.index(x) for x in sorted(points)]
            ours = [points[x][0] * 1000 for x in sorted(points)]
            ax.plot(positions, ours, marker="o", color=colours[variant], label=f"{variant} (snaptree)")
            prim = [(xs.index(x), points[x][1] * 1000) for x in sorted(points) if points[x][1]]
            if prim:
                ax.plot([p for p, _ in prim], [t for _, t in prim], linestyle="--", marker="x",
                        color=colours[variant], alpha=0.7, label=f"{variant} (primitive)")
        ax.set_title(op)
        ax.set_xticks(range(len(xs)), [label_of(x) for x in xs])
        ax.set_xlabel(xlabel)
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("median latency (ms, log scale)")
    handles, labels = axes[0].get_legend_handles_labels()
    for ax in axes[1:]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize="small",
               frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.06 + 0.035 * ((len(labels) - 1) // 4), 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _bars(path: str, groups: list[str], series: dict[str, list[float | None]], ylabel: str,
          title: str) -> bool:
    if not groups:
        return False
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(groups) + 2), 4))
    width = 0.8 / max(1, len(series))
    for i, (name, values) in enumerate(series.items()):
        xs = [g + i * width for g in range(len(groups))]
        ax.bar(xs, [v or 0 for v in values], width=width, label=name)
    ax.set_xticks([g + width * (len(series) - 1) / 2 for g in range(len(groups))], groups)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def draw_charts(results: dict, folder: str) -> list[str]:
    """Write every chart that has data into ``folder``; return their file names."""
    os.makedirs(folder, exist_ok=True)
    made = []

    def keep(name: str, drawn: bool) -> None:
        if drawn:
            made.append(name)

    plan = results.get("plan") or {}
    keep(LATENCY_CHART, _sweep_chart(
        results, os.path.join(folder, LATENCY_CHART), "size_mib", {"volumes": 1, "files": 0},
        "data in the volume", fmt_size, "snapshot latency against data (solid: snaptree, dashed: primitive)",
        only=plan.get("sizes_mib")))
    groups = [e for e in results["comparisons"] if e["volumes"] > 1]
    if groups:
        each = plan.get("group_volume_mib", groups[0]["size_mib"])
        keep("latency_vs_volumes.png", _sweep_chart(
            results, os.path.join(folder, "latency_vs_volumes.png"), "volumes",
            {"size_mib": each, "files": 0}, "volumes in the group",
            title=f"group latency ({fmt_size(each)} per volume)"))
    if any(e["files"] for e in results["comparisons"]):
        keep("latency_vs_files.png", _sweep_chart(
            results, os.path.join(folder, "latency_vs_files.png"), "files",
            {"volumes": 1, "size_mib": 0}, "files in the volume", title="latency against files"))

    single = [e for e in results["comparisons"] if e["volumes"] == 1 and e["files"] == 0
              and e["size_mib"] == min(x["size_mib"] for x in results["comparisons"])
              and e["ratio"] is not None]
    variants = list(dict.fromkeys(e["variant"] for e in single))
    keep("overhead_ratio.png", _bars(
        os.path.join(folder, "overhead_ratio.png"), variants,
        {op: [next((e["ratio"] for e in single if e["variant"] == v and e["op"] == op), None)
              for v in variants] for op in OPS},
        "snaptree ÷ bare primitive", "framework overhead on the smallest volume"))

    writes = results["write"]
    keep("write_throughput.png", _bars(
        os.path.join(folder, "write_throughput.png"), [w["variant"] for w in writes],
        {"before snapshot": [w["before_MBps"] for w in writes],
         "after snapshot": [w["after_MBps"] for w in writes]},
        "MB/s (overwrite + fsync)", "live-volume write throughput"))

    space = results["space"]
    mib = 1024 * 1024
    keep("space_per_snapshot.png", _bars(
        os.path.join(folder, "space_per_snapshot.png"), [s["variant"] for s in space],
        {"right after snapshot": [((s.get("snaptree") or {}).get("snapshot_bytes") or 0) / mib
                                  for s in space],
         "after overwrite": [((s.get("snaptree") or {}).get("after_overwrite_bytes") or 0) / mib
                             for s in space]},
        "MiB held by the snapshot", "space per snapshot"))
    return made
