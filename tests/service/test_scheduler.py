"""The batcher: concurrent requests, seeded sampling, bounded queue, cancellation, timeouts, stop strings."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
import torch

from spul.service import scheduler as scheduler_module
from spul.service.engine import Engine
from spul.service.metrics import Metrics
from spul.service.registry import PromptHandle
from spul.service.sampling import SamplingParams, top_p_filter
from spul.service.scheduler import (
    ContextTooLong,
    EngineStopped,
    GenerationRequest,
    QueueFull,
    Scheduler,
    ShuttingDown,
    next_chunk_tokens,
)
from spul.service.textstream import TextTracker


@pytest.fixture(scope="module")
def handles(tiny_model) -> list[PromptHandle]:
    hidden = tiny_model[0].config.hidden_size
    generator = torch.Generator().manual_seed(3)
    return [PromptHandle(f"p{p}", 1, f"sha-{p}", torch.randn(p, hidden, generator=generator)) for p in (2, 5)]


def make_scheduler(tiny_model, **kwargs) -> Scheduler:
    model, tokenizer = tiny_model
    engine = Engine(model, prefix_cache_bytes=1 << 24)
    return Scheduler(engine, tokenizer, Metrics(), eos_token_ids={-1}, **kwargs)


def request(tiny_model, handle, text, *, n=8, **kwargs) -> GenerationRequest:
    ids = tuple(tiny_model[1](text)["input_ids"])
    return GenerationRequest(handle=handle, token_ids=ids, max_new_tokens=n, **kwargs)


async def run_all(scheduler: Scheduler, requests: list[GenerationRequest]) -> list[tuple[str, str, int]]:
    async def one(req):
        parts, reason, tokens = [], None, 0
        async for event in scheduler.submit(req):
            parts.append(event.text)
            reason, tokens = event.finish_reason, event.completion_tokens
        return "".join(parts), reason, tokens

    return await asyncio.gather(*(one(r) for r in requests))


@contextlib.contextmanager
def recorded_forwards(model):
    """(rows, tokens per row) of every forward of the model's base while the block runs."""
    shapes: list[tuple[int, int]] = []
    hook = model.base_model.register_forward_pre_hook(
        lambda module, args, kwargs: shapes.append(tuple(kwargs["inputs_embeds"].shape[:2])), with_kwargs=True
    )
    try:
        yield shapes
    finally:
        hook.remove()


async def events_of(stream) -> list:
    return [e async for e in stream]


def run_queued(scheduler: Scheduler, requests: list[GenerationRequest]) -> list[list]:
    """Every request waiting before the engine's first step (one burst); each one's events."""

    async def body():
        streams = [scheduler.submit(r) for r in requests]
        scheduler.start()
        try:
            return [await events_of(stream) for stream in streams]
        finally:
            await scheduler.shutdown(grace_s=1.0)

    return asyncio.run(body())


async def with_scheduler(scheduler: Scheduler, body):
    scheduler.start()
    try:
        return await body()
    finally:
        await scheduler.shutdown(grace_s=1.0)


TEXTS = ["where was alba born ?", "what does brin do", "the film with cora was great", "hello world"]


def test_concurrent_mixed_profiles_equal_alone_and_seeded_sampling_repeats(tiny_model, handles):
    reqs = [request(tiny_model, handles[i % 2], t, n=3 + 2 * i) for i, t in enumerate(TEXTS)]
    seeded = [request(tiny_model, handles[1], t, sampling=SamplingParams(temperature=1.0, top_p=0.9, seed=11))
              for t in TEXTS[:2]]

    async def body():
        alone = [(await run_all(scheduler, [r]))[0] for r in reqs + seeded]
        together = await run_all(scheduler, reqs + seeded)
        return alone, together

    scheduler = make_scheduler(tiny_model)
    alone, together = asyncio.run(with_scheduler(scheduler, body))
    assert together == alone
    assert [(reason, tokens) for _, reason, tokens in alone[:4]] == [("length", n) for n in (3, 5, 7, 9)]


