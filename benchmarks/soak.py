"""Bounded soak: minutes of mixed load with profile uploads on one `spul serve` over loopback.

Closed-loop clients send a mix of requests (our generate, streamed and not, greedy and seeded
sampling; OpenAI completions; model listing; metrics) while an admin loop uploads new versions
of the profiles, re-activates old ones and deletes stale ones. Counted: every request that did
not finish normally. Sampled: the server's resident memory, whose slope (least squares after a
warm-up) says whether memory is flat.

    nice python -m spul.benchmarks.soak --minutes 10 --json soak.json
    nice python -m spul.benchmarks.soak --minutes 3 --model tiny --json soak.json

Every loop is bounded by the deadline; the server is a real process on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import torch

from spul.benchmarks.models import build_speed_model, prepare_model, query_texts, write_profiles
from spul.benchmarks.report import git_revision, machine_info
from spul.benchmarks.servers import RunningServer, running, server_pid_rss, spul_server, thread_env

log = logging.getLogger(__name__)

ADMIN_TOKEN = "soak-admin-token-0123456789abcdef"
PROFILES = 4
KEEP_VERSIONS = 3  # per profile; older inactive versions are deleted so the store stays bounded
FAILED_FINISH = {"timeout", "cancelled", "error"}


@dataclass(frozen=True)
class SoakOptions:
    minutes: float = 10.0
    model: str = "tiny"  # "tiny", "reference", "speed-100m" or a local model directory
    clients: int = 4
    max_new_tokens: int = 12
    upload_every_s: float = 5.0
    sample_every_s: float = 5.0
    warmup_fraction: float = 0.2  # RSS samples before this fraction of the run are not in the slope
    server_threads: int | None = 1
    workdir: Path | None = None

    def __post_init__(self) -> None:
        if self.minutes <= 0 or self.clients < 1 or self.upload_every_s <= 0 or self.sample_every_s <= 0:
            raise ValueError("minutes, clients, upload_every_s and sample_every_s must be positive")


@dataclass
class Tally:
    """Outcomes per request kind; a few error messages are kept for the report."""

    ok: Counter = field(default_factory=Counter)
    failed: Counter = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)

    def record(self, kind: str, error: str | None, latency_s: float) -> None:
        if error is None:
            self.ok[kind] += 1
            self.latencies_ms.append(latency_s * 1000)
            return
        self.failed[kind] += 1
        if len(self.errors) < 20:
            self.errors.append(f"{kind}: {error}")


# ---- the model and its store -------------------------------------------------------------------
def prepare(options: SoakOptions, workdir: Path) -> tuple[Path, Path, list[str]]:
    """The model directory, a store with PROFILES random profiles for it, and their ids."""
    if options.model == "tiny":
        model_path = build_speed_model(workdir / "tiny", hidden=64, layers=2, heads=4)
    else:
        model_path = prepare_model(options.model, workdir=workdir).path
    store = workdir / "store"
    ids = write_profiles(store, model_path, count=PROFILES, lengths=(4, 8, 16), prefix="soak")
    return model_path, store, ids


def artifact_maker(model_path: Path):
    """A function (profile, seed) -> artifact bytes for this model (random prompt, right fingerprint)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from spul.prompts_store import artifact_bytes, model_fingerprint

    model = AutoModelForCausalLM.from_pretrained(model_path).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    fingerprint = model_fingerprint(model, tokenizer)
    weight = model.get_input_embeddings().weight.detach()
    scale, hidden = float(weight.std()), int(weight.shape[1])
    del model

    def make(profile: str, seed: int) -> bytes:
        generator = torch.Generator().manual_seed(seed)
        length = (4, 8, 16)[seed % 3]
        prompt = torch.randn(length, hidden, generator=generator) * scale  # (P, H)
        return artifact_bytes(
            prompt, profile=profile, base_model=str(model_path), base_fingerprint=fingerprint
        )

    return make


# ---- load ----------------------------------------------------------------------------------------
def request_for(
    rng: random.Random, profiles: list[str], max_new_tokens: int
) -> tuple[str, str, str, dict | None]:
    """(kind, method, path, json body) drawn from the mix."""
    profile, prompt = rng.choice(profiles), rng.choice(query_texts())
    sampled = {"temperature": 0.8, "top_p": 0.9, "seed": rng.randrange(1000)} if rng.random() < 0.3 else {}
    roll = rng.random()
    if roll < 0.35:
        body = {"profile": profile, "prompt": prompt, "max_new_tokens": max_new_tokens, **sampled}
        return "generate", "POST", "/v1/generate", body
    if roll < 0.65:
        body = {
            "profile": profile,
            "prompt": prompt,
            "max_new_tokens": max_new_tokens,
            "stream": True,
            **sampled,
        }
        return "generate_stream", "POST", "/v1/generate", body
    if roll < 0.9:
        body = {
            "model": profile,
            "prompt": prompt,
            "max_tokens": max_new_tokens,
            "temperature": 0.0,
            **sampled,
        }
        return "completions", "POST", "/v1/completions", body
    if roll < 0.95:
        return "models", "GET", "/v1/models", None
    return "metrics", "GET", "/metrics", None


