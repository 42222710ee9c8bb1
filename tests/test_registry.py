"""The prompt registry over a real store: what it refuses to load, and which ids it refuses."""

from __future__ import annotations

import json
import struct

import pytest
import torch

from spul.prompts_store import ArtifactError, InvalidProfileId, PromptStore, artifact_bytes
from spul.service.registry import ModelIdentity, ProfileUnavailable, PromptRegistry

FP = "sha256:" + "cd" * 32
HIDDEN = 8


def prompt_bytes(fill: float, profile: str = "wide") -> bytes:
    return artifact_bytes(torch.full((3, HIDDEN), fill), profile=profile, base_model="m", base_fingerprint=FP)


def registry_for(store: PromptStore, dtype: torch.dtype) -> PromptRegistry:
    return PromptRegistry(store, ModelIdentity(FP, HIDDEN, torch.device("cpu"), dtype))


def test_a_prompt_that_overflows_the_serving_dtype_is_refused_at_upload(tmp_path):
    registry = registry_for(PromptStore(tmp_path), torch.float16)
    with pytest.raises(ArtifactError) as err:
        registry.upload("wide", prompt_bytes(1e6))  # finite in float32, inf in float16
    assert err.value.reason == "non_finite" and "float16" in str(err.value)
    assert registry.store.profiles() == []  # nothing published
    registry.upload("narrow", prompt_bytes(1e3))  # fits: served
    assert registry.loaded() == ["narrow"]


def test_a_stored_prompt_that_overflows_the_serving_dtype_is_never_served(tmp_path):
    store = PromptStore(tmp_path)
    store.put("wide", prompt_bytes(1e6))  # fine for a float32 server sharing the store
    half = registry_for(store, torch.float16)
    half.refresh()
    assert half.loaded() == [] and "float16" in half.broken()["wide"]
    with pytest.raises(ProfileUnavailable):
        half.resolve("wide")
    wide = registry_for(store, torch.float32)
    wide.refresh()
    assert wide.loaded() == ["wide"]
    with pytest.raises(ArtifactError):  # nor can it be switched to on a float16 server
        half.activate("wide", 1)


@pytest.mark.parametrize("profile", ["default", "tiny-model", ""])
def test_ids_the_openai_routes_read_as_no_profile_are_refused(tmp_path, profile):
    """model="default", "" or the served model's name mean "no profile named": no profile may be one."""
    store = PromptStore(tmp_path)
    registry = PromptRegistry(store, ModelIdentity(FP, HIDDEN, torch.device("cpu"), torch.float32, name="tiny-model"))
    with pytest.raises(InvalidProfileId) as err:
        registry.upload(profile, prompt_bytes(1.0, profile=profile or "x"))
    assert (profile == "" and "invalid" in str(err.value)) or "reserved" in str(err.value)
    assert store.profiles() == []
    registry.upload("tiny-model-2", prompt_bytes(1.0))  # a near name is fine
    if profile == "default":  # reserved for every model, also when writing the store directly
        with pytest.raises(InvalidProfileId):
            store.put(profile, prompt_bytes(1.0))



def nested_artifact(profile: str) -> bytes:
    """A valid artifact except for `training_config`: JSON nested 20,000 levels deep."""
    from safetensors.torch import load, save

    data = prompt_bytes(1.0, profile=profile)
    header = json.loads(data[8 : 8 + struct.unpack("<Q", data[:8])[0]])["__metadata__"]
    header["training_config"] = "[" * 20_000 + "]" * 20_000
    return save(load(data), metadata=header)


def test_a_stored_artifact_with_unparseable_metadata_is_skipped_at_start(tmp_path):
    """Written to the store by hand or by an older build: logged and listed as broken, the rest served."""
    store = PromptStore(tmp_path)
    store.put("good", prompt_bytes(1.0, profile="good"))
    pdir = tmp_path / "profiles" / "nested"
    pdir.mkdir()
    (pdir / "v000001.safetensors").write_bytes(nested_artifact("nested"))
    (pdir / "ACTIVE").write_text("1\n")
    registry = registry_for(store, torch.float32)
    registry.refresh()  # what start-up does: must not raise
    assert registry.loaded() == ["good"] and "nests deeper" in registry.broken()["nested"]
    with pytest.raises(ArtifactError) as err:  # and an upload of it is a 4xx-class refusal
        registry.upload("nested2", nested_artifact("nested2"))
    assert err.value.reason == "bad_metadata"


def test_profiles_for_another_model_are_skipped_with_a_warning_and_broken_ones_are_errors(tmp_path, caplog):
    """A store shared by several models holds profiles this model cannot use: expected, not an error."""
    store = PromptStore(tmp_path)
    store.put("mine", prompt_bytes(1.0))
    other = artifact_bytes(torch.ones(3, HIDDEN), profile="theirs", base_model="other", base_fingerprint="sha256:" + "ef" * 32)
    store.put("theirs", other)
    store.put("wide", prompt_bytes(1e6))  # overflows float16: this model's profile, but broken here
    with caplog.at_level("WARNING", logger="spul.service.registry"):
        registry = registry_for(store, torch.float16)
        registry.refresh()
    assert registry.loaded() == ["mine"] and set(registry.broken()) == {"theirs", "wide"}
    levels = {r.getMessage().split()[1]: r.levelname for r in caplog.records}
    assert levels == {"theirs": "WARNING", "wide": "ERROR"}
