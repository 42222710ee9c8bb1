"""The prompt artifact: one safetensors file, tensor `prompt_embeddings` (P, H) plus metadata.

Never pickle: the bytes are parsed by safetensors' own header parser, and the header is checked
against hard limits before any tensor is materialised.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from spul.jsonsafe import json_safe

FORMAT_VERSION = 1
TENSOR_NAME = "prompt_embeddings"
ALLOWED_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
ST_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}
DEFAULT_MAX_BYTES = 64 * 1024 * 1024  # 64 MiB: P=512 x H=16384 x fp32 still fits
MAX_HEADER_BYTES = 1024 * 1024
MAX_VIRTUAL_TOKENS = 1024


class ArtifactError(ValueError):
    """An artifact that cannot be used. `reason` is a short machine-readable code (metric label)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ArtifactMeta:
    profile: str
    base_model: str
    base_fingerprint: str
    num_virtual_tokens: int
    hidden_size: int
    dtype: str
    tensor_sha256: str
    created_at: str = ""
    format_version: int = FORMAT_VERSION
    training_config: dict[str, Any] = field(default_factory=dict)
    eval_metrics: dict[str, Any] = field(default_factory=dict)

    def to_header(self) -> dict[str, str]:
        """safetensors metadata is str -> str; nested fields travel as JSON."""
        out: dict[str, str] = {}
        for key, value in asdict(self).items():
            out[key] = json.dumps(value, sort_keys=True) if isinstance(value, dict) else str(value)
        return out

    @classmethod
    def from_header(cls, header: dict[str, str]) -> ArtifactMeta:
        missing = [k for k in _REQUIRED_KEYS if k not in header]
        if missing:
            raise ArtifactError("bad_metadata", f"artifact metadata lacks {missing}; re-export it with `spul train`")
        try:
            return cls(
                profile=header["profile"],
                base_model=header["base_model"],
                base_fingerprint=header["base_fingerprint"],
                num_virtual_tokens=int(header["num_virtual_tokens"]),
                hidden_size=int(header["hidden_size"]),
                dtype=header["dtype"],
                tensor_sha256=header["tensor_sha256"],
                created_at=header.get("created_at", ""),
                format_version=int(header["format_version"]),
                training_config=_json_object(header, "training_config"),
                eval_metrics=_json_object(header, "eval_metrics"),
            )
        except (ValueError, TypeError) as err:
            raise ArtifactError("bad_metadata", f"artifact metadata is malformed: {err}") from err


MAX_METADATA_DEPTH = 32


def _json_object(header: dict[str, str], key: str) -> dict[str, Any]:
    """A metadata field holding a JSON object, at most MAX_METADATA_DEPTH levels deep."""
    try:
        value = json.loads(header.get(key, "{}"))
    except RecursionError as err:  # [[[[... deeper than the interpreter's recursion limit
        raise ValueError(f"{key} nests deeper than {MAX_METADATA_DEPTH} levels") from err
    if not isinstance(value, dict):
        raise TypeError(f"{key} must be a JSON object, not {type(value).__name__}")
    level, depth = [value], 1
    while level:  # breadth-first, no recursion
        level = [v for item in level for v in (item.values() if isinstance(item, dict) else item)
                 if isinstance(v, (dict, list))]
        depth += bool(level)
        if depth > MAX_METADATA_DEPTH:
            raise ValueError(f"{key} nests deeper than {MAX_METADATA_DEPTH} levels")
    return value


_REQUIRED_KEYS = (
    "format_version",
    "profile",
    "base_model",
    "base_fingerprint",
    "num_virtual_tokens",
    "hidden_size",
    "dtype",
    "tensor_sha256",
)


@dataclass(frozen=True)
class PromptArtifact:
    embeddings: torch.Tensor  # (P, H)
    meta: ArtifactMeta
    sha256: str  # of the file bytes: the content address of this version

    @property
    def num_virtual_tokens(self) -> int:
        return self.meta.num_virtual_tokens


