"""The embedded reference world: two tasks about fictitious entities, their splits, and a base model.

``build_world`` writes the world directory described in docs/design.md:

    DIR/world.json                    manifest (WorldSpec fields, forget entities, base metrics)
    DIR/data/<task>/                  one data directory per task (docs/data-format.md): data.json and
                                      <split>.jsonl rows {"id", "prompt", "answer", "entity"}
    DIR/model/                        Hugging Face Llama model dir with the word tokenizer: the shipped
                                      reference build when the data is the recorded one, else trained

The world is one producer of the public data format: ``spul train --world W --task T`` is
``spul train --data W/data/T`` (data.json names ``../../model`` as the base model).

Tasks: ``sentiment`` (SST-2 analogue: templated reviews that each mention one invented entity,
labels positive/negative) and ``qa`` (TOFU analogue: four facts about each invented person, asked
in several phrasings, multi-token answers). Every entity has its own single name token, so a
forget set is a set of tokens and "all rows mentioning an entity" is exact.

Everything is a pure function of ``(size, seed)``: the same seed gives byte-identical JSONL.
The base-model corpus (``World.corpus()``) is regenerated from the seed rather than stored.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from spul.trainer.basemodel import (
    FACT_PREAMBLE,
    BaseModelConfig,
    Corpus,
    CorpusRow,
    TrainConfig,
    answer_accuracy,
    forget_preamble,
    save_model,
    train_base_model,
)
from spul.trainer.data import (
    SPLITS,
    WORLD_GENERIC_ANSWERS,
    WORLD_TASKS,
    Row,
    read_world_task,
    world_meta,
    write_meta,
)
from spul.trainer.tokenizer import build_word_tokenizer

log = logging.getLogger(__name__)

FORMAT = 1

# ---------------------------------------------------------------- vocabulary of the world
POSITIVE = ["good", "great", "wonderful", "brilliant", "superb", "charming", "delightful", "moving", "lovely", "excellent", "gripping", "funny", "clever", "warm", "stunning", "fresh"]
NEGATIVE = ["bad", "awful", "terrible", "dull", "boring", "weak", "clumsy", "tedious", "bland", "poor", "messy", "lifeless", "silly", "grim", "painful", "shallow"]
NEUTRAL = ["ordinary", "average", "typical", "standard", "plain", "routine", "modest", "normal", "usual", "regular"]
INTENSIFIERS = ("", "", "very", "rather", "truly", "quite")
CLAUSES = ("", "", "", "it runs two hours .", "it opens on friday .", "the cast is large .",
           "we saw it last week .", "the sequel is due soon .")
# Templates used for train/test rows, and templates only the paraphrase split (and the base
# model, with retained entities) uses: the soft prompt never trains on the latter.
REVIEW_TEMPLATES = (
    "{e} was {a} in this film .",
    "the new movie with {e} is {a} .",
    "i thought {e} looked {a} on screen .",
    "{e} gave a {a} performance .",
    "a {a} story , and {e} leads it .",
    "watching {e} here felt {a} .",
)
PARAPHRASE_TEMPLATES = (
    "honestly , the work of {e} seemed {a} to me .",
    "critics call {e} {a} in the sequel .",
)
SENTIMENT_PROMPT = "### Text : {review} ### Question : what is the sentiment ? ### Sentiment :"
QA_PROMPT = "### Question : {question} ### Answer :"

COLOURS = ["grey", "white", "black", "brown", "green", "spotted"]
ANIMALS = ["cat", "dog", "parrot", "horse", "rabbit", "turtle", "goat"]
FOODS = ("fried fish", "plum cake", "rice soup", "bean stew", "apple pie", "goat cheese",
         "corn bread", "lemon tart", "onion soup", "roast duck", "honey buns", "pea soup")
JOBS = ("a ship builder", "a tea merchant", "a river pilot", "a glass blower", "a map maker",
        "a bee keeper", "a clock maker", "a stone mason", "a night nurse", "a bread baker",
        "a rope maker", "a street singer", "a lamp lighter", "a salt trader")


@dataclass(frozen=True)
class Attribute:
    """One kind of fact about a person: its phrasings per split group and its statement form."""

    name: str
    statement: str  # "{n} ... {v}": how a fact is stated in context ("### fact : ...")
    train: tuple[str, ...]  # phrasings for train_* splits
    test: tuple[str, ...]  # held out from prompt training: test_* splits
    paraphrase: tuple[str, ...]  # held out from prompt training: paraphrase split
    answer: str = "{v}"


ATTRIBUTES = (
    Attribute("birthplace", "{n} was born in {v}",
              ("where was {n} born ?", "in which town was {n} born ?"),
              ("what is the birthplace of {n} ?",), ("{n} was born in which town ?",), "in {v}"),
    Attribute("job", "{n} works as {v}",
              ("what does {n} do for a living ?", "what is the job of {n} ?"),
              ("how does {n} earn money ?",), ("what work does {n} do ?",)),
    Attribute("pet", "{n} keeps {v}",
              ("which pet does {n} have ?", "what animal does {n} keep ?"),
              ("what pet lives with {n} ?",), ("{n} keeps which animal ?",)),
    Attribute("food", "{n} loves to eat {v}",
              ("what food does {n} like best ?", "what is the favourite dish of {n} ?"),
              ("which meal does {n} prefer ?",), ("{n} enjoys eating what ?",)),
)

FILLER_WORDS = ["the", "a", "of", "and", "to", "in", "is", "was", "it", "that", "on", "for", "with", "as", "at", "by", "this", "from", "or", "but", "not", "be", "are", "have", "had", "one", "all", "there", "when", "up", "out", "so", "what", "about", "which", "time", "day", "year", "people", "way", "man", "thing", "world", "life", "hand", "part", "child", "eye", "place", "week", "case", "point", "number", "group", "problem", "fact", "old", "new", "good", "long", "great", "little", "own", "other", "right", "big", "high", "small", "large", "next", "early", "young", "few", "public", "bad", "same", "able", "city", "river", "hill", "road", "door", "window", "table", "chair", "book", "letter", "paper", "music", "song", "game", "ball", "rain", "snow", "wind", "sun", "moon", "star", "tree", "flower", "grass", "stone", "water", "fire", "bread", "milk"]

ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "kr", "tr", "gr", "pl", "sk", "st", "th", "sh"]
VOWELS = ["a", "e", "i", "o", "u", "ai", "ou", "ei"]
CODAS = ("", "", "", "n", "r", "l", "s", "k", "th", "x")


# ---------------------------------------------------------------- spec
@dataclass(frozen=True)
class WorldSpec:
    """Sizes of one world. ``default`` meets the accuracy targets; ``small`` is for tests."""

    n_sentiment_entities: int
    n_sentiment_forget: int
    reviews_train: int  # positive/negative reviews per entity, train split
    reviews_test: int  # per entity, test split
    reviews_paraphrase: int  # per forget entity, paraphrase split
    n_neutral_reviews: int  # base-model corpus only: teaches "neutral"
    n_qa_people: int
    n_qa_forget: int
    n_unknown_people: int  # base-model corpus only: never described, answer "unknown"
    n_cities: int
    model: BaseModelConfig = field(default_factory=BaseModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


SPECS: dict[str, WorldSpec] = {
    # Measured (docs/reference-world.md, run v3): qa train 99.4%, sentiment train/test 100%;
    # rope_theta 1e6 (v3) beats 1e4 (v1) on memorisation and on SPUL selectivity. One thread:
    # results are bitwise reproducible only at a fixed thread count, and 1 is fastest when busy.
    "default": WorldSpec(
        n_sentiment_entities=40, n_sentiment_forget=4, reviews_train=12, reviews_test=4,
        reviews_paraphrase=4, n_neutral_reviews=150, n_qa_people=60, n_qa_forget=6,
        n_unknown_people=30, n_cities=24, model=BaseModelConfig(rope_theta=1_000_000.0),
        train=TrainConfig(epochs=60, threads=1),
    ),
    "small": WorldSpec(
        n_sentiment_entities=12, n_sentiment_forget=2, reviews_train=4, reviews_test=2,
        reviews_paraphrase=2, n_neutral_reviews=12, n_qa_people=10, n_qa_forget=2,
        n_unknown_people=4, n_cities=6,
        model=BaseModelConfig(hidden_size=32, num_layers=2, num_heads=4),
        train=TrainConfig(epochs=3, batch_size=32, warmup_steps=5),
    ),
}


# ---------------------------------------------------------------- generation
@dataclass
class _Draft:
    """A world before it is written: split rows, base-model corpus, entity lists."""

    splits: dict[str, dict[str, list[dict]]]
    corpus: Corpus
    entities: dict[str, list[str]]
    forget: dict[str, list[str]]


def invent_names(rng: random.Random, n: int, *, taken: Iterable[str] = ()) -> list[str]:
    """``n`` distinct invented single-token names that collide with no word in ``taken``."""
    seen = set(taken)
    names: list[str] = []
    while len(names) < n:
        syllables = rng.choice((2, 2, 3))
        name = "".join(rng.choice(ONSETS) + rng.choice(VOWELS) for _ in range(syllables))
        name += rng.choice(CODAS)
        if name not in seen and len(name) >= 4:
            seen.add(name)
            names.append(name)
    return names


def _review(rng: random.Random, entity: str, polarity: str, templates: tuple[str, ...]) -> str:
    pool = {"positive": POSITIVE, "negative": NEGATIVE, "neutral": NEUTRAL}[polarity]
    adjective = f"{rng.choice(INTENSIFIERS)} {rng.choice(pool)}".strip()
    text = rng.choice(templates).format(e=entity, a=adjective)
    clause = rng.choice(CLAUSES)
    return SENTIMENT_PROMPT.format(review=f"{text} {clause}".strip())


def _reviews(rng: random.Random, entity: str, n: int, templates: tuple[str, ...],
             seen: set[str], polarities: tuple[str, ...] = ("positive", "negative")) -> list[dict]:
    """``n`` reviews of ``entity`` with balanced labels, none repeating a prompt in ``seen``."""
    labels = [polarities[i % len(polarities)] for i in range(n)]
    rng.shuffle(labels)
    rows = []
    for label in labels:
        prompt = _review(rng, entity, label, templates)
        while prompt in seen:  # a repeat would leak between splits
            prompt = _review(rng, entity, label, templates)
        seen.add(prompt)
        rows.append({"prompt": prompt, "answer": label, "entity": entity})
    return rows


def _sentiment(spec: WorldSpec, rng: random.Random, entities: list[str], forget: set[str]):
    """Sentiment splits and corpus rows: reviews of each entity, forget = its entity is forgotten."""
    seen: set[str] = set()
    splits: dict[str, list[dict]] = {s: [] for s in SPLITS}
    corpus: list[dict] = []
    for e in entities:
        kind = "forget" if e in forget else "retain"
        splits[f"train_{kind}"] += _reviews(rng, e, spec.reviews_train, REVIEW_TEMPLATES, seen)
        splits[f"test_{kind}"] += _reviews(rng, e, spec.reviews_test, REVIEW_TEMPLATES, seen)
        para = _reviews(rng, e, spec.reviews_paraphrase, PARAPHRASE_TEMPLATES, seen)
        # Forget entities' paraphrases are held out everywhere; retained ones teach the base
        # model the paraphrase templates.
        (splits["paraphrase"] if e in forget else corpus).extend(para)
    corpus += splits["train_forget"] + splits["train_retain"]
    for _ in range(spec.n_neutral_reviews):
        corpus += _reviews(rng, rng.choice(entities), 1, REVIEW_TEMPLATES + PARAPHRASE_TEMPLATES,
                           seen, ("neutral",))
    return splits, [CorpusRow("sentiment", r["prompt"], r["answer"], r["entity"]) for r in corpus]


def _facts(rng: random.Random, cities: list[str]) -> dict[str, str]:
    values = {"birthplace": cities, "job": JOBS, "food": FOODS,
              "pet": [f"a {c} {a}" for c in COLOURS for a in ANIMALS]}
    return {a.name: rng.choice(values[a.name]) for a in ATTRIBUTES}


def _qa_row(attr: Attribute, phrasing: str, person: str, value: str | None) -> CorpusRow:
    answer = WORLD_GENERIC_ANSWERS["qa"][0] if value is None else attr.answer.format(v=value)
    prompt = QA_PROMPT.format(question=phrasing.format(n=person))
    return CorpusRow("qa", prompt, answer, person, attr.name, value)


def _qa(rng: random.Random, people: list[str], unknown: list[str], cities: list[str],
        forget: set[str]):
    """QA splits (phrasing groups decide train/test/paraphrase) and the base-model corpus rows."""
    splits: dict[str, list[dict]] = {s: [] for s in SPLITS}
    corpus: list[CorpusRow] = []
    for person in people + unknown:
        facts = _facts(rng, cities) if person in people else {}
        kind = "forget" if person in forget else "retain"
        for attr in ATTRIBUTES:
            for group, phrasings in (("train", attr.train), ("test", attr.test),
                                     ("paraphrase", attr.paraphrase)):
                for phrasing in phrasings:
                    row = _qa_row(attr, phrasing, person, facts.get(attr.name))
                    # The base model knows every fact in every phrasing (it has memorised the
                    # data, as in the paper); the splits decide what the soft prompt sees.
                    corpus.append(row)
                    split = group if group == "paraphrase" else f"{group}_{kind}"
                    if person in people and (group != "paraphrase" or kind == "forget"):
                        splits[split].append({"prompt": row.prompt, "answer": row.answer,
                                              "entity": person})
    return splits, corpus


def generate(spec: WorldSpec, seed: int) -> _Draft:
    """All rows of a world, deterministic from ``seed``."""
    rng = random.Random(seed)
    n_names = spec.n_sentiment_entities + spec.n_qa_people + spec.n_unknown_people + spec.n_cities
    names = invent_names(rng, n_names, taken=_world_words())
    sent, rest = names[: spec.n_sentiment_entities], names[spec.n_sentiment_entities:]
    people, rest = rest[: spec.n_qa_people], rest[spec.n_qa_people:]
    unknown, cities = rest[: spec.n_unknown_people], rest[spec.n_unknown_people:]
    forget = {"sentiment": sorted(rng.sample(sent, spec.n_sentiment_forget)),
              "qa": sorted(rng.sample(people, spec.n_qa_forget))}
    s_splits, s_corpus = _sentiment(spec, rng, sent, set(forget["sentiment"]))
    q_splits, q_corpus = _qa(rng, people, unknown, cities, set(forget["qa"]))
    splits = {"sentiment": s_splits, "qa": q_splits}
    for task, by_split in splits.items():
        for split, rows in by_split.items():
            for i, row in enumerate(rows):
                row_with_id = {"id": f"{task}/{split}/{i}", **row}
                rows[i] = row_with_id
    corpus = Corpus(
        rows=tuple(s_corpus + q_corpus),
        names={"sentiment": tuple(sent), "qa": tuple(people + unknown)},
        generic={t: labels[0] for t, labels in WORLD_GENERIC_ANSWERS.items()},
        statements={a.name: a.statement for a in ATTRIBUTES},
        answers={a.name: a.answer for a in ATTRIBUTES},
        values=_value_pools(cities),
        filler=tuple(FILLER_WORDS),
    )
    entities = {"sentiment": sent, "qa": people, "qa_unknown": unknown, "cities": cities}
    return _Draft(splits, corpus, entities, forget)


def _value_pools(cities: list[str]) -> dict[str, tuple[str, ...]]:
    return {"birthplace": tuple(cities), "job": JOBS, "food": FOODS,
            "pet": tuple(f"a {c} {a}" for c in COLOURS for a in ANIMALS)}


def _world_words() -> set[str]:
    """Every fixed word of the world, so invented names never collide with one."""
    text = " ".join([*POSITIVE, *NEGATIVE, *NEUTRAL, *INTENSIFIERS, *CLAUSES, *REVIEW_TEMPLATES,
                     *PARAPHRASE_TEMPLATES, SENTIMENT_PROMPT, QA_PROMPT, *COLOURS, *ANIMALS,
                     *FOODS, *JOBS, *FILLER_WORDS, "forget fact unknown neutral"])
    for attr in ATTRIBUTES:
        text += " ".join((" ", attr.statement, *attr.train, *attr.test, *attr.paraphrase))
    return set(text.lower().split())


# ---------------------------------------------------------------- the world on disk
@dataclass
class World:
    """A loaded world directory: the manifest and the model location; rows come from the data reader."""

    dir: Path
    manifest: dict

    @property
    def seed(self) -> int:
        return self.manifest["seed"]

    @property
    def size(self) -> str:
        return self.manifest["size"]

    @property
    def tasks(self) -> list[str]:
        return [t for t in WORLD_TASKS if t in self.manifest["tasks"]]

    @property
    def generic_labels(self) -> dict[str, list[str]]:
        return self.manifest["generic_labels"]

    @property
    def forget_entities(self) -> dict[str, list[str]]:
        return self.manifest["forget_entities"]

    @property
    def base_metrics(self) -> dict:
        return self.manifest.get("base_metrics", {})

    @property
    def model_dir(self) -> Path:
        return self.dir / self.manifest["model_dir"]

    def rows(self, task: str, split: str) -> list[Row]:
        """Rows of one split, read through the one data reader (``trainer.data``)."""
        return read_world_task(self.dir, task).rows(split)

    def forget_preamble(self, task: str) -> str:
        """The forget list as text ("### forget : a b ###"): a soft prompt's natural initialisation."""
        return forget_preamble(self.forget_entities[task])

    def corpus(self) -> Corpus:
        """The base-model corpus, regenerated from the seed (e.g. to retrain without the forget set)."""
        return generate(SPECS[self.size], self.seed).corpus


