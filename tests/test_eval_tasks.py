"""Benchmark loaders on tiny fixture files written in each benchmark's official format, and task scoring."""

from __future__ import annotations

import base64
import csv
import io
import json
import sys
import types
from pathlib import Path

import pytest
from PIL import Image

from vlm_compress.eval import get_task, list_tasks
from vlm_compress.eval.tasks.mmbench import CIRCULAR_STRIDE


def _image(path: Path, colour=(200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (24, 16), colour).save(path)
    return path


def _png_base64(colour) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_registry_lists_every_task_and_rejects_unknown_names():
    assert set(list_tasks()) == {"shapes-vqa", "shapes-pope", "pope", "gqa", "textvqa", "vqav2", "scienceqa-img",
                                 "mme", "mmbench"}
    with pytest.raises(ValueError, match="valid tasks: shapes-vqa"):
        get_task("coco")


def test_missing_files_name_the_expected_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match="testdev_balanced_questions.json"):
        get_task("gqa").load(tmp_path)
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        get_task("textvqa").load(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="positive"):
        get_task("pope").load(tmp_path, limit=0)


def test_pope(tmp_path):
    from tests.test_eval_runner import write_pope_files

    write_pope_files(tmp_path, per_kind=2, kinds=("random", "adversarial"))
    task = get_task("pope")
    samples = task.load(tmp_path)
    assert [s.meta["kind"] for s in samples] == ["random", "random", "adversarial", "adversarial"]
    assert samples[0].question.startswith("Is there a") and samples[0].load_image().mode == "RGB"
    assert len(task.load(tmp_path, limit=1)) == 2  # the limit is per kind
    truth = {s.id: s.answer for s in samples}
    scores = task.score(samples, {sid: "Yes" if label == "yes" else "No, there is not." for sid, label in truth.items()})
    assert scores["f1"] == 1.0 and scores["random/accuracy"] == 1.0 and scores["adversarial/f1"] == 1.0
    always_yes = task.score(samples, dict.fromkeys(truth, "yes"))
    # random: labels [yes, no] -> precision 1/2, recall 1, f1 2/3; adversarial: [no, yes] likewise
    assert always_yes["f1"] == pytest.approx(2 / 3) and always_yes["yes_ratio"] == 1.0


def test_gqa(tmp_path):
    questions = {
        "201307251": {"imageId": "n161313", "question": "Is it overcast?", "answer": "no",
                      "types": {"structural": "verify"}},
        "201640614": {"imageId": "n235859", "question": "Who is wearing a dress?", "answer": "woman",
                      "types": {"structural": "query"}},
    }
    (tmp_path / "testdev_balanced_questions.json").write_text(json.dumps(questions))
    for q in questions.values():
        _image(tmp_path / "images" / f"{q['imageId']}.jpg")
    task = get_task("gqa")
    samples = task.load(tmp_path)
    assert [s.id for s in samples] == ["201307251", "201640614"]
    assert samples[1].answer == "woman" and samples[1].load_image().size == (24, 16)
    scores = task.score(samples, {"201307251": "No.", "201640614": "the man"})
    assert scores == {"accuracy": 0.5, "accuracy/query": 0.0, "accuracy/verify": 1.0}


def test_textvqa(tmp_path):
    data = {"dataset_name": "textvqa", "dataset_split": "val", "data": [
        {"question_id": 34602, "question": "what is the brand?", "image_id": "003a8ae2ef43b901",
         "answers": ["nokia"] * 8 + ["nokia phone"] * 2},
        {"question_id": 34603, "question": "what number?", "image_id": "003a8ae2ef43b902",
         "answers": ["2"] * 2 + ["12"] * 8},
    ]}
    (tmp_path / "TextVQA_0.5.1_val.json").write_text(json.dumps(data))
    for row in data["data"]:
        _image(tmp_path / "train_images" / f"{row['image_id']}.jpg")
    task = get_task("textvqa")
    samples = task.load(tmp_path)
    assert len(samples[0].answer) == 10
    scores = task.score(samples, {"34602": "Nokia", "34603": "two"})
    assert scores["accuracy"] == pytest.approx((1.0 + 0.6) / 2)


