"""Fine-tuning unlearning baselines and the robustness probes, on the tiny random model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spul.trainer.baselines import METHODS, BaselineConfig, search_lr, unlearn
from spul.trainer.data import Row
from spul.trainer.robustness import (
    IculDoesNotFit,
    answer_logprobs,
    icul_context,
    icul_rows,
    injection_rows,
    mia_auc,
    nonmember_rows,
)

FORGET = [
    Row("f/0", "### question : where was alba born ? ### answer :", "in quellport", "alba"),
    Row("f/1", "### question : what does alba do ? ### answer :", "she paints", "alba"),
]
RETAIN = [
    Row("r/0", "### question : where was brin born ? ### answer :", "in quellport", "brin"),
    Row("r/1", "### question : what does brin do ? ### answer :", "she paints", "brin"),
    Row("r/2", "### question : what does cora do ? ### answer :", "she paints", "cora"),
]


@pytest.fixture()
def one_thread():
    """Tiny models run faster on one thread when the cores are shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------- membership inference
def test_mia_auc_is_one_when_every_member_has_lower_loss():
    assert mia_auc([0.1, 0.2, 0.3], [1.0, 2.0]) == 1.0


def test_mia_auc_is_half_when_losses_are_indistinguishable():
    same = [0.5, 1.0, 1.5, 2.0]
    assert mia_auc(same, same) == 0.5
    rng = np.random.default_rng(0)
    assert abs(mia_auc(rng.normal(size=4000), rng.normal(size=4000)) - 0.5) < 0.02


def test_mia_auc_counts_ties_half_and_rejects_empty_input():
    assert mia_auc([1.0, 0.0], [1.0]) == pytest.approx(0.75)  # one tie (0.5) and one win (1)
    assert mia_auc([3.0], [1.0, 2.0]) == 0.0
    with pytest.raises(ValueError, match="at least one"):
        mia_auc([], [1.0])


def test_mia_auc_from_model_losses_separates_trained_rows(tiny_model, one_thread):
    """A model trained on the member rows: its loss attack must reach AUC 1.0 on them."""
    model, tokenizer = tiny_model
    members, others = FORGET, RETAIN
    result = unlearn(
        model,
        tokenizer,
        members,
        [],
        config=BaselineConfig(method="rl", lr=3e-2, epochs=30, forget_per_batch=2),
        generic_labels=["quellport"],
    )
    losses_m = -answer_logprobs(result.model, tokenizer, [Row(r.id, r.prompt, "quellport") for r in members])
    losses_n = -answer_logprobs(
        result.model, tokenizer, [Row(r.id, r.prompt, "quellport") for r in others[2:]]
    )
    assert mia_auc(losses_m, losses_n) == 1.0


# ---------------------------------------------------------------- baselines
def _params(model):
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("method", METHODS)
def test_every_baseline_trains_a_copy_and_leaves_the_original_untouched(tiny_model, method, one_thread):
    model, tokenizer = tiny_model
    before = _params(model)
    result = unlearn(
        model,
        tokenizer,
        FORGET,
        RETAIN,
        config=BaselineConfig(method=method, lr=1e-2, epochs=2, forget_per_batch=1),
        generic_labels=["unknown"],
    )
    assert all(torch.equal(a, b) for a, b in zip(before, _params(model)))
    changed = any(not torch.equal(a, b) for a, b in zip(before, _params(result.model)))
    assert changed and result.trainable_params == sum(p.numel() for p in model.parameters())
    assert len(result.history) == 4 and not result.model.training
    expected = {"ga": {"L_f"}, "rl": {"L_f"}, "ga_kl": {"L_f", "L_kl"}, "ga_gd": {"L_f", "L_r"}}[method]
    assert set(result.history[0]) == expected


