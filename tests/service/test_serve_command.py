"""`spul serve` with no --model: the shipped reference model and its demo profiles (or a clear error)."""

from __future__ import annotations

import os
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
    settings = make_settings(model=None, store=tmp_path / "fresh-store", demo_profiles=True)  # asked for
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["demo-alpha", "demo-beta"]
        answer = client.post("/v1/generate", json={"profile": "demo-beta", "prompt": "hello", "max_new_tokens": 2})
        assert answer.status_code == 200 and answer.json()["version"] == 1


def test_a_model_that_cannot_load_exits_with_the_start_up_failure_code(monkeypatch, tmp_path, capsys):
    from spul.commands.serve import EXIT_STARTUP_FAILED
    from support.procs import free_port

    for key in [k for k in os.environ if k.startswith("SPUL_")]:
        monkeypatch.delenv(key)
    not_a_model = tmp_path / "not-a-model"
    not_a_model.mkdir()
    argv = ["serve", "--model", str(not_a_model), "--store", str(tmp_path / "store"), "--port", str(free_port())]
    assert EXIT_STARTUP_FAILED not in (0, 1, 2, 143)  # distinct from success, usage errors and a SIGTERM stop
    assert main(argv) == EXIT_STARTUP_FAILED


def test_bad_settings_are_named_without_echoing_secrets(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("SPUL_ADMIN_TOKEN", "short-secret")
    assert main(["serve", "--store", str(tmp_path / "store")]) == 2
    err = capsys.readouterr().err
    assert "SPUL_ADMIN_TOKEN" in err and "short-secret" not in err
