"""benchmarks/kernels.py end to end on tiny sizes: a row for every op, and identical selections."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "kernels.py"


def load_script():
    spec = importlib.util.spec_from_file_location("benchmarks_kernels", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_kernel_benchmark_reports_every_op_with_identical_selections(capsys):
    script = load_script()
    rows = script.main(
        ["--sizes", "48x16", "33x7", "--ks", "1", "5", "33", "--repeats", "1", "--threads", "1"]
    )
    out = capsys.readouterr().out
    assert "paper loop" in out and "torch path" in out and "identical" in out
    ops = {(row.op, row.size, row.k) for row in rows}
    for size in ("48x16", "33x7"):
        assert ("similarity", size, None) in ops and ("gain", size, None) in ops
        assert {k for op, s, k in ops if op == "k_center" and s == size} == {1, 5, 33}
        assert {k for op, s, k in ops if op == "mmtok" and s == size} == {1, 5, 33}
        assert {k for op, s, k in ops if op == "cdpruner" and s == size} == {1, 5, 33}
        assert {k for op, s, k in ops if op == "divprune" and s == size} == {1, 5, 33}
    for row in rows:
        line = script.format_row(row)
        assert line in out
        if row.op in ("k_center", "mmtok"):
            assert row.identical == "yes/yes", line  # index for index, vs the loop and the vectorised version
        elif row.op == "cdpruner":
            assert row.identical == "yes", line  # the Cholesky path picks the paper loop's tokens
        elif row.op == "divprune":
            assert row.identical == "yes", line  # index for index, vs the official loop (no vectorised version)
        else:
            assert float(row.identical.split()[-1]) < 1e-5, line
        assert row.loop_ms > 0 and row.torch_ms > 0


def test_quick_fills_in_only_what_is_not_given():
    script = load_script()
    args = script.parse_args(["--quick", "--repeats", "2"])
    assert (args.sizes, args.ks, args.repeats) == (script.QUICK["sizes"], script.QUICK["ks"], 2)
    args = script.parse_args(["--sizes", "8x4"])
    assert (args.sizes, args.ks, args.repeats) == (["8x4"], [64, 128, 192], 3)
