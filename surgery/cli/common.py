"""Shared CLI plumbing: model and data arguments turned into models, token windows, batches."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

from surgery.data import text as textdata
from surgery.data.images import load_images
from surgery.data.windows import calib_windows, eval_windows, tokenize
from surgery.errors import SurgeryError, require  # noqa: F401 (re-exported)
from surgery.models.io import load_model


def progress_enabled() -> bool:
    return sys.stderr.isatty()


def add_model_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    g = p.add_mutually_exclusive_group(required=required)
    g.add_argument("--model", help="model folder (save_pretrained layout or a surgery vision model)")
    g.add_argument("--reference", help="a reference model name (built and cached if needed)")
    p.add_argument("--data-dir", help="benchmark data folder (default: $SURGERY_DATA_DIR)")


def add_text_args(p: argparse.ArgumentParser, multiple: bool = False) -> None:
    p.add_argument("--data", action="append" if multiple else "store",
                   help="text: file, folder of .txt, WikiText raw file, or hub id[:config]; "
                   "'embedded:train|test', 'shakespeare:train|valid|test', 'wikitext2'"
                   + (" (repeatable)" if multiple else ""))
    p.add_argument("--split", default="test", help="hub dataset split (default: test)")
    p.add_argument("--seqlen", type=int, default=128, help="tokens per window (default: 128)")
    p.add_argument("--nsamples", type=int, default=None,
                   help="random calibration windows (default: all non-overlapping windows)")
    p.add_argument("--max-windows", type=int, default=None, help="cap on evaluation windows")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=8)


def add_image_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--images", choices=["cifar10", "mnist", "digits"], help="image data set")
    p.add_argument("--image-split", default="train", choices=["train", "test"])
    p.add_argument("--classes", type=int, nargs="*", default=None,
                   help="keep only these classes (e.g. the class to forget)")


def get_model(args: argparse.Namespace) -> tuple[torch.nn.Module, Any, Path]:
    if getattr(args, "reference", None):
        from surgery.reference import load_reference

        return load_reference(args.reference, args.data_dir, progress=progress_enabled())
    model, tok = load_model(args.model)
    model.eval()
    return model, tok, Path(args.model)


def read_text(source: str, split: str, data_dir: str | None) -> str:
    """Joined text for a `--data` value."""
    if source.startswith("embedded:"):
        part = source.split(":", 1)[1]
        splits = textdata.embedded()
        require(part in splits, f"embedded corpus has splits {sorted(splits)}, not {part!r}")
        return textdata.join(splits[part])
    if source.startswith("shakespeare:train-without:"):
        name = source.split(":", 2)[2]
        train = textdata.shakespeare(data_dir)["train"]
        require(name in train, f"{name!r} is not a training work")
        return textdata.join({k: v for k, v in train.items() if k != name})
    if source.startswith("shakespeare:"):  # after the more specific "shakespeare:train-without:"
        part = source.split(":", 1)[1]
        splits = textdata.shakespeare(data_dir)
        require(part in splits, f"shakespeare has splits {sorted(splits)}, not {part!r}")
        return textdata.join(splits[part])
    if source.startswith("shakespeare-work:"):
        name = source.split(":", 1)[1]
        works = textdata.read_documents(textdata.data_dir(data_dir) / "text" / "shakespeare")
        require(name in works, f"no Shakespeare work {name!r}; works: {', '.join(sorted(works))}")
        return works[name]
    if source == "wikitext2":
        return textdata.wikitext2_test(data_dir)
    return textdata.load_text(source, split)


def text_windows(args: argparse.Namespace, tokenizer: Any) -> torch.Tensor:
    """Evaluation windows, or seeded calibration windows when `--nsamples` is given."""
    require(args.data is not None, "--data is required for a language model")
    require(tokenizer is not None, "the model folder has no tokenizer; cannot read text")
    text = read_text(args.data, args.split, args.data_dir)
    require(len(text.strip()) > 0, f"empty data: {args.data} holds no text")
    ids = tokenize(tokenizer, text)
    if args.nsamples:
        return calib_windows(ids, args.nsamples, args.seqlen, args.seed)
    return eval_windows(ids, args.seqlen, args.max_windows)


def image_batches(args: argparse.Namespace) -> list[tuple[torch.Tensor, torch.Tensor]]:
    data = load_images(args.images, args.image_split, args.data_dir)
    if args.classes:
        for c in args.classes:
            require(0 <= c < len(data.classes), f"class {c} does not exist in {args.images} "
                    f"(classes 0..{len(data.classes) - 1})")
        data = data.subset(torch.nonzero(torch.isin(data.y, torch.tensor(args.classes))).flatten())
    require(len(data) > 0, "empty data: no image selected")
    return list(data.loader(args.batch_size))


def fail(message: str) -> None:
    raise SurgeryError(message)
