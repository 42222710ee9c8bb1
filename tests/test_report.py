"""`spul report` end to end on the small reference world, with reduced budgets."""

from __future__ import annotations

import json
import math

import pytest
import torch

from spul.cli import main
from spul.trainer.data import read_world_task
from spul.trainer.report import METHOD_ORDER, ReportConfig, load_inputs, retrain_candidate

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SPLITS = ("train_forget", "train_retain", "test_forget", "test_retain", "paraphrase", "injection")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models train several times faster on one thread when the cores are shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def world(tmp_path_factory, one_thread):
    from spul.trainer.world import build_world

    out = build_world(tmp_path_factory.mktemp("world"), size="small", seed=0, progress=False)
    torch.set_num_threads(1)  # build_world sets the world's own thread count
    return out


@pytest.fixture(scope="module")
def report_dir(world, tmp_path_factory, one_thread):
    out = tmp_path_factory.mktemp("report")
    assert main(["report", "--world", str(world), "--task", "sentiment", "--out", str(out), "--quick"]) == 0
    return out


@pytest.fixture(scope="module")
def report(report_dir):
    return json.loads((report_dir / "report.json").read_text())


def test_report_has_every_method_and_split_with_valid_metrics(report):
    assert report["task"] == "sentiment"
    assert list(report["results"]) == list(METHOD_ORDER)
    for method, per_split in report["results"].items():
        assert set(SPLITS) <= set(per_split), method
        for split, m in per_split.items():
            assert m["n"] > 0, (method, split)
            assert 0.0 <= m["accuracy"] <= 1.0 and 0.0 <= m["f1"] <= 1.0, (method, split, m)
    n = {s: report["results"]["original"][s]["n"] for s in SPLITS}
    assert n["injection"] == n["test_forget"] * len(report["injection_templates"])


def test_gradient_ascent_lowers_the_forget_answer_probability(report):
    """GA maximises the CE of the train_forget answers: their probability must fall vs original."""
    close = report["closeness_to_retrain"]
    assert close["ga"]["mean_answer_prob"] < close["original"]["mean_answer_prob"]
    assert close["retrain"]["ks_statistic"] == 0.0 and close["retrain"]["ks_pvalue"] == 1.0


def test_membership_inference_and_cost_are_reported_per_method(report):
    assert set(report["mia_auc"]) == set(METHOD_ORDER)
    assert all(0.0 <= auc <= 1.0 for auc in report["mia_auc"].values())
    assert report["mia_nonmembers"]["n"] > 0
    cost = report["cost"]
    full = cost["ga"]["trainable_params"]
    assert all(cost[m]["trainable_params"] == full for m in ("rl", "ga_kl", "ga_gd", "retrain"))
    assert 0 < cost["spul"]["trainable_params"] and cost["icul"]["trainable_params"] == 0
    assert cost["spul"]["seconds"] > 0 and cost["spul"]["peak_extra_mb"] >= 0


def test_lr_choice_and_sweep_are_recorded(report):
    grid = ReportConfig.quick().lr_grid
    for method in ("ga", "rl", "ga_kl", "ga_gd"):
        info = report["method_info"][method]
        assert info["lr"] in grid and [t["lr"] for t in info["lr_search"]] == sorted(grid)
    sweep = report["spul_sweep"]
    assert len(sweep) == len(ReportConfig.quick().sweep)
    assert all(0 <= p["test_forget"] <= 1 and 0 <= p["test_retain"] <= 1 for p in sweep)
    assert set(report["checks"]) >= {"spul_dominated_by", "spul_paraphrase_forget_le_20pct"}


def test_tradeoff_plot_is_a_png_and_the_table_lists_every_method(report_dir):
    import matplotlib.pyplot as plt

    png = report_dir / "tradeoff.png"
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    height, width, _ = plt.imread(png).shape
    assert height > 100 and width > 100
    table = (report_dir / "report.md").read_text()
    for method in METHOD_ORDER:
        assert f"| {method} |" in table


