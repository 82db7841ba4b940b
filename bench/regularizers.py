"""Cost of each "keep the old" mechanism per training step, relative to plain LoRA.

    python bench/regularizers.py                  # tiny model, LoRA r=16 all linear, batch 8 x ~128 tokens
    python bench/regularizers.py --iters 30 --threads 1
    python bench/regularizers.py --model smollm2-135m-instruct --iters 10   # a real model (30 layers)

Each iteration times one full training step (forward, task loss + penalty, backward, clip, AdamW step —
what `training.fit` does per step) for every variant in turn, on the same batch; the table reports
medians. Interleaving matters on a shared machine: load changes hit every variant alike.
Replay does not make a step slower but makes epochs longer and re-draws + re-encodes each epoch; its row
is plain-step time plus that per-epoch work spread over the epoch's steps.
Targets: EWC <= 5% over plain LoRA (issue 3); the nested recipe's tiered step <= 1.05x plain and the
surprise term <= 1.5x plain at compute frequency 1 (issue 11). The surprise row includes the cost of
the plain attention formulation it needs (the fused kernels have no second derivative). Its cost
depends on the model's depth: the second-order graph spans the chosen last layers and the LM head, half
of the tiny model's 4 layers but 2 of SmolLM2's 30 — so measure it on the real model too.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402


class _StepConfig:
    """What PlainStep / TieredStep read of a TrainConfig: a constant small LR, clipping at 1."""

    learning_rate, weight_decay, warmup_steps, schedule, min_lr_ratio, max_grad_norm = 1e-5, 0.0, 0, "constant", 1.0, 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--model", default="tiny", help="tiny, a registered model name, or a model folder")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from workers.learning.batching import collate
    from workers.learning.ewc import EWC
    from workers.learning.fisher import batches_for_rows, compute_fisher
    from workers.learning.formatting import encode_rows
    from workers.learning.kl import KLDistillation
    from workers.learning.lora import LoraSettings, attach_adapter
    from workers.learning.losses import head_only_supported, response_head_loss, response_loss
    from workers.learning.replay import ReplayMixer, in_memory_history
    from workers.learning.steps import PlainStep, TieredStep
    from workers.learning.surprise import SurpriseLoss
    from workers.learning.synthetic import make_feedback_like
    from workers.learning.tiers import NestedConfig, plan_tiers
    from bench.forgetting import load

    base_model, tokenizer, model_label = load(args.model)
    torch.manual_seed(0)
    model = attach_adapter(base_model, LoraSettings(r=16, alpha=32, dropout=0.0))
    rows = make_feedback_like(args.rows, seed=0, min_tokens=args.tokens, max_tokens=args.tokens, tokenizer=tokenizer)
    old = make_feedback_like(4 * args.rows, seed=1, min_tokens=args.tokens, max_tokens=args.tokens, tokenizer=tokenizer)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.02)
    old_batches = batches_for_rows(old[:32], tokenizer, batch_size=8)
    fisher_lora = compute_fisher(model, old_batches, space="lora")
    fisher_dw = compute_fisher(model, old_batches, space="delta_w")
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    plain_step = PlainStep(named, _StepConfig(), total_steps=10**6)
    # The nested recipe's step: tiers by depth updated every 1, 2, 4 steps, slow tiers accumulating.
    tiered_step = TieredStep(named, _StepConfig(), total_steps=10**6,
                             plan=plan_tiers(list(named), NestedConfig(frequencies=(1, 2, 4))))
    batch = collate(encode_rows(rows[:8], tokenizer, 4 * args.tokens), tokenizer.pad_token_id)

    variants = {
        "plain LoRA": [],
        "EWC (LoRA space, DEFAULT)": [EWC.from_model(model, fisher_lora, 1.0, space="lora")],
        "EWC (ΔW space, Fisher)": [EWC.from_model(model, fisher_dw, 1.0, space="delta_w")],
        "L2 on ΔW": [EWC.from_model(model, None, 1.0, space="delta_w")],
        "KL to base": [KLDistillation(1.0)],
        "nested tiers 1,2,4 (tiered step)": [],
        "surprise λ=1, last layer (DEFAULT)": (-1,),
        "surprise λ=1, last 2 layers": (-2, -1),
    }
    steppers = {label: plain_step for label in variants}
    steppers["nested tiers 1,2,4 (tiered step)"] = tiered_step
    use_head_only = head_only_supported(model)
    model.train()

    def step(label: str, measure_memory: bool = False) -> float:
        """One training step as `fit` runs it; with `measure_memory`, the MiB held for backward instead."""
        regularizers = variants[label]
        surprise = None
        if isinstance(regularizers, tuple):  # the surprise term, made per step: it switches attention
            surprise = SurpriseLoss(model, 1.0, layers=regularizers)  # to the plain kernels while it exists
            regularizers = [surprise]
        saved: dict[tuple[int, int], int] = {}

        def keep(tensor: torch.Tensor) -> torch.Tensor:
            saved[(tensor.untyped_storage().data_ptr(), tensor.untyped_storage().nbytes())] = 1
            return tensor

        hooks = (torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t) if measure_memory
                 else contextlib.nullcontext())
        start = time.perf_counter()
        with hooks:
            # As `fit`: the LM head only on response positions unless a term reads the logits.
            if use_head_only and not any(getattr(r, "needs_logits", True) for r in regularizers):
                outputs, task = None, response_head_loss(model, batch).loss
            else:
                outputs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
                task = response_loss(outputs.logits, batch["labels"], batch["sample_weight"]).loss
            loss = task
            for reg in regularizers:  # as `fit` calls them (the surprise term is handed the task loss)
                extra = {"task_loss": task} if getattr(reg, "uses_task_loss", False) else {}
                loss = loss + reg.loss(model, batch, outputs, **extra)
        loss.backward()
        steppers[label].step()  # clip, AdamW (per tier for the tiered step), schedule, zero grads
        if surprise is not None:
            surprise.close()
        if measure_memory:  # tensors autograd kept for backward (activations), each storage counted once
            return sum(nbytes for _, nbytes in saved) / 2**20
        return time.perf_counter() - start

    for label in variants:  # warm-up
        step(label)
    times: dict[str, list[float]] = {label: [] for label in variants}
    for i in range(args.iters):
        order = list(variants.items())
        if i % 2:
            order.reverse()  # alternate the order so no variant always runs right after another
        for label, _ in order:
            times[label].append(step(label))
    median = {label: statistics.median(v) for label, v in times.items()}
    held_mib = {label: step(label, measure_memory=True) for label in variants}

    # The penalty alone (forward + backward), interleaved with plain steps: a precise figure when the
    # whole-step difference is inside the machine's noise.
    outputs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    # (KL is left out: its cost is a teacher forward and the student's backward, i.e. the whole-step row.)
    alone: dict[str, list[float]] = {label: [] for label, regs in variants.items()
                                     if isinstance(regs, list) and regs and isinstance(regs[0], EWC)}
    for _ in range(args.iters):
        for label in alone:
            reg = variants[label][0]
            start = time.perf_counter()
            reg.loss(model, batch, outputs).backward()
            alone[label].append(time.perf_counter() - start)
            model.zero_grad(set_to_none=True)
    penalty_ms = {label: statistics.median(v) for label, v in alone.items()}

    # Replay: per-epoch draw + encoding of (new + replayed) rows, spread over that epoch's steps.
    mixer = ReplayMixer(rows, in_memory_history(old), 0.2, seed=0)
    epoch_work = []
    for epoch in range(5):
        start = time.perf_counter()
        encode_rows(mixer(epoch), tokenizer, 4 * args.tokens)
        epoch_work.append(time.perf_counter() - start)
    steps_per_epoch = -(-len(mixer(0)) // 8)
    median["replay 20% (+ re-encode per epoch)"] = median["plain LoRA"] + statistics.median(epoch_work) / steps_per_epoch

    base = median["plain LoRA"]
    print(f"\n{Path(model_label).name} model, LoRA r=16 all linear, batch 8 x {args.tokens} tokens, "
          f"threads {torch.get_num_threads()},\nmedian of {args.iters} interleaved steps; held: MiB of tensors "
          "autograd keeps for backward\n(activations and the weights they reference)")
    print(f"{'variant':34s} {'ms/step':>8s} {'× plain':>7s} {'held':>6s} {'penalty alone':>14s}")
    for label, seconds in median.items():
        extra = f"{1000 * penalty_ms[label]:.1f} ms = {100 * penalty_ms[label] / base:.1f}%" if label in penalty_ms else "-"
        held = f"{held_mib[label]:6.0f}" if label in held_mib else f"{'-':>6s}"
        print(f"{label:34s} {seconds * 1000:8.1f} {seconds / base:7.3f} {held} {extra:>14s}")

if __name__ == "__main__":
    main()
