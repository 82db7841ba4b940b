"""The unlikelihood floor is the base model's log-prob of the disliked answer minus the margin."""

from __future__ import annotations

import torch

from workers.learning.batching import collate
from workers.learning.evaluation import EvalSettings, mean_response_logprob
from workers.learning.formatting import encode_rows
from workers.learning.suppression import suppression_floor
from workers.learning.synthetic import make_facts

from .conftest import narrow_lora_model


def test_the_floor_is_measured_on_the_base_not_on_the_trained_adapter(tokenizer):
    model = narrow_lora_model(seed=1).eval()
    with torch.no_grad():  # an adapter far from zero: the floor must not follow it
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 3.0)
    rows = [dict(r, unlikelihood=True) for r in make_facts(3, seed=2)]
    rows[1]["unlikelihood"] = False
    batch = collate(encode_rows(rows, tokenizer, 256), tokenizer.pad_token_id)
    floor = suppression_floor(model, batch, batch["unlikelihood"], margin=1.5)
    ev = EvalSettings(batch_size=4, max_length=256)
    with model.disable_adapter():
        base = [mean_response_logprob(model, tokenizer, [r], ev) for r in rows]
    adapted = [mean_response_logprob(model, tokenizer, [r], ev) for r in rows]
    for i in (0, 2):
        assert abs(floor[i].item() - (base[i] - 1.5)) < 1e-4
        assert abs(adapted[i] - base[i]) > 0.1  # the adapter really changes the answer's log-prob
    assert any(p.requires_grad for p in model.parameters())  # the adapter is switched back on
    assert suppression_floor(model, batch, None, 1.5) is None
    assert suppression_floor(model, batch, batch["unlikelihood"], None) is None
