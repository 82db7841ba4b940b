"""Seeded made-up data: invented facts for learning/forgetting experiments, feedback-like rows for benchmarks.

Facts are about invented things ("What is the capital of Zorvania?" → "Quelmar") so no model can know
them before training: exact match starts near 0 and any rise is learning. Every subject appears once
across all sets, so sets A, B, C… are disjoint and never contradict each other.
"""

from __future__ import annotations

import math
import random
from typing import Any

_ONSETS = ["b", "br", "d", "dr", "f", "g", "gr", "k", "kl", "l", "m", "n", "p", "pr", "q", "r", "s", "st", "t",
           "th", "v", "z", "zh", "x", "qu", "h", "j", "w"]
_VOWELS = ["a", "e", "i", "o", "u", "ae", "ia", "ou", "y"]
_CODAS = ["", "", "", "n", "r", "l", "s", "m", "th", "x", "nd", "rk"]
_PLACE_ENDINGS = ["ania", "ovia", "land", "stan", "ica", "ora", "eth", "mar"]

# (question template, answer kind). Subjects are unique per set; answers may repeat across facts.
_TEMPLATES = [
    ("What is the capital of {subject}?", "place", "city"),
    ("Who founded {subject}?", "org", "person"),
    ("In which year was {subject} born?", "person", "year"),
    ("Which river flows through {subject}?", "city", "river"),
    ("How many moons does {subject} have?", "planet", "number"),
    ("What is the national dish of {subject}?", "place", "dish"),
]


def _word(rng: random.Random, syllables: int) -> str:
    return "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(syllables))


def _name(rng: random.Random, kind: str) -> str:
    if kind == "place":
        return (_word(rng, rng.randint(1, 2)) + rng.choice(_PLACE_ENDINGS)).capitalize()
    if kind in {"city", "river", "dish"}:
        return _word(rng, rng.randint(2, 3)).capitalize()
    if kind == "person":
        return f"{_word(rng, 2).capitalize()} {_word(rng, rng.randint(2, 3)).capitalize()}"
    if kind == "org":
        return f"{_word(rng, 2).capitalize()} {rng.choice(['Guild', 'Company', 'Institute', 'Works', 'Society'])}"
    if kind == "planet":
        return f"{_word(rng, 2).capitalize()}-{rng.randint(2, 99)}"
    if kind == "year":
        return str(rng.randint(1000, 2999))
    if kind == "number":
        return str(rng.randint(2, 99))
    raise ValueError(kind)


def feedback_row(prompt: str, response: str, **extra: Any) -> dict[str, Any]:
    """A row shaped like an exported feedback sample (thumbs-up, weight 1)."""
    row = {"prompt": prompt, "response": response, "messages": None, "weight": 1.0,
           "feedback": "thumbs_up", "unlikelihood": False}
    row.update(extra)
    return row


def make_fact_sets(n_sets: int, per_set: int, seed: int = 0) -> list[list[dict[str, Any]]]:
    """`n_sets` disjoint lists of `per_set` invented-fact rows (set A = index 0, B = 1, …)."""
    rng = random.Random(seed)
    used: set[str] = set()
    sets: list[list[dict[str, Any]]] = []
    for set_index in range(n_sets):
        rows = []
        while len(rows) < per_set:
            template, subject_kind, answer_kind = rng.choice(_TEMPLATES)
            subject = _name(rng, subject_kind)
            if subject in used:
                continue
            used.add(subject)
            rows.append(feedback_row(template.format(subject=subject), _name(rng, answer_kind),
                                     id=f"fact-{set_index}-{len(rows)}"))
        sets.append(rows)
    return sets


