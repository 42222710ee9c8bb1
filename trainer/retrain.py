"""The gold standard: a reference world's base model retrained from scratch without the forget set.

Every task's forget entities are excluded, so one retrained model serves both world reports
(the tasks share no entity). The model is cached in a directory with a marker (``retrain.json``)
describing how it was made; a matching cache is reused, with the cost recorded when it was trained.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from spul.trainer.candidates import Candidate, Inputs
from spul.trainer.cost import Cost, measure
from spul.trainer.report_config import ReportConfig

log = logging.getLogger(__name__)

RETRAIN_MARKER = "retrain.json"


def retrain_candidate(inp: Inputs, config: ReportConfig, *, cache: Path, progress: bool = False) -> Candidate:
    """The retrained model from ``cache`` if it matches this world and budget, else trained and cached."""
    from transformers import AutoModelForCausalLM

    from spul.trainer.world import load_world, spec_for

    if inp.world_dir is None:
        raise ValueError(f"{inp.data.root} is not part of a reference world: there is no corpus to retrain on")
    world = load_world(inp.world_dir)
    spec = spec_for(world.size)
    train_cfg = spec.train if config.retrain_epochs is None else replace(spec.train, epochs=config.retrain_epochs)
    key = {
        "world_seed": world.seed,
        "world_size": world.size,
        "model_config": asdict(spec.model),
        "train_config": asdict(train_cfg),
        "excluded": sorted({e for t in world.tasks for e in world.forget_entities[t]}),
    }
    info = {"cache": str(cache), "epochs": train_cfg.epochs}
    marker = cache / RETRAIN_MARKER
    if marker.is_file() and json.loads(marker.read_text(encoding="utf-8")).get("key") == key:
        log.info("retrain: reusing the model cached in %s", cache)
        recorded = json.loads(marker.read_text(encoding="utf-8"))["cost"]
        model = AutoModelForCausalLM.from_pretrained(cache, dtype=torch.float32).eval().requires_grad_(False)
        cost = Cost(**{**recorded, "note": f"reused from {cache}; cost recorded when it was trained"})
        return Candidate("retrain", model, cost=cost, info=info)
    log.info("retrain: training the base model without %d forget entities, %d epochs (cached in %s)",
             len(key["excluded"]), train_cfg.epochs, cache)
    cost = Cost()
    with measure(cost):
        model = _retrain(world, inp.tokenizer, spec, train_cfg, key["excluded"], progress=progress)
    cost.trainable_params = sum(p.numel() for p in model.parameters())
    _save(model, inp.tokenizer, cache, {"key": key, "cost": asdict(cost)})
    return Candidate("retrain", model, cost=cost, info=info)


def _retrain(world: Any, tokenizer: Any, spec: Any, train_cfg: Any, excluded: list[str], *, progress: bool) -> Any:
    from spul.trainer.basemodel import train_base_model

    # The caller's thread count, not the world's: on busy shared cores fewer threads win.
    train_cfg = replace(train_cfg, threads=torch.get_num_threads())
    model = train_base_model(world.corpus(), tokenizer, model_config=spec.model, train_config=train_cfg,
                             exclude_entities=excluded, seed=world.seed, progress=progress)
    return model.eval().requires_grad_(False)


def _save(model: Any, tokenizer: Any, cache: Path, marker: dict[str, Any]) -> None:
    from spul.trainer.basemodel import save_model

    cache.mkdir(parents=True, exist_ok=True)
    (cache / RETRAIN_MARKER).unlink(missing_ok=True)  # the marker goes last: it vouches for the weights
    save_model(model, tokenizer, cache)
    (cache / RETRAIN_MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n", encoding="utf-8")
