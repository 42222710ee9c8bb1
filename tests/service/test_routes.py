"""Routes through FastAPI's TestClient: generate, policy, limits, admin, health and metrics."""

from __future__ import annotations

import asyncio
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
    """The JSON events of a stream, which must end with `data: [DONE]`."""
    data = [line[len("data: "):] for line in text.splitlines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    return [json.loads(d) for d in data[:-1]]


def error_of(response) -> dict:
    """The OpenAI error envelope every error answer carries."""
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


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
    assert unknown.status_code == 404 and "/v1/models" in error_of(unknown)["message"]
    bad = client.post("/v1/generate", json={"profile": "alpha", "prompt": QUERY, "max_new_tokens": -1})
    assert bad.status_code == 422 and error_of(bad)["param"] == "max_new_tokens"
    broken_json = client.post("/v1/generate", content=b"{not json", headers={"content-type": "application/json"})
    assert broken_json.status_code == 422 and "not valid JSON" in error_of(broken_json)["message"]
    over = gen(client, profile="alpha", max_new_tokens=17)  # limit is 16
    assert over.status_code == 400 and error_of(over)["param"] == "max_new_tokens"
    too_long = client.post("/v1/generate", json={"profile": "alpha", "prompt": "hello " * 65})
    assert too_long.status_code == 400 and "limit is 64" in error_of(too_long)["message"]


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
    assert response.status_code == 503 and "base model" in error_of(response)["message"]


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
    no_body = client.post("/admin/profiles/alpha/activate", headers=admin_headers())
    assert no_body.status_code == 422 and error_of(no_body)["param"] == "body"
    assert "JSON body" in error_of(no_body)["message"]
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
        assert response.status_code == 422 and error_of(response)["code"] == reason
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
        count = next(s for s in families[name].samples if s.name == name + "_count")
        assert count.value >= 1


def test_readyz_fails_when_the_engine_thread_has_stopped(client):
    assert client.get("/readyz").status_code == 200
    scheduler = client.app.state.runtime.scheduler
    asyncio.run(scheduler.shutdown(grace_s=0))  # the engine thread leaves its loop
    response = client.get("/readyz")
    assert response.status_code == 503
    assert "engine thread" in response.json()["error"]


@pytest.mark.parametrize(
    "raw",
    [
        b'{"profile": "alpha", "prompt": "hello", "temperature": NaN}',
        b'{"profile": "alpha", "prompt": "hello", "top_p": Infinity}',
        b'{"profile": "alpha", "prompt": "hello", "seed": -Infinity}',
        b'{"profile": "alpha", "prompt": "hello \\ud800 world"}',
        b'{"profile": "\\udfff", "prompt": "hello"}',
        b'{"profile": "alpha", "prompt": "hello", "\\ud800": 1}',
        b'{"profile": "alpha", "prompt": "hello", "stop": ["\\ud83d"]}',
    ],
)
def test_non_finite_numbers_and_lone_surrogates_are_refused_in_the_envelope(client, raw):
    response = client.post("/v1/generate", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert error_of(response)["code"] == "validation_error"
    assert client.get("/healthz").status_code == 200


def test_openai_routes_refuse_bad_input_in_the_envelope(client):
    surrogate = b'{"model": "alpha", "messages": [{"role": "user", "content": "hi \\ud800"}]}'
    chat = client.post("/v1/chat/completions", content=surrogate, headers={"content-type": "application/json"})
    assert chat.status_code == 422 and error_of(chat)["param"] == "messages.0.content"
    for route, extra in (("/v1/completions", {"logprobs": 2}), ("/v1/completions", {"echo": True}),
                         ("/v1/chat/completions", {"logprobs": True}),
                         ("/v1/chat/completions", {"logprobs": True, "top_logprobs": 3})):
        body = {"model": "alpha", "max_tokens": 2, **extra}
        body.update({"prompt": QUERY} if route == "/v1/completions" else
                    {"messages": [{"role": "user", "content": QUERY}]})
        refused = client.post(route, json=body)
        assert refused.status_code == 400, (route, extra)
        assert error_of(refused)["code"] == "unsupported_parameter" and error_of(refused)["param"] in extra
    assert client.get("/v1/models/beta").json() == {"id": "beta", "object": "model", "created": 0,
                                                    "owned_by": "spul", "version": 1}
    missing = client.get("/v1/models/gamma")
    assert missing.status_code == 404 and error_of(missing)["code"] == "profile_not_found"
    assert error_of(client.get("/no/such/route"))["type"] == "not_found_error"
    documented = client.get("/openapi.json").json()["paths"]["/v1/completions"]["post"]["responses"]
    assert documented["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")


def test_request_bodies_over_the_limit_are_refused_with_413(make_client):
    client = make_client(max_request_bytes=2048)
    big = {"profile": "alpha", "prompt": "hello " * 400}  # ~2.4 kB
    declared = client.post("/v1/generate", json=big)
    assert declared.status_code == 413 and error_of(declared)["code"] == "request_too_large"
    chunked = client.post("/v1/generate", content=iter([json.dumps(big).encode()[i:i + 512]
                                                         for i in range(0, 2600, 512)]),
                          headers={"content-type": "application/json"})
    assert chunked.status_code == 413 and error_of(chunked)["code"] == "request_too_large"
    assert gen(client, profile="alpha").status_code == 200


def test_every_refusal_is_counted_by_reason(client):
    gen(client)  # no profile, no default: 400
    gen(client, profile="gamma")  # 404
    gen(client, profile="alpha", max_new_tokens=0)  # 422
    gen(client, profile="alpha", max_new_tokens=17)  # 400, over the limit
    client.get("/admin/profiles")  # 401
    client.post("/v1/completions", json={"model": "alpha", "prompt": QUERY, "logprobs": 1})  # 400
    gen(client, profile="alpha")  # answered: not counted
    rejected = {
        s.labels["reason"]: s.value
        for family in text_string_to_metric_families(client.get("/metrics").text)
        for s in family.samples
        if s.name == "spul_requests_rejected_total"
    }
    assert rejected == {"profile_required": 1.0, "profile_not_found": 1.0, "validation_error": 1.0,
                        "max_tokens_too_large": 1.0, "unauthorized": 1.0, "unsupported_parameter": 1.0}


def test_admin_on_a_server_without_a_token_says_how_to_enable_it(make_client):
    client = make_client(admin_token=None)
    for method in ("GET", "PUT", "POST", "DELETE"):
        response = client.request(method, "/admin/profiles/alpha", headers=admin_headers())
        assert response.status_code == 404
        error = error_of(response)
        assert error["code"] == "admin_disabled" and "SPUL_ADMIN_TOKEN" in error["message"]
