"""The `calibrate` job: the statistics sparse memory's TF-IDF gate chooses units with.

For a `train` step whose strategy is `sparse_memory`, measure in how many background texts each MLP
unit of the *base* model is active (`workers.documents.sparse_memory.UnitStatistics`) and store them
(safetensors + JSON) under a job-scoped prefix, then a `unit_calibrations` row — the row last, so a
crash leaves no row pointing at half an artifact. One calibration serves a lineage for as long as its
base model, background corpus and active fraction stay the same: a later cycle reuses it (`reused`),
so every version of the lineage chooses its units against the same statistics, and each adapter
records the calibration it used. Other strategies end `skipped`, like a Fisher a recipe does not use.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from common.db.engine import session_scope
from common.db.models import UnitCalibration
from common.errors import ValidationError
from workers.base_model import base_model_id
from workers.context import JobContext
from workers.lineage import current_parent
from workers.params import parse_params

FILES = ("unit_statistics.safetensors", "unit_statistics.json")


class CalibrateJobParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    strategy: str | None = Field(None, description="The train step's strategy; default: settings.")
    adapter_name: str | None = Field(None, description="Lineage the calibration serves; default: settings.")
    strategy_options: dict[str, Any] = Field(default_factory=dict, description="As the train step's.")
    force: bool = Field(False, description="Calibrate again even when the lineage has a calibration.")


def background_digest(texts: list[str]) -> str:
    return hashlib.sha256(json.dumps(texts, ensure_ascii=False).encode()).hexdigest()


def store_statistics(store: Any, prefix: str, statistics: Any) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        statistics.save(Path(tmp))
        for name in FILES:
            store.put_file(f"{prefix}/{name}", str(Path(tmp) / name))


def load_statistics(store: Any, prefix: str) -> Any:
    """The stored statistics (safetensors and JSON: nothing is unpickled)."""
    from workers.documents.sparse_memory import UnitStatistics

    with tempfile.TemporaryDirectory() as tmp:
        for name in FILES:
            (Path(tmp) / name).write_bytes(store.get_bytes(f"{prefix}/{name}"))
        return UnitStatistics.load(Path(tmp))


def run(ctx: JobContext) -> dict[str, Any]:
    params: CalibrateJobParams = parse_params(ctx.params, CalibrateJobParams)
    from workers.documents.background import background_texts
    from workers.documents.options import cycle_strategy_name, strategy_options

    lineage = params.adapter_name or ctx.settings.adapter_name
    with session_scope(ctx.sessions) as session:
        # Unnamed, the strategy the train step will pick: the lineage's own, else the documents default.
        strategy = cycle_strategy_name(params.strategy, current_parent(session, lineage), True, ctx.settings)
    options = strategy_options(strategy, params.strategy_options)  # refuses unknown names and options
    if strategy != "sparse_memory":
        return {"status": "skipped", "reason": f"strategy {strategy!r} needs no unit calibration"}
    try:
        texts = background_texts(ctx.settings.documents_background, ctx.settings.documents_max_bytes)
    except ValidationError as exc:
        raise ValidationError(f"CONTINUUM_DOCUMENTS_BACKGROUND: {exc}") from None
    digest, base = background_digest(texts), base_model_id(ctx.settings)
    fraction = float(options["active_fraction"])
    with session_scope(ctx.sessions) as session:
        done = session.scalars(select(UnitCalibration).where(UnitCalibration.job_id == ctx.job_id)).first()
        if done is None and not params.force:
            done = session.scalars(
                select(UnitCalibration)
                .where(UnitCalibration.adapter_name == lineage, UnitCalibration.base_model == base,
                       UnitCalibration.background_sha256 == digest, UnitCalibration.active_fraction == fraction)
                .order_by(UnitCalibration.id.desc())
            ).first()
            if done is not None:
                return {"status": "reused", "calibration_id": done.id, "texts": done.texts}
        if done is not None:
            return {"status": "calibrated", "calibration_id": done.id, "texts": done.texts}

    from workers.documents.sparse_memory import UnitStatistics
    from workers.model_setup import load_base

    loaded = load_base(ctx)
    ctx.report_progress({"step": 0, "total": len(texts), "stage": "calibrate"})
    statistics = UnitStatistics.calibrate(loaded.model, loaded.tokenizer, texts, fraction)
    ctx.report_progress({"step": len(texts), "total": len(texts), "stage": "calibrate"})
    prefix = ctx.attempt_prefix(f"calibrations/{lineage}/{ctx.job_id}")
    store_statistics(ctx.store, prefix, statistics)
    with session_scope(ctx.sessions) as session:
        row = session.scalars(select(UnitCalibration).where(UnitCalibration.job_id == ctx.job_id)).first()
        if row is None:
            row = UnitCalibration(uri=prefix, adapter_name=lineage, base_model=base, background_sha256=digest,
                                  texts=len(texts), active_fraction=fraction, job_id=ctx.job_id)
            session.add(row)
            session.flush()
        result = {"status": "calibrated", "calibration_id": row.id, "texts": len(texts),
                  "units": sum(int(t.numel()) for t in statistics.document_frequency.values())}
        ctx.finish(session, result)  # same transaction: recorded iff this attempt holds the lease
        return result
