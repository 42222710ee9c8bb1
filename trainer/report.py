"""`spul report`: every unlearning method on one data directory, scored the same way.

Methods: ``original`` (no unlearning), ``spul`` (soft prompt; plus a sweep of alpha/beta for
the trade-off plot), the fine-tuning baselines ``ga``, ``rl``, ``ga_kl``, ``ga_gd``
(trainer.baselines, lr searched on train splits), ``retrain`` (a reference world's base model
trained from scratch without the forget entities: the gold standard) and ``icul`` (in-context
unlearning).

Per method: accuracy / weighted F1 on every split plus ``injection`` (held-out forget questions
wrapped in override text); membership-inference AUC on forget rows vs rows never trained on; KS
distance to ``retrain`` of the answer-probability distribution on the forget rows; cost
(trainable parameters, wall time, peak extra memory).

Each method is built, scored and written to ``OUT/parts/`` before the next one starts, so a
rerun with the same arguments resumes where the last one stopped. The finished report is
``report.json`` (``results`` shaped like ``spul eval``'s), ``report.md`` and ``tradeoff.png``.

The pieces: trainer.report_config (budgets), trainer.candidates (data, model and the methods),
trainer.retrain (gold standard and its cache), trainer.scoring (metrics), trainer.report_parts
(resuming), trainer.report_render (table, plot).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from spul.trainer.baselines import METHODS as BASELINES
from spul.trainer.candidates import (
    Candidate,
    Inputs,
    baseline_candidate,
    icul_candidate,
    load_inputs,
    spul_from_artifact,
    train_spul,
)
from spul.trainer.data import UnlearningData
from spul.trainer.progress import duration
from spul.trainer.report_config import FORGET_SPLIT, METHOD_ORDER, RETAIN_SPLIT, ReportConfig
from spul.trainer.report_parts import ReportParts, data_digest, file_digest
from spul.trainer.report_render import checks_summary, markdown_table, write_outputs
from spul.trainer.retrain import retrain_candidate
from spul.trainer.scoring import closeness_to, nonmembers_for, score_candidate, score_splits, trade_off_checks

__all__ = [
    "METHOD_ORDER",
    "ReportConfig",
    "checks_summary",
    "load_inputs",
    "markdown_table",
    "retrain_candidate",
    "run_baselines",
    "run_report",
]

log = logging.getLogger(__name__)

PARTS_DIR = "parts"

# (name, what building it does, build) -- build returns a Candidate, or a reason it was skipped
Step = tuple[str, str, Callable[[], "Candidate | str"]]


def run_report(
    data: UnlearningData,
    out: str | Path,
    *,
    base_model: str | None = None,
    config: ReportConfig | None = None,
    prompt_path: Path | None = None,
    retrain_dir: Path | None = None,
    device: str = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Run every method, score every split, and write report.json, report.md and tradeoff.png to ``out``."""
    config = config or ReportConfig()
    started = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    inp = load_inputs(data, base_model=base_model, device=device, seed=config.seed)
    parts = _open_parts(out, inp, config, kind="report", prompt_path=prompt_path)
    steps: list[Step] = [("original", "the base model as it is", lambda: Candidate("original", inp.model))]
    if prompt_path:
        steps.append(("spul", f"the prompt in {prompt_path}", lambda: spul_from_artifact(inp, prompt_path)))
    else:
        steps.append(("spul", f"training the soft prompt, {config.spul.steps} steps",
                      lambda: train_spul(inp, config.spul, progress=progress)))
    steps += _baseline_steps(inp, config, progress)
    if inp.world_dir is not None:
        cache = retrain_dir or out / "retrain-model"
        steps.append(("retrain", "the base model retrained without the forget set (from its cache if there)",
                      lambda: retrain_candidate(inp, config, cache=cache, progress=progress)))
    else:
        log.info("retrain: skipped (only a reference world's base model can be retrained here)")
    steps.append(("icul", "in-context unlearning (demonstrations in front of every query)",
                  lambda: icul_candidate(inp, config)))
    scored, skipped = _run_steps(steps, parts, inp, config, progress)
    sweep = run_sweep(inp, config, parts, progress=progress)
    report = _assemble(scored, inp)
    report.update(
        task=inp.task,
        data=str(inp.data.root),
        spul_sweep=sweep,
        config=config.to_dict(),
        icul=scored["icul"]["info"] if "icul" in scored else {"skipped": skipped.get("icul")},
        resumed=parts.resumed,
        seconds=round(time.perf_counter() - started, 1),
    )
    write_outputs(out, report)
    return report


