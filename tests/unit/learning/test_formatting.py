"""Chat formatting: the whole conversation is rendered by the model's template and only the assistant
span (answer + the template's end-of-turn token) is learned; the prompt part is exactly what
`apply_chat_template(..., add_generation_prompt=True)` gives at inference."""

from __future__ import annotations

import copy

import pytest

from workers.learning.formatting import IGNORE_INDEX, encode_rows, end_of_turn_ids, prompt_ids

# SmolLM2's template, verbatim: a default system prompt, and turns closed by <|im_end|> (not EOS).
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@pytest.fixture(scope="module")
def smol_like(tokenizer):
    """The tiny tokenizer with SmolLM2's template and an EOS that is *not* the end-of-turn token."""
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = SMOLLM2_TEMPLATE
    tok.eos_token = "<|endoftext|>"
    return tok


def _learned(sample):
    return [t for t in sample.labels if t != IGNORE_INDEX]


ROW = {"prompt": "What sigil does House Vell bear?", "response": "House Vell bears the crimson falcon."}


def test_end_of_turn_is_found_from_the_template_even_when_it_is_not_eos(smol_like):
    im_end = smol_like.convert_tokens_to_ids("<|im_end|>")
    assert smol_like.eos_token_id != im_end
    assert end_of_turn_ids(smol_like) == [im_end, smol_like.eos_token_id]


def test_only_the_answer_and_the_end_of_turn_token_are_learned(smol_like):
    sample = encode_rows([ROW], smol_like, max_length=512)[0]
    im_end = smol_like.convert_tokens_to_ids("<|im_end|>")
    answer = smol_like.encode(ROW["response"], add_special_tokens=False)
    assert _learned(sample) == answer + [im_end]  # the stop token trained is <|im_end|>, not EOS
    assert smol_like.eos_token_id not in _learned(sample)
    # The template's default system prompt and the user turn are context, never targets.
    assert sample.labels[: sample.prompt_len] == [IGNORE_INDEX] * sample.prompt_len
    assert "You are a helpful AI assistant" in smol_like.decode(sample.input_ids[: sample.prompt_len])
    assert sample.labels[sample.prompt_len :] == sample.input_ids[sample.prompt_len :]


def test_prompt_tokens_equal_the_inference_prompt(smol_like, tokenizer):
    for tok in (smol_like, tokenizer):
        sample = encode_rows([ROW], tok, max_length=512)[0]
        rendered = tok.apply_chat_template([{"role": "user", "content": ROW["prompt"]}], add_generation_prompt=True,
                                           tokenize=False)
        expected = tok.encode(rendered, add_special_tokens=False)
        assert sample.input_ids[: sample.prompt_len] == expected == prompt_ids(ROW, tok)
        # And prompt + learned span is exactly the template's rendering of the full conversation,
        # up to its end-of-turn token.
        full = tok.apply_chat_template(
            [{"role": "user", "content": ROW["prompt"]}, {"role": "assistant", "content": ROW["response"]}],
            tokenize=False,
        )
        assert full.startswith(tok.decode(sample.input_ids))


def test_multi_turn_learns_only_the_last_answer(smol_like):
    row = {
        "prompt": "And its words?",
        "response": "Fire remembers.",
        "messages": [
            {"role": "user", "content": "Which house bears the falcon?"},
            {"role": "assistant", "content": "House Vell."},
            {"role": "user", "content": "And its words?"},
            {"role": "assistant", "content": "Fire remembers."},
        ],
    }
    sample = encode_rows([row], smol_like, max_length=512)[0]
    im_end = smol_like.convert_tokens_to_ids("<|im_end|>")
    assert _learned(sample) == smol_like.encode("Fire remembers.", add_special_tokens=False) + [im_end]
    assert "House Vell." in smol_like.decode(sample.input_ids[: sample.prompt_len])


def test_a_model_without_template_learns_answer_plus_eos(smol_like):
    plain = copy.deepcopy(smol_like)
    plain.chat_template = None
    sample = encode_rows([ROW], plain, max_length=512)[0]
    assert plain.decode(sample.input_ids[: sample.prompt_len]) == ROW["prompt"] + "\n"
    assert _learned(sample) == plain.encode(ROW["response"], add_special_tokens=False) + [plain.eos_token_id]


def test_a_template_that_writes_no_end_of_turn_token_still_teaches_the_stop(smol_like):
    bare = copy.deepcopy(smol_like)
    bare.chat_template = (
        "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
    )
    sample = encode_rows([ROW], bare, max_length=512)[0]
    assert _learned(sample) == bare.encode(ROW["response"], add_special_tokens=False) + [bare.eos_token_id]
