"""Models to measure: the embedded default, any local checkpoint, real-width random models, a toy for tests.

``load(spec)`` understands ``"shapes"`` (the embedded ShapesVQA model, :func:`vlm_compress.zoo.load`), ``"tiny"``
(a tiny random-weight LLaVA with a character-level :class:`ToyProcessor`, for tests and smoke runs) and any
other string as a HuggingFace id or a local path (``from_pretrained``; the hub is not reachable offline).
:func:`synthetic` builds the real widths of a 7B model with only a few decoder layers and random weights.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "shapes"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {name!r}")
    return DTYPES[name]


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA when available, else the CPU; ``cuda`` without a GPU is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but torch sees no CUDA GPU; use --device cpu or auto")
    return torch.device(name)


class ToyProcessor:
    """A stand-in processor for the tiny random models: characters -> ids, CLIP-like pixel normalisation.

    ``processor(images=[...], text=[...], return_tensors="pt")`` gives what a ``LlavaProcessor`` gives: every
    ``<image>`` in the text expanded to the model's ``N`` image tokens, ``pixel_values`` of the tower's size.
    Its answers are meaningless (random weights); it exists so the demo and bench run without a checkpoint.
    """

    image_marker = "<image>"

    def __init__(self, model: Any):
        config = model.config
        self.image_size = config.vision_config.image_size
        self.num_image_tokens = (self.image_size // config.vision_config.patch_size) ** 2
        self.image_token_id = config.image_token_id
        self.vocab_size = config.text_config.vocab_size
        self.bos_token_id, self.pad_token_id = 1, 0
        self.image_processor = _ToyImageProcessor(self.image_size)
        self.tokenizer = self
        self.chat_template = None

    def _encode_text(self, text: str) -> list[int]:
        ids = [self.bos_token_id]
        for i, part in enumerate(text.split(self.image_marker)):
            if i:
                ids += [self.image_token_id] * self.num_image_tokens
            ids += [3 + (ord(ch) - 32) % 95 for ch in part]
        return ids

    def __call__(
        self, images: Any = None, text: Any = None, return_tensors: str = "pt", **kwargs: Any
    ) -> dict:
        if text is None and _is_text(images):  # called as the tokenizer: ``tokenizer(words, ...)``
            return self._tokenize(images, **kwargs)
        if text is None:
            raise ValueError("the toy processor needs text (a prompt with one <image> per image)")
        texts = [text] if isinstance(text, str) else list(text)
        rows = [self._encode_text(t) for t in texts]
        length = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        for b, row in enumerate(rows):
            input_ids[b, length - len(row) :] = torch.tensor(row)
            attention_mask[b, length - len(row) :] = 1
        out = {"input_ids": input_ids, "attention_mask": attention_mask}
        if images is not None:
            images = images if isinstance(images, (list, tuple)) else [images]
            out["pixel_values"] = torch.stack([self.image_processor.to_tensor(im) for im in images])
        return out

    def _tokenize(
        self, text: Any, *, is_split_into_words: bool = False, add_special_tokens: bool = True, **_: Any
    ) -> dict:
        """The tokenizer side: one row of ids per text, or one row for a list of words when
        ``is_split_into_words`` (words joined by spaces, as a word-level tokenizer would see them)."""
        if is_split_into_words:
            text = " ".join(text)
        rows = [
            self._encode_text(t)[0 if add_special_tokens else 1 :]
            for t in ([text] if isinstance(text, str) else text)
        ]
        return {"input_ids": rows[0] if isinstance(text, str) else rows}

    def decode(self, ids: Any, skip_special_tokens: bool = True, **_: Any) -> str:
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        special = {self.bos_token_id, self.pad_token_id, 2, self.image_token_id}
        return "".join(chr(32 + (i - 3) % 95) for i in ids if not (skip_special_tokens and i in special))

    def batch_decode(self, sequences: Any, **kwargs: Any) -> list[str]:
        return [self.decode(row, **kwargs) for row in sequences]


def _is_text(value: Any) -> bool:
    return isinstance(value, str) or (
        isinstance(value, (list, tuple)) and bool(value) and all(isinstance(v, str) for v in value)
    )


class _ToyImageProcessor:
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073])[:, None, None]
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711])[:, None, None]

    def __init__(self, size: int):
        self.size = {"height": size, "width": size}
        self.do_center_crop = False

    def to_tensor(self, image: Any) -> torch.Tensor:
        import numpy as np
        from PIL import Image

        image = image.convert("RGB").resize((self.size["width"], self.size["height"]), Image.BICUBIC)
        array = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return (array - self.mean) / self.std


def load(spec: str = DEFAULT_MODEL, *, dtype: torch.dtype = torch.float32, device: Any = "cpu"):
    """``(model, processor)`` for ``spec`` in eval mode on ``device``; see the module docstring."""
    if spec == "tiny":
        from ..zoo.synthetic import build_tiny

        model = build_tiny("llava")
        processor = ToyProcessor(model)
    elif spec == DEFAULT_MODEL:
        from .. import zoo

        if not hasattr(zoo, "load"):
            raise RuntimeError(
                "the embedded 'shapes' model is not part of this install yet; pass --model <hf id or local "
                "path> (or --model tiny for a random-weight smoke run)"
            )
        model, processor = zoo.load("shapes")
    else:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        try:
            processor = AutoProcessor.from_pretrained(spec)
            model = AutoModelForImageTextToText.from_pretrained(spec, dtype=dtype)
        except OSError as err:
            raise RuntimeError(
                f"could not load {spec!r}: {err}. Pass a local checkpoint directory (the hub may be unreachable)"
            ) from None
    return model.to(device=device, dtype=dtype).eval(), processor


def _llama_text_config(**overrides: Any):
    from transformers import LlamaConfig

    params = dict(
        hidden_size=4096,
        intermediate_size=11008,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=32064,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    params.update(overrides)
    return LlamaConfig(**params)


def _clip_vit_l_336(num_layers: int):
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=1024,
        intermediate_size=4096,
        num_attention_heads=16,
        num_hidden_layers=num_layers,
        image_size=336,
        patch_size=14,
        projection_dim=768,
    )


def _llava_15_7b(layers: int, vision_layers: int):
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    config = LlavaConfig(
        vision_config=_clip_vit_l_336(vision_layers),
        text_config=_llama_text_config(num_hidden_layers=layers),
        image_token_id=32000,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    return LlavaForConditionalGeneration(config)


def _llava_next_7b(layers: int, vision_layers: int):
    """LLaVA-NeXT (Vicuna-7B): CLIP-L/336 with AnyRes pinpoints up to 672x672 (2,880 visual tokens)."""
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration

    from ..zoo.synthetic import TINY_IMAGE_TOKEN_ID

    config = LlavaNextConfig(
        vision_config=_clip_vit_l_336(vision_layers),
        text_config=_llama_text_config(num_hidden_layers=layers),
        image_token_id=TINY_IMAGE_TOKEN_ID,  # the id the tiny processors use for <image>
        image_grid_pinpoints=[[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]],
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    return LlavaNextForConditionalGeneration(config)


def _qwen2_vl_7b(layers: int, vision_layers: int):
    """Qwen2-VL-7B: 32-block ViT (1280 wide, 14-px patches, 2x2 merger), Qwen2-7B text with M-RoPE."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    from ..zoo.synthetic import TINY_IMAGE_TOKEN_ID, TINY_QWEN_TOKENS

    config = Qwen2VLConfig(
        vision_config=dict(
            depth=vision_layers,
            embed_dim=1280,
            hidden_size=3584,
            num_heads=16,
            mlp_ratio=4,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            in_channels=3,
        ),
        text_config=dict(
            hidden_size=3584,
            intermediate_size=18944,
            num_hidden_layers=layers,
            num_attention_heads=28,
            num_key_value_heads=4,
            vocab_size=152064,
            max_position_embeddings=32768,
            pad_token_id=0,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
        ),
        image_token_id=TINY_IMAGE_TOKEN_ID,
        **TINY_QWEN_TOKENS,
    )
    return Qwen2VLForConditionalGeneration(config)


