"""The batcher: asyncio-facing `submit(request) -> async iterator of TokenEvent`, one engine thread.

Iteration-level (continuous) batching: between two decode steps the engine thread admits
waiting requests (prefill) and drops finished, cancelled or timed-out ones, so a long
generation never holds a short one back. Each step runs at most `max_step_tokens` tokens
(one per running row plus prefill): a long prompt is prefilled in chunks over several steps.
While rows decode, a step runs at most one prefill forward beside the decode: either newcomers
admitted whole or the next chunk (newcomers first, but never twice in a row), and a chunk is
sized to cost about one decode step (`CHUNK_COST_STEPS`, from the measured times of both; the
first, before any chunk was timed, has as many tokens as rows decode), so
a long prompt costs the running decodes about what admitting a short one does; with nothing
decoding it runs whole budgets. Waiting requests are
admitted by cost class (the power of two of the tokens they compute: uncached prompt + query +
max_new_tokens), first come first served within a class and ageing with their wait, so a
short request does not queue behind many long ones, similar requests keep their order and a
long one is not starved. In a burst (at least as many requests still waiting as rows running,
or a rest that the next step admits whole) a step that admits newcomers skips the decode
forward, at most `MAX_DECODE_SKIPS` steps in a row: the burst reaches its first tokens sooner,
and a running row waits at most that many extra steps for its next token. An idle engine
woken by an arrival waits a few milliseconds while more arrive (`_coalesce`), so a burst that
reaches the queue over HTTP is not split into a lone first prefill and the rest.

Running rows are kept in groups, each one left-padded KV batch decoded by one forward. Rows
join the group whose padding they grow least; a row whose pad columns would cost the others
more than `GROUP_PAD_FRACTION` of a weight read per step (a long prompt among short ones)
starts its own group instead, and groups merge again once that is cheap.

`submit` fails at once instead of letting clients hang: `QueueFull` when the queue is full,
`ContextTooLong` when the request cannot fit the model's positions, `ShuttingDown` once
shutdown has begun or the engine thread has stopped. A stream whose engine thread dies, or
that outlives its deadline, ends with an error or timeout event on the asyncio side.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import threading
import time
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any

import torch

from spul.service.engine import Engine, PrefillRow
from spul.service.kvcache import KVBatch, padding_bytes
from spul.service.metrics import Metrics
from spul.service.policy import PromptTooLong
from spul.service.registry import PromptHandle
from spul.service.sampling import SamplingParams, make_generator, sample
from spul.service.textstream import TextTracker

log = logging.getLogger(__name__)

MIN_PREFILL_TOKENS = 16  # prefill tokens a step may always run, however many rows decode
CHUNK_COST_STEPS = 1.0  # a prefill chunk run beside decodes may take about this many decode steps' time
GROUP_PAD_FRACTION = 0.5  # rows join a group if its added pad columns read less than this x the weights
DECODE_EMA = 0.2  # weight of the newest decode step in the running mean of step time
COALESCE_GAP_S = 0.005  # an idle engine woken by an arrival waits while more arrive at most this far apart...
COALESCE_MAX_S = 0.05  # ...for at most this long in all...
COALESCE_STEP_FRACTION = 0.5  # ...and at most this fraction of a decode step, once one was timed
MAX_DECODE_SKIPS = 2  # a burst's prefills may hold running decodes back for at most this many steps in a row
AGEING_S_PER_CLASS = 2.0  # a waiting request moves up one cost class (a halving of its cost) per this wait
STREAM_POLL_S = 1.0  # how often a waiting stream checks that the engine thread is alive
STREAM_GRACE_S = 5.0  # past its deadline, a stream stops waiting for the engine's own timeout event


def next_chunk_tokens(tokens: int, seconds: float, target_s: float, *, floor: int, ceiling: int) -> int:
    """The next prefill chunk's size, given that `tokens` took `seconds` and a chunk should take `target_s`.

    A chunk's time is a fixed weight read plus a cost per token, so scaling by the square root
    of target / measured approaches the target without overshooting it; `floor` keeps a long
    prompt moving when even a small chunk costs more than the target, `ceiling` is the budget.
    """
    if seconds <= 0 or target_s <= 0:
        return max(floor, min(tokens, ceiling))
    size = tokens * math.sqrt(target_s / seconds)
    return round(min(max(size, floor), ceiling))


class QueueFull(Exception):
    """Too many requests waiting; retry after `retry_after` seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"request queue is full; retry after {retry_after}s")
        self.retry_after = retry_after


