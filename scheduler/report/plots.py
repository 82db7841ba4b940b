"""The report's figures as PNG bytes (matplotlib, Agg canvas: no display, no pyplot global state).

Each function takes `ReportData` and returns PNG bytes; with nothing to show it still returns a figure
that says so, so the page's layout never depends on which data happen to exist.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from scheduler.report.data import ReportData, VersionPoint

DPI = 110


@dataclass(frozen=True)
class Gate:
    """Promotion thresholds (`CONTINUUM_GATE_*`), drawn as a line on every panel a gate applies to."""

    max_forgetting: float | None = None
    min_recall: float | None = None
    min_general_retention: float | None = None

    @classmethod
    def from_settings(cls, settings: object) -> "Gate":
        return cls(
            max_forgetting=getattr(settings, "gate_max_forgetting", None),
            min_recall=getattr(settings, "gate_min_recall", None),
            min_general_retention=getattr(settings, "gate_min_general_retention", None),
        )


def _new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)  # attach the Agg canvas explicitly: rendering never touches a GUI backend
    return figure


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _empty(title: str, message: str) -> bytes:
    figure = _new_figure(8, 2.4)
    axes = figure.add_subplot()
    axes.set_title(title)
    axes.text(0.5, 0.5, message, ha="center", va="center", fontsize=12, color="#666666")
    axes.set_axis_off()
    return _png(figure)


def accuracy_heatmap(data: ReportData, lineage: str) -> bytes:
    """Rows: versions of one lineage; columns: datasets (rounds); cells: token accuracy on the dataset's
    probe rows (taught in its round, never replayed)."""
    points = data.lineages.get(lineage, [])
    datasets = [d for d in data.dataset_labels if any(d in p.accuracy_by_dataset for p in points)]
    title = f"Accuracy matrix: {lineage}"
    if not points or not datasets:
        return _empty(title, "no evaluations with per-dataset accuracy yet")
    matrix = [[p.accuracy_by_dataset.get(d, math.nan) for d in datasets] for p in points]  # (V, D)
    figure = _new_figure(max(5.0, 1.2 * len(datasets) + 2.5), max(2.6, 0.5 * len(points) + 1.6))
    axes = figure.add_subplot()
    # Grey cells: that version was not evaluated on that dataset.
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#dddddd")
    image = axes.imshow(matrix, cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto")
    axes.set_xticks(range(len(datasets)), [data.dataset_labels[d] for d in datasets], fontsize=8)
    axes.set_yticks(range(len(points)), [f"v{p.version}" for p in points])
    axes.set_xlabel("evaluated on")
    axes.set_ylabel("adapter version")
    axes.set_title(title)
    for row, values in enumerate(matrix):
        for col, value in enumerate(values):
            if not math.isnan(value):
                colour = "black" if value > 0.6 else "white"
                axes.text(col, row, f"{value:.2f}", ha="center", va="center", fontsize=8, color=colour)
    figure.colorbar(image, ax=axes, label="token accuracy (probe rows)")
    return _png(figure)


def _series(points: list[VersionPoint], attribute: str) -> tuple[list[int], list[float]]:
    pairs = [(p.version, getattr(p, attribute)) for p in points if getattr(p, attribute) is not None]
    return [v for v, _ in pairs], [y for _, y in pairs]


def recall_forgetting_retention(data: ReportData, gate: Gate | None = None) -> bytes:
    """Per version: recall of what it taught, forgetting of earlier data since first taught (max and
    mean) and general retention against the base model; the gate's threshold on each panel."""
    lineages = {
        name: points
        for name, points in data.lineages.items()
        if any(p.recall is not None or p.forgetting_max is not None or p.general_retention is not None
               for p in points)
    }
    if not lineages:
        return _empty("Recall, forgetting and general retention", "no evaluations yet")
    gate = gate or Gate()
    figure = _new_figure(13, 3.6)
    recall_axes, forgetting_axes, general_axes = figure.subplots(1, 3)
    for index, (name, points) in enumerate(lineages.items()):
        colour = f"C{index}"
        recall_axes.plot(*_series(points, "recall"), marker="o", color=colour, label=name)
        forgetting_axes.plot(*_series(points, "forgetting_max"), marker="o", color=colour, label=f"{name} (max)")
        forgetting_axes.plot(*_series(points, "forgetting_mean"), marker=".", linestyle="--", color=colour,
                             label=f"{name} (mean)")
        general_axes.plot(*_series(points, "general_retention"), marker="o", color=colour, label=name)
    for axes, threshold in ((recall_axes, gate.min_recall), (forgetting_axes, gate.max_forgetting),
                            (general_axes, gate.min_general_retention)):
        if threshold is not None:
            axes.axhline(threshold, color="#aa3333", linewidth=1, linestyle=":", label="gate")
    recall_axes.set(title="Recall: what each cycle taught", xlabel="version", ylabel="token accuracy",
                    ylim=(-0.02, 1.02))
    forgetting_axes.axhline(0.0, color="#999999", linewidth=0.5)  # keeps "nothing forgotten" in view
    forgetting_axes.set(title="Forgetting since first taught", xlabel="version",
                        ylabel="(first - now) / first")
    general_axes.set(title="General retention", xlabel="version", ylabel="base's right answers kept",
                     ylim=(-0.02, 1.02))
    for axes in (recall_axes, forgetting_axes, general_axes):
        axes.grid(alpha=0.3)
        axes.xaxis.get_major_locator().set_params(integer=True)
        axes.legend(fontsize=8)
    return _png(figure)


