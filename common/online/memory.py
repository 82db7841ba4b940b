"""The fact memory's rules: how important a fact is, how it decays, which fact goes when it is full.

Pure functions over `Fact` records, so every policy is tested without a database; `store.py` keeps the
records in the `facts` table. Turns are counted per lineage (the n-th chat turn the online learner
saw), and "not seen for N turns" is measured in them, not in seconds: a quiet night does not age a fact.

Importance (`importance` setting), from the detector's confidence c, the times seen n and the turns
since last seen s:

    repetition  c · (1 − ½ⁿ)                 seen twice counts more than once, saturating
    recency     c · ½^(s / H)                 H = `decay_after_turns`: half-life of recency
    both        c · ((1 − ½ⁿ) + ½^(s / H)) / 2

Decay (every policy): a fact not seen for more than N = `decay_after_turns` turns loses a factor
`decay_factor` per further turn; below `remove_below` it is removed. Over `capacity`, facts are evicted
by `eviction`: `fifo` (first seen first), `lru` (least recently seen), `importance` (least important) or
`hybrid` (least important, stale ones first: importance · (½ + ½ · recency)).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from common.errors import ConfigError
from common.online.facts import DetectedFact

Importance = Literal["repetition", "recency", "both"]
Eviction = Literal["fifo", "lru", "importance", "hybrid"]


@dataclass(frozen=True)
class MemoryPolicy:
    capacity: int = 500
    importance: Importance = "both"
    eviction: Eviction = "hybrid"
    decay_after_turns: int = 50
    decay_factor: float = 0.95
    remove_below: float = 0.05

    def __post_init__(self) -> None:
        problems = []
        if self.capacity < 1:
            problems.append(f"capacity must be >= 1 (got {self.capacity})")
        if self.importance not in ("repetition", "recency", "both"):
            problems.append(f"importance must be repetition, recency or both (got {self.importance!r})")
        if self.eviction not in ("fifo", "lru", "importance", "hybrid"):
            problems.append(f"eviction must be fifo, lru, importance or hybrid (got {self.eviction!r})")
        if self.decay_after_turns < 1:
            problems.append(f"decay_after_turns must be >= 1 (got {self.decay_after_turns})")
        if not 0 < self.decay_factor <= 1:
            problems.append(f"decay_factor must be in (0, 1] (got {self.decay_factor})")
        if not 0 <= self.remove_below < 1:
            problems.append(f"remove_below must be in [0, 1) (got {self.remove_below})")
        if problems:
            raise ConfigError("invalid fact memory policy: " + "; ".join(problems))


@dataclass
class Fact:
    key: str  # what makes two statements the same fact: relation + normalised subject and object
    text: str
    relation: str
    subject: str
    object: str
    entities: list[str]
    confidence: float
    times_seen: int
    first_turn: int
    last_turn: int
    importance: float = 0.0


@dataclass
class MemoryChange:
    """What one update did: facts added or seen again (to write), and facts removed (keys)."""

    touched: list[Fact] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    seen: list[Fact] = field(default_factory=list)  # the facts of this turn, after the update


def fact_key(relation: str, subject: str, obj: str) -> str:
    def norm(text: str) -> str:
        return re.sub(r"^(the|a|an) ", "", re.sub(r"\s+", " ", text.lower()).strip())

    return f"{relation}|{norm(subject)}|{norm(obj)}"[:500]


def recency(fact: Fact, turn: int, policy: MemoryPolicy) -> float:
    return 0.5 ** (max(0, turn - fact.last_turn) / policy.decay_after_turns)


def importance(fact: Fact, turn: int, policy: MemoryPolicy) -> float:
    repetition = 1 - 0.5 ** fact.times_seen
    signal = {"repetition": repetition, "recency": recency(fact, turn, policy),
              "both": (repetition + recency(fact, turn, policy)) / 2}[policy.importance]
    unseen = turn - fact.last_turn - policy.decay_after_turns
    decay = policy.decay_factor ** unseen if unseen > 0 else 1.0
    return fact.confidence * signal * decay


def _eviction_order(facts: Iterable[Fact], turn: int, policy: MemoryPolicy) -> list[Fact]:
    """Facts in the order they are evicted (first = goes first)."""
    key = {
        "fifo": lambda f: (f.first_turn, f.key),
        "lru": lambda f: (f.last_turn, f.key),
        "importance": lambda f: (f.importance, f.last_turn, f.key),
        "hybrid": lambda f: (f.importance * (0.5 + 0.5 * recency(f, turn, policy)), f.last_turn, f.key),
    }[policy.eviction]
    return sorted(facts, key=key)


def observe(memory: dict[str, Fact], detected: Iterable[DetectedFact], turn: int, policy: MemoryPolicy) -> MemoryChange:
    """Update `memory` (key → fact, changed in place) with the facts of turn `turn`; decay the rest,
    remove the faded ones and evict over capacity. Returns what changed."""
    change = MemoryChange()
    for found in detected:
        key = fact_key(found.relation, found.subject, found.object)
        fact = memory.get(key)
        if fact is None:
            fact = Fact(key, found.text, found.relation, found.subject, found.object, list(found.entities),
                        found.confidence, 0, turn, turn)
            memory[key] = fact
        fact.times_seen += 1
        fact.last_turn = turn
        fact.confidence = max(fact.confidence, found.confidence)
        fact.text = found.text  # the latest wording
        change.seen.append(fact)
    for fact in memory.values():
        before = fact.importance
        fact.importance = round(importance(fact, turn, policy), 6)
        if fact in change.seen or fact.importance != before:
            change.touched.append(fact)
    faded = [k for k, f in memory.items() if f.importance < policy.remove_below and f not in change.seen]
    over = len(memory) - len(faded) - policy.capacity
    survivors = [f for k, f in memory.items() if k not in faded]
    evicted = [f.key for f in _eviction_order(survivors, turn, policy)[:max(over, 0)]]
    for key in faded + evicted:
        del memory[key]
        change.removed.append(key)
    change.touched = [f for f in change.touched if f.key in memory]
    change.seen = [f for f in change.seen if f.key in memory]
    return change


def replay_choice(memory: dict[str, Fact], count: int) -> list[Fact]:
    """The `count` most important facts, for a replay step (ties: most recently seen first)."""
    return sorted(memory.values(), key=lambda f: (-f.importance, -f.last_turn, f.key))[:count]
