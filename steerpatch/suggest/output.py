"""Writing a suggestion: one patch file per candidate, the search trace, a summary and a fix-vs-ripple plot.

The output folder is built under a temporary name and renamed into place, so it appears whole or not
at all.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from steerpatch.suggest.engine import Suggestion

PLOT = "fix_vs_ripple.png"
SUMMARY = "suggest.json"
TRACE = "search.jsonl"


def summary(found: Suggestion, out: Path) -> dict[str, Any]:
    """The `--json` document: candidates best first, with the path each patch will have under `out`."""
    return {
        "candidates": [
            {"patch": str(out / f"{found.file_stem(rank)}.json"), "edits": len(patch.edits), "objective": c.objective}
            for rank, (c, patch) in enumerate(zip(found.candidates, found.patches, strict=True), 1)
        ],
        "inputs": found.inputs,
        "timings": found.timings,
    }


def plot_fix_vs_ripple(found: Suggestion, path: Path) -> Path:
    """Scatter of every evaluated candidate: share of failures moved off the wrong class against ripple."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 4.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    xs = [100 * c.objective["ripple"] for c in found.trace]
    ys = [100 * c.objective["failure_moved"] for c in found.trace]
    fixed = [c.objective["targets_fixed"] >= 1.0 for c in found.trace]
    ax.scatter([x for x, f in zip(xs, fixed, strict=True) if f], [y for y, f in zip(ys, fixed, strict=True) if f],
               s=18, color="#8c8c8c", label="searched (image fixed)")
    ax.scatter([x for x, f in zip(xs, fixed, strict=True) if not f], [y for y, f in zip(ys, fixed, strict=True) if not f],
               s=18, marker="x", color="#c62828", label="searched (image not fixed)")
    for rank, c in enumerate(found.candidates, 1):
        x, y = 100 * c.objective["ripple"], 100 * c.objective["failure_moved"]
        ax.scatter([x], [y], s=60, color="#1f77b4", zorder=3)
        if rank == 1:  # the others usually sit on top of it; their numbers are in suggest.json
            ax.annotate(f"best: {len(c.latents)} latents x {c.value:g}", (x, y), textcoords="offset points",
                        xytext=(6, -12), fontsize=8)
    budget = 100 * float(found.inputs.get("max_ripple", 0.0))
    ax.axvline(budget, color="red", linestyle=":", label=f"ripple budget {budget:g}%")
    ax.set_xlabel("ripple: other images whose prediction changed (%)")
    ax.set_ylabel("fix: images given the wrong class that left it (%)")
    ax.set_title("suggest: fix vs ripple (blue: re-measured on the whole pool)")
    ax.legend(fontsize=7, loc="lower right")
    fig.savefig(path, format="png", dpi=100, bbox_inches="tight")
    return path


def write_suggestion(found: Suggestion, out: str | Path) -> dict[str, Any]:
    """Write the candidates' patches, `search.jsonl`, `suggest.json` and the plot into `out`, atomically.

    Args:
        found: what `suggest` returned.
        out: the folder; must not exist or be empty.

    Returns:
        The summary document (also written as `suggest.json`).

    Raises:
        OutputError: `out` exists and is not empty.
    """
    from steerpatch.io import atomic_dir
    from steerpatch.patch import save_patch

    out = Path(out)
    doc = summary(found, out)
    with atomic_dir(out) as tmp:
        for rank, patch in enumerate(found.patches, 1):
            save_patch(patch, tmp / f"{found.file_stem(rank)}.json")
        rows = [
            json.dumps({"latents": c.latents, "op": c.op, "value": c.value, "objective": c.objective})
            for c in found.trace
        ]
        (tmp / TRACE).write_text("\n".join(rows) + "\n", encoding="utf-8")
        (tmp / SUMMARY).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        plot_fix_vs_ripple(found, tmp / PLOT)
    return doc
