"""How a `train` cycle learns with a document strategy (`strategy` in its parameters).

- `lora` (default): the recipe's LoRA, as every feedback cycle.
- `sparse_memory`: a LoRA on `down_proj` only; before training, the cycle's text (its chunks) is run
  through the *base* model (adapter off, as the calibration was), the `top_units` units per layer with
  the highest TF·IDF against the lineage's unit calibration are opened — added to the units the parent
  had open — and training runs gated: every closed unit's column stays exactly zero
  (`workers.documents.sparse_memory.gated`). The adapter records its open units and calibration id.
- `ttt`: a LoRA on the MLPs of the last quarter of the layers, scaled by (1 − alpha). A fresh lineage
  trains at `alpha_start`; each cycle trains at the alpha its parent left and leaves alpha one
  `alpha_decay` lower (to `alpha_floor`). The blend after the cycle is folded into the published
  `lora_alpha`, so stock PEFT (evaluate, serve, `adapters pull`) loads exactly the blended model.

A lineage keeps one strategy: continuing an adapter learnt with another is refused (the adapters
differ in shape), naming the fix.
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from typing import Any

from common.errors import ValidationError
from workers.documents.options import parent_strategy


def check_parent_strategy(name: str, parent: Any) -> None:
    if parent is None:
        return
    learnt = parent_strategy(parent.metadata_)
    if learnt != name:
        raise ValidationError(
            f"adapter {parent.id} (v{parent.version}) of lineage {parent.name!r} was learnt with strategy "
            f"{learnt!r}, this cycle's is {name!r}: their adapters differ in shape; learn with strategy {learnt!r} "
            f"(or name none), into another lineage (train.adapter_name), or start a fresh adapter (train.fresh)")


def cycle_text(row: dict[str, Any]) -> str:
    """What a row's units are chosen on: a chunk's text, or a feedback row's prompt and answer."""
    return row.get("text") or f"{row.get('prompt', '')}\n{row.get('response', '')}".strip()