def test_vqav2(tmp_path):
    questions = {"questions": [{"image_id": 262148, "question": "Where is he looking?", "question_id": 262148000},
                               {"image_id": 262148, "question": "How many?", "question_id": 262148001}]}
    answers = [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(["down"] * 10)]
    counts = [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1}
              for i, a in enumerate(["3"] * 3 + ["4"] * 7)]
    annotations = {"annotations": [
        {"question_id": 262148000, "image_id": 262148, "answer_type": "other", "multiple_choice_answer": "down",
         "answers": answers},
        {"question_id": 262148001, "image_id": 262148, "answer_type": "number", "multiple_choice_answer": "4",
         "answers": counts},
    ]}
    (tmp_path / "v2_OpenEnded_mscoco_val2014_questions.json").write_text(json.dumps(questions))
    (tmp_path / "v2_mscoco_val2014_annotations.json").write_text(json.dumps(annotations))
    _image(tmp_path / "val2014" / "COCO_val2014_000000262148.jpg")
    task = get_task("vqav2")
    samples = task.load(tmp_path)
    assert samples[0].image == tmp_path / "val2014" / "COCO_val2014_000000262148.jpg"
    scores = task.score(samples, {"262148000": "down", "262148001": "three"})
    assert scores["accuracy/other"] == 1.0 and scores["accuracy/number"] == pytest.approx(0.9)
    assert scores["accuracy"] == pytest.approx(0.95)
    annotations["annotations"].pop()
    (tmp_path / "v2_mscoco_val2014_annotations.json").write_text(json.dumps(annotations))
    with pytest.raises(ValueError, match="has no annotation"):
        task.load(tmp_path)


def test_scienceqa_img(tmp_path):
    problems = {
        "5": {"question": "Which is a mammal?", "choices": ["trout", "otter"], "answer": 1, "hint": "",
              "image": "image.png", "subject": "natural science", "split": "test"},
        "6": {"question": "Which word rhymes?", "choices": ["cat", "dog", "sun"], "answer": 0, "hint": "",
              "image": None, "subject": "language science", "split": "test"},
        "9": {"question": "Which is colder?", "choices": ["ice", "fire"], "answer": 0,
              "hint": "Look at the map.", "image": "image.png", "subject": "natural science", "split": "test"},
    }
    (tmp_path / "problems.json").write_text(json.dumps(problems))
    (tmp_path / "pid_splits.json").write_text(json.dumps({"test": ["5", "6", "9"], "train": []}))
    for pid in ("5", "9"):
        _image(tmp_path / "images" / "test" / pid / "image.png")
    task = get_task("scienceqa-img")
    samples = task.load(tmp_path)
    assert [s.id for s in samples] == ["5", "9"]  # the question without an image is not in ScienceQA-IMG
    assert samples[0].question == "Which is a mammal?\nA. trout\nB. otter" and samples[0].answer == "B"
    assert samples[1].question.startswith("Context: Look at the map.\n")
    assert task.score(samples, {"5": "B", "9": "B"}) == {"accuracy": 0.5, "accuracy/natural science": 0.5}


def _write_mme(root: Path) -> None:
    # flat layout: image and question file side by side
    _image(root / "existence" / "000000006040.jpg")
    (root / "existence" / "000000006040.txt").write_text(
        "Is there a train in this image? Please answer yes or no.\tYes\n"
        "Is there a bed in this image? Please answer yes or no.\tNo\n"
    )
    # split layout: images/ and questions_answers_YN/
    _image(root / "artwork" / "images" / "10002.jpg")
    (root / "artwork" / "questions_answers_YN").mkdir(parents=True)
    (root / "artwork" / "questions_answers_YN" / "10002.txt").write_text(
        "Is this artwork created by Bruegel? Please answer yes or no.\tYes\n"
        "Is this artwork created by Monet? Please answer yes or no.\tNo\n"
    )
    _image(root / "code_reasoning" / "0020.png")
    (root / "code_reasoning" / "0020.txt").write_text("Will the code print 3?\tYes\nWill it print 4?\tNo\n")


def test_mme(tmp_path):
    _write_mme(tmp_path)
    task = get_task("mme")
    samples = task.load(tmp_path)
    assert [s.meta["subtask"] for s in samples] == ["existence"] * 2 + ["artwork"] * 2 + ["code_reasoning"] * 2
    assert samples[0].question == "Is there a train in this image?"  # MME's own instruction is replaced
    assert samples[2].image == tmp_path / "artwork" / "images" / "10002.jpg"
    predictions = {s.id: s.answer for s in samples}
    predictions[samples[1].id] = "Yes"  # existence: acc 1/2, acc+ 0 -> 50
    scores = task.score(samples, predictions)
    assert scores["existence/score"] == pytest.approx(50) and scores["artwork/score"] == pytest.approx(200)
    assert scores["perception"] == pytest.approx(250) and scores["cognition"] == pytest.approx(200)
    assert scores["total"] == pytest.approx(450)


def _write_mmbench(path: Path, rows: list[dict]) -> None:
    columns = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "l2-category", "image"]
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns, delimiter="\t")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: row.get(c, "") for c in columns})


