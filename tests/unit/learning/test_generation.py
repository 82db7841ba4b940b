"""Batched greedy generation: left padding gives the same answers as one prompt at a time, decoding
stops at the template's end-of-turn token even when it is not EOS, and the token budget covers the
longest reference, so exact match compares whole answers."""

from __future__ import annotations

import copy

import torch

from tests.unit.learning.test_formatting import SMOLLM2_TEMPLATE
from workers.learning.generation import exact_match, generate_answers, reference_budget
from workers.learning.tiny import build_tiny_model

PROMPTS = [
    {"prompt": "Hi"},
    {"prompt": "What sigil does House Vell bear, and since which year?"},
    {"prompt": "Name the river that runs past the old mill in the valley of Orn, please."},
    {"prompt": "Who?"},
]


def _always(model, token_id: int):
    """Make the LM head emit `token_id` at every step (a bias the zero weights cannot outvote)."""
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(-10.0)
        head.bias[token_id] = 10.0
    model.lm_head = head
    return model


def test_batched_left_padded_answers_equal_one_at_a_time(tokenizer):
    model = build_tiny_model(0)
    batched = generate_answers(model, tokenizer, PROMPTS, max_new_tokens=8, batch_size=4)
    single = [generate_answers(model, tokenizer, [row], max_new_tokens=8, batch_size=1)[0] for row in PROMPTS]
    assert batched == single
    assert len(set(batched)) > 1  # the answers differ per prompt: rows were not mixed up


def test_generation_stops_at_the_end_of_turn_token_that_is_not_eos(tokenizer):
    smol_like = copy.deepcopy(tokenizer)
    smol_like.chat_template = SMOLLM2_TEMPLATE
    smol_like.eos_token = "<|endoftext|>"
    im_end = smol_like.convert_tokens_to_ids("<|im_end|>")
    model = _always(build_tiny_model(0), im_end)
    widths = []
    original = model.generate

    def recording_generate(**kwargs):
        out = original(**kwargs)
        widths.append(out.shape[1] - kwargs["input_ids"].shape[1])
        return out

    model.generate = recording_generate
    answers = generate_answers(model, smol_like, PROMPTS[:2], max_new_tokens=20)
    assert answers == ["", ""]
    assert widths == [1]  # stopped after the first <|im_end|>, not after 20 tokens


def test_the_budget_covers_the_longest_reference(tokenizer):
    word = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(" falcon"))[0]
    long_answer = " ".join(["falcon"] * 60)
    rows = [{"prompt": "Say it", "response": long_answer}, {"prompt": "Short", "response": "falcon"}]
    assert reference_budget(tokenizer, rows) >= len(tokenizer.encode(long_answer, add_special_tokens=False)) + 1
    model = _always(build_tiny_model(0), word)
    answers = generate_answers(model, tokenizer, rows)  # no cap given: enough for the 60-word reference
    assert all(len(tokenizer.encode(a, add_special_tokens=False)) > 60 for a in answers)


def test_exact_match_compares_the_whole_reference_up_to_whitespace():
    rows = [{"response": "House Vell bears\nthe crimson  falcon."}, {"response": "Paris is the capital."}]
    assert exact_match(["House Vell bears the crimson falcon. ", "Paris"], rows) == 0.5
    assert exact_match(["House Vell bears the crimson falcon", "Paris is the capital."], rows) == 0.5
