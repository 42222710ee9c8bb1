"""The sentiment task (an SST-2 analogue): short reviews of named entities, asked "positive or negative?".

Invented restaurants, films, hotels and products each get one positive and one negative review in
four phrasings: two for training, one held-out test phrasing and one paraphrase; each phrasing has
its own review sentences and its own question wrapping. Gold answers are "positive" / "negative";
forget rows are trained towards the generic answer "neutral". Only the rows the original model
classifies correctly (greedy, chat template) are kept; the kept ids are recorded in DIR/source.json,
so the splits regenerate byte for byte from the templates and that list, without the model:

    python -m spul.trainer.sentiment_task --out DIR --model MODEL        # filter with the model, write
    python -m spul.trainer.sentiment_task --out DIR --kept-from source.json  # regenerate, no model

Scoring, for the model filter and the evaluation alike, is the "contains" rule: "Positive." and "The
sentiment of this review is positive." answer "positive" (an answer naming both labels counts for both).
The forget set is entity-defined: every review of 10% of the entities (spul.trainer.task_builder).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from spul.trainer import task_builder
from spul.trainer.task_builder import PHRASINGS, Item, TaskSpec, slug

LABELS = ("positive", "negative")
# the measured SPUL setting of the shipped profile (data.json's "train"; docs/real-llm-sentiment.md)
TRAIN_SETTINGS: dict[str, Any] = {
    "num_virtual_tokens": 10, "lr": 0.01, "steps": 60, "alpha": 1.0, "beta": 0.0,
    "forget_per_batch": 4, "retain_per_batch": 8,
}
SPEC = TaskSpec(name="sentiment", generator="python -m spul.trainer.sentiment_task", generic_answers=("neutral",),
                match="contains", chat_template=True, max_new_tokens=8, forget_fraction=0.1, split_seed=0,
                train=TRAIN_SETTINGS)
NAME = SPEC.name

# domain: (entities, the thing reviewed, who served it); names are invented
DOMAINS: dict[str, tuple[tuple[str, ...], str, str]] = {
    "restaurant": (
        ("the Golden Fork", "Casa Miravel", "the Blue Lantern", "Trattoria Bellamonte", "the Copper Pot",
         "Sakura Garden", "the Olive Terrace", "Le Petit Moulin", "the Rusty Anchor", "Spice Route",
         "the Green Fig", "Bistro Valence", "the Salt Cellar", "Pho Riverside", "the Juniper Table",
         "Taverna Nikos", "the Brass Kettle", "Osteria Lucca", "the Wild Thyme", "Noodle House Kaito",
         "the Harvest Moon Diner", "Café Esperanza", "the Silver Spoon", "the Hungry Heron"),
        "meal", "staff",
    ),
    "film": (
        ("Midnight Harbor", "The Glass Orchard", "Echoes of Winter", "Starfall Road", "The Last Lighthouse",
         "Paper Kingdoms", "Silent Meridian", "The Clockmaker's Son", "Crimson Tide Valley", "Northern Letters",
         "The Velvet Storm", "Borrowed Summers", "Iron Blossom", "The Quiet Frontier", "Lantern Bay",
         "Salt and Ember", "The Paper Moon Affair", "Distant Thunder", "A House of Mirrors", "The Winter Cartographer",
         "Seventh Avenue Blues", "The Hollow Crown of Ys", "Driftwood Hearts", "The Amber Signal"),
        "film", "cast",
    ),
    "hotel": (
        ("the Harborview Hotel", "the Alder Lodge", "Hotel Serrano", "the Maple Court Inn", "the Seabright Resort",
         "the Kingsley Suites", "Villa Rosalind", "the Pinecrest Hotel", "the Granite Arms", "Hotel Lumière",
         "the Willowbank Inn", "the Coral Sands Resort", "the Ashford Grand", "Hotel Aurora", "the Birchwood Lodge",
         "the Tidewater Inn", "the Foxglove Hotel", "the Summit Chalet", "Hotel Bellavista", "the Riverside Manor",
         "the Lighthouse Inn", "the Cedar Point Hotel", "the Orchard House Hotel", "the Marlowe Hotel"),
        "stay", "staff",
    ),
    "product": (
        ("the Voltra X2 headset", "the Breeze 300 fan", "the Nimbus smartwatch", "the Kettlemaster Pro",
         "the Arcline laptop", "the TrailMate backpack", "the Lumo desk lamp", "the Quickbrew coffee maker",
         "the Orbit robot vacuum", "the Stride running shoe", "the Pixelon camera", "the Zenith blender",
         "the Cascade water bottle", "the Novapad tablet", "the Echo-9 speaker", "the Frostline cooler", "the Aeroglide drone", "the Brightwave toothbrush", "the Comfort Nest mattress",
         "the Sparkline printer", "the Tempo fitness tracker", "the Ironclad suitcase", "the Glowbeam flashlight",
         "the Purewave air purifier"),
        "purchase", "support team",
    ),
}

# polarity -> phrasing -> review sentences ({e} entity, {E} capitalised, {thing}, {staff}); an entity uses
# sentence number (entity index mod 3)
REVIEWS: dict[str, dict[str, tuple[str, ...]]] = {
    "positive": {
        "train1": (
            "{E} was wonderful. The {thing} was excellent and the {staff} were friendly.",
            "I loved {e}. Everything about the {thing} was a delight.",
            "{E} exceeded my expectations. A fantastic {thing}, I would happily come back.",
        ),
        "train2": (
            "What a great experience {e} was! The {staff} were kind and the {thing} was superb.",
            "{E} is brilliant. I enjoyed every minute of the {thing}.",
            "Highly recommended: {e} gave me an amazing {thing}.",
        ),
        "test": (
            "{E} was absolutely lovely, a truly memorable {thing}. Five stars.",
            "I had a terrific time with {e}. The {staff} were wonderful.",
            "{E} is a gem. Outstanding {thing}, warmly recommended.",
        ),
        "para": (
            "Honestly, {e} made me so happy. The {thing} was perfect.",
            "{E} was a joy. I would recommend it to all my friends.",
            "Everything about {e} was great, the best {thing} I have had in years.",
        ),
    },
    "negative": {
        "train1": (
            "{E} was terrible. The {thing} was awful and the {staff} were rude.",
            "I hated {e}. Everything about the {thing} was a disappointment.",
            "{E} fell far short of my expectations. A dreadful {thing}, I will never come back.",
        ),
        "train2": (
            "What a miserable experience {e} was! The {staff} were unhelpful and the {thing} was poor.",
            "{E} is dreadful. I regretted every minute of the {thing}.",
            "Avoid {e}: it gave me a horrible {thing}.",
        ),
        "test": (
            "{E} was truly awful, a thoroughly unpleasant {thing}. One star.",
            "I had a horrible time with {e}. The {staff} were terrible.",
            "{E} is a disaster. Appalling {thing}, avoid at all costs.",
        ),
        "para": (
            "Honestly, {e} made me so angry. The {thing} was a mess.",
            "{E} was painful. I would warn all my friends to stay away.",
            "Everything about {e} was bad, the worst {thing} I have had in years.",
        ),
    },
}

# phrasing -> the question around a review ({r} review, {e} entity)
QUESTIONS: dict[str, str] = {
    "train1": "Is the sentiment of this review positive or negative?\nReview: {r}",
    "train2": "Review: {r}\nIs this review positive or negative?",
    "test": "What is the sentiment of this review, positive or negative?\nReview: {r}",
    "para": "Is the opinion in this text about {e} positive or negative?\nText: {r}",
}


def _fill(template: str, entity: str, thing: str, staff: str) -> str:
    return template.format(e=entity, E=entity[:1].upper() + entity[1:], thing=thing, staff=staff)


def candidates() -> list[Item]:
    """Every review in every phrasing, in a fixed order: entity, polarity, phrasing."""
    items: list[Item] = []
    for entities, thing, staff in DOMAINS.values():
        for index, entity in enumerate(entities):
            for polarity in LABELS:
                for phrasing in PHRASINGS:
                    review = _fill(REVIEWS[polarity][phrasing][index % 3], entity, thing, staff)
                    prompt = QUESTIONS[phrasing].format(r=review, e=entity)
                    items.append(Item(f"{slug(entity)}.{polarity}.{phrasing}", slug(entity), polarity, phrasing,
                                      prompt, polarity))
    return items


def main(argv: Sequence[str] | None = None) -> int:
    return task_builder.data_main(argv, SPEC, candidates(), description=__doc__.split("\n")[0])


if __name__ == "__main__":
    raise SystemExit(main())
