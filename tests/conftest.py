"""Shared fixtures: tiny random-weight models built from configs (session-scoped)."""

from __future__ import annotations

import os

import pytest
import torch

# Triton reads this once, at import: without a GPU its kernels run (slowly) in the interpreter on CPU tensors
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from vlm_compress.zoo.synthetic import build_tiny, tiny_inputs

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


def pytest_report_header(config):
    import transformers

    return f"torch {torch.__version__}, transformers {transformers.__version__}"


def pytest_addoption(parser):
    parser.addoption(
        "--no-skips",
        action="store_true",
        help="fail the run when any test is skipped (CI: every test the README promises must run)",
    )


def pytest_sessionfinish(session, exitstatus):
    if not session.config.getoption("--no-skips"):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if skipped:
        reporter.write_line(f"--no-skips: {len(skipped)} test(s) skipped, which counts as a failure:", red=True)
        for report in skipped:
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
            reporter.write_line(f"  {report.nodeid}: {reason}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def tiny_llava():
    return build_tiny("llava", seed=0)


@pytest.fixture()
def llava_batch(tiny_llava):
    """Two prompts, left-padded: one with two images, one with one image (3 images in all)."""
    return tiny_inputs(tiny_llava, [2, 1], padding_side="left", seed=1)
