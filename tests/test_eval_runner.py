"""The sweep runner on a tiny random-weight LLaVA saved as a real checkpoint (model + processor): batching, cache
and resume, reports, ``vlmc eval``, and two processes under ``accelerate launch``."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlm_compress.cli import main as vlmc_main
from vlm_compress.eval import FULL, Setting, evaluate, get_task, predict
from vlm_compress.eval.report import markdown_table, write_reports
from vlm_compress.eval.runner import generate_batch, read_cache
from vlm_compress.zoo.synthetic import TINY_IMAGE_TOKEN_ID, TINY_VOCAB, build_tiny

REPO = Path(__file__).resolve().parents[1]
PROMPT_WORDS = [
    "USER",
    "ASSISTANT",
    ":",
    ".",
    "?",
    ",",
    "Answer",
    "the",
    "question",
    "using",
    "a",
    "single",
    "word",
    "or",
    "phrase",
    "with",
    "option's",
    "letter",
    "from",
    "given",
    "choices",
    "directly",
    "Is",
    "there",
    "a",
    "an",
    "in",
    "image",
    "yes",
    "no",
    "Yes",
    "No",
    "snowboard",
    "dog",
    "cat",
    "car",
    "person",
]


def build_tiny_processor(image_size: int = 96, patch_size: int = 8):
    """A LLaVA processor over a word-level tokenizer whose ids cover the tiny model's whole vocabulary (so any
    generated id decodes to a word) with ``<image>`` at the tiny model's image token id."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import CLIPImageProcessor, LlavaProcessor, PreTrainedTokenizerFast

    words = ["<pad>", "<s>", "</s>", "<unk>", *dict.fromkeys(PROMPT_WORDS)]
    words += [f"w{i}" for i in range(TINY_IMAGE_TOKEN_ID - len(words))]
    vocab = {word: i for i, word in enumerate(words)}
    vocab["<image>"] = TINY_IMAGE_TOKEN_ID
    assert len(vocab) == TINY_VOCAB
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.decoder = decoders.WordPiece()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )


def save_tiny_checkpoint(path: str | Path) -> Path:
    """The tiny LLaVA and its processor saved where ``from_pretrained`` finds them."""
    path = Path(path)
    model = build_tiny("llava", seed=0)
    model.generation_config.eos_token_id = 2
    model.save_pretrained(path)
    build_tiny_processor().save_pretrained(path)
    return path


def write_pope_files(root: Path, per_kind: int = 3, kinds=("random", "popular")) -> Path:
    """POPE's official layout: ``coco_pope_<kind>.json`` (JSON lines) and COCO-named images in ``val2014/``."""
    rng = np.random.default_rng(0)
    (root / "val2014").mkdir(parents=True, exist_ok=True)
    objects = ["snowboard", "dog", "cat", "car", "person"]
    question_id = 1
    for kind in kinds:
        with (root / f"coco_pope_{kind}.json").open("w") as file:
            for i in range(per_kind):
                image = f"COCO_val2014_{310196 + i:012d}.jpg"
                if not (root / "val2014" / image).exists():
                    pixels = rng.integers(0, 255, size=(40 + 8 * i, 56, 3), dtype=np.uint8)
                    Image.fromarray(pixels).save(root / "val2014" / image)
                row = {
                    "question_id": question_id,
                    "image": image,
                    "text": f"Is there a {objects[(i + len(kind)) % 5]} in the image?",
                    "label": "yes" if i % 2 == 0 else "no",
                }
                file.write(json.dumps(row) + "\n")
                question_id += 1
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny-llava"))


@pytest.fixture(scope="module")
def model_and_processor(checkpoint):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    return AutoModelForImageTextToText.from_pretrained(checkpoint).eval(), AutoProcessor.from_pretrained(
        checkpoint
    )


@pytest.fixture(scope="module")
def pope_dir(tmp_path_factory):
    return write_pope_files(tmp_path_factory.mktemp("pope"))


@pytest.fixture(scope="module")
def pope_samples(pope_dir):
    return get_task("pope").load(pope_dir)


