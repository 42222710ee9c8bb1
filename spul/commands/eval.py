"""`spul eval`: accuracy and weighted F1 per split, for the original model and with a soft prompt."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from spul.commands import _args


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="score the base model, with and without a soft prompt, on every split of the data",
        description="Greedy answers on every split present (train_forget, train_retain, test_forget, "
        "test_retain, paraphrase), scored by data.json's match rule (exact, or contains for free-form "
        "answers); the table is printed and written as JSON.",
    )
    _args.add_data_args(parser)
    parser.add_argument("--prompt", type=Path, help="prompt artifact (.safetensors); omit to score the original only")
    parser.add_argument("--report", type=Path, required=True, help="where to write the JSON report")
    parser.add_argument("--batch-size", type=int, default=64, help="rows per generation batch")
    _args.add_machine_args(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from spul.errors import UserError
    from spul.prompts_store import load_artifact, model_fingerprint
    from spul.trainer.data import EVAL_SPLITS
    from spul.trainer.evaluate import evaluate_splits, format_table, write_report

    if args.batch_size < 1:
        raise UserError("--batch-size must be >= 1")
    if args.prompt is not None and not args.prompt.is_file():
        raise UserError(f"--prompt {args.prompt} does not exist; train one with `spul train` or omit --prompt")
    data = _args.read_data(args, require=EVAL_SPLITS)
    _args.set_threads(args)
    base = _args.load_base(args, data)
    prompts: dict[str, Any] = {"original": None}
    if args.prompt is not None:
        fingerprint = model_fingerprint(base.model, base.tokenizer)
        artifact = load_artifact(args.prompt, expected_fingerprint=fingerprint, expected_hidden_size=base.hidden_size)
        prompts["spul"] = artifact.embeddings.float().to(base.device)
    results = evaluate_splits(base.model, base.tokenizer, dict(data.splits), prompts, batch_size=args.batch_size,
                              match=data.meta.match, chat_template=data.meta.chat_template,
                              max_new_tokens=data.meta.max_new_tokens, amp_dtype=base.autocast_dtype,
                              progress=not args.no_progress)
    write_report(args.report, data.name, results, meta=data.meta, data_dir=data.root)
    print(format_table(results))
    print(f"scoring: {data.meta.match} match; report written to {args.report}")
    return 0
