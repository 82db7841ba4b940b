"""Benchmark: LoRA training throughput of our `fit()` vs Hugging Face `Trainer` + PEFT, in useful tokens/s.

    python bench/train_throughput.py                       # tiny + small, variable + fixed length (~5 min, 2 cores)
    python bench/train_throughput.py --steps 40 --sizes small
    python bench/train_throughput.py --device cuda --bf16  # on a GPU machine

Same model (built-in tiny Qwen2-style, seeded), same LoRA (r=16, alpha=32, dropout 0.05, q/v by default),
same precision, batch size, optimiser (AdamW, lr 2e-4, clip 1.0) and the same rows, one epoch each:

* ours    — `workers.learning.training.fit`: length-bucketed batches, loss (and LM head) on response
            positions only, no per-step host syncs.
* trainer — `transformers.Trainer` with its default padding collator for this task
            (`DataCollatorForSeq2Seq`, pad to the longest in a random batch), `group_by_length` off.

Useful tokens = non-padding tokens; "cpu-s" is the same ratio per second of process CPU time, which a
busy shared host distorts far less than wall time. The first optimiser step of each run is excluded from the timing
(lazy initialisation). Each run is a fresh subprocess, so its peak RSS (ru_maxrss) is its own.
Datasets: "variable" — feedback-like rows, log-uniform 16–512 tokens; "fixed" — every row the same length.
Targets (issue 3): >= 1.5x on variable, >= 1.15x on fixed at tiny size, >= 1.0x at ~20M parameters.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

TARGETS = {("tiny", "variable"): 1.5, ("tiny", "fixed"): 1.15, ("small", "variable"): 1.5, ("small", "fixed"): 1.0}
LR = 2e-4


def _rows(kind: str, n: int, fixed_length: int, tokenizer):
    from workers.learning.synthetic import make_feedback_like

    if kind == "variable":
        return make_feedback_like(n, seed=11, min_tokens=16, max_tokens=512, tokenizer=tokenizer)
    return make_feedback_like(n, seed=11, min_tokens=fixed_length, max_tokens=fixed_length, tokenizer=tokenizer)


def _model(size: str, targets: list[str], device: str):
    from workers.learning.lora import LoraSettings, attach_adapter
    from workers.learning.tiny import build_tiny_model

    import torch

    torch.manual_seed(0)
    model = build_tiny_model(seed=0, size=size)
    model = attach_adapter(model, LoraSettings(r=16, alpha=32, dropout=0.05, target_modules=tuple(targets)))
    return model.to(device)


def run_one(spec: dict) -> dict:
    """One measurement in this (fresh) process."""
    import torch

    from workers.learning.tiny import build_tokenizer

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    tokenizer = build_tokenizer(0)
    n_rows = (spec["steps"] + 1) * spec["batch_size"]  # one epoch: both see exactly the same rows
    rows = _rows(spec["data"], n_rows, spec["fixed_length"], tokenizer)
    model = _model(spec["size"], spec["targets"], spec["device"])
    if spec["framework"] == "ours":
        out = _run_ours(model, tokenizer, rows, spec)
    else:
        out = _run_trainer(model, tokenizer, rows, spec)
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if spec["device"] == "cuda":
        out["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def _run_ours(model, tokenizer, rows, spec) -> dict:
    from workers.learning.training import TrainConfig, fit

    config = TrainConfig(learning_rate=LR, epochs=1, batch_size=spec["batch_size"], max_length=600,
                         max_grad_norm=1.0, autocast_dtype="bfloat16" if spec["bf16"] else None, seed=0,
                         log_every=10**6, cancel_check_every=10**6)
    result = fit(model, tokenizer, rows, config)
    if spec["device"] == "cuda":
        import torch

        torch.cuda.synchronize()
    return {"tokens_per_s": result.useful_tokens_per_s, "tokens_per_cpu_s": result.useful_tokens_per_cpu_s,
            "steps": result.steps, "useful_tokens": result.tokens_seen}


def _run_trainer(model, tokenizer, rows, spec) -> dict:
    import tempfile

    import torch
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments

    from workers.learning.formatting import encode_rows

    samples = encode_rows(rows, tokenizer, 600)
    dataset = [{"input_ids": s.input_ids, "attention_mask": [1] * len(s), "labels": s.labels} for s in samples]
    clock = {"tokens": 0, "mark_tokens": 0, "mark": None, "end": None, "mark_cpu": 0.0, "end_cpu": 0.0}

    class CountingTrainer(Trainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            clock["tokens"] += int(inputs["attention_mask"].sum())  # useful tokens of this micro-batch
            return super().training_step(model, inputs, num_items_in_batch)

    class Timer(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if spec["device"] == "cuda":
                torch.cuda.synchronize()
            now, cpu = time.perf_counter(), time.process_time()
            if clock["mark"] is None:  # exclude step 1, as fit() does
                clock["mark"], clock["mark_cpu"], clock["mark_tokens"] = now, cpu, clock["tokens"]
            clock["end"], clock["end_cpu"] = now, cpu

    with tempfile.TemporaryDirectory() as out_dir:
        args = TrainingArguments(
            output_dir=out_dir, per_device_train_batch_size=spec["batch_size"], num_train_epochs=1,
            learning_rate=LR, lr_scheduler_type="cosine", max_grad_norm=1.0, weight_decay=0.0,
            logging_strategy="no", save_strategy="no", report_to="none", disable_tqdm=True, seed=0,
            use_cpu=spec["device"] == "cpu", bf16=spec["bf16"], dataloader_num_workers=0,
            remove_unused_columns=False,
        )
        trainer = CountingTrainer(
            model=model, args=args, train_dataset=dataset,
            data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100),
            callbacks=[Timer()],
        )
        trainer.train()
    tokens = clock["tokens"] - clock["mark_tokens"]
    return {"tokens_per_s": tokens / max(clock["end"] - clock["mark"], 1e-9),
            "tokens_per_cpu_s": tokens / max(clock["end_cpu"] - clock["mark_cpu"], 1e-9),
            "steps": trainer.state.global_step, "useful_tokens": clock["tokens"]}


def _spawn(spec: dict) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", json.dumps(spec)]
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(f"run {spec} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="tiny,small", help="tiny (~3M params) and/or small (~20M)")
    parser.add_argument("--data", default="variable,fixed", help="variable (16-512 tokens) and/or fixed")
    parser.add_argument("--steps", type=int, default=0, help="optimiser steps per run (default: 24 tiny, 10 small)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--fixed-length", type=int, default=128, help="row length (tokens) of the fixed dataset")
    parser.add_argument("--targets", default="q_proj,v_proj", help="LoRA target modules")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast in both (fp32 master weights)")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--repeats", type=int, default=1, help="alternate ours/trainer this many times, keep the best")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.one:
        print(json.dumps(run_one(json.loads(args.one))))
        return

    results = []
    for size in args.sizes.split(","):
        for data in args.data.split(","):
            steps = args.steps or (24 if size == "tiny" else 10)
            base = {"size": size, "data": data, "steps": steps, "batch_size": args.batch_size,
                    "fixed_length": args.fixed_length, "targets": args.targets.split(","), "device": args.device,
                    "bf16": args.bf16, "threads": args.threads}
            best: dict[str, dict] = {}
            for _ in range(args.repeats):
                for framework in ("trainer", "ours"):
                    out = _spawn({**base, "framework": framework})
                    if framework not in best or out["tokens_per_s"] > best[framework]["tokens_per_s"]:
                        best[framework] = out
            ratio = best["ours"]["tokens_per_s"] / best["trainer"]["tokens_per_s"]
            cpu_ratio = best["ours"]["tokens_per_cpu_s"] / best["trainer"]["tokens_per_cpu_s"]
            row = {"size": size, "data": data, "ours": best["ours"], "trainer": best["trainer"], "ratio": ratio,
                   "cpu_ratio": cpu_ratio, "target": TARGETS[(size, data)]}
            results.append(row)
            print(f"  {size:5s} {data:8s} ours {best['ours']['tokens_per_s']:9.0f} tok/s  "
                  f"trainer {best['trainer']['tokens_per_s']:9.0f} tok/s  ratio {ratio:.2f}x "
                  f"(per CPU-second {cpu_ratio:.2f}x)", flush=True)

    precision = "bf16 autocast" if args.bf16 else "fp32"
    print(f"\nuseful tokens/s, {args.device}, {precision}, batch {args.batch_size}, LoRA r=16 on {args.targets}")
    header = f"{'size':6s} {'data':9s} {'ours':>10s} {'Trainer':>10s} {'ratio':>7s} {'cpu-s':>7s} {'target':>7s} " \
             f"{'RSS ours':>9s} {'RSS HF':>9s}"
    print(header)
    print("-" * len(header))
    for r in results:
        mark = "ok" if r["ratio"] >= r["target"] else "MISS"
        print(f"{r['size']:6s} {r['data']:9s} {r['ours']['tokens_per_s']:10.0f} {r['trainer']['tokens_per_s']:10.0f} "
              f"{r['ratio']:6.2f}x {r['cpu_ratio']:6.2f}x {r['target']:5.2f}x {r['ours']['peak_rss_mib']:7.0f}Mi "
              f"{r['trainer']['peak_rss_mib']:7.0f}Mi  {mark}")
        if "peak_gpu_mib" in r["ours"]:
            print(f"{'':16s} peak GPU memory: ours {r['ours']['peak_gpu_mib']:.0f} MiB, "
                  f"Trainer {r['trainer']['peak_gpu_mib']:.0f} MiB")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
