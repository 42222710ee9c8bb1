"""vLLM as the engine behind spul's gateway: each request goes out as `prompt_embeds`.

The gateway keeps what vLLM lacks (profile store, validation, fail-closed policy, admin API,
per-profile metrics) and holds only the tokenizer and the input-embedding matrix, never the
model. For every request it builds `[profile prompt (P, H) ; token embeddings (T, H)]`, sends it
to one vLLM server's `/v1/completions` (vLLM started with `--enable-prompt-embeds`) and streams
the answer back as the same `TokenEvent`s the built-in scheduler produces, so the HTTP routes
cannot tell the engines apart.

Several vLLM servers: a profile is routed by consistent hashing, so each profile's prefix stays
warm in one server's prefix cache; unhealthy servers are skipped (health polled in the
background) and a request whose server fails before its first token moves to the next server on
the ring. A request that cannot be sent with its profile fails: there is no path that answers
without the prompt.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import contextlib
import hashlib
import io
import itertools
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import torch
from prometheus_client import Counter, Gauge

from spul.service.metrics import Metrics
from spul.service.scheduler import ContextTooLong, GenerationRequest, QueueFull, ShuttingDown, TokenEvent
from spul.service.textstream import TextTracker

log = logging.getLogger(__name__)

MIN_VLLM_VERSION = (0, 19, 0)  # prompt_embeds CVE-2025-62164 fixed in 0.11.1; `n` DoS CVE-2026-34756 in 0.19.0
VNODES = 64  # points per backend on the hash ring: spreads profiles evenly over a few servers


class BackendError(RuntimeError):
    """A vLLM server refused or failed a request before it produced any text."""


@dataclass
class Backend:
    url: str  # e.g. http://10.0.0.5:8001, no trailing slash
    healthy: bool = True
    last_error: str = ""
    verified: bool = False  # passed the same-model probe; an unverified backend is never sent requests


class BackendRing:
    """Consistent hashing of profile ids onto backends (sha256 ring with virtual nodes)."""

    def __init__(self, backends: list[Backend]) -> None:
        if not backends:
            raise ValueError("at least one vLLM URL is needed (--vllm-url / SPUL_VLLM_URLS)")
        self.backends = backends
        points = sorted((_hash(f"{b.url}#{i}"), j) for j, b in enumerate(backends) for i in range(VNODES))
        self._keys = [p for p, _ in points]
        self._owners = [j for _, j in points]

    def order(self, key: str) -> list[Backend]:
        """Every backend once, starting at `key`'s owner and walking the ring; healthy ones first."""
        start = bisect.bisect(self._keys, _hash(key)) % len(self._keys)
        seen: list[int] = []
        for i in range(len(self._keys)):
            owner = self._owners[(start + i) % len(self._keys)]
            if owner not in seen:
                seen.append(owner)
                if len(seen) == len(self.backends):
                    break
        ordered = [self.backends[j] for j in seen]
        return [b for b in ordered if b.healthy] + [b for b in ordered if not b.healthy]

    def usable(self, key: str) -> list[Backend]:
        """`order(key)` without backends that never passed the same-model probe."""
        return [b for b in self.order(key) if b.verified]


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def encode_prompt_embeds(embeds: torch.Tensor) -> str:
    """vLLM's wire format for `prompt_embeds`: base64 of `torch.save` of a (T, H) tensor.

    vLLM reads it with `torch.load(weights_only=True)`; only tensors this process built are sent.
    """
    buffer = io.BytesIO()
    torch.save(embeds.detach().contiguous().cpu(), buffer)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


