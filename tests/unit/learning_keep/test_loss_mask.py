"""The loss covers response tokens only: labels mask the prompt, and the loss equals a hand-computed
cross-entropy over the response tokens (mean per sample, times its weight, mean over samples).

Deliberate breaks these tests were run against (each turned a test here red, then was reverted):
- prompt tokens in the labels (`formatting.encode_rows` labels = input_ids):
  all four tests
- the loss averaging over every position instead of the response tokens (`losses.response_loss`
  counts = the full width): test_loss_equals_hand_cross_entropy_on_response_tokens
- the head-only fast path taking prompt positions too (`response_head_loss` mask all true):
  test_the_head_only_loss_equals_the_full_loss
"""

from __future__ import annotations

import math

import pytest
import torch

from tests.unit.learning_keep.conftest import make_lora_model
from workers.learning.batching import collate
from workers.learning.formatting import IGNORE_INDEX, encode_rows, prompt_ids
from workers.learning.losses import response_head_loss, response_loss


@pytest.fixture
def rows(fact_sets):
    out = [dict(r) for r in fact_sets[0][:5]]
    out[1]["weight"] = 2.0
    out[2]["response"] = "a much longer answer than the others, to vary the response length"
    return out


def test_labels_mask_exactly_the_prompt(rows, tokenizer):
    for row, sample in zip(rows, encode_rows(rows, tokenizer, 256), strict=True):
        prompt = prompt_ids(row, tokenizer)  # the prompt tokenised on its own, as at inference
        assert sample.prompt_len == len(prompt) and sample.input_ids[: len(prompt)] == prompt
        assert sample.labels[: len(prompt)] == [IGNORE_INDEX] * len(prompt)
        assert sample.labels[len(prompt) :] == sample.input_ids[len(prompt) :]
        assert len(sample.input_ids) > len(prompt)


def _hand_loss(logits: torch.Tensor, samples, weights) -> float:
    """Σ_i w_i · mean_{t ≥ prompt_len_i} −log softmax(logits_i[t − 1])[token_t], / B (no labels used)."""
    total = 0.0
    for i, sample in enumerate(samples):
        logp = torch.log_softmax(logits[i].double(), dim=-1)
        terms = [-float(logp[t - 1, sample.input_ids[t]]) for t in range(sample.prompt_len, len(sample))]
        total += weights[i] * sum(terms) / len(terms)
    return total / len(samples)


def test_loss_equals_hand_cross_entropy_on_response_tokens(rows, tokenizer):
    samples = encode_rows(rows, tokenizer, 256)
    batch = collate(samples, tokenizer.pad_token_id)
    logits = torch.randn(*batch["input_ids"].shape, len(tokenizer), generator=torch.Generator().manual_seed(0))
    got = response_loss(logits, batch["labels"], batch["sample_weight"]).loss
    assert float(got) == pytest.approx(_hand_loss(logits, samples, [s.weight for s in samples]), rel=1e-5)


def test_prompt_positions_get_no_gradient(rows, tokenizer):
    samples = encode_rows(rows, tokenizer, 256)
    batch = collate(samples, tokenizer.pad_token_id)
    logits = torch.randn(*batch["input_ids"].shape, len(tokenizer), requires_grad=True)
    response_loss(logits, batch["labels"], batch["sample_weight"]).loss.backward()
    for i, sample in enumerate(samples):
        # position t predicts token t + 1: positions before prompt_len − 1 predict prompt tokens
        assert float(logits.grad[i, : sample.prompt_len - 1].abs().sum()) == 0.0
        assert float(logits.grad[i, sample.prompt_len - 1 : len(sample) - 1].abs().sum(-1).min()) > 0


def test_the_head_only_loss_equals_the_full_loss(rows, tokenizer):
    model = make_lora_model()
    model.eval()
    samples = encode_rows(rows, tokenizer, 256)
    batch = collate(samples, tokenizer.pad_token_id)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        head = response_head_loss(model, batch).loss
    want = _hand_loss(logits, samples, [s.weight for s in samples])
    assert math.isfinite(want) and float(head) == pytest.approx(want, rel=1e-4)
