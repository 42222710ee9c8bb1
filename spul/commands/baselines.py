"""`spul baselines`: fine-tuning unlearning (GA, RL, GA+KL, GA+GD) on copies of the base model."""

from __future__ import annotations

import argparse

from spul.commands.report import add_common_args, prepare


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "baselines",
        help="run the fine-tuning unlearning baselines (lr searched on train splits)",
        description="Unlearn the data's forget set with ga, rl, ga_kl and ga_gd on copies of the base model; "
        "save each model to OUT/<method>/ and scores to OUT/report.json, OUT/report.md.",
    )
    add_common_args(parser)
    parser.add_argument("--no-save", action="store_true", help="do not save the unlearned models")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from spul.commands import _args
    from spul.errors import UserError
    from spul.models import ModelLoadError
    from spul.trainer.data import DataError
    from spul.trainer.report import run_baselines

    data, config = prepare(args)
    try:
        report = run_baselines(
            data,
            args.out,
            base_model=_args.base_model_ref(args, data),
            config=config,
            device=args.device,
            save_models=not args.no_save,
            progress=not args.no_progress,
        )
    except (DataError, ModelLoadError) as err:
        raise UserError(str(err)) from err
    print((args.out / "report.md").read_text(encoding="utf-8"))
    print(f"written to {args.out} in {report['seconds']:.0f} s")
    return 0
