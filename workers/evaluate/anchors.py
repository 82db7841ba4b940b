"""A fixed anchor prompt set for KL drift: generic requests that no feedback round teaches.

Drift on these measures how far the adapter moved the model's behaviour away from the base on
everything *else* — the cost side of learning. Fixed text, so every version is scored on the same set.
"""

from __future__ import annotations

ANCHOR_PROMPTS = (
    "Say hello to a new user.",
    "What is two plus two?",
    "Name a colour of the sky.",
    "Write one sentence about the weather.",
    "List three fruits.",
    "What day comes after Monday?",
    "Translate 'thank you' into French.",
    "Give a short tip for staying focused.",
    "Spell the word 'model' backwards.",
    "What is the opposite of hot?",
    "Count from one to five.",
    "Describe a cat in three words.",
    "How many legs does a spider have?",
    "Finish the sentence: The early bird…",
    "What is water made of?",
    "Recommend a name for a pet fish.",
)


def anchor_rows() -> list[dict]:
    return [{"prompt": p, "response": "", "messages": None, "weight": 1.0, "feedback": "thumbs_up"} for p in ANCHOR_PROMPTS]
