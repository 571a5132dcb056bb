"""Bad input gets a clear error that says what was wrong and what is allowed."""

from __future__ import annotations

import io
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import LlamaConfig, LlamaForCausalLM

import vlm_compress as vlmc
from vlm_compress.zoo.synthetic import (
    build_tiny,
    tiny_inputs,
    tiny_next_processor,
    tiny_processor,
    tiny_qwen3_processor,
    tiny_qwen_processor,
)
from vlm_compress.zoo.synthetic.gemma3 import tiny_gemma3_processor
from vlm_compress.zoo.synthetic.internvl import tiny_internvl_processor
from vlm_compress.zoo.synthetic.llava_onevision import tiny_onevision_processor

from .helpers import UnpatchedSnapshot


@pytest.fixture(scope="module")
def model():
    return build_tiny("llava", seed=21)


@pytest.mark.parametrize("budget", [0, -3])
def test_budget_not_positive(model, budget):
    with pytest.raises(vlmc.BudgetError, match="at least 1"):
        vlmc.compress(model, "uniform", budget=budget)


@pytest.mark.parametrize("budget", [0.0, 1.5, float("nan")])
def test_fraction_out_of_range(model, budget):
    with pytest.raises(vlmc.BudgetError, match=r"\(0, 1\]"):
        vlmc.compress(model, "uniform", budget=budget)


@pytest.mark.parametrize("budget", ["64", None, True, [64, "x"]])
def test_budget_of_the_wrong_type(model, budget):
    with pytest.raises(vlmc.BudgetError, match="int"):
        vlmc.compress(model, "uniform", budget=budget)


def test_budget_larger_than_the_image(model):
    inputs = tiny_inputs(model, [1])
    with pytest.raises(
        vlmc.BudgetError, match=r"larger than the image's 144 visual tokens; allowed: 1\.\.144"
    ):
        with vlmc.compress(model, "uniform", budget=145):
            model(**inputs)


def test_unknown_method_lists_valid_ones(model):
    with pytest.raises(vlmc.UnknownMethodError, match="valid methods: random, uniform"):
        vlmc.compress(model, "todo_method", budget=8)


def test_unknown_hyper_parameter_lists_valid_ones(model):
    with pytest.raises(TypeError, match="valid hyper-parameters: budget, order, seed"):
        vlmc.compress(model, "random", budget=8, temperature=2.0)


def test_unknown_order(model):
    with pytest.raises(ValueError, match="order must be one of"):
        vlmc.compress(model, "uniform", budget=8, order="random")


def test_order_by_score_needs_scores(model):
    inputs = tiny_inputs(model, [1])
    with pytest.raises(ValueError, match="needs per-token scores"):
        with vlmc.compress(model, "uniform", budget=8, order="score"):
            model(**inputs)


def test_unknown_position_policy(model):
    with pytest.raises(ValueError, match="position_ids must be one of"):
        vlmc.compress(model, "uniform", budget=8, position_ids="shifted")


def test_unsupported_model_lists_supported_types():
    text_model = LlamaForCausalLM(
        LlamaConfig(
            hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=50
        )
    )
    with pytest.raises(vlmc.UnsupportedModelError, match=r"model_type='llama'.*supported model types: llava"):
        vlmc.compress(text_model, "uniform", budget=8)
    with pytest.raises(vlmc.UnsupportedModelError, match="transformers model instance"):
        vlmc.compress("llava-hf/llava-1.5-7b-hf", "uniform", budget=8)


def test_unsupported_attention_implementation(model):
    model.config._attn_implementation = "paged|sdpa"
    try:
        with pytest.raises(vlmc.UnsupportedModelError, match="attention implementation 'paged|sdpa'"):
            vlmc.compress(model, "uniform", budget=8)
    finally:
        model.config._attn_implementation = "sdpa"


