"""`spul world build`: write the reference world (data splits + base model) to a directory."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("world", help="build the reference world (data + base model)")
    sub = parser.add_subparsers(dest="world_command", metavar="ACTION", required=True)
    build = sub.add_parser("build", help="generate the two tasks' splits and train the base model",
                           description="Write OUT/world.json, OUT/data/<task>/ (one data directory per task, "
                           "readable with --data: docs/data-format.md) and OUT/model/.")
    build.add_argument("--out", type=Path, required=True, help="directory to create")
    build.add_argument("--size", choices=("default", "small"), default="default",
                       help="'small' builds in seconds, for tests (default: %(default)s)")
    build.add_argument("--seed", type=int, default=0, help="the world is a pure function of the seed")
    build.add_argument("--train-model", action="store_true",
                       help="train the base model from scratch even when the data is the shipped reference "
                       "build's (then the build copies that model in seconds); takes ~10 min on one idle core, "
                       "and the weights depend on the CPU's kernels (README: The reference world)")
    build.add_argument("--no-progress", action="store_true",
                       help="no progress bar (on a terminal) / progress log lines (otherwise)")
    build.set_defaults(func=run_build)


def run_build(args: argparse.Namespace) -> int:
    from spul.errors import UserError
    from spul.trainer.world import build_world, load_world  # heavy: torch + transformers

    try:
        out = build_world(args.out, size=args.size, seed=args.seed, progress=not args.no_progress,
                          train_model=args.train_model)
    except (ValueError, FileExistsError) as err:
        raise UserError(str(err)) from err
    source = load_world(out).manifest.get("model_source", "trained")
    how = "the shipped reference build's base model" if source == "shipped" else "a base model trained here"
    print(f"world written to {out} ({how})")
    return 0
