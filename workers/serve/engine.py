"""One base model with several adapter versions loaded, answering chat turns one at a time.

Versions are loaded under versioned names (`default@v3`), so a new version never replaces the weights
of one that is answering: the follower loads the new version, switches what the lineage name means,
then unloads the old one. Generation and loading share one lock, because PEFT's active adapter is
state of the model: a request selects its version when it gets the lock and keeps the lock until its
last token, so no answer ever mixes two versions and no load happens under a running forward pass.
On one CPU or one small GPU a second concurrent generation would only share the same cores; for
concurrent batching serve the adapters with vLLM (the promote job hot-swaps them there too).

Prompts are formatted exactly as in training (`formatting.prompt_text`) and decoding stops at the
template's end-of-turn token, as in evaluation.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from common.errors import ConfigError, ValidationError
from workers.learning.formatting import end_of_turn_ids, prompt_text

BASE = "base"  # the served name of the base model without any adapter


@dataclass(frozen=True)
class Version:
    """An adapter version as the server names it."""

    name: str  # `lineage@vN`: the PEFT adapter name and the served model id
    adapter_id: int
    lineage: str
    version: int

    @staticmethod
    def of(adapter: Any) -> Version:
        return Version(f"{adapter.name}@v{adapter.version}", adapter.id, adapter.name, adapter.version)


@dataclass
class Answer:
    """What one generation produced, filled in as it runs (the text arrives through `pieces`)."""

    model: str
    adapter_id: int | None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"
    text: str = ""
    first_token_seconds: float | None = None  # request start (incl. waiting for the model) → first piece
    seconds: float | None = None  # request start → last token
    _started: float = field(default_factory=time.perf_counter, repr=False)


class ChatEngine:
    """The base model plus loaded adapter versions; `generate` answers one conversation."""

    def __init__(self, model: Any, tokenizer: Any, base_model: str, max_versions: int = 4):
        self.model = model
        self.tokenizer = tokenizer
        self.base_model = base_model  # the id adapters record (`Adapter.base_model`)
        self.max_versions = max_versions
        self._lock = _FairLock()  # the model: one generation or one adapter load at a time, in arrival order
        self._state = threading.Lock()  # the bookkeeping below (held briefly, never while generating)
        self._versions: OrderedDict[str, Version] = OrderedDict()  # least recently used first
        self._followed: dict[str, Version] = {}  # lineage (or alias) name → the version it means now
        self._in_use: dict[str, int] = {}  # version name → requests that resolved it and are not done
        self._retired: set[str] = set()  # no longer followed; unloaded when its last request ends
        self._expected: set[str] = set()  # names that mean the base model until they follow a version
        self._merged: str | None = None  # the version merged into the base weights now (see `_adapter`)
        self._stops = end_of_turn_ids(tokenizer)
        model.eval()

    # ------------------------------------------------------------------ versions

    @property
    def loaded(self) -> list[Version]:
        with self._state:
            return list(self._versions.values())

    def followed(self) -> dict[str, Version]:
        with self._state:
            return dict(self._followed)

    def expect(self, name: str) -> None:
        """Let `name` (the followed alias) answer with the base model until it points at a version."""
        with self._state:
            self._expected.add(name)

    def expected(self) -> list[str]:
        with self._state:
            return sorted(self._expected)

    def has(self, name: str) -> bool:
        with self._state:
            return name in self._versions

    def load(self, version: Version, folder: Path, follow: Sequence[str] = ()) -> Version | None:
        """Load a downloaded adapter folder under the version's name (waits for a running answer) and,
        in the same turn on the model, make `follow` names mean it (see `follow`)."""
        from peft import PeftModel

        with self._lock:
            if not self.has(version.name):
                if isinstance(self.model, PeftModel):
                    self.model.load_adapter(str(folder), adapter_name=version.name)
                else:
                    self.model = PeftModel.from_pretrained(self.model, str(folder), adapter_name=version.name)
                self.model.eval()
                with self._state:
                    self._versions[version.name] = version
                    self._retired.discard(version.name)
            before = self._switch(follow, version) if follow else None
            self._evict()
            return before

    def follow(self, names: Sequence[str], version: Version) -> Version | None:
        """Make each of `names` (a lineage, an alias) mean `version` from the next request on, then unload
        what they meant before — at once if no request holds it, else when its last request ends.
        Returns the version they meant before."""
        with self._lock:
            before = self._switch(names, version)
            self._evict()
            return before

    def _switch(self, names: Sequence[str], version: Version) -> Version | None:
        with self._state:
            if version.name not in self._versions:
                raise ValueError(f"{version.name} is not loaded")
            before = self._followed.get(names[0]) if names else None
            for name in names:
                self._followed[name] = version
            if before is not None and before.name != version.name:
                self._retired.add(before.name)
            return before

    def _evict(self) -> None:
        """With the model lock held: unload retired versions no request holds, then least recently used
        ones beyond the cap (never a followed one, never one in use)."""
        with self._state:
            followed = {v.name for v in self._followed.values()}
            idle = [n for n in self._versions if n not in followed and not self._in_use.get(n)]
            doomed = [n for n in idle if n in self._retired]
            spare = [n for n in idle if n not in doomed]
            over = len(self._versions) - len(doomed) - self.max_versions
            doomed += spare[:max(over, 0)]
            for name in doomed:
                del self._versions[name]
                self._retired.discard(name)
        for name in doomed:
            if self._merged == name:
                self._unmerge()
            if self.model.active_adapter == name:  # PEFT warns when the active adapter goes
                self.model.set_adapter(next(iter(self._versions)))
            self.model.delete_adapter(name)

    def resolve(self, requested: str | None) -> Version | None:
        """The version a request's `model` names (None = the base model); KeyError if none is loaded.
        An empty name means what the server follows (the base model until an adapter is there)."""
        with self._state:
            return self._resolve(requested)

    def _resolve(self, requested: str | None) -> Version | None:
        if requested in (None, ""):
            return next(iter(self._followed.values()), None)
        if requested == BASE:
            return None
        if requested in self._followed:
            return self._followed[requested]
        if requested in self._versions:
            return self._versions[requested]
        if requested in self._expected:
            return None
        raise KeyError(requested)

    # ------------------------------------------------------------------ generation

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        text = prompt_text({"messages": messages, "prompt": ""}, self.tokenizer)
        return self.tokenizer.encode(text, add_special_tokens=False)

    def generate(self, messages: list[dict[str, str]], requested: str | None, *, max_new_tokens: int,
                 temperature: float = 0.0, top_p: float = 1.0, stop: Sequence[str] = (),
                 seed: int | None = None) -> Generation:
        """Resolve the version `requested` names now (KeyError if none) and hold it until the returned
        `Generation` ends; iterate it for the answer's text pieces."""
        if not messages or messages[-1].get("role") != "user":
            raise ValidationError("the last message must be the user's turn")
        ids = self.prompt_ids(messages)
        with self._state:
            version = self._resolve(requested)
            if version is not None:
                self._in_use[version.name] = self._in_use.get(version.name, 0) + 1
        answer = Answer(model=version.name if version else BASE,
                        adapter_id=version.adapter_id if version else None, prompt_tokens=len(ids))
        return Generation(self, answer, version, ids, max_new_tokens, temperature, top_p, list(stop), seed)

    def _release(self, version: Version | None) -> None:
        if version is None:
            return
        with self._state:
            self._in_use[version.name] -= 1
            if not self._in_use[version.name]:
                del self._in_use[version.name]

    def _adapter(self, version: Version | None):
        """Select `version` on the model for one generation (the base: nothing merged, adapters disabled).

        The selected version is merged into the base weights and stays merged until another version
        or the base is asked for: an unmerged LoRA adds its two small matmuls to every projection of
        every decoding step (SmolLM2, rank 16 on all seven projections: 1.21× slower decoding), a
        merged one costs nothing per token. Merging is exact enough only in float32: in bf16/fp16 each
        merge and unmerge would round the base weights a little more, so there the adapter runs unmerged.
        """
        from contextlib import nullcontext

        from peft import PeftModel

        if not isinstance(self.model, PeftModel):
            return nullcontext()
        if version is None:
            self._unmerge()
            return self.model.disable_adapter()
        if self._merged != version.name:
            self._unmerge()
            self.model.set_adapter(version.name)
            if self._mergeable():
                self.model.merge_adapter()
                self._merged = version.name
        with self._state:
            self._versions.move_to_end(version.name)
        return nullcontext()

    def _mergeable(self) -> bool:
        weight = next(self.model.parameters())
        return weight.dtype == torch.float32 and not getattr(self.model, "is_loaded_in_4bit", False)

    def _unmerge(self) -> None:
        if self._merged is not None:
            self.model.unmerge_adapter()
            self._merged = None


