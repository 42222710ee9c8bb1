"""Convert between PEFT prompt-learning checkpoints and prompt artifacts, both directions.

A PEFT checkpoint is a directory with ``adapter_config.json`` and ``adapter_model.safetensors``
(what ``PeftModel.save_pretrained`` writes). PEFT itself already stores the computed (P, H)
table under ``prompt_embeddings`` for both prompt tuning and P-tuning; a checkpoint that holds
the P-tuning *encoder* weights instead (e.g. a raw ``prompt_encoder.state_dict()``) is run once
through trainer.prompt_encoder (PEFT's ``PromptEncoder`` layout, the one SPUL trains) so serving
never needs the encoder.

PEFT is not a runtime dependency: the config is read as JSON and the encoder has PEFT's
parameter names, so ``load_state_dict(strict=True)`` proves the layout matches.
Weights are read with safetensors only; pickled ``adapter_model.bin`` files are refused.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from spul.models import BaseModel, load_base_model
from spul.prompts_store import ArtifactError, load_artifact, model_fingerprint, save_artifact
from spul.trainer.prompt_encoder import ENCODER_TYPES, PromptEncoder

log = logging.getLogger(__name__)

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PICKLE_NAME = "adapter_model.bin"
TABLE_KEY = "prompt_embeddings"  # PEFT's key for the (P, H) prompt table
SUPPORTED_PEFT_TYPES = ("PROMPT_TUNING", "P_TUNING")
MAX_CONFIG_BYTES = 1024 * 1024
# The tensors of PEFT's PromptEncoder, whatever prefix the saving code put in front of them.
_ENCODER_KEY_RE = re.compile(r"(?:^|\.)(embedding\.weight|mlp_head\.\d+\.(?:weight|bias)|lstm_head\.\w+)$")


class PeftInteropError(ValueError):
    """A checkpoint or artifact that cannot be converted; the message says what to do."""


@dataclass(frozen=True)
class PeftPromptConfig:
    """The fields of a PEFT prompt-learning ``adapter_config.json`` that matter for conversion."""

    peft_type: str
    num_virtual_tokens: int
    token_dim: int
    num_transformer_submodules: int = 1
    encoder_type: str = "MLP"  # P-tuning only
    encoder_hidden_size: int | None = None  # P-tuning only
    encoder_num_layers: int = 2  # P-tuning LSTM only
    task_type: str | None = None
    base_model_name_or_path: str | None = None

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> PeftPromptConfig:
        peft_type = str(raw.get("peft_type", ""))
        if peft_type not in SUPPORTED_PEFT_TYPES:
            raise PeftInteropError(
                f"peft_type {peft_type!r} is not supported; use one of {list(SUPPORTED_PEFT_TYPES)}"
            )
        try:
            config = cls(
                peft_type=peft_type,
                num_virtual_tokens=int(raw["num_virtual_tokens"]),
                token_dim=int(raw["token_dim"]),
                num_transformer_submodules=int(raw.get("num_transformer_submodules") or 1),
                encoder_type=str(raw.get("encoder_reparameterization_type") or "MLP"),
                encoder_hidden_size=_optional_int(raw.get("encoder_hidden_size")),
                encoder_num_layers=int(raw.get("encoder_num_layers") or 2),
                task_type=raw.get("task_type"),
                base_model_name_or_path=raw.get("base_model_name_or_path"),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise PeftInteropError(f"{CONFIG_NAME} is missing or has a bad field: {err!r}") from err
        config.check()
        return config

    def check(self) -> None:
        if self.num_transformer_submodules != 1 or self.task_type not in (None, "CAUSAL_LM"):
            raise PeftInteropError(
                f"only decoder-only checkpoints (task_type CAUSAL_LM, one transformer submodule) convert; "
                f"got task_type {self.task_type!r} with {self.num_transformer_submodules} submodules"
            )
        if self.num_virtual_tokens < 1 or self.token_dim < 1:
            raise PeftInteropError(f"num_virtual_tokens and token_dim must be positive; got {self}")
        if self.peft_type == "P_TUNING" and self.encoder_type not in ENCODER_TYPES:
            raise PeftInteropError(
                f"encoder type {self.encoder_type!r} unknown; use one of {list(ENCODER_TYPES)}"
            )


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


def encoder_output(config: PeftPromptConfig, weights: dict[str, torch.Tensor]) -> torch.Tensor:
    """Run a P-tuning encoder once from its saved weights; returns the (P, H) prompt."""
    encoder = PromptEncoder(
        config.num_virtual_tokens,
        config.token_dim,
        config.encoder_hidden_size or config.token_dim,
        encoder_type=config.encoder_type,  # type: ignore[arg-type]  # one of ENCODER_TYPES: checked on parse
        lstm_layers=config.encoder_num_layers,
    ).float().eval()
    try:
        encoder.load_state_dict({k: v.float() for k, v in weights.items()}, strict=True)
    except RuntimeError as err:
        raise PeftInteropError(
            f"encoder weights do not fit {config.encoder_type} encoder of {config}: {err}"
        ) from err
    with torch.no_grad():
        return encoder()  # (P, H)


# ---- reading a PEFT checkpoint ----------------------------------------------------------------
def read_peft_config(directory: str | Path) -> tuple[PeftPromptConfig, dict[str, Any]]:
    """Parse ``adapter_config.json``; returns the checked config and the raw dict (kept as provenance)."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise PeftInteropError(f"{path} not found; pass the directory PeftModel.save_pretrained wrote")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise PeftInteropError(f"{path} is larger than {MAX_CONFIG_BYTES} bytes; not a PEFT config")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise PeftInteropError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(raw, dict):
        raise PeftInteropError(f"{path} must hold a JSON object")
    return PeftPromptConfig.from_dict(raw), raw


