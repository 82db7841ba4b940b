"""Self-generated replay: the base model's own answers to general prompts, replayed in every cycle.

On the first cycle nothing else protects the base model's behaviour (no earlier data to replay, no
Fisher, no parent), and a cycle of made-up facts on a small instruct model overwrites its general
answers ("What is the capital of France?" → "France bears the crimson falcon."). Training on the base's
own greedy answers to general prompts alongside the new rows keeps the model's outputs on those
prompts where the base had them — hard-label distillation from the base on prompts beyond the new
ones — and needs no stored user data: the rows are generated from the base weights (adapter off).

The rows depend only on the base model and the prompt list, so a caller may cache them per base.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from typing import Any

from workers.learning.general_retention import base_model
from workers.learning.replay import HistoryFactory, in_memory_history, replay_count

Row = dict[str, Any]

# General prompts whose base answers are replayed. Deliberately disjoint from the general-retention
# probes (`workers.evaluate.anchors`): replaying the very questions that are scored would make
# `still_right` measure memorisation of the replay set instead of retention.
SELF_REPLAY_PROMPTS = (
    "What is the capital of Belgium?",
    "What is the capital of Turkey?",
    "What is the capital of Mexico?",
    "What is the capital of Argentina?",
    "What is the capital of Finland?",
    "What is the capital of Denmark?",
    "Which planet is closest to the Sun?",
    "What is the chemical symbol for iron?",
    "What is photosynthesis?",
    "Who wrote Pride and Prejudice?",
    "Who discovered penicillin?",
    "What is the largest country by area?",
    "How many players are on a football team?",
    "What is the square root of sixteen?",
    "What is five plus seven?",
    "How many days are in a leap year?",
    "What language is spoken in Italy?",
    "What is the currency of the United Kingdom?",
    "What is the smallest prime number?",
    "What do cows drink?",
    "Which animal is the largest bird?",
    "What is the main ingredient of bread?",
    "Which ocean lies between Europe and America?",
    "What is the freezing point of water in Fahrenheit?",
    "Explain gravity to a child.",
    "Give me three tips for better sleep.",
    "Write a short poem about autumn.",
    "What are the primary colours?",
    "Describe a rainbow.",
    "How do plants grow?",
    "What is the difference between weather and climate?",
    "Summarise the story of Cinderella in two sentences.",
    "How can I stay calm before an exam?",
    "Write a two-sentence story about a robot.",
    "What is the meaning of the word 'generous'?",
    "Give an example of a mammal that lives in the sea.",
    "How does a rainbow form?",
    "What are clouds made of?",
    "Name the four seasons.",
    "What is a noun?",
    "How many letters are in the English alphabet?",
    "What is the boiling point of water in Fahrenheit?",
    "Suggest a name for a new coffee shop.",
    "Explain what a verb is.",
    "What is the tallest animal?",
    "Why is the ocean salty?",
    "What is the sun made of?",
    "Write a polite email declining an invitation.",
    "What is a healthy snack?",
    "How do you make a cup of tea?",
    "What is the role of the heart?",
    "Why do we need sleep?",
    "Give me a fun fact about space.",
    "What is an island?",
    "How do birds fly?",
    "Name three countries in Europe.",
    "Hi! How are you today?",
    "What can you help me with?",
    "Tell me a joke.",
    "Who are you?",
    "What is the difference between a frog and a toad?",
    "What is a volcano?",
    "Write a sentence about friendship.",
    "How many wheels does a bicycle have?",
    # A second batch (added after measuring that 64 prompts left 13 of 61 general answers lost):
    # more short factual questions and everyday requests, still disjoint from the probes.
    "What is the capital of Portugal?",
    "What is the capital of Kenya?",
    "What is the capital of Peru?",
    "What is the capital of Thailand?",
    "What is the capital of Hungary?",
    "What is the capital of Switzerland?",
    "What is the capital of South Korea?",
    "What is the capital of Italy?",
    "What is the capital of Spain?",
    "What is the capital of Brazil?",
    "Which planet has the most visible rings?",
    "Which planet is the largest in our solar system?",
    "What is the chemical symbol for oxygen?",
    "What is the chemical symbol for sodium?",
    "What gas do humans breathe out?",
    "How many minutes are in an hour?",
    "How many seconds are in a minute?",
    "How many weeks are in a year?",
    "How many legs does a cat have?",
    "How many legs does an insect have?",
    "What is ten minus three?",
    "What is three times four?",
    "What is half of twenty?",
    "Who wrote Macbeth?",
    "Who wrote The Odyssey?",
    "Who painted The Starry Night?",
    "Who invented the telephone?",
    "Who was the first person to walk on the Moon?",
    "What is the largest continent?",
    "What is the smallest continent?",
    "What is the longest river in South America?",
    "What is the longest river in Europe?",
    "On which continent is Argentina?",
    "On which continent is Japan?",
    "On which continent is Egypt?",
    "What colour is grass?",
    "What colour are ripe bananas?",
    "What is the young of a cat called?",
    "What is the young of a sheep called?",
    "What do bees make?",
    "What organ do we use to breathe?",
    "What organ do we see with?",
    "How many sides does a hexagon have?",
    "How many sides does a pentagon have?",
    "What is the opposite of big?",
    "What is the opposite of fast?",
    "What is the opposite of open?",
    "What language is spoken in Japan?",
    "What language is spoken in Russia?",
    "What language is spoken in China?",
    "What currency is used in Europe?",
    "What currency is used in India?",
    "What season comes after winter?",
    "What season comes before summer?",
    "In which country is the Colosseum?",
    "In which city is Big Ben?",
    "In which country is the Taj Mahal?",
    "In which city is the Statue of Liberty?",
    "What instrument has six strings?",
    "What do you call a baby horse?",
    "What do you call a baby dog?",
    "What keeps the Moon in orbit around the Earth?",
    "What are atoms made of?",
    "What is the hardest natural substance?",
    "What is the closest star to Earth?",
    "What is H2O commonly called?",
    "What do plants need to grow?",
    "What is the largest organ of the human body?",
    "How many continents are there?",
    "How many oceans are there on Earth?",
    "What is the fastest land animal?",
    "What animal is known as the king of the jungle?",
    "What is frozen water called?",
    "Which month has the fewest days?",
    "What is the first month of the year?",
    "What is the last day of the week?",
    "What shape has three sides?",
    "What is the plural of child?",
    "What is the past tense of swim?",
    "Give a synonym for big.",
    "Give an antonym for happy.",
    "Write a short thank-you note to a teacher.",
    "Explain what the internet is in one sentence.",
    "Describe the taste of a lemon.",
    "Give two examples of fruit.",
    "Name a famous scientist.",
    "What is a triangle?",
    "What is an ocean?",
    "What is a mountain?",
    "What is electricity?",
    "Why do we have day and night?",
    "How do fish breathe?",
    "What is the moon?",
    "Tell me something interesting about elephants.",
    "How do I plant a seed?",
    "What should I pack for a beach trip?",
)

_SENTENCE_END = re.compile(r"[.!?](?=\s|$)|\n")


def cut_to_sentence(text: str) -> str:
    """`text` up to its last complete sentence (all of it when there is none): a cut-off answer
    trained with an end-of-turn after a half sentence would teach the model to stop mid-sentence."""
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    return text[: ends[-1]].strip() if ends else text.strip()


def self_replay_rows(model: Any, tokenizer: Any, prompts: Sequence[str], max_new_tokens: int = 64,
                     batch_size: int = 32) -> list[Row]:
    """Training rows of the base model's greedy answers to `prompts` (adapter disabled).

    An answer that ran into `max_new_tokens` is cut to its last complete sentence; empty answers are
    dropped. Rows carry ``"self_replay": True`` so they are never mistaken for user feedback.
    """
    from workers.learning.generation import generate_answers

    rows = [{"prompt": p, "response": "", "messages": None} for p in prompts]
    with base_model(model):
        answers = generate_answers(model, tokenizer, rows, max_new_tokens=max_new_tokens, batch_size=batch_size)
    out: list[Row] = []
    for index, (prompt, answer) in enumerate(zip(prompts, answers, strict=True)):
        if len(tokenizer.encode(answer, add_special_tokens=False)) >= max_new_tokens - 2:
            answer = cut_to_sentence(answer)
        if answer:
            out.append({"prompt": prompt, "response": answer, "messages": None, "weight": 1.0,
                        "feedback": "thumbs_up", "unlikelihood": False, "self_replay": True,
                        "id": f"self-replay-{index}"})
    return out


def default_prompts() -> list[str]:
    """The built-in self-replay prompts (disjoint from the general-retention probes)."""
    return list(SELF_REPLAY_PROMPTS)


def with_self_replay(history: HistoryFactory | None, rows: Sequence[Row]) -> HistoryFactory:
    """`history` (earlier datasets, may be None) with the self-replay rows added as one more dataset."""
    own = in_memory_history(list(rows))
    if history is None:
        return own
    return lambda: [*history(), *own()]


class SelfReplayMixer:
    """Per-epoch rows for `training.fit`: `rows` (a list, or a callable such as `ReplayMixer`) plus a
    seeded draw of self-replay rows, `share` of an epoch that also holds `new_count` new rows.

    A pure function of the epoch (its own seeded RNG), so a resumed run draws the same rows.
    """

    def __init__(self, rows: Sequence[Row] | Callable[[int], Sequence[Row]], new_count: int,
                 self_rows: Sequence[Row], share: float, seed: int = 0):
        self.rows = rows
        self.self_rows = list(self_rows)
        self.count = min(replay_count(new_count, share), len(self.self_rows))
        self.seed = seed

    def __call__(self, epoch: int) -> list[Row]:
        rows = list(self.rows(epoch) if callable(self.rows) else self.rows)
        rows += random.Random(f"self-replay:{self.seed}:{epoch}").sample(self.self_rows, self.count)
        random.Random(f"self-order:{self.seed}:{epoch}").shuffle(rows)
        return rows


def cached_self_replay_rows(store: Any, base_model_id: str, model: Any, tokenizer: Any,
                            prompts: Sequence[str] | None = None, max_new_tokens: int = 64) -> list[Row]:
    """`self_replay_rows`, kept in the object store per base model and prompt list (JSON).

    The rows depend only on the base weights and the prompts, so every cycle after the first reads
    them instead of spending a minute or more generating them again.
    """
    import hashlib
    import json

    prompts = list(prompts if prompts is not None else SELF_REPLAY_PROMPTS)
    digest = hashlib.sha256(json.dumps([base_model_id, prompts, max_new_tokens]).encode()).hexdigest()[:24]
    key = f"self_replay/{digest}.json"
    if store.exists(key):
        return json.loads(store.get_bytes(key))
    rows = self_replay_rows(model, tokenizer, prompts, max_new_tokens=max_new_tokens)
    store.put_bytes(key, json.dumps(rows).encode())
    return rows


def base_protection_rows(config: Any, store: Any, base_model_id: str, model: Any, tokenizer: Any) -> list[Row] | None:
    """The `base_rows` a `train` cycle passes to `prepare_cycle`: None unless the recipe self-replays."""
    if getattr(config, "self_replay_share", 0) <= 0:
        return None
    return cached_self_replay_rows(store, base_model_id, model, tokenizer)
