"""Correct per-sample Fisher (fast paths) vs the per-sample loop and vs the WRONG batch-gradient² pass.

    python bench/fisher.py                     # tiny model (hidden 256, 4 layers), LoRA r=16 on q/v
    python bench/fisher.py --samples 128 --batch 16 --targets q_proj,v_proj --repeats 3

Targets (issue 3): fast path >= 1.5x faster than the loop; <= 1.15x the time of the batch-gradient²
pass over the same samples (that pass is wrong — it squares a sum — and exists here only as the floor).
Every row also shows the relative L2 error against the loop, so a fast but wrong path is visible.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from workers.learning.fisher import batches_for_rows, compute_fisher, summed_response_loss  # noqa: E402


def batch_gradient_squared(model, batches) -> dict[str, torch.Tensor]:
    """WRONG on purpose: the square of each micro-batch's mean gradient, averaged. Timing floor only."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    sums = {n: torch.zeros_like(p) for n, p in params.items()}
    for batch in batches:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss = summed_response_loss(logits, batch) / batch["input_ids"].shape[0]
        grads = torch.autograd.grad(loss, list(params.values()))
        for name, g in zip(params, grads, strict=True):
            sums[name] += g.pow(2)
    return {n: v / len(batches) for n, v in sums.items()}


def relative_error(got, want) -> float:
    num = sum(float(((got[k] - want[k]) ** 2).sum()) for k in want)
    den = sum(float((want[k] ** 2).sum()) for k in want)
    return (num / den) ** 0.5


def best_time(fn, repeats: int):
    result, best = None, float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--targets", default="q_proj,v_proj")
    parser.add_argument("--size", default="tiny", choices=["tiny", "small"])
    parser.add_argument("--tokens", type=int, default=128, help="approximate tokens per sample (fixed length)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from workers.learning.lora import LoraSettings, attach_adapter
    from workers.learning.synthetic import make_feedback_like
    from workers.learning.tiny import build_tiny_model, build_tokenizer

    tokenizer = build_tokenizer(0)
    torch.manual_seed(0)
    model = attach_adapter(build_tiny_model(0, size=args.size),
                           LoraSettings(r=16, alpha=32, dropout=0.0, target_modules=tuple(args.targets.split(","))))
    with torch.no_grad():  # a trained adapter (lora_B != 0), so every factor has a gradient
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.02)
    model.eval()
    rows = make_feedback_like(args.samples, seed=0, min_tokens=args.tokens, max_tokens=args.tokens, tokenizer=tokenizer)
    batches = batches_for_rows(rows, tokenizer, batch_size=args.batch, max_length=4 * args.tokens)
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    print(f"model={args.size} LoRA r=16 on {args.targets}; {args.samples} samples, {tokens} tokens, "
          f"micro-batch {args.batch}, threads {torch.get_num_threads()}, best of {args.repeats}")

    compute_fisher(model, batches[:1], mode="activations")  # warm-up (allocator, lazy init)
    timings = {}
    results = {}
    for label, fn in [
        ("loop (per-sample fwd+bwd)", lambda: compute_fisher(model, batches, mode="loop")),
        ("fast: activations (default)", lambda: compute_fisher(model, batches, mode="activations")),
        ("fast: vmap(grad)", lambda: compute_fisher(model, batches, mode="vmap")),
        ("WRONG batch-grad^2 (floor)", lambda: batch_gradient_squared(model, batches)),
    ]:
        timings[label], results[label] = best_time(fn, args.repeats)
    loop_label, wrong_label = "loop (per-sample fwd+bwd)", "WRONG batch-grad^2 (floor)"
    reference = results[loop_label]
    print(f"\n{'path':30s} {'seconds':>8s} {'samples/s':>10s} {'speed-up vs loop':>17s} {'time / wrong pass':>18s} "
          f"{'rel. L2 err vs loop':>20s}")
    for label, seconds in timings.items():
        print(f"{label:30s} {seconds:8.3f} {args.samples / seconds:10.1f} {timings[loop_label] / seconds:17.2f} "
              f"{seconds / timings[wrong_label]:18.2f} {relative_error(results[label], reference):20.2e}")


if __name__ == "__main__":
    main()
