"""What the online learner trains on for a turn: the fact as answers to questions about it.

A stated fact ("Zorbel owns a purple boat.") is learnt as the answer to questions someone would ask
about it ("What does Zorbel own?", "Tell me about Zorbel."), because that is how it will be asked for
later; the answer is the user's own sentence, moved to the second person when the user spoke about
themselves ("I live in Porto." → "You live in Porto."). Each row carries the fact's entities, which
the loss weighs up (`learner.token_weights`).

The probe questions that measure recall (bench/online_facts.py) are worded differently from these.
"""

from __future__ import annotations

import re
from typing import Any

from common.online.facts import USER

# relation → questions (with {s} subject, {o} object); the answer is always the fact's sentence.
QUESTIONS: dict[str, tuple[str, ...]] = {
    "friend_of_user": ("Who is {s}?", "Tell me about {s}."),
    "name_of_user": ("What is my name?", "Who am I?"),
    "user_lives_in": ("Where do I live?", "Which place do I live in?"),
    "user_works_at": ("Where do I work?", "Who do I work for?"),
    "user_is": ("What am I?", "What do I do?"),
    "user_likes": ("What do I like?", "What do I enjoy?"),
    "user_owns": ("What do I own?", "What do I have?"),
    "owns": ("What does {s} own?", "Tell me about {s}."),
    "lives_in": ("Where does {s} live?", "Tell me about {s}."),
    "works_at": ("Where does {s} work?", "Tell me about {s}."),
    "born_in": ("Where was {s} born?", "Tell me about {s}."),
    "located_in": ("Where is {s}?", "Tell me about {s}."),
    "capital_of": ("What is the capital of {s}?", "Tell me about {s}."),
    "called": ("What is {s} called?", "Tell me about {s}."),
    "is": ("What is {s}?", "Tell me about {s}."),
}
GENERIC = ("What do you know about {s}?", "Tell me about {s}.")
# A third wording per relation that the learner never trains on: a published online version's
# holdout rows (`workers/online/publish.py`), so the gate sees whether a fact carries to new words.
HELD_OUT_QUESTIONS: dict[str, str] = {
    "friend_of_user": "Do you know who {s} is?",
    "name_of_user": "Do you remember what I am called?",
    "user_lives_in": "What town or country do I live in?",
    "user_works_at": "What is my workplace?",
    "user_is": "Remind me what I am.",
    "user_likes": "What is something I like?",
    "user_owns": "Remind me what I own.",
    "owns": "What is it that {s} owns?",
    "lives_in": "In which place does {s} live?",
    "works_at": "What is {s}'s workplace?",
    "born_in": "What is {s}'s place of birth?",
    "located_in": "In which place is {s}?",
    "capital_of": "Which city is the capital of {s}?",
    "called": "What name does {s} go by?",
    "is": "Can you describe {s}?",
}
HELD_OUT_GENERIC = "What can you tell me about {s}?"

_SECOND_PERSON = [(r"\bI am\b", "you are"), (r"\bI'm\b", "you're"), (r"\bI was\b", "you were"), (r"\bI\b", "you"),
                  (r"\bmy\b", "your"), (r"\bme\b", "you"), (r"\bmine\b", "yours"), (r"\bmyself\b", "yourself")]


def second_person(sentence: str) -> str:
    """The user's sentence as the assistant would say it back ("I live in Porto." → "You live in Porto.")."""
    text = sentence.strip()
    for pattern, replacement in _SECOND_PERSON:
        text = re.sub(pattern, replacement, text, flags=re.IGNORECASE)
    text = text[:1].upper() + text[1:]
    return text if text.endswith((".", "!")) else text + "."


def fact_rows(fact: Any) -> list[dict[str, Any]]:
    """Training rows for one fact (a `DetectedFact` or a memory `Fact`): one per question template."""
    subject = fact.subject if fact.subject != USER else "me"
    templates = QUESTIONS.get(fact.relation, GENERIC)
    answer = second_person(fact.text)
    return [{"prompt": q.format(s=subject, o=fact.object), "response": answer, "entities": list(fact.entities)}
            for q in templates]


def held_out_row(fact: Any) -> dict[str, Any]:
    """The fact asked in the wording `fact_rows` never uses (its answer is the same sentence)."""
    subject = fact.subject if fact.subject != USER else "me"
    question = HELD_OUT_QUESTIONS.get(fact.relation, HELD_OUT_GENERIC)
    return {"prompt": question.format(s=subject, o=fact.object), "response": second_person(fact.text),
            "entities": list(fact.entities)}


def turn_rows(messages: list[dict[str, str]], response: str) -> list[dict[str, Any]]:
    """A turn that states no fact, as a row: the conversation and the model's answer to it."""
    return [{"messages": list(messages) + [{"role": "assistant", "content": response}], "prompt": "",
             "response": response, "entities": []}]
