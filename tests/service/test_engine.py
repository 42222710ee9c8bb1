"""Engine equivalence: alone == batched across profiles == cached/uncached == evaluation's greedy."""

from __future__ import annotations

import pytest
import torch

from spul.prompts_store import position_ids_from_mask, prepend_prompt
from spul.service.engine import Engine, PrefillRow
from spul.service.kvcache import KVBatch, PrefixCache, concat_batches, padding_bytes
from spul.trainer.data import encode_batch
from spul.trainer.evaluate import greedy_ids

QUERIES = [
    "### question : where was alba born ? ### answer :",
    "hello world",
    "### text : the film with cora was great . ### sentiment :",
    "what does brin do ?",
]
STEPS = 6


@pytest.fixture(scope="module")
def prompts(tiny_model) -> dict[str, torch.Tensor]:
    hidden = tiny_model[0].config.hidden_size
    generator = torch.Generator().manual_seed(7)
    return {"p3": torch.randn(3, hidden, generator=generator), "p7": torch.randn(7, hidden, generator=generator)}


@pytest.fixture(scope="module")
def rows(tiny_model, prompts) -> list[PrefillRow]:
    _, tokenizer = tiny_model
    keys = ["p3", "p7", "p7", "p3"]
    return [PrefillRow(k, prompts[k], tuple(tokenizer(q)["input_ids"])) for k, q in zip(keys, QUERIES)]


