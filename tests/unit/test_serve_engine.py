"""The serving engine without HTTP: versions load under their own names, a moved alias retires the
old version only after its last request, answers are formatted as in training, stop strings cut."""

from __future__ import annotations

import pytest
import torch

from common.errors import ConfigError, ValidationError
from common.settings import Mode, Settings
from workers.serve.engine import BASE, ChatEngine, Version, _StopTrimmer

QUESTION = [{"role": "user", "content": "Where is the lighthouse?"}]


@pytest.fixture()
def engine(tmp_path):
    from workers.learning.lora import LoraSettings, attach_adapter
    from workers.learning.tiny import build_tiny_model, build_tokenizer

    folders = {}
    for version in (1, 2):
        torch.manual_seed(version)
        model = attach_adapter(build_tiny_model(0), LoraSettings(r=4, alpha=8, dropout=0.0))
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.5)
        model.save_pretrained(tmp_path / f"v{version}")
        folders[version] = tmp_path / f"v{version}"
    chat = ChatEngine(build_tiny_model(0), build_tokenizer(0), "builtin:tiny", max_versions=2)
    chat.folders = folders  # type: ignore[attr-defined]
    return chat


def _v(n: int) -> Version:
    return Version(f"default@v{n}", adapter_id=n, lineage="default", version=n)


def _answer(engine: ChatEngine, model: str | None, **kwargs) -> str:
    with engine.generate(QUESTION, model, max_new_tokens=kwargs.pop("max_new_tokens", 12), **kwargs) as generation:
        return "".join(generation)


def test_the_base_answers_until_an_adapter_is_followed_then_the_adapter_does(engine):
    from workers.learning.generation import generate_answers

    base = _answer(engine, None)
    # Formatted and decoded as evaluation does (same prompt, same stop tokens, greedy).
    assert base.strip() == generate_answers(engine.model, engine.tokenizer, [{"messages": QUESTION}], max_new_tokens=12)[0]
    engine.load(_v(1), engine.folders[1])
    engine.follow(["default", "production"], _v(1))
    adapted = _answer(engine, "production")
    assert adapted != base and _answer(engine, "default") == adapted and _answer(engine, None) == adapted
    assert engine._merged == "default@v1"  # float32: the followed version is merged into the weights
    assert _answer(engine, BASE) == base  # unmerged and disabled for `base`, not unloaded
    assert engine._merged is None and _answer(engine, "production") == adapted  # merged again, same answer
    engine._mergeable = lambda: False  # type: ignore[method-assign]
    assert _answer(engine, BASE) == base and _answer(engine, "production") == adapted  # unmerged LoRA: same
    assert engine._merged is None
    with pytest.raises(KeyError):
        engine.generate(QUESTION, "default@v9", max_new_tokens=4)
    with pytest.raises(ValidationError, match="last message must be the user's"):
        engine.generate(QUESTION + [{"role": "assistant", "content": "x"}], None, max_new_tokens=4)


def test_a_moved_alias_retires_the_old_version_after_its_last_request(engine):
    engine.load(_v(1), engine.folders[1])
    engine.follow(["default", "production"], _v(1))
    held = engine.generate(QUESTION, "production", max_new_tokens=8)  # resolved to v1, not started yet
    engine.load(_v(2), engine.folders[2])
    before = engine.follow(["default", "production"], _v(2))
    assert before == _v(1)
    assert engine.has("default@v1")  # still held by the request in flight
    with held:
        text = "".join(held)
    assert held.answer.model == "default@v1" and text
    assert not engine.has("default@v1") and engine.has("default@v2")  # unloaded when it ended
    assert engine.resolve("production") == _v(2)


def test_the_cap_unloads_the_least_recently_used_version_never_the_followed_one(engine):
    engine.load(_v(1), engine.folders[1])
    engine.follow(["default"], _v(1))
    engine.load(_v(2), engine.folders[2])
    assert {v.name for v in engine.loaded} == {"default@v1", "default@v2"}
    engine.load(Version("other@v1", 3, "other", 1), engine.folders[2])  # a third: over the cap of 2
    assert {v.name for v in engine.loaded} == {"default@v1", "other@v1"}


def test_max_tokens_gives_length_and_a_stop_string_cuts_the_answer(engine):
    with engine.generate(QUESTION, None, max_new_tokens=3) as generation:
        "".join(generation)
    assert generation.answer.completion_tokens == 3 and generation.answer.finish_reason == "length"
    engine.load(_v(1), engine.folders[1])  # its random weights give a varied answer to cut
    full = _answer(engine, "default@v1", max_new_tokens=24)
    cut_at = full[6:9]
    assert len(set(full)) > 3 and cut_at
    with engine.generate(QUESTION, "default@v1", max_new_tokens=24, stop=[cut_at]) as generation:
        cut = "".join(generation)
    assert cut == full[: full.find(cut_at)] and generation.answer.finish_reason == "stop"
    assert generation.answer.completion_tokens < 24


def test_the_stop_trimmer_never_sends_part_of_a_stop_string():
    trimmer = _StopTrimmer(["END"])
    sent = [trimmer.feed(p) for p in ["abc E", "N", "D tail"]]
    assert "".join(sent) == "abc " and trimmer.stopped
    quiet = _StopTrimmer(["END"])
    assert "".join([quiet.feed("abc E"), quiet.feed("x"), quiet.flush()]) == "abc Ex"


def test_distributed_mode_refuses_a_missing_or_weak_serving_token():
    for token in ("", "changeme", "short"):
        with pytest.raises(ConfigError, match="CONTINUUM_SERVE_TOKEN"):
            Settings(mode=Mode.distributed, serve_token=token).check_serve_token()
    assert Settings(mode=Mode.distributed, serve_token="a-long-enough-token").check_serve_token()
    assert Settings(mode=Mode.embedded).check_serve_token() == ""


def test_the_followed_alias_answers_with_the_base_until_it_points_somewhere(engine):
    with pytest.raises(KeyError):
        engine.resolve("production")
    engine.expect("production")
    assert engine.resolve("production") is None and engine.resolve(None) is None
    engine.load(_v(1), engine.folders[1], follow=["default", "production"])
    assert engine.resolve("production") == _v(1) and engine.resolve(None) == _v(1)
