"""``vlmc zoo``: train, evaluate and inspect the embedded ShapesVQA model.

vlmc zoo train --out runs/shapes --seed 0          # the shipped recipe (resumable: --resume; --device auto)
vlmc zoo eval --split test --method random --budget 16 --image-swap
vlmc zoo show --split val -n 5                     # print questions and answers
"""

from __future__ import annotations

import argparse
import json
import logging

from ..cli import DEFAULT_BUDGET, parse_budget
from ..selection import POSITION_POLICIES


def _train(args: argparse.Namespace) -> int:
    from .model import ModelDims
    from .train import TrainConfig, train

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    overrides = {
        key: getattr(args, key)
        for key in (
            "steps",
            "vision_steps",
            "vision_images_per_step",
            "freeze_vision",
            "images_per_step",
            "questions_per_image",
            "learning_rate",
            "vision_learning_rate",
            "curriculum_steps",
            "attention_init_scale",
            "readout_weight",
            "question_weight",
            "reference_weight",
            "deep_weight",
            "keep_background",
            "dropout_steps",
            "eval_every",
            "threads",
            "device",
        )
        if getattr(args, key) is not None
    }
    dims = ModelDims() if args.vision_layers is None else ModelDims(vision_layers=args.vision_layers)
    config = TrainConfig(seed=args.seed, dims=dims, **overrides)
    summary = train(config, args.out, resume=args.resume)
    print(json.dumps({"best_val_accuracy": summary["best_val_accuracy"], "model": f"{args.out}/model"}))
    return 0


def _eval(args: argparse.Namespace) -> int:
    import torch
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from . import load, shapes
    from .evaluate import evaluate

    torch.set_num_threads(args.threads)
    if args.model is None:
        model, processor = load("shapes")
    else:
        model = LlavaForConditionalGeneration.from_pretrained(args.model).eval()
        processor = AutoProcessor.from_pretrained(args.model)
    samples = shapes.load_split(args.split, args.num_samples)
    for method in args.method or ["full"]:
        method = None if method == "full" else method
        kwargs = {} if method is None else {"budget": args.budget, "position_ids": args.position_ids}
        accuracy = evaluate(
            model,
            processor,
            samples,
            method=method,
            batch_size=args.batch_size,
            swap=args.image_swap,
            **kwargs,
        )
        row = {"method": method or "full", "budget": args.budget if method else None}
        if method is not None and args.position_ids is not None:
            row["position_ids"] = args.position_ids
        row.update(accuracy["accuracy"])
        if args.image_swap:
            row["image_swap_changed"] = accuracy["image_swap"]
        print(json.dumps(row), flush=True)
    return 0


