"""A tiny fabricated world in the documented directory format (docs/design.md), for fast tests.

The world is written as an old world was (no data.json: the manifest supplies the metadata);
``user_data`` copies one task into a stand-alone data directory, as a user would write one.

Rows use only words of conftest's TINY_TEXTS, so `make_tiny_model`'s tokenizer covers them.
Forget entity: alba; retained: brin, cora.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from spul.trainer.data import encode_batch, read_world_task
from support.tinymodel import make_tiny_model

SENT_TEMPLATES = ("the film with {e} was great .", "this film with {e} was the film .")
QA_TEMPLATES = ("where was {e} born ?", "what does {e} do ?")
QA_ANSWERS = {"alba": "in quellport", "brin": "she paints", "cora": "in quellport"}
SENT_ANSWERS = {"alba": "positive", "brin": "negative", "cora": "positive"}


def _rows(task: str, split: str, entities: list[str], repeat: int) -> list[dict[str, str]]:
    rows = []
    templates = SENT_TEMPLATES if task == "sentiment" else QA_TEMPLATES
    for k in range(repeat):
        for e in entities:
            for t in templates:
                text = t.format(e=e)
                prompt = (f"### text : {text} ### sentiment :" if task == "sentiment"
                          else f"### question : {text} ### answer :")
                answer = SENT_ANSWERS[e] if task == "sentiment" else QA_ANSWERS[e]
                rows.append({"id": f"{task}/{split}/{len(rows)}", "prompt": prompt, "answer": answer, "entity": e})
    return rows

# Base-model-only rows (as the real world's neutral reviews and unknown people): no entity.
GENERIC_ROWS = [
    ("### text : the film was the film . ### sentiment :", "neutral"),
    ("### text : this film was a film . ### sentiment :", "neutral"),
    ("### question : where was hello born ? ### answer :", "unknown"),
    ("### question : what does world do ? ### answer :", "unknown"),
]


def write_fake_world(root: Path) -> Path:
    """Write world.json, data/<task>/<split>.jsonl for both tasks and model/ (tiny random Llama)."""
    layout = {"train_forget": (["alba"], 2), "train_retain": (["brin", "cora"], 2),
              "test_forget": (["alba"], 1), "test_retain": (["brin", "cora"], 1), "paraphrase": (["alba"], 1)}
    for task in ("sentiment", "qa"):
        tdir = root / "data" / task
        tdir.mkdir(parents=True)
        for split, (entities, repeat) in layout.items():
            lines = [json.dumps(r) for r in _rows(task, split, entities, repeat)]
            (tdir / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    manifest = {"format": 1, "seed": 0, "size": "fake", "tasks": {"sentiment": {}, "qa": {}},
                "generic_labels": {"sentiment": ["neutral"], "qa": ["unknown"]},
                "forget_entities": {"sentiment": ["alba"], "qa": ["alba"]}}
    (root / "world.json").write_text(json.dumps(manifest))
    model, tokenizer = make_tiny_model()
    _memorise(model, tokenizer, root)
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    return root


def _memorise(model, tokenizer, root: Path, *, steps: int = 60) -> None:
    """Fine-tune the random model on every row so that, like the paper's base model, it knows the data.

    A random tiny model's outputs hardly depend on its input, so a prompt could not steer it.
    """
    rows = [r for task in ("sentiment", "qa") for rows in read_world_task(root, task).splits.values() for r in rows]
    pairs = [(r.prompt, r.answer) for r in rows] + GENERIC_ROWS  # so generic answers are reachable
    batch = encode_batch(tokenizer, [p for p, _ in pairs], [a for _, a in pairs])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        for _ in range(steps):
            logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits  # (B, T, V)
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), batch.labels[:, 1:])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()


def user_data(world: Path, out: Path, task: str = "qa", **meta) -> Path:
    """One task of the fake world as the user's own data: the JSONL files without ids, and ``meta``
    as data.json (when given)."""
    out.mkdir(parents=True)
    for src in sorted((world / "data" / task).glob("*.jsonl")):
        rows = [json.loads(line) for line in src.read_text().splitlines() if line.strip()]
        lines = [json.dumps({"prompt": r["prompt"], "answer": r["answer"], "entity": r["entity"]}) for r in rows]
        (out / src.name).write_text("\n".join(lines) + "\n")
    if meta:
        (out / "data.json").write_text(json.dumps(meta))
    return out
