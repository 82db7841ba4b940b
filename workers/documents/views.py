"""What a document is learnt as: its chunks as plain text, and each named thing in it as a question
the chat model can be asked, answered with the document's own sentences about it.

A small instruct model trained only on raw text learns to continue that text but rarely to answer a
question about it (on SmolLM2-135M: 0.00–0.03 of the bench's questions, however long it trained). The
online learner met the same gap with facts said in chat and closed it the same way
(`workers/online/rows.py`): learn the knowledge as the answer to questions about its subject. Here the
subjects are the document's names — runs of capitalised words that do not open a sentence as an
ordinary word — and the answer is every sentence that mentions the name plus the sentence after it
(which often goes on about it: "It was founded by …"). Nothing here knows the bench's questions.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from workers.documents.strategy import chunk_rows

_SENTENCE = re.compile(r"(?<=[.!?])\s+")
_NAME = re.compile(r"\b[A-Z][\w'-]*(?:\s+(?:of\s+)?[A-Z][\w'-]*)*")
_ORDINARY = {"the", "a", "an", "it", "its", "every", "today", "this", "these", "there", "he", "she", "they", "his",
             "her", "their", "in", "on", "at", "and", "but", "when", "while", "after", "before", "each", "some", "many",
             "most", "one", "our", "we", "you", "i", "if", "as", "so", "then", "with", "for", "from", "by", "of"}
QUESTIONS = ("Tell me about {name}.", "What do you know about {name}?")
MAX_SENTENCES = 6


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.split(" ".join(text.split())) if s.strip()]


def names_in(sentence: str) -> list[str]:
    found = []
    for match in _NAME.finditer(sentence):
        words = match.group(0).split()
        while words and words[0].lower() in _ORDINARY:  # "The Lisdro" → "Lisdro"; "Every" → nothing
            words = words[1:]
        name = " ".join(words)
        if name and name.lower() not in _ORDINARY:
            found.append(name)
    return found


def entity_rows(chunks: Sequence[str]) -> list[dict[str, Any]]:
    """For each name in the chunks: questions about it, answered with the sentences about it."""
    said: list[str] = []
    for chunk in chunks:
        for sentence in sentences(chunk):
            if sentence not in said:
                said.append(sentence)
    about: dict[str, list[int]] = {}
    for index, sentence in enumerate(said):
        for name in names_in(sentence):
            about.setdefault(name, [])
            for i in (index, index + 1):
                if i < len(said) and i not in about[name]:
                    about[name].append(i)
    rows = []
    for name, indices in about.items():
        answer = " ".join(said[i] for i in sorted(indices)[:MAX_SENTENCES])
        rows += [{"prompt": q.format(name=name), "response": answer, "messages": None, "weight": 1.0,
                  "feedback": "thumbs_up"} for q in QUESTIONS]
    return rows


def document_rows(chunks: Sequence[str], views: bool = True) -> list[dict[str, Any]]:
    """The chunks as text rows, plus (with `views`) the questions about their names."""
    return chunk_rows(chunks) + (entity_rows(chunks) if views else [])