def read_peft_weights(directory: str | Path) -> dict[str, torch.Tensor]:
    """Load ``adapter_model.safetensors``; a pickled ``adapter_model.bin`` is refused, never opened."""
    directory = Path(directory)
    path = directory / WEIGHTS_NAME
    if not path.is_file():
        if (directory / PICKLE_NAME).is_file():
            raise PeftInteropError(
                f"{directory} holds only {PICKLE_NAME}, a pickle, which is never loaded here "
                "(it can run code). Re-save it with PeftModel.save_pretrained(..., safe_serialization=True) "
                f"to get {WEIGHTS_NAME}"
            )
        raise PeftInteropError(f"{path} not found; pass the directory PeftModel.save_pretrained wrote")
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as err:
        raise PeftInteropError(f"{path} is not a readable safetensors file: {err}") from err


def prompt_table(config: PeftPromptConfig, weights: dict[str, torch.Tensor]) -> torch.Tensor:
    """The (P, H) prompt a checkpoint stands for: PEFT's saved table, or the encoder's output."""
    if TABLE_KEY in weights:
        extra = sorted(set(weights) - {TABLE_KEY})
        if extra:
            raise PeftInteropError(f"unexpected tensors next to {TABLE_KEY!r}: {extra[:5]}")
        table = weights[TABLE_KEY]
    elif config.peft_type == "P_TUNING":
        table = encoder_output(config, _encoder_weights(weights))
    else:
        raise PeftInteropError(
            f"prompt-tuning checkpoint lacks the {TABLE_KEY!r} tensor; found {sorted(weights)[:5]}"
        )
    expected = (config.num_virtual_tokens, config.token_dim)
    if tuple(table.shape) != expected:
        raise PeftInteropError(
            f"prompt table has shape {tuple(table.shape)}, but the config says "
            f"(num_virtual_tokens, token_dim) = {expected}"
        )
    return table.detach().float().contiguous()  # (P, H)


