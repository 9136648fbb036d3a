"""The words and sentence templates of the synthetic QA corpus (:mod:`llmattr.demo.qa.data`).

``ENTITIES`` holds each kind of entity as two disjoint lists: the training half and the half only
the held-out set uses. ``FACTS`` holds each kind of fact: its slots, sentences stating it and, per
question type, the asked slot and question templates worded unlike the sentences.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ENTITIES", "FACTS", "FILLERS", "MONTHS"]


def _split(words: str) -> list[str]:
    return words.split()


# (train, unseen): disjoint lists
ENTITIES: dict[str, tuple[list[str], list[str]]] = {
    "first": (
        _split(
            "Anna Marco Elena Tomas Sofia Lukas Clara Pavel Nora Felix Irene Hugo Lena Oscar "
            "Maria Viktor Alice Bruno Rosa Emil Julia Daniel Greta Simon Laura Anton Mira Karl "
            "Helen Pedro Ingrid Mateo Olga Henrik Lucia Jonas Vera Rafael Ada Leon"
        ),
        _split(
            "Yara Dmitri Esme Tobias Amara Kenji Freya Idris Linnea Casimir Zofia Teodor "
            "Ottilie Anselm Marisol Bjorn Leocadia Fabian Ines Ulrich"
        ),
    ),
    "last": (
        _split(
            "Keller Novak Rossi Berg Lindqvist Moreau Fischer Costa Horvath Silva Jansen Weber "
            "Dubois Kowalski Ferreira Larsen Meyer Petrov Romano Schmidt Varga Nilsson Brandt "
            "Lopez Marin Vogel Sorensen Hartmann Bianchi Kraus Ortega Wagner Molnar Engel Conti"
        ),
        _split(
            "Okonkwo Takahashi Quintero Abernathy Vasquez Oyelaran Castellano Halvorsen Mbeki "
            "Fitzgerald Nakamura Zielinski Achterberg Pellegrini Szabados Thorvaldsen"
        ),
    ),
    "place": (
        _split(
            "Oslo Lyon Vienna Porto Krakow Seville Dublin Geneva Bergen Turin Ghent Lisbon "
            "Prague Munich Zurich Naples Riga Tallinn Bordeaux Salzburg Valencia Antwerp Bremen "
            "Verona Gdansk Malmo Toulouse Bologna Leipzig Utrecht Graz Bruges"
        ),
        _split(
            "Cusco Nairobi Kyoto Halifax Tbilisi Mombasa Adelaide Cartagena Osaka Valparaiso "
            "Tromso Marrakesh Winnipeg Hobart Yerevan Durban"
        ),
    ),
    "adj": (
        _split("brass silver wooden leather antique painted golden iron carved old"),
        _split("copper ivory velvet crystal bronze enamel"),
    ),
    "object": (
        _split("telescope compass violin map clock lantern notebook camera chess_set key"),
        _split("harp globe kettle sextant typewriter music_box"),
    ),
    "title_adj": (
        _split("Silent Hidden Broken Endless Distant Quiet Burning Frozen Lost Wandering"),
        _split("Crimson Hollow Sleepless Gilded Scattered Amber"),
    ),
    "title_noun": (
        _split("River Garden Mountain Harbor Letter Winter Bridge Forest Tower Island"),
        _split("Lighthouse Orchard Meadow Cathedral Lantern Comet"),
    ),
    "title_end": (
        _split("Chronicles Letters Diaries Songs Stories"),
        _split("Sonnets Tales Ballads"),
    ),
    "org_word": (
        _split("Northwind Riverside Bluewater Greenfield Stonebridge Oakhill Redmoor Westgate"),
        _split("Ashgrove Silverpine Coldharbor Brightwater Foxglove Elmstead"),
    ),
    "org_kind": (
        _split("Bakery Theatre Press Museum Library Observatory Orchestra Gallery School"),
        _split("Brewery Conservatory Aquarium Workshop Almanac Clinic"),
    ),
}

MONTHS = _split(
    "January February March April May June July August September October November December"
)

# A fact: its slots and the sentences stating it; its questions: {qtype: [(asked slot, templates)]}.
# ``{when}`` in a sentence is "in 1921" or "on May 3, 1921"; ``{When}`` is the same, capitalized.
# The question names its subject by the other slots, never by the asked one.
# fmt: off
FACTS: dict[str, dict[str, Any]] = {
    "born": {
        "slots": ("p", "place", "when"),
        "sentences": [
            "{p} was born in {place} {when}.",
            "{When}, {p} was born in {place}.",
            "Born in {place} {when}, {p} grew up in a large family.",
            "{p}, who was born {when}, spent a childhood in {place}.",
        ],
        "questions": {
            "where": ("place", [
                "Where was {p} born?",
                "What is the birthplace of {p}?",
                "In which city did {p} come into the world?",
                "{p} was a native of which city?",
                "Which town did {p} grow up in as a child?",
            ]),
            "when": ("when", [
                "When was {p} born?",
                "When did {p} come into the world?",
                "What is the date of birth of {p}?",
                "{p} was born when?",
            ]),
        },
    },
    "move": {
        "slots": ("p", "place", "when"),
        "sentences": [
            "{p} moved to {place} {when}.",
            "{When}, {p} relocated to {place}.",
            "{p} settled in {place} {when} and never left.",
            "{p} left home for {place} {when}.",
        ],
        "questions": {
            "where": ("place", [
                "Where did {p} relocate to?",
                "To which city did {p} move?",
                "Which city did {p} make a new home in?",
                "Where did {p} finally settle?",
            ]),
            "when": ("when", [
                "When did {p} move to {place}?",
                "When did {p} settle in {place}?",
                "At what time did {p} relocate to {place}?",
                "{p} went to live in {place} when?",
            ]),
        },
    },
    "found": {
        "slots": ("p", "org", "place", "when"),
        "sentences": [
            "{p} founded the {org} in {place} {when}.",
            "The {org} was established by {p} in {place} {when}.",
            "{When}, {p} opened the {org} in {place}.",
            "The {org} in {place} was started {when} by {p}.",
        ],
        "questions": {
            "who": ("p", [
                "Who established the {org}?",
                "Who was the founder of the {org}?",
                "The {org} was started by whom?",
                "Which person created the {org} in {place}?",
            ]),
            "what": ("org", [
                "What did {p} establish?",
                "Which institution was founded by {p}?",
                "What was started by {p} in {place}?",
                "What did {p} open in {place}?",
            ]),
            "where": ("place", [
                "Where was the {org} founded?",
                "In which city did {p} set up the {org}?",
                "The {org} was opened in what city?",
            ]),
            "when": ("when", [
                "When was the {org} established?",
                "When did {p} set up the {org}?",
                "The {org} opened its doors when?",
            ]),
        },
    },
    "write": {
        "slots": ("p", "title", "when"),
        "sentences": [
            "{p} wrote {title} {when}.",
            "{title} was written by {p} {when}.",
            "{When}, {p} published the novel {title}.",
            "{p} is the author of {title}, which appeared {when}.",
        ],
        "questions": {
            "who": ("p", [
                "Who is the author of {title}?",
                "Who wrote {title}?",
                "{title} was penned by whom?",
                "Which writer created {title}?",
            ]),
            "what": ("title", [
                "What book did {p} write?",
                "Which novel is {p} the author of?",
                "What did {p} publish?",
                "Name the novel written by {p}.",
            ]),
            "when": ("when", [
                "When was {title} published?",
                "When did {p} write {title}?",
                "{title} first appeared when?",
            ]),
        },
    },
    "give": {
        "slots": ("p", "q", "thing"),
        "sentences": [
            "{p} gave {a_thing} to {q}.",
            "{q} received {a_thing} from {p}.",
            "{p} handed {q} {a_thing}.",
            "As a gift, {q} was given {a_thing} by {p}.",
        ],
        "questions": {
            "who": ("q", [
                "Who received the {thing} from {p}?",
                "To whom did {p} give the {thing}?",
                "Who got the {thing} as a present?",
                "Who was handed the {thing} by {p}?",
            ]),
            "what": ("thing", [
                "What did {p} give to {q}?",
                "What was {q} given by {p}?",
                "What gift did {q} get from {p}?",
                "Which present did {p} hand over to {q}?",
            ]),
        },
    },
    "meet": {
        "slots": ("p", "q", "place", "when"),
        "sentences": [
            "{p} met {q} in {place} {when}.",
            "{When}, {p} and {q} first met in {place}.",
            "In {place}, {p} was introduced to {q} {when}.",
        ],
        "questions": {
            "who": ("q", [
                "Whom did {p} meet in {place}?",
                "Who was introduced to {p} in {place}?",
                "Who did {p} first encounter in {place}?",
            ]),
            "where": ("place", [
                "Where did {p} and {q} meet?",
                "In which city did {p} first encounter {q}?",
                "Where were {p} and {q} introduced?",
            ]),
            "when": ("when", [
                "When did {p} meet {q}?",
                "When did {p} and {q} first encounter each other?",
            ]),
        },
    },
    "find": {
        "slots": ("p", "thing", "place"),
        "sentences": [
            "{p} found {a_thing} in {place}.",
            "While in {place}, {p} discovered {a_thing}.",
            "{A_thing} was found by {p} in {place}.",
            "In a market in {place}, {p} came across {a_thing}.",
        ],
        "questions": {
            "who": ("p", [
                "Who found the {thing}?",
                "Who discovered the {thing} in {place}?",
                "The {thing} was come across by whom?",
            ]),
            "what": ("thing", [
                "What did {p} discover in {place}?",
                "What object did {p} come across?",
                "What was found by {p}?",
            ]),
            "where": ("place", [
                "Where did {p} find the {thing}?",
                "In which city was the {thing} discovered?",
                "Where did {p} come across the {thing}?",
            ]),
        },
    },
}

# fmt: on

FILLERS = [
    "The winters in {place} were long and cold.",
    "Many travellers passed through {place} every summer.",
    "{p} later worked as a teacher for many years.",
    "{p} enjoyed long walks along the river.",
    "The harbor of {place} was busy with ships.",
    "{p} kept a diary for most of that decade.",
]
