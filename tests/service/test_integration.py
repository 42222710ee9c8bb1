"""A real uvicorn on a loopback port, driven by httpx and the official `openai` client."""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families
from transformers import AutoModelForCausalLM, AutoTokenizer

from spul.prompts_store import PromptStore
from spul.service.app import create_app
from support.artifacts import make_artifact
from support.liveserver import LiveServer
from support.server import admin_headers

QUERIES = ["where was alba born ?", "what does brin do", "the film with cora was great", "hello world"]


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
    assert client.models.retrieve("beta").id == "beta"
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
    with_usage = list(client.chat.completions.create(
        model="alpha", messages=[{"role": "user", "content": QUERIES[1]}], max_tokens=3, temperature=0, stream=True,
        stream_options={"include_usage": True},
    ))
    assert with_usage[-1].choices == [] and with_usage[-1].usage.completion_tokens == 3
    assert all(c.usage is None for c in with_usage[:-1])


def test_the_openai_client_shows_every_error_message(live):
    server = live()
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError) as missing:
        client.completions.create(model="nope", prompt="hello", max_tokens=2)
    assert missing.value.code == "profile_not_found" and "/v1/models" in missing.value.body["message"]
    with pytest.raises(openai.UnprocessableEntityError) as invalid:
        client.completions.create(model="beta", prompt="hello", max_tokens=2, temperature=5)
    assert invalid.value.code == "validation_error" and invalid.value.param == "temperature"
    assert "less than or equal to 2" in invalid.value.body["message"]
    with pytest.raises(openai.BadRequestError) as logprobs:
        client.chat.completions.create(model="beta", messages=[{"role": "user", "content": "hi"}], logprobs=True)
    assert logprobs.value.param == "logprobs" and "not supported" in logprobs.value.body["message"]
    with pytest.raises(openai.NotFoundError) as unknown_model:
        client.models.retrieve("nope")
    assert unknown_model.value.code == "profile_not_found"


def test_every_stream_ends_with_done(live):
    server = live()
    bodies = {
        "/v1/generate": {"profile": "alpha", "prompt": QUERIES[0], "max_new_tokens": 3, "stream": True},
        "/v1/completions": {"model": "alpha", "prompt": QUERIES[0], "max_tokens": 3, "stream": True},
        "/v1/chat/completions": {"model": "alpha", "messages": [{"role": "user", "content": QUERIES[0]}],
                                 "max_tokens": 3, "stream": True},
    }
    for route, body in bodies.items():
        lines = [line for line in httpx.post(server.url + route, json=body, timeout=30).text.splitlines() if line]
        assert lines[-1] == "data: [DONE]", route
        finals = [json.loads(line[6:]) for line in lines[:-1]]
        reasons = [e.get("finish_reason", e.get("choices", [{}])[0].get("finish_reason")) for e in finals]
        assert reasons[-1] in ("length", "stop") and not any(reasons[:-1]), route  # one terminal event


async def _generate_all(url: str, jobs: list[tuple[str, str]]) -> list[dict]:
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        async def one(profile: str, prompt: str) -> dict:
            r = await client.post("/v1/generate", json={"profile": profile, "prompt": prompt, "max_new_tokens": 6})
            assert r.status_code == 200, r.text
            return r.json()

        return await asyncio.gather(*(one(p, q) for p, q in jobs))


def metric_samples(url: str, name: str) -> list:
    return [s for f in text_string_to_metric_families(httpx.get(url + "/metrics").text) for s in f.samples
            if s.name == name]


def test_concurrent_requests_across_profiles_match_sequential_ones(live):
    server = live(max_batch_size=8)
    jobs = [(p, q) for q in QUERIES for p in ("alpha", "beta")] * 2
    sequential = [asyncio.run(_generate_all(server.url, [job]))[0] for job in jobs[:8]]
    concurrent = asyncio.run(_generate_all(server.url, jobs))
    assert [r["text"] for r in concurrent] == [r["text"] for r in sequential] * 2
    finished = {(s.labels["profile"], s.labels["finish_reason"]): s.value
                for s in metric_samples(server.url, "spul_requests_total")}
    assert finished == {("alpha", "length"): 12.0, ("beta", "length"): 12.0}


class Stream:
    """One streamed /v1/generate request, read event by event; closing it cancels the request."""

    def __init__(self, client: httpx.Client, body: dict) -> None:
        self.context = client.stream("POST", "/v1/generate", json={**body, "stream": True})
        self.response = self.context.__enter__()
        assert self.response.status_code == 200
        self.lines = (line[len("data: "):] for line in self.response.iter_lines() if line.startswith("data: "))

    def events(self, n: int) -> list[dict]:
        return [json.loads(next(self.lines)) for _ in range(n)]

    def close(self) -> None:
        self.context.__exit__(None, None, None)


