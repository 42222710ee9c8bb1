"""Unlearning data: read a data directory into typed rows, and turn rows into token batches.

A data directory DIR (docs/data-format.md) holds one JSONL file per split plus an optional
``data.json`` of metadata:

    DIR/data.json             {"format": 1, "name", "generic_answers", "match", "chat_template",
                               "max_new_tokens", "base_model", "forget_entities", "train"}  (all optional)
    DIR/train_forget.jsonl    required for training
    DIR/train_retain.jsonl    required for training
    DIR/test_forget.jsonl     required for evaluation
    DIR/test_retain.jsonl     required for evaluation
    DIR/paraphrase.jsonl      optional: held-out phrasings of forget rows

Each line is ``{"prompt": str, "answer": str, "id": str (optional), "entity": str (optional)}``.
DIR may instead be a Hugging Face ``datasets`` DatasetDict saved with ``save_to_disk`` whose split
names are the above. The reference world is one producer: ``WORLD/data/<task>/`` is such a
directory, and :func:`read_world_task` opens it from the ``--world WORLD --task T`` shorthand.

Every error is a :class:`DataError` whose message names the file (and line, or split and row)
and says what is wrong.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from spul.prompts_store.prepend import IGNORE_INDEX

FORMAT = 1
DATA_FILE = "data.json"
SPLITS = ("train_forget", "train_retain", "test_forget", "test_retain", "paraphrase")
TRAIN_SPLITS = ("train_forget", "train_retain")
EVAL_SPLITS = ("test_forget", "test_retain")
MATCH_RULES = ("exact", "contains")
DEFAULT_GENERIC_ANSWERS = ("unknown",)
CONTAINS_MAX_NEW_TOKENS = 32  # default generation budget under the contains rule (free-form answers)
# The reference world's tasks and the generic answer each one's forget rows are trained towards.
WORLD_TASKS = ("sentiment", "qa")
WORLD_GENERIC_ANSWERS = {"sentiment": ("neutral",), "qa": ("unknown",)}
# The SPUL settings recommended per world task (the shipped demo profiles were trained with them;
# spul/reference/manifest.json records the full configs). Written into WORLD/data/<task>/data.json.
WORLD_TRAIN_SETTINGS: dict[str, dict[str, Any]] = {
    "qa": {"steps": 400, "lr": 0.003, "forget_per_batch": 16, "retain_per_batch": 48},
    "sentiment": {"steps": 600, "lr": 0.01, "forget_per_batch": 32, "retain_per_batch": 32},
}
ROW_FIELDS = ("prompt", "answer")  # required; "id" and "entity" are optional


class DataError(ValueError):
    """Data that cannot be used; the message names the file (and line) and what is wrong."""


@dataclass(frozen=True)
class Row:
    id: str
    prompt: str
    answer: str
    entity: str = ""


@dataclass(frozen=True)
class DataMeta:
    """The metadata of a data directory (``data.json``); every field has a default."""

    name: str = ""
    generic_answers: tuple[str, ...] = DEFAULT_GENERIC_ANSWERS  # what forget rows are trained towards
    match: str = "exact"  # "exact" | "contains": how a generation is scored against the gold answer
    chat_template: bool = False  # wrap prompts in the tokenizer's chat template (instruct models)
    max_new_tokens: int | None = None  # generation budget; None: longest gold answer + 1 (exact), 32 (contains)
    base_model: str | None = None  # default base model: a path relative to the data dir, or a hub id
    forget_entities: tuple[str, ...] = ()  # empty: the entities of train_forget rows
    train: Mapping[str, Any] = field(default_factory=dict)  # recommended SpulConfig settings for this data

    def __post_init__(self) -> None:
        if self.match == "contains" and self.max_new_tokens is None:  # free-form answers need room
            object.__setattr__(self, "max_new_tokens", CONTAINS_MAX_NEW_TOKENS)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["format"] = FORMAT
        out["generic_answers"] = list(self.generic_answers)
        out["forget_entities"] = list(self.forget_entities)
        out["train"] = dict(self.train)
        return out


@dataclass(frozen=True)
class UnlearningData:
    """One data directory, read and checked: metadata plus the rows of every split present."""

    root: Path
    meta: DataMeta
    splits: Mapping[str, list[Row]] = field(default_factory=dict)  # present splits, canonical order

    @property
    def name(self) -> str:
        return self.meta.name or self.root.name

    def rows(self, split: str) -> list[Row]:
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}; splits are {list(SPLITS)}")
        if split not in self.splits:
            raise DataError(f"{self.root}: split {split!r} is missing (expected {self.root / (split + '.jsonl')})")
        return self.splits[split]

    def require(self, names: Iterable[str]) -> None:
        """Fail naming every missing split at once."""
        missing = [s for s in names if s not in self.splits]
        if missing:
            files = ", ".join(f"{s}.jsonl" for s in missing)
            raise DataError(f"{self.root}: missing split(s) {missing}; add {files} (one JSON object per line "
                            "with \"prompt\" and \"answer\")")

    @property
    def base_model(self) -> str | None:
        """data.json's base_model: a path resolved against the data directory if one exists there."""
        ref = self.meta.base_model
        if ref is None:
            return None
        path = Path(os.path.normpath(ref if Path(ref).is_absolute() else self.root / ref))
        return str(path) if path.exists() or ref.startswith((".", "/")) else ref

    @property
    def world_dir(self) -> Path | None:
        """The reference world this directory belongs to (WORLD/data/<task>), if it is one's."""
        world = self.root.parent.parent
        return world if self.root.parent.name == "data" and (world / "world.json").is_file() else None

    @property
    def forget_entities(self) -> list[str]:
        if self.meta.forget_entities:
            return list(self.meta.forget_entities)
        return sorted({r.entity for r in self.splits.get("train_forget", []) if r.entity})