def test_queue_full_is_refused_and_shutdown_refuses_new_requests(tiny_model, handles):
    scheduler = make_scheduler(tiny_model, max_queue=2)  # not started: nothing leaves the queue

    async def body():
        scheduler.submit(request(tiny_model, handles[0], "hello"))
        scheduler.submit(request(tiny_model, handles[0], "hello"))
        with pytest.raises(QueueFull):
            scheduler.submit(request(tiny_model, handles[0], "hello"))
        scheduler.start()
        await scheduler.shutdown(grace_s=5.0)
        with pytest.raises(ShuttingDown):
            scheduler.submit(request(tiny_model, handles[0], "hello"))

    asyncio.run(body())


def test_cancel_frees_the_slot_and_timeout_finishes_the_request(tiny_model, handles):
    scheduler = make_scheduler(tiny_model, max_batch_size=1)

    async def body():
        long = scheduler.submit(request(tiny_model, handles[0], "hello", n=200))
        await long.__anext__()  # it is running and holds the only slot
        long.cancel()
        short = await run_all(scheduler, [request(tiny_model, handles[1], "hello", n=2)])
        timed = await run_all(scheduler, [request(tiny_model, handles[1], "hello", n=240, timeout_s=0.05)])
        for _ in range(100):  # the engine thread drops finished rows right after their last event
            if scheduler.pending() == 0:
                break
            await asyncio.sleep(0.02)
        return short, timed, scheduler.pending()

    short, timed, pending = asyncio.run(with_scheduler(scheduler, body))
    assert short[0][1] == "length"
    assert timed[0][1] == "timeout"
    assert pending == 0


def test_text_tracker_holds_back_partial_stop_strings():
    class Words:
        def decode(self, ids, skip_special_tokens=True):
            return " ".join(["a", "b", "c", "d"][i] for i in ids)

    tracker = TextTracker(Words(), stop=("c d",))
    assert tracker.add(0) == ("a", False)
    delta, stopped = tracker.add(1)  # "a b": nothing held back yet
    assert (delta, stopped) == (" b", False)
    assert tracker.add(2) == (" ", False)  # "c" may be the start of "c d": held back
    assert tracker.add(3) == ("", True)  # stop found: the text ends before it
    assert tracker.text == "a b "


def test_top_p_keeps_the_smallest_set_reaching_the_mass():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    assert top_p_filter(probs, 0.7).tolist() == pytest.approx([0.625, 0.375, 0.0, 0.0])
    assert top_p_filter(probs, 0.1).tolist() == pytest.approx([1.0, 0.0, 0.0, 0.0])


def test_a_failing_row_ends_with_an_error_and_the_engine_keeps_serving(tiny_model, handles, monkeypatch):
    import spul.service.scheduler as sched

    def broken_sample(*args, **kwargs):
        raise ValueError("boom")

    monkeypatch.setattr(sched, "sample", broken_sample)  # only sampled (non-greedy) rows hit it
    scheduler = make_scheduler(tiny_model)
    sampled = request(tiny_model, handles[0], "hello", sampling=SamplingParams(temperature=1.0, seed=1))
    greedy = request(tiny_model, handles[1], "hello", n=3)

    async def body():
        together = await run_all(scheduler, [sampled, greedy])
        after = await run_all(scheduler, [request(tiny_model, handles[0], "hello", n=2)])
        return together, after, scheduler.alive

    together, after, alive = asyncio.run(with_scheduler(scheduler, body))
    assert together[0][1] == "error"
    assert together[1][1:] == ("length", 3)
    assert after[0][1:] == ("length", 2)
    assert alive


def test_a_request_longer_than_the_context_is_refused_at_submit_naming_the_limit(tiny_model, handles):
    scheduler = make_scheduler(tiny_model)  # the tiny model has 256 positions; P=5, "hello" is 1 token

    async def body():
        with pytest.raises(ContextTooLong, match="context length is 256"):
            scheduler.submit(request(tiny_model, handles[1], "hello", n=256 - 5))
        scheduler.submit(request(tiny_model, handles[1], "hello", n=256 - 6)).cancel()  # fits exactly

    asyncio.run(body())


