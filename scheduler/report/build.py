"""Read the database, draw the plots, write the PNGs and then the page (last, like a manifest)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.orm import Session

from scheduler.report import plots as draw
from scheduler.report.data import ReportData, load_report_data
from scheduler.report.page import Plot, render_page


@dataclass
class ReportFiles:
    """Where the report went, and the data it was drawn from."""

    html: Path
    pngs: list[Path]
    data: ReportData = field(repr=False)


def _safe_name(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in text)


def report_plots(data: ReportData, gate: draw.Gate | None = None) -> list[Plot]:
    """Every figure of the report, in page order."""
    plots = [
        Plot(
            f"accuracy_matrix_{_safe_name(lineage)}.png",
            f"Accuracy matrix: {lineage}",
            "Token accuracy of each version (rows) on each round's probe rows (columns): rows taught in "
            "that round and never replayed, so later cells show what was kept without rehearsal. The "
            "diagonal is each round's first-taught score, the baseline of forgetting. Grey: not evaluated.",
            draw.accuracy_heatmap(data, lineage),
        )
        for lineage in data.lineages or {"default": []}
    ]
    plots += [
        Plot(
            "recall_forgetting_retention.png",
            "Recall, forgetting and general retention per version",
            "Left: recall, token accuracy on the rows each cycle taught. Middle: forgetting of earlier "
            "rounds since first taught, (first - now) / first on their probe rows; solid the worst round, "
            "dashed the mean over rounds. Right: general retention, the share of general questions the "
            "base model answers right that the version still answers right. Dotted: the promotion gate.",
            draw.recall_forgetting_retention(data, gate),
        ),
        Plot("loss_curves.png", "Training loss", "Training loss per step of each version.", draw.loss_curves(data)),
        Plot(
            "online_learning.png",
            "Online learning from chat turns",
            "Per online job, over the turns learnt: stability (perplexity drift of the base's own answers to "
            "anchor prompts, relative to the base), plasticity (task loss of the last turns before their "
            "first step) and forgetting (anchor regression: the perplexity rise, 0 when it fell). Green "
            "dashes: a version published through evaluate → promote; red dots: the state restarted from "
            "production (its version was refused, or production moved).",
            draw.online_learning(data),
        ),
        Plot(
            "document_strategies.png",
            "Learning from documents: what each strategy learnt and what it cost",
            "The latest `continuum documents compare` run: each strategy's QA accuracy on the documents "
            "against its forgetting ratio on general questions. Up and to the left is better; squares "
            "change no weight.",
            draw.document_strategies(data),
        ),
        Plot(
            "production_timeline.png",
            f"Who held {data.alias} when",
            "Bars: the version holding the alias over time (dots: promotions, triangles: rollbacks); "
            "crosses: refused or lost promotion attempts.",
            draw.alias_timeline(data),
        ),
    ]
    return plots


def _write_atomically(path: Path, payload: bytes) -> None:
    # A reader (a browser refreshing the page) never sees a half-written file.
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(payload)
    os.replace(tmp, path)


def build_report(
    session: Session,
    out_dir: Path,
    alias: str = "production",
    lineages: list[str] | None = None,
    gate: draw.Gate | None = None,
) -> ReportFiles:
    """Write `index.html` and the PNGs under `out_dir`; returns their paths."""
    data = load_report_data(session, alias=alias, lineages=lineages)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = report_plots(data, gate)
    pngs = []
    for plot in plots:
        path = out_dir / plot.filename
        _write_atomically(path, plot.png)
        pngs.append(path)
    html = out_dir / "index.html"
    _write_atomically(html, render_page(data, plots).encode("utf-8"))
    return ReportFiles(html=html, pngs=pngs, data=data)