# ---------------------------------------------------------------- reading
def read_data(root: str | Path, *, require: Iterable[str] = ()) -> UnlearningData:
    """Read a data directory (JSONL files or a ``datasets`` save_to_disk dir); check ``require`` splits."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root} is not a directory; --data takes a directory holding train_forget.jsonl, "
                        "train_retain.jsonl, test_forget.jsonl, test_retain.jsonl (see docs/data-format.md)")
    meta = read_meta(root / DATA_FILE, default_name=root.name)
    if (root / "dataset_dict.json").is_file():
        splits = _read_datasets_dir(root)
    else:
        splits = {s: read_jsonl(root / f"{s}.jsonl", split=s) for s in SPLITS if (root / f"{s}.jsonl").is_file()}
    if not splits:
        raise DataError(f"{root}: no split files found; expected {', '.join(s + '.jsonl' for s in SPLITS[:4])} "
                        "(and optionally paraphrase.jsonl)")
    data = UnlearningData(root, meta, splits)
    data.require(require)
    return data


def read_meta(path: Path, *, default_name: str = "", defaults: DataMeta | None = None) -> DataMeta:
    """Parse ``data.json``; a missing file gives ``defaults`` (or the plain defaults)."""
    base = defaults or DataMeta(name=default_name)
    if not path.is_file():
        return base
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a JSON object")
    known = {f for f in DataMeta.__dataclass_fields__} | {"format"}
    unknown = sorted(set(obj) - known)
    if unknown:
        raise DataError(f"{path}: unknown key(s) {unknown}; known keys are {sorted(known)}")
    if obj.get("format", FORMAT) != FORMAT:
        raise DataError(f"{path}: format {obj['format']!r}; this version reads format {FORMAT}")
    values: dict[str, Any] = {}
    for key in ("name", "base_model"):
        if key in obj:
            values[key] = _check(path, key, obj[key], isinstance(obj[key], str) and obj[key].strip(), "a non-empty string")
    for key in ("generic_answers", "forget_entities"):
        if key in obj:
            ok = isinstance(obj[key], list) and all(isinstance(x, str) and x.strip() for x in obj[key])
            if key == "generic_answers":
                ok = ok and bool(obj[key])
            values[key] = tuple(_check(path, key, obj[key], ok, "a list of non-empty strings"))
    if "match" in obj:
        values["match"] = _check(path, "match", obj["match"], obj["match"] in MATCH_RULES, f"one of {list(MATCH_RULES)}")
    if "chat_template" in obj:
        values["chat_template"] = _check(path, "chat_template", obj["chat_template"],
                                         isinstance(obj["chat_template"], bool), "true or false")
    if "max_new_tokens" in obj:
        v = obj["max_new_tokens"]
        ok = v is None or (isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 4096)
        values["max_new_tokens"] = _check(path, "max_new_tokens", v, ok, "an integer in 1..4096 (or null)")
    if "train" in obj:
        values["train"] = _check_train(path, obj["train"])
    return DataMeta(**{**asdict(base), **values})


def _check_train(path: Path, train: Any) -> dict[str, Any]:
    """data.json's "train": SpulConfig settings (generic answers come from "generic_answers")."""
    from spul.trainer.spul_config import SpulConfig

    allowed = sorted(set(SpulConfig.__dataclass_fields__) - {"generic_labels"})
    if not isinstance(train, dict):
        raise DataError(f"{path}: 'train' must be an object of SPUL settings ({', '.join(allowed)})")
    unknown = sorted(set(train) - set(allowed))
    if unknown:
        raise DataError(f"{path}: unknown 'train' setting(s) {unknown}; known: {allowed}")
    try:
        SpulConfig(**train)
    except (TypeError, ValueError) as err:
        raise DataError(f"{path}: 'train': {err}") from err
    return dict(train)