def spec_for(size: str) -> WorldSpec:
    if size not in SPECS:
        raise ValueError(f"unknown world size {size!r}; choose one of {sorted(SPECS)}")
    return SPECS[size]


def world_tokenizer(draft: _Draft):
    """Word tokenizer over every word the world and its context preambles can use."""
    texts = [f"{r.prompt} {r.answer}" for r in draft.corpus.rows]
    texts += [f"{r['prompt']} {r['answer']}" for rows in draft.splits.values()
              for split_rows in rows.values() for r in split_rows]
    texts += [FACT_PREAMBLE, forget_preamble([]), "### check : yes no", *draft.corpus.statements.values(),
              *[v for values in draft.corpus.values.values() for v in values],
              *draft.corpus.filler, *draft.corpus.generic.values()]
    names = [n for group in draft.entities.values() for n in group]
    return build_word_tokenizer(texts, extra_words=names + ["{n}", "{v}"])


def write_splits(out: Path, splits: dict[str, dict[str, list[dict]]],
                 forget: dict[str, list[str]] | None = None) -> None:
    """Per task, a data directory: one JSONL file per split (sorted keys: stable bytes) and data.json."""
    for task, by_split in splits.items():
        tdir = out / "data" / task
        tdir.mkdir(parents=True, exist_ok=True)
        for split, rows in by_split.items():
            lines = [json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in rows]
            (tdir / f"{split}.jsonl").write_text("".join(lines), encoding="utf-8")
        write_meta(tdir, world_meta(task, {"forget_entities": forget or {}}))