class GatewayStream:
    """The caller's side of one gateway request: async-iterate its events; `cancel()` stops it."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[TokenEvent] = asyncio.Queue()
        self._done = False
        self.task: asyncio.Task[None] | None = None

    def push(self, event: TokenEvent) -> None:
        self._queue.put_nowait(event)

    def cancel(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()

    def __aiter__(self) -> GatewayStream:
        return self

    async def __anext__(self) -> TokenEvent:
        if self._done:
            raise StopAsyncIteration
        event = await self._queue.get()
        self._done = event.finish_reason is not None
        return event


class VllmGateway:
    """The scheduler interface (`start`, `submit`, `shutdown`, `pending`, `alive`) over vLLM servers."""

    def __init__(
        self,
        urls: list[str],
        *,
        embedding: torch.Tensor,  # (V, H) the model's input-embedding matrix, on CPU
        tokenizer: Any,
        eos_token_ids: set[int],
        metrics: Metrics,
        served_model: str | None = None,
        max_queue: int = 256,
        health_every_s: float = 2.0,
        connect_timeout_s: float = 5.0,
    ) -> None:
        self.ring = BackendRing([Backend(u.rstrip("/")) for u in urls])
        self.embedding = embedding
        self.tokenizer = tokenizer
        self.eos_token_ids = eos_token_ids
        self.metrics = metrics
        self.served_model = served_model
        self.max_queue = max_queue
        self.health_every_s = health_every_s
        self._timeout = httpx.Timeout(connect=connect_timeout_s, read=None, write=30.0, pool=30.0)
        self._client: httpx.AsyncClient | None = None
        self._health: asyncio.Task[None] | None = None
        self._inflight: set[GatewayStream] = set()
        self._closing = False
        self.max_positions: int | None = None  # the smallest max_model_len of the backends
        self.probe_ids: list[int] = [0]  # token ids of the same-model probe
        r = metrics.registry
        self.backend_requests = Counter(
            "spul_vllm_backend_requests", "Requests sent to a vLLM backend", ["backend", "outcome"], registry=r
        )
        self.backend_healthy = Gauge("spul_vllm_backend_healthy", "1 when the backend answers /health",
                                     ["backend"], registry=r)
        self.failovers = Counter("spul_vllm_failovers", "Requests moved to another backend", registry=r)

    # ---- scheduler interface ------------------------------------------------------------------
    def start(self) -> None:
        """Called on the event loop once the runtime is built."""
        self._client = httpx.AsyncClient(timeout=self._timeout, limits=httpx.Limits(max_connections=512))
        for backend in self.ring.backends:
            self.backend_healthy.labels(backend.url).set(1 if backend.healthy else 0)
        if self.health_every_s > 0:
            self._health = asyncio.create_task(self._health_loop())

    def submit(self, request: GenerationRequest) -> GatewayStream:
        if self._closing or self._client is None:
            raise ShuttingDown("server is shutting down")
        self._check_context(request)
        if len(self._inflight) >= self.max_queue:
            raise QueueFull(retry_after=1)  # counted as a refusal by the route
        stream = GatewayStream()
        self._inflight.add(stream)
        stream.task = asyncio.create_task(self._run(request, stream))
        stream.task.add_done_callback(lambda _: self._inflight.discard(stream))
        return stream

    def _check_context(self, request: GenerationRequest) -> None:
        limit = self.max_positions
        prompt, query = request.handle.embeddings.shape[0], len(request.token_ids)
        if limit is not None and prompt + query + request.max_new_tokens > limit:
            raise ContextTooLong(prompt=prompt, query=query, max_new_tokens=request.max_new_tokens, limit=limit)

    async def shutdown(self, *, grace_s: float = 10.0) -> None:
        self._closing = True
        deadline = time.monotonic() + grace_s
        while self._inflight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for stream in list(self._inflight):
            stream.cancel()
        if self._health is not None:
            self._health.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health
        if self._client is not None:
            await self._client.aclose()

    def pending(self) -> int:
        return len(self._inflight)

    @property
    def alive(self) -> bool:
        """Ready while at least one backend is healthy."""
        return not self._closing and any(b.healthy and b.verified for b in self.ring.backends)

    # ---- one request ----------------------------------------------------------------------------
    def build_embeds(self, request: GenerationRequest) -> torch.Tensor:
        ids = torch.tensor(request.token_ids, dtype=torch.long)
        tokens = self.embedding[ids]  # (T, H)
        prompt = request.handle.embeddings.to(tokens.dtype).cpu()  # (P, H)
        return torch.cat([prompt, tokens], dim=0)  # (P + T, H)

    def body(self, request: GenerationRequest) -> dict[str, Any]:
        sampling = request.sampling
        body: dict[str, Any] = {
            "model": self.served_model,
            "prompt_embeds": encode_prompt_embeds(self.build_embeds(request)),
            "max_tokens": request.max_new_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "stream": True,
            "logprobs": 0,  # with the next flag: each chunk carries its token ids
            "return_tokens_as_token_ids": True,
            "skip_special_tokens": False,
        }
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        return body

    async def _run(self, request: GenerationRequest, stream: GatewayStream) -> None:
        label = self.metrics.profile_label(request.handle.profile)
        started = time.perf_counter()
        body = await asyncio.to_thread(self.body, request)  # tensor encoding stays off the event loop
        errors: list[str] = []
        for attempt, backend in enumerate(self.ring.usable(request.handle.profile)):
            if attempt:
                self.failovers.inc()
            try:
                sent_any = await self._stream_from(backend, body, request, stream, label, started)
            except asyncio.CancelledError:
                stream.push(TokenEvent("", finish_reason="cancelled"))
                self.metrics.requests.labels(label, "cancelled").inc()
                raise
            except BackendError as err:
                errors.append(f"{backend.url}: {err}")
                self.backend_requests.labels(backend.url, "failed").inc()
                continue
            if sent_any is not None:  # finished (normally or with a mid-stream error)
                return
        message = "no vLLM backend could serve the request: " + "; ".join(errors)
        log.warning(message)
        stream.push(TokenEvent("", finish_reason="error", error=message))
        self.metrics.requests.labels(label, "error").inc()

    async def _stream_from(
        self, backend: Backend, body: dict[str, Any], request: GenerationRequest, stream: GatewayStream,
        label: str, started: float,
    ) -> bool:
        """Stream one backend's tokens into `stream`; raise BackendError if it failed before any token.

        vLLM returns token ids (`return_tokens_as_token_ids`); they are detokenised here by the same
        `TextTracker` the built-in engine uses, so stop strings, EOS and multi-byte characters
        behave identically on both engines. Closing the response aborts the request in vLLM.
        """
        assert self._client is not None
        tracker = TextTracker(self.tokenizer, request.stop)
        generated = 0
        last = started
        try:
            async with self._client.stream("POST", backend.url + "/v1/completions", json=body) as response:
                if response.status_code != 200:
                    detail = (await response.aread())[:500].decode(errors="replace")
                    if response.status_code >= 500:
                        self._mark(backend, healthy=False, error=f"HTTP {response.status_code}")
                    raise BackendError(f"HTTP {response.status_code}: {detail}")
                async for token in _sse_tokens(response.aiter_lines()):
                    now = time.perf_counter()
                    (self.metrics.itl if generated else self.metrics.ttft).observe(now - (last if generated else started))
                    last, generated = now, generated + 1
                    if token in self.eos_token_ids:
                        return self._finish(backend, request, stream, label, started, "stop", tracker.flush(), generated)
                    delta, stopped = tracker.add(token)
                    if stopped:
                        return self._finish(backend, request, stream, label, started, "stop", delta, generated)
                    if generated >= request.max_new_tokens:
                        return self._finish(backend, request, stream, label, started, "length",
                                            delta + tracker.flush(), generated)
                    if delta:
                        stream.push(TokenEvent(delta, token_id=token, completion_tokens=generated))
        except (httpx.TransportError, httpx.StreamError, BackendError) as err:
            if not isinstance(err, BackendError):
                self._mark(backend, healthy=False, error=str(err) or type(err).__name__)
            if not generated:  # nothing sent yet: the caller may try the next backend
                raise err if isinstance(err, BackendError) else BackendError(f"{type(err).__name__}: {err}") from err
            stream.push(TokenEvent("", finish_reason="error", error=f"backend {backend.url} failed mid-answer"))
            self.backend_requests.labels(backend.url, "failed").inc()
            self.metrics.requests.labels(label, "error").inc()
            return True
        # the server ended the stream without EOS in the tokens (e.g. its own stop condition)
        return self._finish(backend, request, stream, label, started, "stop", tracker.flush(), generated)

    def _finish(self, backend: Backend, request: GenerationRequest, stream: GatewayStream, label: str,
                started: float, reason: str, text: str, generated: int) -> bool:
        stream.push(TokenEvent(text, finish_reason=reason, prompt_tokens=len(request.token_ids),
                               completion_tokens=generated))
        self.backend_requests.labels(backend.url, "ok").inc()
        self.metrics.requests.labels(label, reason).inc()
        self.metrics.prompt_tokens.labels(label).inc(len(request.token_ids))
        self.metrics.generation_tokens.labels(label).inc(generated)
        self.metrics.e2e.observe(time.perf_counter() - started)
        return True

    # ---- health ---------------------------------------------------------------------------------
    def _mark(self, backend: Backend, *, healthy: bool, error: str = "") -> None:
        if backend.healthy and not healthy:
            log.warning("vLLM backend %s marked unhealthy: %s", backend.url, error)
        elif healthy and not backend.healthy:
            log.info("vLLM backend %s is healthy again", backend.url)
        backend.healthy, backend.last_error = healthy, error
        self.backend_healthy.labels(backend.url).set(1 if healthy else 0)

    async def check_health(self) -> None:
        """Poll every backend's /health; a backend seen for the first time must pass the same-model probe."""
        assert self._client is not None
        for backend in self.ring.backends:
            try:
                response = await self._client.get(backend.url + "/health", timeout=2.0)
            except httpx.HTTPError as err:
                self._mark(backend, healthy=False, error=str(err) or type(err).__name__)
                continue
            if response.status_code != 200:
                self._mark(backend, healthy=False, error=f"HTTP {response.status_code}")
            elif not backend.verified:
                problem = await asyncio.to_thread(self.admission_problem, backend.url)
                backend.verified = problem is None
                if problem is not None:
                    log.error("vLLM backend %s is not used: %s", backend.url, problem)
                self._mark(backend, healthy=problem is None, error=problem or "")
            else:
                self._mark(backend, healthy=True)

    def admission_problem(self, url: str) -> str | None:
        """Why a backend seen for the first time must not be used (old vLLM, another model), or None."""
        try:
            return version_problem(url) or same_model_probe(url, token_ids=self.probe_ids, embedding=self.embedding,
                                                            served_model=self.served_model)
        except httpx.HTTPError as err:
            return f"unreachable ({type(err).__name__}: {err})"

    async def _health_loop(self) -> None:
        while True:
            await self.check_health()
            await asyncio.sleep(self.health_every_s)


