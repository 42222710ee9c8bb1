"""The budgets of one `spul report` run, and the names its table and plot use."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from spul.trainer.baselines import METHODS as BASELINES
from spul.trainer.spul_config import SpulConfig

METHOD_ORDER = ("original", "spul", *BASELINES, "retrain", "icul")
FORGET_SPLIT, RETAIN_SPLIT = "test_forget", "test_retain"  # the trade-off plot's axes


@dataclass(frozen=True)
class ReportConfig:
    """Budgets of one report. The default fits the default world in ~30 min on 2 CPU cores."""

    spul: SpulConfig = field(default_factory=SpulConfig)
    sweep: tuple[tuple[float, float], ...] = ((0.1, 0.0), (0.5, 0.1), (1.0, 1.0))  # extra (alpha, beta)
    sweep_steps: int = 150
    baseline_epochs: float = 1.0  # passes over train_forget, as the paper's 1 epoch
    baseline_forget_batch: int = 8
    baseline_retain_batch: int = 16
    lr_grid: tuple[float, ...] = (1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3)
    lr_retain_sample: int = 200
    icul_retain_demos: int = 2
    retrain_epochs: int | None = None  # None: the world's own base-model schedule (faithful)
    batch_size: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.lr_grid or any(not 0 < lr < 1 for lr in self.lr_grid):
            raise ValueError("lr_grid must be a non-empty list of learning rates in (0, 1)")
        if (self.sweep and self.sweep_steps < 1) or self.batch_size < 1 or self.lr_retain_sample < 1:
            raise ValueError("sweep_steps (with a sweep), batch_size and lr_retain_sample must be >= 1")
        if self.baseline_epochs <= 0:
            raise ValueError("baseline_epochs must be > 0")
        if self.retrain_epochs is not None and self.retrain_epochs < 1:
            raise ValueError("retrain_epochs must be >= 1 (or None for the world's schedule)")

    @classmethod
    def quick(cls) -> ReportConfig:
        """A reduced run for tests and smoke checks: few steps, short grids, 1-epoch retrain."""
        return cls(
            spul=SpulConfig(steps=30, forget_per_batch=8, retain_per_batch=16),
            sweep=((0.1, 0.0),),
            sweep_steps=10,
            lr_grid=(1e-3, 1e-2),
            lr_retain_sample=32,
            retrain_epochs=1,
        )

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["spul"] = self.spul.to_dict()
        return out
