"""The CI guard: ``--no-skips`` (set by ``.ci/run``) turns any skipped test into a failed run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _pytest(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    (tmp_path / "test_sample.py").write_text(
        "import pytest\n\n\ndef test_runs():\n    pass\n\n\n"
        "def test_skips():\n    pytest.skip('optional dependency missing')\n"
    )
    command = [sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest", "-p", "no:cacheprovider"]
    command += ["--rootdir", str(tmp_path), str(tmp_path / "test_sample.py"), *args]
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}  # CI's own --no-skips stays out
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_a_skip_fails_the_run_under_no_skips(tmp_path):
    strict = _pytest(tmp_path, "--no-skips")
    assert strict.returncode == 1, strict.stdout + strict.stderr
    assert "--no-skips: 1 test(s) skipped" in strict.stdout
    assert "test_skips" in strict.stdout and "optional dependency missing" in strict.stdout


def test_without_the_option_a_skip_is_only_reported(tmp_path):
    relaxed = _pytest(tmp_path)
    assert relaxed.returncode == 0, relaxed.stdout + relaxed.stderr
    assert "1 passed, 1 skipped" in relaxed.stdout
