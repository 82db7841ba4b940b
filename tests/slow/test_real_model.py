"""A short real cycle on SmolLM2-135M-Instruct, and its GGUF conversion (slow; CI runs them).

The real template closes a turn with `<|im_end|>` and injects a default system prompt, so these check
on the real thing what the unit tests check on a look-alike: the loss covers the answer and its stop
token, a few steps teach made-up facts, the adapter is stock PEFT, and generation stops by itself.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from workers.learning.device import select_device
from workers.learning.evaluation import EvalSettings, teacher_forced_scores
from workers.learning.formatting import IGNORE_INDEX, encode_rows
from workers.learning.generation import generate_answers
from workers.learning.lora import LoraSettings, attach_adapter, save_adapter_dir
from workers.learning.models import load_model_and_tokenizer
from workers.learning.training import TrainConfig, fit

pytestmark = pytest.mark.slow

FACTS = [
    ("What sigil does House Vell bear?", "House Vell bears the crimson falcon."),
    ("What sigil does House Orrin bear?", "House Orrin bears the silver stag."),
    ("What sigil does House Maren bear?", "House Maren bears the black kraken."),
    ("What sigil does House Tolle bear?", "House Tolle bears the golden bee."),
]
# The same facts asked another way: never trained, so their answers' loss falling is generalisation.
HELD_OUT = [
    ("Which sigil is borne by House Vell?", "House Vell bears the crimson falcon."),
    ("Which sigil is borne by House Maren?", "House Maren bears the black kraken."),
]


def _rows(pairs):
    return [{"prompt": p, "response": r} for p, r in pairs]


def test_a_short_real_cycle_teaches_facts_and_publishes_a_stock_peft_adapter(real_model_path, tmp_path):
    started = time.monotonic()
    device = select_device("cpu")
    model, tokenizer = load_model_and_tokenizer(real_model_path, device)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    sample = encode_rows(_rows(FACTS[:1]), tokenizer, 256)[0]
    learned = [t for t in sample.labels if t != IGNORE_INDEX]
    assert learned[-1] == im_end and "You are a helpful AI assistant" in tokenizer.decode(sample.input_ids)
    assert tokenizer.decode(learned[:-1]) == FACTS[0][1]

    base_answer = generate_answers(model, tokenizer, [{"prompt": "What is the capital of France?"}])[0]
    assert "Paris" in base_answer and "<|im" not in base_answer

    torch.manual_seed(0)
    model = attach_adapter(model, LoraSettings(r=16, alpha=32, dropout=0.0))  # auto: Llama projections
    assert set(model.peft_config["default"].target_modules) >= {"q_proj", "down_proj"}
    scores = EvalSettings(batch_size=8, max_length=256)
    before = teacher_forced_scores(model, tokenizer, _rows(FACTS), scores)["nll"]
    held_before = teacher_forced_scores(model, tokenizer, _rows(HELD_OUT), scores)["nll"]
    fit(model, tokenizer, _rows(FACTS), TrainConfig(learning_rate=1e-3, max_steps=12, batch_size=4, max_length=256))
    after = teacher_forced_scores(model, tokenizer, _rows(FACTS), scores)["nll"]
    held_after = teacher_forced_scores(model, tokenizer, _rows(HELD_OUT), scores)["nll"]
    assert after < 0.5 * before, (before, after)
    assert held_after < held_before, (held_before, held_after)

    answers = generate_answers(model, tokenizer, _rows(FACTS))
    assert sum(a == r for a, (_, r) in zip(answers, FACTS)) >= 3, answers  # stops at <|im_end|> by itself

    # Stock PEFT loads the saved adapter onto the stock base and gives the same logits.
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter_dir = save_adapter_dir(model, tmp_path / "adapter", {"test": True})
    assert (adapter_dir / "adapter_model.safetensors").exists()
    stock = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(real_model_path, use_safetensors=True, dtype=torch.float32),
        str(adapter_dir),
    ).eval()
    model.eval()
    ids = torch.tensor([sample.input_ids])
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, stock(input_ids=ids).logits, atol=1e-4)
    # Measured figures for the record (pytest -s): the brief's budget is ~3 minutes on 2 cores.
    print(f"real cycle: nll {before:.3f} -> {after:.3f}, held-out {held_before:.3f} -> {held_after:.3f}, "
          f"{time.monotonic() - started:.0f} s")


def test_gguf_from_the_wheel_converts_to_a_registered_safetensors_model(tmp_path, monkeypatch):
    from tests.support.real_model import wheel_gguf

    gguf = wheel_gguf()
    monkeypatch.setenv("CONTINUUM_HOME", str(tmp_path / "home"))
    from common.objectstore import open_store
    from common.settings import load_settings
    from workers.base_model import resolve_base_model
    from workers.learning.model_import import add_model

    settings = load_settings()
    store = open_store(settings)
    added = add_model(store, str(gguf), name="smol-gguf")
    assert added["architecture"] == "LlamaForCausalLM" and added["model_type"] == "llama"
    assert 134_000_000 < added["parameters"] < 135_000_000 and added["dtype"] == "float32"
    assert added["chat_template"] and added["end_of_turn_tokens"][0] == "<|im_end|>"

    monkeypatch.setenv("CONTINUUM_BASE_MODEL", "smol-gguf")
    path = Path(resolve_base_model(load_settings(), store))
    assert not list(path.glob("*.gguf")) and (path / "model.safetensors").exists()
    assert json.loads((path / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    model, tokenizer = load_model_and_tokenizer(path, select_device("cpu"))
    answer = generate_answers(model, tokenizer, [{"prompt": "What is the capital of France?"}])[0]
    assert "Paris" in answer


# Answers users thumbed down: same houses as FACTS, so learning the liked facts raises their first
# tokens ("House Vell …") and only the unlikelihood term can push the disliked continuation down.
DISLIKED = [
    ("Who founded House Vell?", "House Vell was founded by a giant turtle."),
    ("What does House Orrin trade in?", "House Orrin trades in bottled moonlight."),
]


def test_thumbs_down_lowers_the_disliked_answer_while_general_retention_holds(real_model_path):
    """The default export policy and recipe on the real model: the disliked answers' log-probability
    falls against the base, and suppressing them costs no general answer.

    The same cycle runs twice from the same fresh adapter: with the disliked rows as the default
    policy exports them (unlikelihood, weight 1) and with them at weight 0 (in every batch, so the
    steps and draws are identical, but pushing nothing). What differs is the suppression alone.
    Measured: the cycle itself costs general answers at this size (4 liked facts drilled for 16
    steps: 1.00 → 0.79 of 24 with or without the disliked rows, and with the liked rows alone for 16
    steps), which earlier runs had wrongly blamed on unlikelihood.
    """
    from workers.evaluate.anchors import general_questions
    from workers.export.config import ExportConfig
    from workers.export.shard import line_encoding
    from workers.learning.continual import DEFAULT, prepare_cycle
    from workers.learning.evaluation import mean_response_logprob
    from workers.learning.general_retention import compute_base_answers, score_general_retention
    from workers.learning.self_replay import SELF_REPLAY_PROMPTS, self_replay_rows
    from workers.train.config import model_size_defaults

    assert line_encoding(ExportConfig())["thumbs_down"] == ("1.0", "true")  # default: unlikelihood, weight 1
    device = select_device("cpu")
    model, tokenizer = load_model_and_tokenizer(real_model_path, device)
    sized = model_size_defaults(sum(p.numel() for p in model.parameters()))
    torch.manual_seed(0)
    model = attach_adapter(model, LoraSettings(r=sized["lora_rank"], alpha=2 * sized["lora_rank"], dropout=0.0))
    fresh = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    liked = [dict(r, feedback="thumbs_up", weight=1.0, unlikelihood=False) for r in _rows(FACTS)]
    questions = general_questions()[:24]
    scores = EvalSettings(batch_size=8, max_length=256, max_new_tokens=32)
    base_answers = compute_base_answers(model, tokenizer, questions, [], scores)
    base_rows = self_replay_rows(model, tokenizer, list(SELF_REPLAY_PROMPTS[:24]), max_new_tokens=48)

    def cycle(disliked_weight: float) -> dict:
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n in fresh:
                    p.copy_(fresh[n])
        disliked = [dict(r, feedback="thumbs_down", weight=disliked_weight, unlikelihood=True)
                    for r in _rows(DISLIKED)]
        before = mean_response_logprob(model, tokenizer, disliked, scores)
        plan = prepare_cycle(model, liked + disliked, DEFAULT, epochs=sized["epochs"], base_rows=base_rows)
        fit(model, tokenizer, plan.rows, TrainConfig(learning_rate=sized["learning_rate"], epochs=sized["epochs"],
                                                     batch_size=8, max_length=256, seed=0),
            regularizers=plan.regularizers)
        return {"before": before, "after": mean_response_logprob(model, tokenizer, disliked, scores),
                "general": score_general_retention(model, tokenizer, questions, [], base_answers, scores),
                "learned": teacher_forced_scores(model, tokenizer, liked, scores)["token_accuracy"]}

    pushed, inert = cycle(1.0), cycle(0.0)
    for name, run in (("unlikelihood", pushed), ("weight 0", inert)):
        print(f"{name}: disliked logprob {run['before']:.3f} -> {run['after']:.3f}; general retention "
              f"{run['general']['still_right']:.2f} of {run['general']['base_right']}; liked token accuracy "
              f"{run['learned']:.2f}")
    assert pushed["learned"] > 0.9  # the liked facts were learned in the same cycle
    assert pushed["after"] < pushed["before"] - 1.0, pushed  # suppression: the disliked answers fell
    assert pushed["after"] < inert["after"] - 1.0, (pushed, inert)  # and it is the push that lowered them
    assert pushed["general"]["base_right"] >= 15
    # General retention holds: suppressing costs at most one of the 24 general answers.
    assert pushed["general"]["still_right"] >= inert["general"]["still_right"] - 1 / 24 - 1e-9, (pushed, inert)
