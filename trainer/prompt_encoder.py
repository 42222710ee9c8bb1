"""The P-tuning prompt encoder, with the modules and parameter names of PEFT's ``PromptEncoder``.

An embedding table (P, H) goes through an MLP H -> E -> E -> H (or a bidirectional LSTM and a
2-layer MLP). SPUL trains the MLP form; a PEFT P-tuning checkpoint holding encoder weights loads
with ``load_state_dict(strict=True)`` and our state dict loads into PEFT's encoder, no renaming.
Only the output (P, H) is ever stored or served.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

EncoderType = Literal["MLP", "LSTM"]
ENCODER_TYPES: tuple[EncoderType, ...] = ("MLP", "LSTM")


class PromptEncoder(nn.Module):
    """``embedding`` (P, H) -> [``lstm_head``] -> ``mlp_head`` -> (P, H), as peft.tuners.p_tuning."""

    def __init__(
        self,
        num_virtual_tokens: int,
        hidden_size: int,
        encoder_hidden_size: int,
        *,
        encoder_type: EncoderType = "MLP",
        lstm_layers: int = 2,
    ) -> None:
        super().__init__()
        if encoder_type not in ENCODER_TYPES:
            raise ValueError(f"encoder type {encoder_type!r} unknown; use one of {list(ENCODER_TYPES)}")
        dim, inner = hidden_size, encoder_hidden_size
        self.encoder_type = encoder_type
        self.embedding = nn.Embedding(num_virtual_tokens, dim)
        if encoder_type == "LSTM":
            # dropout only acts in training; a loaded LSTM encoder is run once in eval mode
            self.lstm_head = nn.LSTM(dim, inner, num_layers=lstm_layers, bidirectional=True, batch_first=True)
            self.mlp_head = nn.Sequential(nn.Linear(2 * inner, 2 * inner), nn.ReLU(), nn.Linear(2 * inner, dim))
        else:
            self.mlp_head = nn.Sequential(
                nn.Linear(dim, inner), nn.ReLU(), nn.Linear(inner, inner), nn.ReLU(), nn.Linear(inner, dim)
            )

    def forward(self) -> torch.Tensor:
        embeds = self.embedding.weight.unsqueeze(0)  # (1, P, H): the virtual token ids are 0..P-1
        if self.encoder_type == "LSTM":
            embeds = self.lstm_head(embeds)[0]  # (1, P, 2E)
        return self.mlp_head(embeds)[0]  # (P, H)
