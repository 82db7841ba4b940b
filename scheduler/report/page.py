"""The self-contained HTML page: inline CSS, plots as base64 `data:` PNGs, no script, no network."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from html import escape

from scheduler.report.data import ReportData, VersionPoint


@dataclass(frozen=True)
class Plot:
    """One figure: file name on disk, heading and caption on the page."""

    filename: str
    title: str
    caption: str
    png: bytes


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1100px;
       color: #222; padding: 0 1rem; }
h1 { margin-bottom: 0.2rem; }
.meta { color: #666; margin-top: 0; }
table { border-collapse: collapse; font-size: 0.9rem; margin: 1rem 0 2rem; }
th, td { border-bottom: 1px solid #ddd; padding: 0.3rem 0.7rem; text-align: right; }
th:first-child, td:first-child, td.text { text-align: left; }
tr.production td { background: #eef7ee; font-weight: 600; }
figure { margin: 1.5rem 0 2.5rem; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9rem; }
"""


# Left-aligned columns; the rest are numbers.
_TEXT_COLUMNS = ("version", "created", "datasets", "tiers", "gate", "status")


def _fmt(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _gate(point: VersionPoint) -> str:
    return {True: "passed", False: "rejected", None: "–"}[point.passed_gate]


def summary_rows(data: ReportData) -> list[dict[str, str]]:
    """The per-version table, shared by the page and the terminal summary."""
    holder = data.holder()
    rows = []
    for point in data.versions:
        rows.append(
            {
                "version": point.label,
                "created": point.created_at.strftime("%Y-%m-%d %H:%M"),
                "datasets": ", ".join(str(d) for d in point.dataset_ids) or "–",
                "recall": _fmt(point.recall),
                "forgetting max": _fmt(point.forgetting_max),
                "forgetting mean": _fmt(point.forgetting_mean),
                "backward transfer": _fmt(point.backward_transfer),
                "general retention": _fmt(point.general_retention),
                "KL drift": _fmt(point.kl_drift, 3),
                "final loss": _fmt(point.loss_curve[-1] if point.loss_curve else None),
                # Nested tiers: "every f steps: updates × mean update norm", fastest tier first.
                "tiers": "; ".join(f"every {f}: {n} × {norm:.3f}" for f, n, norm in point.tiers) or "–",
                "gate": _gate(point),
                "status": point.status + (f" ({data.alias})" if point.label == holder else ""),
            }
        )
    return rows


def online_rows(data: ReportData, last: int = 10) -> list[dict[str, str]]:
    """The last online jobs of each lineage: stability, plasticity, forgetting, what they published."""
    rows = []
    for lineage, points in data.online.items():
        for point in points[-last:]:
            rows.append({
                "lineage": lineage, "finished": point.at.strftime("%Y-%m-%d %H:%M"), "turns": str(point.turns),
                "facts": str(point.facts), "anchor ppl": _fmt(point.anchor_perplexity),
                "KL to base": _fmt(point.kl_to_base, 4), "ppl drift": _fmt(point.perplexity_drift, 3),
                "recent loss": _fmt(point.recent_loss), "loss gain": _fmt(point.loss_improvement),
                "speed": _fmt(point.adaptation_speed, 3), "regression": _fmt(point.anchor_regression, 3),
                "per 100 turns": _fmt(point.forgetting_rate, 3),
                "published": (f"v{point.published_version}" if point.published_version is not None else "–")
                + (f" (restarted: {point.restarted})" if point.restarted else ""),
            })
    return rows


def _html_table(rows: list[dict[str, str]], text_columns: tuple[str, ...]) -> str:
    """Rows of strings as an HTML table; `text_columns` left-aligned, the rest numbers."""
    header = "".join(f"<th>{escape(name)}</th>" for name in rows[0])
    body = "".join("<tr>" + "".join(
        f'<td class="text">{escape(v)}</td>' if k in text_columns else f"<td>{escape(v)}</td>"
        for k, v in row.items()) + "</tr>" for row in rows)
    return f"<table><thead><tr>{header}</tr></thead><tbody>{body}</tbody></table>"


def online_table(data: ReportData) -> str:
    rows = online_rows(data)
    if not rows:
        return ""
    return (f"<h2>Online learning</h2><p>The last online jobs of each lineage (stability, plasticity and "
            f"forgetting after each; the plot below has them all).</p>"
            + _html_table(rows, ("lineage", "finished", "published")))


def _size(value: int | None) -> str:
    if value is None:
        return "–"
    return f"{value / 1e6:.2f} MB" if value >= 1e5 else f"{value / 1e3:.1f} kB"


def comparison_rows(data: ReportData) -> list[dict[str, str]]:
    """Every strategy of the recorded `documents compare` runs, newest run first."""
    rows = []
    for point in reversed(data.comparisons):
        for figures in point.strategies:
            rows.append({
                "compared": point.at.strftime("%Y-%m-%d %H:%M"), "strategy": figures.strategy,
                "QA accuracy": _fmt(figures.qa_accuracy), "general retention": _fmt(figures.general_retention),
                "forgetting ratio": _fmt(figures.forgetting_ratio), "learn s": _fmt(figures.learn_seconds, 1),
                "answer s": _fmt(figures.answer_seconds), "artifact": _size(figures.artifact_bytes),
                "documents": f"{len(point.documents)} docs, {point.questions} questions on {point.base_model}",
            })
    return rows


def comparison_table(data: ReportData) -> str:
    rows = comparison_rows(data)
    if not rows:
        return ""
    return (f"<h2>Learning from documents</h2><p>The recorded <code>continuum documents compare</code> runs: each "
            f"strategy learnt the same documents from the base model; QA accuracy on questions about them, general "
            f"retention and the forgetting ratio (before − after) / before on the general questions. Retrieval "
            f"changes no weight: the baseline every weight-changing strategy is compared with.</p>"
            + _html_table(rows, ("compared", "strategy", "documents")))


def render_page(data: ReportData, plots: list[Plot]) -> str:
    """The whole page as one HTML string."""
    rows = summary_rows(data)
    holder = data.holder()
    header = "".join(f"<th>{escape(name)}</th>" for name in (rows[0] if rows else {"version": ""}))
    body = []
    for row in rows:
        css = ' class="production"' if row["version"] == holder else ""
        cells = "".join(
            f'<td class="text">{escape(v)}</td>' if k in _TEXT_COLUMNS else f"<td>{escape(v)}</td>"
            for k, v in row.items()
        )
        body.append(f"<tr{css}>{cells}</tr>")
    table = "<p>No adapter versions yet.</p>"
    if rows:
        table = f"<table><thead><tr>{header}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    figures = []
    for plot in plots:
        encoded = base64.b64encode(plot.png).decode("ascii")
        figures.append(
            f'<figure id="{escape(plot.filename)}"><h2>{escape(plot.title)}</h2>'
            f'<img alt="{escape(plot.title)}" src="data:image/png;base64,{encoded}">'
            f"<figcaption>{escape(plot.caption)}</figcaption></figure>"
        )
    online = online_table(data) + comparison_table(data)
    generated = data.generated_at.strftime("%Y-%m-%d %H:%M:%S UTC")
    holder_text = escape(holder) if holder else "nobody"
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>continuum report</title><style>{_CSS}</style></head><body>"
        "<h1>continuum: adapter history</h1>"
        f'<p class="meta">Generated {generated} · {len(data.versions)} versions in {len(data.lineages)} '
        f"lineage(s) · <code>{escape(data.alias)}</code> is held by <strong>{holder_text}</strong></p>"
        f"<h2>Versions</h2>{table}{online}{''.join(figures)}</body></html>\n"
    )
