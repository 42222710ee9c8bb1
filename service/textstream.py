"""Incremental detokenisation with stop strings: what text may be sent so far, and when to stop.

Each token decodes only a short window of ids (the last few already-sent tokens give the
tokenizer its context for spaces and merges), so a token costs the same at position 10 and at
position 10,000. While the window's text ends in U+FFFD, the last tokens are an incomplete UTF-8
sequence (a byte-level BPE splits one character over several tokens): nothing is sent until
the character is complete. Text that could still turn out to be the start of a stop string
is held back, so a streamed answer never shows a stop string (or half of one) that the final
text would not contain.
"""

from __future__ import annotations

from typing import Any

REPLACEMENT = "\ufffd"
CONTEXT_TOKENS = 5  # already-decoded tokens re-decoded in front of new ones (merges, leading spaces)


class TextTracker:
    def __init__(self, tokenizer: Any, stop: tuple[str, ...] = ()) -> None:
        self.tokenizer = tokenizer
        self.stop = tuple(s for s in stop if s)
        self.token_ids: list[int] = []
        self.text = ""  # the text decoded so far (stop string cut off once found)
        self.sent = 0  # characters of `text` already handed out
        self._prefix = 0  # window start: tokens before it are decoded for good
        self._read = 0  # tokens before it are in `text`
        self._stopped = False

    def add(self, token_id: int) -> tuple[str, bool]:
        """Append one token. Returns (text that is safe to send now, whether a stop string ended it)."""
        if self._stopped:
            return "", True
        self.token_ids.append(token_id)
        if not self._decode_new(final=False):
            return "", False
        cut = self._first_stop()
        if cut is not None:
            self.text = self.text[:cut]
            self._stopped = True
            return self.flush(), True
        safe_end = len(self.text) - self._held_back()
        delta = self.text[self.sent : safe_end] if safe_end > self.sent else ""
        self.sent = max(self.sent, safe_end)
        return delta, False

    def flush(self) -> str:
        """Everything not yet sent (at the end of generation), incomplete characters included."""
        if not self._stopped:
            self._decode_new(final=True)
            cut = self._first_stop()
            if cut is not None:
                self.text = self.text[:cut]
                self._stopped = True
        delta = self.text[self.sent :]
        self.sent = len(self.text)
        return delta

    def _decode_new(self, *, final: bool) -> bool:
        """Move the tokens after `_read` into `text`; False while they end in an incomplete character."""
        if self._read == len(self.token_ids):
            return False
        window = self.token_ids[self._prefix :]
        before = self._decode(self.token_ids[self._prefix : self._read])
        now = self._decode(window)
        if not final and now.endswith(REPLACEMENT):
            return False
        # the window's decode must extend the context's; if not (a tokenizer that rewrites), fall back
        new = now[len(before) :] if now.startswith(before) else self._decode(self.token_ids)[len(self.text) :]
        self.text += new
        self._read = len(self.token_ids)
        self._prefix = max(0, self._read - CONTEXT_TOKENS)
        return True

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True) if ids else ""

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
