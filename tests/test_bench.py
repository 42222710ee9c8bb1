"""Smoke tests of the benchmark harness on the tiny model: schema and plumbing, never timings."""

from __future__ import annotations

import asyncio
import json
import math

import httpx
import pytest

from spul.benchmarks.loadgen import Workload, completion_tokens, parse_event, percentile, run_load
from spul.benchmarks.report import targets
from spul.cli import main

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
    slow = _sse_app("length", delay_s=5.0)
    result = asyncio.run(
        run_load(
            "http://x", workload, clients=3, requests=9, max_seconds=0.05, drain_seconds=0.1, transport=slow
        )
    )
    assert result.unfinished == 3 and not result.records and result.wall_s < 2.0


def test_targets_compare_systems_at_the_same_client_count():
    rows = [
        {"system": "spul", "clients": 8, "tokens_per_s": 90.0, "ttft_p50_ms": 10.0, "ttft_p99_ms": 40.0},
        {"system": "no_profile", "clients": 8, "tokens_per_s": 100.0},
        {"system": "naive", "clients": 8, "tokens_per_s": 10.0},
    ]
    by_name = {t["name"]: t for t in targets(rows)}
    assert by_name["spul / naive tokens/s at 8 clients"]["value"] == 9.0
    assert by_name["throughput loss vs no profile at 8 clients (cache on)"]["met"] is False
    assert by_name["TTFT p99 / p50 at 8 clients"]["value"] == 4.0


def test_spul_bench_serving_every_system_produces_tokens(tiny_model_dir, tmp_path):
    out = tmp_path / "bench.json"
    code = main(
        [
            "bench",
            "--model",
            str(tiny_model_dir),
            "--clients",
            "1,2",
            "--requests",
            "3",
            "--max-new-tokens",
            "4",
            "--profiles",
            "3",
            "--suites",
            "serving",
            "--json",
            str(out),
        ]
    )
    assert code == 0
    report = json.loads(out.read_text())
    assert {"results", "machine", "model", "settings", "git_revision", "targets"} <= set(report)
    rows = report["results"]
    assert {(r["system"], r["clients"]) for r in rows} == {
        (s, c) for s in ("spul", "no_profile", "spul_no_cache", "naive") for c in (1, 2)
    }
    for row in rows:
        assert RESULT_KEYS <= set(row)
        assert row["errors"] == 0, row.get("first_error")
        assert row["generated_tokens"] > 0 and row["tokens_per_s"] > 0
        assert row["ttft_p50_ms"] is not None and row["ttft_p50_ms"] <= row["p99_ms"]
    table = out.with_suffix(".md").read_text()
    assert "| spul_no_cache | 2 |" in table and "| naive | 1 |" in table


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
