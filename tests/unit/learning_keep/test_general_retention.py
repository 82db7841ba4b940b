"""General retention: containment scoring, the base via the disabled adapter, the anchors file, self-replay."""

from __future__ import annotations

import json

import pytest
import torch

from common.errors import ConfigError
from tests.unit.learning_keep.conftest import make_lora_model
from workers.evaluate.anchors import ANCHOR_PROMPTS, GENERAL_QUESTIONS, load_anchors_file, retention_sets
from workers.learning.evaluation import EvalSettings
from workers.learning.general_retention import (
    compute_base_answers,
    greedy,
    is_right,
    score_general_retention,
)
from tests.support.torch_threads import NARROW as SMALL
from workers.learning.lora import DEFAULT_TARGETS as ALL_LINEAR
from workers.learning.lora import LoraSettings, attach_adapter
from workers.learning.tiny import build_tiny_model
from workers.learning.training import TrainConfig, fit
from workers.learning.self_replay import SELF_REPLAY_PROMPTS, cut_to_sentence, self_replay_rows

SETTINGS = EvalSettings(max_new_tokens=12, batch_size=8)
PROMPTS = ["Say hello.", "What is two plus two?", "List three fruits.", "Name a colour.",
           "Count to five.", "What is water?", "Describe a cat.", "Spell model."]


@pytest.fixture(scope="module")
def knowing_base(tokenizer, fact_sets):
    """`(make_model, questions)`: a tiny base that knows 8 facts (a LoRA taught them, merged into the
    weights), each call wrapped with a fresh zero adapter. The random tiny model knows nothing, and a
    base that answers nothing right leaves still_right undefined."""
    facts = fact_sets[0][:8]
    teacher = make_lora_model(trained=False, targets=ALL_LINEAR)
    fit(teacher, tokenizer, facts, TrainConfig(learning_rate=1e-2, epochs=30, batch_size=8, seed=0))
    state = teacher.merge_and_unload().state_dict()

    def make_model():
        base = build_tiny_model(0, **SMALL)
        base.load_state_dict(state)
        torch.manual_seed(0)
        return attach_adapter(base, LoraSettings(r=8, alpha=16, dropout=0.0, target_modules=("q_proj", "v_proj")))

    questions = [{"prompt": f["prompt"], "answers": [f["response"]]} for f in facts]
    return make_model, questions


def test_containment_is_case_insensitive_at_a_word_start():
    assert is_right("The capital of France is PARIS.", ["Paris"])
    assert is_right("It has seven days", ["7", "seven"])
    assert not is_right("There are 17 of them", ["7"])  # "7" inside "17" is not an answer of 7
    assert is_right("They become butterflies.", ["butterfl"])  # open on the right: stems work
    assert not is_right("France bears the crimson falcon.", ["Paris"])
    assert not is_right("anything", [" "])  # blank accepted answers never match


def test_zero_adapter_keeps_every_right_answer(tokenizer, knowing_base):
    make_model, questions = knowing_base
    model = make_model()  # lora_B = 0: the adapted model is the base
    result = score_general_retention(model, tokenizer, questions, [q["prompt"] for q in questions], settings=SETTINGS)
    assert result["base_right"] >= 6  # the merged facts: the base answers them
    assert result["still_right"] == 1.0
    assert result["agreement"] == 1.0
    assert result["kl_drift"] == pytest.approx(0.0, abs=1e-6)
    assert (result["questions"], result["prompts"]) == (len(questions), len(questions))


def test_a_broken_adapter_loses_right_answers_against_the_disabled_base(tokenizer, knowing_base):
    make_model, questions = knowing_base
    model = make_model()
    with torch.no_grad():  # break the adapter on purpose: a large random ΔW
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=2.0)
    # base_answers not given: they must come from the adapter-disabled model, not the broken one.
    result = score_general_retention(model, tokenizer, questions, [q["prompt"] for q in questions], settings=SETTINGS)
    assert result["base_right"] >= 6
    assert result["still_right"] < 0.5
    assert result["agreement"] < 0.5
    assert result["kl_drift"] > 1e-3  # a zero adapter measures ~1e-7


