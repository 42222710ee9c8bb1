"""LoRA adapters: read one (PEFT's layout, safetensors only) and merge it into a model's weights.

No PEFT is needed: ``merge_adapter`` adds ``scale * B @ A`` to each adapted linear weight in place,
so a merged model is a plain model (``spul.catalog`` builds ``smollm2-135m-facts`` this way).
Adapters are trained by ``spul.trainer.lora_finetune``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from spul.errors import UserError

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


class AdapterError(UserError, ValueError):
    """A LoRA adapter directory is missing, malformed, or does not fit the model."""


def read_adapter(directory: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The adapter's config and its LoRA tensors (safetensors only)."""
    from safetensors.torch import load_file

    directory = Path(directory)
    weights, config_path = directory / ADAPTER_WEIGHTS, directory / ADAPTER_CONFIG
    if not weights.is_file() or not config_path.is_file():
        raise AdapterError(f"{directory} is not a LoRA adapter: it needs {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS} "
                           "(a .bin adapter is refused: save it as safetensors)")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if config.get("peft_type", "LORA") != "LORA":
        raise AdapterError(f"{config_path}: peft_type {config.get('peft_type')!r}, expected LORA")
    for key in ("r", "lora_alpha"):
        if not isinstance(config.get(key), int) or config[key] < 1:
            raise AdapterError(f"{config_path}: {key!r} must be a positive integer")
    return config, load_file(str(weights))


@torch.no_grad()
def merge_adapter(model: Any, directory: str | Path) -> int:
    """Add the adapter's ``(alpha / r) * B @ A`` (``alpha / sqrt(r)`` with rsLoRA) to `model`'s weights
    in place; returns how many weights changed. Fails if any adapter tensor has no matching weight."""
    config, tensors = read_adapter(directory)
    r, alpha = config["r"], config["lora_alpha"]
    scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
    modules = dict(model.named_modules())
    merged = 0
    for key_a in sorted(k for k in tensors if k.endswith(".lora_A.weight")):
        prefix = key_a[: -len(".lora_A.weight")]
        key_b = f"{prefix}.lora_B.weight"
        name = prefix.removeprefix("base_model.model.")
        module = modules.get(name)
        if key_b not in tensors or module is None or not hasattr(module, "weight"):
            raise AdapterError(f"adapter tensor {key_a} has no matching module {name!r} in the model "
                               "(adapter made for another architecture?)")
        a, b = tensors[key_a].float(), tensors[key_b].float()  # (r, in), (out, r)
        weight = module.weight  # (out, in)
        if a.shape[0] != r or b.shape[1] != r or (b.shape[0], a.shape[1]) != tuple(weight.shape):
            raise AdapterError(f"adapter tensors for {name} have shapes {tuple(a.shape)}, {tuple(b.shape)}; "
                               f"the model's weight is {tuple(weight.shape)} with r={r}")
        weight += (scale * (b @ a)).to(weight.dtype)
        merged += 1
    if not merged:
        raise AdapterError(f"{directory}: no LoRA tensors (keys ending in .lora_A.weight)")
    return merged