def test_pixel_values_that_do_not_match_the_image_tokens(model):
    inputs = tiny_inputs(model, [1])
    inputs["pixel_values"] = torch.cat([inputs["pixel_values"]] * 2)
    with pytest.raises(vlmc.InputMismatchError, match=r"2 image\(s\) give 288 visual tokens \(144\+144\) but the prompt holds 144"):
        with vlmc.compress(model, "uniform", budget=8):
            model(**inputs)


def test_pixel_values_without_image_tokens(model):
    inputs = tiny_inputs(model, [0])
    inputs["pixel_values"] = torch.randn(1, 3, 96, 96)
    with pytest.raises(vlmc.InputMismatchError, match="holds 0 <image> placeholder tokens"):
        with vlmc.compress(model, "uniform", budget=8):
            model.generate(**inputs, max_new_tokens=2)


def test_mismatched_batch_sizes(model):
    inputs = tiny_inputs(model, [1, 1])
    inputs["attention_mask"] = inputs["attention_mask"][:1]
    with pytest.raises(vlmc.InputMismatchError, match="attention_mask has shape"):
        with vlmc.compress(model, "uniform", budget=8):
            model(**inputs)


def test_nan_visual_features(model):
    inputs = tiny_inputs(model, [1, 1])
    inputs["pixel_values"][1, 0, 0, 0] = float("nan")
    with pytest.raises(vlmc.InvalidFeaturesError, match=r"image\(s\) \[1\] contain NaN or inf"):
        with vlmc.compress(model, "uniform", budget=8):
            model(**inputs)


def test_both_ids_and_embeds(model):
    inputs = tiny_inputs(model, [1])
    embeds = model.get_input_embeddings()(inputs["input_ids"])
    with pytest.raises(vlmc.InputMismatchError, match="exactly one of input_ids or inputs_embeds"):
        with vlmc.compress(model, "uniform", budget=8):
            model(**inputs, inputs_embeds=embeds)


def test_method_needing_a_missing_signal_fails_at_patch_time(model):
    from vlm_compress.methods.base import Method

    class NeedsText(Method):
        name = "needs_text"
        requires = ("prompt_text",)

    with pytest.raises(vlmc.UnsupportedModelError, match="needs prompt_text"):
        vlmc.compress(model, NeedsText(budget=8))


# -- image files: corrupt, truncated, empty, missing, too large ---------------------------------------------------


