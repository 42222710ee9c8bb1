"""Service fixtures: a store with two profiles of different P for the tiny model, and app factories."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from transformers import AutoModelForCausalLM, AutoTokenizer

from spul.prompts_store import PromptStore
from spul.service.app import create_app
from spul.service.settings import Settings
from support.artifacts import make_artifact
from support.server import ADMIN_TOKEN, wait_ready

PROFILE_P = {"alpha": 3, "beta": 7}


@pytest.fixture(scope="session")
def artifacts(tiny_model) -> dict[str, bytes]:
    model, tokenizer = tiny_model
    return {
        name: make_artifact(model, tokenizer, profile=name, num_virtual_tokens=p, seed=i)
        for i, (name, p) in enumerate(PROFILE_P.items())
    }


@pytest.fixture
def store_dir(tmp_path: Path, artifacts: dict[str, bytes]) -> Path:
    store = PromptStore(tmp_path / "store")
    for name, data in artifacts.items():
        store.put(name, data)
    return store.root


@pytest.fixture(scope="session")
def long_context_model_dir(tmp_path_factory, tiny_model_dir: Path) -> Path:
    """The tiny model with a context of 2**20 positions (RoPE): requests that can run for as long as a
    test needs, e.g. to stay in flight while something else happens."""
    out = tmp_path_factory.mktemp("long-context-model")
    shutil.copytree(tiny_model_dir, out, dirs_exist_ok=True)
    config = json.loads((out / "config.json").read_text())
    config["max_position_embeddings"] = 2**20
    (out / "config.json").write_text(json.dumps(config))
    return out


@pytest.fixture
def long_context_store(tmp_path: Path, long_context_model_dir: Path) -> Path:
    """A store with `PROFILE_P`'s profiles (same seeds as `store_dir`) for the long-context model."""
    model = AutoModelForCausalLM.from_pretrained(long_context_model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(long_context_model_dir)
    store = PromptStore(tmp_path / "long-store")
    for i, (name, p) in enumerate(PROFILE_P.items()):
        store.put(name, make_artifact(model, tokenizer, profile=name, num_virtual_tokens=p, seed=i))
    return store.root


@pytest.fixture
def make_settings(tiny_model_dir: Path, store_dir: Path) -> Callable[..., Settings]:
    def build(**overrides: object) -> Settings:
        values: dict[str, object] = {
            "model": str(tiny_model_dir),
            "store": store_dir,
            "admin_token": ADMIN_TOKEN,
            "store_poll_s": 0,
            "max_new_tokens": 16,
            "max_prompt_tokens": 64,
            "shutdown_grace_s": 2.0,
        }
        values.update(overrides)
        return Settings(**values)  # type: ignore[arg-type]

    return build


@pytest.fixture
def make_client(make_settings) -> Iterator[Callable[..., TestClient]]:
    clients: list[TestClient] = []

    def build(**overrides: object) -> TestClient:
        client = TestClient(create_app(make_settings(**overrides)))
        client.__enter__()
        clients.append(client)
        wait_ready(client)
        return client

    yield build
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client) -> TestClient:
    return make_client()
