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
    budgets = parser.add_argument_group("budgets (default: sized for the reference world; shrink them for a real LLM)")
    budgets.add_argument("--lr-grid", type=_lr_list, metavar="LR,LR,...",
                         help="learning rates tried for each fine-tuning baseline (default: 1e-4,...,5e-3)")
    budgets.add_argument("--lr-retain-sample", type=int, metavar="N",
                         help="train_retain rows that score each baseline lr (default 200)")
    budgets.add_argument("--baseline-epochs", type=float, metavar="E",
                         help="passes over train_forget per baseline run (default 1, as the paper)")
    budgets.add_argument("--sweep-steps", type=int, metavar="N",
                         help="training steps of each extra SPUL (alpha, beta) point; 0 skips the sweep (default 150)")
    _args.add_machine_args(parser)


def _lr_list(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated learning rates, got {text!r}") from None


def prepare(args: argparse.Namespace):
    """Read the data and apply the thread count; returns (data, ReportConfig: the data's SPUL settings, budget flags)."""
    import dataclasses

    from spul.errors import UserError
    from spul.trainer.data import EVAL_SPLITS, TRAIN_SPLITS
    from spul.trainer.report import ReportConfig
    from spul.trainer.spul_config import SpulConfig

    data = _args.read_data(args, require=TRAIN_SPLITS + EVAL_SPLITS)
    _args.set_threads(args)
    config = ReportConfig.quick() if args.quick else ReportConfig(spul=SpulConfig(**dict(data.meta.train)))
    budgets = {"lr_grid": args.lr_grid, "lr_retain_sample": args.lr_retain_sample,
               "baseline_epochs": args.baseline_epochs, "sweep_steps": args.sweep_steps}
    budgets = {k: v for k, v in budgets.items() if v is not None}
    if budgets.get("sweep_steps") == 0:
        budgets["sweep"] = ()
    try:
        return data, dataclasses.replace(config, **budgets)
    except ValueError as err:
        raise UserError(f"bad budget: {err}") from err


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
