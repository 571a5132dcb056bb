"""Processors for the random-weight models: real transformers processors for the tiny models (word-level
tokenizers, PIL image processors) and :class:`ToyProcessor`, a character-level stand-in that needs no tokenizer.

May import torch, transformers, tokenizers, PIL and :mod:`.tiny` (the tiny models' token ids).
"""

from __future__ import annotations

from typing import Any

import torch

from .tiny import TINY_IMAGE_TOKEN_ID, TINY_QWEN_TOKENS


def tiny_next_processor(model, words: list[str] | None = None, *, padding_side: str = "left"):
    """A real ``LlavaNextProcessor`` for :func:`build_tiny`'s LLaVA-NeXT (PIL image processor, word-level tokenizer)."""
    from transformers import LlavaNextProcessor
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    vision = model.config.vision_config
    side = vision.image_size
    tokenizer = word_tokenizer(["USER:", "ASSISTANT:", *(words or [f"w{i}" for i in range(200)])])
    tokenizer.padding_side = padding_side
    return LlavaNextProcessor(
        image_processor=LlavaNextImageProcessorPil(
            size={"shortest_edge": side},
            crop_size={"height": side, "width": side},
            image_grid_pinpoints=model.config.image_grid_pinpoints,
        ),
        tokenizer=tokenizer,
        patch_size=vision.patch_size,
        vision_feature_select_strategy=model.config.vision_feature_select_strategy,
        num_additional_image_tokens=1,
        chat_template=TINY_CHAT_TEMPLATE,
    )


#: a LLaVA-1.5 style chat template: "USER: <image> question ASSISTANT:"
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'].upper() }}: "
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<image> "
    "{% else %}{{ part['text'] }} {% endif %}{% endfor %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def random_prompts(
    images_per_row: list[int],
    *,
    placeholder: str,
    sizes: list[tuple[int, int]],
    text_lengths: list[int] | None = None,
    seed: int = 0,
) -> tuple[list[str], list[list[Any]], list[tuple[int, int]]]:
    """Random prompts and images for the tiny models' real processors.

    Row ``b`` is ``<s>``, ``text_lengths[b]`` words (default ``3 + 2b``), then per image ``placeholder`` and two
    more words; the images are random RGB pictures whose ``(h, w)`` cycle through ``sizes`` (from offset ``seed``,
    over the whole batch), so one batch mixes layouts. Returns the texts, each row's images and every image's size.
    """
    import numpy as np
    from PIL import Image

    generator = torch.Generator().manual_seed(seed)
    text_lengths = text_lengths or [3 + 2 * i for i in range(len(images_per_row))]
    texts, images, used = [], [], []
    for count, text_length in zip(images_per_row, text_lengths):
        words = [f"w{int(i)}" for i in torch.randint(0, 200, (text_length + 2 * count,), generator=generator)]
        parts, row = ["<s>", *words[:text_length]], []
        for i in range(count):
            parts += [placeholder, *words[text_length + 2 * i : text_length + 2 * i + 2]]
            height, width = sizes[(len(used) + seed) % len(sizes)]
            pixels = torch.randint(0, 256, (height, width, 3), generator=generator, dtype=torch.uint8)
            row.append(Image.fromarray(np.asarray(pixels.numpy())))
            used.append((height, width))
        texts.append(" ".join(parts))
        images.append(row)
    return texts, images, used


