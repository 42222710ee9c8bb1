"""Admin authentication and the fail-closed profile policy, through the app's real routes."""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from spul.prompts_store import PromptStore
from spul.service.app import create_app
from spul.service.routes import deps
from spul.service.settings import Settings
from spul.trainer.evaluate import greedy_ids
from support.procs import ADMIN_TOKEN, admin_headers
from support.storecheck import check_store

QUERY = "where was alba born ?"
NEW_TOKENS = 6
ADMIN_CALLS = [
    ("GET", "/admin/profiles", None),
    ("GET", "/admin/profiles/alpha", None),
    ("PUT", "/admin/profiles/alpha", b"not even an artifact"),
    ("POST", "/admin/profiles/alpha/activate", {"version": 1}),
    ("DELETE", "/admin/profiles/alpha", None),
]
WRONG_AUTH = {
    "none": {},
    "empty_bearer": {"Authorization": "Bearer "},
    "wrong_same_length": {"Authorization": "Bearer " + "x" * len(ADMIN_TOKEN)},
    "prefix": {"Authorization": "Bearer " + ADMIN_TOKEN[:-1]},
    "token_plus_one": {"Authorization": "Bearer " + ADMIN_TOKEN + "0"},
    "basic_scheme": {"Authorization": "Basic " + ADMIN_TOKEN},
    "raw_token": {"Authorization": ADMIN_TOKEN},
    "other_header": {"X-Admin-Token": ADMIN_TOKEN},
}


@pytest.fixture
def make_client(tiny_model_dir: Path, store_dir: Path) -> Iterator[Callable[..., TestClient]]:
    clients: list[TestClient] = []

    def build(**overrides: object) -> TestClient:
        values: dict[str, object] = {
            "model": str(tiny_model_dir),
            "store": store_dir,
            "admin_token": ADMIN_TOKEN,
            "store_poll_s": 0,
            "max_new_tokens": 8,
            "max_prompt_tokens": 64,
        }
        values.update(overrides)
        client = TestClient(create_app(Settings(**values)))  # type: ignore[arg-type]
        client.__enter__()
        clients.append(client)
        deadline = time.monotonic() + 60
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline and client.get("/readyz").json()["status"] != "failed"
            time.sleep(0.05)
        return client

    yield build
    for client in clients:
        client.__exit__(None, None, None)


def call(client: TestClient, method: str, path: str, body: object, headers: dict[str, str]):
    if isinstance(body, bytes):
        return client.request(method, path, content=body, headers=headers)
    return client.request(method, path, json=body, headers=headers)


def test_admin_refuses_missing_or_wrong_tokens_and_changes_nothing(make_client, store_dir):
    client = make_client()
    before = check_store(store_dir)
    failures = {}
    for name, headers in WRONG_AUTH.items():
        for method, path, body in ADMIN_CALLS:
            response = call(client, method, path, body, headers)
            if response.status_code not in (401, 403) or "error" not in response.json():
                failures[f"{name} {method} {path}"] = response.status_code
    assert not failures, failures
    assert check_store(store_dir) == before
    assert call(client, "GET", "/admin/profiles", None, admin_headers()).status_code == 200


def test_every_token_check_goes_through_a_constant_time_comparison(make_client, monkeypatch):
    """Right and wrong tokens alike are compared with `hmac.compare_digest` against the configured one."""
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a, b):  # type: ignore[no-untyped-def]
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(deps.hmac, "compare_digest", spy)
    client = make_client()
    assert client.get("/admin/profiles", headers=WRONG_AUTH["prefix"]).status_code == 401
    assert client.get("/admin/profiles", headers=admin_headers()).status_code == 200
    assert len(calls) == 2 and all(b == ADMIN_TOKEN.encode() for _, b in calls)


def test_admin_routes_absent_without_a_token(make_client):
    client = make_client(admin_token=None)
    assert not [p for p in client.get("/openapi.json").json()["paths"] if p.startswith("/admin")]
    for method, path, body in ADMIN_CALLS:
        response = call(client, method, path, body, admin_headers())
        assert response.status_code == 404 and response.json()["error"]["code"] == "admin_disabled"
    with pytest.raises(ValueError, match="SPUL_ADMIN_TOKEN"):
        Settings(admin_enabled=True)


def test_every_state_changing_route_is_admin_only(make_client):
    app = make_client().app
    for route in app.routes:
        if not isinstance(route, APIRoute):
            continue
        guarded = any(dep.call is deps.require_admin for dep in route.dependant.dependencies)
        writes = bool(route.methods & {"PUT", "DELETE", "PATCH"}) or route.path.endswith("/activate")
        assert guarded == route.path.startswith("/admin"), route.path
        assert guarded or not writes, f"{route.path} changes state without the admin token"


