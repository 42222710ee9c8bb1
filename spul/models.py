"""Load a frozen base model and its tokenizer, and choose device and dtype: the one loader.

Used by the trainer (float32 weights, autocast on GPU) and by the server (weights in the serving
dtype). Prompt artifacts are matched to a model by `spul.prompts_store.model_fingerprint`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from spul.errors import UserError

log = logging.getLogger(__name__)

DeviceName = Literal["auto", "cpu", "cuda"]


DtypeName = Literal["auto", "float32", "bfloat16", "float16"]


class ModelLoadError(UserError, ValueError):
    """The base model or tokenizer could not be loaded; the message says what to pass instead."""


@dataclass
class BaseModel:
    """A frozen causal LM ready for prompt training or evaluation."""

    model: Any  # transformers PreTrainedModel (AutoModelForCausalLM)
    tokenizer: Any  # transformers PreTrainedTokenizerBase
    name: str  # hub id or path as given: recorded in artifacts as `base_model`
    device: torch.device
    autocast_dtype: torch.dtype | None  # None: plain float32 (CPU)

    @property
    def hidden_size(self) -> int:
        return int(self.model.get_input_embeddings().weight.shape[1])


def pick_device(requested: DeviceName = "auto") -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("--device cuda was requested but no CUDA device is available; use --device cpu")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def serving_dtype(requested: DtypeName, device: torch.device) -> torch.dtype:
    """The dtype weights are held in for serving: bfloat16 on CUDA, float32 on CPU, unless named."""
    if requested == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, requested)


def pick_autocast_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 where the GPU supports it, else fp16; float32 on CPU (CPU autocast is slow and lossy)."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def load_base_model(
    name_or_path: str | Path, *, device: DeviceName | torch.device = "auto", dtype: torch.dtype = torch.float32
) -> BaseModel:
    """Load model + tokenizer, frozen and in eval mode, from a model name (`spul.catalog`: `reference`,
    `smollm2-135m-instruct`, a `.gguf` file), a local HF directory or a hub id.

    Training keeps float32 weights (autocast handles reduced precision on GPU); the server passes
    its serving dtype.
    """
    log.info("loading %s (the first load in a process imports transformers: seconds to a minute)", name_or_path)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from spul.catalog import NAMES, CatalogError, resolve_model

    name = str(name_or_path)
    try:
        path = resolve_model(name)  # converts a GGUF file once per machine
    except CatalogError as err:
        raise ModelLoadError(str(err)) from err
    _check_local_path(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except (OSError, ValueError) as err:
        raise ModelLoadError(
            f"cannot load base model {name!r}: {err}. Pass a named model ({', '.join(NAMES)}), a .gguf "
            "file, a local Hugging Face model directory (e.g. WORLD/model) or a hub id available offline"
        ) from err
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # decoder-only tokenizers often lack a pad token
    target = device if isinstance(device, torch.device) else pick_device(device)
    model.to(target).eval()
    model.requires_grad_(False)  # the base model is frozen: only the soft prompt trains
    log.info("loaded %s on %s", name, target)
    amp = pick_autocast_dtype(target) if dtype == torch.float32 else None  # half weights: no autocast
    return BaseModel(model, tokenizer, name, target, amp)


def _check_local_path(name: str) -> None:
    """A name that looks like a path must be a model directory (saves a confusing hub error)."""
    looks_local = name.startswith((".", "/", "~")) or Path(name).exists() or name.count("/") > 1
    if not looks_local:
        return
    path = Path(name).expanduser()
    if not path.is_dir():
        raise ModelLoadError(f"base model directory {path} does not exist; build a world or pass --base")
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{path} is not a Hugging Face model directory (no config.json)")


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    """Mixed precision on GPU when `dtype` is given; nothing on CPU (float32 there)."""
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield
