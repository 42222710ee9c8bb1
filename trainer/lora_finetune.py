"""LoRA adapters for a causal LM: fine-tune one on question/answer rows (PEFT), save it, merge it.

- ``finetune``: PEFT ``LoraConfig`` on the attention and MLP projections; cross-entropy on the
  answer tokens only (``spul.trainer.losses``), rows encoded exactly as SPUL encodes them
  (``spul.trainer.data.encode_batch``, chat template or not); AdamW, seeded shuffling.
- ``save_adapter``: PEFT's on-disk layout (``adapter_config.json`` + ``adapter_model.safetensors``,
  loadable by ``peft.PeftModel.from_pretrained``), weights stored as float16 to keep it small,
  plus ``training.json`` (settings, losses, time).

Merging an adapter into a model (no PEFT needed) is ``spul.adapters.merge_adapter``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from spul.adapters import ADAPTER_CONFIG, ADAPTER_WEIGHTS, AdapterError

TRAINING_LOG = "training.json"
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class LoraSettings:
    r: int = 8
    alpha: int = 16
    target_modules: tuple[str, ...] = TARGETS
    lr: float = 3e-3
    epochs: int = 6
    batch_size: int = 8
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)  # recorded as is (e.g. the command line)

    def __post_init__(self) -> None:
        if self.r < 1 or self.alpha < 1 or self.epochs < 1 or self.batch_size < 1 or not self.lr > 0:
            raise ValueError(f"LoRA settings must be positive: {self}")


def add_settings_args(parser: argparse.ArgumentParser) -> None:
    d = LoraSettings()
    parser.add_argument("--r", type=int, default=d.r, help=f"LoRA rank (default {d.r})")
    parser.add_argument("--lora-alpha", type=int, default=d.alpha, help=f"LoRA alpha (default {d.alpha})")
    parser.add_argument("--lr", type=float, default=d.lr, help=f"AdamW learning rate (default {d.lr})")
    parser.add_argument("--epochs", type=int, default=d.epochs, help=f"passes over the rows (default {d.epochs})")
    parser.add_argument("--batch-size", type=int, default=d.batch_size, help=f"rows per step (default {d.batch_size})")
    parser.add_argument("--seed", type=int, default=d.seed, help="seed of the LoRA init and the shuffling")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")


def settings_from_args(args: argparse.Namespace) -> LoraSettings:
    torch.set_num_threads(args.threads)
    return LoraSettings(r=args.r, alpha=args.lora_alpha, lr=args.lr, epochs=args.epochs, batch_size=args.batch_size,
                        seed=args.seed)


# ---------------------------------------------------------------- training
def finetune(model: Any, tokenizer: Any, rows: Sequence[dict[str, str]], settings: LoraSettings, *,
             chat_template: bool = True, on_step: Callable[[int, int, float], None] | None = None) -> Any:
    """Train a LoRA adapter on `rows` ({"prompt", "answer"}); returns the PEFT model (base weights unchanged)."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as err:  # pragma: no cover - dev dependency
        raise AdapterError("fine-tuning a LoRA adapter needs peft: pip install peft") from err
    from spul.trainer.data import encode_batch
    from spul.trainer.losses import answer_logits, row_ce

    torch.manual_seed(settings.seed)
    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=0.0,
                        target_modules=list(settings.target_modules), task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, config)
    inner = peft_model.base_model.model  # the causal LM with LoRA layers injected
    inner.train()
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    steps_per_epoch = math.ceil(len(rows) / settings.batch_size)
    total = steps_per_epoch * settings.epochs
    warmup = max(1, round(settings.warmup_ratio * total))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min((s + 1) / warmup, 0.5 * (
        1 + math.cos(math.pi * max(0, s - warmup) / max(1, total - warmup)))))
    rng = random.Random(settings.seed)
    order = list(range(len(rows)))
    step = 0
    for _ in range(settings.epochs):
        rng.shuffle(order)
        for start in range(0, len(order), settings.batch_size):
            chunk = [rows[i] for i in order[start:start + settings.batch_size]]
            batch = encode_batch(tokenizer, [r["prompt"] for r in chunk], [r["answer"] for r in chunk],
                                 chat_template=chat_template)
            answer = answer_logits(inner, batch)
            loss = row_ce(answer).sum() / answer.target.numel()  # mean CE per answer token
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if on_step is not None:
                on_step(step, total, float(loss))
    inner.eval()
    return peft_model


def save_adapter(peft_model: Any, out: Path, *, base_model: str, log: dict[str, Any]) -> Path:
    """Write the adapter in PEFT's layout (float16 safetensors) and training.json; returns `out`."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    config = peft_model.peft_config["default"].to_dict()
    config["base_model_name_or_path"] = base_model  # a name, not this machine's cache path
    config["target_modules"] = sorted(config["target_modules"])
    tensors = {_peft_key(k): v.detach().to(torch.float16).contiguous()
               for k, v in peft_model.state_dict().items() if ".lora_" in k}
    save_file(tensors, str(out / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    (out / ADAPTER_CONFIG).write_text(json.dumps(config, indent=1, sort_keys=True, default=list) + "\n",
                                      encoding="utf-8")
    (out / TRAINING_LOG).write_text(json.dumps(log, indent=1) + "\n", encoding="utf-8")
    for path in out.iterdir():
        path.chmod(0o644)
    return out


def _peft_key(key: str) -> str:
    """State-dict key -> PEFT's saved key (the adapter name dropped: lora_A.default.weight -> lora_A.weight)."""
    return key.replace(".default.", ".")


def finetune_and_save(base_name: str, rows: Sequence[dict[str, str]], out: Path, settings: LoraSettings, *,
                      chat_template: bool = True) -> dict[str, Any]:
    """Load `base_name`, fine-tune on `rows`, save the adapter to `out`; returns the training log."""
    from spul.models import load_base_model

    base = load_base_model(base_name, device="cpu")
    losses: list[float] = []
    start = time.perf_counter()

    def on_step(step: int, total: int, loss: float) -> None:
        losses.append(round(loss, 4))
        print(f"step {step}/{total} loss {loss:.4f} ({time.perf_counter() - start:.0f} s)", flush=True)

    peft_model = finetune(base.model, base.tokenizer, rows, settings, chat_template=chat_template, on_step=on_step)
    log = {"base_model": base_name, "rows": len(rows), "settings": asdict(settings), "steps": len(losses),
           "train_s": round(time.perf_counter() - start, 1), "threads": torch.get_num_threads(), "losses": losses}
    save_adapter(peft_model, out, base_model=base_name, log=log)
    return {k: v for k, v in log.items() if k != "losses"}