def test_gradient_ascent_lowers_the_forget_answers_likelihood(tiny_model, one_thread):
    model, tokenizer = tiny_model
    before = answer_logprobs(model, tokenizer, FORGET)
    result = unlearn(
        model,
        tokenizer,
        FORGET,
        RETAIN,
        config=BaselineConfig(method="ga", lr=1e-2, epochs=3),
        generic_labels=["unknown"],
    )
    after = answer_logprobs(result.model, tokenizer, FORGET)
    assert (after < before - 0.5).all()


def test_random_label_raises_the_generic_answers_likelihood(tiny_model, one_thread):
    model, tokenizer = tiny_model
    generic = [Row(r.id, r.prompt, "unknown") for r in FORGET]
    before = answer_logprobs(model, tokenizer, generic)
    result = unlearn(
        model,
        tokenizer,
        FORGET,
        RETAIN,
        config=BaselineConfig(method="rl", lr=1e-2, epochs=3),
        generic_labels=["unknown"],
    )
    assert (answer_logprobs(result.model, tokenizer, generic) > before + 0.5).all()


def test_ga_gd_keeps_retain_answers_better_than_plain_ga(tiny_model, one_thread):
    model, tokenizer = tiny_model
    runs = {
        m: unlearn(
            model,
            tokenizer,
            FORGET,
            RETAIN,
            config=BaselineConfig(method=m, lr=1e-2, epochs=4, forget_per_batch=1, retain_per_batch=3),
            generic_labels=["unknown"],
        )
        for m in ("ga", "ga_gd")
    }
    before = answer_logprobs(model, tokenizer, FORGET)
    for run in runs.values():  # both unlearn: the forget answers become less likely
        assert (answer_logprobs(run.model, tokenizer, FORGET) < before).all()
    retain = {m: answer_logprobs(r.model, tokenizer, RETAIN).mean() for m, r in runs.items()}
    assert retain["ga_gd"] > retain["ga"]


def test_lr_search_keeps_the_best_train_score_and_breaks_ties_towards_the_smaller_lr(tiny_model, one_thread):
    model, tokenizer = tiny_model
    # (forget acc, retain acc) per lr in ascending order: scores 0.0, 0.5, 0.5 -> 1e-3 wins the tie
    answers = iter([0.5, 0.5, 0.2, 0.7, 0.0, 0.5])
    calls = []

    def fake_accuracy(m, rows):
        calls.append(len(rows))
        return next(answers)

    best, trials = search_lr(
        model,
        tokenizer,
        FORGET,
        RETAIN,
        config=BaselineConfig(method="ga"),
        generic_labels=["unknown"],
        grid=[1e-2, 1e-4, 1e-3],
        retain_sample=2,
        accuracy_fn=fake_accuracy,
    )
    assert [t.lr for t in trials] == [1e-4, 1e-3, 1e-2]
    assert best.config.lr == 1e-3
    assert calls == [2, 2] * 3  # all of train_forget, then the fixed retain sample: never test rows


def test_baseline_config_fails_fast_with_the_valid_choices():
    with pytest.raises(ValueError, match="method must be one of"):
        BaselineConfig(method="sgd")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lr must be"):
        BaselineConfig(method="ga", lr=0)
    assert BaselineConfig(method="ga", epochs=1, forget_per_batch=8).steps(20) == 3


def test_unlearn_refuses_empty_forget_and_retain_less_ga_gd(tiny_model):
    model, tokenizer = tiny_model
    with pytest.raises(ValueError, match="forget set is empty"):
        unlearn(model, tokenizer, [], RETAIN, config=BaselineConfig(method="ga"), generic_labels=["unknown"])
    with pytest.raises(ValueError, match="needs retain rows"):
        unlearn(
            model, tokenizer, FORGET, [], config=BaselineConfig(method="ga_gd"), generic_labels=["unknown"]
        )


