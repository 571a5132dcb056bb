"""Benchmark metrics against examples computed by hand from each benchmark's definition."""

from __future__ import annotations

import pytest

from vlm_compress.eval.metrics import (
    choice_accuracy,
    circular_accuracy,
    exact_match,
    mme_scores,
    mme_yes_no,
    normalize_vqa_answer,
    parse_choice,
    pope_scores,
    pope_yes_no,
    process_punctuation,
    vqa_accuracy,
)


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("Two dogs.", "2 dogs"),  # number word to digit, final period dropped
        ("The cat", "cat"),  # articles dropped, lower case
        ("dont know", "don't know"),  # contraction restored
        ("3.5", "3.5"),  # a period before a digit stays
        ("yes!", "yes"),
        ("  left\tside\n", "left side"),
        ("black-and-white", "black and white"),  # '-' without a space beside it becomes a space
        ("red - blue", "red blue"),  # ...and is dropped when a space stands beside it
        ("1,000", "1000"),  # a thousands comma is dropped
    ],
)
def test_vqa_normalization(raw, normalized):
    assert normalize_vqa_answer(raw) == normalized


def test_process_punctuation_drops_marks_next_to_spaces():
    # "?" and "(" touch a space and are dropped; ")" touches none and becomes a space (the official quirk)
    assert process_punctuation("what? (yes)") == "what yes "


@pytest.mark.parametrize(
    ("matches", "expected"),
    [
        # k of the 10 humans gave the answer; each of the 10 leave-one-out subsets scores min(1, hits / 3)
        (0, 0.0),
        (1, (1 * 0 + 9 * (1 / 3)) / 10),  # 0.3
        (2, (2 * (1 / 3) + 8 * (2 / 3)) / 10),  # 0.6
        (3, (3 * (2 / 3) + 7 * 1) / 10),  # 0.9
        (4, 1.0),
        (10, 1.0),
    ],
)
def test_vqa_soft_accuracy(matches, expected):
    humans = ["2"] * matches + ["3"] * (10 - matches)
    assert vqa_accuracy("two", humans) == pytest.approx(expected)


def test_vqa_accuracy_normalizes_the_prediction_and_disagreeing_human_answers():
    assert vqa_accuracy("The Cat.", ["cat"] * 10) == 1.0
    assert vqa_accuracy("ice-cream", ["ice cream"] * 3 + ["icecream"] * 7) == pytest.approx(0.9)
    with pytest.raises(ValueError, match="at least one human answer"):
        vqa_accuracy("cat", [])


def test_exact_match():
    assert exact_match(" Yes.", "yes") == 1.0
    assert exact_match('"left"', "left") == 1.0
    assert exact_match("on the left", "left") == 0.0


def test_pope_parsing():
    assert pope_yes_no("Yes, there is a dog.") == "yes"
    assert pope_yes_no("No, there is not.") == "no"
    assert pope_yes_no("There is not a dog in the image.") == "no"
    assert pope_yes_no("There is a dog. It is not small.") == "yes"  # only the first sentence counts
    assert pope_yes_no("Nope") == "yes"  # POPE looks for the words No/no/not only


def test_pope_scores_hand_computed():
    scores = pope_scores(["Yes, there is.", "No.", "yes", "There is not a dog."], ["yes", "yes", "no", "no"])
    assert (scores["tp"], scores["fn"], scores["fp"], scores["tn"]) == (1, 1, 1, 1)
    assert scores["accuracy"] == scores["precision"] == scores["recall"] == scores["f1"] == 0.5
    assert scores["yes_ratio"] == 0.5
    always_yes = pope_scores(["yes", "yes", "yes"], ["yes", "yes", "no"])
    assert always_yes["precision"] == pytest.approx(2 / 3) and always_yes["recall"] == 1.0
    assert always_yes["f1"] == pytest.approx(0.8) and always_yes["yes_ratio"] == 1.0
    assert always_yes["accuracy"] == pytest.approx(2 / 3)
    always_no = pope_scores(["no", "no"], ["yes", "no"])
    assert always_no["precision"] == always_no["recall"] == always_no["f1"] == 0.0


def test_mme_parsing():
    assert mme_yes_no("Yes") == "yes"
    assert mme_yes_no("yes, it is") == "yes"
    assert mme_yes_no(" No.") == "no"
    assert mme_yes_no("I think so") == "other"


def test_mme_scores_hand_computed():
    rows = [
        # existence: image a both right, image b one right -> acc 3/4, acc+ 1/2 -> 125
        ("existence", "a.jpg", "Yes", "Yes"),
        ("existence", "a.jpg", "No", "No"),
        ("existence", "b.jpg", "Yes", "Yes"),
        ("existence", "b.jpg", "Yes", "No"),
        # count: one image, both right -> 200
        ("count", "c.jpg", "yes", "Yes"),
        ("count", "c.jpg", "no", "No"),
        # code_reasoning: one right, one unparsable -> acc 1/2, acc+ 0 -> 50
        ("code_reasoning", "d.png", "Yes", "Yes"),
        ("code_reasoning", "d.png", "maybe", "No"),
    ]
    scores = mme_scores(rows)
    assert scores["existence/acc"] == 0.75 and scores["existence/acc_plus"] == 0.5
    assert scores["existence/score"] == pytest.approx(125)
    assert scores["count/score"] == pytest.approx(200)
    assert scores["code_reasoning/score"] == pytest.approx(50)
    assert scores["perception"] == pytest.approx(325)
    assert scores["cognition"] == pytest.approx(50)
    assert scores["total"] == pytest.approx(375)


@pytest.mark.parametrize(
    ("answer", "letter"),
    [
        ("B", "B"),
        ("B.", "B"),
        ("(C) cat", "C"),
        ("The answer is D.", "D"),
        ("I pick A", "A"),
        ("cat", "B"),  # the text of exactly one option
        ("between A and B", None),  # two option letters
        ("A or B", "A"),  # a leading letter is taken as the answer
        ("E", None),  # beyond the options
        ("no idea", None),
    ],
)
def test_parse_choice(answer, letter):
    assert parse_choice(answer, ["dog", "cat", "bird", "fish"]) == letter


def test_choice_and_circular_accuracy():
    choices = [["dog", "cat"], ["red", "blue", "green"]]
    assert choice_accuracy(["B", "the answer is C"], choices, ["B", "A"]) == 0.5
    # q1 right in all 4 rotations, q2 wrong in one: circular accuracy 1/2
    assert circular_accuracy({"q1": [True] * 4, "q2": [True, False, True, True]}) == 0.5
    with pytest.raises(ValueError):
        circular_accuracy({})
