"""Fine-tuning unlearning baselines of the SPUL paper, on a *copy* of the base model's weights.

- ``ga``:    gradient ascent on the forget answers (minimise -CE).
- ``rl``:    random label: CE towards a generic label ("neutral"/"unknown") on forget rows.
- ``ga_kl``: GA + KL(original || model) on retain answer positions (original = frozen copy).
- ``ga_gd``: GA + CE on the true retain answers (gradient descent on retain data).

Every CE is summed over answer tokens (+ EOS) and divided by the rows of its kind, as SPUL's
losses are, so the weights compare. All parameters train (full fine-tuning, as the paper).

How the learning rate is chosen (``search_lr``): each candidate runs the same budget from the
same start; we score it on *train* splits only (all of train_forget, a fixed sample of
train_retain) by greedy exact match, keep the lr with the highest retain - forget accuracy, and
break ties towards the smaller lr (the gentler edit). Test splits are never looked at.
"""

from __future__ import annotations

import copy
import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch

from spul.trainer.data import Batch, Row, encode_batch
from spul.trainer.losses import answer_logits, kl_sum, row_ce
from spul.trainer.progress import Progress

log = logging.getLogger(__name__)

Method = Literal["ga", "rl", "ga_kl", "ga_gd"]
METHODS: tuple[Method, ...] = ("ga", "rl", "ga_kl", "ga_gd")


@dataclass(frozen=True)
class BaselineConfig:
    """One fine-tuning unlearning run. ``epochs`` counts passes over the forget rows."""

    method: Method
    lr: float = 1e-4
    epochs: float = 1.0
    forget_per_batch: int = 8
    retain_per_batch: int = 16  # ga_kl / ga_gd only
    retain_weight: float = 1.0  # weight of the KL (ga_kl) or retain CE (ga_gd) term
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        checks = [
            (self.method in METHODS, f"method must be one of {list(METHODS)}, got {self.method!r}"),
            (0 < self.lr < 1, "lr must be in (0, 1)"),
            (self.epochs > 0, "epochs must be > 0"),
            (self.forget_per_batch >= 1, "forget_per_batch must be >= 1"),
            (self.retain_per_batch >= 1, "retain_per_batch must be >= 1"),
            (self.retain_weight >= 0, "retain_weight must be >= 0"),
            (self.max_grad_norm > 0, "max_grad_norm must be > 0"),
        ]
        errors = [msg for ok, msg in checks if not ok]
        if errors:
            raise ValueError("invalid baseline config: " + "; ".join(errors))

    @property
    def uses_retain(self) -> bool:
        return self.method in ("ga_kl", "ga_gd")

    def steps(self, n_forget: int) -> int:
        return max(1, math.ceil(self.epochs * n_forget / self.forget_per_batch))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class BaselineResult:
    model: Any  # the unlearned copy, eval mode, no grad
    config: BaselineConfig
    seconds: float
    trainable_params: int
    history: list[dict[str, float]]


# ---------------------------------------------------------------- losses
def forget_term(
    model: Any,
    tokenizer: Any,
    rows: Sequence[Row],
    *,
    method: Method,
    generic_labels: Sequence[str],
    rng: random.Random,
    chat_template: bool = False,
) -> torch.Tensor:
    """GA: -CE on the true answers. RL: CE towards a random generic label. Per forget row."""
    answers = [rng.choice(generic_labels) for _ in rows] if method == "rl" else [r.answer for r in rows]
    ce = row_ce(answer_logits(model, _encode(model, tokenizer, rows, answers, chat_template))).mean()
    return ce if method == "rl" else -ce


def retain_ce(model: Any, tokenizer: Any, rows: Sequence[Row], *, chat_template: bool = False) -> torch.Tensor:
    """CE on the true retain answers, per row."""
    return row_ce(answer_logits(model, _encode(model, tokenizer, rows, None, chat_template))).mean()


def retain_kl(model: Any, original: Any, tokenizer: Any, rows: Sequence[Row], *,
              chat_template: bool = False) -> torch.Tensor:
    """KL(original || model) summed over the positions that predict retain answer tokens, per row."""
    batch = _encode(model, tokenizer, rows, None, chat_template)
    with torch.no_grad():
        reference = answer_logits(original, batch)  # (N, V)
    return kl_sum(reference, answer_logits(model, batch)) / len(rows)


def _encode(model: Any, tokenizer: Any, rows: Sequence[Row], answers: Sequence[str] | None,
            chat_template: bool) -> Batch:
    answers = [r.answer for r in rows] if answers is None else list(answers)
    return encode_batch(tokenizer, [r.prompt for r in rows], answers, chat_template=chat_template).to(_device(model))