# ---------------------------------------------------------------- probes
def test_injection_probes_use_only_known_words_and_wrap_every_row(tiny_model):
    _, tokenizer = tiny_model
    rows, texts = injection_rows(FORGET, tokenizer=tokenizer, decoys=["brin", "cora", "notaword"])
    assert len(rows) == len(FORGET) * len(texts) and len(texts) >= 3
    vocab = set(tokenizer.get_vocab())
    unk = tokenizer.unk_token_id
    for row in rows:
        assert unk not in tokenizer(row.prompt)["input_ids"], row.prompt
        assert any(row.prompt.endswith(f.prompt) for f in FORGET)
    _, banned = injection_rows(FORGET, tokenizer=tokenizer, decoys=[], banned=["question"])
    assert "decoy_forget_list" not in banned  # no decoy names: that probe says nothing
    assert all("question" not in t.split() for t in banned.values()) and "question" in texts["override"]
    decoy = [r for r in rows if r.id.endswith("/decoy_forget_list")]
    assert decoy and all("brin cora" in r.prompt and "notaword" not in r.prompt for r in decoy)
    assert all(w in vocab or w.startswith("{") for t in texts.values() for w in t.split())


def test_icul_puts_generic_forget_demos_first_and_refuses_what_does_not_fit(tiny_model):
    _, tokenizer = tiny_model
    context = icul_context(FORGET, RETAIN, generic="unknown", n_retain=1)
    assert context.startswith(f"{FORGET[0].prompt} unknown ")  # one demo per forget entity
    assert context.count("unknown") == 1
    rows = icul_rows(RETAIN, context=context, tokenizer=tokenizer, max_positions=256)
    assert all(r.prompt == f"{context} {q.prompt}" and r.answer == q.answer for r, q in zip(rows, RETAIN))
    with pytest.raises(IculDoesNotFit, match="positions"):
        icul_rows(RETAIN, context=context, tokenizer=tokenizer, max_positions=20)


def test_nonmembers_prefer_unseen_rows_then_fall_back_to_unstated_facts():
    unseen, how = nonmember_rows(RETAIN, trained_prompts={RETAIN[0].prompt}, forget=FORGET)
    assert unseen == RETAIN[1:] and "absent" in how
    swapped, how = nonmember_rows(RETAIN, trained_prompts={r.prompt for r in RETAIN}, forget=FORGET)
    assert len(swapped) == 2 and "never stated" in how
    for row, orig in zip(swapped, FORGET):
        assert row.prompt == orig.prompt and row.answer != orig.answer


def test_answer_logprobs_are_batch_independent(tiny_model):
    model, tokenizer = tiny_model
    rows = FORGET + RETAIN
    together = answer_logprobs(model, tokenizer, rows, batch_size=8)
    alone = np.concatenate([answer_logprobs(model, tokenizer, [r]) for r in rows])
    np.testing.assert_allclose(together, alone, atol=1e-4)
    assert (together < 0).all()


def test_answer_logprobs_with_a_soft_prompt_match_the_full_forward(tiny_model):
    """log p(answer + EOS | prompt) from answer positions only equals the sum read off full logits."""
    model, tokenizer = tiny_model
    hidden = model.get_input_embeddings().weight.shape[1]
    prompt = torch.randn(3, hidden, generator=torch.Generator().manual_seed(0))  # (P, H)
    got = answer_logprobs(model, tokenizer, FORGET + RETAIN, prompt=prompt, batch_size=8)
    for row, value in zip(FORGET + RETAIN, got):
        ids = tokenizer(row.prompt)["input_ids"]
        answer = tokenizer(" " + row.answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        tokens = torch.tensor([ids + answer])  # (1, T)
        embeds = torch.cat([prompt[None], model.get_input_embeddings()(tokens)], dim=1)  # (1, P+T, H)
        with torch.no_grad():
            logp = model(inputs_embeds=embeds).logits[0].log_softmax(-1)  # (P+T, V)
        first = prompt.shape[0] + len(ids) - 1  # this position predicts the first answer token
        expected = sum(logp[first + i, tok].item() for i, tok in enumerate(answer))
        assert value == pytest.approx(expected, abs=1e-4)
    assert not np.allclose(got, answer_logprobs(model, tokenizer, FORGET + RETAIN))  # the prompt matters