async def send(client: httpx.AsyncClient, method: str, path: str, body: dict | None) -> str | None:
    """One request; returns None when it finished normally, else what went wrong."""
    try:
        if body is not None and body.get("stream"):
            return await _send_stream(client, path, body)
        response = await client.request(method, path, json=body)
    except httpx.HTTPError as err:
        return f"{type(err).__name__}: {err}"
    if response.status_code != 200:
        return f"HTTP {response.status_code}: {response.text[:200]}"
    return None


async def _send_stream(client: httpx.AsyncClient, path: str, body: dict) -> str | None:
    finish = None
    async with client.stream("POST", path, json=body) as response:
        if response.status_code != 200:
            return f"HTTP {response.status_code}: {(await response.aread())[:200]!r}"
        async for line in response.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                finish = json.loads(line[6:]).get("finish_reason") or finish
    if finish is None or finish in FAILED_FINISH:
        return f"stream ended with finish_reason={finish}"
    return None


async def client_loop(
    url: str, profiles: list[str], options: SoakOptions, deadline: float, tally: Tally, seed: int
) -> None:
    rng = random.Random(seed)
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        for _ in range(10**7):  # bounded; the deadline ends it
            if time.monotonic() >= deadline:
                return
            kind, method, path, body = request_for(rng, profiles, options.max_new_tokens)
            start = time.monotonic()
            tally.record(kind, await send(client, method, path, body), time.monotonic() - start)


# ---- admin ---------------------------------------------------------------------------------------
async def admin_loop(
    url: str, profiles: list[str], make, options: SoakOptions, deadline: float, tally: Tally
) -> None:
    """Every `upload_every_s`: upload a new version; every other time re-activate the previous one."""
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with httpx.AsyncClient(base_url=url, timeout=120, headers=headers) as client:
        for step in range(10**6):
            await asyncio.sleep(options.upload_every_s)
            if time.monotonic() >= deadline:
                return
            profile = profiles[step % len(profiles)]
            data = await asyncio.to_thread(make, profile, 1000 + step)
            start = time.monotonic()
            error = await send_bytes(client, f"/admin/profiles/{profile}", data)
            tally.record("upload", error, time.monotonic() - start)
            if step % 2:
                await rotate(client, profile, tally)


async def send_bytes(client: httpx.AsyncClient, path: str, data: bytes) -> str | None:
    try:
        response = await client.put(path, content=data)
    except httpx.HTTPError as err:
        return f"{type(err).__name__}: {err}"
    return None if response.status_code == 201 else f"HTTP {response.status_code}: {response.text[:200]}"


async def rotate(client: httpx.AsyncClient, profile: str, tally: Tally) -> None:
    """Activate the previous version, then delete versions beyond KEEP_VERSIONS (never the active one)."""
    shown = await client.get(f"/admin/profiles/{profile}")
    versions = [v["version"] for v in shown.json()["versions"]] if shown.status_code == 200 else []
    if len(versions) >= 2:
        start = time.monotonic()
        response = await client.post(f"/admin/profiles/{profile}/activate", json={"version": versions[-2]})
        error = None if response.status_code == 200 else f"HTTP {response.status_code}: {response.text[:200]}"
        tally.record("activate", error, time.monotonic() - start)
    for version in versions[:-KEEP_VERSIONS]:
        response = await client.delete(f"/admin/profiles/{profile}", params={"version": version})
        error = None if response.status_code == 204 else f"HTTP {response.status_code}: {response.text[:200]}"
        tally.record("delete", error, 0.0)


# ---- memory --------------------------------------------------------------------------------------
def rss_bytes(pid: int) -> int:
    try:
        import psutil
    except ImportError:
        return server_pid_rss(pid)
    return int(psutil.Process(pid).memory_info().rss)


async def sample_rss(
    pid: int, every_s: float, deadline: float, start: float, out: list[tuple[float, int]]
) -> None:
    for _ in range(10**6):
        out.append((time.monotonic() - start, rss_bytes(pid)))
        if time.monotonic() >= deadline:
            return
        await asyncio.sleep(min(every_s, max(0.0, deadline - time.monotonic())))


def slope_mib_per_min(samples: list[tuple[float, int]]) -> float:
    """Least-squares slope of RSS over time, MiB per minute (0 with fewer than 2 samples)."""
    if len(samples) < 2:
        return 0.0
    ts = [t / 60 for t, _ in samples]
    ys = [r / 2**20 for _, r in samples]
    mt, my = sum(ts) / len(ts), sum(ys) / len(ys)
    var = sum((t - mt) ** 2 for t in ts)
    return 0.0 if var == 0 else sum((t - mt) * (y - my) for t, y in zip(ts, ys)) / var


