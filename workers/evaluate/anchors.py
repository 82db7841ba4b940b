"""General-retention probes: built-in general questions, anchor prompts, and a user's own file.

- `GENERAL_QUESTIONS`: short factual questions with accepted answers, scored by case-insensitive
  containment (an accepted string starting at a word boundary of the greedy answer). Kept to questions
  SmolLM2-135M-Instruct answers right (61 of 90 candidates, checked on its greedy answers), because only
  questions the *base* answers right count: `still_right` is the share of those the adapted model still
  answers right.
- `ANCHOR_PROMPTS`: general requests without a reference; agreement with the base model's own greedy
  answer and KL drift from the base are scored on them. No feedback round teaches these, so any change
  is a cost of learning.
- `CONTINUUM_ANCHORS_FILE`: JSONL of ``{"prompt": ..., "answer": optional str or list}``; rows with an
  answer join the questions, rows without join the prompts.

Fixed text, so every version is scored on the same set.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from common.errors import ConfigError

# (question, accepted answers). Answers are distinctive strings, never a lone letter: containment of
# "a" would be right by accident.
GENERAL_QUESTIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ('What is the capital of France?', ('Paris',)),
    ('What is the capital of Germany?', ('Berlin',)),
    ('What is the capital of Japan?', ('Tokyo',)),
    ('What is the capital of England?', ('London',)),
    ('What is the capital of Russia?', ('Moscow',)),
    ('What is the capital of China?', ('Beijing',)),
    ('What is the capital of Egypt?', ('Cairo',)),
    ('What is the capital of Greece?', ('Athens',)),
    ('What is the capital of Canada?', ('Ottawa',)),
    ('What is the capital of Ireland?', ('Dublin',)),
    ('What is the capital of Austria?', ('Vienna',)),
    ('What is the capital of Norway?', ('Oslo',)),
    ('What is the capital of Sweden?', ('Stockholm',)),
    ('What is the capital of Poland?', ('Warsaw',)),
    ('What is the capital of India?', ('Delhi',)),
    ('What is the capital of Australia?', ('Canberra',)),
    ('Which planet is known as the Red Planet?', ('Mars',)),
    ('What is the chemical symbol for gold?', ('Au',)),
    ('What is the chemical symbol for water?', ('H2O', 'H₂O')),
    ('What gas do plants absorb from the air?', ('carbon dioxide', 'CO2')),
    ('What is the freezing point of water in degrees Celsius?', ('0', 'zero')),
    ('What is the boiling point of water in degrees Celsius?', ('100',)),
    ('How many days are in a week?', ('7', 'seven')),
    ('How many months are in a year?', ('12', 'twelve')),
    ('How many hours are in a day?', ('24', 'twenty-four', 'twenty four')),
    ('How many legs does a dog have?', ('4', 'four')),
    ('What is two plus two?', ('4', 'four')),
    ('Who wrote Romeo and Juliet?', ('Shakespeare',)),
    ('Who wrote Hamlet?', ('Shakespeare',)),
    ('Who painted the Mona Lisa?', ('Leonardo', 'da Vinci')),
    ('Who developed the theory of relativity?', ('Einstein',)),
    ('What is the largest ocean on Earth?', ('Pacific',)),
    ('What is the longest river in Africa?', ('Nile',)),
    ('What is the tallest mountain in the world?', ('Everest',)),
    ('What is the largest desert in Africa?', ('Sahara',)),
    ('On which continent is Brazil?', ('South America',)),
    ('On which continent is Kenya?', ('Africa',)),
    ('What color is the sky on a clear day?', ('blue',)),
    ('What is the largest mammal?', ('blue whale', 'whale')),
    ('What is the young of a dog called?', ('puppy', 'pup')),
    ('What organ pumps blood through the body?', ('heart',)),
    ('What organ do humans use to think?', ('brain',)),
    ('How many sides does a triangle have?', ('3', 'three')),
    ('How many sides does a square have?', ('4', 'four')),
    ('What is the opposite of hot?', ('cold',)),
    ('What is the opposite of up?', ('down',)),
    ('What is the opposite of day?', ('night',)),
    ('What language is spoken in France?', ('French',)),
    ('What language is spoken in Spain?', ('Spanish',)),
    ('What language is spoken in Germany?', ('German',)),
    ('What currency is used in Japan?', ('yen',)),
    ('What currency is used in the United States?', ('dollar',)),
    ('What is the main language spoken in Brazil?', ('Portuguese',)),
    ('What season comes after summer?', ('autumn', 'fall')),
    ('In which country are the pyramids of Giza?', ('Egypt',)),
    ('In which city is the Eiffel Tower?', ('Paris',)),
    ('In which country is the Great Wall?', ('China',)),
    ('What instrument has black and white keys?', ('piano',)),
    ('What do you call a baby cow?', ('calf',)),
    ('What force keeps us on the ground?', ('gravity',)),
    ('What is the center of an atom called?', ('nucleus',)),
)

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
    "Write a haiku about the sea.",
    "Explain what a computer is in one sentence.",
    "Give me a synonym for happy.",
    "What should I pack for a day at the beach?",
    "Suggest a healthy breakfast.",
    "How do I boil an egg?",
    "Write a short thank-you note to a friend.",
    "What is the plural of mouse?",
    "Name three musical instruments.",
    "Why do leaves change colour in autumn?",
    "Give one reason to drink water.",
    "What is a good way to learn a new language?",
    "Describe the moon in one sentence.",
    "Tell me a fun fact about dogs.",
    "What is the past tense of run?",
    "Write a sentence using the word 'bright'.",
)


def general_questions() -> list[dict[str, Any]]:
    """The built-in questions as ``{"prompt", "answers"}`` dicts (the form `score_general_retention` takes)."""
    return [{"prompt": q, "answers": list(a)} for q, a in GENERAL_QUESTIONS]


def anchor_rows(prompts: tuple[str, ...] | list[str] = ANCHOR_PROMPTS) -> list[dict]:
    """Anchor prompts as exported-row dicts (empty response), for KL drift and generation."""
    return [{"prompt": p, "response": "", "messages": None, "weight": 1.0, "feedback": "thumbs_up"} for p in prompts]


def load_anchors_file(path: str | Path) -> tuple[list[dict[str, Any]], list[str]]:
    """``(questions, prompts)`` from a JSONL anchors file; any problem is one ConfigError naming the setting."""
    def bad(why: str) -> ConfigError:
        return ConfigError(f"CONTINUUM_ANCHORS_FILE={path}: {why}; each line must be "
                           '{"prompt": "...", "answer": optional string or list of strings}')

    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise bad(f"cannot read it ({exc.strerror or exc})") from None
    questions: list[dict[str, Any]] = []
    prompts: list[str] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise bad(f"line {number} is not JSON ({exc.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
            raise bad(f"line {number} has no non-empty string \"prompt\"")
        answer = row.get("answer")
        if answer is None:
            prompts.append(row["prompt"])
            continue
        answers = [answer] if isinstance(answer, str) else answer
        if not isinstance(answers, list) or not answers or not all(isinstance(a, str) and a.strip() for a in answers):
            raise bad(f"line {number}: \"answer\" must be a non-empty string or list of strings")
        questions.append({"prompt": row["prompt"], "answers": answers})
    if not questions and not prompts:
        raise bad("it holds no rows")
    return questions, prompts


def retention_sets(anchors_file: str | Path | None = None) -> tuple[list[dict[str, Any]], list[str]]:
    """Built-in questions and prompts, plus those of `anchors_file` (settings.anchors_file) when set."""
    questions, prompts = general_questions(), list(ANCHOR_PROMPTS)
    if anchors_file:
        extra_questions, extra_prompts = load_anchors_file(anchors_file)
        questions += extra_questions
        prompts += extra_prompts
    return questions, prompts
