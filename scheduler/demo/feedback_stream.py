"""The demo's synthetic feedback stream: made-up facts users "taught" the assistant, in rounds.

Every row is labelled synthetic (its metadata says so and its id starts with `demo-`), so demo data is
never mistaken for real feedback. Facts are invented ("capital of Zorvania"), so no model knows them
before training: whatever the adapter recalls, it learnt from this stream.
"""

from __future__ import annotations

import json
from pathlib import Path

from workers.learning.synthetic import make_fact_sets, make_sentence_fact_sets


def write_rounds(folder: Path, rounds: int, facts_per_round: int, seed: int, sentences: bool = False) -> list[Path]:
    """One JSONL feedback file per round (thumbs-up on the correct answers); returns their paths.

    `sentences`: chat-form questions with one-sentence answers (for a real model) instead of the
    tiny model's short answers.
    """
    folder.mkdir(parents=True, exist_ok=True)
    make = make_sentence_fact_sets if sentences else make_fact_sets
    paths = []
    for index, facts in enumerate(make(rounds, facts_per_round, seed=seed), start=1):
        path = folder / f"round-{index}.jsonl"
        with open(path, "w", encoding="utf-8") as fh:
            for n, fact in enumerate(facts):
                fh.write(json.dumps({
                    "id": f"demo-r{index}-{n}",
                    "prompt": fact["prompt"],
                    "response": fact["response"],
                    "feedback": "thumbs_up",
                    "metadata": {"synthetic": True, "source": "continuum demo", "round": index},
                }) + "\n")
        paths.append(path)
    return paths
