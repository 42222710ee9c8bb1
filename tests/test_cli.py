"""`spul world build / train / eval` through `spul.cli.main`: outputs, and one-line refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, safe_open
from safetensors.torch import save as st_save

from spul.cli import main
from spul.prompts_store import PromptStore
from spul.prompts_store.artifact import TENSOR_NAME, ArtifactMeta, tensor_digest
from support.fake_world import user_data, write_fake_world

SPLITS4 = ["train_forget", "train_retain", "test_forget", "test_retain"]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return write_fake_world(tmp_path_factory.mktemp("world"))


@pytest.fixture(scope="module")
def trained(world, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("trained")
    rc = main(["train", "--world", str(world), "--task", "qa", "--out", str(out / "qa.safetensors"),
               "--store", str(out / "store"), "--profile", "forget-alba", "--steps", "3",
               "--num-virtual-tokens", "4", "--forget-per-batch", "2", "--retain-per-batch", "2", "--no-progress"])
    assert rc == 0
    return {"artifact": out / "qa.safetensors", "store": out / "store", "dir": out}


def run_error(capsys, argv: list[str]) -> str:
    """Run a command that must be refused: exit 2 and exactly one `spul <cmd>: error:` line."""
    capsys.readouterr()
    assert main(argv) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("spul ")]
    assert len(lines) == 1, lines
    return lines[0]


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_train_writes_a_self_describing_artifact_and_publishes_it(trained):
    with safe_open(trained["artifact"], "pt") as fh:
        meta = fh.metadata()
    assert meta["profile"] == "forget-alba" and meta["base_model"].endswith("model")
    config = json.loads(meta["training_config"])
    assert config["steps"] == 3 and config["task"] == "qa" and config["generic_labels"] == ["unknown"]
    metrics = json.loads(meta["eval_metrics"])
    assert set(metrics) == {"original", "spul"} and set(metrics["spul"]) == set(SPLITS4)
    assert load_file(trained["artifact"])[TENSOR_NAME].shape[0] == 4
    store = PromptStore(trained["store"])
    assert store.active_version("forget-alba") == 1
    _, artifact = store.get("forget-alba")
    assert artifact.sha256 == store.version_info("forget-alba", 1).sha256
    assert trained["artifact"].read_bytes() == (trained["store"] / "profiles/forget-alba/v000001.safetensors").read_bytes()


def test_eval_reproduces_the_metrics_recorded_at_training(world, trained, capsys):
    report_path = trained["dir"] / "report.json"
    capsys.readouterr()
    assert main(["eval", "--world", str(world), "--task", "qa", "--prompt", str(trained["artifact"]),
                 "--report", str(report_path)]) == 0
    assert "paraphrase" in capsys.readouterr().out  # the printed table
    report = json.loads(report_path.read_text())
    assert report["task"] == "qa" and set(report["results"]) == {"original", "spul"}
    with safe_open(trained["artifact"], "pt") as fh:
        recorded = json.loads(fh.metadata()["eval_metrics"])
    for method in ("original", "spul"):
        for split in SPLITS4:
            assert report["results"][method][split] == recorded[method][split]
    assert report["results"]["spul"]["paraphrase"]["n"] > 0


def test_eval_without_prompt_scores_the_original_only(world, tmp_path):
    assert main(["eval", "--world", str(world), "--task", "sentiment", "--report", str(tmp_path / "r.json")]) == 0
    results = json.loads((tmp_path / "r.json").read_text())["results"]
    assert list(results) == ["original"] and results["original"]["train_retain"]["accuracy"] == 1.0


def test_world_build_calls_the_builder(monkeypatch, tmp_path, capsys):
    import spul.trainer.world as world_module

    calls = []
    def fake_build(out, **kw):
        calls.append((out, kw))
        out.mkdir()
        (out / "world.json").write_text(json.dumps({"format": world_module.FORMAT, "model_source": "trained"}))
        return out

    monkeypatch.setattr(world_module, "build_world", fake_build)
    assert main(["world", "build", "--out", str(tmp_path / "w"), "--size", "small", "--seed", "3"]) == 0
    assert calls == [(tmp_path / "w", {"size": "small", "seed": 3, "progress": True, "train_model": False})]
    assert "a base model trained here" in capsys.readouterr().out


def test_unknown_base_model_is_refused(world, tmp_path, capsys):
    line = run_error(capsys, ["train", "--world", str(world), "--task", "qa", "--out", str(tmp_path / "a.safetensors"),
                              "--base", str(tmp_path / "no-such-model")])
    assert "does not exist" in line
    assert not (tmp_path / "a.safetensors").exists()


def test_missing_world_is_refused(tmp_path, capsys):
    line = run_error(capsys, ["eval", "--world", str(tmp_path), "--task", "qa", "--report", str(tmp_path / "r.json")])
    assert "spul world build" in line


def test_train_and_eval_on_the_users_own_data(world, tmp_path, capsys, caplog):
    """--data DIR: rows without ids, metadata from data.json (generic answer, scoring rule, base model)."""
    data = user_data(world, tmp_path / "mine", name="mine", generic_answers=["unknown"], match="contains",
                     base_model=str(world / "model"), train={"steps": 2, "num_virtual_tokens": 3})
    out = tmp_path / "mine.safetensors"
    assert main(["train", "--data", str(data), "--out", str(out), "--forget-per-batch", "2",
                 "--retain-per-batch", "2", "--no-progress"]) == 0
    with safe_open(out, "pt") as fh:
        meta = fh.metadata()
    config = json.loads(meta["training_config"])
    assert config["task"] == "mine" and config["data"] == str(data) and config["match"] == "contains"
    assert config["steps"] == 2 and config["forget_per_batch"] == 2  # data.json's "train", then the flags
    assert config["threads"] >= 1 and config["load_average"] >= 0  # the machine behind train_seconds
    assert load_file(out)[TENSOR_NAME].shape[0] == 3 and meta["profile"] == "mine"
    caplog.set_level("INFO", logger="spul")
    assert main(["eval", "--data", str(data), "--prompt", str(out), "--report", str(tmp_path / "r.json"),
                 "--threads", "1"]) == 0
    assert "torch threads: 1 (--threads" in caplog.text  # the thread count is stated
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["scoring"]["match"] == "contains" and report["data"] == str(data)
    assert report["results"]["spul"]["test_retain"] == json.loads(meta["eval_metrics"])["spul"]["test_retain"]


def test_users_data_errors_name_the_file_and_never_the_world(world, tmp_path, capsys):
    data = user_data(world, tmp_path / "mine")
    (data / "test_forget.jsonl").unlink()
    line = run_error(capsys, ["eval", "--data", str(data), "--base", str(world / "model"),
                              "--report", str(tmp_path / "r.json")])
    assert "missing split(s) ['test_forget']" in line and "world" not in line
    (data / "train_retain.jsonl").write_text('{"prompt": "q"}\n')
    line = run_error(capsys, ["train", "--data", str(data), "--out", str(tmp_path / "x.safetensors")])
    assert "train_retain.jsonl:1: missing field(s) ['answer']" in line and "world" not in line
    line = run_error(capsys, ["eval", "--data", str(user_data(world, tmp_path / "nobase")),
                              "--report", str(tmp_path / "r.json")])
    assert "pass --base MODEL" in line and "world" not in line


@pytest.mark.parametrize(
    "argv, expected",
    [
        ([], "pass your data with --data DIR"),
        (["--data", "D", "--world", "W", "--task", "qa"], "pass your data with --data DIR"),
        (["--world", "W"], "--world needs --task"),
        (["--data", "D", "--task", "qa"], "--task goes with --world"),
    ],
)
def test_data_options_are_checked_before_anything_loads(tmp_path, capsys, argv, expected):
    line = run_error(capsys, ["eval", *argv, "--report", str(tmp_path / "r.json")])
    assert expected in line


@pytest.mark.parametrize(
    "cores, load, want",
    [(2, 0.0, 1), (1, 0.0, 1), (16, 0.5, 8), (8, 0.0, 8), (8, 3.2, 4), (8, 7.5, 1), (4, 1.0, 3)],
)
def test_default_thread_count_follows_cores_and_load(cores, load, want):
    from spul.commands._args import choose_threads

    assert choose_threads(None, cores=cores, load=load)[0] == want
    assert choose_threads(3, cores=cores, load=load)[0] == 3


@pytest.mark.parametrize("command", ["train", "eval", "report", "baselines"])
def test_help_shows_no_placeholder_defaults(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--data DIR" in text and "--world WORLD" in text and "--threads N" in text
    assert "(default: ())" not in text and "(default: the world's)" not in text and "(default: None)" not in text


def test_malformed_jsonl_names_file_and_line(world, tmp_path, capsys):
    bad = tmp_path / "world"
    shutil.copytree(world, bad)
    path = bad / "data/qa/test_retain.jsonl"
    lines = path.read_text().splitlines()
    lines[1] = '{"id": "x", "prompt": "truncated'
    path.write_text("\n".join(lines) + "\n")
    line = run_error(capsys, ["eval", "--world", str(bad), "--task", "qa", "--report", str(tmp_path / "r.json")])
    assert "test_retain.jsonl:2" in line
    assert not (tmp_path / "r.json").exists()


def test_artifact_for_another_base_model_is_refused(world, trained, tiny_model_dir, tmp_path, capsys):
    line = run_error(capsys, ["eval", "--world", str(world), "--task", "qa", "--base", str(tiny_model_dir),
                              "--prompt", str(trained["artifact"]), "--report", str(tmp_path / "r.json")])
    assert "retrain it for this model" in line


def nan_artifact(template: Path) -> bytes:
    """A well-formed artifact whose tensor holds a NaN (with a matching digest, so only NaN is wrong)."""
    with safe_open(template, "pt") as fh:
        header = fh.metadata()
    tensor = load_file(template)[TENSOR_NAME].clone()
    tensor[0, 0] = float("nan")
    meta = ArtifactMeta.from_header({**header, "tensor_sha256": tensor_digest(tensor)})
    return st_save({TENSOR_NAME: tensor}, metadata=meta.to_header())


@pytest.mark.parametrize(
    "corrupt, expected",
    [
        (lambda good: good[:100], "invalid for a 100-byte file"),
        (lambda good: b"this is not a safetensors file at all", "header length"),
        (None, "NaN"),
    ],
)
def test_broken_artifacts_are_refused(world, trained, tmp_path, capsys, corrupt, expected):
    good = trained["artifact"].read_bytes()
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(nan_artifact(trained["artifact"]) if corrupt is None else corrupt(good))
    line = run_error(capsys, ["eval", "--world", str(world), "--task", "qa", "--prompt", str(bad),
                              "--report", str(tmp_path / "r.json")])
    assert expected in line


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--store", "STORE", "--profile", "../escape"], "invalid profile id"),
        (["--store", "STORE"], "--store needs --profile"),
        (["--steps", "0"], "steps must be >= 1"),
        (["--generic-labels", "a,,b"], "generic_labels"),
    ],
)
def test_bad_train_options_change_nothing(world, trained, tmp_path, capsys, extra, expected):
    before = snapshot(trained["store"])
    out = tmp_path / "x.safetensors"
    extra = [str(trained["store"]) if x == "STORE" else x for x in extra]
    line = run_error(capsys, ["train", "--world", str(world), "--task", "qa", "--out", str(out), *extra])
    assert expected in line
    assert not out.exists() and snapshot(trained["store"]) == before


def test_empty_forget_set_is_refused(world, tmp_path, capsys):
    bad = tmp_path / "world"
    shutil.copytree(world, bad)
    (bad / "data/qa/train_forget.jsonl").write_text("")
    out = tmp_path / "x.safetensors"
    line = run_error(capsys, ["train", "--world", str(bad), "--task", "qa", "--out", str(out), "--steps", "1"])
    assert "forget set is empty" in line and not out.exists()