def test_the_route_answers_400_naming_the_context_length(make_client):
    client = make_client(max_prompt_tokens=400)
    response = client.post("/v1/completions", json={"model": "beta", "prompt": "hello " * 260, "max_tokens": 4})
    assert response.status_code == 400 and "256" in response.json()["error"]["message"]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_stopped_engine_fails_new_and_waiting_requests_at_once(tiny_model, handles, monkeypatch):
    scheduler = make_scheduler(tiny_model)

    def die(*args, **kwargs):
        raise SystemExit  # not an Exception: ends the engine thread the way a fatal fault would

    monkeypatch.setattr(scheduler.engine, "prefill", die)

    async def body():
        scheduler.start()
        loop = asyncio.get_running_loop()
        started = loop.time()
        waiting = await asyncio.wait_for(run_all(scheduler, [request(tiny_model, handles[0], "hello")]), 10)
        waited = loop.time() - started
        with pytest.raises(EngineStopped):
            scheduler.submit(request(tiny_model, handles[0], "hello"))
        return waiting[0], waited

    (_, reason, _), waited = asyncio.run(body())
    assert reason == "error" and waited < 5  # not the request's 120 s timeout, nor forever


def test_a_short_request_does_not_wait_behind_long_ones(tiny_model, handles):
    scheduler = make_scheduler(tiny_model, max_batch_size=1)
    longs = [request(tiny_model, handles[0], "hello", n=30) for _ in range(3)]
    short = request(tiny_model, handles[0], "hello", n=2)
    finished: list[str] = []

    async def body():
        async def one(name, req):
            await run_all(scheduler, [req])
            finished.append(name)

        first = asyncio.create_task(one("long0", longs[0]))
        await asyncio.sleep(0.05)  # long0 holds the only slot
        rest = [one(f"long{i}", r) for i, r in enumerate(longs[1:], 1)]
        await asyncio.gather(first, *rest, one("short", short))

    asyncio.run(with_scheduler(scheduler, body))
    assert finished.index("short") <= 1  # right after the long one that held the slot, not last


def test_requests_of_similar_cost_are_served_in_arrival_order(tiny_model, handles):
    scheduler = make_scheduler(tiny_model, max_batch_size=1)
    holder = request(tiny_model, handles[0], "hello", n=60)
    first = request(tiny_model, handles[0], "where was alba born", n=8)  # a few tokens more than the next
    second = request(tiny_model, handles[0], "hello", n=8)
    assert len(first.token_ids) > len(second.token_ids)
    finished: list[str] = []

    async def body():
        async def one(name, req):
            await run_all(scheduler, [req])
            finished.append(name)

        hold = asyncio.create_task(one("holder", holder))
        await asyncio.sleep(0.02)  # the holder takes the only slot
        await asyncio.gather(hold, one("first", first), one("second", second))

    asyncio.run(with_scheduler(scheduler, body))
    assert finished == ["holder", "first", "second"]  # not the slightly cheaper one first


def test_a_long_prompt_is_prefilled_in_chunks_while_others_decode(tiny_model, handles):
    model = tiny_model[0]
    words = " ".join(TEXTS * 6)
    long_req = request(tiny_model, handles[1], words, n=4)
    running = request(tiny_model, handles[0], "hello", n=40)

    async def body():
        alone = (await run_all(scheduler, [long_req]))[0]
        sizes.clear()
        stream = scheduler.submit(running)
        await stream.__anext__()  # decoding
        together = await run_all(scheduler, [long_req])
        async for _ in stream:
            pass
        return alone, together[0]

    scheduler = make_scheduler(tiny_model, max_step_tokens=24)
    with recorded_forwards(model) as sizes:  # (rows, tokens) of every forward
        alone, together = asyncio.run(with_scheduler(scheduler, body))
    assert len(long_req.token_ids) > 40 and together == alone
    assert max(tokens for _, tokens in sizes) <= 24  # no step ran more than its budget
    assert sum(1 for rows, tokens in sizes if tokens > 1) >= 4  # the prompt went in several chunks


