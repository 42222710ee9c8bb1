"""Answer-token losses shared by SPUL training, the fine-tuning baselines and the leak probes.

Only the positions that predict an answer token (answer + EOS) go through the output layer.
For a 135M model with a 49k vocabulary the full (B, T, V) logits would cost far more memory and
time than the transformer itself, while an answer is a few tokens per row.

- ``answer_logits``: the (N, V) logits of the N answer tokens of a batch, with or without a
  soft prompt in front, and the tokens they predict.
- ``row_ce``: cross-entropy summed over each row's answer tokens, (B,).
- ``kl_sum``: KL(reference || model) summed over answer positions.

Loss values equal the same losses computed from full logits bit for bit (see ``row_ce``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from spul.prompts_store import position_ids_from_mask, prepend_prompt
from spul.prompts_store.prepend import IGNORE_INDEX
from spul.trainer.data import Batch


@dataclass(frozen=True)
class AnswerLogits:
    """Logits at the answer positions of a batch, in row-major order (row, then position)."""

    logits: torch.Tensor  # (N, V) float32: position t's logits, which predict answer token t + 1
    target: torch.Tensor  # (N,) the answer tokens they predict
    where: torch.Tensor  # (B, L-1) bool: True where position t predicts an answer token

    def rows(self, start: int, stop: int | None = None) -> AnswerLogits:
        """The answer tokens of batch rows [start:stop] (their logits stay connected to the graph)."""
        tokens_per_row = self.where.sum(dim=1)  # (B,)
        offsets = torch.cat([tokens_per_row.new_zeros(1), tokens_per_row.cumsum(0)])  # (B+1,)
        stop = self.where.shape[0] if stop is None else stop
        lo, hi = int(offsets[start]), int(offsets[stop])
        return AnswerLogits(self.logits[lo:hi], self.target[lo:hi], self.where[start:stop])


def answer_logits(model: Any, batch: Batch, prompt: torch.Tensor | None = None) -> AnswerLogits:
    """Run ``model`` on ``batch`` (a (P, H) ``prompt`` in front if given); logits at answer positions.

    Positions come from the attention mask, exactly as in training and serving.
    """
    if batch.labels is None:
        raise ValueError("answer_logits needs rows encoded with answers (encode_batch(..., answers))")
    embeds = model.get_input_embeddings()(batch.input_ids)  # (B, T, H)
    mask, labels = batch.attention_mask, batch.labels
    if prompt is not None:
        embeds, mask, labels = prepend_prompt(prompt, embeds, mask, labels)  # (B, L, ...), L = P+T
    hidden = model.base_model(
        inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids_from_mask(mask), use_cache=False
    ).last_hidden_state  # (B, L, H)
    where = labels[:, 1:] != IGNORE_INDEX  # (B, L-1): position t predicts token t + 1
    logits = output_logits(model, hidden[:, :-1][where])  # (N, V)
    return AnswerLogits(logits.float(), labels[:, 1:][where], where)


def output_logits(model: Any, hidden: torch.Tensor) -> torch.Tensor:
    """(..., H) final hidden states -> (..., V) logits: the model's output layer (and soft cap, if any)."""
    logits = model.get_output_embeddings()(hidden)
    cap = getattr(model.config.get_text_config(), "final_logit_softcapping", None)  # Gemma 2: 30
    return logits if not cap else torch.tanh(logits / cap) * cap


def row_ce(answer: AnswerLogits) -> torch.Tensor:
    """Cross-entropy summed over each row's answer tokens: (B,).

    The logits go in as (1, V, N) and the sums run over (B, L-1), the layouts of a cross-entropy
    over full (B, V, L-1) logits, so the value equals that computation bit for bit. (Gradients
    pass through a smaller matrix product than with full logits and may differ in the last bits.)
    """
    token_ce = F.cross_entropy(answer.logits.T[None], answer.target[None], reduction="none")[0]  # (N,)
    return _per_position(token_ce, answer.where).sum(dim=1)  # (B,)


def kl_sum(reference: AnswerLogits, model: AnswerLogits) -> torch.Tensor:
    """Sum over answer positions of KL(reference || model); both hold the same rows' answer positions."""
    ref_logp = F.log_softmax(reference.logits, dim=-1)  # (N, V)
    logp = F.log_softmax(model.logits, dim=-1)  # (N, V)
    kl = (ref_logp.exp() * (ref_logp - logp)).sum(dim=-1)  # (N,)
    return _per_position(kl, reference.where).sum()


def _per_position(values: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """(N,) values at the answer positions -> (B, L-1), zero elsewhere."""
    return values.new_zeros(where.shape).masked_scatter(where, values)


def rows_of(batch: Batch, start: int, stop: int | None = None) -> Batch:
    """Batch rows [start:stop]; their padding and positions are unchanged."""
    labels = None if batch.labels is None else batch.labels[start:stop]
    return Batch(batch.input_ids[start:stop], batch.attention_mask[start:stop], labels)
