"""Greedy generation (batching/padding/prompt invariance), scoring rules, weighted F1, report."""

from __future__ import annotations

import json
import math

import pytest
import torch

from spul.prompts_store import position_ids_from_mask, prepend_prompt
from spul.trainer.data import DataMeta, Row, encode_batch
from spul.trainer.evaluate import (
    Generation,
    evaluate_splits,
    format_table,
    generate,
    greedy_ids,
    score,
    weighted_f1,
    write_report,
)

ROWS = [
    Row("a", "### question : where was alba born ? ### answer :", "in quellport"),
    Row("b", "### text : the film with cora was great . ### sentiment :", "positive"),
    Row("c", "hello", "world"),
    Row("d", "### question : what does brin do ? ### answer :", "she paints"),
]


def reference_greedy(model, tokenizer, row: Row, prompt: torch.Tensor | None, n: int) -> list[int]:
    """One row, no padding, no KV cache: re-run the whole sequence for every token."""
    ids = torch.tensor([encode_batch(tokenizer, [row.prompt]).input_ids[0].tolist()])  # (1, T)
    out: list[int] = []
    for _ in range(n):
        embeds = model.get_input_embeddings()(ids)  # (1, T, H)
        mask = torch.ones_like(ids)
        if prompt is not None:
            embeds, mask, _ = prepend_prompt(prompt, embeds, mask)
        logits = model(inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits
        nxt = int(logits[0, -1].argmax())
        out.append(nxt)
        if nxt == tokenizer.eos_token_id:
            break
        ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    return out


@pytest.mark.parametrize("with_prompt", [False, True])
def test_batched_cached_greedy_matches_single_row_reference(tiny_model, with_prompt):
    model, tokenizer = tiny_model
    prompt = torch.randn(5, model.config.hidden_size, generator=torch.Generator().manual_seed(1)) if with_prompt else None
    batch = encode_batch(tokenizer, [r.prompt for r in ROWS])
    assert (batch.attention_mask == 0).any()  # rows of different lengths: left padding is exercised
    got = greedy_ids(model, batch.input_ids, batch.attention_mask, prompt, max_new_tokens=6,
                     eos_id=tokenizer.eos_token_id)
    for i, row in enumerate(ROWS):
        want = reference_greedy(model, tokenizer, row, prompt, 6)
        assert got[i, : len(want)].tolist() == want
        assert (got[i, len(want) :] == tokenizer.eos_token_id).all()  # finished rows only pad with EOS


def test_generations_do_not_depend_on_batch_size(tiny_model):
    model, tokenizer = tiny_model
    prompt = torch.randn(4, model.config.hidden_size, generator=torch.Generator().manual_seed(2))
    assert generate(model, tokenizer, ROWS, prompt, batch_size=1) == generate(model, tokenizer, ROWS, prompt, batch_size=3)
    assert generate(model, tokenizer, [], prompt, batch_size=2) == []


def test_chat_template_generation_continues_the_rendered_prompt(tiny_model):
    """With chat_template, generation starts after the template's assistant cue, exactly as a
    hand-rendered prompt without added special tokens would."""
    model, tokenizer = tiny_model
    row = ROWS[0]
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": row.prompt}], add_generation_prompt=True,
                                             tokenize=False)
    ids = torch.tensor([tokenizer(rendered, add_special_tokens=False)["input_ids"]])  # (1, T)
    want = greedy_ids(model, ids, torch.ones_like(ids), None, max_new_tokens=3, eos_id=tokenizer.eos_token_id)
    got = generate(model, tokenizer, [row], None, max_new_tokens=3, chat_template=True)
    want_text = tokenizer.decode([t for t in want[0].tolist() if t != tokenizer.eos_token_id]).strip()
    assert got[0].text == want_text


def test_weighted_f1_matches_sklearn_example():
    # sklearn's f1_score docs: y_true=[0,1,2,0,1,2], y_pred=[0,2,1,0,0,1], average="weighted" -> 0.2666...
    assert weighted_f1(list("012012"), list("021001")) == pytest.approx(0.26666666)
    assert weighted_f1(["a", "b"], ["a", "b"]) == 1.0
    assert math.isnan(weighted_f1([], []))