def test_batched_generation_matches_one_by_one(model_and_processor, pope_samples):
    """Left padding makes batched greedy answers equal to unbatched ones, compressed or not."""
    model, processor = model_and_processor
    for setting in (Setting(FULL), Setting("uniform", 16)):
        batched = generate_batch(
            model, processor, pope_samples[:3], setting, prompt_style="yes_no", max_new_tokens=3
        )
        single = [
            generate_batch(model, processor, [s], setting, prompt_style="yes_no", max_new_tokens=3)[0]
            for s in pope_samples[:3]
        ]
        assert [r["prediction"] for r in batched] == [r["prediction"] for r in single]
        assert all(r["prediction"] for r in batched)  # the tokenizer covers every id: answers are words
        kept = 144 if setting.method == FULL else 16
        assert [(r["tokens_before"], r["tokens_after"]) for r in batched] == [(144, kept)] * 3
    assert processor.tokenizer.padding_side == "right"  # restored


def test_cache_resumes_without_recomputing(model_and_processor, pope_samples, tmp_path, monkeypatch):
    model, processor = model_and_processor
    task = get_task("pope")
    cache = tmp_path / "uniform-16.jsonl"
    first = predict(
        model,
        processor,
        task,
        pope_samples[:4],
        Setting("uniform", 16),
        batch_size=2,
        cache_path=cache,
        progress=False,
    )
    assert len(read_cache(cache)) == 4
    with cache.open("a") as file:  # an interrupted write leaves a cut line; it is ignored and recomputed
        file.write('{"id": "popular-5", "predic')
    calls = []
    original = generate_batch

    def counting(model, processor, samples, *args, **kwargs):
        calls.append([s.id for s in samples])
        return original(model, processor, samples, *args, **kwargs)

    monkeypatch.setattr("vlm_compress.eval.runner.generate_batch", counting)
    second = predict(
        model,
        processor,
        task,
        pope_samples,
        Setting("uniform", 16),
        batch_size=2,
        cache_path=cache,
        progress=False,
    )
    assert calls == [[s.id for s in pope_samples[4:]]]
    assert {k: second[k] for k in first} == first
    assert set(read_cache(cache)) == {s.id for s in pope_samples}
    assert not list(tmp_path.glob("*.part*.jsonl"))