def loss_curves(data: ReportData) -> bytes:
    """Training loss per step, one line per version, one panel per lineage."""
    lineages = {name: [p for p in pts if p.loss_curve] for name, pts in data.lineages.items()}
    lineages = {name: pts for name, pts in lineages.items() if pts}
    if not lineages:
        return _empty("Training loss", "no training loss curves recorded")
    figure = _new_figure(5 * len(lineages) + 1, 3.6)
    panels = figure.subplots(1, len(lineages), squeeze=False)[0]
    for axes, (name, points) in zip(panels, lineages.items()):
        colours = [f"C{i % 10}" for i in range(len(points))]
        for colour, point in zip(colours, points):
            axes.plot(range(1, len(point.loss_curve) + 1), point.loss_curve, color=colour, label=f"v{point.version}")
        axes.set(title=f"Training loss: {name}", xlabel="step", ylabel="loss")
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8, ncol=2)
    return _png(figure)


def alias_timeline(data: ReportData) -> bytes:
    """Which version held the alias when: bars per holding interval, markers for refused moves."""
    title = f"Who held `{data.alias}`"
    if not data.alias_events:
        return _empty(title, f"the `{data.alias}` alias has never moved")
    holders = list(dict.fromkeys(span.label for span in data.spans))
    refused = [e for e in data.alias_events if not e.succeeded and e.to_label]
    rows = list(dict.fromkeys([*holders, *(e.to_label for e in refused)]))
    figure = _new_figure(10, max(2.4, 0.45 * len(rows) + 1.4))
    axes = figure.add_subplot()
    end_of_time = max([data.generated_at, *(e.at for e in data.alias_events)])
    for span in data.spans:
        row = rows.index(span.label)
        end = span.end or end_of_time
        axes.barh(
            row, end - span.start, left=span.start, height=0.5, color=f"C{row % 10}", edgecolor="black", linewidth=0.5
        )
    for event in data.alias_events:
        if event.succeeded and event.to_label:
            marker = "v" if event.action == "rollback" else "o"
            axes.plot(event.at, rows.index(event.to_label), marker=marker, color="black", markersize=5)
    if refused:
        refused_rows = [rows.index(e.to_label) for e in refused]
        axes.plot([e.at for e in refused], refused_rows, "x", color="#cc2222", markersize=9, label="refused / lost")
        axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # outside: never hides a marker
    axes.set_yticks(range(len(rows)), rows)
    axes.set_title(title)
    axes.set_xlabel("time (UTC)")
    axes.grid(axis="x", alpha=0.3)
    figure.autofmt_xdate()
    return _png(figure)


def online_learning(data: ReportData) -> bytes:
    """Stability, plasticity and forgetting of online learning over the turn clock, one row per lineage."""
    lineages = {name: points for name, points in data.online.items() if points}
    if not lineages:
        return _empty("Online learning", "no online learning recorded (CONTINUUM_ONLINE=true turns it on)")
    figure = _new_figure(12, 3.2 * len(lineages) + 0.4)
    rows = figure.subplots(len(lineages), 3, squeeze=False)
    panels = (("stability: anchor perplexity drift", "perplexity_drift"),
              ("plasticity: recent loss", "recent_loss"),
              ("forgetting: anchor regression", "anchor_regression"))
    for axes_row, (name, points) in zip(rows, lineages.items()):
        for axes, (title, attribute) in zip(axes_row, panels):
            shown = [(p.turns, getattr(p, attribute)) for p in points if getattr(p, attribute) is not None]
            if shown:
                axes.plot(*zip(*shown), marker="o", markersize=3, color="C0")
            for point in points:  # versions published, and restarts from production
                if point.published_version is not None:
                    axes.axvline(point.turns, color="C2", alpha=0.5, linestyle="--")
                    axes.text(point.turns, 1.0, f" v{point.published_version}", transform=axes.get_xaxis_transform(),
                              fontsize=7, color="C2", va="top")
                if point.restarted:
                    axes.axvline(point.turns, color="C3", alpha=0.5, linestyle=":")
            axes.set(title=f"{name}: {title}", xlabel="turns learnt")
            axes.grid(alpha=0.3)
    return _png(figure)


def document_strategies(data: ReportData) -> bytes:
    """The latest `documents compare` run: QA accuracy against forgetting, one point per strategy."""
    if not data.comparisons:
        return _empty("Learning from documents", "no comparison recorded (`continuum documents compare`)")
    point = data.comparisons[-1]
    figure = _new_figure(6.5, 4.2)
    axes = figure.subplots()
    places: dict[tuple[float, float], list[str]] = {}  # strategies that land on the same point share a label
    for index, figures in enumerate(point.strategies):
        if figures.qa_accuracy is None or figures.forgetting_ratio is None:
            continue
        axes.scatter(figures.forgetting_ratio, figures.qa_accuracy, s=60, color=f"C{index}",
                     marker="o" if figures.changes_weights else "s")
        places.setdefault((round(figures.forgetting_ratio, 3), round(figures.qa_accuracy, 3)), []).append(
            figures.strategy)
    for (x, y), names in places.items():
        axes.annotate(", ".join(names), (x, y), fontsize=8, xytext=(5, 4), textcoords="offset points")
    axes.axvline(0, color="grey", linewidth=0.8)
    axes.set(xlabel="forgetting ratio on general questions (lower is better)",
             ylabel="QA accuracy on the documents (higher is better)", ylim=(-0.05, 1.05),
             title=f"{point.at:%Y-%m-%d %H:%M}: {len(point.documents)} documents, {point.questions} questions, "
                   f"{point.base_model.rstrip('/').rsplit('/', 1)[-1]}")
    axes.grid(alpha=0.3)
    return _png(figure)
