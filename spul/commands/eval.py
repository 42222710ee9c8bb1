"""`spul eval`: accuracy and weighted F1 per split, for the original model and with a soft prompt."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

TASK_CHOICES = ("sentiment", "qa")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("eval", help="evaluate a soft prompt on a world's splits")
    add_world_args(parser)
    parser.add_argument("--prompt", type=Path, help="prompt artifact (.safetensors); omit to score the original only")
    parser.add_argument("--report", type=Path, required=True, help="where to write the JSON report")
    parser.add_argument("--batch-size", type=int, default=64, help="rows per generation batch")
    parser.set_defaults(func=run)


def add_world_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--world", type=Path, required=True, help="world directory (`spul world build`)")
    parser.add_argument("--task", choices=TASK_CHOICES, required=True)
    parser.add_argument("--base", help="base model dir or hub id (default: WORLD/model)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice; "
                        "1 is often faster on a busy machine)")


def open_inputs(args: argparse.Namespace) -> tuple[Any, Any]:
    """Open the world and load the base model; user-fixable problems become UserError."""
    from spul.errors import UserError
    from spul.models import ModelLoadError, load_base_model
    from spul.trainer.data import DataError, open_world

    if args.threads is not None:
        if args.threads < 1:
            raise UserError("--threads must be >= 1")
        import torch

        torch.set_num_threads(args.threads)
    try:
        world = open_world(args.world)
        world.splits(args.task)
        base = load_base_model(args.base or world.model_dir, device=args.device)
    except (DataError, ModelLoadError) as err:
        raise UserError(str(err)) from err
    return world, base


def read_splits(world: Any, task: str, names: list[str]) -> dict[str, Any]:
    from spul.errors import UserError
    from spul.trainer.data import DataError

    try:
        return {name: world.rows(task, name) for name in names}
    except DataError as err:
        raise UserError(str(err)) from err


def run(args: argparse.Namespace) -> int:
    from spul.errors import UserError
    from spul.prompts_store import load_artifact, model_fingerprint
    from spul.trainer.evaluate import evaluate_splits, format_table, write_report

    if args.batch_size < 1:
        raise UserError("--batch-size must be >= 1")
    world, base = open_inputs(args)
    splits = read_splits(world, args.task, world.splits(args.task))
    prompts: dict[str, Any] = {"original": None}
    if args.prompt is not None:
        fingerprint = model_fingerprint(base.model, base.tokenizer)
        artifact = load_artifact(args.prompt, expected_fingerprint=fingerprint, expected_hidden_size=base.hidden_size)
        prompts["spul"] = artifact.embeddings.float().to(base.device)
    results = evaluate_splits(base.model, base.tokenizer, splits, prompts, batch_size=args.batch_size,
                              amp_dtype=base.autocast_dtype)
    write_report(args.report, args.task, results)
    print(format_table(results))
    print(f"report written to {args.report}")
    return 0
