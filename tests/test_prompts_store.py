"""prompts_store: artifact round-trip and validation, the versioned store, prepend_prompt."""

from __future__ import annotations

import json
import multiprocessing as mp
import struct

import pytest
import torch

from spul.prompts_store import (
    ArtifactError,
    InvalidProfileId,
    ProfileNotFound,
    PromptStore,
    StoreError,
    artifact_bytes,
    load_artifact,
    model_fingerprint,
    position_ids_from_mask,
    prepend_prompt,
    save_artifact,
    validate_profile_id,
)
from spul.prompts_store.artifact import TENSOR_NAME

FP = "sha256:" + "ab" * 32


def make_bytes(p: int = 4, h: int = 8, *, fill: float | None = None, profile: str = "demo", **kw) -> bytes:
    emb = torch.randn(p, h) if fill is None else torch.full((p, h), fill)
    return artifact_bytes(emb, profile=profile, base_model="tiny", base_fingerprint=FP, **kw)


# ---- artifact ---------------------------------------------------------------------------
def test_artifact_round_trip_keeps_tensor_and_metadata(tmp_path):
    emb = torch.randn(5, 8)
    sha = save_artifact(
        tmp_path / "a.safetensors", emb, profile="p1", base_model="tiny", base_fingerprint=FP,
        training_config={"lr": 0.01}, eval_metrics={"spul": {"test_forget": {"accuracy": 0.1}}},
    )
    art = load_artifact(tmp_path / "a.safetensors", expected_fingerprint=FP, expected_hidden_size=8)
    assert torch.equal(art.embeddings, emb)
    assert art.sha256 == sha
    assert (art.meta.num_virtual_tokens, art.meta.hidden_size, art.meta.dtype) == (5, 8, "float32")
    assert art.meta.training_config == {"lr": 0.01}
    assert art.meta.eval_metrics["spul"]["test_forget"]["accuracy"] == 0.1
    assert art.meta.created_at


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_artifacts_load(dtype):
    data = artifact_bytes(torch.randn(3, 8).to(dtype), profile="p", base_model="m", base_fingerprint=FP)
    assert load_artifact(data).embeddings.dtype == dtype


def test_nan_is_refused_when_saving_and_loading():
    with pytest.raises(ArtifactError) as err:
        make_bytes(fill=float("nan"))
    assert err.value.reason == "non_finite"
    # forge a file whose tensor holds Inf but whose header is otherwise consistent
    good = make_bytes(fill=1.0)
    (n,) = struct.unpack("<Q", good[:8])
    forged = good[: 8 + n] + torch.full((4, 8), float("inf")).numpy().tobytes()
    with pytest.raises(ArtifactError) as err:
        load_artifact(forged)
    assert err.value.reason == "non_finite"


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda d: d[:20], "not_safetensors"),  # truncated
        (lambda d: b"\x80\x04\x95" + d[3:], "not_safetensors"),  # pickle magic
        (lambda d: b"", "not_safetensors"),
        (lambda d: struct.pack("<Q", 10**15) + d[8:], "not_safetensors"),  # huge declared header
        (lambda d: d[:-4], "not_safetensors"),  # truncated data
    ],
)
def test_corrupt_files_are_refused_with_a_reason(mutate, reason):
    with pytest.raises(ArtifactError) as err:
        load_artifact(mutate(make_bytes()))
    assert err.value.reason == reason


def test_pickle_file_is_never_unpickled(tmp_path):
    import pickle

    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('unpickled!')",))

    path = tmp_path / "evil.safetensors"
    path.write_bytes(pickle.dumps(Boom()))
    with pytest.raises(ArtifactError):
        load_artifact(path)


def _rewrite_header(data: bytes, edit) -> bytes:
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    edit(header)
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data[8 + n :]


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (lambda h: h["__metadata__"].update(num_virtual_tokens="7"), "bad_shape"),
        (lambda h: h["__metadata__"].update(format_version="99"), "format_version"),
        (lambda h: h["__metadata__"].pop("base_fingerprint"), "bad_metadata"),
        (lambda h: h[TENSOR_NAME].update(dtype="I64"), "bad_dtype"),
        (lambda h: h.update(extra=h[TENSOR_NAME]), "bad_tensors"),
        (lambda h: h["__metadata__"].update(tensor_sha256="0" * 64), "digest_mismatch"),
    ],
)
def test_inconsistent_headers_are_refused(edit, reason):
    with pytest.raises(ArtifactError) as err:
        load_artifact(_rewrite_header(make_bytes(), edit))
    assert err.value.reason == reason


def test_fingerprint_and_hidden_size_are_checked():
    data = make_bytes(h=8)
    with pytest.raises(ArtifactError, match="retrain it for this model") as err:
        load_artifact(data, expected_fingerprint="sha256:" + "00" * 32)
    assert err.value.reason == "fingerprint_mismatch"
    with pytest.raises(ArtifactError) as err:
        load_artifact(data, expected_hidden_size=16)
    assert err.value.reason == "hidden_size_mismatch"