def _check(path: Path, key: str, value: Any, ok: Any, what: str) -> Any:
    if not ok:
        raise DataError(f"{path}: {key!r} must be {what}, got {value!r}")
    return value


def read_jsonl(path: Path, *, split: str | None = None) -> list[Row]:
    """Parse one split file; every problem is reported as ``file:line: what is wrong``."""
    split = split or path.stem
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read {path}: {err}") from err
    rows: list[Row] = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{where}: not valid JSON ({err.msg}); each line must be one JSON object") from err
        rows.append(parse_row(obj, where, default_id=f"{split}/{len(rows)}"))
    return rows


def parse_row(obj: Any, where: str, *, default_id: str) -> Row:
    """One row from a JSON object (or a ``datasets`` record); ``where`` locates it in errors."""
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object with fields \"prompt\" and \"answer\"")
    missing = [k for k in ROW_FIELDS if k not in obj or obj[k] is None]
    if missing:
        raise DataError(f"{where}: missing field(s) {missing}; each row needs \"prompt\" and \"answer\"")
    wrong = [k for k in (*ROW_FIELDS, "id", "entity") if obj.get(k) is not None and not isinstance(obj[k], str)]
    if wrong:
        raise DataError(f"{where}: field(s) {wrong} must be strings")
    if not obj["answer"].strip():
        raise DataError(f"{where}: empty \"answer\"")
    return Row(id=obj.get("id") or default_id, prompt=obj["prompt"], answer=obj["answer"],
               entity=obj.get("entity") or "")


def _read_datasets_dir(root: Path) -> dict[str, list[Row]]:
    """Splits of a DatasetDict written by ``save_to_disk`` (columns prompt, answer[, id, entity])."""
    try:
        import datasets  # optional dependency: only this format needs it
    except ImportError as err:
        raise DataError(f"{root} is a Hugging Face datasets directory (dataset_dict.json); reading it needs "
                        "the datasets library: pip install datasets (or convert the splits to JSONL)") from err
    try:
        dd = datasets.load_from_disk(str(root))
    except Exception as err:  # the library raises many kinds; all mean "unreadable"
        raise DataError(f"{root}: datasets.load_from_disk failed: {err}") from err
    if not isinstance(dd, datasets.DatasetDict):
        raise DataError(f"{root}: expected a DatasetDict with splits {list(SPLITS)}, found a single Dataset")
    unknown = sorted(set(dd) - set(SPLITS))
    if unknown:
        raise DataError(f"{root}: unknown split(s) {unknown}; split names are {list(SPLITS)}")
    out: dict[str, list[Row]] = {}
    for split in SPLITS:
        if split in dd:
            out[split] = [parse_row(rec, f"{root} split {split} row {i}", default_id=f"{split}/{i}")
                          for i, rec in enumerate(dd[split])]
    return out


# ---------------------------------------------------------------- the reference world as a producer
def world_data_dir(world: str | Path, task: str) -> Path:
    return Path(world) / "data" / task


def world_meta(task: str, manifest: Mapping[str, Any] | None = None) -> DataMeta:
    """The data.json of one reference-world task (from its manifest when given)."""
    manifest = manifest or {}
    generic = (manifest.get("generic_labels") or {}).get(task) or WORLD_GENERIC_ANSWERS.get(task, DEFAULT_GENERIC_ANSWERS)
    forget = (manifest.get("forget_entities") or {}).get(task) or ()
    return DataMeta(name=task, generic_answers=tuple(generic), match="exact", chat_template=False,
                    base_model="../../model", forget_entities=tuple(forget),
                    train=dict(WORLD_TRAIN_SETTINGS.get(task, {})))


