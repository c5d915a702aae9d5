"""The HTML page of a validation report: tables plus four plots embedded as PNG data URIs.

One self-contained file, so it can be attached to a registry version or mailed as is. Plots are drawn
on matplotlib `Figure` objects directly (no pyplot), which keeps no global state between reports.
"""

from __future__ import annotations

import base64
import io
import math
from pathlib import Path

from steerpatch.validate.report_model import ValidationReport

TEMPLATES = Path(__file__).with_name("templates")
_BEFORE, _AFTER = "#8c8c8c", "#1f77b4"


def _png(fig) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _bars(title: str, rows: dict) -> str:
    from matplotlib.figure import Figure

    names = list(rows)
    fig = Figure(figsize=(max(4.0, 0.9 * len(names) + 1.5), 3.2))
    ax = fig.add_subplot()
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], [rows[n].before or 0.0 for n in names], 0.4, label="before", color=_BEFORE)
    ax.bar([x + 0.2 for x in xs], [rows[n].after or 0.0 for n in names], 0.4, label="after", color=_AFTER)
    ax.set_xticks(list(xs), names, rotation=30, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    return _png(fig)


def plot_per_class(report: ValidationReport) -> str:
    """Bar chart of per-class accuracy before and after, as a PNG data URI."""
    return _bars("accuracy per class", report.per_class)


def plot_groups(report: ValidationReport) -> str | None:
    """Bar chart of per-group accuracy before and after, or None when the report is not grouped."""
    return _bars(f"accuracy per {report.group_by}", report.groups) if report.groups else None


def plot_flip_matrix(report: ValidationReport) -> str:
    """Heatmap of predicted class before (rows) against after (columns), counts annotated."""
    from matplotlib.figure import Figure

    counts = report.flip_matrix.counts
    classes = report.flip_matrix.classes
    fig = Figure(figsize=(1.0 + 0.6 * len(classes), 0.8 + 0.6 * len(classes)))
    ax = fig.add_subplot()
    # log scale: the diagonal (unchanged predictions) dwarfs the flips
    ax.imshow([[math.log1p(c) for c in row] for row in counts], cmap="Blues")
    for i, row in enumerate(counts):
        for j, value in enumerate(row):
            if value:
                ax.text(j, i, str(value), ha="center", va="center", fontsize=8, color="black" if i != j else "white")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted after")
    ax.set_ylabel("predicted before")
    ax.set_title("prediction flips")
    return _png(fig)


def plot_dose_response(report: ValidationReport) -> str | None:
    """Accuracy (overall and per group) and right->wrong share against edit strength, or None."""
    from matplotlib.figure import Figure

    points = report.dose_response
    if not points:
        return None
    xs = [p.strength for p in points]
    fig = Figure(figsize=(5.5, 3.4))
    ax = fig.add_subplot()
    ax.plot(xs, [p.accuracy or 0.0 for p in points], "o-", color="black", label="overall")
    for group in points[0].groups:
        ax.plot(xs, [p.groups.get(group) or 0.0 for p in points], ".--", label=group)
    ax.plot(xs, [p.right_to_wrong / max(report.n, 1) for p in points], "x:", color="red", label="right→wrong share")
    ax.set_xlabel("edit strength (0 = unpatched, 1 = patch)")
    ax.set_ylabel("accuracy / share")
    ax.set_ylim(-0.02, 1.05)
    ax.set_title("dose-response")
    ax.legend(fontsize=7, loc="best")
    return _png(fig)


def plot_drift(report: ValidationReport) -> str:
    """Histogram of cosine similarity between original and patched embeddings."""
    from matplotlib.figure import Figure

    hist = report.drift.histogram
    fig = Figure(figsize=(5.0, 3.0))
    ax = fig.add_subplot()
    edges, counts = hist["edges"], hist["counts"]
    if counts:
        widths = [b - a for a, b in zip(edges[:-1], edges[1:], strict=True)]
        ax.bar(edges[:-1], counts, widths, align="edge", color=_AFTER)
    ax.axvline(report.drift.cos_p5, color="red", linestyle=":", label=f"5th pct {report.drift.cos_p5:.4f}")
    ax.set_xlabel("cosine(original, patched embedding)")
    ax.set_ylabel("images")
    ax.set_title("embedding drift")
    ax.legend(fontsize=8)
    return _png(fig)


def render_html(report: ValidationReport) -> str:
    """The report as one self-contained HTML page.

    Args:
        report: the validation report.

    Returns:
        HTML text with every plot inlined.
    """
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True, undefined=jinja2.StrictUndefined
    )
    plots = {
        "per_class": plot_per_class(report),
        "groups": plot_groups(report),
        "flips": plot_flip_matrix(report),
        "dose": plot_dose_response(report),
        "drift": plot_drift(report),
    }
    return env.get_template("report.html.j2").render(r=report, plots=plots)