def test_the_first_chunk_beside_decodes_is_as_small_as_a_decode_step(tiny_model, handles):
    model = tiny_model[0]
    long_req = request(tiny_model, handles[1], " ".join(TEXTS * 6), n=4)
    running = [request(tiny_model, handles[0], text, n=60) for text in TEXTS[:2]]

    async def body():
        alone = (await run_all(scheduler, [long_req]))[0]
        streams = [scheduler.submit(r) for r in running]
        for stream in streams:
            await stream.__anext__()  # both decoding
        sizes.clear()
        together = await run_all(scheduler, [long_req])
        for stream in streams:
            async for _ in stream:
                pass
        return alone, together[0]

    scheduler = make_scheduler(tiny_model, max_step_tokens=64)  # chunks of up to 62 tokens beside 2 decodes
    with recorded_forwards(model) as sizes:
        alone, together = asyncio.run(with_scheduler(scheduler, body))
    chunks = [tokens for _, tokens in sizes if tokens > 1]
    assert together == alone and len(long_req.token_ids) > 2 * scheduler_module.MIN_PREFILL_TOKENS
    # no chunk was timed yet: the first is sized like the decode step beside it, not like the budget
    assert chunks[0] <= scheduler_module.MIN_PREFILL_TOKENS
    assert len(chunks) >= 2


def test_a_new_profile_counts_once_when_its_requests_arrive_together(tiny_model):
    model = tiny_model[0]
    prompt = torch.randn(12, model.config.hidden_size, generator=torch.Generator().manual_seed(5))
    handle = PromptHandle("fresh", 1, "sha-fresh", prompt)  # not in the prefix cache yet
    reqs = [request(tiny_model, handle, "hello world", n=3) for _ in range(4)]
    query = len(reqs[0].token_ids)
    budget = 12 + 4 * query  # the prompt once and every query fit; the prompt four times do not
    assert 4 * (12 + query) > budget
    scheduler = make_scheduler(tiny_model, max_step_tokens=budget)
    with recorded_forwards(model) as forwards:
        events = run_queued(scheduler, reqs)
    assert all(ev[-1].finish_reason == "length" for ev in events)
    # the prompt's prefix once, then all four queries in one prefill
    assert [rows for rows, tokens in forwards if tokens > 1] == [1, 4]


def test_an_idle_engine_waits_for_a_burst_to_finish_arriving(tiny_model, handles, monkeypatch):
    model = tiny_model[0]
    monkeypatch.setattr(scheduler_module, "COALESCE_GAP_S", 0.3)  # arrivals 20 ms apart are one burst
    monkeypatch.setattr(scheduler_module, "COALESCE_MAX_S", 5.0)
    monkeypatch.setattr(scheduler_module, "COALESCE_STEP_FRACTION", 1000.0)  # the tiny model's step is ~1 ms
    reqs = [request(tiny_model, handles[0], text, n=3) for text in TEXTS]
    scheduler = make_scheduler(tiny_model)

    async def body():
        await run_all(scheduler, [reqs[0]])  # the prompt's prefix is cached; the engine is idle again
        forwards.clear()
        streams = []
        for r in reqs:  # one at a time, as requests over HTTP reach the queue
            streams.append(scheduler.submit(r))
            await asyncio.sleep(0.02)
        return [await events_of(stream) for stream in streams]

    with recorded_forwards(model) as forwards:
        events = asyncio.run(with_scheduler(scheduler, body))
    assert all(ev[-1].finish_reason == "length" for ev in events)
    assert [rows for rows, tokens in forwards if tokens > 1] == [len(reqs)]  # one prefill for the whole burst, not one for the first arrival


def test_a_burst_is_admitted_before_its_first_rows_decode_again(tiny_model, handles):
    model = tiny_model[0]
    reqs = [request(tiny_model, handles[0], text, n=6) for text in TEXTS * 4]  # 16 requests at once
    scheduler = make_scheduler(tiny_model, max_step_tokens=16)  # a few newcomers per step
    with recorded_forwards(model) as shapes:
        events = run_queued(scheduler, reqs)
    forwards = [tokens for _, tokens in shapes]  # tokens per row of every forward: 1 is a decode step
    assert all(ev[-1].finish_reason == "length" and ev[-1].completion_tokens == 6 for ev in events)
    runs, run = [], 0  # lengths of the runs of prefill forwards between two decode steps
    for tokens in forwards:
        run = run + 1 if tokens > 1 else 0
        runs.append(run)
    assert sum(1 for tokens in forwards if tokens > 1) >= 5  # the burst took several steps
    # it went in back to back (a prefix-cache fill, then steps that skip the decode)...
    assert max(runs) >= 3
    # ...but never more than MAX_DECODE_SKIPS steps in a row keep the running rows from decoding
    assert max(runs) <= scheduler_module.MAX_DECODE_SKIPS + 2


