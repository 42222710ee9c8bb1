"""The batcher: asyncio-facing `submit(request) -> async iterator of TokenEvent`, one engine thread.

Iteration-level (continuous) batching: between two decode steps the engine thread admits
waiting requests (prefill) and drops finished, cancelled or timed-out ones, so a long
generation never holds a short one back. The queue is bounded: `submit` raises `QueueFull`
instead of letting clients hang, and `ShuttingDown` once shutdown has begun.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from spul.service.engine import Engine, PrefillRow
from spul.service.kvcache import KVBatch, concat_batches
from spul.service.metrics import Metrics
from spul.service.registry import PromptHandle
from spul.service.sampling import SamplingParams, make_generator, sample
from spul.service.textstream import TextTracker

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """Too many requests waiting; retry after `retry_after` seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"request queue is full; retry after {retry_after}s")
        self.retry_after = retry_after


class ShuttingDown(Exception):
    """The scheduler no longer accepts requests."""


@dataclass(frozen=True)
class GenerationRequest:
    handle: PromptHandle  # resolved once: the request keeps this version to the end
    token_ids: tuple[int, ...]
    max_new_tokens: int
    sampling: SamplingParams = SamplingParams()
    stop: tuple[str, ...] = ()
    timeout_s: float | None = None


@dataclass(frozen=True)
class TokenEvent:
    text: str  # new text since the previous event
    token_id: int | None = None
    finish_reason: str | None = None  # stop | length | timeout | cancelled | error
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None


class RequestStream:
    """The caller's side of one request: async-iterate its events; `cancel()` frees its slot."""

    def __init__(self, loop: asyncio.AbstractEventLoop, wake: threading.Condition) -> None:
        self._loop = loop
        self._queue: asyncio.Queue[TokenEvent] = asyncio.Queue()
        self._wake = wake
        self._done = False
        self.cancelled = threading.Event()

    def push(self, event: TokenEvent) -> None:
        """Called from the engine thread."""
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, event)
        except RuntimeError:  # the event loop is gone (shutdown): nobody is listening
            self.cancelled.set()

    def cancel(self) -> None:
        self.cancelled.set()
        with self._wake:
            self._wake.notify()

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> TokenEvent:
        if self._done:
            raise StopAsyncIteration
        event = await self._queue.get()
        self._done = event.finish_reason is not None
        return event


@dataclass
class _Sequence:
    """Engine-thread state of one request."""

    request: GenerationRequest
    stream: RequestStream
    tracker: TextTracker
    submitted_at: float
    label: str
    generator: torch.Generator | None = None
    generated: list[int] = field(default_factory=list)
    last_token_at: float = 0.0
    finished: bool = False

    @property
    def deadline(self) -> float:
        timeout = self.request.timeout_s
        return self.submitted_at + timeout if timeout else float("inf")