# ---- the run -------------------------------------------------------------------------------------
async def drive(
    server: RunningServer, profiles: list[str], make, options: SoakOptions
) -> tuple[Tally, list, float]:
    start = time.monotonic()
    deadline = start + options.minutes * 60
    tally, samples = Tally(), []
    tasks = [
        client_loop(server.url, profiles, options, deadline, tally, seed=i) for i in range(options.clients)
    ]
    tasks.append(admin_loop(server.url, profiles, make, options, deadline, tally))
    tasks.append(sample_rss(server.pid, options.sample_every_s, deadline, start, samples))
    await asyncio.gather(*tasks)
    return tally, samples, time.monotonic() - start


def summarize(tally: Tally, samples: list[tuple[float, int]], wall_s: float, options: SoakOptions) -> dict:
    warm = [s for s in samples if s[0] >= options.warmup_fraction * wall_s] or samples
    mib = [r / 2**20 for _, r in samples]
    lat = sorted(tally.latencies_ms)
    return {
        "requests": sum(tally.ok.values()) + sum(tally.failed.values()),
        "failures": sum(tally.failed.values()),
        "ok_by_kind": dict(tally.ok),
        "failed_by_kind": dict(tally.failed),
        "first_errors": tally.errors,
        "wall_s": round(wall_s, 1),
        "requests_per_s": round(sum(tally.ok.values()) / wall_s, 2) if wall_s else 0.0,
        "latency_p50_ms": round(lat[len(lat) // 2], 1) if lat else None,
        "latency_p99_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))], 1) if lat else None,
        "rss_mib": {
            "start": round(mib[0], 1),
            "end": round(mib[-1], 1),
            "max": round(max(mib), 1),
            "after_warmup_start": round(warm[0][1] / 2**20, 1),
        }
        if mib
        else {},
        "rss_slope_mib_per_min": round(slope_mib_per_min(warm), 3),
        # a single allocator step moves a short run's slope; growth over the last half shows a trend
        "rss_growth_last_half_mib": round(mib[-1] - mib[len(mib) // 2], 1) if mib else None,
        "rss_samples": [(round(t, 1), round(r / 2**20, 1)) for t, r in samples],
    }


def run_soak(options: SoakOptions) -> dict:
    if options.workdir is not None:
        options.workdir.mkdir(parents=True, exist_ok=True)
        return _run_in(options, options.workdir)
    with tempfile.TemporaryDirectory(prefix="spul-soak-") as tmp:
        return _run_in(options, Path(tmp))


def _run_in(options: SoakOptions, workdir: Path) -> dict:
    model_path, store, profiles = prepare(options, workdir)
    make = artifact_maker(model_path)
    env = {
        "SPUL_ADMIN_TOKEN": ADMIN_TOKEN,
        "SPUL_STORE_POLL_S": "1",
        "SPUL_MAX_NEW_TOKENS": str(options.max_new_tokens),
        **thread_env(options.server_threads),
    }
    spec = spul_server(model_path, store, env=env, name="soak")
    with running(spec, log_path=workdir / "server.log") as server:
        tally, samples, wall = asyncio.run(drive(server, profiles, make, options))
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(options).items()}
    report = {
        "settings": settings,
        "model": str(model_path),
        "machine": machine_info(),
        "git": git_revision(),
    }
    report.update(summarize(tally, samples, wall, options))
    return report


def summary_lines(report: dict) -> list[str]:
    rss = report["rss_mib"]
    return [
        (
            f"soak {report['wall_s']}s on {report['model']}: {report['requests']} requests, "
            f"{report['failures']} failed ({report['requests_per_s']}/s ok; p50 {report['latency_p50_ms']} ms, "
            f"p99 {report['latency_p99_ms']} ms)"
        ),
        f"  by kind ok {report['ok_by_kind']} failed {report['failed_by_kind']}",
        (
            f"  server RSS MiB start {rss.get('start')} end {rss.get('end')} max {rss.get('max')}; "
            f"slope after warm-up {report['rss_slope_mib_per_min']} MiB/min, "
            f"growth over the last half {report['rss_growth_last_half_mib']} MiB"
        ),
        *(f"  error: {e}" for e in report["first_errors"][:5]),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument(
        "--model", default="tiny", help="tiny | reference | speed-100m | a local HF model dir"
    )
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--upload-every", type=float, default=5.0, help="seconds between admin uploads")
    parser.add_argument("--server-threads", type=int, default=1)
    parser.add_argument("--workdir", type=Path, help="keep the model, store and server log here")
    parser.add_argument("--json", type=Path, default=Path("soak.json"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request drowns the summary
    options = SoakOptions(
        minutes=args.minutes,
        model=args.model,
        clients=args.clients,
        upload_every_s=args.upload_every,
        server_threads=args.server_threads,
        workdir=args.workdir,
    )
    report = run_soak(options)
    args.json.write_text(json.dumps(report, indent=2))
    print("\n".join(summary_lines(report)))
    print(f"  report: {args.json}")
    return 0 if report["failures"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