async def _sse_tokens(lines: AsyncIterator[str]) -> AsyncIterator[int]:
    """Token ids from an OpenAI-style completion stream sent with `return_tokens_as_token_ids`."""
    async for line in lines:
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        try:
            chunk = json.loads(data)
            for choice in chunk.get("choices") or []:
                for token in (choice.get("logprobs") or {}).get("tokens") or []:
                    yield int(token.removeprefix("token_id:"))
        except (json.JSONDecodeError, ValueError, AttributeError) as err:
            raise BackendError(f"backend sent a malformed event: {data[:200]!r}") from err


# ---- start-up: the gateway's half of the model, and proof that each backend runs the same model --
PROBE_TEXT = "The capital of France is"


def same_model_probe(url: str, *, token_ids: list[int], embedding: torch.Tensor, served_model: str | None,
                     timeout_s: float = 120.0) -> str | None:
    """None when `url` runs the model whose input embeddings are `embedding`; else why not.

    The same ids are sent twice, as token ids and as this gateway's embeddings of them; a server
    whose embedding matrix (and model) match answers both with the same greedy tokens and
    log-probabilities.
    """
    common = {"model": served_model, "max_tokens": 4, "temperature": 0.0, "logprobs": 0,
              "return_tokens_as_token_ids": True}
    try:
        with httpx.Client(timeout=timeout_s) as client:
            as_text = client.post(url + "/v1/completions", json={**common, "prompt": token_ids})
            embeds = encode_prompt_embeds(embedding[torch.tensor(token_ids)])
            as_embeds = client.post(url + "/v1/completions", json={**common, "prompt_embeds": embeds})
    except httpx.HTTPError as err:
        return f"unreachable ({type(err).__name__}: {err})"
    for response in (as_text, as_embeds):
        if response.status_code != 200:
            return f"HTTP {response.status_code}: {response.text[:300]} (is vLLM started with --enable-prompt-embeds?)"
    a, b = (r.json()["choices"][0] for r in (as_text, as_embeds))
    lp_a, lp_b = a["logprobs"]["token_logprobs"], b["logprobs"]["token_logprobs"]
    tokens_a, tokens_b = a["logprobs"]["tokens"], b["logprobs"]["tokens"]
    if tokens_a != tokens_b or any(abs(x - y) > 1e-2 for x, y in zip(lp_a, lp_b, strict=False)):
        return (f"answers {tokens_a} to the token ids but {tokens_b} to this model's embeddings of them: "
                "the vLLM server runs a different model than the gateway's --model")
    return None


