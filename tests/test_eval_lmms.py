"""The lmms-eval model class end to end: ``python -m lmms_eval --model vlmc_llava`` on a tiny POPE task exported
by ``vlmc eval --export-lmms-eval`` (so lmms-eval scores it with vlm_compress's own metric).

lmms-eval is an optional extra with heavy dependencies; it is looked for in this Python or in the one named by
``VLMC_LMMS_EVAL_PYTHON`` (e.g. a separate venv), and the test is skipped with that reason when neither has it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_eval_runner import save_tiny_checkpoint, write_pope_files
from vlm_compress.cli import main as vlmc_main

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

@pytest.mark.parametrize("processes", [1, 2])
def test_lmms_eval_runs_vlmc_llava_on_a_local_task(tmp_path, processes):
    """One process, and two in a CPU gloo group under ``accelerate launch`` (lmms-eval shards the requests)."""
    checkpoint = save_tiny_checkpoint(tmp_path / "tiny-llava")
    pope = write_pope_files(tmp_path / "pope", per_kind=2, kinds=("random",))
    task_dir = tmp_path / "task"
    assert vlmc_main(["eval", "--task", "pope", "--data-dir", str(pope), "--export-lmms-eval", str(task_dir)]) == 0
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
               "--tasks", "vlmc_pope", "--include_path", str(task_dir), "--batch_size", "2",
               "--output_path", str(tmp_path / "out")]
    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=400)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    # 2 questions of 144 visual tokens each, 16 kept per image; with 2 processes each answers one
    kept = "32 of 288" if processes == 1 else "16 of 144"
    assert log.count(f"vlmc_llava uniform: {kept} visual tokens kept (11.1%)") == processes, log[-4000:]
    results = [json.loads(p.read_text()) for p in (tmp_path / "out").rglob("*results*.json")]
    assert results and 0 <= results[0]["results"]["vlmc_pope"]["f1,none"] <= 1  # scored by vlm_compress's Task
    assert results[0]["n-samples"]["vlmc_pope"]["effective"] == 2
