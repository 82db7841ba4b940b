"""Fact detection in chat turns: which user statements state a fact worth learning, and about what.

A turn is first filtered: questions ("who/what/…", a trailing "?", "can you…", "tell me…") and
requests state nothing. What is left is matched against relation patterns, in order; the first that
matches gives the relation, the two entities (subject, object) and a confidence: the pattern's own
confidence, raised when an entity is a proper name, lowered by hedges ("maybe", "I think") and
negations. Facts under the pattern's minimum confidence are dropped. Patterns are configurable
(`CONTINUUM_ONLINE_FACT_PATTERNS`, a JSON list of `{"relation", "pattern", "confidence", "min_confidence"}`
with named groups `subject` and `object`).

Regular expressions, not a model: they run in microseconds on every turn, their decisions can be read
and tested, and the labelled set in the tests measures how good they are. A model-based extractor
could replace `detect_facts` behind the same shape.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from common.errors import ConfigError

QUESTION_WORDS = ("who", "what", "when", "where", "which", "why", "how", "whose", "whom", "is", "are", "do",
                  "does", "did", "can", "could", "would", "will", "should", "shall", "may", "have", "has")
REQUEST_OPENINGS = ("can you", "could you", "would you", "will you", "please", "tell me", "show me", "explain",
                    "give me", "help me", "let's", "lets", "write", "list")
PRONOUNS = frozenset({"you", "it", "this", "that", "these", "those", "they", "he", "she", "we", "there", "here",
                      "everything", "nothing", "nobody", "somebody", "someone", "everyone"})
HEDGES = ("maybe", "perhaps", "i think", "i guess", "probably", "might", "not sure", "i believe", "possibly")
NEGATIONS = (" not ", "n't ", " never ", " no longer ")
_ENTITY = r"(?P<{name}>[A-Za-z0-9][\w'\-. ]{{0,60}}?)"


@dataclass(frozen=True)
class FactPattern:
    """One relation: a regex with named groups `subject` and/or `object` (a missing one is the user:
    "I live in Porto" is (user, lives_in, Porto)), its confidence and the floor under which a match is
    no fact."""

    relation: str
    pattern: str
    confidence: float = 0.7
    min_confidence: float = 0.5
    compiled: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            compiled = re.compile(self.pattern, re.IGNORECASE)
        except re.error as exc:
            raise ConfigError(f"fact pattern {self.relation!r} is not a valid regex ({exc})") from None
        if not {"subject", "object"} & set(compiled.groupindex):
            raise ConfigError(f"fact pattern {self.relation!r} needs a named group (?P<subject>…) or (?P<object>…)")
        object.__setattr__(self, "compiled", compiled)


USER = "user"  # the entity a first-person statement is about


def _p(relation: str, body: str, confidence: float = 0.7, min_confidence: float = 0.5) -> FactPattern:
    text = body.replace("{S}", _ENTITY.format(name="subject")).replace("{O}", _ENTITY.format(name="object"))
    return FactPattern(relation, rf"^\s*{text}\s*[.!]*\s*$", confidence, min_confidence)


_I_AM = r"i(?: am|'m)"
# Most specific first: "X is my friend" must not be read as "X is Y" with Y = "my friend".
DEFAULT_PATTERNS: tuple[FactPattern, ...] = (
    _p("friend_of_user", r"{S} is (?:my|a) (?:\w+ )?friend(?: of mine)?", 0.85),
    _p("name_of_user", r"my name is {O}", 0.9),
    _p("user_lives_in", rf"(?:i live|{_I_AM} living|{_I_AM} based) in {{O}}", 0.85),
    _p("user_works_at", rf"(?:i work|{_I_AM} working) (?:at|for) {{O}}", 0.85),
    _p("user_is", rf"{_I_AM} (?:a|an) {{O}}", 0.75),
    _p("user_likes", r"i (?:really )?(?:like|love|enjoy) {O}", 0.7),
    _p("user_owns", r"i (?:own|have) (?:a |an |the )?{O}", 0.65, 0.6),
    _p("owns", r"{S} (?:owns|keeps|runs|manages) (?:a |an |the )?{O}", 0.75, 0.6),
    _p("lives_in", r"{S} lives in {O}", 0.8),
    _p("works_at", r"{S} works (?:at|for|in) {O}", 0.8),
    _p("born_in", r"{S} was born in {O}", 0.85),
    _p("located_in", r"{S} (?:is|are) (?:located|situated) in {O}", 0.85),
    _p("capital_of", r"(?:the )?capital of {S} is {O}", 0.9),
    _p("called", r"{S} (?:is|are) (?:called|named|known as) {O}", 0.85),
    _p("is", r"{S} (?:is|are|was|were) {O}", 0.6, 0.6),
)


@dataclass(frozen=True)
class DetectedFact:
    text: str  # the statement, as the user wrote it (stripped)
    relation: str
    subject: str
    object: str
    entities: tuple[str, ...]
    confidence: float


def is_question(text: str) -> bool:
    """A question or a request: nothing in it is stated as a fact."""
    lowered = text.strip().lower()
    if not lowered or lowered.endswith("?"):
        return True
    first = re.split(r"[\s,]+", lowered, maxsplit=1)[0]
    if first in QUESTION_WORDS and not _declarative_after(lowered, first):
        return True
    return lowered.startswith(REQUEST_OPENINGS)


def _declarative_after(lowered: str, first: str) -> bool:
    # "What a day." / "How nice." are exclamations, not questions; a leading "is" etc. is a question.
    return first in ("what", "how") and lowered.endswith(("!", "."))


def _clean(entity: str | None) -> str:
    return re.sub(r"\s+", " ", (entity or "").strip(" .,!;:'\"")).strip()


_FUNCTION_WORDS = frozenset({"the", "a", "an", "my", "our", "your", "his", "her", "their", "this", "that"})


def _proper(entity: str) -> bool:
    """A proper name somewhere in it ("The sky" is capitalised only because it starts the sentence)."""
    return any(w[:1].isupper() for w in entity.split() if w.lower() not in _FUNCTION_WORDS)


def detect_facts(text: str, patterns: Sequence[FactPattern] = DEFAULT_PATTERNS) -> list[DetectedFact]:
    """The facts stated in one user turn (one per sentence at most), most confident first."""
    if not text or not text.strip():
        return []
    found = []
    for sentence in re.split(r"(?<=[.!?])\s+", text.strip()):
        if is_question(sentence):
            continue
        fact = _match(sentence, patterns)
        if fact is not None:
            found.append(fact)
    return sorted(found, key=lambda f: -f.confidence)


def _match(sentence: str, patterns: Sequence[FactPattern]) -> DetectedFact | None:
    lowered = f" {sentence.lower()} "
    for pattern in patterns:
        match = pattern.compiled.match(sentence)
        if match is None:
            continue
        groups = match.groupdict()
        subject, obj = _clean(groups.get("subject")) or USER, _clean(groups.get("object")) or USER
        if subject.lower() in PRONOUNS:
            return None  # "You are wrong", "It is late": about something we cannot name, nothing to keep
        entities = tuple(e for e in (subject, obj) if e != USER)
        confidence = pattern.confidence
        confidence += 0.1 * sum(_proper(e) for e in entities)
        if any(h in lowered for h in HEDGES):
            confidence -= 0.4
        if any(n in lowered for n in NEGATIONS):
            confidence -= 0.2
        confidence = max(0.0, min(1.0, confidence))
        if confidence < pattern.min_confidence:
            return None  # the most specific pattern decided: a weak match is no fact, not a fall-through
        return DetectedFact(sentence.strip(), pattern.relation, subject, obj, entities, round(confidence, 3))
    return None


def patterns_from_json(text: str) -> tuple[FactPattern, ...]:
    """Patterns from `CONTINUUM_ONLINE_FACT_PATTERNS` (empty: the defaults)."""
    if not text.strip():
        return DEFAULT_PATTERNS
    try:
        items = json.loads(text)
        return tuple(FactPattern(str(i["relation"]), str(i["pattern"]), float(i.get("confidence", 0.7)),
                                 float(i.get("min_confidence", 0.5))) for i in items)
    except (ValueError, TypeError, KeyError) as exc:
        raise ConfigError(f"CONTINUUM_ONLINE_FACT_PATTERNS must be a JSON list of objects with 'relation' and "
                          f"'pattern' ({exc})") from None
