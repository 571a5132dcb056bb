"""Scores as each benchmark defines them, on plain strings (no model, no files).

- :func:`normalize_vqa_answer` / :func:`vqa_accuracy`: the VQA soft accuracy of the official VQA evaluation
  (``vqaEval.py``, also used for TextVQA): an answer scores ``min(#humans who gave it / 3, 1)``, averaged over
  the 10 subsets of 9 of the 10 human answers.
- :func:`exact_match`: GQA's accuracy (one reference answer).
- :func:`pope_yes_no` / :func:`pope_scores`: POPE's answer parsing and accuracy, precision, recall, F1, yes-ratio
  (positive class: "yes").
- :func:`mme_yes_no` / :func:`mme_scores`: MME's parsing and per-subtask ``acc`` (questions) and ``acc+`` (images
  whose two questions are both right); a subtask scores ``100 * (acc + acc+)``, perception and cognition sum
  their subtasks.
- :func:`parse_choice` / :func:`circular_accuracy`: multiple choice (ScienceQA, MMBench): the option letter a
  free-form answer picks, and MMBench's circular evaluation (a question counts only if every rotation of its
  options is answered right).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

# --- VQA answer normalisation (official VQA / EvalAI evaluation) -------------------------------------------

_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll",
    "let's": "let's", "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're",
    "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're",
    "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}  # fmt: skip
_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
_ARTICLES = frozenset({"a", "an", "the"})
_PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",",
                "?", "!")  # fmt: skip
# The official pattern reads "(?!<=\d)" (a look-ahead, not the intended look-behind); kept as is so that
# scores match the official script: a period is dropped unless a digit follows it.
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")


def process_punctuation(text: str) -> str:
    """The official ``processPunctuation``: drop or space out punctuation, drop periods not before a digit."""
    out = text
    for mark in _PUNCTUATION:
        if (mark + " " in text or " " + mark in text) or _COMMA_STRIP.search(text) is not None:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD_STRIP.sub("", out)


def process_digit_article(text: str) -> str:
    """The official ``processDigitArticle``: lower-case, number words to digits, no articles, contractions."""
    words = [_NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    words = [word for word in words if word not in _ARTICLES]
    return " ".join(_CONTRACTIONS.get(word, word) for word in words)


def normalize_vqa_answer(text: str) -> str:
    """A model answer as the official VQA evaluation normalises it before comparing.

    Newlines and tabs to spaces, trimmed, then :func:`process_punctuation` and :func:`process_digit_article`:
    ``"Two dogs."`` -> ``"2 dogs"``, ``"The cat"`` -> ``"cat"``, ``"dont know"`` -> ``"don't know"``.
    """
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(text))


def vqa_accuracy(prediction: str, human_answers: Sequence[str]) -> float:
    """VQA soft accuracy of one answer against the (usually 10) human answers, as ``vqaEval.py`` computes it.

    The prediction is normalised with :func:`normalize_vqa_answer`; human answers are stripped and, when they
    disagree, passed through :func:`process_punctuation`. For each human answer left out in turn, the answer
    scores ``min(1, matches among the other answers / 3)``; the result is the mean over the left-out answers.
    """
    if not human_answers:
        raise ValueError("vqa_accuracy needs at least one human answer")
    predicted = normalize_vqa_answer(prediction)
    answers = [a.replace("\n", " ").replace("\t", " ").strip() for a in human_answers]
    if len(set(answers)) > 1:
        answers = [process_punctuation(a) for a in answers]
    matches = sum(a == predicted for a in answers)
    scores = [min(1.0, (matches - (a == predicted)) / 3) for a in answers]
    return sum(scores) / len(scores)


# --- exact match (GQA) ------------------------------------------------------------------------------------


def normalize_short_answer(text: str) -> str:
    """Lower-case, trim, drop a trailing period and surrounding quotes: ``" Yes."`` -> ``"yes"``."""
    return text.strip().strip('"').strip().rstrip(".").strip().lower()


def exact_match(prediction: str, answer: str) -> float:
    """1.0 when the short answers agree after :func:`normalize_short_answer` (GQA's accuracy), else 0.0."""
    return float(normalize_short_answer(prediction) == normalize_short_answer(answer))


# --- POPE -------------------------------------------------------------------------------------------------


def pope_yes_no(prediction: str) -> str:
    """POPE's parsing: keep the first sentence; ``"no"`` if it holds the word No/no/not, else ``"yes"``."""
    first = prediction.split(".")[0].replace(",", "")
    words = first.split(" ")
    return "no" if any(w in ("No", "no", "not") for w in words) else "yes"


def pope_scores(predictions: Iterable[str], labels: Iterable[str]) -> dict[str, float]:
    """POPE metrics with "yes" as the positive class.

    Returns ``accuracy``, ``precision``, ``recall``, ``f1``, ``yes_ratio`` (share of "yes" predictions) and the
    counts ``tp``, ``fp``, ``tn``, ``fn``. Precision (recall) is 0 when nothing is predicted (labelled) "yes".
    """
    tp = fp = tn = fn = 0
    for prediction, label in zip(predictions, labels, strict=True):
        predicted_yes = pope_yes_no(prediction) == "yes"
        actual_yes = label.strip().lower() == "yes"
        tp += predicted_yes and actual_yes
        fp += predicted_yes and not actual_yes
        tn += not predicted_yes and not actual_yes
        fn += not predicted_yes and actual_yes
    total = tp + fp + tn + fn
    if total == 0:
        raise ValueError("pope_scores needs at least one prediction")
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": (tp + tn) / total,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "yes_ratio": (tp + fp) / total,
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
    }


