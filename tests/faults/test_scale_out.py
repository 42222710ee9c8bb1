"""Scale-out: two real `spul serve` processes over one store directory see each other's changes.

Replicas notice other writers by polling the store's change token every SPUL_STORE_POLL_S
seconds (service/app.py `_poll_store` -> `PromptRegistry.refresh_if_changed`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx

from spul.prompts_store import PromptStore
from spul.service.registry import ModelIdentity, PromptRegistry
from support.procs import admin_headers
from support.storecheck import check_store

POLL_S = 0.2
QUERY = "where was alba born ?"


def generate(url: str, profile: str) -> httpx.Response:
    body = {"profile": profile, "prompt": QUERY, "max_new_tokens": 4}
    return httpx.post(url + "/v1/generate", json=body, timeout=30)


def wait_for(check: Callable[[], bool], *, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(POLL_S / 2)
    raise AssertionError(f"condition not met within {timeout_s}s")


def serving_version(url: str, profile: str) -> int | None:
    response = generate(url, profile)
    return response.json()["version"] if response.status_code == 200 else None


def test_replicas_see_uploads_activations_and_deletes_from_each_other(store_dir, servers, make_artifact):
    a = servers(store_dir, store_poll_s=POLL_S)
    b = servers(store_dir, store_poll_s=POLL_S)
    a.wait_ready(), b.wait_ready()
    assert generate(a.url, "alpha").json() == generate(b.url, "alpha").json()

    put = httpx.put(
        a.url + "/admin/profiles/alpha",
        content=make_artifact("alpha", num_virtual_tokens=6, seed=7),
        headers=admin_headers(),
        timeout=30,
    )
    assert put.status_code == 201, put.text
    assert put.json()["version"] == 2 and generate(a.url, "alpha").json()["version"] == 2  # writer: at once
    wait_for(lambda: serving_version(b.url, "alpha") == 2)  # the other replica: after its next poll
    assert generate(b.url, "alpha").json() == generate(a.url, "alpha").json()

    gamma = httpx.put(
        b.url + "/admin/profiles/gamma",
        content=make_artifact("gamma", seed=8),
        headers=admin_headers(),
        timeout=30,
    )
    assert gamma.status_code == 201, gamma.text
    wait_for(lambda: "gamma" in {m["id"] for m in httpx.get(a.url + "/v1/models").json()["data"]})
    assert generate(a.url, "gamma").json()["sha256"] == gamma.json()["sha256"]

    back = httpx.post(b.url + "/admin/profiles/alpha/activate", json={"version": 1}, headers=admin_headers())
    assert back.status_code == 200, back.text
    wait_for(lambda: serving_version(a.url, "alpha") == 1)

    gone = httpx.delete(a.url + "/admin/profiles/gamma", headers=admin_headers())
    assert gone.status_code == 204
    wait_for(lambda: generate(b.url, "gamma").status_code == 404)
    assert a.alive() and b.alive()


def test_concurrent_uploads_to_two_replicas_get_distinct_versions_and_none_is_lost(
    store_dir, servers, make_artifact
):
    a, b = servers(store_dir), servers(store_dir)
    a.wait_ready(), b.wait_ready()
    bodies = [make_artifact("alpha", seed=100 + i) for i in range(8)]

    def upload(i: int) -> dict:
        url = (a if i % 2 else b).url
        response = httpx.put(
            url + "/admin/profiles/alpha", content=bodies[i], headers=admin_headers(), timeout=60
        )
        assert response.status_code == 201, response.text
        return response.json()

    with ThreadPoolExecutor(max_workers=8) as pool:
        acked = list(pool.map(upload, range(8)))
    versions = [r["version"] for r in acked]
    assert len(set(versions)) == 8 and 1 not in versions  # v1 was the seed version
    stored = check_store(store_dir).shas["alpha"]
    assert {r["version"]: r["sha256"] for r in acked}.items() <= stored.items()


def test_version_numbers_are_never_reused_and_a_replica_follows(store_dir, make_artifact, tiny_model, fingerprint):
    """A replica that misses the intermediate states (poll interval) serves the new bytes under a
    new number: deleting the highest version (or the whole profile) never frees its number.

    Sequence written by *another* process between two polls: activate v1, delete v2, upload.
    """
    model = tiny_model[0]
    identity = ModelIdentity(fingerprint, model.config.hidden_size, model.device, model.dtype)
    store = PromptStore(store_dir)
    store.put("alpha", make_artifact("alpha", seed=21))  # v2, active
    replica = PromptRegistry(PromptStore(store_dir), identity)
    replica.refresh()
    assert replica.resolve("alpha").version == 2

    writer = PromptStore(store_dir)  # the other replica, between two of our polls
    writer.activate("alpha", 1)
    writer.delete("alpha", 2)
    new = writer.put("alpha", make_artifact("alpha", seed=22))
    assert new.version == 3  # 2 named other bytes once: never again

    assert replica.refresh_if_changed()
    assert (replica.resolve("alpha").version, replica.resolve("alpha").sha256) == (3, new.sha256)
    writer.delete("alpha")  # the whole profile, then a new one under the same id
    assert writer.put("alpha", make_artifact("alpha", seed=23)).version == 4