def test_mmbench_rotates_options_of_plain_files(tmp_path):
    _write_mmbench(tmp_path / "MMBench_DEV_EN.tsv", [
        {"index": 0, "question": "What colour is it?", "hint": "nan", "A": "red", "B": "green", "C": "blue",
         "answer": "A", "category": "attribute", "image": _png_base64((255, 0, 0))},
        {"index": 1, "question": "Which shape?", "hint": "A drawing.", "A": "circle", "B": "square",
         "answer": "B", "category": "attribute", "image": _png_base64((0, 0, 255))},
    ])
    task = get_task("mmbench")
    samples = task.load(tmp_path)
    assert [int(s.id) for s in samples] == [0, CIRCULAR_STRIDE, 2 * CIRCULAR_STRIDE, 1, 1 + CIRCULAR_STRIDE]
    # rotation k shows option (i + k) mod n as letter i; "red" moves from A to C to B
    assert [s.answer for s in samples[:3]] == ["A", "C", "B"]
    assert samples[1].question.endswith("A. green\nB. blue\nC. red")
    assert samples[3].question.startswith("A drawing.\nWhich shape?")
    assert samples[0].load_image().getpixel((0, 0)) == (255, 0, 0)
    predictions = {s.id: s.answer for s in samples}
    wrong = next(s for s in samples if s.id == str(1 + CIRCULAR_STRIDE))
    predictions[wrong.id] = "B" if wrong.answer == "A" else "A"  # question 1 wrong in one rotation
    scores = task.score(samples, predictions)
    assert scores["circular_accuracy"] == 0.5 and scores["accuracy"] == 1.0
    assert len(task.load(tmp_path, limit=1)) == 3  # the first question with all its rotations


def test_mmbench_reads_circular_files_with_image_references(tmp_path):
    image = _png_base64((0, 255, 0))
    _write_mmbench(tmp_path / "mmbench_dev_20230712.tsv", [
        {"index": 7, "question": "Q?", "A": "x", "B": "y", "answer": "B", "category": "c", "image": image},
        {"index": 7 + CIRCULAR_STRIDE, "question": "Q?", "A": "y", "B": "x", "answer": "A", "category": "c",
         "image": "7"},
    ])
    samples = get_task("mmbench").load(tmp_path)
    assert [s.answer for s in samples] == ["B", "A"]
    assert samples[1].load_image().getpixel((0, 0)) == (0, 255, 0)


class _FakeSample(types.SimpleNamespace):
    pass


def _fake_shapes_module() -> types.ModuleType:
    """Stands in for vlm_compress.zoo.shapes with its documented API (load_split, load_pope, normalize_answer)."""
    module = types.ModuleType("vlm_compress.zoo.shapes")
    image = Image.new("RGB", (16, 16))

    def load_split(name, n=None):
        rows = [("What colour is the circle?", "red", "colour", False), ("How many stars?", "2", "count", True),
                ("Is there a square?", "yes", "exists", False)]
        return [_FakeSample(id=f"{name}-{i}", image=image, question=q, answer=a, family=f, small=s)
                for i, (q, a, f, s) in enumerate(rows[:n])]

    def load_pope(kind, n=None):
        return [_FakeSample(id=str(i), image=image, question="Is there a star?", answer=a, family="exists",
                            small=False) for i, a in enumerate(["yes", "no"][:n])]

    module.load_split = load_split
    module.load_pope = load_pope
    module.normalize_answer = lambda text: text.strip().lower().rstrip(".").replace("two", "2")
    return module


def test_shapes_tasks_use_the_generator(monkeypatch):
    import vlm_compress.zoo

    fake = _fake_shapes_module()
    monkeypatch.setitem(sys.modules, "vlm_compress.zoo.shapes", fake)
    monkeypatch.setattr(vlm_compress.zoo, "shapes", fake, raising=False)
    task = get_task("shapes-vqa")
    samples = task.load(limit=3)
    assert [s.id for s in samples] == ["test-0", "test-1", "test-2"]
    scores = task.score(samples, {"test-0": "Red.", "test-1": "two", "test-2": "no"})
    assert scores["accuracy"] == pytest.approx(2 / 3) and scores["accuracy/exists"] == 0.0
    assert scores["accuracy/small_objects"] == 1.0 and list(scores)[0] == "accuracy"
    with pytest.raises(ValueError, match="drop --data-dir"):
        task.load("/tmp")
    pope = get_task("shapes-pope")
    pope_samples = pope.load(limit=2)
    assert len(pope_samples) == 6 and pope_samples[0].id == "random-0"
    assert pope.score(pope_samples, {s.id: s.answer for s in pope_samples})["f1"] == 1.0