def test_generate_requests_cannot_reach_admin_actions(make_client, store_dir):
    client = make_client()
    before = check_store(store_dir)
    smuggled = [
        "../admin/profiles/alpha",
        "alpha/activate",
        "alpha?activate=true",
        "../../admin",
        "..",
        "alpha%2F..",
    ]
    for profile in smuggled:
        response = client.post("/v1/generate", json={"profile": profile, "prompt": QUERY})
        assert response.status_code in (400, 404), (profile, response.status_code)
        response = client.post("/v1/completions", json={"model": profile, "prompt": QUERY, "max_tokens": 2})
        assert response.status_code in (400, 404), (profile, response.status_code)
    extra = {"profile": "alpha", "prompt": QUERY, "activate": True, "version": 2, "delete": "beta"}
    assert client.post("/v1/generate", json=extra).status_code == 422  # unknown fields are refused
    with_token = client.post(
        "/v1/generate", json={"profile": "alpha", "prompt": QUERY}, headers=admin_headers()
    )
    assert with_token.status_code == 200
    assert check_store(store_dir) == before


def greedy(model, tokenizer, prompt: torch.Tensor | None, text: str) -> str:
    """What evaluation decodes for `text` with (or without) the soft prompt (P, H)."""
    ids = torch.tensor([tokenizer(text)["input_ids"]])  # (1, T)
    eos = tokenizer.eos_token_id
    with torch.no_grad():
        out = greedy_ids(model, ids, torch.ones_like(ids), prompt, max_new_tokens=NEW_TOKENS, eos_id=eos)[0]
    tokens = out.tolist()
    return tokenizer.decode(
        tokens[: tokens.index(eos)] if eos in tokens else tokens, skip_special_tokens=True
    )


def test_mandatory_profile_answers_every_request_with_its_prompt(make_client, store_dir, tiny_model):
    model, tokenizer = tiny_model
    _, alpha = PromptStore(store_dir).get("alpha")
    prompted, bare = greedy(model, tokenizer, alpha.embeddings, QUERY), greedy(model, tokenizer, None, QUERY)
    assert prompted != bare  # otherwise this test could not tell them apart
    client = make_client(default_profile="alpha")
    body = {"prompt": QUERY, "max_new_tokens": NEW_TOKENS}
    unnamed = client.post("/v1/generate", json=body).json()
    assert (unnamed["profile"], unnamed["text"]) == ("alpha", prompted)
    for model_name in ("default", ""):
        done = client.post(
            "/v1/completions",
            json={"model": model_name, "prompt": QUERY, "max_tokens": NEW_TOKENS, "temperature": 0},
        )
        assert done.json()["choices"][0]["text"] == prompted
    # the mandatory profile deleted at runtime: refused, never answered bare
    assert client.delete("/admin/profiles/alpha", headers=admin_headers()).status_code == 204
    assert client.post("/v1/generate", json=body).status_code == 404


def test_broken_mandatory_profile_fails_closed(make_client, store_dir):
    client = make_client(default_profile="alpha")
    # another writer activates a damaged version behind the server's back (bypassing validation)
    (store_dir / "profiles" / "alpha" / "v000002.safetensors").write_bytes(b"garbage")
    (store_dir / "profiles" / "alpha" / "ACTIVE").write_text("2\n")
    client.app.state.runtime.registry.refresh()
    for body in ({"prompt": QUERY}, {"profile": "alpha", "prompt": QUERY}):
        response = client.post("/v1/generate", json=body)
        assert response.status_code == 503 and "cannot be applied" in response.json()["error"]["message"]
    # and a restart on the damaged store never becomes ready, so it answers nothing
    settings = client.app.state.settings.model_copy(update={"store_poll_s": 0})
    with TestClient(create_app(settings)) as restarted:
        deadline = time.monotonic() + 60
        while (ready := restarted.get("/readyz").json())[
            "status"
        ] == "loading" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready["status"] == "failed" and "SPUL_DEFAULT_PROFILE" in ready["error"]
        assert restarted.post("/v1/generate", json={"prompt": QUERY}).status_code == 503


def test_requests_without_a_profile_are_refused_unless_a_default_applies(make_client):
    for settings in ({}, {"require_profile": True}, {"require_profile": True, "default_profile": "alpha"}):
        client = make_client(**settings)
        unnamed = client.post("/v1/generate", json={"prompt": QUERY})
        assert unnamed.status_code == 400 and "profile" in unnamed.json()["error"]["message"], settings
        assert client.post("/v1/generate", json={"profile": "beta", "prompt": QUERY}).status_code == 200
