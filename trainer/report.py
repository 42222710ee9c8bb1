"""`spul report`: every unlearning method on one world and task, scored the same way.

Methods: ``original`` (no unlearning), ``spul`` (soft prompt; plus a sweep of alpha/beta for
the trade-off plot), the fine-tuning baselines ``ga``, ``rl``, ``ga_kl``, ``ga_gd``
(trainer.baselines, lr searched on train splits), ``retrain`` (the base model trained from
scratch without the forget entities: the gold standard) and ``icul`` (in-context unlearning).

Per method: accuracy / weighted F1 on every world split plus ``injection`` (held-out forget
questions wrapped in override text); membership-inference AUC on forget rows vs rows never
trained on; KS distance to ``retrain`` of the answer-probability distribution on the forget
rows; cost (trainable parameters, wall time, peak extra memory).

Writes ``report.json`` (``results`` shaped like ``spul eval``'s), ``report.md`` and
``tradeoff.png`` to the output directory.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import resource
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spul.jsonsafe import json_safe
from spul.trainer.baselines import METHODS as BASELINES
from spul.trainer.baselines import BaselineConfig, search_lr
from spul.trainer.data import Row, UnlearningData, read_world_task
from spul.trainer.evaluate import generate, score
from spul.trainer.robustness import (
    IculDoesNotFit,
    answer_logprobs,
    icul_context,
    icul_rows,
    injection_rows,
    mia_auc,
    nonmember_rows,
)
from spul.trainer.spul import PromptEncoder, SpulConfig, train_prompt

log = logging.getLogger(__name__)

METHOD_ORDER = ("original", "spul", *BASELINES, "retrain", "icul")
FORGET_SPLIT, RETAIN_SPLIT = "test_forget", "test_retain"  # the trade-off plot's axes


@dataclass(frozen=True)
class ReportConfig:
    """Budgets of one report. The default fits the default world in ~30 min on 2 CPU cores."""

    spul: SpulConfig = field(default_factory=SpulConfig)
    sweep: tuple[tuple[float, float], ...] = ((0.1, 0.0), (0.5, 0.1), (1.0, 1.0))  # extra (alpha, beta)
    sweep_steps: int = 150
    baseline_epochs: float = 1.0  # passes over train_forget, as the paper's 1 epoch
    baseline_forget_batch: int = 8
    baseline_retain_batch: int = 16
    lr_grid: tuple[float, ...] = (1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3)
    lr_retain_sample: int = 200
    icul_retain_demos: int = 2
    retrain_epochs: int | None = None  # None: the world's own base-model schedule (faithful)
    batch_size: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.lr_grid or any(not 0 < lr < 1 for lr in self.lr_grid):
            raise ValueError("lr_grid must be a non-empty list of learning rates in (0, 1)")
        if self.sweep_steps < 1 or self.batch_size < 1 or self.lr_retain_sample < 1:
            raise ValueError("sweep_steps, batch_size and lr_retain_sample must be >= 1")
        if self.retrain_epochs is not None and self.retrain_epochs < 1:
            raise ValueError("retrain_epochs must be >= 1 (or None for the world's schedule)")

    @classmethod
    def quick(cls) -> ReportConfig:
        """A reduced run for tests and smoke checks: few steps, short grids, 1-epoch retrain."""
        return cls(
            spul=SpulConfig(steps=30, forget_per_batch=8, retain_per_batch=16),
            sweep=((0.1, 0.0),),
            sweep_steps=10,
            lr_grid=(1e-3, 1e-2),
            lr_retain_sample=32,
            retrain_epochs=1,
        )

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["spul"] = self.spul.to_dict()
        return out


# ---------------------------------------------------------------- cost
@dataclass
class Cost:
    trainable_params: int = 0
    seconds: float = 0.0
    peak_extra_mb: float | None = None  # peak RSS during the run minus RSS at its start
    note: str = ""


def _rss_mb() -> float:
    try:  # current RSS; Linux
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # high-water mark (KiB)


@contextlib.contextmanager
def measure(cost: Cost, *, interval: float = 0.02) -> Iterator[Cost]:
    """Fill ``cost.seconds`` and ``cost.peak_extra_mb`` (RSS sampled by a thread) for the block."""
    start_rss, peak, stop = _rss_mb(), [0.0], threading.Event()

    def sample() -> None:
        while not stop.wait(interval):
            peak[0] = max(peak[0], _rss_mb())

    thread = threading.Thread(target=sample, daemon=True)
    started = time.perf_counter()
    thread.start()
    try:
        yield cost
    finally:
        stop.set()
        thread.join()
        cost.seconds = time.perf_counter() - started
        cost.peak_extra_mb = max(0.0, max(peak[0], _rss_mb()) - start_rss)


# ---------------------------------------------------------------- candidates
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


@dataclass
class Inputs:
    """The world rows and model one report works on."""

    data: UnlearningData
    task: str
    model: Any
    tokenizer: Any
    splits: dict[str, list[Row]]  # world splits + injection
    generic: list[str]
    forget_entities: list[str]


def spul_params(config: SpulConfig, hidden: int) -> int:
    """Trainable parameters of SPUL's prompt encoder (the base model is frozen)."""
    return sum(
        p.numel()
        for p in PromptEncoder(config.num_virtual_tokens, hidden, config.encoder_hidden_size).parameters()
    )