def _hub_rows(task_name: str) -> list[dict]:
    """Rows shaped like the lmms-lab copies on the dataset hub (column names as published)."""
    image = Image.new("RGB", (8, 8))
    return {
        "pope": [{"question_id": "1", "question": "Is there a dog in the image?", "answer": "yes", "image": image,
                  "category": kind} for kind in ("random", "popular", "random")],
        "textvqa": [{"question_id": 7, "question": "what brand?", "answers": ["nokia"] * 10, "image": image}],
        "vqav2": [{"question_id": 9, "question": "How many?", "answer_type": "number", "image": image,
                   "answers": [{"answer": "2", "answer_id": i} for i in range(10)]}],
        "scienceqa-img": [{"question": "Which is a mammal?", "choices": ["trout", "otter"], "answer": 1,
                           "hint": "", "image": image, "subject": "natural science"}],
        "mme": [{"question_id": "code_reasoning/0020.png", "category": "code_reasoning", "question": q,
                 "answer": a, "image": image} for q, a in (("Print 3? Please answer yes or no.", "Yes"),
                                                           ("Print 4? Please answer yes or no.", "No"))],
        "mmbench": [{"index": 3, "question": "Which?", "hint": None, "A": "x", "B": "y", "C": None, "D": None,
                     "answer": "B", "category": "c", "image": image}],
    }[task_name]


@pytest.mark.parametrize("task_name", ["pope", "textvqa", "vqav2", "scienceqa-img", "mme", "mmbench"])
def test_hub_rows_become_samples(task_name, monkeypatch):
    task = get_task(task_name)
    monkeypatch.setattr(type(task), "hub_rows", lambda self, source: _hub_rows(task_name))
    samples = task.load(limit=1)
    assert samples and all(s.load_image().size == (8, 8) for s in samples)
    perfect = task.score(samples, {s.id: s.answer if isinstance(s.answer, str) else s.answer[0] for s in samples})
    assert perfect[task.primary_metric] == (200.0 if task_name == "mme" else 1.0)
    if task_name == "pope":
        assert [s.id for s in samples] == ["random-1", "popular-1"]  # limit 1 per kind
    if task_name == "mmbench":
        assert [s.answer for s in samples] == ["B", "A"]  # two options -> two rotations


def test_hub_loading_without_datasets_points_to_data_dir(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ImportError, match="pip install datasets`; or pass --data-dir"):
        get_task("textvqa").load()


def test_export_as_lmms_eval_task_scores_like_the_task(tmp_path):
    from tests.test_eval_runner import write_pope_files
    from vlm_compress.eval.lmms_export import (
        aggregate,
        doc_to_text,
        doc_to_visual,
        export_lmms_task,
        process_results,
    )

    write_pope_files(tmp_path / "pope", per_kind=2, kinds=("random", "popular"))
    task = get_task("pope")
    samples = task.load(tmp_path / "pope")
    yaml_path = export_lmms_task(task, samples, tmp_path / "lmms")
    assert yaml_path.name == "vlmc_pope.yaml" and "metric: f1" in yaml_path.read_text()
    assert "from vlm_compress.eval.lmms_export import" in (tmp_path / "lmms" / "utils.py").read_text()
    docs = [json.loads(line) for line in (tmp_path / "lmms" / "docs.jsonl").read_text().splitlines()]
    assert doc_to_text(docs[0]).endswith("\nAnswer the question using a single word or phrase.")
    assert doc_to_visual(docs[0])[0].mode == "RGB"
    answers = ["Yes" if doc["answer"] == '"yes"' else "No" for doc in docs]
    items = [process_results(doc, [answer])["f1"] for doc, answer in zip(docs, answers)]
    assert aggregate(items + items[:1]) == 1.0  # a doc repeated to even out processes counts once
    always_yes = [process_results(doc, ["yes"])["f1"] for doc in docs]
    assert aggregate(always_yes) == task.score(samples, {s.id: "yes" for s in samples})["f1"]


def test_prompts_per_model_family():
    from vlm_compress.eval.prompts import build_prompt

    assert build_prompt("Is there a dog?", "yes_no", model_type="llava") == (
        "USER: <image>\nIs there a dog?\nAnswer the question using a single word or phrase. ASSISTANT:"
    )
    qwen = build_prompt("Which?\nA. x\nB. y", "multiple_choice", model_type="qwen2_vl")
    assert "<|vision_start|><|image_pad|><|vision_end|>Which?" in qwen
    assert qwen.endswith("Answer with the option's letter from the given choices directly.<|im_end|>\n"
                         "<|im_start|>assistant\n")
    with pytest.raises(ValueError, match="known families: llava"):
        build_prompt("Q", "short", model_type="blip")
    with pytest.raises(ValueError, match="valid styles"):
        build_prompt("Q", "essay", model_type="llava")

    class ChatProcessor:  # a processor with its own chat template wins over the family format
        chat_template = "{{ messages }}"

        def apply_chat_template(self, messages, add_generation_prompt, tokenize):
            assert add_generation_prompt and not tokenize
            return f"<chat>{messages[0]['content'][1]['text']}</chat>"

    assert build_prompt("Q", "short", model_type="blip", processor=ChatProcessor()) == (
        "<chat>Q\nAnswer the question using a single word or phrase.</chat>"
    )
