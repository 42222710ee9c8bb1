"""benchmarks/soak.py's arithmetic and request mix (the soak itself runs for minutes, not here)."""

from __future__ import annotations

import random

import pytest

from spul.benchmarks.soak import SoakOptions, Tally, request_for, slope_mib_per_min, summarize

MIB = 2**20


def test_slope_is_mib_per_minute_and_zero_when_flat():
    rising = [(t * 30.0, 100 * MIB + int(t * MIB)) for t in range(10)]  # +1 MiB every 30 s
    assert slope_mib_per_min(rising) == pytest.approx(2.0)
    assert slope_mib_per_min([(t, 100 * MIB) for t in range(5)]) == 0.0
    assert slope_mib_per_min([(0.0, MIB)]) == 0.0


def test_summary_counts_failures_and_ignores_warmup_in_the_slope():
    tally = Tally()
    tally.record("generate", None, 0.1)
    tally.record("upload", "HTTP 500: boom", 0.2)
    samples = [(0.0, 50 * MIB), (10.0, 200 * MIB), (20.0, 200 * MIB), (30.0, 200 * MIB)]
    report = summarize(tally, samples, 40.0, SoakOptions(warmup_fraction=0.2))
    assert (report["requests"], report["failures"], report["failed_by_kind"]) == (2, 1, {"upload": 1})
    assert report["rss_mib"]["max"] == 200.0 and report["rss_slope_mib_per_min"] == 0.0
    assert report["first_errors"] == ["upload: HTTP 500: boom"]


def test_request_mix_covers_every_kind_and_names_only_known_profiles():
    rng = random.Random(0)
    drawn = [request_for(rng, ["p1", "p2"], 8) for _ in range(400)]
    assert {kind for kind, *_ in drawn} == {"generate", "generate_stream", "completions", "models", "metrics"}
    bodies = [body for *_, body in drawn if body is not None]
    assert {b.get("profile", b.get("model")) for b in bodies} == {"p1", "p2"}
