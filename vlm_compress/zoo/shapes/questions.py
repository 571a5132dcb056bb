"""ShapesVQA questions: every unambiguous question about a scene, with its one-word answer and the objects it
refers to (:class:`QA` and its ``refs``), the generator's vocabulary, and how answers are compared
(:func:`normalize_answer`).

Five families: ``colour``, ``shape``, ``count``, ``exists`` (POPE-style, with ``random``, ``popular`` and
``adversarial`` negatives) and ``position``. :func:`questions_for` lists them all; ``_pick`` draws one of a family
answer-balanced (used by :mod:`.splits` and by the training data of :mod:`vlm_compress.zoo.train`).

May import: the standard library and :mod:`.scenes`; no pixels (:mod:`.rendering`), no splits.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from functools import partial

from .scenes import COLOUR_WEIGHTS, COLOURS, SHAPE_WEIGHTS, SHAPES, SIZES, Scene, ShapeObject

FAMILIES = ("colour", "shape", "count", "exists", "position")
POPE_KINDS = ("random", "popular", "adversarial")
POSITION_ANSWERS = ("left", "right", "top", "bottom", "above", "below")
COUNT_ANSWERS = tuple(str(n) for n in range(10))

PLURALS = {
    "circle": "circles",
    "square": "squares",
    "triangle": "triangles",
    "star": "stars",
    "cross": "crosses",
}
# Centres this far (fraction of the canvas) from the midline / from each other make position answers safe.
SIDE_MARGIN = 0.1
RELATION_MARGIN = 0.12


@dataclass(frozen=True)
class QA:
    """A question about a scene, with its one-word answer.

    Attributes:
        family: one of :data:`FAMILIES`.
        small: the answer hinges on a small object.
        pope_kind: for ``exists`` negatives, how the absent object was drawn (:data:`POPE_KINDS`).
        refs: the objects the question refers to, as groups of indices into ``scene.objects``: one group
            (the described object, the counted objects, the objects an ``exists`` question names; empty when
            there is none), or two for a relation between two objects. Training uses them to guide the
            language model's attention (:mod:`vlm_compress.zoo.train.losses`); they play no part in the answer.
    """

    question: str
    answer: str
    family: str
    small: bool
    pope_kind: str | None = None
    refs: tuple[tuple[int, ...], ...] = ()


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _matches(obj: ShapeObject, attributes: dict[str, str]) -> bool:
    return all(getattr(obj, key) == value for key, value in attributes.items())


# Referring expressions: the attributes they name, in word order.
_REFERENCES = (
    ("shape",),
    ("size", "shape"),
    ("colour", "shape"),
    ("size", "colour", "shape"),
    ("colour",),
    ("size", "colour"),
)


def _describe(attributes: dict[str, str]) -> str:
    words = [attributes[key] for key in ("size", "colour", "shape") if key in attributes]
    return " ".join(words) if "shape" in attributes else " ".join(words + ["object"])


def _unique_references(obj: ShapeObject, objects: list[ShapeObject], exclude: str | None = None) -> list[str]:
    """Phrases (``"small red circle"``, ``"star"``, ``"blue object"``...) that pick out ``obj`` alone."""
    phrases = []
    for keys in _REFERENCES:
        if exclude in keys:
            continue
        attributes = {key: getattr(obj, key) for key in keys}
        if sum(_matches(other, attributes) for other in objects) == 1:
            phrases.append(_describe(attributes))
    return phrases


def _attribute_questions(scene: Scene, rng: random.Random, attribute: str) -> list[QA]:
    """ "What <attribute> is the <unique description>?" for every object that can be described without it."""
    out = []
    for index, obj in enumerate(scene.objects):
        phrases = _unique_references(obj, scene.objects, exclude=attribute)
        if phrases:
            question = f"What {attribute} is the {rng.choice(phrases)}?"
            out.append(
                QA(question, getattr(obj, attribute), attribute, obj.size == "small", refs=((index,),))
            )
    return out


def _count_questions(scene: Scene, rng: random.Random) -> list[QA]:
    """Counts of every present shape, colour and (colour, shape), of all objects, and of two absent targets."""
    targets: list[tuple[dict[str, str], str]] = [({}, "objects")]
    for obj in scene.objects:
        targets += [
            ({"shape": obj.shape}, PLURALS[obj.shape]),
            ({"colour": obj.colour}, f"{obj.colour} objects"),
            ({"colour": obj.colour, "shape": obj.shape}, f"{obj.colour} {PLURALS[obj.shape]}"),
        ]
    for _ in range(2):
        shape, colour = rng.choice(SHAPES), rng.choice(COLOURS)
        targets.append(
            rng.choice([({"shape": shape}, PLURALS[shape]), ({"colour": colour}, f"{colour} objects")])
        )
    out = {}
    for attributes, phrase in targets:
        counted = [i for i, obj in enumerate(scene.objects) if _matches(obj, attributes)]
        question = f"How many {phrase} are there?"
        small = any(scene.objects[i].size == "small" for i in counted)
        out[question] = QA(question, str(len(counted)), "count", small, refs=(tuple(counted),))
    return list(out.values())


def _exists_positive(scene: Scene, rng: random.Random) -> QA:
    obj = rng.choice(scene.objects)
    same = [i for i, o in enumerate(scene.objects) if o.colour == obj.colour and o.shape == obj.shape]
    question = f"Is there {_article(obj.colour)} {obj.colour} {obj.shape}?"
    small = all(scene.objects[i].size == "small" for i in same)
    return QA(question, "yes", "exists", small, refs=(tuple(same),))


def _exists_negative(scene: Scene, rng: random.Random, kind: str) -> QA | None:
    """A question about an absent (colour, shape), drawn as POPE draws negatives (``None`` if impossible)."""
    present = {(o.colour, o.shape) for o in scene.objects}
    absent = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in present]
    small = False
    if not absent:
        return None
    if kind == "random":
        colour, shape = rng.choice(absent)
    elif kind == "popular":
        # the most frequent absent objects of the whole data set
        ranked = sorted(absent, key=lambda cs: -COLOUR_WEIGHTS[cs[0]] * SHAPE_WEIGHTS[cs[1]])
        colour, shape = rng.choice(ranked[:3])
    elif kind == "adversarial":
        # a near miss of a present object: same colour and another shape, or the other way round
        candidates = []
        for obj in scene.objects:
            candidates += [(obj, obj.colour, s) for s in SHAPES if (obj.colour, s) not in present]
            candidates += [(obj, c, obj.shape) for c in COLOURS if (c, obj.shape) not in present]
        if not candidates:
            return None
        obj, colour, shape = rng.choice(candidates)
        small = obj.size == "small"
    else:
        raise ValueError(f"unknown POPE kind {kind!r}; valid kinds: {', '.join(POPE_KINDS)}")
    question = f"Is there {_article(colour)} {colour} {shape}?"
    return QA(question, "no", "exists", small, kind, refs=((),))


def _exists_questions(scene: Scene, rng: random.Random) -> list[QA]:
    out = []
    for _ in range(2):
        out.append(_exists_positive(scene, rng))
        negative = _exists_negative(scene, rng, rng.choice(POPE_KINDS))
        if negative is not None:
            out.append(negative)
    return list({qa.question: qa for qa in out}.values())


def _position_questions(scene: Scene, rng: random.Random) -> list[QA]:
    out = []
    objects = scene.objects
    for index, obj in enumerate(objects):
        phrases = _unique_references(obj, objects)
        if not phrases:
            continue
        small = obj.size == "small"
        x, y = obj.center
        if abs(x - 0.5) >= SIDE_MARGIN:
            question = f"Is the {rng.choice(phrases)} on the left or the right?"
            out.append(QA(question, "left" if x < 0.5 else "right", "position", small, refs=((index,),)))
        if abs(y - 0.5) >= SIDE_MARGIN:
            question = f"Is the {rng.choice(phrases)} at the top or the bottom?"
            out.append(QA(question, "top" if y < 0.5 else "bottom", "position", small, refs=((index,),)))
        others = [i for i, o in enumerate(objects) if i != index and _unique_references(o, objects)]
        if not others:
            continue
        other_index = rng.choice(others)
        other = objects[other_index]
        pair_small = small or other.size == "small"
        this, that = rng.choice(phrases), rng.choice(_unique_references(other, objects))
        dx, dy = x - other.center[0], y - other.center[1]
        pair = ((index,), (other_index,))
        if abs(dx) >= RELATION_MARGIN:
            question = f"Is the {this} left or right of the {that}?"
            out.append(QA(question, "left" if dx < 0 else "right", "position", pair_small, refs=pair))
        if abs(dy) >= RELATION_MARGIN:
            question = f"Is the {this} above or below the {that}?"
            out.append(QA(question, "above" if dy < 0 else "below", "position", pair_small, refs=pair))
    return out


_FAMILY_BUILDERS = {
    "colour": partial(_attribute_questions, attribute="colour"),
    "shape": partial(_attribute_questions, attribute="shape"),
    "count": _count_questions,
    "exists": _exists_questions,
    "position": _position_questions,
}


def questions_for(scene: Scene, rng: random.Random, families: tuple[str, ...] = FAMILIES) -> list[QA]:
    """Every question the generator asks about ``scene`` in ``families`` (grouped by family, in order).

    All answers are unambiguous for the scene; a family may contribute nothing (e.g. no position question when
    the only object sits in the middle). ``rng`` picks phrasings and negatives, so the same ``rng`` state gives
    the same list.
    """
    unknown = [f for f in families if f not in _FAMILY_BUILDERS]
    if unknown:
        raise ValueError(f"unknown question families {unknown}; valid families: {', '.join(FAMILIES)}")
    if not scene.objects:
        return []
    return [qa for family in families for qa in _FAMILY_BUILDERS[family](scene, rng)]


def vocabulary() -> list[str]:
    """Every word the generator's questions and answers use (lower case, punctuation as separate tokens)."""
    templates = (
        "What colour is the ? What shape is the object ? How many objects are there ? Is there a an ? "
        "Is the on the left or the right ? Is the at the top or the bottom ? Is the left or right of the ? "
        "Is the above or below the ?"
    )
    words = set(re.findall(r"\w+|[^\w\s]", templates.lower()))
    words |= set(SHAPES) | set(PLURALS.values()) | set(COLOURS) | set(SIZES)
    words |= set(COUNT_ANSWERS) | set(POSITION_ANSWERS) | {"yes", "no"}
    return sorted(words)


def _pick(qas: list[QA], family: str, rng: random.Random, *, answer: str | None = None) -> QA | None:
    """A question of ``family``: first an answer drawn uniformly from those the scene offers (or ``answer``),
    then a question with that answer, so frequent answers do not dominate."""
    pool = [qa for qa in qas if qa.family == family and (answer is None or qa.answer == answer)]
    if not pool:
        return None
    chosen = rng.choice(sorted({qa.answer for qa in pool}))
    return rng.choice([qa for qa in pool if qa.answer == chosen])


_NUMBER_WORDS = {
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
_ARTICLES = {"a", "an", "the"}


def normalize_answer(text: str) -> str:
    """The form answers are compared in: lower case, punctuation and articles removed, number words as digits,
    single spaces (``" Two."`` -> ``"2"``, ``"The Red"`` -> ``"red"``, ``"top-left"`` -> ``"top left"``)."""
    words = re.sub(r"[^\w\s]|_", " ", text.lower()).split()
    return " ".join(_NUMBER_WORDS.get(word, word) for word in words if word not in _ARTICLES)
