"""A corpus of bad artifact bodies and profile ids, each with the refusal it must get."""

from __future__ import annotations

import io
import json
import pickle
import struct
from dataclasses import dataclass

import torch
from safetensors.torch import save as st_save

from spul.prompts_store.artifact import TENSOR_NAME, ArtifactMeta, tensor_digest

HIDDEN = 32  # the tiny test model's hidden size


@dataclass(frozen=True)
class BadBody:
    name: str
    body: bytes
    reason: str  # ArtifactError.reason the server must answer with (detail.reason)


def craft(tensors: dict[str, torch.Tensor], *, fingerprint: str, **overrides: object) -> bytes:
    """safetensors bytes whose metadata is self-consistent for the first tensor unless overridden."""
    first = next(iter(tensors.values()))
    dtype = {torch.float32: "float32", torch.float16: "float16"}.get(first.dtype, str(first.dtype))
    meta = ArtifactMeta(
        profile="alpha",
        base_model="tiny",
        base_fingerprint=fingerprint,
        num_virtual_tokens=first.shape[0],
        hidden_size=first.shape[-1],
        dtype=dtype,
        tensor_sha256=tensor_digest(first),
    ).to_header()
    meta.update({k: str(v) for k, v in overrides.items()})
    return st_save(tensors, metadata=meta)


def raw_safetensors(header: dict, payload: bytes = b"") -> bytes:
    encoded = json.dumps(header).encode()
    return struct.pack("<Q", len(encoded)) + encoded + payload


def bad_bodies(valid: bytes, fingerprint: str) -> list[BadBody]:
    ok = torch.randn(4, HIDDEN)  # (P, H)
    nan, inf = ok.clone(), ok.clone().half()
    nan[1, 3] = float("nan")
    inf[0, 0] = float("inf")
    tampered = bytearray(valid)
    tampered[-5] ^= 0xFF  # flip bits in the tensor data, keep the recorded digest
    zip_pickle = io.BytesIO()
    torch.save({TENSOR_NAME: ok}, zip_pickle)
    pickled = pickle.dumps({TENSOR_NAME: ok.tolist()})
    meta = json.loads(valid[8 : 8 + struct.unpack("<Q", valid[:8])[0]])["__metadata__"]
    huge = 10**15
    f = fingerprint
    return [
        BadBody("empty", b"", "not_safetensors"),
        BadBody("pickle", pickled, "not_safetensors"),
        BadBody("torch_save_zip", zip_pickle.getvalue(), "not_safetensors"),
        BadBody("pickle_behind_length_prefix", struct.pack("<Q", len(pickled)) + pickled, "not_safetensors"),
        BadBody("truncated_7_bytes", valid[:7], "not_safetensors"),
        BadBody("truncated_header", valid[:40], "not_safetensors"),
        BadBody("truncated_data", valid[:-9], "not_safetensors"),
        BadBody("header_length_2_63", struct.pack("<Q", 2**63) + b"{}", "not_safetensors"),
        BadBody("header_not_json", struct.pack("<Q", 4) + b"\xff\xfe{[", "not_safetensors"),
        BadBody("header_json_list", raw_safetensors([]), "not_safetensors"),  # type: ignore[arg-type]
        BadBody(
            "huge_declared_shape",
            raw_safetensors(
                {
                    "__metadata__": {**meta, "num_virtual_tokens": str(huge)},
                    TENSOR_NAME: {"dtype": "F32", "shape": [huge, HIDDEN], "data_offsets": [0, 4 * huge]},
                }
            ),
            "bad_shape",
        ),
        BadBody(
            "huge_declared_offsets",
            raw_safetensors(
                {
                    "__metadata__": meta,
                    TENSOR_NAME: {
                        "dtype": "F32",
                        "shape": [int(meta["num_virtual_tokens"]), HIDDEN],
                        "data_offsets": [0, huge],
                    },
                }
            ),
            "not_safetensors",
        ),
        BadBody(
            "tensor_entry_not_an_object",
            raw_safetensors({"__metadata__": meta, TENSOR_NAME: 5}, b"\0" * 512),
            "bad_tensors",
        ),
        BadBody(
            "dtype_not_a_string",
            raw_safetensors(
                {
                    "__metadata__": meta,
                    TENSOR_NAME: {"dtype": ["F32"], "shape": [4, HIDDEN], "data_offsets": [0, 512]},
                }
            ),
            "bad_tensors",
        ),
        BadBody(
            "header_nested_20k_deep",
            struct.pack("<Q", 40_000) + b"[" * 20_000 + b"]" * 20_000,
            "not_safetensors",
        ),
        BadBody("nan", craft({TENSOR_NAME: nan}, fingerprint=f), "non_finite"),
        BadBody("inf_fp16", craft({TENSOR_NAME: inf}, fingerprint=f), "non_finite"),
        BadBody("digest_mismatch", bytes(tampered), "digest_mismatch"),
        BadBody(
            "wrong_fingerprint",
            craft({TENSOR_NAME: ok}, fingerprint="sha256:" + "0" * 64),
            "fingerprint_mismatch",
        ),
        BadBody(
            "wrong_hidden_size",
            craft({TENSOR_NAME: torch.randn(4, HIDDEN + 1)}, fingerprint=f),
            "hidden_size_mismatch",
        ),
        BadBody("three_dim", craft({TENSOR_NAME: torch.randn(1, 4, HIDDEN)}, fingerprint=f), "bad_shape"),
        BadBody(
            "shape_disagrees_with_meta",
            craft({TENSOR_NAME: ok}, fingerprint=f, num_virtual_tokens=5),
            "bad_shape",
        ),
        BadBody("float64", craft({TENSOR_NAME: ok.double()}, fingerprint=f), "bad_dtype"),
        BadBody("int32", craft({TENSOR_NAME: ok.int()}, fingerprint=f), "bad_dtype"),
        BadBody(
            "dtype_disagrees_with_meta", craft({TENSOR_NAME: ok}, fingerprint=f, dtype="float16"), "bad_dtype"
        ),
        BadBody(
            "extra_tensor", craft({TENSOR_NAME: ok, "payload": ok.clone()}, fingerprint=f), "bad_tensors"
        ),
        BadBody("wrong_tensor_name", craft({"weights": ok}, fingerprint=f), "bad_tensors"),
        BadBody("no_metadata", st_save({TENSOR_NAME: ok}), "bad_metadata"),
        BadBody(
            "metadata_not_numbers",
            craft({TENSOR_NAME: ok}, fingerprint=f, hidden_size="many"),
            "bad_metadata",
        ),
        BadBody(
            "training_config_not_json",
            craft({TENSOR_NAME: ok}, fingerprint=f, training_config="{"),
            "bad_metadata",
        ),
        BadBody(
            "future_format", craft({TENSOR_NAME: ok}, fingerprint=f, format_version=99), "format_version"
        ),
    ]


# profile ids as they appear in the raw request path; each must be refused (4xx) and touch nothing
BAD_IDS = [
    "..",
    "%2E%2E",
    "..%2F..%2Fescaped",
    "%2E%2E%2F%2E%2E%2Fescaped",
    "a%2Fb",
    "a%5Cb",
    "a%00b",
    "%00",
    ".hidden",
    "-dash",
    "a%20b",
    "x" * 65,
    "y" * 5000,
    "%C3%BCn%C3%AFcode",
    "%E2%80%AEevil",
    "%EF%BC%8E%EF%BC%8E",  # fullwidth dots
    "%252E%252E",  # double-encoded ..
]
