"""/readyz: a server whose store holds profiles but none that fit its model is not ready."""

from __future__ import annotations

import time

import torch
from fastapi.testclient import TestClient

from spul.prompts_store import PromptStore, artifact_bytes
from spul.service.app import create_app
from support.artifacts import make_artifact
from support.server import admin_headers


def settled_readiness(client: TestClient, timeout_s: float = 60.0):
    deadline = time.monotonic() + timeout_s
    while (response := client.get("/readyz")).json()["status"] == "loading":
        assert time.monotonic() < deadline, "server still loading"
        time.sleep(0.05)
    return response


def test_not_ready_while_every_stored_profile_is_for_another_model(make_settings, tmp_path, tiny_model):
    model, tokenizer = tiny_model
    store = PromptStore(tmp_path / "foreign")
    for name in ("old-a", "old-b"):  # trained for another model: the store alone cannot tell
        store.put(name, artifact_bytes(torch.randn(4, model.config.hidden_size), profile=name, base_model="old",
                                       base_fingerprint="sha256:" + "0" * 64))
    with TestClient(create_app(make_settings(store=store.root))) as client:
        response = settled_readiness(client)
        assert response.status_code == 503
        body = response.json()
        assert body["broken"] == ["old-a", "old-b"] and "base model" in body["error"]
        fresh = make_artifact(model, tokenizer, profile="fresh")
        assert client.put("/admin/profiles/fresh", content=fresh, headers=admin_headers()).status_code == 201
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["profiles"] == 1
