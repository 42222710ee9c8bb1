"""The methods a report compares, each made ready to score: a model, maybe a prompt or a preamble.

``load_inputs`` reads the data and the frozen base model once; ``train_spul``,
``spul_from_artifact``, ``baseline_candidate`` and ``icul_candidate`` each make one
``Candidate``. The retrained gold standard is in trainer.retrain.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spul.trainer.baselines import BaselineConfig, Method, search_lr
from spul.trainer.cost import Cost, measure
from spul.trainer.data import Row, UnlearningData
from spul.trainer.evaluate import Generation, generate, score
from spul.trainer.progress import Progress
from spul.trainer.prompt_encoder import PromptEncoder
from spul.trainer.report_config import FORGET_SPLIT, RETAIN_SPLIT, ReportConfig
from spul.trainer.robustness import IculDoesNotFit, icul_context, icul_rows, injection_rows
from spul.trainer.spul import train_prompt
from spul.trainer.spul_config import SpulConfig

log = logging.getLogger(__name__)


@dataclass
class Inputs:
    """The rows, scoring rules and frozen base model one report works on."""

    data: UnlearningData
    model: Any
    tokenizer: Any
    splits: dict[str, list[Row]]  # the data's splits + injection
    generic: list[str]
    forget_entities: list[str]

    @property
    def task(self) -> str:
        return self.data.name

    @property
    def world_dir(self) -> Path | None:
        return self.data.world_dir

    def answers(self, model: Any, rows: Sequence[Row], prompt: torch.Tensor | None, *, batch_size: int,
                progress: Progress | None = None) -> list[Generation]:
        """Greedy answers under the data's generation settings (chat template, token budget)."""
        meta = self.data.meta
        return generate(model, self.tokenizer, rows, prompt, batch_size=batch_size,
                        max_new_tokens=meta.max_new_tokens, chat_template=meta.chat_template, progress=progress)

    def score(self, rows: Sequence[Row], gens: Sequence[Generation]) -> dict[str, float | int]:
        return score(rows, gens, match=self.data.meta.match)


def load_inputs(data: UnlearningData, *, base_model: str | None = None, device: str = "auto",
                seed: int = 0) -> Inputs:
    """The data's rows (every split + ``injection``) and its frozen base model."""
    from spul.models import load_base_model

    data.require(("train_forget", "train_retain", FORGET_SPLIT, RETAIN_SPLIT))
    ref = base_model or data.base_model
    if ref is None:
        raise ValueError(f"no base model for {data.root}: pass one, or set base_model in its data.json")
    base = load_base_model(ref, device=device)  # type: ignore[arg-type]
    splits = dict(data.splits)
    forget_entities = data.forget_entities
    generic = list(data.meta.generic_answers)
    retained = sorted({r.entity for r in splits["train_retain"] if r.entity} - set(forget_entities))
    decoys = np.random.default_rng(seed).permutation(retained)[:4].tolist() if retained else []
    splits["injection"], templates = injection_rows(
        splits[FORGET_SPLIT], tokenizer=base.tokenizer, decoys=decoys, banned=generic
    )
    log.info("injection probes: %s", ", ".join(templates))
    return Inputs(data, base.model, base.tokenizer, splits, generic, list(forget_entities))


@dataclass
class Candidate:
    """One method ready to score: a model, maybe a soft prompt, maybe an in-context preamble."""

    name: str
    model: Any
    prompt: torch.Tensor | None = None
    transform: Callable[[Sequence[Row]], list[Row]] | None = None  # ICUL: puts demonstrations in front
    cost: Cost = field(default_factory=Cost)
    info: dict[str, Any] = field(default_factory=dict)

    def rows(self, rows: Sequence[Row]) -> list[Row]:
        return list(rows) if self.transform is None else self.transform(rows)


# ---------------------------------------------------------------- SPUL
def spul_params(config: SpulConfig, hidden: int) -> int:
    """Trainable parameters of SPUL's prompt encoder (the base model is frozen)."""
    encoder = PromptEncoder(config.num_virtual_tokens, hidden, config.encoder_hidden_size)
    return sum(p.numel() for p in encoder.parameters())


