"""Profile ids the OpenAI routes read as "no profile named" cannot be created over the admin API."""

from __future__ import annotations

from support.artifacts import make_artifact
from support.server import admin_headers


def test_reserved_ids_are_refused_with_a_reason(client, tiny_model, tiny_model_dir):
    model, tokenizer = tiny_model
    for profile in ("default", tiny_model_dir.name):  # the served model's name is an alias too
        body = make_artifact(model, tokenizer, profile=profile)
        response = client.put(f"/admin/profiles/{profile}", content=body, headers=admin_headers())
        assert response.status_code == 400, response.text
        assert "reserved" in response.json()["error"]["message"]
    listing = client.get("/admin/profiles", headers=admin_headers()).json()["profiles"]
    assert sorted(p["profile"] for p in listing) == ["alpha", "beta"]
