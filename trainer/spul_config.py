"""SpulConfig: every hyper-parameter of a SPUL run, validated on construction.

Kept free of torch so that `spul train --help` can list the options instantly.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

log = logging.getLogger(__name__)

RETAIN_TARGETS = ("gold", "model")


@dataclass(frozen=True)
class SpulConfig:
    """Every knob of one SPUL run; stored in the artifact's metadata.

    The defaults are the settings recommended for question answering (the shipped qa profile);
    a data directory may recommend others in data.json's "train" (the reference world's
    sentiment task does), and `spul train` flags override both.
    """

    num_virtual_tokens: int = 30
    encoder_hidden_size: int = 128
    alpha: float = 1.0  # weight of the retain cross-entropy (higher favours utility)
    beta: float = 0.5  # weight of KL(original || prompted) on retain answer positions
    lr: float = 3e-3
    weight_decay: float = 1e-3
    warmup_ratio: float = 0.1
    max_grad_norm: float = 0.3
    steps: int = 400
    forget_per_batch: int = 16
    retain_per_batch: int = 48
    generic_labels: tuple[str, ...] = ()  # empty: the data's generic answers (data.json)
    retain_target: str = "gold"  # "gold": the data's answers; "model": the original model's own greedy answers
    model_answer_tokens: int = 32  # with retain_target "model": longest own answer generated per retain row
    matched_retain: float = 0.0  # share of each batch's retain rows drawn among the forget rows' nearest retain prompts
    seed: int = 0

    def __post_init__(self) -> None:
        checks = [
            (1 <= self.num_virtual_tokens <= 1024, "num_virtual_tokens must be in 1..1024"),
            (self.encoder_hidden_size >= 1, "encoder_hidden_size must be >= 1"),
            (self.alpha >= 0 and self.beta >= 0, "alpha and beta must be >= 0"),
            (0 < self.lr < 1, "lr must be in (0, 1)"),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
            (0 <= self.warmup_ratio < 1, "warmup_ratio must be in [0, 1)"),
            (self.max_grad_norm > 0, "max_grad_norm must be > 0"),
            (self.steps >= 1, "steps must be >= 1"),
            (self.forget_per_batch >= 1, "forget_per_batch must be >= 1 (SPUL needs forget samples)"),
            (self.retain_per_batch >= 0, "retain_per_batch must be >= 0"),
            (self.retain_target in RETAIN_TARGETS, f"retain_target must be one of {', '.join(RETAIN_TARGETS)}"),
            (self.model_answer_tokens >= 1, "model_answer_tokens must be >= 1"),
            (0.0 <= self.matched_retain <= 1.0, "matched_retain must be in [0, 1]"),
            (all(isinstance(x, str) and x.strip() for x in self.generic_labels),
             "generic_labels must be non-empty words"),
        ]
        errors = [msg for ok, msg in checks if not ok]
        if errors:
            raise ValueError("invalid SPUL config: " + "; ".join(errors))
        if self.retain_per_batch == 0 and (self.alpha > 0 or self.beta > 0):
            log.warning("retain_per_batch=0: alpha and beta have no effect")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["generic_labels"] = list(self.generic_labels)
        return out