def test_size_limit(tmp_path):
    data = make_bytes(p=64, h=64)
    with pytest.raises(ArtifactError) as err:
        load_artifact(data, max_bytes=1000)
    assert err.value.reason == "too_large"


# ---- fingerprint ------------------------------------------------------------------------
def test_fingerprint_changes_with_weights_and_tokenizer(tiny_model):
    from support.tinymodel import make_tiny_model

    model, tokenizer = tiny_model
    fp = model_fingerprint(model, tokenizer)
    same, _ = make_tiny_model()
    assert model_fingerprint(same, tokenizer) == fp  # stable across loads
    other, _ = make_tiny_model(seed=1)
    assert model_fingerprint(other, tokenizer) != fp
    _, grown = make_tiny_model()  # a private tokenizer: the fixture's is shared
    grown.add_tokens(["zzznew"])
    assert model_fingerprint(model, grown) != fp


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fingerprint_is_the_same_for_every_dtype_a_checkpoint_is_loaded_in(tiny_model_dir, tmp_path, dtype):
    """A trainer on float32 weights and a server on half-precision weights see one model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    fp32 = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    bf16_dir = tmp_path / "bf16"  # published checkpoints are mostly stored in bfloat16
    fp32.to(torch.bfloat16).save_pretrained(bf16_dir)
    want = model_fingerprint(AutoModelForCausalLM.from_pretrained(bf16_dir, dtype=torch.float32), tokenizer)
    assert model_fingerprint(AutoModelForCausalLM.from_pretrained(bf16_dir, dtype=dtype), tokenizer) == want
    if dtype == torch.bfloat16:  # a float32 checkpoint served in bfloat16
        fp32_fp = model_fingerprint(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32), tokenizer)
        half = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=dtype)
        assert model_fingerprint(half, tokenizer) == fp32_fp


@pytest.mark.parametrize(
    "change", [{"sliding_window": 8}, {"rope_parameters": {"rope_type": "default", "rope_theta": 123.0}},
               {"rms_norm_eps": 1e-3}]
)
def test_fingerprint_covers_the_model_config(tiny_model, change):
    """Same weights, different attention window / rope / norm: a different model."""
    import copy

    model, tokenizer = tiny_model
    fp = model_fingerprint(model, tokenizer)
    other = copy.deepcopy(model)
    other.config.dtype = torch.bfloat16  # how it is held and where it came from: not identity
    other.config._name_or_path = "/somewhere/else"
    assert model_fingerprint(other, tokenizer) == fp
    for key, value in change.items():
        setattr(other.config, key, value)
    assert model_fingerprint(other, tokenizer) != fp


# ---- store ------------------------------------------------------------------------------
def test_store_versions_activate_rollback_delete(tmp_path):
    store = PromptStore(tmp_path)
    v1 = store.put("alpha", make_bytes())
    v2 = store.put("alpha", make_bytes())
    assert (v1.version, v2.version) == (1, 2)
    assert v1.sha256 != v2.sha256
    assert store.active_version("alpha") == 2
    version, art = store.get("alpha")
    assert version == 2 and art.sha256 == v2.sha256
    store.activate("alpha", 1)  # rollback
    assert store.get("alpha")[1].sha256 == v1.sha256
    with pytest.raises(StoreError, match="activate another version first"):
        store.delete("alpha", 1)
    store.delete("alpha", 2)
    assert store.versions("alpha") == [1]
    store.put("beta", make_bytes(), activate=False)
    assert [p.profile for p in store.list()] == ["alpha", "beta"]
    assert store.info("beta").active_version is None
    store.delete("alpha")
    assert store.profiles() == ["beta"]
    with pytest.raises(ProfileNotFound):
        store.get("alpha")


def test_bad_upload_changes_nothing(tmp_path):
    store = PromptStore(tmp_path)
    good = store.put("alpha", make_bytes())
    before = sorted(p.name for p in (tmp_path / "profiles" / "alpha").iterdir())
    token = store.change_token()
    for bad in (b"not safetensors", make_bytes()[:-3]):
        with pytest.raises(ArtifactError):
            store.put("alpha", bad)
    with pytest.raises(ArtifactError):
        store.put("alpha", make_bytes(), expected_fingerprint="sha256:" + "11" * 32)
    assert sorted(p.name for p in (tmp_path / "profiles" / "alpha").iterdir()) == before
    assert store.get("alpha")[1].sha256 == good.sha256
    assert store.change_token() == token


@pytest.mark.parametrize(
    "bad", ["", "../etc", "a/b", "..", ".hidden", "a" * 65, "caf\u00e9", "a b", "x\x00y", "-x", "a\\b"]
)
def test_profile_ids_are_validated(tmp_path, bad):
    with pytest.raises(InvalidProfileId):
        validate_profile_id(bad)
    with pytest.raises(InvalidProfileId):
        PromptStore(tmp_path).put(bad, make_bytes())
    assert not any((tmp_path / "profiles").iterdir())


def test_missing_sidecar_is_rebuilt(tmp_path):
    store = PromptStore(tmp_path)
    v = store.put("alpha", make_bytes())
    (tmp_path / "profiles" / "alpha" / "v000001.json").unlink()
    assert store.version_info("alpha", 1).sha256 == v.sha256


def _put_many(root, n):
    store = PromptStore(root)
    return [store.put("shared", make_bytes()).version for _ in range(n)]


def test_concurrent_writers_never_share_a_version(tmp_path):
    ctx = mp.get_context("spawn")
    with ctx.Pool(2) as pool:
        results = pool.starmap(_put_many, [(str(tmp_path), 5), (str(tmp_path), 5)])
    versions = sorted(v for r in results for v in r)
    assert versions == list(range(1, 11))
    store = PromptStore(tmp_path)
    assert all(store.get("shared", v)[1] for v in versions)


def test_change_token_moves_on_every_write(tmp_path):
    store = PromptStore(tmp_path)
    tokens = {store.change_token()}
    store.put("a", make_bytes())
    tokens.add(store.change_token())
    store.put("a", make_bytes())
    tokens.add(store.change_token())
    store.activate("a", 1)
    tokens.add(store.change_token())
    assert len(tokens) == 4


# ---- prepend ----------------------------------------------------------------------------
def test_prepend_prompt_shapes_mask_and_labels():
    prompt = torch.randn(3, 4)
    embeds = torch.randn(2, 5, 4)
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])
    labels = torch.tensor([[-100, -100, -100, 7, 8], [-100, -100, -100, -100, 9]])
    out, out_mask, out_labels = prepend_prompt(prompt, embeds, mask, labels)
    assert out.shape == (2, 8, 4)
    assert torch.equal(out[:, :3], prompt.expand(2, -1, -1))
    assert torch.equal(out[:, 3:], embeds)
    assert out_mask.tolist() == [[1, 1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 1, 1, 1]]
    assert out_labels[:, :3].eq(-100).all() and torch.equal(out_labels[:, 3:], labels)
    assert position_ids_from_mask(out_mask).tolist() == [[0, 1, 2, 3, 4, 5, 6, 7], [0, 1, 2, 0, 0, 3, 4, 5]]


def test_prepend_per_row_prompts_and_bad_shapes():
    prompts = torch.randn(2, 3, 4)
    out, _, labels = prepend_prompt(prompts, torch.zeros(2, 1, 4), torch.ones(2, 1))
    assert torch.equal(out[1, :3], prompts[1]) and labels is None
    with pytest.raises(ValueError, match="prompts must be"):
        prepend_prompt(torch.randn(3, 5), torch.zeros(2, 1, 4), torch.ones(2, 1))


def test_left_padded_row_matches_the_row_alone(tiny_model):
    """The property serving and eval rely on: padding + prompt gives the same logits as alone."""
    model, tokenizer = tiny_model
    emb = model.get_input_embeddings()
    prompt = torch.randn(3, model.config.hidden_size) * 0.1
    ids = torch.tensor([tokenizer("where was alba born ?")["input_ids"]])
    alone, mask, _ = prepend_prompt(prompt, emb(ids), torch.ones_like(ids))
    with torch.no_grad():
        ref = model(inputs_embeds=alone, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits
        padded_ids = torch.cat([torch.zeros(1, 2, dtype=torch.long), ids], dim=1)
        pmask = torch.cat([torch.zeros(1, 2, dtype=torch.long), torch.ones_like(ids)], dim=1)
        e, m, _ = prepend_prompt(prompt, emb(padded_ids), pmask)
        got = model(inputs_embeds=e, attention_mask=m, position_ids=position_ids_from_mask(m)).logits
    torch.testing.assert_close(got[:, -ids.shape[1] :], ref[:, -ids.shape[1] :], rtol=1e-4, atol=1e-5)


def test_old_temp_files_of_killed_writers_are_swept(tmp_path):
    import os

    store = PromptStore(tmp_path)
    store.put("alpha", make_bytes())
    pdir = tmp_path / "profiles" / "alpha"
    old, fresh = pdir / ".tmp-old", pdir / ".tmp-fresh"
    old.write_bytes(b"half")
    fresh.write_bytes(b"in flight")
    os.utime(old, (1, 1))
    PromptStore(tmp_path)
    assert not old.exists() and fresh.exists()
    assert store.versions("alpha") == [1]


def test_atomically_written_files_are_readable_like_their_siblings(tmp_path):
    from spul.prompts_store.atomic import atomic_write_bytes

    sibling = tmp_path / "config.json"
    sibling.write_text("{}")
    target = tmp_path / "model.safetensors"
    atomic_write_bytes(target, b"weights")
    assert target.read_bytes() == b"weights"
    assert target.stat().st_mode & 0o777 == 0o644