def train_spul(inp: Inputs, config: SpulConfig, *, name: str = "spul", progress: bool = False) -> Candidate:
    hidden = int(inp.model.get_input_embeddings().weight.shape[1])
    cost = Cost(trainable_params=spul_params(config, hidden))
    with measure(cost):
        result = train_prompt(
            inp.model,
            inp.tokenizer,
            inp.splits["train_forget"],
            inp.splits["train_retain"],
            config=config,
            generic_labels=inp.generic,
            progress=progress,
        )
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
    cost = Cost(
        trainable_params=spul_params(config, hidden), note=f"loaded from {path}; training time not measured"
    )
    return Candidate(
        "spul",
        inp.model,
        prompt=artifact.embeddings.float(),
        cost=cost,
        info={"alpha": config.alpha, "beta": config.beta, "steps": config.steps, "artifact": str(path)},
    )


def train_baselines(inp: Inputs, config: ReportConfig) -> list[Candidate]:
    """Each fine-tuning baseline at the lr chosen on train splits (see trainer.baselines)."""
    out = []
    for method in BASELINES:
        base_cfg = BaselineConfig(
            method=method,
            epochs=config.baseline_epochs,
            seed=config.seed,
            forget_per_batch=config.baseline_forget_batch,
            retain_per_batch=config.baseline_retain_batch,
        )
        cost = Cost()
        with measure(cost):
            result, trials = search_lr(
                inp.model,
                inp.tokenizer,
                inp.splits["train_forget"],
                inp.splits["train_retain"],
                config=base_cfg,
                generic_labels=inp.generic,
                grid=config.lr_grid,
                retain_sample=config.lr_retain_sample,
                accuracy_fn=lambda m, rows: _accuracy(m, inp.tokenizer, rows, config),
            )
        cost.trainable_params = result.trainable_params
        cost.note = f"includes the lr search over {len(trials)} runs; the chosen run alone took {result.seconds:.1f} s"
        info = {
            "lr": result.config.lr,
            "steps": len(result.history),
            "lr_search": [asdict(t) for t in trials],
        }
        out.append(Candidate(method, result.model, cost=cost, info=info))
    return out


def _accuracy(model: Any, tokenizer: Any, rows: Sequence[Row], config: ReportConfig) -> float:
    return float(
        score(rows, generate(model, tokenizer, rows, None, batch_size=config.batch_size))["accuracy"]
    )


# ---------------------------------------------------------------- retrain (gold standard)
RETRAIN_MARKER = "retrain.json"


