"""Loss only on response tokens, none on padding, and bucketing that never mixes samples."""

from __future__ import annotations

import torch

from workers.learning.batching import bucket_batches, collate
from workers.learning.formatting import IGNORE_INDEX, encode_rows
from workers.learning.losses import head_only_supported, response_head_loss, response_loss
from workers.learning.synthetic import feedback_row, make_facts, make_feedback_like

from .conftest import narrow_lora_model


def test_labels_mask_the_prompt_and_truncation_keeps_the_response(tokenizer):
    row = feedback_row("word " * 300, "the answer")
    full = encode_rows([row], tokenizer, max_length=2048)[0]
    cut = encode_rows([row], tokenizer, max_length=32)[0]
    response = tokenizer.encode("the answer", add_special_tokens=False) + [tokenizer.eos_token_id]
    for sample in (full, cut):
        assert sample.labels[: sample.prompt_len] == [IGNORE_INDEX] * sample.prompt_len
        assert sample.labels[sample.prompt_len :] == response == sample.input_ids[sample.prompt_len :]
    assert len(cut) == 32
    assert cut.input_ids[: cut.prompt_len] == full.input_ids[full.prompt_len - cut.prompt_len : full.prompt_len]


def test_messages_rows_use_the_conversation_up_to_the_last_user_turn(tokenizer):
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                {"role": "user", "content": "capital of Zorvania?"}]
    row = feedback_row("capital of Zorvania?", "Quelmar", messages=messages + [{"role": "assistant", "content": "x"}])
    sample = encode_rows([row], tokenizer, 512)[0]
    expected = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert tokenizer.decode(sample.input_ids[: sample.prompt_len]) == expected


def test_loss_ignores_prompt_and_padding_positions(tokenizer):
    samples = encode_rows(make_facts(4, seed=1) + make_feedback_like(2, seed=1, max_tokens=64), tokenizer, 512)
    batch = collate(samples, tokenizer.pad_token_id)
    logits = torch.randn(*batch["input_ids"].shape, len(tokenizer), requires_grad=True)  # (B, T, V)
    out = response_loss(logits, batch["labels"], batch["sample_weight"])
    out.loss.backward()
    grad_rows = logits.grad.abs().sum(-1)  # (B, T)
    for row, s in enumerate(samples):
        # Position t predicts token t+1: only positions prompt_len-1 .. len-2 carry loss.
        assert grad_rows[row, : s.prompt_len - 1].eq(0).all()
        assert grad_rows[row, s.prompt_len - 1 : len(s) - 1].gt(0).all()
        assert grad_rows[row, len(s) - 1 :].eq(0).all()  # last real token and padding
    # Changing prompt labels/tokens' logits changes nothing; changing a response token's logit does.
    with torch.no_grad():
        bumped = logits.detach().clone()
        start = samples[0].prompt_len
        bumped[0, : start - 1] += 5.0 * torch.randn_like(bumped[0, : start - 1])
        assert torch.equal(response_loss(bumped, batch["labels"], batch["sample_weight"]).loss, out.loss.detach())
        bumped[0, start, batch["labels"][0, start + 1]] += 5.0
        assert not torch.equal(response_loss(bumped, batch["labels"], batch["sample_weight"]).loss, out.loss.detach())


def test_per_sample_loss_is_the_same_alone_or_padded_in_a_batch(tokenizer):
    model = narrow_lora_model().eval()
    samples = encode_rows(make_feedback_like(4, seed=3, min_tokens=16, max_tokens=200), tokenizer, 512)
    batch = collate(samples, tokenizer.pad_token_id)
    assert batch["attention_mask"].eq(0).any()  # there is padding to ignore
    with torch.no_grad():
        batched = response_loss(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                                batch["labels"], batch["sample_weight"]).per_sample
        for i, s in enumerate(samples):
            one = collate([s], tokenizer.pad_token_id)
            alone = response_loss(model(input_ids=one["input_ids"], attention_mask=one["attention_mask"]).logits,
                                  one["labels"], one["sample_weight"]).per_sample[0]
            torch.testing.assert_close(batched[i], alone, rtol=1e-4, atol=1e-5)
        # Logits for the response positions only give the same loss as the full logits.
        keep = batch["input_ids"].size(1) - min(s.prompt_len for s in samples) + 1
        trimmed = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=keep)
        torch.testing.assert_close(
            response_loss(trimmed.logits, batch["labels"], batch["sample_weight"]).per_sample, batched)


