"""The data reader: JSONL and data.json, the world shorthand, errors that locate the problem, encoding."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from spul.prompts_store.prepend import IGNORE_INDEX
from spul.trainer.data import (
    EVAL_SPLITS,
    TRAIN_SPLITS,
    DataError,
    DataMeta,
    encode_batch,
    read_data,
    read_world_task,
    write_meta,
)


def write_split(root: Path, split: str, rows: list[dict] | list[str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"{split}.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def user_data(root: Path, **meta) -> Path:
    for split in (*TRAIN_SPLITS, *EVAL_SPLITS):
        write_split(root, split, [{"prompt": f"{split} q{i}", "answer": "a", "entity": f"e{i}"} for i in range(2)])
    if meta:
        (root / "data.json").write_text(json.dumps(meta))
    return root


def test_user_data_reads_rows_and_metadata(tmp_path):
    root = user_data(tmp_path / "caps", name="capitals", generic_answers=["I don't know."], match="contains",
                     chat_template=True, max_new_tokens=12)
    data = read_data(root, require=TRAIN_SPLITS + EVAL_SPLITS)
    assert data.name == "capitals" and data.meta.generic_answers == ("I don't know.",)
    assert (data.meta.match, data.meta.chat_template, data.meta.max_new_tokens) == ("contains", True, 12)
    assert list(data.splits) == [*TRAIN_SPLITS, *EVAL_SPLITS]
    row = data.rows("train_forget")[1]
    assert (row.id, row.prompt, row.answer, row.entity) == ("train_forget/1", "train_forget q1", "a", "e1")
    assert data.forget_entities == ["e0", "e1"]


def test_contains_rule_gets_room_for_free_form_answers(tmp_path):
    assert read_data(user_data(tmp_path / "a", match="contains")).meta.max_new_tokens == 32
    assert read_data(user_data(tmp_path / "b", match="contains", max_new_tokens=8)).meta.max_new_tokens == 8
    assert read_data(user_data(tmp_path / "c", match="exact")).meta.max_new_tokens is None  # longest gold + 1


def test_defaults_without_data_json(tmp_path):
    data = read_data(user_data(tmp_path / "mine"))
    assert data.meta == DataMeta(name="mine") and data.meta.match == "exact" and not data.meta.chat_template
    assert data.meta.generic_answers == ("unknown",)


@pytest.mark.parametrize(
    "line, expected",
    [
        ('{"prompt": "q"}', "test_retain.jsonl:2: missing field(s) ['answer']"),
        ('{"prompt": "q", "answer": 3}', "test_retain.jsonl:2: field(s) ['answer'] must be strings"),
        ('{"prompt": "q", "answer": "  "}', 'test_retain.jsonl:2: empty "answer"'),
        ('{"prompt": "q", "answer', "test_retain.jsonl:2: not valid JSON"),
        ('["q", "a"]', "test_retain.jsonl:2: expected a JSON object"),
    ],
)
def test_bad_rows_name_file_line_and_field(tmp_path, line, expected):
    root = user_data(tmp_path / "d")
    write_split(root, "test_retain", ['{"prompt": "fine", "answer": "ok"}', line])
    with pytest.raises(DataError) as err:
        read_data(root)
    assert expected in str(err.value)


def test_missing_split_is_named_and_the_message_is_about_the_users_data(tmp_path):
    root = user_data(tmp_path / "d")
    (root / "test_forget.jsonl").unlink()
    read_data(root, require=TRAIN_SPLITS)  # training does not need it
    with pytest.raises(DataError) as err:
        read_data(root, require=TRAIN_SPLITS + EVAL_SPLITS)
    assert "missing split(s) ['test_forget']" in str(err.value) and "test_forget.jsonl" in str(err.value)
    assert "world" not in str(err.value)


@pytest.mark.parametrize(
    "meta, expected",
    [
        ({"match": "fuzzy"}, "'match' must be one of ['exact', 'contains']"),
        ({"generic_answers": []}, "'generic_answers' must be a list of non-empty strings"),
        ({"chat_template": "yes"}, "'chat_template' must be true or false"),
        ({"max_new_tokens": 0}, "'max_new_tokens' must be an integer"),
        ({"generic_answer": ["x"]}, "unknown key(s) ['generic_answer']"),
        ({"format": 2}, "format 2"),
    ],
)
def test_bad_data_json_is_refused_with_the_key(tmp_path, meta, expected):
    root = user_data(tmp_path / "d", **meta)
    with pytest.raises(DataError) as err:
        read_data(root)
    assert str(root / "data.json") in str(err.value) and expected in str(err.value)


def test_not_a_directory_and_empty_directory(tmp_path):
    with pytest.raises(DataError, match="is not a directory"):
        read_data(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no split files found"):
        read_data(tmp_path / "empty")


def test_datasets_dir_without_the_library_says_how_to_install(tmp_path, monkeypatch):
    root = tmp_path / "hf"
    root.mkdir()
    (root / "dataset_dict.json").write_text('{"splits": ["train_forget"]}')
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(DataError, match="pip install datasets"):
        read_data(root)


def test_datasets_dir_is_read_like_jsonl(tmp_path):
    datasets = pytest.importorskip("datasets")
    pa = pytest.importorskip("pyarrow")

    def split(columns: dict) -> object:  # explicit fingerprints: no dill hashing of the table
        return datasets.Dataset(pa.table(columns), fingerprint=str(len(columns)))

    rows = {"prompt": ["q1", "q2"], "answer": ["a1", "a2"]}
    datasets.DatasetDict({s: split(rows) for s in (*TRAIN_SPLITS, *EVAL_SPLITS)}).save_to_disk(str(tmp_path / "hf"))
    data = read_data(tmp_path / "hf", require=TRAIN_SPLITS + EVAL_SPLITS)
    assert [(r.id, r.answer) for r in data.rows("test_retain")] == [("test_retain/0", "a1"), ("test_retain/1", "a2")]
    datasets.DatasetDict({"train_forget": split({"prompt": ["q"]})}).save_to_disk(str(tmp_path / "bad"))
    with pytest.raises(DataError, match=r"bad split train_forget row 0: missing field\(s\) \['answer'\]"):
        read_data(tmp_path / "bad")


def test_world_shorthand_reads_the_task_dir_and_its_data_json(tmp_path):
    world = tmp_path / "world"
    (world / "data").mkdir(parents=True)
    (world / "world.json").write_text(json.dumps({"tasks": {"sentiment": {}}, "generic_labels": {"sentiment": ["neutral"]},
                                                  "forget_entities": {"sentiment": ["e0"]}}))
    root = user_data(world / "data" / "sentiment")
    old = read_world_task(world, "sentiment")  # a world written before data.json: the manifest fills in
    assert old.meta.generic_answers == ("neutral",) and old.base_model == str(world / "model")
    write_meta(root, DataMeta(name="sentiment", generic_answers=("meh",), base_model="../../model"))
    new = read_world_task(world, "sentiment")
    assert new.meta.generic_answers == ("meh",) and new.rows("test_retain") == old.rows("test_retain")
    with pytest.raises(DataError, match="has no task 'qa'"):
        read_world_task(world, "qa")
    with pytest.raises(DataError, match="spul world build"):
        read_world_task(tmp_path / "elsewhere", "qa")


def test_chat_template_encoding_trains_the_answer_after_the_generation_prompt(tiny_model):
    _, tok = tiny_model
    batch = encode_batch(tok, ["hello world", "the film"], ["in quellport", "positive"], chat_template=True)
    rendered = tok.apply_chat_template([{"role": "user", "content": "hello world"}], add_generation_prompt=True,
                                       tokenize=False)
    prompt = tok(rendered, add_special_tokens=False)["input_ids"]
    answer = tok("in quellport", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    row = batch.input_ids[0][batch.attention_mask[0] == 1].tolist()
    assert row == prompt + answer
    labels = batch.labels[0][batch.attention_mask[0] == 1].tolist()
    assert labels == [IGNORE_INDEX] * len(prompt) + answer
    plain = encode_batch(tok, ["hello world"], ["in quellport"])
    assert plain.input_ids.shape[1] < batch.input_ids.shape[1]  # the template adds its role markers


def test_chat_template_without_one_in_the_tokenizer_is_a_data_error(tiny_model):
    _, tok = tiny_model
    saved = tok.chat_template
    tok.chat_template = None
    try:
        with pytest.raises(DataError, match="no chat template"):
            encode_batch(tok, ["hello"], chat_template=True)
    finally:
        tok.chat_template = saved