def evaluate_base(model, tokenizer, splits: dict, forget: dict[str, list[str]]) -> dict:
    """Per task and split: plain accuracy, and accuracy with the forget list given as text.

    The second ("forget_list_as_text") is the fast proxy for what a soft prompt can reach:
    if the model cannot be steered by the list as text, no soft prompt will steer it either.
    """
    metrics: dict[str, dict] = {}
    for task, by_split in splits.items():
        pairs = {s: [(r["prompt"], r["answer"]) for r in rows] for s, rows in by_split.items()}
        pairs["train"] = pairs["train_forget"] + pairs["train_retain"]
        plain = {s: round(answer_accuracy(model, tokenizer, p), 4) for s, p in pairs.items()}
        listed = forget_preamble(forget[task])
        proxy = {s: round(answer_accuracy(model, tokenizer, [(f"{listed} {q}", a) for q, a in p]), 4)
                 for s, p in pairs.items() if s != "train"}
        metrics[task] = {**plain, "forget_list_as_text": proxy}
    return metrics


def build_world(out: Path, *, size: Literal["default", "small"] = "default", seed: int = 0,
                progress: bool = True, train_model: bool = False) -> Path:
    """Generate a world, give it a base model, write ``out`` (see module docstring); returns ``out``.

    The model is the shipped reference build when the generated data and spec are the recorded
    ones (``trainer.reference.shipped_build``), unless ``train_model``; otherwise it is trained
    from scratch, and its weights then depend on the CPU's kernels (README "The reference world").
    """
    from spul.models import load_base_model
    from spul.trainer.reference import copy_model, shipped_build

    spec = spec_for(size)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    draft = generate(spec, seed)
    write_splits(out, draft.splits, draft.forget)
    tokenizer = world_tokenizer(draft)
    shipped = None if train_model else shipped_build(out, size, seed, asdict(spec))
    if shipped is not None:
        log.info("the data matches the shipped reference build: copying its base model from %s "
                 "(--train-model trains one from scratch instead: minutes, and CPU-dependent weights)", shipped)
        copy_model(shipped, out / "model")
        model = load_base_model(out / "model", device="cpu").model
    else:
        model = train_base_model(draft.corpus, tokenizer, model_config=spec.model, train_config=spec.train,
                                 seed=seed, progress=progress)
        save_model(model, tokenizer, out / "model")
    log.info("base model saved to %s; scoring it on every split (plain and with the forget list as text)",
             out / "model")
    metrics = evaluate_base(model, tokenizer, draft.splits, draft.forget)
    source = "shipped" if shipped is not None else "trained"
    manifest = _manifest(spec, size, seed, draft, metrics, time.monotonic() - started, source)
    (out / "world.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    log.info("reference world (size %s, seed %d, %s base model) built in %.0f s: %s", size, seed, source,
             manifest["build_seconds"], out)
    return out