def test_the_rest_of_a_burst_is_admitted_before_the_first_rows_decode(tiny_model, handles):
    model = tiny_model[0]
    reqs = [request(tiny_model, handles[0], " ".join(TEXTS), n=3) for _ in range(5)]  # above MIN_PREFILL_TOKENS
    query = len(reqs[0].token_ids)
    # two rows per step; after the second step one request is left, fewer than the rows running
    scheduler = make_scheduler(tiny_model, max_step_tokens=2 * query + 2)

    async def body():
        await run_all(scheduler, [reqs[0]])  # caches the prompt's prefix
        forwards.clear()
        streams = [scheduler.submit(r) for r in reqs]
        return [await events_of(stream) for stream in streams]

    with recorded_forwards(model) as forwards:  # (rows, tokens per row) of every forward
        events = asyncio.run(with_scheduler(scheduler, body))
    assert all(ev[-1].finish_reason == "length" for ev in events)
    first_decode = next(i for i, (_, tokens) in enumerate(forwards) if tokens == 1)
    assert [rows for rows, _ in forwards[:first_decode]] == [2, 2, 1]  # the whole burst, then decodes


def test_the_chunk_size_settles_where_a_chunk_takes_the_target_time():
    fixed, per_token = 0.05, 0.002  # a chunk of n tokens takes fixed + per_token * n seconds

    def settle(target: float, n: int = 256) -> int:
        for _ in range(30):
            n = next_chunk_tokens(n, fixed + per_token * n, target, floor=16, ceiling=256)
        return n

    assert abs(settle(0.15) - 50) <= 2  # 0.05 + 0.002 * 50 = 0.15 s
    assert abs(settle(0.15, n=16) - 50) <= 2  # from below as from above
    assert settle(0.01) == 16  # even the floor costs more than the target: the floor keeps it moving
    assert settle(10.0) == 256  # cheap chunks grow to the whole budget


def test_a_long_row_decodes_apart_instead_of_padding_the_short_rows(tiny_model, handles, monkeypatch):
    # the tiny model's weights are small: padding its rows by a few columns already costs more than a forward
    monkeypatch.setattr(scheduler_module, "GROUP_PAD_FRACTION", 0.05)
    model = tiny_model[0]
    long_req = request(tiny_model, handles[1], " ".join(TEXTS * 8), n=6)
    shorts = [request(tiny_model, handles[0], "hello", n=30) for _ in range(2)]
    decodes: list[tuple[int, int]] = []  # (rows, key columns) of every one-token forward
    hook = model.base_model.register_forward_pre_hook(
        lambda module, args, kwargs: decodes.append((kwargs["inputs_embeds"].shape[0], kwargs["attention_mask"].shape[-1]))
        if kwargs["inputs_embeds"].shape[1] == 1 else None,
        with_kwargs=True,
    )

    async def body():
        alone = (await run_all(scheduler, [long_req]))[0]
        decodes.clear()
        streams = [scheduler.submit(r) for r in shorts]
        for stream in streams:
            await stream.__anext__()  # both decoding
        together = (await run_all(scheduler, [long_req]))[0]
        for stream in streams:
            async for _ in stream:
                pass
        return alone, together

    scheduler = make_scheduler(tiny_model)
    try:
        alone, together = asyncio.run(with_scheduler(scheduler, body))
    finally:
        hook.remove()
    long_len = len(long_req.token_ids)
    assert together == alone
    assert any(rows == 1 and keys > long_len for rows, keys in decodes)  # the long row decoded on its own
    assert all(keys < long_len for rows, keys in decodes if rows > 1)  # the short rows were never padded to it


def test_prefix_cache_queries_and_hits_are_exported(tiny_model, handles):
    scheduler = make_scheduler(tiny_model)

    async def body():
        for _ in range(3):
            await run_all(scheduler, [request(tiny_model, handles[1], "hello", n=2)])

    asyncio.run(with_scheduler(scheduler, body))
    text = scheduler.metrics.render().decode()
    p = handles[1].embeddings.shape[0]
    assert f"spul_prefix_cache_queries_total {3 * p}.0" in text
    assert f"spul_prefix_cache_hits_total {2 * p}.0" in text