@dataclass
class CycleStrategy:
    name: str
    options: dict[str, Any]
    statistics: Any = None  # sparse_memory: the lineage's UnitStatistics
    calibration_id: int | None = None
    parent_metadata: dict[str, Any] = field(default_factory=dict)
    chosen: dict[int, Any] = field(default_factory=dict)
    new_units: int = 0
    blend: float | None = None  # ttt: the alpha this cycle trains at
    lora_alpha: float | None = None  # ttt: the unblended LoRA alpha

    def attach(self, model: Any, lora: Any, parent_dir: Any) -> Any:
        """The base model with this cycle's trainable adapter (the parent's, or a fresh one)."""
        from workers.learning.lora import attach_adapter

        if self.name == "lora":
            return attach_adapter(model, lora, parent_dir)
        from workers.documents.ttt import MLP_MODULES

        needed = ("down_proj",) if self.name == "sparse_memory" else MLP_MODULES
        present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
        if not set(needed) <= present:
            raise ValidationError(f"strategy {self.name} needs Llama-style MLPs ({', '.join(needed)}), this model has "
                                  f"none: learn with strategy lora on this architecture")
        if self.name == "sparse_memory":
            return attach_adapter(model, replace(lora, target_modules=("down_proj",)), parent_dir)
        from peft import get_peft_model

        from workers.documents.ttt import set_blend, ttt_lora_config

        previous = self.parent_metadata.get("strategy") or {}
        if parent_dir is not None:
            peft_model = attach_adapter(model, parent_dir=parent_dir)
            self.lora_alpha = float(previous["lora_alpha"])
            self.blend = float(previous["alpha"])
        else:
            peft_model = get_peft_model(model, ttt_lora_config(model, lora.r, lora.alpha))
            self.lora_alpha = float(lora.alpha)
            self.blend = float(self.options["alpha_start"])
        rank = peft_model.peft_config["default"].r
        set_blend(peft_model, self.lora_alpha, rank, self.blend)
        return peft_model

    def training(self, model: Any, tokenizer: Any, rows: list[dict[str, Any]], store: Any = None,
                 units_key: str | None = None) -> Any:
        """The context the cycle trains in: the unit gate for sparse_memory, nothing otherwise.

        The units are chosen once per job and kept at `units_key` (beside the job's checkpoints): an
        attempt that resumes from a checkpoint gates the same units, so no column it trained is closed
        (and zeroed by a later cycle) because a rerun of the choice came out differently."""
        if self.name != "sparse_memory":
            return nullcontext()
        from workers.documents.sparse_memory import gated, units_from_json, units_to_json

        kept = None
        if store is not None and units_key is not None and store.exists(units_key):
            kept = json.loads(store.get_bytes(units_key))
        if kept is not None:
            self.chosen, self.new_units = units_from_json(kept["units"]), int(kept["new_units"])
        else:
            self._choose(model, tokenizer, rows)
            if store is not None and units_key is not None:
                store.put_bytes(units_key, json.dumps({"units": units_to_json(self.chosen),
                                                       "new_units": self.new_units}).encode())
        return gated(model, self.chosen)

    def _choose(self, model: Any, tokenizer: Any, rows: list[dict[str, Any]]) -> None:
        from workers.documents.sparse_memory import choose_units, merge_units, unit_activity, units_from_json

        # A document's chunks when the dataset has them (its views repeat them as questions), else every row.
        texts = [r["text"] for r in rows if r.get("text")] or [cycle_text(r) for r in rows if cycle_text(r)]
        if not texts:
            raise ValidationError("sparse_memory: the cycle's dataset has no text to choose units on: learn a "
                                  "dataset with rows (add documents or feedback first)")
        with model.disable_adapter():  # the base's activations, as calibrated
            activity = unit_activity(model, tokenizer, texts, self.statistics.active_fraction)
        new = choose_units(self.statistics, activity, int(self.options["top_units"]))
        before = units_from_json((self.parent_metadata.get("strategy") or {}).get("units", {}))
        self.chosen = merge_units(before, new)
        self.new_units = sum(int(u.numel()) for u in self.chosen.values()) - sum(int(u.numel()) for u in before.values())

    def before_publish(self, model: Any) -> None:
        """ttt: fold the blend after this cycle into the config PEFT saves."""
        if self.name == "ttt":
            from workers.documents.ttt import next_blend

            after = next_blend(self.blend, self.options["alpha_decay"], self.options["alpha_floor"])
            model.peft_config["default"].lora_alpha = self.lora_alpha * (1 - after)

    def lora_record(self, model: Any, lora: Any) -> dict[str, Any]:
        """The adapter's LoRA as published (metadata `lora`): the recipe's settings for `lora`; for the
        others their own targets, rank and (ttt: blended) alpha, read from the PEFT config."""
        from workers.learning.lora import settings_dict

        if self.name == "lora":
            return settings_dict(lora)
        config = model.peft_config["default"]
        record = {"r": config.r, "alpha": config.lora_alpha, "dropout": config.lora_dropout,
                  "target_modules": sorted(config.target_modules)}
        if self.name == "ttt":
            record["layers_to_transform"] = list(config.layers_to_transform)
        return record

    def metadata(self, model: Any) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, **self.options}
        if self.name == "sparse_memory":
            from workers.documents.sparse_memory import unit_share, units_to_json

            data.update(units=units_to_json(self.chosen), calibration_id=self.calibration_id,
                        active_fraction=self.statistics.active_fraction,  # the calibration's: the one used
                        units_opened_this_cycle=self.new_units, **unit_share(model, self.chosen))
        if self.name == "ttt":
            from workers.documents.ttt import last_quarter, next_blend

            data.update(lora_alpha=self.lora_alpha, alpha_while_learning=self.blend,
                        alpha=next_blend(self.blend, self.options["alpha_decay"], self.options["alpha_floor"]),
                        layers=last_quarter(model.config.num_hidden_layers))
        return data