def test_running_requests_share_decode_steps(live, long_context_model_dir, long_context_store):
    server = live(model=str(long_context_model_dir), store=long_context_store, max_batch_size=4,
                  max_new_tokens=100_000)
    body = {"prompt": QUERIES[0], "max_new_tokens": 100_000}
    with httpx.Client(base_url=server.url, timeout=30) as client:
        streams = [Stream(client, {**body, "profile": p}) for p in ("alpha", "beta")]
        for stream in streams:
            stream.events(1)  # both admitted: neither can finish on its own
        assert [s.value for s in metric_samples(server.url, "spul_requests_running")] == [2.0]
        for stream in streams:
            stream.events(20)  # steps taken while both run
            stream.close()
    buckets = {s.labels["le"]: s.value for s in metric_samples(server.url, "spul_batch_size_bucket")}
    assert buckets["1.0"] < buckets["2.0"]  # some decode steps ran both rows


def test_a_running_request_keeps_its_version_when_a_new_one_is_published(
    live, long_context_model_dir, long_context_store
):
    server = live(model=str(long_context_model_dir), store=long_context_store, max_new_tokens=100_000)
    model = AutoModelForCausalLM.from_pretrained(long_context_model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(long_context_model_dir)
    new = make_artifact(model, tokenizer, profile="alpha", num_virtual_tokens=6, seed=42)
    n = 30
    body = {"profile": "alpha", "prompt": QUERIES[0], "max_new_tokens": n}
    with httpx.Client(base_url=server.url, timeout=30) as client:
        v1_text = client.post("/v1/generate", json=body).json()["text"]
        running = Stream(client, {**body, "max_new_tokens": 100_000})
        first = running.events(1)
        put = client.put("/admin/profiles/alpha", content=new, headers=admin_headers())
        assert put.status_code == 201 and put.json()["version"] == 2
        after = client.post("/v1/generate", json=body).json()
        assert after["version"] == 2 and after["text"] != v1_text  # otherwise the check below proves nothing
        rest = running.events(n - 1)  # tokens generated while version 2 was already published
        running.close()
    assert {e["version"] for e in first + rest} == {1}
    assert "".join(e["text"] for e in first + rest).startswith(v1_text)


def test_client_disconnect_mid_stream_frees_the_batch_slot(live, long_context_model_dir, long_context_store):
    server = live(model=str(long_context_model_dir), store=long_context_store, max_batch_size=1,
                  max_new_tokens=100_000)
    body = {"profile": "alpha", "prompt": QUERIES[0], "max_new_tokens": 100_000}
    with httpx.Client(base_url=server.url, timeout=30) as client:
        stream = Stream(client, body)
        assert stream.events(1)[0]["profile"] == "alpha"
        stream.close()
        # the only slot was held by the abandoned stream; this request can only finish if it was freed
        done = client.post("/v1/generate", json={"profile": "beta", "prompt": QUERIES[1], "max_new_tokens": 3})
        assert done.status_code == 200
    cancelled = [s for s in metric_samples(server.url, "spul_requests_total") if s.labels["finish_reason"] == "cancelled"]
    assert cancelled and cancelled[0].value == 1.0


def test_client_disconnect_during_a_non_streamed_request_frees_the_batch_slot(
    live, long_context_model_dir, long_context_store
):
    server = live(model=str(long_context_model_dir), store=long_context_store, max_batch_size=1,
                  max_new_tokens=100_000)
    body = {"profile": "alpha", "prompt": QUERIES[0], "max_new_tokens": 100_000}
    with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes the connection
        httpx.post(server.url + "/v1/generate", json=body, timeout=1.0)
    # the only slot was held by the abandoned request; this one can only finish if it was freed
    done = httpx.post(server.url + "/v1/generate", json={"profile": "beta", "prompt": QUERIES[1],
                                                         "max_new_tokens": 3}, timeout=30)
    assert done.status_code == 200
    cancelled = [s for s in metric_samples(server.url, "spul_requests_total") if s.labels["finish_reason"] == "cancelled"]
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


def test_admin_cli_client(live, tiny_model, tmp_path, capsys, caplog):
    from spul.cli import main
    from support.server import ADMIN_TOKEN

    server = live()
    caplog.set_level(logging.INFO)
    caplog.clear()
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
    assert "(401): missing or wrong admin bearer token" in capsys.readouterr().err
    assert not [r for r in caplog.records if r.name.startswith("httpx")]  # no line per HTTP call
    empty = live(store=tmp_path / "empty-store")
    assert main(["profiles", "list", "--server", empty.url, "--token", ADMIN_TOKEN]) == 0
    assert f"no profiles on {empty.url}: publish one with `spul upload" in capsys.readouterr().err
    no_admin = live(admin_token=None)
    assert main(["profiles", "list", "--server", no_admin.url, "--token", ADMIN_TOKEN]) == 2
    assert "admin endpoints are disabled on this server: start it with SPUL_ADMIN_TOKEN" in capsys.readouterr().err


class SlowTokenizer:
    """The server's tokenizer, taking `delay_s` longer for every encoding."""

    def __init__(self, inner, delay_s: float) -> None:
        self.inner, self.delay_s = inner, delay_s

    def __call__(self, *args, **kwargs):
        time.sleep(self.delay_s)
        return self.inner(*args, **kwargs)

    def apply_chat_template(self, *args, **kwargs):
        time.sleep(self.delay_s)
        return self.inner.apply_chat_template(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


@pytest.mark.parametrize("route", ["/v1/generate", "/v1/chat/completions"])
def test_tokenisation_does_not_stall_other_requests(live, route):
    server = live()
    runtime = server.app.state.runtime
    runtime.tokenizer = SlowTokenizer(runtime.tokenizer, delay_s=2.0)
    body = ({"profile": "alpha", "prompt": QUERIES[0], "max_new_tokens": 2} if route == "/v1/generate" else
            {"model": "alpha", "messages": [{"role": "user", "content": QUERIES[0]}], "max_tokens": 2})
    slow = threading.Thread(target=lambda: results.append(httpx.post(server.url + route, json=body, timeout=30)))
    results: list[httpx.Response] = []
    slow.start()
    time.sleep(0.3)  # the slow request is being tokenised now
    start = time.monotonic()
    assert httpx.get(server.url + "/healthz", timeout=30).status_code == 200
    assert time.monotonic() - start < 1.0  # on the event loop the tokenisation would hold it for ~1.7 s
    slow.join(timeout=30)
    assert results[0].status_code == 200


def test_a_huge_body_is_refused_at_once_and_others_are_served(live):
    server = live()  # the default limit: SPUL_MAX_REQUEST_BYTES = 1 MiB
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    start = time.monotonic()
    conn.putrequest("POST", "/v1/chat/completions")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(51 * 2**20))  # 256 messages of 200k characters
    conn.endheaders(b'{"model": "alpha", "messages": [')
    response = conn.getresponse()
    refused = json.loads(response.read())
    conn.close()
    assert response.status == 413 and refused["error"]["code"] == "request_too_large"
    assert time.monotonic() - start < 2.0
    small = httpx.post(server.url + "/v1/generate", json={"profile": "beta", "prompt": QUERIES[1], "max_new_tokens": 2})
    assert small.status_code == 200


def closed_within(sock: socket.socket, seconds: float, trickle: bytes | None = None) -> bool:
    """Whether the server closes `sock` within `seconds`, while we send `trickle` a byte at a time."""
    deadline = time.monotonic() + seconds
    sock.settimeout(0.2)
    sent = 0
    while time.monotonic() < deadline:
        if trickle is not None and sent < len(trickle):
            try:
                sock.send(trickle[sent : sent + 1])
            except OSError:
                return True
            sent += 1
        try:
            if sock.recv(4096) == b"":
                return True
        except TimeoutError:
            continue
        except OSError:
            return True
    return False


def test_idle_and_trickling_connections_are_closed(live):
    server = live(read_timeout_s=0.5)
    idle = socket.create_connection(("127.0.0.1", server.port))
    trickling = socket.create_connection(("127.0.0.1", server.port))
    header = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: a\r\n" * 100
    assert closed_within(idle, 3.0)
    assert closed_within(trickling, 3.0, trickle=header)
    idle.close()
    trickling.close()
    # a slow body: the head arrives, the body does not
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.putrequest("POST", "/v1/generate")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", "100")
    conn.endheaders(b'{"profile": ')
    response = conn.getresponse()
    assert response.status == 408 and json.loads(response.read())["error"]["code"] == "request_timeout"
    conn.close()
    assert httpx.get(server.url + "/healthz").status_code == 200  # a prompt client is served


def test_requests_beyond_the_connection_limit_get_503(live):
    server = live(max_connections=3)
    held = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(3)]
    try:
        assert httpx.get(server.url + "/healthz").status_code == 503
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 5
    while httpx.get(server.url + "/healthz").status_code != 200:
        assert time.monotonic() < deadline, "the limit did not free up when the connections closed"
        time.sleep(0.05)