def baseline_loss(
    model: Any,
    original: Any | None,
    tokenizer: Any,
    forget: Sequence[Row],
    retain: Sequence[Row],
    *,
    config: BaselineConfig,
    generic_labels: Sequence[str],
    rng: random.Random,
    chat_template: bool = False,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The method's loss on one forget batch (and one retain batch for ga_kl / ga_gd)."""
    lf = forget_term(model, tokenizer, forget, method=config.method, generic_labels=generic_labels, rng=rng,
                     chat_template=chat_template)
    terms = {"L_f": lf.item()}
    if config.method == "ga_gd":
        lr_ = retain_ce(model, tokenizer, retain, chat_template=chat_template)
        terms["L_r"] = lr_.item()
        return lf + config.retain_weight * lr_, terms
    if config.method == "ga_kl":
        assert original is not None
        kl = retain_kl(model, original, tokenizer, retain, chat_template=chat_template)
        terms["L_kl"] = kl.item()
        return lf + config.retain_weight * kl, terms
    return lf, terms


# ---------------------------------------------------------------- training
def unlearn(
    model: Any,
    tokenizer: Any,
    forget: Sequence[Row],
    retain: Sequence[Row],
    *,
    config: BaselineConfig,
    generic_labels: Sequence[str],
    chat_template: bool = False,
    progress: Progress | None = None,
) -> BaselineResult:
    """Fine-tune a copy of ``model`` with ``config.method``; ``model`` itself is left untouched.

    ``progress``, if given, advances one unit per optimizer step.
    """
    if not forget:
        raise ValueError("the forget set is empty: nothing to unlearn")
    if config.uses_retain and not retain:
        raise ValueError(f"{config.method} needs retain rows")
    started = time.perf_counter()
    student = _trainable_copy(model, config.seed)
    original = model if config.method == "ga_kl" else None  # frozen: only read under no_grad
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    rng = random.Random(config.seed)
    order = _forget_order(len(forget), config, rng)
    history: list[dict[str, float]] = []
    for idx in order:
        f_rows = [forget[i] for i in idx]
        r_rows = rng.choices(retain, k=config.retain_per_batch) if config.uses_retain else []
        loss, terms = baseline_loss(
            student,
            original,
            tokenizer,
            f_rows,
            r_rows,
            config=config,
            generic_labels=generic_labels,
            rng=rng,
            chat_template=chat_template,
        )
        if not torch.isfinite(loss):
            log.warning("%s: loss not finite at step %d; stopping early", config.method, len(history))
            break
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        optimizer.step()
        history.append(terms)
        if progress is not None:
            progress.update(**terms)
    student.eval().requires_grad_(False)
    return BaselineResult(
        student, config, time.perf_counter() - started, sum(p.numel() for p in params), history
    )


def _trainable_copy(model: Any, seed: int) -> Any:
    torch.manual_seed(seed)
    student = copy.deepcopy(model)
    student.requires_grad_(True)
    return student.train()


def _forget_order(n: int, config: BaselineConfig, rng: random.Random) -> list[list[int]]:
    """Shuffled forget-row batches covering ``epochs`` passes (the last pass may be partial)."""
    flat: list[int] = []
    while len(flat) < config.steps(n) * config.forget_per_batch:
        perm = list(range(n))
        rng.shuffle(perm)
        flat += perm
    k = config.forget_per_batch
    return [flat[i * k : (i + 1) * k] for i in range(config.steps(n))]


def _device(model: Any) -> torch.device:
    return next(model.parameters()).device


# ---------------------------------------------------------------- learning-rate search
@dataclass(frozen=True)
class LrTrial:
    lr: float
    train_forget: float  # greedy exact match on train_forget
    train_retain: float  # on the fixed train_retain sample
    score: float  # train_retain - train_forget


def search_lr(
    model: Any,
    tokenizer: Any,
    forget: Sequence[Row],
    retain: Sequence[Row],
    *,
    config: BaselineConfig,
    generic_labels: Sequence[str],
    grid: Sequence[float],
    retain_sample: int = 200,
    accuracy_fn: Any,
    chat_template: bool = False,
    progress: bool = False,
) -> tuple[BaselineResult, list[LrTrial]]:
    """Run ``config`` at every lr of ``grid``; keep the best by train retain - train forget accuracy.

    ``accuracy_fn(model, rows) -> float`` scores greedy exact match. Only train splits are used.
    Returns the winning run (its model already trained) and every trial, for the report.
    """
    if not grid:
        raise ValueError("the lr grid is empty")
    sample = random.Random(config.seed).sample(list(retain), min(retain_sample, len(retain)))
    best: tuple[float, float, BaselineResult] | None = None
    trials: list[LrTrial] = []
    steps = config.steps(len(forget))
    with Progress(len(grid) * steps, f"{config.method} lr search", enabled=progress) as bar:
        for lr in sorted(grid):
            result = unlearn(model, tokenizer, forget, retain, config=_with_lr(config, lr),
                             generic_labels=generic_labels, chat_template=chat_template, progress=bar)
            if len(result.history) < steps:  # a run stopped early counts as done
                bar.update(steps - len(result.history))
            f_acc, r_acc = accuracy_fn(result.model, forget), accuracy_fn(result.model, sample)
            trials.append(LrTrial(lr, f_acc, r_acc, r_acc - f_acc))
            log.info("%s lr=%g: train_forget accuracy %.3f, train_retain %.3f", config.method, lr, f_acc, r_acc)
            if best is None or r_acc - f_acc > best[0] + 1e-9:  # strict: ties keep the smaller lr
                best = (r_acc - f_acc, lr, result)
    assert best is not None
    return best[2], trials


def _with_lr(config: BaselineConfig, lr: float) -> BaselineConfig:
    return BaselineConfig(**{**config.to_dict(), "lr": lr})
