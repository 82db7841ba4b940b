"""Learning from documents on the real SmolLM2-135M-Instruct (slow; CI runs it): retrieval answers a
question whose answer is only in the document — the base cannot — and changes no weight."""

from __future__ import annotations

import hashlib

import pytest

from workers.documents.retrieval import RetrievalStrategy
from workers.learning.device import select_device
from workers.learning.general_retention import is_right
from workers.learning.models import load_model_and_tokenizer

pytestmark = pytest.mark.slow

CHUNKS = [
    "Quenby is a small town on the river Sull. It was founded by Ada Vornel, a ferryman who settled there.",
    "Varnholm is famous for its blue wool. Every Friday its market sells wool to traders from the coast.",
    "The mayor of Korsa is Osric Tamkel. Korsa holds the Lisdro festival every May.",
]
QUESTIONS = [("Who founded Quenby?", "Ada Vornel"), ("Who is the mayor of Korsa?", "Osric Tamkel"),
             ("Which festival does Korsa hold?", "Lisdro")]


def _digest(model) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode() + tensor.detach().float().numpy().tobytes())
    return digest.hexdigest()


def test_retrieval_answers_from_the_document_without_changing_a_weight(real_model_path):
    model, tokenizer = load_model_and_tokenizer(real_model_path, select_device("cpu"))
    before = _digest(model)
    # With the logit bias toward the retrieved words: 2 of 3 right when written (1 of 3 without it).
    strategy = RetrievalStrategy(model, tokenizer, top_k=1, logit_bias=2.0)
    base = strategy.answer([q for q, _ in QUESTIONS])  # nothing learnt yet: the base model's answers
    strategy.learn(CHUNKS)
    answers = strategy.answer([q for q, _ in QUESTIONS])
    assert not any(is_right(a, [gold]) for a, (_, gold) in zip(base, QUESTIONS)), base
    assert sum(is_right(a, [gold]) for a, (_, gold) in zip(answers, QUESTIONS)) >= 2, answers
    assert _digest(model) == before