def _encoder_weights(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip whatever prefix (``prompt_encoder.default.`` ...) precedes PromptEncoder's own names."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in weights.items():
        match = _ENCODER_KEY_RE.search(key)
        if match is None:
            raise PeftInteropError(f"tensor {key!r} is neither {TABLE_KEY!r} nor a P-tuning encoder weight")
        out[match.group(1)] = tensor
    return out


def read_peft_prompt(directory: str | Path) -> tuple[PeftPromptConfig, torch.Tensor, dict[str, Any]]:
    """Config, (P, H) prompt and raw config dict of a PEFT prompt-tuning or P-tuning checkpoint."""
    config, raw = read_peft_config(directory)
    return config, prompt_table(config, read_peft_weights(directory)), raw


# ---- the two conversions -------------------------------------------------------------------
def _as_base(base: BaseModel | str | Path) -> BaseModel:
    # hub ids and local directories take the same path: AutoModelForCausalLM.from_pretrained
    return base if isinstance(base, BaseModel) else load_base_model(base, device="cpu")


def import_peft(
    directory: str | Path,
    *,
    base: BaseModel | str | Path,
    out: str | Path,
    profile: str,
) -> str:
    """Write the artifact for a PEFT checkpoint, bound to `base`; returns the artifact's sha256."""
    base = _as_base(base)
    config, table, raw = read_peft_prompt(directory)  # (P, H)
    if config.token_dim != base.hidden_size:
        raise PeftInteropError(
            f"checkpoint token_dim {config.token_dim} != hidden size {base.hidden_size} of {base.name!r}; "
            "pass the base model it was trained on"
        )
    if config.base_model_name_or_path and config.base_model_name_or_path != base.name:
        log.warning("checkpoint names base %r; binding it to %r", config.base_model_name_or_path, base.name)
    try:
        return save_artifact(
            out,
            table,
            profile=profile,
            base_model=base.name,
            base_fingerprint=model_fingerprint(base.model, base.tokenizer),
            training_config={"source": "peft", "peft_config": raw},
        )
    except ArtifactError as err:
        raise PeftInteropError(f"cannot make an artifact from {directory}: {err}") from err


def export_peft(artifact: str | Path, *, base: BaseModel | str | Path, out_dir: str | Path) -> Path:
    """Write a PEFT prompt-tuning checkpoint that ``PeftModel.from_pretrained(base, out_dir)`` loads."""
    base = _as_base(base)
    loaded = load_artifact(
        artifact,
        expected_fingerprint=model_fingerprint(base.model, base.tokenizer),
        expected_hidden_size=base.hidden_size,
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = loaded.embeddings.float().contiguous()  # (P, H): PEFT's embedding is float32
    config = peft_prompt_tuning_config(base, num_virtual_tokens=table.shape[0])
    (out_dir / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    provenance = {"format": "pt", "spul_profile": loaded.meta.profile, "spul_artifact_sha256": loaded.sha256}
    save_file({TABLE_KEY: table}, out_dir / WEIGHTS_NAME, metadata=provenance)
    return out_dir


def peft_prompt_tuning_config(base: BaseModel, *, num_virtual_tokens: int) -> dict[str, Any]:
    """The ``adapter_config.json`` of PEFT's PromptTuningConfig for a decoder-only model, inference mode."""
    text_config = base.model.config.get_text_config()
    return {
        "peft_type": "PROMPT_TUNING",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base.name,
        "inference_mode": True,
        "num_virtual_tokens": num_virtual_tokens,
        "token_dim": base.hidden_size,
        "num_transformer_submodules": 1,
        "num_attention_heads": text_config.num_attention_heads,
        "num_layers": text_config.num_hidden_layers,
        "prompt_tuning_init": "RANDOM",
        "prompt_tuning_init_text": None,
        "tokenizer_name_or_path": None,
        "tokenizer_kwargs": None,
        "revision": None,
        "modules_to_save": None,
        "auto_mapping": None,
    }
