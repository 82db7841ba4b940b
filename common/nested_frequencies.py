"""The nested tiers' update frequencies as settings text, importable without torch.

Settings check CONTINUUM_NESTED_FREQUENCIES / _TIERS when they load (a typo fails at start-up, not at
the first training job); `workers.learning.tiers.NestedConfig` applies the same checks to a recipe.
"""

from __future__ import annotations

from collections.abc import Sequence

PRESETS: dict[str, tuple[int, ...]] = {
    "conservative": (1, 4, 8),
    "balanced": (1, 2, 4),
    "aggressive": (1, 2, 3),
}


def parse_frequencies(text: str) -> tuple[int, ...]:
    """A preset name (`balanced`) or a comma list (`1,2,4`); ValueError naming both forms otherwise."""
    text = text.strip()
    if text in PRESETS:
        return PRESETS[text]
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"frequencies must be a preset ({', '.join(PRESETS)}) or a comma list such as "
                         f"1,2,4 (got {text!r})") from None


def frequency_problems(frequencies: Sequence[int], tiers: int | None = None) -> list[str]:
    """Every problem with these frequencies (and the tier count, when given), or []."""
    freqs = list(frequencies)
    problems = []
    if not 2 <= len(freqs) <= 4:
        problems.append(f"2 to 4 tiers are supported (got {len(freqs)} frequencies {freqs})")
    if any(not isinstance(f, int) or f < 1 for f in freqs):
        problems.append(f"frequencies must be whole numbers >= 1 (got {freqs})")
    if any(b <= a for a, b in zip(freqs, freqs[1:])):
        problems.append(f"frequencies must be strictly ascending, fastest tier first (got {freqs})")
    if tiers is not None and tiers != len(freqs):
        problems.append(f"tiers is {tiers} but {len(freqs)} frequencies were given ({freqs})")
    return problems
