"""Smoke tests of the benchmark harness on the tiny model: schema and plumbing, never timings."""

from __future__ import annotations

import asyncio
import json
import math

import httpx
import pytest
import torch
from fastapi.testclient import TestClient

from spul.benchmarks.bare_server import BARE
from spul.benchmarks.bare_server import create_app as bare_create_app
from spul.benchmarks.cb_server import CBSettings
from spul.benchmarks.cb_server import create_app as cb_create_app
from spul.benchmarks.loadgen import Workload, completion_tokens, parse_event, percentile, run_load
from spul.benchmarks.longprompt import long_prompt_text
from spul.benchmarks.models import write_profiles
from spul.benchmarks.report import targets
from spul.benchmarks.roofline import decode_forward_seconds
from spul.benchmarks.serving import engine_figures, parse_metrics
from spul.cli import main
from spul.service.app import create_app
from spul.service.settings import Settings
from support.server import wait_ready

RESULT_KEYS = {"system", "clients", "tokens_per_s", "p50_ms", "p99_ms", "ttft_p50_ms", "ttft_p99_ms"}


def test_parse_event_reads_data_lines_only():
    assert parse_event('data: {"text": "hi"}') == {"text": "hi"}
    assert parse_event("data: [DONE]") is None
    assert parse_event(": keep-alive") is None
    assert parse_event("data: not json") is None


def test_completion_tokens_flat_or_openai_usage():
    assert completion_tokens({"completion_tokens": 7}) == 7
    assert completion_tokens({"usage": {"completion_tokens": 3}}) == 3
    assert completion_tokens({"text": "a"}) is None


def test_percentile_interpolates_and_handles_empty():
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([5.0], 99) == 5.0
    assert math.isnan(percentile([], 50))


def _sse_app(finish: str, delay_s: float = 0.0):
    async def handler(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(delay_s)
        body = (
            'data: {"text": " a"}\n\ndata: {"text": " b"}\n\n'
            f'data: {{"text": "", "finish_reason": "{finish}", "completion_tokens": 2}}\n\ndata: [DONE]\n\n'
        )
        return httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})

    return httpx.MockTransport(handler)


def test_run_load_counts_tokens_and_treats_timeouts_as_errors():
    workload = Workload(["hello world"], ["p1", "p2"], max_new_tokens=2)
    ok = asyncio.run(
        run_load("http://x", workload, clients=2, requests=5, max_seconds=30, transport=_sse_app("length"))
    )
    assert ok.summary()["requests"] == 5 and ok.summary()["generated_tokens"] == 10
    assert all(r.ttft_s is not None and r.ttft_s <= r.latency_s for r in ok.records)
    cut = asyncio.run(
        run_load("http://x", workload, clients=1, requests=2, max_seconds=30, transport=_sse_app("timeout"))
    )
    assert cut.errors == 2 and cut.summary()["generated_tokens"] == 0


def test_run_load_cuts_off_requests_after_the_drain_deadline():
    workload = Workload(["hello world"], [None])
    slow = _sse_app("length", delay_s=60.0)
    result = asyncio.run(
        run_load(
            "http://x", workload, clients=3, requests=9, max_seconds=0.05, drain_seconds=0.1, transport=slow
        )
    )
    assert result.unfinished == 3 and not result.records and result.wall_s < 10.0


def test_run_load_counts_the_tokens_a_cut_off_request_had_streamed():
    async def stalls_after_two_tokens():
        yield b'data: {"text": " a"}\n\ndata: {"text": " b"}\n\n'
        await asyncio.sleep(60)

    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=stalls_after_two_tokens(), headers={"content-type": "text/event-stream"})

    workload = Workload(["hello world"], [None])
    result = asyncio.run(
        run_load("http://x", workload, clients=1, requests=1, max_seconds=0.05, drain_seconds=0.5,
                 transport=httpx.MockTransport(handler))
    )
    summary = result.summary()
    assert summary["unfinished"] == 1 and summary["unfinished_tokens"] == 2 and summary["generated_tokens"] == 2
    assert summary["ttft_p50_ms"] < 500  # its first token counts towards TTFT too