SYNTHETIC = {"llava-1.5-7b": _llava_15_7b, "llava-next-7b": _llava_next_7b, "qwen2-vl-7b": _qwen2_vl_7b}
#: patch grid of the synthetic Qwen2-VL image: 448x448 px -> 32x32 patches -> 256 visual tokens
QWEN_SYNTHETIC_GRID = (1, 32, 32)


def synthetic_inputs(model, text_tokens: int = 40) -> dict[str, torch.Tensor]:
    """One prompt with one image of a realistic size for a :func:`synthetic` model (576 tokens for LLaVA-1.5,
    a 672x672-class AnyRes image for LLaVA-NeXT, 256 merged tokens for Qwen2-VL)."""
    from ..zoo import synthetic as tiny

    if model.config.model_type == "qwen2_vl":
        return tiny.qwen_inputs(model, [1], text_lengths=[text_tokens], grids=(QWEN_SYNTHETIC_GRID,))
    # seed 3 picks the square image of TINY_NEXT_IMAGE_SIZES: the 672x672 pinpoint, 2x2 crops (2,880 tokens)
    seed = 3 if model.config.model_type == "llava_next" else 0
    return tiny.tiny_inputs(model, [1], text_lengths=[text_tokens], seed=seed)


def synthetic(
    name: str,
    *,
    layers: int = 2,
    vision_layers: int = 24,
    dtype: torch.dtype = torch.float32,
    device: Any = "cpu",
    seed: int = 0,
):
    """A random-weight model with the real widths of ``name`` but ``layers`` decoder layers.

    ``vision_layers`` (default: the real 24) can be lowered too: the vision tower runs once per image whatever
    the method, so it changes end-to-end figures but not the language-model prefill ratio.
    """
    if name not in SYNTHETIC:
        raise ValueError(f"unknown synthetic shape {name!r}; available: {', '.join(SYNTHETIC)}")
    if layers < 1 or vision_layers < 2:
        raise ValueError(f"need layers >= 1 and vision_layers >= 2, got {layers} and {vision_layers}")
    torch.manual_seed(seed)
    with torch.device("meta"):
        model = SYNTHETIC[name](layers, vision_layers)
    # materialise directly in the target dtype/device: a 7B-wide model is GBs in fp32
    model = model.to_empty(device=device).to(dtype)
    _init_random(model)
    model.generation_config.pad_token_id = 0
    return model.eval()


