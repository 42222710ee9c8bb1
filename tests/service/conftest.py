"""Service fixtures: a store with two profiles of different P for the tiny model, and app factories."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from prompts_store import PromptStore, artifact_bytes, model_fingerprint
from service.app import create_app
from service.settings import Settings

ADMIN_TOKEN = "test-admin-token-0123456789"
PROFILE_P = {"alpha": 3, "beta": 7}


def make_artifact(model, tokenizer, *, profile: str, num_virtual_tokens: int, seed: int) -> bytes:
    generator = torch.Generator().manual_seed(seed)
    hidden = model.config.hidden_size
    embeddings = torch.randn(num_virtual_tokens, hidden, generator=generator)  # (P, H)
    return artifact_bytes(
        embeddings,
        profile=profile,
        base_model="tiny",
        base_fingerprint=model_fingerprint(model, tokenizer),
    )


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


def wait_ready(client: TestClient, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        response = client.get("/readyz")
        if response.status_code == 200:
            return
        assert response.json()["status"] != "failed", response.json()
        time.sleep(0.05)
    raise AssertionError("server did not become ready")


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


def admin_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_TOKEN}"}
