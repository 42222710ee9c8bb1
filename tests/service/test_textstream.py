"""Incremental detokenisation: multi-byte characters arrive whole, and a token costs a short decode."""

from __future__ import annotations

import pytest

from spul.service.textstream import TextTracker
from support.tinyarchs import byte_level_tokenizer

TEXT = "Привет 世界 🙂 naïve"


class CountingTokenizer:
    """Wraps a tokenizer and records how many ids each decode call was given."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.lengths: list[int] = []

    def decode(self, ids, skip_special_tokens=True):
        self.lengths.append(len(ids))
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)


@pytest.fixture(scope="module")
def tokenizer():
    return byte_level_tokenizer()


def test_byte_level_characters_are_never_sent_broken(tokenizer):
    ids = tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    assert "\ufffd" in "".join(tokenizer.decode([i]) for i in ids)  # characters do span several tokens
    tracker = TextTracker(tokenizer)
    deltas = [tracker.add(i)[0] for i in ids]
    deltas.append(tracker.flush())
    assert not any("\ufffd" in d for d in deltas)
    assert "".join(deltas) == TEXT


def test_stop_string_after_multibyte_text(tokenizer):
    ids = tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    tracker = TextTracker(tokenizer, stop=("世界",))
    sent, stopped = [], False
    for i in ids:
        delta, stopped = tracker.add(i)
        sent.append(delta)
        if stopped:
            break
    assert stopped and "".join(sent) == "Привет "


def test_a_token_costs_a_short_decode_however_long_the_text(tokenizer):
    ids = tokenizer(TEXT * 30, add_special_tokens=False)["input_ids"]
    counting = CountingTokenizer(tokenizer)
    tracker = TextTracker(counting)
    text = "".join(tracker.add(i)[0] for i in ids) + tracker.flush()
    assert text == TEXT * 30
    assert len(ids) > 300 and max(counting.lengths) <= 16  # never the whole text
