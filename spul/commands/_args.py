"""Arguments shared by `spul train`, `eval`, `report`, `baselines`: the data, the base model, the machine.

The data is ``--data DIR`` (the user's own: docs/data-format.md) or the shorthand ``--world WORLD
--task T`` (= ``--data WORLD/data/T --base WORLD/model``). Everything here is torch-free at import,
so `spul --help` stays instant.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any

from spul.errors import UserError

log = logging.getLogger("spul")

THREADS_HELP = (
    "CPU threads for torch (default: chosen from the machine and stated in the log: 1 with <= 2 cores "
    "or when the load average leaves fewer than 2 cores idle, else the idle cores, at most 8; measured "
    "on 2 busy cores, a SPUL step of the reference model took 1.5 s with 1 thread and 13-21 s with 2)"
)


def add_data_args(parser: argparse.ArgumentParser) -> None:
    """--data DIR | --world WORLD --task T, and --base MODEL."""
    group = parser.add_argument_group("data (--data DIR, or --world WORLD --task TASK)")
    group.add_argument("--data", type=Path, metavar="DIR",
                       help="your data: DIR/train_forget.jsonl, train_retain.jsonl, test_forget.jsonl, "
                       "test_retain.jsonl (rows {\"prompt\", \"answer\"}), optional paraphrase.jsonl and "
                       "data.json; or a `datasets` save_to_disk directory (docs/data-format.md)")
    group.add_argument("--world", type=Path, metavar="WORLD",
                       help="a reference world (`spul world build`): shorthand for --data WORLD/data/TASK "
                       "--base WORLD/model")
    group.add_argument("--task", metavar="TASK", help="the world's task, qa or sentiment (with --world)")
    group.add_argument("--base", metavar="MODEL",
                       help="base model: a Hugging Face model directory, hub id or named model; default: "
                       "base_model in DIR/data.json (WORLD/model with --world)")


def add_machine_args(parser: argparse.ArgumentParser, *, progress: bool = True) -> None:
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: cuda when available")
    parser.add_argument("--threads", type=int, metavar="N", help=THREADS_HELP)
    if progress:
        parser.add_argument("--no-progress", action="store_true",
                            help="no progress bar / progress log lines")


def data_label(args: argparse.Namespace) -> str:
    return str(args.data) if args.data is not None else f"{args.world} task {args.task}"


def read_data(args: argparse.Namespace, require: tuple[str, ...] = ()) -> Any:
    """The data the arguments name, checked; problems become one-line UserErrors."""
    from spul.trainer.data import WORLD_TASKS, DataError, read_data, read_world_task

    if (args.data is None) == (args.world is None):
        raise UserError("pass your data with --data DIR (or a reference world with --world WORLD --task TASK)")
    if args.data is not None and args.task is not None:
        raise UserError("--task goes with --world; with --data the directory is the task")
    if args.world is not None and args.task is None:
        raise UserError(f"--world needs --task (one of {', '.join(WORLD_TASKS)})")
    try:
        if args.data is not None:
            return read_data(args.data, require=require)
        return read_world_task(args.world, args.task, require=require)
    except DataError as err:
        raise UserError(str(err)) from err


def base_model_ref(args: argparse.Namespace, data: Any) -> str:
    ref = args.base or data.base_model
    if ref is None:
        raise UserError(f"no base model for {data.root}: pass --base MODEL (or set \"base_model\" in "
                        f"{data.root / 'data.json'})")
    return str(ref)


def load_base(args: argparse.Namespace, data: Any) -> Any:
    """Load the base model for ``data``; checks that a chat template exists when the data asks for one."""
    from spul.models import ModelLoadError, load_base_model

    try:
        base = load_base_model(base_model_ref(args, data), device=args.device)
    except ModelLoadError as err:
        raise UserError(str(err)) from err
    if data.meta.chat_template and not getattr(base.tokenizer, "chat_template", None):
        raise UserError(f"{data.root / 'data.json'} sets chat_template, but {base.name} has no chat template; "
                        "set \"chat_template\": false or use an instruct model")
    return base


def choose_threads(requested: int | None, *, cores: int | None = None,
                   load: float | None = None) -> tuple[int, str]:
    """The torch thread count and why: ``requested`` if given, else from the cores and the load."""
    if requested is not None:
        if requested < 1:
            raise UserError("--threads must be >= 1")
        return requested, "--threads"
    cores = cores if cores is not None else _cores()
    load = load if load is not None else load_average()
    idle = int(cores - load)
    if cores <= 2:
        return 1, f"{cores} cores"
    if idle < 2:
        return 1, f"{cores} cores, load {load:.1f}"
    return min(idle, 8), f"{cores} cores, load {load:.1f}"


def set_threads(args: argparse.Namespace) -> int:
    """Apply --threads (or the chosen default) to torch and say so."""
    import torch

    n, why = choose_threads(args.threads)
    torch.set_num_threads(n)
    log.info("torch threads: %d (%s; --threads N to change)", n, why)
    return n


def load_average() -> float:
    """The 1-minute load average (0.0 where the platform has none)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return 0.0


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1