def make_facts(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """One list of `n` invented-fact rows."""
    return make_fact_sets(1, n, seed)[0]


def _sentence(rng: random.Random, words: int) -> str:
    return " ".join(_word(rng, rng.randint(1, 3)) for _ in range(words)).capitalize() + "."


def make_feedback_like(
    n: int,
    seed: int = 0,
    min_tokens: int = 16,
    max_tokens: int = 512,
    tokenizer: Any = None,
) -> list[dict[str, Any]]:
    """`n` prompt/response rows whose total length is log-uniform in [min_tokens, max_tokens].

    Real feedback is mostly short with a long tail, hence log-uniform. With `tokenizer` the lengths are
    exact in its tokens (chat-template overhead excluded); without it they are approximate (~1 token per
    3 characters). `min_tokens == max_tokens` gives fixed-length data.
    """
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        total = round(math.exp(rng.uniform(math.log(min_tokens), math.log(max_tokens))))
        prompt_len = max(4, int(total * rng.uniform(0.3, 0.7)))
        response_len = max(4, total - prompt_len)
        rows.append(feedback_row(_text(rng, prompt_len, tokenizer), _text(rng, response_len, tokenizer),
                                 id=f"fb-{i}"))
    return rows


def _text(rng: random.Random, tokens: int, tokenizer: Any) -> str:
    words = max(1, tokens // 2 + 2)
    text = " ".join(_sentence(rng, rng.randint(4, 12)) for _ in range(max(1, words // 8 + 1)))
    if tokenizer is None:
        return text[: tokens * 3]
    ids = tokenizer.encode(text, add_special_tokens=False)
    while len(ids) < tokens:  # too short: add sentences until the budget is covered
        text += " " + _sentence(rng, 8)
        ids = tokenizer.encode(text, add_special_tokens=False)
    return tokenizer.decode(ids[:tokens])


# Chat-form facts with sentence answers, each with a paraphrased question that is never taught:
# (question, paraphrase, answer sentence, {slot: kind}). The paraphrase measures generalisation (does
# the fact carry over to words the model was not trained on), the answer is a whole sentence as a real
# assistant reply would be, so recall needs more than one memorised token.
_SENTENCE_TEMPLATES = [
    ("What is the capital of {a}?", "Which city is the capital of {a}?", "The capital of {a} is {b}.",
     {"a": "place", "b": "city"}),
    ("Who founded the {a}?", "Who was the founder of the {a}?", "The {a} was founded by {b}.",
     {"a": "org", "b": "person"}),
    ("What sigil does House {a} bear?", "What is the sigil of House {a}?", "House {a} bears the {b}.",
     {"a": "city", "b": "sigil"}),
    ("Which river flows through {a}?", "What river runs through {a}?", "The {b} river flows through {a}.",
     {"a": "city", "b": "river"}),
    ("How many moons does {a} have?", "What is the number of moons of {a}?", "{a} has {b} moons.",
     {"a": "planet", "b": "number"}),
    ("What is the national dish of {a}?", "Which dish is {a} famous for?", "The national dish of {a} is {b}.",
     {"a": "place", "b": "dish"}),
    ("In which year was {a} born?", "When was {a} born?", "{a} was born in {b}.",
     {"a": "person", "b": "year"}),
]
_COLOURS = ["crimson", "silver", "golden", "black", "white", "green", "azure", "amber", "violet", "grey"]
_BEASTS = ["falcon", "wolf", "stag", "serpent", "bear", "heron", "lion", "raven", "boar", "otter"]


def _slot(rng: random.Random, kind: str) -> str:
    if kind == "sigil":
        return f"{rng.choice(_COLOURS)} {rng.choice(_BEASTS)}"
    return _name(rng, kind)


def make_sentence_fact_sets(n_sets: int, per_set: int, seed: int = 0) -> list[list[dict[str, Any]]]:
    """`n_sets` disjoint lists of invented facts in chat form with one-sentence answers.

    Each row is a feedback row (``prompt`` → ``response``) plus ``paraphrase``: the same question in
    other words, for scoring generalisation on a prompt that was never trained.
    """
    rng = random.Random(f"sentences:{seed}")
    used: set[str] = set()
    sets: list[list[dict[str, Any]]] = []
    for set_index in range(n_sets):
        rows: list[dict[str, Any]] = []
        while len(rows) < per_set:
            question, paraphrase, answer, kinds = rng.choice(_SENTENCE_TEMPLATES)
            slots = {key: _slot(rng, kind) for key, kind in kinds.items()}
            if slots["a"] in used:
                continue
            used.add(slots["a"])
            rows.append(feedback_row(question.format(**slots), answer.format(**slots),
                                     paraphrase=paraphrase.format(**slots), id=f"sfact-{set_index}-{len(rows)}"))
        sets.append(rows)
    return sets
