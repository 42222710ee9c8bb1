"""SPUL soft-prompt training (arXiv 2406.12038): L = L_f + alpha * L_r + beta * L_kl, base model frozen.

The prompt is P-tuning-parameterised (embedding table (P, H) -> MLP H -> E -> E -> H, as PEFT's
`PromptEncoderConfig` MLP); only the encoder's output (P, H) leaves this module. Two fixes over
the paper's public code: the KL uses the logits that *predict* the answer tokens (position t
predicts token t + 1), and answers may span several tokens.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from spul.models import autocast
from spul.prompts_store import position_ids_from_mask, prepend_prompt
from spul.prompts_store.prepend import IGNORE_INDEX
from spul.trainer.data import Batch, Row, encode_batch
from spul.trainer.spul_config import SpulConfig

log = logging.getLogger(__name__)


class PromptEncoder(nn.Module):
    """P-tuning reparameterisation: (P, H) table through an H -> E -> E -> H MLP."""

    def __init__(self, num_virtual_tokens: int, hidden_size: int, encoder_hidden_size: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(num_virtual_tokens, hidden_size)
        self.mlp = nn.Sequential(
            nn.Linear(hidden_size, encoder_hidden_size),
            nn.ReLU(),
            nn.Linear(encoder_hidden_size, encoder_hidden_size),
            nn.ReLU(),
            nn.Linear(encoder_hidden_size, hidden_size),
        )

    def forward(self) -> torch.Tensor:
        return self.mlp(self.embedding.weight)  # (P, H)


@dataclass(frozen=True)
class LossTerms:
    total: torch.Tensor
    forget: torch.Tensor
    retain: torch.Tensor
    kl: torch.Tensor


@dataclass
class TrainResult:
    prompt: torch.Tensor  # (P, H) float32 on CPU: the computed prompt, no encoder
    config: SpulConfig
    generic_labels: list[str]
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)  # per-step loss terms


# ---------------------------------------------------------------- loss
def spul_loss(model: Any, prompt: torch.Tensor, batch: Batch, n_forget: int, *, alpha: float,
              beta: float) -> LossTerms:
    """Loss of one mixed batch: rows [:n_forget] are forget rows (generic answers), the rest retain.

    Each cross-entropy is summed over answer tokens (+ EOS) and divided by the number of rows of
    its kind; the KL is summed over retain answer positions and divided by the retain rows.
    """
    if batch.labels is None:
        raise ValueError("spul_loss needs a batch with labels (encode_batch with answers)")
    embeds = model.get_input_embeddings()(batch.input_ids)  # (B, T, H)
    x, mask, labels = prepend_prompt(prompt, embeds, batch.attention_mask, batch.labels)  # (B, P+T, ...)
    logits = model(inputs_embeds=x, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits
    pred = logits[:, :-1].float()  # (B, P+T-1, V): position t predicts token t + 1
    target = labels[:, 1:]  # (B, P+T-1)
    token_ce = F.cross_entropy(pred.transpose(1, 2), target, ignore_index=IGNORE_INDEX, reduction="none")
    row_ce = token_ce.sum(dim=1)  # (B,)
    n_retain = row_ce.shape[0] - n_forget
    forget = row_ce[:n_forget].sum() / n_forget
    zero = forget.new_zeros(())
    retain = row_ce[n_forget:].sum() / n_retain if n_retain else zero
    kl = zero
    if n_retain and beta > 0:
        n_virtual = prompt.shape[-2]
        kl = _retain_kl(model, embeds[n_forget:], batch, pred[n_forget:, n_virtual:], n_forget) / n_retain
    return LossTerms(forget + alpha * retain + beta * kl, forget, retain, kl)


def _retain_kl(model: Any, embeds: torch.Tensor, batch: Batch, prompted: torch.Tensor, n_forget: int) -> torch.Tensor:
    """Sum over retain answer positions of KL(original || prompted).

    embeds: (R, T, H) retain token embeddings; prompted: (R, T-1, V) the prompted model's logits
    at the token positions that predict tokens 1..T-1, aligned with the reference logits below.
    """
    mask = batch.attention_mask[n_forget:]  # (R, T)
    with torch.no_grad():  # the original model: same inputs, no prompt, same positions
        ref = model(inputs_embeds=embeds.detach(), attention_mask=mask, position_ids=position_ids_from_mask(mask))
        ref_logp = F.log_softmax(ref.logits[:, :-1].float(), dim=-1)  # (R, T-1, V)
    logp = F.log_softmax(prompted, dim=-1)  # (R, T-1, V)
    answer = (batch.labels[n_forget:, 1:] != IGNORE_INDEX).float()  # (R, T-1): predicts an answer token
    kl_pos = (ref_logp.exp() * (ref_logp - logp)).sum(dim=-1)  # (R, T-1)
    return (kl_pos * answer).sum()


# ---------------------------------------------------------------- training loop
def sample_batch(tokenizer: Any, forget: Sequence[Row], retain: Sequence[Row], *, config: SpulConfig,
                 generic_labels: Sequence[str], rng: random.Random) -> Batch:
    """Draw forget and retain rows with replacement; forget rows get a random generic answer."""
    f_rows = rng.choices(forget, k=config.forget_per_batch)
    r_rows = rng.choices(retain, k=config.retain_per_batch) if retain and config.retain_per_batch else []
    prompts = [r.prompt for r in f_rows] + [r.prompt for r in r_rows]
    answers = [rng.choice(generic_labels) for _ in f_rows] + [r.answer for r in r_rows]
    return encode_batch(tokenizer, prompts, answers)


def train_prompt(
    model: Any,
    tokenizer: Any,
    forget: Sequence[Row],
    retain: Sequence[Row],
    *,
    config: SpulConfig,
    generic_labels: Sequence[str],
    amp_dtype: torch.dtype | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train a soft prompt for the frozen `model`; returns the computed (P, H) prompt."""
    if not forget:
        raise ValueError("the forget set is empty: nothing to unlearn")
    labels = list(config.generic_labels or generic_labels)
    if not labels:
        raise ValueError("no generic labels: set SpulConfig.generic_labels or the world's generic_labels")
    device = next(model.parameters()).device
    hidden = int(model.get_input_embeddings().weight.shape[1])
    encoder = _make_encoder(config, hidden, device)
    optimizer, scheduler = _make_optimizer(encoder, config)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    rng = random.Random(config.seed)
    history: list[dict[str, float]] = []
    started = time.perf_counter()
    bar = tqdm(range(config.steps), desc="spul", disable=not progress, dynamic_ncols=True)
    for _ in bar:
        batch = sample_batch(tokenizer, forget, retain, config=config, generic_labels=labels, rng=rng).to(device)
        with autocast(device, amp_dtype):
            terms = spul_loss(model, encoder(), batch, config.forget_per_batch, alpha=config.alpha, beta=config.beta)
        _step(terms.total, encoder, optimizer, scheduler, scaler, config.max_grad_norm)
        history.append({"L_f": terms.forget.item(), "L_r": terms.retain.item(), "L_kl": terms.kl.item()})
        bar.set_postfix({k: f"{v:.3f}" for k, v in history[-1].items()})
    with torch.no_grad():
        prompt = encoder().float().cpu()  # (P, H)
    return TrainResult(prompt, config, labels, time.perf_counter() - started, history)


def _make_encoder(config: SpulConfig, hidden: int, device: torch.device) -> PromptEncoder:
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
        torch.manual_seed(config.seed)
        encoder = PromptEncoder(config.num_virtual_tokens, hidden, config.encoder_hidden_size)
    return encoder.to(device).train()


def _make_optimizer(encoder: nn.Module, config: SpulConfig) -> tuple[torch.optim.Optimizer, Any]:
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    warmup = int(config.warmup_ratio * config.steps)

    def lr_factor(step: int) -> float:  # linear warm-up, then cosine decay to 0
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, config.steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)


def _step(loss: torch.Tensor, encoder: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
          scaler: torch.amp.GradScaler, max_grad_norm: float) -> None:
    if not torch.isfinite(loss):
        raise FloatingPointError("SPUL loss is not finite; lower --lr or check the data")
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(encoder.parameters(), max_grad_norm)
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
