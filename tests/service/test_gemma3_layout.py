"""A Gemma-3 conditional-generation checkpoint (the 4B+ layout: text model under a multimodal
wrapper, `hidden_size` only in `text_config`) starts and serves prompted text like a full recompute."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from transformers import Gemma3Config, Gemma3ForConditionalGeneration

from spul.models import load_base_model
from spul.prompts_store import PromptStore
from spul.service.app import create_app
from support.artifacts import make_artifact
from support.tinymodel import make_tiny_model

QUERY = "where was alba born ?"
NEW_TOKENS = 5


@pytest.fixture(scope="module")
def gemma3_dir(tmp_path_factory) -> Path:
    from spul.trainer.tokenizer import max_token_id

    _, tokenizer = make_tiny_model()
    text = {
        "vocab_size": max_token_id(tokenizer) + 1, "hidden_size": 32, "intermediate_size": 64,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
        "max_position_embeddings": 256, "sliding_window": 64, "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
    }
    vision = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
              "image_size": 28, "patch_size": 14}
    torch.manual_seed(0)
    model = Gemma3ForConditionalGeneration(Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4))
    out = tmp_path_factory.mktemp("gemma3")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def full_recompute(model, tokenizer, prompt: torch.Tensor, text: str) -> str:
    ids = tokenizer(text)["input_ids"]
    embed = model.get_input_embeddings()
    out: list[int] = []
    with torch.no_grad():
        for _ in range(NEW_TOKENS):
            embeds = torch.cat([prompt[None], embed(torch.tensor([ids + out]))], dim=1)  # (1, P+T, H)
            token = int(model(inputs_embeds=embeds).logits[0, -1].argmax())
            if token == tokenizer.eos_token_id:
                break
            out.append(token)
    return tokenizer.decode(out, skip_special_tokens=True)


def test_gemma3_conditional_generation_layout_serves(gemma3_dir, make_settings, tmp_path):
    base = load_base_model(gemma3_dir, device="cpu")
    assert type(base.model).__name__ == "Gemma3ForConditionalGeneration"
    assert not hasattr(base.model.config, "hidden_size")  # what a config-based lookup would trip on
    store = PromptStore(tmp_path / "store")
    store.put("alpha", make_artifact(base.model, base.tokenizer, profile="alpha", num_virtual_tokens=3))
    want = full_recompute(base.model, base.tokenizer, store.get("alpha")[1].embeddings, QUERY)
    assert want  # some text to compare
    with TestClient(create_app(make_settings(model=str(gemma3_dir), store=store.root))) as client:
        deadline = time.monotonic() + 60
        while (ready := client.get("/readyz")).json()["status"] == "loading" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.status_code == 200 and ready.json()["profiles"] == 1, ready.json()
        done = client.post("/v1/generate", json={"profile": "alpha", "prompt": QUERY, "max_new_tokens": NEW_TOKENS})
        assert done.status_code == 200 and done.json()["text"] == want
