"""A report's human-readable outputs: the markdown table, the trade-off plot, the one-line checks."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from spul.jsonsafe import json_safe
from spul.trainer.report_config import FORGET_SPLIT, RETAIN_SPLIT


def write_outputs(out: Path, report: Mapping[str, Any]) -> None:
    """report.json, report.md and tradeoff.png in ``out``."""
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
        f"Task `{report.get('task')}` - accuracy % (greedy); forget splits: lower is better.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for m, per in results.items():
        ks = report.get("closeness_to_retrain", {}).get(m)
        cost = report.get("cost", {}).get(m, {})
        auc = report["mia_auc"].get(m)
        cells = [
            m,
            *[_pct(per.get(s, {}).get("accuracy")) for s in splits],
            "-" if auc is None else f"{auc:.2f}",
            f"{ks['ks_statistic']:.2f} ({ks['ks_pvalue']:.2g})" if ks else "-",
            f"{cost.get('trainable_params', 0):,}",
            f"{cost.get('seconds', 0):.0f}",
            "-" if cost.get("peak_extra_mb") is None else f"{cost['peak_extra_mb']:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "n per split: " + ", ".join(f"{s} {next(iter(results.values()))[s]['n']}" for s in splits)]
    return "\n".join(lines) + "\n"


def checks_summary(checks: Mapping[str, Any]) -> str:
    """The trade-off checks in one sentence."""
    if not checks:
        return "checks: none (SPUL was not scored)"
    dominated = checks["spul_dominated_by"]
    para = checks["spul_paraphrase_forget_accuracy"]
    first = ("SPUL is not dominated by a fine-tuning baseline" if not dominated
             else f"SPUL is dominated by {', '.join(dominated)}")
    second = ("no paraphrase split" if para is None
              else f"paraphrase forget accuracy {100 * para:.1f}% ({'<=' if para <= 0.2 else '>'} 20%)")
    return f"checks: {first} on {' / '.join(checks['axes'])}; {second}"


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
