"""The lmms-eval model class end to end: ``python -m lmms_eval --model vlmc_llava`` on a tiny local task.

lmms-eval is an optional extra with heavy dependencies; it is looked for in this Python or in the one named by
``VLMC_LMMS_EVAL_PYTHON`` (e.g. a separate venv), and the test is skipped with that reason when neither has it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.test_eval_runner import save_tiny_checkpoint, write_pope_files

REPO = Path(__file__).resolve().parents[1]
LMMS_PYTHON = os.environ.get("VLMC_LMMS_EVAL_PYTHON", sys.executable)


def _has_lmms_eval(python: str) -> bool:
    probe = [python, "-c", "import importlib.util, sys; sys.exit(importlib.util.find_spec('lmms_eval') is None)"]
    try:
        return subprocess.run(probe, capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not _has_lmms_eval(LMMS_PYTHON),
        reason=f"lmms_eval is not importable from {LMMS_PYTHON}; pip install lmms-eval there, or set "
        "VLMC_LMMS_EVAL_PYTHON to a Python that has it",
    ),
]

TASK_UTILS = textwrap.dedent(
    """
    from PIL import Image


    def doc_to_visual(doc):
        return [Image.open(doc["image_path"]).convert("RGB")]


    def doc_to_text(doc):
        return doc["question"] + "\\nAnswer the question using a single word or phrase."


    def process_results(doc, results):
        return {"exact_match": float(results[0].strip().lower() == doc["answer"].lower())}
    """
)

TASK_YAML = """\
task: vlmc_tiny_pope
dataset_path: json
dataset_kwargs:
  data_files:
    test: {docs}
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_target: answer
generation_kwargs:
  max_new_tokens: 3
  temperature: 0
  do_sample: false
process_results: !function utils.process_results
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""


@pytest.mark.parametrize("processes", [1, 2])
def test_lmms_eval_runs_vlmc_llava_on_a_local_task(tmp_path, processes):
    """One process, and two in a CPU gloo group under ``accelerate launch`` (lmms-eval shards the requests)."""
    checkpoint = save_tiny_checkpoint(tmp_path / "tiny-llava")
    pope = write_pope_files(tmp_path / "pope", per_kind=2, kinds=("random",))
    task_dir = tmp_path / "task"
    task_dir.mkdir()
    with (task_dir / "docs.jsonl").open("w") as docs:
        for line in (pope / "coco_pope_random.json").read_text().splitlines():
            row = json.loads(line)
            docs.write(json.dumps({"image_path": str(pope / "val2014" / row["image"]), "question": row["text"],
                                   "answer": row["label"]}) + "\n")
    (task_dir / "utils.py").write_text(TASK_UTILS)
    (task_dir / "vlmc_tiny_pope.yaml").write_text(TASK_YAML.format(docs=task_dir / "docs.jsonl"))
    env = {**os.environ, "PYTHONPATH": str(REPO), "LMMS_EVAL_PLUGINS": "vlm_compress.eval", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    if processes == 1:
        launch = [LMMS_PYTHON, "-m", "lmms_eval"]
    else:
        launcher = Path(LMMS_PYTHON).with_name("accelerate")
        if not launcher.is_file():
            pytest.skip(f"the accelerate launcher is not installed beside {LMMS_PYTHON}")
        env["ACCELERATE_USE_CPU"] = "1"
        launch = [str(launcher), "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
                  "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "lmms_eval"]
    command = [*launch, "--model", "vlmc_llava", "--model_args", f"pretrained={checkpoint},method=uniform,budget=16",
               "--tasks", "vlmc_tiny_pope", "--include_path", str(task_dir), "--batch_size", "2",
               "--output_path", str(tmp_path / "out")]
    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=400)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    # 2 questions of 144 visual tokens each, 16 kept per image; with 2 processes each answers one
    kept = "32 of 288" if processes == 1 else "16 of 144"
    assert log.count(f"vlmc_llava uniform: {kept} visual tokens kept (11.1%)") == processes, log[-4000:]
    results = [json.loads(p.read_text()) for p in (tmp_path / "out").rglob("*results*.json")]
    assert results and "exact_match,none" in results[0]["results"]["vlmc_tiny_pope"]
    assert results[0]["n-samples"]["vlmc_tiny_pope"]["effective"] == 2
