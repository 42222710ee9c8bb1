"""Shared fixtures: a tiny random Llama-style model with a word tokenizer, saved as a local HF dir."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from support.tinymodel import TINY_TEXTS, make_tiny_model  # noqa: F401  (re-exported for fixtures)

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random model saved as a normal local Hugging Face model directory."""
    out = tmp_path_factory.mktemp("tiny-model")
    model, tokenizer = make_tiny_model()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    return model, tokenizer
