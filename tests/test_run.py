"""The main job ``vlmc run``: JSON schema, real shortening, the picture, bad options."""

from __future__ import annotations

import json

import pytest

from vlm_compress.cli import main
from vlm_compress.run import Row

ROW_FIELDS = set(Row.__dataclass_fields__)


def test_run_json_reports_every_method_and_fewer_positions(tmp_path, capsys):
    code = main(
        ["run", "--model", "tiny", "--method", "uniform", "--method", "fastv", "--budget", "16",
         "--repeats", "1", "--max-new-tokens", "2", "--out", str(tmp_path), "--json"]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert {"model", "image", "question", "budget", "device", "rows", "picture"} <= set(result)
    rows = {row["method"]: row for row in result["rows"]}
    assert list(rows) == ["full", "uniform", "fastv"]
    assert all(set(row) == ROW_FIELDS and row["error"] is None for row in rows.values())
    full = rows["full"]["lm_positions"]
    assert rows["uniform"]["visual_tokens_after"] == 16 and rows["uniform"]["visual_tokens_before"] == 144
    assert rows["uniform"]["lm_positions"] == full - (144 - 16)
    assert rows["fastv"]["lm_positions"] < full  # layers >= 2 run on 16 visual tokens
    assert rows["fastv"]["lm_positions_per_layer"][2] == full - (144 - 16)
    assert all(row["prefill_ms"] > 0 and row["speedup"] > 0 for row in rows.values())
    assert (tmp_path / "kept_tokens.png").is_file() and result["picture"] == str(tmp_path / "kept_tokens.png")


def test_run_table_output(tmp_path, capsys):
    assert main(["run", "--model", "tiny", "--method", "random", "--repeats", "1", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "method" in out and "speedup" in out and "random" in out and "kept tokens:" in out


def test_run_rejects_unknown_methods_and_bad_budgets(capsys):
    assert main(["run", "--method", "nope"]) == 2
    assert "valid:" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["run", "--budget", "lots"])