def test_targets_compare_systems_at_the_same_client_count():
    rows = [
        {"system": "spul", "clients": 8, "tokens_per_s": 90.0, "ttft_p50_ms": 10.0, "ttft_p99_ms": 40.0,
         "step_vs_roofline": 1.5},
        {"system": "no_profile", "clients": 8, "tokens_per_s": 100.0},
        {"system": "naive", "clients": 8, "tokens_per_s": 10.0},
        {"system": "transformers_cb", "clients": 8, "tokens_per_s": 60.0, "ttft_p99_ms": 50.0},
        {"system": "naive", "clients": 32, "tokens_per_s": 10.0},  # no spul row at 32: not compared
    ]
    long = [{"system": "spul", "decodes": 16, "long_prompt_tokens": 2000, "itl_p99_raise": 1.5}]
    by_name = {t["name"]: t for t in targets(rows, long_prompt=long)}
    assert by_name["spul / naive tokens/s at 8 clients"]["value"] == 9.0
    assert by_name["throughput loss vs the bare model at 8 clients"]["met"] is False
    assert by_name["TTFT p99 / p50 at 8 clients"]["value"] == 4.0
    assert by_name["spul / transformers_cb tokens/s at 8 clients"]["value"] == 1.5
    assert by_name["spul / transformers_cb TTFT p99 at 8 clients"]["met"] is True
    assert by_name["spul mean decode step / roofline at 8 clients"]["met"] is False
    assert by_name["p99 ITL of 16 decodes during a 2000-token prompt / before"]["met"] is True


def test_engine_figures_are_means_over_the_run_from_metric_deltas():
    before = parse_metrics(
        "spul_decode_seconds_sum 1.0\nspul_decode_seconds_count 10\nspul_batch_size_sum 40\nspul_batch_size_count 10\n"
    )
    after = parse_metrics(
        "# HELP spul_decode_seconds x\nspul_decode_seconds_sum 3.0\nspul_decode_seconds_count 30\n"
        'spul_batch_size_sum{a="1"} 100\nspul_batch_size_sum{a="2"} 60\nspul_batch_size_count 30\n'
    )
    assert engine_figures(before, after) == {"decode_steps": 20, "decode_step_ms": 100.0, "mean_batch": 6.0}
    assert engine_figures(before, before) == {}  # no step in the run


def test_roofline_forward_is_timed_for_each_batch_size(tiny_model_dir):
    seconds = decode_forward_seconds(tiny_model_dir, [4, 1, 4], context=20, threads=1, repeats=2, warmup=1)
    assert sorted(seconds) == [1, 4] and all(0 < s < 5 for s in seconds.values())


def test_long_prompt_text_has_the_requested_length(tiny_model):
    _, tokenizer = tiny_model
    text, tokens = long_prompt_text(tokenizer, 120)
    assert tokens == len(tokenizer(text)["input_ids"]) and 110 <= tokens <= 120


def _stream(client, body: dict) -> list[dict]:
    with client.stream("POST", "/v1/generate", json={**body, "stream": True, "temperature": 0.0}) as response:
        assert response.status_code == 200, response.read()
        return [e for e in (parse_event(line) for line in response.iter_lines()) if e is not None]


def _stream_ids(client, body: dict) -> list[int]:
    return [e["token_id"] for e in _stream(client, body) if e.get("token_id") is not None]


