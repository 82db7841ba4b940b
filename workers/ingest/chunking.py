"""Cutting a document into training chunks with the model's own tokenizer.

Windows of `size` tokens that overlap by `overlap` tokens, cut on token boundaries and decoded back to
text (a chunk is a dataset row of text, tokenised again when trained on, so it must round-trip). A
window's end moves back to the last sentence or line break inside its second half when there is one,
so a fact is rarely split in two; the overlap catches the rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

_BREAKS = (".", "!", "?", "\n")


@dataclass(frozen=True)
class Chunk:
    index: int
    text: str
    start_token: int
    tokens: int


def _break_before(pieces: list[str], start: int, end: int) -> int:
    """The end (exclusive) just after the last sentence break in the window's second half, else `end`."""
    floor = start + (end - start) // 2
    for i in range(end - 1, floor - 1, -1):
        if pieces[i].rstrip(" ").endswith(_BREAKS):
            return i + 1
    return end


def chunk_text(text: str, tokenizer: Any, size: int, overlap: int) -> list[Chunk]:
    if overlap >= size:
        raise ValueError(f"chunk overlap ({overlap}) must be smaller than the chunk size ({size})")
    ids = tokenizer.encode(text, add_special_tokens=False)
    if not ids:
        return []
    pieces = [tokenizer.decode([i]) for i in ids]
    chunks: list[Chunk] = []
    start = 0
    while start < len(ids):
        end = min(start + size, len(ids))
        if end < len(ids):
            end = _break_before(pieces, start, end)
        body = tokenizer.decode(ids[start:end]).strip()
        if body:
            chunks.append(Chunk(len(chunks), body, start, end - start))
        if end >= len(ids):
            break
        start = max(end - overlap, start + 1)
    return chunks
