"""`spul report`: every unlearning method on one world and task -> report.json, report.md, tradeoff.png."""

from __future__ import annotations

import argparse
from pathlib import Path

TASK_CHOICES = ("sentiment", "qa")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report",
        help="compare SPUL with fine-tuning baselines, retraining and ICUL on a world",
        description="Train and score original, spul, ga, rl, ga_kl, ga_gd, retrain and icul on one task of a "
        "reference world; write OUT/report.json, OUT/report.md and OUT/tradeoff.png.",
    )
    add_common_args(parser)
    parser.add_argument("--prompt", type=Path, help="use this SPUL artifact instead of training one")
    parser.add_argument(
        "--retrain-model",
        type=Path,
        help="cache dir of the retrained gold model, shared by both tasks (default: OUT/retrain-model)",
    )
    parser.add_argument("--progress", action="store_true", help="show training progress bars")
    parser.set_defaults(func=run)


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--world", type=Path, required=True, help="world directory (`spul world build`)")
    parser.add_argument("--task", choices=TASK_CHOICES, required=True)
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument(
        "--quick", action="store_true", help="reduced budgets (smoke test; numbers not meaningful)"
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument(
        "--threads",
        type=int,
        help="CPU threads for torch (tiny models: 1 is often fastest "
        "on shared cores; default: torch's choice)",
    )


def load_config(args: argparse.Namespace):
    """The report budgets (quick or full); also applies --threads."""
    import torch

    from spul.errors import UserError
    from spul.trainer.report import ReportConfig

    if args.threads is not None:
        if args.threads < 1:
            raise UserError("--threads must be >= 1")
        torch.set_num_threads(args.threads)
    return ReportConfig.quick() if args.quick else ReportConfig()


def check_world(world: Path) -> None:
    from spul.errors import UserError

    if not (world / "world.json").is_file():
        raise UserError(
            f"{world} is not a world directory (no world.json); create one with `spul world build`"
        )


def run(args: argparse.Namespace) -> int:
    from spul.errors import UserError
    from spul.models import ModelLoadError
    from spul.trainer.data import DataError
    from spul.trainer.report import run_report

    check_world(args.world)
    if args.prompt is not None and not args.prompt.is_file():
        raise UserError(
            f"--prompt {args.prompt} does not exist; train one with `spul train` or omit --prompt"
        )
    try:
        report = run_report(
            args.world,
            args.task,
            args.out,
            config=load_config(args),
            prompt_path=args.prompt,
            retrain_dir=args.retrain_model,
            device=args.device,
            progress=args.progress,
        )
    except (DataError, ModelLoadError) as err:
        raise UserError(str(err)) from err
    print((args.out / "report.md").read_text(encoding="utf-8"))
    print(f"checks: {report['checks']}")
    print(f"report written to {args.out} in {report['seconds']:.0f} s")
    return 0