class Scheduler:
    def __init__(
        self,
        engine: Engine,
        tokenizer: Any,
        metrics: Metrics,
        *,
        max_batch_size: int = 32,
        max_queue: int = 256,
        eos_token_ids: set[int] | None = None,
    ) -> None:
        self.engine = engine
        self.tokenizer = tokenizer
        self.metrics = metrics
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self.eos_token_ids = eos_token_ids if eos_token_ids is not None else {tokenizer.eos_token_id}
        self._cond = threading.Condition()
        self._waiting: collections.deque[_Sequence] = collections.deque()
        self._active: list[_Sequence] = []
        self._batch: KVBatch | None = None
        self._closing = False  # no new requests
        self._abort = False  # cancel whatever is left and exit
        self._thread = threading.Thread(target=self._run, name="spul-engine", daemon=True)

    # ---- asyncio side --------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def submit(self, request: GenerationRequest) -> RequestStream:
        stream = RequestStream(asyncio.get_running_loop(), self._cond)
        seq = _Sequence(
            request=request,
            stream=stream,
            tracker=TextTracker(self.tokenizer, request.stop),
            submitted_at=time.perf_counter(),
            label=self.metrics.profile_label(request.handle.profile),
            generator=make_generator(request.sampling),
        )
        with self._cond:
            if self._closing:
                raise ShuttingDown("server is shutting down")
            if len(self._waiting) >= self.max_queue:
                self.metrics.rejected.labels("queue_full").inc()
                raise QueueFull(retry_after=1)
            self._waiting.append(seq)
            self.metrics.waiting.set(len(self._waiting))
            self._cond.notify()
        return stream

    async def shutdown(self, *, grace_s: float = 10.0) -> None:
        """Stop accepting, let in-flight requests finish for `grace_s`, cancel the rest, exit."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        deadline = time.monotonic() + grace_s
        while self.pending() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        with self._cond:
            self._abort = True
            self._cond.notify()
        if self._thread.is_alive():
            await asyncio.to_thread(self._thread.join, 10.0)

    def pending(self) -> int:
        return len(self._waiting) + len(self._active)

    @property
    def alive(self) -> bool:
        """False once the engine thread has stopped (shutdown, or a bug): readiness reports it."""
        return self._thread.is_alive()

    # ---- engine thread -------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            newcomers = self._next_work()
            if newcomers is None:
                return
            try:
                self._prune()
                if newcomers:
                    self._admit(newcomers)
                if self._active:
                    self._step()
            except Exception as err:  # a bug must fail the rows it touched, never the engine thread
                log.exception("engine iteration failed")
                for seq in [*newcomers, *self._active]:
                    self._finish(seq, "error", error=f"engine error: {err}")
                self._active, self._batch = [], None

    def _next_work(self) -> list[_Sequence] | None:
        """Block until there is work; pop as many waiting requests as the batch has room for."""
        with self._cond:
            while not self._waiting and not self._active and not self._abort:
                self._cond.wait(timeout=1.0)
            if self._abort:
                for seq in [*self._waiting, *self._active]:
                    self._finish(seq, "cancelled")
                self._waiting.clear()
                self._active, self._batch = [], None
                return None
            room = self.max_batch_size - len(self._active)
            newcomers = [self._waiting.popleft() for _ in range(min(room, len(self._waiting)))]
            self.metrics.waiting.set(len(self._waiting))
            expired = [s for s in self._waiting if self._gone(s)]
            for seq in expired:
                self._waiting.remove(seq)
        for seq in expired:
            self._finish(seq, "cancelled" if seq.stream.cancelled.is_set() else "timeout")
        return newcomers

    def _admit(self, newcomers: list[_Sequence]) -> None:
        now = time.perf_counter()
        live = []
        for seq in newcomers:
            if self._gone(seq):
                self._finish(seq, "cancelled" if seq.stream.cancelled.is_set() else "timeout")
                continue
            self.metrics.queue_seconds.observe(now - seq.submitted_at)
            live.append(seq)
        if not live:
            return
        rows = [PrefillRow(s.request.handle.sha256, s.request.handle.embeddings, s.request.token_ids) for s in live]
        try:
            with _timed(self.metrics.prefill_seconds):
                logits, batch = self.engine.prefill(rows)
        except Exception as err:  # one bad batch must not take the engine thread down
            log.exception("prefill failed")
            for seq in live:
                self._finish(seq, "error", error=f"prefill failed: {err}")
            return
        for seq in live:
            self.metrics.prompt_tokens.labels(seq.label).inc(len(seq.request.token_ids))
        self._batch = concat_batches([self._batch, batch]) if self._batch is not None else batch
        self._active.extend(live)
        self._emit_all(logits, live)
        self.metrics.prefix_cache_bytes.set(self.engine.prefix_cache.nbytes)

    def _step(self) -> None:
        self._prune()  # rows that finished at admission (or failed) must not be decoded again
        if not self._active:
            return
        assert self._batch is not None
        self.metrics.batch_size.observe(len(self._active))
        self.metrics.running.set(len(self._active))
        try:
            with _timed(self.metrics.decode_seconds):
                logits, self._batch = self.engine.decode(self._batch, [s.generated[-1] for s in self._active])
        except Exception as err:
            log.exception("decode failed")
            for seq in self._active:
                self._finish(seq, "error", error=f"decode failed: {err}")
            self._active, self._batch = [], None
            return
        self._emit_all(logits, self._active)
        self._prune()

    def _emit_all(self, logits: torch.Tensor, seqs: list[_Sequence]) -> None:
        """Sample one token for each of `seqs`; the rows of `logits` (B, V) are exactly `seqs`, in order."""
        logits = logits.cpu()
        greedy = logits.argmax(dim=-1).tolist()
        for row, seq in enumerate(seqs):
            params = seq.request.sampling
            try:
                token = greedy[row] if params.greedy else sample(logits[row], params, seq.generator)
                self._emit(seq, token)
            except Exception as err:  # one row's sampling/detokenising bug ends that row only
                log.exception("sampling failed")
                self._finish(seq, "error", error=f"sampling failed: {err}")

    def _emit(self, seq: _Sequence, token: int) -> None:
        now = time.perf_counter()
        if seq.generated:
            self.metrics.itl.observe(now - seq.last_token_at)
        else:
            self.metrics.ttft.observe(now - seq.submitted_at)
        seq.last_token_at = now
        seq.generated.append(token)
        if token in self.eos_token_ids:
            self._finish(seq, "stop", text=seq.tracker.flush())
            return
        delta, stopped = seq.tracker.add(token)
        if stopped:
            self._finish(seq, "stop", text=delta)
        elif len(seq.generated) >= seq.request.max_new_tokens:
            self._finish(seq, "length", text=delta + seq.tracker.flush())
        elif delta:
            seq.stream.push(TokenEvent(text=delta, token_id=token, completion_tokens=len(seq.generated)))

    def _prune(self) -> None:
        """Drop finished, cancelled and timed-out rows from the running batch."""
        for seq in self._active:
            if not seq.finished and self._gone(seq):
                self._finish(seq, "cancelled" if seq.stream.cancelled.is_set() else "timeout")
        keep = [i for i, s in enumerate(self._active) if not s.finished]
        if len(keep) == len(self._active):
            return
        self._active = [self._active[i] for i in keep]
        self._batch = self._batch.select(keep) if keep and self._batch is not None else None
        self.metrics.running.set(len(self._active))

    def _gone(self, seq: _Sequence) -> bool:
        return seq.stream.cancelled.is_set() or time.perf_counter() > seq.deadline

    def _finish(self, seq: _Sequence, reason: str, *, text: str = "", error: str | None = None) -> None:
        if seq.finished:
            return
        seq.finished = True
        n = len(seq.generated)
        self.metrics.requests.labels(seq.label, reason).inc()
        self.metrics.generation_tokens.labels(seq.label).inc(n)
        self.metrics.e2e.observe(time.perf_counter() - seq.submitted_at)
        seq.stream.push(
            TokenEvent(
                text=text,
                finish_reason=reason,
                prompt_tokens=len(seq.request.token_ids),
                completion_tokens=n,
                error=error,
            )
        )


class _timed:
    """Context manager observing the elapsed seconds into a histogram."""

    def __init__(self, histogram: Any) -> None:
        self.histogram = histogram

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.histogram.observe(time.perf_counter() - self.start)