class ShuttingDown(Exception):
    """The scheduler no longer accepts requests."""


class EngineStopped(ShuttingDown):
    """The engine thread has stopped (a bug or a fault): nothing submitted now would be served."""


class ContextTooLong(PromptTooLong):
    """Soft prompt + query + max_new_tokens exceed the positions the model can attend over."""

    def __init__(self, *, prompt: int, query: int, max_new_tokens: int, limit: int) -> None:
        super().__init__(
            f"the request needs {prompt + query + max_new_tokens} positions (soft prompt {prompt} + query "
            f"{query} + max_new_tokens {max_new_tokens}) but the model's context length is {limit}; "
            "shorten the prompt or lower max_tokens"
        )
        self.limit = limit


@dataclass(frozen=True)
class GenerationRequest:
    handle: PromptHandle  # resolved once: the request keeps this version to the end
    token_ids: tuple[int, ...]
    max_new_tokens: int
    sampling: SamplingParams = field(default_factory=SamplingParams)
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

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        wake: threading.Condition,
        *,
        alive: Any = lambda: True,
        deadline: float | None = None,
    ) -> None:
        self._loop = loop
        self._queue: asyncio.Queue[TokenEvent] = asyncio.Queue()
        self._wake = wake
        self._alive = alive  # () -> bool: is the engine thread still running?
        self._deadline = deadline  # time.perf_counter() after which the engine owes a final event
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
        event = await self._next_event()
        self._done = event.finish_reason is not None
        return event

    async def _next_event(self) -> TokenEvent:
        """The engine's next event; an error if its thread died, a timeout long past the deadline."""
        while True:
            if not self._queue.empty():
                return self._queue.get_nowait()
            wait = STREAM_POLL_S
            if self._deadline is not None:
                wait = min(wait, max(0.0, self._deadline + STREAM_GRACE_S - time.perf_counter()))
            try:
                return await asyncio.wait_for(self._queue.get(), timeout=wait)
            except TimeoutError:
                pass
            if not self._queue.empty():
                continue
            if not self._alive():
                self.cancelled.set()
                return TokenEvent(text="", finish_reason="error", error="the engine thread has stopped")
            if self._deadline is not None and time.perf_counter() > self._deadline + STREAM_GRACE_S:
                self.cancel()
                return TokenEvent(text="", finish_reason="timeout")


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

    @property
    def prefill_tokens(self) -> int:
        """Positions its prefill runs: soft prompt + query."""
        return self.request.handle.embeddings.shape[0] + len(self.request.token_ids)

    def priority(self, now: float, prefill_cost: int) -> tuple[int, float]:
        """Lower goes first: the request's cost class (the power of two of the tokens it computes:
        prefill + max_new_tokens), one class better per `AGEING_S_PER_CLASS` waited; first come,
        first served within a class, so similar requests keep their order (no time-to-first-token
        tail from a few tokens' difference) while a short one passes a much longer one."""
        aged = int((now - self.submitted_at) / AGEING_S_PER_CLASS)
        return (prefill_cost + self.request.max_new_tokens).bit_length() - aged, self.submitted_at


@dataclass
class _Group:
    """Running rows decoded by one forward: `batch` row i is `seqs[i]`."""

    seqs: list[_Sequence]
    batch: KVBatch


@dataclass
class _Chunked:
    """A request whose prompt is being prefilled over several steps."""

    seq: _Sequence
    past: KVBatch | None  # the cache so far (B=1)
    inputs: torch.Tensor  # (N, H) input embeddings not yet run