def write_meta(root: Path, meta: DataMeta) -> None:
    (root / DATA_FILE).write_text(json.dumps(meta.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")


def read_world_task(world: str | Path, task: str, *, require: Iterable[str] = ()) -> UnlearningData:
    """``--world WORLD --task T``: read WORLD/data/T (a world built before data.json existed works too)."""
    world = Path(world)
    manifest_path = world / "world.json"
    if not manifest_path.is_file():
        raise DataError(f"{world} is not a world directory (no world.json); create one with `spul world build`, "
                        "or pass your own data with --data DIR")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{manifest_path}: not valid JSON ({err})") from err
    tasks = list(manifest.get("tasks") or WORLD_TASKS)
    if task not in tasks:
        raise DataError(f"{world} has no task {task!r}; its tasks are {tasks}")
    root = world_data_dir(world, task)
    if not root.is_dir():
        raise DataError(f"{root} is missing; rebuild the world with `spul world build`")
    data = read_data(root)
    if not (root / DATA_FILE).is_file():  # a world written before data.json: its manifest says the rest
        data = UnlearningData(root, world_meta(task, manifest), data.splits)
    data.require(require)
    return data


# ---------------------------------------------------------------- tokenisation
@dataclass(frozen=True)
class Batch:
    input_ids: torch.Tensor  # (B, T) left-padded
    attention_mask: torch.Tensor  # (B, T)
    labels: torch.Tensor | None  # (B, T) answer + EOS ids, IGNORE_INDEX elsewhere

    def to(self, device: torch.device | str) -> Batch:
        labels = None if self.labels is None else self.labels.to(device)
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), labels)


def render_chat(tokenizer: Any, prompt: str) -> str:
    """The prompt as the user turn of the tokenizer's chat template, ending with the assistant's cue."""
    if not getattr(tokenizer, "chat_template", None):
        raise DataError("the data asks for chat_template, but this model's tokenizer has no chat template; "
                        "set \"chat_template\": false in data.json or use an instruct model")
    messages = [{"role": "user", "content": prompt}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def prompt_ids(tokenizer: Any, prompt: str, *, chat_template: bool = False) -> list[int]:
    if chat_template:  # the template writes its own special tokens (BOS, role markers): add none
        return list(tokenizer(render_chat(tokenizer, prompt), add_special_tokens=False)["input_ids"])
    # add_special_tokens: a BOS for tokenizers that use one (none for the world's word tokenizer)
    return list(tokenizer(prompt, add_special_tokens=True)["input_ids"])


def answer_ids(tokenizer: Any, answer: str, *, chat_template: bool = False) -> list[int]:
    """Answer tokens as they follow the prompt, without EOS: after a space, or as the assistant's reply."""
    text = answer if chat_template else " " + answer
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_batch(tokenizer: Any, prompts: list[str], answers: list[str] | None = None, *,
                 chat_template: bool = False) -> Batch:
    """Left-pad `prompt [+ answer + EOS]` rows; labels mark the answer and EOS tokens only.

    The single encoding used by training and evaluation. Left padding keeps every row's last
    prompt token at the end, so generation can continue all rows at once; positions come from
    the mask, so padding never shifts a row's positions.
    """
    seqs: list[list[int]] = []
    labels: list[list[int]] = []
    for i, prompt in enumerate(prompts):
        ids = prompt_ids(tokenizer, prompt, chat_template=chat_template)
        target: list[int] = []
        if answers is not None:
            eos = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]  # some tokenizers have none
            target = answer_ids(tokenizer, answers[i], chat_template=chat_template) + eos
        seqs.append(ids + target)
        labels.append([IGNORE_INDEX] * len(ids) + target)
    width = max(len(s) for s in seqs)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    pad_id = 0 if pad_id is None else pad_id  # pads are masked out: any id will do
    input_ids = torch.tensor([[pad_id] * (width - len(s)) + s for s in seqs])  # (B, T)
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs])  # (B, T)
    if answers is None:
        return Batch(input_ids, mask, None)
    label_t = torch.tensor([[IGNORE_INDEX] * (width - len(x)) + x for x in labels])  # (B, T)
    return Batch(input_ids, mask, label_t)