# --- MME --------------------------------------------------------------------------------------------------

MME_PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark",
                  "artwork", "OCR")  # fmt: skip
MME_COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")


def mme_yes_no(prediction: str) -> str:
    """MME's parsing (``calculation.py``): ``"yes"``/``"no"`` if the lower-cased answer is that word or its
    first four characters contain it (yes first), else ``"other"`` (always wrong)."""
    answer = prediction.strip().lower()
    if answer in ("yes", "no"):
        return answer
    prefix = answer[:4]
    if "yes" in prefix:
        return "yes"
    if "no" in prefix:
        return "no"
    return "other"


def mme_scores(rows: Iterable[tuple[str, str, str, str]]) -> dict[str, float]:
    """MME scores from ``(subtask, image, prediction, label)`` rows.

    Per subtask: ``{subtask}/acc`` (share of right questions), ``{subtask}/acc_plus`` (share of images whose
    questions are all right) and ``{subtask}/score = 100 * (acc + acc_plus)`` (max 200). ``perception`` and
    ``cognition`` sum the scores of the subtasks present (max 2000 and 800 with all subtasks), ``total`` both.
    """
    right: dict[str, list[bool]] = defaultdict(list)
    per_image: dict[tuple[str, str], list[bool]] = defaultdict(list)
    for subtask, image, prediction, label in rows:
        correct = mme_yes_no(prediction) == label.strip().lower()
        right[subtask].append(correct)
        per_image[subtask, image].append(correct)
    if not right:
        raise ValueError("mme_scores needs at least one prediction")
    scores: dict[str, float] = {}
    for subtask, hits in right.items():
        images = [all(v) for (task, _), v in per_image.items() if task == subtask]
        acc = sum(hits) / len(hits)
        acc_plus = sum(images) / len(images)
        scores[f"{subtask}/acc"] = acc
        scores[f"{subtask}/acc_plus"] = acc_plus
        scores[f"{subtask}/score"] = 100 * (acc + acc_plus)
    scores["perception"] = sum(scores.get(f"{t}/score", 0.0) for t in MME_PERCEPTION)
    scores["cognition"] = sum(scores.get(f"{t}/score", 0.0) for t in MME_COGNITION)
    scores["total"] = scores["perception"] + scores["cognition"]
    return scores


# --- multiple choice (ScienceQA, MMBench) ------------------------------------------------------------------

OPTION_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_LEADING_LETTER = re.compile(r"^\(?([A-Z])(?:[\).:,]|\s|$)")
_ANSWER_IS = re.compile(r"answer is:?\s*\(?([A-Z])\b", re.IGNORECASE)


def parse_choice(prediction: str, choices: Sequence[str]) -> str | None:
    """The option letter a free-form answer picks among ``choices`` (option texts in letter order), or None.

    In order: a leading letter (``"B"``, ``"B."``, ``"(B) cat"``), ``"the answer is B"``, exactly one option
    letter standing alone among the words, or exactly one option text contained in the answer. Anything else
    (no letter, several letters, a letter beyond the options) is None and counts as wrong.
    """
    letters = OPTION_LETTERS[: len(choices)]
    text = prediction.strip()
    for pattern in (_LEADING_LETTER, _ANSWER_IS):
        found = pattern.search(text) if pattern is _ANSWER_IS else pattern.match(text)
        if found and found.group(1).upper() in letters:
            return found.group(1).upper()
    words = set(re.sub(r"[^\w\s]", " ", text).split())
    standalone = [letter for letter in letters if letter in words]
    if len(standalone) == 1:
        return standalone[0]
    lowered = text.lower().rstrip(".")
    contained = [letter for letter, choice in zip(letters, choices) if choice and choice.lower() in lowered]
    return contained[0] if len(contained) == 1 else None


def choice_accuracy(predictions: Iterable[str], choices: Iterable[Sequence[str]], answers: Iterable[str]) -> float:
    """Share of answers whose :func:`parse_choice` letter equals the correct letter."""
    hits = [parse_choice(p, c) == a for p, c, a in zip(predictions, choices, answers, strict=True)]
    if not hits:
        raise ValueError("choice_accuracy needs at least one prediction")
    return sum(hits) / len(hits)


def circular_accuracy(hits_by_question: Mapping[str, Sequence[bool]]) -> float:
    """MMBench's circular accuracy: the share of questions whose every rotation was answered right."""
    if not hits_by_question:
        raise ValueError("circular_accuracy needs at least one question")
    return sum(all(h) for h in hits_by_question.values()) / len(hits_by_question)
