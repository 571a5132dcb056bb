"""ShapesVQA generator: determinism, rendering, and answers checked against the scene by an independent parser."""

import random
import re

import numpy as np
import pytest

from vlm_compress.zoo import shapes


def _parse_reference(phrase: str) -> dict[str, str]:
    attributes = {}
    for word in phrase.split():
        if word in shapes.SIZES:
            attributes["size"] = word
        elif word in shapes.COLOURS:
            attributes["colour"] = word
        elif word in shapes.SHAPES:
            attributes["shape"] = word
        elif word in shapes.PLURALS.values():
            attributes["shape"] = next(s for s, p in shapes.PLURALS.items() if p == word)
    return attributes


def _find(scene: shapes.Scene, phrase: str) -> list[shapes.ShapeObject]:
    attributes = _parse_reference(phrase)
    return [o for o in scene.objects if all(getattr(o, k) == v for k, v in attributes.items())]


def _expected_answer(scene: shapes.Scene, question: str) -> str:
    """Answer ``question`` from the scene description alone (independent of the generator's code paths)."""
    if m := re.fullmatch(r"What colour is the (.+)\?", question):
        (obj,) = _find(scene, m[1])
        return obj.colour
    if m := re.fullmatch(r"What shape is the (.+)\?", question):
        (obj,) = _find(scene, m[1])
        return obj.shape
    if m := re.fullmatch(r"How many (.+) are there\?", question):
        return str(len(_find(scene, m[1])))
    if m := re.fullmatch(r"Is there an? (\w+) (\w+)\?", question):
        return "yes" if _find(scene, f"{m[1]} {m[2]}") else "no"
    if m := re.fullmatch(r"Is the (.+) on the left or the right\?", question):
        (obj,) = _find(scene, m[1])
        return "left" if obj.center[0] < 0.5 else "right"
    if m := re.fullmatch(r"Is the (.+) at the top or the bottom\?", question):
        (obj,) = _find(scene, m[1])
        return "top" if obj.center[1] < 0.5 else "bottom"
    if m := re.fullmatch(r"Is the (.+) left or right of the (.+)\?", question):
        (a,), (b,) = _find(scene, m[1]), _find(scene, m[2])
        return "left" if a.center[0] < b.center[0] else "right"
    if m := re.fullmatch(r"Is the (.+) above or below the (.+)\?", question):
        (a,), (b,) = _find(scene, m[1]), _find(scene, m[2])
        return "above" if a.center[1] < b.center[1] else "below"
    raise AssertionError(f"unparsed question {question!r}")


def test_scene_and_image_are_deterministic():
    a, b = shapes.random_scene(123), shapes.random_scene(123)
    assert a == b
    assert np.array_equal(np.asarray(shapes.render_scene(a)), np.asarray(shapes.render_scene(b)))
    assert shapes.random_scene(124) != a


def test_scenes_have_varied_objects_that_do_not_overlap():
    scenes = [shapes.random_scene(seed) for seed in range(60)]
    counts = {len(s.objects) for s in scenes}
    assert min(counts) >= 1 and max(counts) <= shapes.MAX_OBJECTS and len(counts) >= 5
    assert {o.size for s in scenes for o in s.objects} == set(shapes.SIZES)
    assert {o.shape for s in scenes for o in s.objects} == set(shapes.SHAPES)
    for scene in scenes[:20]:
        mask = shapes.render_mask(scene)
        for i, obj in enumerate(scene.objects):
            left, top, right, bottom = obj.bbox
            drawn = mask[top:bottom, left:right] == i + 1
            assert drawn.sum() > 0.2 * (right - left) * (bottom - top)  # visible, not painted over
            assert (mask == i + 1).sum() == drawn.sum()  # nothing drawn outside its box


