"""Chat latency of `continuum serve`'s engine: the base model alone vs the base + a LoRA adapter.

    python bench/serve_latency.py                         # the tiny model
    python bench/serve_latency.py --model PATH-or-name    # e.g. SmolLM2-135M-Instruct

Time to first token (prompt processing + the first decoding step) and decoding speed (tokens per
second after the first), each the median over `--runs` answers of `--tokens` tokens to the same
prompts, through `ChatEngine.generate` as the server runs it (streamed, one answer at a time; in
float32 the served version is merged into the weights, see `ChatEngine._adapter`). The adapter is a
rank-16 LoRA on the attention and MLP projections with non-zero weights (a fresh LoRA's B
is zero, which PEFT still computes). Target: adapter ≤ 1.1× the base on both.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.forgetting import load  # noqa: E402

PROMPTS = ["Write one sentence about the weather.", "Describe a cat in three words.",
           "Explain what a computer is in one sentence.", "Suggest a healthy breakfast."]


def measure(engine, model_name: str | None, runs: int, tokens: int) -> tuple[float, float]:
    first, speed = [], []
    for run in range(runs):
        messages = [{"role": "user", "content": PROMPTS[run % len(PROMPTS)]}]
        started = time.perf_counter()
        with engine.generate(messages, model_name, max_new_tokens=tokens) as generation:
            count = 0
            for _ in generation:
                count += 1
            answer = generation.answer
        total = time.perf_counter() - started
        if answer.first_token_seconds is None or answer.completion_tokens < 2:
            continue
        first.append(answer.first_token_seconds)
        speed.append((answer.completion_tokens - 1) / (total - answer.first_token_seconds))
    return statistics.median(first), statistics.median(speed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--runs", type=int, default=12)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from workers.learning.lora import LoraSettings, attach_adapter
    from workers.serve.engine import ChatEngine, Version

    base, tokenizer, label = load(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        donor, _, _ = load(args.model)
        torch.manual_seed(0)
        lora = LoraSettings(r=16, alpha=32, dropout=0.0).resolved_for(donor)
        adapted = attach_adapter(donor, lora)
        with torch.no_grad():
            for name, p in adapted.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.01)
        adapted.save_pretrained(tmp)
        del donor, adapted
        engine = ChatEngine(base, tokenizer, "bench")
        version = Version("bench@v1", 1, "bench", 1)
        engine.load(version, Path(tmp), follow=["bench"])
    plain_model, _, _ = load(args.model)
    plain = ChatEngine(plain_model, tokenizer, "bench")  # no PEFT at all: the true base
    for warm in ((plain, "base"), (engine, "base"), (engine, "bench")):
        measure(*warm, 2, 8)  # warm-up: first-call allocations are not latency
    rows = {"base": measure(plain, "base", args.runs, args.tokens),
            "adapter": measure(engine, "bench", args.runs, args.tokens),
            "base via PEFT": measure(engine, "base", args.runs, args.tokens)}
    base_first, base_speed = rows["base"]
    print(f"{label}: {args.runs} answers of {args.tokens} tokens each, threads {args.threads}, "
          f"LoRA r=16 on {', '.join(lora.target_modules)}")
    print(f"{'':<16} {'first ms':>9} {'ratio':>6} {'tokens/s':>9} {'ratio':>6}")
    for name, (first, speed) in rows.items():
        print(f"{name:<16} {first * 1000:>9.1f} {first / base_first:>5.2f}× {speed:>9.1f} {base_speed / speed:>5.2f}×")
    print("ratio: time against the base model without PEFT (tokens/s: its speed / this speed); target ≤ 1.1×\n"
          "base via PEFT: `model: base` on a server holding adapters (they are switched off per request)")


if __name__ == "__main__":
    main()
