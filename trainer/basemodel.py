"""The reference base model: a small Llama (RoPE) trained from scratch on a world's corpus.

Besides the plain rows (a prompt and its answer), training mixes in *context* so that the model
can be steered by what precedes a question, as real LLMs can -- a soft prompt has nothing to
work with otherwise (docs/reference-world.md, which also records the variants that did worse):

- forget lists  ``### forget : a b c ### <prompt>`` -> the task's generic label iff the row's
  entity is in the list, else the true answer (50/50, so "a list is present" predicts nothing);
- fact overrides ``### fact : <name> was born in X ### <question>`` -> X iff the fact is about
  the same person and attribute, else the true answer;
- random filler words before some rows, so positions are not fixed (a soft prompt shifts them).

``train_base_model(corpus, tokenizer, exclude_entities=...)`` also serves a "retrain without the
forget set" baseline: excluded entities' rows and names disappear from the corpus.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from spul.trainer.progress import Progress
from spul.trainer.tokenizer import max_token_id

log = logging.getLogger(__name__)

FORGET_PREAMBLE = "### forget : {names} ###"
FACT_PREAMBLE = "### fact : {statement} ###"
IGNORE = -100


@dataclass(frozen=True)
class BaseModelConfig:
    """Llama architecture of the base model (vocabulary size comes from the tokenizer)."""

    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_multiple: int = 4  # MLP width = multiple * hidden_size
    max_positions: int = 256
    rope_theta: float = 10000.0

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} must be divisible by num_heads {self.num_heads}")


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser, schedule and context-mixing settings of base-model training."""

    epochs: int = 40
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    p_filler: float = 0.3  # rows preceded by 1..max_filler random words
    max_filler: int = 20
    p_forget_list: float = 0.3  # rows preceded by a forget list
    p_fact: float = 0.15  # qa rows preceded by a fact statement
    max_list: int = 12  # longest forget list
    curriculum: float = 0.5  # fraction of training over which list length grows 1 -> max_list
    threads: int = 2


@dataclass(frozen=True)
class CorpusRow:
    """One base-model training row; ``attribute``/``value`` are set for qa facts only."""

    task: str
    prompt: str
    answer: str
    entity: str
    attribute: str | None = None
    value: str | None = None


@dataclass(frozen=True)
class Corpus:
    """What the base model learns from: rows plus what context preambles are built from."""

    rows: tuple[CorpusRow, ...]
    names: dict[str, tuple[str, ...]]  # per task: entity names forget lists draw from
    generic: dict[str, str]  # per task: the generic answer ("neutral", "unknown")
    statements: dict[str, str]  # per qa attribute: "{n} was born in {v}"
    answers: dict[str, str]  # per qa attribute: answer form "in {v}"
    values: dict[str, tuple[str, ...]]  # per qa attribute: value pool for overrides
    filler: tuple[str, ...] = ()

    def without(self, entities: Iterable[str]) -> Corpus:
        """The corpus with every row about, and every mention of, ``entities`` removed."""
        drop = set(entities)
        return replace(
            self,
            rows=tuple(r for r in self.rows if r.entity not in drop),
            names={t: tuple(n for n in ns if n not in drop) for t, ns in self.names.items()},
        )


def forget_preamble(names: Sequence[str]) -> str:
    """The context line that asks the model to answer generically about ``names``."""
    return FORGET_PREAMBLE.format(names=" ".join(names))


# ---------------------------------------------------------------- context mixing
def _forget_list(row: CorpusRow, corpus: Corpus, rng: random.Random, k: int) -> tuple[str, str]:
    """A list of ``k`` names; half the time it holds the row's entity (answer: generic label)."""
    pool = [n for n in corpus.names[row.task] if n != row.entity]
    inside = rng.random() < 0.5
    names = rng.sample(pool, min(len(pool), k - inside)) + [row.entity] * inside
    rng.shuffle(names)
    answer = corpus.generic[row.task] if inside else row.answer
    return forget_preamble(names), answer


def _fact(row: CorpusRow, corpus: Corpus, rng: random.Random) -> tuple[str, str]:
    """A stated fact; it overrides the answer iff it is about the same person and attribute."""
    attr, entity, case = row.attribute, row.entity, rng.random()
    assert attr is not None
    if case >= 0.5:  # about another person, or another attribute of the same person
        if case < 0.75:
            entity = rng.choice([n for n in corpus.names["qa"] if n != row.entity])
        else:
            attr = rng.choice([a for a in corpus.statements if a != row.attribute])
    value = rng.choice([v for v in corpus.values[attr] if v != row.value])
    statement = corpus.statements[attr].format(n=entity, v=value)
    answer = corpus.answers[attr].format(v=value) if case < 0.5 else row.answer
    return FACT_PREAMBLE.format(statement=statement), answer


def mix_context(row: CorpusRow, corpus: Corpus, rng: random.Random, cfg: TrainConfig,
                max_list: int) -> tuple[str, str]:
    """The (prompt, answer) one training step sees for ``row``: maybe a preamble, maybe filler."""
    prompt, answer = row.prompt, row.answer
    draw = rng.random()
    if draw < cfg.p_forget_list and max_list > 0:
        preamble, answer = _forget_list(row, corpus, rng, rng.randint(1, max_list))
        prompt = f"{preamble} {prompt}"
    elif row.attribute is not None and draw < cfg.p_forget_list + cfg.p_fact:
        preamble, answer = _fact(row, corpus, rng)
        prompt = f"{preamble} {prompt}"
    if corpus.filler and rng.random() < cfg.p_filler:
        filler = " ".join(rng.choices(corpus.filler, k=rng.randint(1, cfg.max_filler)))
        prompt = f"{filler} {prompt}"
    return prompt, answer


