"""Tiny models and tokenizers built locally from text: offline demos and hermetic tests.

A byte-level BPE trained with `tokenizers` in seconds, a ChatML chat template, and a small
Llama-architecture model from a config (a llama config because a `qwen2` config reloads the
tokenizer as Qwen2Tokenizer, which ignores a custom pre-tokenizer).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bot.render import CHATML_TEMPLATE, RESPONSE_PREFIX, SILENCE

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]

# Text every tiny tokenizer sees, so the markers and template words become single tokens early.
_SEED_TEXT = [
    f"<|im_start|>assistant\n{SILENCE}<|im_end|>\n",
    f"<|im_start|>assistant\n{RESPONSE_PREFIX}Sure.<|im_end|>\n",
    "<|im_start|>user\nAnn: hello there<|im_end|>\n<|im_start|>system\nBe brief.<|im_end|>\n",
] * 50


def build_tokenizer(texts: Iterable[str], vocab_size: int = 2000) -> Any:
    """Train a byte-level BPE on `texts` and wrap it as a fast HF tokenizer with ChatML."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(_SEED_TEXT) + list(texts), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        unk_token=None,
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def build_model(tokenizer: Any, hidden: int = 64, layers: int = 2, heads: int = 4,
                max_positions: int = 4096, seed: int = 0) -> Any:
    """A small randomly initialised Llama-architecture causal LM sized to the tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(  # type: ignore[call-arg]  # transformers 5 types its kwargs loosely
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def save_tiny(out_dir: str | Path, texts: Iterable[str], vocab_size: int = 2000,
              **model_kwargs: Any) -> Path:
    """Build and save a tiny tokenizer + model into `out_dir` (loadable by from_pretrained)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(texts, vocab_size)
    model = build_model(tok, **model_kwargs)
    tok.save_pretrained(out)
    model.save_pretrained(out)
    return out