def naive_greedy(model, row: PrefillRow, steps: int) -> list[int]:
    """Reference: full forward of [prompt ; query ; generated] every step, no cache, argmax."""
    ids = list(row.token_ids)
    for _ in range(steps):
        tokens = torch.tensor([ids])
        embeds, mask, _ = prepend_prompt(row.prompt, model.get_input_embeddings()(tokens), torch.ones_like(tokens))
        with torch.no_grad():
            logits = model(inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits
        ids.append(int(logits[0, -1].argmax()))
    return ids[len(row.token_ids) :]


def run_engine(engine: Engine, rows: list[PrefillRow], steps: int) -> list[list[int]]:
    logits, batch = engine.prefill(rows)
    out = [[t] for t in logits.argmax(-1).tolist()]
    for _ in range(steps - 1):
        logits, batch = engine.decode(batch, [o[-1] for o in out])
        for o, t in zip(out, logits.argmax(-1).tolist()):
            o.append(t)
    return out


@pytest.fixture(scope="module")
def expected(tiny_model, rows) -> list[list[int]]:
    return [naive_greedy(tiny_model[0], row, STEPS) for row in rows]


@pytest.mark.parametrize("cache_bytes", [0, 1 << 24], ids=["uncached", "prefix-cache"])
def test_batched_across_profiles_equals_alone_and_reference(tiny_model, rows, expected, cache_bytes):
    engine = Engine(tiny_model[0], prefix_cache_bytes=cache_bytes)
    alone = [run_engine(engine, [row], STEPS)[0] for row in rows]
    batched = run_engine(engine, rows, STEPS)
    assert alone == expected
    assert batched == expected
    assert len(engine.prefix_cache) == (2 if cache_bytes else 0)  # one entry per prompt version


def test_matches_evaluation_greedy(tiny_model, rows, expected):
    """The trainer's evaluation path (batched, left-padded, cached) predicts the same tokens."""
    model, tokenizer = tiny_model
    engine = Engine(model, prefix_cache_bytes=1 << 24)
    served = run_engine(engine, rows, STEPS)
    for row, got in zip(rows, served):
        batch = encode_batch(tokenizer, [tokenizer.decode(list(row.token_ids))])
        ids = greedy_ids(model, batch.input_ids, batch.attention_mask, row.prompt, max_new_tokens=STEPS, eos_id=-1)
        assert ids[0].tolist() == got


def test_request_joining_mid_decode_matches_alone(tiny_model, rows, expected):
    """Continuous batching: a newcomer joins a running batch between decode steps, others leave."""
    engine = Engine(tiny_model[0], prefix_cache_bytes=1 << 24)
    logits, batch = engine.prefill(rows[:1])
    first = [int(logits.argmax(-1)[0])]
    for _ in range(2):
        logits, batch = engine.decode(batch, [first[-1]])
        first.append(int(logits.argmax(-1)[0]))
    logits, new = engine.prefill(rows[1:3])
    others = [[t] for t in logits.argmax(-1).tolist()]
    batch = concat_batches([batch, new])
    seqs = [first, *others]
    for _ in range(STEPS - 3):
        logits, batch = engine.decode(batch, [s[-1] for s in seqs])
        for s, t in zip(seqs, logits.argmax(-1).tolist()):
            s.append(t)
    assert first == expected[0]
    batch = batch.select([1, 2])  # the first request leaves; the others go on unchanged
    seqs = seqs[1:]
    for _ in range(2):
        logits, batch = engine.decode(batch, [s[-1] for s in seqs])
        for s, t in zip(seqs, logits.argmax(-1).tolist()):
            s.append(t)
    assert [s[:STEPS] for s in seqs] == expected[1:3]


def test_a_batch_extended_twice_gives_two_independent_results(tiny_model, rows):
    """Decode writes into spare columns in place; a second extension of the same batch must not overwrite the first."""
    engine = Engine(tiny_model[0], prefix_cache_bytes=0)
    _, batch = engine.prefill(rows[:2])
    logits_a, after_a = engine.decode(batch, [5, 6])
    copy_a = KVBatch(tuple(k.clone() for k in after_a.keys), tuple(v.clone() for v in after_a.values), after_a.mask)
    logits_b, _ = engine.decode(batch, [7, 8])  # the same batch again, other tokens
    assert not torch.allclose(logits_a, logits_b)
    next_a, _ = engine.decode(after_a, [1, 1])
    expected, _ = engine.decode(copy_a, [1, 1])
    torch.testing.assert_close(next_a, expected)


def _entry(length: int) -> KVBatch:
    k = torch.zeros(1, 2, length, 8)  # (B, kvh, L, hd)
    return KVBatch((k,), (k.clone(),), torch.ones(1, length, dtype=torch.long))


def test_prefix_cache_is_a_byte_bounded_lru():
    size = _entry(4).nbytes()
    cache = PrefixCache(max_bytes=2 * size)
    cache.put("a", _entry(4))
    cache.put("b", _entry(4))
    assert cache.get("a") is not None  # a is now most recent
    cache.put("c", _entry(4))
    assert cache.get("b") is None and cache.get("a") is not None and cache.get("c") is not None
    assert cache.nbytes <= 2 * size
    cache.retain({"c"})
    assert cache.get("a") is None and len(cache) == 1
    cache.put("huge", _entry(100))  # over the whole budget: not cached
    assert cache.get("huge") is None


def test_a_retired_prefix_is_not_stored_again_by_an_in_flight_prefill():
    cache = PrefixCache(max_bytes=1 << 20)
    cache.put("old", _entry(4))
    cache.retain({"new"})  # "old" was replaced while a prefill that missed it was running
    cache.put("old", _entry(4))  # that prefill finishes and stores what it computed
    cache.put("new", _entry(4))
    assert cache.get("old") is None and cache.get("new") is not None


def test_kvbatch_select_trims_unused_leading_columns():
    short, long = _entry(2), _entry(5)
    both = concat_batches([short, long])
    assert both.length == 5 and both.mask[0].tolist() == [0, 0, 0, 1, 1]
    assert both.select([0]).length == 2


def test_rows_join_and_leave_an_arena_without_changing_the_others(tiny_model, rows):
    """Rows written into an arena's spare rows, and a row leaving (another moves into its slot),
    decode exactly as with the copying concat/select, and in place once the arena has room."""
    engine = Engine(tiny_model[0])

    def run(join, leave) -> tuple[list[torch.Tensor], list[int]]:
        _, batch = engine.prefill(rows[:2])
        _, batch = engine.decode(batch, [1, 1])
        batch = join(batch, engine.prefill(rows[2:3])[1])  # a newcomer joins
        _, batch = engine.decode(batch, [2, 2, 2])
        batch, order = leave(batch, [1, 2])  # row 0 leaves
        outs = []
        for step in range(3):
            if step == 1:  # a longer newcomer joins the survivors
                batch = join(batch, engine.prefill(rows[1:2])[1])
                order = [*order, 3]
            logits, batch = engine.decode(batch, [3] * batch.batch_size)
            outs.append(logits[sorted(range(len(order)), key=order.__getitem__)])  # rows in joining order
        return outs

    arena = run(lambda b, new: b.append_rows(new), lambda b, keep: b.drop_rows(keep))
    copied = run(lambda b, new: concat_batches([b, new]), lambda b, keep: (b.select(keep), keep))
    for a, c in zip(arena, copied, strict=True):
        torch.testing.assert_close(a, c)

    batch = engine.prefill(rows[:2])[1].append_rows(engine.prefill(rows[2:3])[1])  # now an arena with room
    storage = batch.keys[0].untyped_storage().data_ptr()
    batch = batch.append_rows(engine.prefill(rows[3:4])[1])
    batch, _ = batch.drop_rows([1, 2, 3])
    _, batch = engine.decode(batch, [1, 1, 1])
    assert batch.keys[0].untyped_storage().data_ptr() == storage  # joined, left and decoded in place


def test_padding_bytes_are_the_bytes_concatenation_adds():
    batches = [_entry(2), concat_batches([_entry(3), _entry(6)]), _entry(9)]
    joined = concat_batches(batches)
    assert padding_bytes(batches) == joined.nbytes() - sum(b.nbytes() for b in batches) > 0


def test_prefix_misses_of_different_lengths_are_computed_in_one_pass(tiny_model, rows, expected):
    """A cold cache: both prompts (P=3, P=7) miss in the same prefill and share one forward."""
    model = tiny_model[0]
    engine = Engine(model, prefix_cache_bytes=1 << 24)
    passes, heads = [], []
    hooks = [
        model.base_model.register_forward_pre_hook(lambda module, args, kwargs: passes.append(1), with_kwargs=True),
        model.get_output_embeddings().register_forward_hook(lambda module, args, out: heads.append(out.shape)),
    ]
    try:
        engine.prefill(rows)
    finally:
        for hook in hooks:
            hook.remove()
    assert len(passes) == 2  # one pass for all missing prefixes, one for the queries
    assert heads == [torch.Size([len(rows), 1, model.config.vocab_size])]  # logits only where a token is sampled
    cold = Engine(model, prefix_cache_bytes=1 << 24)
    assert run_engine(cold, rows, STEPS) == expected
    for row in rows:  # each cached entry holds exactly its own P positions, as if computed alone
        entry = engine.prefix_cache.get(row.prompt_key)
        alone = Engine(model, prefix_cache_bytes=1 << 24)._prefixes([row])[0]
        assert entry.length == row.prompt.shape[0]
        for got, want in zip(entry.keys, alone.keys):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
