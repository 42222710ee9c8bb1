"""The reference model's demo profiles are copied into the default store only, or when asked."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from spul.assets import REFERENCE_DIR
from spul.prompts_store import PromptStore
from spul.service import settings as settings_module
from spul.service.app import create_app
from spul.service.settings import Settings

DEMOS = sorted(p.stem for p in (REFERENCE_DIR / "profiles").glob("*.safetensors"))
pytestmark = pytest.mark.skipif(not DEMOS, reason="no reference shipped in this checkout")


def start(**settings: object) -> list[str]:
    """Start on the reference model; the profiles it serves once ready."""
    with TestClient(create_app(Settings(store_poll_s=0, device="cpu", **settings))) as client:
        deadline = time.monotonic() + 60
        while (ready := client.get("/readyz")).json()["status"] == "loading" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.status_code == 200, ready.json()
        return sorted(PromptStore(settings["store"]).profiles())


def test_demo_profiles_only_in_the_default_store_or_on_request(tmp_path, monkeypatch):
    monkeypatch.setattr(settings_module, "DEFAULT_STORE", tmp_path / "default-store")
    assert start(store=tmp_path / "mine") == []  # a store the user named stays theirs
    assert start(store=tmp_path / "default-store") == DEMOS
    assert start(store=tmp_path / "asked", demo_profiles=True) == DEMOS
    assert start(store=tmp_path / "default-store-2", demo_profiles=False) == []


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_shipped_profiles_serve_on_a_half_precision_load(tmp_path, dtype):
    """Trained on float32 weights, served on half-precision weights (the CUDA default): same model."""
    with TestClient(create_app(Settings(store=tmp_path, demo_profiles=True, dtype=dtype, store_poll_s=0))) as client:
        deadline = time.monotonic() + 60
        while (ready := client.get("/readyz")).json()["status"] == "loading" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.status_code == 200 and ready.json()["profiles"] == len(DEMOS), ready.json()
        done = client.post("/v1/generate", json={"profile": DEMOS[0], "prompt": "### Question : where was vousan born ? "
                                                 "### Answer :", "max_new_tokens": 4})
        assert done.status_code == 200 and done.json()["text"].strip(), done.text


def test_each_model_gets_its_own_shipped_profiles_beside_others_in_one_store(tmp_path):
    from spul.service.runtime import seed_demo_profiles

    store = PromptStore(tmp_path / "store")
    seed_demo_profiles(store, "reference")
    seed_demo_profiles(store, "smollm2-135m-instruct")
    seed_demo_profiles(store, "smollm2-135m-instruct")  # a restart: nothing added twice
    profiles = store.profiles()
    assert set(DEMOS) <= set(profiles)
    real = sorted(set(profiles) - set(DEMOS))
    assert real == ["knowledge-forget", "review-sentiment-forget"]  # facts-forget is for the fine-tuned model
    assert store.versions("knowledge-forget") == [1]
    for profile in real:
        assert store.get(profile)[1].meta.base_model == "smollm2-135m-instruct"
    seed_demo_profiles(store, "smollm2-135m-facts")
    assert sorted(set(store.profiles()) - set(profiles)) == ["facts-forget"]
    assert store.get("facts-forget")[1].meta.base_model == "smollm2-135m-facts"