def _show(args: argparse.Namespace) -> int:
    from . import shapes

    for sample in shapes.load_split(args.split, args.num_samples):
        print(
            f"{sample.id}  [{sample.family}{', small' if sample.small else ''}]  {sample.question} -> {sample.answer}"
        )
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("zoo", help="train, evaluate and inspect the embedded ShapesVQA model")
    commands = parser.add_subparsers(dest="zoo_command", metavar="ZOO_COMMAND", required=True)

    train = commands.add_parser("train", help="train the ShapesVQA LLaVA from scratch (CPU, resumable)")
    train.add_argument("--out", required=True, help="run directory: last.pt, model/, summary.json")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    train.add_argument("--steps", type=int, help="stage-2 (question answering) steps (default 5000)")
    train.add_argument(
        "--vision-steps",
        type=int,
        dest="vision_steps",
        help="stage-1 (vision pre-training) steps (default 2500)",
    )
    train.add_argument(
        "--curriculum-steps",
        type=int,
        dest="curriculum_steps",
        help="stage-2 steps over which scenes grow from 1 to 9 objects (default 1500; 0: none)",
    )
    train.add_argument(
        "--attention-init-scale",
        type=float,
        dest="attention_init_scale",
        help="multiply the language model's initial query/key projections (default 2)",
    )
    train.add_argument(
        "--readout-weight",
        type=float,
        dest="readout_weight",
        help="weight of the per-patch read-out loss on the vision tower's tokens (default 0.5; 0: off)",
    )
    train.add_argument(
        "--question-weight",
        type=float,
        dest="question_weight",
        help="weight of the layer-0 guidance of the answer position onto the question (default 0.5)",
    )
    train.add_argument(
        "--reference-weight",
        type=float,
        dest="reference_weight",
        help="weight of the guidance of the answer position onto the referenced objects (default 1)",
    )
    train.add_argument(
        "--deep-weight",
        type=float,
        dest="deep_weight",
        help="weight of the answer loss read out after the guided layers (deep supervision; default 1)",
    )
    train.add_argument(
        "--keep-background",
        type=float,
        dest="keep_background",
        help="share of background visual tokens kept at the start of token dropout (default 0.25; 1: off)",
    )
    train.add_argument(
        "--dropout-steps",
        type=int,
        dest="dropout_steps",
        help="answering steps over which token dropout anneals to all tokens (default 2500)",
    )
    train.add_argument(
        "--eval-every", type=int, dest="eval_every", help="validate every N steps (default 250)"
    )
    train.add_argument(
        "--vision-layers", type=int, dest="vision_layers", help="vision tower depth (default 3)"
    )
    train.add_argument("--images-per-step", type=int, dest="images_per_step")
    train.add_argument("--vision-images-per-step", type=int, dest="vision_images_per_step")
    train.add_argument(
        "--freeze-vision",
        action="store_true",
        dest="freeze_vision",
        default=None,
        help="freeze the vision tower after stage 1, as LLaVA does (default: it keeps training with the read-outs)",
    )
    train.add_argument("--questions-per-image", type=int, dest="questions_per_image")
    train.add_argument("--learning-rate", type=float, dest="learning_rate", help="stage-2 peak learning rate")
    train.add_argument(
        "--vision-learning-rate", type=float, dest="vision_learning_rate", help="stage-1 peak learning rate"
    )
    train.add_argument("--threads", type=int, help="CPU threads (default 2)")
    train.add_argument(
        "--device",
        choices=("cpu", "cuda", "auto"),
        help="where to train (default cpu; auto: CUDA if available)",
    )
    train.set_defaults(func=_train)

    evaluate = commands.add_parser("eval", help="accuracy on a ShapesVQA split, optionally under compression")
    evaluate.add_argument("--model", help="checkpoint directory (default: the shipped shapes model)")
    evaluate.add_argument("--split", default="test", choices=("val", "test"))
    evaluate.add_argument("-n", "--num-samples", type=int, dest="num_samples")
    evaluate.add_argument(
        "--method", action="append", help="compression method, or full (repeatable; default: full)"
    )
    evaluate.add_argument(
        "--budget",
        type=parse_budget,
        default=DEFAULT_BUDGET,
        help="visual tokens kept per image by --method (int) or a fraction of them (default 0.111 = 16 of 144)",
    )
    evaluate.add_argument("--batch-size", type=int, default=25, dest="batch_size")
    evaluate.add_argument(
        "--image-swap",
        action="store_true",
        dest="image_swap",
        help="also report image_swap_changed: %% of colour/shape answers that change when each image is swapped "
        "for another test scene's (0 for a model that ignores its image)",
    )
    evaluate.add_argument(
        "--position-ids",
        choices=POSITION_POLICIES,
        default=None,
        help="position ids of the kept tokens (default: each method's own, see docs/fidelity.md)",
    )
    evaluate.add_argument("--threads", type=int, default=2)
    evaluate.set_defaults(func=_eval)

    show = commands.add_parser("show", help="print ShapesVQA questions and answers")
    show.add_argument("--split", default="val", choices=("train", "val", "test"))
    show.add_argument("-n", "--num-samples", type=int, default=10, dest="num_samples")
    show.set_defaults(func=_show)
