"""What a document is learnt as: its chunks as plain text, and each named thing in it as a question
the chat model can be asked, answered with the document's own sentences about it.

A small instruct model trained only on raw text learns to continue that text but rarely to answer a
question about it (on SmolLM2-135M: 0.00–0.03 of the bench's questions, however long it trained). The
online learner met the same gap with facts said in chat and closed it the same way
(`workers/online/rows.py`): learn the knowledge as the answer to questions about its subject. Here the
subjects are the document's names — runs of capitalised words that do not open a sentence as an
ordinary word — and the answer is every sentence that mentions the name plus the sentence after it
(which often goes on about it: "It was founded by …"). Nothing here knows the bench's questions.

`question_rows` adds questions about single sentences, made by rule (a 135M instruct model asked to
write questions about a sentence mostly writes "What is the answer to this question?"): a sentence
that opens with a pronoun gets its topic back ("It was founded by …" → "Quenby was founded by …"),
then each name in it other than the topic, and the end of its main clause — where English puts the
new information — is replaced by "what" ("Quenby was founded by what?"). Each question is prefixed
with its topic when it lacks it, and answered with that one sentence, short enough to be said in
full within an answer's token budget.
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
    """The whole sentences of `text`: a chunk cut from a longer text may open or end mid-sentence
    (overlapping windows), and a fragment ("eads every Tuesday.") would teach a wrong answer."""
    parts = [s.strip() for s in _SENTENCE.split(" ".join(text.split())) if s.strip()]
    return [s for s in parts if (s[0].isupper() or s[0].isdigit() or s[0] in "\"'(") and s[-1] in ".!?\"')"]


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
        chosen = [said[i] for i in sorted(indices)[:MAX_SENTENCES]]
        answer = " ".join(chosen)
        rows += [{"prompt": q.format(name=name), "response": answer, "sources": chosen, "messages": None, "weight": 1.0,
                  "feedback": "thumbs_up"} for q in QUESTIONS]
    return rows


_ARTICLES = {"the", "a", "an"}
_PRONOUNS = {"it": "{topic}", "its": "{topic}'s", "he": "{topic}", "she": "{topic}", "they": "{topic}",
             "his": "{topic}'s", "her": "{topic}'s", "their": "{topic}'s"}


def resolved_sentences(chunks: Sequence[str]) -> list[tuple[str, str | None]]:
    return [(sentence, topic) for sentence, topic, _ in _resolved(chunks)]


def _resolved(chunks: Sequence[str]) -> list[tuple[str, str | None, str]]:
    """(sentence, topic, sentence as written) in order, each sentence once, a leading pronoun replaced by
    the topic: the name a sentence's subject most recently held ("Quenby is …", "The town of Quenby …";
    not "Every May …")."""
    topic: str | None = None
    out: list[tuple[str, str | None, str]] = []
    seen: set[str] = set()
    for chunk in chunks:
        for sentence in sentences(chunk):
            if sentence in seen:
                continue
            seen.add(sentence)
            written = sentence
            first, _, rest = sentence.partition(" ")
            if topic and first.lower() in _PRONOUNS and rest:
                sentence = f"{_PRONOUNS[first.lower()].format(topic=topic)} {rest}"
            names = names_in(sentence)
            opening = sentence.split()[:4]
            # A subject opens the sentence, bare or after an article ("The town of Quenby lies …");
            # "Every May …" or "Today Quenby …" open with something else.
            if names and (first.lower() not in _ORDINARY or first.lower() in _ARTICLES) and \
                    names[0].split()[0] in opening:
                topic = names[0]
            out.append((sentence, topic, written))
    return out


def _ask(statement: str, span: str) -> str | None:
    """`statement` with `span` (its last occurrence) asked about: "… by what?"."""
    at = statement.rfind(span)
    if at < 0:
        return None
    return f"{statement[:at]}what{statement[at + len(span):]}".rstrip(" .!?") + "?"


def question_rows(chunks: Sequence[str]) -> list[dict[str, Any]]:
    """Rule-made questions about each sentence (its names, the end of its main clause), answered with it.
    Every view row lists its `sources`: the sentences it was made from, as written."""
    rows = []
    for sentence, topic, written in _resolved(chunks):
        statement = sentence.rstrip(" .!?")
        clause = statement.split(",")[0]
        words = clause.split()
        asked = [_ask(statement, n) for n in names_in(sentence) if n.removesuffix("'s") != topic]
        if len(words) > 3:  # the end of the main clause: its last two words
            asked.append(_ask(clause, " ".join(words[-2:])))
        for question in dict.fromkeys(q for q in asked if q):
            if topic and topic not in question:
                question = f"About {topic}: {question}"
            rows.append({"prompt": question, "response": sentence, "sources": [written], "messages": None, "weight": 1.0,
                         "feedback": "thumbs_up"})
    return rows


def document_rows(chunks: Sequence[str], views: bool = True, questions: bool = True) -> list[dict[str, Any]]:
    """The chunks as text rows, plus (with `views`) the questions about their names and (with
    `questions`) the rule-made questions about each sentence."""
    return chunk_rows(chunks) + (entity_rows(chunks) if views else []) + (question_rows(chunks) if questions else [])
