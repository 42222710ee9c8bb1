"""The shipped reference model and demo profiles still match what the build commands produce.

Fast half (always): the world data regenerates byte for byte from the seed, the shipped prompts
fit the shipped model (fingerprint), and re-evaluating them on the regenerated splits gives the
metrics recorded at `spul train` time, metric for metric.
Slow half (SPUL_REBUILD_REFERENCE=1, ~30 min on 2 cores): rebuild the world's base model and
retrain both prompts from scratch, and compare every metric with the manifest.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from spul.assets import REFERENCE_DIR

MANIFEST = REFERENCE_DIR / "manifest.json"
SPLITS = ["train_forget", "train_retain", "test_forget", "test_retain"]

pytestmark = pytest.mark.skipif(not MANIFEST.is_file(), reason="no reference shipped in this checkout")


@pytest.fixture(scope="module")
def manifest() -> dict:
    return json.loads(MANIFEST.read_text())


@pytest.fixture(scope="module")
def data_dir(manifest, tmp_path_factory) -> Path:
    from spul.trainer.reference import regenerated_data

    world = manifest["world"]
    return regenerated_data(world["size"], world["seed"], tmp_path_factory.mktemp("ref-data"))


def test_data_regenerates_byte_for_byte(manifest, data_dir):
    from spul.trainer.reference import split_digests

    assert split_digests(data_dir) == manifest["data_sha256"]


def test_every_task_has_a_profile_for_the_shipped_model(manifest):
    from spul.models import load_base_model
    from spul.prompts_store import load_artifact, model_fingerprint

    base = load_base_model(REFERENCE_DIR / "model", device="cpu")
    fingerprint = model_fingerprint(base.model, base.tokenizer)
    assert {p["task"] for p in manifest["profiles"].values()} == {"sentiment", "qa"}
    for name, entry in manifest["profiles"].items():
        art = load_artifact(REFERENCE_DIR / "profiles" / f"{name}.safetensors",
                            expected_fingerprint=fingerprint, expected_hidden_size=base.hidden_size)
        assert art.sha256 == entry["sha256"]


@pytest.mark.parametrize("task", ["sentiment", "qa"])
def test_train_and_report_defaults_are_the_shipped_profiles_settings(manifest, data_dir, task):
    """`spul train` and `spul report` on a world task, with no hyper-parameter flags, train SPUL with the
    shipped profile's config."""
    import torch

    from spul.cli import build_parser
    from spul.commands.report import prepare
    from spul.commands.train import build_config
    from spul.trainer.data import read_data
    from spul.trainer.reference import profile_name
    from spul.trainer.spul_config import SpulConfig

    data = read_data(data_dir / "data" / task)
    recorded = manifest["profiles"][profile_name(task)]["training_config"]
    args = build_parser().parse_args(["train", "--data", str(data.root), "--out", "x.safetensors"])
    config = build_config(args, dict(data.meta.train)).to_dict()
    expected = {**config, "generic_labels": list(data.meta.generic_answers)}
    # settings added after the profile was trained are absent from its record: they must keep their defaults
    defaults = SpulConfig().to_dict()
    assert expected == {k: recorded.get(k, defaults[k]) for k in config}
    threads = torch.get_num_threads()
    try:
        _, report_config = prepare(build_parser().parse_args(["report", "--data", str(data.root), "--out", "o"]))
    finally:
        torch.set_num_threads(threads)
    assert report_config.spul.to_dict() == {**config, "generic_labels": []}


@pytest.mark.parametrize("task", ["sentiment", "qa"])
def test_shipped_prompts_reproduce_their_metrics(manifest, data_dir, task):
    from spul.models import load_base_model
    from spul.prompts_store import load_artifact
    from spul.trainer.data import read_jsonl
    from spul.trainer.evaluate import evaluate_splits
    from spul.trainer.reference import profile_name

    base = load_base_model(REFERENCE_DIR / "model", device="cpu")
    art = load_artifact(REFERENCE_DIR / "profiles" / f"{profile_name(task)}.safetensors")
    splits = {s: read_jsonl(data_dir / "data" / task / f"{s}.jsonl") for s in SPLITS}
    got = evaluate_splits(base.model, base.tokenizer, splits, {"original": None, "spul": art.embeddings})
    want = manifest["profiles"][profile_name(task)]["eval_metrics"]
    for method in ("original", "spul"):
        for split in SPLITS:
            g, w = got[method][split], want[method][split]
            assert g["n"] == w["n"], (method, split)
            assert math.isclose(g["accuracy"], w["accuracy"], abs_tol=1e-9), (method, split, g, w)


@pytest.mark.skipif(os.environ.get("SPUL_REBUILD_REFERENCE") != "1",
                    reason="full rebuild takes ~30 min on 2 cores; set SPUL_REBUILD_REFERENCE=1")
def test_full_rebuild_matches_the_manifest(manifest, tmp_path):
    import dataclasses

    from spul.cli import main
    from spul.trainer.reference import profile_name
    from spul.trainer.spul_config import SpulConfig

    world = tmp_path / "world"
    assert main(["world", "build", "--out", str(world), "--size", manifest["world"]["size"],
                 "--seed", str(manifest["world"]["seed"]), "--train-model"]) == 0
    for name, entry in manifest["profiles"].items():
        task, cfg = entry["task"], entry["training_config"]
        out = tmp_path / f"{name}.safetensors"
        args = ["train", "--world", str(world), "--task", task, "--out", str(out), "--profile", profile_name(task),
                "--no-progress"]
        for field in dataclasses.fields(SpulConfig):  # every hyper-parameter the prompt was trained with
            value = cfg.get(field.name)
            if value is not None and value != []:
                value = ",".join(value) if isinstance(value, list) else value
                args += [f"--{field.name.replace('_', '-')}", str(value)]
        assert main(args) == 0
        from spul.prompts_store import load_artifact

        rebuilt = load_artifact(out).meta.eval_metrics
        for method in ("original", "spul"):
            for split in SPLITS:
                assert rebuilt[method][split]["accuracy"] == pytest.approx(
                    entry["eval_metrics"][method][split]["accuracy"], abs=0.02), (name, method, split)


def test_world_build_uses_the_shipped_model_for_the_recorded_data(manifest, tmp_path, capsys):
    from spul.cli import main

    world = tmp_path / "world"
    assert main(["world", "build", "--out", str(world), "--size", manifest["world"]["size"],
                 "--seed", str(manifest["world"]["seed"]), "--no-progress"]) == 0
    assert "shipped reference build" in capsys.readouterr().out
    built = json.loads((world / "world.json").read_text())
    assert built["model_source"] == "shipped"
    weights = world / "model" / "model.safetensors"
    assert weights.read_bytes() == (REFERENCE_DIR / "model" / "model.safetensors").read_bytes()
    assert weights.stat().st_mode & 0o777 == 0o644
    # scored again on the copied model: the recorded base metrics
    for task, splits in manifest["base_metrics"].items():
        for split, value in splits.items():
            if not isinstance(value, dict):
                assert built["base_metrics"][task][split] == pytest.approx(value, abs=1e-4), (task, split)