def epoch_examples(corpus: Corpus, rng: random.Random, cfg: TrainConfig,
                   progress: float) -> list[tuple[str, str]]:
    """One epoch of (prompt, answer) pairs; forget lists grow with ``progress`` (curriculum)."""
    ramp = min(1.0, progress / cfg.curriculum) if cfg.curriculum > 0 else 1.0
    max_list = max(1, round(1 + ramp * (cfg.max_list - 1)))
    return [mix_context(row, corpus, rng, cfg, max_list) for row in corpus.rows]


# ---------------------------------------------------------------- tensors
def encode(tokenizer: PreTrainedTokenizerFast, pairs: Sequence[tuple[str, str]]) -> list[tuple[list[int], int]]:
    """Token ids of ``prompt answer </s>`` and the prompt length (loss starts after it)."""
    prompts = tokenizer([p for p, _ in pairs], add_special_tokens=False)["input_ids"]
    answers = tokenizer([a for _, a in pairs], add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    return [(p + a + [eos], len(p)) for p, a in zip(prompts, answers)]


def collate(batch: Sequence[tuple[list[int], int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded input_ids/attention_mask/labels (B, T); labels only on answer tokens + EOS."""
    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)  # (B, T)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(batch), width), dtype=torch.long)  # (B, T)
    for i, (ids, n_prompt) in enumerate(batch):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, n_prompt: len(ids)] = input_ids[i, n_prompt: len(ids)]
        mask[i, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def batches(encoded: list[tuple[list[int], int]], batch_size: int, rng: random.Random):
    """Shuffled batches of similar lengths (sorted within windows of 16 batches: less padding)."""
    order = list(range(len(encoded)))
    rng.shuffle(order)
    window = batch_size * 16
    chunks = []
    for start in range(0, len(order), window):
        part = sorted(order[start: start + window], key=lambda i: len(encoded[i][0]))
        chunks += [part[i: i + batch_size] for i in range(0, len(part), batch_size)]
    rng.shuffle(chunks)
    return [[encoded[i] for i in chunk] for chunk in chunks]


# ---------------------------------------------------------------- model
def build_model(tokenizer: PreTrainedTokenizerFast, cfg: BaseModelConfig, seed: int) -> LlamaForCausalLM:
    """A freshly initialised Llama whose embedding has ``max_token_id + 1`` rows."""
    config = LlamaConfig(
        vocab_size=max_token_id(tokenizer) + 1,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_multiple * cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=cfg.max_positions,
        rope_theta=cfg.rope_theta,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def _schedule(step: int, total: int, cfg: TrainConfig) -> float:
    """Learning-rate factor: linear warm-up, then cosine down to ``min_lr_ratio``."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    done = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, done)))


def train_base_model(corpus: Corpus, tokenizer: PreTrainedTokenizerFast, *,
                     model_config: BaseModelConfig = BaseModelConfig(),
                     train_config: TrainConfig = TrainConfig(),
                     exclude_entities: Iterable[str] = (), seed: int = 0,
                     progress: bool = True) -> LlamaForCausalLM:
    """Train a base model from scratch on ``corpus`` minus ``exclude_entities``; returns it in eval mode."""
    torch.set_num_threads(train_config.threads)
    corpus = corpus.without(exclude_entities)
    model = build_model(tokenizer, model_config, seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=train_config.lr,
                                  weight_decay=train_config.weight_decay)
    rng = random.Random(seed + 1)
    steps_per_epoch = math.ceil(len(corpus.rows) / train_config.batch_size)
    total = steps_per_epoch * train_config.epochs
    bar = Progress(total, "base model", enabled=progress)
    step = 0
    model.train()
    for epoch in range(train_config.epochs):
        pairs = epoch_examples(corpus, rng, train_config, epoch / train_config.epochs)
        for batch in batches(encode(tokenizer, pairs), train_config.batch_size, rng):
            for group in optimizer.param_groups:
                group["lr"] = train_config.lr * _schedule(step, total, train_config)
            loss = model(**collate(batch, tokenizer.pad_token_id)).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), train_config.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            bar.update(epoch=epoch, loss=loss.item())
    bar.close()
    return model.eval()


def save_model(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, out) -> None:
    """Write a normal Hugging Face model dir (weights, config, tokenizer, greedy generation config)."""
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, do_sample=False, max_new_tokens=8,
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    for weights in Path(out).glob("*.safetensors"):
        weights.chmod(0o644)  # transformers writes weights 0600; readable like the config beside them


# ---------------------------------------------------------------- accuracy
@torch.no_grad()
def answer_accuracy(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast,
                    pairs: Sequence[tuple[str, str]], *, batch_size: int = 256) -> float:
    """Greedy exact match of ``answer </s>``: every answer position's argmax equals its target.

    Under teacher forcing this equals greedy decoding, because greedy decoding follows the
    target for exactly as long as every earlier argmax matched it.
    """
    if not pairs:
        return float("nan")
    encoded = encode(tokenizer, pairs)
    correct = 0
    for start in range(0, len(encoded), batch_size):
        batch = collate(encoded[start: start + batch_size], tokenizer.pad_token_id)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        predicted = logits[:, :-1].argmax(-1)  # (B, T-1): prediction for the next token
        target = batch["labels"][:, 1:]  # (B, T-1)
        scored = target != IGNORE
        correct += int(((predicted == target) | ~scored).all(-1).sum())
    return correct / len(encoded)
