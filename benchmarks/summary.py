"""The figures the READMEs quote, regenerated from the result files (one per configuration).

    python -m spul.benchmarks.summary benchmarks/results

prints, for every serving result, its machine facts, the systems' tokens/s and latencies at
each client count, the decode step against the roofline, the long-prompt scenario and the
targets; and the resident-profiles and training-step figures where those files exist.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from spul.benchmarks.report import cell, loads

SERVING = ("tokens_per_s", "p99_ms", "ttft_p50_ms", "ttft_p99_ms", "itl_p99_ms")


def summarize(results_dir: Path) -> str:
    lines: list[str] = []
    for path in sorted(results_dir.glob("*-serving.json")):
        lines += _serving(path, json.loads(path.read_text()))
    for path in sorted(results_dir.glob("*.json")):
        report = json.loads(path.read_text())
        for key in ("many_profiles", "train_step"):
            if report.get(key):
                lines += [f"### `{path.name}`: {key} ({_facts(report)})", "", "| key | value |", "|---|---|"]
                lines += [f"| {k} | {cell(v)} |" for k, v in report[key].items() if not isinstance(v, (dict, list))]
                lines.append("")
    return "\n".join(lines)


def _facts(report: dict) -> str:
    machine = report["machine"]
    return f"git {report['git_revision'][:12]}, load {loads(machine.get('load_average'))}"


def _serving(path: Path, report: dict) -> list[str]:
    model = report["model"]
    settings = report.get("settings", {})
    lines = [
        f"### `{path.name}`: {model['name']} ({model['n_params'] / 1e6:.1f}M parameters)",
        "",
        (f"{_facts(report)} at start, {loads(report['machine'].get('load_average_after_serving'))} after; "
        f"{settings.get('max_new_tokens')} new tokens per request, server threads {settings.get('server_threads')}."),
        "",
    ]
    rows = report["results"]
    clients = sorted({r["clients"] for r in rows})
    header = ["system"] + [f"{c} cl. tok/s" for c in clients]
    top = clients[-1]
    header += [f"{name} at {top}" for name in SERVING[1:]]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    by = {(r["system"], r["clients"]): r for r in rows}
    for system in dict.fromkeys(r["system"] for r in rows):
        cells = [system] + [cell(by.get((system, c), {}).get("tokens_per_s")) for c in clients]
        cells += [cell(by.get((system, top), {}).get(name)) for name in SERVING[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    engine = [r for r in rows if "step_vs_roofline" in r and r["clients"] == top]
    if engine:
        lines += ["", f"| at {top} clients | mean batch | decode step ms | roofline ms | step / roofline |",
                  "|---|---|---|---|---|"]
        lines += [
            f"| {r['system']} | {cell(r['mean_batch'])} | {cell(r['decode_step_ms'])} | "
            f"{cell(r['roofline_ms'])} | {cell(r['step_vs_roofline'])} |"
            for r in engine
        ]
    if report.get("long_prompt"):
        lines += ["", "| long prompt | tokens | ITL p99 before ms | during ms | raise | its TTFT ms |",
                  "|---|---|---|---|---|---|"]
        lines += [
            f"| {r['system']} | {r['long_prompt_tokens']} | {cell(r.get('itl_p99_before_ms'))} | "
            f"{cell(r.get('itl_p99_during_ms'))} | {cell(r.get('itl_p99_raise'))} | {cell(r.get('long_ttft_ms'))} |"
            for r in report["long_prompt"]
        ]
    if report.get("targets"):
        lines += ["", "| target | measured | goal | met |", "|---|---|---|---|"]
        lines += [f"| {t['name']} | {cell(t['value'])} | {t['goal']} | {cell(t['met'])} |" for t in report["targets"]]
    return [*lines, ""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, nargs="?", default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    sys.stdout.write(summarize(args.results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