def test_given_base_answers_are_used_and_checked(tokenizer, knowing_base):
    make_model, questions = knowing_base
    model = make_model()
    base = compute_base_answers(model, tokenizer, questions, PROMPTS, SETTINGS)
    wrong = {"questions": ["no idea"] * len(questions), "prompts": base["prompts"]}
    result = score_general_retention(model, tokenizer, questions, PROMPTS, base_answers=wrong, settings=SETTINGS)
    assert result["base_right"] == 0 and result["still_right"] is None  # nothing the base got right
    with pytest.raises(ValueError, match="recompute"):
        score_general_retention(model, tokenizer, questions, PROMPTS[:2], base_answers=base, settings=SETTINGS)


def test_builtin_sets_are_sane():
    assert len(GENERAL_QUESTIONS) >= 60 and len(ANCHOR_PROMPTS) >= 30
    # A lone letter would be "contained" in almost any answer; digits are fine at a word start.
    assert not any(len(a) == 1 and a.isalpha() for _, answers in GENERAL_QUESTIONS for a in answers)
    # Self-replay must not train on what general retention scores, or still_right measures recall.
    probes = {q for q, _ in GENERAL_QUESTIONS} | set(ANCHOR_PROMPTS)
    assert not probes & set(SELF_REPLAY_PROMPTS)


def test_anchors_file_rows_join_questions_or_prompts(tmp_path):
    path = tmp_path / "anchors.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"prompt": "Who runs support?", "answer": "Ada"},
        {"prompt": "Our HQ city?", "answer": ["Leeds", "Leeds, UK"]},
        {"prompt": "Summarise our refund policy."},
    ]) + "\n\n")
    questions, prompts = load_anchors_file(path)
    assert questions == [{"prompt": "Who runs support?", "answers": ["Ada"]},
                         {"prompt": "Our HQ city?", "answers": ["Leeds", "Leeds, UK"]}]
    assert prompts == ["Summarise our refund policy."]
    all_questions, all_prompts = retention_sets(path)
    assert len(all_questions) == len(GENERAL_QUESTIONS) + 2 and all_prompts[-1] == prompts[0]


@pytest.mark.parametrize("content, why", [
    ('{"prompt": "ok"}\nnot json\n', "line 2 is not JSON"),
    ('{"answer": "x"}\n', 'line 1 has no non-empty string "prompt"'),
    ('{"prompt": "q", "answer": 3}\n', 'line 1: "answer" must be'),
    ("\n", "holds no rows"),
])
def test_a_bad_anchors_file_is_one_line_naming_the_setting(tmp_path, content, why):
    path = tmp_path / "anchors.jsonl"
    path.write_text(content)
    with pytest.raises(ConfigError) as info:
        load_anchors_file(path)
    message = str(info.value)
    assert message.startswith("CONTINUUM_ANCHORS_FILE=") and why in message and "\n" not in message
    with pytest.raises(ConfigError, match="cannot read"):
        load_anchors_file(tmp_path / "missing.jsonl")


def test_self_replay_rows_are_the_base_answers(tokenizer, knowing_base):
    make_model, questions = knowing_base
    model = make_model()
    prompts = [q["prompt"] for q in questions]
    with torch.no_grad():  # a changed adapter: its answers differ from the base's
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=2.0)
    rows = self_replay_rows(model, tokenizer, prompts, max_new_tokens=16, batch_size=8)
    assert len(rows) >= 6 and all(r["self_replay"] and r["feedback"] == "thumbs_up" for r in rows)
    by_prompt = {r["prompt"]: r["response"] for r in rows}
    right = [q for q in questions if by_prompt.get(q["prompt"]) == q["answers"][0]]
    assert len(right) >= 6  # the base's (merged) answers, not the changed adapter's


def test_cut_to_sentence():
    assert cut_to_sentence("Paris is big. It has a tower and") == "Paris is big."
    assert cut_to_sentence("No end here") == "No end here"
    assert cut_to_sentence("Version 2.5 is out! Then") == "Version 2.5 is out!"
