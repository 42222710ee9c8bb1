"""Run the benchmark suites and write JSON plus a markdown table (what `spul bench` calls)."""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from spul.benchmarks.models import prepare_model, write_profiles
from spul.benchmarks.report import git_revision, machine_info, markdown, targets
from spul.benchmarks.servers import thread_env
from spul.benchmarks.serving import SYSTEMS, ServingConfig, run_serving
from spul.jsonsafe import json_safe

log = logging.getLogger(__name__)

SUITES = ("serving", "train_step", "profiles")


@dataclass(frozen=True)
class BenchOptions:
    model: str = "speed-100m"  # "reference", "speed-100m" or a local model directory
    clients: Sequence[int] = (1, 8, 32, 64)
    requests: int = 64
    max_seconds: float = 120.0
    max_new_tokens: int = 16
    profiles: int = 8  # mixed-P profiles the serving benchmark spreads requests over
    many_profiles: int = 10_000  # the resident-profiles suite
    systems: Sequence[str] = SYSTEMS
    suites: Sequence[str] = SUITES
    server_threads: int | None = None  # torch threads of each server under test; None: its default
    workdir: Path | None = None  # default: a temporary directory, removed afterwards
    extra_request_fields: dict = field(default_factory=dict)
    long_prompt_tokens: int = 2000  # the long-prompt-during-decodes scenario; 0 skips it
    long_decodes: int = 16
    rounds: int = 1  # turns per system and client count, interleaved across systems
    long_before_s: float = 10.0  # steady-state decoding measured before the long prompt arrives
    cb_max_batch_tokens: int = 256  # transformers_cb's token budget per forward (spul's max_step_tokens: 256)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.suites) - set(SUITES))
        if unknown:
            raise ValueError(f"unknown suites {unknown}; choose from {list(SUITES)}")
        if self.requests < 1 or self.max_new_tokens < 1 or self.profiles < 1:
            raise ValueError("requests, max_new_tokens and profiles must be >= 1")
        if self.long_prompt_tokens < 0 or self.long_decodes < 1 or self.rounds < 1:
            raise ValueError("long_prompt_tokens must be >= 0, long_decodes and rounds >= 1")


def run_bench(options: BenchOptions) -> dict:
    """Run the chosen suites; returns the report dict (results, targets, machine, model, ...)."""
    if options.workdir is not None:
        return _run_in(options, Path(options.workdir))
    with tempfile.TemporaryDirectory(prefix="spul-bench-") as tmp:
        return _run_in(options, Path(tmp))


def _run_in(options: BenchOptions, workdir: Path) -> dict:
    model = prepare_model(options.model, workdir=workdir)
    report: dict = {
        "results": [],
        "machine": machine_info(),
        "model": {**asdict(model), "path": str(model.path)},
        "settings": _settings(options),
        "git_revision": git_revision(),
    }
    if "serving" in options.suites:
        store = workdir / "store"
        profiles = write_profiles(store, model.path, count=options.profiles)
        config = ServingConfig(
            model=model,
            store=store,
            profiles=profiles,
            workdir=workdir / "logs",
            clients=options.clients,
            requests=options.requests,
            max_seconds=options.max_seconds,
            max_new_tokens=options.max_new_tokens,
            systems=options.systems,
            server_env=thread_env(options.server_threads),
            server_threads=options.server_threads,
            extra_request_fields=options.extra_request_fields,
            long_prompt_tokens=options.long_prompt_tokens,
            long_decodes=options.long_decodes,
            long_before_s=options.long_before_s,
            rounds=options.rounds,
            cb_max_batch_tokens=options.cb_max_batch_tokens,
        )
        report["results"], report["long_prompt"] = run_serving(config)
        report["machine"]["load_average_after_serving"] = machine_info().get("load_average")
    if "train_step" in options.suites:
        from spul.benchmarks.train_step import run_train_step

        report["train_step"] = run_train_step(model.path)
    if "profiles" in options.suites:
        from spul.benchmarks.profiles import run_many_profiles

        report["many_profiles"] = run_many_profiles(
            model,
            workdir=workdir / "many",
            count=options.many_profiles,
            max_new_tokens=options.max_new_tokens,
            max_seconds=options.max_seconds,
            server_env=thread_env(options.server_threads),
        )
    report["targets"] = targets(report["results"], report.get("many_profiles"), report.get("long_prompt"))
    return report


def _settings(options: BenchOptions) -> dict:
    from spul.benchmarks.serving import NO_CACHE_ENV, SERVER_ENV, spul_settings

    out = {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in asdict(options).items()}
    out["workdir"] = str(options.workdir) if options.workdir else None
    out["server_env"] = SERVER_ENV
    out["no_cache_env"] = NO_CACHE_ENV
    out["spul_settings"] = spul_settings()
    return out


def write_report(report: dict, json_path: Path) -> Path:
    """Write the JSON and the markdown table next to it (same name, .md); returns the .md path."""
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(json_safe(report), indent=2, sort_keys=False) + "\n")
    md_path = json_path.with_suffix(".md")
    md_path.write_text(markdown(report))
    return md_path
