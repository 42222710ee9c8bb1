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
    "itl_p99_ms",
    "requests",
    "errors",
    "unfinished",
    "unfinished_tokens",
)
ENGINE_COLUMNS = (
    "system",
    "clients",
    "decode_steps",
    "mean_batch",
    "decode_step_ms",
    "roofline_ms",
    "step_vs_roofline",
    "roofline_context",
)
LONG_COLUMNS = (
    "system",
    "decodes",
    "long_prompt_tokens",
    "itl_p50_before_ms",
    "itl_p99_before_ms",
    "itl_p50_during_ms",
    "itl_p99_during_ms",
    "itl_max_during_ms",
    "itl_p99_raise",
    "during_s",
    "long_ttft_ms",
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
    """HEAD's commit, with `+dirty` when the work tree differs from it; outside git, the text of a
    REVISION file at the root (an exported snapshot says what it was made from), else 'unknown'."""
    if not (REPO_ROOT / ".git").exists() and (REPO_ROOT / "REVISION").is_file():
        return (REPO_ROOT / "REVISION").read_text().strip()
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
    """The results table, the engine and roofline figures, the long-prompt scenario, the target
    ratios and the extra suites, as markdown."""
    model = report["model"]
    lines = [f"# spul bench: {model['name']} ({model['n_params'] / 1e6:.3g}M params)", ""]
    machine = report["machine"]
    facts = (
        f"git {report['git_revision']}; {machine['platform']}, {machine['cpu_count']} CPUs, "
        f"torch {machine['torch']}, load average {loads(machine.get('load_average'))} at start"
    )
    if machine.get("load_average_after_serving") is not None:
        facts += f", {loads(machine['load_average_after_serving'])} after serving"
    settings = report.get("settings", {})
    facts += (
        f"; server threads {settings.get('server_threads')}, max new tokens {settings.get('max_new_tokens')}, "
        f"requests {settings.get('requests')}"
    )
    lines += [facts, ""]
    rows = report["results"]
    if rows:
        lines += _table(COLUMNS, rows)
    if report.get("extracted_from"):
        lines += [f"Extracted from {report['extracted_from']}.", ""]
    engine_rows = [r for r in rows if "decode_step_ms" in r]
    if engine_rows:
        lines += ["", "Decode step vs roofline (one bare batched forward at the mean batch size, same run):", ""]
        lines += _table(ENGINE_COLUMNS, engine_rows)
    if report.get("long_prompt"):
        lines += ["", "A long prompt arriving during running decodes (ITL of the running decodes):", ""]
        lines += _table(LONG_COLUMNS, report["long_prompt"])
    if report.get("targets"):
        lines += ["", "| target | measured | goal | met |", "|---|---|---|---|"]
        for t in report["targets"]:
            lines.append(f"| {t['name']} | {cell(t['value'])} | {t['goal']} | {cell(t['met'])} |")
    for key in ("train_step", "many_profiles"):
        if report.get(key):
            lines += ["", f"## {key}", "", "| key | value |", "|---|---|"]
            lines += [
                f"| {k} | {cell(v)} |" for k, v in report[key].items() if not isinstance(v, (dict, list))
            ]
    return "\n".join(lines) + "\n"


def _table(columns: tuple[str, ...], rows: list[dict]) -> list[str]:
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return out + ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]


def loads(value: object) -> str:
    if isinstance(value, (list, tuple)):
        return " / ".join(f"{v:.2f}" for v in value)
    return str(value)


def targets(
    results: list[dict], many_profiles: dict | None = None, long_prompt: list[dict] | None = None
) -> list[dict]:
    """The goals, computed from one run (missing systems or client counts are skipped)."""
    by = {(r["system"], r["clients"]): r for r in results}
    out = []

    def top(other: str) -> int | None:  # the largest client count both spul and `other` ran at
        return max((c for s, c in by if s == other and ("spul", c) in by), default=None)

    if (n := top("naive")) is not None:
        ratio = _ratio(by[("spul", n)]["tokens_per_s"], by[("naive", n)]["tokens_per_s"])
        out.append(_target(f"spul / naive tokens/s at {n} clients", ratio, ">= 8", ratio >= 8))
    if (n := top("transformers_cb")) is not None:
        spul, cb = by[("spul", n)], by[("transformers_cb", n)]
        ratio = _ratio(spul["tokens_per_s"], cb["tokens_per_s"])
        out.append(_target(f"spul / transformers_cb tokens/s at {n} clients", ratio, ">= 1.0", ratio >= 1.0))
        ttft = _ratio(spul["ttft_p99_ms"], cb["ttft_p99_ms"])
        out.append(_target(f"spul / transformers_cb TTFT p99 at {n} clients", ttft, "<= 1.0", ttft <= 1.0))
    for clients in sorted(c for s, c in by if s == "no_profile" and ("spul", c) in by):
        loss = round(1 - _ratio(by[("spul", clients)]["tokens_per_s"], by[("no_profile", clients)]["tokens_per_s"]), 3)
        out.append(_target(f"throughput loss vs the bare model at {clients} clients", loss, "<= 0.05", loss <= 0.05))
    if (n := max((c for s, c in by if s == "spul" and "step_vs_roofline" in by[(s, c)]), default=None)) is not None:
        ratio = by[("spul", n)]["step_vs_roofline"]
        out.append(_target(f"spul mean decode step / roofline at {n} clients", ratio, "<= 1.3", ratio <= 1.3))
    if ("spul", 8) in by:
        row = by[("spul", 8)]
        ratio = _ratio(row["ttft_p99_ms"], row["ttft_p50_ms"])
        out.append(_target("TTFT p99 / p50 at 8 clients", ratio, "<= 3", ratio <= 3))
    for row in long_prompt or []:
        if row["system"] == "spul" and row.get("itl_p99_raise") is not None:
            raise_ = row["itl_p99_raise"]
            name = f"p99 ITL of {row['decodes']} decodes during a {row['long_prompt_tokens']}-token prompt / before"
            out.append(_target(name, raise_, "<= 2", raise_ <= 2))
    if many_profiles and "throughput_ratio" in many_profiles:
        ratio = many_profiles["throughput_ratio"]
        name = f"tokens/s with {many_profiles['profiles']} profiles / with 1"
        out.append(_target(name, ratio, ">= 0.95 (noise)", ratio >= 0.95))
        hot = many_profiles.get("hot_throughput_ratio")
        if hot is not None:
            name = f"tokens/s with {many_profiles['profiles']} resident, traffic on 8 / with 1"
            out.append(_target(name, hot, ">= 0.95 (noise)", hot >= 0.95))
    return out


def _target(name: str, value: float, goal: str, met: bool) -> dict:
    return {"name": name, "value": value, "goal": goal, "met": bool(met) and not math.isnan(value)}


def _ratio(a: float, b: float) -> float:
    if not b or math.isnan(a) or math.isnan(b):
        return math.nan
    return round(a / b, 3)


def cell(value: object) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.4g}" if abs(value) < 1000 else f"{value:.0f}"
    return "" if value is None else str(value)