def test_objects_are_drawn_in_their_colour_on_a_textured_background():
    scene = shapes.random_scene(7)
    image = np.asarray(shapes.render_scene(scene)).astype(int)
    mask = shapes.render_mask(scene)
    for i, obj in enumerate(scene.objects):
        mean = image[mask == i + 1].mean(axis=0)
        assert np.abs(mean - np.array(shapes.RGB[obj.colour])).max() < 25
    background = image[mask == 0]
    assert background.std(axis=0).min() > 5  # background tokens are not identical


def test_patch_targets_label_each_patch_with_the_object_under_it():
    scene = shapes.random_scene(11, min_objects=6)
    patch = 8
    grid = scene.image_size // patch
    targets = shapes.patch_targets(scene, patch)
    assert set(targets) == set(shapes.PATCH_TARGETS) | {"owner"}
    assert all(t.shape == (grid * grid,) for t in targets.values())
    assert targets["centre"].sum() == len(scene.objects)  # non-overlapping objects: one centre patch each
    mask = shapes.render_mask(scene)
    for i, obj in enumerate(scene.objects):
        column, row = int(obj.center[0] * grid), int(obj.center[1] * grid)
        centre = row * grid + column
        assert targets["centre"][centre] == 1
        # the centre patch of a convex object is mostly that object, so it carries the object's attributes
        if obj.shape in ("circle", "square"):
            assert targets["colour"][centre] == shapes.COLOURS.index(obj.colour) + 1
            assert targets["shape"][centre] == shapes.SHAPES.index(obj.shape) + 1
            assert targets["size"][centre] == shapes.SIZES.index(obj.size) + 1
        # every patch mostly covered by the object is labelled with it
        cover = (mask == i + 1).reshape(grid, patch, grid, patch).sum(axis=(1, 3)).reshape(-1)
        for p in np.nonzero(cover > patch * patch // 2)[0]:
            assert targets["shape"][p] == shapes.SHAPES.index(obj.shape) + 1
    background = np.nonzero(mask.reshape(grid, patch, grid, patch).sum(axis=(1, 3)).reshape(-1) == 0)[0]
    assert all(targets[name][background].max() == 0 for name in ("colour", "shape", "size"))
    with pytest.raises(ValueError, match="divide"):
        shapes.patch_targets(scene, 7)


@pytest.mark.parametrize("seed", range(12))
def test_patch_targets_describe_the_owning_object_and_every_object_owns_a_patch(seed):
    scene = shapes.random_scene(seed, min_objects=4)
    objects = scene.objects
    targets = shapes.patch_targets(scene, 16)  # 12x12 grid: small objects cover parts of a few patches
    owner = targets["owner"]
    assert set(owner[owner > 0] - 1) == set(range(len(objects)))
    for patch in np.nonzero(owner)[0]:
        obj = objects[owner[patch] - 1]
        assert targets["colour"][patch] == shapes.COLOURS.index(obj.colour) + 1
        assert targets["x"][patch] == 1 + int(obj.center[0] * shapes.POSITION_BINS)
        assert targets["y"][patch] == 1 + int(obj.center[1] * shapes.POSITION_BINS)
        assert targets["same_colour"][patch] == sum(o.colour == obj.colour for o in objects)
        assert targets["same_shape"][patch] == sum(o.shape == obj.shape for o in objects)
        assert targets["same_both"][patch] == sum(
            (o.colour, o.shape) == (obj.colour, obj.shape) for o in objects
        )
        assert targets["objects"][patch] == len(objects)
    for name, classes in shapes.PATCH_TARGETS.items():
        assert targets[name].min() >= 0 and targets[name].max() < classes
        if name != "centre":
            assert (targets[name][owner == 0] == 0).all()


@pytest.mark.parametrize("seed", range(30))
def test_question_refs_name_the_objects_the_answer_depends_on(seed):
    scene = shapes.random_scene(seed)
    objects = scene.objects
    for qa in shapes.questions_for(scene, random.Random(seed)):
        referred = [[objects[i] for i in group] for group in qa.refs]
        if qa.family in ("colour", "shape"):
            assert len(referred) == 1 and len(referred[0]) == 1
            assert getattr(referred[0][0], qa.family) == qa.answer
        elif qa.family == "count":
            assert len(referred) == 1 and len(referred[0]) == int(qa.answer)
        elif qa.family == "exists":
            assert len(referred) == 1 and bool(referred[0]) == (qa.answer == "yes")
            wanted = qa.question.rstrip("?").split()[-2:]
            assert all([o.colour, o.shape] == wanted for o in referred[0])
        else:
            assert len(referred) in (1, 2) and all(len(group) == 1 for group in referred)
            this = referred[0][0]
            if len(referred) == 2:
                other = referred[1][0]
                delta = (
                    this.center[0] - other.center[0]
                    if qa.answer in ("left", "right")
                    else this.center[1] - other.center[1]
                )
                assert (delta < 0) == (qa.answer in ("left", "above"))
            else:
                side = this.center[0] if qa.answer in ("left", "right") else this.center[1]
                assert (side < 0.5) == (qa.answer in ("left", "top"))


@pytest.mark.parametrize("seed", range(40))
def test_every_answer_matches_the_scene(seed):
    scene = shapes.random_scene(seed)
    for qa in shapes.questions_for(scene, random.Random(seed)):
        assert qa.answer == _expected_answer(scene, qa.question), qa
        assert qa.family in shapes.FAMILIES


def test_questions_use_only_the_vocabulary():
    vocabulary = set(shapes.vocabulary())
    for sample in shapes.load_split("val", 60):
        words = re.findall(r"\w+|[^\w\s]", (sample.question + " " + sample.answer).lower())
        assert set(words) <= vocabulary


def test_fixed_splits_are_deterministic_balanced_and_disjoint():
    val = shapes.load_split("val", 50)
    again = shapes.load_split("val", 50)
    assert [(s.id, s.question, s.answer) for s in val] == [(s.id, s.question, s.answer) for s in again]
    assert np.array_equal(np.asarray(val[3].image), np.asarray(again[3].image))
    assert [s.family for s in val[:10]] == list(shapes.FAMILIES) * 2
    exists = [s.answer for s in val if s.family == "exists"]
    assert exists.count("yes") == exists.count("no")
    test = shapes.load_split("test", 50)
    assert not {s.scene.seed for s in val} & {s.scene.seed for s in test}
    assert any(s.small for s in val)
    for sample in val + test:
        assert sample.answer == _expected_answer(sample.scene, sample.question)


def test_training_stream_is_deterministic_and_apart_from_fixed_splits():
    first = [next(iter(shapes.iter_train(3))).question for _ in range(2)]
    assert first[0] == first[1]
    stream = shapes.iter_train(0)
    train_seeds = {next(stream).scene.seed for _ in range(30)}
    assert max(train_seeds) < shapes.SPLIT_SEED_BASE["val"]


@pytest.mark.parametrize("kind", shapes.POPE_KINDS)
def test_pope_sets_alternate_yes_and_no(kind):
    samples = shapes.load_pope(kind, 12)
    assert [s.answer for s in samples] == ["yes", "no"] * 6
    assert all(s.family == "exists" and s.answer == _expected_answer(s.scene, s.question) for s in samples)
    assert all(s.pope_kind == kind for s in samples[1::2])


def test_normalize_answer():
    assert shapes.normalize_answer(" Two.") == "2"
    assert shapes.normalize_answer("The Red") == "red"
    assert shapes.normalize_answer("top-left") == "top left"


@pytest.mark.parametrize(
    "call",
    [
        lambda: shapes.load_split("train2"),
        lambda: shapes.load_pope("weird"),
        lambda: shapes.random_scene(0, max_objects=12),
        lambda: shapes.random_scene(0, image_size=10),
    ],
)
def test_bad_arguments_raise_clear_errors(call):
    with pytest.raises(ValueError, match="valid|need|must"):
        call()