def tensor_digest(tensor: torch.Tensor) -> str:
    flat = tensor.detach().contiguous().cpu().reshape(-1).view(torch.uint8)
    return hashlib.sha256(flat.numpy().tobytes()).hexdigest()


def artifact_bytes(
    embeddings: torch.Tensor,
    *,
    profile: str,
    base_model: str,
    base_fingerprint: str,
    training_config: dict[str, Any] | None = None,
    eval_metrics: dict[str, Any] | None = None,
    created_at: str | None = None,
) -> bytes:
    """Serialise a (P, H) prompt and its metadata to safetensors bytes (validated first)."""
    embeddings = embeddings.detach().contiguous().cpu()
    dtype_name = _dtype_name(embeddings.dtype)
    if embeddings.dim() != 2:
        raise ArtifactError("bad_shape", f"prompt must be (P, H); got {tuple(embeddings.shape)}")
    _check_finite(embeddings)
    meta = ArtifactMeta(
        profile=profile,
        base_model=base_model,
        base_fingerprint=base_fingerprint,
        num_virtual_tokens=embeddings.shape[0],
        hidden_size=embeddings.shape[1],
        dtype=dtype_name,
        tensor_sha256=tensor_digest(embeddings),
        created_at=created_at or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        training_config=training_config or {},
        eval_metrics=json_safe(eval_metrics or {}),
    )
    return st_save({TENSOR_NAME: embeddings}, metadata=meta.to_header())


def save_artifact(path: str | Path, embeddings: torch.Tensor, **meta: Any) -> str:
    """Write an artifact to `path` atomically; returns its sha256 (content address)."""
    from spul.prompts_store.atomic import atomic_write_bytes

    data = artifact_bytes(embeddings, **meta)
    atomic_write_bytes(Path(path), data)
    return hashlib.sha256(data).hexdigest()


