"""Random prompt artifacts for a model: the one factory every test uses."""

from __future__ import annotations

import torch

from spul.prompts_store import artifact_bytes, model_fingerprint


def make_artifact(
    model, tokenizer, *, profile: str, num_virtual_tokens: int = 4, seed: int = 0, fingerprint: str | None = None
) -> bytes:
    """A valid artifact holding a random (P, H) prompt for `model`; `seed` makes versions differ."""
    generator = torch.Generator().manual_seed(seed)
    hidden = model.get_input_embeddings().weight.shape[1]
    embeddings = torch.randn(num_virtual_tokens, hidden, generator=generator)  # (P, H)
    return artifact_bytes(
        embeddings,
        profile=profile,
        base_model="tiny",
        base_fingerprint=fingerprint or model_fingerprint(model, tokenizer),
    )