@torch.no_grad()
def _init_random(model: torch.nn.Module) -> None:
    """Small random weights (std 0.02), unit norms, zero biases: stable activations through the layers."""
    for name, param in model.named_parameters():
        if name.endswith("bias"):
            param.zero_()
        elif param.ndim == 1:
            param.fill_(1.0)
        else:
            param.normal_(0.0, 0.02)
    for name, buffer in model.named_buffers():
        if "inv_freq" in name:
            dim = buffer.numel() * 2
            base = 10000.0
            buffer.copy_(1.0 / (base ** (torch.arange(0, dim, 2, device=buffer.device).float() / dim)))
        elif "position_ids" in name:
            buffer.copy_(torch.arange(buffer.shape[-1], device=buffer.device).expand_as(buffer))


def chat_prompt(processor: Any, question: str) -> str:
    """``question`` about one image in the processor's chat template (LLaVA-1.5's format without one)."""
    if getattr(processor, "chat_template", None):
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        return processor.apply_chat_template(messages, add_generation_prompt=True)
    return f"USER: <image>\n{question} ASSISTANT:"


def prompt_inputs(processor: Any, image: Any, question: str, device: Any = "cpu", dtype: Any = None) -> dict:
    """Processor outputs for one image and one question, on ``device`` (floating inputs cast to ``dtype``).

    The prompt template puts the one image placeholder; a question that holds another raises
    :class:`~vlm_compress.errors.InputMismatchError` (the prompt would hold more placeholders than images).
    """
    marker = getattr(processor, "image_token", None) or getattr(processor, "image_marker", None) or "<image>"
    if isinstance(marker, str) and marker in question:
        from ..errors import InputMismatchError

        count = question.count(marker)
        raise InputMismatchError(
            f"the question holds {count} image placeholder(s) {marker!r}, so the prompt would hold {count + 1} "
            f"placeholders for 1 image; the prompt template adds the one placeholder itself: remove {marker!r} "
            "from the question"
        )
    inputs = processor(images=[image], text=[chat_prompt(processor, question)], return_tensors="pt")
    out = {}
    for key, value in dict(inputs).items():
        if isinstance(value, torch.Tensor):
            value = value.to(device)
            if dtype is not None and value.is_floating_point():
                value = value.to(dtype)
        out[key] = value
    return out


# (shape, colour, centre x, centre y, radius) as fractions of the side; small shapes make pruning matter
_SCENES = [
    [
        ("circle", "red", 0.3, 0.3, 0.15),
        ("square", "blue", 0.7, 0.65, 0.12),
        ("triangle", "green", 0.8, 0.2, 0.05),
    ],
    [("square", "yellow", 0.5, 0.5, 0.25), ("circle", "purple", 0.15, 0.85, 0.06)],
    [
        ("triangle", "orange", 0.25, 0.7, 0.18),
        ("circle", "cyan", 0.75, 0.3, 0.1),
        ("square", "red", 0.9, 0.9, 0.04),
    ],
]


def example_scenes(size: int = 336) -> list[Any]:
    """A few rendered scenes of coloured shapes (deterministic, no download)."""
    from PIL import Image, ImageDraw

    scenes = []
    for shapes in _SCENES:
        image = Image.new("RGB", (size, size), (235, 235, 230))
        draw = ImageDraw.Draw(image)
        for kind, colour, cx, cy, radius in shapes:
            x, y, r = cx * size, cy * size, radius * size
            if kind == "circle":
                draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)
            elif kind == "square":
                draw.rectangle((x - r, y - r, x + r, y + r), fill=colour)
            else:
                draw.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=colour)
        scenes.append(image)
    return scenes
