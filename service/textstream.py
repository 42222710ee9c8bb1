"""Incremental detokenisation with stop strings: what text may be sent so far, and when to stop.

Text that could still turn out to be the start of a stop string is held back, so a streamed
answer never shows a stop string (or half of one) that the final text would not contain.
"""

from __future__ import annotations

from typing import Any


class TextTracker:
    def __init__(self, tokenizer: Any, stop: tuple[str, ...] = ()) -> None:
        self.tokenizer = tokenizer
        self.stop = tuple(s for s in stop if s)
        self.token_ids: list[int] = []
        self.text = ""  # the full text decoded so far (stop string cut off once found)
        self.sent = 0  # characters of `text` already handed out

    def add(self, token_id: int) -> tuple[str, bool]:
        """Append one token. Returns (text that is safe to send now, whether a stop string ended it)."""
        self.token_ids.append(token_id)
        # decode the whole sequence: tokenizers may merge pieces across token boundaries
        self.text = self.tokenizer.decode(self.token_ids, skip_special_tokens=True)
        cut = self._first_stop()
        if cut is not None:
            self.text = self.text[:cut]
            return self.flush(), True
        safe_end = len(self.text) - self._held_back()
        delta = self.text[self.sent : safe_end] if safe_end > self.sent else ""
        self.sent = max(self.sent, safe_end)
        return delta, False

    def flush(self) -> str:
        """Everything not yet sent (at the end of generation)."""
        delta = self.text[self.sent :]
        self.sent = len(self.text)
        return delta

    def _first_stop(self) -> int | None:
        hits = [i for s in self.stop if (i := self.text.find(s, max(0, self.sent - len(s)))) >= 0]
        return min(hits) if hits else None

    def _held_back(self) -> int:
        """Length of the longest suffix of the text that is a proper prefix of some stop string."""
        best = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(self.text)), best, -1):
                if self.text.endswith(s[:n]):
                    best = n
                    break
        return best