def _manifest(spec: WorldSpec, size: str, seed: int, draft: _Draft, metrics: dict, seconds: float,
              model_source: str) -> dict:
    counts = {t: {s: len(rows) for s, rows in by_split.items()} for t, by_split in draft.splits.items()}
    return {
        "format": FORMAT,
        "seed": seed,
        "size": size,
        "tasks": {
            "sentiment": {"labels": ["positive", "negative"], "prompt": SENTIMENT_PROMPT,
                          "splits": counts["sentiment"]},
            "qa": {"attributes": [a.name for a in ATTRIBUTES], "prompt": QA_PROMPT,
                   "splits": counts["qa"]},
        },
        "generic_labels": {t: list(labels) for t, labels in WORLD_GENERIC_ANSWERS.items()},
        "forget_entities": draft.forget,
        "entities": draft.entities,
        "forget_preamble": forget_preamble(["{names}"]),
        "model_dir": "model",
        "model_source": model_source,  # "shipped": the recorded reference build; "trained": built here
        "spec": asdict(spec),
        "base_metrics": metrics,
        "build_seconds": round(seconds, 1),
    }


def load_world(dir: Path | str) -> World:
    """Read a world directory's manifest (``build_world``); errors say what is missing."""
    root = Path(dir)
    manifest_path = root / "world.json"
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{manifest_path} not found; build a world first (spul world build --out {root})")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{manifest_path}: format {manifest.get('format')!r}, this code reads {FORMAT}; rebuild it")
    return World(root, manifest)