def test_evaluate_scores_relative_to_full_and_writes_reports(model_and_processor, pope_samples, tmp_path):
    model, processor = model_and_processor
    task = get_task("pope")
    settings = [Setting(FULL), Setting("uniform", 16), Setting("uniform", 64), Setting("random", 16)]
    results = evaluate(
        model, processor, task, pope_samples[:4], settings, batch_size=4, max_new_tokens=3,
        cache_dir=tmp_path / "cache", progress=False,
    )
    assert [r.method for r in results.rows] == ["full", "uniform", "uniform", "random"]
    full = results.full
    assert full.relative == pytest.approx(1.0) or full.primary == 0
    for row in results.rows:
        assert row.primary == row.metrics["f1"]
        assert 0 <= row.metrics["accuracy"] <= 1
        if full.primary:
            assert row.relative == pytest.approx(row.primary / full.primary)
    assert [r.tokens_after for r in results.rows] == [144, 16, 64, 16]
    paths = write_reports(results, tmp_path / "out")
    data = json.loads(paths["json"].read_text())
    assert data["primary_metric"] == "f1" and len(data["rows"]) == 4
    with paths["csv"].open() as file:
        rows = list(csv.DictReader(file))
    assert [(r["method"], r["budget"]) for r in rows] == [("full", "full"), ("uniform", "16"), ("uniform", "64"),
                                                          ("random", "16")]
    table = markdown_table(results)
    assert "| method | 16 | 64 |" in table and "| random |" in table and "| full (144 tokens) |" in table
    assert "(% of the uncompressed model's)" in table.splitlines()[0]
    # without the reference run (--no-full) no cell is relative, and the header says nothing of it
    alone = dataclasses.replace(
        results, rows=[dataclasses.replace(r, relative=None) for r in results.rows if r.method != FULL]
    )
    header = markdown_table(alone).splitlines()[0]
    assert header == "pope, 4 samples, f1 by visual-token budget"
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_vlmc_eval_command(checkpoint, pope_dir, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["eval", "--task", "pope", "--data-dir", str(pope_dir), "--model", str(checkpoint), "--output-dir",
            str(out), *shlex.split("--methods uniform --budgets 16,0.5 --limit 1 --max-new-tokens 2 --quiet")]
    assert vlmc_main(argv) == 0
    printed = capsys.readouterr().out
    assert "| uniform |" in printed and "| 16 | 0.5 |" in printed
    names = sorted(p.name for p in (out / "predictions").iterdir())
    assert names == ["full.jsonl", "uniform-0.5.jsonl", "uniform-16.jsonl"]
    assert {"results.json", "results.csv", "results.md", "accuracy_vs_budget.png"} <= {p.name for p in out.iterdir()}
    assert len(read_cache(out / "predictions" / "full.jsonl")) == 2  # --limit 1: one question of each POPE kind
    # another model into the same output folder is refused instead of mixing cached predictions
    with pytest.raises(SystemExit, match="differs in model"):
        vlmc_main([*argv[:6], "other-model", *argv[7:]])
    # a budget the model cannot meet stops with the setting named, not a traceback
    too_big = [*argv[:8], str(tmp_path / "big"), "--methods", "uniform", "--budgets", "500", "--limit", "1",
              "--no-full", "--quiet"]
    with pytest.raises(SystemExit, match="setting uniform-500: budget 500 is larger than the image's 144"):
        vlmc_main(too_big)


def test_vlmc_eval_position_ids_is_part_of_the_run(checkpoint, pope_dir, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["eval", "--task", "pope", "--data-dir", str(pope_dir), "--model", str(checkpoint), "--output-dir",
            str(out), *shlex.split("--methods uniform --budgets 16 --limit 1 --max-new-tokens 2 --quiet --no-plot")]
    assert vlmc_main([*argv, "--position-ids", "contiguous"]) == 0
    identity = json.loads((out / "run.json").read_text())
    assert identity["method_args"] == {"uniform": {"position_ids": "contiguous"}}
    # the cached predictions of one policy are not reused for the other
    with pytest.raises(SystemExit, match="differs in method_args"):
        vlmc_main([*argv, "--position-ids", "original"])
    with pytest.raises(SystemExit):
        vlmc_main([*argv, "--position-ids", "shuffled"])


def test_vlmc_eval_rejects_bad_arguments(capsys):
    with pytest.raises(SystemExit):
        vlmc_main(["eval", "--budgets", "0", "--methods", "uniform"])
    with pytest.raises(SystemExit, match="unknown method"):
        vlmc_main(["eval", "--methods", "nope", "--model", "unused"])


@pytest.mark.slow
def test_two_processes_give_the_same_results_as_one(checkpoint, pope_dir, tmp_path):
    """Two processes in a gloo group (``ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2``;
    ``--cpu`` alone would start a single process) give exactly the predictions and scores of one process."""
    launcher = Path(sys.executable).with_name("accelerate")
    if not launcher.is_file():
        pytest.skip(f"the accelerate launcher is not installed beside {sys.executable}")
    common = ["--task", "pope", "--data-dir", str(pope_dir), "--model", str(checkpoint),
              *shlex.split("--methods uniform --budgets 16 --batch-size 2 --max-new-tokens 3 --quiet --no-plot")]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "ACCELERATE_USE_CPU": "1"}
    launch = [str(launcher), *shlex.split("launch --multi_gpu --num_processes 2 --num_machines 1 "
                                          "--mixed_precision no --dynamo_backend no -m vlm_compress.eval")]
    run = dict(env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    two = subprocess.run([*launch, *common, "--output-dir", str(tmp_path / "two")], **run)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "full: 3 batches dealt over 2 processes" in two.stderr, two.stderr[-3000:]
    one_env = {k: v for k, v in env.items() if k != "ACCELERATE_USE_CPU"}
    one = subprocess.run([sys.executable, "-m", "vlm_compress.eval", *common, "--output-dir", str(tmp_path / "one")],
                         **{**run, "env": one_env})
    assert one.returncode == 0, one.stderr[-3000:]
    assert "dealt over" not in one.stderr
    for name in ("full.jsonl", "uniform-16.jsonl"):
        rows = {p: read_cache(tmp_path / p / "predictions" / name) for p in ("one", "two")}
        assert rows["one"] == rows["two"] and len(rows["one"]) == 6
    results = {p: json.loads((tmp_path / p / "results.json").read_text()) for p in ("one", "two")}
    assert results["one"]["rows"] == results["two"]["rows"]
