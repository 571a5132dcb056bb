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
    # LM FLOPs from the positions per layer: input-side pruning shortens every layer, FastV only layers >= 2
    assert rows["full"]["lm_flops"] == 1.0
    assert 0 < rows["uniform"]["lm_flops"] < rows["fastv"]["lm_flops"] < 1.0
    assert rows["uniform"]["schedule"] == str(int(full) - (144 - 16))
    assert rows["fastv"]["schedule"] == f"{int(full)} -> {int(full) - (144 - 16)} after layer 2"
    assert (tmp_path / "kept_tokens.png").is_file() and result["picture"] == str(tmp_path / "kept_tokens.png")


def test_run_table_output(tmp_path, capsys):
    assert main(["run", "--model", "tiny", "--method", "random", "--repeats", "1", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "method" in out and "speedup" in out and "random" in out and "kept tokens:" in out


@pytest.mark.parametrize(
    ("flag", "expected"),
    [
        ([], {"uniform": "original", "cls_attention": "contiguous"}),
        (["--position-ids", "original"], {"uniform": "original", "cls_attention": "original"}),
    ],
)
def test_run_reports_the_position_ids_in_effect(tmp_path, capsys, flag, expected):
    args = ["run", "--model", "tiny", "--method", "uniform", "--method", "cls_attention", "--budget", "16"]
    args += ["--repeats", "1", "--max-new-tokens", "1", "--out", str(tmp_path)]
    assert main([*args, "--json", *flag]) == 0
    result = json.loads(capsys.readouterr().out)
    rows = [row for row in result["rows"] if row["method"] != "full"]
    assert all(row["error"] is None for row in rows)
    assert {row["method"]: row["position_ids"] for row in rows} == expected
    assert result["position_ids"] == (flag[1] if flag else None)
    assert main([*args, *flag]) == 0
    table = capsys.readouterr().out
    assert "position ids" in table
    for method, policy in expected.items():
        line = next(line for line in table.splitlines() if line.startswith(method))
        assert f" {policy} " in line


def test_text_guided_methods_run_on_the_tiny_model(tmp_path, capsys):
    # mmtok embeds the question's words through the processor's tokenizer: the toy processor must answer that call
    args = ["run", "--model", "tiny", "--method", "mmtok", "--method", "todre", "--budget", "16"]
    assert main([*args, "--repeats", "1", "--max-new-tokens", "1", "--out", str(tmp_path), "--json"]) == 0
    rows = {row["method"]: row for row in json.loads(capsys.readouterr().out)["rows"]}
    assert rows["mmtok"]["error"] is None and rows["mmtok"]["visual_tokens_after"] == 16
    assert rows["todre"]["error"] is None


def test_toy_processor_tokenizes_words_like_a_tokenizer():
    from vlm_compress.zoo import load

    _, processor = load("tiny")
    words = processor.tokenizer(["red", "star"], is_split_into_words=True, add_special_tokens=False)["input_ids"]
    assert words == processor.tokenizer("red star", add_special_tokens=False)["input_ids"]
    assert processor.tokenizer("red")["input_ids"][0] == processor.bos_token_id
    with pytest.raises(ValueError, match="needs text"):
        processor(images=None)


def test_lm_flops_follow_the_positions_of_each_layer():
    from vlm_compress.bench import DecoderShape, layer_flops, prefill_flops
    from vlm_compress.run import schedule

    shape = DecoderShape(hidden=64, intermediate=128, layers=3, heads=4, kv_heads=2, head_dim=16, vocab=10)
    # run and bench share one count: layer l over per_layer[l] positions, no logits row for run's ratio
    assert prefill_flops(shape, [10, 10, 4], logits=0) == 2 * layer_flops(shape, 10) + layer_flops(shape, 4)
    assert prefill_flops(shape, 10) == 3 * layer_flops(shape, 10) + 2 * 64 * 10
    with pytest.raises(ValueError, match="2 layers; the model has 3"):
        prefill_flops(shape, [10, 4])
    assert schedule([616, 616, 104, 104, 40]) == "616 -> 104 after layer 2 -> 40 after layer 4"
    assert schedule([80, 80]) == "80"


def test_the_table_footer_explains_timings_and_slower_rows():
    from vlm_compress.run import format_table

    rows = [
        Row(method="full", answer="red", lm_positions=160, prefill_ms=20.0, schedule="160"),
        Row(method="mmtok", answer="red", visual_tokens_before=144, visual_tokens_after=16, lm_positions=32,
            prefill_ms=25.0, speedup=0.8, selection_ms=6.0, lm_flops=0.2, schedule="32"),
        Row(method="fastv", answer="red", visual_tokens_before=144, visual_tokens_after=16, lm_positions=96,
            prefill_ms=15.0, speedup=1.33, lm_flops=0.55, schedule="160 -> 32 after layer 2"),
    ]
    table = format_table(rows)
    assert "160 -> 32 after layer 2" in table and " 20% " in table
    assert "vlmc bench --synthetic llava-1.5-7b" in table
    assert "mmtok is slower than full here" in table and "6.0 ms" in table
    assert "fastv is slower" not in table


def test_run_rejects_unknown_methods_and_bad_budgets(capsys):
    assert main(["run", "--method", "nope"]) == 2
    assert "valid:" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["run", "--budget", "lots"])


def test_default_budgets_are_the_same_share_of_every_model():
    from vlm_compress.cli import DEFAULT_BUDGET, DEFAULT_BUDGETS, describe_budget, parse_budget
    from vlm_compress.methods.base import resolve_budget

    budgets = [parse_budget(b) for b in DEFAULT_BUDGETS.split(",")]
    assert [resolve_budget(b, 576) for b in budgets] == [64, 128, 192, 576]
    assert [resolve_budget(b, 144) for b in budgets] == [16, 32, 48, 144]
    assert resolve_budget(DEFAULT_BUDGET, 576) == 64 and resolve_budget(DEFAULT_BUDGET, 144) == 16
    assert describe_budget(16) == "16 visual tokens per image"
    assert describe_budget(0.111) == "11.1% of each image's visual tokens"


@pytest.mark.parametrize("command", ["run", "bench"])
@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"\x89PNG not really" * 50, "is not an image Pillow can identify; pass a PNG, JPEG"),
        ("half", r"is truncated or corrupt \(PNG header of 40x30"),
        (None, "does not exist; pass the path of a PNG"),
    ],
)
def test_a_bad_image_file_is_one_clear_line_before_any_model_loads(
    tmp_path, capsys, monkeypatch, command, content, expected
):
    import io
    import re

    from PIL import Image

    import vlm_compress.zoo as zoo

    monkeypatch.setattr(zoo, "load", lambda *a, **k: pytest.fail("the model was loaded before the image"))
    path = tmp_path / "picture.png"
    if content == "half":
        buffer = io.BytesIO()
        Image.effect_noise((40, 30), 60).convert("RGB").save(buffer, "PNG")
        content = buffer.getvalue()[: len(buffer.getvalue()) // 2]
    if content is not None:
        path.write_bytes(content)
    assert main([command, "--image", str(path), "--model", "tiny"]) == 2
    captured = capsys.readouterr()
    line = rf"vlmc {command}: --image: image file '{re.escape(str(path))}' {expected}.*\n"
    assert re.fullmatch(line, captured.err)
    assert "Traceback" not in captured.err and captured.out == ""


def test_run_refuses_a_question_that_holds_an_image_placeholder(tmp_path, capsys):
    args = ["run", "--model", "tiny", "--method", "uniform", "--question", "what is <image> here?"]
    assert main([*args, "--repeats", "1", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vlmc run: the question holds 1 image placeholder(s) '<image>', so the prompt")
