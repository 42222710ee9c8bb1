"""A real uvicorn on a loopback port, driven by httpx and the official `openai` client."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import openai
import pytest
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from spul.prompts_store import PromptStore
from spul.service.app import create_app
from support.artifacts import make_artifact
from support.server import admin_headers

QUERIES = ["where was alba born ?", "what does brin do", "the film with cora was great", "hello world"]


class LiveServer:
    def __init__(self, app) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/readyz").status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise AssertionError("server did not become ready")

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()


@pytest.fixture
def live(make_settings) -> Iterator[Callable[..., LiveServer]]:
    servers: list[LiveServer] = []

    def start(**overrides: object) -> LiveServer:
        server = LiveServer(create_app(make_settings(**overrides))).__enter__()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.__exit__(None, None, None)


def test_openai_client_against_the_server(live):
    server = live()
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    assert sorted(m.id for m in client.models.list()) == ["alpha", "beta"]
    done = client.completions.create(model="beta", prompt=QUERIES[0], max_tokens=4, temperature=0)
    assert done.model == "beta" and done.system_fingerprint == "beta@v1"
    assert done.choices[0].finish_reason == "length" and done.usage.completion_tokens == 4
    chunks = list(client.completions.create(model="beta", prompt=QUERIES[0], max_tokens=4, temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == done.choices[0].text
    chat = client.chat.completions.create(
        model="alpha", messages=[{"role": "user", "content": QUERIES[1]}], max_tokens=3, temperature=0
    )
    assert chat.choices[0].message.role == "assistant" and chat.usage.completion_tokens == 3
    stream = client.chat.completions.create(
        model="alpha", messages=[{"role": "user", "content": QUERIES[1]}], max_tokens=3, temperature=0, stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream) == chat.choices[0].message.content
    with pytest.raises(openai.NotFoundError, match="/v1/models"):
        client.completions.create(model="nope", prompt="hello", max_tokens=2)


async def _generate_all(url: str, jobs: list[tuple[str, str]]) -> list[dict]:
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        async def one(profile: str, prompt: str) -> dict:
            r = await client.post("/v1/generate", json={"profile": profile, "prompt": prompt, "max_new_tokens": 6})
            assert r.status_code == 200, r.text
            return r.json()

        return await asyncio.gather(*(one(p, q) for p, q in jobs))


def test_concurrent_requests_across_profiles_match_sequential_ones(live):
    server = live(max_batch_size=8)
    jobs = [(p, q) for q in QUERIES for p in ("alpha", "beta")] * 2
    sequential = [asyncio.run(_generate_all(server.url, [job]))[0] for job in jobs[:8]]
    concurrent = asyncio.run(_generate_all(server.url, jobs))
    assert [r["text"] for r in concurrent] == [r["text"] for r in sequential] * 2
    families = {f.name: f for f in text_string_to_metric_families(httpx.get(server.url + "/metrics").text)}
    finished = {(s.labels["profile"], s.labels["finish_reason"]): s.value
                for s in families["spul_requests"].samples if s.name == "spul_requests_total"}
    assert finished == {("alpha", "length"): 12.0, ("beta", "length"): 12.0}
    batch = {s.name: s.value for s in families["spul_batch_size"].samples}
    assert batch["spul_batch_size_sum"] > batch["spul_batch_size_count"]  # some steps ran more than one row


def test_upload_during_load_switches_versions_without_failing_requests(live, tiny_model):
    server = live(max_batch_size=4)
    model, tokenizer = tiny_model
    new = make_artifact(model, tokenizer, profile="alpha", num_virtual_tokens=6, seed=42)

    async def scenario() -> tuple[list[dict], list[dict]]:
        load = asyncio.create_task(_generate_all(server.url, [("alpha", q) for q in QUERIES * 4]))
        await asyncio.sleep(0.05)
        async with httpx.AsyncClient(base_url=server.url) as client:
            r = await client.put("/admin/profiles/alpha", content=new, headers=admin_headers())
            assert r.status_code == 201, r.text
        return await load, await _generate_all(server.url, [("alpha", q) for q in QUERIES])

    during, after = asyncio.run(scenario())
    assert {r["version"] for r in during} <= {1, 2}
    assert [r["version"] for r in after] == [2] * len(QUERIES)


def test_client_disconnect_mid_stream_frees_the_batch_slot(live):
    server = live(max_batch_size=1, max_new_tokens=100_000)
    body = {"profile": "alpha", "prompt": QUERIES[0], "max_new_tokens": 100_000, "stream": True}
    with httpx.Client(base_url=server.url, timeout=30) as client:
        with client.stream("POST", "/v1/generate", json=body) as response:
            first = next(line for line in response.iter_lines() if line.startswith("data: "))
            assert json.loads(first[len("data: "):])["profile"] == "alpha"
        # the only slot was held by the abandoned stream; this request can only finish if it was freed
        done = client.post("/v1/generate", json={"profile": "beta", "prompt": QUERIES[1], "max_new_tokens": 3})
        assert done.status_code == 200
    text = httpx.get(server.url + "/metrics").text
    cancelled = [s for f in text_string_to_metric_families(text) for s in f.samples
                 if s.name == "spul_requests_total" and s.labels["finish_reason"] == "cancelled"]
    assert cancelled and cancelled[0].value == 1.0


def test_client_disconnect_during_a_non_streamed_request_frees_the_batch_slot(live):
    server = live(max_batch_size=1, max_new_tokens=100_000)
    body = {"profile": "alpha", "prompt": QUERIES[0], "max_new_tokens": 100_000}
    with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes the connection
        httpx.post(server.url + "/v1/generate", json=body, timeout=1.0)
    # the only slot was held by the abandoned request; this one can only finish if it was freed
    done = httpx.post(server.url + "/v1/generate", json={"profile": "beta", "prompt": QUERIES[1],
                                                         "max_new_tokens": 3}, timeout=30)
    assert done.status_code == 200
    text = httpx.get(server.url + "/metrics").text
    cancelled = [s for f in text_string_to_metric_families(text) for s in f.samples
                 if s.name == "spul_requests_total" and s.labels["finish_reason"] == "cancelled"]
    assert cancelled and cancelled[0].value == 1.0


def test_changes_by_another_process_are_picked_up_by_polling(live, store_dir, tiny_model):
    server = live(store_poll_s=0.1)
    model, tokenizer = tiny_model
    PromptStore(store_dir).put("gamma", make_artifact(model, tokenizer, profile="gamma", num_virtual_tokens=2, seed=5))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if "gamma" in [m["id"] for m in httpx.get(server.url + "/v1/models").json()["data"]]:
            break
        time.sleep(0.05)
    r = httpx.post(server.url + "/v1/generate", json={"profile": "gamma", "prompt": "hello", "max_new_tokens": 2})
    assert r.status_code == 200 and r.json()["profile"] == "gamma"


def test_admin_cli_client(live, tiny_model, tmp_path, capsys):
    from spul.cli import main
    from support.server import ADMIN_TOKEN

    server = live()
    model, tokenizer = tiny_model
    path = tmp_path / "delta.safetensors"
    path.write_bytes(make_artifact(model, tokenizer, profile="delta", num_virtual_tokens=2, seed=8))
    conn = ["--server", server.url, "--token", ADMIN_TOKEN]
    assert main(["upload", str(path), "--profile", "delta", *conn]) == 0
    assert main(["upload", str(path), "--profile", "delta", *conn]) == 0
    assert main(["profiles", "activate", "delta", "1", *conn]) == 0
    assert main(["profiles", "delete", "delta", "--version", "2", *conn]) == 0
    capsys.readouterr()
    assert main(["profiles", "list", *conn]) == 0
    listing = capsys.readouterr().out
    assert "delta\tactive v1\tserving v1\tversions [1]" in listing
    assert main(["profiles", "show", "delta", "--server", server.url, "--token", "x" * 20]) == 2  # wrong token
    assert "401" in capsys.readouterr().err
