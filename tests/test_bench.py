"""vlmc bench: analytic FLOPs, probes, the interleaved runner and the command line, on the tiny LLaVA."""

from __future__ import annotations

import json

import pytest
import torch

import vlm_compress as vlmc
from vlm_compress.bench import (
    FULL,
    DecoderShape,
    Setting,
    cache_bytes,
    prefill_flops,
    run,
    to_csv,
    to_json,
    to_markdown,
)
from vlm_compress.cli import main
from vlm_compress.zoo.inputs import prompt_inputs
from vlm_compress.zoo.synthetic import SYNTHETIC, ToyProcessor, tiny_inputs

from .helpers import hook_state

SHAPE = DecoderShape(hidden=8, intermediate=16, layers=2, heads=2, kv_heads=1, head_dim=4, vocab=10)


def test_prefill_flops_counts_projections_mlp_causal_attention_and_last_logits():
    # per token: q,o 2*(8*8*2) + k,v 2*(8*4*2) + mlp 2*(3*8*16) = 256 + 128 + 768 = 1152
    length = 5
    expected = 2 * (1152 * length + 2 * 2 * 8 * (length * (length + 1) // 2)) + 2 * 8 * 10
    assert prefill_flops(SHAPE, length) == expected


def test_fewer_positions_give_a_theoretical_speedup_between_linear_and_quadratic():
    shape = DecoderShape(
        hidden=4096, intermediate=11008, layers=32, heads=32, kv_heads=32, head_dim=128, vocab=32064
    )
    ratio = prefill_flops(shape, 616) / prefill_flops(shape, 104)
    assert 616 / 104 < ratio < (616 / 104) ** 2


def test_decoder_shape_reads_the_text_config(tiny_llava):
    shape = DecoderShape.from_config(tiny_llava.config)
    assert (shape.hidden, shape.layers, shape.heads, shape.kv_heads, shape.head_dim) == (64, 3, 4, 2, 16)


def test_cache_bytes_of_a_dynamic_cache(tiny_llava):
    inputs = tiny_inputs(tiny_llava, [1])
    with torch.inference_mode():
        out = tiny_llava(**inputs, use_cache=True)
    length = inputs["input_ids"].shape[1]
    # 3 layers x (keys + values) x [1, 2 kv heads, L, 16] fp32
    assert cache_bytes(out.past_key_values) == 3 * 2 * 2 * length * 16 * 4
    assert cache_bytes(None) == 0


def test_runner_measures_full_and_method_and_leaves_the_model_untouched(tiny_llava):
    inputs = tiny_inputs(tiny_llava, [1])
    before = hook_state(tiny_llava)
    results = run(
        tiny_llava, inputs, [Setting("uniform", 16)], repeats=2, warmup=1, new_tokens=3, progress=False
    )
    assert hook_state(tiny_llava) == before and vlmc.active_handle(tiny_llava) is None
    full, uniform = results
    assert (
        full.method == "full" and full.visual_tokens == 144 and full.positions == inputs["input_ids"].shape[1]
    )
    assert uniform.visual_tokens == 16 and uniform.positions == full.positions - 128
    assert len(full.samples) == len(uniform.samples) == 2
    assert uniform.kv_cache_mb < full.kv_cache_mb
    assert uniform.theoretical_speedup == pytest.approx(full.lm_gflops / uniform.lm_gflops)
    assert uniform.theoretical_speedup > 2
    assert uniform.fraction_of_limit == pytest.approx(uniform.prefill_speedup / uniform.theoretical_speedup)
    assert uniform.selection_ms > 0 and full.selection_ms == 0
    assert full.decode_tokens_per_s > 0 and uniform.prefill_lm_ms > 0 and full.prefill_lm_spread >= 1

    table = to_markdown(results)
    assert table.count("\n") == 3 and "| uniform | 16 | 16 |" in table and "max/min" in table
    assert to_csv(results).splitlines()[0].startswith("method,budget,")
    payload = json.loads(to_json(results, {"model": "tiny"}))
    assert payload["meta"]["model"] == "tiny" and len(payload["results"][1]["samples"]) == 2


def test_runner_rejects_bad_settings(tiny_llava):
    with pytest.raises(ValueError, match="repeats"):
        run(tiny_llava, tiny_inputs(tiny_llava, [1]), [], repeats=0)


def test_bench_command_writes_markdown_json_and_csv(tmp_path, capsys):
    code = main(
        [
            "bench",
            "--model",
            "tiny",
            "--device",
            "cpu",
            "--methods",
            "uniform,pool",
            "--budgets",
            "36",
            "--repeats",
            "1",
            "--warmup",
            "0",
            "--new-tokens",
            "2",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "| pool | 36 | 36 |" in printed and "| uniform | 36 | 36 |" in printed
    assert {p.name for p in tmp_path.iterdir()} == {"bench.md", "bench.json", "bench.csv"}
    assert len(json.loads((tmp_path / "bench.json").read_text())["results"]) == 3


def test_bench_command_fails_fast_on_an_unknown_method():
    with pytest.raises(vlmc.UnknownMethodError, match="valid methods"):
        main(["bench", "--model", "tiny", "--methods", "nope"])


def test_synthetic_llava_15_7b_has_the_real_widths():
    with torch.device("meta"):
        model = SYNTHETIC["llava-1.5-7b"](2, 24)
    text, vision = model.config.text_config, model.config.vision_config
    assert (text.hidden_size, text.intermediate_size, text.num_attention_heads, text.num_hidden_layers) == (
        4096,
        11008,
        32,
        2,
    )
    assert (vision.image_size // vision.patch_size) ** 2 == 576 and vision.num_hidden_layers == 24
    inputs = tiny_inputs(model, [1], text_lengths=[35])
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == 576


def test_toy_processor_expands_the_image_marker(tiny_llava):
    from vlm_compress.zoo.inputs import example_scenes

    processor = ToyProcessor(tiny_llava)
    inputs = prompt_inputs(processor, example_scenes()[0], "What colour?")
    assert int((inputs["input_ids"] == tiny_llava.config.image_token_id).sum()) == 144
    assert inputs["pixel_values"].shape == (1, 3, 96, 96)
    assert processor.decode(processor(text="ab")["input_ids"][0]) == "ab"


def test_the_default_model_explains_what_to_do_when_it_is_missing(monkeypatch, tmp_path):
    from vlm_compress import zoo
    from vlm_compress.zoo import loading

    monkeypatch.setattr(loading, "CHECKPOINTS_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="vlmc zoo train --out"):
        zoo.load("shapes")


def test_a_setting_patches_with_its_method_budget_and_hyper_parameters(tiny_llava):
    """``Setting.compress`` is how eval, bench and the demo patch a model for one sweep point."""
    inputs = tiny_inputs(tiny_llava, [1], seed=3)
    setting = Setting.of("todre", 4, relevance_keep=0.5, diversity="max_sum")
    assert setting == Setting("todre", 4, (("diversity", "max_sum"), ("relevance_keep", 0.5)))
    assert setting.label == "todre@4" and setting.key == "todre-4"
    tiny_llava(**inputs)  # transformers installs its own output-capture hooks on a model's first forward
    before = hook_state(tiny_llava)
    with setting.compress(tiny_llava, position_ids="contiguous") as run:
        tiny_llava(**inputs)
    assert run.method.diversity == "max_sum" and run.method.budget == 4
    assert run.report.position_ids == "contiguous"
    assert [r.tokens_after for r in run.report.images] == [4]
    assert hook_state(tiny_llava) == before
    with pytest.raises(ValueError, match="nothing to patch"):
        Setting(FULL).compress(tiny_llava)
