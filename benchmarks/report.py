"""Benchmark report: machine and revision facts, the markdown table, and ratios against the targets."""

from __future__ import annotations

import math
import os
import platform
import subprocess
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
COLUMNS = (
    "system",
    "clients",
    "tokens_per_s",
    "p50_ms",
    "p99_ms",
    "ttft_p50_ms",
    "ttft_p99_ms",
    "requests",
    "errors",
    "unfinished",
)


def machine_info() -> dict:
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        info["load_average"] = os.getloadavg()
    except OSError:
        pass
    return info


def git_revision() -> str:
    """HEAD's commit, with `+dirty` when the work tree differs from it; 'unknown' outside git."""
    try:
        head = _git("rev-parse", "HEAD")
        dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()


def markdown(report: dict) -> str:
    """The results table, the target ratios, and the extra suites, as markdown."""
    lines = [f"# spul bench: {report['model']['name']} ({report['model']['n_params'] / 1e6:.3g}M params)", ""]
    machine = report["machine"]
    facts = (
        f"git {report['git_revision']}; {machine['platform']}, {machine['cpu_count']} CPUs, "
        f"torch {machine['torch']}, load average {machine.get('load_average')}"
    )
    lines += [facts, ""]
    lines += ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in report["results"]:
        lines.append("| " + " | ".join(_cell(row.get(c)) for c in COLUMNS) + " |")
    if report.get("targets"):
        lines += ["", "| target | measured | goal | met |", "|---|---|---|---|"]
        for t in report["targets"]:
            lines.append(f"| {t['name']} | {_cell(t['value'])} | {t['goal']} | {_cell(t['met'])} |")
    for key in ("train_step", "many_profiles"):
        if report.get(key):
            lines += ["", f"## {key}", "", "| key | value |", "|---|---|"]
            lines += [
                f"| {k} | {_cell(v)} |" for k, v in report[key].items() if not isinstance(v, (dict, list))
            ]
    return "\n".join(lines) + "\n"


def targets(results: list[dict], many_profiles: dict | None = None) -> list[dict]:
    """The issue's goals, computed from one run (missing systems or client counts are skipped)."""
    by = {(r["system"], r["clients"]): r for r in results}
    top = max((c for s, c in by if s == "naive" and (("spul", c) in by)), default=None)
    out = []
    if top is not None:
        ratio = _ratio(by[("spul", top)]["tokens_per_s"], by[("naive", top)]["tokens_per_s"])
        out.append(
            {
                "name": f"spul / naive tokens/s at {top} clients",
                "value": ratio,
                "goal": ">= 8",
                "met": ratio >= 8,
            }
        )
    for clients in sorted(c for s, c in by if s == "no_profile" and ("spul", c) in by):
        loss = 1 - _ratio(by[("spul", clients)]["tokens_per_s"], by[("no_profile", clients)]["tokens_per_s"])
        out.append(
            {
                "name": f"throughput loss vs no profile at {clients} clients (cache on)",
                "value": round(loss, 3),
                "goal": "<= 0.05",
                "met": loss <= 0.05,
            }
        )
    if ("spul", 8) in by:
        row = by[("spul", 8)]
        ratio = _ratio(row["ttft_p99_ms"], row["ttft_p50_ms"])
        out.append({"name": "TTFT p99 / p50 at 8 clients", "value": ratio, "goal": "<= 3", "met": ratio <= 3})
    if many_profiles and "throughput_ratio" in many_profiles:
        ratio = many_profiles["throughput_ratio"]
        out.append(
            {
                "name": f"tokens/s with {many_profiles['profiles']} profiles / with 1",
                "value": ratio,
                "goal": ">= 0.95 (noise)",
                "met": ratio >= 0.95,
            }
        )
        hot = many_profiles.get("hot_throughput_ratio")
        if hot is not None:
            out.append(
                {
                    "name": f"tokens/s with {many_profiles['profiles']} resident, traffic on 8 / with 1",
                    "value": hot,
                    "goal": ">= 0.95 (noise)",
                    "met": hot >= 0.95,
                }
            )
    return out


def _ratio(a: float, b: float) -> float:
    if not b or math.isnan(a) or math.isnan(b):
        return math.nan
    return round(a / b, 3)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.4g}" if abs(value) < 1000 else f"{value:.0f}"
    return "" if value is None else str(value)
