"""Routing of profiles over several vLLM servers, and vLLM's `prompt_embeds` wire format."""

from __future__ import annotations

import base64
import collections
import io

import pytest
import torch

from spul.service.vllm_gateway import Backend, BackendRing, encode_prompt_embeds

URLS = [f"http://10.0.0.{i}:8000" for i in range(1, 5)]
PROFILES = [f"profile-{i}" for i in range(2000)]


def owners(ring: BackendRing) -> dict[str, str]:
    return {p: ring.order(p)[0].url for p in PROFILES}


def test_every_backend_appears_once_per_order():
    ring = BackendRing([Backend(u) for u in URLS])
    for profile in PROFILES[:50]:
        assert sorted(b.url for b in ring.order(profile)) == sorted(URLS)


def test_profiles_spread_over_backends():
    counts = collections.Counter(owners(BackendRing([Backend(u) for u in URLS])).values())
    assert set(counts) == set(URLS)
    assert min(counts.values()) > len(PROFILES) / len(URLS) / 2  # no backend starved


def test_removing_a_backend_moves_only_its_profiles():
    before = owners(BackendRing([Backend(u) for u in URLS]))
    after = owners(BackendRing([Backend(u) for u in URLS[:-1]]))
    moved = [p for p in PROFILES if before[p] != after[p]]
    assert moved and all(before[p] == URLS[-1] for p in moved)


def test_unhealthy_backends_go_last_without_reshuffling_the_rest():
    backends = [Backend(u) for u in URLS]
    ring = BackendRing(backends)
    first = {p: ring.order(p) for p in PROFILES[:200]}
    backends[0].healthy = False
    for profile, order in first.items():
        now = ring.order(profile)
        assert now[-1].url == URLS[0]
        assert [b.url for b in now[:-1]] == [b.url for b in order if b.url != URLS[0]]


def test_no_backend_is_a_clear_error():
    with pytest.raises(ValueError, match="vllm-url"):
        BackendRing([])


def test_prompt_embeds_round_trip_as_vllm_reads_them():
    embeds = torch.randn(7, 16)  # (P + T, H)
    raw = base64.b64decode(encode_prompt_embeds(embeds))
    loaded = torch.load(io.BytesIO(raw), weights_only=True)  # how vLLM decodes the field
    assert torch.equal(loaded, embeds)
