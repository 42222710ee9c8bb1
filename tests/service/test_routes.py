"""Routes through FastAPI's TestClient: generate, policy, limits, admin, health and metrics."""

from __future__ import annotations

import json

import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from spul.prompts_store import PromptStore, artifact_bytes
from spul.service.settings import Settings
from support.artifacts import make_artifact
from support.server import ADMIN_TOKEN, admin_headers

QUERY = "### question : where was alba born ? ### answer :"


def gen(client, **body):
    return client.post("/v1/generate", json={"prompt": QUERY, "max_new_tokens": 4, **body})


def sse_events(text: str) -> list[dict]:
    return [json.loads(line[len("data: "):]) for line in text.splitlines() if line.startswith("data: ")]


def test_generate_and_stream_agree(client):
    plain = gen(client, profile="alpha")
    assert plain.status_code == 200
    body = plain.json()
    assert (body["profile"], body["version"], body["finish_reason"]) == ("alpha", 1, "length")
    assert body["prompt_tokens"] == len(QUERY.split()) and body["completion_tokens"] == 4
    streamed = gen(client, profile="alpha", stream=True)
    assert streamed.headers["content-type"].startswith("text/event-stream")
    events = sse_events(streamed.text)
    assert "".join(e["text"] for e in events) == body["text"]
    assert events[-1]["finish_reason"] == "length" and events[-1]["version"] == 1


def test_profiles_change_the_answer_and_bad_requests_say_why(client):
    assert gen(client, profile="alpha").json()["text"] != gen(client, profile="beta").json()["text"]
    unknown = gen(client, profile="gamma")
    assert unknown.status_code == 404 and "/v1/models" in unknown.json()["detail"]
    bad = client.post("/v1/generate", json={"profile": "alpha", "prompt": QUERY, "max_new_tokens": -1})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"][-1] == "max_new_tokens"
    broken_json = client.post("/v1/generate", content=b"{not json", headers={"content-type": "application/json"})
    assert broken_json.status_code == 422
    assert gen(client, profile="alpha", max_new_tokens=17).status_code == 400  # limit is 16
    too_long = client.post("/v1/generate", json={"profile": "alpha", "prompt": "hello " * 65})
    assert too_long.status_code == 400 and "limit is 64" in too_long.json()["detail"]


def test_no_profile_is_refused_unless_a_default_applies(make_client):
    plain = make_client()
    assert gen(plain).status_code == 400  # no profile, no default: never a bare-model answer
    defaulted = make_client(default_profile="beta")
    assert gen(defaulted).json()["profile"] == "beta"
    strict = make_client(default_profile="beta", require_profile=True)
    assert gen(strict).status_code == 400
    assert gen(strict, profile="alpha").json()["profile"] == "alpha"


def test_a_profile_that_cannot_be_applied_fails_closed(make_client, store_dir, tiny_model):
    model, _ = tiny_model
    wrong = artifact_bytes(torch.randn(4, model.config.hidden_size), profile="stale", base_model="old",
                           base_fingerprint="sha256:" + "0" * 64)
    PromptStore(store_dir).put("stale", wrong)  # the store alone cannot know which model it is for
    client = make_client()
    assert client.get("/readyz").json()["broken"] == ["stale"]
    response = gen(client, profile="stale")
    assert response.status_code == 503 and "base model" in response.json()["detail"]


def test_admin_requires_the_bearer_token(client):
    assert client.get("/admin/profiles").status_code == 401
    assert client.get("/admin/profiles", headers={"Authorization": "Bearer wrong"}).status_code == 401
    listing = client.get("/admin/profiles", headers=admin_headers()).json()["profiles"]
    assert [(p["profile"], p["serving_version"]) for p in listing] == [("alpha", 1), ("beta", 1)]