def retrain_candidate(inp: Inputs, config: ReportConfig, *, cache: Path, progress: bool = False) -> Candidate:
    """The world's base model retrained from scratch without every task's forget entities.

    Excluding both tasks' entities lets one retrained model serve both reports (the tasks share
    no entity). The model is cached in ``cache`` with a marker describing how it was made; a
    matching cache is reused, so its cost is the one recorded when it was trained.
    """
    from transformers import AutoModelForCausalLM

    from spul.trainer.world import load_world, spec_for

    world = load_world(inp.data.world_dir)
    spec = spec_for(world.size)
    train_cfg = (
        spec.train if config.retrain_epochs is None else replace(spec.train, epochs=config.retrain_epochs)
    )
    key = {
        "world_seed": world.seed,
        "world_size": world.size,
        "model_config": asdict(spec.model),
        "train_config": asdict(train_cfg),
        "excluded": sorted({e for t in world.tasks for e in world.forget_entities[t]}),
    }
    marker = cache / RETRAIN_MARKER
    if marker.is_file() and json.loads(marker.read_text(encoding="utf-8")).get("key") == key:
        recorded = json.loads(marker.read_text(encoding="utf-8"))["cost"]
        model = AutoModelForCausalLM.from_pretrained(cache, dtype=torch.float32).eval().requires_grad_(False)
        cost = Cost(**{**recorded, "note": f"reused from {cache}; cost recorded when it was trained"})
        return Candidate("retrain", model, cost=cost, info={"cache": str(cache), "epochs": train_cfg.epochs})
    cost = Cost()
    with measure(cost):
        model = _retrain(world, inp.tokenizer, spec, train_cfg, key["excluded"], progress=progress)
    cost.trainable_params = sum(p.numel() for p in model.parameters())
    _save_retrain(model, inp.tokenizer, cache, {"key": key, "cost": asdict(cost)})
    return Candidate("retrain", model, cost=cost, info={"cache": str(cache), "epochs": train_cfg.epochs})


def _retrain(
    world: Any, tokenizer: Any, spec: Any, train_cfg: Any, excluded: list[str], *, progress: bool
) -> Any:
    from spul.trainer.basemodel import train_base_model

    # The caller's thread count, not the world's: on busy shared cores fewer threads win.
    train_cfg = replace(train_cfg, threads=torch.get_num_threads())
    model = train_base_model(
        world.corpus(),
        tokenizer,
        model_config=spec.model,
        train_config=train_cfg,
        exclude_entities=excluded,
        seed=world.seed,
        progress=progress,
    )
    return model.eval().requires_grad_(False)


