"""Progress of long loops: plain log lines with an ETA when stderr is not a terminal."""

from __future__ import annotations

import io
import logging

from spul.trainer.progress import Progress, duration


def test_not_a_terminal_logs_plain_lines_with_eta(caplog):
    caplog.set_level(logging.INFO, logger="spul.progress")
    stream = io.StringIO()  # not a TTY
    with Progress(4, "spul", stream=stream, interval=3600) as bar:
        for _ in range(4):
            bar.update(L_f=0.5, L_r=0.25)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2  # the first update, then the end (the interval suppresses the rest)
    assert lines[0].startswith("spul: 1/4 steps (25%), ") and ", ETA " in lines[0]
    assert lines[0].endswith("; L_f 0.500, L_r 0.250") and "{" not in lines[0]
    assert lines[1].startswith("spul: 4/4 steps (100%)") and "ETA" not in lines[1]
    assert stream.getvalue() == ""  # no bar characters written


def test_disabled_progress_is_silent(caplog):
    caplog.set_level(logging.INFO, logger="spul.progress")
    bar = Progress(3, "eval", unit="row", enabled=False, stream=io.StringIO())
    bar.update(3)
    assert caplog.records == []


def test_durations_read_naturally():
    assert [duration(s) for s in (3.4, 96, 3725)] == ["3 s", "1 min 36 s", "1 h 02 min"]