def version_problem(url: str, timeout_s: float = 10.0) -> str | None:
    """None when the vLLM server at `url` is at least MIN_VLLM_VERSION; else what is wrong."""
    response = httpx.get(url + "/version", timeout=timeout_s)
    response.raise_for_status()
    text = str(response.json().get("version", ""))
    parts = []
    for piece in text.split(".")[:3]:
        digits = "".join(itertools.takewhile(str.isdigit, piece))
        if not digits:
            break
        parts.append(int(digits))
    if len(parts) < 2:
        log.warning("cannot read the vLLM version of %s (%r); make sure it is >= %s", url, text,
                    ".".join(map(str, MIN_VLLM_VERSION)))
        return None
    if tuple(parts) < MIN_VLLM_VERSION:
        minimum = ".".join(map(str, MIN_VLLM_VERSION))
        return (f"vLLM {text} is older than {minimum}, which fixes the prompt_embeds and request-size "
                f"advisories (CVE-2025-62164, CVE-2026-34756); upgrade it (docs/deploy-vllm.md)")
    return None


def served_model_info(url: str, timeout_s: float = 10.0) -> tuple[str, int | None]:
    """The id and max_model_len of the one model a vLLM server serves."""
    response = httpx.get(url + "/v1/models", timeout=timeout_s)
    response.raise_for_status()
    data = response.json()["data"][0]
    return data["id"], data.get("max_model_len")


