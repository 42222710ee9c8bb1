"""`spul train`: train a SPUL soft prompt on a data directory and export the computed (P, H) prompt."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import re
from pathlib import Path
from typing import Any

from spul.commands import _args

log = logging.getLogger("spul")

TRAIN_EVAL_SPLITS = ("train_forget", "train_retain", "test_forget", "test_retain")
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
    "generic_labels": "comma-separated generic answers for forget rows (default: generic_answers in data.json)",
    "retain_target": "what retain rows are trained to answer: 'gold' (the data's answers) or 'model' (the original "
                     "model's own greedy answers, generated once before training; keeps an instruct model's style)",
    "model_answer_tokens": "with --retain-target model: longest own answer generated per retain row",
    "matched_retain": "share of each batch's retain rows drawn among the retain prompts nearest (word overlap) "
                      "to the batch's forget prompts, i.e. the same questions about other entities (hard "
                      "negatives; on the knowledge task 0.5 forgot less at the same retain: docs/real-llm.md)",
    "seed": "seed of the prompt init and the batch sampling",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a SPUL soft prompt that makes the base model forget the data's forget set",
        description="Train a soft prompt on DIR/train_forget.jsonl (answered with a generic answer) and "
        "DIR/train_retain.jsonl (answered as before), evaluate it on every split, and write an artifact. "
        "Hyper-parameters default to the data's recommended settings (\"train\" in data.json; the "
        "reference world's tasks have them), else to the settings recommended for question answering.",
    )
    _args.add_data_args(parser)
    parser.add_argument("--out", type=Path, required=True, help="artifact to write (.safetensors)")
    parser.add_argument("--store", type=Path, help="also publish the artifact to this prompt store")
    parser.add_argument("--profile", help="profile id in the store (and in the artifact's metadata)")
    parser.add_argument("--eval-batch-size", type=int, default=64, help="rows per batch in the final eval")
    _args.add_machine_args(parser)
    hyper = parser.add_argument_group(
        "hyper-parameters (default: \"train\" in data.json, else the value shown)")
    from spul.trainer.spul_config import SpulConfig  # torch-free: keeps `spul --help` fast

    for f in dataclasses.fields(SpulConfig):
        kind = str if f.name == "generic_labels" else type(f.default)
        shown = "" if f.name == "generic_labels" else f" ({f.default})"
        hyper.add_argument(f"--{f.name.replace('_', '-')}", dest=f"hp_{f.name}", type=kind, default=None,
                           metavar=kind.__name__.upper(), help=f"{HELP.get(f.name, '')}{shown}")
    parser.set_defaults(func=run)


def build_config(args: argparse.Namespace, recommended: dict[str, Any] | None = None) -> Any:
    """SpulConfig from its defaults, then the data's recommended settings, then the flags given."""
    from spul.errors import UserError
    from spul.trainer.spul_config import SpulConfig

    overrides = {k[3:]: v for k, v in vars(args).items() if k.startswith("hp_") and v is not None}
    if "generic_labels" in overrides:
        overrides["generic_labels"] = tuple(x.strip() for x in overrides["generic_labels"].split(","))
    try:
        return SpulConfig(**{**(recommended or {}), **overrides})
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

    data = _args.read_data(args, require=TRAIN_EVAL_SPLITS)
    config = build_config(args, dict(data.meta.train))
    check_destination(args)
    threads = _args.set_threads(args)
    base = _args.load_base(args, data)
    log.info("training on %s (%d forget / %d retain rows): %d steps, lr %g, %d+%d rows per batch",
             _args.data_label(args), len(data.rows("train_forget")), len(data.rows("train_retain")),
             config.steps, config.lr, config.forget_per_batch, config.retain_per_batch)
    try:
        result = train_prompt(base.model, base.tokenizer, data.rows("train_forget"), data.rows("train_retain"),
                              config=config, generic_labels=list(data.meta.generic_answers),
                              chat_template=data.meta.chat_template, amp_dtype=base.autocast_dtype,
                              progress=not args.no_progress)
    except (ValueError, FloatingPointError) as err:  # empty forget set, diverged loss, bad labels
        raise UserError(str(err)) from err
    prompts = {"original": None, "spul": result.prompt.to(base.device)}
    splits = {s: data.rows(s) for s in TRAIN_EVAL_SPLITS}
    metrics = evaluate_splits(base.model, base.tokenizer, splits, prompts, batch_size=args.eval_batch_size,
                              match=data.meta.match, chat_template=data.meta.chat_template,
                              max_new_tokens=data.meta.max_new_tokens, amp_dtype=base.autocast_dtype,
                              progress=not args.no_progress)
    print(format_table(metrics))
    machine = {"threads": threads, "load_average": _args.load_average()}
    export(args, data, base, result, metrics, machine)
    print(f"trained in {result.seconds:.1f}s on {base.device} with {threads} torch thread(s), "
          f"load average {machine['load_average']:.1f} at the end")
    return 0


def profile_id(name: str) -> str:
    """A valid profile id made from the data's name (characters outside [A-Za-z0-9_.-] become '-')."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-_.")[:64]
    return cleaned or "profile"


def export(args: argparse.Namespace, data: Any, base: Any, result: Any, metrics: dict[str, Any],
           machine: dict[str, Any]) -> None:
    """Write the artifact, then (optionally) publish the very same bytes to the store."""
    from spul.prompts_store import PromptStore, model_fingerprint, save_artifact

    fingerprint = model_fingerprint(base.model, base.tokenizer)
    training_config = {**result.config.to_dict(), "task": data.name, "data": str(data.root),
                       "generic_labels": result.generic_labels, "match": data.meta.match,
                       "chat_template": data.meta.chat_template, "train_seconds": round(result.seconds, 1), **machine}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sha = save_artifact(args.out, result.prompt, profile=args.profile or profile_id(data.name), base_model=base.name,
                        base_fingerprint=fingerprint, training_config=training_config, eval_metrics=metrics)
    print(f"artifact written to {args.out} (sha256 {sha[:16]}...)")
    if args.store is not None:
        info = PromptStore(args.store).put(args.profile, args.out.read_bytes(), expected_fingerprint=fingerprint,
                                           expected_hidden_size=base.hidden_size)
        print(f"published as {info.profile} v{info.version} in {args.store} (active)")
