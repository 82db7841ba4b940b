"""Forgetting per continual recipe on the two-task facts experiment (how DEFAULT was chosen).

    python bench/forgetting.py                       # every recipe in workers.learning.continual.RECIPES
    python bench/forgetting.py --recipes naive,default --facts 50 --epochs 40
    python bench/forgetting.py --extra 'ewc_delta_w:ewc_strength=10' --extra 'replay:replay_share=0.3'

Cycle 1 trains A (shared); cycle 2 trains B from the same A-trained adapter under each recipe.
Prints forgetting of A, accuracy on B, B relative to naive, the penalty/task-loss ratio and wall time.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workers.learning.continual import RECIPES  # noqa: E402
from workers.learning.two_task import ExperimentSettings, RecipeResult, run_two_task  # noqa: E402


def _parse_extra(spec: str):
    """'base_recipe:key=value,key=value' → (label, config)."""
    base, _, assignments = spec.partition(":")
    overrides = {}
    for item in filter(None, assignments.split(",")):
        key, _, value = item.partition("=")
        current = getattr(RECIPES[base], key)
        overrides[key] = type(current)(value) if not isinstance(current, bool) else value.lower() in ("1", "true")
    label = base + ("[" + assignments + "]" if assignments else "")
    return label, replace(RECIPES[base], **overrides)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", default=",".join(RECIPES), help="comma-separated names from RECIPES")
    parser.add_argument("--extra", action="append", default=[], help="recipe:key=value,... variants to add")
    parser.add_argument("--facts", type=int, default=ExperimentSettings.facts_per_set)
    parser.add_argument("--epochs", type=int, default=ExperimentSettings.epochs)
    parser.add_argument("--lr", type=float, default=ExperimentSettings.learning_rate)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--buffer", type=int, action="append", default=[],
                        help="add 'replay from a fixed N-fact buffer' (default replay share) for each N")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()

    chosen = {name: RECIPES[name] for name in filter(None, args.recipes.split(","))}
    for spec in args.extra:
        label, config = _parse_extra(spec)
        chosen[label] = config
    buffers = {}
    for size in args.buffer:
        label = f"replay[fixed {size}-fact buffer]"
        chosen[label] = RECIPES["replay"]
        buffers[label] = size
    if "naive" not in chosen:
        chosen = {"naive": RECIPES["naive"], **chosen}
    settings = ExperimentSettings(facts_per_set=args.facts, epochs=args.epochs, learning_rate=args.lr,
                                  seed=args.seed, threads=args.threads)

    def show(r: RecipeResult) -> None:
        print(f"  done {r.name}: forgetting_A={r.forgetting_a:.3f} acc_B={r.b_after:.3f} ({r.wall_s:.0f}s)", flush=True)

    print(f"two-task facts: {settings}", flush=True)
    results = run_two_task(chosen, settings, progress=show, replay_buffers=buffers)
    naive_b = next(r.b_after for r in results if r.name == "naive")
    print()
    print(f"{'recipe':44s} {'acc_A before':>12s} {'acc_A after':>11s} {'forget_A':>9s} {'acc_B':>7s} {'B/naive':>8s} "
          f"{'penalty/task':>13s} {'wall_s':>7s}")
    for r in results:
        ratio = ",".join(f"{k}={v:.3f}" for k, v in r.penalty_ratio.items()) or "-"
        print(f"{r.name:44s} {r.a_before:12.3f} {r.a_after:11.3f} {r.forgetting_a:9.3f} {r.b_after:7.3f} "
              f"{r.b_after / naive_b:8.3f} {ratio:>13s} {r.wall_s:7.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps([r.row() for r in results], indent=2))


if __name__ == "__main__":
    main()
