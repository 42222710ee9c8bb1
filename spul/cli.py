"""`spul` entry point: one sub-command module per job under `spul/commands/`.

Each module defines ``register(subparsers)``, which adds its parser(s) and sets ``func`` to a
function taking the parsed arguments and returning an exit code. Heavy imports (torch,
transformers, fastapi) happen inside those functions so `spul --help` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

COMMAND_MODULES = ("world", "train", "eval", "baselines", "report", "serve", "client", "peft", "bench")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spul",
        description="Make a deployed language model forget chosen data with SPUL soft prompts.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"spul.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from spul.errors import UserError
    from spul.prompts_store import ArtifactError, StoreError

    try:
        return int(args.func(args) or 0)
    except (UserError, ArtifactError, StoreError) as err:
        print(f"spul {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
