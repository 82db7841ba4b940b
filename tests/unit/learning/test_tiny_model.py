"""The built-in tiny model: deterministic per seed, loadable by stock transformers, chat template round-trips."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from workers.learning.formatting import encode_rows, prompt_text
from workers.learning.synthetic import make_facts, make_feedback_like
from workers.learning.tiny import EOS, build_tiny_model, build_tokenizer, write_tiny_model

from .conftest import NARROW


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_same_seed_same_weights_other_seed_differs(tmp_path):
    a, b, c = (_state(build_tiny_model(s, **NARROW)) for s in (7, 7, 8))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if "weight" in k and "norm" not in k)

    # Written to disk and read back by stock transformers: still the same weights.
    path = write_tiny_model(tmp_path / "m", seed=7, **NARROW)
    loaded = AutoModelForCausalLM.from_pretrained(path)
    assert all(torch.equal(loaded.state_dict()[k], a[k]) for k in a)
    assert (path / "model.safetensors").exists() and not list(path.glob("*.bin"))


def test_seeding_does_not_touch_the_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_model(0, **NARROW)
    assert torch.equal(torch.rand(3), expected)


def test_stock_autotokenizer_encodes_exactly_like_the_built_tokenizer(tiny_dir):
    built = build_tokenizer(0)
    stock = AutoTokenizer.from_pretrained(tiny_dir)
    texts = [r["prompt"] + "\n" + r["response"] for r in make_facts(30, seed=2) + make_feedback_like(20, seed=2)]
    texts.append("  spaces\n\nnewlines 12345 ünïcödé 日本語 <|im_end|>")
    for text in texts:
        assert stock.encode(text) == built.encode(text)
        assert stock.decode(stock.encode(text)) == text  # byte-level: lossless
    assert stock.eos_token == EOS and stock.pad_token_id is not None and stock.pad_token_id != stock.eos_token_id


def test_chat_template_formats_prompts_exactly_as_training(tiny_dir):
    stock = AutoTokenizer.from_pretrained(tiny_dir)
    row = make_facts(1, seed=5)[0]
    sample = encode_rows([row], stock, max_length=512)[0]
    prompt = sample.input_ids[: sample.prompt_len]

    # Inference: stock apply_chat_template with a generation prompt gives exactly the training prompt ids.
    rendered = stock.apply_chat_template([{"role": "user", "content": row["prompt"]}], add_generation_prompt=True,
                                         tokenize=False)
    assert rendered == prompt_text(row, stock)
    assert stock.encode(rendered, add_special_tokens=False) == prompt
    # The full conversation rendered by the template starts with the training sample (prompt + answer + EOS).
    full = stock.apply_chat_template(
        [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["response"]}],
        tokenize=False,
    )
    assert full.startswith(stock.decode(sample.input_ids))
    assert sample.input_ids[-1] == stock.eos_token_id