def test_retrained_model_is_cached_and_reused(world, report_dir, one_thread):
    cache = report_dir / "retrain-model"
    assert (cache / "retrain.json").is_file() and (cache / "model.safetensors").is_file()
    inp = load_inputs(read_world_task(world, "sentiment"))
    again = retrain_candidate(inp, ReportConfig.quick(), cache=cache)
    assert "reused" in again.cost.note
    marker = json.loads((cache / "retrain.json").read_text())
    assert marker["key"]["excluded"] == sorted(e for es in marker_entities(world) for e in es)
    assert not math.isnan(again.cost.seconds)


def test_finished_parts_are_on_disk_and_a_rerun_recomputes_only_what_is_missing(world, report_dir, report,
                                                                                tmp_path, one_thread, caplog):
    """A report stopped part-way leaves each finished method in OUT/parts; a rerun with the same
    arguments reuses them and computes only what is missing, with the same numbers."""
    import shutil

    out = tmp_path / "again"
    shutil.copytree(report_dir / "parts", out / "parts")  # as if stopped after every method but ga
    (out / "parts" / "ga.json").unlink()
    shutil.copytree(report_dir / "retrain-model", out / "retrain-model")
    argv = ["report", "--world", str(world), "--task", "sentiment", "--out", str(out), "--quick"]
    with caplog.at_level("INFO"):
        assert main(argv) == 0
    again = json.loads((out / "report.json").read_text())
    assert "ga" not in again["resumed"] and {"original", "spul", "retrain", "icul"} <= set(again["resumed"])
    assert again["results"] == report["results"] and again["mia_auc"] == report["mia_auc"]
    assert any("[3/8] ga: fine-tuning" in r.getMessage() for r in caplog.records)  # the one step recomputed


def test_parts_made_from_other_inputs_are_not_reused(tmp_path):
    from spul.trainer.report_parts import ReportParts

    parts = ReportParts(tmp_path, {"config": {"steps": 30}})
    parts.put("spul", {"results": {"test_forget": {"accuracy": float("nan")}}})
    assert ReportParts(tmp_path, {"config": {"steps": 30}}).get("spul") == {
        "results": {"test_forget": {"accuracy": None}}
    }
    changed = ReportParts(tmp_path, {"config": {"steps": 31}})
    assert changed.get("spul") is None and changed.resumed == []


def test_report_on_users_own_data_skips_retrain_and_says_how_nonmembers_were_chosen(tmp_path, one_thread):
    """Data that is not a reference world: no corpus to retrain on, the base model's training data unknown."""
    from support.fake_world import user_data, write_fake_world

    world = write_fake_world(tmp_path / "world")
    data = user_data(world, tmp_path / "data", task="qa", generic_answers=["unknown"])
    out = tmp_path / "out"
    argv = ["report", "--data", str(data), "--base", str(world / "model"), "--out", str(out), "--quick",
            "--sweep-steps", "0", "--lr-grid", "0.003"]  # budget flags: no sweep, one baseline lr
    assert main([*argv, "--no-progress"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert list(report["results"]) == [m for m in METHOD_ORDER if m != "retrain"]
    assert report["spul_sweep"] == []
    assert all([t["lr"] for t in report["method_info"][m]["lr_search"]] == [0.003] for m in ("ga", "rl"))
    assert report["closeness_to_retrain"] == {} and not (out / "retrain-model").exists()
    assert "unknown" in report["mia_nonmembers"]["construction"]
    assert {"key", *report["results"]} <= {p.stem for p in (out / "parts").glob("*.json")}  # each method on disk


def marker_entities(world):
    manifest = json.loads((world / "world.json").read_text())
    return manifest["forget_entities"].values()


def test_report_refuses_a_missing_world(tmp_path, capsys):
    assert main(["report", "--world", str(tmp_path / "nope"), "--task", "qa", "--out", str(tmp_path)]) == 2
    assert "spul world build" in capsys.readouterr().err


def test_baselines_command_saves_reloadable_models(world, tmp_path, one_thread):
    from transformers import AutoModelForCausalLM

    assert main(["baselines", "--world", str(world), "--task", "qa", "--out", str(tmp_path), "--quick"]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert list(report["results"]) == ["original", "ga", "rl", "ga_kl", "ga_gd"]
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "ga_gd")
    assert sum(p.numel() for p in model.parameters()) == report["cost"]["ga_gd"]["trainable_params"]
