"""Scoring one method the same way as every other: split accuracy, membership inference, likelihoods.

``score_candidate`` turns a ``Candidate`` into a JSON-ready part (what the report keeps of a
method once it is scored, so the model can be dropped); ``closeness_to`` and ``trade_off_checks``
compare the parts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np

from spul.trainer.baselines import METHODS as BASELINES
from spul.trainer.candidates import Candidate, Inputs
from spul.trainer.data import Row
from spul.trainer.progress import Progress
from spul.trainer.report_config import FORGET_SPLIT, RETAIN_SPLIT
from spul.trainer.robustness import answer_logprobs, mia_auc, nonmember_rows


def nonmembers_for(inp: Inputs, *, seed: int) -> tuple[list[Row], str]:
    """Rows the base model never trained on, for the membership attack, and how they were made.

    On a reference world the base-model corpus is known; for other data it is not, so the
    held-out forget rows (test_forget) stand in for rows the model never saw.
    """
    if inp.world_dir is None:
        rows = list(inp.splits[FORGET_SPLIT])
        return rows, "held-out forget rows (test_forget); the base model's training data is unknown"
    from spul.trainer.world import load_world

    corpus_prompts = {r.prompt for r in load_world(inp.world_dir).corpus().rows}
    return nonmember_rows(inp.splits[FORGET_SPLIT], trained_prompts=corpus_prompts,
                          forget=inp.splits["train_forget"], seed=seed)


def score_splits(c: Candidate, inp: Inputs, splits: Mapping[str, Sequence[Row]], *, batch_size: int,
                 progress: bool = False) -> dict[str, dict[str, float | int]]:
    """{split: {accuracy, f1, n}} with greedy decoding, as `spul eval` scores."""
    total = sum(len(rows) for rows in splits.values())
    with Progress(total, f"score {c.name}", unit="row", enabled=progress) as bar:
        return {
            name: inp.score(rows, inp.answers(c.model, c.rows(rows), c.prompt, batch_size=batch_size, progress=bar))
            for name, rows in splits.items()
        }


def score_candidate(c: Candidate, inp: Inputs, nonmembers: Sequence[Row], *, batch_size: int,
                    progress: bool = False) -> dict[str, Any]:
    """Everything the report keeps of one method: results per split, MIA AUC, forget log-probs, cost."""
    results = score_splits(c, inp, inp.splits, batch_size=batch_size, progress=progress)
    chat = inp.data.meta.chat_template
    members = answer_logprobs(c.model, inp.tokenizer, c.rows(inp.splits["train_forget"]), prompt=c.prompt,
                              batch_size=batch_size, chat_template=chat)
    others = answer_logprobs(c.model, inp.tokenizer, c.rows(nonmembers), prompt=c.prompt,
                             batch_size=batch_size, chat_template=chat)
    return {
        "results": results,
        "mia_auc": mia_auc(-members, -others),
        "member_logprobs": members.tolist(),  # log p(answer) on train_forget: closeness to retrain
        "cost": asdict(c.cost),
        "info": c.info,
    }


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
    """Is SPUL dominated by a fine-tuning baseline on the test splits; is its paraphrase forget <= 20%."""
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