def test_upload_activate_delete_take_effect_for_the_next_request(client, tiny_model):
    model, tokenizer = tiny_model
    before = gen(client, profile="alpha").json()
    new = make_artifact(model, tokenizer, profile="alpha", num_virtual_tokens=5, seed=99)
    put = client.put("/admin/profiles/alpha", content=new, headers=admin_headers())
    assert put.status_code == 201 and put.json()["version"] == 2
    after = gen(client, profile="alpha").json()
    assert after["version"] == 2 and after["sha256"] == put.json()["sha256"] != before["sha256"]
    shown = client.get("/admin/profiles/alpha", headers=admin_headers()).json()
    assert shown["serving"]["num_virtual_tokens"] == 5 and len(shown["versions"]) == 2
    back = client.post("/admin/profiles/alpha/activate", json={"version": 1}, headers=admin_headers())
    assert back.status_code == 200
    assert gen(client, profile="alpha").json() == before
    assert client.delete("/admin/profiles/alpha?version=1", headers=admin_headers()).status_code == 409  # active
    assert client.delete("/admin/profiles/alpha?version=2", headers=admin_headers()).status_code == 204
    assert client.delete("/admin/profiles/alpha", headers=admin_headers()).status_code == 204
    assert gen(client, profile="alpha").status_code == 404
    assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["beta"]


def test_bad_uploads_are_rejected_with_a_reason_and_counted(make_client, tiny_model):
    client = make_client(max_upload_bytes=4096)
    model, tokenizer = tiny_model
    wrong_model = artifact_bytes(torch.randn(2, 32), profile="x", base_model="m", base_fingerprint="sha256:1")
    wrong_size = make_artifact(model, tokenizer, profile="x", num_virtual_tokens=64, seed=1)  # > 4096 bytes
    cases = {b"not safetensors at all": "not_safetensors", wrong_model: "fingerprint_mismatch"}
    for data, reason in cases.items():
        response = client.put("/admin/profiles/x", content=data, headers=admin_headers())
        assert response.status_code == 422 and response.json()["detail"]["reason"] == reason
    assert client.put("/admin/profiles/x", content=wrong_size, headers=admin_headers()).status_code == 413
    assert client.put("/admin/profiles/..", content=b"x", headers=admin_headers()).status_code in (404, 422)
    assert gen(client, profile="x").status_code == 404
    failures = {
        s.labels["reason"]: s.value
        for family in text_string_to_metric_families(client.get("/metrics").text)
        for s in family.samples
        if s.name == "spul_upload_failures_total"
    }
    assert failures == {"not_safetensors": 1.0, "fingerprint_mismatch": 1.0, "too_large": 1.0}


def test_admin_off_without_token_and_refused_when_forced_on(make_client, make_settings):
    client = make_client(admin_token=None)
    assert client.get("/admin/profiles").status_code == 404
    with pytest.raises(ValidationError, match="SPUL_ADMIN_TOKEN"):
        make_settings(admin_token=None, admin_enabled=True)
    assert Settings(admin_token=ADMIN_TOKEN).admin


def test_health_ready_and_metrics(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json()["profiles"] == 2
    gen(client, profile="beta")
    families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
    requests = {(s.labels["profile"], s.labels["finish_reason"]): s.value
                for s in families["spul_requests"].samples if s.name == "spul_requests_total"}
    assert requests == {("beta", "length"): 1.0}
    assert families["spul_profiles_loaded"].samples[0].value == 2
    for name in ("spul_time_to_first_token_seconds", "spul_e2e_request_latency_seconds", "spul_prefill_seconds"):
        count = [s for s in families[name].samples if s.name == name + "_count"][0]
        assert count.value >= 1


def test_readyz_fails_when_the_engine_thread_has_stopped(client):
    assert client.get("/readyz").status_code == 200
    scheduler = client.app.state.runtime.scheduler
    scheduler._abort = True  # what shutdown does: the engine thread leaves its loop
    with scheduler._cond:
        scheduler._cond.notify_all()
    scheduler._thread.join(timeout=10)
    response = client.get("/readyz")
    assert response.status_code == 503
    assert "engine thread" in response.json()["error"]
