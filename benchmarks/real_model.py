"""Costs of the real pretrained tier (a named model from spul.catalog) on this machine.

Measures, with the torch thread count given: the one-time GGUF conversion (into a fresh
temporary cache), a load by name from the cache, one greedy chat answer, and one SPUL training
step at a given batch size. Prints a table and writes JSON.

    python -m spul.benchmarks.real_model --json real-model.json [--threads 1] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

QUESTION = "What is the capital of France?"


def timed(fn: Callable[[], Any], repeats: int) -> tuple[list[float], Any]:
    seconds, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        seconds.append(time.perf_counter() - start)
    return seconds, out


def summary(seconds: list[float]) -> dict[str, Any]:
    return {"mean_s": statistics.mean(seconds), "sd_s": statistics.stdev(seconds) if len(seconds) > 1 else 0.0,
            "n": len(seconds), "all_s": [round(s, 3) for s in seconds]}


def measure(name: str, *, repeats: int, batch: int, convert: bool) -> dict[str, Any]:
    from spul.catalog import resolve_model
    from spul.models import load_base_model
    from spul.prompts_store import model_fingerprint
    from spul.trainer.data import Row
    from spul.trainer.spul import train_prompt
    from spul.trainer.spul_config import SpulConfig

    results: dict[str, Any] = {}
    if convert:
        with tempfile.TemporaryDirectory() as cache:
            os.environ["SPUL_MODEL_CACHE"] = cache
            start = time.perf_counter()
            resolve_model(name)
            results["conversion"] = summary([time.perf_counter() - start])
            del os.environ["SPUL_MODEL_CACHE"]
    resolve_model(name)  # the user cache: converted here if this machine never did
    seconds, base = timed(lambda: load_base_model(name, device="cpu"), repeats)
    results["cached_load"] = summary(seconds)
    seconds, fp = timed(lambda: model_fingerprint(base.model, base.tokenizer), repeats)
    results["fingerprint"] = {**summary(seconds), "value": fp}

    tok, model = base.tokenizer, base.model
    enc = tok.apply_chat_template([{"role": "user", "content": QUESTION}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)

    def answer() -> list[int]:
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=32, do_sample=False)
        return out[0, enc["input_ids"].shape[1]:].tolist()

    answer()  # warm-up
    seconds, new = timed(answer, repeats)
    results["greedy_chat_answer"] = {**summary(seconds), "tokens": len(new),
                                     "text": tok.decode(new, skip_special_tokens=True)}

    forget = [Row(f"f{i}", f"What is the capital of {c}?", f"The capital of {c} is {k}.")
              for i, (c, k) in enumerate([("France", "Paris"), ("Spain", "Madrid")])]
    retain = [Row(f"r{i}", f"What is the capital of {c}?", f"The capital of {c} is {k}.")
              for i, (c, k) in enumerate([("Germany", "Berlin"), ("Japan", "Tokyo"), ("Italy", "Rome")])]
    n_forget = max(1, batch // 4)
    config = SpulConfig(steps=1, forget_per_batch=n_forget, retain_per_batch=batch - n_forget)

    def step() -> float:  # one optimizer step (the encoder's set-up is negligible next to it)
        return train_prompt(model, tok, forget, retain, config=config, generic_labels=["I don't know."],
                            chat_template=True, progress=False).seconds

    step()  # warm-up
    seconds, _ = timed(step, repeats)
    results["spul_step"] = {**summary(seconds), "batch": batch, "forget_rows": n_forget,
                            "num_virtual_tokens": config.num_virtual_tokens, "beta": config.beta}
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8, help="rows per SPUL step (a quarter of them forget rows)")
    parser.add_argument("--no-convert", action="store_true", help="skip timing a fresh conversion")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    results = measure(args.model, repeats=args.repeats, batch=args.batch, convert=not args.no_convert)
    report = {"model": args.model, "threads": args.threads, "machine": platform.processor() or platform.machine(),
              "cores": os.cpu_count(), "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
              "torch": torch.__version__, "results": results}
    args.json.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    for key, value in results.items():
        print(f"{key:20s} {value['mean_s']:8.2f} s  sd {value['sd_s']:.2f}  (n={value['n']})")
    print(f"load average before {load_before[0]:.1f}, after {os.getloadavg()[0]:.1f}; wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