class Generation:
    """One answer being generated: iterate for text pieces; `cancel()` stops it early (a client gone).

    Use it as a context manager (or call `close()`), so the version it holds is released even if it is
    never iterated.
    """

    def __init__(self, engine: ChatEngine, answer: Answer, version: Version | None, ids: list[int],
                 max_new_tokens: int, temperature: float, top_p: float, stop: list[str], seed: int | None):
        self.engine, self.answer, self.version = engine, answer, version
        self._ids, self._max_new_tokens = ids, max_new_tokens
        self._temperature, self._top_p, self._stop, self._seed = temperature, top_p, stop, seed
        self._cancelled = threading.Event()
        self._released = False
        self._iterator: Iterator[str] | None = None

    def __enter__(self) -> Generation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[str]:
        if self._iterator is None:
            self._iterator = self._pieces()
        return self._iterator

    def cancel(self) -> None:
        self._cancelled.set()

    def close(self) -> None:
        self.cancel()
        if self._iterator is not None:
            self._iterator.close()  # runs its `finally`: the thread is joined, the lock released
        self._release()

    def _release(self) -> None:
        if not self._released:
            self._released = True
            self.engine._release(self.version)

    def _pieces(self) -> Iterator[str]:
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        engine, answer, ids = self.engine, self.answer, self._ids
        halt = threading.Event()  # set when the consumer stops early (a stop string, a closed stream)
        cancelled = self._cancelled

        class _Halt(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs) -> bool:  # noqa: ANN001
                return halt.is_set() or cancelled.is_set()

        try:
            with engine._lock:
                streamer = TextIteratorStreamer(engine.tokenizer, skip_prompt=True, skip_special_tokens=True)
                device = next(engine.model.parameters()).device
                kwargs: dict[str, Any] = {
                    "input_ids": torch.tensor([ids], dtype=torch.long, device=device),
                    "attention_mask": torch.ones((1, len(ids)), dtype=torch.long, device=device),
                    "max_new_tokens": self._max_new_tokens, "use_cache": True, "streamer": streamer,
                    "eos_token_id": engine._stops,
                    "pad_token_id": engine.tokenizer.pad_token_id if engine.tokenizer.pad_token_id is not None
                    else engine._stops[-1],
                    "stopping_criteria": StoppingCriteriaList([_Halt()]),
                    "do_sample": self._temperature > 0,
                }
                if self._temperature > 0:
                    kwargs.update(temperature=self._temperature, top_p=self._top_p, top_k=0)
                if self._seed is not None:
                    torch.manual_seed(self._seed)
                produced: dict[str, Any] = {}

                def run() -> None:
                    try:
                        with torch.inference_mode(), engine._adapter(self.version):
                            output = engine.model.generate(**kwargs)  # (1, T + new)
                        produced["new"] = output[0, len(ids):].tolist()
                    except BaseException as exc:  # handed to the consumer below, not lost in the thread
                        produced["error"] = exc
                        streamer.end()

                thread = threading.Thread(target=run, name="continuum-generate", daemon=True)
                thread.start()
                trimmer = _StopTrimmer(self._stop)
                try:
                    for piece in streamer:
                        # A byte-level token can decode to NUL, which no text column (nor JSON
                        # consumer) wants; it carries nothing a reader would miss.
                        piece = piece.replace("\x00", "")
                        if answer.first_token_seconds is None:
                            answer.first_token_seconds = time.perf_counter() - answer._started
                        text = trimmer.feed(piece)
                        if text:
                            answer.text += text
                            yield text
                        if trimmer.stopped:
                            break
                    if not trimmer.stopped:
                        tail = trimmer.flush()
                        if tail:
                            answer.text += tail
                            yield tail
                finally:
                    # A no-op when generation ended by itself; else it stops at the next token (the
                    # streamer's queue is unbounded, so nothing blocks on the pieces no one reads).
                    halt.set()
                    thread.join()
                if "error" in produced:
                    raise produced["error"]
                new = produced.get("new", [])
                answer.completion_tokens = len(new)
                hit_limit = len(new) >= self._max_new_tokens and not (new and new[-1] in engine._stops)
                answer.finish_reason = "length" if hit_limit and not trimmer.stopped else "stop"
                answer.seconds = time.perf_counter() - answer._started
        finally:
            self._release()
            with engine._lock:
                engine._evict()  # a retired version whose last request this was goes now


