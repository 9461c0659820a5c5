"""The results as a table, JSON and a bar chart."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def _fmt_ratio(r: dict) -> str:
    v = r["ratio"]
    if v is None:
        return "-"
    if r["unit"] != "x":
        return f"{v:g}"
    return f"{v:.3f}x"


def _fmt_goal(r: dict) -> str:
    if r["op"] is None:
        return "info"
    if r["op"] == "==":
        return f"== {r['goal']:g}"
    return f"{'≤' if r['op'] == '<=' else '≥'} {r['goal']:g}x"


def _fmt_detail(d: dict) -> str:
    parts = []
    for k, v in d.items():
        if k in ("paired_min", "paired_max"):
            continue
        parts.append(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}")
    if d.get("paired_min") is not None:
        parts.append(f"rounds {d['paired_min']:.3f}..{d['paired_max']:.3f}")
    return ", ".join(parts)


def format_table(results: dict[str, Any], *, details: bool = True) -> str:
    """The results as a plain-text table: each goal, its measured ratio and PASS/FAIL."""
    mi = results["machine"]
    head = (f"acl-bundle bench ({'quick' if results['config']['quick'] else 'default'}), simulator, "
            f"{mi['cpu_count']} CPUs ({mi['cpu']}), Python {mi['python']}, numpy {mi['numpy']}, "
            f"onnxruntime {mi['onnxruntime']}, {results['seconds']:.0f} s")
    table = [("#", "measurement", "ratio", "goal", "result")]
    for r in results["rows"]:
        res = "info" if r["pass"] is None else (
            "UNRELIABLE" if not r.get("reliable", True) else "PASS" if r["pass"] else "FAIL")
        table.append((str(r["scenario"]), r["label"], _fmt_ratio(r), _fmt_goal(r), res))
    w = [max(len(row[i]) for row in table) for i in range(5)]
    lines = [head, ""]
    for j, row in enumerate(table):
        lines.append("  ".join(cell.ljust(w[i]) if i < 2 else cell.rjust(w[i]) if i == 2 else cell.ljust(w[i])
                               for i, cell in enumerate(row)).rstrip())
        if j == 0:
            lines.append("  ".join("-" * x for x in w))
    if details:
        lines.append("")
        for r in results["rows"]:
            if r["detail"]:
                why = f" [UNRELIABLE: {r['unreliable_because']}]" if r.get("unreliable_because") else ""
                lines.append(f"{r['scenario']} {r['label']}: {_fmt_detail(r['detail'])}{why}")
        for s, sc in results["scenarios"].items():
            for n in sc.get("notes", []):
                lines.append(f"note {s}: {n}")
    return "\n".join(lines)


def write_json(results: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Write the results as JSON (UTF-8, indented)."""
    Path(path).write_text(json.dumps(results, indent=2, default=float) + "\n", encoding="utf-8")


def write_plot(results: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Bar chart of each ratio against its goal (needs the ``plot`` extra: matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        from .._errors import extra_hint

        raise ValueError(f"--plot needs matplotlib: {extra_hint('plot')}") from None
    rows = [r for r in results["rows"] if r["op"] in ("<=", ">=") and r["ratio"] > 0]
    if not rows:
        raise ValueError("nothing to plot: no scenario run has a ratio goal (scenario 6 only counts calls)")
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(rows) + 1.5))
    ys = range(len(rows))
    colors = ["tab:green" if r["pass"] else "tab:red" for r in rows]
    ax.barh(list(ys), [r["ratio"] for r in rows], color=colors)
    for y, r in zip(ys, rows):
        ax.plot([r["goal"], r["goal"]], [y - 0.4, y + 0.4], color="black", lw=2)
    ax.set_yticks(list(ys))
    ax.set_yticklabels([f"{r['scenario']}. {r['label']}" for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("ratio (black tick = goal; green = met)")
    mi = results["machine"]
    ax.set_title(f"acl-bundle bench: {mi['cpu_count']} CPUs, Python {mi['python']}, onnxruntime {mi['onnxruntime']}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
