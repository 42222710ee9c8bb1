"""Chat prompts get exactly transformers' `apply_chat_template` ids: a template that writes
`{{ bos_token }}` on a tokenizer that also adds BOS by itself still starts with one BOS."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from tokenizers import processors
from transformers import AutoModelForCausalLM, AutoTokenizer

from spul.prompts_store import PromptStore
from spul.service.app import create_app
from spul.service.settings import Settings
from spul.trainer.tokenizer import BOS, CHAT_TEMPLATE
from support.artifacts import make_artifact
from support.server import wait_ready

MESSAGES = [{"role": "system", "content": "hello world"}, {"role": "user", "content": "where was alba born ?"}]


@pytest.fixture(scope="module")
def bos_model_dir(tmp_path_factory, tiny_model_dir: Path) -> Path:
    """The tiny model whose tokenizer adds BOS to every encoding and whose chat template writes one too."""
    out = tmp_path_factory.mktemp("bos-model")
    shutil.copytree(tiny_model_dir, out, dirs_exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(out)
    bos_id = tokenizer.convert_tokens_to_ids(BOS)
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, bos_id)]
    )
    tokenizer.chat_template = "{{ bos_token }}" + CHAT_TEMPLATE
    tokenizer.save_pretrained(out)
    return out


def test_chat_prompt_ids_equal_apply_chat_template_with_one_bos(bos_model_dir, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(bos_model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(bos_model_dir)
    assert tokenizer("hello")["input_ids"][0] == tokenizer.bos_token_id  # the tokenizer adds BOS itself
    expected = tokenizer.apply_chat_template(MESSAGES, tokenize=True, add_generation_prompt=True)["input_ids"]
    assert expected[0] == tokenizer.bos_token_id != expected[1]
    store = PromptStore(tmp_path / "store")
    store.put("alpha", make_artifact(model, tokenizer, profile="alpha", num_virtual_tokens=3))
    settings = Settings(model=str(bos_model_dir), store=store.root, store_poll_s=0, max_new_tokens=4)
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        chat = client.post("/v1/chat/completions", json={"model": "alpha", "messages": MESSAGES, "max_tokens": 2})
        assert chat.status_code == 200, chat.text
        assert chat.json()["usage"]["prompt_tokens"] == len(expected)
        # the same ids sent as a plain completion (the template's text, BOS written by the tokenizer)
        text = tokenizer.decode(expected[1:])
        plain = client.post("/v1/completions", json={"model": "alpha", "prompt": text, "max_tokens": 2,
                                                     "temperature": 0})
        assert plain.json()["usage"]["prompt_tokens"] == len(expected)
        greedy_chat = client.post("/v1/chat/completions", json={"model": "alpha", "messages": MESSAGES,
                                                                "max_tokens": 2, "temperature": 0})
        assert greedy_chat.json()["choices"][0]["message"]["content"] == plain.json()["choices"][0]["text"]
