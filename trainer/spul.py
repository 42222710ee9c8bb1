"""SPUL soft-prompt training (arXiv 2406.12038): L = L_f + alpha * L_r + beta * L_kl, base model frozen.

The prompt is P-tuning-parameterised (trainer.prompt_encoder: embedding table (P, H) -> MLP
H -> E -> E -> H, PEFT's P-tuning MLP); only the encoder's output (P, H) leaves this module. The
KL compares the logits that *predict* the answer tokens (position t predicts token t + 1), and
answers may span several tokens (trainer.losses).
"""

from __future__ import annotations

import logging
import math
import random
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from spul.models import autocast
from spul.trainer.data import Batch, Row, encode_batch
from spul.trainer.evaluate import own_answers
from spul.trainer.losses import answer_logits, kl_sum, row_ce, rows_of
from spul.trainer.progress import Progress
from spul.trainer.prompt_encoder import PromptEncoder
from spul.trainer.spul_config import SpulConfig

log = logging.getLogger(__name__)


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
    its kind; the KL(original || prompted) is summed over the positions that predict retain
    answer tokens and divided by the retain rows.
    """
    answer = answer_logits(model, batch, prompt)  # (N, V) at the answer positions of every row
    ce = row_ce(answer)  # (B,)
    n_retain = ce.shape[0] - n_forget
    forget = ce[:n_forget].sum() / n_forget
    zero = forget.new_zeros(())
    retain = ce[n_forget:].sum() / n_retain if n_retain else zero
    kl = zero
    if n_retain and beta > 0:
        with torch.no_grad():  # the original model: the same retain rows, no prompt, same positions
            reference = answer_logits(model, rows_of(batch, n_forget))  # (N_r, V)
        kl = kl_sum(reference, answer.rows(n_forget)) / n_retain
    return LossTerms(forget + alpha * retain + beta * kl, forget, retain, kl)


# ---------------------------------------------------------------- training loop
NEIGHBOURS = 8  # nearest retain prompts per forget row for matched sampling (more when tied)
MAX_NEIGHBOURS = 256  # ties kept up to this many
NEIGHBOUR_POOL = 20_000  # retain rows searched for neighbours (a seeded sample beyond that)


def _words(text: str) -> frozenset[str]:
    return frozenset(re.findall(r"\w+", text.lower()))


def nearest_retain(forget: Sequence[Row], retain: Sequence[Row], *, k: int = NEIGHBOURS,
                   seed: int = 0) -> list[list[int]]:
    """For each forget row, the indices of the retain rows whose prompts share most words with it.

    Similarity is Jaccard overlap of lower-cased word sets, so "What is the capital of Haiti?" is
    nearest to "What is the capital of Peru?": hard negatives that differ mostly in the entity.
    The `k` nearest are kept, plus every row tied with the k-th (up to `MAX_NEIGHBOURS`), so one
    question template's rows are all neighbours of each other.
    """
    pool = list(range(len(retain)))
    if len(pool) > NEIGHBOUR_POOL:
        pool = sorted(random.Random(seed).sample(pool, NEIGHBOUR_POOL))
    words = {i: _words(retain[i].prompt) for i in pool}
    out = []
    for row in forget:
        mine = _words(row.prompt)
        scored = sorted(((len(mine & words[i]) / max(1, len(mine | words[i])), i) for i in pool),
                        key=lambda t: (-t[0], t[1]))
        cut = scored[min(k, len(scored)) - 1][0] if scored else 0.0
        out.append([i for sim, i in scored if sim >= cut][:MAX_NEIGHBOURS])
    return out


def sample_batch(tokenizer: Any, forget: Sequence[Row], retain: Sequence[Row], *, config: SpulConfig,
                 generic_labels: Sequence[str], rng: random.Random, chat_template: bool = False,
                 neighbours: Sequence[Sequence[int]] | None = None) -> Batch:
    """Draw forget and retain rows with replacement; forget rows get a random generic answer.

    With `neighbours` (from `nearest_retain`) and `config.matched_retain` > 0, that share of the
    retain rows is drawn among the drawn forget rows' neighbours, the rest uniformly.
    """
    f_idx = rng.choices(range(len(forget)), k=config.forget_per_batch)
    r_rows: list[Row] = []
    if retain and config.retain_per_batch:
        matched = round(config.matched_retain * config.retain_per_batch) if neighbours else 0
        r_rows = [retain[rng.choice(neighbours[f_idx[j % len(f_idx)]])] for j in range(matched)]
        r_rows += rng.choices(retain, k=config.retain_per_batch - matched)
    f_rows = [forget[i] for i in f_idx]
    prompts = [r.prompt for r in f_rows] + [r.prompt for r in r_rows]
    answers = [rng.choice(generic_labels) for _ in f_rows] + [r.answer for r in r_rows]
    return encode_batch(tokenizer, prompts, answers, chat_template=chat_template)


def train_prompt(
    model: Any,
    tokenizer: Any,
    forget: Sequence[Row],
    retain: Sequence[Row],
    *,
    config: SpulConfig,
    generic_labels: Sequence[str],
    chat_template: bool = False,
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
    if config.retain_target == "model" and retain:
        answering = Progress(len(retain), "own answers", unit="row", enabled=progress)
        retain = own_answers(model, tokenizer, retain, max_new_tokens=config.model_answer_tokens,
                             chat_template=chat_template, amp_dtype=amp_dtype, progress=answering)
        answering.close()
    neighbours = nearest_retain(forget, retain, seed=config.seed) if config.matched_retain and retain else None
    rng = random.Random(config.seed)
    history: list[dict[str, float]] = []
    started = time.perf_counter()
    bar = Progress(config.steps, "spul", enabled=progress)
    for _ in range(config.steps):
        batch = sample_batch(tokenizer, forget, retain, config=config, generic_labels=labels, rng=rng,
                             chat_template=chat_template, neighbours=neighbours).to(device)
        with autocast(device, amp_dtype):
            terms = spul_loss(model, encoder(), batch, config.forget_per_batch, alpha=config.alpha, beta=config.beta)
        _step(terms.total, encoder, optimizer, scheduler, scaler, config.max_grad_norm)
        history.append({"L_f": terms.forget.item(), "L_r": terms.retain.item(), "L_kl": terms.kl.item()})
        bar.update(**history[-1])
    bar.close()
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