def test_sample_weights_and_unlikelihood():
    torch.manual_seed(0)
    labels = torch.tensor([[IGNORE_INDEX, 3, 4], [IGNORE_INDEX, 3, 4]])
    logits = torch.randn(2, 3, 8)
    base = response_loss(logits, labels, torch.tensor([1.0, 1.0])).per_sample
    weighted = response_loss(logits, labels, torch.tensor([2.0, 0.0])).per_sample
    torch.testing.assert_close(weighted, base * torch.tensor([2.0, 0.0]))

    # Unlikelihood: a gradient step lowers the flagged sample's token probabilities; finite when p → 1.
    logits = torch.zeros(1, 3, 8, requires_grad=True)
    flagged = torch.tensor([True])
    out = response_loss(logits, labels[:1], torch.tensor([1.0]), unlikelihood=flagged)
    out.loss.backward()
    p_before = torch.softmax(logits.detach(), -1)[0, 0, 3]
    p_after = torch.softmax(logits.detach() - 1.0 * logits.grad, -1)[0, 0, 3]
    assert p_after < p_before
    sure = torch.full((1, 3, 8), -50.0)
    sure[0, 0, 3] = sure[0, 1, 4] = 50.0
    assert torch.isfinite(response_loss(sure, labels[:1], torch.tensor([1.0]), unlikelihood=flagged).loss)


def test_bucketing_covers_every_sample_once_and_groups_lengths():
    lengths = [16 + (i * 37) % 497 for i in range(400)]
    batches = bucket_batches(lengths, batch_size=8, seed=1, epoch=0)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(400))  # no sample lost, none duplicated
    assert all(1 <= len(b) <= 8 for b in batches)
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    torch.manual_seed(0)
    random_batches = torch.randperm(400).view(-1, 8).tolist()
    random_padded = sum(len(b) * max(lengths[i] for i in b) for b in random_batches)
    assert padded / sum(lengths) < 1.1 < random_padded / sum(lengths)
    # Deterministic per (seed, epoch), different across epochs; a token budget is respected.
    assert batches == bucket_batches(lengths, 8, seed=1, epoch=0)
    assert batches != bucket_batches(lengths, 8, seed=1, epoch=1)
    capped = bucket_batches(lengths, 64, seed=1, max_tokens=1024)
    assert all(len(b) * max(lengths[i] for i in b) <= 1024 for b in capped)


def test_collate_contract(tokenizer):
    samples = encode_rows(make_facts(3, seed=4), tokenizer, 512)
    batch = collate(samples, tokenizer.pad_token_id)
    assert {k: (v.dtype, v.dim()) for k, v in batch.items()} == {
        "input_ids": (torch.long, 2), "attention_mask": (torch.long, 2), "labels": (torch.long, 2),
        "sample_weight": (torch.float32, 1), "unlikelihood": (torch.bool, 1), "self_replay": (torch.bool, 1)}
    for row, s in enumerate(samples):  # each row holds exactly one sample, right-padded
        assert batch["input_ids"][row, : len(s)].tolist() == s.input_ids
        assert batch["attention_mask"][row].sum() == len(s)
        assert batch["labels"][row, len(s) :].eq(IGNORE_INDEX).all()


