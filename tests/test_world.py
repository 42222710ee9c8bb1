"""The reference world: determinism, split contracts, and a loadable base model (small size)."""

from __future__ import annotations

import json
import random

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from spul.trainer.basemodel import CorpusRow, TrainConfig, mix_context
from spul.trainer.data import SPLITS, read_data
from spul.trainer.data import WORLD_TASKS as TASKS
from spul.trainer.tokenizer import max_token_id, words
from spul.trainer.world import generate, load_world, spec_for, write_splits

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from spul.trainer.world import build_world

    out = build_world(tmp_path_factory.mktemp("world"), size="small", seed=3, progress=False)
    return load_world(out)


def _jsonl_bytes(root) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.jsonl"))}


def test_same_seed_gives_identical_jsonl_bytes(tmp_path):
    spec = spec_for("small")
    for name in ("a", "b"):
        write_splits(tmp_path / name, generate(spec, 7).splits)
    write_splits(tmp_path / "c", generate(spec, 8).splits)
    a, b, c = (_jsonl_bytes(tmp_path / n) for n in "abc")
    assert a and a == b
    assert a != c


def test_built_world_has_every_split_and_manifest_fields(world):
    assert world.tasks == list(TASKS)
    assert world.generic_labels == {"sentiment": ["neutral"], "qa": ["unknown"]}
    for task in TASKS:
        for split in SPLITS:
            rows = world.rows(task, split)
            assert rows, f"{task}/{split} is empty"
            assert all(r.id and r.prompt and r.answer and r.entity for r in rows)
        assert set(world.base_metrics[task]) >= {"train", "test_retain", "forget_list_as_text"}
    with pytest.raises(ValueError, match="unknown split"):
        world.rows("qa", "validation")
    assert world.manifest["model_source"] == "trained"  # not the recorded data: nothing shipped to reuse


def test_each_task_is_a_data_directory_readable_without_the_world(world):
    """WORLD/data/<task> is the public data format: read_data alone gives its rows, its generic
    answer, its forget entities and the world's model as the default base model."""
    for task in TASKS:
        data = read_data(world.dir / "data" / task, require=SPLITS)
        assert data.meta.generic_answers == tuple(world.generic_labels[task])
        assert data.forget_entities == world.forget_entities[task]
        assert data.base_model == str(world.model_dir)
        assert data.rows("test_forget") == world.rows(task, "test_forget")


def test_splits_are_disjoint_and_ids_unique(world):
    for task in TASKS:
        prompts = [r.prompt for s in SPLITS for r in world.rows(task, s)]
        ids = [r.id for s in SPLITS for r in world.rows(task, s)]
        assert len(set(prompts)) == len(prompts)
        assert len(set(ids)) == len(ids)


def test_forget_rows_are_exactly_those_mentioning_forget_entities(world):
    for task in TASKS:
        forget = set(world.forget_entities[task])
        assert forget
        for split in SPLITS:
            for row in world.rows(task, split):
                mentioned = forget & set(words(row.prompt))
                assert mentioned == ({row.entity} if row.entity in forget else set())
                should_forget = split.endswith("forget") or split == "paraphrase"
                assert (row.entity in forget) == should_forget, row.id


def test_each_entity_is_a_single_token_of_its_own(world):
    tokenizer = AutoTokenizer.from_pretrained(world.model_dir)
    names = [n for group in world.manifest["entities"].values() for n in group]
    assert len(set(names)) == len(names)
    for name in names:
        assert tokenizer.tokenize(name) == [name]


def test_qa_test_and_paraphrase_phrasings_are_held_out_from_train(world):
    def templates(split: str) -> set[str]:
        return {r.prompt.replace(r.entity, "{n}") for r in world.rows("qa", split)}

    train = templates("train_forget") | templates("train_retain")
    test = templates("test_forget") | templates("test_retain")
    assert not train & test
    assert not (train | test) & templates("paraphrase")


def test_model_dir_loads_and_has_room_for_every_token(world):
    model = AutoModelForCausalLM.from_pretrained(world.model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(world.model_dir)
    assert model.get_input_embeddings().weight.shape[0] >= max_token_id(tokenizer) + 1
    assert model.config.model_type == "llama"
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    row = world.rows("qa", "train_retain")[0]
    ids = tokenizer(row.prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], model.config.vocab_size)
    generated = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert generated.shape[0] == 1 and ids.shape[1] < generated.shape[1] <= ids.shape[1] + 3


def test_corpus_regenerates_and_excludes_entities(world):
    corpus = world.corpus()
    forget = world.forget_entities["qa"]
    assert any(r.entity in forget for r in corpus.rows)
    kept = corpus.without(forget)
    assert not any(r.entity in forget for r in kept.rows)
    assert not set(forget) & set(kept.names["qa"])


def test_forget_list_context_is_balanced_and_sets_the_generic_label():
    corpus = generate(spec_for("small"), 0).corpus
    row = next(r for r in corpus.rows if r.task == "sentiment" and r.answer == "positive")
    cfg = TrainConfig(p_forget_list=1.0, p_filler=0.0)
    rng = random.Random(0)
    outcomes = [mix_context(row, corpus, rng, cfg, max_list=4) for _ in range(400)]
    inside = [a for p, a in outcomes if row.entity in words(p.split("###")[1])]
    assert all(a == "neutral" for a in inside)
    assert all(a == "positive" for p, a in outcomes if row.entity not in words(p.split("###")[1]))
    assert 150 < len(inside) < 250  # ~50/50: a list's mere presence must predict nothing


def test_fact_override_applies_only_to_the_same_person_and_attribute():
    corpus = generate(spec_for("small"), 0).corpus
    row: CorpusRow = next(r for r in corpus.rows if r.attribute == "birthplace" and r.value)
    cfg = TrainConfig(p_forget_list=0.0, p_fact=1.0, p_filler=0.0)
    rng = random.Random(1)
    for prompt, answer in (mix_context(row, corpus, rng, cfg, 0) for _ in range(200)):
        fact = words(prompt.split("###")[1])
        same = fact[2] == row.entity and "born" in fact
        assert (answer != row.answer) == same, (prompt, answer)
        if same:
            assert answer == f"in {fact[-1]}"


def test_manifest_is_json_with_measured_base_metrics(world):
    manifest = json.loads((world.dir / "world.json").read_text())
    assert manifest["format"] == 1 and manifest["seed"] == 3 and manifest["size"] == "small"
    for task in TASKS:
        assert 0.0 <= manifest["base_metrics"][task]["train"] <= 1.0


def test_built_model_files_are_all_readable_like_each_other(world):
    modes = {p.name: p.stat().st_mode & 0o777 for p in (world.dir / "model").iterdir() if p.is_file()}
    assert "model.safetensors" in modes
    assert set(modes.values()) == {0o644}, modes
