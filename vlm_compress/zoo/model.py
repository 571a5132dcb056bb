"""The embedded ShapesVQA model: config, word-level tokenizer, processor, prompt format and batch encoding.

Everything here builds real transformers objects (``LlavaForConditionalGeneration``, ``PreTrainedTokenizerFast``,
``CLIPImageProcessor``, ``LlavaProcessor``) so the saved checkpoint loads through ``from_pretrained`` like a
HuggingFace one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image

from . import shapes
from .inputs import conversation

IMAGE_TOKEN = "<image>"
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>", IMAGE_TOKEN)
PAD_ID, BOS_ID, EOS_ID, UNK_ID, IMAGE_TOKEN_ID = range(len(SPECIAL_TOKENS))
# CLIP's normalisation, as in LLaVA-1.5's image processor.
IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)
# LLaVA-1.5's conversation format: "USER: <image>\n<question> ASSISTANT: <answer></s>".
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: "
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}<image>\n{% endif %}{% endfor %}"
    "{% for content in message['content'] %}{% if content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %} "
    "{% else %}ASSISTANT: "
    "{% for content in message['content'] %}{% if content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}</s>"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
# Greedy decoding of a one-word answer (the answer token, then </s>).
GENERATION_KWARGS = {"do_sample": False, "max_new_tokens": 3}


@dataclass
class ModelDims:
    """Sizes of the embedded model; the defaults are the shipped checkpoint's."""

    image_size: int = shapes.DEFAULT_IMAGE_SIZE
    patch_size: int = 16
    vision_hidden: int = 96
    vision_layers: int = 3
    vision_heads: int = 4
    text_hidden: int = 128
    text_layers: int = 4
    text_heads: int = 4
    text_kv_heads: int = 4
    tie_embeddings: bool = False

    @property
    def num_image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def word_list() -> list[str]:
    """The tokenizer's words after the special tokens: chat-format words, then ShapesVQA's vocabulary."""
    return ["user", "assistant", ":"] + [w for w in shapes.vocabulary() if w != ":"]


def build_tokenizer():
    """A word-level ``PreTrainedTokenizerFast`` (lower-cased, punctuation split off) with the chat template."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for word in word_list():
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", BOS_ID)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": IMAGE_TOKEN},
        padding_side="left",
        model_input_names=["input_ids", "attention_mask"],
    )
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_processor(dims: ModelDims | None = None):
    """A ``LlavaProcessor`` (``CLIPImageProcessor`` + the word-level tokenizer) giving ``dims.num_image_tokens``
    ``<image>`` tokens (144 for the shipped model)."""
    from transformers import CLIPImageProcessor, LlavaProcessor

    dims = dims or ModelDims()
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": dims.image_size},
        crop_size={"height": dims.image_size, "width": dims.image_size},
        image_mean=list(IMAGE_MEAN),
        image_std=list(IMAGE_STD),
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=build_tokenizer(),
        patch_size=dims.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
        image_token=IMAGE_TOKEN,
    )


def build_model(dims: ModelDims | None = None, *, seed: int = 0, vocab_size: int | None = None):
    """A randomly initialised ``LlavaForConditionalGeneration`` of ``dims`` (fp32, train mode)."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    dims = dims or ModelDims()
    vocab_size = vocab_size or len(SPECIAL_TOKENS) + len(word_list())
    vision = CLIPVisionConfig(
        hidden_size=dims.vision_hidden,
        intermediate_size=4 * dims.vision_hidden,
        num_hidden_layers=dims.vision_layers,
        num_attention_heads=dims.vision_heads,
        image_size=dims.image_size,
        patch_size=dims.patch_size,
        projection_dim=dims.vision_hidden,
    )
    text = LlamaConfig(
        hidden_size=dims.text_hidden,
        intermediate_size=4 * dims.text_hidden,
        num_hidden_layers=dims.text_layers,
        num_attention_heads=dims.text_heads,
        num_key_value_heads=dims.text_kv_heads,
        vocab_size=vocab_size,
        max_position_embeddings=1024,
        pad_token_id=PAD_ID,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        tie_word_embeddings=dims.tie_embeddings,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=IMAGE_TOKEN_ID,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.generation_config.update(
        pad_token_id=PAD_ID, bos_token_id=BOS_ID, eos_token_id=EOS_ID, **GENERATION_KWARGS
    )
    return model


def prompt(processor, question: str) -> str:
    """The text to give ``processor`` with one image: ``question`` in the chat template, ready for an answer."""
    return conversation(question, processor=processor)


def pixel_values(images: Sequence[Image.Image], image_size: int = shapes.DEFAULT_IMAGE_SIZE) -> torch.Tensor:
    """``[B, 3, S, S]``: what ``CLIPImageProcessor`` gives for ``image_size``-px square images, without it (fast)."""
    arrays = []
    for image in images:
        if image.size != (image_size, image_size):
            image = image.convert("RGB").resize((image_size, image_size), Image.BICUBIC)
        arrays.append(np.asarray(image.convert("RGB"), dtype=np.float32))
    batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 255.0
    mean = torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGE_STD).view(1, 3, 1, 1)
    return (batch - mean) / std


def encode_batch(
    tokenizer,
    questions: Sequence[str],
    answers: Sequence[str] | None = None,
    *,
    num_image_tokens: int | None = None,
) -> dict[str, torch.Tensor]:
    """Token ids of ``questions`` in the chat format, ``<image>`` expanded to ``num_image_tokens`` (default: the
    shipped model's 144).

    Without ``answers``: left-padded prompts for ``generate``. With ``answers``: right-padded prompt + answer +
    ``</s>`` and ``labels`` that are -100 everywhere except the answer and ``</s>`` (for training).
    """
    if num_image_tokens is None:
        num_image_tokens = ModelDims().num_image_tokens
    prefix = [BOS_ID] + tokenizer.convert_tokens_to_ids(["user", ":"]) + [IMAGE_TOKEN_ID] * num_image_tokens
    suffix = tokenizer.convert_tokens_to_ids(["assistant", ":"])
    encoded = tokenizer(list(questions), add_special_tokens=False)["input_ids"]
    rows, label_rows = [], []
    for i, question_ids in enumerate(encoded):
        row = prefix + question_ids + suffix
        labels = [-100] * len(row)
        if answers is not None:
            answer_ids = tokenizer(answers[i], add_special_tokens=False)["input_ids"] + [EOS_ID]
            row, labels = row + answer_ids, labels + answer_ids
        rows.append(row)
        label_rows.append(labels)
    length = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), length), PAD_ID, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    labels = torch.full_like(input_ids, -100)
    for b, (row, row_labels) in enumerate(zip(rows, label_rows)):
        span = slice(0, len(row)) if answers is not None else slice(length - len(row), length)
        input_ids[b, span] = torch.tensor(row)
        attention_mask[b, span] = 1
        labels[b, span] = torch.tensor(row_labels)
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    if answers is not None:
        batch["labels"] = labels
    return batch