def _greedy(tiny_model, prompt: str, n: int) -> list[int]:
    """The bare model's greedy continuation, up to and without EOS (what a server streams)."""
    model, tokenizer = tiny_model
    ids = torch.tensor([tokenizer(prompt)["input_ids"]])
    out = model.generate(ids, max_new_tokens=n, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    new = out[0, ids.shape[1] :].tolist()
    return new[: new.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in new else new


def test_transformers_cb_server_streams_the_bare_models_greedy_tokens(tiny_model_dir, tiny_model):
    settings = CBSettings(model=tiny_model_dir, threads=1, page_size=16, num_blocks=16, max_batch_tokens=64)
    with TestClient(cb_create_app(settings)) as client:
        for prompt in ("### question : where was alba born ? ### answer :", "hello world the"):
            assert _stream_ids(client, {"prompt": prompt, "max_new_tokens": 6}) == _greedy(tiny_model, prompt, 6)
        assert client.post("/v1/generate", json={"prompt": "hello", "profile": "p"}).status_code == 400


def test_bare_profile_serves_the_bare_model_and_spul_serve_refuses_it(tiny_model_dir, tiny_model, tmp_path):
    store = tmp_path / "store"
    write_profiles(store, tiny_model_dir, count=1)
    settings = Settings(model=str(tiny_model_dir), store=store, store_poll_s=0)
    prompt = "### question : where was alba born ? ### answer :"
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        assert client.post("/v1/generate", json={"prompt": prompt, "profile": BARE}).status_code == 404
    with TestClient(bare_create_app(settings)) as client:
        wait_ready(client)
        text = "".join(e.get("text", "") for e in _stream(client, {"prompt": prompt, "profile": BARE, "max_new_tokens": 6}))
        assert text == tiny_model[1].decode(_greedy(tiny_model, prompt, 6), skip_special_tokens=True)


def test_spul_bench_serving_every_system_produces_tokens(tiny_model_dir, tmp_path):
    out = tmp_path / "bench.json"
    systems = ("spul", "no_profile", "naive", "transformers_cb")
    args = ["bench", "--model", str(tiny_model_dir), "--clients", "1,2", "--requests", "3", "--max-new-tokens", "4",
            "--profiles", "3", "--suites", "serving", "--systems", ",".join(systems), "--long-prompt-tokens", "60",
            "--long-decodes", "4", "--long-before-seconds", "1", "--rounds", "2", "--json", str(out)]
    assert main(args) == 0
    report = json.loads(out.read_text())
    assert {"results", "machine", "model", "settings", "git_revision", "targets", "long_prompt"} <= set(report)
    rows = report["results"]
    assert {(r["system"], r["clients"]) for r in rows} == {(s, c) for s in systems for c in (1, 2)}
    for row in rows:
        assert RESULT_KEYS <= set(row)
        assert row["errors"] == 0, row.get("first_error")
        assert row["turns"] == 2 and row["requests"] >= 2 * row["clients"]  # both turns pooled
        assert row["generated_tokens"] > 0 and row["tokens_per_s"] > 0
        assert row["ttft_p50_ms"] is not None and row["ttft_p50_ms"] <= row["p99_ms"]
        if row["system"] in ("spul", "no_profile"):  # engine figures and the roofline beside them
            assert row["decode_steps"] > 0 and row["roofline_ms"] > 0 and row["step_vs_roofline"] > 0
    long = {r["system"]: r for r in report["long_prompt"]}
    assert set(long) == {"spul", "transformers_cb"}
    for row in long.values():
        assert row["long_error"] is None and row["short_errors"] == 0
        assert row["long_ttft_ms"] > 0 and row["itl_count_before"] + row["itl_count_during"] > 0
    table = out.with_suffix(".md").read_text()
    assert "| transformers_cb | 2 |" in table and "| naive | 1 |" in table and "itl_p99_raise" in table


@pytest.mark.slow
def test_spul_bench_profiles_and_train_step(tiny_model_dir, tmp_path):
    out = tmp_path / "bench.json"
    code = main(
        [
            "bench",
            "--model",
            str(tiny_model_dir),
            "--many-profiles",
            "4",
            "--max-new-tokens",
            "2",
            "--suites",
            "profiles,train_step",
            "--json",
            str(out),
        ]
    )
    assert code == 0
    report = json.loads(out.read_text())
    many = report["many_profiles"]
    assert many["one_listed"] == 1 and many["many_listed"] == 4
    assert many["one_errors"] == 0 and many["many_errors"] == 0
    assert many["bytes_per_profile_computed"] == 30 * 32 * 4  # P x H x float32
    assert many["one_tokens_per_s"] > 0 and many["many_tokens_per_s"] > 0
    step = report["train_step"]
    for name in ("spul", "spul_no_kl", "peft_ptuning"):
        assert step[f"{name}_s_per_step"] > 0
    assert any(t["name"].startswith("tokens/s with 4 profiles") for t in report["targets"])


def test_spul_bench_rejects_unknown_model(tmp_path, capsys):
    code = main(["bench", "--model", str(tmp_path / "nope"), "--json", str(tmp_path / "x.json")])
    assert code == 2
    assert "speed-100m" in capsys.readouterr().err


def test_vllm_suite_without_a_vllm_environment_says_what_to_pass(tmp_path, capsys):
    from spul.cli import main

    assert main(["bench", "--suites", "vllm", "--json", str(tmp_path / "b.json")]) == 2
    assert "--vllm-python" in capsys.readouterr().err
    assert not (tmp_path / "b.json").exists()
