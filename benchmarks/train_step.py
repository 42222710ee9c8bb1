"""Training step time: SPUL (trainer/spul.py) versus PEFT's P-tuning on the same model and batch.

All three variants train the same P-tuning MLP encoder (P=30, encoder hidden 128) on the same
left-padded batch, frozen base model, AdamW, gradient clipping:
- ``spul``: L_f + alpha L_r + beta KL (the KL costs one extra no-grad forward without the prompt);
- ``spul_no_kl``: beta = 0, i.e. the same work as P-tuning, to separate method from plumbing;
- ``peft_ptuning``: `get_peft_model(model, PromptEncoderConfig(...))`, loss from `labels`.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from spul.benchmarks.models import query_texts

log = logging.getLogger(__name__)

NUM_VIRTUAL_TOKENS = 30
ENCODER_HIDDEN = 128
ANSWERS = ("unknown", "in quellport", "positive", "she paints")


def run_train_step(model_path: Path, *, batch_size: int = 32, steps: int = 5, warmup: int = 2) -> dict:
    """Median and minimum seconds per optimizer step of each variant; ratios (of medians) against PEFT.

    The variants' steps are interleaved round by round, so a neighbour's burst of CPU load on a
    shared machine slows all of them alike instead of one variant's whole run.
    """
    from transformers import AutoTokenizer

    from spul.trainer.data import encode_batch

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    texts = query_texts()
    prompts = [texts[i % len(texts)] for i in range(batch_size)]
    answers = [ANSWERS[i % len(ANSWERS)] for i in range(batch_size)]
    batch = encode_batch(tokenizer, prompts, answers)
    n_forget = max(1, batch_size // 4)  # the trainer's default mix: 1 forget row per 3 retain rows
    out: dict = {
        "batch_size": batch_size,
        "seq_len": int(batch.input_ids.shape[1]),
        "num_virtual_tokens": NUM_VIRTUAL_TOKENS,
        "steps": steps,
    }
    makers = {"spul": _spul_step(0.5), "spul_no_kl": _spul_step(0.0), "peft_ptuning": _peft_step}
    step_fns = {name: make(_load(model_path), batch, n_forget) for name, make in makers.items()}
    for name, times in _time_interleaved(step_fns, steps=steps, warmup=warmup).items():
        out[f"{name}_s_per_step"] = round(statistics.median(times), 4)
        out[f"{name}_min_s"] = round(min(times), 4)
    peft_s = out["peft_ptuning_s_per_step"]
    out["spul_vs_peft"] = round(out["spul_s_per_step"] / peft_s, 3)
    out["spul_no_kl_vs_peft"] = round(out["spul_no_kl_s_per_step"] / peft_s, 3)
    return out


def _load(model_path: Path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path).eval()
    model.requires_grad_(False)
    return model


def _spul_step(beta: float) -> Callable:
    def make(model, batch, n_forget: int) -> Callable[[], None]:
        from spul.trainer.spul import PromptEncoder, spul_loss

        hidden = int(model.get_input_embeddings().weight.shape[1])
        encoder = PromptEncoder(NUM_VIRTUAL_TOKENS, hidden, ENCODER_HIDDEN).train()
        params = list(encoder.parameters())
        optimizer = torch.optim.AdamW(params, lr=1e-4)

        def step() -> None:
            terms = spul_loss(model, encoder(), batch, n_forget, alpha=1.0, beta=beta)
            _update(terms.total, params, optimizer)

        return step

    return make


def _peft_step(model, batch, n_forget: int) -> Callable[[], None]:
    from peft import PromptEncoderConfig, TaskType, get_peft_model

    config = PromptEncoderConfig(
        task_type=TaskType.CAUSAL_LM,
        num_virtual_tokens=NUM_VIRTUAL_TOKENS,
        encoder_hidden_size=ENCODER_HIDDEN,
        encoder_reparameterization_type="MLP",
    )
    peft_model = get_peft_model(model, config)
    peft_model.train()
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)

    def step() -> None:
        loss = peft_model(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels
        ).loss
        _update(loss, params, optimizer)

    return step


def _update(loss: torch.Tensor, params: list[torch.Tensor], optimizer: torch.optim.Optimizer) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 0.3)
    optimizer.step()


def _time_interleaved(
    steps_by_name: dict[str, Callable[[], None]], *, steps: int, warmup: int
) -> dict[str, list[float]]:
    for _ in range(warmup):
        for step in steps_by_name.values():
            step()
    times: dict[str, list[float]] = {name: [] for name in steps_by_name}
    for _ in range(steps):
        for name, step in steps_by_name.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return times
