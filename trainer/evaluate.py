"""Greedy answers with and without a soft prompt, scoring (exact or contains), weighted F1, the eval report.

One generation path for every caller (training's final eval, `spul eval`, the baselines, the
server's equivalence test): batched greedy decoding with left padding, positions from the mask,
and a KV cache, so the same row gives the same tokens whatever batch it sits in.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from spul.jsonsafe import json_safe
from spul.models import autocast
from spul.prompts_store import position_ids_from_mask, prepend_prompt
from spul.trainer.data import MATCH_RULES, DataMeta, Row, answer_ids, encode_batch
from spul.trainer.progress import Progress

NO_EOS = " <no-eos>"  # marks an answer cut off by the token budget: never equal to a gold label


@dataclass(frozen=True)
class Generation:
    text: str  # decoded tokens before EOS
    stopped: bool  # True when EOS ended it, False when the token budget ran out

    @property
    def label(self) -> str:
        """The class this answer counts as when scoring."""
        return normalise(self.text) if self.stopped else normalise(self.text) + NO_EOS


def normalise(text: str) -> str:
    """Lower case, whitespace collapsed (the exact rule)."""
    return " ".join(text.lower().split())


def normalise_words(text: str) -> str:
    """Lower case, every character that is not a letter or digit made a space, whitespace collapsed."""
    return " ".join("".join(c if c.isalnum() else " " for c in text.lower()).split())


# ---------------------------------------------------------------- generation
def generate(
    model: Any,
    tokenizer: Any,
    rows: Sequence[Row],
    prompt: torch.Tensor | None,
    *,
    batch_size: int = 64,
    max_new_tokens: int | None = None,
    chat_template: bool = False,
    amp_dtype: torch.dtype | None = None,
    progress: Progress | None = None,
) -> list[Generation]:
    """Greedy answer for each row, with the (P, H) soft prompt prepended if given.

    Prompts are encoded exactly as in training (``encode_batch``, chat template or not). The
    default budget is the longest gold answer + 1 (for EOS) over *all* rows, so a row's output
    does not depend on which batch it lands in.
    """
    if not rows:
        return []
    if max_new_tokens is None:
        max_new_tokens = max(len(answer_ids(tokenizer, r.answer, chat_template=chat_template)) for r in rows) + 1
    device = next(model.parameters()).device
    eos_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else -1  # -1: no EOS, run the budget
    out: list[Generation] = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        batch = encode_batch(tokenizer, [r.prompt for r in chunk], chat_template=chat_template).to(device)
        with autocast(device, amp_dtype):
            ids = greedy_ids(model, batch.input_ids, batch.attention_mask, prompt, max_new_tokens=max_new_tokens,
                             eos_id=eos_id)
        out.extend(_decode(tokenizer, seq, eos_id) for seq in ids.tolist())
        if progress is not None:
            progress.update(len(chunk))
    return out


def own_answers(model: Any, tokenizer: Any, rows: Sequence[Row], *, max_new_tokens: int, chat_template: bool = False,
                batch_size: int = 64, amp_dtype: torch.dtype | None = None,
                progress: Progress | None = None) -> list[Row]:
    """The rows with each answer replaced by the model's own greedy answer (no soft prompt).

    An answer cut off by `max_new_tokens` is trimmed to its last complete sentence when it has
    one, so a training target rarely ends mid-sentence; rows whose own answer is empty are kept
    with their gold answer.
    """
    gens = generate(model, tokenizer, rows, None, batch_size=batch_size, max_new_tokens=max_new_tokens,
                    chat_template=chat_template, amp_dtype=amp_dtype, progress=progress)
    out = []
    for row, gen in zip(rows, gens):
        text = gen.text if gen.stopped else _last_sentence(gen.text)
        out.append(dataclasses.replace(row, answer=text) if text.strip() else row)
    return out


def _last_sentence(text: str) -> str:
    ends = [i for i, ch in enumerate(text) if ch in ".!?"]
    return text[: ends[-1] + 1] if ends else text


@torch.no_grad()
def greedy_ids(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    prompt: torch.Tensor | None,
    *,
    max_new_tokens: int,
    eos_id: int,
) -> torch.Tensor:
    """(B, T) left-padded prompts -> (B, N) greedy tokens, N <= max_new_tokens; EOS after a row ends."""
    embed = model.get_input_embeddings()
    embeds = embed(input_ids)  # (B, T, H)
    mask = attention_mask
    if prompt is not None:
        embeds, mask, _ = prepend_prompt(prompt, embeds, mask)  # (B, P+T, H), (B, P+T)
    positions = position_ids_from_mask(mask)  # (B, P+T)
    out = model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
    next_pos = positions[:, -1:] + 1  # (B, 1): left padding puts every row's last real token at the end
    done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    tokens: list[torch.Tensor] = []
    for step in range(max_new_tokens):
        nxt = out.logits[:, -1].argmax(dim=-1)  # (B,)
        nxt = torch.where(done, torch.full_like(nxt, eos_id), nxt)
        tokens.append(nxt)
        done |= nxt == eos_id
        if bool(done.all()) or step == max_new_tokens - 1:
            break
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)  # (B, L+1)
        out = model(inputs_embeds=embed(nxt[:, None]), attention_mask=mask, position_ids=next_pos,
                    cache=out.cache, use_cache=True, logits_to_keep=1)
        next_pos = next_pos + 1
    return torch.stack(tokens, dim=1)  # (B, N)


def _decode(tokenizer: Any, ids: list[int], eos_id: int) -> Generation:
    stopped = eos_id in ids
    if stopped:
        ids = ids[: ids.index(eos_id)]
    return Generation(text=tokenizer.decode(ids, skip_special_tokens=False).strip(), stopped=stopped)


# ---------------------------------------------------------------- metrics
def weighted_f1(gold: Sequence[str], pred: Sequence[str]) -> float:
    """F1 per gold class, weighted by support (sklearn's 'weighted'); stray predictions are own classes."""
    if not gold:
        return math.nan
    total = 0.0
    pred_counts = Counter(pred)
    for cls, support in Counter(gold).items():
        tp = sum(1 for g, p in zip(gold, pred) if g == cls and p == cls)
        precision = tp / pred_counts[cls] if pred_counts[cls] else 0.0
        recall = tp / support
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        total += support * f1
    return total / len(gold)


def answer_matches(gold: str, gen: Generation, match: str = "exact") -> bool:
    """Whether a generation counts as the gold answer under a scoring rule (see MATCH_RULES).

    exact: the normalised generation equals the normalised gold answer and ended with EOS.
    contains: the gold answer's words appear, in order and contiguous, among the generation's
    words (both lower-cased, punctuation dropped), wherever the generation stopped.
    """
    if match == "exact":
        return gen.stopped and normalise(gen.text) == normalise(gold)
    if match == "contains":
        words = normalise_words(gold) or normalise(gold)
        return f" {words} " in f" {normalise_words(gen.text)} "
    raise ValueError(f"unknown match rule {match!r}; choose one of {list(MATCH_RULES)}")


def score(rows: Sequence[Row], gens: Sequence[Generation], match: str = "exact") -> dict[str, float | int]:
    """Accuracy under the ``match`` rule and weighted F1 of one split."""
    gold = [normalise(r.answer) for r in rows]
    pred = [g if answer_matches(r.answer, gen, match) else gen.label for r, g, gen in zip(rows, gold, gens)]
    accuracy = sum(g == p for g, p in zip(gold, pred)) / len(gold) if gold else math.nan
    return {"accuracy": accuracy, "f1": weighted_f1(gold, pred), "n": len(gold)}


def evaluate_splits(
    model: Any,
    tokenizer: Any,
    splits: Mapping[str, Sequence[Row]],
    prompts: Mapping[str, torch.Tensor | None],
    *,
    batch_size: int = 64,
    match: str = "exact",
    chat_template: bool = False,
    max_new_tokens: int | None = None,
    amp_dtype: torch.dtype | None = None,
    progress: bool = False,
) -> dict[str, dict[str, dict[str, float | int]]]:
    """{method: {split: {accuracy, f1, n}}} for every method (name -> prompt or None) and split."""
    total = len(prompts) * sum(len(rows) for rows in splits.values())
    results: dict[str, dict[str, dict[str, float | int]]] = {}
    with Progress(total, "eval", unit="row", enabled=progress) as bar:
        for method, prompt in prompts.items():
            results[method] = {}
            for split, rows in splits.items():
                gens = generate(model, tokenizer, rows, prompt, batch_size=batch_size, max_new_tokens=max_new_tokens,
                                chat_template=chat_template, amp_dtype=amp_dtype, progress=bar)
                results[method][split] = score(rows, gens, match)
    return results


# ---------------------------------------------------------------- report
def scoring_info(meta: DataMeta) -> dict[str, Any]:
    """How generations were scored, recorded beside every result."""
    return {"match": meta.match, "chat_template": meta.chat_template, "max_new_tokens": meta.max_new_tokens,
            "normalisation": "lower case, whitespace collapsed" if meta.match == "exact"
            else "lower case, punctuation dropped, whitespace collapsed"}


def report_dict(name: str, results: Mapping[str, Any], *, meta: DataMeta | None = None,
                data_dir: str | Path | None = None) -> dict[str, Any]:
    meta = meta or DataMeta(name=name)
    out: dict[str, Any] = {"task": name, "scoring": scoring_info(meta), "results": json_safe(results)}
    if data_dir is not None:
        out["data"] = str(data_dir)
    return out


def write_report(path: str | Path, name: str, results: Mapping[str, Any], *, meta: DataMeta | None = None,
                 data_dir: str | Path | None = None) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    report = report_dict(name, results, meta=meta, data_dir=data_dir)
    path.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")


def format_table(results: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> str:
    """Accuracy / F1 in percent, one row per method, one column per split."""
    splits = list(dict.fromkeys(s for per_split in results.values() for s in per_split))
    head = f"{'method':<12}" + "".join(f"{s:>22}" for s in splits)
    lines = [head, f"{'':<12}" + "".join(f"{'acc / f1 (n)':>22}" for _ in splits)]
    for method, per_split in results.items():
        cells = [_cell(per_split.get(s)) for s in splits]
        lines.append(f"{method:<12}" + "".join(f"{c:>22}" for c in cells))
    return "\n".join(lines)


def _cell(m: Mapping[str, Any] | None) -> str:
    if not m or not m.get("n"):
        return "-"
    return f"{100 * m['accuracy']:.1f} / {100 * m['f1']:.1f} ({m['n']})"
