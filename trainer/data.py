"""Read a world directory (docs/design.md) and turn rows into left-padded token batches.

This reader relies only on the documented format (world.json, data/<task>/<split>.jsonl,
model/), not on `trainer.world` internals, so any directory in that format can be trained on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from spul.prompts_store.prepend import IGNORE_INDEX

TASKS = ("sentiment", "qa")
SPLITS = ("train_forget", "train_retain", "test_forget", "test_retain", "paraphrase")
DEFAULT_GENERIC_LABELS = {"sentiment": ["neutral"], "qa": ["unknown"]}
ROW_KEYS = ("id", "prompt", "answer")


class DataError(ValueError):
    """A world directory or data file that cannot be used; the message names the file (and line)."""


@dataclass(frozen=True)
class Row:
    id: str
    prompt: str
    answer: str
    entity: str = ""


def read_jsonl(path: Path) -> list[Row]:
    """Parse one split file; every problem is reported as `file:line: what is wrong`."""
    rows: list[Row] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read {path}: {err}") from err
    for lineno, line in enumerate(lines, start=1):
        if line.strip():
            rows.append(_parse_row(line, f"{path}:{lineno}"))
    return rows


def _parse_row(line: str, where: str) -> Row:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as err:
        raise DataError(f"{where}: not valid JSON ({err.msg}); each line must be one JSON object") from err
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object with keys {list(ROW_KEYS)}")
    missing = [k for k in ROW_KEYS if not isinstance(obj.get(k), str)]
    if missing:
        raise DataError(f"{where}: missing or non-string field(s) {missing}")
    if not obj["answer"].strip():
        raise DataError(f"{where}: empty answer")
    return Row(id=obj["id"], prompt=obj["prompt"], answer=obj["answer"], entity=str(obj.get("entity", "")))


@dataclass(frozen=True)
class WorldData:
    """A world directory opened for reading: manifest plus lazily read split files."""

    root: Path
    manifest: dict[str, Any]

    @property
    def model_dir(self) -> Path:
        return self.root / "model"

    def splits(self, task: str) -> list[str]:
        """The known splits present for `task`, in canonical order."""
        tdir = self._task_dir(task)
        return [s for s in SPLITS if (tdir / f"{s}.jsonl").is_file()]

    def rows(self, task: str, split: str) -> list[Row]:
        path = self._task_dir(task) / f"{split}.jsonl"
        if not path.is_file():
            raise DataError(f"{path} is missing; rebuild the world with `spul world build`")
        return read_jsonl(path)

    def generic_labels(self, task: str) -> list[str]:
        labels = (self.manifest.get("generic_labels") or {}).get(task) or DEFAULT_GENERIC_LABELS[task]
        if not isinstance(labels, list) or not all(isinstance(x, str) and x.strip() for x in labels):
            raise DataError(f"{self.root / 'world.json'}: generic_labels[{task!r}] must be a list of words")
        return labels

    def _task_dir(self, task: str) -> Path:
        if task not in TASKS:
            raise DataError(f"unknown task {task!r}; choose one of {list(TASKS)}")
        return self.root / "data" / task


def open_world(root: str | Path) -> WorldData:
    """Open a world directory; fails with a message saying how to create one."""
    root = Path(root)
    manifest_path = root / "world.json"
    if not manifest_path.is_file():
        raise DataError(f"{root} is not a world directory (no world.json); create one with `spul world build`")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{manifest_path}: not valid JSON ({err})") from err
    if not isinstance(manifest, dict):
        raise DataError(f"{manifest_path}: expected a JSON object")
    return WorldData(root=root, manifest=manifest)


# ---------------------------------------------------------------- tokenisation
@dataclass(frozen=True)
class Batch:
    input_ids: torch.Tensor  # (B, T) left-padded
    attention_mask: torch.Tensor  # (B, T)
    labels: torch.Tensor | None  # (B, T) answer + EOS ids, IGNORE_INDEX elsewhere

    def to(self, device: torch.device | str) -> Batch:
        labels = None if self.labels is None else self.labels.to(device)
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), labels)


def prompt_ids(tokenizer: Any, prompt: str) -> list[int]:
    # add_special_tokens: a BOS for tokenizers that use one (none for the world's word tokenizer)
    return list(tokenizer(prompt, add_special_tokens=True)["input_ids"])


def answer_ids(tokenizer: Any, answer: str) -> list[int]:
    """Answer tokens as they follow the prompt (leading space), without EOS."""
    return list(tokenizer(" " + answer, add_special_tokens=False)["input_ids"])


def encode_batch(tokenizer: Any, prompts: list[str], answers: list[str] | None = None) -> Batch:
    """Left-pad `prompt [+ answer + EOS]` rows; labels mark the answer and EOS tokens only.

    Left padding keeps every row's last prompt token at the end, so generation can continue all
    rows at once; positions come from the mask, so padding never shifts a row's positions.
    """
    seqs: list[list[int]] = []
    labels: list[list[int]] = []
    for i, prompt in enumerate(prompts):
        ids = prompt_ids(tokenizer, prompt)
        target: list[int] = []
        if answers is not None:
            target = answer_ids(tokenizer, answers[i]) + [tokenizer.eos_token_id]
        seqs.append(ids + target)
        labels.append([IGNORE_INDEX] * len(ids) + target)
    width = max(len(s) for s in seqs)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    input_ids = torch.tensor([[pad_id] * (width - len(s)) + s for s in seqs])  # (B, T)
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs])  # (B, T)
    if answers is None:
        return Batch(input_ids, mask, None)
    label_t = torch.tensor([[IGNORE_INDEX] * (width - len(x)) + x for x in labels])  # (B, T)
    return Batch(input_ids, mask, label_t)
