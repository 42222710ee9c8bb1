"""A base model whose tokenizer has no EOS (and so no pad token to borrow): train-time encoding,
evaluation and serving all work; generation simply runs to its token budget."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from spul.models import load_base_model
from spul.prompts_store import PromptStore
from spul.service.app import create_app
from spul.trainer.data import Row, encode_batch
from spul.trainer.evaluate import generate
from support.artifacts import make_artifact
from support.tinymodel import make_tiny_model

PROMPTS = ["where was alba born ?", "hello"]  # different lengths: rows need padding


@pytest.fixture(scope="module")
def no_eos_dir(tmp_path_factory) -> Path:
    model, tokenizer = make_tiny_model()
    model.config.eos_token_id = model.generation_config.eos_token_id = None
    out = tmp_path_factory.mktemp("no-eos")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    config = json.loads((out / "tokenizer_config.json").read_text())
    config.update(eos_token=None, pad_token=None)
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    return out


def test_encoding_and_evaluation_without_eos(no_eos_dir):
    base = load_base_model(no_eos_dir, device="cpu")
    assert base.tokenizer.eos_token_id is None and base.tokenizer.pad_token_id is None
    batch = encode_batch(base.tokenizer, PROMPTS, ["in quellport", "positive"])
    assert batch.input_ids.shape == batch.labels.shape and bool((batch.attention_mask == 0).any())
    gens = generate(base.model, base.tokenizer, [Row(prompt=p, answer="a b", id=str(i)) for i, p in enumerate(PROMPTS)],
                    None, max_new_tokens=3)
    assert [g.stopped for g in gens] == [False, False] and all(g.text for g in gens)


def test_serving_without_eos(no_eos_dir, make_settings, tmp_path):
    base = load_base_model(no_eos_dir, device="cpu")
    store = PromptStore(tmp_path / "store")
    store.put("alpha", make_artifact(base.model, base.tokenizer, profile="alpha"))
    with TestClient(create_app(make_settings(model=str(no_eos_dir), store=store.root))) as client:
        deadline = time.monotonic() + 60
        while client.get("/readyz").json()["status"] == "loading" and time.monotonic() < deadline:
            time.sleep(0.05)
        for prompt in PROMPTS:
            done = client.post("/v1/generate", json={"profile": "alpha", "prompt": prompt, "max_new_tokens": 3})
            assert done.status_code == 200 and done.json()["completion_tokens"] == 3, done.text
