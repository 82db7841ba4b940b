"""Cost of each "keep the old" mechanism per training step, relative to plain LoRA.

    python bench/regularizers.py                  # tiny model, LoRA r=16 all linear, batch 8, ~128 tokens
    python bench/regularizers.py --steps 40 --repeats 2

Each variant runs `training.fit` for the same number of optimiser steps on the same rows; the time per
step is the best of `--repeats` runs. Replay's cost is its per-epoch reservoir draw + encoding of the
extra rows (it makes epochs longer, not steps slower), so it is reported per step over whole epochs.
Target (issue 3): EWC <= 5% over plain LoRA.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from workers.learning.ewc import EWC
    from workers.learning.fisher import batches_for_rows, compute_fisher
    from workers.learning.kl import KLDistillation
    from workers.learning.lora import LoraSettings, attach_adapter
    from workers.learning.replay import ReplayMixer, in_memory_history
    from workers.learning.synthetic import make_feedback_like
    from workers.learning.tiny import build_tiny_model, build_tokenizer
    from workers.learning.training import TrainConfig, fit

    tokenizer = build_tokenizer(0)
    torch.manual_seed(0)
    model = attach_adapter(build_tiny_model(0), LoraSettings(r=16, alpha=32, dropout=0.0))
    rows = make_feedback_like(args.rows, seed=0, min_tokens=args.tokens, max_tokens=args.tokens, tokenizer=tokenizer)
    old = make_feedback_like(4 * args.rows, seed=1, min_tokens=args.tokens, max_tokens=args.tokens, tokenizer=tokenizer)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.02)
    old_batches = batches_for_rows(old[:32], tokenizer, batch_size=8)
    fisher_lora = compute_fisher(model, old_batches, space="lora")
    fisher_dw = compute_fisher(model, old_batches, space="delta_w")
    start_state = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    config = TrainConfig(learning_rate=1e-4, max_steps=args.steps, batch_size=8, seed=0, log_every=10_000)

    variants = {
        "plain LoRA": lambda: ([], rows),
        "EWC (ΔW space, Fisher)": lambda: ([EWC.from_model(model, fisher_dw, 1.0, space="delta_w")], rows),
        "EWC (LoRA space)": lambda: ([EWC.from_model(model, fisher_lora, 1.0, space="lora")], rows),
        "L2 on ΔW": lambda: ([EWC.from_model(model, None, 1.0, space="delta_w")], rows),
        "KL to base": lambda: ([KLDistillation(1.0)], rows),
        "replay 20%": lambda: ([], ReplayMixer(rows, in_memory_history(old), 0.2, seed=0)),
    }
    per_step = {}
    for label, build in variants.items():
        best = float("inf")
        for _ in range(args.repeats):
            with torch.no_grad():
                for n, p in model.named_parameters():
                    if n in start_state:
                        p.copy_(start_state[n])
            regularizers, data = build()
            result = fit(model, tokenizer, data, config, regularizers=regularizers)
            best = min(best, result.wall_s / result.steps)
        per_step[label] = best
        print(f"  {label}: {best * 1000:.1f} ms/step", flush=True)
    base = per_step["plain LoRA"]
    print(f"\ntiny model, LoRA r=16 all linear, batch 8 x {args.tokens} tokens, {args.steps} steps, "
          f"threads {torch.get_num_threads()}, best of {args.repeats}")
    print(f"{'variant':26s} {'ms/step':>9s} {'vs plain':>9s} {'overhead':>9s}")
    for label, seconds in per_step.items():
        print(f"{label:26s} {seconds * 1000:9.1f} {seconds / base:9.3f} {100 * (seconds / base - 1):8.1f}%")


if __name__ == "__main__":
    main()
