"""The pretrained-knowledge task: project-written facts, their questions, and the unlearning splits.

Facts about countries (capital, continent, currency, official language) and well-known people
(profession, nationality) become questions in four phrasings per attribute: two for training,
one held-out test phrasing and one paraphrase. Only the questions the original model answers
correctly (greedy, chat template, "contains" scoring) are kept; the kept ids are recorded in
DIR/source.json, so the splits regenerate byte for byte from the facts and that list, without the model:

    python -m spul.trainer.knowledge --out DIR --model MODEL_DIR       # filter with the model, write
    python -m spul.trainer.knowledge --out DIR --kept-from source.json  # regenerate, no model

The forget set is entity-defined: every question about 10% of the entities
(spul.trainer.task_builder builds the splits).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from spul.trainer import task_builder
from spul.trainer.task_builder import PHRASINGS, Item, TaskSpec, matches, slug

# recommended SPUL settings for this task (written to data.json's "train"; see docs/real-llm.md)
TRAIN_SETTINGS: dict[str, Any] = {
    "num_virtual_tokens": 10, "lr": 0.003, "steps": 240, "alpha": 1.0, "beta": 0.0,
    "forget_per_batch": 4, "retain_per_batch": 16, "retain_target": "model", "model_answer_tokens": 24,
}
SPEC = TaskSpec(name="knowledge", generator="python -m spul.trainer.knowledge", generic_answers=("I don't know.",),
                match="contains", chat_template=True, max_new_tokens=12, forget_fraction=0.1, split_seed=0,
                train=TRAIN_SETTINGS)
NAME = SPEC.name


# country: (display name in a question, capital, continent, currency, official language); None = not asked
COUNTRIES: tuple[tuple[str, str | None, str | None, str | None, str | None], ...] = (
    # Europe
    ("France", "Paris", "Europe", "euro", "French"),
    ("Germany", "Berlin", "Europe", "euro", "German"),
    ("Italy", "Rome", "Europe", "euro", "Italian"),
    ("Spain", "Madrid", "Europe", "euro", "Spanish"),
    ("Portugal", "Lisbon", "Europe", "euro", "Portuguese"),
    ("the United Kingdom", "London", "Europe", "pound", "English"),
    ("Ireland", "Dublin", "Europe", "euro", "Irish"),
    ("the Netherlands", "Amsterdam", "Europe", "euro", "Dutch"),
    ("Belgium", "Brussels", "Europe", "euro", None),
    ("Switzerland", "Bern", "Europe", "franc", None),
    ("Austria", "Vienna", "Europe", "euro", "German"),
    ("Poland", "Warsaw", "Europe", "zloty", "Polish"),
    ("the Czech Republic", "Prague", "Europe", "koruna", "Czech"),
    ("Slovakia", "Bratislava", "Europe", "euro", "Slovak"),
    ("Hungary", "Budapest", "Europe", "forint", "Hungarian"),
    ("Romania", "Bucharest", "Europe", "leu", "Romanian"),
    ("Bulgaria", "Sofia", "Europe", None, "Bulgarian"),
    ("Greece", "Athens", "Europe", "euro", "Greek"),
    ("Sweden", "Stockholm", "Europe", "krona", "Swedish"),
    ("Norway", "Oslo", "Europe", "krone", "Norwegian"),
    ("Denmark", "Copenhagen", "Europe", "krone", "Danish"),
    ("Finland", "Helsinki", "Europe", "euro", "Finnish"),
    ("Iceland", "Reykjavik", "Europe", "krona", "Icelandic"),
    ("Russia", "Moscow", None, "ruble", "Russian"),
    ("Ukraine", "Kyiv", "Europe", "hryvnia", "Ukrainian"),
    ("Belarus", "Minsk", "Europe", "ruble", None),
    ("Serbia", "Belgrade", "Europe", "dinar", "Serbian"),
    ("Croatia", "Zagreb", "Europe", "euro", "Croatian"),
    ("Slovenia", "Ljubljana", "Europe", "euro", "Slovenian"),
    ("Estonia", "Tallinn", "Europe", "euro", "Estonian"),
    ("Latvia", "Riga", "Europe", "euro", "Latvian"),
    ("Lithuania", "Vilnius", "Europe", "euro", "Lithuanian"),
    ("Albania", "Tirana", "Europe", "lek", "Albanian"),
    ("Malta", "Valletta", "Europe", "euro", None),
    ("Moldova", "Chisinau", "Europe", "leu", None),
    # Asia
    ("China", "Beijing", "Asia", "yuan", "Chinese"),
    ("Japan", "Tokyo", "Asia", "yen", "Japanese"),
    ("South Korea", "Seoul", "Asia", "won", "Korean"),
    ("North Korea", "Pyongyang", "Asia", "won", "Korean"),
    ("India", "New Delhi", "Asia", "rupee", "Hindi"),
    ("Pakistan", "Islamabad", "Asia", "rupee", "Urdu"),
    ("Bangladesh", "Dhaka", "Asia", "taka", "Bengali"),
    ("Sri Lanka", None, "Asia", "rupee", None),
    ("Nepal", "Kathmandu", "Asia", "rupee", "Nepali"),
    ("Thailand", "Bangkok", "Asia", "baht", "Thai"),
    ("Vietnam", "Hanoi", "Asia", "dong", "Vietnamese"),
    ("Cambodia", "Phnom Penh", "Asia", "riel", "Khmer"),
    ("Laos", "Vientiane", "Asia", "kip", "Lao"),
    ("Myanmar", "Naypyidaw", "Asia", "kyat", "Burmese"),
    ("Malaysia", "Kuala Lumpur", "Asia", "ringgit", "Malay"),
    ("Indonesia", "Jakarta", "Asia", "rupiah", "Indonesian"),
    ("the Philippines", "Manila", "Asia", "peso", "Filipino"),
    ("Mongolia", "Ulaanbaatar", "Asia", "tugrik", "Mongolian"),
    ("Afghanistan", "Kabul", "Asia", "afghani", None),
    ("Iran", "Tehran", "Asia", "rial", "Persian"),
    ("Iraq", "Baghdad", "Asia", "dinar", "Arabic"),
    ("Saudi Arabia", "Riyadh", "Asia", "riyal", "Arabic"),
    ("Israel", None, "Asia", "shekel", "Hebrew"),
    ("Jordan", "Amman", "Asia", "dinar", "Arabic"),
    ("Syria", "Damascus", "Asia", "pound", "Arabic"),
    ("Lebanon", "Beirut", "Asia", "pound", "Arabic"),
    ("Turkey", "Ankara", None, "lira", "Turkish"),
    ("Qatar", "Doha", "Asia", "riyal", "Arabic"),
    ("the United Arab Emirates", "Abu Dhabi", "Asia", "dirham", "Arabic"),
    ("Oman", "Muscat", "Asia", "rial", "Arabic"),
    ("Yemen", "Sanaa", "Asia", "rial", "Arabic"),
    ("Kazakhstan", "Astana", "Asia", "tenge", "Kazakh"),
    ("Uzbekistan", "Tashkent", "Asia", "som", "Uzbek"),
    ("Armenia", "Yerevan", None, "dram", "Armenian"),
    ("Bhutan", "Thimphu", "Asia", "ngultrum", "Dzongkha"),
    ("Kyrgyzstan", "Bishkek", "Asia", "som", None),
    ("Tajikistan", "Dushanbe", "Asia", "somoni", "Tajik"),
    # Africa
    ("Egypt", "Cairo", "Africa", "pound", "Arabic"),
    ("Nigeria", "Abuja", "Africa", "naira", "English"),
    ("Kenya", "Nairobi", "Africa", "shilling", None),
    ("Ethiopia", "Addis Ababa", "Africa", "birr", "Amharic"),
    ("South Africa", None, "Africa", "rand", None),
    ("Morocco", "Rabat", "Africa", "dirham", "Arabic"),
    ("Algeria", "Algiers", "Africa", "dinar", "Arabic"),
    ("Tunisia", "Tunis", "Africa", "dinar", "Arabic"),
    ("Libya", "Tripoli", "Africa", "dinar", "Arabic"),
    ("Ghana", "Accra", "Africa", "cedi", "English"),
    ("Senegal", "Dakar", "Africa", "franc", "French"),
    ("Mali", "Bamako", "Africa", "franc", None),
    ("Niger", "Niamey", "Africa", "franc", None),
    ("Sudan", "Khartoum", "Africa", "pound", None),
    ("Uganda", "Kampala", "Africa", "shilling", None),
    ("Tanzania", "Dodoma", "Africa", "shilling", "Swahili"),
    ("Rwanda", "Kigali", "Africa", "franc", None),
    ("Zimbabwe", "Harare", "Africa", None, None),
    ("Zambia", "Lusaka", "Africa", "kwacha", "English"),
    ("Angola", "Luanda", "Africa", "kwanza", "Portuguese"),
    ("Mozambique", "Maputo", "Africa", "metical", "Portuguese"),
    ("Madagascar", "Antananarivo", "Africa", "ariary", None),
    ("Cameroon", "Yaoundé", "Africa", "franc", None),
    ("the Democratic Republic of the Congo", "Kinshasa", "Africa", "franc", "French"),
    ("Botswana", "Gaborone", "Africa", "pula", "English"),
    ("Namibia", "Windhoek", "Africa", "dollar", "English"),
    ("Somalia", "Mogadishu", "Africa", "shilling", "Somali"),
    # North and Central America, Caribbean
    ("the United States", "Washington", "North America", "dollar", "English"),
    ("Canada", "Ottawa", "North America", "dollar", None),
    ("Mexico", "Mexico City", "North America", "peso", "Spanish"),
    ("Cuba", "Havana", "North America", "peso", "Spanish"),
    ("Jamaica", "Kingston", "North America", "dollar", "English"),
    ("Haiti", "Port-au-Prince", "North America", "gourde", None),
    ("the Dominican Republic", "Santo Domingo", "North America", "peso", "Spanish"),
    ("Guatemala", "Guatemala City", "North America", "quetzal", "Spanish"),
    ("Honduras", "Tegucigalpa", "North America", "lempira", "Spanish"),
    ("Nicaragua", "Managua", "North America", None, "Spanish"),
    ("Costa Rica", "San José", "North America", None, "Spanish"),
    ("Panama", "Panama City", "North America", "balboa", "Spanish"),
    ("El Salvador", "San Salvador", "North America", None, "Spanish"),
    # South America
    ("Brazil", "Brasília", "South America", "real", "Portuguese"),
    ("Argentina", "Buenos Aires", "South America", "peso", "Spanish"),
    ("Chile", "Santiago", "South America", "peso", "Spanish"),
    ("Peru", "Lima", "South America", "sol", "Spanish"),
    ("Colombia", "Bogotá", "South America", "peso", "Spanish"),
    ("Venezuela", "Caracas", "South America", None, "Spanish"),
    ("Ecuador", "Quito", "South America", "dollar", "Spanish"),
    ("Bolivia", None, "South America", "boliviano", None),
    ("Paraguay", "Asunción", "South America", None, None),
    ("Uruguay", "Montevideo", "South America", "peso", "Spanish"),
    ("Guyana", "Georgetown", "South America", "dollar", "English"),
    ("Suriname", "Paramaribo", "South America", "dollar", "Dutch"),
    # Oceania
    ("Australia", "Canberra", "Oceania", "dollar", "English"),
    ("New Zealand", "Wellington", "Oceania", "dollar", None),
    ("Fiji", "Suva", "Oceania", "dollar", None),
    ("Papua New Guinea", "Port Moresby", "Oceania", "kina", None),
    ("Samoa", "Apia", "Oceania", "tala", None),
)

# person: (name, profession, nationality); None = not asked
PEOPLE: tuple[tuple[str, str | None, str | None], ...] = (
    ("Albert Einstein", "physicist", "German"),
    ("Isaac Newton", "physicist", "English"),
    ("Marie Curie", "physicist", "Polish"),
    ("Charles Darwin", "naturalist", "English"),
    ("Galileo Galilei", "astronomer", "Italian"),
    ("Nicolaus Copernicus", "astronomer", "Polish"),
    ("Johannes Kepler", "astronomer", "German"),
    ("Stephen Hawking", "physicist", "British"),
    ("Ada Lovelace", "mathematician", "English"),
    ("Alan Turing", "mathematician", "British"),
    ("Louis Pasteur", "chemist", "French"),
    ("Sigmund Freud", "neurologist", "Austrian"),
    ("Nikola Tesla", "inventor", None),
    ("Thomas Edison", "inventor", "American"),
    ("Alexander Graham Bell", "inventor", "Scottish"),
    ("William Shakespeare", "playwright", "English"),
    ("Jane Austen", "novelist", "English"),
    ("Charles Dickens", "writer", "English"),
    ("Leo Tolstoy", "writer", "Russian"),
    ("Fyodor Dostoevsky", "writer", "Russian"),
    ("Mark Twain", "writer", "American"),
    ("Ernest Hemingway", "writer", "American"),
    ("Victor Hugo", "writer", "French"),
    ("Miguel de Cervantes", "writer", "Spanish"),
    ("Johann Wolfgang von Goethe", "writer", "German"),
    ("Dante Alighieri", "poet", "Italian"),
    ("Homer", "poet", "Greek"),
    ("Leonardo da Vinci", "painter", "Italian"),
    ("Michelangelo", "sculptor", "Italian"),
    ("Pablo Picasso", "painter", "Spanish"),
    ("Vincent van Gogh", "painter", "Dutch"),
    ("Rembrandt", "painter", "Dutch"),
    ("Claude Monet", "painter", "French"),
    ("Salvador Dalí", "painter", "Spanish"),
    ("Frida Kahlo", "painter", "Mexican"),
    ("Andy Warhol", "artist", "American"),
    ("Wolfgang Amadeus Mozart", "composer", "Austrian"),
    ("Ludwig van Beethoven", "composer", "German"),
    ("Johann Sebastian Bach", "composer", "German"),
    ("Frédéric Chopin", "composer", "Polish"),
    ("Elvis Presley", "singer", "American"),
    ("Michael Jackson", "singer", "American"),
    ("Bob Marley", "musician", "Jamaican"),
    ("Pelé", "footballer", "Brazilian"),
    ("Cristiano Ronaldo", "footballer", "Portuguese"),
    ("Usain Bolt", "sprinter", "Jamaican"),
    ("Michael Jordan", "basketball", "American"),
    ("Serena Williams", "tennis", "American"),
    ("Roger Federer", "tennis", "Swiss"),
    ("Charlie Chaplin", "actor", "English"),
    ("Marilyn Monroe", "actress", "American"),
)

# attribute -> one question template per phrasing, in PHRASINGS order; {e} is the entity
TEMPLATES: dict[str, tuple[str, str, str, str]] = {
    "capital": (
        "What is the capital of {e}?",
        "Name the capital city of {e}.",
        "Which city is the capital of {e}?",
        "In which city is the government of {e} based?",
    ),
    "continent": (
        "On which continent is {e}?",
        "Which continent is {e} part of?",
        "{E} is located on which continent?",
        "Name the continent where {e} lies.",
    ),
    "currency": (
        "What is the currency of {e}?",
        "Which currency is used in {e}?",
        "What money do people use in {e}?",
        "Name the official currency of {e}.",
    ),
    "language": (
        "What is the official language of {e}?",
        "Which language is officially spoken in {e}?",
        "What language do people in {e} officially speak?",
        "Name the official language of {e}.",
    ),
    "profession": (
        "What profession is {e} known for?",
        "What did {e} do for a living?",
        "What was {e}'s occupation?",
        "Name the occupation {e} is famous for.",
    ),
    "nationality": (
        "What is the nationality of {e}?",
        "Which nationality was {e}?",
        "What nationality does {e} have?",
        "State the nationality of {e}.",
    ),
}
COUNTRY_ATTRIBUTES = ("capital", "continent", "currency", "language")  # the columns of COUNTRIES
# asked: the model filter costs one greedy answer per candidate (~2 s each on a loaded 2-core CPU),
# so the shipped task asks capitals, professions and nationalities; the other columns stay for
# larger runs (currency: SmolLM2-135M often names outdated ones, e.g. franc, lira)
ASKED = ("capital", "profession", "nationality")
PERSON_ATTRIBUTES = ("profession", "nationality")



def candidates() -> list[Item]:
    """Every question in every phrasing, in a fixed order; none whose gold answer is in the question."""
    facts: list[tuple[str, str, str]] = []  # (entity display, attribute, gold)
    for name, *values in COUNTRIES:
        facts += [(name, a, v) for a, v in zip(COUNTRY_ATTRIBUTES, values) if v is not None]
    for name, *values in PEOPLE:
        facts += [(name, a, v) for a, v in zip(PERSON_ATTRIBUTES, values) if v is not None]
    facts = [f for f in facts if f[1] in ASKED]
    items: list[Item] = []
    for entity, attribute, gold in facts:
        for phrasing, template in zip(PHRASINGS, TEMPLATES[attribute]):
            prompt = template.format(e=entity, E=entity[:1].upper() + entity[1:])
            if matches(prompt, gold):  # trivially "answered" by echoing the question
                continue
            items.append(Item(f"{slug(entity)}.{attribute}.{phrasing}", slug(entity), attribute, phrasing,
                              prompt, gold))
    return items


def main(argv: Sequence[str] | None = None) -> int:
    return task_builder.data_main(argv, SPEC, candidates(), description=__doc__.split("\n")[0])


if __name__ == "__main__":
    raise SystemExit(main())