def test_weighted_f1_counts_stray_predictions_as_their_own_class():
    # class a: precision 1, recall 1/2 -> F1 2/3; the stray "x" has no support, so no weight
    assert weighted_f1(["a", "a"], ["a", "x"]) == pytest.approx(2 / 3)


def test_exact_match_needs_the_answer_then_eos():
    rows = [Row("1", "p", "In Quellport"), Row("2", "p", "positive"), Row("3", "p", "positive")]
    gens = [Generation("in quellport", True), Generation("positive", False), Generation("negative", True)]
    m = score(rows, gens)
    assert m["n"] == 3 and m["accuracy"] == pytest.approx(1 / 3)
    assert score(rows, gens, "exact") == m


@pytest.mark.parametrize(
    "gold, text, stopped, exact, contains",
    [
        ("Paris", "The capital of France is Paris.", True, False, True),
        ("Paris", "paris", True, True, True),
        ("Paris", "Paris is the capital and it", False, False, True),  # cut off: contains still counts
        ("Rome", "Romeo and Juliet", True, False, False),  # whole words only
        ("New York", "It is in new  york, USA", True, False, True),
        ("New York", "York, New Jersey", True, False, False),  # words in order and contiguous
        ("I don't know.", "i don't know", True, False, True),
    ],
)
def test_scoring_rules(gold, text, stopped, exact, contains):
    rows, gens = [Row("1", "p", gold)], [Generation(text, stopped)]
    assert score(rows, gens, "exact")["accuracy"] == float(exact)
    assert score(rows, gens, "contains")["accuracy"] == float(contains)


def test_contains_rule_counts_a_match_as_the_gold_class_for_f1():
    rows = [Row("1", "p", "Paris"), Row("2", "p", "Rome")]
    gens = [Generation("It is Paris.", True), Generation("Milan", True)]
    m = score(rows, gens, "contains")
    assert m["accuracy"] == 0.5 and m["f1"] == pytest.approx(0.5)  # paris: F1 1; rome: F1 0


def test_unknown_match_rule_is_refused():
    with pytest.raises(ValueError, match="unknown match rule"):
        score([Row("1", "p", "a")], [Generation("a", True)], "fuzzy")


def test_evaluate_splits_report_and_table(tiny_model, tmp_path):
    model, tokenizer = tiny_model
    prompt = torch.zeros(3, model.config.hidden_size)
    splits = {"train_forget": ROWS[:2], "test_retain": ROWS[2:], "paraphrase": []}
    results = evaluate_splits(model, tokenizer, splits, {"original": None, "spul": prompt}, batch_size=2)
    assert set(results) == {"original", "spul"}
    assert results["spul"]["test_retain"]["n"] == 2
    assert results["original"]["paraphrase"]["n"] == 0 and math.isnan(results["original"]["paraphrase"]["f1"])
    write_report(tmp_path / "r.json", "qa", results, meta=DataMeta(name="qa", match="contains"))
    report = json.loads((tmp_path / "r.json").read_text())  # strict JSON: NaN became null
    assert report["task"] == "qa" and report["results"]["original"]["paraphrase"]["accuracy"] is None
    assert report["scoring"]["match"] == "contains" and report["scoring"]["chat_template"] is False


def test_table_has_one_row_per_method_and_a_cell_per_split():
    results = {"original": {"test_forget": {"accuracy": 1.0, "f1": 1.0, "n": 4}},
               "spul": {"test_forget": {"accuracy": 0.25, "f1": 0.4, "n": 4}, "paraphrase": {"n": 0}}}
    lines = format_table(results).splitlines()
    assert lines[0].split() == ["method", "test_forget", "paraphrase"]
    assert lines[2].split() == ["original", "100.0", "/", "100.0", "(4)", "-"]
    assert lines[3].split() == ["spul", "25.0", "/", "40.0", "(4)", "-"]
