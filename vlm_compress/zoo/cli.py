"""``vlmc zoo``: train, evaluate and inspect the embedded ShapesVQA model.

vlmc zoo train --out runs/shapes --seed 0          # reproduce the shipped checkpoint (resumable: --resume)
vlmc zoo eval --split test --method random --budget 64
vlmc zoo show --split val -n 5                     # print questions and answers
"""

from __future__ import annotations

import argparse
import json
import logging


def _train(args: argparse.Namespace) -> int:
    from .model import ModelDims
    from .train import TrainConfig, train

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    overrides = {
        key: getattr(args, key)
        for key in (
            "steps",
            "vision_steps",
            "images_per_step",
            "questions_per_image",
            "learning_rate",
            "vision_learning_rate",
            "curriculum_steps",
            "attention_init_scale",
            "attention_supervision",
            "threads",
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
        kwargs = {} if method is None else {"budget": args.budget}
        accuracy = evaluate(model, processor, samples, method=method, batch_size=args.batch_size, **kwargs)
        row = {"method": method or "full", "budget": args.budget if method else None, **accuracy["accuracy"]}
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
    train.add_argument("--steps", type=int, help="stage-2 (question answering) steps")
    train.add_argument(
        "--vision-steps", type=int, dest="vision_steps", help="stage-1 (vision pre-training) steps"
    )
    train.add_argument(
        "--curriculum-steps",
        type=int,
        dest="curriculum_steps",
        help="stage-2 steps over which scenes grow from 1 to 9 objects (0: no curriculum)",
    )
    train.add_argument(
        "--attention-init-scale",
        type=float,
        dest="attention_init_scale",
        help="multiply the language model's initial query/key projections (default 1)",
    )
    train.add_argument(
        "--attention-supervision",
        type=float,
        dest="attention_supervision",
        help="weight of the loss that steers the answer position's attention onto object patches (default 0)",
    )
    train.add_argument(
        "--vision-layers", type=int, dest="vision_layers", help="vision tower depth (default 2)"
    )
    train.add_argument("--images-per-step", type=int, dest="images_per_step")
    train.add_argument("--questions-per-image", type=int, dest="questions_per_image")
    train.add_argument("--learning-rate", type=float, dest="learning_rate", help="stage-2 peak learning rate")
    train.add_argument(
        "--vision-learning-rate", type=float, dest="vision_learning_rate", help="stage-1 peak learning rate"
    )
    train.add_argument("--threads", type=int)
    train.set_defaults(func=_train)

    evaluate = commands.add_parser("eval", help="accuracy on a ShapesVQA split, optionally under compression")
    evaluate.add_argument("--model", help="checkpoint directory (default: the shipped shapes model)")
    evaluate.add_argument("--split", default="test", choices=("val", "test"))
    evaluate.add_argument("-n", "--num-samples", type=int, dest="num_samples")
    evaluate.add_argument(
        "--method", action="append", help="compression method, or full (repeatable; default: full)"
    )
    evaluate.add_argument("--budget", type=int, default=64, help="visual tokens kept by --method")
    evaluate.add_argument("--batch-size", type=int, default=25, dest="batch_size")
    evaluate.add_argument("--threads", type=int, default=2)
    evaluate.set_defaults(func=_eval)

    show = commands.add_parser("show", help="print ShapesVQA questions and answers")
    show.add_argument("--split", default="val", choices=("train", "val", "test"))
    show.add_argument("-n", "--num-samples", type=int, default=10, dest="num_samples")
    show.set_defaults(func=_show)
