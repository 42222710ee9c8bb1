"""`spul serve` with no --model: the shipped reference model and its demo profiles (or a clear error)."""

from __future__ import annotations

import shutil

import spul.assets
from spul.cli import main
from support.server import wait_ready


def test_missing_reference_model_is_a_clear_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(spul.assets, "REFERENCE_DIR", tmp_path / "nothing-here")
    assert main(["serve", "--store", str(tmp_path / "store")]) == 2
    assert "reference model is missing" in capsys.readouterr().err


def test_default_model_seeds_the_demo_profiles_into_an_empty_store(
    monkeypatch, tmp_path, tiny_model_dir, artifacts, make_settings
):
    from fastapi.testclient import TestClient

    from spul.service.app import create_app

    reference = tmp_path / "reference"
    shutil.copytree(tiny_model_dir, reference / "model")
    (reference / "profiles").mkdir()
    for name, data in artifacts.items():
        (reference / "profiles" / f"demo-{name}.safetensors").write_bytes(data)
    monkeypatch.setattr(spul.assets, "REFERENCE_DIR", reference)
    settings = make_settings(model=None, store=tmp_path / "fresh-store")
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["demo-alpha", "demo-beta"]
        answer = client.post("/v1/generate", json={"profile": "demo-beta", "prompt": "hello", "max_new_tokens": 2})
        assert answer.status_code == 200 and answer.json()["version"] == 1