def test_head_only_fast_path_equals_the_full_logits_loss_and_gradients(tokenizer):
    model = narrow_lora_model(seed=2).eval()
    assert head_only_supported(model)
    rows = make_facts(3, seed=8) + make_feedback_like(3, seed=8, max_tokens=80)
    rows[1]["unlikelihood"] = True
    batch = collate(encode_rows(rows, tokenizer, 512), tokenizer.pad_token_id)
    lora = [p for n, p in model.named_parameters() if p.requires_grad]

    full = response_loss(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                         batch["labels"], batch["sample_weight"], batch["unlikelihood"])
    full_grads = torch.autograd.grad(full.loss, lora)
    fast = response_head_loss(model, batch, batch["unlikelihood"])
    fast_grads = torch.autograd.grad(fast.loss, lora)
    torch.testing.assert_close(fast.per_sample, full.per_sample, rtol=1e-5, atol=1e-6)
    assert torch.equal(fast.response_tokens, full.response_tokens)
    for a, b in zip(fast_grads, full_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def test_a_disliked_answer_never_pushes_its_end_of_turn_down(tokenizer):
    """Unlikelihood covers the disliked answer's content; its end-of-turn token is out of the loss
    (pushed down, it would teach the model not to end its answers)."""
    from workers.learning.formatting import IGNORE_INDEX, end_of_turn_ids

    row = make_facts(1, seed=5)[0]
    liked, disliked = encode_rows([row, dict(row, unlikelihood=True)], tokenizer, 512)
    stops = set(end_of_turn_ids(tokenizer))
    assert liked.labels[-1] in stops and disliked.input_ids == liked.input_ids
    assert disliked.labels[-1] == IGNORE_INDEX
    assert [t for t in disliked.labels if t != IGNORE_INDEX] == [t for t in liked.labels[:-1] if t != IGNORE_INDEX]


def test_unlikelihood_stops_once_the_row_is_below_its_floor():
    """A flagged row at or below its floor adds no loss and no gradient; above it, the usual push.
    Unflagged rows are never gated, whatever their floor says."""
    labels = torch.tensor([[IGNORE_INDEX, 3, 4], [IGNORE_INDEX, 3, 4]])
    logits = torch.zeros(2, 3, 8, requires_grad=True)  # every token at log(1/8) = -2.08
    flagged = torch.tensor([True, False])
    above = torch.tensor([-3.0, -3.0])  # the flagged row is above its floor: still pushed
    below = torch.tensor([-1.0, -1.0])  # the flagged row is already below: done
    pushed = response_loss(logits, labels, torch.ones(2), unlikelihood=flagged, stop_below=above)
    done = response_loss(logits, labels, torch.ones(2), unlikelihood=flagged, stop_below=below)
    assert pushed.per_sample[0] > 0 and done.per_sample[0] == 0
    torch.testing.assert_close(done.per_sample[1], pushed.per_sample[1])  # the liked row is untouched
    grad_done, = torch.autograd.grad(done.loss, logits)
    assert grad_done[0].abs().sum() == 0 and grad_done[1].abs().sum() > 0
    grad_pushed, = torch.autograd.grad(pushed.loss, logits)
    assert grad_pushed[0].abs().sum() > 0


def test_head_only_path_gates_unlikelihood_the_same_way(tokenizer):
    model = narrow_lora_model(seed=2).eval()
    rows = make_facts(3, seed=8)
    rows[0]["unlikelihood"] = rows[1]["unlikelihood"] = True
    batch = collate(encode_rows(rows, tokenizer, 512), tokenizer.pad_token_id)
    full_logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    ungated = response_loss(full_logits, batch["labels"], batch["sample_weight"], batch["unlikelihood"])
    mean_logprob = -response_loss(full_logits, batch["labels"], batch["sample_weight"]).per_sample.detach()
    floor = mean_logprob + torch.tensor([1.0, -1.0, 1.0])  # row 0 already below its floor, row 1 above
    full = response_loss(full_logits, batch["labels"], batch["sample_weight"], batch["unlikelihood"], stop_below=floor)
    fast = response_head_loss(model, batch, batch["unlikelihood"], stop_below=floor)
    assert full.per_sample[0] == 0 and full.per_sample[1] == ungated.per_sample[1] > 0
    torch.testing.assert_close(fast.per_sample, full.per_sample, rtol=1e-5, atol=1e-6)
