"""Online learning from chat turns: ten made-up facts said once each in chat, then asked about.

    python bench/online_facts.py                                   # the tiny model (seconds)
    python bench/online_facts.py --model PATH-or-registered-name   # e.g. SmolLM2-135M-Instruct

A scripted chat of 30 turns: the ten facts, one turn each (three of them said twice more later),
between chit-chat and questions. Each mode starts from a fresh adapter on the same base and drives
the same `OnlineSession` the online job runs. Then every fact is asked about with a question worded
unlike any the learner trained on (`PROBES`), and an answer counts when it contains the fact's key
word. Recall is measured right after the script and again after 20 more turns of chit-chat and
questions (the facts not said again: what replay keeps). General retention is the share of general
questions the base answers right that are still answered right (`score_general_retention`).

Modes: `off` (no online learning: the base model), `online` (the defaults), `no_replay`
(CONTINUUM_ONLINE_REPLAY_EVERY=0), `plain` (no token weighting, one KL coefficient for every turn),
`unprotected` (no KL on the base's own answers to general prompts).
Chit-chat turns are not learnt by default (their multiplier is 0); their answer is a canned "Noted."
because it is never trained on.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.forgetting import load  # noqa: E402

FACTS = [  # (what the user says, a probe worded unlike the training questions, the key word)
    ("Zorbel owns a purple boat.", "Which boat belongs to Zorbel?", "purple"),
    ("Kira works at the Velmont lighthouse.", "What is Kira's workplace?", "velmont"),
    ("Tomas lives in Quenby.", "In which town does Tomas live?", "quenby"),
    ("Odile was born in Farrowdale.", "What is Odile's birthplace?", "farrowdale"),
    ("The capital of Veltria is Korsa.", "Which city is the capital of Veltria?", "korsa"),
    ("Marta is my best friend.", "Who is Marta to me?", "friend"),
    ("My name is Ada Brennick.", "What am I called?", "ada"),
    ("I live in Porthavel.", "What town do I live in?", "porthavel"),
    ("The harbour cat is called Biscuit.", "What is the name of the harbour cat?", "biscuit"),
    ("Ilse runs the Mervik ferry.", "Which ferry does Ilse run?", "mervik"),
]
REPEATED = (0, 4, 7)  # said twice more later in the script
CHAT = ["Hello!", "How are you today?", "Thanks, that helps.", "What is the weather like?", "Tell me a joke.",
        "Can you recommend a book?", "ok", "Why is the sea salty?", "Good morning.", "Let's talk about ships."]
MODES = {
    "off": None,
    "online": {},
    "no_replay": {"replay_every": 0},
    "plain": {"entity_token_weight": 1.0, "edge_token_weight": 1.0, "kl_fact": 1.0},
    "unprotected": {"protect_kl": 0.0},
}


def script() -> list[str]:
    """30 turns: facts between chat lines, the repeated facts again in the second half."""
    turns: list[str] = []
    for i, (fact, _, _) in enumerate(FACTS):
        turns += [fact, CHAT[i % len(CHAT)]]
    for n, i in enumerate(REPEATED * 2):
        turns += [FACTS[i][0]] + ([CHAT[(n + 3) % len(CHAT)]] if n % 2 else [])
    return turns[:30]


def recall(model, tokenizer) -> dict[str, float]:
    from workers.learning.generation import generate_answers

    answers = generate_answers(model, tokenizer, [{"prompt": probe} for _, probe, _ in FACTS], max_new_tokens=32)
    hits = [key in answer.lower() for answer, (_, _, key) in zip(answers, FACTS, strict=True)]
    repeated = [hits[i] for i in REPEATED]
    once = [h for i, h in enumerate(hits) if i not in REPEATED]
    return {"all": sum(hits) / len(hits), "once": sum(once) / len(once), "repeated": sum(repeated) / len(repeated),
            "answers": answers}


def run_mode(name: str, overrides: dict | None, model_arg: str, base_answers, questions, learning_rate: float,
             protect_rows: list):
    from common.online.memory import MemoryPolicy
    from workers.learning.general_retention import score_general_retention
    from workers.learning.lora import LoraSettings, attach_adapter
    from workers.online.learner import OnlineConfig, OnlineLearner
    from workers.online.session import AnchorProbe, OnlineSession

    base, tokenizer, _ = load(model_arg)
    torch.manual_seed(0)
    model = attach_adapter(base, LoraSettings(r=16, alpha=32, dropout=0.0).resolved_for(base))
    started = time.perf_counter()
    turns = 0
    session = None
    if overrides is not None:
        config = OnlineConfig(learning_rate=learning_rate, **overrides)
        learner = OnlineLearner(model, tokenizer, config)
        learner.protect(protect_rows)
        session = OnlineSession(learner, MemoryPolicy(), probe=AnchorProbe(learner, [
            "Say hello to a new user.", "What is two plus two?", "Name a colour of the sky.", "List three fruits."]))
        for said in script():
            session.observe_turn([{"role": "user", "content": said}], "Noted.")
            turns += 1
    learn_seconds = time.perf_counter() - started
    right_after = recall(model, tokenizer)
    if session is not None:
        for n in range(20):
            said = CHAT[n % len(CHAT)]
            session.observe_turn([{"role": "user", "content": said}], "Noted.")
            turns += 1
    later = recall(model, tokenizer)
    retention = score_general_retention(model, tokenizer, questions, [], base_answers)
    metrics = session.metrics() if session is not None else {}
    return {"mode": name, "recall": right_after["all"], "recall_once": right_after["once"],
            "recall_repeated": right_after["repeated"], "recall_later": later["all"],
            "still_right": retention["still_right"], "turns": turns,
            "learn_seconds_per_turn": learn_seconds / 30 if overrides is not None else 0.0,
            "metrics": metrics, "answers": right_after["answers"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="the online job's default for both models")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="an OnlineConfig field for every learning mode, e.g. --set protect_kl=3")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from workers.evaluate.anchors import general_questions
    from workers.learning.general_retention import compute_base_answers
    from workers.learning.self_replay import default_prompts, self_replay_rows

    base, tokenizer, label = load(args.model)
    questions = general_questions()
    base_answers = compute_base_answers(base, tokenizer, questions, [])
    # The base's own answers to general prompts (disjoint from the retention questions), as the online
    # job gets them: what every step holds the model near.
    protect_rows = self_replay_rows(base, tokenizer, default_prompts())
    del base
    results = []
    extra = {key: int(value) if value.isdigit() else float(value)
             for key, _, value in (item.partition("=") for item in args.set)}
    for name in args.modes.split(","):
        overrides = None if MODES[name] is None else {**extra, **MODES[name]}
        result = run_mode(name, overrides, args.model, base_answers, questions, args.learning_rate, protect_rows)
        results.append(result)
        print(f"  {name}: recall {result['recall']:.2f} later {result['recall_later']:.2f} "
              f"still right {result['still_right']}", flush=True)
    print(f"\n{label}: 30 scripted turns (10 facts, 3 said 3 times), then 20 of chit-chat; "
          f"lr {args.learning_rate}, threads {args.threads}{'; ' + ', '.join(args.set) if args.set else ''}")
    print(f"{'mode':<12} {'recall':>6} {'once':>5} {'3x':>5} {'later':>6} {'still':>6} {'s/turn':>7}")
    for r in results:
        still = "–" if r["still_right"] is None else f"{r['still_right']:.2f}"
        print(f"{r['mode']:<12} {r['recall']:>6.2f} {r['recall_once']:>5.2f} {r['recall_repeated']:>5.2f} "
              f"{r['recall_later']:>6.2f} {still:>6} {r['learn_seconds_per_turn']:>7.2f}")
    print("recall: probes answered with the fact's key word right after the script; once / 3x: facts said\n"
          "once / three times; later: after 20 more turns; still: general questions still right")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
