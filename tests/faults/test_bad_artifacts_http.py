"""Bad artifacts and bad profile ids over HTTP (admin upload on a real server): every one is
refused with a 4xx that names the problem, nothing is written, and the server keeps serving."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from spul.prompts_store import PromptStore
from spul.prompts_store.artifact import TENSOR_NAME
from support.corpus import BAD_IDS, HIDDEN, BadBody, bad_bodies, craft
from support.procs import ADMIN_TOKEN, HOST, ServerProcess
from support.storecheck import check_store

UPLOAD_LIMIT = 64 * 1024  # small, so oversize bodies are cheap to send


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir: Path, make_artifact) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("bad-artifacts")
    store = PromptStore(root / "store")
    store.put("alpha", make_artifact("alpha", seed=1))
    srv = ServerProcess(
        tiny_model_dir,
        store.root,
        root / "server.log",
        max_upload_bytes=UPLOAD_LIMIT,
        store_poll_s=0,
        max_new_tokens=4,
        device="cpu",
    )
    yield srv.wait_ready()
    srv.stop()


def request(
    srv: ServerProcess, method: str, path: str, body: object = None, **headers: str
) -> tuple[int, dict]:
    """Raw HTTP/1.1 so the path goes out exactly as written (no client-side normalisation)."""
    conn = http.client.HTTPConnection(HOST, srv.port, timeout=60)
    try:
        conn.request(
            method,
            path,
            body=body,
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}", **headers},
            encode_chunked=headers.get("Transfer-Encoding") == "chunked",
        )
        response = conn.getresponse()
        data = response.read()
    finally:
        conn.close()
    try:
        return response.status, json.loads(data)
    except json.JSONDecodeError:
        return response.status, {"raw": data.decode(errors="replace")}


def store_snapshot(srv: ServerProcess) -> dict[str, dict[int, str]]:
    return check_store(srv.store).shas


def bodies(make_artifact, fingerprint: str) -> list[BadBody]:
    return bad_bodies(make_artifact("alpha", seed=5), fingerprint)


def test_every_bad_artifact_is_refused_with_its_reason(server, make_artifact, fingerprint):
    before = store_snapshot(server)
    wrong = {}
    for bad in bodies(make_artifact, fingerprint):
        status, body = request(server, "PUT", "/admin/profiles/alpha", bad.body)
        error = body.get("error")
        reason = error.get("code") if isinstance(error, dict) else None
        if (status, reason) != (422, bad.reason):
            wrong[bad.name] = (status, body)
    assert not wrong, f"refused wrongly (want 422 + reason): {wrong}"
    assert store_snapshot(server) == before


def test_oversize_bodies_are_refused_before_reading_them(server):
    big = b"\0" * (UPLOAD_LIMIT + 1)
    status, body = request(server, "PUT", "/admin/profiles/alpha", big)
    assert status == 413 and body["error"]["code"] == "too_large"
    chunked = iter([b"\0" * 16384] * 8)  # no Content-Length: the limit applies while streaming
    status, body = request(
        server, "PUT", "/admin/profiles/alpha", chunked, **{"Transfer-Encoding": "chunked"}
    )
    assert status == 413 and body["error"]["code"] == "too_large"
    # a declared size far over the limit is refused from the header alone (no body is sent)
    conn = http.client.HTTPConnection(HOST, server.port, timeout=30)
    conn.putrequest("PUT", "/admin/profiles/alpha")
    conn.putheader("Authorization", f"Bearer {ADMIN_TOKEN}")
    conn.putheader("Content-Length", str(10**12))
    conn.endheaders()
    assert conn.getresponse().status == 413
    conn.close()


@pytest.mark.parametrize("method,suffix", [("PUT", ""), ("GET", ""), ("POST", "/activate"), ("DELETE", "")])
def test_bad_profile_ids_are_refused_and_touch_nothing(server, make_artifact, method, suffix):
    root = server.store.parent  # the store and everything next to it
    files_before = sorted(p.relative_to(root) for p in root.rglob("*") if ".tmp-" not in p.name)
    valid = make_artifact("alpha", seed=6)
    body = {"PUT": valid, "POST": json.dumps({"version": 1}).encode()}.get(method)
    headers = {"Content-Type": "application/json"} if method == "POST" else {}
    failures = {}
    for raw_id in BAD_IDS:
        status, answer = request(server, method, f"/admin/profiles/{raw_id}{suffix}", body, **headers)
        if not 400 <= status < 500 or "error" not in answer:
            failures[raw_id[:40]] = (status, answer)
    assert not failures, failures
    files_after = sorted(p.relative_to(root) for p in root.rglob("*") if ".tmp-" not in p.name)
    assert files_after == files_before


def failures_counted(srv: ServerProcess, reason: str) -> float:
    conn = http.client.HTTPConnection(HOST, srv.port, timeout=60)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    line = f'spul_upload_failures_total{{reason="{reason}"}} '
    return sum(float(ln.removeprefix(line)) for ln in text.splitlines() if ln.startswith(line))


def test_deeply_nested_metadata_is_a_counted_4xx(server, fingerprint):
    before, stored = failures_counted(server, "bad_metadata"), store_snapshot(server)
    nested = craft({TENSOR_NAME: torch.randn(4, HIDDEN)}, fingerprint=fingerprint,
                   training_config="[" * 20_000 + "]" * 20_000)  # fits the 64 KiB upload limit
    status, body = request(server, "PUT", "/admin/profiles/alpha", nested)
    assert (status, body["error"]["code"]) == (422, "bad_metadata") and "nests deeper" in body["error"]["message"]
    assert failures_counted(server, "bad_metadata") == before + 1
    assert store_snapshot(server) == stored


def test_server_still_serves_after_the_corpus(server):
    status, body = request(
        server,
        "POST",
        "/v1/generate",
        json.dumps({"profile": "alpha", "prompt": "hello world"}),
        **{"Content-Type": "application/json"},
    )
    assert status == 200 and body["profile"] == "alpha" and body["version"] == 1
    assert server.alive()
