"""The built-in tiny model: a seeded random Qwen2-style LM plus a tokenizer that needs no download.

`write_tiny_model(path, seed)` writes a directory any stock `transformers` loader reads
(`AutoModelForCausalLM.from_pretrained`, `AutoTokenizer.from_pretrained`). The same seed always gives
the same weights and the same tokenizer, so every worker that runs `continuum model init-tiny` trains
the same base. The tokenizer is byte-level BPE (any text encodes, nothing is unknown) with merges
trained on a fixed generated corpus, and it carries a chat template so `apply_chat_template` formats
prompts exactly as training does.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from common.errors import ConfigError

BOS = "<|endoftext|>"
PAD = "<|pad|>"
IM_START = "<|im_start|>"
EOS = "<|im_end|>"  # ends every assistant turn, so generation stops where a response ends
SPECIAL_TOKENS = [BOS, PAD, IM_START, EOS]

# ChatML-style; the assistant turn ends with EOS, which is what the training rows append.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_QWEN2_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

VOCAB_SIZE = 1024  # 256 bytes + 4 specials + BPE merges; small keeps the LM head cheap on CPU

SIZES: dict[str, dict[str, int]] = {
    # ~2.7M parameters: tests and the embedded demo.
    "tiny": {"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
             "intermediate_size": 688},
    # ~19.5M parameters: benchmarks at a size where matmuls dominate.
    "small": {"hidden_size": 512, "num_hidden_layers": 8, "num_attention_heads": 8, "num_key_value_heads": 4,
              "intermediate_size": 1024},
}


def tiny_config(size: str = "tiny", **overrides: Any):
    """A `Qwen2Config` for the named size, with `overrides` applied (e.g. hidden_size=128)."""
    from transformers import Qwen2Config

    if size not in SIZES:
        raise ConfigError(f"unknown tiny model size {size!r}; choose one of {', '.join(SIZES)}")
    dims = {**SIZES[size], **overrides}
    return Qwen2Config(
        vocab_size=VOCAB_SIZE,
        max_position_embeddings=2048,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        use_cache=True,
        attention_dropout=0.0,
        bos_token_id=0,
        pad_token_id=1,
        eos_token_id=3,
        **dims,
    )


def _tokenizer_corpus(seed: int) -> list[str]:
    """Text the BPE merges are learned from: chat-formatted invented facts and prose."""
    from workers.learning.synthetic import make_facts, make_feedback_like

    rng = random.Random(seed)
    lines = []
    for row in make_facts(600, seed=seed) + make_feedback_like(300, seed=seed, max_tokens=128):
        lines.append(f"user\n{row['prompt']}\nassistant\n{row['response']}")
    lines += [" ".join(str(rng.randint(0, 3000)) for _ in range(20)) for _ in range(50)]
    lines.append("What Which Who How many In which year is the of does have born founded capital")
    return lines


def build_tokenizer(seed: int = 0):
    """A `PreTrainedTokenizerFast`: byte-level BPE, ChatML specials and chat template."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    # Exactly the pipeline transformers' Qwen2Tokenizer rebuilds when AutoTokenizer loads a qwen2
    # model dir; any other pre-tokenizer would be silently replaced there and encode differently.
    core = Tokenizer(models.BPE())
    core.normalizer = normalizers.NFC()
    core.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,  # ids 0..3, matching tiny_config's bos/pad/eos ids
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(_tokenizer_corpus(seed), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=[IM_START],
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_model(seed: int = 0, size: str = "tiny", **overrides: Any):
    """A freshly initialised `Qwen2ForCausalLM`; identical weights for the same seed and size."""
    import torch
    from transformers import GenerationConfig, Qwen2ForCausalLM

    config = tiny_config(size, **overrides)
    config._attn_implementation = "sdpa"
    # fork_rng: seeding must not disturb the caller's global RNG stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id,
        do_sample=False, max_new_tokens=32,
    )
    return model


def write_tiny_model(path: str | Path, seed: int = 0, size: str = "tiny", **overrides: Any) -> Path:
    """Write the tiny model (safetensors) and its tokenizer to `path`; returns the path."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model = build_tiny_model(seed=seed, size=size, **overrides)
    model.save_pretrained(path, safe_serialization=True)
    build_tokenizer(seed=0).save_pretrained(path)  # tokenizer is the same for every model seed
    return path