class GatewayError(RuntimeError):
    """The gateway cannot start: a vLLM server runs another model, or the settings are inconsistent."""


def connect_gateway(settings: Any, base: Any, metrics: Metrics, *, eos_token_ids: set[int]) -> VllmGateway:
    """Build the gateway from the loaded model's tokenizer and embeddings, checking every reachable backend.

    A backend that answers but runs another model stops the start (a configuration error must not
    serve); one that cannot be reached yet starts unhealthy and is used once its health check
    passes.
    """
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per forwarded request otherwise
    module = base.model.get_input_embeddings()  # called, not indexed: some models scale embeddings
    ids = base.tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"] or [0]
    with torch.no_grad():
        table = module(torch.arange(module.weight.shape[0])).detach().clone()  # (V, H)
    gateway = VllmGateway(
        list(settings.vllm_urls),
        embedding=table,
        tokenizer=base.tokenizer,
        eos_token_ids=eos_token_ids,
        metrics=metrics,
        served_model=settings.vllm_model,
        max_queue=settings.max_queue,
    )
    gateway.probe_ids = ids
    for backend in gateway.ring.backends:
        try:
            served, max_len = served_model_info(backend.url)
        except (httpx.HTTPError, KeyError, IndexError, ValueError) as err:
            backend.healthy, backend.last_error = False, f"not reachable at start: {err}"
            log.warning("vLLM backend %s is not reachable yet (%s); it joins once healthy", backend.url, err)
            continue
        problem = version_problem(backend.url) or same_model_probe(
            backend.url, token_ids=ids, embedding=table, served_model=settings.vllm_model)
        if problem is not None:
            raise GatewayError(f"vLLM backend {backend.url} (serving {served!r}) cannot be used with --model "
                               f"{base.name!r}: {problem}")
        backend.verified = True
        if max_len is not None:
            gateway.max_positions = min(gateway.max_positions or max_len, max_len)
        log.info("vLLM backend %s serves %s (max_model_len %s), same model as the gateway", backend.url, served,
                 max_len)
    return gateway
