"""A tiny random Llama-style model with a word tokenizer (importable by name from any test)."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from spul.trainer.tokenizer import build_word_tokenizer, max_token_id

TINY_TEXTS = [
    "### question : where was alba born ? ### answer : in quellport",
    "### question : what does brin do ? ### answer : she paints",
    "### text : the film with cora was great . ### sentiment : positive negative neutral unknown",
    "hello world the a an of to and is was were be it this that with for on at by",
]


def make_tiny_model(*, seed: int = 0, hidden: int = 32, layers: int = 2):
    tokenizer = build_word_tokenizer(TINY_TEXTS)
    config = LlamaConfig(
        vocab_size=max_token_id(tokenizer) + 1,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    return model, tokenizer
