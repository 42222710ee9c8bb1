"""Next-token choice: greedy, temperature, nucleus (top_p), each request with its own seeded generator."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0; got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1]; got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def make_generator(params: SamplingParams) -> torch.Generator | None:
    """A private RNG per request, so a seeded request samples the same tokens in any batch."""
    if params.greedy:
        return None
    generator = torch.Generator()
    if params.seed is None:
        generator.seed()
    else:
        generator.manual_seed(params.seed)
    return generator


def top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """(V,) probabilities -> the smallest set whose mass reaches top_p, renormalised."""
    if top_p >= 1.0:
        return probs
    sorted_probs, order = probs.sort(descending=True)
    # keep a token if the mass *before* it is below top_p (the first token is always kept)
    keep_sorted = sorted_probs.cumsum(0) - sorted_probs < top_p
    keep_sorted[0] = True  # also when top_p is below float32's smallest number and compares as 0
    keep = torch.zeros_like(keep_sorted).scatter(0, order, keep_sorted)
    filtered = probs * keep
    return filtered / filtered.sum()


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """(V,) float logits -> one token id."""
    if params.greedy or generator is None:
        return int(logits.argmax())
    probs = torch.softmax(logits.float().cpu() / params.temperature, dim=-1)  # (V,)
    probs = top_p_filter(probs, params.top_p)
    if not bool(torch.isfinite(probs).all()):  # logits / tiny temperature overflowed: its limit is greedy
        return int(logits.argmax())
    return int(torch.multinomial(probs, 1, generator=generator))
