"""`spul report`: every unlearning method on one data directory -> report.json, report.md, tradeoff.png."""

from __future__ import annotations

import argparse
from pathlib import Path

from spul.commands import _args


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report",
        help="compare SPUL with fine-tuning baselines, retraining and ICUL on the data",
        description="Train and score original, spul, ga, rl, ga_kl, ga_gd, icul (and, on a reference world, "
        "retrain) on the data; write OUT/report.json, OUT/report.md and OUT/tradeoff.png.",
    )
    add_common_args(parser)
    parser.add_argument("--prompt", type=Path, help="use this SPUL artifact instead of training one")
    parser.add_argument(
        "--retrain-model",
        type=Path,
        help="cache dir of the retrained gold model, shared by both world tasks (default: OUT/retrain-model)",
    )
    parser.set_defaults(func=run)


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """The data, --out, --quick and the machine options of `spul report` and `spul baselines`."""
    _args.add_data_args(parser)
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument(
        "--quick", action="store_true", help="reduced budgets (smoke test; numbers not meaningful)"
    )
    _args.add_machine_args(parser)


def prepare(args: argparse.Namespace):
    """Read the data and apply the thread count; returns (data, ReportConfig with the data's SPUL settings)."""
    from spul.trainer.data import EVAL_SPLITS, TRAIN_SPLITS
    from spul.trainer.report import ReportConfig
    from spul.trainer.spul_config import SpulConfig

    data = _args.read_data(args, require=TRAIN_SPLITS + EVAL_SPLITS)
    _args.set_threads(args)
    if args.quick:
        return data, ReportConfig.quick()
    return data, ReportConfig(spul=SpulConfig(**dict(data.meta.train)))  # SPUL as `spul train` trains it


def run(args: argparse.Namespace) -> int:
    from spul.errors import UserError
    from spul.models import ModelLoadError
    from spul.trainer.data import DataError
    from spul.trainer.report import checks_summary, run_report

    if args.prompt is not None and not args.prompt.is_file():
        raise UserError(
            f"--prompt {args.prompt} does not exist; train one with `spul train` or omit --prompt"
        )
    data, config = prepare(args)
    try:
        report = run_report(
            data,
            args.out,
            base_model=_args.base_model_ref(args, data),
            config=config,
            prompt_path=args.prompt,
            retrain_dir=args.retrain_model,
            device=args.device,
            progress=not args.no_progress,
        )
    except (DataError, ModelLoadError) as err:
        raise UserError(str(err)) from err
    print((args.out / "report.md").read_text(encoding="utf-8"))
    print(checks_summary(report["checks"]))
    print(f"report written to {args.out} in {report['seconds']:.0f} s")
    return 0
