"""The tiny Llama the embedded demo trains from scratch (≈ 0.2M parameters at the defaults).

A standard ``LlamaForCausalLM`` built from a ``LlamaConfig``, so every later command loads it with
``AutoModelForCausalLM.from_pretrained`` like any hub model. The defaults (hidden 64, 4 layers,
4 heads, MLP 192) are what a prototype found learnable to an imperfect accuracy in a few minutes on
2 CPU cores; hidden 128 was ≈ 4× slower per step. Embeddings are untied so that the output row of
the self-reward token z can move without changing how z would be embedded.
"""

from __future__ import annotations

from typing import Any


def tiny_model_config(
    tokenizer: Any,
    hidden: int = 64,
    layers: int = 4,
    heads: int = 4,
    intermediate: int = 192,
    max_position: int = 256,
) -> Any:
    """A ``LlamaConfig`` sized for the tokenizer, with pad/EOS/BOS ids read from it (none hard-coded)."""
    from transformers import LlamaConfig

    if hidden % heads:
        raise ValueError(f"hidden ({hidden}) must be a multiple of heads ({heads})")
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_position,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )


def build_tiny_model(tokenizer: Any, *, seed: int | None = None, **config_kwargs: Any) -> Any:
    """A freshly initialised ``LlamaForCausalLM`` (float32); ``seed`` makes the initialisation reproducible."""
    import torch
    from transformers import LlamaForCausalLM

    config = tiny_model_config(tokenizer, **config_kwargs)
    if seed is not None:
        torch.manual_seed(seed)
    return LlamaForCausalLM(config).float()
