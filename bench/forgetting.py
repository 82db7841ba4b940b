"""Forgetting per continual recipe over rounds of made-up facts, on a real model or the tiny one.

    python bench/forgetting.py --model smollm2-135m-instruct     # a registered name (continuum model add)
    python bench/forgetting.py --model /path/to/hf-folder        # or a local model folder
    python bench/forgetting.py --model tiny                      # the built-in random tiny model
    python bench/forgetting.py --recipes naive,default --rounds 2 --facts 30 --json out.json
    python bench/forgetting.py --extra 'default:self_replay_share=0.6' --lr 5e-4
    python bench/forgetting.py --extra 'default:nested_frequencies=balanced' --extra 'nested:surprise_layers=-2/-1'

Every recipe starts from the same fresh adapter; each round teaches ~30 invented facts in chat form
with one-sentence answers (`workers.learning.rounds`). Columns: recall (greedy exact match of the
whole taught answer) of each round right after it was taught; forgetting of round 1 after the last
round on its probe rows (taught, never replayed); general retention (`still_right`: share of the
base model's right answers to the built-in general questions that are still right; `-` for the tiny
model, which knows no general facts); generalisation (NLL gain of the taught answers under never-
trained paraphrased questions vs the parent, mean over rounds); seconds per cycle.
The learning rate, epochs and rank default to the model's size class (`workers.train.config`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from common.nested_frequencies import PRESETS  # noqa: E402
from workers.learning.continual import RECIPES  # noqa: E402
from workers.learning.rounds import RecipeRun, RoundSettings, run_rounds  # noqa: E402


def _parse_extra(spec: str):
    """'base_recipe:key=value,key=value' → (label, config)."""
    base, _, assignments = spec.partition(":")
    overrides = {}
    for item in filter(None, assignments.split(",")):
        key, _, value = item.partition("=")
        current = getattr(RECIPES[base], key)
        if isinstance(current, bool):
            overrides[key] = value.lower() in ("1", "true")
        elif isinstance(current, tuple):  # a preset name, or numbers joined by '/' (',' splits the spec)
            overrides[key] = PRESETS.get(value) or tuple(int(v) for v in value.split("/"))
        else:
            overrides[key] = type(current)(value)
    label = base + ("[" + assignments + "]" if assignments else "")
    return label, replace(RECIPES[base], **overrides)


def load(model_arg: str):
    """`(base model, tokenizer, label)` for tiny, a local folder, or a registered model name."""
    if model_arg == "tiny":
        from workers.learning.tiny import build_tiny_model, build_tokenizer

        return build_tiny_model(0), build_tokenizer(0), "tiny"
    from workers.learning.device import select_device
    from workers.learning.models import load_model_and_tokenizer

    path = model_arg
    if not Path(model_arg).expanduser().is_dir():
        from common.objectstore import open_store
        from common.settings import Settings
        from workers import model_registry
        from workers.base_model import resolve_base_model

        settings = Settings(base_model=model_arg)
        store = open_store(settings)
        if not model_registry.is_registered(store, model_arg):
            raise SystemExit(f"no model {model_arg!r}: run `continuum model add {model_arg}` first, or pass "
                             "--model tiny or a model folder")
        path = resolve_base_model(settings, store)
    model, tokenizer = load_model_and_tokenizer(path, select_device("cpu"))
    return model, tokenizer, model_arg


def table(runs: list[RecipeRun], rounds: int) -> list[str]:
    """An 80-column table: recall per round, forgetting, general retention, NLL gain, s/cycle."""
    recall_heads = " ".join(f"{'rec' + str(i + 1):>5s}" for i in range(rounds))
    lines = [f"{'recipe':24s} {recall_heads} {'tok1':>5s} {'forget':>6s} {'still':>5s} {'agree':>5s} "
             f"{'gain':>5s} {'s/cyc':>5s}"]
    for r in runs:
        recall = " ".join(f"{v:5.2f}" for v in r.recall_em)
        still = r.general.get("still_right")
        agree = r.general.get("agreement")
        lines.append(
            f"{r.name[:24]:24s} {recall} {r.recall_tok[0]:5.2f} {r.forgetting:6.3f} "
            f"{'-' if still is None else format(still, '5.2f'):>5s} {'-' if agree is None else format(agree, '5.2f'):>5s} "
            f"{sum(r.nll_gain) / len(r.nll_gain):5.2f} {sum(r.cycle_s) / len(r.cycle_s):5.0f}"
        )
    return lines


def main() -> None:
    from workers.learning.lora import LoraSettings, attach_adapter
    from workers.train.config import model_size_defaults

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help="tiny, a registered model name, or a model folder")
    parser.add_argument("--recipes", default=",".join(RECIPES), help="comma-separated names from RECIPES")
    parser.add_argument("--extra", action="append", default=[], help="recipe:key=value,... variants to add")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--facts", type=int, default=30, help="facts per round")
    parser.add_argument("--lr", type=float, default=None, help="default: the model size's")
    parser.add_argument("--epochs", type=int, default=None, help="default: the model size's")
    parser.add_argument("--rank", type=int, default=None, help="default: the model size's")
    parser.add_argument("--targets", default="auto", help="LoRA target modules, comma-separated (default: auto)")
    parser.add_argument("--alpha", type=int, default=None, help="LoRA alpha (default: 2 x rank)")
    parser.add_argument("--no-prompts", action="store_true", help="skip anchor-prompt agreement (faster)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--self-replay-cache", help="JSON file of this base model's self-replay rows: read "
                        "when it exists, else written (saves minutes of generation per sweep run)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    chosen = {name: RECIPES[name] for name in filter(None, args.recipes.split(","))}
    for spec in args.extra:
        label, config = _parse_extra(spec)
        chosen[label] = config
    start = time.perf_counter()
    base, tokenizer, label = load(args.model)
    params = sum(p.numel() for p in base.parameters())
    sized = model_size_defaults(params)
    settings = RoundSettings(rounds=args.rounds, facts_per_round=args.facts, seed=args.seed,
                             learning_rate=args.lr or sized["learning_rate"], epochs=args.epochs or sized["epochs"],
                             lora_r=args.rank or sized["lora_rank"])
    torch.manual_seed(args.seed)  # the adapter's random lora_A init
    targets = tuple(t.strip() for t in args.targets.split(",") if t.strip())
    model = attach_adapter(base, LoraSettings(r=settings.lora_r, alpha=args.alpha or 2 * settings.lora_r,
                                              dropout=0.0, target_modules=targets))
    questions, prompts = [], []
    if args.model != "tiny":  # the random tiny model answers no general question right
        from workers.evaluate.anchors import ANCHOR_PROMPTS, general_questions

        questions = general_questions()
        prompts = [] if args.no_prompts else list(ANCHOR_PROMPTS)
    from workers.learning.self_replay import SELF_REPLAY_PROMPTS

    print(f"model {label} ({params / 1e6:.0f}M params, load {time.perf_counter() - start:.0f}s); {settings}; "
          f"threads {args.threads}; LoRA targets {args.targets}", flush=True)
    given = None
    cache = Path(args.self_replay_cache) if args.self_replay_cache else None
    if cache is not None and cache.exists():
        given = json.loads(cache.read_text())
        if [r["prompt"] for r in given] != [p for p in SELF_REPLAY_PROMPTS if p in {r["prompt"] for r in given}]:
            raise SystemExit(f"{cache} holds rows for another prompt list: delete it to regenerate")
    elif cache is not None and any(c.self_replay_share > 0 for c in chosen.values()):
        from workers.learning.self_replay import self_replay_rows

        t0 = time.perf_counter()
        given = self_replay_rows(model, tokenizer, list(SELF_REPLAY_PROMPTS), max_new_tokens=64)
        cache.write_text(json.dumps(given))
        print(f"  self-replay: {len(given)} rows in {time.perf_counter() - t0:.0f}s, cached in {cache}", flush=True)
    runs, shared = run_rounds(model, tokenizer, chosen, settings, questions, prompts, SELF_REPLAY_PROMPTS,
                              progress=lambda msg: print("  " + msg, flush=True), self_replay_given=given)
    print()
    for line in table(runs, settings.rounds):
        print(line)
    print(f"rec<i>: exact match of round i right after it; tok1: token accuracy, round 1; forget: round 1"
          f"\nprobe ({shared['probe_rows']} rows, never replayed) after round {settings.rounds}; still/agree:"
          f"\ngeneral retention; gain: paraphrase NLL gain vs parent; self-replay generation:"
          f" {shared.get('self_replay_s', 0):.0f}s once")
    for r in runs:
        for note in r.notes:
            print(f"  note {r.name}: {note}")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": label, "params": params, "settings": settings.__dict__,
                                               "shared": shared, "runs": [r.row() for r in runs]}, indent=2))


if __name__ == "__main__":
    main()