class _FairLock:
    """A lock granted in the order it was asked for.

    `threading.Lock` is not fair: under steady traffic a waiting adapter load could lose the race to
    every new request and never run, and a request could wait behind later ones. Tickets keep the
    order: a load queued behind one answer runs right after it, before requests that came later.
    """

    def __init__(self) -> None:
        self._turn = threading.Condition()
        self._next_ticket = 0
        self._serving = 0

    def __enter__(self) -> None:
        with self._turn:
            ticket = self._next_ticket
            self._next_ticket += 1
            while ticket != self._serving:
                self._turn.wait()

    def __exit__(self, *exc: object) -> None:
        with self._turn:
            self._serving += 1
            self._turn.notify_all()


class _StopTrimmer:
    """Cuts streamed text at the first stop string, holding back just enough characters that a stop
    string split across two pieces is never sent in part."""

    def __init__(self, stops: Sequence[str]):
        self.stops = [s for s in stops if s]
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.buffer = ""
        self.stopped = False

    def feed(self, piece: str) -> str:
        if not self.stops:
            return piece
        self.buffer += piece
        hits = [i for i in (self.buffer.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.stopped = True
            out, self.buffer = self.buffer[: min(hits)], ""
            return out
        cut = max(0, len(self.buffer) - self.hold)
        out, self.buffer = self.buffer[:cut], self.buffer[cut:]
        return out

    def flush(self) -> str:
        out, self.buffer = self.buffer, ""
        return out


def check_adapter_base(adapter: Any, base_model: str) -> None:
    """Refuse an adapter trained on another base model (its weights would load and answer nonsense)."""
    if adapter.base_model != base_model:
        raise ConfigError(f"adapter {adapter.name}@v{adapter.version} was trained on {adapter.base_model!r}, "
                          f"this server runs {base_model!r}: set CONTINUUM_BASE_MODEL to match")
