"""Fault-test fixtures: artifacts for the tiny model, a seeded store, and real server processes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from spul.prompts_store import PromptStore, model_fingerprint
from support.artifacts import make_artifact as random_artifact
from support.procs import ServerProcess

SEED_PROFILES = {"alpha": 3, "beta": 5}  # profile -> P of its version 1


@pytest.fixture(scope="session")
def fingerprint(tiny_model) -> str:
    model, tokenizer = tiny_model
    return model_fingerprint(model, tokenizer)


@pytest.fixture(scope="session")
def make_artifact(tiny_model, fingerprint) -> Callable[..., bytes]:
    """Random (P, H) prompt for the tiny model; `seed` makes versions differ."""
    model, tokenizer = tiny_model

    def build(profile: str, *, num_virtual_tokens: int = 4, seed: int = 0) -> bytes:
        return random_artifact(
            model, tokenizer, profile=profile, num_virtual_tokens=num_virtual_tokens, seed=seed,
            fingerprint=fingerprint,
        )

    return build


@pytest.fixture
def store_dir(tmp_path: Path, make_artifact) -> Path:
    store = PromptStore(tmp_path / "store")
    for i, (name, p) in enumerate(SEED_PROFILES.items()):
        store.put(name, make_artifact(name, num_virtual_tokens=p, seed=i))
    return store.root


@pytest.fixture
def servers(tiny_model_dir: Path, tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start `spul serve` processes (not yet waited for); every one is stopped at teardown."""
    started: list[ServerProcess] = []

    def start(store: Path, **settings: object) -> ServerProcess:
        values: dict[str, object] = {
            "store_poll_s": 0,
            "max_new_tokens": 8,
            "max_prompt_tokens": 64,
            "shutdown_grace_s": 1,
            "device": "cpu",
        }
        values.update(settings)
        server = ServerProcess(tiny_model_dir, store, tmp_path / f"server-{len(started)}.log", **values)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