def png_bytes(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` but whose pixel data is a few bytes: only a loader that checks
    the size before decoding gets its size right (decoding would read past the data)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def noise(width: int = 64, height: int = 48, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    """Bad image files by name: random bytes with a .png name, a valid PNG / JPEG cut in half, an empty file,
    the first 20 bytes of a PNG, and huge headers."""
    folder = tmp_path_factory.mktemp("images")
    png, jpeg = png_bytes(noise()), png_bytes(noise(), "JPEG")
    contents = {
        "random.png": np.random.default_rng(1).bytes(2000),
        "half.png": png[: len(png) // 2],
        "half.jpg": jpeg[: len(jpeg) // 2],
        "header_only.png": png[:20],
        "empty.png": b"",
        "good.png": png,
        "one_pixel.png": png_bytes(Image.new("RGB", (1, 1), (200, 30, 30))),
        "144_megapixels.png": png_header(12_000, 12_000),
        "10_gigapixels.png": png_header(100_000, 100_000),
    }
    for name, data in contents.items():
        (folder / name).write_bytes(data)
    return folder


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("random.png", r"is not an image Pillow can identify; pass a PNG, JPEG"),
        ("half.png", r"is truncated or corrupt \(PNG header of 64x48, but its pixel data cannot be decoded"),
        ("half.jpg", r"is truncated or corrupt \(JPEG header of 64x48"),
        ("header_only.png", r"cannot be read as an image \(.*\); pass a PNG, JPEG"),
        ("empty.png", r"is empty \(0 bytes\); pass a PNG, JPEG"),
    ],
)
def test_a_bad_image_file_names_the_file_and_what_is_allowed(image_files, name, expected):
    from vlm_compress.images import load_image

    path = image_files / name
    with pytest.raises(vlmc.InvalidImageError, match=rf"image file '{re.escape(str(path))}' {expected}"):
        load_image(path)
    # the same bytes in memory
    in_memory = rf"image data \({path.stat().st_size} bytes\) {expected}"
    with pytest.raises(vlmc.InvalidImageError, match=in_memory):
        load_image(path.read_bytes())
    assert not isinstance(vlmc.InvalidImageError("x"), OSError)  # never mistaken for a PIL / IO error


def test_a_missing_image_file_is_also_a_file_not_found_error(image_files):
    from vlm_compress.images import load_image

    missing = r"nope\.png' does not exist; pass the path of a PNG"
    with pytest.raises(vlmc.ImageNotFoundError, match=missing) as err:
        load_image(image_files / "nope.png")
    assert isinstance(err.value, FileNotFoundError) and isinstance(err.value, vlmc.InvalidImageError)
    with pytest.raises(vlmc.ImageNotFoundError, match="is a directory"):
        load_image(image_files)
    with pytest.raises(TypeError, match="expected an image path, encoded bytes"):
        load_image(42)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        # more than Pillow's MAX_IMAGE_PIXELS (89M): refused from the header, before its pixels are decoded
        ("144_megapixels.png", r"is 12000x12000 = 144,000,000 pixels, more than the 89,478,485 allowed"),
        # more than twice that: Pillow itself refuses to open it
        ("10_gigapixels.png", r"is too large to open: .*; downscale it first"),
    ],
)
def test_a_huge_image_file_is_refused_before_decoding(image_files, name, expected):
    from vlm_compress.images import load_image

    with pytest.raises(vlmc.ImageTooLargeError, match=rf"{name}' {expected}"):
        load_image(image_files / name)
    with pytest.raises(vlmc.ImageTooLargeError, match=r"64x48 = 3,072 pixels, more than the 3,000 allowed"):
        load_image(image_files / "good.png", max_pixels=3000)


def test_good_and_one_pixel_files_load_as_rgb(image_files):
    from vlm_compress.images import load_image

    image = load_image(image_files / "good.png")
    assert image.mode == "RGB" and image.size == (64, 48)
    assert np.array_equal(np.asarray(image), np.asarray(noise()))
    assert load_image(image_files / "one_pixel.png").getpixel((0, 0)) == (200, 30, 30)
    assert load_image(Image.new("L", (3, 2))).mode == "RGB"
    with pytest.raises(vlmc.InvalidImageError, match=r"has no pixels \(0x5\)"):
        load_image(Image.new("RGB", (0, 5)))


def test_an_eval_sample_with_a_bad_image_names_the_sample_and_the_file(image_files):
    from vlm_compress.eval.tasks.base import EvalSample

    sample = EvalSample(id="q7", image=image_files / "half.png", question="?", answer="a")
    with pytest.raises(vlmc.InvalidImageError, match=r"sample q7: image file '.*half\.png' is truncated"):
        sample.load_image()
    sample = EvalSample(id="q8", image=(image_files / "random.png").read_bytes(), question="?", answer="a")
    with pytest.raises(vlmc.InvalidImageError, match=r"sample q8: image data \(2000 bytes\) is not an image"):
        sample.load_image()
    with pytest.raises(FileNotFoundError, match="sample q9: image file .* does not exist"):
        EvalSample(id="q9", image=image_files / "nope.png", question="?", answer="a").load_image()


# -- real processors: a 1x1 image, an 8000x8000 image -------------------------------------------------------------

#: model_type -> (tiny processor builder, a prompt with one image placeholder)
PROCESSORS = {
    "llava": (tiny_processor, "USER: <image> what is in the image ? ASSISTANT:"),
    "llava_next": (tiny_next_processor, "USER: <image> w1 w2 ASSISTANT:"),
    "qwen2_vl": (tiny_qwen_processor, "USER: <|vision_start|><|image_pad|><|vision_end|> w1 w2 ASSISTANT:"),
    "qwen3_vl": (tiny_qwen3_processor, "USER: <|vision_start|><|image_pad|><|vision_end|> w1 w2 ASSISTANT:"),
    "llava_onevision": (tiny_onevision_processor, "USER: <image> w1 w2 ASSISTANT:"),
    "gemma3": (tiny_gemma3_processor, "USER: <start_of_image> w1 w2 ASSISTANT:"),
    "internvl": (tiny_internvl_processor, "USER: <IMG_CONTEXT> w1 w2 ASSISTANT:"),
}


@pytest.fixture(scope="module", params=list(PROCESSORS))
def with_processor(request):
    model = build_tiny(request.param, seed=31)
    build, prompt = PROCESSORS[request.param]
    return model, build(model), prompt


def run_compressed(model, inputs, budget):
    """Full budget (must equal the unpatched logits) and ``budget`` tokens (forward and generate) under compress."""
    snapshot = UnpatchedSnapshot(model, inputs, max_new_tokens=2)
    with vlmc.compress(model, "uniform", budget=1.0):
        assert torch.equal(model(**inputs).logits, snapshot.logits)
    with vlmc.compress(model, "uniform", budget=budget) as run:
        model(**inputs)
        out = model.generate(**inputs, max_new_tokens=2, do_sample=False)
    assert [r.tokens_after for r in run.report.images] == [budget, budget]
    assert torch.equal(out[:, : inputs["input_ids"].shape[1]], inputs["input_ids"])
    snapshot.check()
    return run.report.images[0].tokens_before


def test_a_one_pixel_image_through_the_real_processor(with_processor, image_files):
    """Every processor resizes a 1x1 image up to what its tower takes: compression then works as on any image."""
    from vlm_compress.images import load_image

    model, processor, prompt = with_processor
    image = load_image(image_files / "one_pixel.png")
    inputs = dict(processor(images=[image], text=[prompt], return_tensors="pt"))
    tokens = run_compressed(model, inputs, budget=4)
    expected = {
        "llava": 144,
        "llava_next": 32,
        "qwen2_vl": 16,
        "qwen3_vl": 16,
        "llava_onevision": 32,  # the base image and one 1x1 crop layout, newlines not counted
        "gemma3": 16,
        "internvl": 16,  # one tile, no thumbnail
    }[model.config.model_type]
    assert tokens == expected


def peak_rss_since_reset() -> int:
    """Peak resident memory (bytes) of this process since the last :func:`reset_peak_rss`."""
    return 1024 * int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def reset_peak_rss() -> int:
    Path("/proc/self/clear_refs").write_text("5")
    return peak_rss_since_reset()


@pytest.mark.slow
def test_an_8000x8000_image_is_resized_by_the_processor(with_processor):
    """64 megapixels: every processor resizes to a bounded size (LLaVA: the tower's square; LLaVA-NeXT: the
    largest grid pinpoint; Qwen2-VL: at most max_pixels), so the model's input does not grow with the image and
    the process's peak memory is the decoded image plus the processor's temporary copies."""
    model, processor, prompt = with_processor
    model_type = model.config.model_type
    image = Image.new("RGB", (8000, 8000), (30, 120, 200))
    start = reset_peak_rss()
    inputs = dict(processor(images=[image], text=[prompt], return_tensors="pt"))
    bounded = {
        "llava": lambda: tuple(inputs["pixel_values"].shape) == (1, 3, 96, 96),
        # the thumbnail and 2x2 crops of the largest pinpoint
        "llava_next": lambda: tuple(inputs["pixel_values"].shape) == (1, 5, 3, 32, 32),
        "qwen2_vl": lambda: inputs["image_grid_thw"].tolist() == [[1, 16, 16]],  # 64x64 px = max_pixels
        "qwen3_vl": lambda: inputs["image_grid_thw"].tolist() == [[1, 16, 16]],
        # the base image and the 2x2 crops of the largest pinpoint
        "llava_onevision": lambda: tuple(inputs["pixel_values"].shape) == (1, 5, 3, 32, 32),
        "gemma3": lambda: tuple(inputs["pixel_values"].shape) == (1, 3, 32, 32),
        # at most max_patches=4 crops (2x2 for a square) and the thumbnail
        "internvl": lambda: tuple(inputs["pixel_values"].shape) == (5, 3, 32, 32),
    }
    assert bounded[model_type]()
    # measured: ~610 MB over the 192 MB image for the CLIP / LLaVA-NeXT processors, ~375 MB for Qwen2-VL's
    assert peak_rss_since_reset() - start < 1.5 * 2**30
    start = reset_peak_rss()
    tokens = run_compressed(model, inputs, budget=4)
    expected = {"llava": 144, "llava_next": 80, "qwen2_vl": 64, "qwen3_vl": 64, "llava_onevision": 41, "gemma3": 16}
    assert tokens == {**expected, "internvl": 80}[model_type]
    assert peak_rss_since_reset() - start < 256 * 2**20  # the model side does not grow with the image


# -- more (or fewer) image placeholders in the prompt than images ------------------------------------------------


def drop_last_image(model, inputs):
    """``inputs`` of a prompt with two images, with only the first image's pixels left."""
    out = dict(inputs)
    if model.config.model_type == "qwen2_vl":
        first = int(inputs["image_grid_thw"][0].prod())
        out["pixel_values"] = inputs["pixel_values"][:first]
        out["image_grid_thw"] = inputs["image_grid_thw"][:1]
    else:
        out["pixel_values"] = inputs["pixel_values"][:1]
        if "image_sizes" in inputs:
            out["image_sizes"] = inputs["image_sizes"][:1]
    return out


def add_an_image(model, inputs):
    """``inputs`` of a prompt with one image, with the pixels of a second image added."""
    out = dict(inputs)
    for name in ("pixel_values", "image_grid_thw", "image_sizes"):
        if name in inputs:
            out[name] = torch.cat([inputs[name], inputs[name]])
    return out


PLACEHOLDER_MESSAGES = {
    "llava": {
        "more": r"more image placeholders than images: 2 <image> placeholder\(s\) for 1 image\(s\): the 1 "
        r"image\(s\) give 144 visual tokens \(144\) but the prompt holds 288 <image> placeholder tokens; put "
        r"exactly one <image> in the text per image",
        "fewer": r"fewer image placeholders than images: 1 <image> placeholder\(s\) for 2 image\(s\): the 2 "
        r"image\(s\) give 288 visual tokens \(144\+144\) but the prompt holds 144",
    },
    "llava_next": {
        "more": r"the prompt's <image> placeholders \(2 separate run\(s\) of tokens\) do not match the 1 "
        r"image\(s\) given: the 1 image\(s\) give 88 visual tokens \(88\) but the prompt holds 160 <image>",
        "fewer": r"<image> placeholders \(1 separate run\(s\) of tokens\) do not match the 2 image\(s\) given: "
        r"the 2 image\(s\) give 176 visual tokens \(88\+88\) but the prompt holds 88 <image> placeholder tokens",
    },
    "qwen2_vl": {
        "more": r"more image placeholders than images: 2 <\|image_pad\|> placeholder\(s\) for 1 image\(s\): "
        r"the 1 image\(s\) give 16 visual tokens \(16\) but the prompt holds 40 <\|image_pad\|>",
        "fewer": r"fewer image placeholders than images: 1 <\|image_pad\|> placeholder\(s\) for 2 image\(s\): "
        r"the 2 image\(s\) give 32 visual tokens \(16\+16\) but the prompt holds 16",
    },
}


@pytest.fixture(scope="module", params=["llava", "llava_next", "qwen2_vl"])
def family(request):
    return build_tiny(request.param, seed=32)


@pytest.mark.parametrize("call", ["forward", "generate"])
@pytest.mark.parametrize("placeholders", ["more", "fewer"])
def test_placeholders_that_do_not_match_the_images(family, placeholders, call):
    model = family
    if placeholders == "more":
        good = tiny_inputs(model, [2], seed=33)
        bad = drop_last_image(model, good)
    else:
        good = tiny_inputs(model, [1], seed=33)
        bad = add_an_image(model, good)
    snapshot = UnpatchedSnapshot(model, good, max_new_tokens=2)
    expected = PLACEHOLDER_MESSAGES[model.config.model_type][placeholders]
    with pytest.raises(vlmc.InputMismatchError, match=expected), vlmc.compress(model, "uniform", budget=4):
        model(**bad) if call == "forward" else model.generate(**bad, max_new_tokens=2)
    snapshot.check()


def test_qwen_pixel_values_that_do_not_match_the_grid():
    model = build_tiny("qwen2_vl", seed=34)
    inputs = tiny_inputs(model, [1], seed=35)
    inputs["pixel_values"] = inputs["pixel_values"][:60]
    with pytest.raises(
        vlmc.InputMismatchError,
        match=r"pixel_values hold 60 patches but image_grid_thw \[\[1, 8, 8\]\] describes 1 image\(s\) of 64 patches",
    ):
        with vlmc.compress(model, "uniform", budget=4):
            model(**inputs)
    assert vlmc.active_handle(model) is None


def test_a_question_holding_an_image_placeholder():
    """The processor would refuse the prompt with its own ValueError; the prompt builder says why first."""
    from vlm_compress.zoo.inputs import prompt_inputs

    model = build_tiny("llava", seed=36)
    processor = tiny_processor(model)
    with pytest.raises(
        vlmc.InputMismatchError,
        match=r"the question holds 1 image placeholder\(s\) '<image>', so the prompt would hold 2 placeholders for "
        r"1 image; the prompt template adds the one placeholder itself: remove '<image>' from the question",
    ):
        prompt_inputs(processor, Image.new("RGB", (8, 8)), "what is <image> ?")


# -- half precision: bf16 and fp16 models --------------------------------------------------------------------------


@pytest.fixture(
    scope="module",
    params=[(t, d) for t in ("llava", "llava_next", "qwen2_vl", "internvl") for d in ("bf16", "fp16")],
    ids="-".join,
)
def half_model(request):
    model_type, dtype = request.param
    model = build_tiny(model_type, seed=37).to({"bf16": torch.bfloat16, "fp16": torch.float16}[dtype])
    inputs = tiny_inputs(model, [2, 1], seed=38)
    inputs = {k: v.to(model.dtype) if v.is_floating_point() else v for k, v in inputs.items()}
    return model, inputs, UnpatchedSnapshot(model, inputs, max_new_tokens=2)


#: methods whose budget of 4 is not what one step keeps: PyramidDrop keeps it after its first stage, then fewer;
#: SparseVLM's budget is an average over the layers (its first stage keeps more, merged tokens included);
#: MustDrop merges whole windows, so its merge stage keeps at least the budget; DivPrune may spend some of it on
#: LLaVA-NeXT's newline tokens, as its official code does
BUDGET_NOT_KEPT_IN_ONE_STEP = {
    "divprune": lambda record, kept: record.tokens_after + record.info.get("newlines", 0) == 4,
    "pdrop": lambda record, kept: kept[0] == 4 and kept == sorted(kept, reverse=True),
    "sparsevlm": lambda record, kept: len(kept) > 1 and all(k < record.tokens_before for k in kept),
    "mustdrop": lambda record, kept: 4 <= record.tokens_after < record.tokens_before,
}


@pytest.mark.parametrize("method", vlmc.list_methods())
def test_half_precision_models(half_model, method):
    """Every method on bf16 / fp16 models: the full budget reproduces the unpatched logits exactly in that dtype,
    a small budget keeps that many tokens (inside the language model for FastV), generate runs."""
    model, inputs, snapshot = half_model
    with vlmc.compress(model, method, budget=1.0):
        logits = model(**inputs).logits
    assert logits.dtype == model.dtype and torch.equal(logits, snapshot.logits)
    with vlmc.compress(model, method, budget=4) as run:
        out = model.generate(**inputs, max_new_tokens=2, do_sample=False)
    for record in run.report.images:
        kept = list(record.info.get("llm_kept", {}).values())
        if method in BUDGET_NOT_KEPT_IN_ONE_STEP:
            assert BUDGET_NOT_KEPT_IN_ONE_STEP[method](record, kept)
        elif record.tokens_after == record.tokens_before:  # an in-LLM method: it prunes at its layer
            assert kept == [4]
        else:
            assert record.tokens_after == 4
        features = record.selection.features
        assert features is None or features.dtype == model.dtype
    assert out.shape == (2, inputs["input_ids"].shape[1] + 2)
    snapshot.check()


# -- a model on the meta device ---------------------------------------------------------------------------------------


def meta_llava():
    with torch.device("meta"):
        return build_tiny("llava", seed=39)


def empty_weights_llava():
    accelerate = pytest.importorskip("accelerate")
    with accelerate.init_empty_weights():
        return build_tiny("llava", seed=39)


@pytest.mark.parametrize("build", [meta_llava, empty_weights_llava])
@pytest.mark.parametrize("method", ["uniform", "fastv"])
def test_a_model_on_the_meta_device(build, method):
    model = build()
    snapshot = UnpatchedSnapshot(model)  # it cannot run: only its hooks are compared
    with pytest.raises(
        vlmc.UnsupportedModelError,
        match=r"of this LlavaForConditionalGeneration are on the meta device \(e\.g\. 'model\.vision_tower\..*'\): "
        r"it was built without its weights .* load the weights first",
    ):
        vlmc.compress(model, method, budget=8)
    snapshot.check()


def test_an_offloaded_model_is_not_mistaken_for_an_empty_one():
    """accelerate's offloading also leaves weights on meta, but its hooks load them for every call."""
    accelerate = pytest.importorskip("accelerate")
    model = build_tiny("llava", seed=40)
    inputs = tiny_inputs(model, [1], seed=41)
    reference = model(**inputs).logits
    accelerate.cpu_offload(model, execution_device="cpu")
    assert all(p.is_meta for p in model.parameters())
    with vlmc.compress(model, "uniform", budget=1.0):
        assert torch.equal(model(**inputs).logits, reference)
    with vlmc.compress(model, "uniform", budget=8) as run:
        model(**inputs)
    assert run.report.images[0].tokens_after == 8


def test_a_budget_set_after_construction_is_validated_too(model):
    """A method validates its budget whenever it is set; the per-image resolution in a call trusts it."""
    method = vlmc.get_method("uniform", budget=8)
    with pytest.raises(vlmc.BudgetError, match="at least 1"):
        method.budget = 0
    assert method.budget == 8


def test_a_static_cache_is_refused_by_in_llm_pruning_and_works_before_the_llm():
    import warnings

    model = build_tiny("llava", seed=3)
    inputs = tiny_inputs(model, [1, 1], seed=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with vlmc.compress(model, "uniform", budget=0.25):
            static = model.generate(**inputs, max_new_tokens=3, do_sample=False, cache_implementation="static")
            dynamic = model.generate(**inputs, max_new_tokens=3, do_sample=False)
        assert torch.equal(static, dynamic)
        with (
            pytest.raises(vlmc.UnsupportedModelError, match="a StaticCache has one fixed length for every layer"),
            vlmc.compress(model, "fastv", budget=0.25),
        ):
            model.generate(**inputs, max_new_tokens=3, do_sample=False, cache_implementation="static")
