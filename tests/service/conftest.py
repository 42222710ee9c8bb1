"""Service fixtures: a store with two profiles of different P for the tiny model, and app factories."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

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
