"""A stable identity for a base model: changes when its weights or its tokenizer change."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch


def model_fingerprint(model: torch.nn.Module, tokenizer: Any | None = None) -> str:
    """sha256 over every parameter/buffer (name, shape, dtype, bytes) and the tokenizer vocabulary.

    Independent of device and of the order in which tensors were registered. Hashing reads every
    weight once (about 1 GB/s), which is paid once per model load, never per request.
    """
    digest = hashlib.sha256()
    state = model.state_dict()
    for name in sorted(state):
        tensor = state[name].detach()
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}\n".encode())
        digest.update(_tensor_bytes(tensor))
    if tokenizer is not None:
        vocab = sorted(tokenizer.get_vocab().items())
        digest.update(json.dumps(vocab, ensure_ascii=False).encode())
    return "sha256:" + digest.hexdigest()


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    flat = tensor.contiguous().cpu().reshape(-1)
    # view as bytes so bf16 and friends hash without a lossy conversion
    return flat.view(torch.uint8).numpy().tobytes()