def train_spul(inp: Inputs, config: SpulConfig, *, name: str = "spul", progress: bool = False) -> Candidate:
    hidden = int(inp.model.get_input_embeddings().weight.shape[1])
    cost = Cost(trainable_params=spul_params(config, hidden))
    with measure(cost):
        result = train_prompt(inp.model, inp.tokenizer, inp.splits["train_forget"], inp.splits["train_retain"],
                              config=config, generic_labels=inp.generic, chat_template=inp.data.meta.chat_template,
                              progress=progress)
    info = {"alpha": config.alpha, "beta": config.beta, "steps": config.steps, "lr": config.lr}
    return Candidate(name, inp.model, prompt=result.prompt, cost=cost, info=info)


def spul_from_artifact(inp: Inputs, path: Path) -> Candidate:
    """A prompt trained earlier (`spul train`): checked against this model's fingerprint."""
    from spul.prompts_store import load_artifact, model_fingerprint

    hidden = int(inp.model.get_input_embeddings().weight.shape[1])
    artifact = load_artifact(
        path, expected_fingerprint=model_fingerprint(inp.model, inp.tokenizer), expected_hidden_size=hidden
    )
    trained = artifact.meta.training_config
    config = SpulConfig(
        **{k: v for k, v in trained.items() if k in SpulConfig.__dataclass_fields__ and k != "generic_labels"}
    )
    cost = Cost(trainable_params=spul_params(config, hidden), note=f"loaded from {path}; training time not measured")
    info = {"alpha": config.alpha, "beta": config.beta, "steps": config.steps, "artifact": str(path)}
    return Candidate("spul", inp.model, prompt=artifact.embeddings.float(), cost=cost, info=info)


# ---------------------------------------------------------------- fine-tuning baselines
def baseline_candidate(inp: Inputs, config: ReportConfig, method: Method, *, progress: bool = False) -> Candidate:
    """One fine-tuning baseline at the lr chosen on train splits (see trainer.baselines)."""
    base_cfg = BaselineConfig(method=method, epochs=config.baseline_epochs, seed=config.seed,
                              forget_per_batch=config.baseline_forget_batch,
                              retain_per_batch=config.baseline_retain_batch)
    cost = Cost()
    with measure(cost):
        result, trials = search_lr(
            inp.model, inp.tokenizer, inp.splits["train_forget"], inp.splits["train_retain"],
            config=base_cfg, generic_labels=inp.generic, grid=config.lr_grid,
            retain_sample=config.lr_retain_sample, chat_template=inp.data.meta.chat_template,
            accuracy_fn=lambda m, rows: accuracy(inp, m, rows, batch_size=config.batch_size), progress=progress,
        )
    cost.trainable_params = result.trainable_params
    cost.note = f"includes the lr search over {len(trials)} runs; the chosen run alone took {result.seconds:.1f} s"
    info = {"lr": result.config.lr, "steps": len(result.history), "lr_search": [asdict(t) for t in trials]}
    return Candidate(method, result.model, cost=cost, info=info)


def accuracy(inp: Inputs, model: Any, rows: Sequence[Row], *, batch_size: int) -> float:
    """Greedy accuracy of ``model`` (no prompt) on ``rows`` under the data's scoring rule."""
    return float(inp.score(rows, inp.answers(model, rows, None, batch_size=batch_size))["accuracy"])


# ---------------------------------------------------------------- ICUL
def icul_candidate(inp: Inputs, config: ReportConfig) -> Candidate | str:
    """ICUL with as many retain demonstrations (<= config) as fit; a reason string if none fit."""
    max_positions = int(getattr(inp.model.config, "max_position_embeddings", 0) or 0)
    every_row = [r for rows in inp.splits.values() for r in rows]
    reason = "model config has no max_position_embeddings"
    for n_retain in range(config.icul_retain_demos, -1, -1):
        context = icul_context(inp.splits["train_forget"], inp.splits["train_retain"], generic=inp.generic[0],
                               n_retain=n_retain, seed=config.seed)
        transform = partial(icul_rows, context=context, tokenizer=inp.tokenizer, max_positions=max_positions)
        try:
            transform(every_row)
        except IculDoesNotFit as err:
            reason = f"ICUL does not fit the model's context: {err}"
            continue
        n_tokens = len(inp.tokenizer(context, add_special_tokens=False)["input_ids"])
        info = {"retain_demos": n_retain, "context_tokens": n_tokens, "max_positions": max_positions}
        return Candidate("icul", inp.model, transform=transform, info=info)
    return reason