def run_baselines(
    data: UnlearningData,
    out: str | Path,
    *,
    base_model: str | None = None,
    config: ReportConfig | None = None,
    device: str = "auto",
    save_models: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Only the fine-tuning baselines (and ``original`` for reference); models saved to ``out/<method>``."""
    config = config or ReportConfig()
    started = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    inp = load_inputs(data, base_model=base_model, device=device, seed=config.seed)
    parts = _open_parts(out, inp, config, kind="baselines", prompt_path=None)

    def saved(build: Callable[[], Candidate | str]) -> Callable[[], Candidate | str]:
        def run() -> Candidate | str:
            cand = build()
            if save_models and isinstance(cand, Candidate):
                cand.model.save_pretrained(out / cand.name)  # safetensors
                inp.tokenizer.save_pretrained(out / cand.name)
            return cand

        return run

    steps: list[Step] = [("original", "the base model as it is", lambda: Candidate("original", inp.model))]
    steps += [(name, what, saved(build)) for name, what, build in _baseline_steps(inp, config, progress)]
    scored, _ = _run_steps(steps, parts, inp, config, progress)
    report = _assemble(scored, inp)
    report.update(task=inp.task, data=str(inp.data.root), config=config.to_dict(), resumed=parts.resumed,
                  seconds=round(time.perf_counter() - started, 1))
    write_outputs(out, report)
    return report


def run_sweep(inp: Inputs, config: ReportConfig, parts: ReportParts, *, progress: bool) -> list[dict[str, Any]]:
    """SPUL at each extra (alpha, beta): one trade-off point each, scored on the plot's two splits."""
    points = []
    axes = {s: inp.splits[s] for s in (FORGET_SPLIT, RETAIN_SPLIT)}
    for i, (alpha, beta) in enumerate(config.sweep, 1):
        name = f"spul a={alpha:g} b={beta:g}"
        point = parts.get(f"sweep {name}")
        if point is None:
            log.info("sweep [%d/%d] %s: training %d steps", i, len(config.sweep), name, config.sweep_steps)
            cfg = replace(config.spul, alpha=alpha, beta=beta, steps=config.sweep_steps)
            cand = train_spul(inp, cfg, name=name, progress=progress)
            scores = score_splits(cand, inp, axes, batch_size=config.batch_size, progress=progress)
            point = parts.put(f"sweep {name}", {**cand.info, **{s: m["accuracy"] for s, m in scores.items()},
                                                 "seconds": round(cand.cost.seconds, 1)})
        points.append(point)
    return points


# ---------------------------------------------------------------- steps
def _baseline_steps(inp: Inputs, config: ReportConfig, progress: bool) -> list[Step]:
    what = f"fine-tuning a copy of the model at {len(config.lr_grid)} learning rates, keeping the best on train splits"
    return [(m, what, lambda m=m: baseline_candidate(inp, config, m, progress=progress)) for m in BASELINES]


def _open_parts(out: Path, inp: Inputs, config: ReportConfig, *, kind: str, prompt_path: Path | None) -> ReportParts:
    from spul.prompts_store import model_fingerprint

    key = {
        "kind": kind,
        "data": str(inp.data.root.resolve()),
        "data_sha256": data_digest(inp.data),
        "base_fingerprint": model_fingerprint(inp.model, inp.tokenizer),
        "prompt_sha256": file_digest(prompt_path),
        "config": config.to_dict(),
    }
    return ReportParts(out / PARTS_DIR, key)


def _run_steps(steps: Sequence[Step], parts: ReportParts, inp: Inputs, config: ReportConfig,
               progress: bool) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Build and score each step not already on disk; returns the scored parts and the skip reasons."""
    nonmembers, how = nonmembers_for(inp, seed=config.seed)
    scored: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    for i, (name, what, build) in enumerate(steps, 1):
        part = parts.get(name)
        if part is not None:
            log.info("[%d/%d] %s: done in an earlier run (%s)", i, len(steps), name, parts.root)
        else:
            log.info("[%d/%d] %s: %s", i, len(steps), name, what)
            started = time.perf_counter()
            cand = build()
            if isinstance(cand, str):
                part = parts.put(name, {"skipped": cand})
            else:
                value = score_candidate(cand, inp, nonmembers, batch_size=config.batch_size, progress=progress)
                part = parts.put(name, {**value, "nonmembers": {"construction": how, "n": len(nonmembers)}})
            del cand  # a fine-tuned copy of the model is not kept once it is scored
            log.info("[%d/%d] %s: %s (%s)", i, len(steps), name, _summary(part),
                     duration(time.perf_counter() - started))
        if "skipped" in part:
            skipped[name] = part["skipped"]
        else:
            scored[name] = part
    return scored, skipped


def _summary(part: dict[str, Any]) -> str:
    if "skipped" in part:
        return f"skipped: {part['skipped']}"
    res = part["results"]
    return (f"{FORGET_SPLIT} {100 * res[FORGET_SPLIT]['accuracy']:.1f}%, "
            f"{RETAIN_SPLIT} {100 * res[RETAIN_SPLIT]['accuracy']:.1f}%, MIA AUC {part['mia_auc']:.2f}")


def _assemble(scored: dict[str, dict[str, Any]], inp: Inputs) -> dict[str, Any]:
    """results / membership inference / closeness to retrain / cost for every scored method."""
    results = {m: p["results"] for m, p in scored.items()}
    logprobs = {m: np.asarray(p["member_logprobs"], dtype=float) for m, p in scored.items()}
    closeness = closeness_to(logprobs["retrain"], logprobs) if "retrain" in logprobs else {}
    nonmembers = next(iter(scored.values()))["nonmembers"]
    return {
        "results": results,
        "mia_auc": {m: p["mia_auc"] for m, p in scored.items()},
        "mia_nonmembers": {**nonmembers, "members": "train_forget"},
        "closeness_to_retrain": closeness,
        "cost": {m: p["cost"] for m, p in scored.items()},
        "method_info": {m: p["info"] for m, p in scored.items()},
        "checks": trade_off_checks(results),
        "injection_templates": sorted({r.id.split("/inject/")[-1] for r in inp.splits["injection"]}),
    }
