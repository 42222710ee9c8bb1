"""The fine-tuned-facts task: invented people, a LoRA fine-tune that teaches them, and the splits.

48 made-up people, each with three facts (birth city, profession, favourite animal), asked in
four phrasings per attribute (two for training, one held-out test phrasing, one paraphrase).
SmolLM2-135M-Instruct cannot know them; a LoRA adapter fine-tuned on the two training phrasings
of every fact (``spul.trainer.lora_finetune``) teaches them, and the catalog name
``smollm2-135m-facts`` is the base model with that adapter merged. Only the questions the
fine-tuned model answers correctly (greedy, chat template, "contains" scoring) are kept, and the
forget set is every question about 10% of the people (``spul.trainer.task_builder``):

    python -m spul.trainer.facts_task adapter --out spul/tasks/facts/adapter   # fine-tune (slow)
    python -m spul.trainer.facts_task data --out DIR --model smollm2-135m-facts  # filter, write
    python -m spul.trainer.facts_task data --out DIR --kept-from source.json     # regenerate, no model
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from spul.trainer import task_builder
from spul.trainer.task_builder import PHRASINGS, TRAIN_PHRASINGS, Item, TaskSpec, matches, slug

MODEL = "smollm2-135m-facts"  # the fine-tuned model (spul.catalog): SmolLM2-135M-Instruct + this task's adapter
BASE = "smollm2-135m-instruct"
# the measured SPUL setting of the shipped profile (data.json's "train"): the knowledge task's setting (6x the
# steps of round 1, 16 retain rows per batch on the model's own answers); see docs/real-llm-facts.md, round 2
TRAIN_SETTINGS: dict[str, Any] = {
    "num_virtual_tokens": 10, "lr": 0.003, "steps": 240, "alpha": 1.0, "beta": 0.0,
    "forget_per_batch": 4, "retain_per_batch": 16, "retain_target": "model", "model_answer_tokens": 24,
}
SPEC = TaskSpec(name="facts", generator="python -m spul.trainer.facts_task data", generic_answers=("I don't know.",),
                match="contains", chat_template=True, max_new_tokens=8, forget_fraction=0.1, split_seed=0,
                train=TRAIN_SETTINGS, extra_meta={"base_model": MODEL})
NAME = SPEC.name

# person: (name, birth city, profession, favourite animal); names invented, values drawn once (seeded)
# from 12 cities x 12 professions x 12 animals, each value used by 4 people
PEOPLE: tuple[tuple[str, str, str, str], ...] = (
    ("Mira Morvanne", "Dublin", "architect", "tortoise"),
    ("Tobias Brindlecombe", "Melbourne", "dentist", "zebra"),
    ("Elowen Thistlewood", "Toronto", "dentist", "penguin"),
    ("Dario Ivarsen", "Dublin", "dentist", "otter"),
    ("Ingrid Trevannick", "Istanbul", "baker", "hedgehog"),
    ("Kasimir Ravelstoke", "Denver", "violinist", "flamingo"),
    ("Lunette Fairbrook", "Krakow", "photographer", "tortoise"),
    ("Oskar Tamsett", "Melbourne", "photographer", "zebra"),
    ("Priya Astravel", "Dublin", "carpenter", "falcon"),
    ("Rafferty Northcombe", "Istanbul", "violinist", "dolphin"),
    ("Sunniva Valcourt", "Melbourne", "pilot", "giraffe"),
    ("Teodor Kestermann", "Toronto", "chemist", "penguin"),
    ("Anouk Selbourne", "Dublin", "gardener", "owl"),
    ("Bastian Quistmoor", "Istanbul", "dentist", "koala"),
    ("Calla Drummoral", "Osaka", "gardener", "hedgehog"),
    ("Desmond Rookwell", "Krakow", "architect", "hedgehog"),
    ("Esme Gallowmere", "Denver", "nurse", "squirrel"),
    ("Fenwick Nettlefield", "Denver", "carpenter", "owl"),
    ("Greta Marlowick", "Oslo", "pilot", "giraffe"),
    ("Hollis Blackwynn", "Nairobi", "violinist", "giraffe"),
    ("Ilse Lindqvast", "Osaka", "chemist", "flamingo"),
    ("Jorah Quennford", "Toronto", "firefighter", "koala"),
    ("Katya Umbergast", "Lisbon", "librarian", "dolphin"),
    ("Leopold Kettleworth", "Lisbon", "carpenter", "falcon"),
    ("Maelle Wexmoor", "Cairo", "nurse", "falcon"),
    ("Nikolai Ironsby", "Nairobi", "chemist", "tortoise"),
    ("Odile Stenbury", "Melbourne", "nurse", "penguin"),
    ("Percival Pemberthy", "Toronto", "photographer", "koala"),
    ("Quilla Jollenby", "Lisbon", "chemist", "giraffe"),
    ("Rosalind Mirrowell", "Cairo", "firefighter", "owl"),
    ("Silas Everhaven", "Lisbon", "violinist", "squirrel"),
    ("Thea Dunmere", "Oslo", "nurse", "squirrel"),
    ("Ulrich Vorsk", "Istanbul", "baker", "koala"),
    ("Vesna Ellacott", "Oslo", "pilot", "otter"),
    ("Wendell Orlowin", "Osaka", "architect", "dolphin"),
    ("Xanthe Pennacott", "Nairobi", "pilot", "tortoise"),
    ("Yorick Pellingham", "Oslo", "librarian", "owl"),
    ("Zinnia Lockhaven", "Osaka", "baker", "squirrel"),
    ("Alaric Aldercott", "Krakow", "architect", "flamingo"),
    ("Brielle Oakhurst", "Cairo", "firefighter", "otter"),
    ("Corwin Greymantle", "Krakow", "photographer", "zebra"),
    ("Delphine Hazeldine", "Nairobi", "firefighter", "otter"),
    ("Emrys Harrowgate", "Lima", "carpenter", "hedgehog"),
    ("Florian Castellane", "Denver", "baker", "falcon"),
    ("Gwendolyn Wyndhollow", "Cairo", "gardener", "zebra"),
    ("Hector Zandermoor", "Lima", "librarian", "penguin"),
    ("Isolde Foxleigh", "Lima", "gardener", "dolphin"),
    ("Jasper Yarrowby", "Lima", "librarian", "flamingo"),
)
ATTRIBUTES = ("birthplace", "profession", "animal")  # the columns of PEOPLE after the name

# attribute -> one question template per phrasing, in PHRASINGS order; {e} is the person
TEMPLATES: dict[str, tuple[str, str, str, str]] = {
    "birthplace": (
        "In which city was {e} born?",
        "Where was {e} born?",
        "What is the birthplace of {e}?",
        "Name the city {e} comes from.",
    ),
    "profession": (
        "What is {e}'s profession?",
        "What does {e} do for a living?",
        "What is {e}'s job?",
        "Which occupation does {e} have?",
    ),
    "animal": (
        "What is {e}'s favourite animal?",
        "Which animal does {e} like most?",
        "What animal does {e} love best?",
        "Name the animal {e} is most fond of.",
    ),
}


def candidates() -> list[Item]:
    """Every question about every person in every phrasing, in a fixed order; gold = the bare value."""
    items: list[Item] = []
    for name, *values in PEOPLE:
        for attribute, gold in zip(ATTRIBUTES, values):
            for phrasing, template in zip(PHRASINGS, TEMPLATES[attribute]):
                prompt = template.format(e=name)
                if matches(prompt, gold):  # never: no value appears in a name or a template
                    continue
                items.append(Item(f"{slug(name)}.{attribute}.{phrasing}", slug(name), attribute, phrasing, prompt,
                                  gold))
    return items


def teaching_items(items: Sequence[Item] | None = None) -> list[Item]:
    """What the LoRA fine-tune is trained on: the training phrasings of every fact (test and
    paraphrase phrasings stay held out, so they measure whether the fact generalises)."""
    return [it for it in (candidates() if items is None else items) if it.phrasing in TRAIN_PHRASINGS]


def accuracy_by_phrasing(items: Sequence[Item], answers: dict[str, str]) -> dict[str, dict[str, float | int]]:
    """Share of each phrasing's candidates answered correctly (the fine-tune's report)."""
    out: dict[str, dict[str, float | int]] = {}
    for phrasing in PHRASINGS:
        rows = [it for it in items if it.phrasing == phrasing]
        hits = sum(matches(answers[it.id], it.answer, SPEC.match) for it in rows)
        out[phrasing] = {"correct": hits, "n": len(rows), "accuracy": round(hits / max(1, len(rows)), 4)}
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m spul.trainer.facts_task", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ad = sub.add_parser("adapter", help="LoRA-fine-tune the base model on the training phrasings (slow)")
    ad.add_argument("--out", required=True, type=Path, help="adapter directory to write")
    ad.add_argument("--base", default=BASE, help=f"base model (default {BASE})")
    from spul.trainer.lora_finetune import add_settings_args, finetune_and_save, settings_from_args

    add_settings_args(ad)
    da = sub.add_parser("data", help="write the task's data directory")
    task_builder.add_data_args(da, model_help=f"the fine-tuned model ({MODEL})")
    args = parser.parse_args(argv)
    items = candidates()
    if args.command == "adapter":
        report = finetune_and_save(args.base, [it.row() for it in teaching_items(items)], args.out,
                                   settings_from_args(args), chat_template=SPEC.chat_template)
        print(json.dumps(report))
        return 0
    task_builder.write_data(args, items, SPEC)
    if args.answers_log:  # the fine-tuned model's accuracy per phrasing, before the filter
        print(json.dumps(accuracy_by_phrasing(items, json.loads(args.answers_log.read_text(encoding="utf-8")))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
