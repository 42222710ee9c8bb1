"""`spul train`: train a SPUL soft prompt on a world task and export the computed (P, H) prompt."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from spul.commands.eval import add_world_args, open_inputs, read_splits

TRAIN_EVAL_SPLITS = ["train_forget", "train_retain", "test_forget", "test_retain"]
HELP = {
    "num_virtual_tokens": "soft-prompt length P",
    "encoder_hidden_size": "hidden width of the P-tuning MLP encoder",
    "alpha": "weight of the retain cross-entropy L_r",
    "beta": "weight of KL(original || prompted) on retain answers",
    "lr": "AdamW learning rate",
    "weight_decay": "AdamW weight decay",
    "warmup_ratio": "fraction of steps of linear warm-up before the cosine decay",
    "max_grad_norm": "gradient clipping norm",
    "steps": "optimizer steps",
    "forget_per_batch": "forget rows per batch (drawn with replacement)",
    "retain_per_batch": "retain rows per batch (drawn with replacement)",
    "generic_labels": "comma-separated generic answers for forget rows (default: the world's)",
    "seed": "seed of the prompt init and the batch sampling",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train", help="train a SPUL soft prompt for one task of a world")
    add_world_args(parser)
    parser.add_argument("--out", type=Path, required=True, help="artifact to write (.safetensors)")
    parser.add_argument("--store", type=Path, help="also publish the artifact to this prompt store")
    parser.add_argument("--profile", help="profile id in the store (and in the artifact's metadata)")
    parser.add_argument("--eval-batch-size", type=int, default=64, help="rows per batch in the final eval")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    hyper = parser.add_argument_group("hyper-parameters (SpulConfig)")
    from spul.trainer.spul_config import SpulConfig  # torch-free: keeps `spul --help` fast

    for f in dataclasses.fields(SpulConfig):
        kind = str if f.name == "generic_labels" else type(f.default)
        hyper.add_argument(f"--{f.name.replace('_', '-')}", dest=f"hp_{f.name}", type=kind, default=None,
                           metavar=kind.__name__.upper(), help=f"{HELP.get(f.name, '')} (default: {f.default})")
    parser.set_defaults(func=run)


def build_config(args: argparse.Namespace) -> Any:
    from spul.errors import UserError
    from spul.trainer.spul_config import SpulConfig

    overrides = {k[3:]: v for k, v in vars(args).items() if k.startswith("hp_") and v is not None}
    if "generic_labels" in overrides:
        overrides["generic_labels"] = tuple(x.strip() for x in overrides["generic_labels"].split(","))
    try:
        return SpulConfig(**overrides)
    except ValueError as err:
        raise UserError(str(err)) from err


def check_destination(args: argparse.Namespace) -> None:
    """Refuse bad store options before hours of training, and before anything is written."""
    from spul.errors import UserError
    from spul.prompts_store import validate_profile_id

    if args.store is not None and args.profile is None:
        raise UserError("--store needs --profile (the profile id to publish under)")
    if args.profile is not None:
        validate_profile_id(args.profile)  # InvalidProfileId is a StoreError: one line, exit 2
    if args.out.exists() and args.out.is_dir():
        raise UserError(f"--out {args.out} is a directory; pass a file path ending in .safetensors")
    if args.eval_batch_size < 1:
        raise UserError("--eval-batch-size must be >= 1")


def run(args: argparse.Namespace) -> int:
    from spul.errors import UserError
    from spul.trainer.evaluate import evaluate_splits, format_table
    from spul.trainer.spul import train_prompt

    config = build_config(args)
    check_destination(args)
    world, base = open_inputs(args)
    data = read_splits(world, args.task, TRAIN_EVAL_SPLITS)
    try:
        result = train_prompt(base.model, base.tokenizer, data["train_forget"], data["train_retain"],
                              config=config, generic_labels=world.generic_labels(args.task),
                              amp_dtype=base.autocast_dtype, progress=not args.no_progress)
    except (ValueError, FloatingPointError) as err:  # empty forget set, diverged loss, bad labels
        raise UserError(str(err)) from err
    prompts = {"original": None, "spul": result.prompt.to(base.device)}
    metrics = evaluate_splits(base.model, base.tokenizer, data, prompts, batch_size=args.eval_batch_size,
                              amp_dtype=base.autocast_dtype)
    print(format_table(metrics))
    export(args, base, result, metrics)
    print(f"trained in {result.seconds:.1f}s")
    return 0


def export(args: argparse.Namespace, base: Any, result: Any, metrics: dict[str, Any]) -> None:
    """Write the artifact, then (optionally) publish the very same bytes to the store."""
    from spul.prompts_store import PromptStore, model_fingerprint, save_artifact

    fingerprint = model_fingerprint(base.model, base.tokenizer)
    training_config = {**result.config.to_dict(), "task": args.task, "world": str(args.world),
                       "generic_labels": result.generic_labels, "train_seconds": round(result.seconds, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sha = save_artifact(args.out, result.prompt, profile=args.profile or args.task, base_model=base.name,
                        base_fingerprint=fingerprint, training_config=training_config, eval_metrics=metrics)
    print(f"artifact written to {args.out} (sha256 {sha[:16]}...)")
    if args.store is not None:
        info = PromptStore(args.store).put(args.profile, args.out.read_bytes(), expected_fingerprint=fingerprint,
                                           expected_hidden_size=base.hidden_size)
        print(f"published as {info.profile} v{info.version} in {args.store} (active)")
