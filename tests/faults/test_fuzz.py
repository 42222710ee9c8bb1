"""Fuzz every operation of the server's own OpenAPI spec with schemathesis: no 5xx, no crash.

A real `spul serve` process on loopback; every case carries the admin token, so the admin
operations are fuzzed past authentication too. Bounded: FUZZ_MAX_EXAMPLES cases per operation
(default 10), derandomized so a failure reproduces.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings

from spul.prompts_store import PromptStore
from support.procs import ServerProcess, admin_headers

MAX_EXAMPLES = int(os.environ.get("FUZZ_MAX_EXAMPLES", "10"))


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory, tiny_model_dir: Path, make_artifact) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("fuzz")
    store = PromptStore(root / "store")
    for i, name in enumerate(("alpha", "beta")):
        store.put(name, make_artifact(name, seed=i))
    server = ServerProcess(
        tiny_model_dir,
        store.root,
        root / "server.log",
        max_new_tokens=4,
        max_prompt_tokens=32,
        max_upload_bytes=65536,
        default_profile="alpha",
        request_timeout_s=20,
        store_poll_s=0,
        device="cpu",
    )
    yield server.wait_ready()
    server.stop()


@pytest.fixture(scope="module")
def api_schema(fuzz_server: ServerProcess):
    return schemathesis.openapi.from_url(fuzz_server.url + "/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    phases=[Phase.explicit, Phase.generate],  # no shrinking: a failure is reported as found, in bounded time
    suppress_health_check=list(HealthCheck),
)
def test_no_server_errors(case, fuzz_server: ServerProcess) -> None:
    response = case.call(headers=admin_headers(), timeout=15)
    assert response.status_code < 500, (
        f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:300]}"
    )
    assert fuzz_server.alive(), fuzz_server.log_tail()


@pytest.mark.parametrize(
    "sampling",
    [{"temperature": 1.0, "top_p": 5e-324}, {"temperature": 1e-300, "top_p": 1.0}, {"temperature": 1e-40}],
)
def test_extreme_sampling_values_are_answered_and_do_not_wedge_the_engine(
    fuzz_server: ServerProcess, sampling
):
    """Found by the fuzzer: one such request used to kill the engine thread, hanging every later request."""
    body = {"model": "alpha", "prompt": "hello world", "max_tokens": 3, "seed": 0, **sampling}
    assert httpx.post(fuzz_server.url + "/v1/completions", json=body, timeout=15).status_code == 200
    greedy = {"profile": "beta", "prompt": "hello world", "max_new_tokens": 2}
    assert httpx.post(fuzz_server.url + "/v1/generate", json=greedy, timeout=15).status_code == 200