def _save_retrain(model: Any, tokenizer: Any, cache: Path, marker: dict[str, Any]) -> None:
    from spul.trainer.basemodel import save_model

    cache.mkdir(parents=True, exist_ok=True)
    (cache / RETRAIN_MARKER).unlink(missing_ok=True)  # the marker goes last: it vouches for the weights
    save_model(model, tokenizer, cache)
    (cache / RETRAIN_MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n", encoding="utf-8")


# ---------------------------------------------------------------- ICUL
def icul_candidate(inp: Inputs, config: ReportConfig) -> Candidate | str:
    """ICUL with as many retain demonstrations (<= config) as fit; a reason string if none fit."""
    max_positions = int(getattr(inp.model.config, "max_position_embeddings", 0) or 0)
    every_row = [r for rows in inp.splits.values() for r in rows]
    reason = "model config has no max_position_embeddings"
    for n_retain in range(config.icul_retain_demos, -1, -1):
        context = icul_context(
            inp.splits["train_forget"],
            inp.splits["train_retain"],
            generic=inp.generic[0],
            n_retain=n_retain,
            seed=config.seed,
        )
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


# ---------------------------------------------------------------- scoring
def score_splits(
    c: Candidate, tokenizer: Any, splits: Mapping[str, Sequence[Row]], *, batch_size: int
) -> dict[str, dict[str, float | int]]:
    """{split: {accuracy, f1, n}} with greedy decoding, as `spul eval` scores."""
    return {
        name: score(rows, generate(c.model, tokenizer, c.rows(rows), c.prompt, batch_size=batch_size))
        for name, rows in splits.items()
    }


def forget_logprobs(
    c: Candidate, inp: Inputs, nonmembers: Sequence[Row], *, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """log p(answer) on train_forget (members) and on the never-trained rows, under the method."""
    members = answer_logprobs(
        c.model, inp.tokenizer, c.rows(inp.splits["train_forget"]), prompt=c.prompt, batch_size=batch_size
    )
    others = answer_logprobs(
        c.model, inp.tokenizer, c.rows(nonmembers), prompt=c.prompt, batch_size=batch_size
    )
    return members, others


def closeness_to(reference: np.ndarray, logprobs: Mapping[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Two-sample KS of each method's answer probabilities on the forget rows vs the reference's."""
    from scipy.stats import ks_2samp

    out = {}
    for name, lp in logprobs.items():
        probs = np.exp(lp)
        test = ks_2samp(probs, np.exp(reference))
        out[name] = {
            "ks_statistic": float(test.statistic),
            "ks_pvalue": float(test.pvalue),
            "mean_answer_prob": float(probs.mean()),
        }
    return out


def trade_off_checks(results: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> dict[str, Any]:
    """The issue's claims, measured: is SPUL dominated by a baseline; paraphrase forget <= 20%."""
    if "spul" not in results:
        return {}
    spul_f, spul_r = results["spul"][FORGET_SPLIT]["accuracy"], results["spul"][RETAIN_SPLIT]["accuracy"]
    dominated_by = [
        m
        for m in BASELINES
        if m in results
        and results[m][FORGET_SPLIT]["accuracy"] < spul_f
        and results[m][RETAIN_SPLIT]["accuracy"] > spul_r
    ]
    para = results["spul"].get("paraphrase", {}).get("accuracy")
    return {
        "axes": [FORGET_SPLIT, RETAIN_SPLIT],
        "spul_dominated_by": dominated_by,
        "spul_not_dominated": not dominated_by,
        "spul_paraphrase_forget_accuracy": para,
        "spul_paraphrase_forget_le_20pct": para is not None and para <= 0.2,
    }


# ---------------------------------------------------------------- inputs
def load_inputs(data: UnlearningData | str | Path, task: str | None = None, *, base_model: str | None = None,
                device: str = "auto", seed: int = 0) -> Inputs:
    """The data's rows (every split + ``injection``) and its frozen base model.

    ``data`` is read data, or a world directory with ``task`` (the ``--world/--task`` shorthand).
    """
    from spul.models import load_base_model

    if not isinstance(data, UnlearningData):
        data = read_world_task(data, task or "")
    data.require(("train_forget", "train_retain", FORGET_SPLIT, RETAIN_SPLIT))
    ref = base_model or data.base_model
    if ref is None:
        raise ValueError(f"no base model for {data.root}: pass one, or set base_model in its data.json")
    base = load_base_model(ref, device=device)  # type: ignore[arg-type]
    task = data.name
    splits = dict(data.splits)
    forget_entities = data.forget_entities
    generic = list(data.meta.generic_answers)
    retained = sorted({r.entity for r in splits["train_retain"] if r.entity} - set(forget_entities))
    decoys = np.random.default_rng(seed).permutation(retained)[:4].tolist() if retained else []
    splits["injection"], templates = injection_rows(
        splits[FORGET_SPLIT], tokenizer=base.tokenizer, decoys=decoys, banned=generic
    )
    log.info("injection probes: %s", templates)
    return Inputs(data, task, base.model, base.tokenizer, splits, generic, list(forget_entities))


def run_sweep(inp: Inputs, config: ReportConfig, *, progress: bool) -> list[dict[str, Any]]:
    """SPUL at each extra (alpha, beta): one trade-off point each, scored on the plot's two splits."""
    points = []
    axes = {s: inp.splits[s] for s in (FORGET_SPLIT, RETAIN_SPLIT)}
    for alpha, beta in config.sweep:
        log.info("spul sweep: alpha=%g beta=%g, %d steps", alpha, beta, config.sweep_steps)
        cfg = replace(config.spul, alpha=alpha, beta=beta, steps=config.sweep_steps)
        cand = train_spul(inp, cfg, name=f"spul a={alpha:g} b={beta:g}", progress=progress)
        scores = score_splits(cand, inp.tokenizer, axes, batch_size=config.batch_size)
        points.append(
            {
                **cand.info,
                **{s: m["accuracy"] for s, m in scores.items()},
                "seconds": round(cand.cost.seconds, 1),
            }
        )
    return points


# ---------------------------------------------------------------- the report
def run_report(
    data: UnlearningData,
    out: str | Path,
    *,
    base_model: str | None = None,
    config: ReportConfig = ReportConfig(),
    prompt_path: Path | None = None,
    retrain_dir: Path | None = None,
    device: str = "auto",
    progress: bool = False,
) -> dict[str, Any]:
    """Run every method, score every split, and write report.json, report.md and tradeoff.png to ``out``."""
    started = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    inp = load_inputs(data, base_model=base_model, device=device, seed=config.seed)
    log.info("training spul, baselines, retrain")
    candidates = [Candidate("original", inp.model)]
    candidates.append(
        spul_from_artifact(inp, prompt_path)
        if prompt_path
        else train_spul(inp, config.spul, progress=progress)
    )
    candidates += train_baselines(inp, config)
    if data.world_dir is not None:
        log.info("retrain: from cache or from scratch (minutes on the default world)")
        candidates.append(
            retrain_candidate(inp, config, cache=retrain_dir or out / "retrain-model", progress=progress)
        )
    else:
        log.info("retrain: skipped (only a reference world's base model can be retrained here)")
    icul = icul_candidate(inp, config)
    candidates += [icul] if isinstance(icul, Candidate) else []
    sweep = run_sweep(inp, config, progress=progress)
    report = score_all(candidates, inp, config)
    report.update(
        task=inp.task,
        data=str(data.root),
        spul_sweep=sweep,
        config=config.to_dict(),
        icul=icul.info if isinstance(icul, Candidate) else {"skipped": icul},
        seconds=round(time.perf_counter() - started, 1),
    )
    write_outputs(out, report)
    return report


def score_all(candidates: Sequence[Candidate], inp: Inputs, config: ReportConfig) -> dict[str, Any]:
    """results / membership inference / closeness to retrain / cost for every candidate."""
    from spul.trainer.world import load_world

    world = inp.data.world_dir
    corpus_prompts = {r.prompt for r in load_world(world).corpus().rows} if world is not None else set()
    nonmembers, how = nonmember_rows(
        inp.splits[FORGET_SPLIT],
        trained_prompts=corpus_prompts,
        forget=inp.splits["train_forget"],
        seed=config.seed,
    )
    results, mia, logprobs = {}, {}, {}
    for c in candidates:
        log.info("scoring %s", c.name)
        results[c.name] = score_splits(c, inp.tokenizer, inp.splits, batch_size=config.batch_size)
        members, others = forget_logprobs(c, inp, nonmembers, batch_size=config.batch_size)
        mia[c.name] = mia_auc(-members, -others)
        logprobs[c.name] = members
    closeness = closeness_to(logprobs["retrain"], logprobs) if "retrain" in logprobs else {}
    return {
        "results": results,
        "mia_auc": mia,
        "mia_nonmembers": {"construction": how, "n": len(nonmembers), "members": "train_forget"},
        "closeness_to_retrain": closeness,
        "cost": {c.name: asdict(c.cost) for c in candidates},
        "method_info": {c.name: c.info for c in candidates},
        "checks": trade_off_checks(results),
        "injection_templates": sorted({r.id.split("/inject/")[-1] for r in inp.splits["injection"]}),
    }


# ---------------------------------------------------------------- outputs
def write_outputs(out: Path, report: Mapping[str, Any]) -> None:
    (out / "report.json").write_text(json.dumps(json_safe(report), indent=2) + "\n", encoding="utf-8")
    (out / "report.md").write_text(markdown_table(report), encoding="utf-8")
    plot_tradeoff(report, out / "tradeoff.png")


def _pct(x: Any) -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{100 * x:.1f}"


def markdown_table(report: Mapping[str, Any]) -> str:
    """Accuracy per split (%), MIA AUC, KS vs retrain, and cost, one row per method."""
    results = report["results"]
    splits = list(dict.fromkeys(s for per in results.values() for s in per))
    head = ["method", *splits, "MIA AUC", "KS vs retrain (p)", "trainable params", "time s", "peak MB"]
    lines = [
        f"Task `{report.get('task')}` - accuracy % (exact match, greedy); forget splits: lower is better.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for m, per in results.items():
        ks = report.get("closeness_to_retrain", {}).get(m)
        cost = report.get("cost", {}).get(m, {})
        cells = [
            m,
            *[_pct(per.get(s, {}).get("accuracy")) for s in splits],
            f"{report['mia_auc'].get(m, float('nan')):.2f}",
            f"{ks['ks_statistic']:.2f} ({ks['ks_pvalue']:.2g})" if ks else "-",
            f"{cost.get('trainable_params', 0):,}",
            f"{cost.get('seconds', 0):.0f}",
            "-" if cost.get("peak_extra_mb") is None else f"{cost['peak_extra_mb']:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "n per split: " + ", ".join(f"{s} {next(iter(results.values()))[s]['n']}" for s in splits)]
    return "\n".join(lines) + "\n"


def plot_tradeoff(report: Mapping[str, Any], path: Path) -> None:
    """Forget accuracy vs retain accuracy (test splits): one point per method and SPUL setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 5))
    for m, per in report["results"].items():
        x, y = per[RETAIN_SPLIT]["accuracy"], per[FORGET_SPLIT]["accuracy"]
        ax.scatter(x, y, s=60, marker="*" if m == "spul" else "o", zorder=3)
        ax.annotate(m, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=9)
    for p in report.get("spul_sweep", []):
        ax.scatter(p[RETAIN_SPLIT], p[FORGET_SPLIT], s=25, marker="x", color="tab:gray", zorder=2)
        ax.annotate(
            f"a={p['alpha']:g} b={p['beta']:g}",
            (p[RETAIN_SPLIT], p[FORGET_SPLIT]),
            textcoords="offset points",
            xytext=(4, -10),
            fontsize=7,
            color="tab:gray",
        )
    ax.set(
        xlim=(-0.05, 1.05),
        ylim=(-0.05, 1.05),
        xlabel=f"retain accuracy ({RETAIN_SPLIT}, higher is better)",
        ylabel=f"forget accuracy ({FORGET_SPLIT}, lower is better)",
        title=f"Unlearning trade-off: task {report.get('task')}",
    )
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_baselines(
    data: UnlearningData,
    out: str | Path,
    *,
    base_model: str | None = None,
    config: ReportConfig = ReportConfig(),
    device: str = "auto",
    save_models: bool = True,
) -> dict[str, Any]:
    """Only the fine-tuning baselines (and ``original`` for reference); models saved to ``out/<method>``."""
    started = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    inp = load_inputs(data, base_model=base_model, device=device, seed=config.seed)
    candidates = [Candidate("original", inp.model), *train_baselines(inp, config)]
    if save_models:
        for c in candidates[1:]:
            c.model.save_pretrained(out / c.name)  # safetensors
            inp.tokenizer.save_pretrained(out / c.name)
    report = score_all(candidates, inp, config)
    report.update(
        task=inp.task,
        data=str(data.root),
        config=config.to_dict(),
        seconds=round(time.perf_counter() - started, 1),
    )
    write_outputs(out, report)
    return report
