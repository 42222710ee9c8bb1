"""The one function that puts a soft prompt in front of a batch (trainer and service share it)."""

from __future__ import annotations

import torch

IGNORE_INDEX = -100


def prepend_prompt(
    prompts: torch.Tensor,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Prepend soft prompts to token embeddings.

    prompts:        (P, H) one prompt for every row, or (B, P, H) one per row
    inputs_embeds:  (B, T, H)
    attention_mask: (B, T) 1 for real tokens, 0 for padding (left or right)
    labels:         (B, T) or None

    Returns embeds (B, P+T, H), mask (B, P+T) and labels (B, P+T) with IGNORE_INDEX on the
    prompt positions. The prompt goes first in every row even when the row is left-padded;
    the pad positions are masked out, and `position_ids_from_mask` numbers the prompt 0..P-1.
    """
    batch, _, hidden = inputs_embeds.shape
    if prompts.dim() == 2:
        prompts = prompts.unsqueeze(0).expand(batch, -1, -1)  # (B, P, H)
    if prompts.dim() != 3 or prompts.shape[0] != batch or prompts.shape[2] != hidden:
        raise ValueError(
            f"prompts must be (P, {hidden}) or ({batch}, P, {hidden}); got {tuple(prompts.shape)}"
        )
    n_virtual = prompts.shape[1]
    prompts = prompts.to(dtype=inputs_embeds.dtype, device=inputs_embeds.device)
    embeds = torch.cat([prompts, inputs_embeds], dim=1)  # (B, P+T, H)
    ones = attention_mask.new_ones(batch, n_virtual)
    mask = torch.cat([ones, attention_mask], dim=1)  # (B, P+T)
    if labels is None:
        return embeds, mask, None
    ignore = labels.new_full((batch, n_virtual), IGNORE_INDEX)
    return embeds, mask, torch.cat([ignore, labels], dim=1)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) mask -> (B, T) positions counting only real tokens; pads get position 0.

    With a prompt prepended in front of left padding, the mask reads ``1..1 0..0 1..1`` and the
    positions read ``0..P-1 0..0 P..``: every row sees the same positions it would see alone.
    """
    positions = attention_mask.long().cumsum(dim=-1) - 1
    return positions.clamp(min=0) * attention_mask.long()