def word_tokenizer(words: list[str], special_tokens: dict[str, int] | None = None):
    """A word-level ``PreTrainedTokenizerFast`` for the tiny models: ``<pad>`` 0, ``<s>`` 1, ``</s>`` 2, ``<unk>`` 3,
    the words from 4 on, ``<image>`` = the tiny models' image token id (or the given ``special_tokens``, each
    ``token -> id`` at the top of the vocabulary)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    special_tokens = special_tokens or {"<image>": TINY_IMAGE_TOKEN_ID}
    first_special = min(special_tokens.values())
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    for word in words:
        if len(vocab) >= first_special:
            raise ValueError(f"word_tokenizer: at most {first_special - 4} words fit the tiny vocabulary")
        vocab.setdefault(word, len(vocab))
    vocab.update(special_tokens)
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=list(special_tokens),
    )


def tiny_processor(model, words: list[str] | None = None):
    """A real ``LlavaProcessor`` matching :func:`build_tiny`'s LLaVA (word-level tokenizer, CLIP image
    processor, LLaVA-1.5 chat template), so examples run the same processor code paths as a checkpoint."""
    from transformers import CLIPImageProcessorPil, LlavaProcessor

    vision = model.config.vision_config
    side = vision.image_size
    words = words or "USER: ASSISTANT: what is in the image ? describe it".split()
    return LlavaProcessor(
        image_processor=CLIPImageProcessorPil(
            size={"shortest_edge": side}, crop_size={"height": side, "width": side}
        ),
        tokenizer=word_tokenizer(["USER:", "ASSISTANT:", *words]),
        patch_size=vision.patch_size,
        vision_feature_select_strategy=model.config.vision_feature_select_strategy,
        num_additional_image_tokens=1,
        chat_template=TINY_CHAT_TEMPLATE,
    )


#: the Qwen2-VL special tokens of the tiny Qwen models, at the ids their configs use
TINY_QWEN_SPECIALS = {
    "<|vision_start|>": TINY_QWEN_TOKENS["vision_start_token_id"],
    "<|vision_end|>": TINY_QWEN_TOKENS["vision_end_token_id"],
    "<|video_pad|>": TINY_QWEN_TOKENS["video_token_id"],
    "<|image_pad|>": TINY_IMAGE_TOKEN_ID,
}

#: Qwen2-VL's chat layout for the tiny models: "USER: <|vision_start|><|image_pad|><|vision_end|> question ASSISTANT:"
TINY_QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'].upper() }}: "
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|> "
    "{% else %}{{ part['text'] }} {% endif %}{% endfor %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def tiny_qwen_processor(
    model, words: list[str] | None = None, *, min_pixels: int = 32 * 32, max_pixels: int = 64 * 64
):
    """A real ``Qwen2VLProcessor`` for :func:`build_tiny`'s Qwen2-VL / Qwen2.5-VL (PIL image processor with the tiny
    tower's 4-px patches, word-level tokenizer with the Qwen special tokens at the tiny ids).

    Images are resized (``smart_resize``) so their pixel count lies in ``[min_pixels, max_pixels]``, in multiples
    of 8 px (patch 4 x merge 2): the defaults give 8x8 to 16x16 patches, 16 to 64 visual tokens per image.
    """
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    vision = model.config.vision_config
    tokenizer = word_tokenizer(
        ["USER:", "ASSISTANT:", *(words or [f"w{i}" for i in range(200)])], special_tokens=TINY_QWEN_SPECIALS
    )
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=vision.patch_size,
        temporal_patch_size=vision.temporal_patch_size,
        merge_size=vision.spatial_merge_size,
        min_pixels=min_pixels,
        max_pixels=max_pixels,
    )
    processor_class = _image_only_qwen_processor_class()
    return processor_class(image_processor, tokenizer, chat_template=TINY_QWEN_CHAT_TEMPLATE)


def _image_only_qwen_processor_class():
    """``Qwen2VLProcessor`` without its video processor: the video one needs torchvision, which the core
    environment cannot have beside its CPU torch (images are processed exactly as by the full processor)."""
    from transformers import ProcessorMixin, Qwen2VLProcessor

    class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
            self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    return ImageOnlyQwen2VLProcessor


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
    def __init__(self, size: int):
        self.size = {"height": size, "width": size}
        self.do_center_crop = False

    def to_tensor(self, image: Any) -> torch.Tensor:
        """``[3, S, S]``: ``image`` resized (bicubic) and normalised as CLIP does (:func:`..model.pixel_values`)."""
        from ..model import pixel_values

        return pixel_values([image], self.size["height"])[0]
