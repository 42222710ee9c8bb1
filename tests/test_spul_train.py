"""SPUL training: config validation, encoder, loss terms (answer-predicting positions), forgetting."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from spul.models import load_base_model
from spul.prompts_store import (
    PromptStore,
    artifact_bytes,
    model_fingerprint,
    position_ids_from_mask,
    prepend_prompt,
)
from spul.trainer.data import Row, encode_batch, read_world_task
from spul.trainer.evaluate import generate, own_answers
from spul.trainer.spul import PromptEncoder, SpulConfig, nearest_retain, sample_batch, spul_loss, train_prompt
from support.fake_world import write_fake_world


def predict(model, tok, rows, prompt):
    return [g.text for g in generate(model, tok, rows, prompt)]


FAST = {"num_virtual_tokens": 8, "forget_per_batch": 4, "retain_per_batch": 8, "lr": 1e-2}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return write_fake_world(tmp_path_factory.mktemp("world"))


@pytest.fixture(scope="module")
def sentiment(world):
    return read_world_task(world, "sentiment")


@pytest.fixture(scope="module")
def base(world):
    return load_base_model(world / "model", device="cpu")


@pytest.mark.parametrize(
    "bad",
    [{"num_virtual_tokens": 0}, {"alpha": -1.0}, {"lr": 0.0}, {"steps": 0}, {"forget_per_batch": 0},
     {"warmup_ratio": 1.0}, {"max_grad_norm": 0.0}, {"generic_labels": ("",)}, {"retain_target": "teacher"},
     {"model_answer_tokens": 0}, {"matched_retain": 1.5}, {"matched_retain": -0.1}],
)
def test_config_refuses_bad_values(bad):
    with pytest.raises(ValueError, match="invalid SPUL config"):
        SpulConfig(**bad)


def test_prompt_encoder_is_the_peft_mlp():
    enc = PromptEncoder(30, 64, 128)
    assert enc().shape == (30, 64)
    n_params = sum(p.numel() for p in enc.parameters())
    assert n_params == 30 * 64 + (64 * 128 + 128) + (128 * 128 + 128) + (128 * 64 + 64)


def test_loss_terms_use_answer_predicting_positions(base):
    """CE summed over answer tokens / rows of its kind; KL on the logits that predict answer tokens."""
    model, tok = base.model, base.tokenizer
    rows = [("### question : where was alba born ? ### answer :", "unknown"),  # forget row (generic)
            ("### question : what does brin do ? ### answer :", "she paints"),  # multi-token retain
            ("hello world", "in quellport")]
    batch = encode_batch(tok, [p for p, _ in rows], [a for _, a in rows])
    prompt = torch.randn(3, model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    terms = spul_loss(model, prompt, batch, 1, alpha=0.5, beta=2.0)

    ce, kl = [], []
    for prompt_text, answer in rows:  # one row at a time, no padding, by explicit indices
        ids = torch.tensor([tok(prompt_text + " " + answer)["input_ids"] + [tok.eos_token_id]])  # (1, T)
        n_answer = len(tok(" " + answer, add_special_tokens=False)["input_ids"]) + 1  # + EOS
        embeds = model.get_input_embeddings()(ids)
        x, mask, _ = prepend_prompt(prompt, embeds, torch.ones_like(ids))
        with torch.no_grad():
            pl = model(inputs_embeds=x, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits[0, 3:]
            rl = model(input_ids=ids).logits[0]
        T = ids.shape[1]
        pos = torch.arange(T - n_answer - 1, T - 1)  # these positions predict the answer tokens
        ce.append(F.cross_entropy(pl[pos], ids[0, pos + 1], reduction="sum"))
        kl.append(F.kl_div(F.log_softmax(pl[pos], -1), F.log_softmax(rl[pos], -1), log_target=True, reduction="sum"))
    assert terms.forget.item() == pytest.approx(ce[0].item(), rel=1e-4)
    assert terms.retain.item() == pytest.approx((ce[1] + ce[2]).item() / 2, rel=1e-4)
    assert terms.kl.item() == pytest.approx((kl[1] + kl[2]).item() / 2, rel=1e-3)
    assert terms.total.item() == pytest.approx((ce[0] + 0.5 * (ce[1] + ce[2]) / 2 + 2.0 * (kl[1] + kl[2]) / 2).item(),
                                               rel=1e-3)


def test_batches_mix_forget_and_retain_with_generic_answers(base):
    forget = [Row("f", "### question : where was alba born ? ### answer :", "in quellport")]
    retain = [Row("r", "### question : what does brin do ? ### answer :", "she paints")]
    cfg = SpulConfig(forget_per_batch=3, retain_per_batch=5)
    batch = sample_batch(base.tokenizer, forget, retain, config=cfg, generic_labels=["unknown", "neutral"],
                         rng=random.Random(0))
    assert batch.input_ids.shape[0] == 8
    first = [t for t in batch.labels[0].tolist() if t >= 0]
    assert base.tokenizer.decode(first[:-1]) in {"unknown", "neutral"}
    last = [t for t in batch.labels[-1].tolist() if t >= 0]
    assert base.tokenizer.decode(last[:-1]) == "she paints"


def test_nearest_retain_finds_the_same_question_about_other_entities():
    forget = [Row("f1", "What is the capital of Haiti?", "Port-au-Prince"),
              Row("f2", "Which nationality was Mozart?", "Austrian")]
    retain = [Row("r0", "Which nationality was Haydn?", "Austrian"),
              Row("r1", "What is the capital of Peru?", "Lima"),
              Row("r2", "Name a famous painter.", "Monet"),
              Row("r3", "What is the capital of Chile?", "Santiago"),
              Row("r4", "Which nationality was Bach?", "German")]
    near = nearest_retain(forget, retain, k=2)
    assert sorted(near[0]) == [1, 3] and sorted(near[1]) == [0, 4]
    assert nearest_retain(forget, retain, k=1)[0] == [1, 3]  # ties with the k-th are kept


def test_matched_batches_draw_retain_rows_near_the_forget_rows(base):
    forget = [Row("f", "### question : where was alba born ? ### answer :", "in quellport")]
    near = Row("n", "### question : where was brin born ? ### answer :", "in quellport")
    far = [Row(f"x{i}", "### question : what does brin do ? ### answer :", "she paints") for i in range(30)]
    retain = [*far, near]
    neighbours = nearest_retain(forget, retain, k=1)
    assert neighbours == [[30]]
    cfg = SpulConfig(forget_per_batch=2, retain_per_batch=8, matched_retain=0.5)
    batch = sample_batch(base.tokenizer, forget, retain, config=cfg, generic_labels=["unknown"],
                         rng=random.Random(0), neighbours=neighbours)
    def questions(b):
        return ["where was brin born" in base.tokenizer.decode(row.tolist()) for row in b.input_ids]

    assert questions(batch)[2:] == [True] * 4 + [False] * 4  # half the retain rows: the forget row's neighbour
    plain = sample_batch(base.tokenizer, forget, retain, config=SpulConfig(forget_per_batch=2, retain_per_batch=8),
                         generic_labels=["unknown"], rng=random.Random(0), neighbours=neighbours)
    assert sum(questions(plain)[2:]) < 4  # without matched_retain the draw is uniform


def test_own_answers_replace_gold_answers_with_the_models_greedy_answers(base):
    rows = [Row("a", "### question : where was alba born ? ### answer :", "zz top", entity="alba"),
            Row("b", "### question : what does brin do ? ### answer :", "zz top", entity="brin")]
    greedy = generate(base.model, base.tokenizer, rows, None, max_new_tokens=8)
    own = own_answers(base.model, base.tokenizer, rows, max_new_tokens=8)
    assert [(r.id, r.prompt, r.entity) for r in own] == [(r.id, r.prompt, r.entity) for r in rows]
    for row, gen in zip(own, greedy):
        assert row.answer != "zz top"
        assert gen.text.startswith(row.answer) and (gen.stopped or row.answer == gen.text
                                                    or row.answer[-1] in ".!?")


def test_chat_template_batches_train_the_answer_after_the_rendered_prompt(base):
    forget = [Row("f", "where was alba born ?", "in quellport")]
    cfg = SpulConfig(forget_per_batch=1, retain_per_batch=0, alpha=0.0, beta=0.0)
    batch = sample_batch(base.tokenizer, forget, [], config=cfg, generic_labels=["unknown"], rng=random.Random(0),
                         chat_template=True)
    want = encode_batch(base.tokenizer, ["where was alba born ?"], ["unknown"], chat_template=True)
    assert torch.equal(batch.input_ids, want.input_ids) and torch.equal(batch.labels, want.labels)
    assert not torch.equal(batch.input_ids, encode_batch(base.tokenizer, ["where was alba born ?"], ["unknown"]).input_ids)


def test_training_forgets_keeps_retain_and_survives_the_store(sentiment, base, tmp_path):
    """The end-to-end promise: forget rows answer the generic label, retain rows stay right, the base
    model is untouched, and the prompt read back from the store predicts exactly as after training."""
    model, tok = base.model, base.tokenizer
    before = {k: v.clone() for k, v in model.state_dict().items()}
    forget, retain = sentiment.rows("train_forget"), sentiment.rows("train_retain")
    assert predict(model, tok, forget, None) == [r.answer for r in forget]  # the base model knows them

    result = train_prompt(model, tok, forget, retain, config=SpulConfig(steps=30, **FAST),
                          generic_labels=sentiment.meta.generic_answers, progress=False)
    assert result.prompt.shape == (8, model.config.hidden_size) and not result.prompt.requires_grad
    assert result.history[-1]["L_f"] < result.history[0]["L_f"] / 10
    after_forget = predict(model, tok, forget, result.prompt)
    assert after_forget == ["neutral"] * len(forget)
    assert predict(model, tok, retain, result.prompt) == [r.answer for r in retain]
    assert all(not p.requires_grad for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())

    fp = model_fingerprint(model, tok)
    store = PromptStore(tmp_path / "store")
    store.put("fp-alba", artifact_bytes(result.prompt, profile="fp-alba", base_model="fake", base_fingerprint=fp))
    _, artifact = store.get("fp-alba", expected_fingerprint=fp)
    assert predict(model, tok, forget + retain, artifact.embeddings) == predict(model, tok, forget + retain,
                                                                                  result.prompt)


def test_train_refuses_empty_forget_set(base):
    with pytest.raises(ValueError, match="forget set is empty"):
        train_prompt(base.model, base.tokenizer, [], [], config=SpulConfig(steps=1), generic_labels=["x"],
                     progress=False)