def load_artifact(
    source: str | Path | bytes,
    *,
    expected_fingerprint: str | None = None,
    expected_hidden_size: int | None = None,
    serving_dtype: torch.dtype | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> PromptArtifact:
    """Parse and validate an artifact from a path or bytes. Raises ArtifactError naming the problem.

    With `serving_dtype`, the values must also stay finite once converted to it (a float32 1e6
    is inf in float16): a prompt that would be served as inf/NaN is refused here.
    """
    data = _read_bounded(source, max_bytes)
    header = _parse_header(data)
    meta = ArtifactMeta.from_header(header.get("__metadata__") or {})
    _check_header_tensors(header, meta)
    try:
        tensors = st_load(data)
    except (SafetensorError, ValueError, RuntimeError) as err:
        raise ArtifactError("not_safetensors", f"not a readable safetensors file: {err}") from err
    tensor = tensors[TENSOR_NAME]
    _check_finite(tensor)
    if tensor_digest(tensor) != meta.tensor_sha256:
        raise ArtifactError("digest_mismatch", "tensor bytes do not match the digest in the metadata (corrupted?)")
    if serving_dtype is not None:
        _check_fits(tensor, serving_dtype)
    if expected_hidden_size is not None and meta.hidden_size != expected_hidden_size:
        raise ArtifactError(
            "hidden_size_mismatch",
            f"prompt hidden size {meta.hidden_size} != model hidden size {expected_hidden_size}",
        )
    if expected_fingerprint is not None and meta.base_fingerprint != expected_fingerprint:
        raise ArtifactError(
            "fingerprint_mismatch",
            f"artifact was trained for base model {meta.base_model!r} ({meta.base_fingerprint[:19]}...), "
            f"not the loaded model ({expected_fingerprint[:19]}...); retrain it for this model",
        )
    return PromptArtifact(embeddings=tensor, meta=meta, sha256=hashlib.sha256(data).hexdigest())


def _read_bounded(source: str | Path | bytes, max_bytes: int) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    else:
        path = Path(source)
        try:
            if not path.is_file():
                raise FileNotFoundError(path)
            if path.stat().st_size > max_bytes:
                raise ArtifactError("too_large", f"{path} is larger than the {max_bytes}-byte limit")
            data = path.read_bytes()
        except FileNotFoundError as err:  # also: deleted by another process while we looked
            raise ArtifactError("not_found", f"no artifact file at {path}") from err
    if len(data) > max_bytes:
        raise ArtifactError("too_large", f"artifact is {len(data)} bytes; the limit is {max_bytes}")
    return data


def _parse_header(data: bytes) -> dict[str, Any]:
    """Read the safetensors JSON header ourselves so limits apply before anything is allocated."""
    if len(data) < 8:
        raise ArtifactError("not_safetensors", "file is too short to be safetensors (truncated?)")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > MAX_HEADER_BYTES or 8 + header_len > len(data):
        raise ArtifactError(
            "not_safetensors", f"safetensors header length {header_len} is invalid for a {len(data)}-byte file"
        )
    try:
        header = json.loads(data[8 : 8 + header_len])
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:  # RecursionError: [[[[...
        raise ArtifactError("not_safetensors", f"safetensors header is not JSON: {err}") from err
    if not isinstance(header, dict):
        raise ArtifactError("not_safetensors", "safetensors header is not a JSON object")
    return header


def _check_header_tensors(header: dict[str, Any], meta: ArtifactMeta) -> None:
    if meta.format_version != FORMAT_VERSION:
        raise ArtifactError(
            "format_version",
            f"artifact format version {meta.format_version} is not supported (this build reads {FORMAT_VERSION})",
        )
    names = sorted(k for k in header if k != "__metadata__")
    if names != [TENSOR_NAME]:
        raise ArtifactError("bad_tensors", f"artifact must hold exactly one tensor {TENSOR_NAME!r}; found {names}")
    spec = header[TENSOR_NAME]
    if not isinstance(spec, dict) or not isinstance(spec.get("dtype"), str):
        raise ArtifactError("bad_tensors", f"header entry of {TENSOR_NAME!r} is not a safetensors tensor entry")
    dtype = ST_DTYPES.get(spec["dtype"])
    if dtype is None:
        raise ArtifactError("bad_dtype", f"dtype {spec.get('dtype')} not allowed; use one of {sorted(ALLOWED_DTYPES)}")
    if dtype != meta.dtype:
        raise ArtifactError("bad_dtype", f"tensor dtype {dtype} disagrees with metadata dtype {meta.dtype}")
    shape = spec.get("shape")
    expected = [meta.num_virtual_tokens, meta.hidden_size]
    if shape != expected:
        raise ArtifactError("bad_shape", f"tensor shape {shape} disagrees with metadata (P, H) = {expected}")
    if not 1 <= meta.num_virtual_tokens <= MAX_VIRTUAL_TOKENS or meta.hidden_size < 1:
        raise ArtifactError("bad_shape", f"(P, H) = {expected} out of range (1 <= P <= {MAX_VIRTUAL_TOKENS})")


def _check_finite(tensor: torch.Tensor) -> None:
    if not torch.isfinite(tensor.float()).all():
        raise ArtifactError("non_finite", "prompt embeddings contain NaN or Inf")


def _check_fits(tensor: torch.Tensor, dtype: torch.dtype) -> None:
    """The values stay finite once held in `dtype` (the dtype the model serves in)."""
    if torch.isfinite(tensor.to(dtype)).all():
        return
    largest = float(tensor.float().abs().max())
    raise ArtifactError(
        "non_finite",
        f"prompt embeddings overflow {str(dtype).removeprefix('torch.')} (largest magnitude {largest:.3g}, "
        f"limit {torch.finfo(dtype).max:.3g}): serve in a wider dtype (SPUL_DTYPE=bfloat16 or float32) "
        "or retrain the prompt",
    )


def _dtype_name(dtype: torch.dtype) -> str:
    for name, value in ALLOWED_DTYPES.items():
        if value == dtype:
            return name
    raise ArtifactError("bad_dtype", f"dtype {dtype} not allowed; use one of {sorted(ALLOWED_DTYPES)}")
