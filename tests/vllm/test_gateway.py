"""`spul serve --engine vllm` against real vLLM servers: same answers as the built-in engine, fail closed."""

from __future__ import annotations

import concurrent.futures
import itertools
import time

import httpx
import openai
import torch

from support.procs import ServerProcess

QUERIES = ["where was alba born ?", "what does brin do", "the film with cora was great", "hello world"]
PROFILE_NAMES = ("alpha", "beta")


def generate(url: str, profile: str, prompt: str, max_new_tokens: int = 8) -> httpx.Response:
    return httpx.post(url + "/v1/generate", json={"profile": profile, "prompt": prompt,
                                                  "max_new_tokens": max_new_tokens}, timeout=120)


def answers(url: str) -> dict[tuple[str, str], dict]:
    out = {}
    for profile, query in itertools.product(PROFILE_NAMES, QUERIES):
        response = generate(url, profile, query)
        assert response.status_code == 200, response.text
        out[profile, query] = response.json()
    return out


def test_greedy_answers_equal_the_builtin_engine(spul_servers):
    builtin, gateway = answers(spul_servers["builtin"].url), answers(spul_servers["vllm"].url)
    for key, expected in builtin.items():
        got = gateway[key]
        assert (got["text"], got["completion_tokens"], got["finish_reason"]) == (
            expected["text"], expected["completion_tokens"], expected["finish_reason"]), key


def test_mixed_profiles_at_once_keep_their_own_prompt(spul_servers):
    expected = answers(spul_servers["builtin"].url)
    keys = list(expected) * 3
    with concurrent.futures.ThreadPoolExecutor(len(keys)) as pool:
        results = list(pool.map(lambda k: generate(spul_servers["vllm"].url, *k), keys))
    for key, response in zip(keys, results, strict=True):
        assert response.status_code == 200, response.text
        assert response.json()["text"] == expected[key]["text"], key


def test_streamed_completion_through_the_openai_client(spul_servers):
    expected = answers(spul_servers["builtin"].url)
    client = openai.OpenAI(base_url=spul_servers["vllm"].url + "/v1", api_key="unused")
    for profile in PROFILE_NAMES:
        stream = client.completions.create(model=profile, prompt=QUERIES[0], max_tokens=8, temperature=0,
                                           stream=True)
        text = "".join(chunk.choices[0].text for chunk in stream if chunk.choices)
        assert text == expected[profile, QUERIES[0]]["text"]


def test_a_backend_running_another_model_stops_the_gateway(other_model_dir, store_dir, vllm_servers, tmp_path):
    gateway = ServerProcess(other_model_dir, store_dir, tmp_path / "wrong.log", engine="vllm",
                            vllm_urls=vllm_servers[0].url, store_poll_s=0, device="cpu")
    try:
        gateway.proc.join(timeout=300)
        assert gateway.proc.exitcode == 3, gateway.log_tail()  # start-up failure
        assert "runs a different model" in gateway.log_tail()
    finally:
        gateway.stop()


def bare_answer(hf_model, query: str, max_new_tokens: int = 8) -> str:
    """What the model says with no soft prompt: the gateway must never return this for a profile."""
    model, tokenizer = hf_model
    ids = tokenizer(query, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def test_a_backend_killed_mid_load_fails_over_and_never_answers_bare(spul_servers, vllm_servers, hf_model):
    """Runs last in this file: it kills one of the two vLLM servers."""
    url = spul_servers["vllm"].url
    expected = answers(spul_servers["builtin"].url)
    bare = {q: bare_answer(hf_model, q) for q in QUERIES}
    keys = [k for k in expected if expected[k]["text"] != bare[k[1]]]
    assert keys, "every profile answers as the bare model: the test could not tell them apart"
    results: list[tuple[tuple[str, str], int, str]] = []
    stop_at = time.monotonic() + 25

    def client_loop(offset: int) -> None:
        for key in itertools.islice(itertools.cycle(keys), offset, None):
            if time.monotonic() > stop_at:
                return
            try:
                response = generate(url, *key)
            except httpx.HTTPError:
                continue
            text = response.json().get("text", "") if response.status_code == 200 else ""
            results.append((key, response.status_code, text))

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(client_loop, i) for i in range(4)]
        time.sleep(5)
        vllm_servers[0].kill9()
        for future in futures:
            future.result()
    assert results, "no request completed during the load"
    after_kill = results[len(results) // 2:]
    for key, status, text in results:
        if status == 200:
            assert text == expected[key]["text"], (key, text)  # the profile's answer, never the bare one
        else:
            assert status >= 500, (key, status)
    assert sum(status == 200 for _, status, _ in after_kill) >= len(after_kill) // 2, results