class Scheduler:
    def __init__(
        self,
        engine: Engine,
        tokenizer: Any,
        metrics: Metrics,
        *,
        max_batch_size: int = 32,
        max_queue: int = 256,
        max_step_tokens: int = 256,
        eos_token_ids: set[int] | None = None,
    ) -> None:
        self.engine = engine
        self.tokenizer = tokenizer
        self.metrics = metrics
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self.max_step_tokens = max_step_tokens
        self.eos_token_ids = eos_token_ids if eos_token_ids is not None else {tokenizer.eos_token_id}
        self._cond = threading.Condition()
        self._waiting: list[_Sequence] = []
        self._groups: list[_Group] = []
        self._chunked: _Chunked | None = None
        self._decode_s: float | None = None  # running mean of a decode step's seconds
        self._chunk_tokens: int | None = None  # chunk size beside running decodes, adapted to their step time
        self._chunk_deferred = False  # the last step admitted newcomers instead of running the next chunk
        self._decode_skips = 0  # steps in a row whose decode forward waited for a burst's prefills
        self._closing = False  # no new requests
        self._abort = False  # cancel whatever is left and exit
        self._prefix_seen = (0, 0)  # prefix-cache (queries, hits) already exported
        self._thread = threading.Thread(target=self._run, name="spul-engine", daemon=True)

    # ---- asyncio side --------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def submit(self, request: GenerationRequest) -> RequestStream:
        self._check_context(request)
        now = time.perf_counter()
        timeout = request.timeout_s
        stream = RequestStream(
            asyncio.get_running_loop(),
            self._cond,
            alive=self._serving,
            deadline=now + timeout if timeout else None,
        )
        seq = _Sequence(
            request=request,
            stream=stream,
            tracker=TextTracker(self.tokenizer, request.stop),
            submitted_at=now,
            label=self.metrics.profile_label(request.handle.profile),
            generator=make_generator(request.sampling),
        )
        with self._cond:
            if self._closing:
                raise ShuttingDown("server is shutting down")
            if not self._serving():
                raise EngineStopped("the engine thread has stopped; the server must be restarted")
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(retry_after=1)
            self._waiting.append(seq)
            self.metrics.waiting.set(len(self._waiting))
            self._cond.notify()
        return stream

    def _check_context(self, request: GenerationRequest) -> None:
        limit = self.engine.max_positions
        prompt, query = request.handle.embeddings.shape[0], len(request.token_ids)
        if limit is not None and prompt + query + request.max_new_tokens > limit:
            raise ContextTooLong(prompt=prompt, query=query, max_new_tokens=request.max_new_tokens, limit=limit)

    def _serving(self) -> bool:
        """False once a started engine thread has stopped; True before `start`."""
        return self._thread.is_alive() or self._thread.ident is None

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
        return len(self._waiting) + len(self._active) + (self._chunked is not None)

    @property
    def _active(self) -> list[_Sequence]:
        """Every running row, group by group."""
        return [seq for group in self._groups for seq in group.seqs]

    @property
    def alive(self) -> bool:
        """False once the engine thread has stopped (shutdown, or a bug): readiness reports it."""
        return self._thread.is_alive()

    # ---- engine thread -------------------------------------------------------------------
    def _run(self) -> None:
        while self._wait_for_work():
            newcomers: list[_Sequence] = []
            try:
                self._prune()
                allowance = max(self.max_step_tokens - len(self._active), MIN_PREFILL_TOKENS)
                decoding = bool(self._groups)
                if decoding and self._chunked is not None and self._chunk_turn(allowance):
                    self._advance_chunked(allowance)  # this step's one prefill forward
                    self._chunk_deferred = False
                else:
                    if not decoding:  # nothing to stall: the chunk and the newcomers share the budget
                        allowance -= self._advance_chunked(allowance)
                    self._chunk_deferred = decoding and self._chunked is not None
                    running = len(self._active)
                    whole, chunked = self._pick(allowance)
                    newcomers = [*whole, *([chunked] if chunked is not None else [])]
                    if whole:
                        self._admit(whole)
                    if chunked is not None:
                        rest = allowance - sum(self._prefill_cost(s) for s in whole)
                        self._start_chunked(chunked, rest, advance=not decoding)
                    if whole and self._burst(running):
                        self._decode_skips += 1
                        continue  # the next step admits more of the burst before anyone decodes
                if self._groups:
                    self._step()
                self._decode_skips = 0
            except Exception as err:  # a bug must fail the rows it touched, never the engine thread
                log.exception("engine iteration failed")
                chunked_seq = [self._chunked.seq] if self._chunked is not None else []
                for seq in [*newcomers, *self._active, *chunked_seq]:
                    self._finish(seq, "error", error=f"engine error: {err}")
                self._groups, self._chunked = [], None

    def _burst(self, running: int) -> bool:
        """Whether the decode forward may wait a step: some request still waits, there is room for it,
        the last `MAX_DECODE_SKIPS` steps did not all skip it already, and either at least as many
        requests wait as rows ran before this step's admissions or the rest of the burst fits the
        next step whole (its last rows then get their first token a decode step sooner)."""
        with self._cond:
            waiting = list(self._waiting)
        room = self.max_batch_size - len(self._active) - (self._chunked is not None)
        if self._decode_skips >= MAX_DECODE_SKIPS or room <= 0 or not waiting:
            return False
        if len(waiting) >= running:
            return True
        allowance = max(self.max_step_tokens - len(self._active), MIN_PREFILL_TOKENS)
        return len(waiting) <= room and sum(self._prefill_cost(s) for s in waiting) <= allowance

    def _chunk_turn(self, allowance: int) -> bool:
        """While rows decode, a step runs one prefill forward beside them: the chunked prompt's next
        chunk, unless a waiting request can be admitted whole and the chunk ran last step."""
        if self._chunk_deferred:
            return True
        with self._cond:
            room = self.max_batch_size - len(self._active) - 1  # the chunked request holds a slot
            if room <= 0 or not self._waiting:
                return True
            now = time.perf_counter()
            first = min(self._waiting, key=lambda s: s.priority(now, self._prefill_cost(s)))
        return self._prefill_cost(first) > allowance

    def _wait_for_work(self) -> bool:
        """Block until there is work; False when the thread must exit (everything left is cancelled)."""
        with self._cond:
            while not self._waiting and not self._groups and self._chunked is None and not self._abort:
                self._cond.wait(timeout=1.0)
            if not self._groups and self._chunked is None:
                self._coalesce()
            if self._abort:
                chunked = [self._chunked.seq] if self._chunked is not None else []
                for seq in [*self._waiting, *self._active, *chunked]:
                    self._finish(seq, "cancelled")
                self._waiting.clear()
                self._groups, self._chunked = [], None
                return False
            expired = [s for s in self._waiting if self._gone(s)]
            self._waiting = [s for s in self._waiting if not self._gone(s)]
        for seq in expired:
            self._finish(seq, "cancelled" if seq.stream.cancelled.is_set() else "timeout")
        return True

    def _coalesce(self) -> None:
        """With nothing running, let a burst finish arriving before its first prefill (lock held).

        Requests that arrive together over HTTP reach the queue a few milliseconds apart; an idle
        engine that started at the first would prefill it alone and the rest a forward later.
        It waits while requests keep arriving (`COALESCE_GAP_S` apart), for at most
        `COALESCE_MAX_S` and half a decode step, so a lone request loses one gap at most.
        """
        cap = COALESCE_MAX_S if self._decode_s is None else min(COALESCE_MAX_S, COALESCE_STEP_FRACTION * self._decode_s)
        deadline = time.perf_counter() + cap
        while not self._abort and not self._closing and len(self._waiting) < self.max_batch_size:
            seen, left = len(self._waiting), deadline - time.perf_counter()
            if left <= 0:
                return
            self._cond.wait(timeout=min(COALESCE_GAP_S, left))
            if len(self._waiting) == seen:
                return  # nothing arrived within a gap: the burst is in

    def _pick(self, allowance: int) -> tuple[list[_Sequence], _Sequence | None]:
        """Pop waiting requests in priority order (cost class, ageing, then arrival) whose prefill fits `allowance` tokens.

        A prompt counts once per batch: rows after the first of a profile find its prefix cached.
        The first candidate that does not fit waits for the next step, unless it is longer than
        this whole step's allowance: then it is prefilled in chunks, when no other request is.
        Returns (requests to prefill whole, in one batch; the request to chunk).
        """
        with self._cond:
            room = self.max_batch_size - len(self._active) - (self._chunked is not None)
            if room <= 0 or not self._waiting:
                return [], None
            now = time.perf_counter()
            order = sorted(self._waiting, key=lambda s: s.priority(now, self._prefill_cost(s)))
            whole: list[_Sequence] = []
            computed: set[str] = set()  # prompts this batch computes: its later rows find them cached
            chunked = None
            budget = allowance
            for seq in order[:room]:
                cost = self._prefill_cost(seq, computed)
                if cost <= allowance:
                    whole.append(seq)
                    allowance -= cost
                    computed.add(seq.request.handle.sha256)
                    continue
                if self._chunked is None and cost > budget and allowance >= MIN_PREFILL_TOKENS:
                    chunked = seq  # too long for any step: it goes in chunks (one that fits a step waits)
                break
            taken = {id(s) for s in whole} | ({id(chunked)} if chunked is not None else set())
            self._waiting = [s for s in self._waiting if id(s) not in taken]
            self.metrics.waiting.set(len(self._waiting))
        for seq in [*whole, *([chunked] if chunked is not None else [])]:
            self.metrics.queue_seconds.observe(now - seq.submitted_at)
        return whole, chunked

    def _prefill_cost(self, seq: _Sequence, computed: AbstractSet[str] = frozenset()) -> int:
        """Positions its prefill computes: the query, plus the soft prompt unless its prefix is cached
        (or in `computed`, the prompts that the same prefill batch computes once for all its rows)."""
        cache, key = self.engine.prefix_cache, seq.request.handle.sha256
        cached = key in cache or (cache.enabled and key in computed)
        return len(seq.request.token_ids) if cached else seq.prefill_tokens

    def _admit(self, newcomers: list[_Sequence]) -> None:
        """Prefill `newcomers` in one batch; if that fails, each alone, so only a bad row fails."""
        live = [seq for seq in newcomers if not self._drop_if_gone(seq)]
        if not live:
            return
        try:
            logits, batch = self._prefill(live)
        except Exception as err:  # one bad row must not fail its batch-mates
            if len(live) == 1:
                log.exception("prefill failed")
                self._finish(live[0], "error", error=f"prefill failed: {err}")
                return
            for seq in live:
                self._admit([seq])
            return
        self._join(live, logits, batch)

    def _prefill(self, seqs: list[_Sequence]) -> tuple[torch.Tensor, KVBatch]:
        started = time.perf_counter()
        with self.metrics.prefill_seconds.time():
            result = self.engine.prefill([self._row(s) for s in seqs])
        if log.isEnabledFor(logging.DEBUG):  # the costs are only worth looking up for the trace
            costs = [self._prefill_cost(s) for s in seqs]
            self._trace("prefill", time.perf_counter() - started, rows=len(seqs), tokens=sum(costs),
                        padded=len(seqs) * max(costs))
        return result

    def _trace(self, kind: str, seconds: float, **figures: int) -> None:
        """One debug line per forward (`spul -v serve`): what ran, how long, what was left waiting."""
        if not log.isEnabledFor(logging.DEBUG):
            return
        with self._cond:
            waiting = len(self._waiting)
        shown = " ".join(f"{k}={v}" for k, v in figures.items())
        log.debug("step %s %s ms=%.1f running=%d waiting=%d", kind, shown, 1000 * seconds, len(self._active), waiting)

    def _start_chunked(self, seq: _Sequence, allowance: int, *, advance: bool = True) -> None:
        if self._drop_if_gone(seq):
            return
        try:
            with self.metrics.prefill_seconds.time():
                past, inputs = self.engine.begin([self._row(seq)])
        except Exception as err:
            log.exception("prefill failed")
            self._finish(seq, "error", error=f"prefill failed: {err}")
            return
        self._chunked = _Chunked(seq, past, inputs[0])
        if advance:
            self._advance_chunked(allowance)

    def _advance_chunked(self, allowance: int) -> int:
        """Run the next chunk (at most `allowance` tokens) of the chunked prefill; returns tokens run."""
        part = self._chunked
        if part is None:
            return 0
        if self._drop_if_gone(part.seq):
            self._chunked = None
            return 0
        decoding = bool(self._groups)
        size = self._first_chunk() if self._chunk_tokens is None else self._chunk_tokens
        limit = min(allowance, size) if decoding else allowance
        n = min(limit, part.inputs.shape[0])
        last = n == part.inputs.shape[0]
        started = time.perf_counter()
        try:
            with self.metrics.prefill_seconds.time():
                logits, part.past = self.engine.extend(part.past, [part.inputs[:n]], logits=last)
        except Exception as err:
            log.exception("prefill failed")
            self._chunked = None
            self._finish(part.seq, "error", error=f"prefill failed: {err}")
            return n
        seconds = time.perf_counter() - started
        if decoding and n == limit:  # a full chunk (the last one is only what is left)
            self._adapt_chunk(n, seconds)
        self._trace("chunk", seconds, tokens=n, left=part.inputs.shape[0] - n)
        part.inputs = part.inputs[n:]
        if last:
            self._chunked = None
            assert logits is not None
            self._join([part.seq], logits, part.past)
        return n

    def _first_chunk(self) -> int:
        """The first chunk beside running decodes, before any chunk was timed: as many tokens as rows
        decode. Both forwards then multiply the same weights by about as many tokens, so the chunk
        costs about one decode step; `_adapt_chunk` corrects it from there."""
        return max(MIN_PREFILL_TOKENS, len(self._active))

    def _adapt_chunk(self, tokens: int, seconds: float) -> None:
        """Resize the next chunks so that one costs about `CHUNK_COST_STEPS` decode steps."""
        if self._decode_s is not None:
            self._chunk_tokens = next_chunk_tokens(
                tokens, seconds, CHUNK_COST_STEPS * self._decode_s, floor=MIN_PREFILL_TOKENS,
                ceiling=self.max_step_tokens,
            )

    def _join(self, seqs: list[_Sequence], logits: torch.Tensor, batch: KVBatch) -> None:
        """Prefilled rows join a running group and get their first token."""
        for seq in seqs:
            self.metrics.prompt_tokens.labels(seq.label).inc(len(seq.request.token_ids))
        self._place(_Group(list(seqs), batch))
        self._emit_all(logits, seqs)
        self._export_prefix_cache()

    def _place(self, newcomer: _Group) -> None:
        """Merge `newcomer` into the group it pads least, or keep it apart if that padding costs more
        per step than reading part of the weights again (`GROUP_PAD_FRACTION`)."""
        limit = GROUP_PAD_FRACTION * self.engine.weight_bytes
        costs = [(padding_bytes([g.batch, newcomer.batch]), i) for i, g in enumerate(self._groups)]
        if costs and min(costs)[0] <= limit:
            group = self._groups[min(costs)[1]]
            group.batch = group.batch.append_rows(newcomer.batch)
            group.seqs.extend(newcomer.seqs)
        else:
            self._groups.append(newcomer)

    def _merge_groups(self) -> None:
        """Merge groups while some pair pads each other cheaply (after rows have left)."""
        limit = GROUP_PAD_FRACTION * self.engine.weight_bytes
        while len(self._groups) > 1:
            cost, i, j = min(
                (padding_bytes([a.batch, b.batch]), i, j)
                for (i, a), (j, b) in itertools.combinations(enumerate(self._groups), 2)
            )
            if cost > limit:
                return
            a, b = self._groups[i], self._groups[j]
            rest = [g for k, g in enumerate(self._groups) if k not in (i, j)]
            self._groups = [*rest, _Group(a.seqs + b.seqs, a.batch.append_rows(b.batch))]

    def _row(self, seq: _Sequence) -> PrefillRow:
        handle = seq.request.handle
        return PrefillRow(handle.sha256, handle.embeddings, seq.request.token_ids)

    def _export_prefix_cache(self) -> None:
        cache = self.engine.prefix_cache
        queries, hits = cache.query_tokens, cache.hit_tokens
        self.metrics.prefix_cache_queries.inc(queries - self._prefix_seen[0])
        self.metrics.prefix_cache_hits.inc(hits - self._prefix_seen[1])
        self._prefix_seen = (queries, hits)
        self.metrics.prefix_cache_bytes.set(cache.nbytes)

    def _step(self) -> None:
        """One decode step of every running row: one forward per group, each group's tokens sent
        as soon as its forward is done."""
        self._prune()  # rows that finished at admission (or failed) must not be decoded again
        if not self._groups:
            return
        rows = len(self._active)
        self.metrics.batch_size.observe(rows)
        self.metrics.running.set(rows)
        seconds = 0.0
        for group in list(self._groups):
            started = time.perf_counter()
            try:
                logits, group.batch = self.engine.decode(group.batch, [s.generated[-1] for s in group.seqs])
            except Exception as err:
                log.exception("decode failed")
                for seq in group.seqs:
                    self._finish(seq, "error", error=f"decode failed: {err}")
                continue
            seconds += time.perf_counter() - started
            self._emit_all(logits, group.seqs)
        self.metrics.decode_seconds.observe(seconds)
        self._trace("decode", seconds, rows=rows, groups=len(self._groups), skipped=self._decode_skips)
        self._decode_s = seconds if self._decode_s is None else (1 - DECODE_EMA) * self._decode_s + DECODE_EMA * seconds
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
        groups, changed = [], False
        for group in self._groups:
            keep = [i for i, s in enumerate(group.seqs) if not s.finished]
            if len(keep) == len(group.seqs):
                groups.append(group)
                continue
            changed = True
            if keep:
                batch, order = group.batch.drop_rows(keep)
                groups.append(_Group([group.seqs[i] for i in order], batch))
        if not changed:
            return
        self._groups = groups
        self._merge_groups()
        self.metrics.running.set(len(self._active))

    def _gone(self, seq: _Sequence) -> bool:
        return seq.stream.cancelled.is_set() or time.perf_counter() > seq.deadline

    def _drop_if_gone(self, seq: _Sequence) -> bool:
        if not self._gone(seq):
            return False
        self._finish(seq, "cancelled" if seq.stream.cancelled.is_set() else "timeout")
        return True

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
